//! kube-proxy on a real node (its own network namespace, the pod bridge inside), in
//! iptables and nftables modes, driven with the stock kubectl: `kubectl expose` → the
//! cluster IP answers from the node and from a pod (load-balanced over both pods, by the
//! Service's environment variables too), NodePort on the node address (and 127.0.0.1 in
//! iptables mode), ClientIP affinity pins a client, a pod failing readiness leaves the
//! rotation, hairpin traffic (a pod reaching itself through its Service), a Service
//! without endpoints is refused at once, a selectorless Service routes to hand-written
//! Endpoints, a Service IP without rules is blackholed, and traffic keeps flowing while
//! kube-proxy is down and after it restarts. /healthz and /metrics answer.

use std::collections::BTreeSet;
use std::process::Output;

use integration_tests::apiserver::Component;
use integration_tests::node::{
    apply, run_client, start_kube_proxy, start_node, start_scheduler, world, Node, World,
};
use integration_tests::{free_port, wait_until};

/// (Fields drop in order: the processes, then the node — its mounts — and last the
/// world, whose directory can only go once nothing is mounted in it.)
struct Setup {
    proxy: std::cell::RefCell<Option<Component>>,
    _sched: Component,
    node: Node,
    w: World,
    mode: &'static str,
    healthz: String,
    metrics: String,
}

impl Setup {
    fn start(mode: &'static str) -> Setup {
        let w = world();
        let node = start_node(&w, &w.dir.path().join("node"));
        let sched = start_scheduler(&w.api);
        let s = Setup {
            proxy: Default::default(),
            _sched: sched,
            node,
            w,
            mode,
            healthz: format!("127.0.0.1:{}", free_port()),
            metrics: format!("127.0.0.1:{}", free_port()),
        };
        s.start_proxy();
        s
    }

    fn start_proxy(&self) {
        let p = start_kube_proxy(&self.w.api, self.mode, &self.healthz, &self.metrics);
        *self.proxy.borrow_mut() = Some(p);
    }

    fn logs(&self) -> String {
        let tail = |p: std::path::PathBuf| {
            let l = std::fs::read_to_string(p).unwrap_or_default();
            l[l.len().saturating_sub(2500)..].to_string()
        };
        let rules = match self.mode {
            "iptables" => self.node_cmd("iptables-save", &[]),
            _ => self.node_cmd("nft", &["list", "table", "ip", "kube-proxy"]),
        };
        format!(
            "pods:\n{}\nendpoints:\n{}\nkube-proxy:\n{}\nkubelet:\n{}\nrules:\n{}",
            self.w
                .api
                .kubectl(&["get", "pods", "-o", "wide"])
                .unwrap_or_else(|e| e),
            self.w
                .api
                .kubectl(&["get", "endpoints"])
                .unwrap_or_else(|e| e),
            self.proxy
                .borrow()
                .as_ref()
                .map(|p| p.log())
                .unwrap_or_default(),
            tail(self.node.root.join("kubelet.log")),
            String::from_utf8_lossy(&rules.stdout)
        )
    }

    fn wait(&self, what: &str, f: impl FnMut() -> bool) {
        wait_until(what, 90, f, || self.logs());
    }

    /// Runs a program in the node's network namespace.
    fn node_cmd(&self, program: &str, args: &[&str]) -> Output {
        self.w.ns.command(program).args(args).output().unwrap()
    }

    /// `curl` from the node: the body, or the error.
    fn curl(&self, url: &str) -> Result<String, String> {
        let o = self.node_cmd("curl", &["-sS", "-m", "3", "--noproxy", "*", url]);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    /// `wget` from inside a pod (bounded by `timeout`: static busybox wget's own `-T`
    /// crashes).
    fn wget_in(&self, pod: &str, url: &str) -> Result<String, String> {
        self.w
            .api
            .kubectl(&[
                "exec",
                pod,
                "--",
                "sh",
                "-c",
                &format!("timeout 5 wget -qO- {url}"),
            ])
            .map(|s| s.trim().to_string())
    }

    /// Which pods answer `n` requests made with `get`.
    fn answers(&self, n: usize, get: impl Fn() -> Result<String, String>) -> BTreeSet<String> {
        (0..n)
            .map(|_| get().unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.logs())))
            .collect()
    }

    fn ready_endpoints(&self, svc: &str) -> usize {
        self.w
            .api
            .jsonpath(&["endpoints", svc], "{.subsets[*].addresses[*].ip}")
            .split_whitespace()
            .count()
    }
}

/// Pods answering their own name over HTTP on 8080, ready while /tmp/notready is absent.
const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: busybox
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080}]
        readinessProbe:
          exec: {command: [sh, -c, 'test ! -e /tmp/notready']}
          periodSeconds: 1
          failureThreshold: 1
";

