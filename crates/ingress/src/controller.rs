//! The controller loop: follows Ingresses, IngressClasses, Services, EndpointSlices and
//! Secrets; after each burst of changes (and every 30 s) rebuilds the proxy's routing table and
//! certificates from the Ingresses of its classes, and writes its status addresses
//! into their `status.loadBalancer.ingress` (merged with other replicas' addresses, and
//! taken out of Ingresses it no longer serves and, at shutdown, of every one).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferrokube_client::informer::{Informer, Store};
use ferrokube_client::{Api, Client, ListParams};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressClass, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};

use crate::backends::Upstreams;
use crate::certs::{Certificates, KeyCache};
use crate::class::Classes;
use crate::proxy::{Proxy, Table};
use crate::routes::Routes;

/// How often the controller syncs without a change.
const RESYNC: Duration = Duration::from_secs(30);

/// What the controller answers to and reports.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `spec.controller` of the IngressClasses served.
    pub controller: String,
    /// The addresses (IPs or host names) written into served Ingresses' status.
    pub status_addresses: Vec<String>,
}

/// The controller: fills a [`Proxy`] and writes Ingress status.
pub struct Controller {
    proxy: Arc<Proxy>,
    opts: Options,
    ready: AtomicBool,
}

struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
}

impl Stores {
    fn synced(&self) -> bool {
        self.ingresses.has_synced()
            && self.classes.has_synced()
            && self.services.has_synced()
            && self.slices.has_synced()
            && self.secrets.has_synced()
    }
}

impl Controller {
    pub fn new(proxy: Arc<Proxy>, opts: Options) -> Arc<Controller> {
        Arc::new(Controller {
            proxy,
            opts,
            ready: AtomicBool::new(false),
        })
    }

    /// Whether the first routing table is in.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Follows the API until the task is dropped.
    pub async fn follow(self: Arc<Self>, client: Client) {
        let dirty = Arc::new(tokio::sync::Notify::new());
        let stores = Stores {
            ingresses: spawn_informer::<Ingress>(&client, &dirty),
            classes: spawn_informer::<IngressClass>(&client, &dirty),
            services: spawn_informer::<Service>(&client, &dirty),
            slices: spawn_informer::<EndpointSlice>(&client, &dirty),
            secrets: spawn_informer::<Secret>(&client, &dirty),
        };
        let mut reported = BTreeSet::new();
        let mut keys = KeyCache::default();
        loop {
            if !stores.synced() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let served = self.sync(&stores, &mut reported, &mut keys);
            self.ready.store(true, Ordering::Release);
            self.write_status(&client, &stores.ingresses.list(), &served)
                .await;
            // A change, or a periodic pass (status writes that failed are retried).
            let _ = tokio::time::timeout(RESYNC, dirty.notified()).await;
            // Changes come in bursts (a Service, then its slices): take them together.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rebuilds the table and certificates; returns the keys of the served Ingresses.
    fn sync(
        &self,
        stores: &Stores,
        reported: &mut BTreeSet<String>,
        keys: &mut KeyCache,
    ) -> BTreeSet<String> {
        let classes = stores.classes.list();
        let classes = Classes::new(&self.opts.controller, classes.iter().map(|c| c.as_ref()));
        let all = stores.ingresses.list();
        let mut served: Vec<&Ingress> = all
            .iter()
            .map(|i| i.as_ref())
            .filter(|i| classes.serves(i))
            .collect();
        served.sort_by_key(|i| {
            (
                i.metadata.creation_timestamp.clone().map(|t| t.0),
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            )
        });
        let routes = Routes::build(served.iter().copied());
        let slices = stores.slices.list();
        let upstreams = Upstreams::build(
            routes.backends(),
            |ns, name| stores.services.get(&format!("{ns}/{name}")),
            &slices,
            &self.proxy.table().upstreams,
        );
        let (certs, problems) = Certificates::build(
            served.iter().copied(),
            |ns, name| stores.secrets.get(&format!("{ns}/{name}")),
            keys,
        );
        // Each problem once, while it lasts.
        let now: BTreeSet<String> = problems.iter().map(ToString::to_string).collect();
        for p in now.difference(reported) {
            tracing::warn!("TLS: {p}; serving the default certificate in its place");
        }
        *reported = now;
        tracing::debug!(ingresses = served.len(), "routing table rebuilt");
        let keys = served
            .iter()
            .map(|i| ferrokube_client::informer::key_of(*i))
            .collect();
        self.proxy.certs().set(certs);
        self.proxy.set_table(Table { routes, upstreams });
        keys
    }

    /// Puts this controller's addresses into served Ingresses' status and takes them
    /// out of the others'.
    async fn write_status(&self, client: &Client, all: &[Arc<Ingress>], served: &BTreeSet<String>) {
        if self.opts.status_addresses.is_empty() {
            return;
        }
        for ing in all {
            let key = ferrokube_client::informer::key_of(ing.as_ref());
            let mine = served.contains(&key);
            if let Err(e) = self.set_addresses(client, ing, mine).await {
                tracing::warn!(ingress = %key, "updating status: {e}");
            }
        }
    }

    async fn set_addresses(
        &self,
        client: &Client,
        ing: &Ingress,
        present: bool,
    ) -> Result<(), ferrokube_client::Error> {
        let current = addresses(ing);
        let mut wanted = current.clone();
        for a in &self.opts.status_addresses {
            if present {
                wanted.insert(a.clone());
            } else {
                wanted.remove(a);
            }
        }
        if wanted == current {
            return Ok(());
        }
        let mut updated = ing.clone();
        updated.status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: (!wanted.is_empty()).then(|| wanted.iter().map(|a| lb_entry(a)).collect()),
            }),
        });
        let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
        let name = ing.metadata.name.as_deref().unwrap_or_default();
        match Api::<Ingress>::namespaced(client.clone(), ns)
            .replace_status(name, &updated)
            .await
        {
            // A newer version is on its way to the cache; the next sync tries again.
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Takes this controller's addresses out of every Ingress (at shutdown).
    pub async fn release(&self, client: &Client) {
        if self.opts.status_addresses.is_empty() {
            return;
        }
        let api = Api::<Ingress>::all(client.clone());
        let Ok(list) = api.list(&ListParams::default()).await else {
            return;
        };
        for ing in list.items {
            if let Err(e) = self.set_addresses(client, &ing, false).await {
                tracing::warn!("clearing status: {e}");
            }
        }
    }
}

fn spawn_informer<K>(client: &Client, dirty: &Arc<tokio::sync::Notify>) -> Store<K>
where
    K: ferrokube_client::informer::Kind,
{
    let mut inf = Informer::new(Api::<K>::all(client.clone()), ListParams::default());
    let d = dirty.clone();
    inf.on_event(move |_| d.notify_one());
    let store = inf.store();
    tokio::spawn(inf.run());
    store
}

/// The addresses in an Ingress's status.
fn addresses(ing: &Ingress) -> BTreeSet<String> {
    ing.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|e| e.ip.clone().or_else(|| e.hostname.clone()))
        .collect()
}

/// A status entry: an IP address or a host name.
fn lb_entry(a: &str) -> IngressLoadBalancerIngress {
    if a.parse::<std::net::IpAddr>().is_ok() {
        IngressLoadBalancerIngress {
            ip: Some(a.to_string()),
            ..Default::default()
        }
    } else {
        IngressLoadBalancerIngress {
            hostname: Some(a.to_string()),
            ..Default::default()
        }
    }
}
