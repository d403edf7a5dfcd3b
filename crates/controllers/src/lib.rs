//! The controllers of `kube-controller-manager`. Every one has the same shape:
//! informers fill local caches and turn changes into keys on a rate-limited
//! [`WorkQueue`]; workers take keys and run an idempotent sync that reads the caches and
//! writes through the API; a failed sync is retried with back-off.
//!
//! - [`cronjob`]: CronJobs make Jobs on their schedule.
//! - [`daemonset`]: a DaemonSet's pod on every node that should run it.
//! - [`deployment`]: Deployments roll their template out through ReplicaSets.
//! - [`garbagecollector`]: objects whose owners are gone are deleted; orphan and
//!   foreground deletion.
//! - [`job`]: Jobs run pods to completion; [`ttl_after_finished`] deletes finished Jobs
//!   whose TTL is up.
//! - [`namespace`]: a deleted namespace's content goes, then the namespace.
//! - [`serviceaccount`]: the `default` ServiceAccount in every active namespace.
//! - [`podgc`]: finished pods over the threshold, pods of nodes that are gone.
//! - [`replicaset`]: ReplicaSets and ReplicationControllers keep their pods running.
//! - [`statefulset`]: pods with stable names and storage, in order.
//! - [`root_ca_publisher`]: the `kube-root-ca.crt` ConfigMap (the cluster's CA bundle)
//!   in every namespace.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod endpointslicemirroring;
pub mod expectations;
pub mod garbagecollector;
pub mod informers;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod ownership;
pub mod pod_control;
pub mod pod_status;
pub mod podautoscaler;
pub mod podgc;
pub mod replicaset;
pub mod revisions;
pub mod root_ca_publisher;
pub mod serviceaccount;
pub mod serviceaccount_token;
pub mod statefulset;
pub mod taint_eviction;
pub mod ttl_after_finished;

use std::future::Future;
use std::sync::Arc;

use ferrokube_client::informer::{Event, Kind};
use ferrokube_client::{Api, Client, QueueCounts, Store, WorkQueue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::expectations::Expectations;

pub use informers::InformerFactory;

/// What can go wrong in a sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ferrokube_client::Error),
    #[error("{0}")]
    Sync(String),
}

/// What controllers share.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    /// The cluster's CA bundle (`--root-ca-file`), published in every namespace.
    pub root_ca: Option<Arc<str>>,
    /// The host the controllers run on (their events' source).
    pub host: String,
    /// Finished pods kept before the oldest are deleted (`--terminated-pod-gc-threshold`).
    pub terminated_pod_gc_threshold: usize,
    /// Pod ranges for Nodes (`--allocate-node-cidrs`, `--cluster-cidr`, ...).
    pub node_ipam: nodeipam::Config,
    /// When Nodes count as unhealthy and how fast they are tainted.
    pub node_lifecycle: nodelifecycle::Config,
    /// The horizontal pod autoscaler's periods and tolerance.
    pub hpa: podautoscaler::Config,
    /// The key legacy service-account tokens are signed with
    /// (`--service-account-private-key-file`, PEM).
    pub service_account_key: Option<Arc<str>>,
}

/// A controller of upstream's kube-controller-manager: its name, the names it is also
/// known by, whether `*` includes it, and how ferrokube starts it (`None`: ferrokube does
/// not implement it yet; it may be named in `--controllers` and is reported, not run).
pub struct Descriptor {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub disabled_by_default: bool,
    pub start: Option<StartFn>,
}

/// Registers a controller's informers and returns its run loop.
pub type StartFn = fn(&Context, &mut InformerFactory) -> Result<Runner, String>;

/// Reads a work-queue's counters.
pub type CountsFn = Box<dyn Fn() -> QueueCounts + Send + Sync>;

