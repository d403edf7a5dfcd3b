//! kube-controller-manager's workload controllers with kube-scheduler and hollow nodes:
//! the seeds' ReplicationController and ReplicaSet keep their replicas, scale both ways,
//! replace deleted pods, adopt matching orphans and release relabelled pods, and report
//! their status as `kubectl get` shows it.

use integration_tests::apiserver::{ApiServer, Component};
use integration_tests::wait_until;

struct Cluster {
    api: ApiServer,
    parts: Vec<Component>,
}

impl Cluster {
    fn start(dir: &std::path::Path, nodes: usize) -> Cluster {
        let api = ApiServer::start(dir);
        let sched = api.component(
            "kube-scheduler",
            "scheduler",
            &["--leader-elect=false", "--secure-port=0"],
        );
        let n = format!("--nodes={nodes}");
        let hollow = api.component("hollow-nodes", "hollow", &[&n]);
        let c = Cluster {
            api,
            parts: vec![sched, hollow],
        };
        c.wait("the nodes", || {
            c.api
                .kubectl(&["get", "nodes", "-o", "name"])
                .is_ok_and(|o| o.lines().count() == nodes)
        });
        c
    }

    fn logs(&self) -> String {
        let kcm = std::fs::read_to_string(self.api.dir.join("controller-manager.log"))
            .unwrap_or_default();
        let pods = self
            .api
            .kubectl(&["get", "pods", "-L", "tier,app", "-o", "custom-columns=NAME:.metadata.name,PHASE:.status.phase,NODE:.spec.nodeName,OWNER:.metadata.ownerReferences[*].name,DELETING:.metadata.deletionTimestamp,LABELS:.metadata.labels"])
            .unwrap_or_else(|e| e);
        let mut out = format!(
            "pods:\n{pods}\ncontroller-manager:\n{}",
            &kcm[kcm.len().saturating_sub(3000)..]
        );
        for p in &self.parts {
            let l = p.log();
            out.push_str(&format!(
                "\n---\n{}:\n{}",
                p.log.display(),
                &l[l.len().saturating_sub(2000)..]
            ));
        }
        out
    }

    fn wait(&self, what: &str, f: impl FnMut() -> bool) {
        wait_until(what, 60, f, || self.logs());
    }

    /// Names of the Running pods with label selector `l`.
    fn running(&self, l: &str) -> Vec<String> {
        self.api
            .kubectl(&[
                "get", "pods", "-l", l, "--field-selector=status.phase=Running", "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ])
            .map(|o| {
                // Not the ones being deleted (they show a deletion time).
                o.lines()
                    .filter_map(|l| l.split_once(' '))
                    .filter(|(_, deleting)| deleting.trim().is_empty())
                    .map(|(n, _)| n.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn count(&self, l: &str) -> usize {
        self.api
            .kubectl(&["get", "pods", "-l", l, "-o", "name"])
            .map(|o| o.lines().filter(|l| !l.is_empty()).count())
            .unwrap_or(0)
    }
}

const SEED_RC: &str = "apiVersion: v1
kind: ReplicationController
metadata:
  name: my-nginx
spec:
  replicas: 2
  selector:
    app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
";

const SEED_RS: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: frontend
spec:
  replicas: 3
  selector:
    matchLabels:
      tier: frontend
  template:
    metadata:
      labels:
        tier: frontend
    spec:
      containers:
      - name: nginx
        image: registry.cn-beijing.aliyuncs.com/google_registry/nginx:1.17
        imagePullPolicy: IfNotPresent
        ports:
        - name: httpd
          containerPort: 80
";

#[test]
fn replication_controller_and_replica_set_keep_their_pods() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    let api = &c.api;

    // The seeds' RC: two pods named after it, owned by it, running.
    api.kubectl_stdin(&["apply", "-f", "-"], Some(SEED_RC))
        .unwrap();
    c.wait("two nginx pods running", || {
        c.running("app=nginx").len() == 2
    });
    let pods = c.running("app=nginx");
    assert!(pods.iter().all(|p| p.starts_with("my-nginx-")), "{pods:?}");
    let owner = api.ok(&["get", "pod", &pods[0], "-o", "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}"]);
    assert_eq!(owner, "ReplicationController/my-nginx/true");
    c.wait("rc status", || {
        api.kubectl(&["get", "rc", "my-nginx", "-o", "jsonpath={.status.replicas}/{.status.readyReplicas}/{.status.availableReplicas}/{.status.fullyLabeledReplicas}"])
            .is_ok_and(|s| s == "2/2/2/2")
    });
    let table = api.ok(&["get", "rc", "my-nginx"]);
    assert!(
        table.lines().nth(1).is_some_and(
            |l| l.split_whitespace().collect::<Vec<_>>()[..4] == ["my-nginx", "2", "2", "2"]
        ),
        "{table}"
    );

    // Scale up and down; a deleted pod is replaced.
    api.ok(&["scale", "rc", "my-nginx", "--replicas=4"]);
    c.wait("four nginx pods", || c.running("app=nginx").len() == 4);
    api.ok(&["scale", "rc", "my-nginx", "--replicas=1"]);
    c.wait("one nginx pod", || c.count("app=nginx") == 1);
    let only = c.running("app=nginx");
    api.ok(&["delete", "pod", &only[0], "--wait=false"]);
    c.wait("a replacement", || {
        let now = c.running("app=nginx");
        now.len() == 1 && now[0] != only[0]
    });

    // The seeds' ReplicaSet, with the events upstream's controller records.
    api.kubectl_stdin(&["apply", "-f", "-"], Some(SEED_RS))
        .unwrap();
    c.wait("three frontend pods running", || {
        c.running("tier=frontend").len() == 3
    });
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=ReplicaSet,involvedObject.name=frontend",
    ]);
    assert!(
        events.contains("SuccessfulCreate") && events.contains("Created pod: frontend-"),
        "{events}"
    );
    c.wait("rs ready 3", || {
        api.kubectl(&[
            "get",
            "rs",
            "frontend",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.observedGeneration}",
        ])
        .is_ok_and(|s| s == "3/1")
    });

    // An orphan with matching labels is adopted instead of a new pod being made: scale to
    // 4 with the orphan there and the count stays at 4.
    api.ok(&["run", "stray", "--image=busybox", "--labels=tier=frontend"]);
    c.wait("the orphan adopted and one pod too many removed", || {
        api.kubectl(&[
            "get",
            "pods",
            "-l",
            "tier=frontend",
            "-o",
            "jsonpath={range .items[*]}{.metadata.ownerReferences[0].name}{\" \"}{end}",
        ])
        .is_ok_and(|o| {
            o.split_whitespace().count() == 3 && o.split_whitespace().all(|n| n == "frontend")
        })
    });
    // (Scale-down deleted the newest, unscheduled or not-ready pod first.)

    // A relabelled pod is released (no owner) and replaced.
    let member = c.running("tier=frontend")[0].clone();
    api.ok(&["label", "pod", &member, "tier=debug", "--overwrite"]);
    c.wait("released and replaced", || {
        c.running("tier=frontend").len() == 3
            && api
                .kubectl(&[
                    "get",
                    "pod",
                    &member,
                    "-o",
                    "jsonpath={.metadata.ownerReferences}",
                ])
                .is_ok_and(|o| o.is_empty() || o == "[]")
    });

    let table = api.ok(&["get", "rs", "frontend", "-o", "wide"]);
    assert!(table.contains("tier=frontend"), "{table}");
}
