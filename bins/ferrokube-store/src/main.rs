//! `ferrokube-store`: one member of the replicated store, serving the etcd v3 gRPC API on
//! its client URL and the Raft peer transport on its peer URL. Flags follow etcd's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferrokube_store::etcd::EtcdApi;
use ferrokube_store::{ClusterState, PeerTls, RaftSettings, Store, StoreConfig};
use tokio::net::TcpListener;
use tonic::transport::server::{ServerTlsConfig, TcpIncoming};
use tonic::transport::{Certificate, Identity};

#[derive(Parser, Debug)]
#[command(name = "ferrokube-store", version, about)]
struct Args {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Directory for the database (default: <name>.etcd).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// URL to serve the etcd API on.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// Client URLs published to the cluster (default: the listen URL).
    #[arg(long)]
    advertise_client_urls: Option<String>,
    /// URL to serve the peer transport on.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    listen_peer_urls: String,
    /// Peer URL other members use for this one (default: the listen URL).
    #[arg(long)]
    initial_advertise_peer_urls: Option<String>,
    /// Initial members as name=peerURL,... (default: this member alone).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one (after `member add`).
    #[arg(long, default_value = "new")]
    initial_cluster_state: String,
    /// Token that makes member and cluster IDs unique to this cluster.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// Applied entries kept in the Raft log before it is truncated.
    #[arg(long, default_value_t = 10_000)]
    snapshot_count: u64,
    /// Writes are refused once the database is larger than this.
    #[arg(long, default_value_t = 2 << 30)]
    quota_backend_bytes: u64,
    /// Largest client request, in bytes.
    #[arg(long, default_value_t = 1_572_864)]
    max_request_bytes: usize,
    /// Most operations in one transaction.
    #[arg(long, default_value_t = 128)]
    max_txn_ops: usize,
    /// Revisions of history to keep; older ones are compacted automatically (0: never).
    #[arg(long, default_value_t = 0)]
    auto_compaction_retention: i64,
    /// How often automatic compaction runs, in seconds.
    #[arg(long, default_value_t = 300)]
    auto_compaction_interval: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Raft election timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Certificate (PEM) served on https:// client URLs.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// Key (PEM) for --cert-file.
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file.
    #[arg(long, requires = "trusted_ca_file")]
    client_cert_auth: bool,
    /// Certificate (PEM) this member presents to and accepts from peers.
    #[arg(long, requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    peer_cert_file: Option<PathBuf>,
    /// Key (PEM) for --peer-cert-file.
    #[arg(long, requires = "peer_cert_file")]
    peer_key_file: Option<PathBuf>,
    /// CA (PEM) that peer certificates must chain to (peers always authenticate).
    #[arg(long, requires = "peer_cert_file")]
    peer_trusted_ca_file: Option<PathBuf>,
}

fn read(path: &Option<PathBuf>) -> Result<Option<Vec<u8>>> {
    path.as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("read {}", p.display())))
        .transpose()
}

/// Server TLS for one listener: its identity, and a client CA when clients must present
/// certificates.
fn server_tls(
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
) -> Option<ServerTlsConfig> {
    let (cert, key) = (cert?, key?);
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    Some(tls)
}

fn socket_of(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .with_context(|| format!("URL must start with http:// or https://: {url}"))?;
    let hostport = rest.trim_end_matches('/');
    hostport
        .parse()
        .with_context(|| format!("URL must name an IP address and port: {url}"))
}

fn parse_cluster(s: &str) -> Result<Vec<(String, String)>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, u) = p
                .split_once('=')
                .with_context(|| format!("--initial-cluster entry is not name=URL: {p}"))?;
            Ok((n.to_string(), u.to_string()))
        })
        .collect()
}

