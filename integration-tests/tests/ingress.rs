//! The Ingress controller addon (`addons/ingress-controller.yaml`: the default
//! IngressClass `ferrokube` and a host-network DaemonSet of the locally built image) on a
//! real node with kube-proxy, driven with the stock kubectl and curl from the node:
//! an Ingress naming no class gets the default one (DefaultIngressClass admission) and
//! the node's address in its status; hosts (exact, wildcard, none) and paths (Exact,
//! Prefix) route as upstream's table says, load-balanced over ready endpoints with the
//! forwarding headers; the oldest defaultBackend catches the rest, 404 without one; a
//! backend without ready endpoints answers 503; another controller's Ingress is left
//! alone; HTTPS serves a `kubectl create secret tls` certificate by SNI and the fake
//! certificate otherwise.

use std::collections::BTreeSet;

use integration_tests::node::{apply, AddonCluster, NODE_IP};
use integration_tests::wait_until;

const ADDON: &str = include_str!("../../addons/ingress-controller.yaml");

struct Setup {
    c: AddonCluster,
}

impl Setup {
    fn logs(&self) -> String {
        self.c.logs(&[
            &["get", "ingress", "-A"],
            &[
                "-n",
                "ingress-ferrokube",
                "logs",
                "-l",
                "app.kubernetes.io/name=ingress-ferrokube",
                "--tail=30",
            ],
        ])
    }

    fn wait(&self, what: &str, f: impl FnMut() -> bool) {
        wait_until(what, 120, f, || self.logs());
    }

    /// `curl` from the node with `args`: (HTTP status, body).
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let o = self
            .c
            .w
            .ns
            .command("curl")
            .args(["-sS", "-m", "5", "--noproxy", "*", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A plain HTTP request to the node's port 80 for `host` and `path`.
    fn get(&self, host: &str, path: &str) -> (u16, String) {
        self.curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://{NODE_IP}{path}"),
        ])
    }

    /// Which backend pod (its name up to the ReplicaSet hash) answered, or the status.
    fn backend(&self, host: &str, path: &str) -> String {
        let (code, body) = self.get(host, path);
        match body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("hostname: "))
        {
            Some(pod) if code == 200 => pod.split('-').next().unwrap_or_default().to_string(),
            _ => code.to_string(),
        }
    }
}

