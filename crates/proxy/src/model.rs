//! What the node must do, read from Services and EndpointSlices: one [`ServicePort`] per
//! port of every proxied Service, with the endpoints each traffic policy may use
//! (upstream's `ServicePortName`, `servicePortInfo` and `CategorizeEndpoints`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ferrokube_api::endpointslice::service_of;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Services labelled with this are left to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Services labelled with this have no cluster IP proxying (headless in all but name).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Upstream's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: i32 = 10800;

/// A Service port's name: `namespace/name:port` (`namespace/name` for an unnamed port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// A transport protocol a Service port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lower-case name iptables and nft use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One backend of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
}

impl Endpoint {
    /// `ip:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// One port of a proxied Service, with everything the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Set for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// ClientIP affinity timeout, when the Service has `sessionAffinity: ClientIP`.
    pub affinity_seconds: Option<i32>,
    /// `externalTrafficPolicy: Local` (only meaningful when externally reachable).
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// All endpoints of this port, deduplicated by address, sorted.
    pub endpoints: Vec<Endpoint>,
}

/// Why traffic of one kind has nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// No usable endpoint anywhere: rejected ("has no endpoints").
    NoEndpoints,
    /// A `Local` policy and no usable endpoint on this node: dropped ("has no local
    /// endpoints").
    NoLocalEndpoints,
}

/// How a Service port's traffic is routed on this node: the endpoints each traffic
/// policy uses (upstream's `CategorizeEndpoints`) and the chains that follow from them —
/// the decisions both proxy modes share.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// For `Cluster` policy: ready endpoints anywhere, else serving terminating ones.
    pub cluster: Vec<&'a Endpoint>,
    /// For `Local` policy: ready endpoints on this node, else serving terminating ones.
    pub local: Vec<&'a Endpoint>,
    /// Whether the Service has any usable endpoint on any node.
    pub any: bool,
    /// Cluster-IP traffic uses the local chain.
    pub internal_local: bool,
    /// External traffic (NodePort, external and load-balancer IPs) uses the local chain.
    pub external_local: bool,
    /// What cluster-IP traffic meets when it cannot be routed.
    pub internal_blocked: Option<Blocked>,
    /// What external traffic meets when it cannot be routed.
    pub external_blocked: Option<Blocked>,
    /// The cluster-policy chain (all endpoints) exists.
    pub cluster_chain: bool,
    /// The local-policy chain (this node's endpoints) exists.
    pub local_chain: bool,
    /// The external chain (masquerade, then the policy's chain) exists.
    pub external_chain: bool,
}

/// One step of a Service port's external chain (upstream's `KUBE-EXT-…` / `external-…`),
/// in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalStep<'a> {
    /// Pods (source in this CIDR) may use any endpoint: on to the cluster chain.
    PodsToCluster(&'a str),
    /// Traffic from the node itself is masqueraded…
    MasqueradeLocal,
    /// …and may use any endpoint: on to the cluster chain.
    LocalToCluster,
    /// Everything else (outside clients, keeping their address): the local chain.
    ToLocal,
    /// Everything is masqueraded…
    MasqueradeAll,
    /// …and goes on to the cluster chain.
    ToCluster,
}

impl Categorized<'_> {
    /// The external chain's steps (none when there is no external chain): for a `Local`
    /// policy, pods and the node reach any endpoint and outside clients only this node's;
    /// else all is masqueraded and balanced over the cluster.
    pub fn external_steps<'s>(&self, local_src: Option<&'s str>) -> Vec<ExternalStep<'s>> {
        use ExternalStep::*;
        if !self.external_chain {
            return Vec::new();
        }
        if !self.external_local {
            return vec![MasqueradeAll, ToCluster];
        }
        let mut steps: Vec<ExternalStep<'s>> = local_src.map(PodsToCluster).into_iter().collect();
        steps.extend([MasqueradeLocal, LocalToCluster]);
        if self.local_chain {
            steps.push(ToLocal);
        }
        steps
    }

    /// The endpoints that get a chain of their own, each once.
    pub fn chained_endpoints(&self) -> Vec<&Endpoint> {
        let mut out: Vec<&Endpoint> = Vec::new();
        if self.cluster_chain {
            out.extend(self.cluster.iter().copied());
        }
        if self.local_chain {
            for e in &self.local {
                if !out.iter().any(|o| o.addr() == e.addr()) {
                    out.push(e);
                }
            }
        }
        out
    }
}

impl ServicePort {
    /// Reachable from outside the cluster network (NodePort, externalIPs, load balancer).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// `Local` external traffic policy in effect.
    pub fn external_local(&self) -> bool {
        self.external_policy_local && self.externally_accessible()
    }

