//! Hollow nodes: one process plays the kubelets of many fake nodes, as kubemark and KWOK
//! do, so the scheduler and the controllers can be tested at thousands of nodes on one
//! machine. Each node registers with the given capacity, labels and taints, keeps its
//! Lease in `kube-node-lease` (renewed every quarter of the lease duration, spread over
//! that interval) and refreshes its conditions every five minutes; pods bound to it are
//! marked Running at once with fake pod IPs, and pods being deleted are removed at once.
//! Limits: there are no containers, volumes, probes, logs or exec; a pod runs until it is
//! deleted, whatever its restartPolicy.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Client, Informer, ListParams, Patch, WorkQueue};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod,
    Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, MicroTime, ObjectMeta, OwnerReference, Preconditions, Time,
};
use serde_json::json;

/// What cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Flag(String),
    #[error(transparent)]
    Api(#[from] ferrokube_client::Error),
}

/// The nodes to play.
#[derive(Debug, Clone)]
pub struct Spec {
    pub prefix: String,
    pub count: usize,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    pub ephemeral_storage: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Node i gets `topology.kubernetes.io/zone=<zones[i % len]>`.
    pub zones: Vec<String>,
    /// Images every node reports having (name, size in bytes).
    pub images: Vec<(String, i64)>,
    pub lease_seconds: i32,
}

/// Parses `key=value:Effect,...` (the kubelet's `--register-with-taints`).
pub fn parse_taints(s: &str) -> Result<Vec<Taint>, Error> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let bad = |why: &str| Error::Flag(format!("invalid taint {t:?}: {why}"));
            let (kv, effect) = t
                .rsplit_once(':')
                .ok_or_else(|| bad("no effect (key=value:Effect)"))?;
            if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
                return Err(bad(
                    "the effect must be NoSchedule, PreferNoSchedule or NoExecute",
                ));
            }
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (kv, None),
            };
            if key.is_empty() {
                return Err(bad("empty key"));
            }
            Ok(Taint {
                key: key.into(),
                value,
                effect: effect.into(),
                time_added: None,
            })
        })
        .collect()
}

/// Parses `k=v,...`.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, Error> {
    s.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::Flag(format!("invalid label {l:?}: want key=value")))
        })
        .collect()
}

/// Parses `name=bytes,...`.
pub fn parse_images(s: &str) -> Result<Vec<(String, i64)>, Error> {
    s.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.rsplit_once('=')
                .and_then(|(n, b)| Some((n.to_string(), b.parse::<i64>().ok()?)))
                .ok_or_else(|| Error::Flag(format!("invalid image {l:?}: want name=bytes")))
        })
        .collect()
}

/// The fake address of node `i` (10.64.0.0/10; never used for traffic).
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 1)) + i as u32)
}

/// The fake address of the `n`th pod (10.128.0.0/9; never used for traffic).
pub fn pod_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + (n % (1 << 23)))
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn conditions() -> Vec<NodeCondition> {
    let t = now();
    let c = |ty: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(t.clone()),
        last_transition_time: Some(t.clone()),
    };
    vec![
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
}

impl Spec {
    pub fn name(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Node `i` as it registers.
    pub fn node(&self, i: usize) -> Node {
        let name = self.name(i);
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        if !self.zones.is_empty() {
            labels.insert(
                "topology.kubernetes.io/zone".into(),
                self.zones[i % self.zones.len()].clone(),
            );
        }
        let capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity(self.cpu.clone())),
            ("memory".to_string(), Quantity(self.memory.clone())),
            ("pods".to_string(), Quantity(self.pods.clone())),
            (
                "ephemeral-storage".to_string(),
                Quantity(self.ephemeral_storage.clone()),
            ),
        ]);
        Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                capacity: Some(capacity.clone()),
                allocatable: Some(capacity),
                conditions: Some(conditions()),
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: node_ip(i).to_string(),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: name,
                    },
                ]),
                images: (!self.images.is_empty()).then(|| {
                    self.images
                        .iter()
                        .map(|(n, size)| ContainerImage {
                            names: Some(vec![n.clone()]),
                            size_bytes: Some(*size),
                        })
                        .collect()
                }),
                node_info: Some(NodeSystemInfo {
                    architecture: "amd64".into(),
                    operating_system: "linux".into(),
                    kubelet_version: "v1.32.0-hollow".into(),
                    kube_proxy_version: "v1.32.0-hollow".into(),
                    container_runtime_version: "hollow://1.0".into(),
                    os_image: "hollow".into(),
                    kernel_version: "hollow".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }
}

