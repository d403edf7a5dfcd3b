//! `/metrics` in the Prometheus text format, with upstream's metric names: request
//! counts and latencies by verb, resource and code, registered watchers, store request
//! latency by operation and type, and process figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Request latency buckets (seconds), upstream's `apiserver_request_duration_seconds`.
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];
/// Store latency buckets (seconds), upstream's `etcd_request_duration_seconds`.
const STORE_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.total += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        for (i, b) in buckets.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.total);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.total);
    }
}

/// What a request was, for its metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: &'static str,
}

impl RequestLabels {
    fn render(&self) -> String {
        format!(
            "component=\"apiserver\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"",
            self.group, self.resource, self.scope, self.subresource, self.verb, self.version
        )
    }
}

/// The API server's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(RequestLabels, u16), u64>>,
    latency: Mutex<BTreeMap<RequestLabels, Histogram>>,
    store: Mutex<BTreeMap<(&'static str, String), Histogram>>,
    watchers: Mutex<BTreeMap<(String, String, String), i64>>,
    inflight: AtomicI64,
}

impl Metrics {
    /// Counts a finished request.
    pub fn request(&self, labels: RequestLabels, code: u16, took: Duration) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((labels.clone(), code))
            .or_default() += 1;
        if labels.verb != "WATCH" {
            self.latency
                .lock()
                .expect("metrics lock")
                .entry(labels)
                .or_default()
                .observe(REQUEST_BUCKETS, took.as_secs_f64());
        }
    }

    /// Records one store round trip (`operation`: get, list, create, update, delete).
    pub fn store(&self, operation: &'static str, ty: &str, took: Duration) {
        self.store
            .lock()
            .expect("metrics lock")
            .entry((operation, ty.to_string()))
            .or_default()
            .observe(STORE_BUCKETS, took.as_secs_f64());
    }

    /// A watcher started (+1) or ended (-1).
    pub fn watchers(&self, group: &str, version: &str, kind: &str, delta: i64) {
        *self
            .watchers
            .lock()
            .expect("metrics lock")
            .entry((group.to_string(), version.to_string(), kind.to_string()))
            .or_default() += delta;
    }

    /// Requests being served now.
    pub fn inflight(&self, delta: i64) {
        self.inflight.fetch_add(delta, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((l, code), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "apiserver_request_total{{code=\"{code}\",{}}} {n}",
                l.render()
            );
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for (l, h) in self.latency.lock().expect("metrics lock").iter() {
            h.render(
                &mut out,
                "apiserver_request_duration_seconds",
                &l.render(),
                REQUEST_BUCKETS,
            );
        }
        out.push_str("# HELP apiserver_registered_watchers Number of currently registered watchers for a given resources\n# TYPE apiserver_registered_watchers gauge\n");
        for ((g, v, k), n) in self.watchers.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "apiserver_registered_watchers{{group=\"{g}\",kind=\"{k}\",version=\"{v}\"}} {n}"
            );
        }
        out.push_str("# HELP apiserver_current_inflight_requests Maximal number of currently used inflight request limit of this apiserver per request kind in last second.\n# TYPE apiserver_current_inflight_requests gauge\n");
        let _ = writeln!(
            out,
            "apiserver_current_inflight_requests{{request_kind=\"all\"}} {}",
            self.inflight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP etcd_request_duration_seconds Etcd request latency in seconds for each operation and object type.\n# TYPE etcd_request_duration_seconds histogram\n");
        for ((op, ty), h) in self.store.lock().expect("metrics lock").iter() {
            h.render(
                &mut out,
                "etcd_request_duration_seconds",
                &format!("operation=\"{op}\",type=\"{ty}\""),
                STORE_BUCKETS,
            );
        }
        if let Some(rss) = resident_bytes() {
            out.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

/// This process's resident memory, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_upstream_names() {
        let m = Metrics::default();
        let l = RequestLabels {
            verb: "LIST".into(),
            group: "".into(),
            version: "v1".into(),
            resource: "pods".into(),
            subresource: "".into(),
            scope: "namespace",
        };
        m.request(l.clone(), 200, Duration::from_millis(3));
        m.request(l, 200, Duration::from_millis(30));
        m.store("list", "/registry/pods", Duration::from_millis(1));
        m.watchers("apps", "v1", "Deployment", 1);
        let text = m.render();
        assert!(text.contains("apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 2"), "{text}");
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"0.05\"} 2"));
        assert!(text.contains(
            "etcd_request_duration_seconds_count{operation=\"list\",type=\"/registry/pods\"} 1"
        ));
        assert!(text.contains(
            "apiserver_registered_watchers{group=\"apps\",kind=\"Deployment\",version=\"v1\"} 1"
        ));
    }
}
