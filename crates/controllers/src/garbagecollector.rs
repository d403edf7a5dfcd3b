//! The garbage collector: deletes objects whose owners are gone, and carries out the
//! three ways of deleting an owner (upstream's `garbagecollector`).
//!
//! It watches every resource the API server serves that can be listed, watched and
//! deleted (found by discovery, again every 30 s so custom resources join), keeping a
//! graph of `ownerReferences` from each object's metadata. Objects whose graph changes
//! matter go on a queue; a worker then decides, for one object:
//!
//! - being deleted with the `orphan` finalizer: remove the references to it from its
//!   dependents, then the finalizer (`--cascade=orphan`);
//! - being deleted with the `foregroundDeletion` finalizer: its dependents that block
//!   it (`blockOwnerDeletion`) are deleted; when none is left, the finalizer goes
//!   (`--cascade=foreground`);
//! - otherwise, if none of its owners exists any more (checked against the server, by
//!   UID), it is deleted (`--cascade=background`, the default); owners that exist but
//!   are being deleted in the foreground make it go in the foreground too; references
//!   to owners that are gone are dropped while another owner remains.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferrokube_client::dynamic::{self, ApiResource, ObjectMetadata};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Informer, ListParams, Patch, WorkQueue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, OwnerReference, Preconditions,
};
use serde_json::json;

use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "garbage_collector_attempt_to_delete";
/// How often discovery runs again (upstream's resync of monitored resources).
const DISCOVERY_PERIOD: Duration = Duration::from_secs(30);
/// Workers (upstream's `--concurrent-gc-syncs` defaults to 20; 2 cores here).
const WORKERS: usize = 5;
const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// One object of the graph.
#[derive(Debug, Clone)]
struct Node {
    /// The resource it was seen through.
    resource: Arc<ApiResource>,
    namespace: String,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn has(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.has(FOREGROUND)
    }
}

/// Objects by UID and, for every UID named as an owner, the UIDs naming it.
#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    fn unlink(&mut self, uid: &str, owners: &[OwnerReference]) {
        for o in owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
    }

    /// Records an object seen added or changed; answers the UIDs to look at again.
    fn upsert(&mut self, uid: &str, node: Node) -> Vec<String> {
        let mut todo = Vec::new();
        let old = self.nodes.remove(uid);
        if let Some(old) = &old {
            self.unlink(uid, &old.owners);
            // An owner waiting for its blocking dependents may now be free.
            for o in &old.owners {
                if self
                    .nodes
                    .get(&o.uid)
                    .is_some_and(Node::deleting_dependents)
                {
                    todo.push(o.uid.clone());
                }
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.to_string());
        }
        let owners_changed = old.as_ref().is_none_or(|o| o.owners != node.owners);
        let deletion_changed = old
            .as_ref()
            .is_none_or(|o| o.deleting != node.deleting || o.finalizers != node.finalizers);
        if !node.owners.is_empty() && (owners_changed || deletion_changed) {
            todo.push(uid.to_string());
        }
        if node.deleting && (node.has(ORPHAN) || node.has(FOREGROUND)) && deletion_changed {
            todo.push(uid.to_string());
            if node.has(FOREGROUND) {
                todo.extend(self.dependents.get(uid).into_iter().flatten().cloned());
            }
        }
        self.nodes.insert(uid.to_string(), node);
        todo
    }

    /// Forgets a deleted object; answers its dependents (their owner is gone) and its
    /// owners that wait for it.
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        self.unlink(uid, &node.owners);
        let mut todo: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        todo.extend(
            node.owners
                .iter()
                .filter(|o| {
                    self.nodes
                        .get(&o.uid)
                        .is_some_and(Node::deleting_dependents)
                })
                .map(|o| o.uid.clone()),
        );
        todo
    }
}

struct Gc {
    cx: Context,
    graph: Mutex<Graph>,
    queue: WorkQueue<String>,
    /// Every resource discovery found (all versions, preferred first), for owner lookups.
    resources: RwLock<Vec<ApiResource>>,
    /// Objects with an owner of a kind not served (yet): looked at again when
    /// discovery finds new resources.
    unresolved: Mutex<BTreeSet<String>>,
}