    /// Splits the endpoints by traffic policy and decides the chains.
    pub fn categorize(&self) -> Categorized<'_> {
        fn usable<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
            let ready: Vec<_> = eps.clone().filter(|e| e.ready).collect();
            if !ready.is_empty() {
                return ready;
            }
            eps.filter(|e| e.serving && e.terminating).collect()
        }
        let cluster = usable(self.endpoints.iter());
        let local = usable(self.endpoints.iter().filter(|e| e.local));
        let any = !cluster.is_empty();
        let external_local = self.external_local();
        // Cluster endpoints also serve external traffic under a Local policy: pods and
        // the node itself are short-circuited to them (upstream's UsesClusterEndpoints).
        let needs_cluster = !self.internal_policy_local || self.externally_accessible();
        let needs_local = self.internal_policy_local || external_local;
        let cluster = if needs_cluster { cluster } else { Vec::new() };
        let local = if needs_local { local } else { Vec::new() };
        let blocked = |eps: &[&Endpoint]| {
            if !any {
                Some(Blocked::NoEndpoints)
            } else if eps.is_empty() {
                Some(Blocked::NoLocalEndpoints)
            } else {
                None
            }
        };
        let internal_eps = if self.internal_policy_local {
            &local
        } else {
            &cluster
        };
        let external_eps = if external_local { &local } else { &cluster };
        let internal_blocked = blocked(internal_eps);
        let external_blocked = blocked(external_eps);
        Categorized {
            cluster_chain: !cluster.is_empty(),
            local_chain: !local.is_empty(),
            // Upstream's usesExternalTrafficChain: kept whenever an endpoint exists
            // anywhere, so pods and the node reach a Local Service's endpoints on other
            // nodes while outside traffic without a local endpoint is dropped.
            external_chain: self.externally_accessible() && any,
            internal_local: self.internal_policy_local,
            external_local,
            internal_blocked,
            external_blocked,
            cluster,
            local,
            any,
        }
    }
}

/// Builds every proxied Service port from the Services and their slices, for the node
/// `node_name`. Headless and ExternalName Services, Services another proxy owns and ports
/// of protocols the node cannot proxy are left out, as upstream does. Sorted by name.
pub fn service_ports<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
) -> Vec<ServicePort> {
    let endpoints = endpoints_by_port(slices, node_name);
    let mut out = Vec::new();
    for svc in services {
        let labels = svc.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
            continue;
        }
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ip = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .find_map(|ip| ip.parse::<Ipv4Addr>().ok());
        let Some(cluster_ip) = cluster_ip else {
            continue; // headless ("None") or IPv6 only
        };
        let v4 = |ips: &mut dyn Iterator<Item = &String>| -> Vec<Ipv4Addr> {
            ips.filter_map(|s| s.parse().ok()).collect()
        };
        let external_ips = v4(&mut spec.external_ips.iter().flatten());
        let load_balancer_ips = if spec.type_.as_deref() == Some("LoadBalancer") {
            v4(&mut svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_ref()))
        } else {
            Vec::new()
        };
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let node_port_type = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let spn = ServicePortName {
                namespace: ns.to_string(),
                name: name.to_string(),
                port: p.name.clone().unwrap_or_default(),
            };
            let eps = endpoints
                .get(&(spn.clone(), protocol))
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            out.push(ServicePort {
                name: spn,
                protocol,
                cluster_ip,
                port,
                node_port: p
                    .node_port
                    .filter(|_| node_port_type)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0),
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                affinity_seconds,
                external_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                endpoints: eps,
            });
        }
    }
    out.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    out
}

type EndpointsByPort = BTreeMap<(ServicePortName, Protocol), BTreeMap<String, Endpoint>>;

/// Every IPv4 slice's endpoints under their Service port, keyed by address; an address in
/// several slices counts once, ready if any copy is.
fn endpoints_by_port<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
) -> EndpointsByPort {
    let mut out = EndpointsByPort::new();
    for s in slices {
        let Some((ns, svc)) = service_of(s) else {
            continue;
        };
        for p in s.ports.iter().flatten() {
            let (Some(protocol), Some(port)) = (
                Protocol::parse(p.protocol.as_deref()),
                p.port.and_then(|n| u16::try_from(n).ok()),
            ) else {
                continue;
            };
            let key = (
                ServicePortName {
                    namespace: ns.to_string(),
                    name: svc.to_string(),
                    port: p.name.clone().unwrap_or_default(),
                },
                protocol,
            );
            let entry = out.entry(key).or_default();
            for e in &s.endpoints {
                let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                    continue;
                };
                let c = e.conditions.as_ref();
                // Unset conditions mean ready and serving, not terminating (upstream).
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let ep = Endpoint {
                    ip,
                    port,
                    ready,
                    serving: c.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    local: e.node_name.as_deref() == Some(node_name),
                };
                let addr = ep.addr();
                match entry.get(&addr) {
                    Some(old) if old.ready || !ep.ready => {}
                    _ => {
                        entry.insert(addr, ep);
                    }
                }
            }
        }
    }
    out
}

