//! `kubelet`: the node agent. Flags follow upstream's where they exist; a
//! `KubeletConfiguration` file (`--config`) sets the rest.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_client::events::{Kind, Recorder};
use ferrokube_client::{Api, Client, Config, Informer, ListParams};
use ferrokube_images::{ImageStore, Mirrors};
use ferrokube_kubelet::config::KubeletConfiguration;
use ferrokube_kubelet::image_gc::{self, ImageGc};
use ferrokube_kubelet::network::Cni;
use ferrokube_kubelet::node::{self, NodeConfig};
use ferrokube_kubelet::pods::Pods;
use ferrokube_kubelet::pressure::Thresholds;
use ferrokube_kubelet::routes;
use ferrokube_kubelet::server::{self, ServerConfig};
use ferrokube_kubelet::stats::Sampler;
use k8s_openapi::api::core::v1::{Pod, Service};

#[derive(Parser, Debug)]
#[command(name = "kubelet", version, about)]
struct Args {
    /// Kubeconfig with the API server's address and this node's credentials.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// A KubeletConfiguration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the kubelet keeps its state (pods, images, plugins).
    #[arg(long, default_value = "/var/lib/kubelet")]
    root_dir: PathBuf,
    /// The node's name (default: the host name).
    #[arg(long)]
    hostname_override: Option<String>,
    /// The node's address (default: the first address the host resolves to).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Labels to add at registration (k=v,k2=v2).
    #[arg(long, default_value = "")]
    node_labels: String,
    /// Static pod manifests (overrides staticPodPath).
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// Most pods on this node (overrides maxPods).
    #[arg(long)]
    max_pods: Option<u32>,
    /// cgroupfs or systemd (overrides cgroupDriver).
    #[arg(long)]
    cgroup_driver: Option<String>,
    /// CNI network configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// CNI plugins (Debian's containernetworking-plugins install here).
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// The cgroup all pod cgroups go under (`<root>/kubepods/...`).
    #[arg(long, default_value = "/")]
    cgroup_root: String,
    /// Registry mirrors, like containerd's hosts configuration: registry=endpoint[,...]
    /// (`docker.io=http://127.0.0.1:5000`, `*=...` for every registry). Repeatable.
    #[arg(long = "registry-mirror")]
    registry_mirrors: Vec<String>,
    /// Also try the registries themselves after their mirrors.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    registry_fallback: bool,
    /// How often image garbage collection checks the disk (upstream's fixed 5m; a
    /// ferrokube flag, so tests need not wait).
    #[arg(long, default_value = "5m", value_parser = gc_period)]
    image_gc_period: Duration,
    /// The address the kubelet's server listens on (overrides `address`).
    #[arg(long)]
    address: Option<IpAddr>,
    /// The kubelet server's port (overrides `port`).
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// Client certificates must chain to this CA (default: the kubeconfig's CA).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
}

fn gc_period(s: &str) -> Result<Duration, String> {
    ferrokube_kubelet::config::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("invalid duration {s:?}"))
}

fn default_ip() -> IpAddr {
    // The address a connected UDP socket would use; no packet is sent.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.255:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or_else(|_| IpAddr::from([127, 0, 0, 1]))
}

