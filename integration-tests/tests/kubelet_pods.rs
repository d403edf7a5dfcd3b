//! Pods run by the kubelet with real runc (root): images from a local registry through
//! a mirror (no outside registry), exit codes and phases, CRI logs, restart back-off,
//! graceful deletion, and every container, mount, netns and cgroup removed afterwards.
//! Pods are bound with `spec.nodeName` (no scheduler yet); each runs in a network
//! namespace of its own with loopback only (the pod network comes next).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::apiserver::ApiServer;
use integration_tests::netns::NetNs;
use integration_tests::node::*;
use integration_tests::registry::LocalRegistry;
use integration_tests::{binary, free_port};
use serde_json::{json, Value};

#[test]
fn pods_run_exit_restart_and_go() {
    let w = world();
    let api = &w.api;
    let node = start_node(&w, &w.dir.path().join("kubelet"));
    // With a podCIDR and the plugins, the pod network is up and the node Ready.
    wait_for(
        "the node to be Ready",
        30,
        || {
            api.kubectl(&["get", "node", "node-1", "--no-headers"])
                .is_ok_and(|out| out.split_whitespace().nth(1) == Some("Ready"))
        },
        &node,
    );

    // A pod that prints and exits: Succeeded, its output in the CRI log.
    run(api, "hello", "Never", &["sh", "-c", "echo hello world"]);
    wait_for(
        "hello to succeed",
        60,
        || pod(api, "hello")["status"]["phase"] == "Succeeded",
        &node,
    );
    let p = pod(api, "hello");
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["state"]["terminated"]["reason"], "Completed");
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0);
    assert!(
        cs["imageID"]
            .as_str()
            .unwrap()
            .starts_with("docker.io/library/busybox@sha256:"),
        "{cs}"
    );
    assert!(cs["containerID"].as_str().unwrap().starts_with("runc://"));
    assert_eq!(p["status"]["hostIP"], "10.244.7.2");
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let log = std::fs::read_to_string(
        node.root
            .join(format!("logs/default_hello_{uid}/hello/0.log")),
    )
    .unwrap();
    assert!(log.trim_end().ends_with("stdout F hello world"), "{log}");
    let reasons = |name: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(&api.ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "json",
        ]))
        .unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let r = reasons("hello");
    for want in ["Pulling", "Pulled", "Created", "Started"] {
        assert!(r.iter().any(|x| x == want), "{want} missing from {r:?}");
    }
    let describe = api.ok(&["describe", "pod", "hello"]);
    assert!(
        describe.contains("Started container hello") && describe.contains("kubelet"),
        "{describe}"
    );
    let table = api.ok(&["get", "pod", "hello", "--no-headers"]);
    assert!(
        table.contains("0/1") && table.contains("Completed"),
        "{table}"
    );

    // The pod's /etc files: cluster DNS and its own name and address.
    run(
        api,
        "etc",
        "Never",
        &["cat", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname"],
    );
    wait_for(
        "etc to finish",
        30,
        || pod(api, "etc")["status"]["phase"] == "Succeeded",
        &node,
    );
    let p = pod(api, "etc");
    let log = std::fs::read_to_string(node.root.join(format!(
        "logs/default_etc_{}/etc/0.log",
        p["metadata"]["uid"].as_str().unwrap()
    )))
    .unwrap();
    let ip = p["status"]["podIP"].as_str().unwrap();
    for want in [
        "stdout F search default.svc.cluster.local svc.cluster.local cluster.local",
        "stdout F nameserver 10.96.0.10",
        "stdout F options ndots:5",
        "stdout F # Kubernetes-managed hosts file.",
        &format!("stdout F {ip}\tetc"),
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }

    // securityContext: users and groups, a read-only root, no capabilities.
    api.ok(&[
        "run",
        "secure",
        "--image=busybox",
        "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1","securityContext":{"runAsUser":1000,"runAsGroup":3000,"supplementalGroups":[4000]},"containers":[{"name":"secure","image":"busybox","command":["sh","-c","busybox id; echo x > /file || echo read-only"],"securityContext":{"readOnlyRootFilesystem":true,"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}"#,
    ]);
    wait_for(
        "secure to finish",
        30,
        || pod(api, "secure")["status"]["phase"] == "Succeeded",
        &node,
    );
    let log = std::fs::read_to_string(node.root.join(format!(
        "logs/default_secure_{}/secure/0.log",
        pod(api, "secure")["metadata"]["uid"].as_str().unwrap()
    )))
    .unwrap();
    assert!(
        log.contains("uid=1000 gid=3000") && log.contains("4000"),
        "{log}"
    );
    assert!(log.contains("stdout F read-only"), "{log}");
    // runAsNonRoot with an image that runs as root: refused before it starts.
    api.ok(&[
        "run",
        "rootless",
        "--image=busybox",
        "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1","securityContext":{"runAsNonRoot":true}}}"#,
        "--",
        "true",
    ]);
    wait_for(
        "rootless to be refused",
        30,
        || {
            pod(api, "rootless")["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        },
        &node,
    );

    // A shared process namespace: PID 1 is the pod's infra process, the containers see
    // each other, and they share the pod's host name.
    api.ok(&[
        "run",
        "shared",
        "--image=busybox",
        "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1","shareProcessNamespace":true,"containers":[{"name":"a","image":"busybox","command":["sleep","3600"]},{"name":"b","image":"busybox","command":["sh","-c","busybox sleep 1; busybox ps; busybox hostname"]}]}}"#,
    ]);
    wait_for(
        "shared's b to finish",
        30,
        || {
            pod(api, "shared")["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["name"] == "b" && c["state"]["terminated"].is_object())
                })
        },
        &node,
    );
    let log = std::fs::read_to_string(node.root.join(format!(
        "logs/default_shared_{}/b/0.log",
        pod(api, "shared")["metadata"]["uid"].as_str().unwrap()
    )))
    .unwrap();
    assert!(log.contains("sleep 3600"), "b sees a: {log}");
    assert!(
        log.lines()
            .any(|l| l.contains(" 1 ") && l.contains("pause")),
        "PID 1 is the infra process: {log}"
    );
    assert!(
        log.contains("stdout F shared\n"),
        "the pod's host name: {log}"
    );

    // A failing pod that is never restarted: Failed, with the exit code.
    run(api, "fails", "Never", &["sh", "-c", "exit 3"]);
    wait_for(
        "fails to fail",
        30,
        || pod(api, "fails")["status"]["phase"] == "Failed",
        &node,
    );
    let t = &pod(api, "fails")["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (t["reason"].as_str(), t["exitCode"].as_i64()),
        (Some("Error"), Some(3))
    );

    // Over its memory limit: killed by the kernel, reported as OOMKilled; the limits
    // reach the container's cgroup.
    api.ok(&[
        "run",
        "hog",
        "--image=busybox",
        "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1","containers":[{"name":"hog","image":"busybox","command":["busybox","dd","if=/dev/zero","of=/dev/null","bs=64M","count=1"],"resources":{"limits":{"memory":"16Mi","cpu":"250m"}}}]}}"#,
    ]);
    wait_for(
        "hog to fail",
        30,
        || pod(api, "hog")["status"]["phase"] == "Failed",
        &node,
    );
    let t = &pod(api, "hog")["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (t["reason"].as_str(), t["exitCode"].as_i64()),
        (Some("OOMKilled"), Some(137)),
        "{t}"
    );

    // A Guaranteed pod: its pod cgroup (kubepods/pod<uid>, as upstream lays them out)
    // holds the infra process and carries the limits, as does the container's.
    api.ok(&[
        "run",
        "limited",
        "--image=busybox",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1","terminationGracePeriodSeconds":0,"containers":[{"name":"limited","image":"busybox","command":["sleep","3600"],"resources":{"limits":{"memory":"32Mi","cpu":"250m"}}}]}}"#,
    ]);
    wait_for(
        "limited to run",
        30,
        || pod(api, "limited")["status"]["phase"] == "Running",
        &node,
    );
    let limited = pod(api, "limited");
    assert_eq!(limited["status"]["qosClass"], "Guaranteed");
    let uid = limited["metadata"]["uid"].as_str().unwrap().to_string();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cg = |ctl: &str, rel: &str, file: &str| -> String {
        let base = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup").join(ctl)
        };
        let p = base
            .join(cgroup_root().trim_start_matches('/'))
            .join(rel)
            .join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    };
    let pod_cg = format!("kubepods/pod{uid}");
    let id = limited["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("runc://")
        .to_string();
    let infra_pid =
        std::fs::read_to_string(node.root.join("pods").join(&uid).join("infra.pid")).unwrap();
    if v2 {
        assert_eq!(cg("", &pod_cg, "memory.max"), (32 << 20).to_string());
        assert_eq!(cg("", &pod_cg, "cpu.max"), "25000 100000");
        assert!(cg("", &pod_cg, "cgroup.procs").contains(infra_pid.trim()));
    } else {
        assert_eq!(
            cg("memory", &pod_cg, "memory.limit_in_bytes"),
            (32 << 20).to_string()
        );
        assert_eq!(cg("cpu", &pod_cg, "cpu.cfs_quota_us"), "25000");
        assert_eq!(cg("cpu", &pod_cg, "cpu.shares"), "256");
        assert_eq!(
            cg("memory", &format!("{pod_cg}/{id}"), "memory.limit_in_bytes"),
            (32 << 20).to_string()
        );
        assert!(cg("memory", &pod_cg, "cgroup.procs")
            .lines()
            .any(|l| l == infra_pid.trim()));
        // BestEffort pods share the least weight.
        assert_eq!(cg("cpu", "kubepods/besteffort", "cpu.shares"), "2");
    }
    api.ok(&["delete", "pod", "limited", "--wait=false"]);
    let pod_dir = if v2 {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    }
    .join(cgroup_root().trim_start_matches('/'))
    .join(&pod_cg);
    wait_for("the pod cgroup to go", 30, || !pod_dir.exists(), &node);

    // A failing pod that is always restarted: CrashLoopBackOff with the last exit.
    run(api, "crash", "Always", &["sh", "-c", "exit 1"]);
    wait_for(
        "crash to back off",
        30,
        || {
            pod(api, "crash")["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CrashLoopBackOff"
        },
        &node,
    );
    let cs = &pod(api, "crash")["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
    assert!(api
        .ok(&["get", "pod", "crash", "--no-headers"])
        .contains("CrashLoopBackOff"));

    // An image that does not exist.
    api.ok(&[
        "run",
        "noimage",
        "--image=nosuch/image:1",
        "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1"}}"#,
    ]);
    wait_for(
        "the pull to fail",
        30,
        || {
            let r = pod(api, "noimage")["status"]["containerStatuses"][0]["state"]["waiting"]
                ["reason"]
                .clone();
            r == "ErrImagePull" || r == "ImagePullBackOff"
        },
        &node,
    );

    // A long-running pod: Running and ready; deleted gracefully (busybox as PID 1
    // ignores SIGTERM, so the grace period ends in SIGKILL).
    run(api, "sleeper", "Always", &["sleep", "3600"]);
    wait_for(
        "sleeper to run",
        30,
        || pod(api, "sleeper")["status"]["phase"] == "Running",
        &node,
    );
    let p = pod(api, "sleeper");
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
    let ready = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True");
    assert!(api
        .ok(&["get", "pod", "sleeper", "--no-headers"])
        .contains("1/1"));
    let sleeper_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    api.ok(&[
        "delete",
        "pod",
        "sleeper",
        "--grace-period=2",
        "--wait=false",
    ]);
    wait_for(
        "sleeper to be gone",
        30,
        || api.kubectl(&["get", "pod", "sleeper"]).is_err(),
        &node,
    );
    wait_for(
        "the pod's state and logs to be removed",
        10,
        || {
            !node.root.join("pods").join(&sleeper_uid).exists()
                && !node
                    .root
                    .join(format!("logs/default_sleeper_{sleeper_uid}"))
                    .exists()
        },
        &node,
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&sleeper_uid), "no mount of the pod left");

    // Pods reach each other over the pod network.
    // The test-server image (the project's own server), reached from a busybox pod.
    api.ok(&[
        "run",
        "web",
        "--image=ferrokube/test-server",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1"}}"#,
    ]);
    wait_for(
        "web to run",
        30,
        || pod(api, "web")["status"]["phase"] == "Running",
        &node,
    );
    let ip = pod(api, "web")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip.starts_with("10.244.1."), "pod IP {ip} from the podCIDR");
    assert!(api
        .ok(&["get", "pod", "web", "-o", "wide", "--no-headers"])
        .contains(&ip));
    run(
        api,
        "client",
        "Never",
        &[
            "sh",
            "-c",
            &format!("busybox wget -qO- http://{ip}:8080/hostname"),
        ],
    );
    wait_for(
        "the client to finish",
        30,
        || {
            let ph = pod(api, "client")["status"]["phase"].clone();
            ph == "Succeeded" || ph == "Failed"
        },
        &node,
    );
    let client_ip = pod(api, "client")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(client_ip, ip);
    let logs = std::fs::read_to_string(node.root.join(format!(
        "logs/default_client_{}/client/0.log",
        pod(api, "client")["metadata"]["uid"].as_str().unwrap()
    )))
    .unwrap_or_default();
    assert!(
        logs.contains("stdout F web"),
        "the server answered with its host name: {logs}"
    );
    assert_eq!(pod(api, "client")["status"]["phase"], "Succeeded");

    // Deleting the rest cleans the node up completely.
    api.ok(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=1",
        "--wait=false",
    ]);
    wait_for(
        "every pod to go",
        30,
        || api.ok(&["get", "pods", "-o", "name"]).trim().is_empty(),
        &node,
    );
    wait_for(
        "the node to be clean",
        15,
        || {
            std::fs::read_dir(node.root.join("pods"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        },
        &node,
    );
    let out = Command::new("runc")
        .arg("--root")
        .arg(node.root.join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "no container left"
    );
    let memory = Path::new("/sys/fs/cgroup/memory")
        .join(cgroup_root().trim_start_matches('/'))
        .join("kubepods/besteffort");
    let left: Vec<String> = std::fs::read_dir(&memory)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pod"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "pod cgroups left: {left:?}");
    // Every address went back to the allocator.
    let allocated: Vec<String> = std::fs::read_dir(node.root.join("cni/networks/ferrokube"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(
        allocated.is_empty(),
        "addresses still allocated: {allocated:?}"
    );
}

#[test]
fn kubelet_restart_keeps_containers_and_cleans_up_what_went() {
    let w = world();
    let (api, reg) = (&w.api, &w.reg);
    let root = w.dir.path().join("kubelet");
    let mut node = start_node(&w, &root);
    run(api, "keeper", "Always", &["sleep", "3600"]);
    run(api, "goner", "Always", &["sleep", "3600"]);
    wait_for(
        "both to run",
        60,
        || {
            pod(api, "keeper")["status"]["phase"] == "Running"
                && pod(api, "goner")["status"]["phase"] == "Running"
        },
        &node,
    );
    let before = pod(api, "keeper")["status"]["containerStatuses"][0]["containerID"].clone();
    let goner_uid = pod(api, "goner")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    // kill -9 the kubelet: its containers keep running.
    let _ = node.child.kill();
    let _ = node.child.wait();
    let id = before
        .as_str()
        .unwrap()
        .trim_start_matches("runc://")
        .to_string();
    let state = Command::new("runc")
        .arg("--root")
        .arg(root.join("runc"))
        .args(["state", &id])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&state.stdout).contains("\"running\""),
        "the container outlived its kubelet"
    );
    // A pod deleted while the kubelet is away (forced: nobody is there to finish it).
    api.ok(&["delete", "pod", "goner", "--grace-period=0", "--force"]);
    // The node's network rebuilt meanwhile (as when its namespace is made anew): the
    // keeper's interface is gone with it.
    let keeper_uid = pod(api, "keeper")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let keeper_netns = root.join("netns").join(&keeper_uid);
    let pod_eth0 = || {
        Command::new("nsenter")
            .arg(format!("--net={}", keeper_netns.display()))
            .args(["ip", "link", "show", "eth0"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(pod_eth0(), "the pod has its interface");
    let deleted = Command::new("nsenter")
        .arg(format!("--net={}", keeper_netns.display()))
        .args(["ip", "link", "del", "eth0"])
        .status()
        .unwrap();
    assert!(deleted.success() && !pod_eth0());
    // Back again: the same container, no restart, and the deleted pod's traces gone.
    node.child =
        w.ns.command(binary("kubelet"))
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .arg("--config")
            .arg(root.join("config.yaml"))
            .arg("--root-dir")
            .arg(&root)
            .args(["--hostname-override", "node-1", "--node-ip", "10.244.7.2"])
            .args([
                "--registry-mirror",
                &format!("*={}", reg.endpoint()),
                "--registry-fallback=false",
            ])
            .args(["--cgroup-root", &cgroup_root()])
            .arg("--cni-conf-dir")
            .arg(root.join("net.d"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("kubelet2.log")).unwrap())
            .spawn()
            .unwrap();
    wait_for(
        "the gone pod's cleanup",
        30,
        || !root.join("pods").join(&goner_uid).exists(),
        &node,
    );
    // The kubelet finds the sandbox's network gone and attaches it again.
    wait_for("the keeper's network back", 30, pod_eth0, &node);
    std::thread::sleep(Duration::from_secs(2));
    let p = pod(api, "keeper");
    assert_eq!(p["status"]["containerStatuses"][0]["containerID"], before);
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(p["status"]["phase"], "Running");
    // kill -9 the container's shim: nobody watches the container any more, so the
    // kubelet ends it and starts another, reporting the lost one as Unknown (255).
    let shim_pid = std::fs::read_to_string(
        root.join("pods")
            .join(p["metadata"]["uid"].as_str().unwrap())
            .join("containers/keeper/0/shim.pid"),
    )
    .expect("the shim's pid is recorded");
    let _ = Command::new("kill").args(["-9", shim_pid.trim()]).status();
    wait_for(
        "keeper's container to be replaced",
        30,
        || pod(api, "keeper")["status"]["containerStatuses"][0]["restartCount"] == 1,
        &node,
    );
    let last = &pod(api, "keeper")["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["reason"], "Unknown", "{last}");
    assert_eq!(last["exitCode"], 255, "{last}");
    let old = Command::new("runc")
        .arg("--root")
        .arg(root.join("runc"))
        .args(["state", &id])
        .output()
        .unwrap();
    assert!(!old.status.success(), "the unwatched container was removed");
    api.ok(&[
        "delete",
        "pod",
        "keeper",
        "--grace-period=1",
        "--wait=false",
    ]);
    wait_for(
        "keeper to go",
        30,
        || api.kubectl(&["get", "pod", "keeper"]).is_err(),
        &node,
    );
}

#[test]
fn static_pods_and_their_mirrors() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: kube-system\nspec:\n  containers:\n  - name: web\n    image: busybox\n    command: [sleep, '3600']\n";
    std::fs::write(root.join("manifests/web.yaml"), manifest).unwrap();
    let get = || -> Option<Value> {
        api.kubectl(&[
            "get",
            "pod",
            "web-node-1",
            "-n",
            "kube-system",
            "-o",
            "json",
        ])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
    };
    wait_for(
        "the mirror pod to run",
        60,
        || get().is_some_and(|p| p["status"]["phase"] == "Running"),
        &node,
    );
    let p = get().unwrap();
    assert!(p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string());
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    let first = p["status"]["containerStatuses"][0]["containerID"].clone();
    // Deleting the mirror does not stop the pod: the mirror comes back.
    api.ok(&[
        "delete",
        "pod",
        "web-node-1",
        "-n",
        "kube-system",
        "--wait=false",
    ]);
    let old_uid = p["metadata"]["uid"].clone();
    wait_for(
        "a new mirror",
        30,
        || {
            get().is_some_and(|p| {
                p["metadata"]["uid"] != old_uid
                    && p["status"]["containerStatuses"][0]["containerID"] == first
            })
        },
        &node,
    );
    // An edited manifest is a new pod: the old container goes, a new one runs.
    std::fs::write(
        root.join("manifests/web.yaml"),
        manifest.replace("'3600'", "'3601'"),
    )
    .unwrap();
    wait_for(
        "the edited pod",
        60,
        || {
            get().is_some_and(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"][0]["containerID"].is_string()
                    && p["status"]["containerStatuses"][0]["containerID"] != first
            })
        },
        &node,
    );
    // Removing the manifest stops the pod and removes the mirror.
    std::fs::remove_file(root.join("manifests/web.yaml")).unwrap();
    wait_for("the mirror to go", 30, || get().is_none(), &node);
    wait_for(
        "the node to be clean",
        30,
        || {
            std::fs::read_dir(root.join("pods"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        },
        &node,
    );
}

#[test]
fn image_pull_secrets_log_in_to_private_registries() {
    let w = world();
    let api = &w.api;
    let private = LocalRegistry::start_with(
        &w.dir.path().join("private"),
        Some(&w.ns.name),
        Some(("alice", "s3cret")),
    );
    private.push_busybox_as("team/busybox", &["v1"]);
    let host = format!("127.0.0.1:{}", private.port);
    let root = w.dir.path().join("kubelet");
    let node = start_node_with(
        &w,
        &root,
        &[
            "--registry-mirror".into(),
            format!("{host}={}", private.endpoint()),
        ],
    );
    let image = format!("{host}/team/busybox:v1");
    let create = |name: &str, secrets: &[&str]| {
        let secrets: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "node-1", "imagePullSecrets": secrets, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]}});
        api.kubectl_stdin(&["create", "-f", "-"], Some(&pod.to_string()))
            .unwrap_or_else(|e| panic!("{e}"));
    };
    let waiting = |name: &str| -> (String, String) {
        let p = pod(api, name);
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        (
            w["reason"].as_str().unwrap_or_default().to_string(),
            w["message"].as_str().unwrap_or_default().to_string(),
        )
    };
    let pull_fails = |name: &str| {
        wait_for(
            &format!("{name}'s pull to fail"),
            30,
            || {
                let (reason, _) = waiting(name);
                reason == "ErrImagePull" || reason == "ImagePullBackOff"
            },
            &node,
        );
    };
    // No credentials, and wrong ones: the registry says no.
    create("anonymous", &[]);
    pull_fails("anonymous");
    api.ok(&[
        "create",
        "secret",
        "docker-registry",
        "wrong",
        "--docker-server",
        &host,
        "--docker-username=alice",
        "--docker-password=nope",
    ]);
    create("wrong-password", &["wrong"]);
    pull_fails("wrong-password");
    // The right login, after a Secret that does not exist (named in a Warning event).
    api.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "--docker-server",
        &host,
        "--docker-username=alice",
        "--docker-password=s3cret",
    ]);
    create("authed", &["missing", "regcred"]);
    wait_for(
        "the pod with the login to run",
        30,
        || pod(api, "authed")["status"]["phase"] == "Running",
        &node,
    );
    let events = events_for(api, "authed");
    assert!(
        events.contains("FailedToRetrieveImagePullSecret")
            && events.contains("Unable to retrieve some image pull secrets (missing)"),
        "{events}"
    );
    // The refusals said why.
    let events = events_for(api, "anonymous");
    assert!(events.contains("401 Unauthorized"), "{events}");
}

