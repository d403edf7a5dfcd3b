//! The controllers of `kube-controller-manager`. Every one has the same shape:
//! informers fill local caches and turn changes into keys on a rate-limited
//! [`WorkQueue`]; workers take keys and run an idempotent sync that reads the caches and
//! writes through the API; a failed sync is retried with back-off.
//!
//! - [`serviceaccount`]: the `default` ServiceAccount in every active namespace.
//! - [`root_ca_publisher`]: the `kube-root-ca.crt` ConfigMap (the cluster's CA bundle)
//!   in every namespace.

pub mod informers;
pub mod root_ca_publisher;
pub mod serviceaccount;

use std::future::Future;
use std::sync::Arc;

use ferrokube_client::{Client, QueueCounts, WorkQueue};

pub use informers::InformerFactory;

/// What can go wrong in a sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ferrokube_client::Error),
}

/// What controllers share.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    /// The cluster's CA bundle (`--root-ca-file`), published in every namespace.
    pub root_ca: Option<Arc<str>>,
}

/// A controller kube-controller-manager can run: its upstream name, the names it is
/// also known by, and how to start it.
pub struct Descriptor {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// Registers the controller's informers and returns its run loop.
    pub start: fn(&Context, &mut InformerFactory) -> Result<Runner, String>,
}

/// Reads a work-queue's counters.
pub type CountsFn = Box<dyn Fn() -> QueueCounts + Send + Sync>;

/// A started controller's run loop and its queue (for metrics).
pub struct Runner {
    pub queue_name: &'static str,
    pub counts: CountsFn,
    pub run: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Every controller, by upstream's names (`--controllers`).
pub const CONTROLLERS: &[Descriptor] = &[
    Descriptor {
        name: "root-ca-certificate-publisher-controller",
        aliases: &["root-ca-cert-publisher"],
        start: root_ca_publisher::start,
    },
    Descriptor {
        name: "serviceaccount-controller",
        aliases: &["serviceaccount"],
        start: serviceaccount::start,
    },
];

/// The controllers `--controllers` selects: `*` is every controller on by default (all
/// of them here), `name` enables one, `-name` disables one; names may be upstream's
/// aliases. Unknown names are an error, as upstream.
pub fn select(flag: &[String]) -> Result<Vec<&'static Descriptor>, String> {
    let find = |n: &str| {
        CONTROLLERS
            .iter()
            .find(|d| d.name == n || d.aliases.contains(&n))
            .ok_or_else(|| format!("{n:?} is not in the list of known controllers"))
    };
    let mut star = false;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for item in flag.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if item == "*" {
            star = true;
        } else if let Some(n) = item.strip_prefix('-') {
            off.push(find(n)?.name);
        } else {
            on.push(find(item)?.name);
        }
    }
    Ok(CONTROLLERS
        .iter()
        .filter(|d| !off.contains(&d.name) && (star || on.contains(&d.name)))
        .collect())
}

impl Runner {
    /// The runner of a controller whose queue holds namespace names: one worker calling
    /// `sync` for each.
    pub fn namespaced<F, Fut>(queue_name: &'static str, queue: WorkQueue<String>, sync: F) -> Runner
    where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let counts_queue = queue.clone();
        Runner {
            queue_name,
            counts: Box::new(move || counts_queue.counts()),
            run: Box::pin(work(queue_name, queue, 1, sync)),
        }
    }
}

/// Queues the name of every namespace added or changed.
pub fn queue_namespaces(informers: &mut InformerFactory, queue: &WorkQueue<String>) {
    let q = queue.clone();
    informers
        .informer::<k8s_openapi::api::core::v1::Namespace>()
        .on_event(move |e| match e {
            ferrokube_client::informer::Event::Added(ns)
            | ferrokube_client::informer::Event::Updated(_, ns) => {
                q.add(ns.metadata.name.clone().unwrap_or_default())
            }
            ferrokube_client::informer::Event::Deleted(_) => {}
        });
}

/// Drains `queue` with `workers` workers calling `sync` for each key: success forgets
/// the key's failures, an error retries it after its back-off.
pub async fn work<F, Fut>(name: &'static str, queue: WorkQueue<String>, workers: usize, sync: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Error>> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let sync = sync.clone();
        tasks.spawn(async move {
            while let Some(key) = queue.get().await {
                match sync(key.clone()).await {
                    Ok(()) => queue.forget(&key),
                    Err(e) => {
                        tracing::warn!(controller = name, %key, "sync failed, will retry: {e}");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(flag: &[&str]) -> Result<Vec<&'static str>, String> {
        let flag: Vec<String> = flag.iter().map(|s| s.to_string()).collect();
        select(&flag).map(|v| v.iter().map(|d| d.name).collect())
    }

    #[test]
    fn controllers_flag_as_upstream() {
        let all = vec![
            "root-ca-certificate-publisher-controller",
            "serviceaccount-controller",
        ];
        assert_eq!(names(&["*"]).unwrap(), all);
        assert_eq!(
            names(&["*", "-serviceaccount"]).unwrap(),
            vec!["root-ca-certificate-publisher-controller"]
        );
        assert_eq!(
            names(&["serviceaccount-controller"]).unwrap(),
            vec!["serviceaccount-controller"]
        );
        assert!(names(&[]).unwrap().is_empty());
        assert_eq!(
            names(&["*", "nosuch"]).unwrap_err(),
            "\"nosuch\" is not in the list of known controllers"
        );
    }
}
