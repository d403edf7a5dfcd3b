//! The disruption controller (upstream's `disruption-controller`): keeps each
//! PodDisruptionBudget's status, which the `pods/eviction` subresource decides by.
//!
//! - Pods: those of the budget's namespace its selector matches (an empty selector
//!   matches them all, as in policy/v1).
//! - `minAvailable: N`: N healthy wanted of the pods there are. `maxUnavailable` or a
//!   percentage: the expected count is the scale of the pods' controllers
//!   (ReplicationController, ReplicaSet — its Deployment's when it has one —,
//!   StatefulSet), percentages rounded up; a pod without one of those makes the status
//!   fail safe (no disruption allowed, condition reason `SyncFailed`).
//! - Healthy: Ready, not being deleted, and not evicted in the last two minutes
//!   (`disruptedPods`, which the eviction subresource fills; entries go when the pod
//!   does, or after two minutes with a `NotDeleted` event).
//! - `disruptionsAllowed` = healthy − desired (never below 0; 0 with no expected pods);
//!   condition `DisruptionAllowed` (`SufficientPods` / `InsufficientPods`).
//! - A pod left with a `DisruptionTarget` condition but not deleted two minutes later
//!   gets it back to False.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferrokube_api::LabelSelector;
use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::deployment::scaled_value;
use crate::ownership::{self, key, object_key};
use crate::pod_status::is_ready;
use crate::{Context, Error, InformerFactory, Runner};

const COMPONENT: &str = "controllermanager";
const QUEUE: &str = "disruption";
/// How long an evicted pod may take to be deleted (upstream's DeletionTimeout), and a
/// stale DisruptionTarget condition to stay.
const DELETION_TIMEOUT: i64 = 120;
/// Queue keys of pods whose DisruptionTarget condition may be stale.
const STALE: &str = "stale-disruption/";

/// Registers the informers; the runner keeps budgets' status.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let budgets = crate::queue_own::<PodDisruptionBudget>(informers, &queue);
    let pods = {
        let inf = informers.informer::<Pod>();
        let (q, budgets) = (queue.clone(), budgets.clone());
        inf.on_event(move |e| {
            let notify = |p: &Pod| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                for b in budgets.list() {
                    if b.metadata.namespace == p.metadata.namespace
                        && selector(&b).is_some_and(|s| s.matches(&labels))
                    {
                        q.add(object_key(&b.metadata));
                    }
                }
            };
            match e {
                Event::Added(p) | Event::Deleted(p) => notify(p),
                Event::Updated(old, p) => {
                    if old.metadata.labels != p.metadata.labels {
                        notify(old);
                    }
                    notify(p);
                }
            }
            if let Event::Added(p) | Event::Updated(_, p) = e {
                if let Some(left) = stale_disruption_in(p, jiff::Timestamp::now().as_second()) {
                    q.add_after(
                        format!("{STALE}{}", object_key(&p.metadata)),
                        Duration::from_secs(left.max(0) as u64),
                    );
                }
            }
        });
        inf.store()
    };
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        budgets,
        pods,
        rcs: informers.informer::<ReplicationController>().store(),
        rss: informers.informer::<ReplicaSet>().store(),
        deployments: informers.informer::<Deployment>().store(),
        sets: informers.informer::<StatefulSet>().store(),
        queue: queue.clone(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    Ok(Runner::new(QUEUE, queue, 1, move |k| {
        let sync = sync.clone();
        async move {
            match k.strip_prefix(STALE) {
                Some(pod) => sync.clear_stale_disruption(pod).await,
                None => sync.sync(&k).await,
            }
        }
    }))
}

/// The budget's selector: none matches nothing, an empty one everything (policy/v1).
fn selector(b: &PodDisruptionBudget) -> Option<LabelSelector> {
    LabelSelector::from_api(b.spec.as_ref()?.selector.as_ref()?).ok()
}

/// Seconds until a pod's DisruptionTarget condition counts as stale, if it has one
/// that is True while the pod is not being deleted.
fn stale_disruption_in(p: &Pod, now: i64) -> Option<i64> {
    // Finished pods keep theirs, as do pods the kubelet itself ended (upstream).
    if p.metadata.deletion_timestamp.is_some()
        || matches!(crate::pod_status::phase(p), "Succeeded" | "Failed")
    {
        return None;
    }
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        .filter(|c| c.reason.as_deref() != Some("TerminationByKubelet"))?;
    let since = c
        .last_transition_time
        .as_ref()
        .map_or(now, |t| t.0.as_second());
    Some(since + DELETION_TIMEOUT - now)
}

