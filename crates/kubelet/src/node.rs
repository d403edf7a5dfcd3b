//! The kubelet's Node: registration, status (addresses, capacity and allocatable,
//! system info, conditions) every status period, and the node Lease in
//! `kube-node-lease` renewed every quarter of its duration, as upstream does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferrokube_client::{Api, Client, Patch};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use serde_json::json;

use crate::network::Cni;
use crate::Error;

/// What the kubelet knows about its node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub ip: IpAddr,
    pub root_dir: PathBuf,
    pub max_pods: u32,
    /// The port the kubelet's server listens on (`daemonEndpoints`).
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub lease_duration_seconds: i32,
    pub status_period: Duration,
    /// Hard eviction thresholds, for the pressure conditions.
    pub eviction_hard: crate::pressure::Thresholds,
}

/// Why the node is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The container runtime (runc) cannot be run.
    Runtime(String),
    /// The pod network is not configured.
    Network(String),
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// The node's capacity: CPUs, memory, pods, ephemeral storage of the root dir's disk.
pub fn capacity(cfg: &NodeConfig) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let storage = nix::sys::statvfs::statvfs(&cfg.root_dir)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0);
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity(format!("{mem_kib}Ki"))),
        ("pods".to_string(), Quantity(cfg.max_pods.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Ki", storage / 1024)),
        ),
    ])
}

/// Upstream's system information for `kubectl get nodes -o wide` and describe.
pub fn system_info() -> NodeSystemInfo {
    let uname = nix::sys::utsname::uname().ok();
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let runc = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2))
                .map(String::from)
        })
        .unwrap_or_else(|| "unknown".into());
    NodeSystemInfo {
        architecture: arch().into(),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: format!("runc://{runc}"),
        kernel_version: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        kube_proxy_version: String::new(),
        kubelet_version: "v1.32.0".into(),
        machine_id: read("/etc/machine-id"),
        operating_system: "linux".into(),
        os_image,
        system_uuid: read("/sys/class/dmi/id/product_uuid"),
    }
}

fn condition(
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
    previous: Option<&NodeCondition>,
) -> NodeCondition {
    let transition = match previous {
        Some(p) if p.status == status => p
            .last_transition_time
            .clone()
            .unwrap_or_else(|| now.clone()),
        _ => now.clone(),
    };
    NodeCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(transition),
    }
}

/// The node's status now.
pub fn status(
    cfg: &NodeConfig,
    previous: Option<&NodeStatus>,
    readiness: &Result<(), NotReady>,
    pressure: &crate::pressure::Pressure,
) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let prev = |t: &str| {
        previous
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == t))
    };
    let ready = match readiness {
        Ok(()) => condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", &now, prev("Ready")),
        Err(NotReady::Runtime(why)) => condition(
            "Ready",
            "False",
            "KubeletNotReady",
            &format!("container runtime is down: {why}"),
            &now,
            prev("Ready"),
        ),
        Err(NotReady::Network(why)) => condition(
            "Ready",
            "False",
            "KubeletNotReady",
            &format!("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:{why}"),
            &now,
            prev("Ready"),
        ),
    };
    let cap = capacity(cfg);
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.name.clone(),
            },
        ]),
        allocatable: Some(cap.clone()),
        capacity: Some(cap),
        conditions: Some(vec![
            if pressure.memory {
                condition(
                    "MemoryPressure",
                    "True",
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                    &now,
                    prev("MemoryPressure"),
                )
            } else {
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                    &now,
                    prev("MemoryPressure"),
                )
            },
            if pressure.disk {
                condition(
                    "DiskPressure",
                    "True",
                    "KubeletHasDiskPressure",
                    "kubelet has disk pressure",
                    &now,
                    prev("DiskPressure"),
                )
            } else {
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                    &now,
                    prev("DiskPressure"),
                )
            },
            if pressure.pid {
                condition(
                    "PIDPressure",
                    "True",
                    "KubeletHasInsufficientPID",
                    "kubelet has insufficient PID available",
                    &now,
                    prev("PIDPressure"),
                )
            } else {
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                    &now,
                    prev("PIDPressure"),
                )
            },
            ready,
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: cfg.port as i32,
            }),
        }),
        node_info: Some(system_info()),
        ..Default::default()
    }
}

