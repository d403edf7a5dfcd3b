//! `cluster-dns`: answers DNS for the cluster domain from the API's Services and
//! EndpointSlices (run as a Deployment behind the `kube-dns` Service, like CoreDNS),
//! forwards other names to `--upstream`, and serves `/health` (8080), `/ready` (8181)
//! and `/metrics` (9153) over HTTP, on CoreDNS's ports. In a pod it uses the pod's
//! service account (in-cluster configuration) unless `--kubeconfig` is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser;
use ferrokube_client::{Client, Config};
use ferrokube_dns::server::{serve_tcp, serve_udp, Dns};

#[derive(Parser, Debug)]
#[command(name = "cluster-dns", version, about)]
struct Args {
    /// Kubeconfig; without it, the pod's in-cluster configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// Where DNS is served (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:53")]
    dns_addr: SocketAddr,
    /// Servers other names are forwarded to (comma-separated ip:port); none: SERVFAIL.
    #[arg(long, value_delimiter = ',')]
    upstream: Vec<SocketAddr>,
    /// /health (liveness).
    #[arg(long, default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// /ready (the first records are in).
    #[arg(long, default_value = "0.0.0.0:8181")]
    ready_addr: SocketAddr,
    /// /metrics.
    #[arg(long, default_value = "0.0.0.0:9153")]
    metrics_addr: SocketAddr,
}

struct Health(Arc<Dns>);

impl ferrokube_serving::Health for Health {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    fn metrics(&self) -> String {
        self.0.metrics()
    }

    fn own_path(&self, path: &str) -> Option<(u16, String)> {
        match path {
            "/health" => Some((200, "OK".into())),
            "/ready" if self.0.is_ready() => Some((200, "OK".into())),
            "/ready" => Some((503, "kubernetes records not loaded yet".into())),
            _ => None,
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let cfg = Config::from_kubeconfig_or_in_cluster(args.kubeconfig.as_deref())?;
    let client = Client::new(&cfg)?.with_field_manager("cluster-dns");
    let dns = Dns::new(&args.zone, args.upstream.clone());
    let udp = tokio::net::UdpSocket::bind(args.dns_addr)
        .await
        .with_context(|| format!("udp {}", args.dns_addr))?;
    let tcp = tokio::net::TcpListener::bind(args.dns_addr)
        .await
        .with_context(|| format!("tcp {}", args.dns_addr))?;
    let health: Arc<dyn ferrokube_serving::Health> = Arc::new(Health(dns.clone()));
    let mut bound = Vec::new();
    for addr in [args.health_addr, args.ready_addr, args.metrics_addr] {
        if !bound.contains(&addr) {
            ferrokube_serving::start_plain(addr, health.clone()).await?;
            bound.push(addr);
        }
    }
    tracing::info!(addr = %args.dns_addr, zone = %args.zone, upstreams = ?args.upstream, "serving DNS");
    tokio::spawn(serve_udp(dns.clone(), udp));
    tokio::spawn(serve_tcp(dns.clone(), tcp));
    tokio::select! {
        _ = dns.follow(client) => {}
        _ = ferrokube_process::stop_signal() => {}
    }
    Ok(())
}

fn main() {
    ferrokube_process::init();
    ferrokube_process::run(run(Args::parse()));
}
