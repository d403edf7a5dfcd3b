//! The scheduler's metrics, by upstream's names: `scheduler_schedule_attempts_total`,
//! `scheduler_scheduling_attempt_duration_seconds` (per profile and result),
//! `scheduler_scheduling_algorithm_duration_seconds` and `scheduler_pending_pods` (per
//! sub-queue).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::queue::Pending;

/// Upstream's buckets: 1 ms doubling 15 times.
const BUCKETS: usize = 15;

fn bound(i: usize) -> f64 {
    0.001 * f64::from(1u32 << i)
}

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, c) in self.counts.iter_mut().enumerate() {
            if secs <= bound(i) {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, c) in self.counts.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {c}", bound(i));
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// An attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Scheduled,
    Unschedulable,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Scheduled => "scheduled",
            Outcome::Unschedulable => "unschedulable",
            Outcome::Error => "error",
        }
    }
}

/// Counters and histograms.
#[derive(Default)]
pub struct Metrics {
    attempts: Mutex<BTreeMap<(String, Outcome), Histogram>>,
    algorithm: Mutex<Histogram>,
}

impl Metrics {
    /// Records an attempt of `profile` that took `d` (algorithm and binding).
    pub fn attempt(&self, profile: &str, outcome: Outcome, d: Duration) {
        let mut g = self.attempts.lock().expect("metrics lock");
        g.entry((profile.to_string(), outcome))
            .or_default()
            .observe(d);
    }

    /// Records how long filtering, scoring (and preemption) took for one pod.
    pub fn algorithm(&self, d: Duration) {
        self.algorithm.lock().expect("metrics lock").observe(d);
    }

    /// How many attempts ended so.
    pub fn count(&self, outcome: Outcome) -> u64 {
        let g = self.attempts.lock().expect("metrics lock");
        g.iter()
            .filter(|((_, o), _)| *o == outcome)
            .map(|(_, h)| h.count)
            .sum()
    }

    /// The Prometheus text.
    pub fn render(&self, pending: Pending, gated: usize) -> String {
        let g = self.attempts.lock().expect("metrics lock");
        let mut out = String::new();
        let _ = writeln!(out, "# HELP scheduler_schedule_attempts_total [STABLE] Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.");
        let _ = writeln!(out, "# TYPE scheduler_schedule_attempts_total counter");
        for ((profile, o), h) in g.iter() {
            let _ = writeln!(
                out,
                "scheduler_schedule_attempts_total{{profile=\"{profile}\",result=\"{}\"}} {}",
                o.label(),
                h.count
            );
        }
        let _ = writeln!(out, "# HELP scheduler_scheduling_attempt_duration_seconds [STABLE] Scheduling attempt latency in seconds (scheduling algorithm + binding)");
        let _ = writeln!(
            out,
            "# TYPE scheduler_scheduling_attempt_duration_seconds histogram"
        );
        for ((profile, o), h) in g.iter() {
            let labels = format!("profile=\"{profile}\",result=\"{}\"", o.label());
            h.render(
                &mut out,
                "scheduler_scheduling_attempt_duration_seconds",
                &labels,
            );
        }
        let _ = writeln!(out, "# HELP scheduler_scheduling_algorithm_duration_seconds [ALPHA] Scheduling algorithm latency in seconds");
        let _ = writeln!(
            out,
            "# TYPE scheduler_scheduling_algorithm_duration_seconds histogram"
        );
        self.algorithm.lock().expect("metrics lock").render(
            &mut out,
            "scheduler_scheduling_algorithm_duration_seconds",
            "",
        );
        let _ = writeln!(out, "# HELP scheduler_pending_pods [STABLE] Number of pending pods, by the queue type. 'active' means number of pods in activeQ; 'backoff' means number of pods in backoffQ; 'unschedulable' means number of pods in unschedulablePods that the scheduler attempted to schedule and failed; 'gated' is the number of unschedulable pods that the scheduler never attempted to schedule because they are gated.");
        let _ = writeln!(out, "# TYPE scheduler_pending_pods gauge");
        for (q, n) in [
            ("active", pending.active),
            ("backoff", pending.backoff),
            ("gated", gated),
            ("unschedulable", pending.unschedulable),
        ] {
            let _ = writeln!(out, "scheduler_pending_pods{{queue=\"{q}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.attempt(
            "default-scheduler",
            Outcome::Scheduled,
            Duration::from_micros(1500),
        );
        m.attempt(
            "default-scheduler",
            Outcome::Scheduled,
            Duration::from_millis(30),
        );
        let text = m.render(Pending::default(), 0);
        assert!(text.contains("scheduler_schedule_attempts_total{profile=\"default-scheduler\",result=\"scheduled\"} 2"));
        assert!(text.contains("le=\"0.001\"} 0"));
        assert!(text.contains("le=\"0.002\"} 1"));
        assert!(text.contains("le=\"0.032\"} 2"));
        assert!(text.contains("scheduler_pending_pods{queue=\"active\"} 0"));
        m.algorithm(Duration::from_micros(300));
        let text = m.render(Pending::default(), 0);
        assert!(
            text.contains("scheduler_scheduling_algorithm_duration_seconds_bucket{le=\"0.001\"} 1")
        );
        assert!(text.contains("scheduler_scheduling_algorithm_duration_seconds_count 1"));
        assert_eq!(m.count(Outcome::Scheduled), 2);
    }
}