/// Starts the collector: its informers are its own (one per discovered resource).
pub fn start(cx: &Context, _informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let gc = Arc::new(Gc {
        cx: cx.clone(),
        graph: Mutex::default(),
        queue: queue.clone(),
        resources: RwLock::default(),
        unresolved: Mutex::default(),
    });
    let counts_queue = queue.clone();
    Ok(Runner {
        queue_name: QUEUE,
        counts: Box::new(move || counts_queue.counts()),
        run: Box::pin(gc.run()),
    })
}

/// Whether the collector watches a resource: it can be listed, watched and deleted, and
/// is not an Event (events are never owners, and there are many).
fn collectable(r: &ApiResource) -> bool {
    r.supports(&["list", "watch", "delete"]) && r.plural != "events"
}

impl Gc {
    async fn run(self: Arc<Self>) {
        let mut monitors: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
        let mut workers = None;
        loop {
            match dynamic::discover(&self.cx.client).await {
                Ok(all) => {
                    let watched: Vec<ApiResource> = dynamic::preferred(&all)
                        .into_iter()
                        .filter(collectable)
                        .collect();
                    *self.resources.write().expect("resources lock") = all;
                    let mut stores = Vec::new();
                    for r in &watched {
                        let id = (r.group.clone(), r.plural.clone());
                        if let std::collections::hash_map::Entry::Vacant(e) = monitors.entry(id) {
                            let (task, store) = self.monitor(Arc::new(r.clone()));
                            e.insert(task);
                            stores.push(store);
                        }
                    }
                    // Resources no longer served (a custom resource's definition gone):
                    // stop watching and forget their objects.
                    let gone: Vec<(String, String)> = monitors
                        .keys()
                        .filter(|id| !watched.iter().any(|r| r.group == id.0 && r.plural == id.1))
                        .cloned()
                        .collect();
                    for id in gone {
                        if let Some(t) = monitors.remove(&id) {
                            t.abort();
                        }
                        self.forget_resource(&id);
                    }
                    if !stores.is_empty() && workers.is_some() {
                        // New kinds: once their objects are in the graph, look again at
                        // the objects whose owners were of an unknown kind.
                        for _ in 0..100 {
                            if stores.iter().all(|s| s.has_synced()) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let todo = std::mem::take(&mut *self.unresolved.lock().expect("lock"));
                        for uid in todo {
                            self.queue.add(uid);
                        }
                    }
                    if workers.is_none() {
                        // Start on a full graph (bounded: owners missing from it are
                        // checked against the server anyway).
                        for _ in 0..600 {
                            if stores.iter().all(|s| s.has_synced()) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        tracing::info!(resources = monitors.len(), "garbage collector synced");
                        let gc = self.clone();
                        workers = Some(tokio::spawn(crate::work(
                            QUEUE,
                            self.queue.clone(),
                            WORKERS,
                            move |uid| {
                                let gc = gc.clone();
                                async move { gc.attempt_to_delete(&uid).await }
                            },
                        )));
                    }
                }
                Err(e) => tracing::warn!("garbage collector discovery failed: {e}"),
            }
            tokio::time::sleep(DISCOVERY_PERIOD).await;
        }
    }

    /// Watches one resource into the graph.
    fn monitor(
        self: &Arc<Self>,
        resource: Arc<ApiResource>,
    ) -> (
        tokio::task::JoinHandle<()>,
        ferrokube_client::Store<ObjectMetadata>,
    ) {
        let api: Api<ObjectMetadata> = Api::dynamic(self.cx.client.clone(), &resource, None);
        let mut informer = Informer::new(api, ListParams::default());
        let gc = self.clone();
        informer.on_event(move |e| {
            let todo = {
                let mut g = gc.graph.lock().expect("graph lock");
                match e {
                    Event::Added(o) | Event::Updated(_, o) => {
                        let m = &o.metadata;
                        let node = Node {
                            resource: resource.clone(),
                            namespace: m.namespace.clone().unwrap_or_default(),
                            name: m.name.clone().unwrap_or_default(),
                            owners: m.owner_references.clone().unwrap_or_default(),
                            deleting: m.deletion_timestamp.is_some(),
                            finalizers: m.finalizers.clone().unwrap_or_default(),
                        };
                        g.upsert(m.uid.as_deref().unwrap_or_default(), node)
                    }
                    Event::Deleted(o) => g.remove(o.metadata.uid.as_deref().unwrap_or_default()),
                }
            };
            for uid in todo {
                gc.queue.add(uid);
            }
        });
        let store = informer.store();
        (tokio::spawn(informer.run()), store)
    }

    fn forget_resource(&self, id: &(String, String)) {
        let todo: Vec<String> = {
            let mut g = self.graph.lock().expect("graph lock");
            let uids: Vec<String> = g
                .nodes
                .iter()
                .filter(|(_, n)| n.resource.group == id.0 && n.resource.plural == id.1)
                .map(|(u, _)| u.clone())
                .collect();
            uids.iter().flat_map(|u| g.remove(u)).collect()
        };
        for uid in todo {
            self.queue.add(uid);
        }
    }

    fn api(&self, node: &Node) -> Api<ObjectMetadata> {
        let ns = (node.resource.namespaced).then_some(node.namespace.as_str());
        Api::dynamic(self.cx.client.clone(), &node.resource, ns)
    }

    /// The one decision for one object (see the module's documentation).
    async fn attempt_to_delete(&self, uid: &str) -> Result<(), Error> {
        let Some(node) = self
            .graph
            .lock()
            .expect("graph lock")
            .nodes
            .get(uid)
            .cloned()
        else {
            return Ok(());
        };
        if node.deleting {
            if node.has(ORPHAN) {
                return self.orphan_dependents(uid, &node).await;
            }
            if node.has(FOREGROUND) {
                return self.delete_dependents(uid, &node).await;
            }
            return Ok(());
        }
        if node.owners.is_empty() {
            return Ok(());
        }
        let mut solid = Vec::new();
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        for r in &node.owners {
            match self.owner_state(uid, &node, r).await? {
                None => dangling.push(r.clone()),
                Some(owner) => {
                    if owner.deleting
                        && owner.finalizers.iter().any(|f| f == FOREGROUND)
                        && r.block_owner_deletion == Some(true)
                    {
                        waiting.push(r.clone())
                    } else {
                        solid.push(r.clone())
                    }
                }
            }
        }
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(());
            }
            // Drop the references to owners that are gone; stop blocking owners that
            // wait for their dependents (this one stays for its other owners).
            let owners: Vec<OwnerReference> = node
                .owners
                .iter()
                .filter(|r| !dangling.iter().any(|d| d.uid == r.uid))
                .map(|r| {
                    let mut r = r.clone();
                    if waiting.iter().any(|w| w.uid == r.uid) {
                        r.block_owner_deletion = Some(false);
                    }
                    r
                })
                .collect();
            return self.set_owners(uid, &node, owners).await;
        }
        let has_dependents = self
            .graph
            .lock()
            .expect("graph lock")
            .dependents
            .get(uid)
            .is_some_and(|d| !d.is_empty());
        let policy = if !waiting.is_empty() && has_dependents {
            "Foreground"
        } else if node.has(ORPHAN) {
            "Orphan"
        } else if node.has(FOREGROUND) {
            "Foreground"
        } else {
            "Background"
        };
        tracing::info!(
            kind = node.resource.kind,
            namespace = node.namespace,
            name = node.name,
            policy,
            "deleting object whose owners are gone"
        );
        self.delete(uid, &node, policy).await
    }

