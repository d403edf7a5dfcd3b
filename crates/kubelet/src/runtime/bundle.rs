//! OCI runtime bundles: the `config.json` runc runs a container from — process,
//! namespaces (joining the pod's where given), mounts, cgroup resources — as upstream's
//! container runtimes write it for Kubernetes containers.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// What a container's runtime spec is made from.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub tty: bool,
    /// Namespaces to join (paths); a missing one is created for the container.
    pub net_ns: Option<PathBuf>,
    /// Stay in the node's network namespace (`hostNetwork`).
    pub host_network: bool,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// The pod's PID namespace (`shareProcessNamespace`); `None` for one of its own.
    pub pid_ns: Option<PathBuf>,
    /// cgroup path (cgroupfs driver), e.g. `/kubepods/besteffort/pod<uid>/<id>`.
    pub cgroups_path: String,
    pub memory_limit: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub readonly_rootfs: bool,
    /// Extra bind mounts: (destination, source, read-only).
    pub binds: Vec<(String, PathBuf, bool)>,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Capabilities; `None` is the default set.
    pub capabilities: Option<Vec<String>>,
    pub no_new_privileges: bool,
    /// All capabilities and devices, nothing masked, `/sys` writable.
    pub privileged: bool,
}

/// Every capability (for privileged containers).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

/// The capability set of a container: the default set, with Kubernetes' `add` and
/// `drop` (names without the `CAP_` prefix; `ALL` drops or adds everything).
pub fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let norm = |c: &String| {
        let u = c.to_ascii_uppercase();
        if u.starts_with("CAP_") {
            u
        } else {
            format!("CAP_{u}")
        }
    };
    let mut caps: Vec<String> = if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        Vec::new()
    } else {
        let dropped: Vec<String> = drop.iter().map(norm).collect();
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !dropped.contains(c))
            .collect()
    };
    if add.iter().any(|a| a.eq_ignore_ascii_case("ALL")) {
        return ALL_CAPS.iter().map(|c| c.to_string()).collect();
    }
    for a in add.iter().map(norm) {
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    caps
}

/// Docker's default capability set (what containers get unless they ask otherwise).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The `config.json` of a container whose root filesystem is `<bundle>/rootfs`.
pub fn config(spec: &ContainerSpec) -> Value {
    let ns = |ty: &str, path: &Option<PathBuf>| match path {
        Some(p) => json!({"type": ty, "path": p}),
        None => json!({"type": ty}),
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (dest, src, ro) in &spec.binds {
        let mut options = vec!["rbind", "rprivate"];
        if *ro {
            options.push("ro");
        }
        mounts
            .push(json!({"destination": dest, "type": "bind", "source": src, "options": options}));
    }
    let caps: Vec<String> = if spec.privileged {
        ALL_CAPS.iter().map(|c| c.to_string()).collect()
    } else {
        spec.capabilities
            .clone()
            .unwrap_or_else(|| DEFAULT_CAPS.iter().map(|c| c.to_string()).collect())
    };
    let mut resources = json!({"devices": [{"allow": spec.privileged, "access": "rwm"}]});
    if let Some(m) = spec.memory_limit {
        resources["memory"] = json!({"limit": m});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(s) = spec.cpu_shares {
        cpu.insert("shares".into(), json!(s));
    }
    if let Some(q) = spec.cpu_quota {
        cpu.insert("quota".into(), json!(q));
        cpu.insert("period".into(), json!(100_000));
    }
    if !cpu.is_empty() {
        resources["cpu"] = json!(cpu);
    }
    let (masked, readonly): (Vec<&str>, Vec<&str>) = if spec.privileged {
        (vec![], vec![])
    } else {
        (
            vec![
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            vec![
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        )
    };
    if spec.privileged {
        if let Some(sys) = mounts.iter_mut().find(|m| m["destination"] == "/sys") {
            sys["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
        }
    }
    let mut namespaces = vec![
        ns("pid", &spec.pid_ns),
        ns("ipc", &spec.ipc_ns),
        ns("uts", &spec.uts_ns),
        json!({"type": "mount"}),
    ];
    if !spec.host_network {
        namespaces.push(ns("network", &spec.net_ns));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.tty,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": spec.additional_gids},
            "args": spec.args,
            "env": spec.env,
            "cwd": if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": spec.no_new_privileges,
        },
        "root": {"path": "rootfs", "readonly": spec.readonly_rootfs},
        // A joined UTS namespace already has its host name (runc may not set one).
        "hostname": if spec.uts_ns.is_some() { "" } else { spec.hostname.as_str() },
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": spec.cgroups_path,
            "resources": resources,
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    })
}

/// Writes `config.json` into a bundle directory.
pub fn write(bundle: &Path, spec: &ContainerSpec) -> std::io::Result<()> {
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config(spec))?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_join_pod_namespaces_and_set_limits() {
        let spec = ContainerSpec {
            args: vec!["sh".into()],
            net_ns: Some("/run/netns/pod".into()),
            memory_limit: Some(64 << 20),
            cpu_quota: Some(50_000),
            cgroups_path: "/kubepods/burstable/podx/c".into(),
            ..Default::default()
        };
        let c = config(&spec);
        let nss = c["linux"]["namespaces"].as_array().unwrap();
        assert!(nss.contains(&json!({"type": "network", "path": "/run/netns/pod"})));
        assert!(nss.contains(&json!({"type": "ipc"})));
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(c["process"]["cwd"], "/");
        let caps = capabilities(&["net_admin".into()], &["CHOWN".into()]);
        assert!(
            caps.contains(&"CAP_NET_ADMIN".to_string()) && !caps.contains(&"CAP_CHOWN".to_string())
        );
        assert!(capabilities(&[], &["ALL".into()]).is_empty());
        let p = config(&ContainerSpec {
            privileged: true,
            ..Default::default()
        });
        assert_eq!(p["linux"]["maskedPaths"], json!([]));
        assert!(
            p["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len()
                > 30
        );
    }
}
