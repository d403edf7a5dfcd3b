//! The scheduler: informers keep the [`Cache`] and the [`SchedulingQueue`] current; one
//! loop takes the next pod, runs its profile's filters over (a share of) the nodes,
//! scores the feasible ones and assumes the pod onto the best; binding (`pods/binding`),
//! the `Scheduled` event, and on failure the `FailedScheduling` event and the
//! `PodScheduled=False` condition are written concurrently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ferrokube_client::events::{Kind, Recorder};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Client, Informer, ListParams, Patch, Store};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::config::SchedulerConfig;
use crate::framework::{events, nodes_to_find, CycleState, Diagnosis, Profile};
use crate::metrics::{Metrics, Outcome};
use crate::preemption::{preempt, Budget, Candidate};
use crate::queue::SchedulingQueue;

/// Bindings in flight at once.
const MAX_BINDINGS: usize = 128;

/// What the scheduler shares with its informer handlers and binding tasks.
pub struct Scheduler {
    client: Client,
    cache: Arc<RwLock<Cache>>,
    queue: Arc<SchedulingQueue>,
    profiles: Arc<HashMap<String, Profile>>,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    gated: Arc<AtomicUsize>,
    bindings: Arc<Semaphore>,
    /// PodDisruptionBudgets, for choosing preemption victims.
    budgets: Option<Store<PodDisruptionBudget>>,
    /// Where the next search for feasible nodes starts (spreads the work).
    next_start: usize,
}