    /// An owner as the server has it now (`None`: gone, or another object under that
    /// name). The graph answers for owners it holds; the rest are read from the server.
    async fn owner_state(
        &self,
        dependent_uid: &str,
        dependent: &Node,
        r: &OwnerReference,
    ) -> Result<Option<OwnerNow>, Error> {
        let group = dynamic::group_of(&r.api_version);
        if let Some(o) = self.graph.lock().expect("graph lock").nodes.get(&r.uid) {
            let same_ns = !o.resource.namespaced || o.namespace == dependent.namespace;
            if o.resource.kind == r.kind && o.resource.group == group && o.name == r.name && same_ns
            {
                return Ok(Some(OwnerNow {
                    deleting: o.deleting,
                    finalizers: o.finalizers.clone(),
                }));
            }
        }
        let resource = self
            .resources
            .read()
            .expect("resources lock")
            .iter()
            .find(|x| x.group == group && x.kind == r.kind)
            .cloned();
        let Some(resource) = resource else {
            self.unresolved
                .lock()
                .expect("lock")
                .insert(dependent_uid.to_string());
            return Err(Error::Sync(format!(
                "cannot look up owner {}/{} {:?}: the server serves no such kind",
                r.api_version, r.kind, r.name
            )));
        };
        let ns = if resource.namespaced {
            if dependent.namespace.is_empty() {
                // A cluster-scoped object cannot have a namespaced owner.
                tracing::warn!(
                    kind = dependent.resource.kind,
                    name = dependent.name,
                    owner_kind = r.kind,
                    "ownerRef names a namespaced owner of a cluster-scoped object: treated as absent"
                );
                return Ok(None);
            }
            Some(dependent.namespace.as_str())
        } else {
            None
        };
        let api: Api<ObjectMetadata> = Api::dynamic(self.cx.client.clone(), &resource, ns);
        Ok(api
            .get_opt(&r.name)
            .await?
            .filter(|o| o.metadata.uid.as_deref() == Some(r.uid.as_str()))
            .map(|o| OwnerNow {
                deleting: o.metadata.deletion_timestamp.is_some(),
                finalizers: o.metadata.finalizers.unwrap_or_default(),
            }))
    }

