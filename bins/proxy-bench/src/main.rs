//! `proxy-bench`: times kube-proxy's full rule syncs (render + one `iptables-restore` or
//! `nft -f` transaction, as the running proxy does) with N Services of one port and
//! `--endpoints` hollow endpoints each: the first sync onto an empty node, a sync with
//! nothing changed, and a sync after one endpoint changed. Prints one JSON line per
//! measure. Run it only inside a network namespace of its own (scripts/bench does): it
//! rewrites that namespace's rules.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;
use ferrokube_proxy::config::{Cidr, Mode, ProxyConfig};
use ferrokube_proxy::model::{Endpoint, Protocol, ServicePort, ServicePortName};
use ferrokube_proxy::proxier::Syncer;

#[derive(Parser)]
struct Args {
    /// Service counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<u32>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 2)]
    endpoints: u32,
    /// Modes to measure.
    #[arg(long, value_delimiter = ',', default_value = "iptables,nftables")]
    modes: Vec<String>,
    /// Confirms the process runs in a throwaway network namespace.
    #[arg(long)]
    in_namespace: bool,
}

fn ports(n: u32, eps: u32, generation: u32) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            name: ServicePortName {
                namespace: format!("ns{}", i % 50),
                name: format!("svc{i}"),
                port: "http".into(),
            },
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i),
            port: 80,
            node_port: (i % 10 == 0).then_some(30000 + (i / 10) as u16 % 2768),
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_seconds: (i % 7 == 0).then_some(10800),
            external_policy_local: false,
            internal_policy_local: false,
            endpoints: (0..eps)
                .map(|e| Endpoint {
                    // Generation bumps the first Service's first endpoint (one change).
                    ip: Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(10, 244, 0, 2))
                            + i * eps
                            + e
                            + if i == 0 && e == 0 {
                                generation * 1_000_000
                            } else {
                                0
                            },
                    ),
                    port: 8080,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: e == 0,
                })
                .collect(),
        })
        .collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.in_namespace {
        bail!("proxy-bench rewrites the packet rules of where it runs: run it through scripts/bench services (a namespace of its own), with --in-namespace");
    }
    for mode in &args.modes {
        let mode = Mode::parse(mode)?;
        for &n in &args.services {
            let cfg = ProxyConfig {
                mode,
                cluster_cidrs: vec![Cidr::parse("10.244.0.0/16").expect("cidr")],
                ..Default::default()
            };
            ferrokube_proxy::iptables::cleanup()?;
            ferrokube_proxy::nftables::cleanup()?;
            let mut s = Syncer::new(cfg);
            let mut measure = |what: &str, p: Vec<ServicePort>| -> Result<()> {
                let t = Instant::now();
                let rules = s.sync(p)?;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                println!(
                    "{}",
                    serde_json::json!({"mode": mode.as_str(), "services": n, "measure": what, "ms": (ms * 10.0).round() / 10.0, "rules": rules})
                );
                Ok(())
            };
            measure("first sync", ports(n, args.endpoints, 0))?;
            measure("resync, no change", ports(n, args.endpoints, 0))?;
            measure("one endpoint changed", ports(n, args.endpoints, 1))?;
            measure("another endpoint changed", ports(n, args.endpoints, 2))?;
        }
    }
    ferrokube_proxy::iptables::cleanup()?;
    ferrokube_proxy::nftables::cleanup()?;
    Ok(())
}
