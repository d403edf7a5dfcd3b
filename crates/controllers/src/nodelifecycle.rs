//! The node lifecycle controller (upstream's `node-lifecycle-controller`):
//!
//! - Health: every `--node-monitor-period` (5 s) each Node's health is probed from its
//!   `Ready` heartbeat and its Lease in `kube-node-lease`. A Node silent for
//!   `--node-monitor-grace-period` (50 s; `--node-startup-grace-period`, 60 s, if it
//!   never reported) gets its `Ready`, `MemoryPressure`, `DiskPressure` and
//!   `PIDPressure` conditions set to `Unknown` (`NodeStatusUnknown`, "Kubelet stopped
//!   posting node status."; `NodeStatusNeverUpdated` if absent). A Node leaving Ready
//!   gets a `NodeNotReady` event and its pods' `Ready` condition turns False.
//! - NoExecute taints: `node.kubernetes.io/not-ready` (Ready False) or
//!   `node.kubernetes.io/unreachable` (Ready Unknown), added through a per-zone
//!   rate-limited queue (`--node-eviction-rate` 0.1 nodes/s; in a zone with at least
//!   `--unhealthy-zone-threshold` of its Nodes not ready, more than two,
//!   `--secondary-node-eviction-rate` if the zone is larger than
//!   `--large-cluster-size-threshold`, else none), removed at once when the Node is Ready
//!   again. When every zone has no Ready Node at all the controller stops tainting and
//!   lifts those taints ("master disruption mode"), as the fault is then most likely its
//!   own view of the cluster.
//! - NoSchedule taints from conditions (upstream's TaintNodesByCondition): not-ready,
//!   unreachable, memory-pressure, disk-pressure, pid-pressure, network-unavailable,
//!   and `node.kubernetes.io/unschedulable` for cordoned Nodes.
//!
//! Pods are evicted from NoExecute-tainted Nodes by the taint eviction controller.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Patch, Store, WorkQueue};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use crate::{Context, Error, InformerFactory, Runner};

const COMPONENT: &str = "node-controller";
const CONTROLLER: &str = "node-lifecycle-controller";
const QUEUE: &str = "node_lifecycle_controller";

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Nodes with this label are left out of zone disruption counts.
const EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";
/// How often the zones' NoExecute queues are served (upstream's NodeEvictionPeriod).
const TAINT_PERIOD: Duration = Duration::from_millis(100);
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The conditions the controller sets to Unknown for a silent Node.
const WATCHED_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// The controller's flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--node-monitor-period`.
    pub monitor_period: Duration,
    /// `--node-monitor-grace-period`.
    pub grace_period: Duration,
    /// `--node-startup-grace-period`.
    pub startup_grace_period: Duration,
    /// `--node-eviction-rate` (Nodes per second).
    pub eviction_rate: f64,
    /// `--secondary-node-eviction-rate`.
    pub secondary_eviction_rate: f64,
    /// `--large-cluster-size-threshold`.
    pub large_cluster_threshold: usize,
    /// `--unhealthy-zone-threshold`.
    pub unhealthy_zone_threshold: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(50),
            startup_grace_period: Duration::from_secs(60),
            eviction_rate: 0.1,
            secondary_eviction_rate: 0.01,
            large_cluster_threshold: 50,
            unhealthy_zone_threshold: 0.55,
        }
    }
}

/// A zone's health, as upstream computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// The state of a zone with `ready` and `not_ready` Nodes.
pub fn zone_state(ready: usize, not_ready: usize, threshold: f64) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / (ready + not_ready) as f64 >= threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// The zone of a Node: its region and zone labels (upstream's `GetZoneKey`).
pub fn zone_of(n: &Node) -> String {
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let get = |k: &str, legacy: &str| {
        labels
            .get(k)
            .or_else(|| labels.get(legacy))
            .cloned()
            .unwrap_or_default()
    };
    let region = get(
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/region",
    );
    let zone = get(
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/zone",
    );
    if region.is_empty() && zone.is_empty() {
        String::new()
    } else {
        format!("{region}:\x00:{zone}")
    }
}

fn condition<'a>(n: &'a Node, ty: &str) -> Option<&'a NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

fn ready_status(n: &Node) -> &str {
    condition(n, "Ready").map_or("Unknown", |c| c.status.as_str())
}