/// The references of the images in a kubelet's store.
fn stored_images(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("images/images"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some(v["reference"].as_str()?.to_string())
        })
        .collect()
}

#[test]
fn unused_images_are_garbage_collected() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    // Thresholds any disk is over: every pass frees all it may (and reports it could
    // not free enough, as upstream does).
    let node = start_node_configured(
        &w,
        &root,
        &["--image-gc-period".into(), "2s".into()],
        "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 0s\n",
    );
    run(api, "keep", "Always", &["sleep", "3600"]);
    api.ok(&[
        "run", "drop", "--image=ferrokube/test-server", "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1","terminationGracePeriodSeconds":0}}"#,
    ]);
    for name in ["keep", "drop"] {
        wait_for(
            &format!("{name} to run"),
            30,
            || pod(api, name)["status"]["phase"] == "Running",
            &node,
        );
    }
    let has = |what: &str| stored_images(&root).iter().any(|r| r.contains(what));
    assert!(
        has("test-server") && has("busybox"),
        "{:?}",
        stored_images(&root)
    );
    let layers_before = std::fs::read_dir(root.join("images/layers"))
        .unwrap()
        .count();
    // In use: kept however full the disk is.
    std::thread::sleep(Duration::from_secs(5));
    assert!(has("test-server"), "an image in use was kept");
    api.ok(&["delete", "pod", "drop", "--wait=false"]);
    wait_for("the unused image to go", 60, || !has("test-server"), &node);
    assert!(has("busybox"), "the image in use stays");
    // Its unpacked layers go right after its record (removal takes a moment).
    let layers = || {
        std::fs::read_dir(root.join("images/layers"))
            .unwrap()
            .count()
    };
    wait_for(
        "its unpacked layers to go too",
        30,
        || layers() < layers_before,
        &node,
    );
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Node,reason=ImageGCFailed",
        "-o",
        "custom-columns=MESSAGE:.message",
        "--no-headers",
    ]);
    assert!(
        events.contains("Failed to garbage collect required amount of images"),
        "{events}"
    );
    // Needed again: pulled again.
    api.ok(&[
        "run", "again", "--image=ferrokube/test-server", "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1","terminationGracePeriodSeconds":0}}"#,
    ]);
    wait_for(
        "the image to be pulled again",
        30,
        || pod(api, "again")["status"]["phase"] == "Running",
        &node,
    );
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=again,reason=Pulling",
        "--no-headers",
    ]);
    assert!(events.contains("Pulling image"), "{events}");
}

