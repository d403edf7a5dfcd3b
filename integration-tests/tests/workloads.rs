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
        let sched = integration_tests::node::start_scheduler(&api);
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

/// The seeds' nginx-deployment (000): maxSurge 1, maxUnavailable 0, 3 revisions kept.
const SEED_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      app: nginx
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
";

impl Cluster {
    /// `kubectl rollout status`, bounded.
    fn rollout_status(&self, deploy: &str) -> Result<String, String> {
        self.api.kubectl(&[
            "rollout",
            "status",
            &format!("deployment/{deploy}"),
            "--timeout=90s",
        ])
    }

    /// The messages of the events about an object (of one reason, if given), in the
    /// order last recorded (a repeated message is one event with a count).
    fn messages(&self, kind: &str, name: &str, reason: Option<&str>) -> Vec<String> {
        let mut selector = format!("involvedObject.kind={kind},involvedObject.name={name}");
        if let Some(r) = reason {
            selector.push_str(&format!(",reason={r}"));
        }
        let out = self
            .api
            .ok(&["get", "events", "--field-selector", &selector, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut items: Vec<(u64, String)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap(),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        items.sort();
        items.into_iter().map(|(_, m)| m).collect()
    }

    /// The ScalingReplicaSet messages about a Deployment, in the order recorded.
    fn scalings(&self, deploy: &str) -> Vec<String> {
        self.messages("Deployment", deploy, Some("ScalingReplicaSet"))
    }

    /// The ReplicaSets with label selector `l`: `name image replicas revision`.
    fn replica_sets(&self, l: &str) -> Vec<String> {
        self.api
            .ok(&[
                "get", "rs", "-l", l, "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.template.spec.containers[0].image} {.spec.replicas} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}{\"\\n\"}{end}",
            ])
            .lines()
            .map(String::from)
            .collect()
    }
}

#[test]
fn deployment_rolls_out_back_pauses_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    let api = &c.api;

    // The seeds' Deployment: one ReplicaSet `<deploy>-<hash>`, its pods labelled with
    // the hash and named after it; `rollout status` sees it complete.
    api.kubectl_stdin(&["apply", "-f", "-"], Some(SEED_DEPLOYMENT))
        .unwrap();
    let done = c
        .rollout_status("nginx-deployment")
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(
        done.contains("deployment \"nginx-deployment\" successfully rolled out"),
        "{done}"
    );
    let rss = c.replica_sets("app=nginx");
    assert_eq!(rss.len(), 1, "{rss:?}");
    let first: Vec<&str> = rss[0].split(' ').collect();
    assert_eq!(first[1..], ["nginx:1.14.2", "3", "1"]);
    let hash = first[0]
        .strip_prefix("nginx-deployment-")
        .unwrap()
        .to_string();
    let pods = c.running(&format!("app=nginx,pod-template-hash={hash}"));
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p.starts_with(first[0])), "{pods:?}");
    let table = api.ok(&["get", "deploy", "nginx-deployment"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["nginx-deployment", "3/3", "3", "3"], "{table}");
    assert_eq!(
        api.ok(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ]),
        "1"
    );

    // set image: a rolling update within maxSurge 1 / maxUnavailable 0 — the seeds'
    // sequence of scalings, one pod at a time.
    api.ok(&[
        "set",
        "image",
        "deployment/nginx-deployment",
        "nginx=nginx:1.16.1",
    ]);
    c.rollout_status("nginx-deployment")
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let rss = c.replica_sets("app=nginx");
    let new = rss
        .iter()
        .find(|r| r.contains("nginx:1.16.1"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let old = first[0];
    assert_eq!(
        c.scalings("nginx-deployment"),
        vec![
            format!("Scaled up replica set {old} to 3 from 0"),
            format!("Scaled up replica set {new} to 1 from 0"),
            format!("Scaled down replica set {old} to 2 from 3"),
            format!("Scaled up replica set {new} to 2 from 1"),
            format!("Scaled down replica set {old} to 1 from 2"),
            format!("Scaled up replica set {new} to 3 from 2"),
            format!("Scaled down replica set {old} to 0 from 1"),
        ]
    );
    c.wait("old pods gone", || {
        c.count(&format!("pod-template-hash={hash}")) == 0
    });
    api.ok(&[
        "annotate",
        "deployment/nginx-deployment",
        "kubernetes.io/change-cause=image updated to 1.16.1",
    ]);
    c.wait("the change cause on the new ReplicaSet", || {
        api.kubectl(&["rollout", "history", "deployment/nginx-deployment"])
            .is_ok_and(|h| h.contains("image updated to 1.16.1"))
    });
    let history = api.ok(&["rollout", "history", "deployment/nginx-deployment"]);
    let lines: Vec<Vec<&str>> = history
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["1", "<none>"], "{history}");
    assert_eq!(lines[1][0], "2", "{history}");
    let rev2 = api.ok(&[
        "rollout",
        "history",
        "deployment/nginx-deployment",
        "--revision=2",
    ]);
    assert!(
        rev2.contains("Image:\tnginx:1.16.1") || rev2.contains("nginx:1.16.1"),
        "{rev2}"
    );

    // rollout undo: revision 1's ReplicaSet comes back as revision 3.
    let undo = api.ok(&["rollout", "undo", "deployment/nginx-deployment"]);
    assert!(undo.contains("rolled back"), "{undo}");
    c.rollout_status("nginx-deployment")
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(
        api.ok(&["get", "rs", old, "-o", "jsonpath={.spec.replicas} {.metadata.annotations.deployment\\.kubernetes\\.io/revision} {.metadata.annotations.deployment\\.kubernetes\\.io/revision-history}"]),
        "3 3 1"
    );
    assert_eq!(
        api.ok(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "nginx:1.14.2"
    );
    api.ok(&[
        "rollout",
        "undo",
        "deployment/nginx-deployment",
        "--to-revision=2",
    ]);
    c.rollout_status("nginx-deployment")
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(
        api.ok(&["get", "rs", &new, "-o", "jsonpath={.spec.replicas} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]),
        "3 4"
    );

    // Paused: a template change waits; scaling still applies. Resumed: it rolls out.
    api.ok(&["rollout", "pause", "deployment/nginx-deployment"]);
    api.ok(&[
        "set",
        "image",
        "deployment/nginx-deployment",
        "nginx=nginx:1.17",
    ]);
    c.wait("the paused condition", || {
        api.kubectl(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
        ])
        .is_ok_and(|r| r == "DeploymentPaused")
    });
    api.ok(&["scale", "deployment/nginx-deployment", "--replicas=4"]);
    c.wait("scaled while paused", || c.running("app=nginx").len() == 4);
    assert_eq!(c.replica_sets("app=nginx").len(), 2);
    assert!(c
        .replica_sets("app=nginx")
        .iter()
        .all(|r| !r.contains("nginx:1.17")));
    api.ok(&["rollout", "resume", "deployment/nginx-deployment"]);
    c.rollout_status("nginx-deployment")
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let current = c.replica_sets("app=nginx");
    assert!(
        current.iter().any(|r| r.contains("nginx:1.17 4 5")),
        "{current:?}"
    );

    // revisionHistoryLimit 3: restarts make new ReplicaSets; beyond three old ones, the
    // oldest revision goes.
    for _ in 0..2 {
        // (restartedAt has a resolution of one second.)
        std::thread::sleep(std::time::Duration::from_millis(1100));
        api.ok(&["rollout", "restart", "deployment/nginx-deployment"]);
        c.rollout_status("nginx-deployment")
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    c.wait("3 old ReplicaSets kept", || {
        let rss = c.replica_sets("app=nginx");
        rss.len() == 4 && !rss.iter().any(|r| r.starts_with(old))
    });
    assert!(api
        .kubectl(&[
            "get",
            "pods",
            "-l",
            "app=nginx",
            "-o",
            "jsonpath={.items[*].metadata.annotations}"
        ])
        .unwrap()
        .contains("kubectl.kubernetes.io/restartedAt"));

    // Deleting the Deployment takes its ReplicaSets and pods (garbage collector).
    api.ok(&["delete", "deployment", "nginx-deployment", "--timeout=60s"]);
    c.wait("everything gone", || {
        c.count("app=nginx") == 0 && c.replica_sets("app=nginx").is_empty()
    });
}

#[test]
fn deployment_recreate_and_progress_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 2);
    let api = &c.api;

    // `kubectl create deployment`, then Recreate: every old pod goes before new ones come.
    api.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    c.rollout_status("web")
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    api.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
    ]);
    let old = c.replica_sets("app=web")[0]
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    api.ok(&["set", "image", "deployment/web", "busybox=busybox:1.36"]);
    c.rollout_status("web")
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let new = c
        .replica_sets("app=web")
        .iter()
        .find(|r| r.contains("busybox:1.36"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        c.scalings("web"),
        vec![
            format!("Scaled up replica set {old} to 2 from 0"),
            format!("Scaled down replica set {old} to 0 from 2"),
            format!("Scaled up replica set {new} to 2 from 0"),
        ]
    );

    // No progress within progressDeadlineSeconds (pods that fit no node):
    // ProgressDeadlineExceeded, and `rollout status` fails as upstream's does.
    let stuck = "apiVersion: apps/v1
kind: Deployment
metadata: {name: stuck}
spec:
  replicas: 1
  progressDeadlineSeconds: 5
  selector: {matchLabels: {app: stuck}}
  template:
    metadata: {labels: {app: stuck}}
    spec:
      nodeSelector: {nowhere: 'true'}
      containers: [{name: c, image: busybox}]
";
    api.kubectl_stdin(&["apply", "-f", "-"], Some(stuck))
        .unwrap();
    c.wait("the deadline exceeded", || {
        api.kubectl(&[
            "get",
            "deploy",
            "stuck",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
        ])
        .is_ok_and(|r| r == "ProgressDeadlineExceeded")
    });
    let err = c.rollout_status("stuck").unwrap_err();
    assert!(
        err.contains("deployment \"stuck\" exceeded its progress deadline"),
        "{err}"
    );
    let described = api.ok(&["describe", "deploy", "stuck"]);
    let row = |cells: &[&str]| {
        described
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == cells)
    };
    assert!(
        row(&["Progressing", "False", "ProgressDeadlineExceeded"])
            && row(&["Available", "False", "MinimumReplicasUnavailable"]),
        "{described}"
    );
}

