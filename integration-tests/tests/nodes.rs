//! kube-controller-manager's node controllers with hollow nodes: node IPAM hands out
//! pod ranges; a node whose kubelet goes silent turns Unknown, is tainted unreachable
//! (NoSchedule and NoExecute) and its pods not ready; the taint eviction controller
//! evicts pods as their tolerations allow; a node that comes back is untainted; cordon
//! taints unschedulable; with every node lost the controller stops tainting.

use integration_tests::apiserver::{ApiServer, Component};
use integration_tests::{free_port, wait_until};

struct Cluster {
    api: ApiServer,
    parts: Vec<Component>,
}

/// Short periods for the test (upstream: 5 s, 50 s, 1 min; 0.1 node/s).
const KCM_FLAGS: [&str; 8] = [
    "--node-monitor-period=1s",
    "--node-monitor-grace-period=6s",
    "--node-startup-grace-period=6s",
    "--node-eviction-rate=10",
    "--allocate-node-cidrs=true",
    "--cluster-cidr=10.244.0.0/16",
    "--service-cluster-ip-range=10.96.0.0/12",
    "--node-cidr-mask-size=24",
];

impl Cluster {
    fn start(dir: &std::path::Path) -> Cluster {
        let mut api = ApiServer::new(dir, "127.0.0.1", free_port(), free_port(), vec![]);
        api.controller_args = KCM_FLAGS.iter().map(|s| s.to_string()).collect();
        api.spawn();
        api.wait_ready();
        let sched = integration_tests::node::start_scheduler(&api);
        Cluster {
            api,
            parts: vec![sched],
        }
    }

    /// A hollow node `<name>` of its own process (renewing its Lease every second).
    fn node(&self, name: &str) -> Component {
        let prefix = format!("--name-prefix={name}");
        let c = self.api.component(
            "hollow-nodes",
            name,
            &["--nodes=1", &prefix, "--node-lease-duration-seconds=4"],
        );
        let node = format!("{name}0");
        self.wait(&format!("node {node} Ready"), || {
            self.jsonpath(
                &format!("node/{node}"),
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "True"
        });
        c
    }

    fn jsonpath(&self, what: &str, path: &str) -> String {
        self.api.jsonpath(&[what], path)
    }

    fn taints(&self, node: &str) -> String {
        self.jsonpath(
            &format!("node/{node}"),
            "{range .spec.taints[*]}{.key}:{.effect} {end}",
        )
    }

    fn logs(&self) -> String {
        let kcm = std::fs::read_to_string(self.api.dir.join("controller-manager.log"))
            .unwrap_or_default();
        let nodes = self
            .api
            .kubectl(&["get", "nodes", "-o", "custom-columns=NAME:.metadata.name,TAINTS:.spec.taints,CONDITIONS:.status.conditions[*].status"])
            .unwrap_or_else(|e| e);
        let pods = self
            .api
            .kubectl(&["get", "pods", "-o", "wide"])
            .unwrap_or_else(|e| e);
        let mut out = format!(
            "nodes:\n{nodes}\npods:\n{pods}\ncontroller-manager:\n{}",
            &kcm[kcm.len().saturating_sub(4000)..]
        );
        for p in &self.parts {
            let l = p.log();
            out.push_str(&format!(
                "\n---\n{}:\n{}",
                p.log.display(),
                &l[l.len().saturating_sub(1500)..]
            ));
        }
        out
    }

    fn wait(&self, what: &str, f: impl FnMut() -> bool) {
        wait_until(what, 60, f, || self.logs());
    }

    fn apply(&self, yaml: &str) {
        let f = self.api.dir.join("apply.yaml");
        std::fs::write(&f, yaml).unwrap();
        self.api
            .kubectl(&["apply", "-f", f.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("apply: {e}\n{yaml}"));
    }

    fn pod(&self, name: &str, node: &str, tolerations: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  \
             containers:\n  - name: c\n    image: busybox\n  tolerations: {tolerations}\n"
        ));
    }

    /// Whether the pod is being deleted or gone (a live hollow node removes it at once).
    fn deleting(&self, pod: &str) -> bool {
        let out = self
            .api
            .kubectl(&[
                "get",
                "pod",
                pod,
                "--ignore-not-found",
                "-o",
                "jsonpath={.metadata.name} {.metadata.deletionTimestamp}",
            ])
            .unwrap_or_else(|e| panic!("get pod {pod}: {e}"));
        out.split_whitespace().count() != 1
    }
}

