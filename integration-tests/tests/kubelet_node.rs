//! The kubelet's Node: registration with upstream's labels, capacity and system info,
//! status heartbeats, the node Lease, NotReady while there is no pod network, and a
//! restart that takes the same Node back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::apiserver::ApiServer;
use integration_tests::binary;
use serde_json::Value;

struct Kubelet(Child);

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        integration_tests::node::remove_test_cgroups();
    }
}

fn kubelet(api: &ApiServer, root: &std::path::Path, extra: &[&str]) -> Kubelet {
    let cfg = root.join("config.yaml");
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        &cfg,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nnodeStatusUpdateFrequency: 1s\nnodeLeaseDurationSeconds: 8\nmaxPods: 42\nevictionHard:\n  nodefs.available: \"100%\"\n  memory.available: \"1Ki\"\n",
    )
    .unwrap();
    let log = std::fs::File::create(root.join("kubelet.log")).unwrap();
    Kubelet(
        Command::new(binary("kubelet"))
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .arg("--config")
            .arg(&cfg)
            .arg("--root-dir")
            .arg(root)
            .args(["--hostname-override", "node-1", "--node-ip", "10.244.7.2"])
            // The QoS cgroups go under this test's tree, not the machine's root.
            .args(["--cgroup-root", &integration_tests::node::cgroup_root()])
            .arg("--cni-conf-dir")
            .arg(root.join("net.d"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn wait_json(api: &ApiServer, args: &[&str], ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(out) = api.kubectl(args) {
            if let Ok(v) = serde_json::from_str::<Value>(&out) {
                if ok(&v) {
                    return v;
                }
            }
        }
        assert!(Instant::now() < deadline, "timed out on kubectl {args:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn node_registers_heartbeats_and_reregisters() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(&dir.path().join("api"));
    let root = dir.path().join("kubelet");
    let k = kubelet(&api, &root, &["--node-labels", "tier=edge"]);
    let node = wait_json(&api, &["get", "node", "node-1", "-o", "json"], |n| {
        n["status"]["conditions"].is_array()
    });
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "node-1");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["tier"], "edge");
    assert_eq!(node["status"]["capacity"]["pods"], "42");
    assert!(node["status"]["capacity"]["memory"]
        .as_str()
        .unwrap()
        .ends_with("Ki"));
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.32.0");
    assert_eq!(
        node["status"]["addresses"][0],
        serde_json::json!({"type": "InternalIP", "address": "10.244.7.2"})
    );
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False", "no pod network yet");
    // Less than all of the root file system is always free: over the 100% threshold.
    let condition = |t: &str| {
        node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(condition("DiskPressure")["status"], "True");
    assert_eq!(
        condition("DiskPressure")["reason"],
        "KubeletHasDiskPressure"
    );
    assert_eq!(condition("MemoryPressure")["status"], "False");
    assert_eq!(
        condition("MemoryPressure")["reason"],
        "KubeletHasSufficientMemory"
    );
    assert_eq!(condition("PIDPressure")["status"], "False");
    assert!(ready["message"]
        .as_str()
        .unwrap()
        .contains("NetworkReady=false"));
    let wide = api.ok(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let cols: Vec<&str> = wide.split_whitespace().collect();
    assert_eq!(
        (cols[0], cols[1], cols[4], cols[5]),
        ("node-1", "NotReady", "v1.32.0", "10.244.7.2"),
        "{wide}"
    );
    // The Lease, owned by the Node, renewed.
    let lease = wait_json(
        &api,
        &[
            "get",
            "lease",
            "node-1",
            "-n",
            "kube-node-lease",
            "-o",
            "json",
        ],
        |l| l["spec"]["renewTime"].is_string(),
    );
    assert_eq!(lease["spec"]["holderIdentity"], "node-1");
    assert_eq!(
        lease["metadata"]["ownerReferences"][0]["uid"],
        node["metadata"]["uid"]
    );
    let first = lease["spec"]["renewTime"].as_str().unwrap().to_string();
    wait_json(
        &api,
        &[
            "get",
            "lease",
            "node-1",
            "-n",
            "kube-node-lease",
            "-o",
            "json",
        ],
        |l| l["spec"]["renewTime"].as_str() != Some(first.as_str()),
    );
    // Heartbeats move.
    let hb = ready["lastHeartbeatTime"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    wait_json(&api, &["get", "node", "node-1", "-o", "json"], |n| {
        n["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "Ready" && c["lastHeartbeatTime"].as_str() != Some(hb.as_str())
            })
        })
    });
    // A restarted kubelet takes the same Node back.
    drop(k);
    let _k = kubelet(&api, &root, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let again = wait_json(&api, &["get", "node", "node-1", "-o", "json"], |n| {
        n["status"]["conditions"].is_array()
    });
    assert_eq!(again["metadata"]["uid"], node["metadata"]["uid"]);
    assert_eq!(api.ok(&["get", "nodes", "--no-headers"]).lines().count(), 1);
    let desc = api.ok(&["describe", "node", "node-1"]);
    assert!(
        desc.contains("Capacity:") && desc.contains("KubeletNotReady"),
        "{desc}"
    );
}

#[test]
fn bad_settings_stop_the_kubelet_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str, extra: &[&str]| -> (bool, String) {
        let cfg = dir.path().join("config.yaml");
        std::fs::write(
            &cfg,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{config}"
            ),
        )
        .unwrap();
        let out = Command::new(binary("kubelet"))
            .arg("--kubeconfig")
            .arg(dir.path().join("no-such-kubeconfig"))
            .arg("--config")
            .arg(&cfg)
            .arg("--root-dir")
            .arg(dir.path().join("root"))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    for (config, extra, expect) in [
        (
            "imageGCHighThresholdPercent: 70\nimageGCLowThresholdPercent: 75\n",
            &[][..],
            "imageGCLowThresholdPercent (--image-gc-low-threshold) 75 must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) 70",
        ),
        ("containerLogMaxFiles: 1\n", &[], "containerLogMaxFiles: 1 must be at least 2"),
        ("containerLogMaxSize: lots\n", &[], "containerLogMaxSize: invalid quantity"),
        ("podLogsDir: relative/logs\n", &[], "podLogsDir relative/logs must be an absolute path"),
        ("cgroupDriver: systemd\n", &[], "cgroup driver \"systemd\" is not supported"),
        ("", &["--cgroup-driver", "croups"], "--cgroup-driver must be cgroupfs or systemd"),
        ("", &["--image-gc-period", "0s"], "invalid duration"),
        (
            "evictionHard:\n  memory.free: 1Gi\n",
            &[],
            "evictionHard: unsupported eviction signal memory.free",
        ),
        (
            "evictionHard:\n  nodefs.available: 110%\n",
            &[],
            "evictionHard: invalid value \"110%\" for nodefs.available",
        ),
    ] {
        let (ok, stderr) = run(config, extra);
        assert!(!ok, "{config} {extra:?} was accepted");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(expect), "{config} {extra:?}: {stderr}");
    }
}