/// Registers the Node (or takes over an existing one of the same name) and returns it.
pub async fn register(client: &Client, cfg: &NodeConfig) -> Result<Node, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), cfg.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
    ]);
    labels.extend(cfg.labels.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: None,
    };
    match nodes.create(&node).await {
        Ok(n) => Ok(n),
        Err(e) if e.is_conflict() => {
            // Re-registration after a restart: keep the object, refresh our labels.
            Ok(nodes
                .patch(
                    &cfg.name,
                    &Patch::Merge(json!({"metadata": {"labels": labels}})),
                )
                .await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Posts the node status.
/// With a podCIDR assigned, the pod network's configuration is written first (when there
/// is none), so readiness reflects it.
pub async fn post_status(client: &Client, cfg: &NodeConfig, cni: &Cni) -> Result<Node, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes.get(&cfg.name).await?;
    if let Some(cidr) = current.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
        if let Err(e) = cni.ensure_config(cidr) {
            tracing::warn!("writing the CNI configuration: {e}");
        }
    }
    let readiness = match crate::runtime::runc::missing() {
        Some(why) => Err(NotReady::Runtime(why)),
        None => match cni.readiness() {
            Some(why) => Err(NotReady::Network(why)),
            None => Ok(()),
        },
    };
    let observed = crate::pressure::observe(&cfg.root_dir, &cfg.root_dir.join("images"));
    let pressure = crate::pressure::pressure(&cfg.eviction_hard, &observed);
    let st = status(cfg, current.status.as_ref(), &readiness, &pressure);
    Ok(nodes
        .patch_status(&cfg.name, &Patch::Merge(json!({"status": st})))
        .await?)
}

/// Creates or renews the node Lease (owned by the Node, so it goes with it).
pub async fn renew_lease(client: &Client, cfg: &NodeConfig, node_uid: &str) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(jiff::Timestamp::now());
    match leases.get_opt(&cfg.name).await? {
        Some(mut l) => {
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(cfg.name.clone());
            spec.lease_duration_seconds = Some(cfg.lease_duration_seconds);
            leases.replace(&cfg.name, &l).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: cfg.name.clone(),
                        uid: node_uid.into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.name.clone()),
                    lease_duration_seconds: Some(cfg.lease_duration_seconds),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            leases.create(&lease).await?;
        }
    }
    Ok(())
}

/// Registers, then keeps the status and the lease fresh until the task is dropped.
pub async fn run(client: Client, cfg: NodeConfig, cni: std::sync::Arc<Cni>) {
    let node = loop {
        match register(&client, &cfg).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!("registering node {}: {e}", cfg.name);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    tracing::info!(node = %cfg.name, "node registered");
    let uid = node.metadata.uid.clone().unwrap_or_default();
    let lease_every = Duration::from_secs((cfg.lease_duration_seconds as u64 / 4).max(1));
    let mut status_tick = tokio::time::interval(cfg.status_period);
    let mut lease_tick = tokio::time::interval(lease_every);
    loop {
        tokio::select! {
            _ = status_tick.tick() => {
                if let Err(e) = post_status(&client, &cfg, &cni).await {
                    tracing::warn!("posting node status: {e}");
                }
            }
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &cfg, &uid).await {
                    tracing::warn!("renewing the node lease: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::Pressure;

    #[test]
    fn status_reports_capacity_and_not_ready_without_a_network() {
        let cfg = NodeConfig {
            name: "n1".into(),
            ip: "10.0.0.2".parse().unwrap(),
            root_dir: std::env::temp_dir(),
            max_pods: 110,
            port: 10250,
            labels: BTreeMap::new(),
            lease_duration_seconds: 40,
            status_period: Duration::from_secs(10),
            eviction_hard: crate::pressure::Thresholds::parse(&BTreeMap::new()).unwrap(),
        };
        let st = status(
            &cfg,
            None,
            &Err(NotReady::Network("cni config uninitialized".into())),
            &Pressure::default(),
        );
        let cap = st.capacity.clone().unwrap();
        assert_eq!(cap["pods"].0, "110");
        assert!(cap["memory"].0.ends_with("Ki"));
        let conds = st.conditions.clone().unwrap();
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert!(ready
            .message
            .as_deref()
            .unwrap()
            .contains("NetworkReady=false"));
        let again = status(
            &cfg,
            Some(&NodeStatus {
                conditions: Some(conds.clone()),
                ..Default::default()
            }),
            &Ok(()),
            &Pressure {
                disk: true,
                ..Default::default()
            },
        );
        let find = |st: &NodeStatus, t: &str| {
            st.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == t)
                .cloned()
                .unwrap()
        };
        assert_eq!(find(&again, "Ready").status, "True");
        assert_eq!(find(&st, "DiskPressure").status, "False");
        let disk = find(&again, "DiskPressure");
        assert_eq!(disk.status, "True");
        assert_eq!(disk.reason.as_deref(), Some("KubeletHasDiskPressure"));
        assert_eq!(find(&again, "MemoryPressure").status, "False");
        assert_eq!(st.node_info.unwrap().operating_system, "linux");
    }
}
