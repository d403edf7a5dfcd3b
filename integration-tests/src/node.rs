//! A kubelet node for tests: a network namespace holding the API server and a local
//! registry (busybox, the test server), and kubelets started in it with their state under
//! a temporary directory; containers, infra processes, mounts and cgroups are removed when
//! a node is dropped, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::apiserver::{ApiServer, Component};
use crate::netns::NetNs;
use crate::registry::LocalRegistry;
use crate::{binary, free_port};

/// The kubelet process, and everything it may have left behind, removed on drop.
pub struct Node {
    pub child: Child,
    pub root: PathBuf,
}

/// A node's world: a network namespace with the API server, the registry (with busybox)
/// and, once started, the kubelet — all on the namespace's loopback.
/// (Fields drop in order: the processes and the namespace go before the directory.)
pub struct World {
    pub api: ApiServer,
    pub reg: LocalRegistry,
    pub ns: NetNs,
    pub dir: tempfile::TempDir,
}

/// Starts a node's world: namespace, API server, registry with the test images.
pub fn world() -> World {
    world_with_controllers(&[])
}

/// ... with these kube-controller-manager flags.
pub fn world_with_controllers(controller_args: &[&str]) -> World {
    world_on("127.0.0.1", controller_args)
}

/// A world whose API server serves on the node's address (`node-1`'s 10.244.7.2), so
/// that pods reach it through the `kubernetes` Service (in-cluster clients: addons).
pub fn world_reachable_from_pods() -> World {
    world_on(NODE_IP, &[])
}

/// `node-1`'s address.
pub const NODE_IP: &str = "10.244.7.2";

fn world_on(ip: &str, controller_args: &[&str]) -> World {
    let ns = NetNs::new();
    let dir = tempfile::tempdir().unwrap();
    if ip != "127.0.0.1" {
        let ok = ns
            .command("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "adding {ip} in {}", ns.name);
    }
    let mut api = ApiServer::new(
        &dir.path().join("api"),
        ip,
        free_port(),
        free_port(),
        vec![],
    );
    api.netns = Some(ns.name.clone());
    api.controller_args = controller_args.iter().map(|a| a.to_string()).collect();
    api.spawn();
    api.wait_ready();
    let reg = LocalRegistry::start_in(&dir.path().join("registry"), Some(&ns.name));
    reg.push_busybox(&["latest"]);
    reg.push_test_server();
    World { api, reg, ns, dir }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let runc_root = self.root.join("runc");
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", id])
                    .status();
            }
        }
        let root = self.root.display().to_string();
        // The pods' infra processes (in the pods' own namespaces, so the test namespace's
        // cleanup does not reach them): their command lines name the pod directory.
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("kubelet pause .* {root}/pods/")])
            .status();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix_umount(p);
        }
        remove_test_cgroups();
    }
}

/// Removes what is empty of this test's cgroup tree ([`cgroup_root`]) in every
/// controller, deepest first.
pub fn remove_test_cgroups() {
    for ctl in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        remove_cgroups(&ctl.path().join(cgroup_root().trim_start_matches('/')));
    }
}

/// The cgroup this test's kubelet puts pods under.
pub fn cgroup_root() -> String {
    format!("/ferrokube-test-{}", std::process::id())
}

pub fn remove_cgroups(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// `umount -l`.
pub fn nix_umount(p: &str) -> std::io::Result<()> {
    let status = Command::new("umount").args(["-l", p]).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("umount failed"))
    }
}

/// Starts `node-1`'s kubelet with its state under `root`.
pub fn start_node(w: &World, root: &Path) -> Node {
    start_node_with(w, root, &[])
}

/// A node whose kubelet gets `extra` flags too.
pub fn start_node_with(w: &World, root: &Path, extra: &[String]) -> Node {
    start_node_configured(w, root, extra, "")
}

/// ... and `config` lines in its KubeletConfiguration.
pub fn start_node_configured(w: &World, root: &Path, extra: &[String], config: &str) -> Node {
    let node = NodeSpec {
        name: "node-1",
        ip: NODE_IP,
        pod_cidr: "10.244.1.0/24",
        registry: w.reg.endpoint(),
        path: None,
    };
    spawn_node(&w.ns, &w.api, &node, root, extra, config)
}