/// The upstream docs' DaemonSet (the seeds name DaemonSets for node agents).
const FLUENTD: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: fluentd-elasticsearch
  namespace: kube-system
  labels:
    k8s-app: fluentd-logging
spec:
  selector:
    matchLabels:
      name: fluentd-elasticsearch
  template:
    metadata:
      labels:
        name: fluentd-elasticsearch
    spec:
      tolerations:
      - key: node-role.kubernetes.io/control-plane
        operator: Exists
        effect: NoSchedule
      containers:
      - name: fluentd-elasticsearch
        image: quay.io/fluentd_elasticsearch/fluentd:v2.5.2
        resources:
          limits:
            memory: 200Mi
          requests:
            cpu: 100m
            memory: 200Mi
";

#[test]
fn daemonset_runs_on_every_node_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    let api = &c.api;
    let ks = |args: &[&str]| -> String {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-n", "kube-system"]);
        api.kubectl(&a).unwrap_or_else(|e| e)
    };
    // Nodes of the running daemon pods.
    let nodes = || -> Vec<String> {
        let out = ks(&[
            "get", "pods", "-l", "name=fluentd-elasticsearch", "--field-selector=status.phase=Running", "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ]);
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, d)| d.trim().is_empty())
            .map(|(n, _)| n.to_string())
            .collect();
        v.sort();
        v
    };
    api.kubectl_stdin(&["apply", "-f", "-"], Some(FLUENTD))
        .unwrap();
    c.wait("a pod on each node", || {
        nodes() == ["hollow-node-0", "hollow-node-1", "hollow-node-2"]
    });
    let status = ks(&[
        "rollout",
        "status",
        "ds/fluentd-elasticsearch",
        "--timeout=60s",
    ]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let row = ks(&["get", "ds", "fluentd-elasticsearch", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..6], ["3", "3", "3", "3", "3"], "{row}");
    // The pods carry the automatic tolerations and are pinned by node affinity.
    let pod = ks(&[
        "get",
        "pods",
        "-l",
        "name=fluentd-elasticsearch",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&pod).unwrap();
    let p = &v["items"][0];
    let tolerations = p["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unschedulable")
            && tolerations.contains("node.kubernetes.io/not-ready"),
        "{tolerations}"
    );
    assert_eq!(
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"][0]["key"],
        "metadata.name"
    );
    assert!(p["metadata"]["labels"]["controller-revision-hash"].is_string());

    // A NoSchedule taint keeps the running pod; a NoExecute one removes it.
    api.ok(&["taint", "nodes", "hollow-node-2", "dedicated=x:NoSchedule"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(nodes().len(), 3);
    api.ok(&["taint", "nodes", "hollow-node-2", "dedicated=y:NoExecute"]);
    wait_until(
        "the pod off the NoExecute node",
        60,
        || nodes() == ["hollow-node-0", "hollow-node-1"],
        || {
            let kcm =
                std::fs::read_to_string(api.dir.join("controller-manager.log")).unwrap_or_default();
            format!(
                "{}\n{}\n{}",
                ks(&["get", "ds,pods", "-o", "wide"]),
                api.kubectl(&[
                    "get",
                    "node",
                    "hollow-node-2",
                    "-o",
                    "jsonpath={.spec.taints}"
                ])
                .unwrap_or_default(),
                kcm.lines()
                    .filter(|l| l.contains("daemonset") || l.contains("WARN"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        },
    );
    api.ok(&["taint", "nodes", "hollow-node-2", "dedicated-"]);
    c.wait("back on it", || nodes().len() == 3);

    // A new node gets one.
    let extra = api.component(
        "hollow-nodes",
        "extra",
        &["--nodes=1", "--name-prefix=extra-"],
    );
    c.wait("a pod on the new node", || {
        nodes().contains(&"extra-0".to_string())
    });

    // A rolling update (maxUnavailable 1), its history, and undo.
    ks(&[
        "set",
        "image",
        "ds/fluentd-elasticsearch",
        "fluentd-elasticsearch=quay.io/fluentd_elasticsearch/fluentd:v2.6.0",
    ]);
    let status = ks(&[
        "rollout",
        "status",
        "ds/fluentd-elasticsearch",
        "--timeout=90s",
    ]);
    assert!(
        status.contains("successfully rolled out"),
        "{status}\n{}",
        c.logs()
    );
    c.wait("every pod updated", || {
        ks(&[
            "get",
            "pods",
            "-l",
            "name=fluentd-elasticsearch",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ])
        .split_whitespace()
        .filter(|i| i.ends_with(":v2.6.0"))
        .count()
            == 4
            && nodes().len() == 4
    });
    let revisions = ks(&["get", "controllerrevisions", "-o", "name"]);
    assert_eq!(
        revisions
            .lines()
            .filter(|l| l.contains("fluentd-elasticsearch-"))
            .count(),
        2,
        "{revisions}"
    );
    let history = ks(&["rollout", "history", "ds/fluentd-elasticsearch"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    let undo = ks(&["rollout", "undo", "ds/fluentd-elasticsearch"]);
    assert!(undo.contains("rolled back"), "{undo}");
    c.wait("back to v2.5.2", || {
        ks(&[
            "get",
            "pods",
            "-l",
            "name=fluentd-elasticsearch",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ])
        .split_whitespace()
        .filter(|i| i.ends_with(":v2.5.2"))
        .count()
            == 4
            && nodes().len() == 4
    });

    // Deleting the DaemonSet takes its pods.
    ks(&["delete", "ds", "fluentd-elasticsearch", "--timeout=60s"]);
    c.wait("its pods gone", || {
        ks(&[
            "get",
            "pods",
            "-l",
            "name=fluentd-elasticsearch",
            "-o",
            "name",
        ])
        .trim()
        .is_empty()
    });
    drop(extra);
}

/// The docs' (and the seeds') web StatefulSet behind its headless Service.
const WEB: &str = "apiVersion: v1
kind: Service
metadata:
  name: nginx
  labels: {app: nginx}
spec:
  ports: [{port: 80, name: web}]
  clusterIP: None
  selector: {app: nginx}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: nginx}
  serviceName: nginx
  replicas: 3
  template:
    metadata:
      labels: {app: nginx}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: nginx
        image: registry.k8s.io/nginx-slim:0.24
        ports: [{containerPort: 80, name: web}]
        volumeMounts: [{name: www, mountPath: /usr/share/nginx/html}]
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: my-storage-class
      resources:
        requests:
          storage: 1Gi
";

#[test]
fn statefulset_orders_names_and_keeps_storage() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3);
    let api = &c.api;
    // The StatefulSet's events in the order recorded.
    let events = || c.messages("StatefulSet", "web", None);
    let images = || {
        api.ok(&[
            "get",
            "pods",
            "-l",
            "app=nginx",
            "--sort-by=.metadata.name",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.containers[0].image} {end}",
        ])
    };
    api.kubectl_stdin(&["apply", "-f", "-"], Some(WEB)).unwrap();
    c.wait("web-0, web-1, web-2 running", || {
        let mut r = c.running("app=nginx");
        r.sort();
        r == ["web-0", "web-1", "web-2"]
    });
    let made: Vec<String> = events()
        .into_iter()
        .filter(|e| e.starts_with("create "))
        .collect();
    assert_eq!(
        made,
        vec![
            "create Claim www-web-0 Pod web-0 in StatefulSet web success",
            "create Pod web-0 in StatefulSet web successful",
            "create Claim www-web-1 Pod web-1 in StatefulSet web success",
            "create Pod web-1 in StatefulSet web successful",
            "create Claim www-web-2 Pod web-2 in StatefulSet web success",
            "create Pod web-2 in StatefulSet web successful",
        ]
    );
    let p: serde_json::Value =
        serde_json::from_str(&api.ok(&["get", "pod", "web-1", "-o", "json"])).unwrap();
    assert_eq!(p["spec"]["hostname"], "web-1");
    assert_eq!(p["spec"]["subdomain"], "nginx");
    assert_eq!(
        p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
        "web-1"
    );
    assert_eq!(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"], "1");
    assert_eq!(
        p["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "www")
            .unwrap()["persistentVolumeClaim"]["claimName"],
        "www-web-1"
    );
    let claims = api.ok(&["get", "pvc", "-l", "app=nginx", "-o", "name"]);
    assert_eq!(claims.lines().count(), 3, "{claims}");
    // (Defaulting gives the strategy `rollingUpdate: {partition: 0}`, so kubectl reports a
    // partitioned roll out, as against upstream.)
    let status = api.ok(&["rollout", "status", "sts/web", "--timeout=60s"]);
    assert!(
        status.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{status}"
    );

    // Scale down: the highest ordinal first, one at a time; the claims stay.
    api.ok(&["scale", "sts", "web", "--replicas=1"]);
    c.wait("only web-0", || c.count("app=nginx") == 1);
    let deleted: Vec<String> = events()
        .into_iter()
        .filter(|e| e.starts_with("delete "))
        .collect();
    assert_eq!(
        deleted,
        vec![
            "delete Pod web-2 in StatefulSet web successful",
            "delete Pod web-1 in StatefulSet web successful",
        ]
    );
    assert_eq!(
        api.ok(&["get", "pvc", "-l", "app=nginx", "-o", "name"])
            .lines()
            .count(),
        3
    );
    api.ok(&["scale", "sts", "web", "--replicas=3"]);
    c.wait("back to three", || c.running("app=nginx").len() == 3);

    // A rolling update: from the highest ordinal down.
    api.ok(&[
        "set",
        "image",
        "sts/web",
        "nginx=registry.k8s.io/nginx-slim:0.27",
    ]);
    c.wait("every pod updated", || {
        images().matches("nginx-slim:0.27").count() == 3
            && api
                .kubectl(&["get", "sts", "web", "-o", "jsonpath={.status.currentRevision}/{.status.updateRevision}/{.status.updatedReplicas}"])
                .is_ok_and(|s| {
                    let p: Vec<&str> = s.split('/').collect();
                    p.len() == 3 && p[0] == p[1] && p[2] == "3"
                })
    });
    let status = api.ok(&["rollout", "status", "sts/web", "--timeout=90s"]);
    assert!(status.contains("3 new pods have been updated"), "{status}");
    let order: Vec<String> = events()
        .into_iter()
        .filter(|e| e.starts_with("delete "))
        .collect();
    // (Repeated messages are one event with a count: the order is of their latest.)
    assert_eq!(
        order,
        vec![
            "delete Pod web-2 in StatefulSet web successful",
            "delete Pod web-1 in StatefulSet web successful",
            "delete Pod web-0 in StatefulSet web successful",
        ]
    );
    // A partition: only ordinals at or above it are updated.
    api.ok(&[
        "patch",
        "sts",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}"#,
    ]);
    api.ok(&[
        "set",
        "image",
        "sts/web",
        "nginx=registry.k8s.io/nginx-slim:0.28",
    ]);
    c.wait("web-2 alone updated", || {
        images().trim()
            == "web-0=registry.k8s.io/nginx-slim:0.27 web-1=registry.k8s.io/nginx-slim:0.27 web-2=registry.k8s.io/nginx-slim:0.28"
    });

    // Deleting it takes the pods, never the claims.
    api.ok(&["delete", "sts", "web", "--timeout=60s"]);
    c.wait("pods gone", || c.count("app=nginx") == 0);
    assert_eq!(
        api.ok(&["get", "pvc", "-l", "app=nginx", "-o", "name"])
            .lines()
            .count(),
        3
    );

    // Parallel, with claims deleted on scale-down and with the set.
    let par = WEB
        .split("---\n")
        .nth(1)
        .unwrap()
        .replace("name: web\n", "name: par\n")
        .replace("replicas: 3", "replicas: 2\n  podManagementPolicy: Parallel\n  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete, whenScaled: Delete}")
        .replace("app: nginx", "app: par");
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&par))
        .unwrap();
    c.wait("par-0 and par-1 running", || {
        c.running("app=par").len() == 2
    });
    api.ok(&["scale", "sts", "par", "--replicas=1"]);
    c.wait("par-1's claim gone with it", || {
        c.count("app=par") == 1 && api.kubectl(&["get", "pvc", "www-par-1"]).is_err()
    });
    api.ok(&["delete", "sts", "par", "--timeout=60s"]);
    c.wait("par-0's claim gone with the set", || {
        api.kubectl(&["get", "pvc", "www-par-0"]).is_err()
    });
}