/// Runs `ip` with these arguments, which must succeed.
fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {}", args.join(" "));
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_host_routes() {
    // Two nodes on one link: namespaces joined by a veth pair, 192.168.77.0/24. The
    // API server runs on the first and listens on its link address.
    let (a, b) = (NetNs::new(), NetNs::new());
    ip(&[
        "-n", &a.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
        &b.name,
    ]);
    ip(&[
        "-n",
        &a.name,
        "addr",
        "add",
        "192.168.77.1/24",
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &b.name,
        "addr",
        "add",
        "192.168.77.2/24",
        "dev",
        "eth0",
    ]);
    ip(&["-n", &a.name, "link", "set", "eth0", "up"]);
    ip(&["-n", &b.name, "link", "set", "eth0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::new(
        &dir.path().join("api"),
        "192.168.77.1",
        free_port(),
        free_port(),
        vec![],
    );
    api.netns = Some(a.name.clone());
    api.spawn();
    api.wait_ready();
    let reg_a = LocalRegistry::start_in(&dir.path().join("registry-a"), Some(&a.name));
    reg_a.push_test_server();
    let reg_b = LocalRegistry::start_in(&dir.path().join("registry-b"), Some(&b.name));
    reg_b.push_busybox(&["latest"]);
    let one = NodeSpec {
        name: "node-1",
        ip: "192.168.77.1",
        pod_cidr: "10.244.1.0/24",
        registry: reg_a.endpoint(),
        path: None,
    };
    let two = NodeSpec {
        name: "node-2",
        ip: "192.168.77.2",
        pod_cidr: "10.244.2.0/24",
        registry: reg_b.endpoint(),
        path: None,
    };
    let node1 = spawn_node(&a, &api, &one, &dir.path().join("kubelet-1"), &[], "");
    let node2 = spawn_node(&b, &api, &two, &dir.path().join("kubelet-2"), &[], "");
    let routes = |ns: &NetNs| {
        let out = ns
            .command("ip")
            .args(["route", "show", "proto", "77"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for(
        "node-2's route to node-1's pods",
        30,
        || routes(&b).contains("10.244.1.0/24 via 192.168.77.1"),
        &node2,
    );
    wait_for(
        "node-1's route to node-2's pods",
        30,
        || routes(&a).contains("10.244.2.0/24 via 192.168.77.2"),
        &node1,
    );
    // A server on node-1 (also on hostPort 18080); a client on node-2 fetches from it
    // by pod IP.
    let server = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "server"},
        "spec": {"nodeName": "node-1", "restartPolicy": "Never", "containers": [{
            "name": "server", "image": "ferrokube/test-server", "args": ["--port", "8080"],
            "ports": [{"containerPort": 8080, "hostPort": 18080}]}]}});
    api.kubectl_stdin(&["create", "-f", "-"], Some(&server.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        "the server to run",
        30,
        || pod(&api, "server")["status"]["phase"] == "Running",
        &node1,
    );
    let server_ip = pod(&api, "server")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(server_ip.starts_with("10.244.1."), "{server_ip}");
    // The server may take a moment to listen: the client retries a few times.
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do busybox wget -qO- http://{server_ip}:8080/hostname && exit 0; sleep 1; done; exit 1"
    );
    api.ok(&[
        "run",
        "client",
        "--image=busybox",
        "--restart=Never",
        r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-2"}}"#,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    wait_for(
        "the client to finish",
        60,
        || {
            matches!(
                pod(&api, "client")["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            )
        },
        &node2,
    );
    let client = pod(&api, "client");
    if client["status"]["phase"] != "Succeeded" {
        for ns in [&a, &b] {
            for cmd in [
                &["sysctl", "net.ipv4.ip_forward"][..],
                &["ip", "route"],
                &["ip", "addr"],
                &["iptables-save"],
            ] {
                let out = ns.command(cmd[0]).args(&cmd[1..]).output().unwrap();
                eprintln!(
                    "{} $ {}:\n{}",
                    ns.name,
                    cmd.join(" "),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        let logs = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cat {}/kubelet-2/logs/*/*/*.log",
                dir.path().display()
            ))
            .output()
            .unwrap();
        eprintln!("client log: {}", String::from_utf8_lossy(&logs.stdout));
    }
    assert_eq!(
        client["status"]["phase"], "Succeeded",
        "node-2's pod reached node-1's pod: {}",
        client["status"]
    );
    // The hostPort: node-2's namespace (another machine on the link) reaches the server
    // through node-1's address.
    let fetch = || {
        b.command("python3")
            .args([
                "-c",
                "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())",
                "http://192.168.77.1:18080/hostname",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    wait_for(
        "the hostPort to answer",
        20,
        || fetch().contains("server"),
        &node1,
    );
    // A node that goes takes its route along.
    drop(node1);
    api.ok(&["delete", "node", "node-1"]);
    wait_for(
        "node-2's route to node-1 to go",
        30,
        || !routes(&b).contains("10.244.1.0/24"),
        &node2,
    );
}

#[test]
fn faults_show_upstream_reasons_and_spare_the_other_pods() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    // The CNI plugins from a copy this test can break and mend.
    let bins = w.dir.path().join("cni-bin");
    let ok = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/cni")
        .arg(&bins)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "copying the CNI plugins");
    let node = start_node_with(
        &w,
        &root,
        &["--cni-bin-dir".into(), bins.display().to_string()],
    );
    run(api, "steady", "Always", &["sleep", "3600"]);
    wait_for(
        "steady to run",
        30,
        || pod(api, "steady")["status"]["phase"] == "Running",
        &node,
    );
    // A command that does not exist: StartError (128), then back-off.
    run(api, "bad", "Always", &["/no/such/command"]);
    wait_for(
        "bad's start to fail",
        30,
        || {
            let s = &pod(api, "bad")["status"]["containerStatuses"][0];
            s["lastState"]["terminated"]["reason"] == "StartError"
                || s["state"]["terminated"]["reason"] == "StartError"
        },
        &node,
    );
    let s = pod(api, "bad")["status"]["containerStatuses"][0].clone();
    let term = if s["state"]["terminated"].is_object() {
        &s["state"]["terminated"]
    } else {
        &s["lastState"]["terminated"]
    };
    assert_eq!(term["exitCode"], 128, "{s}");
    assert!(
        term["message"]
            .as_str()
            .is_some_and(|m| m.contains("/no/such/command")),
        "{s}"
    );
    // No pod network: the sandbox cannot be made; the pod waits, the event says why.
    std::fs::remove_file(bins.join("bridge")).unwrap();
    run(api, "nonet", "Always", &["sleep", "3600"]);
    wait_for(
        "nonet's sandbox failure",
        30,
        || {
            api.ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=nonet,reason=FailedCreatePodSandBox",
                "--no-headers",
            ])
            .contains("failed to find plugin \"bridge\"")
        },
        &node,
    );
    let s = &pod(api, "nonet")["status"]["containerStatuses"][0];
    assert_eq!(s["state"]["waiting"]["reason"], "ContainerCreating", "{s}");
    assert!(api
        .ok(&["get", "pod", "nonet", "--no-headers"])
        .contains("ContainerCreating"));
    // Mended: it starts. The steady pod never noticed.
    std::fs::copy("/usr/lib/cni/bridge", bins.join("bridge")).unwrap();
    wait_for(
        "nonet to run once the plugin is back",
        30,
        || pod(api, "nonet")["status"]["phase"] == "Running",
        &node,
    );
    // A full disk under the image store (a 64 KiB tmpfs over it, so the images pulled so
    // far are out of sight): the pull fails with the kernel's reason.
    let images = root.join("images");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&images)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mounting a small tmpfs");
    for d in ["blobs/sha256", "images", "layers"] {
        std::fs::create_dir_all(images.join(d)).unwrap();
    }
    run(api, "full", "Always", &["sleep", "3600"]);
    wait_for(
        "full's pull to fail",
        30,
        || {
            let s = &pod(api, "full")["status"]["containerStatuses"][0]["state"]["waiting"];
            (s["reason"] == "ErrImagePull" || s["reason"] == "ImagePullBackOff")
                && s["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("No space left on device"))
        },
        &node,
    );
    let _ = Command::new("umount").arg("-l").arg(&images).status();
    let steady = pod(api, "steady");
    assert_eq!(steady["status"]["phase"], "Running");
    assert_eq!(steady["status"]["containerStatuses"][0]["restartCount"], 0);
}

#[test]
fn a_node_without_runc_is_not_ready_and_its_pods_wait() {
    let w = world();
    let api = &w.api;
    // A PATH with every program of /usr/bin and /usr/sbin but runc.
    let bin = w.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for dir in ["/usr/bin", "/usr/sbin"] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name();
            if name != "runc" {
                let _ = std::os::unix::fs::symlink(e.path(), bin.join(&name));
            }
        }
    }
    let spec = NodeSpec {
        name: "node-1",
        ip: "10.244.7.2",
        pod_cidr: "10.244.1.0/24",
        registry: w.reg.endpoint(),
        path: Some(bin.display().to_string()),
    };
    let root = w.dir.path().join("kubelet");
    let node = spawn_node(&w.ns, api, &spec, &root, &[], "");
    let ready = || -> Value {
        let n: Value =
            serde_json::from_str(&api.ok(&["get", "node", "node-1", "-o", "json"])).unwrap();
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default()
    };
    wait_for(
        "the node to say its runtime is down",
        30,
        || {
            ready()["message"]
                .as_str()
                .is_some_and(|m| m.contains("container runtime is down: runc"))
        },
        &node,
    );
    assert_eq!(ready()["status"], "False");
    run(api, "waits", "Always", &["sleep", "3600"]);
    wait_for(
        "the sandbox failure",
        30,
        || {
            api.ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=waits,reason=FailedCreatePodSandBox",
                "--no-headers",
            ])
            .contains("container runtime is down")
        },
        &node,
    );
    assert_eq!(
        pod(api, "waits")["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    // runc installed: the node becomes Ready and the pod runs.
    std::os::unix::fs::symlink("/usr/sbin/runc", bin.join("runc")).unwrap();
    wait_for(
        "the node to be Ready",
        30,
        || ready()["status"] == "True",
        &node,
    );
    wait_for(
        "the pod to run",
        30,
        || pod(api, "waits")["status"]["phase"] == "Running",
        &node,
    );
}
