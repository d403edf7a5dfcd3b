//! Node IPAM (upstream's `node-ipam-controller` with its `RangeAllocator`): with
//! `--allocate-node-cidrs`, every Node gets a `spec.podCIDR`/`podCIDRs` of
//! `--node-cidr-mask-size` from each `--cluster-cidr` (one per IP family). Ranges Nodes
//! already hold and those overlapping `--service-cluster-ip-range` are never handed out;
//! a deleted Node's ranges are free again. When a range runs out, the Node gets a
//! `CIDRNotAvailable` event and is retried.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ferrokube_client::events::Recorder;
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Patch, Store, WorkQueue};
use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "node_ipam";
const COMPONENT: &str = "cidrAllocator";

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::/n` (host bits must be zero).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("invalid CIDR address: {s}");
        let (ip, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > Self::width_of(&addr) {
            return Err(bad());
        }
        let c = Cidr { addr, prefix };
        let base = c.base();
        if c.value() != base {
            return Err(bad());
        }
        Ok(c)
    }

    fn width_of(addr: &IpAddr) -> u8 {
        if addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn width(&self) -> u8 {
        Self::width_of(&self.addr)
    }

    fn value(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn base(&self) -> u128 {
        let host = self.width() - self.prefix;
        if host >= 128 {
            0
        } else {
            (self.value() >> host) << host
        }
    }

    fn from_value(v4: bool, value: u128, prefix: u8) -> Cidr {
        let addr = if v4 {
            IpAddr::V4((value as u32).into())
        } else {
            IpAddr::V6(value.into())
        };
        Cidr { addr, prefix }
    }

    /// The first and last address.
    fn range(&self) -> (u128, u128) {
        let host = u32::from(self.width() - self.prefix);
        let size = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        (self.base(), self.base() + size)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The node ranges of one cluster CIDR: which are taken, and where the next search
/// starts (upstream's `CidrSet`).
#[derive(Debug)]
pub struct CidrSet {
    cluster: Cidr,
    node_prefix: u8,
    used: BTreeSet<u128>,
    next: u128,
}

impl CidrSet {
    /// The set of `/node_prefix` ranges of `cluster` (for IPv6 at most 2^16 of them, as
    /// upstream).
    pub fn new(cluster: Cidr, node_prefix: u8) -> Result<CidrSet, String> {
        if node_prefix < cluster.prefix || node_prefix > cluster.width() {
            return Err(format!(
                "node CIDR mask size {node_prefix} must be between the cluster CIDR's {} and {}",
                cluster.prefix,
                cluster.width()
            ));
        }
        // (Upstream bounds the count of ranges for IPv6 only.)
        if !cluster.addr.is_ipv4() && node_prefix - cluster.prefix > 16 {
            return Err(format!(
                "the node CIDR mask size {node_prefix} is too big for cluster CIDR {cluster}: \
                 at most 16 bits more than the cluster's"
            ));
        }
        Ok(CidrSet {
            cluster,
            node_prefix,
            used: BTreeSet::new(),
            next: 0,
        })
    }

    fn count(&self) -> u128 {
        1u128 << (self.node_prefix - self.cluster.prefix)
    }

    fn step(&self) -> u32 {
        u32::from(self.cluster.width() - self.node_prefix)
    }

    fn nth(&self, i: u128) -> Cidr {
        let value = self.cluster.base() + (i << self.step());
        Cidr::from_value(self.cluster.addr.is_ipv4(), value, self.node_prefix)
    }

    /// The indexes of the node ranges overlapping `c` (none if it lies outside).
    fn indexes(&self, c: &Cidr) -> Option<(u128, u128)> {
        if c.addr.is_ipv4() != self.cluster.addr.is_ipv4() {
            return None;
        }
        let (lo, hi) = c.range();
        let (clo, chi) = self.cluster.range();
        if hi < clo || lo > chi {
            return None;
        }
        let (lo, hi) = (lo.max(clo), hi.min(chi));
        Some(((lo - clo) >> self.step(), (hi - clo) >> self.step()))
    }

    /// Marks every node range overlapping `c` as taken.
    pub fn occupy(&mut self, c: &Cidr) {
        if let Some((a, b)) = self.indexes(c) {
            // At most 2^16 ranges in a set.
            for i in a..=b {
                self.used.insert(i);
            }
        }
    }

    /// Frees the node range `c` (if it is one of this set's).
    pub fn release(&mut self, c: &Cidr) {
        if c.prefix == self.node_prefix {
            if let Some((a, _)) = self.indexes(c) {
                self.used.remove(&a);
            }
        }
    }

    /// Takes the next free range after the last one taken (wrapping around).
    pub fn allocate(&mut self) -> Option<Cidr> {
        let n = self.count();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.used.insert(i) {
                self.next = (i + 1) % n;
                return Some(self.nth(i));
            }
        }
        None
    }
}

/// What `--allocate-node-cidrs` needs.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `--allocate-node-cidrs`.
    pub allocate: bool,
    /// `--cluster-cidr`, comma-separated (one per family).
    pub cluster_cidr: String,
    /// `--service-cluster-ip-range`.
    pub service_cidr: String,
    /// `--node-cidr-mask-size-ipv4` (or `--node-cidr-mask-size`), default 24.
    pub mask_ipv4: Option<u8>,
    /// `--node-cidr-mask-size-ipv6` (or `--node-cidr-mask-size`), default 64.
    pub mask_ipv6: Option<u8>,
}

impl Config {
    /// One set per cluster CIDR, with the service ranges taken.
    pub fn sets(&self) -> Result<Vec<CidrSet>, String> {
        let clusters: Vec<Cidr> = self
            .cluster_cidr
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()?;
        if clusters.is_empty() {
            return Err("--cluster-cidr is required with --allocate-node-cidrs".into());
        }
        let v4 = clusters.iter().filter(|c| c.addr.is_ipv4()).count();
        if clusters.len() > 2 || v4 > 1 || clusters.len() - v4 > 1 {
            return Err(
                "--cluster-cidr takes at most one IPv4 and one IPv6 CIDR (dual-stack)".into(),
            );
        }
        let services: Vec<Cidr> = self
            .service_cidr
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()?;
        let mut sets = Vec::new();
        for c in clusters {
            let mask = if c.addr.is_ipv4() {
                self.mask_ipv4.unwrap_or(24)
            } else {
                self.mask_ipv6.unwrap_or(64)
            };
            let mut set = CidrSet::new(c, mask)?;
            for s in &services {
                set.occupy(s);
            }
            sets.push(set);
        }
        Ok(sets)
    }
}

/// Registers the Node informer; the runner gives Nodes their ranges.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    if !cx.node_ipam.allocate {
        return Err("--allocate-node-cidrs is false".into());
    }
    let sets = cx.node_ipam.sets()?;
    let queue: WorkQueue<String> = WorkQueue::new();
    let ipam = Arc::new(Ipam {
        cx: cx.clone(),
        sets: Mutex::new(sets),
        nodes: informers.informer::<Node>().store(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    {
        let (q, ipam) = (queue.clone(), ipam.clone());
        informers.informer::<Node>().on_event(move |e| match e {
            Event::Added(n) | Event::Updated(_, n) => {
                // Ranges a Node holds are never handed to another.
                ipam.occupy(n);
                if pod_cidrs(n).is_empty() {
                    q.add(n.metadata.name.clone().unwrap_or_default());
                }
            }
            Event::Deleted(n) => ipam.release(n),
        });
    }
    Ok(Runner::new(QUEUE, queue, 1, move |name| {
        let ipam = ipam.clone();
        async move { ipam.sync(&name).await }
    }))
}

fn pod_cidrs(n: &Node) -> Vec<String> {
    let spec = n.spec.clone().unwrap_or_default();
    match spec.pod_cidrs {
        Some(v) if !v.is_empty() => v,
        _ => spec.pod_cidr.into_iter().collect(),
    }
}

struct Ipam {
    cx: Context,
    sets: Mutex<Vec<CidrSet>>,
    nodes: Store<Node>,
    recorder: Recorder,
}

impl Ipam {
    fn occupy(&self, n: &Node) {
        let mut sets = self.sets.lock().expect("cidr sets lock");
        for c in pod_cidrs(n).iter().filter_map(|c| Cidr::parse(c).ok()) {
            for s in sets.iter_mut() {
                s.occupy(&c);
            }
        }
    }

    fn release(&self, n: &Node) {
        let mut sets = self.sets.lock().expect("cidr sets lock");
        for c in pod_cidrs(n).iter().filter_map(|c| Cidr::parse(c).ok()) {
            for s in sets.iter_mut() {
                s.release(&c);
            }
        }
    }

    async fn sync(&self, name: &str) -> Result<(), Error> {
        if self.nodes.get(name).is_none() {
            return Ok(());
        }
        // Read afresh: the cache may not show a range given a moment ago.
        let api: Api<Node> = Api::all(self.cx.client.clone());
        let node = match api.get_opt(name).await? {
            Some(n) => n,
            None => return Ok(()),
        };
        if !pod_cidrs(&node).is_empty() {
            self.occupy(&node);
            return Ok(());
        }
        let picked: Option<Vec<Cidr>> = {
            let mut sets = self.sets.lock().expect("cidr sets lock");
            let mut picked = Vec::new();
            for s in sets.iter_mut() {
                match s.allocate() {
                    Some(c) => picked.push(c),
                    None => break,
                }
            }
            if picked.len() == sets.len() {
                Some(picked)
            } else {
                for (s, c) in sets.iter_mut().zip(&picked) {
                    s.release(c);
                }
                None
            }
        };
        let Some(cidrs) = picked else {
            crate::record_node_status_change(&self.recorder, name, "CIDRNotAvailable").await;
            return Err(Error::Sync(format!("no CIDR left for node {name}")));
        };
        let texts: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
        // Written only over the Node as read (its resourceVersion), so no range is ever
        // replaced.
        let patch = json!({
            "metadata": {"uid": node.metadata.uid, "resourceVersion": node.metadata.resource_version},
            "spec": {"podCIDR": texts[0], "podCIDRs": texts},
        });
        match api.patch(name, &Patch::Strategic(patch)).await {
            Ok(_) => {
                tracing::info!(node = name, cidrs = ?texts, "allocated pod CIDRs");
                Ok(())
            }
            Err(e) => {
                let mut sets = self.sets.lock().expect("cidr sets lock");
                for (s, c) in sets.iter_mut().zip(&cidrs) {
                    s.release(c);
                }
                if e.is_not_found() {
                    Ok(())
                } else {
                    // (A conflict: the Node changed; the retry reads it again.)
                    Err(e.into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cluster: &str, mask: u8) -> CidrSet {
        CidrSet::new(Cidr::parse(cluster).unwrap(), mask).unwrap()
    }

    #[test]
    fn allocates_in_order_and_wraps_to_freed_ranges() {
        let mut s = set("10.244.0.0/22", 24);
        let got: Vec<String> = (0..4).map(|_| s.allocate().unwrap().to_string()).collect();
        assert_eq!(
            got,
            [
                "10.244.0.0/24",
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.3.0/24"
            ]
        );
        assert!(s.allocate().is_none());
        s.release(&Cidr::parse("10.244.1.0/24").unwrap());
        assert_eq!(s.allocate().unwrap().to_string(), "10.244.1.0/24");
    }

    #[test]
    fn occupied_and_service_ranges_are_skipped() {
        let cfg = Config {
            allocate: true,
            cluster_cidr: "10.96.0.0/15".into(),
            service_cidr: "10.96.0.0/16".into(),
            mask_ipv4: Some(24),
            ..Default::default()
        };
        let mut sets = cfg.sets().unwrap();
        let s = &mut sets[0];
        s.occupy(&Cidr::parse("10.97.0.0/24").unwrap());
        assert_eq!(s.allocate().unwrap().to_string(), "10.97.1.0/24");
    }

    #[test]
    fn dual_stack_and_bad_input() {
        let cfg = Config {
            allocate: true,
            cluster_cidr: "10.244.0.0/16,fd00:10:244::/56".into(),
            ..Default::default()
        };
        let mut sets = cfg.sets().unwrap();
        assert_eq!(sets[1].allocate().unwrap().to_string(), "fd00:10:244::/64");
        assert!(Cidr::parse("10.244.0.1/16").is_err());
        assert!(Cidr::parse("10.244.0.0/33").is_err());
        assert!(CidrSet::new(Cidr::parse("10.0.0.0/8").unwrap(), 28).is_ok());
        assert!(CidrSet::new(Cidr::parse("fd00::/48").unwrap(), 80).is_err());
        let two_v4 = Config {
            cluster_cidr: "10.0.0.0/16,10.1.0.0/16".into(),
            ..cfg
        };
        assert!(two_v4.sets().is_err());
        assert!(Config::default().sets().is_err());
    }
}
