//! Resource usage of the node and of its running containers, what `kubectl top` shows:
//! CPU time and memory working set read from cgroups and `/proc` every
//! [`SAMPLE_PERIOD`] (upstream's kubelet gets the same from cAdvisor), and served as a
//! CPU rate over the window between a stored sample and a fresh one, as metrics-server
//! computes it from two scrapes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ferrokube_proto::kubelet::{ContainerUsage, PodUsage, StatsResponse, Usage};

use crate::cgroups;
use crate::pods::Pods;

/// How often the node and its containers are sampled in the background.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(10);

/// The shortest window a CPU rate is computed over.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

/// Ticks per second of `/proc/stat` (`USER_HZ`, fixed at 100 in the kernel's ABI).
const USER_HZ: u64 = 100;

/// Cumulative CPU time and the current memory working set of one cgroup (or the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub cpu_ns: u64,
    pub memory_working_set: u64,
}

/// A running container to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    /// The runc id of the running attempt (a restart makes a new one).
    pub id: String,
    /// Its cgroup, relative to the hierarchy's root.
    pub cgroup: String,
}

/// Everything measured at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    pub wall: SystemTime,
    pub at: Instant,
    pub node: Option<Counters>,
    /// By container id.
    pub containers: HashMap<String, Counters>,
}