/// A started controller's run loop and its queue (for metrics).
pub struct Runner {
    pub queue_name: &'static str,
    pub counts: CountsFn,
    pub run: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

const fn upstream(name: &'static str, aliases: &'static [&'static str]) -> Descriptor {
    Descriptor {
        name,
        aliases,
        disabled_by_default: false,
        start: None,
    }
}

/// Every controller, by upstream's names and aliases (`--controllers`).
pub const CONTROLLERS: &[Descriptor] = &[
    Descriptor {
        start: Some(serviceaccount_token::start),
        ..upstream("serviceaccount-token-controller", &["serviceaccount-token"])
    },
    Descriptor {
        start: Some(endpoints::start),
        ..upstream("endpoints-controller", &["endpoint"])
    },
    Descriptor {
        start: Some(endpointslice::start),
        ..upstream("endpointslice-controller", &["endpointslice"])
    },
    Descriptor {
        start: Some(endpointslicemirroring::start),
        ..upstream(
            "endpointslice-mirroring-controller",
            &["endpointslicemirroring"],
        )
    },
    Descriptor {
        start: Some(replicaset::start::<k8s_openapi::api::core::v1::ReplicationController>),
        ..upstream(
            "replicationcontroller-controller",
            &["replicationcontroller"],
        )
    },
    Descriptor {
        start: Some(podgc::start),
        ..upstream("pod-garbage-collector-controller", &["podgc"])
    },
    upstream("resourcequota-controller", &["resourcequota"]),
    Descriptor {
        start: Some(namespace::start),
        ..upstream("namespace-controller", &["namespace"])
    },
    Descriptor {
        start: Some(serviceaccount::start),
        ..upstream("serviceaccount-controller", &["serviceaccount"])
    },
    Descriptor {
        start: Some(garbagecollector::start),
        ..upstream("garbage-collector-controller", &["garbagecollector"])
    },
    Descriptor {
        start: Some(daemonset::start),
        ..upstream("daemonset-controller", &["daemonset"])
    },
    Descriptor {
        start: Some(job::start),
        ..upstream("job-controller", &["job"])
    },
    Descriptor {
        start: Some(deployment::start),
        ..upstream("deployment-controller", &["deployment"])
    },
    Descriptor {
        start: Some(replicaset::start::<k8s_openapi::api::apps::v1::ReplicaSet>),
        ..upstream("replicaset-controller", &["replicaset"])
    },
    Descriptor {
        start: Some(podautoscaler::start),
        ..upstream(
            "horizontal-pod-autoscaler-controller",
            &["horizontalpodautoscaling"],
        )
    },
    Descriptor {
        start: Some(disruption::start),
        ..upstream("disruption-controller", &["disruption"])
    },
    Descriptor {
        start: Some(statefulset::start),
        ..upstream("statefulset-controller", &["statefulset"])
    },
    Descriptor {
        start: Some(cronjob::start),
        ..upstream("cronjob-controller", &["cronjob"])
    },
    upstream(
        "certificatesigningrequest-signing-controller",
        &["csrsigning"],
    ),
    upstream(
        "certificatesigningrequest-approving-controller",
        &["csrapproving"],
    ),
    upstream(
        "certificatesigningrequest-cleaner-controller",
        &["csrcleaner"],
    ),
    upstream("ttl-controller", &["ttl"]),
    Descriptor {
        disabled_by_default: true,
        ..upstream("bootstrap-signer-controller", &["bootstrapsigner"])
    },
    Descriptor {
        disabled_by_default: true,
        ..upstream("token-cleaner-controller", &["tokencleaner"])
    },
    Descriptor {
        start: Some(nodeipam::start),
        ..upstream("node-ipam-controller", &["nodeipam"])
    },
    Descriptor {
        start: Some(nodelifecycle::start),
        ..upstream("node-lifecycle-controller", &["nodelifecycle"])
    },
    Descriptor {
        start: Some(taint_eviction::start),
        ..upstream("taint-eviction-controller", &[])
    },
    upstream("service-lb-controller", &["service"]),
    upstream("node-route-controller", &["route"]),
    upstream("cloud-node-lifecycle-controller", &["cloud-node-lifecycle"]),
    upstream(
        "persistentvolume-binder-controller",
        &["persistentvolume-binder"],
    ),
    upstream(
        "persistentvolume-attach-detach-controller",
        &["attachdetach"],
    ),
    upstream(
        "persistentvolume-expander-controller",
        &["persistentvolume-expander"],
    ),
    upstream(
        "clusterrole-aggregation-controller",
        &["clusterrole-aggregation"],
    ),
    upstream(
        "persistentvolumeclaim-protection-controller",
        &["pvc-protection"],
    ),
    upstream("persistentvolume-protection-controller", &["pv-protection"]),
    Descriptor {
        start: Some(ttl_after_finished::start),
        ..upstream("ttl-after-finished-controller", &["ttl-after-finished"])
    },
    Descriptor {
        start: Some(root_ca_publisher::start),
        ..upstream(
            "root-ca-certificate-publisher-controller",
            &["root-ca-cert-publisher"],
        )
    },
    upstream("ephemeral-volume-controller", &["ephemeral-volume"]),
    upstream(
        "storageversion-garbage-collector-controller",
        &["storage-version-gc"],
    ),
    upstream("resourceclaim-controller", &["resource-claim-controller"]),
    upstream(
        "legacy-serviceaccount-token-cleaner-controller",
        &["legacy-service-account-token-cleaner"],
    ),
    upstream("validatingadmissionpolicy-status-controller", &[]),
    upstream("service-cidr-controller", &[]),
];

/// The controllers `--controllers` selects, as upstream: for each controller the first
/// entry naming it decides (`name` enables, `-name` disables; names may be aliases);
/// otherwise `*` enables it unless it is off by default. Unknown names are an error.
pub fn select(flag: &[String]) -> Result<Vec<&'static Descriptor>, String> {
    let find = |n: &str| {
        CONTROLLERS
            .iter()
            .find(|d| d.name == n || d.aliases.contains(&n))
            .map(|d| d.name)
            .ok_or_else(|| format!("{n:?} is not in the list of known controllers"))
    };
    let mut star = false;
    // (canonical name, enabled) in flag order.
    let mut named: Vec<(&str, bool)> = Vec::new();
    for item in flag.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if item == "*" {
            star = true;
        } else if let Some(n) = item.strip_prefix('-') {
            named.push((find(n)?, false));
        } else {
            named.push((find(item)?, true));
        }
    }
    Ok(CONTROLLERS
        .iter()
        .filter(|d| match named.iter().find(|(n, _)| *n == d.name) {
            Some((_, on)) => *on,
            None => star && !d.disabled_by_default,
        })
        .collect())
}

