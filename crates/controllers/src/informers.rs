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
        let entry = self
            .informers
            .entry(TypeId::of::<K>())
            .or_insert_with(|| Entry {
                informer: Box::new(Informer::new(Api::<K>::all(client), ListParams::default())),
                run: run_informer::<K>,
            });
        entry
            .informer
            .downcast_mut::<Informer<K>>()
            .expect("an entry holds the informer of its own kind")
    }

    /// Runs every informer asked for, each in its own task.
    pub fn start(self) -> Vec<tokio::task::JoinHandle<()>> {
        self.informers
            .into_values()
            .map(|e| tokio::spawn((e.run)(e.informer)))
            .collect()
    }
}
