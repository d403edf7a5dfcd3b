//! The scheduler's view of the cluster, kept up to date from informer events (no list of
//! pods per scheduling cycle): per node what it offers, what its pods request, its ports,
//! images, taints and labels, and which pods run there; plus pods the scheduler has
//! *assumed* onto a node while their binding is in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferrokube_api::LabelSelector;
use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint};

use crate::resources::{node_allocatable, pod_non_zero_requests, pod_requests, Resources};

/// A host port a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two pods asking for these could not share a node (`0.0.0.0` takes every
    /// address).
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == o.port
            && self.protocol == o.protocol
            && (any(&self.ip) || any(&o.ip) || self.ip == o.ip)
    }
}

/// A parsed pod (anti-)affinity term.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// Namespaces named by the term (the pod's own when it names none and has no
    /// namespace selector).
    pub namespaces: Vec<String>,
    /// Namespaces selected by labels (`{}`: all of them).
    pub namespace_selector: Option<LabelSelector>,
    pub selector: LabelSelector,
    pub topology_key: String,
}

impl AffinityTerm {
    fn parse(t: &PodAffinityTerm, own_ns: &str) -> Option<AffinityTerm> {
        // A term without a label selector matches no pod.
        let selector = LabelSelector::from_api(t.label_selector.as_ref()?).ok()?;
        let namespace_selector = match &t.namespace_selector {
            Some(s) => Some(LabelSelector::from_api(s).ok()?),
            None => None,
        };
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.push(own_ns.to_string());
        }
        Some(AffinityTerm {
            namespaces,
            namespace_selector,
            selector,
            topology_key: t.topology_key.clone(),
        })
    }

    /// Whether `pod` is one of the pods this term selects.
    pub fn matches(&self, pod: &PodInfo, cache: &Cache) -> bool {
        let ns_ok = self.namespaces.contains(&pod.namespace)
            || self.namespace_selector.as_ref().is_some_and(|s| {
                s.is_everything()
                    || cache
                        .namespace_labels(&pod.namespace)
                        .is_some_and(|l| s.matches(l))
            });
        ns_ok && self.selector.matches(&pod.labels)
    }
}

/// What the scheduler needs of a pod, parsed once.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub non_zero: (i64, i64),
    pub host_ports: Vec<HostPort>,
    pub priority: i32,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let key = format!(
            "{namespace}/{}",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let spec = pod.spec.as_ref();
        let host_ports = spec
            .map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter(|p| p.host_port.is_some_and(|h| h > 0))
                    .map(|p| HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                        port: p.host_port.unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required = |terms: Option<&Vec<PodAffinityTerm>>| {
            terms
                .into_iter()
                .flatten()
                .filter_map(|t| AffinityTerm::parse(t, &namespace))
                .collect::<Vec<_>>()
        };
        let preferred =
            |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
                terms
                    .into_iter()
                    .flatten()
                    .filter_map(|w| {
                        AffinityTerm::parse(&w.pod_affinity_term, &namespace).map(|t| (w.weight, t))
                    })
                    .collect::<Vec<_>>()
            };
        PodInfo {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests: pod_requests(&pod),
            non_zero: pod_non_zero_requests(&pod),
            host_ports,
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            required_affinity: required(pa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti_affinity: required(paa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: preferred(pa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti_affinity: preferred(paa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            key,
            namespace,
            pod,
        }
    }

    /// Whether it has (anti-)affinity terms other pods' placement depends on.
    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }

    pub fn node_name(&self) -> Option<&str> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    pub fn is_terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }
}

/// One node and what runs on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    /// The sum of its pods' requests.
    pub requested: Resources,
    /// The sum of its pods' requests as scoring counts them.
    pub non_zero_requested: (i64, i64),
    pub pods: Vec<Arc<PodInfo>>,
    /// How many of `pods` have (anti-)affinity terms.
    pub pods_with_affinity: usize,
    pub used_ports: Vec<HostPort>,
    /// Image name (every name the node reports) → size in bytes.
    pub images: HashMap<String, i64>,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> NodeInfo {
        let mut n = NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: Default::default(),
            taints: vec![],
            unschedulable: false,
            allocatable: Default::default(),
            allowed_pods: 0,
            requested: Default::default(),
            non_zero_requested: (0, 0),
            pods: vec![],
            pods_with_affinity: 0,
            used_ports: vec![],
            images: Default::default(),
            node: node.clone(),
        };
        n.set_node(node);
        n
    }

    fn set_node(&mut self, node: Arc<Node>) {
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        (self.allocatable, self.allowed_pods) = node_allocatable(&node);
        self.images = node
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|i| {
                let size = i.size_bytes.unwrap_or(0);
                i.names
                    .iter()
                    .flatten()
                    .map(move |n| (crate::plugins::image_locality::normalized(n), size))
            })
            .collect();
        self.node = node;
    }

    /// Counts a pod on this node.
    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_requested.0 += p.non_zero.0;
        self.non_zero_requested.1 += p.non_zero.1;
        self.used_ports.extend(p.host_ports.iter().cloned());
        if p.has_affinity() {
            self.pods_with_affinity += 1;
        }
        self.pods.push(p);
    }

    /// Stops counting a pod; returns whether it was there.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.key == key) else {
            return false;
        };
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        self.non_zero_requested.0 -= p.non_zero.0;
        self.non_zero_requested.1 -= p.non_zero.1;
        for hp in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        if p.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        true
    }
}