/// Whether a pod has finished (its resources are free again).
fn terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn gated(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

fn scheduler_name(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("default-scheduler")
}

/// Which events a node change is.
fn node_change(old: &Node, new: &Node) -> u32 {
    let mut e = 0;
    if old.metadata.labels != new.metadata.labels {
        e |= events::NODE_LABEL;
    }
    let taints = |n: &Node| n.spec.as_ref().map(|s| (s.taints.clone(), s.unschedulable));
    if taints(old) != taints(new) {
        e |= events::NODE_TAINT;
    }
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    if alloc(old) != alloc(new) {
        e |= events::NODE_ALLOCATABLE;
    }
    e
}

impl Scheduler {
    /// A scheduler for the profiles of `config`, its events reported from `host`.
    pub fn new(client: Client, config: SchedulerConfig, host: &str) -> Scheduler {
        let recorder =
            Recorder::for_component(client.clone(), "default-scheduler", host, "Scheduling");
        Scheduler {
            cache: Default::default(),
            queue: Arc::new(SchedulingQueue::new(
                config.pod_initial_backoff,
                config.pod_max_backoff,
            )),
            profiles: Arc::new(
                config
                    .profiles
                    .into_iter()
                    .map(|p| (p.scheduler_name.clone(), p))
                    .collect(),
            ),
            recorder: Arc::new(recorder),
            metrics: Default::default(),
            gated: Default::default(),
            bindings: Arc::new(Semaphore::new(MAX_BINDINGS)),
            budgets: None,
            next_start: 0,
            client,
        }
    }

    /// The metrics text (`/metrics`).
    pub fn metrics_reader(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let (m, q, g) = (self.metrics.clone(), self.queue.clone(), self.gated.clone());
        move || m.render(q.pending(), g.load(Ordering::Relaxed))
    }

    fn pod_informer(&self) -> Informer<Pod> {
        let mut inf = Informer::new(Api::<Pod>::all(self.client.clone()), ListParams::default());
        let (cache, queue, profiles, gated_count) = (
            self.cache.clone(),
            self.queue.clone(),
            self.profiles.clone(),
            self.gated.clone(),
        );
        let gated_pods = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
        inf.on_event(move |e| {
            let (old, pod) = match e {
                Event::Added(p) => (None, p),
                Event::Updated(o, p) => (Some(o), p),
                Event::Deleted(p) => {
                    let info = PodInfo::new(p.clone());
                    if gated_pods.lock().expect("gated lock").remove(&info.key) {
                        gated_count.fetch_sub(1, Ordering::Relaxed);
                    }
                    let assigned = cache
                        .read()
                        .expect("cache lock")
                        .pod_node(&info.key)
                        .is_some();
                    cache.write().expect("cache lock").remove_pod(&info.key);
                    queue.delete(&info.key);
                    if assigned {
                        queue.move_for(events::POD_DELETE);
                    }
                    return;
                }
            };
            let info = Arc::new(PodInfo::new(pod.clone()));
            let is_gated = info.node_name().is_none() && gated(pod);
            {
                let mut g = gated_pods.lock().expect("gated lock");
                let was = g.contains(&info.key);
                if is_gated && !was {
                    g.insert(info.key.clone());
                    gated_count.fetch_add(1, Ordering::Relaxed);
                } else if !is_gated && was {
                    g.remove(&info.key);
                    gated_count.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if let Some(node) = info.node_name().map(String::from) {
                queue.delete(&info.key);
                let mut c = cache.write().expect("cache lock");
                if terminal(pod) {
                    let counted = c.pod_node(&info.key).is_some();
                    c.remove_pod(&info.key);
                    drop(c);
                    if counted {
                        queue.move_for(events::POD_DELETE);
                    }
                    return;
                }
                let was_assumed = c.is_assumed(&info.key);
                let labels_changed = old.is_some_and(|o| o.metadata.labels != pod.metadata.labels);
                let new = c.pod_node(&info.key).is_none();
                c.add_pod(info, &node);
                drop(c);
                if (new && !was_assumed) || labels_changed {
                    queue.move_for(if labels_changed {
                        events::POD_LABEL
                    } else {
                        events::POD_ADD
                    });
                }
                return;
            }
            let ours = profiles.contains_key(scheduler_name(pod));
            if !ours || is_gated || info.is_terminating() || terminal(pod) {
                queue.delete(&info.key);
                cache.write().expect("cache lock").nominate(info, None);
                return;
            }
            if cache.read().expect("cache lock").is_assumed(&info.key) {
                return;
            }
            let nominated = pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.as_deref())
                .filter(|n| !n.is_empty());
            cache
                .write()
                .expect("cache lock")
                .nominate(info.clone(), nominated);
            // Only a change to what scheduling reads is worth a new attempt (not, for
            // one, the scheduler's own status update).
            let changed = old.is_none_or(|o| {
                o.spec != pod.spec
                    || o.metadata.labels != pod.metadata.labels
                    || o.metadata.annotations != pod.metadata.annotations
            });
            if changed {
                queue.add(info);
            } else {
                queue.refresh(info);
            }
        });
        inf
    }

    fn node_informer(&self) -> Informer<Node> {
        let mut inf = Informer::new(Api::<Node>::all(self.client.clone()), ListParams::default());
        let (cache, queue) = (self.cache.clone(), self.queue.clone());
        inf.on_event(move |e| match e {
            Event::Added(n) => {
                cache.write().expect("cache lock").set_node(n.clone());
                queue.move_for(events::NODE_ADD);
            }
            Event::Updated(old, n) => {
                cache.write().expect("cache lock").set_node(n.clone());
                let change = node_change(old, n);
                if change != 0 {
                    queue.move_for(change);
                }
            }
            Event::Deleted(n) => {
                cache
                    .write()
                    .expect("cache lock")
                    .remove_node(n.metadata.name.as_deref().unwrap_or_default());
            }
        });
        inf
    }

    fn namespace_informer(&self) -> Informer<Namespace> {
        let mut inf = Informer::new(
            Api::<Namespace>::all(self.client.clone()),
            ListParams::default(),
        );
        let cache = self.cache.clone();
        inf.on_event(move |e| {
            let (ns, labels) = match e {
                Event::Added(n) | Event::Updated(_, n) => {
                    (n, Some(n.metadata.labels.clone().unwrap_or_default()))
                }
                Event::Deleted(n) => (n, None),
            };
            cache
                .write()
                .expect("cache lock")
                .set_namespace(ns.metadata.name.as_deref().unwrap_or_default(), labels);
        });
        inf
    }

    /// Runs until the task is dropped: informers, then, once their caches are synced,
    /// the scheduling loop.
    pub async fn run(mut self) {
        let pods = self.pod_informer();
        let nodes = self.node_informer();
        let namespaces = self.namespace_informer();
        let budgets = Informer::<PodDisruptionBudget>::new(
            Api::all(self.client.clone()),
            ListParams::default(),
        );
        let stores = (
            pods.store(),
            nodes.store(),
            namespaces.store(),
            budgets.store(),
        );
        self.budgets = Some(stores.3.clone());
        let tasks = [
            tokio::spawn(pods.run()),
            tokio::spawn(nodes.run()),
            tokio::spawn(namespaces.run()),
            tokio::spawn(budgets.run()),
        ];
        let _stop = AbortOnDrop(tasks);
        while !(stores.0.has_synced()
            && stores.1.has_synced()
            && stores.2.has_synced()
            && stores.3.has_synced())
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tracing::info!("caches are synced; scheduling");
        while let Some(qp) = self.queue.pop().await {
            self.schedule_one(qp);
        }
    }

    /// One scheduling cycle.
    fn schedule_one(&mut self, qp: crate::queue::QueuedPod) {
        let started = Instant::now();
        let pod = qp.info.clone();
        let name = scheduler_name(&pod.pod).to_string();
        let Some(profile) = self.profiles.get(&name) else {
            self.queue.delete(&pod.key);
            return;
        };
        let mut preempted = None;
        let result = {
            let cache = self.cache.read().expect("cache lock");
            let n = cache.nodes().len();
            let r = find_node(profile, &cache, &pod, self.next_start);
            if n > 0 {
                self.next_start = (self.next_start + r.1) % n;
            }
            match r.0 {
                Err(mut diag) if profile.preemption && n > 0 => {
                    let budgets: Vec<Budget> = self
                        .budgets
                        .iter()
                        .flat_map(|s| s.list())
                        .filter_map(|b| Budget::from_api(&b))
                        .collect();
                    match preempt(profile, &cache, &pod, &diag, &budgets) {
                        Ok(c) => preempted = Some(c),
                        Err(msg) => diag.post_filter_msg = Some(msg),
                    }
                    Err(diag)
                }
                other => other,
            }
        };
        self.metrics.algorithm(started.elapsed());
        if let Some(c) = preempted {
            self.cache
                .write()
                .expect("cache lock")
                .nominate(pod.clone(), Some(&c.node));
            self.evict(pod.clone(), c);
        }
        match result {
            Ok(node) => {
                self.cache
                    .write()
                    .expect("cache lock")
                    .assume(pod.clone(), &node);
                self.queue.done(&pod.key);
                self.bind(pod, node, name, started);
            }
            Err(diag) => {
                let plugins = diag.plugins();
                let wake = plugins
                    .iter()
                    .flat_map(|n| {
                        profile
                            .filter
                            .iter()
                            .chain(&profile.pre_filter)
                            .find(|p| p.name() == *n)
                    })
                    .fold(0u32, |acc, p| acc | p.events());
                self.queue
                    .unschedulable(&pod.key, if wake == 0 { events::ALL } else { wake });
                self.metrics
                    .attempt(&name, Outcome::Unschedulable, started.elapsed());
                let message = if diag.num_all_nodes == 0 {
                    "no nodes available to schedule pods".to_string()
                } else {
                    diag.message()
                };
                tracing::debug!(pod = %pod.key, "unschedulable: {message}");
                self.report_failure(pod, "Unschedulable", message);
            }
        }
    }

    /// Binds in the background; a failed binding puts the pod back.
    fn bind(&self, pod: Arc<PodInfo>, node: String, profile: String, started: Instant) {
        let (client, cache, queue, recorder, metrics, sem) = (
            self.client.clone(),
            self.cache.clone(),
            self.queue.clone(),
            self.recorder.clone(),
            self.metrics.clone(),
            self.bindings.clone(),
        );
        tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let name = pod.pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": pod.namespace, "uid": pod.pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            match api.create_subresource(&name, "binding", &binding).await {
                Ok(_) => {
                    metrics.attempt(&profile, Outcome::Scheduled, started.elapsed());
                    recorder
                        .pod(
                            &pod.pod,
                            None,
                            Kind::Normal,
                            "Scheduled",
                            &format!("Successfully assigned {} to {node}", pod.key),
                        )
                        .await;
                }
                Err(e) => {
                    cache.write().expect("cache lock").forget(&pod.key);
                    metrics.attempt(&profile, Outcome::Error, started.elapsed());
                    if e.is_not_found() {
                        return;
                    }
                    tracing::warn!(pod = %pod.key, %node, "binding failed: {e}");
                    queue.retry(pod.clone());
                    recorder
                        .pod(
                            &pod.pod,
                            None,
                            Kind::Warning,
                            "FailedScheduling",
                            &format!("running Bind plugin \"DefaultBinder\": {e}"),
                        )
                        .await;
                }
            }
        });
    }

    /// Carries out a preemption: each victim gets the `DisruptionTarget` condition, a
    /// `Preempted` event and is deleted (gracefully); the preemptor is nominated to the
    /// node.
    fn evict(&self, pod: Arc<PodInfo>, c: Candidate) {
        let (client, recorder) = (self.client.clone(), self.recorder.clone());
        tokio::spawn(async move {
            let uid = pod.pod.metadata.uid.clone().unwrap_or_default();
            for v in &c.victims {
                let api: Api<Pod> = Api::namespaced(client.clone(), &v.namespace);
                let name = v.pod.metadata.name.clone().unwrap_or_default();
                tracing::info!(preemptor = %pod.key, victim = %v.key, node = %c.node, "preempting");
                let condition = json!({"status": {"conditions": [{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "PreemptionByScheduler",
                    "message": "default-scheduler: preempting to accommodate a higher priority pod",
                    "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
                }]}});
                if let Err(e) = api.patch_status(&name, &Patch::Strategic(condition)).await {
                    tracing::debug!(victim = %v.key, "DisruptionTarget condition: {e}");
                }
                match api.delete(&name, None).await {
                    Ok(_) => {
                        recorder
                            .pod(
                                &v.pod,
                                None,
                                Kind::Normal,
                                "Preempted",
                                &format!("Preempted by pod {uid} on node {}", c.node),
                            )
                            .await
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!(victim = %v.key, "deleting a preemption victim: {e}"),
                }
            }
            let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
            let name = pod.pod.metadata.name.clone().unwrap_or_default();
            let patch = json!({"status": {"nominatedNodeName": c.node}});
            if let Err(e) = api.patch_status(&name, &Patch::Merge(patch)).await {
                tracing::debug!(pod = %pod.key, "nominating: {e}");
            }
        });
    }

    /// The `FailedScheduling` event and the `PodScheduled=False` condition.
    fn report_failure(&self, pod: Arc<PodInfo>, reason: &'static str, message: String) {
        let (client, recorder) = (self.client.clone(), self.recorder.clone());
        tokio::spawn(async move {
            recorder
                .pod(&pod.pod, None, Kind::Warning, "FailedScheduling", &message)
                .await;
            let current = pod
                .pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
            if current.is_some_and(|c| {
                c.status == "False"
                    && c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(message.as_str())
            }) {
                return;
            }
            let transition = match current {
                Some(c) if c.status == "False" => c.last_transition_time.clone(),
                _ => None,
            }
            .map(|t| json!(t))
            .unwrap_or_else(|| {
                json!(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::now()
                ))
            });
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": reason,
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": transition,
            }]}});
            let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
            let name = pod.pod.metadata.name.clone().unwrap_or_default();
            if let Err(e) = api.patch_status(&name, &Patch::Strategic(patch)).await {
                tracing::debug!(pod = %pod.key, "updating the PodScheduled condition: {e}");
            }
        });
    }
}

