//! The DaemonSet controller (upstream's `daemon`): one pod of the template on every
//! node that should run it — the node satisfies the template's `nodeSelector` and
//! required node affinity, and its `NoSchedule`/`NoExecute` taints are tolerated (with
//! the tolerations upstream adds to every daemon pod: `not-ready`/`unreachable`
//! NoExecute, `disk-pressure`/`memory-pressure`/`pid-pressure`/`unschedulable`
//! NoSchedule, `network-unavailable` for host-network pods). Pods are pinned to their
//! node with node affinity on `metadata.name` and placed by the scheduler.
//!
//! Templates are kept as ControllerRevisions `<ds>-<hash>` (`kubectl rollout
//! history|undo` read them); pods carry `controller-revision-hash`. `RollingUpdate`
//! replaces old pods within `maxUnavailable` — or, with `maxSurge`, starts the new pod
//! beside the old one and removes the old one once the new is available; `OnDelete`
//! waits for old pods to be deleted. Failed pods are deleted and made again.

use std::collections::HashMap;
use std::sync::Arc;

use ferrokube_api::scheduling::{untolerated, RequiredNodeAffinity};
use ferrokube_api::LabelSelector;
use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::deployment::scaled_value;
use crate::expectations::Expectations;
use crate::ownership::{self, object_key};
use crate::pod_status::{phase, ready_since};
use crate::revisions::{self, REVISION_HASH};
use crate::{pod_control, Context, Error, InformerFactory, Runner};

const QUEUE: &str = "daemonset";
const COMPONENT: &str = "daemonset-controller";
const TEMPLATE_GENERATION: &str = "pod-template-generation";

/// Registers the informers; the runner syncs DaemonSets.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let expectations = Arc::new(Expectations::default());
    let daemonsets = crate::queue_own::<DaemonSet>(informers, &queue);
    // Any node change may change where daemon pods belong.
    {
        let (q, dss) = (queue.clone(), daemonsets.clone());
        informers.informer::<Node>().on_event(move |e| {
            let relevant = match e {
                Event::Updated(old, n) => {
                    old.metadata.labels != n.metadata.labels
                        || old.spec.as_ref().and_then(|s| s.taints.clone())
                            != n.spec.as_ref().and_then(|s| s.taints.clone())
                }
                _ => true,
            };
            if relevant {
                for d in dss.list() {
                    q.add(object_key(&d.metadata));
                }
            }
        });
    }
    let nodes = informers.informer::<Node>().store();
    let pods =
        crate::queue_controller::<DaemonSet, Pod>(informers, &queue, Some(expectations.clone()));
    let revisions = informers.informer::<ControllerRevision>().store();
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        daemonsets,
        nodes,
        pods,
        revisions,
        expectations,
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    Ok(Runner::new(QUEUE, queue, 2, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// The tolerations every daemon pod gets (upstream's `AddOrUpdateDaemonPodTolerations`).
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut add = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        add.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for t in add {
        if !list.iter().any(|x| x.key == t.key && x.effect == t.effect) {
            list.push(t);
        }
    }
}

/// Pins a pod to a node: its required node affinity becomes `metadata.name In [node]`
/// (upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`).
fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon pod is for: its `nodeName`, or the node its affinity pins it to.
fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|f| {
            (f.key == "metadata.name" && f.operator == "In")
                .then(|| f.values.as_ref()?.first().cloned())
                .flatten()
        })
    })
}

