//! kube-scheduler against a real kube-apiserver and hollow nodes: placement by
//! nodeSelector, node affinity, taints and tolerations, cordon, resources, pod
//! anti-affinity and topology spread; unschedulable pods get upstream's
//! `FailedScheduling` message and `PodScheduled=False`, and are scheduled once a cluster
//! event makes room (not by polling).

use integration_tests::apiserver::{ApiServer, Component};
use integration_tests::wait_until;

fn start(dir: &std::path::Path) -> (ApiServer, Component) {
    let api = ApiServer::start(dir);
    let sched = api.component(
        "kube-scheduler",
        "scheduler",
        &[
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
        ],
    );
    (api, sched)
}

fn hollow(api: &ApiServer, log: &str, args: &[&str]) -> Component {
    api.component("hollow-nodes", log, args)
}

fn logs(parts: &[&Component]) -> String {
    parts
        .iter()
        .map(|c| {
            let l = c.log();
            format!(
                "{}:\n{}",
                c.log.display(),
                &l[l.len().saturating_sub(4000)..]
            )
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn apply(api: &ApiServer, yaml: &str) {
    api.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
        .unwrap_or_else(|e| panic!("apply: {e}"));
}

fn node_of(api: &ApiServer, pod: &str) -> String {
    api.kubectl(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
        .unwrap_or_default()
}

/// A pod (busybox) with the given extra spec YAML, indented under `spec:`.
fn pod_yaml(name: &str, labels: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n{spec}"
    )
}

/// Waits until the pod's PodScheduled condition reads `want` (`status/reason/message`,
/// or with `contains`, holds it); fails with what it reads and the logs.
fn wait_condition(api: &ApiServer, pod: &str, want: &str, contains: bool, parts: &[&Component]) {
    wait_until(
        &format!("{pod}: {want}"),
        30,
        || {
            let c = scheduled_condition(api, pod);
            if contains {
                c.contains(want)
            } else {
                c == want
            }
        },
        || {
            format!(
                "condition now: {}\n{}",
                scheduled_condition(api, pod),
                logs(parts)
            )
        },
    );
}

fn scheduled_condition(api: &ApiServer, pod: &str) -> String {
    api.ok(&[
        "get",
        "pod",
        pod,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].status}/{.status.conditions[?(@.type=="PodScheduled")].reason}/{.status.conditions[?(@.type=="PodScheduled")].message}"#,
    ])
}

#[test]
fn filters_place_pods_and_say_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let (api, sched) = start(dir.path());
    let ssd = hollow(
        &api,
        "ssd",
        &[
            "--name-prefix=ssd-",
            "--node-labels=disktype=ssd",
            "--cpu=2",
        ],
    );
    let hdd = hollow(
        &api,
        "hdd",
        &[
            "--name-prefix=hdd-",
            "--node-labels=disktype=hdd",
            "--cpu=2",
        ],
    );
    let gpu = hollow(
        &api,
        "gpu",
        &[
            "--name-prefix=gpu-",
            "--register-with-taints=dedicated=gpu:NoSchedule",
            "--cpu=2",
        ],
    );
    let all = [&sched, &ssd, &hdd, &gpu];
    wait_until(
        "three nodes",
        30,
        || {
            api.kubectl(&["get", "nodes", "-o", "name"])
                .is_ok_and(|o| o.lines().count() == 3)
        },
        || logs(&all),
    );

    // nodeSelector, required node affinity, a toleration.
    apply(
        &api,
        &pod_yaml("on-ssd", "", "  nodeSelector:\n    disktype: ssd\n"),
    );
    apply(
        &api,
        &pod_yaml(
            "on-hdd",
            "",
            "  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - matchExpressions:\n          - {key: disktype, operator: In, values: [hdd, nvme]}\n",
        ),
    );
    apply(
        &api,
        &pod_yaml(
            "on-gpu",
            "",
            "  nodeSelector:\n    kubernetes.io/hostname: gpu-0\n  tolerations:\n  - {key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}\n",
        ),
    );
    for (pod, node) in [
        ("on-ssd", "ssd-0"),
        ("on-hdd", "hdd-0"),
        ("on-gpu", "gpu-0"),
    ] {
        wait_until(
            &format!("{pod} on {node}"),
            30,
            || node_of(&api, pod) == node,
            || logs(&all),
        );
    }
    // Preferred node affinity outweighs the resource scores.
    apply(
        &api,
        &pod_yaml(
            "prefers-hdd",
            "",
            "  affinity:\n    nodeAffinity:\n      preferredDuringSchedulingIgnoredDuringExecution:\n      - weight: 100\n        preference:\n          matchExpressions:\n          - {key: disktype, operator: In, values: [hdd]}\n",
        ),
    );
    wait_until(
        "prefers-hdd on hdd-0",
        30,
        || node_of(&api, "prefers-hdd") == "hdd-0",
        || logs(&all),
    );

    // Hollow nodes run what is bound to them; the Scheduled event is upstream's.
    wait_until(
        "on-ssd running",
        30,
        || {
            api.kubectl(&["get", "pod", "on-ssd", "-o", "jsonpath={.status.phase}"])
                .is_ok_and(|p| p == "Running")
        },
        || logs(&all),
    );
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=on-ssd",
        "-o",
        "wide",
    ]);
    assert!(
        events.contains("Scheduled")
            && events.contains("Successfully assigned default/on-ssd to ssd-0")
            && events.contains("default-scheduler"),
        "{events}"
    );
    let cond = api.ok(&[
        "get",
        "pod",
        "on-ssd",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].status}"#,
    ]);
    assert_eq!(cond, "True");

    // No toleration: the tainted node is out, the others do not match.
    apply(
        &api,
        &pod_yaml(
            "no-toleration",
            "",
            "  nodeSelector:\n    kubernetes.io/hostname: gpu-0\n",
        ),
    );
    let want = "False/Unschedulable/0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";
    wait_condition(&api, "no-toleration", want, false, &all);
    let described = api.ok(&["describe", "pod", "no-toleration"]);
    assert!(
        described.contains("FailedScheduling")
            && described.contains("default-scheduler")
            && described.contains("untolerated taint {dedicated: gpu}"),
        "{described}"
    );

    // Too big for any node now; a bigger node arriving is the event that schedules it.
    apply(
        &api,
        &pod_yaml(
            "big",
            "",
            "    resources:\n      requests:\n        cpu: \"3\"\n",
        ),
    );
    let want = "False/Unschedulable/0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.";
    wait_condition(&api, "big", want, false, &all);
    let large = hollow(&api, "large", &["--name-prefix=large-", "--cpu=4"]);
    wait_until(
        "big on large-0",
        30,
        || node_of(&api, "big") == "large-0",
        || logs(&[&sched, &large]),
    );

    // Cordon: the node takes no new pods until uncordoned.
    api.ok(&["cordon", "ssd-0"]);
    apply(
        &api,
        &pod_yaml("after-cordon", "", "  nodeSelector:\n    disktype: ssd\n"),
    );
    wait_condition(
        &api,
        "after-cordon",
        "1 node(s) were unschedulable",
        true,
        &all,
    );
    api.ok(&["uncordon", "ssd-0"]);
    wait_until(
        "after-cordon on ssd-0",
        30,
        || node_of(&api, "after-cordon") == "ssd-0",
        || logs(&all),
    );

    // Host ports: a second pod wanting the same port goes elsewhere.
    let port = "    ports:\n    - {containerPort: 80, hostPort: 8080}\n  nodeSelector:\n    disktype: ssd\n";
    apply(&api, &pod_yaml("port-a", "", port));
    wait_until(
        "port-a on ssd-0",
        30,
        || node_of(&api, "port-a") == "ssd-0",
        || logs(&all),
    );
    apply(&api, &pod_yaml("port-b", "", port));
    let want = "1 node(s) didn't have free ports for the requested pod ports";
    wait_condition(&api, "port-b", want, true, &all);
    // Deleting the holder frees the port.
    api.ok(&["delete", "pod", "port-a", "--wait=false"]);
    wait_until(
        "port-b on ssd-0",
        30,
        || node_of(&api, "port-b") == "ssd-0",
        || logs(&all),
    );

    // Another scheduler's pods are not ours; gated pods wait for their gates.
    apply(
        &api,
        &pod_yaml("other-scheduler", "", "  schedulerName: my-scheduler\n"),
    );
    apply(
        &api,
        &pod_yaml(
            "gated",
            "",
            "  schedulingGates:\n  - name: example.com/wait\n",
        ),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(node_of(&api, "other-scheduler"), "");
    assert_eq!(node_of(&api, "gated"), "");
    api.ok(&[
        "patch",
        "pod",
        "gated",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/schedulingGates"}]"#,
    ]);
    wait_until(
        "gated scheduled",
        30,
        || !node_of(&api, "gated").is_empty(),
        || logs(&all),
    );
}