/// The wanted healthy count and the expected count: from `minAvailable: N` and the pods
/// there are, or from the controllers' `scale` for `maxUnavailable` and percentages.
pub fn desired(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    pods: usize,
    scale: impl FnOnce() -> Result<i32, String>,
) -> Result<(i32, i32), String> {
    match (max_unavailable, min_available) {
        (Some(max), _) => {
            let expected = scale()?;
            let unavailable = scaled_value(max, expected, true)?;
            Ok(((expected - unavailable).max(0), expected))
        }
        (None, Some(IntOrString::Int(n))) => Ok((*n, pods as i32)),
        (None, Some(min)) => {
            let expected = scale()?;
            Ok((scaled_value(min, expected, true)?, expected))
        }
        // Neither: nothing expected, so no disruption is allowed (upstream).
        (None, None) => Ok((0, 0)),
    }
}

/// `disruptionsAllowed`: never negative, and none while no pods are expected.
pub fn allowed(current_healthy: i32, desired_healthy: i32, expected: i32) -> i32 {
    if expected <= 0 {
        0
    } else {
        (current_healthy - desired_healthy).max(0)
    }
}

struct Sync {
    cx: Context,
    budgets: Store<PodDisruptionBudget>,
    pods: Store<Pod>,
    rcs: Store<ReplicationController>,
    rss: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    sets: Store<StatefulSet>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

impl Sync {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(pdb) = self.budgets.get(k) else {
            return Ok(());
        };
        if pdb.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let ns = pdb.metadata.namespace.clone().unwrap_or_default();
        let involved = ownership::reference::<PodDisruptionBudget>(&pdb.metadata);
        let sel = selector(&pdb);
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && sel
                        .as_ref()
                        .is_some_and(|s| s.matches(&p.metadata.labels.clone().unwrap_or_default()))
            })
            .collect();
        if pods.is_empty() {
            self.recorder
                .object(
                    &ns,
                    involved.clone(),
                    EventKind::Normal,
                    "NoPods",
                    "No matching pods found",
                )
                .await;
        }
        let spec = pdb.spec.clone().unwrap_or_default();
        let by_scale = spec.max_unavailable.is_some()
            || matches!(spec.min_available, Some(IntOrString::String(_)));
        let mut unmanaged = Vec::new();
        let counts = desired(
            spec.min_available.as_ref(),
            spec.max_unavailable.as_ref(),
            pods.len(),
            || self.expected_scale(&ns, &pods, &mut unmanaged),
        );
        let (desired_healthy, expected) = match counts {
            Ok(c) => c,
            Err(e) => {
                self.recorder
                    .object(
                        &ns,
                        involved,
                        EventKind::Warning,
                        "CalculateExpectedPodCountFailed",
                        &format!("Failed to calculate the number of expected pods: {e}"),
                    )
                    .await;
                return self.fail_safe(&pdb, &e).await;
            }
        };
        if by_scale && !unmanaged.is_empty() {
            tracing::warn!(pdb = k, pods = ?unmanaged, "pods without a controller");
            let sel_text = sel.as_ref().map(|s| s.to_string()).unwrap_or_default();
            self.recorder
                .object(
                    &ns,
                    ownership::reference::<PodDisruptionBudget>(&pdb.metadata),
                    EventKind::Warning,
                    "UnmanagedPods",
                    &format!(
                        "Pods selected by this PodDisruptionBudget (selector: {sel_text}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value."
                    ),
                )
                .await;
        }
        let now = jiff::Timestamp::now();
        let (disrupted, recheck) = self.disrupted(&pdb, &pods, now.as_second()).await;
        let current_healthy = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default())
                    && is_ready(p)
            })
            .count() as i32;
        let allowed = allowed(current_healthy, desired_healthy, expected);
        let generation = pdb.metadata.generation;
        let mut status = PodDisruptionBudgetStatus {
            current_healthy,
            desired_healthy,
            disruptions_allowed: allowed,
            expected_pods: expected,
            observed_generation: generation,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            conditions: pdb.status.as_ref().and_then(|s| s.conditions.clone()),
        };
        set_allowed_condition(&mut status, None);
        self.write(&pdb, status).await?;
        if let Some(at) = recheck {
            let left = (at - now.as_second()).max(1) as u64;
            self.queue
                .add_after(k.to_string(), Duration::from_secs(left));
        }
        Ok(())
    }

    /// The scale of the pods' controllers, each counted once; pods without a
    /// controller are listed in `unmanaged`.
    fn expected_scale(
        &self,
        ns: &str,
        pods: &[Arc<Pod>],
        unmanaged: &mut Vec<String>,
    ) -> Result<i32, String> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut total = 0;
        for p in pods {
            let name = p.metadata.name.clone().unwrap_or_default();
            let Some(r) = ownership::controller_of(&p.metadata) else {
                unmanaged.push(name);
                continue;
            };
            if !seen.insert(r.uid.clone()) {
                continue;
            }
            let k = key(ns, &r.name);
            let found = match r.kind.as_str() {
                "ReplicationController" => self
                    .rcs
                    .get(&k)
                    .filter(|c| c.metadata.uid.as_deref() == Some(r.uid.as_str()))
                    .map(|c| {
                        (
                            c.metadata.uid.clone(),
                            c.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                        )
                    }),
                "StatefulSet" => self
                    .sets
                    .get(&k)
                    .filter(|c| c.metadata.uid.as_deref() == Some(r.uid.as_str()))
                    .map(|c| {
                        (
                            c.metadata.uid.clone(),
                            c.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                        )
                    }),
                "ReplicaSet" => self
                    .rss
                    .get(&k)
                    .filter(|c| c.metadata.uid.as_deref() == Some(r.uid.as_str()))
                    .map(|rs| {
                        // A Deployment's ReplicaSet counts as the Deployment.
                        let dep = ownership::controller_of(&rs.metadata)
                            .filter(|d| d.kind == "Deployment")
                            .and_then(|d| {
                                self.deployments
                                    .get(&key(ns, &d.name))
                                    .filter(|x| x.metadata.uid.as_deref() == Some(d.uid.as_str()))
                            });
                        match dep {
                            Some(d) => (
                                d.metadata.uid.clone(),
                                d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                            ),
                            None => (
                                rs.metadata.uid.clone(),
                                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                            ),
                        }
                    }),
                _ => None,
            };
            let Some((uid, replicas)) = found else {
                return Err(format!("found no controllers for pod {name:?}"));
            };
            // Several ReplicaSets of one Deployment count once.
            if uid.as_ref().is_some_and(|u| *u != r.uid) && !seen.insert(uid.unwrap_or_default()) {
                continue;
            }
            total += replicas;
        }
        Ok(total)
    }

    /// The evictions still pending (pod → time), and when the next one times out.
    async fn disrupted(
        &self,
        pdb: &PodDisruptionBudget,
        pods: &[Arc<Pod>],
        now: i64,
    ) -> (BTreeMap<String, Time>, Option<i64>) {
        let mut out = BTreeMap::new();
        let mut recheck: Option<i64> = None;
        let listed = pdb
            .status
            .as_ref()
            .and_then(|s| s.disrupted_pods.clone())
            .unwrap_or_default();
        for (name, at) in listed {
            let Some(p) = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&name))
            else {
                continue;
            };
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let expires = at.0.as_second() + DELETION_TIMEOUT;
            if expires < now {
                self.recorder
                    .pod(
                        p,
                        None,
                        EventKind::Warning,
                        "NotDeleted",
                        &format!(
                            "Pod was expected by PDB {} to be deleted but it wasn't",
                            object_key(&pdb.metadata)
                        ),
                    )
                    .await;
                continue;
            }
            recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
            out.insert(name, at);
        }
        (out, recheck)
    }

    async fn fail_safe(&self, pdb: &PodDisruptionBudget, why: &str) -> Result<(), Error> {
        let mut status = pdb.status.clone().unwrap_or_default();
        status.disruptions_allowed = 0;
        set_allowed_condition(&mut status, Some(why));
        self.write(pdb, status).await
    }

    async fn write(
        &self,
        pdb: &PodDisruptionBudget,
        status: PodDisruptionBudgetStatus,
    ) -> Result<(), Error> {
        let mut updated = pdb.clone();
        updated.status = Some(status);
        crate::write_status(&self.cx.client, pdb, &updated).await?;
        Ok(())
    }

    /// Turns a pod's DisruptionTarget condition back to False when it has been True for
    /// two minutes without the pod being deleted.
    async fn clear_stale_disruption(&self, k: &str) -> Result<(), Error> {
        let Some(p) = self.pods.get(k) else {
            return Ok(());
        };
        let Some(left) = stale_disruption_in(&p, jiff::Timestamp::now().as_second()) else {
            return Ok(());
        };
        if left > 0 {
            self.queue
                .add_after(format!("{STALE}{k}"), Duration::from_secs(left as u64));
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(
            self.cx.client.clone(),
            p.metadata.namespace.as_deref().unwrap_or_default(),
        );
        crate::pod_status::set_condition(
            &api,
            &p,
            crate::pod_status::PodCondition {
                type_: "DisruptionTarget",
                status: "False",
                reason: None,
                message: None,
            },
            None,
        )
        .await?;
        Ok(())
    }
}