/// The status of a hollow pod that has started: Running, every container running and
/// ready.
pub fn running_status(pod: &Pod, host_ip: &str, pod_ip: &str) -> serde_json::Value {
    let t = now();
    let spec = pod.spec.as_ref();
    let statuses: Vec<serde_json::Value> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name,
                "image": image,
                "imageID": format!("hollow://{image}"),
                "containerID": format!("hollow://{}-{}", pod.metadata.uid.as_deref().unwrap_or_default(), c.name),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": t}},
            })
        })
        .collect();
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": t});
    json!({"status": {
        "phase": "Running",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": t,
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": statuses,
    }})
}

/// Calls at once while registering and writing pod status.
const CONCURRENCY: usize = 32;

/// Registers the nodes and plays them until the task is dropped.
pub async fn run(client: Client, spec: Spec) -> Result<(), Error> {
    let spec = Arc::new(spec);
    register(&client, &spec).await?;
    tracing::info!(nodes = spec.count, prefix = %spec.prefix, "registered");
    let heartbeat = tokio::spawn(heartbeat(client.clone(), spec.clone()));
    let _stop = AbortOnDrop(heartbeat);
    pods(client, spec).await;
    Ok(())
}

async fn register(client: &Client, spec: &Arc<Spec>) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..spec.count {
        let (nodes, leases, spec) = (nodes.clone(), leases.clone(), spec.clone());
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        tasks.spawn(async move {
            let _permit = permit;
            let want = spec.node(i);
            let name = spec.name(i);
            let node = match nodes.create(&want).await {
                Ok(n) => n,
                // Taken over: the node's status becomes ours.
                Err(e) if e.is_conflict() => {
                    let mut n = nodes.get(&name).await?;
                    n.status = want.status.clone();
                    nodes.replace_status(&name, &n).await?
                }
                Err(e) => return Err(e),
            };
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid: node.metadata.uid.clone().unwrap_or_default(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(spec.lease_seconds),
                    renew_time: Some(MicroTime(jiff::Timestamp::now())),
                    ..Default::default()
                }),
            };
            match leases.create(&lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_conflict() => Ok(()),
                Err(e) => Err(e),
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::Flag(format!("registering: {e}")))??;
    }
    Ok(())
}

/// Renews every Lease each quarter lease duration and refreshes every node's conditions
/// each five minutes, spread evenly over those intervals.
async fn heartbeat(client: Client, spec: Arc<Spec>) {
    const TICK: Duration = Duration::from_millis(100);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let renew_ticks =
        ((spec.lease_seconds.max(4) as u64 * 1000 / 4) / TICK.as_millis() as u64).max(1) as usize;
    let status_ticks = (300_000 / TICK.as_millis() as u64) as usize;
    let mut tick = 0usize;
    let mut interval = tokio::time::interval(TICK);
    loop {
        interval.tick().await;
        tick += 1;
        let mut calls = tokio::task::JoinSet::new();
        for i in (0..spec.count).filter(|i| i % renew_ticks == tick % renew_ticks) {
            let (leases, name) = (leases.clone(), spec.name(i));
            calls.spawn(async move {
                let patch = json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
                if let Err(e) = leases.patch(&name, &Patch::Merge(patch)).await {
                    tracing::warn!(node = %name, "renewing the lease: {e}");
                }
            });
        }
        for i in (0..spec.count).filter(|i| i % status_ticks == tick % status_ticks) {
            let (nodes, name) = (nodes.clone(), spec.name(i));
            calls.spawn(async move {
                let patch = json!({"status": {"conditions": conditions()}});
                if let Err(e) = nodes.patch_status(&name, &Patch::Strategic(patch)).await {
                    tracing::warn!(node = %name, "updating the node status: {e}");
                }
            });
        }
        // Bounded: a tick's calls finish (or time out) before the next tick's start.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while calls.join_next().await.is_some() {}
        })
        .await;
    }
}