fn main() {
    // `kubelet shim ...`: the per-container shim, started by the kubelet itself.
    let argv: Vec<String> = std::env::args().collect();
    // `kubelet pause HOSTNAME PIDFILE`: a pod's infra process.
    if argv.get(1).map(String::as_str) == Some("pause") {
        let (Some(host), Some(pid_file)) = (argv.get(2), argv.get(3)) else {
            ferrokube_process::exit_with("usage: kubelet pause HOSTNAME PIDFILE");
        };
        std::process::exit(ferrokube_kubelet::sandbox::pause(
            host,
            std::path::Path::new(pid_file),
        ));
    }
    if argv.get(1).map(String::as_str) == Some("shim") {
        let Some(a) = ferrokube_kubelet::runtime::shim::ShimArgs::from_args(&argv[2..]) else {
            ferrokube_process::exit_with(
                "usage: kubelet shim RUNC_ROOT ID BUNDLE LOG EXIT_FILE LOG_MAX_SIZE LOG_MAX_FILES STDIN STDIN_ONCE",
            );
        };
        // Detach: the kubelet's call returns at once, the shim lives on in a session of
        // its own (and survives kubelet restarts).
        // SAFETY: nothing else runs in this process yet (no threads), as fork requires.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                // Recorded before the kubelet's call returns, so it can tell a live
                // container from one whose shim died.
                let pid_file = ferrokube_kubelet::runtime::shim::pid_file(&a.exit_file);
                if let Err(e) = std::fs::write(&pid_file, child.to_string()) {
                    ferrokube_process::exit_with(&format!("{}: {e}", pid_file.display()));
                }
                std::process::exit(0)
            }
            Ok(nix::unistd::ForkResult::Child) => {
                let _ = nix::unistd::setsid();
                std::process::exit(ferrokube_kubelet::runtime::shim::run(&a));
            }
            Err(e) => ferrokube_process::exit_with(&format!("fork: {e}")),
        }
    }
    kubelet();
}

#[tokio::main]
async fn kubelet() {
    ferrokube_process::init();
    if let Err(e) = run().await {
        ferrokube_process::exit_with(&format!("{e:#}"));
    }
}