/// Sets the `DisruptionAllowed` condition from the status (or to `SyncFailed`).
fn set_allowed_condition(status: &mut PodDisruptionBudgetStatus, failed: Option<&str>) {
    let (value, reason, message) = match failed {
        Some(why) => ("False", "SyncFailed", why.to_string()),
        None if status.disruptions_allowed > 0 => ("True", "SufficientPods", String::new()),
        None => ("False", "InsufficientPods", String::new()),
    };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let observed = status.observed_generation;
    match conditions
        .iter_mut()
        .find(|c| c.type_ == "DisruptionAllowed")
    {
        Some(c) => {
            if c.status != value {
                c.status = value.into();
                c.last_transition_time = Time(jiff::Timestamp::now());
            }
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = observed;
        }
        None => conditions.push(Condition {
            type_: "DisruptionAllowed".into(),
            status: value.into(),
            reason: reason.into(),
            message,
            observed_generation: observed,
            last_transition_time: Time(jiff::Timestamp::now()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn desired_counts_as_upstream() {
        // Neither field: nothing expected, so nothing may go.
        assert_eq!(desired(None, None, 3, || panic!("no scale")), Ok((0, 0)));
        assert_eq!(allowed(3, 0, 0), 0);
        // minAvailable 2 of 3 pods: no scale needed.
        let min = IntOrString::Int(2);
        assert_eq!(
            desired(Some(&min), None, 3, || panic!("no scale")),
            Ok((2, 3))
        );
        // maxUnavailable 1 of a scale of 5.
        let max = IntOrString::Int(1);
        assert_eq!(desired(None, Some(&max), 4, || Ok(5)), Ok((4, 5)));
        // Percentages round up: 50% of 3 available → 2; 30% of 5 unavailable → 2.
        assert_eq!(desired(Some(&pct("50%")), None, 3, || Ok(3)), Ok((2, 3)));
        assert_eq!(desired(None, Some(&pct("30%")), 5, || Ok(5)), Ok((3, 5)));
        // More unavailable than expected: none wanted.
        assert_eq!(
            desired(None, Some(&IntOrString::Int(9)), 2, || Ok(2)),
            Ok((0, 2))
        );
        assert!(desired(None, Some(&max), 1, || Err("found no controllers".into())).is_err());
    }

    #[test]
    fn allowed_never_negative_nor_without_pods() {
        assert_eq!(allowed(3, 2, 3), 1);
        assert_eq!(allowed(1, 2, 3), 0);
        assert_eq!(allowed(2, 0, 0), 0);
    }

    #[test]
    fn condition_follows_allowed() {
        let mut s = PodDisruptionBudgetStatus {
            disruptions_allowed: 1,
            ..Default::default()
        };
        set_allowed_condition(&mut s, None);
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SufficientPods")
        );
        s.disruptions_allowed = 0;
        set_allowed_condition(&mut s, Some("found no controllers for pod \"x\""));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SyncFailed")
        );
    }
}