/// Accepted connections with Nagle's algorithm off: small gRPC responses must not wait
/// for the peer's delayed ACK.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
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
    let peer_url = args
        .initial_advertise_peer_urls
        .clone()
        .unwrap_or_else(|| args.listen_peer_urls.clone());
    let client_url = args
        .advertise_client_urls
        .clone()
        .unwrap_or_else(|| args.listen_client_urls.clone());
    let initial_cluster = match &args.initial_cluster {
        Some(s) => parse_cluster(s)?,
        None => vec![(args.name.clone(), peer_url.clone())],
    };
    let state = match args.initial_cluster_state.as_str() {
        "new" => ClusterState::New,
        "existing" => ClusterState::Existing,
        other => bail!("--initial-cluster-state must be new or existing, not {other:?}"),
    };
    if args.heartbeat_interval == 0 || args.election_timeout < 5 * args.heartbeat_interval {
        bail!("--election-timeout must be at least 5 times --heartbeat-interval");
    }
    let client_addr = socket_of(&args.listen_client_urls)?;
    let peer_addr = socket_of(&args.listen_peer_urls)?;
    let client_tls = server_tls(
        read(&args.cert_file)?,
        read(&args.key_file)?,
        if args.client_cert_auth {
            read(&args.trusted_ca_file)?
        } else {
            None
        },
    );
    if args.listen_client_urls.starts_with("https://") != client_tls.is_some() {
        bail!("https:// client URLs need --cert-file and --key-file (and http:// URLs none)");
    }
    let peer_tls = match (
        read(&args.peer_cert_file)?,
        read(&args.peer_key_file)?,
        read(&args.peer_trusted_ca_file)?,
    ) {
        (Some(cert), Some(key), Some(ca)) => Some(PeerTls { ca, cert, key }),
        _ => None,
    };
    if args.listen_peer_urls.starts_with("https://") != peer_tls.is_some() {
        bail!("https:// peer URLs need --peer-cert-file, --peer-key-file and --peer-trusted-ca-file (and http:// URLs none)");
    }
    let peer_server_tls = peer_tls.as_ref().and_then(|t| {
        server_tls(
            Some(t.cert.clone()),
            Some(t.key.clone()),
            Some(t.ca.clone()),
        )
    });
    let cfg = StoreConfig {
        name: args.name.clone(),
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name))),
        advertise_peer_url: peer_url,
        advertise_client_urls: client_url.split(',').map(str::to_string).collect(),
        initial_cluster,
        initial_cluster_state: state,
        cluster_token: args.initial_cluster_token.clone(),
        raft: RaftSettings {
            tick: Duration::from_millis(args.heartbeat_interval),
            election_ticks: (args.election_timeout / args.heartbeat_interval) as usize,
            snapshot_count: args.snapshot_count,
            catch_up_entries: (args.snapshot_count / 2).max(1),
            compaction_retention: args.auto_compaction_retention,
            compaction_interval: Duration::from_secs(args.auto_compaction_interval),
        },
        request_timeout: Duration::from_secs(5),
        max_request_bytes: args.max_request_bytes,
        quota_backend_bytes: args.quota_backend_bytes,
        max_txn_ops: args.max_txn_ops,
        peer_tls,
    };
    // Bind first so a port clash fails before any data is touched.
    let peer_listener = TcpListener::bind(peer_addr)
        .await
        .with_context(|| format!("listen on {peer_addr}"))?;
    let client_listener = TcpListener::bind(client_addr)
        .await
        .with_context(|| format!("listen on {client_addr}"))?;
    let store = Store::open(cfg).context("open store")?;
    tracing::info!(
        member = format!("{:x}", store.id()),
        client = %client_addr,
        peer = %peer_addr,
        "ferrokube-store serving"
    );
    let mut peer_builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = peer_server_tls {
        peer_builder = peer_builder.tls_config(tls).context("peer TLS")?;
    }
    let peer = peer_builder
        .add_service(store.peer_service())
        .serve_with_incoming(incoming(peer_listener));
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = client_tls {
        builder = builder.tls_config(tls).context("client TLS")?;
    }
    let client = EtcdApi::new(store.clone())
        .add_to(&mut builder)
        .serve_with_incoming(incoming(client_listener));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A member that stopped replicating (removed, or its storage failed) exits, so that a
    // supervisor notices instead of clients talking to a member that can only refuse.
    let watchdog = {
        let store = store.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(why) = store.status().raft.stopped {
                    return why;
                }
            }
        }
    };
    tokio::select! {
        why = watchdog => {
            if why.contains("removed") {
                tracing::info!("{why}; exiting");
                return Ok(());
            }
            // Exit at once: closing RocksDB after a failed write would try to sync the
            // broken log again. Recovery happens on the next start, from the WAL.
            tracing::error!("member stopped: {why}");
            std::process::exit(1);
        }
        r = peer => r.context("peer server")?,
        r = client => r.context("client server")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
    Ok(())
}
