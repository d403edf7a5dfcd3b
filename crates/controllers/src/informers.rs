//! One informer per kind, shared by every controller that watches it (upstream's shared
//! informer factory): controllers ask for an informer, add handlers and keep its store;
//! [`InformerFactory::start`] then runs each once.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use ferrokube_client::informer::Kind;
use ferrokube_client::{Api, Client, Informer, ListParams};

type RunFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An informer of some kind, waiting to be started.
struct Entry {
    informer: Box<dyn Any + Send>,
    run: fn(Box<dyn Any + Send>) -> RunFuture,
    synced: Box<dyn Fn() -> bool + Send + Sync>,
}

/// The informers of one controller-manager, across all namespaces.
pub struct InformerFactory {
    client: Client,
    informers: HashMap<TypeId, Entry>,
}

fn run_informer<K: Kind>(informer: Box<dyn Any + Send>) -> RunFuture {
    let informer = informer
        .downcast::<Informer<K>>()
        .expect("an entry holds the informer of its own kind");
    Box::pin(informer.run())
}

impl InformerFactory {
    pub fn new(client: Client) -> Self {
        InformerFactory {
            client,
            informers: HashMap::new(),
        }
    }

    /// The informer of kind `K` (made on first use).
    pub fn informer<K: Kind>(&mut self) -> &mut Informer<K> {
        let client = self.client.clone();
        let entry = self.informers.entry(TypeId::of::<K>()).or_insert_with(|| {
            let informer = Informer::new(Api::<K>::all(client), ListParams::default());
            let store = informer.store();
            Entry {
                informer: Box::new(informer),
                run: run_informer::<K>,
                synced: Box::new(move || store.has_synced()),
            }
        });
        entry
            .informer
            .downcast_mut::<Informer<K>>()
            .expect("an entry holds the informer of its own kind")
    }

    /// Runs every informer asked for, each in its own task.
    pub fn start(self) -> Started {
        let mut tasks = Vec::new();
        let mut synced = Vec::new();
        for e in self.informers.into_values() {
            tasks.push(tokio::spawn((e.run)(e.informer)));
            synced.push(e.synced);
        }
        Started { tasks, synced }
    }
}

/// Running informers; dropping this stops them.
pub struct Started {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    synced: Vec<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl Started {
    /// Whether every cache holds its first full list.
    pub fn has_synced(&self) -> bool {
        self.synced.iter().all(|s| s())
    }

    /// Waits until every cache holds its first full list (controllers must not act on
    /// a partial cache: they would create what already exists or miss what to fix).
    pub async fn wait_for_cache_sync(&self) {
        while !self.has_synced() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
