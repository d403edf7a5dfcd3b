//! `--proxy-mode=nftables`: upstream's nftables proxier layout — one `ip kube-proxy`
//! table whose verdict maps (`service-ips`, `service-nodeports`, `no-endpoint-services`,
//! `no-endpoint-nodeports`) send packets to per-Service chains that pick an endpoint with
//! `numgen random`, written as one `nft -f` transaction per sync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::config::ProxyConfig;
use crate::model::{Blocked, Endpoint, ExternalStep, ServicePort};
use crate::{chain_hash, run, run_with_input, Chains, Error};

/// The table's family and name.
pub const TABLE: &str = "ip kube-proxy";

/// Base chains: (name, type, hook, priority).
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Regular chains every sync has.
const FIXED_CHAINS: [&str; 7] = [
    "services",
    "service-endpoints-check",
    "nodeport-endpoints-check",
    "cluster-ips-check",
    "masquerading",
    "mark-for-masquerade",
    "reject-chain",
];

/// Maps and sets every sync has, with their declarations.
const FIXED_SETS: [(&str, &str); 5] = [
    ("set", "cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }"),
    (
        "map",
        "service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }",
    ),
    (
        "map",
        "service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }",
    ),
    (
        "map",
        "no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }",
    ),
    (
        "map",
        "no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }",
    ),
];

/// `<hash8>-ns/name/proto/port`: upstream's per-port chain name after its prefix (the
/// hash is of the readable part, which alone could collide after truncation).
fn port_base(p: &ServicePort) -> String {
    hashed(format!(
        "{}/{}/{}/{}",
        p.name.namespace,
        p.name.name,
        p.protocol.as_str(),
        p.name.port
    ))
}

/// `<hash8>-ns/name/proto/port__ip/port`.
fn endpoint_base(p: &ServicePort, e: &Endpoint) -> String {
    hashed(format!(
        "{}/{}/{}/{}__{}/{}",
        p.name.namespace,
        p.name.name,
        p.protocol.as_str(),
        p.name.port,
        e.ip,
        e.port
    ))
}

fn hashed(readable: String) -> String {
    format!("{}-{readable}", chain_hash(&readable, 8))
}

/// One sync's objects: every chain with its rules, every set or map element, the
/// affinity sets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Script {
    /// Chains (base and regular) and their `add rule` lines.
    chains: Chains,
    /// (set or map, key) → value (`None` for a set's element).
    elements: BTreeMap<(&'static str, String), Option<String>>,
    /// Affinity sets and their declarations.
    affinity: BTreeMap<String, String>,
}

impl Script {
    fn chain(&mut self, name: &str) {
        self.chains.declare(name);
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        self.chains
            .push(chain, format_args!("add rule {TABLE} {chain} {rule}"));
    }

    fn element(&mut self, set: &'static str, key: String, value: Option<String>) {
        self.elements.insert((set, key), value);
    }

    /// How many rules it has.
    pub fn rule_count(&self) -> usize {
        self.chains.rule_count()
    }

    fn is_base(chain: &str) -> bool {
        BASE_CHAINS.iter().any(|b| b.0 == chain)
    }

    fn header(&self, out: &mut String, new_chains: &[&String], new_sets: &[(&String, &String)]) {
        let _ = writeln!(
            out,
            "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
        );
        for (name, ty, hook, prio) in BASE_CHAINS {
            let _ = writeln!(
                out,
                "add chain {TABLE} {name} {{ type {ty} hook {hook} priority {prio} ; }}"
            );
        }
        for c in new_chains.iter().filter(|c| !Self::is_base(c)) {
            let _ = writeln!(out, "add chain {TABLE} {c}");
        }
        for (kind, decl) in FIXED_SETS {
            let _ = writeln!(out, "add {kind} {TABLE} {decl}");
        }
        for (_, decl) in new_sets {
            let _ = writeln!(out, "add set {TABLE} {decl}");
        }
    }

    fn add_element(out: &mut String, set: &str, key: &str, value: &Option<String>) {
        match value {
            Some(v) => writeln!(out, "add element {TABLE} {set} {{ {key} : {v} }}"),
            None => writeln!(out, "add element {TABLE} {set} {{ {key} }}"),
        }
        .expect("writing to a String");
    }