/// UDP endpoints whose flows must be forgotten after a sync: (cluster IP, node port,
/// endpoint IP) of endpoints that went away, and Service IPs that gained their first
/// endpoint (their flows were being rejected). Upstream's stale-conntrack detection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StaleUdp {
    /// Flows to `(service IP, port)` DNATed to an endpoint IP that is gone.
    pub endpoints: BTreeSet<(Ipv4Addr, u16, Ipv4Addr)>,
    /// Node ports whose flows DNATed to a gone endpoint IP.
    pub node_port_endpoints: BTreeSet<(u16, Ipv4Addr)>,
    /// Service `(IP, port)`s that had no endpoints before.
    pub services: BTreeSet<(Ipv4Addr, u16)>,
    /// Node ports that had no endpoints before.
    pub node_ports: BTreeSet<u16>,
}

impl StaleUdp {
    /// What changed between the previous sync's ports and this one's.
    pub fn between(old: &[ServicePort], new: &[ServicePort]) -> StaleUdp {
        let mut out = StaleUdp::default();
        let index = |ports: &[ServicePort]| -> BTreeMap<(ServicePortName, Protocol), ServicePort> {
            ports
                .iter()
                .filter(|p| p.protocol == Protocol::Udp)
                .map(|p| ((p.name.clone(), p.protocol), p.clone()))
                .collect()
        };
        let (old, new) = (index(old), index(new));
        let ips = |p: &ServicePort| -> Vec<Ipv4Addr> {
            std::iter::once(p.cluster_ip)
                .chain(p.external_ips.iter().copied())
                .chain(p.load_balancer_ips.iter().copied())
                .collect()
        };
        let used = |p: &ServicePort| -> BTreeSet<Ipv4Addr> {
            let c = p.categorize();
            c.cluster
                .iter()
                .chain(c.local.iter())
                .map(|e| e.ip)
                .collect()
        };
        for (k, o) in &old {
            let gone: Vec<Ipv4Addr> = match new.get(k) {
                Some(n) => used(o).difference(&used(n)).copied().collect(),
                None => used(o).into_iter().collect(),
            };
            for ep in gone {
                for ip in ips(o) {
                    out.endpoints.insert((ip, o.port, ep));
                }
                if let Some(np) = o.node_port {
                    out.node_port_endpoints.insert((np, ep));
                }
            }
        }
        for (k, n) in &new {
            let had = old.get(k).is_some_and(|o| !used(o).is_empty());
            if !had && !used(n).is_empty() {
                for ip in ips(n) {
                    out.services.insert((ip, n.port));
                }
                if let Some(np) = n.node_port {
                    out.node_ports.insert(np);
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.node_port_endpoints.is_empty()
            && self.services.is_empty()
            && self.node_ports.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        serde_norway::from_str(yaml).unwrap()
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_norway::from_str(yaml).unwrap()
    }

    const WEB: &str = "
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
";

    const WEB_SLICE: &str = "
metadata:
  name: web-abcde
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- {addresses: [10.244.1.5], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-1}
- {addresses: [10.244.2.5], conditions: {ready: false, serving: false, terminating: false}, nodeName: node-2}
- {addresses: [10.244.2.6], conditions: {ready: true}, nodeName: node-2}
";

    #[test]
    fn ports_read_from_services_and_slices() {
        let s = svc(WEB);
        let sl = slice(WEB_SLICE);
        let ports = service_ports([&s], [&sl], "node-1");
        assert_eq!(ports.len(), 2);
        let http = &ports[1];
        assert_eq!(http.name.to_string(), "default/web:http");
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.affinity_seconds, Some(10800));
        assert_eq!(http.endpoints.len(), 3);
        let c = http.categorize();
        let addrs: Vec<String> = c.cluster.iter().map(|e| e.addr()).collect();
        assert_eq!(addrs, ["10.244.1.5:8080", "10.244.2.6:8080"]);
        assert!(c.local.is_empty(), "Cluster policies need no local list");
        assert!(c.cluster_chain && !c.local_chain && c.external_chain);
        assert_eq!(c.internal_blocked, None);
        let dns = &ports[0];
        assert_eq!(dns.name.to_string(), "default/web:dns");
        assert_eq!(dns.protocol, Protocol::Udp);
        assert!(dns.endpoints.is_empty());
        let c = dns.categorize();
        assert!(!c.any);
        assert_eq!(c.internal_blocked, Some(Blocked::NoEndpoints));
        assert!(!c.cluster_chain && !c.external_chain);
    }

    #[test]
    fn headless_external_name_and_foreign_proxies_are_skipped() {
        let headless = svc("
metadata: {name: h, namespace: default}
spec: {clusterIP: None, ports: [{port: 80}]}
");
        let ext = svc("
metadata: {name: e, namespace: default}
spec: {type: ExternalName, externalName: example.com, ports: [{port: 80}]}
");
        let other = svc("
metadata: {name: o, namespace: default, labels: {service.kubernetes.io/service-proxy-name: foo}}
spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}
");
        assert!(service_ports([&headless, &ext, &other], [], "n").is_empty());
    }

    #[test]
    fn local_policy_prefers_ready_then_serving_terminating() {
        let mut s = svc(WEB);
        s.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let sl = slice(
            "
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.5], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-1}
- {addresses: [10.244.2.6], conditions: {ready: true}, nodeName: node-2}
",
        );
        let ports = service_ports([&s], [&sl], "node-1");
        let c = ports[1].categorize();
        assert_eq!(c.cluster.len(), 1);
        assert_eq!(c.cluster[0].ip, Ipv4Addr::new(10, 244, 2, 6));
        assert_eq!(
            c.local.len(),
            1,
            "a serving terminating local endpoint is used"
        );
        assert_eq!(c.local[0].ip, Ipv4Addr::new(10, 244, 1, 5));
        assert!(c.cluster_chain && c.local_chain && c.external_chain);
        assert_eq!(c.chained_endpoints().len(), 2);

        // Both policies Local, nothing on this node: the cluster IP drops, while pods
        // and the node still reach the other node's endpoint through NodePort.
        let mut both = s.clone();
        both.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        let sl2 = slice(
            "
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.2.6], conditions: {ready: true}, nodeName: node-2}
",
        );
        let ports = service_ports([&both], [&sl2], "node-1");
        let c = ports[1].categorize();
        assert_eq!(c.internal_blocked, Some(Blocked::NoLocalEndpoints));
        assert_eq!(c.external_blocked, Some(Blocked::NoLocalEndpoints));
        assert!(c.cluster_chain, "kept for short-circuiting");
        assert!(!c.local_chain);
        assert!(c.external_chain, "pods and the node still go through it");
    }

