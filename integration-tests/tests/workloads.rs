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

/// A ConfigMap owned by the objects `owners` names (`kind/name/uid`).
fn owned_config_map(name: &str, owners: &[(&str, &str, &str, &str)]) -> String {
    let refs: Vec<serde_json::Value> = owners
        .iter()
        .map(|(api_version, kind, owner, uid)| {
            serde_json::json!({"apiVersion": api_version, "kind": kind, "name": owner, "uid": uid})
        })
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": refs},
        "data": {"a": "b"},
    })
    .to_string()
}

#[test]
fn cascading_deletion_background_foreground_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 2);
    let api = &c.api;
    let owners = |l: &str| {
        api.kubectl(&[
            "get",
            "pods",
            "-l",
            l,
            "-o",
            "jsonpath={range .items[*]}{.metadata.ownerReferences[0].uid}{\" \"}{end}",
        ])
        .unwrap_or_default()
    };

    // --cascade=orphan: the ReplicaSet goes, its pods stay without an owner.
    api.kubectl_stdin(&["apply", "-f", "-"], Some(SEED_RS))
        .unwrap();
    c.wait("three frontend pods running", || {
        c.running("tier=frontend").len() == 3
    });
    let pods = c.running("tier=frontend");
    api.ok(&[
        "delete",
        "rs",
        "frontend",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    c.wait("the pods orphaned", || {
        api.kubectl(&["get", "rs", "frontend"]).is_err()
            && c.running("tier=frontend") == pods
            && owners("tier=frontend").trim().is_empty()
    });
    // A new ReplicaSet with the same selector adopts them instead of making pods.
    api.kubectl_stdin(&["apply", "-f", "-"], Some(SEED_RS))
        .unwrap();
    let uid = api.ok(&["get", "rs", "frontend", "-o", "jsonpath={.metadata.uid}"]);
    c.wait("the orphans adopted", || {
        owners("tier=frontend")
            .split_whitespace()
            .collect::<Vec<_>>()
            == vec![uid.as_str(); 3]
    });
    assert_eq!(c.running("tier=frontend"), pods);

    // --cascade=foreground: the owner stays, marked, until its pods are gone.
    api.ok(&[
        "delete",
        "rs",
        "frontend",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let marked = api
        .kubectl(&[
            "get",
            "rs",
            "frontend",
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])
        .unwrap_or_default();
    assert!(
        marked.is_empty() || marked == r#"["foregroundDeletion"]"#,
        "{marked}"
    );
    c.wait("pods and owner gone", || {
        c.count("tier=frontend") == 0 && api.kubectl(&["get", "rs", "frontend"]).is_err()
    });

    // Background (kubectl's default): the owner goes at once, the collector takes the pods.
    api.kubectl_stdin(&["apply", "-f", "-"], Some(SEED_RC))
        .unwrap();
    c.wait("two nginx pods running", || {
        c.running("app=nginx").len() == 2
    });
    api.ok(&["delete", "rc", "my-nginx", "--timeout=60s"]);
    c.wait("the RC's pods gone", || c.count("app=nginx") == 0);

    // Any kind may own any other: a ConfigMap owned by a ConfigMap goes with it; one
    // with two owners loses only the reference to the one deleted.
    api.ok(&["create", "configmap", "parent", "--from-literal=a=b"]);
    api.ok(&["create", "configmap", "other", "--from-literal=a=b"]);
    let puid = api.ok(&["get", "cm", "parent", "-o", "jsonpath={.metadata.uid}"]);
    let ouid = api.ok(&["get", "cm", "other", "-o", "jsonpath={.metadata.uid}"]);
    let child = owned_config_map("child", &[("v1", "ConfigMap", "parent", &puid)]);
    api.kubectl_stdin(&["create", "-f", "-"], Some(&child))
        .unwrap();
    let shared = owned_config_map(
        "shared",
        &[
            ("v1", "ConfigMap", "parent", &puid),
            ("v1", "ConfigMap", "other", &ouid),
        ],
    );
    api.kubectl_stdin(&["create", "-f", "-"], Some(&shared))
        .unwrap();
    // An owner that does not exist (a made-up UID under a real name): collected.
    let dangling = owned_config_map(
        "dangling",
        &[(
            "v1",
            "ConfigMap",
            "other",
            "00000000-0000-0000-0000-000000000000",
        )],
    );
    api.kubectl_stdin(&["create", "-f", "-"], Some(&dangling))
        .unwrap();
    c.wait("the dangling one collected", || {
        api.kubectl(&["get", "cm", "dangling"]).is_err()
    });
    assert!(api.kubectl(&["get", "cm", "child"]).is_ok());
    api.ok(&["delete", "cm", "parent"]);
    c.wait("the child collected, the shared one kept", || {
        api.kubectl(&["get", "cm", "child"]).is_err()
            && api
                .kubectl(&[
                    "get",
                    "cm",
                    "shared",
                    "-o",
                    "jsonpath={.metadata.ownerReferences[*].name}",
                ])
                .is_ok_and(|o| o == "other")
    });

    // A custom resource as owner: the collector finds the new kind by discovery.
    let crd = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";
    api.kubectl_stdin(&["apply", "-f", "-"], Some(crd)).unwrap();
    c.wait("the Widget kind served", || {
        api.kubectl_stdin(
            &["apply", "-f", "-"],
            Some("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"),
        )
        .is_ok()
    });
    let wuid = api.ok(&["get", "widget", "w", "-o", "jsonpath={.metadata.uid}"]);
    let part = owned_config_map("part", &[("example.com/v1", "Widget", "w", &wuid)]);
    api.kubectl_stdin(&["create", "-f", "-"], Some(&part))
        .unwrap();
    api.ok(&["delete", "widget", "w"]);
    wait_until(
        "the Widget's ConfigMap collected",
        90,
        || api.kubectl(&["get", "cm", "part"]).is_err(),
        || c.logs(),
    );
}
