//! Node pressure from upstream's hard eviction signals and thresholds (`evictionHard`;
//! by default `memory.available<100Mi`, `nodefs.available<10%`, `nodefs.inodesFree<5%`,
//! `imagefs.available<15%`, `imagefs.inodesFree<5%`), measured as the eviction manager
//! measures them: memory as capacity minus the root cgroup's working set, the file
//! systems of the kubelet's root (nodefs) and its image store (imagefs), and process
//! IDs against `pid_max`. The node's MemoryPressure, DiskPressure and PIDPressure
//! conditions come from here. (This kubelet reports pressure; it does not evict pods.)

use std::collections::BTreeMap;
use std::path::Path;

use ferrokube_api::quantity::Quantity;

use crate::stats::{meminfo_value, node_memory_working_set};
use crate::Error;

/// The signals upstream knows.
const SIGNALS: [&str; 6] = [
    "memory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "pid.available",
];

/// Upstream's default hard thresholds (Linux).
pub fn defaults() -> BTreeMap<String, String> {
    [
        ("memory.available", "100Mi"),
        ("nodefs.available", "10%"),
        ("nodefs.inodesFree", "5%"),
        ("imagefs.available", "15%"),
        ("imagefs.inodesFree", "5%"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A threshold: an amount, or a share of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Amount(i128),
    Percent(f64),
}

impl Threshold {
    /// Whether `available` out of `capacity` is under the threshold.
    fn crossed(&self, available: u64, capacity: u64) -> bool {
        match *self {
            Threshold::Amount(a) => i128::from(available) < a,
            Threshold::Percent(p) => (available as f64) < capacity as f64 * p / 100.0,
        }
    }
}

/// Parsed `evictionHard`. As upstream, the defaults apply only when none is given: a
/// setting that names some signals leaves the others without a threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds(pub BTreeMap<String, Threshold>);

impl Thresholds {
    pub fn parse(given: &BTreeMap<String, String>) -> Result<Thresholds, Error> {
        let all = if given.is_empty() {
            defaults()
        } else {
            given.clone()
        };
        let mut out = BTreeMap::new();
        for (signal, value) in all {
            if !SIGNALS.contains(&signal.as_str()) {
                return Err(Error::Config(format!(
                    "evictionHard: unsupported eviction signal {signal}"
                )));
            }
            let bad = || {
                Error::Config(format!(
                    "evictionHard: invalid value {value:?} for {signal}"
                ))
            };
            let t = match value.strip_suffix('%') {
                Some(p) => {
                    let p: f64 = p.parse().map_err(|_| bad())?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(bad());
                    }
                    Threshold::Percent(p)
                }
                None => Threshold::Amount(Quantity::parse(&value).map_err(|_| bad())?.value()),
            };
            out.insert(signal, t);
        }
        Ok(Thresholds(out))
    }
}

/// What was measured: (available, capacity) per signal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed(pub BTreeMap<&'static str, (u64, u64)>);

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Measures the node now.
pub fn observe(root_dir: &Path, image_dir: &Path) -> Observed {
    let mut o = BTreeMap::new();
    let capacity = meminfo_value(&read("/proc/meminfo"), "MemTotal:");
    if let (Some(capacity), Some(working_set)) = (capacity, node_memory_working_set()) {
        o.insert(
            "memory.available",
            (capacity.saturating_sub(working_set), capacity),
        );
    }
    for (fs, dir) in [("nodefs", root_dir), ("imagefs", image_dir)] {
        if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
            let frag = st.fragment_size();
            let (avail, inodes) = match fs {
                "nodefs" => ("nodefs.available", "nodefs.inodesFree"),
                _ => ("imagefs.available", "imagefs.inodesFree"),
            };
            o.insert(avail, (st.blocks_available() * frag, st.blocks() * frag));
            if st.files() > 0 {
                o.insert(inodes, (st.files_free(), st.files()));
            }
        }
    }
    let pid_max = read("/proc/sys/kernel/pid_max").trim().parse::<u64>().ok();
    let running = read("/proc/loadavg")
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, total)| total.parse::<u64>().ok());
    if let (Some(max), Some(n)) = (pid_max, running) {
        o.insert("pid.available", (max.saturating_sub(n), max));
    }
    Observed(o)
}

/// Which pressures the node is under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// The pressures `observed` puts the node under by `thresholds`.
pub fn pressure(thresholds: &Thresholds, observed: &Observed) -> Pressure {
    let crossed = |signal: &str| match (thresholds.0.get(signal), observed.0.get(signal)) {
        (Some(t), Some(&(available, capacity))) => t.crossed(available, capacity),
        _ => false,
    };
    Pressure {
        memory: crossed("memory.available"),
        disk: [
            "nodefs.available",
            "nodefs.inodesFree",
            "imagefs.available",
            "imagefs.inodesFree",
        ]
        .iter()
        .any(|s| crossed(s)),
        pid: crossed("pid.available"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_pressure() {
        let defaults = Thresholds::parse(&BTreeMap::new()).unwrap();
        assert_eq!(defaults.0.len(), 5);
        assert_eq!(defaults.0["nodefs.available"], Threshold::Percent(10.0));
        let t = Thresholds::parse(&BTreeMap::from([
            ("nodefs.available".to_string(), "20%".to_string()),
            ("memory.available".to_string(), "100Mi".to_string()),
        ]))
        .unwrap();
        assert_eq!(t.0["nodefs.available"], Threshold::Percent(20.0));
        assert_eq!(t.0["memory.available"], Threshold::Amount(100 << 20));
        // Naming some signals leaves the rest without a threshold, as upstream.
        assert!(!t.0.contains_key("imagefs.available"));
        let observed = |mem: u64, disk: u64| {
            Observed(BTreeMap::from([
                ("memory.available", (mem, 8 << 30)),
                ("nodefs.available", (disk, 100)),
                ("pid.available", (10, 100)),
            ]))
        };
        assert_eq!(pressure(&t, &observed(1 << 30, 50)), Pressure::default());
        let p = pressure(&t, &observed(50 << 20, 19));
        assert!(p.memory && p.disk && !p.pid);
        let t = Thresholds::parse(&BTreeMap::from([(
            "pid.available".to_string(),
            "20".to_string(),
        )]))
        .unwrap();
        let p = pressure(&t, &observed(50 << 20, 5));
        assert!(p.pid && !p.memory && !p.disk);
        for bad in [
            ("memory.free", "1Gi"),
            ("nodefs.available", "110%"),
            ("memory.available", "lots"),
        ] {
            let m = BTreeMap::from([(bad.0.to_string(), bad.1.to_string())]);
            assert!(Thresholds::parse(&m).is_err(), "{bad:?}");
        }
    }
}
