//! The StatefulSet controller (upstream's `statefulset`): pods with a stable identity —
//! `<sts>-<ordinal>` (from `ordinals.start`, default 0), hostname the pod's name and
//! subdomain the governing `serviceName`, labels `statefulset.kubernetes.io/pod-name` and
//! `apps.kubernetes.io/pod-index` — and stable storage: each `volumeClaimTemplates` entry
//! becomes a PVC `<claim>-<sts>-<ordinal>` made before its pod and kept when the pod goes
//! (unless `persistentVolumeClaimRetentionPolicy` says `Delete`: then the PVC is owned by
//! the StatefulSet, or by the pod on scale-down, and the garbage collector removes it).
//!
//! `OrderedReady` (the default) makes pods one at a time in ordinal order, each once the
//! previous is Running and Ready, and removes them from the highest ordinal, one at a
//! time; `Parallel` does all at once. Templates are kept as ControllerRevisions;
//! `RollingUpdate` replaces pods from the highest ordinal down to `partition`, one at a
//! time, each once the previous is back and Ready; `OnDelete` waits for deletions.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrokube_api::LabelSelector;
use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use crate::ownership::{self, key};
use crate::pod_status::{phase, ready_since};
use crate::revisions::{self, REVISION_HASH};
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "statefulset";
const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Registers the informers; the runner syncs StatefulSets.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let sets = crate::queue_own::<StatefulSet>(informers, &queue);
    let pods = crate::queue_controller::<StatefulSet, Pod>(informers, &queue, None);
    let claims = informers.informer::<PersistentVolumeClaim>().store();
    let revisions = informers.informer::<ControllerRevision>().store();
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        sets,
        pods,
        claims,
        revisions,
        queue: queue.clone(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    Ok(Runner::new(QUEUE, queue, 5, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

/// The ordinal of a pod named `<sts>-<n>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

/// A claim's name for one pod: `<claim>-<sts>-<ordinal>`.
pub fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

fn healthy(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && phase(p) == "Running" && ready_since(p).is_some()
}

/// Running, Ready, and Ready for `min_ready` seconds.
fn available(p: &Pod, min_ready: i64, now: i64) -> bool {
    healthy(p) && ready_since(p).is_some_and(|t| now - t.as_second() >= min_ready)
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

struct Sync {
    cx: Context,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    revisions: Store<ControllerRevision>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

impl Sync {
    async fn event(&self, set: &StatefulSet, kind: EventKind, reason: &str, message: &str) {
        self.recorder
            .object(
                set.metadata.namespace.as_deref().unwrap_or_default(),
                ownership::reference::<StatefulSet>(&set.metadata),
                kind,
                reason,
                message,
            )
            .await;
    }

    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(set) = self.sets.get(k) else {
            return Ok(());
        };
        let set = (*set).clone();
        let name = set.metadata.name.clone().unwrap_or_default();
        let ns = set.metadata.namespace.clone().unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let Ok(selector) = LabelSelector::from_api(&spec.selector) else {
            return Ok(());
        };
        if selector.is_everything() {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.cx.client.clone(), &ns);
        // Its pods: named and labelled as its members (upstream's isMemberOf).
        let matches = |p: &Pod| {
            ordinal_of(&name, p.metadata.name.as_deref().unwrap_or_default()).is_some()
                && selector.matches(&p.metadata.labels.clone().unwrap_or_default())
        };
        let mut pods: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        for p in
            ownership::claim::<StatefulSet, _>(&api, &set.metadata, self.pods.list(), matches, None)
                .await?
        {
            if let Some(ord) = ordinal_of(&name, p.metadata.name.as_deref().unwrap_or_default()) {
                pods.insert(ord, p);
            }
        }
        let (update_hash, current_hash) = self.revisions(&set).await?;
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let wanted = start..start + replicas;
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let deleting = set.metadata.deletion_timestamp.is_some();
        let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
        let now = jiff::Timestamp::now().as_second();
        let settled = |p: &Pod| available(p, min_ready, now);

        if !deleting {
            // Failed pods go (and are made again).
            for (ord, p) in &pods {
                if phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none() {
                    self.delete_pod(&set, &api, p).await?;
                    tracing::debug!(ordinal = ord, "failed pod deleted");
                }
            }
            // Make the missing pods in order (OrderedReady: one at a time, each after the
            // ones before it are Running and Ready).
            let mut blocked = false;
            for ord in wanted.clone() {
                match pods.get(&ord) {
                    Some(p) => {
                        if !settled(p) && !parallel {
                            blocked = true;
                            break;
                        }
                    }
                    None => {
                        // A pod still going under this name: wait.
                        let hash = current_or_update(&spec, ord, &update_hash, &current_hash);
                        let template = self.template_of(&set, &hash);
                        self.create_pod(&set, &api, ord, &hash, template).await?;
                        if !parallel {
                            blocked = true;
                            break;
                        }
                    }
                }
            }
            // Scale down: from the highest ordinal; OrderedReady one at a time and only
            // while every remaining pod is healthy.
            let extra: Vec<(i32, Arc<Pod>)> = pods
                .iter()
                .rev()
                .filter(|(o, _)| !wanted.contains(o))
                .map(|(o, p)| (*o, p.clone()))
                .collect();
            if !extra.is_empty() && (parallel || !blocked) {
                let terminating = extra
                    .iter()
                    .any(|(_, p)| p.metadata.deletion_timestamp.is_some());
                let all_healthy = pods
                    .iter()
                    .filter(|(o, _)| wanted.contains(o))
                    .all(|(_, p)| settled(p));
                if parallel {
                    for (_, p) in &extra {
                        if p.metadata.deletion_timestamp.is_none() {
                            self.scale_down(&set, &api, p).await?;
                        }
                    }
                } else if !terminating && all_healthy {
                    self.scale_down(&set, &api, &extra[0].1).await?;
                }
                blocked = true;
            }
            // Rolling update: highest ordinal first, down to the partition.
            let strategy = spec.update_strategy.clone().unwrap_or_default();
            if !blocked && strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
                let partition = strategy
                    .rolling_update
                    .as_ref()
                    .and_then(|r| r.partition)
                    .unwrap_or(0);
                let all_healthy = pods
                    .iter()
                    .filter(|(o, _)| wanted.contains(o))
                    .all(|(_, p)| settled(p));
                if all_healthy {
                    let stale = pods
                        .iter()
                        .rev()
                        .filter(|(o, _)| wanted.contains(o) && **o - start >= partition)
                        .find(|(_, p)| hash_of(p) != Some(update_hash.as_str()));
                    if let Some((_, p)) = stale {
                        self.delete_pod(&set, &api, p).await?;
                    }
                }
            }
        }
        // Status.
        let live: Vec<&Arc<Pod>> = pods
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
        let ready = count(&|p| healthy(p));
        let available = count(&|p| settled(p));
        // Look again when a Ready pod has been Ready for minReadySeconds.
        if let Some(left) = live
            .iter()
            .filter(|p| healthy(p) && !settled(p))
            .filter_map(|p| ready_since(p).map(|t| t.as_second() + min_ready - now))
            .min()
        {
            self.queue.add_after(
                k.to_string(),
                std::time::Duration::from_secs(left.max(1) as u64),
            );
        }
        let updated = count(&|p| hash_of(p) == Some(update_hash.as_str()));
        let current = count(&|p| hash_of(p) == Some(current_hash.as_str()));
        // The update is done when every pod is of the update revision.
        let done = updated == replicas && live.len() as i32 == replicas;
        let status = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            replicas: live.len() as i32,
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            current_replicas: Some(if done { updated } else { current }),
            updated_replicas: Some(updated),
            current_revision: Some(format!(
                "{name}-{}",
                if done { &update_hash } else { &current_hash }
            )),
            update_revision: Some(format!("{name}-{update_hash}")),
            collision_count: set.status.as_ref().and_then(|s| s.collision_count),
            conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        };
        self.write_status(&set, status).await
    }

    /// The ControllerRevision hashes of the template now (made if new) and of the
    /// revision the pods were last fully at.
    async fn revisions(&self, set: &StatefulSet) -> Result<(String, String), Error> {
        let name = set.metadata.name.clone().unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let update = revisions::current::<StatefulSet>(
            &self.cx.client,
            &self.revisions,
            &set.metadata,
            &spec.template,
            set.status.as_ref().and_then(|s| s.collision_count),
        )
        .await?;
        let current = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .and_then(|c| c.strip_prefix(&format!("{name}-")).map(String::from));
        Ok((update.clone(), current.unwrap_or(update)))
    }

    /// The pod template of the revision with `hash` (the current spec's if it is gone).
    fn template_of(&self, set: &StatefulSet, hash: &str) -> PodTemplateSpec {
        revisions::owned(&self.revisions, &set.metadata)
            .iter()
            .find(|r| revisions::hash_of(r) == Some(hash))
            .and_then(|r| revisions::template_of(r))
            .unwrap_or_else(|| set.spec.clone().unwrap_or_default().template)
    }

    async fn create_pod(
        &self,
        set: &StatefulSet,
        api: &Api<Pod>,
        ord: i32,
        hash: &str,
        template: PodTemplateSpec,
    ) -> Result<(), Error> {
        let spec = set.spec.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let ns = set.metadata.namespace.clone().unwrap_or_default();
        let pod_name = format!("{name}-{ord}");
        // Storage first.
        let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(self.cx.client.clone(), &ns);
        let when_deleted = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_deleted.clone())
            .unwrap_or_else(|| "Retain".into());
        let mut volumes: Vec<Volume> = Vec::new();
        for t in spec.volume_claim_templates.iter().flatten() {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let cname = claim_name(&tname, &name, ord);
            volumes.push(Volume {
                name: tname.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: cname.clone(),
                    read_only: None,
                }),
                ..Default::default()
            });
            if self.claims.get(&key(&ns, &cname)).is_some() {
                continue;
            }
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
            let owners: Option<Vec<OwnerReference>> = (when_deleted == "Delete").then(|| {
                let mut r = ownership::controller_ref::<StatefulSet>(&set.metadata);
                r.controller = None;
                r.block_owner_deletion = Some(true);
                vec![r]
            });
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(cname.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: owners,
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            };
            match claims_api.create(&claim).await {
                Ok(_) => {
                    self.event(
                        set,
                        EventKind::Normal,
                        "SuccessfulCreate",
                        &format!(
                            "create Claim {cname} Pod {pod_name} in StatefulSet {name} success"
                        ),
                    )
                    .await
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => {
                    self.event(
                        set,
                        EventKind::Warning,
                        "FailedCreate",
                        &format!("create Claim {cname} for Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                    )
                    .await;
                    return Err(e.into());
                }
            }
        }
        let tm = template.metadata.clone().unwrap_or_default();
        let mut labels = tm.labels.clone().unwrap_or_default();
        labels.insert(REVISION_HASH.into(), hash.into());
        labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
        let mut pod_spec = template.spec.clone().unwrap_or_default();
        pod_spec.hostname = Some(pod_name.clone());
        if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
            pod_spec.subdomain = spec.service_name.clone();
        }
        let existing = pod_spec.volumes.get_or_insert_with(Vec::new);
        for v in volumes {
            existing.retain(|x| x.name != v.name);
            existing.push(v);
        }
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(pod_name.clone()),
                labels: Some(labels),
                annotations: tm.annotations.clone(),
                finalizers: tm.finalizers.clone(),
                owner_references: Some(vec![ownership::controller_ref::<StatefulSet>(
                    &set.metadata,
                )]),
                ..Default::default()
            },
            spec: Some(pod_spec),
            status: None,
        };
        match api.create(&pod).await {
            Ok(_) => {
                self.event(
                    set,
                    EventKind::Normal,
                    "SuccessfulCreate",
                    &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                )
                .await;
                Ok(())
            }
            // The cache is behind, or the old pod of that name is still going.
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => {
                self.event(
                    set,
                    EventKind::Warning,
                    "FailedCreate",
                    &format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                )
                .await;
                Err(e.into())
            }
        }
    }

    /// Scale-down: the pod goes; with `whenScaled: Delete` its claims are handed to it
    /// (owned by the pod) so they go with it.
    async fn scale_down(&self, set: &StatefulSet, api: &Api<Pod>, p: &Pod) -> Result<(), Error> {
        let spec = set.spec.clone().unwrap_or_default();
        let when_scaled = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.clone())
            .unwrap_or_else(|| "Retain".into());
        if when_scaled == "Delete" {
            let name = set.metadata.name.clone().unwrap_or_default();
            let ns = set.metadata.namespace.clone().unwrap_or_default();
            let ord =
                ordinal_of(&name, p.metadata.name.as_deref().unwrap_or_default()).unwrap_or(-1);
            let claims_api: Api<PersistentVolumeClaim> =
                Api::namespaced(self.cx.client.clone(), &ns);
            for t in spec.volume_claim_templates.iter().flatten() {
                let cname = claim_name(t.metadata.name.as_deref().unwrap_or_default(), &name, ord);
                let owner = OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                    uid: p.metadata.uid.clone().unwrap_or_default(),
                    controller: None,
                    block_owner_deletion: Some(true),
                };
                // The claim now belongs to the pod alone (not to the set any more).
                let set_uid = set.metadata.uid.clone().unwrap_or_default();
                let mut refs: Vec<OwnerReference> = self
                    .claims
                    .get(&key(&ns, &cname))
                    .and_then(|c| c.metadata.owner_references.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.uid != set_uid && r.uid != owner.uid)
                    .collect();
                refs.push(owner);
                let patch = json!({"metadata": {"ownerReferences": refs}});
                match claims_api
                    .patch(&cname, &ferrokube_client::Patch::Merge(patch))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.delete_pod(set, api, p).await
    }

    async fn delete_pod(&self, set: &StatefulSet, api: &Api<Pod>, p: &Pod) -> Result<(), Error> {
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        match api.delete(&pod_name, None).await {
            Ok(_) => {
                self.event(
                    set,
                    EventKind::Normal,
                    "SuccessfulDelete",
                    &format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                )
                .await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_status(
        &self,
        set: &StatefulSet,
        status: StatefulSetStatus,
    ) -> Result<(), Error> {
        let mut updated = set.clone();
        updated.status = Some(status);
        crate::write_status(&self.cx.client, set, &updated).await?;
        Ok(())
    }
}

/// The revision a new pod of `ordinal` gets: the update revision at or above the
/// partition (and always with OnDelete for new pods), else the current one.
fn current_or_update(
    spec: &k8s_openapi::api::apps::v1::StatefulSetSpec,
    ordinal: i32,
    update: &str,
    current: &str,
) -> String {
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate"
        && ordinal - start < partition
    {
        current.to_string()
    } else {
        update.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_and_claim_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(claim_name("www", "web", 2), "www-web-2");
    }
}