    /// `nft -f` input rewriting everything: declare, flush, delete what `existing` has
    /// that this sync does not, fill in rules and elements — one transaction.
    pub fn full(&self, existing: &Existing) -> String {
        let mut out = String::new();
        let chains: Vec<&String> = self.chains.iter().map(|(c, _)| c).collect();
        let sets: Vec<(&String, &String)> = self.affinity.iter().collect();
        self.header(&mut out, &chains, &sets);
        let stale: Vec<&String> = existing
            .chains
            .iter()
            .filter(|c| !self.chains.contains(c) && !Self::is_base(c))
            .collect();
        // (Chains the table does not have yet need no flush.)
        for c in chains
            .iter()
            .filter(|c| Self::is_base(c) || existing.chains.contains(**c))
            .chain(stale.iter())
        {
            let _ = writeln!(out, "flush chain {TABLE} {c}");
        }
        for (kind, decl) in FIXED_SETS {
            let name = decl.split_whitespace().next().unwrap_or_default();
            let _ = writeln!(out, "flush {kind} {TABLE} {name}");
        }
        for c in stale {
            let _ = writeln!(out, "delete chain {TABLE} {c}");
        }
        for s in existing
            .sets
            .iter()
            .filter(|s| s.starts_with("affinity-") && !self.affinity.contains_key(*s))
        {
            let _ = writeln!(out, "delete set {TABLE} {s}");
        }
        for (_, rules) in self.chains.iter() {
            out.push_str(rules);
        }
        for ((set, key), value) in &self.elements {
            Self::add_element(&mut out, set, key, value);
        }
        out
    }

    /// `nft -f` input changing only what differs from `prev` (the last sync applied):
    /// new chains added, changed chains flushed and refilled, gone chains and affinity
    /// sets deleted once nothing refers to them, elements deleted and added one by one.
    /// Affinity sets that stay keep their clients.
    pub fn partial(&self, prev: &Script) -> String {
        let mut out = String::new();
        let new_chains: Vec<&String> = self
            .chains
            .iter()
            .map(|(c, _)| c)
            .filter(|c| !prev.chains.contains(c))
            .collect();
        let new_sets: Vec<(&String, &String)> = self
            .affinity
            .iter()
            .filter(|(s, _)| !prev.affinity.contains_key(*s))
            .collect();
        self.header(&mut out, &new_chains, &new_sets);
        for ((set, key), value) in &prev.elements {
            if self.elements.get(&(*set, key.clone())) != Some(value) {
                let _ = writeln!(out, "delete element {TABLE} {set} {{ {key} }}");
            }
        }
        for (c, rules) in self.chains.iter() {
            match prev.chains.get(c) {
                Some(old) if old == rules => {}
                Some(_) => {
                    let _ = writeln!(out, "flush chain {TABLE} {c}");
                    out.push_str(rules);
                }
                None => out.push_str(rules),
            }
        }
        // Gone chains may refer to each other (a service chain's vmap to its endpoint
        // chains): empty them all before deleting any.
        let gone = self.chains.gone_since(&prev.chains);
        for c in &gone {
            let _ = writeln!(out, "flush chain {TABLE} {c}");
        }
        for c in &gone {
            let _ = writeln!(out, "delete chain {TABLE} {c}");
        }
        for s in prev
            .affinity
            .keys()
            .filter(|s| !self.affinity.contains_key(*s))
        {
            let _ = writeln!(out, "delete set {TABLE} {s}");
        }
        for ((set, key), value) in &self.elements {
            if prev.elements.get(&(*set, key.clone())) != Some(value) {
                Self::add_element(&mut out, set, key, value);
            }
        }
        out
    }
}

