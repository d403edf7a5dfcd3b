//! The Deployment controller (upstream's `deployment`): a Deployment's pod template
//! lives in ReplicaSets named `<deployment>-<pod-template-hash>`; a template change makes
//! a new ReplicaSet and moves replicas to it — `RollingUpdate` within `maxSurge` and
//! `maxUnavailable` (numbers or percentages, surge rounded up and unavailability down),
//! or `Recreate` (every old pod gone first). Revisions (`deployment.kubernetes.io/revision`)
//! number the ReplicaSets, so `kubectl rollout undo` brings an old template back; old
//! ReplicaSets beyond `revisionHistoryLimit` are deleted; `paused` stops rollouts (scaling
//! still applies); a scale during a rollout is spread over the ReplicaSets in proportion;
//! status carries the counters and the `Available` and `Progressing` conditions
//! (`progressDeadlineSeconds` → `ProgressDeadlineExceeded`), as `kubectl rollout status`
//! reads them.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_api::LabelSelector;
use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as ApiSelector, ObjectMeta, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::ownership::{self, key, object_key};
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "deployment";
const COMPONENT: &str = "deployment-controller";
/// Workers (upstream's `--concurrent-deployment-syncs`).
const WORKERS: usize = 5;

/// The label that ties a ReplicaSet and its pods to one template.
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of a Deployment its ReplicaSets do not get.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
/// The longest `revision-history` annotation kept (upstream's limit).
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

// Condition reasons, as upstream's.
const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const RS_UPDATED: &str = "ReplicaSetUpdated";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";
const RS_CREATE_ERROR: &str = "ReplicaSetCreateError";

/// Registers the informers; the runner syncs Deployments.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let deployments = crate::queue_own::<Deployment>(informers, &queue);
    let replica_sets = {
        let inf = informers.informer::<ReplicaSet>();
        let (q, deployments) = (queue.clone(), deployments.clone());
        inf.on_event(move |e| {
            // The Deployment controlling it; for an orphan, every Deployment whose
            // selector matches it (it may be adopted).
            let notify = |rs: &ReplicaSet| {
                let ns = rs.metadata.namespace.clone().unwrap_or_default();
                match ownership::controller_of(&rs.metadata) {
                    Some(r) if r.kind == "Deployment" => q.add(key(&ns, &r.name)),
                    Some(_) => {}
                    None => {
                        let labels = rs.metadata.labels.clone().unwrap_or_default();
                        for d in deployments.list() {
                            if d.metadata.namespace.as_deref() == Some(ns.as_str())
                                && selector(&d).is_some_and(|s| s.matches(&labels))
                            {
                                q.add(object_key(&d.metadata));
                            }
                        }
                    }
                }
            };
            match e {
                Event::Added(rs) | Event::Deleted(rs) => notify(rs),
                Event::Updated(old, rs) => {
                    if ownership::controller_of(&old.metadata).map(|r| &r.uid)
                        != ownership::controller_of(&rs.metadata).map(|r| &r.uid)
                        || old.metadata.labels != rs.metadata.labels
                    {
                        notify(old);
                    }
                    notify(rs);
                }
            }
        });
        inf.store()
    };
    let pods = {
        let inf = informers.informer::<Pod>();
        let (q, rss) = (queue.clone(), replica_sets.clone());
        // A Recreate rollout waits for the old pods to be gone.
        inf.on_event(move |e| {
            if let Event::Deleted(p) = e {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let Some(r) = ownership::controller_of(&p.metadata) else {
                    return;
                };
                if let Some(rs) = rss.get(&key(&ns, &r.name)) {
                    if let Some(d) = ownership::controller_of(&rs.metadata) {
                        if d.kind == "Deployment" {
                            q.add(key(&ns, &d.name));
                        }
                    }
                }
            }
        });
        inf.store()
    };
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        deployments,
        replica_sets,
        pods,
        queue: queue.clone(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    Ok(Runner::new(QUEUE, queue, WORKERS, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

fn selector(d: &Deployment) -> Option<LabelSelector> {
    LabelSelector::from_api(&d.spec.as_ref()?.selector).ok()
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

fn annotation<'a>(m: &'a ObjectMeta, k: &str) -> Option<&'a str> {
    m.annotations.as_ref()?.get(k).map(String::as_str)
}

fn int_annotation(rs: &ReplicaSet, k: &str) -> Option<i64> {
    annotation(&rs.metadata, k)?.parse().ok()
}

fn revision(rs: &ReplicaSet) -> i64 {
    int_annotation(rs, REVISION).unwrap_or(0)
}

fn rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

fn progress_deadline(d: &Deployment) -> Option<i64> {
    d.spec
        .as_ref()?
        .progress_deadline_seconds
        .filter(|s| *s != i32::MAX)
        .map(i64::from)
}

fn paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

/// An int-or-percent of `total` (percentages rounded up or down).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let x = pct * i64::from(total);
            Ok(if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            } as i32)
        }
    }
}

