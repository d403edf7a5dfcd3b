//! A container's root filesystem: the image's unpacked layers stacked read-only with
//! overlayfs under a writable upper directory of its own.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mounts `layers` (lowest first) with `upper`/`work` at `target`.
pub fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d)?;
    }
    let empty;
    let lower: Vec<String> = if layers.is_empty() {
        empty = work.with_extension("empty");
        std::fs::create_dir_all(&empty)?;
        vec![empty.display().to_string()]
    } else {
        layers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect()
    };
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(std::io::Error::from)
}

/// Unmounts a root filesystem (lazily, so a lingering process cannot keep it busy).
pub fn unmount(target: &Path) -> std::io::Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether something is mounted at `path` (an exact mount point).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.display().to_string();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}
