//! Pod and QoS-class cgroups, laid out and sized as upstream's cgroupfs driver does:
//! `<cgroup-root>/kubepods/pod<uid>` for Guaranteed pods,
//! `<cgroup-root>/kubepods/{burstable,besteffort}/pod<uid>` for the others, each pod's
//! containers below it. A pod cgroup gets the sum of its containers' CPU requests as
//! shares, and a CPU quota and memory limit when every container has one; `besteffort`
//! gets the minimum shares and `burstable` the sum of its pods' requests. cgroup v1
//! (per-controller trees) and v2 (the unified tree, weights instead of shares).

use std::path::{Path, PathBuf};

use ferrokube_api::quantity::Quantity;
use k8s_openapi::api::core::v1::{Container, Pod};

/// The CPU period quotas are given in (upstream's 100 ms).
pub const CPU_PERIOD_US: i64 = 100_000;
/// The least CPU shares the kernel takes (BestEffort).
pub const MIN_SHARES: u64 = 2;

/// What a pod's cgroup is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResources {
    /// The CPU the pod requests, in millicores.
    pub cpu_request_milli: i64,
    pub cpu_shares: u64,
    /// Microseconds per [`CPU_PERIOD_US`].
    pub cpu_quota: Option<i64>,
    pub memory_limit: Option<i64>,
}

/// CPU millicores to shares, as upstream converts them.
pub fn milli_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    ((milli as u64 * 1024) / 1000).max(MIN_SHARES)
}

/// CPU millicores to a quota per [`CPU_PERIOD_US`] (at least 1 ms, as the kernel wants).
pub fn milli_to_quota(milli: i64) -> i64 {
    (milli * CPU_PERIOD_US / 1000).max(1000)
}

