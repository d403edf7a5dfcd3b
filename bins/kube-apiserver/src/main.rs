//! `kube-apiserver`: serves the Kubernetes API over HTTPS with the replicated store
//! embedded. Flags follow upstream's where they exist; `--data-dir` and `--store-*` place
//! the embedded store. On first start it creates the cluster PKI, the admin kubeconfig
//! and the bootstrap objects.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ferrokube_apiserver::alloc::Allocator;
use ferrokube_apiserver::{kubeconfig, pki, server, ApiServer};
use ferrokube_store::{Store, StoreConfig};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(name = "kube-apiserver", version, about)]
struct Args {
    /// Port for HTTPS.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Address advertised to the cluster (the `kubernetes` Service's endpoint).
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: IpAddr,
    /// Serving certificate (PEM); generated with a CA under the data dir when absent.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Key (PEM) of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to (default: the generated CA).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// The Services' virtual IP range; its first address is the `kubernetes` Service.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Directory for the embedded store, the generated PKI and the admin kubeconfig.
    #[arg(long, default_value = "/var/lib/ferrokube/apiserver")]
    data_dir: PathBuf,
    /// Peer URL of the embedded store (other control-plane members reach it there).
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    store_peer_url: String,
    /// Where to write the admin kubeconfig (default: <data-dir>/admin.conf).
    #[arg(long)]
    admin_kubeconfig: Option<PathBuf>,
}

/// The first usable address of a CIDR (`10.96.0.0/12` → `10.96.0.1`).
fn first_service_ip(cidr: &str) -> Result<IpAddr> {
    let (net, bits) = cidr
        .split_once('/')
        .with_context(|| format!("--service-cluster-ip-range {cidr:?} is not a CIDR"))?;
    let bits: u8 = bits.parse().context("CIDR prefix length")?;
    let ip: IpAddr = net.parse().context("CIDR address")?;
    Ok(match ip {
        IpAddr::V4(v4) if bits <= 30 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            IpAddr::from(std::net::Ipv4Addr::from((u32::from(v4) & mask) + 1))
        }
        IpAddr::V6(v6) if bits <= 126 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            IpAddr::from(std::net::Ipv6Addr::from((u128::from(v6) & mask) + 1))
        }
        _ => anyhow::bail!("--service-cluster-ip-range {cidr:?} is too small"),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    ferrokube_process::init();
    let args = Args::parse();
    let service_ip = first_service_ip(&args.service_cluster_ip_range)?;
    let alloc = Allocator::new(&args.service_cluster_ip_range)?;
    let addr = SocketAddr::new(args.bind_address, args.secure_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))?;

    let pki_dir = args.data_dir.join("pki");
    let sans = pki::default_sans(args.advertise_address, service_ip, &[]);
    let files = pki::ensure(&pki_dir, &sans).context("cluster PKI")?;
    let (cert, key) = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (files.serving_cert.clone(), files.serving_key.clone()),
    };
    let client_ca = args.client_ca_file.clone().unwrap_or(files.ca_cert.clone());
    let tls = server::tls_config(&cert, &key, &client_ca).context("TLS")?;
    let server_url = format!("https://{}:{}", args.advertise_address, args.secure_port);
    let kubeconfig_path = args
        .admin_kubeconfig
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.conf"));
    kubeconfig::write_admin(&kubeconfig_path, &server_url, &files).context("admin kubeconfig")?;

    let mut store_cfg = StoreConfig::single(
        "kube-apiserver",
        args.data_dir.join("store"),
        &args.store_peer_url,
        "",
    );
    store_cfg.advertise_client_urls = Vec::new();
    let peer_addr: SocketAddr = args
        .store_peer_url
        .strip_prefix("http://")
        .context("--store-peer-url must be an http:// URL")?
        .trim_end_matches('/')
        .parse()
        .context("--store-peer-url must name an IP address and port")?;
    let peer_listener = TcpListener::bind(peer_addr)
        .await
        .with_context(|| format!("listen on {peer_addr}"))?;
    let store = Store::open(store_cfg).context("open the embedded store")?;
    // Peers must reach this member before anything is written (bootstrap needs a quorum).
    let peer = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(store.peer_service())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(peer_listener)),
    );
    tracing::info!(%addr, kubeconfig = %kubeconfig_path.display(), "kube-apiserver serving");
    store
        .wait_caught_up()
        .await
        .context("embedded store catching up")?;
    let api = ApiServer::new(
        store.clone(),
        alloc,
        format!("{}:{}", args.advertise_address, args.secure_port),
    );
    api.bootstrap(args.advertise_address, args.secure_port)
        .await
        .context("creating the bootstrap objects")?;
    let watchdog = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(why) = store.status().raft.stopped {
                return why;
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = api.serve(listener, tls) => r.context("serve")?,
        r = peer => r.context("store peer transport task")?.context("store peer transport")?,
        why = watchdog => {
            tracing::error!("embedded store stopped: {why}");
            std::process::exit(1);
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_service_ip;

    #[test]
    fn first_address_of_the_service_range() {
        assert_eq!(
            first_service_ip("10.96.0.0/12").unwrap().to_string(),
            "10.96.0.1"
        );
        assert_eq!(
            first_service_ip("10.100.5.7/16").unwrap().to_string(),
            "10.100.0.1"
        );
        assert_eq!(
            first_service_ip("fd00::/108").unwrap().to_string(),
            "fd00::1"
        );
        assert!(first_service_ip("10.0.0.0").is_err());
        assert!(first_service_ip("10.0.0.0/31").is_err());
    }
}
