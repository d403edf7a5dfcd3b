//! `kube-proxy`: keeps this node's Service rules (`--proxy-mode` iptables or nftables)
//! in step with the cluster's Services and EndpointSlices; serves `/healthz` on
//! `--healthz-bind-address` and `/metrics` on `--metrics-bind-address` over HTTP.
//! Flags override the `--config` file (`KubeProxyConfiguration`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser;
use ferrokube_client::{Client, Config};
use ferrokube_proxy::config::{self, Mode, ProxyConfig};
use ferrokube_proxy::proxier::{self, Proxier, Status};

#[derive(Parser, Debug)]
#[command(name = "kube-proxy", version, about)]
struct Args {
    /// A KubeProxyConfiguration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kubeconfig with the API server's address and credentials.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Which proxy mode to use: iptables or nftables.
    #[arg(long)]
    proxy_mode: Option<String>,
    /// The node's name, when not the hostname.
    #[arg(long)]
    hostname_override: Option<String>,
    /// The pod network's range(s): traffic from outside is masqueraded to cluster IPs.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// Masquerade all traffic sent to Service cluster IPs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    masquerade_all: Option<bool>,
    /// The longest time between full syncs of the rules (Go duration).
    #[arg(long)]
    iptables_sync_period: Option<String>,
    /// The shortest time between syncs (Go duration).
    #[arg(long)]
    iptables_min_sync_period: Option<String>,
    /// host:port of /healthz (empty: off).
    #[arg(long)]
    healthz_bind_address: Option<String>,
    /// host:port of /metrics (empty: off).
    #[arg(long)]
    metrics_bind_address: Option<String>,
    /// Ranges of the node addresses NodePorts answer on (comma-separated CIDRs).
    #[arg(long)]
    nodeport_addresses: Option<String>,
    /// Remove every rule kube-proxy made, then exit.
    #[arg(long)]
    cleanup: bool,
    /// ferrokube: route these ranges (the Service CIDR) into a bridge with no ports, so
    /// a Service IP without rules never leaves the node. Comma-separated CIDRs.
    #[arg(long)]
    blackhole_cidr: Option<String>,
}

/// Applies the flags over the file's values.
fn configure(args: &Args) -> Result<ProxyConfig> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?;
            config::load(&text).with_context(|| format!("--config {}", p.display()))?
        }
        None => ProxyConfig::default(),
    };
    if let Some(m) = &args.proxy_mode {
        cfg.mode = Mode::parse(m).context("--proxy-mode")?;
    }
    if let Some(k) = &args.kubeconfig {
        cfg.kubeconfig = Some(k.display().to_string());
    }
    if let Some(h) = &args.hostname_override {
        cfg.hostname_override = Some(h.clone());
    }
    if let Some(c) = &args.cluster_cidr {
        cfg.cluster_cidrs = config::parse_cidrs("--cluster-cidr", c)?;
    }
    if let Some(m) = args.masquerade_all {
        cfg.masquerade_all = m;
    }
    let duration = |flag: &str, s: &str| {
        ferrokube_api::meta::parse_go_duration(s)
            .with_context(|| format!("{flag}: invalid duration {s:?}"))
    };
    if let Some(s) = &args.iptables_sync_period {
        cfg.sync_period = duration("--iptables-sync-period", s)?;
    }
    if let Some(s) = &args.iptables_min_sync_period {
        cfg.min_sync_period = duration("--iptables-min-sync-period", s)?;
    }
    if let Some(a) = &args.healthz_bind_address {
        cfg.healthz_bind_address = config::parse_bind("--healthz-bind-address", a)?;
    }
    if let Some(a) = &args.metrics_bind_address {
        cfg.metrics_bind_address = config::parse_bind("--metrics-bind-address", a)?;
    }
    if let Some(a) = &args.nodeport_addresses {
        cfg.node_port_addresses = config::parse_cidrs("--nodeport-addresses", a)?;
    }
    if cfg.sync_period.is_zero() || cfg.min_sync_period > cfg.sync_period {
        anyhow::bail!(
            "the minimum sync period must not exceed the sync period, which must be greater than 0"
        );
    }
    Ok(cfg)
}

struct Health(Arc<Status>);

impl ferrokube_serving::Health for Health {
    fn check(&self) -> Result<(), String> {
        self.0.check()
    }

    fn metrics(&self) -> String {
        self.0.metrics()
    }

    fn healthz_json(&self) -> Option<String> {
        Some(self.0.healthz_json())
    }
}

async fn run(args: Args) -> Result<()> {
    let cfg = configure(&args)?;
    if args.cleanup {
        ferrokube_proxy::iptables::cleanup()?;
        ferrokube_proxy::nftables::cleanup()?;
        proxier::remove_blackhole();
        return Ok(());
    }
    let blackhole = match &args.blackhole_cidr {
        Some(c) => config::parse_cidrs("--blackhole-cidr", c)?,
        None => Vec::new(),
    };
    // No kubeconfig: the pod's in-cluster configuration (kube-proxy as a DaemonSet).
    let client_config =
        Config::from_kubeconfig_or_in_cluster(cfg.kubeconfig.as_deref().map(std::path::Path::new))?;
    let client = Client::new(&client_config)?.with_field_manager("kube-proxy");
    let node = cfg
        .hostname_override
        .clone()
        .unwrap_or_else(ferrokube_process::hostname)
        .to_lowercase();
    proxier::ensure_blackhole(&blackhole).context("--blackhole-cidr")?;
    proxier::prepare_node(&cfg);
    // Rules of the other mode, left by an earlier run, would shadow this one's.
    // (Best effort: a node without the other mode's tools has nothing of it.)
    let other = match cfg.mode {
        Mode::Iptables => ferrokube_proxy::nftables::cleanup(),
        Mode::Nftables => ferrokube_proxy::iptables::cleanup(),
    };
    if let Err(e) = other {
        tracing::warn!("removing the other mode's rules: {e}");
    }
    let proxier = Proxier::new(client, cfg.clone(), &node);
    let health: Arc<dyn ferrokube_serving::Health> = Arc::new(Health(proxier.status()));
    let mut bound: Vec<SocketAddr> = Vec::new();
    for addr in [cfg.healthz_bind_address, cfg.metrics_bind_address]
        .into_iter()
        .flatten()
    {
        if !bound.contains(&addr) {
            ferrokube_serving::start_plain(addr, health.clone()).await?;
            bound.push(addr);
        }
    }
    tracing::info!(mode = cfg.mode.as_str(), %node, "kube-proxy started");
    tokio::select! {
        _ = proxier.run() => {}
        _ = ferrokube_process::stop_signal() => {}
    }
    Ok(())
}

fn main() {
    ferrokube_process::init();
    ferrokube_process::run(run(Args::parse()));
}
