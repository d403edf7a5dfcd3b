//! The ReplicaSet and ReplicationController controllers: keep `spec.replicas` pods of the
//! template running, adopting matching orphans and releasing pods that no longer match,
//! deleting the least useful pods first on scale-down (upstream's ranking), with
//! expectations so that pods created or deleted but not yet seen are not made again, and
//! the status counters (`replicas`, `fullyLabeledReplicas`, `readyReplicas`,
//! `availableReplicas`, `observedGeneration`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_api::selector::{Operator, Requirement};
use ferrokube_api::LabelSelector;
use ferrokube_client::events::Recorder;
use ferrokube_client::informer::{Event, Kind};
use ferrokube_client::{Api, Patch, Store, WorkQueue};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use crate::expectations::Expectations;
use crate::ownership::{self, key};
use crate::pod_control;
use crate::pod_status::{is_active, is_ready, ready_since};
use crate::{Context, Error, InformerFactory, Runner};

/// Pods created or deleted at most per sync (upstream's burstReplicas).
const BURST: usize = 500;

/// What the controller needs of a ReplicaSet or a ReplicationController.
pub trait Owner:
    Kind + Clone + k8s_openapi::Resource<Scope = k8s_openapi::NamespaceResourceScope>
{
    const QUEUE: &'static str;
    const COMPONENT: &'static str;
    fn selector(&self) -> Option<LabelSelector>;
    fn replicas(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
    /// `(replicas, fullyLabeled, ready, available, observedGeneration)` now.
    fn counters(&self) -> (i32, i32, i32, i32, i64);
}

/// The methods whose code is the same for both kinds (their spec and status fields have
/// the same names).
macro_rules! owner_fields {
    () => {
        fn replicas(&self) -> i32 {
            self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
        }
        fn template(&self) -> Option<&PodTemplateSpec> {
            self.spec.as_ref()?.template.as_ref()
        }
        fn min_ready_seconds(&self) -> i32 {
            self.spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0)
        }
        fn counters(&self) -> (i32, i32, i32, i32, i64) {
            let s = self.status.clone().unwrap_or_default();
            (
                s.replicas,
                s.fully_labeled_replicas.unwrap_or(0),
                s.ready_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
                s.observed_generation.unwrap_or(0),
            )
        }
    };
}

impl Owner for ReplicaSet {
    const QUEUE: &'static str = "replicaset";
    const COMPONENT: &'static str = "replicaset-controller";
    fn selector(&self) -> Option<LabelSelector> {
        LabelSelector::from_api(&self.spec.as_ref()?.selector).ok()
    }
    owner_fields!();
}

impl Owner for ReplicationController {
    const QUEUE: &'static str = "replicationmanager";
    const COMPONENT: &'static str = "replication-controller";
    fn selector(&self) -> Option<LabelSelector> {
        let map = self.spec.as_ref()?.selector.as_ref()?;
        if map.is_empty() {
            return None;
        }
        Some(LabelSelector {
            requirements: map
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    operator: Operator::Equals,
                    values: vec![v.clone()],
                })
                .collect(),
        })
    }
    owner_fields!();
}

fn controller_of(p: &Pod) -> Option<&OwnerReference> {
    ownership::controller_of(&p.metadata)
}

