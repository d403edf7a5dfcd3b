//! Pod sandboxes: the namespaces a pod's containers share. The network namespace is
//! created once per pod (a thread unshares it, it is kept alive by a bind mount under
//! the kubelet's root, loopback brought up), so containers can restart without losing
//! the pod's network. The pod network (CNI) attaches interfaces to it.

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
    if is_mounted(&path) {
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

fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.display().to_string();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
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