#[test]
fn anti_affinity_and_topology_spread() {
    let dir = tempfile::tempdir().unwrap();
    let (api, sched) = start(dir.path());
    let nodes = hollow(&api, "nodes", &["--nodes=3", "--zones=a,b,c"]);
    let more = hollow(
        &api,
        "more",
        &["--nodes=3", "--name-prefix=extra-", "--zones=a,b,c"],
    );
    let all = [&sched, &nodes, &more];
    wait_until(
        "six nodes",
        30,
        || {
            api.kubectl(&["get", "nodes", "-o", "name"])
                .is_ok_and(|o| o.lines().count() == 6)
        },
        || logs(&all),
    );

    // One web pod per zone: required anti-affinity on the zone.
    let anti = "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector:\n          matchLabels: {app: web}\n        topologyKey: topology.kubernetes.io/zone\n";
    for i in 0..3 {
        apply(&api, &pod_yaml(&format!("web-{i}"), "app: web", anti));
    }
    let zone_of = |pod: &str| {
        let node = node_of(&api, pod);
        api.kubectl(&[
            "get",
            "node",
            &node,
            "-o",
            r"jsonpath={.metadata.labels.topology\.kubernetes\.io/zone}",
        ])
        .unwrap_or_default()
    };
    wait_until(
        "three web pods placed",
        30,
        || (0..3).all(|i| !node_of(&api, &format!("web-{i}")).is_empty()),
        || logs(&all),
    );
    let mut zones: Vec<String> = (0..3).map(|i| zone_of(&format!("web-{i}"))).collect();
    zones.sort();
    assert_eq!(zones, vec!["a", "b", "c"]);
    apply(&api, &pod_yaml("web-3", "app: web", anti));
    let want = "False/Unschedulable/0/6 nodes are available: 6 node(s) didn't match pod anti-affinity rules. preemption: 0/6 nodes are available: 6 No preemption victims found for incoming pod.";
    wait_condition(&api, "web-3", want, false, &all);

    // Topology spread: six pods with maxSkew 1 over three zones: two in each.
    let spread = "  topologySpreadConstraints:\n  - maxSkew: 1\n    topologyKey: topology.kubernetes.io/zone\n    whenUnsatisfiable: DoNotSchedule\n    labelSelector:\n      matchLabels: {app: spread}\n";
    for i in 0..6 {
        apply(
            &api,
            &pod_yaml(&format!("spread-{i}"), "app: spread", spread),
        );
        // One at a time, so each sees the ones before (as a ReplicaSet's would not
        // need to, but this keeps the expected result exact).
        wait_until(
            "spread pod placed",
            30,
            || !node_of(&api, &format!("spread-{i}")).is_empty(),
            || logs(&all),
        );
    }
    let mut per_zone = std::collections::BTreeMap::new();
    for i in 0..6 {
        *per_zone.entry(zone_of(&format!("spread-{i}"))).or_insert(0) += 1;
    }
    assert_eq!(
        per_zone.values().copied().collect::<Vec<i32>>(),
        vec![2, 2, 2],
        "{per_zone:?}"
    );
}

