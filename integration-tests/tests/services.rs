//! Services' Endpoints and EndpointSlices from kube-controller-manager, with
//! kube-scheduler and hollow nodes: addresses follow the pods (named target ports
//! resolved per pod, not-ready pods apart), slices of at most 100 endpoints, a
//! selectorless Service's hand-written Endpoints (the seeds' external database) left
//! alone and mirrored into an EndpointSlice, and everything gone with the Service.

use integration_tests::apiserver::{ApiServer, Component};
use integration_tests::wait_until;

struct Cluster {
    api: ApiServer,
    _parts: Vec<Component>,
}

impl Cluster {
    fn jsonpath(&self, what: &[&str], path: &str) -> String {
        self.api.jsonpath(what, path)
    }

    fn logs(&self) -> String {
        let kcm = std::fs::read_to_string(self.api.dir.join("controller-manager.log"))
            .unwrap_or_default();
        format!(
            "endpoints:\n{}\nslices:\n{}\npods:\n{}\nkcm:\n{}",
            self.api
                .kubectl(&["get", "endpoints", "-o", "yaml"])
                .unwrap_or_else(|e| e),
            self.api
                .kubectl(&["get", "endpointslices"])
                .unwrap_or_else(|e| e),
            self.api
                .kubectl(&["get", "pods", "-o", "wide"])
                .unwrap_or_else(|e| e),
            &kcm[kcm.len().saturating_sub(3000)..]
        )
    }

    fn wait(&self, what: &str, f: impl FnMut() -> bool) {
        wait_until(what, 90, f, || self.logs());
    }

    fn apply(&self, yaml: &str) {
        self.api
            .kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("apply: {e}"));
    }
}

#[test]
fn endpoints_and_slices_follow_the_pods() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let sched = integration_tests::node::start_scheduler(&api);
    let hollow = api.component("hollow-nodes", "hollow", &["--nodes=2"]);
    let c = Cluster {
        api,
        _parts: vec![sched, hollow],
    };
    c.apply(
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, labels: {tier: front}}
spec:
  selector: {app: web}
  ports: [{name: web, port: 80, targetPort: http}]
",
    );
    c.wait("three addresses", || {
        c.jsonpath(&["endpoints", "web"], "{.subsets[0].addresses[*].ip}")
            .split_whitespace()
            .count()
            == 3
    });
    assert_eq!(
        c.jsonpath(
            &["endpoints", "web"],
            "{.subsets[0].ports[0].name} {.subsets[0].ports[0].port} {.subsets[0].ports[0].protocol} {.metadata.labels.tier}"
        ),
        "web 8080 TCP front"
    );
    let table = c.api.kubectl(&["get", "endpoints", "web"]).unwrap();
    assert!(table.contains(":8080"), "{table}");
    let slices = |c: &Cluster| {
        c.jsonpath(
            &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            "{range .items[*]}{.metadata.name} {.addressType} {.metadata.labels.endpointslice\\.kubernetes\\.io/managed-by} {.metadata.ownerReferences[0].kind} {.ports[0].port} {.endpoints[*].addresses[0]}{\"\\n\"}{end}",
        )
    };
    // Each line: name, type, manager, owner kind, port, then the addresses.
    let sizes = |c: &Cluster| -> Vec<usize> {
        slices(c)
            .lines()
            .map(|l| l.split_whitespace().count().saturating_sub(5))
            .collect()
    };
    c.wait("one slice of three", || {
        let s = slices(&c);
        s.lines().count() == 1
            && s.contains("IPv4 endpointslice-controller.k8s.io Service 8080")
            && sizes(&c) == [3]
    });
    let n = c.jsonpath(
        &["endpointslices", "-l", "kubernetes.io/service-name=web"],
        "{.items[0].endpoints[*].conditions.ready}",
    );
    assert_eq!(n, "true true true", "{}", c.logs());

    // A pod turning not ready moves to notReadyAddresses (and is not ready in its slice).
    let pods = c.jsonpath(&["pods", "-l", "app=web"], "{.items[*].metadata.name}");
    let first = pods.split_whitespace().next().unwrap().to_string();
    let ip = c.jsonpath(&["pod", &first], "{.status.podIP}");
    c.api
        .kubectl(&[
            "patch",
            "pod",
            &first,
            "--subresource=status",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
        ])
        .unwrap();
    c.wait("the pod not ready", || {
        c.jsonpath(
            &["endpoints", "web"],
            "{.subsets[0].notReadyAddresses[*].ip}",
        ) == ip
    });
    assert_eq!(
        c.jsonpath(&["endpoints", "web"], "{.subsets[0].addresses[*].ip}")
            .split_whitespace()
            .count(),
        2
    );

    // 150 pods: slices of at most 100.
    c.api
        .kubectl(&["scale", "deployment", "web", "--replicas=150"])
        .unwrap();
    c.wait("two slices of 150", || {
        let sizes = sizes(&c);
        sizes.len() == 2 && sizes.iter().sum::<usize>() == 150 && sizes.iter().all(|n| *n <= 100)
    });

    // A Service without a selector: its Endpoints are written by hand and kept.
    c.apply(
        "apiVersion: v1
kind: Service
metadata: {name: external-db}
spec:
  ports: [{port: 3306}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: external-db}
subsets:
- addresses: [{ip: 192.0.2.10}]
  ports: [{port: 3306}]
",
    );
    // ... and mirrored into an EndpointSlice.
    c.wait("the mirror", || {
        c.jsonpath(
            &["endpointslices", "-l", "kubernetes.io/service-name=external-db"],
            "{.items[0].metadata.labels.endpointslice\\.kubernetes\\.io/managed-by} {.items[0].metadata.ownerReferences[0].kind} {.items[0].endpoints[0].addresses[0]} {.items[0].ports[0].port}",
        ) == "endpointslicemirroring-controller.k8s.io Endpoints 192.0.2.10 3306"
    });
    assert_eq!(
        c.jsonpath(
            &["endpoints", "external-db"],
            "{.subsets[0].addresses[0].ip}"
        ),
        "192.0.2.10"
    );
    // The `kubernetes` Service's Endpoints are not mirrored (skip-mirror).
    assert_eq!(
        c.jsonpath(
            &[
                "endpointslices",
                "-l",
                "endpointslice.kubernetes.io/managed-by=endpointslicemirroring-controller.k8s.io"
            ],
            "{.items[*].metadata.labels.kubernetes\\.io/service-name}"
        ),
        "external-db"
    );

    // The Service goes: its Endpoints and slices go too.
    c.api.kubectl(&["delete", "service", "web"]).unwrap();
    c.wait("endpoints and slices gone", || {
        c.api
            .kubectl(&[
                "get",
                "endpoints",
                "web",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .is_ok_and(|o| o.trim().is_empty())
            && slices(&c).trim().is_empty()
    });
}