/// `(maxSurge, maxUnavailable)` for `desired` replicas (never both zero).
pub fn fenceposts(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let pct25 = IntOrString::String("25%".into());
    let surge = scaled_value(surge.unwrap_or(&pct25), desired, true)?;
    let unavailable = scaled_value(unavailable.unwrap_or(&pct25), desired, false)?;
    Ok(if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    })
}

fn rolling_fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    )
    .unwrap_or((0, 1))
}

fn max_surge(d: &Deployment) -> i32 {
    if rolling(d) {
        rolling_fenceposts(d).0
    } else {
        0
    }
}

fn max_unavailable(d: &Deployment) -> i32 {
    if !rolling(d) || replicas(d) == 0 {
        return 0;
    }
    rolling_fenceposts(d).1.min(replicas(d))
}

/// A template's hash: FNV-1a (32 bits) of the template and the collision count, its
/// decimal digits written in the alphabet of generated names, as upstream spells them.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x01000193);
        }
    };
    feed(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(c.to_string().as_bytes());
    }
    safe_encode(&h.to_string())
}

/// Upstream's `rand.SafeEncodeString`: no vowels, no look-alikes.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The template without the hash label (how templates are compared).
fn without_hash(t: &PodTemplateSpec) -> serde_json::Value {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(HASH_LABEL);
            if l.is_empty() {
                m.labels = None;
            }
        }
    }
    serde_json::to_value(t).unwrap_or_default()
}

