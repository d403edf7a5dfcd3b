//! The horizontal pod autoscaler on a real node (runc, busybox burning CPU under a 200m
//! limit, usage from the kubelet through `metrics.k8s.io`): `kubectl autoscale` scales
//! the Deployment up to its maximum while the pods burn twice their request, and back to
//! its minimum once they idle, with upstream's conditions, events and `kubectl get hpa`.

use integration_tests::apiserver::ApiServer;
use integration_tests::node::*;

fn hpa_events(api: &ApiServer) -> String {
    api.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler",
        "-o",
        "custom-columns=REASON:.reason,MSG:.message",
    ])
    .unwrap()
}

fn jsonpath(api: &ApiServer, what: &str, path: &str) -> String {
    api.jsonpath(&[what], path)
}

#[test]
fn hpa_scales_on_cpu_utilization() {
    // A short sync period and downscale stabilization for the test (upstream: 15 s, 5 min).
    let w = world_with_controllers(&[
        "--horizontal-pod-autoscaler-sync-period=2s",
        "--horizontal-pod-autoscaler-downscale-stabilization=10s",
    ]);
    let api = &w.api;
    let node = start_node(&w, &w.dir.path().join("kubelet"));
    let _sched = integration_tests::node::start_scheduler(api);
    apply(
        api,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: burner}
spec:
  replicas: 1
  selector: {matchLabels: {app: burner}}
  template:
    metadata: {labels: {app: burner}}
    spec:
      containers:
      - name: burn
        image: busybox
        command: [sh, -c, 'while [ ! -e /tmp/idle ]; do :; done; exec sleep 3600']
        resources: {requests: {cpu: 100m}, limits: {cpu: 200m}}
",
    );
    let logs = || {
        let kcm =
            std::fs::read_to_string(api.dir.join("controller-manager.log")).unwrap_or_default();
        format!(
            "hpa: {}\npods: {}\nevents: {}\nkcm: {}",
            api.kubectl(&["get", "hpa", "burner", "-o", "yaml"])
                .unwrap_or_else(|e| e),
            api.kubectl(&["get", "pods", "-o", "wide"])
                .unwrap_or_else(|e| e),
            api.kubectl(&["get", "events"]).unwrap_or_else(|e| e),
            &kcm[kcm.len().saturating_sub(3000)..]
        )
    };
    wait_for(
        "the burner running",
        90,
        || jsonpath(api, "deployment/burner", "{.status.readyReplicas}") == "1",
        &node,
    );
    api.kubectl(&[
        "autoscale",
        "deployment",
        "burner",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ])
    .unwrap_or_else(|e| panic!("autoscale: {e}"));

    // 200m used of 100m requested = 200% against 50%: four wanted, three allowed.
    integration_tests::wait_until(
        "scaled to the maximum",
        180,
        || jsonpath(api, "deployment/burner", "{.spec.replicas}") == "3",
        logs,
    );
    let events = hpa_events(api);
    assert!(
        events.contains(
            "New size: 3; reason: cpu resource utilization (percentage of request) above target"
        ),
        "{events}"
    );
    let cond = |ty: &str| {
        jsonpath(
            api,
            "hpa/burner",
            &format!("{{.status.conditions[?(@.type==\"{ty}\")].status}} {{.status.conditions[?(@.type==\"{ty}\")].reason}}"),
        )
    };
    assert_eq!(cond("ScalingActive"), "True ValidMetricFound", "{}", logs());
    let table = api.kubectl(&["get", "hpa", "burner"]).unwrap();
    assert!(
        table.contains("cpu: ") && table.contains("%/50%"),
        "{table}"
    );
    let util: i64 = jsonpath(
        api,
        "hpa/burner",
        "{.status.currentMetrics[0].resource.current.averageUtilization}",
    )
    .parse()
    .unwrap_or_else(|_| panic!("no utilization: {}", logs()));
    assert!(util > 100, "utilization {util}%");

    // The pods idle: back to the minimum after the stabilization window.
    wait_for(
        "three burners running",
        90,
        || jsonpath(api, "deployment/burner", "{.status.readyReplicas}") == "3",
        &node,
    );
    let pods = jsonpath(api, "pods", "{.items[*].metadata.name}");
    for p in pods.split_whitespace() {
        api.kubectl(&["exec", p, "--", "touch", "/tmp/idle"])
            .unwrap_or_else(|e| panic!("exec {p}: {e}"));
    }
    integration_tests::wait_until(
        "scaled back to the minimum",
        180,
        || jsonpath(api, "deployment/burner", "{.spec.replicas}") == "1",
        logs,
    );
    let events = hpa_events(api);
    assert!(
        events.contains("New size: 1; reason: All metrics below target"),
        "{events}"
    );
}