/// Filters nodes from `start` until enough are feasible, scores them and picks the best
/// (ties broken at random). Also returns how many nodes were looked at.
pub fn find_node(
    profile: &Profile,
    cache: &Cache,
    pod: &PodInfo,
    start: usize,
) -> (Result<String, Diagnosis>, usize) {
    let nodes = cache.nodes();
    let n = nodes.len();
    let mut diag = Diagnosis {
        num_all_nodes: n,
        ..Default::default()
    };
    if n == 0 {
        return (Err(diag), 0);
    }
    let mut state = CycleState::default();
    if let Err(r) = profile.run_pre_filter(&mut state, pod, cache) {
        diag.pre_filter = Some(r);
        return (Err(diag), 0);
    }
    // Nodes are judged with the pods nominated to them (by preemption) that outrank or
    // equal this one, so it does not take the room made for them.
    let filter = |node: &NodeInfo| {
        let nominated = cache.nominated_for(&node.name, pod);
        if nominated.is_empty() {
            return profile.run_filters(&state, pod, node, cache);
        }
        let mut with = node.clone();
        for p in nominated {
            with.add_pod(p);
        }
        profile.run_filters(&state, pod, &with, cache)
    };
    // The node preemption nominated it to comes first.
    let nominated = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .and_then(|n| cache.node(n));
    if let Some(node) = nominated {
        if filter(node).is_ok() {
            return (Ok(node.name.clone()), 0);
        }
    }
    let want = nodes_to_find(profile.percentage_of_nodes_to_score, n);
    let mut feasible = Vec::with_capacity(want.min(n));
    let mut looked = 0;
    for i in 0..n {
        let node = &nodes[(start + i) % n];
        looked += 1;
        match filter(node) {
            Ok(()) => feasible.push(node),
            Err(r) => {
                diag.nodes.insert(node.name.clone(), r);
            }
        }
        if feasible.len() >= want {
            break;
        }
    }
    if feasible.is_empty() {
        return (Err(diag), looked);
    }
    if feasible.len() == 1 {
        return (Ok(feasible[0].name.clone()), looked);
    }
    let scores = profile.run_scores(&mut state, pod, &feasible, cache);
    // The highest score; among equals, each as likely (reservoir sampling).
    let mut best = 0;
    let mut ties = 0u32;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
            ties = 1;
        } else if *s == scores[best] {
            ties += 1;
            if rand::random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    (Ok(feasible[best].name.clone()), looked)
}

struct AbortOnDrop([tokio::task::JoinHandle<()>; 4]);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