/// The chains and sets the table has now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// Renders one sync.
pub fn render(cfg: &ProxyConfig, ports: &[ServicePort]) -> Script {
    let mark = cfg.masquerade_mark();
    let mut s = Script::default();
    for c in FIXED_CHAINS {
        s.chain(c);
    }
    s.rule("filter-prerouting", "ct state new jump firewall-check");
    s.chain("firewall-check");
    s.rule("filter-input", "ct state new jump nodeport-endpoints-check");
    s.rule("filter-input", "ct state new jump service-endpoints-check");
    s.rule(
        "filter-forward",
        "ct state new jump service-endpoints-check",
    );
    s.rule("filter-forward", "ct state new jump cluster-ips-check");
    s.rule("filter-output", "ct state new jump service-endpoints-check");
    s.rule("filter-output", "ct state new jump firewall-check");
    s.rule(
        "filter-output-post-dnat",
        "ct state new jump cluster-ips-check",
    );
    s.rule("nat-output", "jump services");
    s.rule("nat-postrouting", "jump masquerading");
    s.rule("nat-prerouting", "jump services");
    s.rule("masquerading", &format!("meta mark & {mark} == 0 return"));
    s.rule("masquerading", &format!("meta mark set meta mark ^ {mark}"));
    s.rule("masquerading", "masquerade fully-random");
    s.rule(
        "mark-for-masquerade",
        &format!("meta mark set meta mark | {mark}"),
    );
    s.rule("reject-chain", "reject");
    s.rule(
        "cluster-ips-check",
        "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
    );
    s.rule(
        "service-endpoints-check",
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    );
    s.rule(
        "services",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
    );
    let node_ips = if cfg.node_ports_on_all_addresses() {
        "fib daddr type local".to_string()
    } else {
        let cidrs: Vec<String> = cfg
            .node_port_addresses
            .iter()
            .map(|c| c.to_string())
            .collect();
        format!("fib daddr type local ip daddr {{ {} }}", cidrs.join(", "))
    };
    s.rule(
        "nodeport-endpoints-check",
        &format!("{node_ips} meta l4proto . th dport vmap @no-endpoint-nodeports"),
    );
    // NodePorts do not answer on 127.0.0.1 in nftables mode (as upstream).
    s.rule(
        "services",
        &format!(
            "{node_ips} ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
        ),
    );
    let local_src = cfg.local_source();
    for p in ports {
        write_port(cfg, p, local_src.as_deref(), &mut s);
    }
    s
}

fn write_port(cfg: &ProxyConfig, p: &ServicePort, local_src: Option<&str>, s: &mut Script) {
    let base = port_base(p);
    let proto = p.protocol.as_str();
    let svc = format!("service-{base}");
    let local = format!("local-{base}");
    let ext = format!("external-{base}");
    let c = p.categorize();
    let block = |b: Option<Blocked>| match b {
        None => None,
        Some(Blocked::NoEndpoints) => Some("goto reject-chain"),
        Some(Blocked::NoLocalEndpoints) => Some("drop"),
    };
    let internal_drop = block(c.internal_blocked);
    let external_drop = block(c.external_blocked);
    s.element("cluster-ips", p.cluster_ip.to_string(), None);
    let internal_chain = if p.internal_policy_local {
        &local
    } else {
        &svc
    };
    let vip = format!("{} . {proto} . {}", p.cluster_ip, p.port);
    match internal_drop {
        None => s.element("service-ips", vip, Some(format!("goto {internal_chain}"))),
        Some(v) => s.element("no-endpoint-services", vip, Some(v.to_string())),
    }
    for ip in p.external_ips.iter().chain(p.load_balancer_ips.iter()) {
        let key = format!("{ip} . {proto} . {}", p.port);
        if c.external_chain {
            s.element("service-ips", key.clone(), Some(format!("goto {ext}")));
        }
        if let Some(v) = external_drop {
            s.element("no-endpoint-services", key, Some(v.to_string()));
        }
    }
    if let Some(np) = p.node_port {
        let key = format!("{proto} . {np}");
        if c.external_chain {
            s.element(
                "service-nodeports",
                key.clone(),
                Some(format!("goto {ext}")),
            );
        }
        // Checked after DNAT (input hook): what no external-chain rule rewrote — outside
        // clients of a Local Service without an endpoint here — meets this.
        if let Some(v) = external_drop {
            s.element("no-endpoint-nodeports", key, Some(v.to_string()));
        }
    }
    if c.external_chain {
        s.chain(&ext);
    }
    for step in c.external_steps(local_src) {
        let rule = match step {
            ExternalStep::PodsToCluster(src) => {
                format!("ip saddr {src} goto {svc} comment \"short-circuit pod traffic\"")
            }
            ExternalStep::MasqueradeLocal => {
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
                    .to_string()
            }
            ExternalStep::LocalToCluster => {
                format!("fib saddr type local goto {svc} comment \"short-circuit local traffic\"")
            }
            ExternalStep::ToLocal => format!("goto {local}"),
            ExternalStep::MasqueradeAll => {
                "jump mark-for-masquerade comment \"masquerade traffic for external destinations\""
                    .to_string()
            }
            ExternalStep::ToCluster => format!("goto {svc}"),
        };
        s.rule(&ext, &rule);
    }
    if c.cluster_chain {
        s.chain(&svc);
        let dst = format!("ip daddr {} {proto} dport {}", p.cluster_ip, p.port);
        if cfg.masquerade_all {
            s.rule(&svc, &format!("{dst} jump mark-for-masquerade"));
        } else if let Some(src) = local_src {
            s.rule(
                &svc,
                &format!("{dst} ip saddr != {src} jump mark-for-masquerade"),
            );
        }
        write_balancing(p, &svc, &c.cluster, s);
    }
    if c.local_chain {
        s.chain(&local);
        write_balancing(p, &local, &c.local, s);
    }
    for e in c.chained_endpoints() {
        let eb = endpoint_base(p, e);
        let chain = format!("endpoint-{eb}");
        s.chain(&chain);
        s.rule(
            &chain,
            &format!("ip saddr {} jump mark-for-masquerade", e.ip),
        );
        if let Some(secs) = p.affinity_seconds {
            let set = format!("affinity-{eb}");
            s.affinity.insert(
                set.clone(),
                format!("{set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {secs}s ; }}"),
            );
            s.rule(&chain, &format!("update @{set} {{ ip saddr }}"));
        }
        s.rule(
            &chain,
            &format!("meta l4proto {proto} dnat to {}", e.addr()),
        );
    }
}

