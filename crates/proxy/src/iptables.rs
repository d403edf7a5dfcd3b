//! `--proxy-mode=iptables`: the `nat` and `filter` rules of upstream's iptables proxier,
//! written as one `iptables-restore --noflush` input per sync (KUBE-SERVICES,
//! KUBE-SVC-*, KUBE-SVL-*, KUBE-EXT-*, KUBE-SEP-*, KUBE-NODEPORTS, KUBE-MARK-MASQ,
//! KUBE-POSTROUTING; REJECT/DROP for Services without endpoints in `filter`), with the
//! jumps from the built-in chains kept in place by `iptables -C` / `-I`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::config::ProxyConfig;
use crate::model::{Blocked, Endpoint, ExternalStep, ServicePort};
use crate::{chain_hash, run, run_with_input, Chains, Error};

/// Chains kube-proxy owns per Service and endpoint; stale ones are deleted.
const OWNED_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// The fixed chains kube-proxy makes (in `filter`, `nat` or both).
const FIXED_CHAINS: [&str; 8] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-FORWARD",
    "KUBE-FIREWALL",
    "KUBE-PROXY-FIREWALL",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// The jumps from built-in chains into kube-proxy's: (table, chain, rule).
pub const JUMPS: &[(&str, &str, &str)] = &[
    (
        "filter",
        "INPUT",
        "-m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    ("filter", "INPUT", "-j KUBE-FIREWALL"),
    ("filter", "OUTPUT", "-j KUBE-FIREWALL"),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ),
];

/// `KUBE-SVC-<hash>` and friends: upstream's names (sha256 of the port name and protocol,
/// base32, 16 characters).
fn port_chain(prefix: &str, p: &ServicePort) -> String {
    format!(
        "{prefix}{}",
        chain_hash(&format!("{}{}", p.name, p.protocol.as_str()), 16)
    )
}

fn endpoint_chain(p: &ServicePort, e: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(
            &format!("{}{}{}", p.name, p.protocol.as_str(), e.addr()),
            16
        )
    )
}

/// One sync's rules of both tables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tables {
    pub filter: Table,
    pub nat: Table,
}

impl Tables {
    /// Restore input rewriting every chain; chains of gone Services and endpoints among
    /// `existing_nat` (what `iptables-save` lists now) are deleted in the same breath.
    pub fn full(&self, existing_nat: &[String]) -> String {
        let stale: Vec<&str> = existing_nat
            .iter()
            .map(String::as_str)
            .filter(|c| OWNED_PREFIXES.iter().any(|p| c.starts_with(p)))
            .filter(|c| !self.nat.chains.contains(c))
            .collect();
        format!(
            "{}{}",
            self.filter.text("filter", None, &[]),
            self.nat.text("nat", None, &stale)
        )
    }

    /// Restore input rewriting only the nat chains that differ from `prev` (the last
    /// sync that was applied), deleting those it had and this one has not: upstream's
    /// partial sync, which keeps a sync small however many Services there are.
    pub fn partial(&self, prev: &Tables) -> String {
        let stale: Vec<&str> = self
            .nat
            .chains
            .gone_since(&prev.nat.chains)
            .into_iter()
            .map(String::as_str)
            .collect();
        format!(
            "{}{}",
            self.filter.text("filter", None, &[]),
            self.nat.text("nat", Some(&prev.nat), &stale)
        )
    }
}

/// A table's chains, each with its rules in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    chains: Chains,
}

impl Table {
    fn chain(&mut self, name: &str) {
        self.chains.declare(name);
    }

    fn rule(&mut self, chain: &str, args: &str) {
        self.chains.push(chain, format_args!("-A {chain} {args}"));
    }

    /// How many rules it has.
    pub fn rule_count(&self) -> usize {
        self.chains.rule_count()
    }