/// The NoSchedule taints a Node's conditions and cordon call for (TaintNodesByCondition).
pub fn condition_taints(n: &Node) -> Vec<&'static str> {
    let mut keys = Vec::new();
    match condition(n, "Ready").map(|c| c.status.as_str()) {
        Some("False") => keys.push(NOT_READY),
        Some("Unknown") => keys.push(UNREACHABLE),
        _ => {}
    }
    for (ty, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    ] {
        if condition(n, ty).is_some_and(|c| c.status == "True") {
            keys.push(key);
        }
    }
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        keys.push(UNSCHEDULABLE);
    }
    keys
}

/// The taint keys the controller manages with NoSchedule.
const CONDITION_TAINT_KEYS: [&str; 7] = [
    NOT_READY,
    UNREACHABLE,
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/network-unavailable",
    "node.kubernetes.io/pid-pressure",
    UNSCHEDULABLE,
];

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        effect: effect.into(),
        time_added: (effect == "NoExecute").then(|| Time(jiff::Timestamp::now())),
        value: None,
    }
}

/// Rewrites a Node's taints: `keep` decides which stay, `add` are added unless present
/// (by key and effect). Reads the Node afresh and writes with its resourceVersion,
/// retrying conflicts a few times (upstream's `SwapNodeControllerTaint`).
pub(crate) async fn update_taints(
    api: &Api<Node>,
    name: &str,
    keep: impl Fn(&Taint) -> bool,
    add: &[Taint],
) -> Result<(), Error> {
    for _ in 0..5 {
        let node = match api.get(name).await {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let old = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let mut taints: Vec<Taint> = old.iter().filter(|t| keep(t)).cloned().collect();
        for t in add {
            if !taints
                .iter()
                .any(|x| x.key == t.key && x.effect == t.effect)
            {
                taints.push(t.clone());
            }
        }
        if taints == old {
            return Ok(());
        }
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints},
        });
        match api.patch(name, &Patch::Merge(patch)).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Sync(format!("node {name}: taints kept changing")))
}

/// What the controller knows of a Node's health.
struct Health {
    /// When the Node was last heard from (a new heartbeat or Lease renewal).
    probe: Instant,
    heartbeat: Option<Time>,
    lease_renew: Option<String>,
}

/// A token bucket of `qps` tokens per second holding one (upstream's limiter, burst 1).
struct Limiter {
    qps: f64,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    fn new(qps: f64) -> Self {
        Limiter {
            qps,
            tokens: 1.0,
            last: Instant::now(),
        }
    }

