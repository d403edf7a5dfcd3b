//! The sync loop: informers on Services and EndpointSlices mark the rules dirty; the
//! loop rewrites every rule in one transaction, at most once per `minSyncPeriod` and at
//! least once per `syncPeriod`, then forgets stale UDP flows. It also reports health
//! (upstream's `/healthz` JSON) and sync metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokube_client::{Api, Client, Informer, ListParams, Store};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{Cidr, Mode, ProxyConfig};
use crate::model::{service_ports, ServicePort, StaleUdp};
use crate::{conntrack, iptables, nftables, Error};

/// Upper bounds (seconds) of the sync-duration histogram: upstream's exponential
/// buckets 1 ms × 2^i.
const BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

/// What the health and metrics endpoints read.
pub struct Status {
    mode: Mode,
    health_timeout: Duration,
    inner: Mutex<StatusInner>,
    failures: AtomicU64,
}

#[derive(Default)]
struct StatusInner {
    last_synced: Option<jiff::Timestamp>,
    /// When the oldest change not yet synced arrived.
    pending_since: Option<Instant>,
    last_queued: Option<jiff::Timestamp>,
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
    rules: usize,
}

impl Status {
    fn new(cfg: &ProxyConfig) -> Status {
        Status {
            mode: cfg.mode,
            // Upstream's healthTimeout: twice the sync period.
            health_timeout: cfg.sync_period * 2,
            inner: Mutex::default(),
            failures: AtomicU64::new(0),
        }
    }

    fn queued(&self) {
        let mut s = self.inner.lock().expect("status lock");
        s.pending_since.get_or_insert_with(Instant::now);
        s.last_queued = Some(jiff::Timestamp::now());
    }