fn quantity(c: &Container, limits: bool, resource: &str, milli: bool) -> Option<i64> {
    let r = c.resources.as_ref()?;
    let map = if limits {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    let q = Quantity::parse(&map.get(resource)?.0).ok()?;
    Some(if milli { q.milli_value() } else { q.value() } as i64)
}

/// A pod's cgroup sizes: requests add up over the app containers (an init container
/// runs alone, so the largest one counts if bigger), limits only when all have them.
pub fn pod_resources(pod: &Pod) -> PodResources {
    let Some(spec) = &pod.spec else {
        return PodResources {
            cpu_request_milli: 0,
            cpu_shares: MIN_SHARES,
            cpu_quota: None,
            memory_limit: None,
        };
    };
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    // A request defaults to the limit when only the limit is given.
    let request =
        |c: &Container| quantity(c, false, "cpu", true).or_else(|| quantity(c, true, "cpu", true));
    let sum_or_max = |f: &dyn Fn(&Container) -> Option<i64>| -> Option<i64> {
        let app: Option<i64> = spec.containers.iter().map(f).sum();
        let init = inits.iter().filter_map(f).max();
        match (app, init) {
            (Some(a), Some(i)) => Some(a.max(i)),
            (a, _) => a,
        }
    };
    let cpu_request: i64 = spec
        .containers
        .iter()
        .filter_map(request)
        .sum::<i64>()
        .max(inits.iter().filter_map(request).max().unwrap_or(0));
    PodResources {
        cpu_request_milli: cpu_request,
        cpu_shares: milli_to_shares(cpu_request),
        cpu_quota: sum_or_max(&|c| quantity(c, true, "cpu", true)).map(milli_to_quota),
        memory_limit: sum_or_max(&|c| quantity(c, true, "memory", false)),
    }
}

/// The cgroup of a pod relative to the hierarchy's root: `<root>/kubepods[/<qos>]/pod<uid>`.
pub fn pod_cgroup(cgroup_root: &str, qos: &str, uid: &str) -> String {
    let root = cgroup_root.trim_end_matches('/');
    match qos {
        "Guaranteed" => format!("{root}/kubepods/pod{uid}"),
        q => format!("{root}/kubepods/{}/pod{uid}", q.to_ascii_lowercase()),
    }
}

/// Where cgroups are mounted.
const MOUNT: &str = "/sys/fs/cgroup";

/// Whether cgroups are the v2 unified tree.
pub fn unified() -> bool {
    Path::new(MOUNT).join("cgroup.controllers").exists()
}

/// The directory of `cgroup` in controller `ctl`'s tree (v1) or the unified tree (v2).
fn dir(ctl: &str, cgroup: &str) -> PathBuf {
    let rel = cgroup.trim_start_matches('/');
    if unified() {
        Path::new(MOUNT).join(rel)
    } else {
        Path::new(MOUNT).join(ctl).join(rel)
    }
}

/// Creates a cgroup (and, on v2, enables the cpu and memory controllers down to it).
fn create(ctl: &str, cgroup: &str) -> std::io::Result<PathBuf> {
    let d = dir(ctl, cgroup);
    if unified() {
        let mut at = PathBuf::from(MOUNT);
        for part in cgroup.trim_start_matches('/').split('/') {
            let _ = std::fs::write(at.join("cgroup.subtree_control"), "+cpu +memory");
            at = at.join(part);
            std::fs::create_dir_all(&at)?;
        }
    } else {
        std::fs::create_dir_all(&d)?;
    }
    Ok(d)
}

/// Shares (2..262144) to a v2 weight (1..10000), as runc converts them.
fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// Sets CPU shares (weight on v2) of a cgroup, creating it.
pub fn set_cpu_shares(cgroup: &str, shares: u64) -> std::io::Result<()> {
    if unified() {
        let d = create("", cgroup)?;
        std::fs::write(d.join("cpu.weight"), shares_to_weight(shares).to_string())
    } else {
        let d = create("cpu", cgroup)?;
        std::fs::write(d.join("cpu.shares"), shares.to_string())
    }
}

/// Creates a pod's cgroup with its sizes and moves `pids` (the infra process) into it.
pub fn ensure_pod(cgroup: &str, r: &PodResources, pids: &[u32]) -> std::io::Result<()> {
    if unified() {
        let d = create("", cgroup)?;
        std::fs::write(
            d.join("cpu.weight"),
            shares_to_weight(r.cpu_shares).to_string(),
        )?;
        let max = r.cpu_quota.map_or("max".to_string(), |q| q.to_string());
        std::fs::write(d.join("cpu.max"), format!("{max} {CPU_PERIOD_US}"))?;
        if let Some(m) = r.memory_limit {
            std::fs::write(d.join("memory.max"), m.to_string())?;
        }
        for p in pids {
            std::fs::write(d.join("cgroup.procs"), p.to_string())?;
        }
        return Ok(());
    }
    let cpu = create("cpu", cgroup)?;
    std::fs::write(cpu.join("cpu.shares"), r.cpu_shares.to_string())?;
    std::fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
    std::fs::write(
        cpu.join("cpu.cfs_quota_us"),
        r.cpu_quota.unwrap_or(-1).to_string(),
    )?;
    let memory = create("memory", cgroup)?;
    if let Some(m) = r.memory_limit {
        std::fs::write(memory.join("memory.limit_in_bytes"), m.to_string())?;
    }
    // The other controllers' trees get the pod too, so its processes sit together.
    for ctl in [
        "cpu", "memory", "pids", "cpuset", "blkio", "devices", "freezer",
    ] {
        if let Ok(d) = create(ctl, cgroup) {
            if ctl == "cpuset" {
                inherit_cpuset(&d);
            }
            for p in pids {
                let _ = std::fs::write(d.join("cgroup.procs"), p.to_string());
            }
        }
    }
    Ok(())
}

/// A new v1 cpuset cgroup is empty until given its parent's CPUs and memory nodes.
fn inherit_cpuset(d: &Path) {
    let mut chain = Vec::new();
    let mut at = d.to_path_buf();
    while at.starts_with(Path::new(MOUNT).join("cpuset")) && at != Path::new(MOUNT).join("cpuset") {
        chain.push(at.clone());
        at = match at.parent() {
            Some(p) => p.to_path_buf(),
            None => break,
        };
    }
    for d in chain.iter().rev() {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = std::fs::read_to_string(d.join(f)).unwrap_or_default();
            if mine.trim().is_empty() {
                if let Some(parent) = d.parent() {
                    if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
                        let _ = std::fs::write(d.join(f), v.trim());
                    }
                }
            }
        }
    }
}

