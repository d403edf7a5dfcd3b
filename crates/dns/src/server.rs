//! The DNS server: UDP and TCP on one address, the cluster zone answered from records
//! kept in step with the API (informers on Services and EndpointSlices), other names
//! forwarded to the configured upstreams (SERVFAIL when there are none or none answers).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ferrokube_client::{Api, Client, Informer, ListParams};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::answer::Zone;
use crate::records::Records;

/// How long one upstream gets to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer to a query without EDNS.
const UDP_LIMIT: usize = 512;
/// Upper bounds (seconds) of the request-duration histogram (CoreDNS's buckets).
const BUCKETS: [f64; 8] = [0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032];

/// The server's shared state.
pub struct Dns {
    zone: Zone,
    upstreams: Vec<SocketAddr>,
    records: RwLock<Arc<Records>>,
    /// The SOA serial: bumped on every rebuild.
    serial: AtomicU32,
    ready: AtomicBool,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    requests: BTreeMap<(&'static str, String), u64>,
    responses: BTreeMap<String, u64>,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Dns {
    pub fn new(zone: &str, upstreams: Vec<SocketAddr>) -> Arc<Dns> {
        Arc::new(Dns {
            zone: Zone::new(zone),
            upstreams,
            records: RwLock::new(Arc::new(Records::default())),
            serial: AtomicU32::new(start_serial()),
            ready: AtomicBool::new(false),
            stats: Mutex::default(),
        })
    }

    /// Whether the first records from the API are in.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Replaces the records (and marks the server ready).
    pub fn set_records(&self, r: Records) {
        *self.records.write().expect("records lock") = Arc::new(r);
        self.serial.fetch_add(1, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
    }

    /// Keeps the records in step with the API until the task is dropped.
    pub async fn follow(self: Arc<Self>, client: Client) {
        let dirty = Arc::new(tokio::sync::Notify::new());
        let mut services =
            Informer::new(Api::<Service>::all(client.clone()), ListParams::default());
        let mut slices = Informer::new(Api::<EndpointSlice>::all(client), ListParams::default());
        let d = dirty.clone();
        services.on_event(move |_| d.notify_one());
        let d = dirty.clone();
        slices.on_event(move |_| d.notify_one());
        let (svc_store, slice_store) = (services.store(), slices.store());
        tokio::spawn(services.run());
        tokio::spawn(slices.run());
        loop {
            if svc_store.has_synced() && slice_store.has_synced() {
                let svcs = svc_store.list();
                let sls = slice_store.list();
                self.set_records(Records::build(
                    svcs.iter().map(|s| s.as_ref()),
                    sls.iter().map(|s| s.as_ref()),
                ));
                dirty.notified().await;
                // Changes come in bursts (a Service, then its slices): take them together.
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The answer to one query message (`None`: nothing to send back).
    pub async fn handle(&self, bytes: &[u8], proto: &'static str) -> Option<Vec<u8>> {
        let started = Instant::now();
        let query = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                // Answer FORMERR when at least the id can be read, as servers do.
                let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
                let m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return m.to_vec().ok();
            }
        };
        if query.metadata.message_type != MessageType::Query {
            return None;
        }
        let qtype = query
            .queries
            .first()
            .map(|q| q.query_type().to_string())
            .unwrap_or_default();
        let records = self.records.read().expect("records lock").clone();
        let serial = self.serial.load(Ordering::Relaxed);
        let answer = if self.is_ready() {
            self.zone.respond(&records, &query, serial)
        } else {
            // Before the first records, the zone's names are unknown, not absent: an
            // authoritative NXDOMAIN would be cached by clients.
            self.zone.respond(&records, &query, serial).map(|mut m| {
                m.answers.clear();
                m.authorities.clear();
                m.additionals.clear();
                m.metadata.authoritative = false;
                m.metadata.response_code = ResponseCode::ServFail;
                m
            })
        };
        let out = match answer {
            Some(mut resp) => {
                // EDNS: a query with an OPT record gets one back (RFC 6891), with the
                // payload size the client offered (at least 512).
                if let Some(e) = &query.edns {
                    let mut opt = Edns::new();
                    opt.set_max_payload(e.max_payload().max(512));
                    resp.edns = Some(opt);
                }
                let limit = if proto == "udp" {
                    query
                        .edns
                        .as_ref()
                        .map_or(UDP_LIMIT, |e| usize::from(e.max_payload()).max(UDP_LIMIT))
                } else {
                    usize::MAX
                };
                let rcode = rcode_name(resp.metadata.response_code);
                self.count(proto, qtype, rcode, started);
                encode(resp, limit)
            }
            None => {
                let answer = self.forward(bytes, proto).await;
                let rcode = answer
                    .as_ref()
                    .and_then(|a| Message::from_vec(a).ok())
                    .map_or("SERVFAIL".to_string(), |m| {
                        rcode_name(m.metadata.response_code)
                    });
                self.count(proto, qtype, rcode, started);
                match answer {
                    Some(a) => Some(a),
                    None => {
                        let mut m = Message::error_msg(
                            query.metadata.id,
                            OpCode::Query,
                            ResponseCode::ServFail,
                        );
                        m.queries = query.queries.clone();
                        m.metadata.recursion_desired = query.metadata.recursion_desired;
                        m.to_vec().ok()
                    }
                }
            }
        };
        out
    }

    /// Relays a query to the upstreams in turn, over the protocol it came by (CoreDNS's
    /// `forward`); the first answer wins.
    async fn forward(&self, bytes: &[u8], proto: &str) -> Option<Vec<u8>> {
        for up in &self.upstreams {
            let answer = if proto == "tcp" {
                forward_tcp(bytes, *up).await
            } else {
                forward_udp(bytes, *up).await
            };
            match answer {
                Ok(a) => return Some(a),
                Err(e) => tracing::debug!(upstream = %up, proto, "no answer: {e}"),
            }
        }
        None
    }

    fn count(&self, proto: &'static str, qtype: String, rcode: String, started: Instant) {
        let mut s = self.stats.lock().expect("stats lock");
        *s.requests.entry((proto, qtype)).or_default() += 1;
        *s.responses.entry(rcode).or_default() += 1;
        let secs = started.elapsed().as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
        s.sum += secs;
        s.count += 1;
    }

    /// Prometheus text (CoreDNS's metric names).
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let s = self.stats.lock().expect("stats lock");
        let mut out = String::new();
        let _ = writeln!(out, "# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.");
        let _ = writeln!(out, "# TYPE coredns_dns_requests_total counter");
        for ((proto, ty), n) in &s.requests {
            let _ = writeln!(
                out,
                "coredns_dns_requests_total{{proto=\"{proto}\",type=\"{ty}\",zone=\"{}.\"}} {n}",
                self.zone.domain
            );
        }
        let _ = writeln!(
            out,
            "# HELP coredns_dns_responses_total Counter of response status codes."
        );
        let _ = writeln!(out, "# TYPE coredns_dns_responses_total counter");
        for (rcode, n) in &s.responses {
            let _ = writeln!(out, "coredns_dns_responses_total{{rcode=\"{rcode}\"}} {n}");
        }
        let name = "coredns_dns_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Histogram of the time (in seconds) each request took."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", s.buckets[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {}", s.count);
        out
    }
}

/// The RFC name of a response code, as CoreDNS labels its metrics.
fn rcode_name(code: ResponseCode) -> String {
    match u16::from(code) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => n.to_string(),
    }
}

/// A starting SOA serial that grows across restarts (seconds since the epoch).
fn start_serial() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// Encodes a response; over `limit` bytes, a truncated one (TC set, no records) tells
/// the client to ask again over TCP.
fn encode(resp: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut t = resp;
    t.answers.clear();
    t.authorities.clear();
    t.additionals.clear();
    t.metadata.truncation = true;
    t.to_vec().ok()
}

/// One query to an upstream over UDP.
async fn forward_udp(bytes: &[u8], up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))??;
    buf.truncate(n);
    Ok(buf)
}