fn write_balancing(p: &ServicePort, chain: &str, eps: &[&Endpoint], s: &mut Script) {
    if p.affinity_seconds.is_some() {
        for e in eps {
            let eb = endpoint_base(p, e);
            s.rule(
                chain,
                &format!("ip saddr @affinity-{eb} goto endpoint-{eb}"),
            );
        }
    }
    let arms: Vec<String> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto endpoint-{}", endpoint_base(p, e)))
        .collect();
    s.rule(
        chain,
        &format!(
            "numgen random mod {} vmap {{ {} }}",
            eps.len(),
            arms.join(" , ")
        ),
    );
}

/// The chains and sets of the table on the node now (none when it does not exist).
pub fn existing() -> Result<Existing, Error> {
    let mut ex = Existing::default();
    let parse = |bytes: &[u8], kind: &str, into: &mut BTreeSet<String>| {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        for o in v["nftables"].as_array().into_iter().flatten() {
            let obj = &o[kind];
            if obj["table"] == "kube-proxy" {
                if let Some(n) = obj["name"].as_str() {
                    into.insert(n.to_string());
                }
            }
        }
    };
    parse(
        &run("nft", &["-j", "list", "chains", "ip"])?,
        "chain",
        &mut ex.chains,
    );
    parse(
        &run("nft", &["-j", "list", "sets", "ip"])?,
        "set",
        &mut ex.sets,
    );
    Ok(ex)
}

/// Applies one sync's transaction.
pub fn apply(transaction: &str) -> Result<(), Error> {
    run_with_input("nft", &["-f", "-"], transaction)
}

