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
    /// Client certificate (PEM) presented to kubelets (default: the generated
    /// apiserver-kubelet-client certificate).
    #[arg(long, requires = "kubelet_client_key")]
    kubelet_client_certificate: Option<PathBuf>,
    /// Key (PEM) of --kubelet-client-certificate.
    #[arg(long, requires = "kubelet_client_certificate")]
    kubelet_client_key: Option<PathBuf>,
    /// The issuer (`iss`) of service-account tokens.
    #[arg(long, default_value = ferrokube_apiserver::serviceaccount::DEFAULT_ISSUER)]
    service_account_issuer: String,
    /// The key (ECDSA P-256, PKCS#8 PEM) service-account tokens are signed with
    /// (default: the generated sa.key).
    #[arg(long)]
    service_account_signing_key_file: Option<PathBuf>,
    /// More public keys (PEM) service-account tokens may be signed with.
    #[arg(long)]
    service_account_key_file: Option<PathBuf>,
    /// What tokens must be meant for, comma-separated (default: the issuer).
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
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
    /// Name of this member of the embedded store's group (default: the host name).
    #[arg(long)]
    store_name: Option<String>,
    /// Every initial member of the store's group as name=peerURL,... (etcd's
    /// --initial-cluster); default: this member alone.
    #[arg(long)]
    store_initial_cluster: Option<String>,
    /// `new` to form a group, `existing` to join one (after `member add`).
    #[arg(long, default_value = "new")]
    store_initial_cluster_state: String,
    /// Token that keeps separate groups apart (etcd's --initial-cluster-token).
    #[arg(long, default_value = "etcd-cluster")]
    store_initial_cluster_token: String,
    /// How often history older than the previous interval is compacted (Go duration,
    /// like upstream's --etcd-compaction-interval; 0 disables).
    #[arg(long, default_value = "5m")]
    etcd_compaction_interval: String,
    /// How long events are kept (Go duration, as upstream's --event-ttl).
    #[arg(long, default_value = "1h")]
    event_ttl: String,
    /// Admission plugins to run besides the default ones (all of ferrokube's are on by
    /// default: DefaultTolerationSeconds, Priority, ServiceAccount).
    #[arg(long, value_delimiter = ',')]
    enable_admission_plugins: Vec<String>,
    /// Admission plugins to switch off.
    #[arg(long, value_delimiter = ',')]
    disable_admission_plugins: Vec<String>,
}

/// Parses a Go duration such as `5m`, `90s`, `1h30m` or `0`.
fn go_duration(s: &str) -> Result<Duration> {
    ferrokube_api::meta::parse_go_duration(s).with_context(|| format!("bad duration {s:?}"))
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
async fn main() {
    ferrokube_process::init();
    if let Err(e) = run().await {
        ferrokube_process::exit_with(&format!("{e:#}"));
    }
}

async fn run() -> Result<()> {
    let args = Args::parse();
    let (admission, warnings) = ferrokube_apiserver::admission::Plugins::from_flags(
        &args.enable_admission_plugins,
        &args.disable_admission_plugins,
    )?;
    for w in warnings {
        tracing::warn!("{w}");
    }
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

    let name = args.store_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "kube-apiserver".into())
    });
    let mut store_cfg =
        StoreConfig::single(&name, args.data_dir.join("store"), &args.store_peer_url, "");
    store_cfg.advertise_client_urls = Vec::new();
    store_cfg.cluster_token = args.store_initial_cluster_token.clone();
    if let Some(ic) = &args.store_initial_cluster {
        store_cfg.initial_cluster = ic
            .split(',')
            .map(|m| {
                m.split_once('=')
                    .map(|(n, u)| (n.to_string(), u.to_string()))
                    .with_context(|| {
                        format!("--store-initial-cluster member {m:?} is not name=URL")
                    })
            })
            .collect::<Result<_>>()?;
    }
    store_cfg.initial_cluster_state = match args.store_initial_cluster_state.as_str() {
        "new" => ferrokube_store::ClusterState::New,
        "existing" => ferrokube_store::ClusterState::Existing,
        other => {
            anyhow::bail!("--store-initial-cluster-state must be new or existing, not {other:?}")
        }
    };
    let compaction =
        go_duration(&args.etcd_compaction_interval).context("--etcd-compaction-interval")?;
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
        go_duration(&args.event_ttl).context("--event-ttl")?,
    );
    let (kc_cert, kc_key) = match (&args.kubelet_client_certificate, &args.kubelet_client_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (
            files.kubelet_client_cert.clone(),
            files.kubelet_client_key.clone(),
        ),
    };
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    api.set_kubelet_client(&read(&kc_cert)?, &read(&kc_key)?)
        .map_err(anyhow::Error::msg)
        .context("--kubelet-client-certificate")?;
    let sa_key = args
        .service_account_signing_key_file
        .clone()
        .unwrap_or(files.sa_key.clone());
    let extra_keys = match &args.service_account_key_file {
        Some(p) => Some(read(p)?),
        None => None,
    };
    api.set_service_account_tokens(
        ferrokube_apiserver::serviceaccount::Tokens::new(
            &read(&sa_key)?,
            extra_keys.as_deref(),
            &args.service_account_issuer,
            args.api_audiences.clone(),
        )
        .context("--service-account-signing-key-file")?,
    );
    api.set_admission_plugins(admission);
    api.bootstrap(args.advertise_address, args.secure_port)
        .await
        .context("creating the bootstrap objects")?;
    if !compaction.is_zero() {
        // Like upstream: every interval, compact to the revision seen one interval ago.
        let store = store.clone();
        tokio::spawn(async move {
            let mut previous = 0;
            loop {
                tokio::time::sleep(compaction).await;
                let p = store.state().progress();
                if previous > p.compacted {
                    match store.compact(previous).await {
                        Ok(()) => tracing::info!(revision = previous, "compacted"),
                        Err(e) => tracing::debug!("compaction to {previous}: {e}"),
                    }
                }
                previous = p.current;
            }
        });
    }
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
