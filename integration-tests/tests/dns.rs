//! Cluster DNS as kubeadm deploys CoreDNS: the addon manifest (`addons/cluster-dns.yaml`:
//! ServiceAccount with RBAC, a 2-replica Deployment of the locally built image, the
//! `kube-dns` Service at 10.96.0.10) on a real node with kube-proxy; the DNS pods read
//! the API through the `kubernetes` Service with their service-account token. A busybox
//! pod resolves, with `nslookup` through its resolv.conf: a Service by short and full
//! name, a headless Service's pods, StatefulSet pods by `<pod>.<svc>`, SRV of named
//! ports, PTR of a cluster IP, an ExternalName's CNAME, NXDOMAIN for unknown names.

use integration_tests::node::{apply, run_client, AddonCluster};
use integration_tests::wait_until;

const ADDON: &str = include_str!("../../addons/cluster-dns.yaml");

struct Setup {
    c: AddonCluster,
}

impl Setup {
    fn logs(&self) -> String {
        self.c.logs(&[&[
            "-n",
            "kube-system",
            "logs",
            "-l",
            "k8s-app=kube-dns",
            "--tail=20",
        ]])
    }

    fn wait(&self, what: &str, f: impl FnMut() -> bool) {
        wait_until(what, 120, f, || self.logs());
    }

    /// `nslookup` in the client pod: everything it printed, and whether it exited 0.
    /// (busybox's nslookup asks for a short name under every search domain at once and
    /// fails when any of them is unknown, as it does against CoreDNS.)
    fn nslookup(&self, args: &[&str]) -> (String, bool) {
        let script = format!("nslookup {} 2>&1; echo rc=$?", args.join(" "));
        let out = self
            .c
            .w
            .api
            .kubectl(&["exec", "client", "--", "sh", "-c", &script])
            .unwrap_or_else(|e| e);
        let ok = out.trim_end().ends_with("rc=0");
        (out, ok)
    }

    /// The output of an `nslookup` that must succeed.
    fn resolves(&self, args: &[&str]) -> String {
        let (out, ok) = self.nslookup(args);
        assert!(ok, "nslookup {args:?}:\n{out}\n{}", self.logs());
        out
    }
}

#[test]
fn cluster_dns_addon_resolves_services_and_pods() {
    let s = Setup {
        c: AddonCluster::start(&["cluster-dns"]),
    };
    let api = &s.c.w.api;
    apply(api, ADDON);
    s.wait("two ready DNS pods behind kube-dns", || {
        api.jsonpath(
            &["-n", "kube-system", "endpoints", "kube-dns"],
            "{.subsets[0].addresses[*].ip}",
        )
        .split_whitespace()
        .count()
            == 2
    });
    assert_eq!(
        api.jsonpath(
            &["-n", "kube-system", "service", "kube-dns"],
            "{.spec.clusterIP}"
        ),
        "10.96.0.10"
    );
    apply(
        api,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: busybox, command: [sleep, '3600']}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: nginx}
  ports: [{name: web, port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: nginx
  replicas: 2
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: nginx, image: busybox, command: [sleep, '3600']}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: db.example.com}
",
    );
    run_client(api, "client", || s.logs());
    s.wait("the StatefulSet's pods", || {
        api.jsonpath(&["pod", "web-1"], "{.status.phase}") == "Running"
    });
    let resolv = api.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    let vip = api.jsonpath(&["service", "web"], "{.spec.clusterIP}");
    s.wait("the Service's name to resolve", || {
        s.nslookup(&["web.default.svc.cluster.local"])
            .0
            .contains(&vip)
    });
    let full = s.resolves(&["web.default.svc.cluster.local"]);
    assert!(full.contains(&format!("Address: {vip}")), "{full}");
    // The short name through the search path (busybox asks under every search domain).
    let (short, _) = s.nslookup(&["web"]);
    assert!(
        short.contains("Name:\tweb.default.svc.cluster.local") && short.contains(&vip),
        "{short}"
    );
    assert!(
        short.contains("can't find web.svc.cluster.local: NXDOMAIN"),
        "{short}"
    );
    // Headless: every ready pod; StatefulSet pods by <pod>.<service>.
    let ip0 = api.jsonpath(&["pod", "web-0"], "{.status.podIP}");
    let ip1 = api.jsonpath(&["pod", "web-1"], "{.status.podIP}");
    s.wait("the headless Service's two pods", || {
        let (o, ok) = s.nslookup(&["nginx.default.svc.cluster.local"]);
        ok && o.contains(&ip0) && o.contains(&ip1)
    });
    let pod0 = s.resolves(&["web-0.nginx.default.svc.cluster.local"]);
    assert!(pod0.contains(&ip0) && !pod0.contains(&ip1), "{pod0}");
    let pod1 = s.resolves(&["web-1.nginx.default.svc.cluster.local"]);
    assert!(pod1.contains(&ip1), "{pod1}");
    // SRV of named ports.
    let srv = s.resolves(&["-type=srv", "_http._tcp.web.default.svc.cluster.local"]);
    assert!(srv.contains("web.default.svc.cluster.local"), "{srv}");
    assert!(srv.contains(" 80 "), "{srv}");
    let srv = s.resolves(&["-type=srv", "_web._tcp.nginx.default.svc.cluster.local"]);
    assert!(
        srv.contains("web-0.nginx.default.svc.cluster.local"),
        "{srv}"
    );
    // PTR of the cluster IP.
    let ptr = s.resolves(&[&vip]);
    assert!(ptr.contains("web.default.svc.cluster.local"), "{ptr}");
    // ExternalName.
    let cname = s.resolves(&["-type=cname", "ext.default.svc.cluster.local"]);
    assert!(cname.contains("canonical name = db.example.com"), "{cname}");
    // Unknown names.
    let (e, ok) = s.nslookup(&["nope.default.svc.cluster.local"]);
    assert!(!ok && e.contains("NXDOMAIN"), "{e}");
    // A Service appears in DNS soon after it is made.
    api.ok(&["create", "service", "clusterip", "late", "--tcp=80:80"]);
    let late = api.jsonpath(&["service", "late"], "{.spec.clusterIP}");
    s.wait("a new Service to resolve", || {
        s.nslookup(&["late.default.svc.cluster.local"])
            .0
            .contains(&late)
    });
    // The DNS pods' readiness, health and metrics, on CoreDNS's ports.
    let dns_ip = api.jsonpath(
        &["-n", "kube-system", "pods", "-l", "k8s-app=kube-dns"],
        "{.items[0].status.podIP}",
    );
    let curl = |url: String| {
        let o =
            s.c.w
                .ns
                .command("curl")
                .args(["-sS", "-m", "3", "--noproxy", "*", &url])
                .output()
                .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(curl(format!("http://{dns_ip}:8181/ready")), "OK");
    assert_eq!(curl(format!("http://{dns_ip}:8080/health")), "OK");
    assert!(curl(format!("http://{dns_ip}:9153/metrics")).contains("coredns_dns_requests_total"));
    api.ok(&["delete", "pod", "client", "--wait=false"]);
}
