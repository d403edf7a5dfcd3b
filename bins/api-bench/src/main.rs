//! `api-bench`: drives a Kubernetes API server over HTTPS/HTTP/2 with client
//! certificates and prints one JSON line per measurement:
//! - call latency (p50/p99) of creates and gets at fixed request rates (open loop: requests
//!   start on schedule whether or not earlier ones finished),
//! - watch delivery latency with many watchers (time from a create being sent to each
//!   watcher receiving its ADDED event),
//! - the server's resident memory, idle and after the load, when `--pid` is given.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug)]
#[command(name = "api-bench", about)]
struct Args {
    /// host:port of the API server.
    #[arg(long)]
    server: String,
    /// CA certificate (PEM) the server's certificate chains to.
    #[arg(long)]
    ca: String,
    /// Client certificate and key (PEM) of an admin.
    #[arg(long)]
    cert: String,
    #[arg(long)]
    key: String,
    /// Request rates to measure, per second.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Watchers for the watch measurement.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Objects created while the watchers listen.
    #[arg(long, default_value_t = 100)]
    watch_events: usize,
    /// The API server's pid, for memory figures.
    #[arg(long)]
    pid: Option<u32>,
}

type Client = SendRequest<Full<Bytes>>;

fn tls_config(a: &Args) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&a.ca).context("CA")? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(&a.cert)
        .context("client certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&a.key).context("client key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

async fn connect(server: &str, tls: &Arc<rustls::ClientConfig>) -> Result<Client> {
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let host = server
        .rsplit_once(':')
        .map_or(server, |(h, _)| h)
        .to_string();
    let name = ServerName::try_from(host)?;
    let stream = TlsConnector::from(tls.clone()).connect(name, tcp).await?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn call(
    c: &mut Client,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, Bytes)> {
    c.ready().await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "application/json");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let resp = c.send_request(req.body(Full::new(body))?).await?;
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((code, bytes))
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Open-loop load: `rate` requests per second for `seconds`, `verb` create or get.
async fn at_rate(
    clients: &[Client],
    verb: &str,
    rate: u64,
    seconds: u64,
    ns: &str,
) -> Result<serde_json::Value> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(Mutex::new(0u64));
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let mut c = clients[i as usize % clients.len()].clone();
        let (hist, errors) = (hist.clone(), errors.clone());
        let ns = ns.to_string();
        let verb = verb.to_string();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = if verb == "create" {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("r{rate}-{i}")}, "data": {"k": "v"}});
                call(
                    &mut c,
                    Method::POST,
                    &format!("/api/v1/namespaces/{ns}/configmaps"),
                    Some(body),
                )
                .await
            } else {
                call(
                    &mut c,
                    Method::GET,
                    &format!(
                        "/api/v1/namespaces/{ns}/configmaps/r{rate}-{}",
                        i % (rate * 2)
                    ),
                    None,
                )
                .await
            };
            let ok = matches!(r, Ok((200 | 201, _)));
            if ok {
                let _ = hist
                    .lock()
                    .unwrap()
                    .record(t.elapsed().as_micros().max(1) as u64);
            } else {
                *errors.lock().unwrap() += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = start.elapsed().as_secs_f64();
    let h = hist.lock().unwrap();
    Ok(json!({
        "bench": "api", "measure": format!("{verb} at {rate}/s"),
        "requests": total, "errors": *errors.lock().unwrap(),
        "achieved_per_s": (h.len() as f64 / took).round(),
        "p50_ms": ms(&h, 0.5), "p99_ms": ms(&h, 0.99), "max_ms": h.max() as f64 / 1000.0,
    }))
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// `watchers` watches on one namespace, then `events` creates; the delay from send to
/// each watcher's receipt.
async fn watch_latency(
    server: &str,
    tls: &Arc<rustls::ClientConfig>,
    clients: &[Client],
    watchers: usize,
    events: usize,
) -> Result<serde_json::Value> {
    let ns = "bench-watch";
    let mut c = clients[0].clone();
    call(
        &mut c,
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
    )
    .await?;
    let (_, list) = call(
        &mut c,
        Method::GET,
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        None,
    )
    .await?;
    let rv = serde_json::from_slice::<serde_json::Value>(&list)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let received = Arc::new(Mutex::new(0usize));
    // Up to 100 streams per connection (HTTP/2 servers cap concurrent streams).
    let mut conns = Vec::new();
    for _ in 0..watchers.div_ceil(100) {
        conns.push(connect(server, tls).await?);
    }
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let mut conn = conns[w / 100].clone();
        let path = format!(
            "/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=120"
        );
        let (hist, received) = (hist.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            conn.ready().await?;
            let req = Request::builder().uri(path).body(Full::new(Bytes::new()))?;
            let mut body = conn.send_request(req).await?.into_body();
            let mut buf = Vec::new();
            let mut seen = 0;
            while seen < events {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                let at = now_nanos();
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let ev: serde_json::Value = serde_json::from_slice(&line)?;
                    if let Some(sent) = ev["object"]["metadata"]["annotations"]["sent"]
                        .as_str()
                        .and_then(|s| s.parse::<u128>().ok())
                    {
                        let _ = hist
                            .lock()
                            .unwrap()
                            .record(((at.saturating_sub(sent)) / 1000).max(1) as u64);
                        seen += 1;
                    }
                }
            }
            *received.lock().unwrap() += seen;
            anyhow::Ok(())
        }));
    }
    // Let the watches register, then create at 20/s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..events {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("w{i}"), "annotations": {"sent": now_nanos().to_string()}}});
        let (code, _) = call(
            &mut c,
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            Some(body),
        )
        .await?;
        if code != 201 {
            bail!("create answered {code}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let _ = deadline.await;
    let h = hist.lock().unwrap();
    let got = *received.lock().unwrap();
    Ok(json!({
        "bench": "api", "measure": format!("watch delivery, {watchers} watchers"),
        "events_sent": events, "deliveries": got, "expected": watchers * events,
        "p50_ms": ms(&h, 0.5), "p99_ms": ms(&h, 0.99), "max_ms": h.max() as f64 / 1000.0,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tls = tls_config(&args)?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&args.server, &tls).await.context("connect")?);
    }
    if let Some(pid) = args.pid {
        println!(
            "{}",
            json!({"bench": "api", "measure": "rss idle", "rss_mib": rss_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0})
        );
    }
    let ns = "bench";
    let mut c = clients[0].clone();
    call(
        &mut c,
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
    )
    .await?;
    for &rate in &args.rates {
        println!(
            "{}",
            at_rate(&clients, "create", rate, args.seconds, ns).await?
        );
        println!(
            "{}",
            at_rate(&clients, "get", rate, args.seconds, ns).await?
        );
    }
    if args.watchers > 0 {
        println!(
            "{}",
            watch_latency(
                &args.server,
                &tls,
                &clients,
                args.watchers,
                args.watch_events
            )
            .await?
        );
    }
    if let Some(pid) = args.pid {
        println!(
            "{}",
            json!({"bench": "api", "measure": "rss after load",
            "rss_mib": rss_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
            "peak_rss_mib": rss_kib(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0})
        );
    }
    Ok(())
}