/// Who a kubelet is: its node's name and address, the pod range it gets, and the
/// registry it pulls everything from.
pub struct NodeSpec {
    pub name: &'static str,
    pub ip: &'static str,
    pub pod_cidr: &'static str,
    pub registry: String,
    /// The kubelet's `PATH`, when not the test's.
    pub path: Option<String>,
}

/// Starts a kubelet in `ns` and assigns its node the pod range.
pub fn spawn_node(
    ns: &NetNs,
    api: &ApiServer,
    spec: &NodeSpec,
    root: &Path,
    extra: &[String],
    config: &str,
) -> Node {
    std::fs::create_dir_all(root.join("manifests")).unwrap();
    // The node's address exists in its namespace (kube-apiserver dials the kubelet
    // there); a second kubelet of the same address finds it present.
    let _ = ns
        .command("ip")
        .args(["addr", "add", &format!("{}/32", spec.ip), "dev", "lo"])
        .stderr(Stdio::null())
        .status();
    let cfg = root.join("config.yaml");
    // The node shares the host's disk (as kind's do): disk pressure is the host's
    // business, unless a test sets its own thresholds. (Otherwise a full build disk
    // taints the node `disk-pressure` and nothing schedules on it.)
    let eviction = if config.contains("evictionHard") {
        ""
    } else {
        "evictionHard:\n  memory.available: 100Mi\n  nodefs.available: \"0%\"\n  nodefs.inodesFree: \"0%\"\n  imagefs.available: \"0%\"\n"
    };
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nnodeStatusUpdateFrequency: 2s\nclusterDNS: [10.96.0.10]\nstaticPodPath: {}\npodLogsDir: {}\n{eviction}{config}",
            root.join("manifests").display(),
            root.join("logs").display()
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("kubelet.log"))
        .unwrap();
    let child = ns
        .command(binary("kubelet"))
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .arg("--config")
        .arg(&cfg)
        .arg("--root-dir")
        .arg(root)
        .args(["--hostname-override", spec.name, "--node-ip", spec.ip])
        .args([
            "--registry-mirror",
            &format!("*={}", spec.registry),
            "--registry-fallback=false",
        ])
        .args(["--cgroup-root", &cgroup_root()])
        // Several kubelets may share a namespace: each serves on a port of its own.
        .args(["--port", &free_port().to_string()])
        .arg("--cni-conf-dir")
        .arg(root.join("net.d"))
        .args(extra)
        .envs(spec.path.iter().map(|p| ("PATH", p)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let node = Node {
        child,
        root: root.to_path_buf(),
    };
    // The pod network's range, as the node IPAM controller would assign it.
    wait_for(
        "the node to register",
        30,
        || api.kubectl(&["get", "node", spec.name]).is_ok(),
        &node,
    );
    api.ok(&[
        "patch",
        "node",
        spec.name,
        "-p",
        &format!(
            r#"{{"spec":{{"podCIDR":"{0}","podCIDRs":["{0}"]}}}}"#,
            spec.pod_cidr
        ),
    ]);
    node
}

/// Starts kube-proxy for `node-1` in `mode` (iptables or nftables) beside the API server:
/// the test pod network as its cluster CIDR, the service range blackholed, syncs at most
/// every 100 ms, health and metrics on `healthz` and `metrics` (host:port).
pub fn start_kube_proxy(api: &ApiServer, mode: &str, healthz: &str, metrics: &str) -> Component {
    api.component(
        "kube-proxy",
        "kube-proxy",
        &[
            "--proxy-mode",
            mode,
            "--hostname-override",
            "node-1",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--blackhole-cidr",
            "10.96.0.0/12",
            "--iptables-min-sync-period",
            "100ms",
            "--healthz-bind-address",
            healthz,
            "--metrics-bind-address",
            metrics,
        ],
    )
}

/// Starts kube-scheduler (no leader election, no serving port) beside the API server.
pub fn start_scheduler(api: &ApiServer) -> Component {
    api.component(
        "kube-scheduler",
        "scheduler",
        &["--leader-elect=false", "--secure-port=0"],
    )
}

/// A pod as JSON.
pub fn pod(api: &ApiServer, name: &str) -> Value {
    serde_json::from_str(
        &api.kubectl(&["get", "pod", name, "-o", "json"])
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap()
}

/// Waits up to `secs` for `f`, failing with the kubelet's log.
pub fn wait_for(what: &str, secs: u64, f: impl FnMut() -> bool, node: &Node) {
    crate::wait_until(what, secs, f, || {
        let log = std::fs::read_to_string(node.root.join("kubelet.log")).unwrap_or_default();
        log[log.len().saturating_sub(3000)..].to_string()
    })
}

/// `kubectl run NAME --image=busybox` on `node-1`.
pub fn run(api: &ApiServer, name: &str, restart: &str, args: &[&str]) {
    let restart = format!("--restart={restart}");
    let mut a = vec!["run", name, "--image=busybox", &restart];
    a.push(r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1"}}"#);
    a.push("--");
    a.extend_from_slice(args);
    api.ok(&a);
}

/// `kubectl apply -f -` of `yaml`; fails the test on error.
pub fn apply(api: &ApiServer, yaml: &str) {
    api.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
}

/// The events about one object: `REASON MESSAGE` lines.
pub fn events_for(api: &ApiServer, name: &str) -> String {
    api.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
        "--no-headers",
    ])
}

/// Deletes the pods and waits until no pod is left.
pub fn delete_all_pods(api: &ApiServer, names: &[&str], node: &Node) {
    for p in names {
        api.ok(&["delete", "pod", p, "--wait=false"]);
    }
    wait_for(
        "the pods to go",
        60,
        || api.ok(&["get", "pods", "--no-headers"]).trim().is_empty(),
        node,
    );
}

/// An addon's test cluster: a world whose API server pods reach, `node-1`, the scheduler
/// and kube-proxy (iptables mode), with each of `programs` pushed as the image
/// `ferrokube/<program>`.
/// (Fields drop in order: the processes, the node — its mounts — and last the world,
/// whose directory can only go once nothing is mounted in it.)
pub struct AddonCluster {
    _parts: Vec<Component>,
    pub node: Node,
    pub w: World,
}

impl AddonCluster {
    pub fn start(programs: &[&str]) -> AddonCluster {
        let w = world_reachable_from_pods();
        for p in programs {
            w.reg.push_binary(p, &format!("ferrokube/{p}"));
        }
        let node = start_node(&w, &w.dir.path().join("node"));
        let sched = start_scheduler(&w.api);
        let proxy = start_kube_proxy(
            &w.api,
            "iptables",
            &format!("127.0.0.1:{}", free_port()),
            &format!("127.0.0.1:{}", free_port()),
        );
        AddonCluster {
            _parts: vec![sched, proxy],
            node,
            w,
        }
    }

    /// What a failing test shows: every pod and Endpoints, the output of each kubectl
    /// command in `extra` (with its arguments), and the end of the kubelet's log.
    pub fn logs(&self, extra: &[&[&str]]) -> String {
        let get = |args: &[&str]| self.w.api.kubectl(args).unwrap_or_else(|e| e);
        let mut out = format!(
            "pods:\n{}\nendpoints:\n{}\n",
            get(&["get", "pods", "-A", "-o", "wide"]),
            get(&["get", "endpoints", "-A"]),
        );
        for args in extra {
            out.push_str(&format!("kubectl {}:\n{}\n", args.join(" "), get(args)));
        }
        let log = std::fs::read_to_string(self.node.root.join("kubelet.log")).unwrap_or_default();
        out.push_str("kubelet:\n");
        out.push_str(&log[log.len().saturating_sub(2500)..]);
        out
    }
}

/// Runs the busybox pod `name` (sleeping an hour: a client to exec in) and waits, up to
/// two minutes, until it runs; `logs` explains a failure.
pub fn run_client(api: &ApiServer, name: &str, logs: impl Fn() -> String) {
    api.ok(&[
        "run",
        name,
        "--image=busybox",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ]);
    crate::wait_until(
        &format!("the client pod {name}"),
        120,
        || api.jsonpath(&["pod", name], "{.status.phase}") == "Running",
        logs,
    );
}
