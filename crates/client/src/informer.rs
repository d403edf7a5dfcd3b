//! Reflector + informer: keeps a local cache of one kind in step with the API server by
//! listing, then watching from the list's resourceVersion (relisting when the history
//! is gone), and tells handlers about every change. Controllers read the cache, never
//! the server, in their reconcile loops.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::StreamExt as _;

use crate::api::{Api, ListParams};

/// `namespace/name` (or `name` for cluster-scoped objects).
pub type ObjectKey = String;

/// The key of an object.
pub fn key_of<K: Object>(obj: &K) -> ObjectKey {
    let m = obj.meta();
    match m.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
        _ => m.name.clone().unwrap_or_default(),
    }
}

/// What an informer can cache: an object with Kubernetes object metadata, sent as JSON.
pub trait Object: Serialize + DeserializeOwned + PartialEq + Send + Sync + 'static {
    fn meta(&self) -> &ObjectMeta;
}

impl<K> Object for K
where
    K: Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + PartialEq + Send + Sync + 'static,
{
    fn meta(&self) -> &ObjectMeta {
        self.metadata()
    }
}

/// A k8s-openapi kind an informer can cache.
pub trait Kind:
    Resource
    + Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + PartialEq
    + Send
    + Sync
    + 'static
{
}

impl<K> Kind for K where
    K: Resource
        + Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + PartialEq
        + Send
        + Sync
        + 'static
{
}

/// A change the informer saw.
#[derive(Debug, Clone)]
pub enum Event<K> {
    Added(Arc<K>),
    /// Old and new.
    Updated(Arc<K>, Arc<K>),
    Deleted(Arc<K>),
}

/// The local cache. Cheap to clone.
pub struct Store<K> {
    objects: Arc<RwLock<BTreeMap<ObjectKey, Arc<K>>>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            objects: self.objects.clone(),
            synced: self.synced.clone(),
        }
    }
}

impl<K> Store<K> {
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.objects.read().expect("store lock").get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.objects
            .read()
            .expect("store lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.objects.read().expect("store lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first list has landed.
    pub fn has_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }
}

type Handler<K> = Box<dyn Fn(&Event<K>) + Send + Sync>;

/// An informer for one kind (in one namespace or all).
pub struct Informer<K> {
    api: Api<K>,
    params: ListParams,
    store: Store<K>,
    handlers: Vec<Handler<K>>,
}

impl<K: Object> Informer<K> {
    pub fn new(api: Api<K>, params: ListParams) -> Self {
        Informer {
            api,
            params,
            store: Store {
                objects: Default::default(),
                synced: Default::default(),
            },
            handlers: Vec::new(),
        }
    }

    /// The cache this informer fills.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Calls `f` for every change (before `run` starts).
    pub fn on_event(&mut self, f: impl Fn(&Event<K>) + Send + Sync + 'static) {
        self.handlers.push(Box::new(f));
    }

    fn emit(&self, e: Event<K>) {
        for h in &self.handlers {
            h(&e);
        }
    }

    /// Lists and replaces the cache, telling handlers what changed; returns the
    /// resourceVersion to watch from.
    async fn relist(&self) -> Result<String, crate::Error> {
        let mut items = BTreeMap::new();
        let mut p = self.params.clone();
        p.limit = Some(500);
        let rv = loop {
            let page = self.api.list(&p).await?;
            for o in page.items {
                items.insert(key_of(&o), Arc::new(o));
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => p.continue_token = Some(c),
                None => break page.metadata.resource_version.unwrap_or_default(),
            }
        };
        let old = std::mem::replace(
            &mut *self.store.objects.write().expect("store lock"),
            items.clone(),
        );
        for (k, o) in &items {
            match old.get(k) {
                None => self.emit(Event::Added(o.clone())),
                Some(prev) if prev.as_ref() != o.as_ref() => {
                    self.emit(Event::Updated(prev.clone(), o.clone()))
                }
                Some(_) => {}
            }
        }
        for (k, o) in old {
            if !items.contains_key(&k) {
                self.emit(Event::Deleted(o));
            }
        }
        self.store
            .synced
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(rv)
    }

    /// Runs until the task is dropped: list, watch, relist on 410, back off on errors.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut rv = match self.relist().await {
                Ok(rv) => rv,
                Err(e) => {
                    tracing::warn!(resource = self.api.plural(), "list failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            // Watch, resuming from the last seen resourceVersion after a stream ends.
            'watch: loop {
                let mut p = self.params.clone();
                p.resource_version = Some(rv.clone());
                p.bookmarks = true;
                p.timeout_seconds = Some(rand::random_range(300..600));
                let mut stream = match self.api.watch(&p).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(resource = self.api.plural(), "watch failed: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue 'watch;
                    }
                };
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                            if let Some(v) = o.meta().resource_version.clone() {
                                rv = v;
                            }
                            let o = Arc::new(o);
                            let prev = self
                                .store
                                .objects
                                .write()
                                .expect("store lock")
                                .insert(key_of(o.as_ref()), o.clone());
                            match prev {
                                Some(p) => self.emit(Event::Updated(p, o)),
                                None => self.emit(Event::Added(o)),
                            }
                        }
                        Ok(WatchEvent::Deleted(o)) => {
                            if let Some(v) = o.meta().resource_version.clone() {
                                rv = v;
                            }
                            let prev = self
                                .store
                                .objects
                                .write()
                                .expect("store lock")
                                .remove(&key_of(&o));
                            self.emit(Event::Deleted(prev.unwrap_or_else(|| Arc::new(o))));
                        }
                        Ok(WatchEvent::Bookmark {
                            resource_version, ..
                        }) => rv = resource_version,
                        Ok(WatchEvent::ErrorStatus(s)) if s.code == Some(410) => break 'watch,
                        Ok(WatchEvent::ErrorStatus(s)) => {
                            tracing::warn!(
                                resource = self.api.plural(),
                                "watch error: {:?}",
                                s.message
                            );
                            break;
                        }
                        Ok(WatchEvent::ErrorOther(_)) => break,
                        Err(e) => {
                            tracing::debug!(
                                resource = self.api.plural(),
                                "watch stream ended: {e}"
                            );
                            break;
                        }
                    }
                }
            }
        }
    }
}