/// Removes a pod's cgroup from every tree (it must be empty: containers and the infra
/// process gone).
pub fn remove_pod(cgroup: &str) {
    let rel = cgroup.trim_start_matches('/');
    if unified() {
        let _ = std::fs::remove_dir(Path::new(MOUNT).join(rel));
        return;
    }
    for ctl in std::fs::read_dir(MOUNT).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(ctl.path().join(rel));
    }
}

/// The CPU time a cgroup's processes have used, in nanoseconds (`cpuacct.usage` on v1,
/// `usage_usec` of `cpu.stat` on v2).
pub fn cpu_usage_ns(cgroup: &str) -> std::io::Result<u64> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable CPU usage");
    if unified() {
        let stat = std::fs::read_to_string(dir("", cgroup).join("cpu.stat"))?;
        return stat_value(&stat, "usage_usec")
            .map(|us| us * 1000)
            .ok_or_else(bad);
    }
    std::fs::read_to_string(dir("cpuacct", cgroup).join("cpuacct.usage"))?
        .trim()
        .parse()
        .map_err(|_| bad())
}

/// A cgroup's memory working set: what it uses less the inactive file cache the kernel
/// can drop, as cAdvisor and the kubelet's eviction count it.
pub fn memory_working_set(cgroup: &str) -> std::io::Result<u64> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable memory usage");
    let (usage_file, inactive_key, d) = if unified() {
        ("memory.current", "inactive_file", dir("", cgroup))
    } else {
        (
            "memory.usage_in_bytes",
            "total_inactive_file",
            dir("memory", cgroup),
        )
    };
    let usage: u64 = std::fs::read_to_string(d.join(usage_file))?
        .trim()
        .parse()
        .map_err(|_| bad())?;
    let stat = std::fs::read_to_string(d.join("memory.stat"))?;
    Ok(usage.saturating_sub(stat_value(&stat, inactive_key).unwrap_or(0)))
}

/// A value of a flat-keyed cgroup file (`key value` lines).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": v})).unwrap()
    }

    #[test]
    fn pod_sizes_follow_upstream() {
        // Every container limited: quota and memory add up; requests default to limits.
        let p = pod(json!({"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "32Mi"}}}]}));
        assert_eq!(
            pod_resources(&p),
            PodResources {
                cpu_request_milli: 350,
                cpu_shares: 358,
                cpu_quota: Some(75_000),
                memory_limit: Some(96 << 20)
            }
        );
        // One container without limits: none for the pod.
        let p = pod(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "64Mi"}}},
            {"name": "b"}]}));
        assert_eq!(
            pod_resources(&p),
            PodResources {
                cpu_request_milli: 1000,
                cpu_shares: 1024,
                cpu_quota: None,
                memory_limit: None
            }
        );
        // A bigger init container decides.
        let p = pod(
            json!({"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}),
        );
        assert_eq!(pod_resources(&p).cpu_shares, 2048);
        // BestEffort.
        let p = pod(json!({"containers": [{"name": "a"}]}));
        assert_eq!(pod_resources(&p).cpu_shares, MIN_SHARES);
        assert_eq!(pod_cgroup("/", "Guaranteed", "u"), "/kubepods/podu");
        assert_eq!(
            pod_cgroup("/x/", "Burstable", "u"),
            "/x/kubepods/burstable/podu"
        );
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn flat_keyed_files_read_by_key() {
        let stat = "cache 4096\ninactive_file 8192\ntotal_inactive_file 12288\n";
        assert_eq!(stat_value(stat, "inactive_file"), Some(8192));
        assert_eq!(stat_value(stat, "total_inactive_file"), Some(12288));
        assert_eq!(stat_value(stat, "active_file"), None);
        assert_eq!(
            stat_value("usage_usec 1500\nuser_usec 1000", "usage_usec"),
            Some(1500)
        );
    }
}