/// The cache: every node, the pods counted on each, namespaces' labels.
#[derive(Default, Clone)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Pod key → the node it is counted on (or waits for, when the node is unknown).
    pod_nodes: HashMap<String, String>,
    /// Pods bound to nodes the cache does not know (yet, or any more).
    orphans: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Pods assumed onto a node, their binding in flight.
    assumed: HashMap<String, String>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Image → on how many nodes it is.
    image_spread: HashMap<String, usize>,
    /// Pending pods nominated to a node by preemption: pod key → (node, pod).
    nominated: HashMap<String, (String, Arc<PodInfo>)>,
}

impl Cache {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(ns)
    }

    pub fn set_namespace(&mut self, name: &str, labels: Option<BTreeMap<String, String>>) {
        match labels {
            Some(l) => self.namespaces.insert(name.to_string(), l),
            None => self.namespaces.remove(name),
        };
    }

    /// On how many nodes an image is.
    pub fn image_spread(&self, image: &str) -> usize {
        self.image_spread.get(image).copied().unwrap_or(0)
    }

    fn count_images(&mut self, n: &NodeInfo, sign: isize) {
        for image in n.images.keys() {
            let e = self.image_spread.entry(image.clone()).or_default();
            *e = e.saturating_add_signed(sign);
        }
    }

    /// Adds or updates a node.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            let old = self.nodes[i].clone();
            self.count_images(&old, -1);
            self.nodes[i].set_node(node);
            let new = self.nodes[i].clone();
            self.count_images(&new, 1);
            return;
        }
        let mut info = NodeInfo::new(node);
        for p in self.orphans.remove(&name).unwrap_or_default() {
            info.add_pod(p);
        }
        self.count_images(&info, 1);
        self.index.insert(name, self.nodes.len());
        self.nodes.push(info);
    }

    /// Removes a node; its pods wait as orphans (they exist until deleted).
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let info = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        self.count_images(&info, -1);
        self.orphans.insert(name.to_string(), info.pods);
    }

    fn node_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        self.index.get(name).map(|i| &mut self.nodes[*i])
    }

    /// Counts a pod bound (or assumed) to `node`, replacing what was counted for it.
    pub fn add_pod(&mut self, p: Arc<PodInfo>, node: &str) {
        self.remove_pod(&p.key);
        self.pod_nodes.insert(p.key.clone(), node.to_string());
        match self.node_mut(node) {
            Some(n) => n.add_pod(p),
            None => self.orphans.entry(node.to_string()).or_default().push(p),
        }
    }

    /// Stops counting a pod (deleted, finished, or its binding failed).
    pub fn remove_pod(&mut self, key: &str) {
        self.assumed.remove(key);
        self.nominated.remove(key);
        let Some(node) = self.pod_nodes.remove(key) else {
            return;
        };
        if let Some(n) = self.node_mut(&node) {
            n.remove_pod(key);
        } else if let Some(list) = self.orphans.get_mut(&node) {
            list.retain(|p| p.key != key);
            if list.is_empty() {
                self.orphans.remove(&node);
            }
        }
    }

    /// Counts a pod on the node chosen for it before the binding is confirmed.
    pub fn assume(&mut self, p: Arc<PodInfo>, node: &str) {
        let key = p.key.clone();
        self.add_pod(p, node);
        self.assumed.insert(key, node.to_string());
    }

    /// The binding is confirmed (the informer saw the pod bound).
    pub fn confirm(&mut self, key: &str) {
        self.assumed.remove(key);
    }

    /// Whether a pod is assumed (bound by us, not yet seen bound).
    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains_key(key)
    }

    /// The binding failed: the pod no longer counts on the node.
    pub fn forget(&mut self, key: &str) {
        if self.assumed.contains_key(key) {
            self.remove_pod(key);
        }
    }

    /// Records (or with `None` clears) the node a pending pod was nominated to.
    pub fn nominate(&mut self, p: Arc<PodInfo>, node: Option<&str>) {
        match node {
            Some(n) => {
                self.nominated.insert(p.key.clone(), (n.to_string(), p));
            }
            None => {
                self.nominated.remove(&p.key);
            }
        }
    }

    /// Pods nominated to `node` that `pod` must leave room for: other pods of at least
    /// its priority.
    pub fn nominated_for(&self, node: &str, pod: &PodInfo) -> Vec<Arc<PodInfo>> {
        self.nominated
            .values()
            .filter(|(n, p)| n == node && p.key != pod.key && p.priority >= pod.priority)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Where a pod is counted.
    pub fn pod_node(&self, key: &str) -> Option<&str> {
        self.pod_nodes.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "10"}}}))
            .unwrap(),
        )
    }

    fn pod(name: &str, cpu: &str, port: Option<i32>) -> Arc<PodInfo> {
        let ports = port.map(|p| json!([{"containerPort": 80, "hostPort": p}]));
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"containers": [{"name": "c", "ports": ports,
                    "resources": {"requests": {"cpu": cpu}}}]}}))
            .unwrap(),
        )))
    }

    #[test]
    fn pods_are_counted_on_their_node_and_wait_for_unknown_nodes() {
        let mut c = Cache::default();
        c.set_node(node("a", "2"));
        c.add_pod(pod("p", "500m", Some(8080)), "a");
        c.add_pod(pod("q", "1", None), "b");
        let a = c.node("a").unwrap();
        assert_eq!(a.requested.milli_cpu, 500);
        assert_eq!(a.allowed_pods, 10);
        assert_eq!(a.used_ports.len(), 1);
        // b's pod counts once b is known; a pod update replaces what was counted.
        c.set_node(node("b", "2"));
        assert_eq!(c.node("b").unwrap().requested.milli_cpu, 1000);
        c.add_pod(pod("p", "100m", None), "a");
        let a = c.node("a").unwrap();
        assert_eq!((a.requested.milli_cpu, a.used_ports.len()), (100, 0));
        // Removing a node keeps its pods for when it comes back.
        c.remove_node("a");
        assert!(c.node("a").is_none());
        assert_eq!(c.node("b").unwrap().name, "b");
        c.set_node(node("a", "2"));
        assert_eq!(c.node("a").unwrap().pods.len(), 1);
        c.remove_pod("default/p");
        assert!(c.node("a").unwrap().pods.is_empty());
    }

    #[test]
    fn an_assumed_pod_is_forgotten_when_its_binding_fails() {
        let mut c = Cache::default();
        c.set_node(node("a", "2"));
        c.assume(pod("p", "1", None), "a");
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 1000);
        c.forget("default/p");
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 0);
        c.assume(pod("p", "1", None), "a");
        c.confirm("default/p");
        c.forget("default/p");
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 1000);
    }

    #[test]
    fn host_ports_conflict_on_a_shared_address() {
        let hp = |ip: &str, port| HostPort {
            protocol: "TCP".into(),
            ip: ip.into(),
            port,
        };
        assert!(hp("", 80).conflicts(&hp("10.0.0.1", 80)));
        assert!(!hp("10.0.0.2", 80).conflicts(&hp("10.0.0.1", 80)));
        assert!(!hp("", 80).conflicts(&hp("", 81)));
    }
}