    fn synced(&self, took: Duration, started: Instant, rules: usize) {
        let mut s = self.inner.lock().expect("status lock");
        s.last_synced = Some(jiff::Timestamp::now());
        if s.pending_since.is_some_and(|p| p <= started) {
            s.pending_since = None;
        }
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.counts[i] += 1;
            }
        }
        s.sum += secs;
        s.total += 1;
        s.rules = rules;
    }

    /// Healthy unless a change has waited longer than the health timeout (upstream's
    /// proxier health server), or nothing was ever synced within it of the start.
    pub fn check(&self) -> Result<(), String> {
        let s = self.inner.lock().expect("status lock");
        match s.pending_since {
            Some(p) if p.elapsed() > self.health_timeout => Err(format!(
                "proxy rules not synced for {}s",
                p.elapsed().as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Upstream's `/healthz` body.
    pub fn healthz_json(&self) -> String {
        let s = self.inner.lock().expect("status lock");
        let fmt = |t: Option<jiff::Timestamp>| {
            t.map(|t| t.to_string())
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
        };
        serde_json::json!({
            "lastUpdated": fmt(s.last_synced),
            "currentTime": jiff::Timestamp::now().to_string(),
            "nodeEligible": true,
        })
        .to_string()
    }

    /// Prometheus text.
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let s = self.inner.lock().expect("status lock");
        let mut out = String::new();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
        ] {
            let _ = writeln!(out, "# HELP {name} SyncProxyRules latency in seconds");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", s.counts[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.total);
            let _ = writeln!(out, "{name}_sum {}", s.sum);
            let _ = writeln!(out, "{name}_count {}", s.total);
        }
        let secs = |t: Option<jiff::Timestamp>| {
            t.map(|t| t.as_millisecond() as f64 / 1000.0).unwrap_or(0.0)
        };
        let _ = writeln!(out, "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced");
        let _ = writeln!(
            out,
            "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge"
        );
        let _ = writeln!(
            out,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds {}",
            secs(s.last_synced)
        );
        let _ = writeln!(out, "# HELP kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds The last time a sync of proxy rules was queued");
        let _ = writeln!(
            out,
            "# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge"
        );
        let _ = writeln!(
            out,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds {}",
            secs(s.last_queued)
        );
        let failures = match self.mode {
            Mode::Iptables => "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            Mode::Nftables => "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        };
        let _ = writeln!(
            out,
            "# HELP {failures} Cumulative proxy rules restore failures"
        );
        let _ = writeln!(out, "# TYPE {failures} counter");
        let _ = writeln!(out, "{failures} {}", self.failures.load(Ordering::Relaxed));
        let rules = match self.mode {
            Mode::Iptables => "kubeproxy_sync_proxy_rules_iptables_total",
            Mode::Nftables => "kubeproxy_sync_proxy_rules_nftables_total",
        };
        let _ = writeln!(
            out,
            "# HELP {rules} Total number of rules the node has for its Services"
        );
        let _ = writeln!(out, "# TYPE {rules} gauge");
        let _ = writeln!(out, "{rules} {}", s.rules);
        out
    }
}

/// kube-proxy for one node.
pub struct Proxier {
    cfg: ProxyConfig,
    node_name: String,
    client: Client,
    status: Arc<Status>,
}

impl Proxier {
    pub fn new(client: Client, cfg: ProxyConfig, node_name: &str) -> Proxier {
        Proxier {
            status: Arc::new(Status::new(&cfg)),
            cfg,
            node_name: node_name.to_string(),
            client,
        }
    }

    /// The state the health and metrics endpoints serve.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let dirty = Arc::new(tokio::sync::Notify::new());
        let mut services = Informer::new(
            Api::<Service>::all(self.client.clone()),
            ListParams::default(),
        );
        let mut slices = Informer::new(
            Api::<EndpointSlice>::all(self.client.clone()),
            ListParams::default(),
        );
        {
            let (st, d) = (self.status.clone(), dirty.clone());
            services.on_event(move |_| {
                st.queued();
                d.notify_one();
            });
            let (st, d) = (self.status.clone(), dirty.clone());
            slices.on_event(move |_| {
                st.queued();
                d.notify_one();
            });
        }
        let (svc_store, slice_store) = (services.store(), slices.store());
        tokio::spawn(services.run());
        tokio::spawn(slices.run());
        while !(svc_store.has_synced() && slice_store.has_synced()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut state = Syncer::new(self.cfg.clone());
        let mut last_start: Option<Instant> = None;
        loop {
            if let Some(t) = last_start {
                let next = t + self.cfg.min_sync_period;
                tokio::time::sleep_until(next.into()).await;
            }
            let started = Instant::now();
            last_start = Some(started);
            let ports = snapshot(&svc_store, &slice_store, &self.node_name);
            let result = tokio::task::spawn_blocking(move || {
                let r = state.sync(ports);
                (state, r)
            })
            .await;
            let (s, r) = match result {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("sync task: {e}");
                    std::process::exit(1);
                }
            };
            state = s;
            match r {
                Ok(rules) => {
                    let took = started.elapsed();
                    self.status.synced(took, started, rules);
                    tracing::debug!(?took, rules, "synced proxy rules");
                }
                Err(e) => {
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    self.status.queued();
                    tracing::error!("syncing proxy rules: {e}");
                    // Retry after the minimum period.
                    dirty.notify_one();
                }
            }
            let _ = tokio::time::timeout(self.cfg.sync_period, dirty.notified()).await;
        }
    }
}

fn snapshot(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    node: &str,
) -> Vec<ServicePort> {
    let svcs = services.list();
    let sls = slices.list();
    service_ports(
        svcs.iter().map(|s| s.as_ref()),
        sls.iter().map(|s| s.as_ref()),
        node,
    )
}

/// How often a sync rewrites every rule rather than only what changed (upstream's
/// hourly full sync), repairing anything else that touched kube-proxy's chains.
const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// One node's rule writer: what a sync needs to remember between runs.
pub struct Syncer {
    cfg: ProxyConfig,
    previous: Vec<ServicePort>,
    /// The iptables rules the last successful sync applied.
    applied: Option<iptables::Tables>,
    /// The nftables objects the last successful sync applied.
    applied_nft: Option<nftables::Script>,
    last_full: Option<Instant>,
    /// When the built-in chains' jumps were last checked (iptables mode).
    jumps_checked: Option<Instant>,
}

impl Syncer {
    pub fn new(cfg: ProxyConfig) -> Syncer {
        Syncer {
            cfg,
            previous: Vec::new(),
            applied: None,
            applied_nft: None,
            last_full: None,
            jumps_checked: None,
        }
    }