impl Runner {
    /// The runner of a controller draining `queue` with `workers` workers calling `sync`
    /// for each key.
    pub fn new<F, Fut>(
        queue_name: &'static str,
        queue: WorkQueue<String>,
        workers: usize,
        sync: F,
    ) -> Runner
    where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let counts_queue = queue.clone();
        Runner {
            queue_name,
            counts: Box::new(move || counts_queue.counts()),
            run: Box::pin(work(queue_name, queue, workers, sync)),
        }
    }
}

impl Runner {
    /// This runner with `task` running beside its work-queue (a periodic pass).
    pub fn alongside(self, task: impl Future<Output = ()> + Send + 'static) -> Runner {
        let Runner {
            queue_name,
            counts,
            run,
        } = self;
        Runner {
            queue_name,
            counts,
            run: Box::pin(async move {
                tokio::join!(run, task);
            }),
        }
    }
}

/// Calls `f` every `period`, the first time at once (a late round delays the next
/// rather than bunching them); errors are logged for `controller`.
pub async fn every<F, Fut>(controller: &'static str, period: std::time::Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = f().await {
            tracing::warn!(controller, "{e}");
        }
    }
}

/// Registers the informer of `K` queueing the key of every object added, changed or
/// deleted; its store.
pub fn queue_own<K: Kind>(informers: &mut InformerFactory, queue: &WorkQueue<String>) -> Store<K> {
    let inf = informers.informer::<K>();
    let q = queue.clone();
    inf.on_event(move |e| {
        let (Event::Added(o) | Event::Updated(_, o) | Event::Deleted(o)) = e;
        q.add(ownership::object_key(o.metadata()));
    });
    inf.store()
}

/// Registers the informer of dependents `D` queueing the key of their controller when
/// it is of kind `O`, and telling `expectations` (if given) of creations seen and of
/// deletions seen (a dependent starting to terminate, or gone without having
/// terminated); its store.
pub fn queue_controller<O: k8s_openapi::Resource, D: Kind>(
    informers: &mut InformerFactory,
    queue: &WorkQueue<String>,
    expectations: Option<Arc<Expectations>>,
) -> Store<D> {
    let inf = informers.informer::<D>();
    let q = queue.clone();
    inf.on_event(move |e| {
        let notify = |d: &D, added: bool, deleted: bool| {
            let m = d.metadata();
            if let Some(r) = ownership::controller_of(m).filter(|r| r.kind == O::KIND) {
                let k = ownership::key(m.namespace.as_deref().unwrap_or_default(), &r.name);
                if let Some(exp) = &expectations {
                    exp.observed(&k, i64::from(added), i64::from(deleted));
                }
                q.add(k);
            }
        };
        match e {
            Event::Added(d) => notify(d, true, false),
            Event::Updated(old, d) => notify(
                d,
                false,
                old.metadata().deletion_timestamp.is_none()
                    && d.metadata().deletion_timestamp.is_some(),
            ),
            Event::Deleted(d) => notify(d, false, d.metadata().deletion_timestamp.is_none()),
        }
    });
    inf.store()
}