fn proxies_services(mode: &'static str) {
    let s = Setup::start(mode);
    let api = &s.w.api;
    apply(api, WEB);
    api.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    s.wait("two ready endpoints", || s.ready_endpoints("web") == 2);
    let pods: BTreeSet<String> = api
        .jsonpath(&["pods", "-l", "app=web"], "{.items[*].metadata.name}")
        .split_whitespace()
        .map(String::from)
        .collect();
    let vip = api.jsonpath(&["service", "web"], "{.spec.clusterIP}");
    // (An explicit port: static busybox wget crashes looking up "http" in /etc/services.)
    let url = format!("http://{vip}:80/");
    s.wait("the cluster IP to answer from the node", || {
        s.curl(&url).is_ok()
    });
    // Both pods serve, from the node and from a pod.
    assert_eq!(s.answers(40, || s.curl(&url)), pods, "{}", s.logs());
    run_client(api, "client", || s.logs());
    assert_eq!(s.answers(30, || s.wget_in("client", &url)), pods);
    // The Service's environment variables, as the kubelet set them.
    let by_env = api.ok(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        "timeout 5 wget -qO- http://$WEB_SERVICE_HOST:$WEB_SERVICE_PORT/",
    ]);
    assert!(pods.contains(by_env.trim()), "{by_env}");

    // NodePort, on the node's address (and on 127.0.0.1 in iptables mode).
    api.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    let np = api.jsonpath(&["service", "web"], "{.spec.ports[0].nodePort}");
    let node_url = format!("http://10.244.7.2:{np}/");
    s.wait("the NodePort to answer", || s.curl(&node_url).is_ok());
    assert_eq!(s.answers(30, || s.curl(&node_url)), pods);
    let from_pod = s.wget_in("client", &node_url).unwrap();
    assert!(pods.contains(&from_pod), "{from_pod}");
    if mode == "iptables" {
        let local = format!("http://127.0.0.1:{np}/");
        assert!(pods.contains(
            &s.curl(&local)
                .unwrap_or_else(|e| panic!("{e}\n{}", s.logs()))
        ));
    }

    // ClientIP affinity pins each client to one pod.
    api.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ]);
    assert_eq!(
        api.jsonpath(
            &["service", "web"],
            "{.spec.sessionAffinityConfig.clientIP.timeoutSeconds}"
        ),
        "10800"
    );
    s.wait("affinity to pin the node's requests", || {
        s.answers(10, || s.curl(&url)).len() == 1
    });
    assert_eq!(s.answers(20, || s.curl(&url)).len(), 1);
    assert_eq!(s.answers(20, || s.wget_in("client", &url)).len(), 1);
    api.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ]);

    // A pod failing readiness leaves the rotation, and comes back.
    let first = pods.iter().next().unwrap().clone();
    api.ok(&["exec", &first, "--", "touch", "/tmp/notready"]);
    s.wait("one ready endpoint", || s.ready_endpoints("web") == 1);
    s.wait("only the ready pod to answer", || {
        !s.answers(20, || s.curl(&url)).contains(&first)
    });
    let others: BTreeSet<String> = pods.iter().filter(|p| **p != first).cloned().collect();
    assert_eq!(s.answers(20, || s.curl(&url)), others);
    api.ok(&["exec", &first, "--", "rm", "/tmp/notready"]);
    s.wait("both pods answering again", || {
        s.answers(30, || s.curl(&url)) == pods
    });

    // Hairpin: a pod reaches itself through its own Service.
    let own = s.answers(10, || s.wget_in(&first, &url));
    assert!(own.contains(&first) || own.len() == 2, "{own:?}");
    api.ok(&["scale", "deployment", "web", "--replicas=1"]);
    s.wait("one endpoint", || s.ready_endpoints("web") == 1);
    let left = api.jsonpath(
        &["endpoints", "web"],
        "{.subsets[0].addresses[0].targetRef.name}",
    );
    s.wait("only the last pod answering", || {
        s.answers(10, || s.curl(&url)) == BTreeSet::from([left.clone()])
    });
    assert_eq!(
        s.answers(5, || s.wget_in(&left, &url)),
        BTreeSet::from([left.clone()]),
        "hairpin"
    );

    // No endpoints: refused at once (REJECT), not a timeout.
    api.ok(&["create", "service", "clusterip", "empty", "--tcp=80:80"]);
    let empty_ip = api.jsonpath(&["service", "empty"], "{.spec.clusterIP}");
    s.wait("the empty Service to be refused", || {
        s.curl(&format!("http://{empty_ip}/"))
            .is_err_and(|e| e.contains("refused") || e.contains("Couldn't connect to server"))
    });

    // A Service IP nobody has: dropped on the node (the blackhole bridge).
    let routes = String::from_utf8_lossy(&s.node_cmd("ip", &["route"]).stdout).to_string();
    assert!(
        routes.contains("10.96.0.0/12 dev kube-blackhole"),
        "{routes}"
    );
    let e = s.curl("http://10.111.222.111/").unwrap_err();
    assert!(
        e.contains("No route to host") || e.contains("timed out"),
        "{e}"
    );

    // A selectorless Service with hand-written Endpoints (the seeds' external database).
    let left_ip = api.jsonpath(&["pod", &left], "{.status.podIP}");
    apply(
        api,
        &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: external-db}}