/// One query to an upstream over TCP (a length-prefixed message each way).
async fn forward_tcp(bytes: &[u8], up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(up).await?;
        let len = u16::try_from(bytes.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "too long"))?;
        conn.write_u16(len).await?;
        conn.write_all(bytes).await?;
        let n = usize::from(conn.read_u16().await?);
        let mut buf = vec![0u8; n];
        conn.read_exact(&mut buf).await?;
        Ok(buf)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

/// Serves UDP queries on `socket` until the task is dropped.
pub async fn serve_udp(dns: Arc<Dns>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("udp receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let bytes = buf[..n].to_vec();
        let (dns, socket) = (dns.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(out) = dns.handle(&bytes, "udp").await {
                let _ = socket.send_to(&out, peer).await;
            }
        });
    }
}

/// Serves TCP queries (length-prefixed messages, several per connection) until the
/// task is dropped.
pub async fn serve_tcp(dns: Arc<Dns>, listener: TcpListener) {
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            loop {
                // An idle connection is closed after 10 s, as CoreDNS does.
                let len = match tokio::time::timeout(Duration::from_secs(10), conn.read_u16()).await
                {
                    Ok(Ok(l)) => usize::from(l),
                    _ => return,
                };
                let mut msg = vec![0u8; len];
                if conn.read_exact(&mut msg).await.is_err() {
                    return;
                }
                let Some(out) = dns.handle(&msg, "tcp").await else {
                    return;
                };
                let Ok(n) = u16::try_from(out.len()) else {
                    return;
                };
                if conn.write_u16(n).await.is_err() || conn.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    fn records() -> Records {
        let svcs: Vec<Service> = serde_norway::from_str(
            "
- metadata: {name: web, namespace: default}
  spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}
",
        )
        .unwrap();
        Records::build(&svcs, &[])
    }

    fn query(name: &str, id: u16) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    async fn start(zone: &str, upstreams: Vec<SocketAddr>) -> (Arc<Dns>, SocketAddr) {
        let dns = Dns::new(zone, upstreams);
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(serve_udp(dns.clone(), udp));
        tokio::spawn(serve_tcp(dns.clone(), tcp));
        (dns, addr)
    }

    async fn ask_udp(server: SocketAddr, q: &[u8]) -> Message {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(q, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    #[tokio::test]
    async fn udp_tcp_and_forwarding() {
        let (dns, addr) = start("cluster.local", vec![]).await;
        assert!(!dns.is_ready());
        // Before the first records: SERVFAIL, not an NXDOMAIN clients would cache.
        let m = ask_udp(addr, &query("web.default.svc.cluster.local.", 9)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        dns.set_records(records());
        assert!(dns.is_ready());
        let m = ask_udp(addr, &query("web.default.svc.cluster.local.", 1)).await;
        assert_eq!(m.metadata.id, 1);
        assert_eq!(m.answers.len(), 1);
        // The same over TCP, two messages on one connection.
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        for id in [2u16, 3] {
            let q = query("web.default.svc.cluster.local.", id);
            conn.write_u16(q.len() as u16).await.unwrap();
            conn.write_all(&q).await.unwrap();
            let n = conn.read_u16().await.unwrap();
            let mut buf = vec![0u8; usize::from(n)];
            conn.read_exact(&mut buf).await.unwrap();
            let m = Message::from_vec(&buf).unwrap();
            assert_eq!((m.metadata.id, m.answers.len()), (id, 1));
        }
        // Outside the zone with no upstream: SERVFAIL.
        let m = ask_udp(addr, &query("example.org.", 4)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        // With an upstream (another server, authoritative for example.org), its answer
        // is relayed as is.
        let (up, upstream) = start("example.org", vec![]).await;
        up.set_records(Records::default());
        let (_, front) = start("cluster.local", vec![upstream]).await;
        let m = ask_udp(front, &query("nothing.example.org.", 5)).await;
        assert_eq!(m.metadata.id, 5);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].name.to_ascii(), "example.org.");
        // A query that came over TCP goes upstream over TCP.
        let mut conn = tokio::net::TcpStream::connect(front).await.unwrap();
        let q = query("other.example.org.", 6);
        conn.write_u16(q.len() as u16).await.unwrap();
        conn.write_all(&q).await.unwrap();
        let mut buf = vec![0u8; usize::from(conn.read_u16().await.unwrap())];
        conn.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (6, ResponseCode::NXDomain)
        );
        let upstream_metrics = up.metrics();
        assert!(
            upstream_metrics.contains(
                "coredns_dns_requests_total{proto=\"tcp\",type=\"A\",zone=\"example.org.\"} 1"
            ) && upstream_metrics.contains(
                "coredns_dns_requests_total{proto=\"udp\",type=\"A\",zone=\"example.org.\"} 1"
            ),
            "{upstream_metrics}"
        );
        // EDNS: an OPT record in, one back, with the client's payload size.
        let mut q = Message::from_vec(&query("web.default.svc.cluster.local.", 7)).unwrap();
        let mut opt = Edns::new();
        opt.set_max_payload(1232);
        q.edns = Some(opt);
        let m = ask_udp(addr, &q.to_vec().unwrap()).await;
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
        let m = ask_udp(addr, &query("web.default.svc.cluster.local.", 8)).await;
        assert!(m.edns.is_none());
        // Garbage gets FORMERR, not silence.
        let m = ask_udp(addr, &[0, 9, 1, 2, 3]).await;
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let metrics = dns.metrics();
        assert!(
            metrics.contains("coredns_dns_responses_total{rcode=\"NOERROR\"} 5"),
            "{metrics}"
        );
    }
}