    /// Brings the rules to `ports` in one transaction (then forgets stale UDP flows);
    /// returns how many rules the node has for them.
    pub fn sync(&mut self, ports: Vec<ServicePort>) -> Result<usize, Error> {
        let lines = match self.cfg.mode {
            Mode::Iptables => {
                if self
                    .jumps_checked
                    .is_none_or(|t| t.elapsed() >= self.cfg.sync_period)
                {
                    iptables::ensure_jumps()?;
                    self.jumps_checked = Some(Instant::now());
                }
                let tables = iptables::render(&self.cfg, &ports);
                let full_due = self
                    .last_full
                    .is_none_or(|t| t.elapsed() >= FULL_SYNC_PERIOD);
                let input = match self.applied.take() {
                    Some(prev) if !full_due => tables.partial(&prev),
                    _ => {
                        self.last_full = Some(Instant::now());
                        tables.full(&iptables::existing_chains("nat")?)
                    }
                };
                // (A failure leaves `applied` empty: the next sync is a full one.)
                iptables::apply(&input)?;
                let rules = tables.nat.rule_count() + tables.filter.rule_count();
                self.applied = Some(tables);
                rules
            }
            Mode::Nftables => {
                let script = nftables::render(&self.cfg, &ports);
                let full_due = self
                    .last_full
                    .is_none_or(|t| t.elapsed() >= FULL_SYNC_PERIOD);
                let text = match self.applied_nft.take() {
                    Some(prev) if !full_due => script.partial(&prev),
                    _ => {
                        self.last_full = Some(Instant::now());
                        script.full(&nftables::existing()?)
                    }
                };
                nftables::apply(&text)?;
                let rules = script.rule_count();
                self.applied_nft = Some(script);
                rules
            }
        };
        let stale = StaleUdp::between(&self.previous, &ports);
        if !stale.is_empty() {
            conntrack::clear(&stale);
        }
        self.previous = ports;
        Ok(lines)
    }
}

/// The node settings kube-proxy needs: `route_localnet` for NodePorts on 127.0.0.1
/// (iptables mode), and bridged traffic seen by netfilter (a warning when off).
pub fn prepare_node(cfg: &ProxyConfig) {
    if cfg.mode == Mode::Iptables && cfg.localhost_node_ports {
        let p = "/proc/sys/net/ipv4/conf/all/route_localnet";
        if let Err(e) = std::fs::write(p, "1") {
            tracing::warn!("setting {p}: {e}; NodePorts will not answer on 127.0.0.1");
        }
    }
    match std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables") {
        Ok(v) if v.trim() == "1" => {}
        _ => tracing::warn!(
            "bridge-nf-call-iptables is not 1 (br_netfilter): pods may not reach Services backed by pods on the same bridge"
        ),
    }
}

/// The bridge with no ports that blackholed ranges route to.
pub const BLACKHOLE_DEVICE: &str = "kube-blackhole";

/// Routes `cidrs` into a bridge with no ports, so that a packet to a Service IP that no
/// rule rewrote is dropped on this node (an `unreachable` or `blackhole` route would
/// also fail the node's own connections to Service IPs, whose routing is decided before
/// the rules rewrite them).
pub fn ensure_blackhole(cidrs: &[Cidr]) -> Result<(), Error> {
    if cidrs.is_empty() {
        return Ok(());
    }
    let ip = |args: &[&str]| crate::run("ip", args).map(|_| ());
    if ip(&["link", "show", BLACKHOLE_DEVICE]).is_err() {
        ip(&["link", "add", BLACKHOLE_DEVICE, "type", "bridge"])?;
    }
    ip(&["link", "set", BLACKHOLE_DEVICE, "up"])?;
    for c in cidrs {
        ip(&["route", "replace", &c.to_string(), "dev", BLACKHOLE_DEVICE])?;
    }
    Ok(())
}

/// Removes the blackhole device (and with it its routes).
pub fn remove_blackhole() {
    let _ = std::process::Command::new("ip")
        .args(["link", "del", BLACKHOLE_DEVICE])
        .output();
}
