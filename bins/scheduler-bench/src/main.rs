//! `scheduler-bench`: creates pending pods (plain, with pod anti-affinity, or with a
//! topology spread constraint) on a cluster whose nodes are hollow, then starts
//! kube-scheduler and times from its start until every pod is bound (a watch sees
//! `spec.nodeName`), as upstream's scheduler_perf measures throughput. The scheduler's
//! own `scheduler_scheduling_attempt_duration_seconds` histogram gives the per-pod
//! latency percentiles (as bucket bounds). One JSON line of results.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ferrokube_client::{Api, Client, Config, ListParams};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_stream::StreamExt as _;

#[derive(Parser)]
#[command(name = "scheduler-bench", about)]
struct Args {
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// The kube-scheduler binary to start once the pods exist.
    #[arg(long)]
    scheduler: std::path::PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// plain | anti-affinity | spread
    #[arg(long, default_value = "plain")]
    workload: String,
    /// How many nodes there are (for the anti-affinity groups).
    #[arg(long)]
    nodes: usize,
    /// A label for the results.
    #[arg(long, default_value = "")]
    name: String,
}

fn pod(i: usize, workload: &str, groups: usize) -> Result<Pod> {
    let group = format!("g{}", i % groups.max(1));
    let mut spec = json!({
        "containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}],
        "terminationGracePeriodSeconds": 0,
    });
    match workload {
        "plain" => {}
        "anti-affinity" => {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"group": group}}, "topologyKey": "kubernetes.io/hostname"}]}});
        }
        "spread" => {
            spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]);
        }
        other => anyhow::bail!("unknown workload {other:?}: plain, anti-affinity or spread"),
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("sb-{i}"), "labels": {"group": group, "app": "spread"}},
        "spec": spec,
    }))?)
}

/// CPU time (user and system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Linux reports in USER_HZ, 100 per second on every supported architecture.
    Some(ticks as f64 / 100.0)
}

/// The smallest bucket bound with at least `q` of the observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let count = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, c)| *c >= q * count)
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
}

/// The `(le, cumulative count)` buckets of a histogram in Prometheus text whose labels
/// contain `with` (the `+Inf` bucket last).
fn histogram(text: &str, name: &str, with: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .filter(|rest| rest.contains(with))
        .filter_map(|rest| {
            let le = rest.split("le=\"").last()?.split('"').next()?;
            let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value))
        })
        .collect()
}

async fn run(args: Args) -> Result<()> {
    let cfg = Config::from_kubeconfig(&args.kubeconfig)?;
    let client = Client::new(&cfg)?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    // Pods per node in a group: one, so enough groups for every pod.
    let groups = args.pods.div_ceil(args.nodes.max(1)) + 1;
    let created = Instant::now();
    let sem = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.pods {
        let p = pod(i, &args.workload, groups)?;
        let (pods, permit) = (pods.clone(), sem.clone().acquire_owned().await?);
        tasks.spawn(async move {
            let _permit = permit;
            pods.create(&p).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?.context("creating a pod")?;
    }
    let create_secs = created.elapsed().as_secs_f64();
    let list = pods.list(&ListParams::default()).await?;
    let rv = list.metadata.resource_version.unwrap_or_default();
    let mut bound: HashSet<String> = list
        .items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let mut watch = pods
        .watch(&ListParams {
            resource_version: Some(rv),
            ..Default::default()
        })
        .await?;
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let started = Instant::now();
    let mut scheduler = Command::new(&args.scheduler)
        .arg("--kubeconfig")
        .arg(&args.kubeconfig)
        .args(["--leader-elect=false", "--bind-address=127.0.0.1"])
        .arg(format!("--secure-port={metrics_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kube-scheduler")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut first: Option<f64> = None;
    while bound.len() < args.pods {
        let Ok(Some(ev)) = tokio::time::timeout_at(deadline, watch.next()).await else {
            break;
        };
        if let Ok(WatchEvent::Modified(p)) = ev {
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                first.get_or_insert(started.elapsed().as_secs_f64());
                bound.insert(p.metadata.name.unwrap_or_default());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // The scheduler's latency histogram (scheduled attempts).
    let text = Command::new("curl")
        .args(["-sk", "--max-time", "5"])
        .arg(format!("https://127.0.0.1:{metrics_port}/metrics"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let cpu_s = cpu_seconds(scheduler.id());
    let _ = scheduler.kill();
    let _ = scheduler.wait();
    let attempt = histogram(
        &text,
        "scheduler_scheduling_attempt_duration_seconds",
        "result=\"scheduled\"",
    );
    let algorithm = histogram(&text, "scheduler_scheduling_algorithm_duration_seconds", "");
    if attempt.is_empty() {
        eprintln!(
            "no latency histogram from the scheduler's /metrics: {:?}",
            &text[..text.len().min(300)]
        );
    }
    let scheduled = bound.len();
    // Throughput over the scheduling itself, from the first binding to the last.
    let busy = (secs - first.unwrap_or(0.0)).max(1e-3);
    println!(
        "{}",
        json!({
            "measure": args.name,
            "pods": args.pods,
            "bound": scheduled,
            "create_s": (create_secs * 10.0).round() / 10.0,
            "schedule_s": (secs * 100.0).round() / 100.0,
            "first_bound_s": first.map(|f| (f * 100.0).round() / 100.0),
            "pods_per_s": (scheduled as f64 / busy).round(),
            "p50_le_s": quantile(&attempt, 0.5),
            "p99_le_s": quantile(&attempt, 0.99),
            "algorithm_p99_le_s": quantile(&algorithm, 0.99),
            "scheduler_cpu_s": cpu_s.map(|c| (c * 100.0).round() / 100.0),
        })
    );
    anyhow::ensure!(
        scheduled == args.pods,
        "only {scheduled} of {} pods were bound in 10 minutes",
        args.pods
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