async fn run() -> Result<()> {
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(p) => KubeletConfiguration::load(p)?,
        None => KubeletConfiguration::default(),
    };
    if let Some(p) = &args.pod_manifest_path {
        cfg.static_pod_path = Some(p.clone());
    }
    if let Some(m) = args.max_pods {
        cfg.max_pods = m;
    }
    if let Some(d) = &args.cgroup_driver {
        anyhow::ensure!(
            d == "cgroupfs" || d == "systemd",
            "--cgroup-driver must be cgroupfs or systemd, not {d:?}"
        );
        cfg.cgroup_driver = d.clone();
    }
    // The systemd driver needs runc's systemd cgroup manager, which needs systemd as init;
    // refused rather than silently treated as cgroupfs.
    anyhow::ensure!(
        cfg.cgroup_driver == "cgroupfs",
        "cgroup driver {:?} is not supported: this kubelet manages cgroups itself (cgroupfs)",
        cfg.cgroup_driver
    );
    // Every setting checked before anything is started.
    let log_rotation = cfg.log_rotation()?;
    let image_gc_policy = cfg.image_gc()?;
    let eviction_hard = Thresholds::parse(&cfg.eviction_hard)?;
    anyhow::ensure!(
        cfg.pod_logs_dir.is_absolute(),
        "podLogsDir {} must be an absolute path",
        cfg.pod_logs_dir.display()
    );
    std::fs::create_dir_all(&args.root_dir)
        .with_context(|| format!("--root-dir {}", args.root_dir.display()))?;
    let name = match &args.hostname_override {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name")?
            .trim()
            .to_ascii_lowercase(),
    };
    let mut labels = BTreeMap::new();
    for kv in args.node_labels.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--node-labels entry {kv:?} is not k=v"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let address: IpAddr = match args.address {
        Some(a) => a,
        None => cfg
            .address
            .parse()
            .with_context(|| format!("address {:?} is not an IP address", cfg.address))?,
    };
    let port = args.port.unwrap_or(cfg.port);
    anyhow::ensure!(port > 0, "port must be between 1 and 65535");
    let api_config = Config::from_kubeconfig(&args.kubeconfig)?;
    let client_ca_pem = match args.client_ca_file.as_ref().or(cfg
        .authentication
        .x509
        .client_ca_file
        .as_ref())
    {
        Some(p) => std::fs::read(p).with_context(|| format!("client CA file {}", p.display()))?,
        None => api_config.ca_pem.clone(),
    };
    let server_cfg = ServerConfig {
        address: std::net::SocketAddr::new(address, port),
        cert_file: args.tls_cert_file.clone().or(cfg.tls_cert_file.clone()),
        key_file: args
            .tls_private_key_file
            .clone()
            .or(cfg.tls_private_key_file.clone()),
        client_ca_pem,
    };
    let client = Client::new(&api_config)?.with_field_manager("kubelet");
    let node_cfg = NodeConfig {
        name,
        ip: args.node_ip.unwrap_or_else(default_ip),
        root_dir: args.root_dir.clone(),
        max_pods: cfg.max_pods,
        port,
        labels,
        lease_duration_seconds: cfg.node_lease_duration_seconds,
        status_period: cfg.status_period(),
        eviction_hard,
    };
    tracing::info!(node = %node_cfg.name, ip = %node_cfg.ip, "kubelet starting");
    let mut mirrors = Mirrors::parse(&args.registry_mirrors)?;
    mirrors.fallback = args.registry_fallback;
    let images = Arc::new(ImageStore::open(&args.root_dir.join("images"), mirrors)?);
    let gc = Arc::new(ImageGc::new(
        images.clone(),
        &args.root_dir.join("pods"),
        image_gc_policy,
    ));
    let gc_events = Recorder::new(client.clone(), &node_cfg.name);
    let gc_period = args.image_gc_period;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(gc_period).await;
            let gc = gc.clone();
            let outcome = tokio::task::spawn_blocking(move || gc.run_once()).await;
            let message = match outcome {
                Ok(Ok(image_gc::Outcome::Short { wanted, freed })) => format!(
                    "Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {freed} bytes eligible to free."
                ),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => format!("Image garbage collection failed: {e}"),
                Err(e) => format!("Image garbage collection failed: {e}"),
            };
            tracing::warn!("{message}");
            gc_events
                .node(Kind::Warning, "ImageGCFailed", &message)
                .await;
        }
    });
    let mut pods = Pods::new(
        client.clone(),
        &node_cfg.name,
        &node_cfg.ip.to_string(),
        &args.root_dir,
        images,
    );
    pods.cgroup_root = args.cgroup_root.trim_end_matches('/').to_string();
    pods.static_pod_path = cfg.static_pod_path.clone();
    pods.cluster_dns = cfg.cluster_dns.clone();
    pods.cluster_domain = cfg.cluster_domain.clone();
    (pods.log_max_size, pods.log_max_files) = log_rotation;
    pods.pod_logs_dir = cfg.pod_logs_dir.clone();
    let cni = Arc::new(Cni {
        conf_dir: args.cni_conf_dir.clone(),
        bin_dir: args.cni_bin_dir.clone(),
        data_dir: args.root_dir.join("cni/networks"),
    });
    pods.cni = Some(cni.clone());
    pods.allocatable = node::capacity(&node_cfg);
    // Every Service, for the containers' service variables, as upstream's kubelet
    // watches them.
    let services = Informer::new(Api::<Service>::all(client.clone()), ListParams::default());
    pods.services = Some(services.store());
    tokio::spawn(services.run());
    let pods = Arc::new(pods);
    let identity = server::serving_identity(
        &server_cfg,
        &args.root_dir.join("pki"),
        &node_cfg.name,
        node_cfg.ip,
    )?;
    // Bound before anything runs, so a port in use fails the start.
    let listener = tokio::net::TcpListener::bind(server_cfg.address)
        .await
        .with_context(|| format!("listening on {}", server_cfg.address))?;
    let stats = Arc::new(Sampler::new(pods.clone()));
    tokio::spawn(stats.clone().run());
    let server = tokio::spawn(server::run(
        pods.clone(),
        stats,
        listener,
        server_cfg,
        identity,
    ));
    // The pods bound to this node, cached and watched.
    let mut informer = Informer::new(
        Api::<Pod>::all(client.clone()),
        ListParams {
            field_selector: Some(format!("spec.nodeName={}", node_cfg.name)),
            ..Default::default()
        },
    );
    let changed = Arc::new(tokio::sync::Notify::new());
    let c2 = changed.clone();
    informer.on_event(move |_| c2.notify_one());
    let store = informer.store();
    tokio::spawn(informer.run());
    let workers = async move {
        loop {
            pods.dispatch(&store).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), changed.notified()).await;
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = workers => {}
        _ = routes::run(client.clone(), node_cfg.name.clone()) => {}
        r = server => match r {
            Ok(Err(e)) => return Err(e.into()),
            _ => anyhow::bail!("the kubelet server stopped"),
        },
        _ = node::run(client, node_cfg, cni) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
    Ok(())
}
