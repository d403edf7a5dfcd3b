//! `pod-bench`: creates batches of pods bound to one node (image already present) and
//! measures the time from create to the Running phase as a watch reports it, then the
//! kubelet's memory and CPU while the last batch runs. Each batch but the last is deleted
//! (and gone) before the next starts. One JSON line per measurement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ferrokube_client::{Api, Client, Config, ListParams};
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use serde_json::json;
use tokio_stream::StreamExt as _;

#[derive(Parser)]
#[command(name = "pod-bench", about)]
struct Args {
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    #[arg(long, default_value = "node-1")]
    node: String,
    /// Batches: `N` creates N pods at once, `N@R` creates them at R per second.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,100@10")]
    batches: Vec<Batch>,
    #[arg(long, default_value = "busybox")]
    image: String,
    /// The kubelet's root directory: between batches the bench waits until the kubelet
    /// has cleaned up the previous batch's pods, so that one batch's teardown does not
    /// slow the next one's start.
    #[arg(long)]
    kubelet_root: Option<std::path::PathBuf>,
    /// The kubelet's pid, for memory and CPU figures.
    #[arg(long)]
    kubelet_pid: Option<u32>,
}

/// A batch of pods, created at once or at a steady rate.
#[derive(Clone, Copy, Debug)]
struct Batch {
    pods: usize,
    per_second: Option<u32>,
}

impl std::str::FromStr for Batch {
    type Err = String;
    fn from_str(s: &str) -> Result<Batch, String> {
        let bad = || format!("batch {s:?} is not N or N@RATE");
        let (n, rate) = match s.split_once('@') {
            Some((n, r)) => (
                n,
                Some(r.parse::<u32>().ok().filter(|r| *r > 0).ok_or_else(bad)?),
            ),
            None => (s, None),
        };
        Ok(Batch {
            pods: n.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?,
            per_second: rate,
        })
    }
}

fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

async fn batch(pods: &Api<Pod>, args: &Args, b: Batch, round: usize) -> Result<serde_json::Value> {
    let n = b.pods;
    let rv = pods
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch = pods
        .watch(&ListParams {
            resource_version: Some(rv),
            ..Default::default()
        })
        .await?;
    // Creation runs beside the watch, so that a paced batch is measured as it goes.
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let creator = {
        let (pods, started) = (pods.clone(), started.clone());
        let (node, image) = (args.node.clone(), args.image.clone());
        tokio::spawn(async move {
            let mut pace = b
                .per_second
                .map(|r| tokio::time::interval(Duration::from_secs(1) / r));
            for i in 0..n {
                if let Some(pace) = &mut pace {
                    pace.tick().await;
                }
                let name = format!("bench-{round}-{i}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                             "containers": [{"name": "c", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}
                }))?;
                started.lock().unwrap().insert(name, Instant::now());
                pods.create(&pod).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while hist.len() < n as u64 {
        let ev = tokio::time::timeout_at(deadline, watch.next())
            .await
            .context("pods did not all start in 5 minutes")?;
        let Some(ev) = ev else { break };
        if let Ok(WatchEvent::Modified(p)) | Ok(WatchEvent::Added(p)) = ev {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let name = p.metadata.name.clone().unwrap_or_default();
            if running {
                if let Some(t) = started.lock().unwrap().remove(&name) {
                    hist.record(t.elapsed().as_millis().max(1) as u64)?;
                }
            }
        }
    }
    creator.await??;
    anyhow::ensure!(
        hist.len() == n as u64,
        "the watch ended before every pod ran"
    );
    Ok(json!({
        "bench": "pods",
        "measure": match b.per_second {
            None => format!("{n} pod(s) at once: create to Running"),
            Some(r) => format!("{n} pods at {r}/s: create to Running"),
        },
        "pods": n, "p50_ms": hist.value_at_quantile(0.5), "p99_ms": hist.value_at_quantile(0.99), "max_ms": hist.max(),
    }))
}

/// Deletes the bench's pods and waits (up to 2 minutes) until they are gone.
async fn delete_all(pods: &Api<Pod>) -> Result<()> {
    let list = pods.list(&ListParams::default()).await?;
    for p in &list.items {
        if let Some(name) = &p.metadata.name {
            if name.starts_with("bench-") {
                pods.delete(name, None).await?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = pods.list(&ListParams::default()).await?.items.len();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} pod(s) still there after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to 2 minutes) until the kubelet has no pod directories left.
async fn wait_cleaned_up(root: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = std::fs::read_dir(root.join("pods")).map_or(0, |d| d.count());
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the kubelet still has {left} pod(s) after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, fixed at 100 in Linux's
/// user-space ABI.
const USER_HZ: f64 = 100.0;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client =
        Client::new(&Config::from_kubeconfig(&args.kubeconfig)?)?.with_field_manager("pod-bench");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let idle_rss = args
        .kubelet_pid
        .and_then(proc_stat)
        .map_or(0, |(rss, _)| rss);
    for (round, &b) in args.batches.iter().enumerate() {
        println!("{}", batch(&pods, &args, b, round).await?);
        if round + 1 < args.batches.len() {
            delete_all(&pods).await?;
            if let Some(root) = &args.kubelet_root {
                wait_cleaned_up(root).await?;
            }
        }
    }
    if let Some(pid) = args.kubelet_pid {
        let last = args.batches.last().map_or(0, |b| b.pods);
        // Settle, then CPU over 10 s with the pods running.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (_, t0) = proc_stat(pid).context("the kubelet is gone")?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (rss, t1) = proc_stat(pid).context("the kubelet is gone")?;
        println!(
            "{}",
            json!({"bench": "pods", "measure": format!("kubelet with {last} pods running"),
            "rss_mib": rss as f64 / 1024.0, "idle_rss_mib": idle_rss as f64 / 1024.0,
            "cpu_percent": ((t1 - t0) as f64 / USER_HZ) / 10.0 * 100.0})
        );
    }
    delete_all(&pods).await?;
    Ok(())
}
