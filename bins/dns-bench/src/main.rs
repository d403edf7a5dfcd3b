//! `dns-bench`: the cluster DNS server (the addon's own code: records, answers, UDP
//! serving) on 127.0.0.1 with `--services` Services, queried by `--clients` concurrent
//! UDP clients for `--seconds`, each waiting for its answer before the next query
//! (names of existing Services, a few unknown ones). Prints one JSON line: queries/s and
//! latency percentiles.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use ferrokube_dns::records::Records;
use ferrokube_dns::server::{serve_udp, Dns};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    #[arg(long, default_value_t = 8)]
    clients: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn services(n: u32) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            metadata: ObjectMeta {
                name: Some(format!("svc{i}")),
                namespace: Some(format!("ns{}", i % 50)),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(
                    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 10)) + i)
                        .to_string(),
                ),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dns = Dns::new("cluster.local", vec![]);
    let svcs = services(args.services);
    dns.set_records(Records::build(&svcs, &[]));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let server: SocketAddr = sock.local_addr()?;
    tokio::spawn(serve_udp(dns.clone(), sock));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let n = args.services;
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        tasks.push(tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let mut lat = Vec::new();
            let mut buf = vec![0u8; 4096];
            let mut i: u32 = c;
            while Instant::now() < deadline {
                i = i.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let k = i % (n + n / 20).max(1);
                // 1 in 21 names does not exist (NXDOMAIN).
                let name = format!("svc{k}.ns{}.svc.cluster.local.", k % 50);
                let mut m = Message::query();
                m.metadata.id = (i & 0xffff) as u16;
                m.add_query(Query::query(
                    Name::from_ascii(&name).expect("name"),
                    RecordType::A,
                ));
                let q = m.to_vec().expect("encode");
                let t = Instant::now();
                sock.send_to(&q, server).await.expect("send");
                match tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await {
                    Ok(Ok(_)) => lat.push(t.elapsed()),
                    _ => lat.push(Duration::from_secs(1)),
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "services": n,
            "clients": args.clients,
            "queries": all.len(),
            "qps": (all.len() as f64 / args.seconds as f64).round(),
            "p50_ms": (pct(0.50) * 1000.0).round() / 1000.0,
            "p99_ms": (pct(0.99) * 1000.0).round() / 1000.0,
            "max_ms": (pct(1.0) * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