/// Removes the table (`kube-proxy --cleanup`).
pub fn cleanup() -> Result<(), Error> {
    let _ = run_with_input(
        "nft",
        &["-f", "-"],
        &format!("add table {TABLE}\ndelete table {TABLE}\n"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;
    use crate::model::{Protocol, ServicePortName};

    fn port(eps: &[&str]) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "ns1".into(),
                name: "svc1".into(),
                port: "p80".into(),
            },
            protocol: Protocol::Tcp,
            cluster_ip: "172.30.0.41".parse().unwrap(),
            port: 80,
            node_port: Some(3001),
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            endpoints: eps
                .iter()
                .map(|ip| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: 80,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: false,
                })
                .collect(),
        }
    }

    fn cfg() -> ProxyConfig {
        ProxyConfig {
            cluster_cidrs: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            ..Default::default()
        }
    }

    #[test]
    fn names_are_upstreams() {
        let p = port(&["10.180.0.1"]);
        assert_eq!(port_base(&p), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            endpoint_base(&p, &p.endpoints[0]),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn service_with_endpoints_and_node_port() {
        let s = render(&cfg(), &[port(&["10.180.0.1", "10.180.0.2"])]);
        let t = s.full(&Existing::default());
        for want in [
            "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
            "add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-ULMVA6XW-ns1/svc1/tcp/p80 }",
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
            "numgen random mod 2 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 , 1 : goto endpoint-",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
            "add rule ip kube-proxy external-ULMVA6XW-ns1/svc1/tcp/p80 jump mark-for-masquerade",
            "add element ip kube-proxy cluster-ips { 172.30.0.41 }",
        ] {
            assert!(t.contains(want), "missing {want}\n{t}");
        }
    }

    #[test]
    fn no_endpoints_reject_and_stale_objects_go() {
        let s = render(&cfg(), &[port(&[])]);
        let existing = Existing {
            chains: ["services", "service-OLD-ns/gone/tcp/", "nat-output"]
                .map(String::from)
                .into(),
            sets: ["affinity-OLD-ns/gone/tcp/__10.1.1.1/80", "cluster-ips"]
                .map(String::from)
                .into(),
        };
        let t = s.full(&existing);
        assert!(t.contains("add element ip kube-proxy no-endpoint-services { 172.30.0.41 . tcp . 80 : goto reject-chain }"), "{t}");
        assert!(t.contains(
            "add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 : goto reject-chain }"
        ));
        assert!(t.contains("flush chain ip kube-proxy service-OLD-ns/gone/tcp/\n"));
        assert!(t.contains("delete chain ip kube-proxy service-OLD-ns/gone/tcp/\n"));
        assert!(t.contains("delete set ip kube-proxy affinity-OLD-ns/gone/tcp/__10.1.1.1/80\n"));
        assert!(!t.contains("delete chain ip kube-proxy nat-output"));
        assert!(!t.contains("delete set ip kube-proxy cluster-ips"));
        // Deletions come after every flush, rules after deletions.
        let flush = t.rfind("flush ").unwrap();
        let delete = t.find("delete ").unwrap();
        let rule = t.find("add rule").unwrap();
        assert!(flush < delete && delete < rule);
    }

    #[test]
    fn partial_syncs_change_only_what_differs() {
        let one = render(&cfg(), &[port(&["10.180.0.1"])]);
        let same = render(&cfg(), &[port(&["10.180.0.1"])]);
        let t = same.partial(&one);
        assert!(!t.contains("add rule"), "{t}");
        assert!(!t.contains("element"), "{t}");
        let moved = render(&cfg(), &[port(&["10.180.0.2"])]);
        let t = moved.partial(&one);
        for want in [
            "flush chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80\n",
            "add chain ip kube-proxy endpoint-",
            "flush chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80\ndelete chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80\n",
            "dnat to 10.180.0.2:80",
        ] {
            assert!(t.contains(want), "missing {want}\n{t}");
        }
        assert!(
            !t.contains("add element"),
            "the maps still point at the same chains: {t}"
        );
        // The service chain is refilled before the endpoint chain it used goes.
        assert!(t.find("numgen").unwrap() < t.find("delete chain").unwrap());
        let gone = render(&cfg(), &[]);
        let t = gone.partial(&one);
        // Every gone chain is emptied before the first is deleted.
        assert!(
            t.rfind("flush chain").unwrap() < t.find("delete chain").unwrap(),
            "{t}"
        );
        assert!(
            t.contains("delete element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 }"),
            "{t}"
        );
        assert!(
            t.contains("delete element ip kube-proxy cluster-ips { 172.30.0.41 }"),
            "{t}"
        );
        // Elements go before the chains they name.
        assert!(t.find("delete element").unwrap() < t.find("delete chain").unwrap());
        let none = render(&cfg(), &[port(&[])]);
        let t = none.partial(&one);
        assert!(
            t.contains("delete element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 }"),
            "{t}"
        );
        assert!(t.contains("add element ip kube-proxy no-endpoint-services { 172.30.0.41 . tcp . 80 : goto reject-chain }"), "{t}");
    }

    #[test]
    fn affinity_sets() {
        let mut p = port(&["10.180.0.1"]);
        p.affinity_seconds = Some(60);
        let s = render(&cfg(), &[p]);
        let t = s.full(&Existing::default());
        assert!(t.contains("add set ip kube-proxy affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }"));
        assert!(t.contains(
            "ip saddr @affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 goto endpoint-5OJB2KTY"
        ));
        assert!(
            t.contains("update @affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 { ip saddr }")
        );
        assert!(
            !t.contains("flush set ip kube-proxy affinity-"),
            "affinity survives syncs"
        );
    }
}