fn templates_equal(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let t = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

fn active(rss: &[ReplicaSet]) -> Vec<&ReplicaSet> {
    rss.iter().filter(|r| rs_replicas(r) > 0).collect()
}

fn sum(rss: &[&ReplicaSet], f: impl Fn(&ReplicaSet) -> i32) -> i32 {
    rss.iter().map(|r| f(r)).sum()
}

/// The new ReplicaSet's size in a rollout: what `maxSurge` leaves room for
/// (RollingUpdate), or everything (Recreate).
pub fn new_rs_replicas(d: &Deployment, all: &[&ReplicaSet], new_size: i32) -> i32 {
    if !rolling(d) {
        return replicas(d);
    }
    let current = sum(all, rs_replicas);
    let max_total = replicas(d) + max_surge(d);
    if current >= max_total {
        return new_size;
    }
    new_size + (max_total - current).min(replicas(d) - new_size)
}

/// How many of `to_add` replicas (negative: to remove) a ReplicaSet gets in a
/// proportional scale: its share by the size it was given for `max-replicas`.
fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if replicas(d) == 0 {
        -rs_replicas(rs)
    } else {
        let deployment_replicas = replicas(d) + max_surge(d);
        let annotated = int_annotation(rs, MAX_REPLICAS)
            .map(|v| v as i32)
            .unwrap_or_else(|| d.status.as_ref().map_or(0, |s| s.replicas.unwrap_or(0)));
        if annotated == 0 {
            0
        } else {
            let size =
                f64::from(rs_replicas(rs)) * f64::from(deployment_replicas) / f64::from(annotated);
            size.round() as i32 - rs_replicas(rs)
        }
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// The sizes a proportional scale gives the active ReplicaSets (largest first).
pub fn proportional_sizes(d: &Deployment, rss: &[&ReplicaSet]) -> Vec<(String, i32)> {
    let mut all: Vec<&ReplicaSet> = rss.to_vec();
    let current = sum(&all, rs_replicas);
    let allowed = if replicas(d) > 0 {
        replicas(d) + max_surge(d)
    } else {
        0
    };
    let to_add = allowed - current;
    // Larger first; ties: newer first when adding, older first when removing.
    all.sort_by(|a, b| {
        rs_replicas(b).cmp(&rs_replicas(a)).then_with(|| {
            if to_add > 0 {
                by_creation(b, a)
            } else {
                by_creation(a, b)
            }
        })
    });
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = all
        .iter()
        .map(|rs| {
            let p = if to_add != 0 {
                proportion(rs, d, to_add, added)
            } else {
                0
            };
            added += p;
            (
                rs.metadata.name.clone().unwrap_or_default(),
                rs_replicas(rs) + p,
            )
        })
        .collect();
    if to_add != 0 && added != to_add {
        if let Some(first) = sizes.first_mut() {
            first.1 = (first.1 + to_add - added).max(0);
        }
    }
    sizes
}

fn condition<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

fn new_condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = Time(jiff::Timestamp::now());
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Sets a condition as upstream does: the same status and reason change nothing; the
/// same status keeps its transition time.
fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let conditions = s.conditions.get_or_insert_with(Vec::new);
    if let Some(old) = conditions.iter().find(|o| o.type_ == c.type_) {
        if old.status == c.status && old.reason == c.reason {
            return;
        }
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    conditions.retain(|o| o.type_ != c.type_);
    conditions.push(c);
}

/// Whether every replica is updated and available and the spec is observed.
fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = replicas(d);
    s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether the rollout moved since the last status.
fn progressing(d: &Deployment, s: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let stale = |s: &DeploymentStatus| s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0);
    s.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || stale(s) < stale(&old)
        || s.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || s.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

/// Whether the rollout made no progress for `progressDeadlineSeconds`.
fn timed_out(d: &Deployment, s: &DeploymentStatus) -> bool {
    let Some(deadline) = progress_deadline(d) else {
        return false;
    };
    let Some(c) = condition(s, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some(TIMED_OUT) => true,
        Some(NEW_RS_AVAILABLE) => false,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| jiff::Timestamp::now().as_second() > t.0.as_second() + deadline),
    }
}

struct Sync {
    cx: Context,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    pods: Store<Pod>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

impl Sync {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(d) = self.deployments.get(k) else {
            return Ok(());
        };
        let d = (*d).clone();
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let Some(sel) = selector(&d) else {
            return Ok(());
        };
        if sel.is_everything() {
            self.event(
                &d,
                EventKind::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            .await;
            return Ok(());
        }
        let rss = self.claim(&d, &sel, &ns).await?;
        if d.metadata.deletion_timestamp.is_some() {
            let (new, old) = self.split(&d, rss);
            return self.sync_status(&d, new.as_ref(), &old).await;
        }
        let d = self.check_paused_conditions(d).await?;
        if paused(&d) || self.scaling_event(&d, &rss) {
            return self.sync_scale(d, rss).await;
        }
        if rolling(&d) {
            self.rollout_rolling(d, rss).await
        } else {
            self.rollout_recreate(d, rss).await
        }
    }

    fn api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.cx.client.clone(), ns)
    }

    async fn event(&self, d: &Deployment, kind: EventKind, reason: &str, message: &str) {
        let m = &d.metadata;
        let involved = ownership::reference::<Deployment>(m);
        self.recorder
            .object(
                m.namespace.as_deref().unwrap_or_default(),
                involved,
                kind,
                reason,
                message,
            )
            .await;
    }

    /// The ReplicaSets this Deployment controls: its own that match, orphans that match
    /// (adopted), and not its own that stopped matching (released).
    async fn claim(
        &self,
        d: &Deployment,
        sel: &LabelSelector,
        ns: &str,
    ) -> Result<Vec<ReplicaSet>, Error> {
        let matches =
            |rs: &ReplicaSet| sel.matches(&rs.metadata.labels.clone().unwrap_or_default());
        let api = self.api(ns);
        let owned = ownership::claim::<Deployment, _>(
            &api,
            &d.metadata,
            self.replica_sets.list(),
            matches,
            None,
        )
        .await?;
        Ok(owned.iter().map(|rs| (**rs).clone()).collect())
    }

    /// The ReplicaSet of the current template (the oldest, if several) and the others.
    fn split(
        &self,
        d: &Deployment,
        mut rss: Vec<ReplicaSet>,
    ) -> (Option<ReplicaSet>, Vec<ReplicaSet>) {
        rss.sort_by(by_creation);
        let template = d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let pos = rss.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| templates_equal(t, &template))
        });
        let new = pos.map(|i| rss.remove(i));
        (new, rss)
    }

    /// Whether the Deployment's size changed since its active ReplicaSets were sized.
    fn scaling_event(&self, d: &Deployment, rss: &[ReplicaSet]) -> bool {
        active(rss).iter().any(|rs| {
            int_annotation(rs, DESIRED_REPLICAS).is_some_and(|v| v != i64::from(replicas(d)))
        })
    }

    /// Sets a ReplicaSet's size and the sizing annotations; records the scaling.
    async fn scale(&self, d: &Deployment, rs: &ReplicaSet, size: i32) -> Result<ReplicaSet, Error> {
        let desired = replicas(d).to_string();
        let max = (replicas(d) + max_surge(d)).to_string();
        let old = rs_replicas(rs);
        let annotations_ok = annotation(&rs.metadata, DESIRED_REPLICAS) == Some(desired.as_str())
            && annotation(&rs.metadata, MAX_REPLICAS) == Some(max.as_str());
        if old == size && annotations_ok {
            return Ok(rs.clone());
        }
        let mut updated = rs.clone();
        updated.spec.get_or_insert_with(Default::default).replicas = Some(size);
        let a = updated
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        a.insert(DESIRED_REPLICAS.into(), desired);
        a.insert(MAX_REPLICAS.into(), max);
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let updated = self.api(&ns).replace(&name, &updated).await?;
        if old != size {
            let op = if size > old { "up" } else { "down" };
            self.event(
                d,
                EventKind::Normal,
                "ScalingReplicaSet",
                &format!("Scaled {op} replica set {name} to {size} from {old}"),
            )
            .await;
        }
        Ok(updated)
    }

    /// Paused or resized: only sizes change (proportionally while rolling out).
    async fn sync_scale(&self, d: Deployment, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, old) = self.split(&d, rss);
        let (new, old) = self.scale_all(&d, new, old).await?;
        if paused(&d) {
            self.cleanup(&d, &old).await?;
        }
        self.sync_status(&d, new.as_ref(), &old).await
    }

    async fn scale_all(
        &self,
        d: &Deployment,
        new: Option<ReplicaSet>,
        mut old: Vec<ReplicaSet>,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), Error> {
        let mut all: Vec<ReplicaSet> = old.iter().cloned().chain(new.clone()).collect();
        let act = active(&all);
        // One active ReplicaSet (or none: the newest) takes the whole size.
        let single = match act.len() {
            0 => new.clone().or_else(|| {
                let mut o = old.clone();
                o.sort_by(by_creation);
                o.pop()
            }),
            1 => Some(act[0].clone()),
            _ => None,
        };
        if let Some(rs) = single {
            let scaled = self.scale(d, &rs, replicas(d)).await?;
            return Ok(replace_in(new, old, scaled));
        }
        // The new one saturated: the old ones go.
        if let Some(n) = &new {
            if int_annotation(n, DESIRED_REPLICAS) == Some(i64::from(replicas(d)))
                && rs_replicas(n) == replicas(d)
                && rs_status(n).2 == replicas(d)
            {
                for rs in old.iter_mut() {
                    if rs_replicas(rs) > 0 {
                        *rs = self.scale(d, rs, 0).await?;
                    }
                }
                return Ok((new, old));
            }
        }
        if !rolling(d) {
            return Ok((new, old));
        }
        let sizes = proportional_sizes(d, &active(&all));
        for (name, size) in sizes {
            if let Some(rs) = all
                .iter_mut()
                .find(|r| r.metadata.name.as_deref() == Some(&name))
            {
                *rs = self.scale(d, rs, size).await?;
            }
        }
        let new_name = new.as_ref().and_then(|n| n.metadata.name.clone());
        let (n, o): (Vec<ReplicaSet>, Vec<ReplicaSet>) = all
            .into_iter()
            .partition(|r| r.metadata.name.is_some() && r.metadata.name == new_name);
        Ok((n.into_iter().next(), o))
    }

    /// The new ReplicaSet (made when `create` and missing), with its revision and the
    /// Deployment's annotations; the Deployment's revision annotation and Progressing
    /// condition follow.
    async fn new_replica_set(
        &self,
        d: &mut Deployment,
        existing: Option<ReplicaSet>,
        old: &[ReplicaSet],
        create: bool,
    ) -> Result<Option<ReplicaSet>, Error> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let new_revision = old.iter().map(revision).max().unwrap_or(0) + 1;
        let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if let Some(rs) = existing {
            let mut copy = rs.clone();
            let changed = set_new_rs_annotations(d, &mut copy, new_revision, true);
            let spec = copy.spec.get_or_insert_with(Default::default);
            let min_ready_changed = spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0);
            if changed || min_ready_changed {
                spec.min_ready_seconds = min_ready;
                let name = copy.metadata.name.clone().unwrap_or_default();
                return Ok(Some(self.api(&ns).replace(&name, &copy).await?));
            }
            let rev = annotation(&copy.metadata, REVISION)
                .unwrap_or_default()
                .to_string();
            self.set_deployment_revision(d, &rev).await?;
            if progress_deadline(d).is_some()
                && d.status
                    .as_ref()
                    .and_then(|s| condition(s, "Progressing"))
                    .is_none()
            {
                self.write_condition(
                    d,
                    new_condition(
                        "Progressing",
                        "True",
                        FOUND_NEW_RS,
                        format!(
                            "Found new replica set {:?}",
                            copy.metadata.name.clone().unwrap_or_default()
                        ),
                    ),
                )
                .await?;
            }
            return Ok(Some(copy));
        }
        if !create {
            return Ok(None);
        }
        let spec = d.spec.clone().unwrap_or_default();
        let collisions = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collisions);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut rs_selector: ApiSelector = spec.selector.clone();
        rs_selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                owner_references: Some(vec![ownership::controller_ref::<Deployment>(&d.metadata)]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: min_ready,
                selector: rs_selector,
                template: Some(template),
            }),
            status: None,
        };
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&rs)).collect();
        let size = new_rs_replicas(d, &all, 0);
        rs.spec.as_mut().expect("just made").replicas = Some(size);
        set_new_rs_annotations(d, &mut rs, new_revision, false);
        let created = match self.api(&ns).create(&rs).await {
            Ok(c) => c,
            Err(e) if e.is_already_exists() => {
                // Ours and the same template: the cache is behind (retry). Otherwise a
                // hash collision: count it, which changes the next hash.
                let theirs = self.api(&ns).get_opt(&name).await?;
                let ours = theirs.as_ref().is_some_and(|t| {
                    ownership::controller_of(&t.metadata).map(|r| &r.uid) == d.metadata.uid.as_ref()
                        && t.spec
                            .as_ref()
                            .and_then(|s| s.template.as_ref())
                            .is_some_and(|t| templates_equal(t, &spec.template))
                });
                if !ours {
                    let mut status = d.status.clone().unwrap_or_default();
                    status.collision_count = Some(collisions.unwrap_or(0) + 1);
                    self.write_status(d, status).await?;
                }
                return Err(Error::Sync(format!("replica set {name} already exists")));
            }
            Err(e) => {
                if progress_deadline(d).is_some() {
                    self.write_condition(
                        d,
                        new_condition(
                            "Progressing",
                            "False",
                            RS_CREATE_ERROR,
                            format!("Failed to create new replica set {name:?}: {e}"),
                        ),
                    )
                    .await?;
                }
                self.event(
                    d,
                    EventKind::Warning,
                    RS_CREATE_ERROR,
                    &format!("Failed to create new replica set {name:?}: {e}"),
                )
                .await;
                return Err(e.into());
            }
        };
        if size > 0 {
            self.event(
                d,
                EventKind::Normal,
                "ScalingReplicaSet",
                &format!("Scaled up replica set {name} to {size} from 0"),
            )
            .await;
        }
        self.set_deployment_revision(d, &new_revision.to_string())
            .await?;
        if progress_deadline(d).is_some() {
            self.write_condition(
                d,
                new_condition(
                    "Progressing",
                    "True",
                    NEW_RS_CREATED,
                    format!("Created new replica set {name:?}"),
                ),
            )
            .await?;
        }
        Ok(Some(created))
    }

    /// The Deployment's own revision annotation.
    async fn set_deployment_revision(&self, d: &mut Deployment, rev: &str) -> Result<(), Error> {
        if rev.is_empty() || annotation(&d.metadata, REVISION) == Some(rev) {
            return Ok(());
        }
        d.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION.into(), rev.into());
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        let api: Api<Deployment> = Api::namespaced(self.cx.client.clone(), &ns);
        *d = api.replace(&name, d).await?;
        Ok(())
    }

    async fn write_status(
        &self,
        d: &mut Deployment,
        status: DeploymentStatus,
    ) -> Result<(), Error> {
        let mut updated = d.clone();
        updated.status = Some(status);
        if let Some(stored) = crate::write_status(&self.cx.client, &*d, &updated).await? {
            *d = stored;
        }
        Ok(())
    }

    /// Sets one condition and writes the status.
    async fn write_condition(
        &self,
        d: &mut Deployment,
        c: DeploymentCondition,
    ) -> Result<(), Error> {
        let mut status = d.status.clone().unwrap_or_default();
        set_condition(&mut status, c);
        self.write_status(d, status).await
    }

    /// Paused and resumed show in the Progressing condition.
    async fn check_paused_conditions(&self, mut d: Deployment) -> Result<Deployment, Error> {
        if progress_deadline(&d).is_none() {
            return Ok(d);
        }
        let status = d.status.clone().unwrap_or_default();
        let reason = condition(&status, "Progressing").and_then(|c| c.reason.clone());
        if reason.as_deref() == Some(TIMED_OUT) {
            return Ok(d);
        }
        let paused_shown = reason.as_deref() == Some(PAUSED);
        let c = if paused(&d) && !paused_shown {
            new_condition(
                "Progressing",
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
            )
        } else if !paused(&d) && paused_shown {
            new_condition(
                "Progressing",
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
            )
        } else {
            return Ok(d);
        };
        self.write_condition(&mut d, c).await?;
        Ok(d)
    }

    async fn rollout_rolling(&self, mut d: Deployment, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let (existing, old) = self.split(&d, rss);
        let Some(mut new) = self.new_replica_set(&mut d, existing, &old, true).await? else {
            return Ok(());
        };
        // Scale up the new ReplicaSet within maxSurge.
        let want = replicas(&d);
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
        let target = match rs_replicas(&new).cmp(&want) {
            Ordering::Equal => None,
            Ordering::Greater => Some(want),
            Ordering::Less => Some(new_rs_replicas(&d, &all, rs_replicas(&new))),
        };
        if let Some(t) = target.filter(|t| *t != rs_replicas(&new)) {
            new = self.scale(&d, &new, t).await?;
            return self.sync_rollout_status(&mut d, Some(&new), &old).await;
        }
        // Scale down the old ones within maxUnavailable.
        let (old, scaled) = self.reconcile_old(&d, &new, old).await?;
        if scaled {
            return self.sync_rollout_status(&mut d, Some(&new), &old).await;
        }
        let status = self.calculate_status(&d, Some(&new), &old);
        if complete(&d, &status) {
            self.cleanup(&d, &old).await?;
        }
        self.sync_rollout_status(&mut d, Some(&new), &old).await
    }

    /// Scales old ReplicaSets down: their unavailable replicas first, then available
    /// ones as far as `maxUnavailable` allows.
    async fn reconcile_old(
        &self,
        d: &Deployment,
        new: &ReplicaSet,
        mut old: Vec<ReplicaSet>,
    ) -> Result<(Vec<ReplicaSet>, bool), Error> {
        let old_count: i32 = old.iter().map(rs_replicas).sum();
        if old_count == 0 {
            return Ok((old, false));
        }
        let all_count = old_count + rs_replicas(new);
        let min_available = replicas(d) - max_unavailable(d);
        let new_unavailable = rs_replicas(new) - rs_status(new).2;
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok((old, false));
        }
        old.sort_by(by_creation);
        // Unhealthy replicas first.
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let (size, available) = (rs_replicas(rs), rs_status(rs).2);
            if size == 0 || size <= available {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(size - available);
            *rs = self.scale(d, rs, size - down).await?;
            cleaned += down;
        }
        // Then available ones, keeping minAvailable.
        let available: i32 = old.iter().map(|r| rs_status(r).2).sum::<i32>() + rs_status(new).2;
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for rs in old.iter_mut() {
                if scaled >= total {
                    break;
                }
                let size = rs_replicas(rs);
                if size == 0 {
                    continue;
                }
                let down = size.min(total - scaled);
                *rs = self.scale(d, rs, size - down).await?;
                scaled += down;
            }
        }
        Ok((old, cleaned + scaled > 0))
    }

    async fn rollout_recreate(&self, mut d: Deployment, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let (existing, mut old) = self.split(&d, rss);
        let new = self.new_replica_set(&mut d, existing, &old, false).await?;
        // Every old ReplicaSet to zero first.
        let mut scaled = false;
        for rs in old.iter_mut() {
            if rs_replicas(rs) > 0 {
                *rs = self.scale(&d, rs, 0).await?;
                scaled = true;
            }
        }
        if scaled || self.old_pods_running(new.as_ref(), &old) {
            return self.sync_rollout_status(&mut d, new.as_ref(), &old).await;
        }
        let new = match new {
            Some(n) => n,
            None => match self.new_replica_set(&mut d, None, &old, true).await? {
                Some(n) => n,
                None => return Ok(()),
            },
        };
        let new = self.scale(&d, &new, replicas(&d)).await?;
        let status = self.calculate_status(&d, Some(&new), &old);
        if complete(&d, &status) {
            self.cleanup(&d, &old).await?;
        }
        self.sync_rollout_status(&mut d, Some(&new), &old).await
    }

    /// Whether any pod of an old ReplicaSet is still there and not finished.
    fn old_pods_running(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> bool {
        if old.iter().map(|r| rs_status(r).0).sum::<i32>() > 0 {
            return true;
        }
        let old_uids: Vec<&str> = old
            .iter()
            .filter(|r| new.is_none_or(|n| n.metadata.uid != r.metadata.uid))
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        self.pods.list().iter().any(|p| {
            ownership::controller_of(&p.metadata)
                .is_some_and(|r| old_uids.contains(&r.uid.as_str()))
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Failed" | "Succeeded")
                )
        })
    }

    /// Old ReplicaSets beyond `revisionHistoryLimit` (scaled to zero, oldest revision
    /// first) are deleted.
    async fn cleanup(&self, d: &Deployment, old: &[ReplicaSet]) -> Result<(), Error> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut alive: Vec<&ReplicaSet> = old
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = alive.len() as i64 - i64::from(limit);
        if diff <= 0 {
            return Ok(());
        }
        alive.sort_by(|a, b| {
            revision(a)
                .cmp(&revision(b))
                .then_with(|| by_creation(a, b))
        });
        for rs in alive.into_iter().take(diff as usize) {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if rs_status(rs).0 != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            let ns = rs.metadata.namespace.clone().unwrap_or_default();
            let name = rs.metadata.name.clone().unwrap_or_default();
            match self.api(&ns).delete(&name, None).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Counters and the Available condition from the ReplicaSets.
    fn calculate_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> DeploymentStatus {
        let all: Vec<&ReplicaSet> = old.iter().chain(new).collect();
        let available = sum(&all, |r| rs_status(r).2);
        let total_spec = sum(&all, rs_replicas);
        let mut status = d.status.clone().unwrap_or_default();
        status.observed_generation = d.metadata.generation;
        status.replicas = Some(sum(&all, |r| rs_status(r).0));
        status.updated_replicas = Some(new.map_or(0, |n| rs_status(n).0));
        status.ready_replicas = Some(sum(&all, |r| rs_status(r).1));
        status.available_replicas = Some(available);
        status.unavailable_replicas = Some((total_spec - available).max(0));
        let c = if available >= replicas(d) - max_unavailable(d) {
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        set_condition(&mut status, c);
        status
    }

    async fn sync_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), Error> {
        let status = self.calculate_status(d, new, old);
        let mut d = d.clone();
        self.write_status(&mut d, status).await
    }

    /// The status with the Progressing condition: complete, progressing (its update
    /// time moves), or timed out after `progressDeadlineSeconds` without progress.
    async fn sync_rollout_status(
        &self,
        d: &mut Deployment,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), Error> {
        let mut status = self.calculate_status(d, new, old);
        if progress_deadline(d).is_none() {
            if let Some(c) = status.conditions.as_mut() {
                c.retain(|c| c.type_ != "Progressing");
            }
        }
        let current = condition(&status, "Progressing").cloned();
        let done = status.replicas == status.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
        if progress_deadline(d).is_some() && !done {
            let what = |suffix: &str| match new {
                Some(n) => format!(
                    "ReplicaSet {:?} {suffix}",
                    n.metadata.name.clone().unwrap_or_default()
                ),
                None => format!(
                    "Deployment {:?} {suffix}",
                    d.metadata.name.clone().unwrap_or_default()
                ),
            };
            if complete(d, &status) {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "True",
                        NEW_RS_AVAILABLE,
                        what("has successfully progressed."),
                    ),
                );
            } else if progressing(d, &status) {
                let mut c =
                    new_condition("Progressing", "True", RS_UPDATED, what("is progressing."));
                if let Some(cur) = &current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                }
                if let Some(cs) = status.conditions.as_mut() {
                    cs.retain(|c| c.type_ != "Progressing");
                }
                set_condition(&mut status, c);
            } else if timed_out(d, &status) {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "False",
                        TIMED_OUT,
                        what("has timed out progressing."),
                    ),
                );
                if current.as_ref().and_then(|c| c.reason.as_deref()) != Some(TIMED_OUT) {
                    self.event(
                        d,
                        EventKind::Warning,
                        TIMED_OUT,
                        &format!(
                            "Deployment {:?} has timed out progressing.",
                            d.metadata.name.clone().unwrap_or_default()
                        ),
                    )
                    .await;
                }
            }
        }
        if d.status.as_ref() == Some(&status) {
            self.requeue_stuck(d, &status);
            return Ok(());
        }
        self.write_status(d, status.clone()).await?;
        self.requeue_stuck(d, &status);
        Ok(())
    }

    /// A rollout that is not complete is looked at again when its deadline passes.
    fn requeue_stuck(&self, d: &Deployment, s: &DeploymentStatus) {
        let Some(deadline) = progress_deadline(d) else {
            return;
        };
        let Some(c) = condition(s, "Progressing") else {
            return;
        };
        if complete(d, s) || c.reason.as_deref() == Some(TIMED_OUT) {
            return;
        }
        let Some(updated) = &c.last_update_time else {
            return;
        };
        let left = updated.0.as_second() + deadline - jiff::Timestamp::now().as_second();
        self.queue.add_after(
            object_key(&d.metadata),
            Duration::from_secs(left.max(0) as u64 + 1),
        );
    }
}