/// `(should run, should keep running)` for a node (upstream's `NodeShouldRunDaemonPod`):
/// an untolerated NoSchedule taint stops new pods, an untolerated NoExecute one also
/// removes running ones.
pub fn should_run(template: &PodTemplateSpec, node: &Node) -> (bool, bool) {
    let mut spec = template.spec.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    if spec
        .node_name
        .as_ref()
        .is_some_and(|n| !n.is_empty() && *n != name)
    {
        return (false, false);
    }
    add_daemon_tolerations(&mut spec);
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !RequiredNodeAffinity::of(Some(&spec)).matches(&name, &labels) {
        return (false, false);
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    if untolerated(&taints, &tolerations, &["NoExecute"]).is_some() {
        return (false, false);
    }
    if untolerated(&taints, &tolerations, &["NoSchedule"]).is_some() {
        return (false, true);
    }
    (true, true)
}

fn available(p: &Pod, min_ready: i64, now: i64) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && ready_since(p).is_some_and(|t| now - t.as_second() >= min_ready)
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
    daemonsets: Store<DaemonSet>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

impl Sync {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(ds) = self.daemonsets.get(k) else {
            self.expectations.forget(k);
            return Ok(());
        };
        let ds = (*ds).clone();
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let spec = ds.spec.clone().unwrap_or_default();
        let Ok(selector) = LabelSelector::from_api(&spec.selector) else {
            return Ok(());
        };
        if selector.is_everything() {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.cx.client.clone(), &ns);
        let pods = self.claim(&ds, &selector, &api).await?;
        let hash = self.current_revision(&ds).await?;
        let now = jiff::Timestamp::now().as_second();
        let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
        // Pods by node.
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in &pods {
            if let Some(n) = target_node(p) {
                by_node.entry(n).or_default().push(p.clone());
            }
        }
        let nodes = self.nodes.list();
        let (mut desired, mut current, mut misscheduled) = (0, 0, 0);
        let (mut ready, mut available_count, mut updated) = (0, 0, 0);
        let mut create_on: Vec<String> = Vec::new();
        let mut delete: Vec<Arc<Pod>> = Vec::new();
        let deleting = ds.metadata.deletion_timestamp.is_some();
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let (run, keep) = should_run(&spec.template, node);
            let mut here: Vec<Arc<Pod>> = by_node
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            if run {
                desired += 1;
            }
            if !keep {
                if !here.is_empty() {
                    misscheduled += 1;
                }
                delete.extend(here);
                continue;
            }
            // Failed pods go (and come back).
            let (failed, alive): (Vec<_>, Vec<_>) =
                here.drain(..).partition(|p| phase(p) == "Failed");
            for p in &failed {
                self.recorder
                    .object(
                        &ns,
                        ownership::reference::<DaemonSet>(&ds.metadata),
                        EventKind::Warning,
                        "FailedDaemonPod",
                        &format!(
                            "Found failed daemon pod {ns}/{} on node {name}, will try to kill it",
                            p.metadata.name.clone().unwrap_or_default()
                        ),
                    )
                    .await;
            }
            delete.extend(failed);
            here = alive;
            if !run && here.is_empty() {
                continue;
            }
            if run {
                if !here.is_empty() {
                    current += 1;
                }
                if here.iter().any(|p| ready_since(p).is_some()) {
                    ready += 1;
                }
                if here.iter().any(|p| available(p, min_ready, now)) {
                    available_count += 1;
                }
                if here.iter().any(|p| hash_of(p) == Some(hash.as_str())) {
                    updated += 1;
                }
            } else {
                misscheduled += 1;
            }
            if here.is_empty() {
                if run && !deleting {
                    create_on.push(name);
                }
                continue;
            }
            // More than one daemon pod (of the same revision) on a node: keep the oldest.
            let surge_pair = here.len() == 2
                && here.iter().any(|p| hash_of(p) == Some(hash.as_str()))
                && here.iter().any(|p| hash_of(p) != Some(hash.as_str()));
            if here.len() > 1 && !surge_pair {
                here.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                delete.extend(here.drain(1..));
            }
        }
        // Pods for nodes that no longer exist.
        for (_, gone) in by_node {
            delete.extend(
                gone.into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none()),
            );
        }
        let status = DaemonSetStatus {
            observed_generation: ds.metadata.generation,
            collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
            conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
            desired_number_scheduled: desired,
            current_number_scheduled: current,
            number_misscheduled: misscheduled,
            number_ready: ready,
            // (Zero counts are left out, as Go's omitempty leaves them.)
            number_available: (available_count > 0).then_some(available_count),
            number_unavailable: (desired > available_count).then_some(desired - available_count),
            updated_number_scheduled: (updated > 0).then_some(updated),
        };

        if self.expectations.satisfied(k) && !deleting {
            // Rolling update: which old pods go (and, with surge, which nodes get a new
            // pod beside the old one).
            let strategy = spec.update_strategy.clone().unwrap_or_default();
            if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
                let (surge_on, replace) =
                    self.rolling_update(&ds, &pods, &nodes, &hash, min_ready, now);
                create_on.extend(surge_on);
                delete.extend(replace);
            }
            delete.sort_by(|a, b| a.metadata.uid.cmp(&b.metadata.uid));
            delete.dedup_by(|a, b| a.metadata.uid == b.metadata.uid);
            self.expectations
                .expect(k, create_on.len() as i64, delete.len() as i64);
            for p in &delete {
                let name = p.metadata.name.clone().unwrap_or_default();
                if !pod_control::delete_pod(
                    &api,
                    &name,
                    &self.recorder,
                    &ownership::reference::<DaemonSet>(&ds.metadata),
                )
                .await?
                {
                    self.expectations.observed(k, 0, 1);
                }
            }
            let new_pods: Vec<Pod> = create_on.iter().map(|n| pod_for(&ds, n, &hash)).collect();
            if let Err(e) = pod_control::create_pods(
                &api,
                new_pods,
                &self.recorder,
                &ownership::reference::<DaemonSet>(&ds.metadata),
            )
            .await
            {
                self.expectations.forget(k);
                return Err(Error::Sync(format!("creating pods: {e}")));
            }
        }
        self.cleanup_history(&ds, &pods, &hash).await?;
        self.write_status(&ds, status).await
    }

    /// The DaemonSet's pods: its own, and orphans its selector matches (adopted).
    async fn claim(
        &self,
        ds: &DaemonSet,
        sel: &LabelSelector,
        api: &Api<Pod>,
    ) -> Result<Vec<Arc<Pod>>, Error> {
        let matches = |p: &Pod| sel.matches(&p.metadata.labels.clone().unwrap_or_default());
        ownership::claim::<DaemonSet, _>(api, &ds.metadata, self.pods.list(), matches, None).await
    }

    /// The old pods a rolling update deletes now, and the nodes that get a surge pod.
    fn rolling_update(
        &self,
        ds: &DaemonSet,
        pods: &[Arc<Pod>],
        nodes: &[Arc<Node>],
        hash: &str,
        min_ready: i64,
        now: i64,
    ) -> (Vec<String>, Vec<Arc<Pod>>) {
        let spec = ds.spec.clone().unwrap_or_default();
        let ru = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.clone())
            .unwrap_or_default();
        let desired = nodes
            .iter()
            .filter(|n| should_run(&spec.template, n).0)
            .count() as i32;
        let one = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1);
        let zero = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0);
        let max_unavailable =
            scaled_value(ru.max_unavailable.as_ref().unwrap_or(&one), desired, true).unwrap_or(1);
        let max_surge =
            scaled_value(ru.max_surge.as_ref().unwrap_or(&zero), desired, true).unwrap_or(0);
        let mut unavailable = 0;
        let mut allowed = Vec::new();
        let mut candidates = Vec::new();
        let mut surge_on = Vec::new();
        let mut surging = 0;
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            if !should_run(&spec.template, node).0 {
                continue;
            }
            let here: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| {
                    target_node(p).as_deref() == Some(name.as_str())
                        && p.metadata.deletion_timestamp.is_none()
                })
                .collect();
            let new = here.iter().find(|p| hash_of(p) == Some(hash));
            let old = here.iter().find(|p| hash_of(p) != Some(hash));
            match (old, new) {
                (None, None) => unavailable += 1,
                (None, Some(n)) => {
                    if !available(n, min_ready, now) {
                        unavailable += 1;
                    }
                }
                (Some(o), Some(n)) => {
                    // A surge pair: the old one goes once the new one is available.
                    if available(n, min_ready, now) {
                        allowed.push((*o).clone());
                    } else {
                        surging += 1;
                    }
                }
                (Some(o), None) => {
                    if max_surge > 0 {
                        if !available(o, min_ready, now) {
                            // Nothing to keep: replace at once.
                            surge_on.push(name.clone());
                            unavailable += 1;
                        } else {
                            candidates.push(name.clone());
                        }
                    } else if !available(o, min_ready, now) {
                        allowed.push((*o).clone());
                        unavailable += 1;
                    } else {
                        candidates.push(name.clone());
                    }
                }
            }
        }
        if max_surge > 0 {
            let room = (max_surge - surging).max(0) as usize;
            surge_on.extend(candidates.into_iter().take(room));
            return (surge_on, allowed);
        }
        let room = (max_unavailable - unavailable).max(0) as usize;
        for name in candidates.into_iter().take(room) {
            if let Some(o) = pods.iter().find(|p| {
                target_node(p).as_deref() == Some(name.as_str()) && hash_of(p) != Some(hash)
            }) {
                allowed.push(o.clone());
            }
        }
        (Vec::new(), allowed)
    }

    /// The hash of the current template's ControllerRevision (made if new).
    async fn current_revision(&self, ds: &DaemonSet) -> Result<String, Error> {
        let spec = ds.spec.clone().unwrap_or_default();
        revisions::current::<DaemonSet>(
            &self.cx.client,
            &self.revisions,
            &ds.metadata,
            &spec.template,
            ds.status.as_ref().and_then(|s| s.collision_count),
        )
        .await
    }

    /// Old revisions beyond `revisionHistoryLimit` that no pod uses go, oldest first.
    async fn cleanup_history(
        &self,
        ds: &DaemonSet,
        pods: &[Arc<Pod>],
        hash: &str,
    ) -> Result<(), Error> {
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let limit = ds
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let live: Vec<&str> = pods.iter().filter_map(|p| hash_of(p)).collect();
        let mut old: Vec<Arc<ControllerRevision>> = revisions::owned(&self.revisions, &ds.metadata)
            .into_iter()
            .filter(|r| revisions::hash_of(r).is_none_or(|h| h != hash && !live.contains(&h)))
            .collect();
        if old.len() <= limit {
            return Ok(());
        }
        old.sort_by_key(|r| r.revision);
        let api: Api<ControllerRevision> = Api::namespaced(self.cx.client.clone(), &ns);
        let excess = old.len() - limit;
        for r in old.into_iter().take(excess) {
            match api
                .delete(r.metadata.name.as_deref().unwrap_or_default(), None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn write_status(&self, ds: &DaemonSet, status: DaemonSetStatus) -> Result<(), Error> {
        let mut updated = ds.clone();
        updated.status = Some(status);
        crate::write_status(&self.cx.client, ds, &updated).await?;
        Ok(())
    }
}

/// A daemon pod of the template for `node`.
fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let tm = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = tm.labels.clone().unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(
        TEMPLATE_GENERATION.into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    add_daemon_tolerations(&mut pod_spec);
    pin_to_node(&mut pod_spec, node);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                ds.metadata.name.as_deref().unwrap_or_default()
            )),
            labels: Some(labels),
            annotations: tm.annotations.clone(),
            finalizers: tm.finalizers.clone(),
            owner_references: Some(vec![ownership::controller_ref::<DaemonSet>(&ds.metadata)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .unwrap()
    }

    fn template(spec: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json!({"spec": spec})).unwrap()
    }

    #[test]
    fn which_nodes_run_daemon_pods() {
        let t = template(json!({"containers": [], "nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            should_run(&t, &node("a", json!({"disk": "ssd"}), json!([]))),
            (true, true)
        );
        assert_eq!(
            should_run(&t, &node("b", json!({}), json!([]))),
            (false, false)
        );
        let t = template(json!({"containers": []}));
        // Control-plane taint not tolerated: no new pod, running ones stay.
        let cp = node(
            "cp",
            json!({}),
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
        );
        assert_eq!(should_run(&t, &cp), (false, true));
        // Untolerated NoExecute: none at all.
        let ne = node(
            "ne",
            json!({}),
            json!([{"key": "dedicated", "value": "x", "effect": "NoExecute"}]),
        );
        assert_eq!(should_run(&t, &ne), (false, false));
        // The automatic tolerations: an unschedulable or not-ready node still runs them.
        let un = node(
            "un",
            json!({}),
            json!([
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert_eq!(should_run(&t, &un), (true, true));
        let tol = template(
            json!({"containers": [], "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert_eq!(should_run(&tol, &cp), (true, true));
    }

    #[test]
    fn pods_are_pinned_to_their_node() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "fluentd", "namespace": "kube-system", "uid": "u", "generation": 2},
            "spec": {"selector": {"matchLabels": {"name": "fluentd"}},
                "template": {"metadata": {"labels": {"name": "fluentd"}}, "spec": {"containers": []}}},
        }))
        .unwrap();
        let p = pod_for(&ds, "node-7", "abc");
        assert_eq!(target_node(&p).as_deref(), Some("node-7"));
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels[REVISION_HASH], "abc");
        assert_eq!(labels[TEMPLATE_GENERATION], "2");
        assert_eq!(p.spec.unwrap().tolerations.unwrap().len(), 6);
    }
}