spec:
  ports: [{{port: 3306, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: external-db}}
subsets:
- addresses: [{{ip: {left_ip}}}]
  ports: [{{port: 8080}}]
"
        ),
    );
    let db_ip = api.jsonpath(&["service", "external-db"], "{.spec.clusterIP}");
    let db_url = format!("http://{db_ip}:3306/");
    s.wait("the selectorless Service to answer", || {
        s.curl(&db_url).is_ok_and(|b| b == left)
    });

    // Health and metrics.
    let health = s.curl(&format!("http://{}/healthz", s.healthz)).unwrap();
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert!(
        h["lastUpdated"]
            .as_str()
            .is_some_and(|t| !t.starts_with("0001")),
        "{health}"
    );
    let metrics = s.curl(&format!("http://{}/metrics", s.metrics)).unwrap();
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"),
        "{metrics}"
    );

    // Down, the rules stay and traffic flows; back, it takes changes again.
    drop(s.proxy.borrow_mut().take());
    assert_eq!(
        s.answers(5, || s.curl(&url)),
        BTreeSet::from([left.clone()])
    );
    s.start_proxy();
    api.ok(&["scale", "deployment", "web", "--replicas=2"]);
    s.wait("both pods answering after the restart", || {
        s.ready_endpoints("web") == 2 && s.answers(30, || s.curl(&url)).len() == 2
    });
    // Gone Services leave no rules behind.
    api.ok(&["delete", "service", "web", "empty", "external-db"]);
    s.wait("the Services' rules to go", || {
        let rules = match mode {
            "iptables" => s.node_cmd("iptables-save", &[]),
            _ => s.node_cmd("nft", &["list", "table", "ip", "kube-proxy"]),
        };
        let text = String::from_utf8_lossy(&rules.stdout).to_string();
        !text.contains("default/web") && !text.contains("default/empty")
    });
    api.ok(&["delete", "deployment", "web"]);
    api.ok(&["delete", "pod", "client", "--wait=false"]);
}

#[test]
fn iptables_mode() {
    proxies_services("iptables");
}

#[test]
fn nftables_mode() {
    proxies_services("nftables");
}

/// A process killed when dropped (also when the test fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP flow keeps its endpoint through conntrack for as long as packets flow, so
/// kube-proxy deletes the flows of an endpoint that leaves a Service: a client sending
/// from one port without pause moves to the remaining endpoint, though the old one still
/// runs.
#[test]
fn udp_flows_leave_a_removed_endpoint() {
    let s = Setup::start("iptables");
    s.w.reg.push_test_server();
    let api = &s.w.api;
    let listener = |name: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: udp}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: udp, image: ferrokube/test-server, args: [udp, --port, '5353']}}
"
        )
    };
    apply(api, &listener("udp-a"));
    apply(
        api,
        "apiVersion: v1
kind: Service
metadata: {name: udp}
spec:
  selector: {app: udp}
  ports: [{port: 53, targetPort: 5353, protocol: UDP}]
",
    );
    s.wait("udp-a behind the Service", || s.ready_endpoints("udp") == 1);
    let vip = api.jsonpath(&["service", "udp"], "{.spec.clusterIP}");
    // From one source port, a datagram every 200 ms for at most two minutes.
    let sender = format!(
        "import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 40053))
for i in range(600):
    s.sendto(b'ping %d\\n' % i, ('{vip}', 53))
    time.sleep(0.2)
"
    );
    let _sender = KillOnDrop(
        s.w.ns
            .command("python3")
            .args(["-c", &sender])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let received = |pod: &str| {
        api.kubectl(&["logs", pod])
            .unwrap_or_default()
            .contains("ping")
    };
    s.wait("udp-a to receive the flow", || received("udp-a"));
    apply(api, &listener("udp-b"));
    s.wait("both endpoints", || s.ready_endpoints("udp") == 2);
    // udp-a leaves the Service but keeps running: only the flow's deletion moves it.
    api.ok(&["label", "pod", "udp-a", "app-"]);
    s.wait("the flow to move to udp-b", || received("udp-b"));
    let flows = s.node_cmd("conntrack", &["-L", "-p", "udp", "--orig-dst", &vip]);
    let flows = String::from_utf8_lossy(&flows.stdout);
    let a_ip = api.jsonpath(&["pod", "udp-a"], "{.status.podIP}");
    assert!(
        !flows.contains(&format!("src={a_ip} ")),
        "a flow still goes to udp-a ({a_ip}):\n{flows}"
    );
}
