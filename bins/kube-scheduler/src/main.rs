//! `kube-scheduler`: schedules pods while this process holds the
//! `kube-system/kube-scheduler` Lease; serves `/healthz` and `/metrics` on its secure
//! port. Flags and the `--config` file (`KubeSchedulerConfiguration`) follow upstream's.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use ferrokube_client::{Api, Client, Config, ElectionConfig, LeaderElection};
use ferrokube_scheduler::Scheduler;
use k8s_openapi::api::coordination::v1::Lease;

#[derive(Parser, Debug)]
#[command(name = "kube-scheduler", version, about)]
struct Args {
    /// A KubeSchedulerConfiguration file (profiles, plugins, leader election).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kubeconfig with the API server's address and credentials (else the config's
    /// clientConnection.kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Schedule only while holding the leader Lease (for several replicas).
    #[arg(long, action = clap::ArgAction::Set)]
    leader_elect: Option<bool>,
    /// How long a non-renewed lease holds (Go duration).
    #[arg(long, value_parser = duration)]
    leader_elect_lease_duration: Option<Duration>,
    /// How long the leader keeps trying to renew before it stops leading.
    #[arg(long, value_parser = duration)]
    leader_elect_renew_deadline: Option<Duration>,
    /// How often candidates try to take or renew the lease.
    #[arg(long, value_parser = duration)]
    leader_elect_retry_period: Option<Duration>,
    /// The Lease's namespace.
    #[arg(long)]
    leader_elect_resource_namespace: Option<String>,
    /// The Lease's name.
    #[arg(long)]
    leader_elect_resource_name: Option<String>,
    /// Address of the health and metrics endpoints.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Port of the health and metrics endpoints (HTTPS); 0 turns them off.
    #[arg(long, default_value_t = 10259)]
    secure_port: u16,
    /// Serving certificate (PEM); a self-signed one is made at start when absent.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Key (PEM) of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
}

fn duration(s: &str) -> Result<Duration, String> {
    ferrokube_api::meta::parse_go_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("invalid duration {s:?}"))
}

/// What the health and metrics endpoints report.
struct State {
    leading: AtomicBool,
    election: Option<(String, ferrokube_client::Watchdog)>,
    metrics: Box<dyn Fn() -> String + Send + Sync>,
}

impl ferrokube_serving::Health for State {
    fn check(&self) -> Result<(), String> {
        match &self.election {
            Some((_, w)) => w.check(),
            None => Ok(()),
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        if let Some((lease, _)) = &self.election {
            let _ = writeln!(out, "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease.");
            let _ = writeln!(out, "# TYPE leader_election_master_status gauge");
            let _ = writeln!(
                out,
                "leader_election_master_status{{name=\"{lease}\"}} {}",
                u8::from(self.leading.load(Ordering::Relaxed))
            );
        }
        out.push_str(&(self.metrics)());
        out
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

async fn run(args: Args) -> Result<()> {
    let mut config = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?;
            ferrokube_scheduler::load(&text).with_context(|| format!("--config {}", p.display()))?
        }
        None => ferrokube_scheduler::default_config(),
    };
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let kubeconfig = args
        .kubeconfig
        .clone()
        .or_else(|| config.kubeconfig.clone().map(PathBuf::from))
        .context("no kubeconfig: give --kubeconfig or clientConnection.kubeconfig in --config")?;
    let le = &mut config.leader_election;
    if let Some(v) = args.leader_elect {
        le.leader_elect = v;
    }
    if let Some(v) = args.leader_elect_lease_duration {
        le.lease_duration = v;
    }
    if let Some(v) = args.leader_elect_renew_deadline {
        le.renew_deadline = v;
    }
    if let Some(v) = args.leader_elect_retry_period {
        le.retry_period = v;
    }
    if let Some(v) = &args.leader_elect_resource_name {
        le.resource_name = v.clone();
    }
    if let Some(v) = &args.leader_elect_resource_namespace {
        le.resource_namespace = v.clone();
    }
    let le = le.clone();
    let client_config = Config::from_kubeconfig(&kubeconfig)
        .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))?;
    let client = Client::new(&client_config)?.with_field_manager("kube-scheduler");
    let host = hostname();
    let election = if le.leader_elect {
        let identity = format!("{host}_{}", ferrokube_api::meta::new_uid());
        let mut cfg = ElectionConfig::new(&le.resource_namespace, &le.resource_name, &identity);
        cfg.lease_duration = le.lease_duration;
        cfg.renew_deadline = le.renew_deadline;
        cfg.retry_period = le.retry_period;
        cfg.validate()
            .map_err(anyhow::Error::msg)
            .context("leader election")?;
        let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
        Some(LeaderElection::new(api, cfg))
    } else {
        None
    };
    let scheduler = Scheduler::new(client, config, &host);
    let state = Arc::new(State {
        leading: AtomicBool::new(false),
        election: election
            .as_ref()
            .map(|e| (le.resource_name.clone(), e.watchdog())),
        metrics: Box::new(scheduler.metrics_reader()),
    });
    if args.secure_port != 0 {
        let identity = match (&args.tls_cert_file, &args.tls_private_key_file) {
            (Some(c), Some(k)) => ferrokube_serving::Identity {
                cert_pem: std::fs::read(c)
                    .with_context(|| format!("--tls-cert-file {}", c.display()))?,
                key_pem: std::fs::read(k)
                    .with_context(|| format!("--tls-private-key-file {}", k.display()))?,
            },
            _ => ferrokube_serving::Identity::self_signed("localhost")?,
        };
        let addr = SocketAddr::new(args.bind_address, args.secure_port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        let health = state.clone();
        tokio::spawn(async move {
            if let Err(e) = ferrokube_serving::serve(listener, &identity, health).await {
                ferrokube_process::exit_with(&format!("serving {addr}: {e}"));
            }
        });
        tracing::info!(%addr, "serving /healthz and /metrics");
    }
    let lead = {
        let state = state.clone();
        move || async move {
            state.leading.store(true, Ordering::Relaxed);
            scheduler.run().await;
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let work = async {
        match election {
            Some(e) => e.run(lead).await,
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
        _ = term.recv() => tracing::info!("terminated; stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
    }
    Ok(())
}

fn main() {
    ferrokube_process::init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| ferrokube_process::exit_with(&format!("runtime: {e}")));
    if let Err(e) = rt.block_on(run(args)) {
        ferrokube_process::exit_with(&format!("{e:#}"));
    }
}