    /// Restore input: the chains that differ from `prev` (all without one), then `-X`
    /// for `stale`.
    fn text(&self, name: &str, prev: Option<&Table>, stale: &[&str]) -> String {
        let changed: Vec<(&String, &String)> = self
            .chains
            .iter()
            .filter(|(c, r)| prev.is_none_or(|p| p.chains.get(c) != Some(*r)))
            .collect();
        let mut out = format!("*{name}\n");
        for (c, _) in &changed {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for c in stale {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (_, rules) in &changed {
            out.push_str(rules);
        }
        for c in stale {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// Renders every rule for `ports`.
pub fn render(cfg: &ProxyConfig, ports: &[ServicePort]) -> Tables {
    let mark = cfg.masquerade_mark();
    let mut nat = Table::default();
    let mut filter = Table::default();
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        nat.chain(c);
    }
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-FIREWALL",
        "KUBE-PROXY-FIREWALL",
    ] {
        filter.chain(c);
    }
    nat.rule(
        "KUBE-POSTROUTING",
        &format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
    );
    // Clear the mark: a packet re-traversing the stack is not masqueraded twice.
    nat.rule("KUBE-POSTROUTING", &format!("-j MARK --xor-mark {mark}"));
    nat.rule(
        "KUBE-POSTROUTING",
        "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    );
    nat.rule("KUBE-MARK-MASQ", &format!("-j MARK --or-mark {mark}"));
    if cfg.localhost_node_ports {
        filter.rule(
            "KUBE-FIREWALL",
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        );
    }
    filter.rule("KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP");
    filter.rule(
        "KUBE-FORWARD",
        &format!("-m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"),
    );
    filter.rule(
        "KUBE-FORWARD",
        "-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    );
    let local_src = cfg.local_source();
    for p in ports {
        write_port(cfg, p, local_src.as_deref(), &mut nat, &mut filter);
    }
    // NodePorts last: every other destination matched first.
    let last = "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    if cfg.node_port_addresses.is_empty() || cfg.node_port_addresses.iter().any(|c| c.prefix == 0) {
        nat.rule(
            "KUBE-SERVICES",
            &format!("{last} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"),
        );
    } else {
        for c in &cfg.node_port_addresses {
            nat.rule(
                "KUBE-SERVICES",
                &format!("{last} -d {c} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"),
            );
        }
    }
    Tables { filter, nat }
}

fn write_port(
    cfg: &ProxyConfig,
    p: &ServicePort,
    local_src: Option<&str>,
    nat: &mut Table,
    filter: &mut Table,
) {
    let name = p.name.to_string();
    let proto = p.protocol.as_str();
    let c = p.categorize();
    let svc = port_chain("KUBE-SVC-", p);
    let svl = port_chain("KUBE-SVL-", p);
    let ext = port_chain("KUBE-EXT-", p);
    let internal_chain = if c.internal_local { &svl } else { &svc };
    let block = |b: Option<Blocked>| match b {
        None => None,
        Some(Blocked::NoEndpoints) => Some(("REJECT", format!("{name} has no endpoints"))),
        Some(Blocked::NoLocalEndpoints) => Some(("DROP", format!("{name} has no local endpoints"))),
    };
    let internal_drop = block(c.internal_blocked);
    let external_drop = block(c.external_blocked);
    let dport = |ip: &std::net::Ipv4Addr, port: u16| {
        format!("-m {proto} -p {proto} -d {ip}/32 --dport {port}")
    };
    // Cluster IP.
    match &internal_drop {
        None => nat.rule(
            "KUBE-SERVICES",
            &format!(
                "-m comment --comment \"{name} cluster IP\" {} -j {internal_chain}",
                dport(&p.cluster_ip, p.port)
            ),
        ),
        Some((target, comment)) => filter.rule(
            "KUBE-SERVICES",
            &format!(
                "-m comment --comment \"{comment}\" {} -j {target}",
                dport(&p.cluster_ip, p.port)
            ),
        ),
    }
    // External IPs and load-balancer IPs.
    for (ip, what) in p
        .external_ips
        .iter()
        .map(|i| (i, "external IP"))
        .chain(p.load_balancer_ips.iter().map(|i| (i, "loadbalancer IP")))
    {
        if c.external_chain {
            nat.rule(
                "KUBE-SERVICES",
                &format!(
                    "-m comment --comment \"{name} {what}\" {} -j {ext}",
                    dport(ip, p.port)
                ),
            );
        }
        if let Some((target, comment)) = &external_drop {
            filter.rule(
                "KUBE-EXTERNAL-SERVICES",
                &format!(
                    "-m comment --comment \"{comment}\" {} -j {target}",
                    dport(ip, p.port)
                ),
            );
        }
    }
    // Node port.
    if let Some(np) = p.node_port {
        if c.external_chain {
            nat.rule(
                "KUBE-NODEPORTS",
                &format!("-m comment --comment {name} -m {proto} -p {proto} --dport {np} -j {ext}"),
            );
        }
        // Traffic that finds no rule in the external chain (outside clients of a Local
        // Service without an endpoint here) keeps its node destination and meets this.
        if let Some((target, comment)) = &external_drop {
            filter.rule(
                "KUBE-EXTERNAL-SERVICES",
                &format!(
                    "-m comment --comment \"{comment}\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j {target}"
                ),
            );
        }
    }
    if c.external_chain {
        nat.chain(&ext);
    }
    for step in c.external_steps(local_src) {
        let rule = match step {
            ExternalStep::PodsToCluster(src) => format!(
                "-m comment --comment \"pod traffic for {name} external destinations\" -s {src} -j {svc}"
            ),
            ExternalStep::MasqueradeLocal => format!(
                "-m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            ),
            ExternalStep::LocalToCluster => format!(
                "-m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc}"
            ),
            ExternalStep::ToLocal => format!("-j {svl}"),
            ExternalStep::MasqueradeAll => format!(
                "-m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            ),
            ExternalStep::ToCluster => format!("-j {svc}"),
        };
        nat.rule(&ext, &rule);
    }
    if c.cluster_chain {
        nat.chain(&svc);
        let vip = dport(&p.cluster_ip, p.port);
        if cfg.masquerade_all {
            nat.rule(
                &svc,
                &format!("-m comment --comment \"{name} cluster IP\" {vip} -j KUBE-MARK-MASQ"),
            );
        } else if let Some(src) = local_src {
            // Traffic from outside the pod network (the node, other hosts) is
            // masqueraded so that replies come back through this node.
            nat.rule(
                &svc,
                &format!(
                    "-m comment --comment \"{name} cluster IP\" {vip} ! -s {src} -j KUBE-MARK-MASQ"
                ),
            );
        }
        write_balancing(p, &svc, &c.cluster, nat);
    }
    if c.local_chain {
        nat.chain(&svl);
        write_balancing(p, &svl, &c.local, nat);
    }
    // Endpoint chains.
    for e in c.chained_endpoints() {
        let sep = endpoint_chain(p, e);
        nat.chain(&sep);
        nat.rule(
            &sep,
            &format!(
                "-m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ",
                e.ip
            ),
        );
        let affinity = if p.affinity_seconds.is_some() {
            format!(" -m recent --name {sep} --mask 255.255.255.255 --rsource --set")
        } else {
            String::new()
        };
        nat.rule(
            &sep,
            &format!(
                "-m comment --comment {name}{affinity} -m {proto} -p {proto} -j DNAT --to-destination {}",
                e.addr()
            ),
        );
    }
}

/// The load balancing of a Service chain: sticky clients first, then random choice with
/// upstream's probabilities (1/n, 1/(n-1), …, the last always).
fn write_balancing(p: &ServicePort, chain: &str, eps: &[&Endpoint], nat: &mut Table) {
    let name = p.name.to_string();
    if let Some(secs) = p.affinity_seconds {
        for e in eps {
            nat.rule(
                chain,
                &format!(
                    "-m comment --comment \"{name} -> {}\" -m recent --name {} --mask 255.255.255.255 --rsource --rcheck --seconds {secs} --reap -j {}",
                    e.addr(),
                    endpoint_chain(p, e),
                    endpoint_chain(p, e)
                ),
            );
        }
    }
    let n = eps.len();
    for (i, e) in eps.iter().enumerate() {
        let stat = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        nat.rule(
            chain,
            &format!(
                "-m comment --comment \"{name} -> {}\"{stat} -j {}",
                e.addr(),
                endpoint_chain(p, e)
            ),
        );
    }
}

/// The chains `iptables-save -t <table>` lists.
pub fn existing_chains(table: &str) -> Result<Vec<String>, Error> {
    let out = run("iptables-save", &["-t", table])?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// Makes sure kube-proxy's chains exist and the built-in chains jump to them.
pub fn ensure_jumps() -> Result<(), Error> {
    // Missing chains are created; present ones are left as they are (a restore
    // declaring them would flush them, and a partial sync rewrites only what changed).
    let mut made = BTreeSet::new();
    for (table, _, rule) in JUMPS {
        let target = rule.rsplit(' ').next().unwrap_or_default();
        if made.insert((*table, target)) {
            let _ = std::process::Command::new("iptables")
                .args(["-w", "-t", table, "-N", target])
                .output();
        }
    }
    for (table, chain, rule) in JUMPS {
        let args = split_args(rule);
        let check = std::process::Command::new("iptables")
            .args(["-w", "-t", table, "-C", chain])
            .args(&args)
            .output()
            .map_err(|e| Error::Exec("iptables".into(), e.to_string()))?;
        if check.status.success() {
            continue;
        }
        let mut insert = vec!["-w", "-t", table, "-I", chain];
        insert.extend(args.iter().map(String::as_str));
        run("iptables", &insert)?;
    }
    Ok(())
}

/// Splits a rule into arguments, honouring double quotes.
fn split_args(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in rule.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Applies restore input (both tables) in one transaction.
pub fn apply(input: &str) -> Result<(), Error> {
    run_with_input(
        "iptables-restore",
        &["-w", "--noflush", "--counters"],
        input,
    )
}

/// Removes everything kube-proxy made (`kube-proxy --cleanup`).
pub fn cleanup() -> Result<(), Error> {
    for (table, chain, rule) in JUMPS {
        let _ = std::process::Command::new("iptables")
            .args(["-w", "-t", table, "-D", chain])
            .args(split_args(rule))
            .output();
    }
    for table in ["filter", "nat"] {
        // Only kube-proxy's own chains: the fixed ones it jumps to and creates, and the
        // per-Service and per-endpoint ones.
        let chains: Vec<String> = existing_chains(table)?
            .into_iter()
            .filter(|c| {
                OWNED_PREFIXES.iter().any(|p| c.starts_with(p))
                    || FIXED_CHAINS.contains(&c.as_str())
            })
            .collect();
        if chains.is_empty() {
            continue;
        }
        let mut input = format!("*{table}\n");
        for c in &chains {
            let _ = writeln!(input, ":{c} - [0:0]");
        }
        for c in &chains {
            let _ = writeln!(input, "-X {c}");
        }
        input.push_str("COMMIT\n");
        run_with_input("iptables-restore", &["-w", "--noflush"], &input)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;
    use crate::model::{service_ports, Protocol, ServicePortName};

    fn port(eps: &[(&str, bool, bool)]) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "ns1".into(),
                name: "svc1".into(),
                port: "p80".into(),
            },
            protocol: Protocol::Tcp,
            cluster_ip: "172.30.0.41".parse().unwrap(),
            port: 80,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            endpoints: eps
                .iter()
                .map(|(ip, ready, local)| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: 80,
                    ready: *ready,
                    serving: *ready,
                    terminating: false,
                    local: *local,
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

    /// Each table's full restore input.
    struct Text {
        nat: String,
        filter: String,
    }

    fn full(t: Tables, existing: &[String]) -> Text {
        let all = t.full(existing);
        let at = all.find("*nat").unwrap();
        Text {
            filter: all[..at].to_string(),
            nat: all[at..].to_string(),
        }
    }

    #[test]
    fn chain_names_are_upstreams() {
        // Names from upstream's proxier tests.
        let p = port(&[("10.180.0.1", true, false)]);
        assert_eq!(port_chain("KUBE-SVC-", &p), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(port_chain("KUBE-EXT-", &p), "KUBE-EXT-XPGD46QRK7WJZT7O");
        assert_eq!(
            endpoint_chain(&p, &p.endpoints[0]),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn cluster_ip_with_two_endpoints() {
        let p = port(&[("10.180.0.1", true, false), ("10.180.0.2", true, true)]);
        let t = full(render(&cfg(), &[p]), &[]);
        let nat = &t.nat;
        for want in [
            ":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]",
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O",
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
            "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1/32 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
        ] {
            assert!(nat.contains(want), "missing {want}\n{nat}");
        }
        // The last endpoint is taken unconditionally.
        let last = nat
            .lines()
            .find(|l| l.contains("-> 10.180.0.2:80"))
            .unwrap();
        assert!(!last.contains("statistic"), "{last}");
        assert!(nat.ends_with("COMMIT\n"));
        assert!(!t.filter.contains("REJECT"));
    }

    #[test]
    fn no_endpoints_reject_and_no_local_endpoints_drop() {
        let t = full(render(&cfg(), &[port(&[])]), &[]);
        assert!(t.filter.contains(
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 has no endpoints\" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 -j REJECT"
        ), "{}", t.filter);
        assert!(!t.nat.contains("KUBE-SVC-"));
        let mut p = port(&[("10.180.0.2", true, false)]);
        p.internal_policy_local = true;
        let t = full(render(&cfg(), &[p]), &[]);
        assert!(t.filter.contains("ns1/svc1:p80 has no local endpoints\" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 -j DROP"), "{}", t.filter);
    }

    #[test]
    fn node_port_external_local_and_affinity() {
        let mut p = port(&[("10.180.0.1", true, true), ("10.180.0.2", true, false)]);
        p.node_port = Some(30080);
        p.external_policy_local = true;
        p.affinity_seconds = Some(10800);
        let t = full(render(&cfg(), &[p]), &[]);
        let nat = &t.nat;
        for want in [
            "-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O",
            "-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment \"pod traffic for ns1/svc1:p80 external destinations\" -s 10.0.0.0/8 -j KUBE-SVC-XPGD46QRK7WJZT7O",
            "-A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVL-XPGD46QRK7WJZT7O",
            "-m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j KUBE-SEP-SXIVWICOYRO3J4NJ",
            "--rsource --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
        ] {
            assert!(nat.contains(want), "missing {want}\n{nat}");
        }
        // The local chain has only the local endpoint.
        let svl: Vec<&str> = nat
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVL-") && !l.contains("recent"))
            .collect();
        assert_eq!(svl.len(), 1, "{svl:?}");
        assert!(svl[0].contains("10.180.0.1:80"));
    }

    #[test]
    fn local_policy_without_a_local_endpoint_still_serves_pods_and_the_node() {
        let mut p = port(&[("10.180.0.2", true, false)]);
        p.node_port = Some(30080);
        p.external_policy_local = true;
        let t = full(render(&cfg(), &[p]), &[]);
        assert!(t.nat.contains("-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30080 -j KUBE-EXT-XPGD46QRK7WJZT7O"), "{}", t.nat);
        assert!(t.nat.contains("pod traffic for ns1/svc1:p80 external destinations\" -s 10.0.0.0/8 -j KUBE-SVC-XPGD46QRK7WJZT7O"));
        assert!(
            !t.nat.contains("-j KUBE-SVL-"),
            "no local chain to go to: {}",
            t.nat
        );
        assert!(t.filter.contains("-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns1/svc1:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP"), "{}", t.filter);
    }

    #[test]
    fn stale_chains_are_deleted_in_the_same_transaction() {
        let existing = vec![
            "KUBE-SERVICES".to_string(),
            "KUBE-SVC-GONEGONEGONEGONE".to_string(),
            "KUBE-SEP-GONEGONEGONEGONE".to_string(),
            "KUBE-SVC-XPGD46QRK7WJZT7O".to_string(),
            "CNI-HOSTPORT-DNAT".to_string(),
        ];
        let t = full(
            render(&cfg(), &[port(&[("10.180.0.1", true, false)])]),
            &existing,
        );
        assert!(t.nat.contains("-X KUBE-SVC-GONEGONEGONEGONE\n"));
        assert!(t.nat.contains("-X KUBE-SEP-GONEGONEGONEGONE\n"));
        assert!(!t.nat.contains("-X KUBE-SVC-XPGD46QRK7WJZT7O"));
        assert!(
            !t.nat.contains("CNI-HOSTPORT"),
            "other owners' chains are left alone"
        );
    }

    #[test]
    fn rules_from_real_objects() {
        let svc: k8s_openapi::api::core::v1::Service = serde_norway::from_str(
            "
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.20, externalIPs: [192.0.2.7], ports: [{port: 80, targetPort: 8080}]}
",
        )
        .unwrap();
        let ports = service_ports([&svc], [], "n");
        let t = full(render(&cfg(), &ports), &[]);
        assert!(t.filter.contains("-A KUBE-EXTERNAL-SERVICES -m comment --comment \"default/web has no endpoints\" -m tcp -p tcp -d 192.0.2.7/32 --dport 80 -j REJECT"), "{}", t.filter);
    }

    #[test]
    fn partial_syncs_write_only_what_changed() {
        let one = render(&cfg(), &[port(&[("10.180.0.1", true, false)])]);
        let same = render(&cfg(), &[port(&[("10.180.0.1", true, false)])]);
        let text = same.partial(&one);
        assert!(!text.contains("KUBE-SVC-"), "nothing changed: {text}");
        assert!(!text.contains("KUBE-SEP-"), "{text}");
        let moved = render(&cfg(), &[port(&[("10.180.0.2", true, false)])]);
        let text = moved.partial(&one);
        // The Service chain now points elsewhere; the old endpoint chain goes.
        assert!(
            text.contains(":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]"),
            "{text}"
        );
        assert!(text.contains("-X KUBE-SEP-SXIVWICOYRO3J4NJ\n"), "{text}");
        assert!(text.contains("--to-destination 10.180.0.2:80"), "{text}");
        let gone = render(&cfg(), &[]);
        let text = gone.partial(&one);
        assert!(text.contains("-X KUBE-SVC-XPGD46QRK7WJZT7O\n"), "{text}");
        assert!(!text.contains("-X KUBE-SERVICES"), "{text}");
    }

    #[test]
    fn quoted_args() {
        assert_eq!(
            split_args("-m comment --comment \"a b\" -j X"),
            ["-m", "comment", "--comment", "a b", "-j", "X"]
        );
    }
}