#[test]
fn node_lifecycle_taints_evicts_and_allocates_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path());
    let stay = c.node("stay-");
    let lost = c.node("lost-");

    // Node IPAM: each node its own /24 of the cluster range.
    c.wait("pod CIDRs", || {
        let a = c.jsonpath("node/stay-0", "{.spec.podCIDR}");
        let b = c.jsonpath("node/lost-0", "{.spec.podCIDR}");
        !a.is_empty() && !b.is_empty()
    });
    let a = c.jsonpath("node/stay-0", "{.spec.podCIDRs[0]}");
    let b = c.jsonpath("node/lost-0", "{.spec.podCIDRs[0]}");
    assert_ne!(a, b);
    for cidr in [&a, &b] {
        assert!(
            cidr.starts_with("10.244.") && cidr.ends_with(".0/24"),
            "{cidr}"
        );
    }

    // Pods on the node about to be lost: one tolerating unreachable for 2 s, one with
    // the admission defaults (300 s), one tolerating it forever.
    c.pod(
        "brief",
        "lost-0",
        r#"[{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}]"#,
    );
    c.pod("patient", "lost-0", "[]");
    c.pod(
        "forever",
        "lost-0",
        r#"[{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}]"#,
    );
    assert!(c
        .jsonpath("pod/patient", "{.spec.tolerations[*].tolerationSeconds}")
        .contains("300"));
    c.wait("pods running and ready", || {
        ["brief", "patient", "forever"].iter().all(|p| {
            c.jsonpath(
                &format!("pod/{p}"),
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "True"
        })
    });

    // Its kubelet goes silent.
    drop(lost);
    c.wait("lost-0 Unknown", || {
        c.jsonpath(
            "node/lost-0",
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ) == "Unknown"
    });
    assert_eq!(
        c.jsonpath(
            "node/lost-0",
            "{.status.conditions[?(@.type==\"Ready\")].reason}: {.status.conditions[?(@.type==\"Ready\")].message}"
        ),
        "NodeStatusUnknown: Kubelet stopped posting node status."
    );
    c.wait("unreachable taints", || {
        let t = c.taints("lost-0");
        t.contains("node.kubernetes.io/unreachable:NoSchedule")
            && t.contains("node.kubernetes.io/unreachable:NoExecute")
    });
    assert!(!c
        .jsonpath(
            "node/lost-0",
            "{.spec.taints[?(@.effect==\"NoExecute\")].timeAdded}"
        )
        .is_empty());
    // The other node is untouched.
    assert_eq!(c.taints("stay-0"), "");
    c.wait("the pods not ready", || {
        ["patient", "forever"].iter().all(|p| {
            c.jsonpath(
                &format!("pod/{p}"),
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "False"
        })
    });
    c.wait("the short toleration evicted", || c.deleting("brief"));
    assert_eq!(
        c.jsonpath(
            "pod/brief",
            "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"
        ),
        "DeletionByTaintManager"
    );
    let events = c
        .api
        .kubectl(&["get", "events", "-o", "custom-columns=REASON:.reason,OBJ:.involvedObject.name,MSG:.message,FROM:.source.component"])
        .unwrap();
    assert!(
        events.contains("NodeNotReady")
            && events.contains("Node lost-0 status is now: NodeNotReady"),
        "{events}"
    );
    assert!(
        events.contains("Marking for deletion Pod default/brief"),
        "{events}"
    );
    // The others stay (300 s and forever).
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        !c.deleting("patient") && !c.deleting("forever"),
        "{}",
        c.logs()
    );

    // Its kubelet is back: Ready, untainted, and the pending eviction cancelled.
    let lost = c.node("lost-");
    c.wait("lost-0 untainted", || c.taints("lost-0").is_empty());
    assert!(!c.deleting("patient"));

    // Cordon: the unschedulable taint follows spec.unschedulable.
    c.api.kubectl(&["cordon", "stay-0"]).unwrap();
    c.wait("unschedulable taint", || {
        c.taints("stay-0") == "node.kubernetes.io/unschedulable:NoSchedule "
    });
    c.api.kubectl(&["uncordon", "stay-0"]).unwrap();
    c.wait("unschedulable taint gone", || c.taints("stay-0").is_empty());

    // A NoExecute taint of the user's: pods not tolerating it go at once.
    c.pod("plain", "stay-0", "[]");
    c.pod(
        "dedicated",
        "stay-0",
        r#"[{key: dedicated, operator: Equal, value: db, effect: NoExecute}]"#,
    );
    c.api
        .kubectl(&["taint", "node", "stay-0", "dedicated=db:NoExecute"])
        .unwrap();
    c.wait("plain evicted", || c.deleting("plain"));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!c.deleting("dedicated"));
    c.api
        .kubectl(&["taint", "node", "stay-0", "dedicated=db:NoExecute-"])
        .unwrap();

    // Every node lost: the controller suspects itself and taints nothing NoExecute.
    drop(lost);
    drop(stay);
    c.wait("both Unknown", || {
        ["stay-0", "lost-0"].iter().all(|n| {
            c.jsonpath(
                &format!("node/{n}"),
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "Unknown"
        })
    });
    c.wait("master disruption mode", || {
        std::fs::read_to_string(c.api.dir.join("controller-manager.log"))
            .unwrap_or_default()
            .contains("Entering master disruption mode")
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    for n in ["stay-0", "lost-0"] {
        let t = c.taints(n);
        assert!(!t.contains("NoExecute"), "{n}: {t}\n{}", c.logs());
        assert!(
            t.contains("node.kubernetes.io/unreachable:NoSchedule"),
            "{n}: {t}"
        );
    }
    c.parts.clear();
}

#[test]
fn drain_evicts_within_the_disruption_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path());
    c.parts.push(c.api.component(
        "hollow-nodes",
        "hollow",
        &["--nodes=2", "--node-lease-duration-seconds=4"],
    ));
    c.wait("two nodes", || {
        c.api
            .kubectl(&["get", "nodes", "-o", "name"])
            .is_ok_and(|o| o.lines().count() == 2)
    });
    // Everything starts on hollow-node-0.
    c.api.kubectl(&["cordon", "hollow-node-1"]).unwrap();
    c.apply(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web-pdb
spec:
  minAvailable: 2
  selector:
    matchLabels: {app: web}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: busybox
"#,
    );
    c.pod("loner", "hollow-node-0", "[]");
    let status = |c: &Cluster| {
        c.jsonpath(
            "pdb/web-pdb",
            "{.status.expectedPods} {.status.currentHealthy} {.status.desiredHealthy} {.status.disruptionsAllowed}",
        )
    };
    c.wait("the budget's status", || status(&c) == "3 3 2 1");
    let table = c.api.kubectl(&["get", "pdb", "web-pdb"]).unwrap();
    assert!(table.contains("ALLOWED DISRUPTIONS"), "{table}");
    assert_eq!(
        c.jsonpath(
            "pdb/web-pdb",
            "{.status.conditions[?(@.type==\"DisruptionAllowed\")].reason}"
        ),
        "SufficientPods"
    );
    c.api.kubectl(&["uncordon", "hollow-node-1"]).unwrap();

    // Without the flags, drain refuses the DaemonSet's and the bare pod.
    let refused = c
        .api
        .kubectl(&["drain", "hollow-node-0", "--timeout=10s"])
        .unwrap_err();
    assert!(
        refused.contains("cannot delete DaemonSet-managed Pods")
            && refused.contains("cannot delete Pods that declare no controller"),
        "{refused}"
    );

    // The eviction subresource says why it refuses: a budget that allows nothing.
    c.apply(
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: agent-pdb
spec:
  minAvailable: 2
  selector:
    matchLabels: {app: agent}
"#,
    );
    c.wait("the agent budget's status", || {
        c.jsonpath(
            "pdb/agent-pdb",
            "{.status.expectedPods} {.status.disruptionsAllowed}",
        ) == "2 0"
    });
    let agent = c.jsonpath(
        "pods",
        "{.items[?(@.metadata.labels.app==\"agent\")].metadata.name}",
    );
    let agent = agent.split_whitespace().next().unwrap().to_string();
    let eviction = dir.path().join("eviction.json");
    std::fs::write(
        &eviction,
        format!(r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{agent}","namespace":"default"}}}}"#),
    )
    .unwrap();
    let err = c
        .api
        .kubectl(&[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{agent}/eviction"),
            "-f",
            eviction.to_str().unwrap(),
        ])
        .unwrap_err();
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    c.api.kubectl(&["delete", "pdb", "agent-pdb"]).unwrap();

    // Drain: cordons, evicts the Deployment's pods one budget-allowed disruption at a
    // time (the others wait, 429, until replacements on the other node are ready),
    // deletes the bare pod (--force) and leaves the DaemonSet's.
    let run = c
        .api
        .kubectl_command(&[
            "drain",
            "hollow-node-0",
            "--ignore-daemonsets",
            "--force",
            "--timeout=90s",
        ])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "drain: {out}\n{}", c.logs());
    // Three evictions at once against one allowed disruption: the others were refused
    // and retried.
    assert!(
        out.contains("(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."),
        "{out}"
    );
    assert!(out.contains("node/hollow-node-0 drained"), "{out}");
    assert!(out.contains("evicting pod default/web-"), "{out}");
    assert_eq!(
        c.jsonpath("node/hollow-node-0", "{.spec.unschedulable}"),
        "true"
    );
    let on_node = |node: &str| {
        c.api
            .kubectl(&[
                "get",
                "pods",
                "--field-selector",
                &format!("spec.nodeName={node}"),
                "-o",
                "jsonpath={range .items[*]}{.metadata.labels.app}{\" \"}{end}",
            ])
            .unwrap()
    };
    assert_eq!(on_node("hollow-node-0").trim(), "agent");
    c.wait("web running on the other node", || {
        on_node("hollow-node-1").matches("web").count() == 3
    });
    assert!(c.deleting("loner"));
    c.wait("the budget healthy again", || status(&c) == "3 3 2 1");
    let events = c
        .api
        .kubectl(&[
            "get",
            "events",
            "-o",
            "custom-columns=REASON:.reason,MSG:.message",
        ])
        .unwrap();
    assert!(!events.contains("NotDeleted"), "{events}");
    c.parts.clear();
}
