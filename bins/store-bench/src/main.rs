//! `store-bench`: an etcd v3 gRPC load generator. It runs the same workloads against any
//! server that speaks the etcd v3 API (ferrokube-store or etcd) and prints one JSON line
//! per workload: throughput and latency percentiles. `scripts/bench store` drives it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ferrokube_proto::etcdserverpb::kv_client::KvClient;
use ferrokube_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ferrokube_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(name = "store-bench", about)]
struct Args {
    /// Comma-separated host:port endpoints; clients are spread across them.
    #[arg(long)]
    endpoints: String,
    /// Label printed with every result (e.g. "ferrokube x1").
    #[arg(long, default_value = "")]
    label: String,
    /// Operations in the sequential put workload.
    #[arg(long, default_value_t = 2000)]
    sequential_ops: u64,
    /// Operations in each concurrent workload.
    #[arg(long, default_value_t = 40000)]
    concurrent_ops: u64,
    /// Concurrent clients in the concurrent workloads.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections shared by the clients (per endpoint).
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 10000)]
    key_space: u64,
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Range { serializable: bool },
}

async fn run(
    chans: &[Channel],
    op: Op,
    clients: usize,
    total: u64,
    value: Arc<Vec<u8>>,
    key_space: u64,
) -> Result<(f64, Histogram<u64>)> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(chans[c % chans.len()].clone());
        let next = next.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let key = format!("bench/{:08}", i % key_space).into_bytes();
                let t = Instant::now();
                match op {
                    Op::Put => {
                        kv.put(PutRequest {
                            key,
                            value: value.to_vec(),
                            ..Default::default()
                        })
                        .await?;
                    }
                    Op::Range { serializable } => {
                        kv.range(RangeRequest {
                            key,
                            serializable,
                            ..Default::default()
                        })
                        .await?;
                    }
                }
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((total as f64 / secs, all))
}

fn report(label: &str, workload: &str, ops: f64, h: &Histogram<u64>) {
    println!(
        "{{\"label\":\"{label}\",\"workload\":\"{workload}\",\"ops_per_sec\":{ops:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut chans = Vec::new();
    for ep in args.endpoints.split(',') {
        let url = if ep.contains("://") {
            ep.to_string()
        } else {
            format!("http://{ep}")
        };
        for _ in 0..args.conns {
            let ch = Endpoint::from_shared(url.clone())?
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(30))
                .connect()
                .await
                .with_context(|| format!("connect {url}"))?;
            chans.push(ch);
        }
    }
    // The sequential client talks to the leader, as a single writer would be configured to;
    // concurrent clients are spread over every member.
    let per = args.conns;
    let mut leader_chans = chans[..per].to_vec();
    for (i, group) in chans.chunks(per).enumerate() {
        let mut m = MaintenanceClient::new(group[0].clone());
        let st = m.status(StatusRequest {}).await?.into_inner();
        if st.header.map(|h| h.member_id) == Some(st.leader) {
            leader_chans = chans[i * per..(i + 1) * per].to_vec();
        }
    }
    let value = Arc::new(vec![b'v'; args.value_size]);
    let ks = args.key_space;
    // Fill the key space so ranges find values.
    let (_, _) = run(&chans, Op::Put, args.clients, ks, value.clone(), ks).await?;
    let (ops, h) = run(
        &leader_chans,
        Op::Put,
        1,
        args.sequential_ops,
        value.clone(),
        ks,
    )
    .await?;
    report(&args.label, "put sequential", ops, &h);
    let concurrent = [
        (format!("put {} clients", args.clients), Op::Put),
        (
            format!("range serializable {} clients", args.clients),
            Op::Range { serializable: true },
        ),
        (
            format!("range linearizable {} clients", args.clients),
            Op::Range {
                serializable: false,
            },
        ),
    ];
    for (name, op) in concurrent {
        let total = args.concurrent_ops;
        let (ops, h) = run(&chans, op, args.clients, total, value.clone(), ks).await?;
        report(&args.label, &name, ops, &h);
    }
    Ok(())
}