    fn try_accept(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + self.qps * (now - self.last).as_secs_f64()).min(1.0);
        self.last = now;
        if self.qps > 0.0 && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Nodes of one zone waiting for their NoExecute taint.
struct ZoneTainter {
    limiter: Limiter,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    state: ZoneState,
}

#[derive(Default)]
struct Zones {
    tainters: BTreeMap<String, ZoneTainter>,
    /// Every zone in full disruption: tainting stopped.
    all_disrupted: bool,
}

struct Lifecycle {
    cx: Context,
    config: Config,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    health: Mutex<HashMap<String, Health>>,
    zones: Mutex<Zones>,
    /// Nodes whose pods still need marking not ready.
    pods_to_retry: Mutex<HashSet<String>>,
    recorder: Recorder,
}

/// Registers the informers; the runner monitors Node health, taints and untaints.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let config = cx.node_lifecycle.clone();
    let queue: WorkQueue<String> = WorkQueue::new();
    let nodes = {
        let inf = informers.informer::<Node>();
        let q = queue.clone();
        inf.on_event(move |e| match e {
            Event::Added(n) => q.add(n.metadata.name.clone().unwrap_or_default()),
            Event::Updated(old, n) => {
                if condition_taints(old) != condition_taints(n)
                    || old.spec.as_ref().and_then(|s| s.taints.clone())
                        != n.spec.as_ref().and_then(|s| s.taints.clone())
                {
                    q.add(n.metadata.name.clone().unwrap_or_default())
                }
            }
            Event::Deleted(_) => {}
        });
        inf.store()
    };
    let lc = Arc::new(Lifecycle {
        cx: cx.clone(),
        config,
        nodes,
        leases: informers.informer::<Lease>().store(),
        pods: informers.informer::<Pod>().store(),
        health: Mutex::default(),
        zones: Mutex::default(),
        pods_to_retry: Mutex::default(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    let (monitor, tainter) = (lc.clone(), lc.clone());
    let period = lc.config.monitor_period;
    Ok(Runner::new(QUEUE, queue, 1, move |name| {
        let lc = lc.clone();
        async move { lc.sync_condition_taints(&name).await }
    })
    .alongside(async move {
        tokio::join!(
            crate::every(CONTROLLER, period, || monitor.monitor()),
            crate::every(CONTROLLER, TAINT_PERIOD, || async {
                tainter.taint_pass().await;
                Ok(())
            }),
        );
    }))
}

impl Lifecycle {
    fn api(&self) -> Api<Node> {
        Api::all(self.cx.client.clone())
    }

    /// Puts the NoSchedule taints a Node's conditions call for, and only those.
    async fn sync_condition_taints(&self, name: &str) -> Result<(), Error> {
        let Some(node) = self.nodes.get(name) else {
            return Ok(());
        };
        let want = condition_taints(&node);
        let have: Vec<&str> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == "NoSchedule" && CONDITION_TAINT_KEYS.contains(&t.key.as_str()))
            .map(|t| t.key.as_str())
            .collect();
        let mut sorted_have = have.clone();
        sorted_have.sort_unstable();
        let mut sorted_want = want.clone();
        sorted_want.sort_unstable();
        if sorted_have == sorted_want {
            return Ok(());
        }
        let add: Vec<Taint> = want.iter().map(|k| taint(k, "NoSchedule")).collect();
        update_taints(
            &self.api(),
            name,
            |t| {
                !(t.effect == "NoSchedule"
                    && CONDITION_TAINT_KEYS.contains(&t.key.as_str())
                    && !want.contains(&t.key.as_str()))
            },
            &add,
        )
        .await
    }

    /// One health round over every Node.
    async fn monitor(&self) -> Result<(), Error> {
        let nodes = self.nodes.list();
        let names: HashSet<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        self.health
            .lock()
            .expect("health lock")
            .retain(|n, _| names.contains(n));
        let mut zone_counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut current: Vec<(Arc<Node>, String)> = Vec::new();
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let observed = ready_status(&node).to_string();
            let now_status = match self.update_health(&node).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(node = %name, "updating node health: {e}");
                    continue;
                }
            };
            if !node
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(EXCLUDE_DISRUPTION))
            {
                let c = zone_counts.entry(zone_of(&node)).or_default();
                if now_status == "True" {
                    c.0 += 1;
                } else {
                    c.1 += 1;
                }
            }
            current.push((node.clone(), now_status.clone()));
            // A Node that has never reported is left alone until its startup grace
            // period has turned its conditions Unknown (upstream).
            if condition(&node, "Ready").is_none() {
                continue;
            }
            self.taint_based_eviction(&node, &observed).await;
            let retry = self
                .pods_to_retry
                .lock()
                .expect("retry lock")
                .contains(&name);
            let became_not_ready = observed == "True" && now_status != "True";
            if became_not_ready {
                crate::record_node_status_change(&self.recorder, &name, "NodeNotReady").await;
            }
            if became_not_ready || (retry && now_status != "True") {
                let ok = self.mark_pods_not_ready(&name).await;
                let mut r = self.pods_to_retry.lock().expect("retry lock");
                if ok {
                    r.remove(&name);
                } else {
                    r.insert(name.clone());
                }
            }
        }
        self.handle_disruption(&zone_counts, &current).await;
        Ok(())
    }

    /// Probes a Node's heartbeat and Lease; marks its conditions Unknown when silent
    /// too long. The Ready status it has now.
    async fn update_health(&self, node: &Node) -> Result<String, Error> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let ready = condition(node, "Ready");
        let grace = if ready.is_some() {
            self.config.grace_period
        } else {
            self.config.startup_grace_period
        };
        let heartbeat = ready.and_then(|c| c.last_heartbeat_time.clone());
        let lease_renew = self
            .leases
            .get(&format!("{NODE_LEASE_NAMESPACE}/{name}"))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| format!("{:?}", t.0))
            });
        let expired = {
            let mut health = self.health.lock().expect("health lock");
            let now = Instant::now();
            let h = health.entry(name.clone()).or_insert_with(|| Health {
                // A Node first seen starts its grace period now (upstream starts
                // from its creation, which a restarted controller cannot trust).
                probe: now,
                heartbeat: heartbeat.clone(),
                lease_renew: lease_renew.clone(),
            });
            if h.heartbeat != heartbeat {
                h.heartbeat = heartbeat;
                h.probe = now;
            }
            if lease_renew.is_some() && h.lease_renew != lease_renew {
                h.lease_renew = lease_renew;
                h.probe = now;
            }
            now > h.probe + grace
        };
        if !expired {
            return Ok(ready_status(node).to_string());
        }
        let mut updated = node.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let now = Time(jiff::Timestamp::now());
        let created = node.metadata.creation_timestamp.clone();
        for ty in WATCHED_CONDITIONS {
            match conditions.iter_mut().find(|c| c.type_ == ty) {
                None => conditions.push(NodeCondition {
                    type_: ty.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: created.clone(),
                    last_transition_time: Some(now.clone()),
                }),
                Some(c) if c.status != "Unknown" => {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(now.clone());
                }
                Some(_) => {}
            }
        }
        if updated != *node {
            tracing::info!(node = %name, "node stopped posting status; conditions now Unknown");
            match self.api().replace_status(&name, &updated).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok("Unknown".into())
    }

    /// Queues a not-ready Node for its NoExecute taint, swaps a wrong one at once, and
    /// lifts them from a Ready Node.
    async fn taint_based_eviction(&self, node: &Node, observed: &str) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let has = |key: &str| {
            node.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| ts.iter().any(|t| t.key == key && t.effect == "NoExecute"))
        };
        let (want, other) = match observed {
            "False" => (NOT_READY, UNREACHABLE),
            "True" => {
                if has(NOT_READY) || has(UNREACHABLE) {
                    self.untaint(&name).await;
                }
                self.unqueue(&name);
                return;
            }
            _ => (UNREACHABLE, NOT_READY),
        };
        if has(other) {
            // Already tainted for the other reason: swap at once.
            if let Err(e) = self.swap_no_execute(&name, want).await {
                tracing::warn!(node = %name, "swapping taints: {e}");
            }
        } else if !has(want) {
            let mut zones = self.zones.lock().expect("zones lock");
            if zones.all_disrupted {
                return;
            }
            let zone = zone_of(node);
            let rate = self.config.eviction_rate;
            let t = zones.tainters.entry(zone).or_insert_with(|| ZoneTainter {
                limiter: Limiter::new(rate),
                queue: VecDeque::new(),
                queued: HashSet::new(),
                state: ZoneState::Normal,
            });
            if t.queued.insert(name.clone()) {
                tracing::info!(node = %name, "node is not ready; queued for its NoExecute taint");
                t.queue.push_back(name);
            }
        }
    }

    fn unqueue(&self, name: &str) {
        let mut zones = self.zones.lock().expect("zones lock");
        for t in zones.tainters.values_mut() {
            if t.queued.remove(name) {
                t.queue.retain(|n| n != name);
            }
        }
    }

    async fn untaint(&self, name: &str) {
        let r = update_taints(
            &self.api(),
            name,
            |t| !(t.effect == "NoExecute" && (t.key == NOT_READY || t.key == UNREACHABLE)),
            &[],
        )
        .await;
        if let Err(e) = r {
            tracing::warn!(node = %name, "removing NoExecute taints: {e}");
        }
    }

    async fn swap_no_execute(&self, name: &str, want: &str) -> Result<(), Error> {
        update_taints(
            &self.api(),
            name,
            |t| !(t.effect == "NoExecute" && (t.key == NOT_READY || t.key == UNREACHABLE)),
            &[taint(want, "NoExecute")],
        )
        .await
    }

    /// Taints the queued Nodes each zone's limiter lets through.
    async fn taint_pass(&self) {
        let due: Vec<String> = {
            let mut zones = self.zones.lock().expect("zones lock");
            if zones.all_disrupted {
                return;
            }
            let mut due = Vec::new();
            for t in zones.tainters.values_mut() {
                while !t.queue.is_empty() && t.limiter.try_accept() {
                    if let Some(n) = t.queue.pop_front() {
                        t.queued.remove(&n);
                        due.push(n);
                    }
                }
            }
            due
        };
        for name in due {
            let Some(node) = self.nodes.get(&name) else {
                continue;
            };
            let want = match condition(&node, "Ready").map(|c| c.status.as_str()) {
                Some("False") => NOT_READY,
                Some("Unknown") => UNREACHABLE,
                _ => continue,
            };
            tracing::info!(node = %name, taint = want, "tainting not-ready node NoExecute");
            if let Err(e) = self.swap_no_execute(&name, want).await {
                tracing::warn!(node = %name, "tainting: {e}");
            }
        }
    }

    /// Zone states and their tainting rates; master disruption mode.
    async fn handle_disruption(
        &self,
        counts: &BTreeMap<String, (usize, usize)>,
        nodes: &[(Arc<Node>, String)],
    ) {
        let states: BTreeMap<&String, ZoneState> = counts
            .iter()
            .map(|(z, (r, n))| (z, zone_state(*r, *n, self.config.unhealthy_zone_threshold)))
            .collect();
        let all = !states.is_empty() && states.values().all(|s| *s == ZoneState::FullDisruption);
        let was = self.zones.lock().expect("zones lock").all_disrupted;
        if all && !was {
            tracing::warn!(
                "Controller detected that all Nodes are not-Ready. Entering master disruption mode."
            );
            {
                let mut zones = self.zones.lock().expect("zones lock");
                zones.all_disrupted = true;
                for t in zones.tainters.values_mut() {
                    t.queue.clear();
                    t.queued.clear();
                }
            }
            // (Read afresh: a taint may have gone on since this round's snapshot.)
            for (n, _) in nodes {
                self.untaint(n.metadata.name.as_deref().unwrap_or_default())
                    .await;
            }
            return;
        }
        if !all && was {
            tracing::info!(
                "Controller detected that some Nodes are Ready. Exiting master disruption mode."
            );
            // Every Node gets a fresh grace period: their silence may have been ours.
            let now = Instant::now();
            for h in self.health.lock().expect("health lock").values_mut() {
                h.probe = now;
            }
        }
        let mut zones = self.zones.lock().expect("zones lock");
        zones.all_disrupted = all;
        for (zone, state) in states {
            let size = counts.get(zone).map_or(0, |(r, n)| r + n);
            let qps = match state {
                ZoneState::Normal | ZoneState::FullDisruption => self.config.eviction_rate,
                ZoneState::PartialDisruption if size > self.config.large_cluster_threshold => {
                    self.config.secondary_eviction_rate
                }
                ZoneState::PartialDisruption => 0.0,
            };
            let t = zones
                .tainters
                .entry(zone.clone())
                .or_insert_with(|| ZoneTainter {
                    limiter: Limiter::new(qps),
                    queue: VecDeque::new(),
                    queued: HashSet::new(),
                    state,
                });
            if t.state != state || t.limiter.qps != qps {
                if t.state != state {
                    tracing::info!(zone = %zone, ?state, "zone state changed");
                }
                t.state = state;
                t.limiter = Limiter::new(qps);
            }
        }
    }

    /// Sets the `Ready` condition of the Node's pods to False; whether all went through.
    async fn mark_pods_not_ready(&self, node: &str) -> bool {
        let mut ok = true;
        for p in self.pods.list() {
            if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
                continue;
            }
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
            if ready.is_none_or(|c| c.status != "True") {
                continue;
            }
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.cx.client.clone(), &ns);
            let not_ready = crate::pod_status::PodCondition {
                type_: "Ready",
                status: "False",
                reason: None,
                message: None,
            };
            match crate::pod_status::set_condition(&api, &p, not_ready, None).await {
                Ok(true) => {
                    self.recorder
                        .pod(
                            &p,
                            None,
                            EventKind::Warning,
                            "NodeNotReady",
                            "Node is not ready",
                        )
                        .await;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(pod = %name, "marking pod not ready: {e}");
                    ok = false;
                }
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};

    fn node(ready: Option<&str>, unschedulable: bool) -> Node {
        Node {
            spec: Some(NodeSpec {
                unschedulable: unschedulable.then_some(true),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|s| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: s.into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn zone_states_as_upstream() {
        assert_eq!(zone_state(0, 1, 0.55), ZoneState::FullDisruption);
        assert_eq!(zone_state(0, 0, 0.55), ZoneState::Normal);
        // Two not ready never make a partial disruption, however small the zone.
        assert_eq!(zone_state(1, 2, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(2, 3, 0.55), ZoneState::PartialDisruption);
        assert_eq!(zone_state(3, 3, 0.55), ZoneState::Normal);
    }

    #[test]
    fn condition_taints_follow_ready_and_cordon() {
        assert_eq!(
            condition_taints(&node(Some("True"), false)),
            Vec::<&str>::new()
        );
        assert_eq!(condition_taints(&node(Some("False"), false)), [NOT_READY]);
        assert_eq!(
            condition_taints(&node(Some("Unknown"), true)),
            [UNREACHABLE, UNSCHEDULABLE]
        );
        assert_eq!(condition_taints(&node(None, false)), Vec::<&str>::new());
    }

    #[test]
    fn zones_from_labels() {
        let mut n = node(None, false);
        assert_eq!(zone_of(&n), "");
        n.metadata.labels = Some(
            [
                ("topology.kubernetes.io/region".to_string(), "r".to_string()),
                ("topology.kubernetes.io/zone".to_string(), "z".to_string()),
            ]
            .into(),
        );
        assert_eq!(zone_of(&n), "r:\u{0}:z");
    }

    #[test]
    fn limiter_lets_one_through_then_waits() {
        let mut l = Limiter::new(0.1);
        assert!(l.try_accept());
        assert!(!l.try_accept());
        let mut never = Limiter::new(0.0);
        assert!(!never.try_accept());
    }
}