/// The sets after `scaled` replaced its earlier self.
fn replace_in(
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
    scaled: ReplicaSet,
) -> (Option<ReplicaSet>, Vec<ReplicaSet>) {
    let same = |r: &ReplicaSet| r.metadata.uid == scaled.metadata.uid;
    if new.as_ref().is_some_and(same) {
        return (Some(scaled), old);
    }
    let old = old
        .into_iter()
        .map(|r| if same(&r) { scaled.clone() } else { r })
        .collect();
    (new, old)
}

/// Copies the Deployment's annotations, moves the revision forward (keeping the old
/// ones in `revision-history`) and, for a new ReplicaSet, sets the sizing annotations.
/// Answers whether anything changed.
fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let a = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&k.as_str()) || a.get(k) == Some(v) {
            continue;
        }
        a.insert(k.clone(), v.clone());
        changed = true;
    }
    let old_revision = a.get(REVISION).cloned().unwrap_or_default();
    if old_revision.parse::<i64>().unwrap_or(0) < new_revision {
        a.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if !old_revision.is_empty() {
            let history = match a.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => {
                    let mut revs: Vec<&str> = h.split(',').collect();
                    revs.push(&old_revision);
                    // Oldest entries go first when over the limit.
                    while revs.join(",").len() > MAX_REVISION_HISTORY_CHARS && revs.len() > 1 {
                        revs.remove(0);
                    }
                    revs.join(",")
                }
                _ => old_revision.clone(),
            };
            a.insert(REVISION_HISTORY.into(), history);
        }
    }
    if !exists {
        let desired = replicas(d).to_string();
        let max = (replicas(d) + max_surge(d)).to_string();
        if a.get(DESIRED_REPLICAS) != Some(&desired) || a.get(MAX_REPLICAS) != Some(&max) {
            a.insert(DESIRED_REPLICAS.into(), desired);
            a.insert(MAX_REPLICAS.into(), max);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(
        replicas: i32,
        surge: serde_json::Value,
        unavailable: serde_json::Value,
    ) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
        }))
        .unwrap()
    }

    fn rs(name: &str, replicas: i32, max: Option<i32>, created: &str) -> ReplicaSet {
        let mut a = serde_json::Map::new();
        if let Some(m) = max {
            a.insert(MAX_REPLICAS.into(), json!(m.to_string()));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": a, "creationTimestamp": created},
            "spec": {"replicas": replicas, "selector": {}},
        }))
        .unwrap()
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailability_down() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(
            fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10),
            Ok((3, 2))
        );
        assert_eq!(
            fenceposts(Some(&pct("25%")), Some(&pct("25%")), 1),
            Ok((1, 0))
        );
        assert_eq!(
            fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 5),
            Ok((0, 1))
        );
        assert_eq!(
            fenceposts(Some(&IntOrString::Int(2)), Some(&pct("50%")), 5),
            Ok((2, 2))
        );
        assert!(fenceposts(Some(&pct("x")), None, 5).is_err());
    }

    #[test]
    fn new_replica_set_grows_within_max_surge() {
        // 10 replicas, surge 3: with 10 old pods the new set may have 3.
        let d = deployment(10, json!("25%"), json!("25%"));
        let old = rs("old", 10, None, "2026-01-01T00:00:00Z");
        let new = rs("new", 0, None, "2026-01-02T00:00:00Z");
        assert_eq!(new_rs_replicas(&d, &[&old, &new], 0), 3);
        // Old scaled down to 8: the new one may reach 5.
        let old = rs("old", 8, None, "2026-01-01T00:00:00Z");
        let new = rs("new", 3, None, "2026-01-02T00:00:00Z");
        assert_eq!(new_rs_replicas(&d, &[&old, &new], 3), 5);
        // Never past spec.replicas.
        let old = rs("old", 0, None, "2026-01-01T00:00:00Z");
        let new = rs("new", 9, None, "2026-01-02T00:00:00Z");
        assert_eq!(new_rs_replicas(&d, &[&old, &new], 9), 10);
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        // Upstream's documented example: 10 replicas, maxSurge 3, mid-rollout with 8
        // old and 5 new; scaled to 15 (max 18): the 5 extra go 3 to old, 2 to new.
        let d = deployment(15, json!(3), json!(2));
        let old = rs("old", 8, Some(13), "2026-01-01T00:00:00Z");
        let new = rs("new", 5, Some(13), "2026-01-02T00:00:00Z");
        let sizes = proportional_sizes(&d, &[&old, &new]);
        assert_eq!(sizes, vec![("old".into(), 11), ("new".into(), 7)]);
        assert_eq!(sizes.iter().map(|s| s.1).sum::<i32>(), 18);
    }

    #[test]
    fn hashes_are_stable_and_spelled_safely() {
        let d = deployment(1, json!(1), json!(0));
        let t = d.spec.unwrap().template;
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h.chars().all(|c| "456789bcdf".contains(c)), "{h}");
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    #[test]
    fn revision_moves_forward_with_history() {
        let mut d = deployment(2, json!(1), json!(0));
        d.metadata.annotations = Some(BTreeMap::from([
            (
                "kubernetes.io/change-cause".to_string(),
                "kubectl set image".to_string(),
            ),
            (REVISION.to_string(), "3".to_string()),
        ]));
        let mut r = rs("r", 2, None, "2026-01-01T00:00:00Z");
        r.metadata.annotations = Some(BTreeMap::from([(REVISION.to_string(), "1".to_string())]));
        assert!(set_new_rs_annotations(&d, &mut r, 4, true));
        let a = r.metadata.annotations.unwrap();
        assert_eq!(a[REVISION], "4");
        assert_eq!(a[REVISION_HISTORY], "1");
        assert_eq!(a["kubernetes.io/change-cause"], "kubectl set image");
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let mut s = DeploymentStatus::default();
        let mut first = new_condition("Available", "True", "A", "m".into());
        first.last_transition_time = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        set_condition(&mut s, first);
        set_condition(&mut s, new_condition("Available", "True", "B", "m".into()));
        let c = condition(&s, "Available").unwrap();
        assert_eq!(c.reason.as_deref(), Some("B"));
        assert_eq!(
            c.last_transition_time.as_ref().unwrap().0.to_string(),
            "2026-01-01T00:00:00Z"
        );
    }
}
