//! Pod sandboxes: the namespaces a pod's containers share. The network namespace is
//! created once per pod (a thread unshares it, it is kept alive by a bind mount under
//! the kubelet's root, loopback brought up), so containers can restart without losing
//! the pod's network; the pod network (CNI) attaches interfaces to it. The IPC, UTS and
//! PID namespaces are held by the pod's infra process (`kubelet pause`, what upstream's
//! pause container is): PID 1 of the pod's PID namespace, owner of its host name, in a
//! session of its own so it outlives kubelet restarts.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// The file a pod's network namespace is kept at.
pub fn netns_path(root: &Path, pod_uid: &str) -> PathBuf {
    root.join("netns").join(pod_uid)
}

/// Creates the pod's network namespace (with loopback up) unless it exists.
pub fn create_netns(root: &Path, pod_uid: &str) -> std::io::Result<PathBuf> {
    let path = netns_path(root, pod_uid);
    if crate::runtime::rootfs::is_mounted(&path) {
        return Ok(path);
    }
    std::fs::create_dir_all(path.parent().expect("netns files have a parent"))?;
    std::fs::write(&path, b"")?;
    let target = path.clone();
    // A fresh thread, so the kubelet's other threads keep the node's namespace.
    std::thread::spawn(move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let tid = nix::unistd::gettid();
        let own = format!("/proc/self/task/{tid}/ns/net");
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)?;
        // A child inherits this thread's namespace: bring loopback up in it.
        let status = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other("ip link set lo up failed"));
        }
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))??;
    Ok(path)
}

/// Whether the network namespace at `netns` has an interface besides loopback (the pod
/// network's): not once the node network it was attached to is gone.
pub fn has_pod_interface(netns: &Path) -> std::io::Result<bool> {
    let file = std::fs::File::open(netns)?;
    // A fresh thread enters the namespace, so the kubelet's other threads keep the node's.
    std::thread::spawn(move || -> std::io::Result<bool> {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let tid = nix::unistd::gettid();
        let dev = std::fs::read_to_string(format!("/proc/self/task/{tid}/net/dev"))?;
        Ok(dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .any(|name| name.trim() != "lo"))
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

/// Removes a pod's network namespace.
pub fn remove_netns(root: &Path, pod_uid: &str) -> std::io::Result<()> {
    let path = netns_path(root, pod_uid);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The pod's infra process: its pid when running.
pub fn infra_pid(pod_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pod_dir.join("infra.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    (args.get(1) == Some(&&b"pause"[..])).then_some(pid)
}

/// Starts the pod's infra process (in the pod's network namespace, with new IPC, UTS
/// and PID namespaces and the pod's host name) unless it runs; returns its pid.
pub fn ensure_infra(
    pod_dir: &Path,
    netns: Option<&Path>,
    kubelet: &Path,
    hostname: &str,
) -> std::io::Result<i32> {
    if let Some(pid) = infra_pid(pod_dir) {
        return Ok(pid);
    }
    std::fs::create_dir_all(pod_dir)?;
    let pid_file = pod_dir.join("infra.pid");
    let _ = std::fs::remove_file(&pid_file);
    let mut cmd = std::process::Command::new("nsenter");
    if let Some(ns) = netns {
        cmd.arg(format!("--net={}", ns.display()));
    }
    cmd.args([
        "--",
        "unshare",
        "--ipc",
        "--uts",
        "--pid",
        "--kill-child",
        "--",
    ])
    .arg(kubelet)
    .args(["pause", hostname])
    .arg(&pid_file)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    // The infra process writes its (host) pid once it runs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(pid) = infra_pid(pod_dir) {
            // Reap the unshare wrapper later, in the background.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(std::io::Error::other(format!(
                "the infra process exited: {status}"
            )));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err(std::io::Error::other("the infra process did not start"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Stops the pod's infra process.
pub fn stop_infra(pod_dir: &Path) {
    if let Some(pid) = infra_pid(pod_dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // Gone (or a zombie, out of its cgroups) before the pod's cgroups are removed;
        // bounded at two seconds.
        for _ in 0..200 {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let dead = state.is_empty()
                || state
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
            if dead {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The infra process itself (`kubelet pause HOSTNAME PIDFILE`): sets the host name, writes
/// its host pid, then reaps orphans until it is killed.
pub fn pause(hostname: &str, pid_file: &Path) -> i32 {
    let _ = nix::unistd::sethostname(hostname);
    // Our pid as the host sees it (we are PID 1 inside): /proc is still the host's (no
    // new mount namespace), and it names us by our host pid.
    let host_pid = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<i32>().ok()));
    if let Some(p) = host_pid {
        let tmp = pid_file.with_extension("tmp");
        if std::fs::write(&tmp, p.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, pid_file);
        }
    }
    loop {
        match nix::sys::wait::wait() {
            Ok(_) => continue,
            Err(_) => std::thread::sleep(std::time::Duration::from_secs(3600)),
        }
    }
}
