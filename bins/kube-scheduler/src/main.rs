//! `kube-scheduler`: schedules pods while this process holds the
//! `kube-system/kube-scheduler` Lease; serves `/healthz` and `/metrics` on its secure
//! port. Flags and the `--config` file (`KubeSchedulerConfiguration`) follow upstream's.

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
            ferrokube_serving::leader_election_metric(
                &mut out,
                lease,
                self.leading.load(Ordering::Relaxed),
            );
        }
        out.push_str(&(self.metrics)());
        out
    }
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
    let host = ferrokube_process::hostname();
    let election = if le.leader_elect {
        let identity = ElectionConfig::identity(&host);
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
    ferrokube_serving::start(
        ferrokube_serving::Endpoint {
            component: "kube-scheduler",
            addr: SocketAddr::new(args.bind_address, args.secure_port),
            cert_file: args.tls_cert_file.clone(),
            key_file: args.tls_private_key_file.clone(),
        },
        state.clone(),
    )
    .await?;
    let lead = {
        let state = state.clone();
        move || async move {
            state.leading.store(true, Ordering::Relaxed);
            scheduler.run().await;
        }
    };
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
        _ = ferrokube_process::stop_signal() => {}
    }
    Ok(())
}

fn main() {
    ferrokube_process::init();
    ferrokube_process::run(run(Args::parse()));
}
