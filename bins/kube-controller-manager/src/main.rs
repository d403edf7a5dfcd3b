//! `kube-controller-manager`: runs the selected controllers while this process holds the
//! `kube-system/kube-controller-manager` Lease, and serves `/healthz` and `/metrics` on
//! its secure port. Flags follow upstream's.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use ferrokube_client::{Api, Client, Config, ElectionConfig, LeaderElection, QueueCounts};
use ferrokube_controllers::{Context, CountsFn, InformerFactory};
use k8s_openapi::api::coordination::v1::Lease;

#[derive(Parser, Debug)]
#[command(name = "kube-controller-manager", version, about)]
struct Args {
    /// Kubeconfig with the API server's address and credentials.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Controllers to run: `*` for all on by default, `name` to enable one, `-name` to
    /// disable one (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// The cluster's CA bundle (PEM), published to every namespace as the
    /// kube-root-ca.crt ConfigMap.
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// Run only while holding the leader Lease (for several replicas).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a non-renewed lease holds (Go duration).
    #[arg(long, default_value = "15s", value_parser = duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops leading.
    #[arg(long, default_value = "10s", value_parser = duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to take or renew the lease.
    #[arg(long, default_value = "2s", value_parser = duration)]
    leader_elect_retry_period: Duration,
    /// The Lease's namespace.
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "kube-controller-manager")]
    leader_elect_resource_name: String,
    /// Address of the health and metrics endpoints.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Port of the health and metrics endpoints (HTTPS); 0 turns them off.
    #[arg(long, default_value_t = 10257)]
    secure_port: u16,
    /// Serving certificate (PEM); a self-signed one is made at start when absent.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Key (PEM) of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Finished pods kept before the pod garbage collector deletes the oldest (0: all
    /// kept).
    #[arg(long, default_value_t = ferrokube_controllers::podgc::DEFAULT_THRESHOLD)]
    terminated_pod_gc_threshold: usize,
    /// Give Nodes pod CIDRs from --cluster-cidr (node-ipam-controller).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allocate_node_cidrs: bool,
    /// The pods' CIDR range(s), comma-separated (one IPv4, one IPv6).
    #[arg(long, default_value = "")]
    cluster_cidr: String,
    /// The Services' CIDR range(s); node ranges overlapping them are never handed out.
    #[arg(long, default_value = "")]
    service_cluster_ip_range: String,
    /// The size of each Node's range (both families; see the per-family flags).
    #[arg(long)]
    node_cidr_mask_size: Option<u8>,
    /// The size of each Node's IPv4 range (default 24).
    #[arg(long)]
    node_cidr_mask_size_ipv4: Option<u8>,
    /// The size of each Node's IPv6 range (default 64).
    #[arg(long)]
    node_cidr_mask_size_ipv6: Option<u8>,
    /// The PEM private key legacy service-account token Secrets are signed with (the
    /// API server's service-account signing key); without it the
    /// serviceaccount-token-controller does not start.
    #[arg(long)]
    service_account_private_key_file: Option<PathBuf>,
    /// How often Node health is checked (Go duration).
    #[arg(long, default_value = "5s", value_parser = duration)]
    node_monitor_period: Duration,
    /// How long a running Node may be silent before it is marked unhealthy.
    #[arg(long, default_value = "50s", value_parser = duration)]
    node_monitor_grace_period: Duration,
    /// How long a starting Node may be silent before it is marked unhealthy.
    #[arg(long, default_value = "1m0s", value_parser = duration)]
    node_startup_grace_period: Duration,
    /// Nodes per second tainted NoExecute when their zone is healthy.
    #[arg(long, default_value_t = 0.1)]
    node_eviction_rate: f64,
    /// Nodes per second tainted NoExecute when their zone is unhealthy.
    #[arg(long, default_value_t = 0.01)]
    secondary_node_eviction_rate: f64,
    /// Zones of at most this many Nodes are not tainted while unhealthy.
    #[arg(long, default_value_t = 50)]
    large_cluster_size_threshold: usize,
    /// The share of not-ready Nodes (at least 3) that makes a zone unhealthy.
    #[arg(long, default_value_t = 0.55)]
    unhealthy_zone_threshold: f64,
    /// How often each HorizontalPodAutoscaler is synced.
    #[arg(long, default_value = "15s", value_parser = duration)]
    horizontal_pod_autoscaler_sync_period: Duration,
    /// How far from its target a metric may be without a rescale.
    #[arg(long, default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
    /// How long the highest recent recommendation holds a scale-down back.
    #[arg(long, default_value = "5m0s", value_parser = duration)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// How long after a pod starts its CPU may be skipped as still initialising.
    #[arg(long, default_value = "5m0s", value_parser = duration)]
    horizontal_pod_autoscaler_cpu_initialization_period: Duration,
    /// How long after a pod starts a not-ready pod counts as never ready.
    #[arg(long, default_value = "30s", value_parser = duration)]
    horizontal_pod_autoscaler_initial_readiness_delay: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    ferrokube_api::meta::parse_go_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("invalid duration {s:?}"))
}