/// Marks bound pods Running and removes pods being deleted.
async fn pods(client: Client, spec: Arc<Spec>) {
    let ours: Arc<HashSet<String>> = Arc::new((0..spec.count).map(|i| spec.name(i)).collect());
    let index: Arc<std::collections::HashMap<String, usize>> =
        Arc::new((0..spec.count).map(|i| (spec.name(i), i)).collect());
    let queue: WorkQueue<String> = WorkQueue::new();
    let mut informer = Informer::new(Api::<Pod>::all(client.clone()), ListParams::default());
    {
        let (q, ours) = (queue.clone(), ours.clone());
        informer.on_event(move |e| {
            let p = match e {
                Event::Added(p) | Event::Updated(_, p) => p,
                Event::Deleted(_) => return,
            };
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default();
            if ours.contains(node) {
                q.add(ferrokube_client::informer::key_of(p.as_ref()));
            }
        });
    }
    let store = informer.store();
    let _informer = AbortOnDrop(tokio::spawn(informer.run()));
    let counter = Arc::new(AtomicU32::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (queue, store, client, index, counter) = (
            queue.clone(),
            store.clone(),
            client.clone(),
            index.clone(),
            counter.clone(),
        );
        workers.spawn(async move {
            while let Some(key) = queue.get().await {
                let result = match store.get(&key) {
                    Some(p) => play(&client, &p, &index, &counter).await,
                    None => Ok(()),
                };
                match result {
                    Ok(()) => queue.forget(&key),
                    Err(e) if queue.retries(&key) < 5 => {
                        tracing::debug!(pod = %key, "retrying: {e}");
                        queue.add_rate_limited(key.clone());
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key, "giving up: {e}");
                        queue.forget(&key);
                    }
                }
                queue.done(&key);
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// What a kubelet would do next for a pod on one of our nodes.
async fn play(
    client: &Client,
    pod: &Pod,
    index: &std::collections::HashMap<String, usize>,
    counter: &AtomicU32,
) -> Result<(), ferrokube_client::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    if pod.metadata.deletion_timestamp.is_some() {
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        return match api.delete(name, Some(&opts)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        };
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Running") | Some("Succeeded") | Some("Failed")) {
        return Ok(());
    }
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    let host = node_ip(index.get(node).copied().unwrap_or(0)).to_string();
    let ip = pod_ip(counter.fetch_add(1, Ordering::Relaxed)).to_string();
    match api
        .patch_status(name, &Patch::Merge(running_status(pod, &host, &ip)))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            prefix: "hollow-node-".into(),
            count: 3,
            cpu: "4".into(),
            memory: "32Gi".into(),
            pods: "110".into(),
            ephemeral_storage: "100Gi".into(),
            labels: parse_labels("disktype=ssd").unwrap(),
            taints: parse_taints("dedicated=gpu:NoSchedule,spot:PreferNoSchedule").unwrap(),
            zones: vec!["a".into(), "b".into()],
            images: parse_images("busybox:latest=4000000").unwrap(),
            lease_seconds: 40,
        }
    }

    #[test]
    fn taints_parse_as_the_kubelets_flag() {
        let t = parse_taints("dedicated=gpu:NoSchedule,spot:PreferNoSchedule").unwrap();
        assert_eq!(
            (
                t[0].key.as_str(),
                t[0].value.as_deref(),
                t[0].effect.as_str()
            ),
            ("dedicated", Some("gpu"), "NoSchedule")
        );
        assert_eq!((t[1].key.as_str(), t[1].value.as_deref()), ("spot", None));
        assert_eq!(
            parse_taints("a=b:Sometimes").unwrap_err().to_string(),
            "invalid taint \"a=b:Sometimes\": the effect must be NoSchedule, PreferNoSchedule or NoExecute"
        );
        assert!(parse_taints("a=b").is_err());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_images("x=big").is_err());
    }

    #[test]
    fn nodes_have_their_labels_capacity_and_taints() {
        let s = spec();
        let n = s.node(1);
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "hollow-node-1");
        assert_eq!(labels["topology.kubernetes.io/zone"], "b");
        assert_eq!(labels["disktype"], "ssd");
        let status = n.status.unwrap();
        assert_eq!(status.allocatable.unwrap()["cpu"], Quantity("4".into()));
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("True", Some("KubeletReady"))
        );
        assert_eq!(n.spec.unwrap().taints.unwrap().len(), 2);
        assert_eq!(status.addresses.unwrap()[0].address, "10.64.0.2");
        assert_eq!(status.images.unwrap()[0].size_bytes, Some(4000000));
    }

    #[test]
    fn addresses_are_unique_and_fake() {
        assert_eq!(node_ip(0).to_string(), "10.64.0.1");
        assert_eq!(node_ip(256).to_string(), "10.64.1.1");
        assert_eq!(pod_ip(0).to_string(), "10.128.0.1");
        assert_ne!(pod_ip(1), pod_ip(2));
    }

    #[test]
    fn running_pods_report_every_container_ready() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "nginx"}]}}))
        .unwrap();
        let s = running_status(&pod, "10.64.0.1", "10.128.0.1");
        assert_eq!(s["status"]["phase"], "Running");
        assert_eq!(
            s["status"]["containerStatuses"].as_array().unwrap().len(),
            2
        );
        assert_eq!(
            s["status"]["containerStatuses"][1]["imageID"],
            "hollow://nginx"
        );
        assert!(s["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "True"));
    }
}