/// Registers the informers; the runner syncs owners with a few workers.
pub fn start<O: Owner>(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let expectations = Arc::new(Expectations::default());
    let owners = {
        let inf = informers.informer::<O>();
        let q = queue.clone();
        inf.on_event(move |e| {
            let o = match e {
                Event::Added(o) | Event::Updated(_, o) | Event::Deleted(o) => o,
            };
            let m = o.metadata();
            q.add(key(
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
            ));
        });
        inf.store()
    };
    let pods = {
        let inf = informers.informer::<Pod>();
        let (q, exp, owners) = (queue.clone(), expectations.clone(), owners.clone());
        inf.on_event(move |e| {
            // The owners a pod event concerns: its controller if of our kind, else every
            // owner whose selector matches it (it may be adopted).
            let notify = |p: &Pod, added: bool, deleted: bool| {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                match controller_of(p) {
                    Some(r) if r.kind == <O as k8s_openapi::Resource>::KIND => {
                        let k = key(&ns, &r.name);
                        exp.observed(&k, i64::from(added), i64::from(deleted));
                        q.add(k);
                    }
                    Some(_) => {}
                    None if !deleted => {
                        let labels = p.metadata.labels.clone().unwrap_or_default();
                        for o in owners.list() {
                            let m = o.metadata();
                            if m.namespace.as_deref() == Some(ns.as_str())
                                && o.selector()
                                    .is_some_and(|s| !s.is_everything() && s.matches(&labels))
                            {
                                q.add(key(&ns, m.name.as_deref().unwrap_or_default()));
                            }
                        }
                    }
                    None => {}
                }
            };
            match e {
                Event::Added(p) => notify(p, true, p.metadata.deletion_timestamp.is_some()),
                Event::Updated(old, p) => {
                    let now_deleting = old.metadata.deletion_timestamp.is_none()
                        && p.metadata.deletion_timestamp.is_some();
                    if controller_of(old).map(|r| &r.uid) != controller_of(p).map(|r| &r.uid)
                        || old.metadata.labels != p.metadata.labels
                    {
                        notify(old, false, false);
                    }
                    notify(p, false, now_deleting);
                }
                Event::Deleted(p) => {
                    let already = p.metadata.deletion_timestamp.is_some();
                    notify(p, false, !already);
                }
            }
        });
        inf.store()
    };
    let sync = Arc::new(Sync::<O> {
        cx: cx.clone(),
        owners,
        pods,
        expectations,
        queue: queue.clone(),
        recorder: Recorder::for_component(cx.client.clone(), O::COMPONENT, &cx.host, ""),
    });
    Ok(Runner::new(O::QUEUE, queue, 5, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

struct Sync<O> {
    cx: Context,
    owners: Store<O>,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

/// Upstream's order of pods to delete first on scale-down: unassigned before assigned,
/// Pending before Unknown before Running, not ready before ready, lower
/// `controller.kubernetes.io/pod-deletion-cost` first, ready for less time first, more
/// restarts first, newer first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let phase = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let cost = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
            .and_then(|c| c.parse::<i32>().ok())
            .unwrap_or(0)
    };
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
            .unwrap_or(0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase(a).cmp(&phase(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| cost(a).cmp(&cost(b)))
        // Ready more recently (a later timestamp) goes first.
        .then_with(|| ready_since(b).cmp(&ready_since(a)))
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

impl<O: Owner> Sync<O> {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(owner) = self.owners.get(k) else {
            self.expectations.forget(k);
            return Ok(());
        };
        let m = owner.metadata();
        let (ns, name) = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        let Some(selector) = owner.selector().filter(|s| !s.is_everything()) else {
            return Ok(());
        };
        let deleting = m.deletion_timestamp.is_some();
        let api: Api<Pod> = Api::namespaced(self.cx.client.clone(), &ns);
        let matches = |p: &Pod| selector.matches(&p.metadata.labels.clone().unwrap_or_default());
        let owned = ownership::claim::<O, _>(&api, m, self.pods.list(), matches, None).await?;
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();
        if !deleting && self.expectations.satisfied(k) {
            self.manage(k, &owner, &api, &active).await?;
        }
        self.update_status(&owner, &ns, &name, &active).await
    }

    /// Creates or deletes pods toward `spec.replicas`.
    async fn manage(
        &self,
        k: &str,
        owner: &O,
        api: &Api<Pod>,
        active: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let want = owner.replicas().max(0) as usize;
        if active.len() < want {
            let Some(template) = owner.template() else {
                return Ok(());
            };
            let n = (want - active.len()).min(BURST);
            self.expectations.expect(k, n as i64, 0);
            let m = owner.metadata();
            let tm = template.metadata.clone().unwrap_or_default();
            let pod: Pod = Pod {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", m.name.as_deref().unwrap_or_default())),
                    labels: tm.labels.clone(),
                    annotations: tm.annotations.clone(),
                    finalizers: tm.finalizers.clone(),
                    owner_references: Some(vec![ownership::controller_ref::<O>(m)]),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            };
            if let Err(e) = pod_control::create_pods(
                api,
                vec![pod; n],
                &self.recorder,
                &ownership::reference::<O>(owner.metadata()),
            )
            .await
            {
                // What failed or was not tried will not be seen.
                self.expectations.forget(k);
                return Err(Error::Sync(format!("creating pods: {e}")));
            }
        } else if active.len() > want {
            let mut victims: Vec<Arc<Pod>> = active.to_vec();
            victims.sort_by(|a, b| deletion_order(a, b));
            victims.truncate((active.len() - want).min(BURST));
            self.expectations.expect(k, 0, victims.len() as i64);
            for p in victims {
                let name = p.metadata.name.clone().unwrap_or_default();
                match pod_control::delete_pod(
                    api,
                    &name,
                    &self.recorder,
                    &ownership::reference::<O>(owner.metadata()),
                )
                .await
                {
                    Ok(true) => {}
                    Ok(false) => self.expectations.observed(k, 0, 1),
                    Err(e) => {
                        self.expectations.forget(k);
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(())
    }

    async fn update_status(
        &self,
        owner: &O,
        ns: &str,
        name: &str,
        active: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let template_labels: BTreeMap<String, String> = owner
            .template()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let min_ready = i64::from(owner.min_ready_seconds());
        let now = jiff::Timestamp::now();
        let mut fully_labeled = 0;
        let mut ready = 0;
        let mut available = 0;
        let mut soonest: Option<i64> = None;
        for p in active {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            if template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            {
                fully_labeled += 1;
            }
            if let Some(since) = ready_since(p) {
                ready += 1;
                let age = now.as_second() - since.as_second();
                if age >= min_ready {
                    available += 1;
                } else {
                    let left = min_ready - age;
                    soonest = Some(soonest.map_or(left, |s: i64| s.min(left)));
                }
            }
        }
        if let Some(secs) = soonest {
            // Check availability again when the soonest pod becomes available.
            self.queue
                .add_after(key(ns, name), Duration::from_secs(secs.max(1) as u64));
        }
        let generation = owner.metadata().generation.unwrap_or(0);
        let now_counters = (
            active.len() as i32,
            fully_labeled,
            ready,
            available,
            generation,
        );
        if owner.counters() == now_counters {
            return Ok(());
        }
        let patch = json!({"status": {
            "replicas": now_counters.0,
            "fullyLabeledReplicas": now_counters.1,
            "readyReplicas": now_counters.2,
            "availableReplicas": now_counters.3,
            "observedGeneration": now_counters.4,
        }});
        let api: Api<O> = Api::namespaced(self.cx.client.clone(), ns);
        match api.patch_status(name, &Patch::Merge(patch)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(
        name: &str,
        node: Option<&str>,
        phase: &str,
        ready: bool,
        restarts: i32,
        created: &str,
    ) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": [{"name": "c"}], "nodeName": node},
            "status": {"phase": phase,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": created}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": ready, "restartCount": restarts}]},
        }))
        .unwrap()
    }

    #[test]
    fn scale_down_removes_the_least_useful_pods_first() {
        let mut pods = [
            pod(
                "running-old",
                Some("n"),
                "Running",
                true,
                0,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "running-new",
                Some("n"),
                "Running",
                true,
                0,
                "2026-01-02T00:00:00Z",
            ),
            pod(
                "unscheduled",
                None,
                "Pending",
                false,
                0,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n"),
                "Pending",
                false,
                0,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "not-ready",
                Some("n"),
                "Running",
                false,
                0,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "restarted",
                Some("n"),
                "Running",
                false,
                5,
                "2026-01-01T00:00:00Z",
            ),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<&str> = pods
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![
                "unscheduled",
                "pending",
                "restarted",
                "not-ready",
                "running-new",
                "running-old"
            ]
        );
    }

    #[test]
    fn deletion_cost_ranks_before_age() {
        let mut cheap = pod(
            "cheap",
            Some("n"),
            "Running",
            true,
            0,
            "2026-01-01T00:00:00Z",
        );
        cheap.metadata.annotations = Some(BTreeMap::from([(
            "controller.kubernetes.io/pod-deletion-cost".to_string(),
            "-10".to_string(),
        )]));
        let dear = pod(
            "dear",
            Some("n"),
            "Running",
            true,
            0,
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(deletion_order(&cheap, &dear), Ordering::Less);
    }
}