#[test]
fn ingress_controller_routes_hosts_and_paths_over_http_and_https() {
    let s = Setup {
        c: AddonCluster::start(&["ingress-controller", "test-server"]),
    };
    let api = &s.c.w.api;
    apply(api, ADDON);
    s.wait("the controller to be ready", || {
        api.jsonpath(
            &[
                "-n",
                "ingress-ferrokube",
                "pods",
                "-l",
                "app.kubernetes.io/name=ingress-ferrokube",
            ],
            "{.items[0].status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True"
    });
    apply(
        api,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: foo}
spec:
  replicas: 2
  selector: {matchLabels: {app: foo}}
  template:
    metadata: {labels: {app: foo}}
    spec:
      containers:
      - {name: web, image: ferrokube/test-server, args: [--echo-any-path], ports: [{name: http, containerPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bar}
spec:
  replicas: 1
  selector: {matchLabels: {app: bar}}
  template:
    metadata: {labels: {app: bar}}
    spec:
      containers:
      - {name: web, image: ferrokube/test-server, args: [--echo-any-path, --port, '9090']}
---
apiVersion: v1
kind: Service
metadata: {name: foo}
spec:
  selector: {app: foo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: bar}
spec:
  selector: {app: bar}
  ports: [{name: web, port: 8080, targetPort: 9090}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: routes}
spec:
  rules:
  - host: foo.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: foo, port: {number: 80}}}}
      - {path: /bar, pathType: Exact, backend: {service: {name: bar, port: {name: web}}}}
  - host: '*.wild.example.com'
    http:
      paths:
      - {path: /app, pathType: Prefix, backend: {service: {name: bar, port: {number: 8080}}}}
  - http:
      paths:
      - {path: /any, pathType: Prefix, backend: {service: {name: foo, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: elsewhere}
spec:
  ingressClassName: nginx
  defaultBackend: {service: {name: foo, port: {number: 80}}}
",
    );
    // DefaultIngressClass admission named the class; the controller wrote its address.
    assert_eq!(
        api.jsonpath(&["ingress", "routes"], "{.spec.ingressClassName}"),
        "ferrokube"
    );
    assert_eq!(
        api.jsonpath(&["ingress", "elsewhere"], "{.spec.ingressClassName}"),
        "nginx"
    );
    s.wait("the node's address in the Ingress status", || {
        api.jsonpath(
            &["ingress", "routes"],
            "{.status.loadBalancer.ingress[*].ip}",
        ) == NODE_IP
    });
    let table = api.ok(&["get", "ingress", "routes"]);
    assert!(
        table.contains("ferrokube") && table.contains(NODE_IP) && table.contains("80"),
        "{table}"
    );
    s.wait("both backends to answer", || {
        s.backend("foo.example.com", "/") == "foo" && s.backend("foo.example.com", "/bar") == "bar"
    });
    // Upstream's table: Prefix element-wise, Exact exactly, the longest match first.
    let cases = [
        ("foo.example.com", "/", "foo"),
        ("FOO.example.com:80", "/anything/at/all", "foo"),
        ("foo.example.com", "/bar", "bar"),
        ("foo.example.com", "/bar/", "foo"),
        ("foo.example.com", "/barn", "foo"),
        ("x.wild.example.com", "/app", "bar"),
        ("x.wild.example.com", "/app/1?q=2", "bar"),
        ("x.wild.example.com", "/application", "404"),
        ("y.x.wild.example.com", "/app", "404"),
        ("other.org", "/any", "foo"),
        ("other.org", "/any/thing", "foo"),
        ("other.org", "/anything", "404"),
        // A host's server answers alone (as ingress-nginx's): no fall-through.
        ("x.wild.example.com", "/any", "404"),
    ];
    for (host, path, want) in cases {
        assert_eq!(s.backend(host, path), want, "{host}{path}\n{}", s.logs());
    }
    // `kubectl create ingress` (a protobuf body: IngressRule's value is embedded).
    api.ok(&[
        "create",
        "ingress",
        "quick",
        "--rule=quick.example.com/*=foo:80",
    ]);
    s.wait("the created Ingress to route", || {
        s.backend("quick.example.com", "/x") == "foo"
    });
    // The backend sees the client's request with the forwarding headers.
    let (code, echo) = s.get("foo.example.com", "/some/path?x=1");
    assert_eq!(code, 200, "{echo}");
    assert!(
        echo.contains("request: GET /some/path?x=1 HTTP/1.1"),
        "{echo}"
    );
    for h in [
        "host: foo.example.com",
        "x-forwarded-host: foo.example.com",
        "x-forwarded-proto: http",
        "x-forwarded-port: 80",
    ] {
        assert!(echo.to_ascii_lowercase().contains(h), "{h} in:\n{echo}");
    }
    assert!(
        echo.to_ascii_lowercase().contains("x-forwarded-for: "),
        "{echo}"
    );
    // Round-robin over both ready pods of foo.
    let pods: BTreeSet<String> = (0..6)
        .map(|_| s.get("foo.example.com", "/").1)
        .filter_map(|b| b.lines().next().map(String::from))
        .collect();
    assert_eq!(pods.len(), 2, "{pods:?}");

    // An Ingress with only a defaultBackend: the catch-all server's default.
    apply(
        api,
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: fallback}
spec:
  ingressClassName: ferrokube
  defaultBackend: {service: {name: bar, port: {number: 8080}}}
",
    );
    s.wait("the default backend", || {
        s.backend("other.org", "/nothing") == "bar"
    });
    assert_eq!(s.backend("y.x.wild.example.com", "/app"), "bar");
    assert_eq!(
        s.backend("other.org", "/any"),
        "foo",
        "rules before the default"
    );
    api.ok(&["delete", "ingress", "fallback"]);
    s.wait("no default backend", || {
        s.backend("other.org", "/nothing") == "404"
    });
    // Another controller's Ingress: not served, status untouched.
    assert_eq!(
        api.jsonpath(&["ingress", "elsewhere"], "{.status.loadBalancer.ingress}"),
        ""
    );

    // No ready endpoint: 503.
    api.ok(&["scale", "deployment", "bar", "--replicas=0"]);
    s.wait("503 without endpoints", || {
        s.backend("foo.example.com", "/bar") == "503"
    });

    // HTTPS: the Secret's certificate for its host (checked against it as the CA), the
    // fake certificate for other names.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["foo.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = s.c.w.dir.path();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    let crt = dir.join("tls.crt").display().to_string();
    let keyfile = dir.join("tls.key").display().to_string();
    api.ok(&[
        "create", "secret", "tls", "foo-tls", "--cert", &crt, "--key", &keyfile,
    ]);
    api.ok(&[
        "patch",
        "ingress",
        "routes",
        "--type=merge",
        "-p",
        r#"{"spec":{"tls":[{"hosts":["foo.example.com"],"secretName":"foo-tls"}]}}"#,
    ]);
    let resolve = format!("foo.example.com:443:{NODE_IP}");
    // Plain HTTP to a host with a certificate: redirected, as ingress-nginx does.
    s.wait("the redirect to HTTPS", || {
        let redirect = s.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{redirect_url}\n%{http_code}",
            "-H",
            "Host: foo.example.com",
            &format!("http://{NODE_IP}/x?y=1"),
        ]);
        redirect == (308, "https://foo.example.com/x?y=1".to_string())
    });
    s.wait("HTTPS with the Secret's certificate", || {
        let (code, body) = s.curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            &crt,
            "https://foo.example.com/secure",
        ]);
        code == 200
            && body
                .to_ascii_lowercase()
                .contains("x-forwarded-proto: https")
    });
    let other = format!("other.org:443:{NODE_IP}");
    let o =
        s.c.w
            .ns
            .command("curl")
            .args([
                "-sS",
                "-m",
                "5",
                "-k",
                "-v",
                "--noproxy",
                "*",
                "--resolve",
                &other,
            ])
            .arg("https://other.org/any")
            .output()
            .unwrap();
    let verbose = String::from_utf8_lossy(&o.stderr);
    assert!(
        verbose.contains("Kubernetes Ingress Controller Fake Certificate"),
        "{verbose}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("hostname: foo"));
    // Without -k, the fake certificate is refused: it was not the Secret's that served.
    let (code, _) = s.curl(&[
        "--resolve",
        &other,
        "--cacert",
        &crt,
        "https://other.org/any",
    ]);
    assert_eq!(code, 0);

    let metrics = s.curl(&[&format!("http://{NODE_IP}:10254/metrics")]).1;
    assert!(
        metrics.contains("ingress_controller_responses_total{code=\"404\"}"),
        "{metrics}"
    );
}
