//! Containers with real runc (root): the busybox image pulled from a local registry,
//! its layers stacked with overlayfs, a bundle written, and the kubelet's shim running
//! the container — output in the CRI log format, the exit code recorded — then every
//! trace (container, mount, cgroup) removed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrokube_images::{ImageStore, Mirrors};
use ferrokube_kubelet::runtime::bundle::{self, ContainerSpec};
use ferrokube_kubelet::runtime::runc::Runc;
use ferrokube_kubelet::runtime::{rootfs, shim};
use integration_tests::binary;
use integration_tests::registry::LocalRegistry;

/// Removes the container, its root filesystem mount and its cgroups, also on failure.
struct Cleanup<'a> {
    runc: &'a Runc,
    id: String,
    rootfs: std::path::PathBuf,
    cgroup: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.runc.delete(&self.id);
        let _ = rootfs::unmount(&self.rootfs);
        for ctl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(ctl.path().join(self.cgroup.trim_start_matches('/')));
        }
    }
}

fn run_container(
    root: &Path,
    runc: &Runc,
    layers: &[std::path::PathBuf],
    id: &str,
    args: &[&str],
    kill: bool,
) -> (shim::Exit, String) {
    run_container_with(root, runc, layers, id, args, kill, false)
}

fn run_container_with(
    root: &Path,
    runc: &Runc,
    layers: &[std::path::PathBuf],
    id: &str,
    args: &[&str],
    kill: bool,
    tty: bool,
) -> (shim::Exit, String) {
    let bundle_dir = root.join("containers").join(id);
    let cgroup = format!("/ferrokube-test-{}-{id}", std::process::id());
    let spec = ContainerSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        hostname: "pod-a".into(),
        cgroups_path: cgroup.clone(),
        memory_limit: Some(64 << 20),
        tty,
        ..Default::default()
    };
    bundle::write(&bundle_dir, &spec).unwrap();
    let _cleanup = Cleanup {
        runc,
        id: id.into(),
        rootfs: bundle_dir.join("rootfs"),
        cgroup: cgroup.clone(),
    };
    rootfs::mount_overlay(
        layers,
        &bundle_dir.join("upper"),
        &bundle_dir.join("work"),
        &bundle_dir.join("rootfs"),
    )
    .unwrap();
    let a = shim::ShimArgs {
        runc_root: runc.root.clone(),
        id: id.into(),
        bundle: bundle_dir.clone(),
        log: bundle_dir.join("0.log"),
        exit_file: bundle_dir.join("exit.json"),
        log_max_size: 10 << 20,
        log_max_files: 5,
        stdin: false,
        stdin_once: false,
    };
    // The shim's own status says whether the container started; the exit file says how
    // it ended (or why it never started).
    let mut shim_process = Command::new(binary("kubelet"))
        .arg("shim")
        .args(a.to_args())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    if kill {
        let deadline = Instant::now() + Duration::from_secs(20);
        while runc.state(id).map(|s| s.status).ok().as_deref() != Some("running") {
            assert!(Instant::now() < deadline, "the container did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        runc.kill(id, "KILL").unwrap();
    }
    shim_process.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(e) = shim::read_exit(&a.exit_file) {
            break e;
        }
        assert!(Instant::now() < deadline, "the container did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The memory limit reached the container's cgroup while it ran; the log is complete.
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    (exit, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_runs_under_runc() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(&dir.path().join("registry"));
    reg.push_busybox(&["latest"]);
    let mut mirrors = Mirrors::parse(&[format!("*={}", reg.endpoint())]).unwrap();
    mirrors.fallback = false;
    let store = ImageStore::open(&dir.path().join("images"), mirrors).unwrap();
    let img = store.pull("busybox", None).await.unwrap();
    let layers = store.layer_dirs(&img).unwrap();
    let runc = Runc::new(&dir.path().join("runc"));

    let (exit, log) = run_container(
        dir.path(),
        &runc,
        &layers,
        "c1",
        &["sh", "-c", "echo hello; echo oops >&2; hostname; exit 3"],
        false,
    );
    assert_eq!(exit.exit_code, 3, "{exit:?}");
    assert!(exit.error.is_none());
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    // stdout and stderr are separate pipes: their relative order is not fixed.
    let mut tail: Vec<String> = lines
        .iter()
        .map(|l| {
            let fields: Vec<&str> = l.splitn(4, ' ').collect();
            assert!(fields[0].ends_with('Z') && fields[0].contains('T'), "{log}");
            fields[1..].join(" ")
        })
        .collect();
    tail.sort();
    assert_eq!(tail, ["stderr F oops", "stdout F hello", "stdout F pod-a"]);
    assert!(log.contains(" stderr F oops\n"), "{log}");
    assert!(log.contains(" stdout F pod-a\n"), "{log}");

    // A container killed by a signal reports 128 + signal.
    let (exit, _) = run_container(dir.path(), &runc, &layers, "c2", &["sleep", "30"], true);
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));

    // A command that does not exist: runc refuses to start it and says why.
    let (exit, _) = run_container(
        dir.path(),
        &runc,
        &layers,
        "c3",
        &["/no/such/binary"],
        false,
    );
    assert!(
        exit.error.as_deref().is_some_and(|e| e.contains("runc")),
        "{exit:?}"
    );

    // With a terminal (`tty: true`): the container's output comes through the pty runc
    // made, logged as stdout.
    let (exit, log) = run_container_with(
        dir.path(),
        &runc,
        &layers,
        "c4",
        &["sh", "-c", "busybox tty; echo on-tty >&2"],
        false,
        true,
    );
    assert_eq!(exit.exit_code, 0, "{exit:?} {log}");
    assert!(log.contains(" stdout F /dev/pts/0"), "{log}");
    assert!(log.contains(" stdout F on-tty"), "{log}");

    // Nothing left behind: no container state, no mount.
    assert!(runc.state("c1").is_err());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.path().to_str().unwrap()),
        "a mount was left behind"
    );
}