/// The node's memory working set: the root memory cgroup's usage less its inactive file
/// cache (cgroup v1), else what the kernel cannot give back (`MemTotal - MemAvailable`).
pub fn node_memory_working_set() -> Option<u64> {
    if !cgroups::unified() {
        if let Ok(ws) = cgroups::memory_working_set("/") {
            return Some(ws);
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo_value(&meminfo, "MemTotal:")?;
    Some(total.saturating_sub(meminfo_value(&meminfo, "MemAvailable:").unwrap_or(total)))
}

/// A `/proc/meminfo` value in bytes.
pub fn meminfo_value(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The CPU time the whole machine has spent busy, in nanoseconds, from the `cpu` line of
/// `/proc/stat` (user, nice, system, irq, softirq and steal; idle and iowait are not use).
fn busy_cpu_ns(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0))
        .sum();
    Some(busy * (1_000_000_000 / USER_HZ))
}

fn node_counters() -> Option<Counters> {
    Some(Counters {
        cpu_ns: busy_cpu_ns(&std::fs::read_to_string("/proc/stat").ok()?)?,
        memory_working_set: node_memory_working_set()?,
    })
}

/// Measures the node and `running` now (blocking file reads).
pub fn measure(running: &[Running]) -> Sample {
    let containers = running
        .iter()
        .filter_map(|r| {
            let cpu_ns = cgroups::cpu_usage_ns(&r.cgroup).ok()?;
            let memory_working_set = cgroups::memory_working_set(&r.cgroup).ok()?;
            Some((
                r.id.clone(),
                Counters {
                    cpu_ns,
                    memory_working_set,
                },
            ))
        })
        .collect();
    Sample {
        wall: SystemTime::now(),
        at: Instant::now(),
        node: node_counters(),
        containers,
    }
}

/// CPU in billionths of a core used between two counters `window` apart; `None` when
/// the counter went back (not the same cgroup).
fn rate(before: u64, after: u64, window: Duration) -> Option<u64> {
    let used = after.checked_sub(before)?;
    Some((used as u128 * 1_000_000_000 / window.as_nanos().max(1)) as u64)
}

fn usage(before: &Counters, now: &Counters, window: Duration) -> Option<Usage> {
    Some(Usage {
        cpu_nano_cores: rate(before.cpu_ns, now.cpu_ns, window)?,
        memory_working_set_bytes: now.memory_working_set,
    })
}

/// The usage between `base` and `now` of the node and of every pod in `running` whose
/// running containers were all measured at both moments (as metrics-server leaves out a
/// pod it lacks a container's metrics for).
pub fn between(base: &Sample, now: &Sample, running: &[Running]) -> StatsResponse {
    let window = now.at.saturating_duration_since(base.at);
    let mut pods: Vec<PodUsage> = Vec::new();
    let mut incomplete: Vec<&str> = Vec::new();
    for r in running {
        if incomplete.contains(&r.uid.as_str()) {
            continue;
        }
        let measured = match (base.containers.get(&r.id), now.containers.get(&r.id)) {
            (Some(b), Some(n)) => usage(b, n, window),
            _ => None,
        };
        let Some(u) = measured else {
            incomplete.push(&r.uid);
            pods.retain(|p| p.uid != r.uid);
            continue;
        };
        let c = ContainerUsage {
            name: r.container.clone(),
            usage: Some(u),
        };
        match pods.iter_mut().find(|p| p.uid == r.uid) {
            Some(p) => p.containers.push(c),
            None => pods.push(PodUsage {
                namespace: r.namespace.clone(),
                name: r.pod.clone(),
                uid: r.uid.clone(),
                containers: vec![c],
            }),
        }
    }
    let node = match (&base.node, &now.node) {
        (Some(b), Some(n)) => usage(b, n, window),
        _ => None,
    };
    StatsResponse {
        timestamp_nanos: now
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        window_nanos: window.as_nanos() as i64,
        node,
        pods,
    }
}

/// Samples the node and its containers and answers for their usage.
pub struct Sampler {
    pods: Arc<Pods>,
    /// The last two background samples, oldest first.
    history: Mutex<VecDeque<Sample>>,
}

impl Sampler {
    pub fn new(pods: Arc<Pods>) -> Sampler {
        Sampler {
            pods,
            history: Mutex::new(VecDeque::with_capacity(2)),
        }
    }

    async fn take(&self) -> (Sample, Vec<Running>) {
        let running = self.pods.running_containers();
        tokio::task::spawn_blocking(move || (measure(&running), running))
            .await
            .expect("measuring does not panic")
    }

    /// Samples every [`SAMPLE_PERIOD`], keeping the last two samples.
    pub async fn run(self: Arc<Self>) {
        loop {
            let (sample, _) = self.take().await;
            {
                let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
                if h.len() == 2 {
                    h.pop_front();
                }
                h.push_back(sample);
            }
            tokio::time::sleep(SAMPLE_PERIOD).await;
        }
    }

    /// Usage now, over the window since the newest stored sample at least
    /// [`MIN_WINDOW`] old (nothing measured yet when there is none).
    pub async fn current(&self) -> StatsResponse {
        let (now, running) = self.take().await;
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        match h
            .iter()
            .rev()
            .find(|s| now.at.saturating_duration_since(s.at) >= MIN_WINDOW)
        {
            Some(base) => between(base, &now, &running),
            None => between(&now, &now, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(uid: &str, container: &str, id: &str) -> Running {
        Running {
            namespace: "ns".into(),
            pod: format!("pod-{uid}"),
            uid: uid.into(),
            container: container.into(),
            id: id.into(),
            cgroup: format!("/kubepods/pod{uid}/{id}"),
        }
    }

    fn sample(at: Instant, node: Option<(u64, u64)>, containers: &[(&str, u64, u64)]) -> Sample {
        let c = |(cpu_ns, memory_working_set)| Counters {
            cpu_ns,
            memory_working_set,
        };
        Sample {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
            at,
            node: node.map(c),
            containers: containers
                .iter()
                .map(|(id, cpu, mem)| (id.to_string(), c((*cpu, *mem))))
                .collect(),
        }
    }

    #[test]
    fn cpu_is_a_rate_over_the_window_and_memory_the_latest() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let run = [
            running("a", "app", "a-app-1"),
            running("a", "side", "a-side-1"),
            // Started after the base sample: its pod is left out whole.
            running("b", "app", "b-app-1"),
            running("b", "late", "b-late-1"),
        ];
        let base = sample(
            t0,
            Some((1_000_000_000, 10)),
            &[("a-app-1", 0, 5), ("a-side-1", 100, 5), ("b-app-1", 0, 1)],
        );
        let now = sample(
            t1,
            Some((21_000_000_000, 20)),
            &[
                ("a-app-1", 2_500_000_000, 4096),
                ("a-side-1", 100, 8192),
                ("b-app-1", 5, 1),
                ("b-late-1", 5, 1),
            ],
        );
        let r = between(&base, &now, &run);
        assert_eq!(r.window_nanos, 10_000_000_000);
        assert_eq!(r.timestamp_nanos, 1_000_000_000_000);
        // Twenty CPU-seconds in ten seconds: two cores.
        assert_eq!(
            r.node,
            Some(Usage {
                cpu_nano_cores: 2_000_000_000,
                memory_working_set_bytes: 20
            })
        );
        assert_eq!(r.pods.len(), 1);
        let p = &r.pods[0];
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("ns", "pod-a"));
        let usages: Vec<(&str, u64, u64)> = p
            .containers
            .iter()
            .map(|c| {
                let u = c.usage.unwrap();
                (
                    c.name.as_str(),
                    u.cpu_nano_cores,
                    u.memory_working_set_bytes,
                )
            })
            .collect();
        assert_eq!(usages, [("app", 250_000_000, 4096), ("side", 0, 8192)]);
        // A counter that went back is not a rate.
        let back = sample(t1, Some((0, 1)), &[("a-app-1", 0, 1), ("a-side-1", 0, 1)]);
        let r = between(&base, &back, &run[..2]);
        assert!(r.node.is_none());
        assert!(r.pods.is_empty());
    }

    #[test]
    fn proc_files_read_as_the_kernel_writes_them() {
        let stat =
            "cpu  1514001 7 341227 3893842 40985 3 15886 594 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(
            busy_cpu_ns(stat),
            Some((1_514_001 + 7 + 341_227 + 3 + 15_886 + 594) * 10_000_000)
        );
        assert_eq!(busy_cpu_ns("intr 1 2"), None);
        let meminfo = "MemTotal:       24683656 kB\nMemFree:        23998888 kB\nMemAvailable:   24260388 kB\n";
        assert_eq!(meminfo_value(meminfo, "MemTotal:"), Some(24_683_656 * 1024));
        assert_eq!(
            meminfo_value(meminfo, "MemAvailable:"),
            Some(24_260_388 * 1024)
        );
        assert_eq!(meminfo_value(meminfo, "Cached:"), None);
    }
}