/// A work-queue metric: name, type, help and the counter it shows.
type QueueMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QueueCounts) -> u64,
);

/// Upstream's work-queue metrics.
const QUEUE_METRICS: [QueueMetric; 3] = [
    (
        "workqueue_adds_total",
        "counter",
        "Total number of adds handled by workqueue",
        |c| c.adds,
    ),
    (
        "workqueue_depth",
        "gauge",
        "Current depth of workqueue",
        |c| c.depth as u64,
    ),
    (
        "workqueue_retries_total",
        "counter",
        "Total number of retries handled by workqueue",
        |c| c.retries,
    ),
];

/// What the health and metrics endpoints report.
struct State {
    leading: AtomicBool,
    /// The leader Lease's name and watchdog, with --leader-elect.
    election: Option<(String, ferrokube_client::Watchdog)>,
    queues: std::sync::Mutex<Vec<(&'static str, CountsFn)>>,
}

impl ferrokube_serving::Health for State {
    fn check(&self) -> Result<(), String> {
        match &self.election {
            Some((_, watchdog)) => watchdog.check(),
            None => Ok(()),
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        if let Some((lease, _)) = &self.election {
            ferrokube_serving::leader_election_metric(
                &mut out,
                lease,
                self.leading.load(Ordering::Relaxed),
            );
        }
        let queues = self.queues.lock().expect("queues lock");
        let counts: Vec<(&str, QueueCounts)> = queues.iter().map(|(n, c)| (*n, c())).collect();
        for (metric, kind, help, value) in QUEUE_METRICS {
            let _ = writeln!(out, "# HELP {metric} [ALPHA] {help}");
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (name, c) in &counts {
                let _ = writeln!(out, "{metric}{{name=\"{name}\"}} {}", value(c));
            }
        }
        out
    }
}

async fn run(args: Args) -> Result<()> {
    let selected = ferrokube_controllers::select(&args.controllers)
        .map_err(anyhow::Error::msg)
        .context("--controllers")?;
    let root_ca = match &args.root_ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--root-ca-file {}", p.display()))?
                .into(),
        ),
        None => None,
    };
    let service_account_key = match &args.service_account_private_key_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--service-account-private-key-file {}", p.display()))?
                .into(),
        ),
        None => None,
    };
    let config = Config::from_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("--kubeconfig {}", args.kubeconfig.display()))?;
    // As upstream: without --root-ca-file, the CA the kubeconfig trusts is published.
    let root_ca = root_ca.or_else(|| {
        (!config.ca_pem.is_empty()).then(|| String::from_utf8_lossy(&config.ca_pem).into())
    });
    let client = Client::new(&config)?.with_field_manager("kube-controller-manager");
    let cx = Context {
        client: client.clone(),
        root_ca,
        host: ferrokube_process::hostname(),
        terminated_pod_gc_threshold: args.terminated_pod_gc_threshold,
        node_ipam: ferrokube_controllers::nodeipam::Config {
            allocate: args.allocate_node_cidrs,
            cluster_cidr: args.cluster_cidr.clone(),
            service_cidr: args.service_cluster_ip_range.clone(),
            mask_ipv4: args.node_cidr_mask_size_ipv4.or(args.node_cidr_mask_size),
            mask_ipv6: args.node_cidr_mask_size_ipv6.or(args.node_cidr_mask_size),
        },
        node_lifecycle: ferrokube_controllers::nodelifecycle::Config {
            monitor_period: args.node_monitor_period,
            grace_period: args.node_monitor_grace_period,
            startup_grace_period: args.node_startup_grace_period,
            eviction_rate: args.node_eviction_rate,
            secondary_eviction_rate: args.secondary_node_eviction_rate,
            large_cluster_threshold: args.large_cluster_size_threshold,
            unhealthy_zone_threshold: args.unhealthy_zone_threshold,
        },
        service_account_key,
        hpa: ferrokube_controllers::podautoscaler::Config {
            sync_period: args.horizontal_pod_autoscaler_sync_period,
            tolerance: args.horizontal_pod_autoscaler_tolerance,
            downscale_stabilization: args.horizontal_pod_autoscaler_downscale_stabilization,
            cpu_initialization_period: args.horizontal_pod_autoscaler_cpu_initialization_period,
            initial_readiness_delay: args.horizontal_pod_autoscaler_initial_readiness_delay,
        },
    };
    let election = if args.leader_elect {
        let identity = ElectionConfig::identity(&ferrokube_process::hostname());
        let mut cfg = ElectionConfig::new(
            &args.leader_elect_resource_namespace,
            &args.leader_elect_resource_name,
            &identity,
        );
        cfg.lease_duration = args.leader_elect_lease_duration;
        cfg.renew_deadline = args.leader_elect_renew_deadline;
        cfg.retry_period = args.leader_elect_retry_period;
        cfg.validate()
            .map_err(anyhow::Error::msg)
            .context("leader election")?;
        let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
        Some(LeaderElection::new(api, cfg))
    } else {
        None
    };
    let state = Arc::new(State {
        leading: AtomicBool::new(false),
        election: election
            .as_ref()
            .map(|e| (args.leader_elect_resource_name.clone(), e.watchdog())),
        queues: Default::default(),
    });
    ferrokube_serving::start(
        ferrokube_serving::Endpoint {
            component: "kube-controller-manager",
            addr: SocketAddr::new(args.bind_address, args.secure_port),
            cert_file: args.tls_cert_file.clone(),
            key_file: args.tls_private_key_file.clone(),
        },
        state.clone(),
    )
    .await?;

    // What the leader runs: the informers, then, once their caches are synced, every
    // selected controller. A leader with nothing to run keeps leading.
    let lead = {
        let state = state.clone();
        move || async move {
            state.leading.store(true, Ordering::Relaxed);
            let mut informers = InformerFactory::new(cx.client.clone());
            let mut runners = Vec::new();
            let missing: Vec<&str> = selected
                .iter()
                .filter(|d| d.start.is_none())
                .map(|d| d.name)
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    "controllers not implemented by ferrokube, not started: {}",
                    missing.join(", ")
                );
            }
            for d in selected {
                let Some(start) = d.start else { continue };
                match start(&cx, &mut informers) {
                    Ok(runner) => runners.push((d.name, runner)),
                    Err(why) => tracing::warn!(controller = d.name, "not started: {why}"),
                }
            }
            let informers = informers.start();
            informers.wait_for_cache_sync().await;
            let mut runs = tokio::task::JoinSet::new();
            for (name, runner) in runners {
                tracing::info!(controller = name, "started");
                state
                    .queues
                    .lock()
                    .expect("queues lock")
                    .push((runner.queue_name, runner.counts));
                runs.spawn(runner.run);
            }
            while runs.join_next().await.is_some() {}
            std::future::pending::<()>().await;
        }
    };
    let work = async {
        match election {
            Some(election) => election.run(lead).await,
            None => {
                lead().await;
                Ok(())
            }
        }
    };
    tokio::select! {
        r = work => {
            r.map_err(|e| anyhow::anyhow!("leaderelection lost: {e}"))?;
        }
        _ = ferrokube_process::stop_signal() => {}
    }
    Ok(())
}

fn main() {
    ferrokube_process::init();
    ferrokube_process::run(run(Args::parse()));
}