/// Records a Node's new status as upstream's node controllers do: a Normal event
/// `<reason>` saying `Node <name> status is now: <reason>`.
pub async fn record_node_status_change(
    recorder: &ferrokube_client::events::Recorder,
    node: &str,
    reason: &str,
) {
    let involved = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.into()),
        uid: Some(node.into()),
        ..Default::default()
    };
    recorder
        .object(
            "default",
            involved,
            ferrokube_client::events::Kind::Normal,
            reason,
            &format!("Node {node} status is now: {reason}"),
        )
        .await;
}

/// Writes `updated` (an object with a new status) through the status subresource,
/// unless it equals `current`; the stored object, or `None` when nothing was written
/// or the object is gone.
pub async fn write_status<K>(client: &Client, current: &K, updated: &K) -> Result<Option<K>, Error>
where
    K: k8s_openapi::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + PartialEq,
{
    if current == updated {
        return Ok(None);
    }
    let m = updated.metadata();
    let api: Api<K> = Api::namespaced(client.clone(), m.namespace.as_deref().unwrap_or_default());
    match api
        .replace_status(m.name.as_deref().unwrap_or_default(), updated)
        .await
    {
        Ok(stored) => Ok(Some(stored)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
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
        let implemented = |v: Vec<&'static str>| -> Vec<&'static str> {
            v.into_iter()
                .filter(|n| {
                    CONTROLLERS
                        .iter()
                        .any(|d| d.name == *n && d.start.is_some())
                })
                .collect()
        };
        let all = names(&["*"]).unwrap();
        assert_eq!(
            implemented(all.clone()),
            vec![
                "serviceaccount-token-controller",
                "endpoints-controller",
                "endpointslice-controller",
                "endpointslice-mirroring-controller",
                "replicationcontroller-controller",
                "pod-garbage-collector-controller",
                "namespace-controller",
                "serviceaccount-controller",
                "garbage-collector-controller",
                "daemonset-controller",
                "job-controller",
                "deployment-controller",
                "replicaset-controller",
                "horizontal-pod-autoscaler-controller",
                "disruption-controller",
                "statefulset-controller",
                "cronjob-controller",
                "node-ipam-controller",
                "node-lifecycle-controller",
                "taint-eviction-controller",
                "ttl-after-finished-controller",
                "root-ca-certificate-publisher-controller"
            ]
        );
        // `*` leaves out the controllers that are off by default; naming them adds them.
        assert!(!all.contains(&"bootstrap-signer-controller"));
        let kubeadm = names(&["*", "bootstrapsigner", "tokencleaner"]).unwrap();
        assert!(kubeadm.contains(&"bootstrap-signer-controller"));
        assert!(kubeadm.contains(&"token-cleaner-controller"));
        assert_eq!(kubeadm.len(), all.len() + 2);
        assert_eq!(
            implemented(
                names(&[
                    "*",
                    "-serviceaccount",
                    "-replicaset",
                    "-replicationcontroller",
                    "-namespace",
                    "-garbagecollector",
                    "-deployment",
                    "-job",
                    "-ttl-after-finished",
                    "-cronjob",
                    "-podgc",
                    "-daemonset",
                    "-statefulset",
                    "-nodeipam",
                    "-nodelifecycle",
                    "-taint-eviction-controller",
                    "-disruption",
                    "-horizontalpodautoscaling",
                    "-serviceaccount-token",
                    "-endpoint",
                    "-endpointslice",
                    "-endpointslicemirroring"
                ])
                .unwrap()
            ),
            vec!["root-ca-certificate-publisher-controller"]
        );
        assert_eq!(
            names(&["serviceaccount-controller"]).unwrap(),
            vec!["serviceaccount-controller"]
        );
        // The first entry naming a controller decides.
        assert_eq!(
            names(&["serviceaccount", "-serviceaccount-controller"]).unwrap(),
            vec!["serviceaccount-controller"]
        );
        assert!(names(&["-serviceaccount", "serviceaccount", "*"])
            .unwrap()
            .iter()
            .all(|n| *n != "serviceaccount-controller"));
        assert!(names(&[]).unwrap().is_empty());
        assert_eq!(
            names(&["*", "nosuch"]).unwrap_err(),
            "\"nosuch\" is not in the list of known controllers"
        );
    }
}