    async fn delete(&self, uid: &str, node: &Node, policy: &str) -> Result<(), Error> {
        let opts = DeleteOptions {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            propagation_policy: Some(policy.to_string()),
            ..Default::default()
        };
        match self.api(node).delete(&node.name, Some(&opts)).await {
            Ok(_) => Ok(()),
            // Gone already, or another object under the name.
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `owners` as the object's ownerReferences, if they still are what the
    /// graph holds (a JSON patch that tests them first: no concurrent change is lost).
    async fn set_owners(
        &self,
        uid: &str,
        node: &Node,
        owners: Vec<OwnerReference>,
    ) -> Result<(), Error> {
        let mut ops = vec![
            json!({"op": "test", "path": "/metadata/uid", "value": uid}),
            json!({"op": "test", "path": "/metadata/ownerReferences", "value": node.owners}),
        ];
        ops.push(if owners.is_empty() {
            json!({"op": "remove", "path": "/metadata/ownerReferences"})
        } else {
            json!({"op": "replace", "path": "/metadata/ownerReferences", "value": owners})
        });
        self.patch(node, ops).await
    }

    async fn remove_finalizer(&self, uid: &str, node: &Node, finalizer: &str) -> Result<(), Error> {
        let rest: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let ops = vec![
            json!({"op": "test", "path": "/metadata/uid", "value": uid}),
            json!({"op": "test", "path": "/metadata/finalizers", "value": node.finalizers}),
            json!({"op": "replace", "path": "/metadata/finalizers", "value": rest}),
        ];
        self.patch(node, ops).await
    }

    async fn patch(&self, node: &Node, ops: Vec<serde_json::Value>) -> Result<(), Error> {
        match self
            .api(node)
            .patch(&node.name, &Patch::Json(serde_json::Value::Array(ops)))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            // A failed test: the object changed; the informer brings the change and
            // the key comes back with the new state.
            Err(e) => Err(e.into()),
        }
    }

    /// `--cascade=orphan`: dependents lose their reference to the object, then the
    /// `orphan` finalizer goes (and with it, the object).
    async fn orphan_dependents(&self, uid: &str, node: &Node) -> Result<(), Error> {
        let dependents: Vec<(String, Node)> = {
            let g = self.graph.lock().expect("graph lock");
            g.dependents
                .get(uid)
                .into_iter()
                .flatten()
                .filter_map(|d| g.nodes.get(d).map(|n| (d.clone(), n.clone())))
                .collect()
        };
        for (duid, d) in dependents {
            let owners: Vec<OwnerReference> =
                d.owners.iter().filter(|r| r.uid != uid).cloned().collect();
            self.set_owners(&duid, &d, owners).await?;
        }
        self.remove_finalizer(uid, node, ORPHAN).await
    }

    /// `--cascade=foreground`: the dependents that block the object are deleted; when
    /// none is left, the `foregroundDeletion` finalizer goes.
    async fn delete_dependents(&self, uid: &str, node: &Node) -> Result<(), Error> {
        let blocking: Vec<(String, bool)> = {
            let g = self.graph.lock().expect("graph lock");
            g.dependents
                .get(uid)
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    let n = g.nodes.get(d)?;
                    n.owners
                        .iter()
                        .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
                        .then(|| (d.clone(), n.deleting_dependents()))
                })
                .collect()
        };
        if blocking.is_empty() {
            return self.remove_finalizer(uid, node, FOREGROUND).await;
        }
        // Each blocking dependent sees this owner waiting and goes; their deletion
        // events bring this object back.
        for (d, deleting_dependents) in blocking {
            if !deleting_dependents {
                self.queue.add(d);
            }
        }
        Ok(())
    }
}

