//! `ingress-controller`: serves the Ingresses of the IngressClasses whose
//! `spec.controller` is `--controller-class` (`ferrokube.io/ingress-controller`; the
//! addon's class is `ferrokube`) on `--http-port` and `--https-port`, with `/healthz`
//! and `/metrics` on `--healthz-port`, ingress-nginx's ports and flag names. Run as a
//! host-network DaemonSet (addons/ingress-controller.yaml); in a pod it uses the pod's
//! service account unless `--kubeconfig` is given.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser;
use ferrokube_client::{Client, Config};
use ferrokube_ingress::certs::{fake_certificate, Resolver};
use ferrokube_ingress::controller::{Controller, Options};
use ferrokube_ingress::proxy::Proxy;

#[derive(Parser, Debug)]
#[command(name = "ingress-controller", version, about)]
struct Args {
    /// Kubeconfig; without it, the pod's in-cluster configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The `spec.controller` of the IngressClasses served.
    #[arg(long, default_value = ferrokube_ingress::class::CONTROLLER)]
    controller_class: String,
    /// The address the ports are bound on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Plain HTTP.
    #[arg(long, default_value_t = 80)]
    http_port: u16,
    /// HTTPS (0: none).
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    /// `/healthz` and `/metrics` (0: none).
    #[arg(long, default_value_t = 10254)]
    healthz_port: u16,
    /// Addresses (IPs or host names, comma-separated) written into served Ingresses'
    /// `status.loadBalancer.ingress`; none: the status is left alone.
    #[arg(long, value_delimiter = ',')]
    publish_status_address: Vec<String>,
}

struct Health {
    controller: Arc<Controller>,
    proxy: Arc<Proxy>,
}

impl ferrokube_serving::Health for Health {
    fn check(&self) -> Result<(), String> {
        if self.controller.is_ready() {
            Ok(())
        } else {
            Err("ingresses not loaded yet".into())
        }
    }

    fn metrics(&self) -> String {
        self.proxy.metrics()
    }
}

async fn bind(ip: IpAddr, port: u16, what: &str) -> Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(ip, port);
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} on {addr}"))
}

async fn run(args: Args) -> Result<()> {
    let cfg = Config::from_kubeconfig_or_in_cluster(args.kubeconfig.as_deref())?;
    let client = Client::new(&cfg)?.with_field_manager("ingress-controller");
    let addresses: Vec<String> = args
        .publish_status_address
        .iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let proxy = Proxy::new(Arc::new(Resolver::new(fake_certificate()?)));
    let controller = Controller::new(
        proxy.clone(),
        Options {
            controller: args.controller_class.clone(),
            status_addresses: addresses,
        },
    );
    let http = bind(args.bind_address, args.http_port, "--http-port").await?;
    let https = match args.https_port {
        0 => None,
        p => Some(bind(args.bind_address, p, "--https-port").await?),
    };
    if args.healthz_port != 0 {
        let health: Arc<dyn ferrokube_serving::Health> = Arc::new(Health {
            controller: controller.clone(),
            proxy: proxy.clone(),
        });
        let addr = SocketAddr::new(args.bind_address, args.healthz_port);
        ferrokube_serving::start_plain(addr, health).await?;
    }
    tracing::info!(class = %args.controller_class, http = args.http_port, https = args.https_port, "serving ingresses");
    tokio::spawn(proxy.clone().serve_http(http));
    if let Some(l) = https {
        let p = proxy.clone();
        tokio::spawn(async move {
            if let Err(e) = p.serve_https(l).await {
                tracing::error!("HTTPS: {e}");
                std::process::exit(1);
            }
        });
    }
    tokio::select! {
        _ = controller.clone().follow(client.clone()) => {}
        _ = ferrokube_process::stop_signal() => {}
    }
    controller.release(&client).await;
    Ok(())
}

fn main() {
    ferrokube_process::init();
    ferrokube_process::run(run(Args::parse()));
}