    #[test]
    fn external_chain_steps_by_policy() {
        use ExternalStep::*;
        let c = |external_chain, external_local, local_chain| Categorized {
            cluster: Vec::new(),
            local: Vec::new(),
            any: true,
            internal_local: false,
            external_local,
            internal_blocked: None,
            external_blocked: None,
            cluster_chain: true,
            local_chain,
            external_chain,
        };
        let pods = Some("10.244.0.0/16");
        assert!(c(false, false, false).external_steps(pods).is_empty());
        assert_eq!(
            c(true, false, false).external_steps(pods),
            [MasqueradeAll, ToCluster]
        );
        assert_eq!(
            c(true, true, true).external_steps(pods),
            [
                PodsToCluster("10.244.0.0/16"),
                MasqueradeLocal,
                LocalToCluster,
                ToLocal
            ]
        );
        // No local endpoint: outside clients fall through to the drop; no pod CIDR known.
        assert_eq!(
            c(true, true, false).external_steps(None),
            [MasqueradeLocal, LocalToCluster]
        );
    }

    #[test]
    fn stale_udp_flows() {
        let s = svc(WEB);
        let sl = slice(
            "
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.5]}
- {addresses: [10.244.1.6]}
",
        );
        let none = service_ports([&s], [], "n");
        let two = service_ports([&s], [&sl], "n");
        let first = StaleUdp::between(&none, &two);
        assert_eq!(
            first.services,
            BTreeSet::from([(Ipv4Addr::new(10, 96, 0, 20), 53)])
        );
        assert!(first.endpoints.is_empty());
        let mut one_slice = sl.clone();
        one_slice.endpoints.pop();
        let one = service_ports([&s], [&one_slice], "n");
        let gone = StaleUdp::between(&two, &one);
        assert!(gone.services.is_empty());
        assert_eq!(
            gone.endpoints,
            BTreeSet::from([(
                Ipv4Addr::new(10, 96, 0, 20),
                53,
                Ipv4Addr::new(10, 244, 1, 6)
            )])
        );
        assert!(StaleUdp::between(&two, &two).is_empty());
    }
}