/// What the collector needs to know of an existing owner.
struct OwnerNow {
    deleting: bool,
    finalizers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(owners: &[(&str, bool)], deleting: bool, finalizers: &[&str]) -> Node {
        Node {
            resource: Arc::new(ApiResource {
                group: "apps".into(),
                version: "v1".into(),
                plural: "replicasets".into(),
                kind: "ReplicaSet".into(),
                namespaced: true,
                verbs: vec![],
            }),
            namespace: "default".into(),
            name: "x".into(),
            owners: owners
                .iter()
                .map(|(u, block)| OwnerReference {
                    uid: u.to_string(),
                    block_owner_deletion: Some(*block),
                    ..Default::default()
                })
                .collect(),
            deleting,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn graph_tells_what_to_look_at() {
        let mut g = Graph::default();
        // An owner, and a dependent of it: the dependent is checked once.
        assert!(g.upsert("rs", node(&[], false, &[])).is_empty());
        assert_eq!(
            g.upsert("pod", node(&[("rs", true)], false, &[])),
            vec!["pod"]
        );
        assert!(g
            .upsert("pod", node(&[("rs", true)], false, &[]))
            .is_empty());
        // The owner deleted in the foreground: it and its dependents.
        assert_eq!(
            g.upsert("rs", node(&[], true, &[FOREGROUND])),
            vec!["rs", "pod"]
        );
        // The dependent gone: its waiting owner is looked at again.
        assert_eq!(g.remove("pod"), vec!["rs"]);
        assert!(!g.dependents.contains_key("rs"));
        // The owner gone: its dependents are.
        g.upsert("cm", node(&[("rs", false)], false, &[]));
        assert_eq!(g.remove("rs"), vec!["cm"]);
        // Dependents of an owner never seen are still indexed.
        assert_eq!(g.dependents["rs"].len(), 1);
        // An orphaning owner is looked at when it starts being deleted.
        assert!(g.upsert("o", node(&[], false, &[])).is_empty());
        assert_eq!(g.upsert("o", node(&[], true, &[ORPHAN])), vec!["o"]);
    }

    #[test]
    fn only_listable_watchable_deletable_non_events() {
        let r = |plural: &str, verbs: &[&str]| ApiResource {
            group: String::new(),
            version: "v1".into(),
            plural: plural.into(),
            kind: String::new(),
            namespaced: true,
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
        };
        assert!(collectable(&r("pods", &["list", "watch", "delete", "get"])));
        assert!(!collectable(&r("events", &["list", "watch", "delete"])));
        assert!(!collectable(&r("bindings", &["create"])));
    }
}