#[test]
fn preemption_makes_room_for_higher_priority() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    // This one elects itself leader on upstream's Lease and serves its metrics.
    let port = integration_tests::free_port().to_string();
    let sched = api.component(
        "kube-scheduler",
        "scheduler",
        &["--bind-address=127.0.0.1", "--secure-port", &port],
    );
    let nodes = hollow(&api, "nodes", &["--nodes=1", "--cpu=2"]);
    let all = [&sched, &nodes];
    wait_until(
        "the node",
        30,
        || api.kubectl(&["get", "node", "hollow-node-0"]).is_ok(),
        || logs(&all),
    );
    api.ok(&["create", "priorityclass", "low", "--value=10"]);
    api.ok(&["create", "priorityclass", "high", "--value=1000"]);
    api.ok(&[
        "create",
        "priorityclass",
        "high-never",
        "--value=1000",
        "--preemption-policy=Never",
    ]);
    let cpu = |c: &str| format!("    resources:\n      requests:\n        cpu: \"{c}\"\n");
    apply(
        &api,
        &pod_yaml(
            "low-a",
            "",
            &format!("{}  priorityClassName: low\n", cpu("1")),
        ),
    );
    apply(
        &api,
        &pod_yaml(
            "low-b",
            "",
            &format!("{}  priorityClassName: low\n", cpu("1")),
        ),
    );
    wait_until(
        "both low pods placed",
        30,
        || node_of(&api, "low-a") == "hollow-node-0" && node_of(&api, "low-b") == "hollow-node-0",
        || logs(&all),
    );
    // The class decides the policy; a pod may not contradict it (upstream's Priority
    // admission).
    let e = api
        .kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&pod_yaml(
                "contradicts",
                "",
                &format!(
                    "{}  priorityClassName: high\n  preemptionPolicy: Never\n",
                    cpu("1")
                ),
            )),
        )
        .unwrap_err();
    assert!(e.contains("the string value of PreemptionPolicy (Never) must not be provided in pod spec; priority admission controller computed PreemptLowerPriority from the given PriorityClass name"), "{e}");
    // Higher priority, preemption not allowed: pending, and upstream's message says why.
    apply(
        &api,
        &pod_yaml(
            "never",
            "",
            &format!("{}  priorityClassName: high-never\n", cpu("1")),
        ),
    );
    let want = "False/Unschedulable/0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.";
    wait_condition(&api, "never", want, false, &all);
    api.ok(&["delete", "pod", "never", "--wait=false"]);
    // A high-priority pod evicts one low pod and takes its place.
    apply(
        &api,
        &pod_yaml(
            "high",
            "",
            &format!("{}  priorityClassName: high\n", cpu("1")),
        ),
    );
    wait_until(
        "high placed",
        60,
        || node_of(&api, "high") == "hollow-node-0",
        || logs(&all),
    );
    let left: Vec<bool> = ["low-a", "low-b"]
        .iter()
        .map(|p| api.kubectl(&["get", "pod", p]).is_ok())
        .collect();
    assert_eq!(left.iter().filter(|l| **l).count(), 1, "{left:?}");
    let events = api.ok(&["get", "events", "--field-selector", "reason=Preempted"]);
    assert!(
        events.contains("Preempted by pod") && events.contains("on node hollow-node-0"),
        "{events}"
    );

    let holder = api.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-scheduler",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(!holder.is_empty());
    let get = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sSk", "--max-time", "5"])
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("/healthz"), "ok");
    let metrics = get("/metrics");
    for want in [
        "leader_election_master_status{name=\"kube-scheduler\"} 1",
        "scheduler_schedule_attempts_total{profile=\"default-scheduler\",result=\"scheduled\"}",
        "scheduler_schedule_attempts_total{profile=\"default-scheduler\",result=\"unschedulable\"}",
        "scheduler_scheduling_attempt_duration_seconds_bucket{profile=\"default-scheduler\",result=\"scheduled\",le=\"+Inf\"}",
        "scheduler_pending_pods{queue=\"active\"} 0",
    ] {
        assert!(metrics.contains(want), "{want} not in:\n{metrics}");
    }
}
