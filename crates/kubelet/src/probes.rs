//! Container probes and lifecycle hook actions as upstream's prober runs them: exec
//! (through `runc exec`), httpGet (HTTP/1.1 or HTTPS from the node to the pod's address,
//! success on 200–399), tcpSocket (a connection), and, for hooks, sleep; and the per-container
//! probe state (initial delay, period, success and failure thresholds, startup gating).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::runtime::runc::Runc;

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        https: bool,
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    /// gRPC's standard health check (`grpc.health.v1.Health/Check`).
    Grpc {
        host: String,
        port: u16,
        service: String,
    },
    Sleep(Duration),
}

/// A port given by number or by the name of one of the container's ports.
fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port: {name} in {}", c.name))
        }
    }
}

fn http(h: &HTTPGetAction, c: &Container, pod_ip: &str) -> Result<Action, String> {
    let https = h
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let path = h.path.clone().unwrap_or_default();
    Ok(Action::Http {
        https,
        host: h
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string()),
        port: port(&h.port, c)?,
        path: if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        },
        headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    })
}

/// A probe's action.
pub fn probe_action(p: &Probe, c: &Container, pod_ip: &str) -> Result<Action, String> {
    if let Some(e) = &p.exec {
        return Ok(Action::Exec(e.command.clone().unwrap_or_default()));
    }
    if let Some(h) = &p.http_get {
        return http(h, c, pod_ip);
    }
    if let Some(t) = &p.tcp_socket {
        return Ok(Action::Tcp {
            host: t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_string()),
            port: port(&t.port, c)?,
        });
    }
    if let Some(g) = &p.grpc {
        return Ok(Action::Grpc {
            host: pod_ip.to_string(),
            port: u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?,
            service: g.service.clone().unwrap_or_default(),
        });
    }
    Err("missing probe handler".into())
}

/// A lifecycle hook's action.
pub fn hook_action(h: &LifecycleHandler, c: &Container, pod_ip: &str) -> Result<Action, String> {
    if let Some(e) = &h.exec {
        return Ok(Action::Exec(e.command.clone().unwrap_or_default()));
    }
    if let Some(g) = &h.http_get {
        return http(g, c, pod_ip);
    }
    if let Some(s) = &h.sleep {
        return Ok(Action::Sleep(Duration::from_secs(s.seconds.max(0) as u64)));
    }
    if let Some(t) = &h.tcp_socket {
        return Ok(Action::Tcp {
            host: t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.to_string()),
            port: port(&t.port, c)?,
        });
    }
    Err("missing lifecycle handler".into())
}

/// Runs an action against a running container; `Err` carries upstream's failure text.
pub async fn run(
    action: &Action,
    runc: &Runc,
    container_id: &str,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        Action::Exec(argv) => {
            let (runc, id, argv) = (runc.clone(), container_id.to_string(), argv.clone());
            let outcome = tokio::task::spawn_blocking(move || runc.exec(&id, &argv, timeout)).await;
            match outcome {
                Ok(Ok((0, _))) => Ok(()),
                Ok(Ok((code, out))) => Err(if out.trim().is_empty() {
                    format!("command terminated with exit code {code}")
                } else {
                    out.trim_end().to_string()
                }),
                Ok(Err(e)) if e.message.starts_with("command timed out") => {
                    Err(format!("command {:?} timed out", argv_display(action)))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        Action::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let scheme = if *https { "https" } else { "http" };
            let url = format!("{scheme}://{}{path}", host_port(host, *port));
            match tokio::time::timeout(timeout, http_get(*https, host, *port, path, headers)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
                Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
                Err(_) => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            }
        }
        Action::Tcp { host, port } => {
            let addr = host_port(host, *port);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", dial_error(&e))),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Grpc {
            host,
            port,
            service,
        } => grpc_check(host, *port, service, timeout).await,
        Action::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
    }
}

/// A gRPC health check, worded as upstream's gRPC prober words its failures.
async fn grpc_check(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    use ferrokube_proto::grpc_health_v1::health_check_response::ServingStatus;
    use ferrokube_proto::grpc_health_v1::{health_client::HealthClient, HealthCheckRequest};
    let addr = host_port(host, port);
    let secs = timeout.as_secs();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        _ => {
            return Err(format!(
                "timeout: failed to connect service \"{addr}\" within {secs}s"
            ))
        }
    };
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(r) => match ServingStatus::try_from(r.into_inner().status) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(format!(
                "service unhealthy (responded with \"{}\")",
                other.as_str_name()
            )),
            Err(_) => Err("service unhealthy (responded with an unknown status)".into()),
        },
        Err(s) if s.code() == tonic::Code::DeadlineExceeded => Err(format!(
            "timeout: health rpc did not complete within {secs}s"
        )),
        Err(s) => Err(format!(
            "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        )),
    }
}

fn argv_display(a: &Action) -> String {
    match a {
        Action::Exec(argv) => argv.join(" "),
        _ => String::new(),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Go's wording for the common connect errors.
fn dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::HostUnreachable => "no route to host".into(),
        _ => e.to_string(),
    }
}

/// A GET as upstream's prober sends it (`User-Agent: kube-probe/1.32`; over HTTPS
/// without verifying the server's certificate, as upstream); the status code.
async fn http_get(
    https: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let addr = host_port(host, port);
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {}", dial_error(&e)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("user-agent") {
        req.push_str("User-Agent: kube-probe/1.32\r\n");
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("invalid host {host:?}: {e}"))?;
        let tls = tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        status_code(tls, &req).await
    } else {
        status_code(tcp, &req).await
    }
}

/// Sends `req` and reads the response's status code.
async fn status_code<S>(mut s: S, req: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| "malformed HTTP response".to_string())
}

/// A TLS client that accepts any server certificate (signatures still checked), as
/// upstream's prober does.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let config = ferrokube_client::tls::any_server_certificate(None, &[])
                .expect("ring supports the default protocol versions");
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        })
        .clone()
}

/// The three probe kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    /// As events name them (`Liveness probe failed: ...`).
    pub fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// Upstream's defaults and minimums: period 10 s, timeout 1 s, thresholds 1 and 3.
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min) as u64)
        };
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Runs {
    last: Option<Instant>,
    successes: u32,
    failures: u32,
}

/// One container's probe results (for one run of it: a restarted container starts over).
#[derive(Debug, Clone, Default)]
pub struct State {
    runs: HashMap<Kind, Runs>,
    /// The startup probe has succeeded (or there is none).
    pub started: bool,
    /// The readiness result.
    pub ready: bool,
}

/// What a probe result changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unchanged,
    /// Crossed the success threshold.
    Succeeded,
    /// Crossed the failure threshold.
    Failed,
}

impl State {
    /// A fresh state: started already when there is no startup probe.
    pub fn new(started: bool) -> State {
        State {
            started,
            ..Default::default()
        }
    }

    /// Whether the probe is due now, for a container running since `since`.
    pub fn due(&self, kind: Kind, t: &Timing, since: Instant, now: Instant) -> bool {
        if now < since + t.initial_delay {
            return false;
        }
        match self.runs.get(&kind).and_then(|r| r.last) {
            None => true,
            Some(last) => now >= last + t.period,
        }
    }

    /// Records a result.
    pub fn record(&mut self, kind: Kind, t: &Timing, ok: bool, now: Instant) -> Verdict {
        let r = self.runs.entry(kind).or_default();
        r.last = Some(now);
        if ok {
            r.failures = 0;
            r.successes += 1;
            if r.successes == t.success_threshold {
                return Verdict::Succeeded;
            }
        } else {
            r.successes = 0;
            r.failures += 1;
            if r.failures == t.failure_threshold {
                return Verdict::Failed;
            }
        }
        Verdict::Unchanged
    }

    /// Starts a kind's counting over (after a restart-causing failure).
    pub fn reset(&mut self, kind: Kind) {
        self.runs.remove(&kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds_and_periods() {
        let p: Probe = serde_json::from_value(json!({
            "initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2, "successThreshold": 2
        }))
        .unwrap();
        let t = Timing::of(&p);
        let d = Timing::of(&Probe::default());
        assert_eq!(
            (
                d.period,
                d.timeout,
                d.failure_threshold,
                d.success_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 3, 1)
        );
        let t0 = Instant::now();
        let mut s = State::default();
        assert!(!s.due(Kind::Liveness, &t, t0, t0 + Duration::from_secs(4)));
        assert!(s.due(Kind::Liveness, &t, t0, t0 + Duration::from_secs(5)));
        let at = t0 + Duration::from_secs(5);
        assert_eq!(s.record(Kind::Liveness, &t, false, at), Verdict::Unchanged);
        assert!(!s.due(Kind::Liveness, &t, t0, at + Duration::from_secs(1)));
        assert!(s.due(Kind::Liveness, &t, t0, at + Duration::from_secs(2)));
        assert_eq!(s.record(Kind::Liveness, &t, false, at), Verdict::Failed);
        assert_eq!(
            s.record(Kind::Liveness, &t, false, at),
            Verdict::Unchanged,
            "reported once"
        );
        assert_eq!(s.record(Kind::Liveness, &t, true, at), Verdict::Unchanged);
        assert_eq!(s.record(Kind::Liveness, &t, true, at), Verdict::Succeeded);
    }

    #[test]
    fn actions_resolve_named_ports_and_defaults() {
        let c: Container = serde_json::from_value(json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .unwrap();
        let p: Probe = serde_json::from_value(json!({
            "httpGet": {"path": "healthz", "port": "http", "httpHeaders": [{"name": "X-Probe", "value": "1"}]}
        }))
        .unwrap();
        assert_eq!(
            probe_action(&p, &c, "10.244.0.9").unwrap(),
            Action::Http {
                https: false,
                host: "10.244.0.9".into(),
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-Probe".into(), "1".into())]
            }
        );
        let bad: Probe = serde_json::from_value(json!({"tcpSocket": {"port": "nope"}})).unwrap();
        assert_eq!(
            probe_action(&bad, &c, "ip").unwrap_err(),
            "couldn't find port: nope in web"
        );
    }

    #[tokio::test]
    async fn http_and_tcp_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code =
                    if req.starts_with("GET /ok ") && req.contains("User-Agent: kube-probe/1.32") {
                        200
                    } else {
                        500
                    };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let runc = Runc::new(std::path::Path::new("/nonexistent"));
        let get = |path: &str| Action::Http {
            https: false,
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
            headers: vec![],
        };
        let t = Duration::from_secs(2);
        assert_eq!(run(&get("/ok"), &runc, "x", t).await, Ok(()));
        assert_eq!(
            run(&get("/bad"), &runc, "x", t).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        assert_eq!(
            run(
                &Action::Tcp {
                    host: "127.0.0.1".into(),
                    port
                },
                &runc,
                "x",
                t
            )
            .await,
            Ok(())
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = run(
            &Action::Tcp {
                host: "127.0.0.1".into(),
                port: closed,
            },
            &runc,
            "x",
            t,
        )
        .await;
        assert_eq!(
            refused,
            Err(format!(
                "dial tcp 127.0.0.1:{closed}: connect: connection refused"
            ))
        );
    }

    #[tokio::test]
    async fn https_probes_do_not_verify_the_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["pod.local".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = vec![0u8; 1024];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /secure ");
                let code = if ok { 204 } else { 404 };
                let _ = tls
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let runc = Runc::new(std::path::Path::new("/nonexistent"));
        let get = |path: &str| Action::Http {
            https: true,
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
            headers: vec![],
        };
        let t = Duration::from_secs(2);
        assert_eq!(run(&get("/secure"), &runc, "x", t).await, Ok(()));
        assert_eq!(
            run(&get("/other"), &runc, "x", t).await,
            Err("HTTP probe failed with statuscode: 404".into())
        );
    }

    #[tokio::test]
    async fn grpc_probes_call_the_health_service() {
        use ferrokube_proto::grpc_health_v1::health_server::{Health, HealthServer};
        use ferrokube_proto::grpc_health_v1::{HealthCheckRequest, HealthCheckResponse};
        struct Server;
        #[tonic::async_trait]
        impl Health for Server {
            async fn check(
                &self,
                r: tonic::Request<HealthCheckRequest>,
            ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
                let status = match r.into_inner().service.as_str() {
                    "" => 1,
                    "down" => 2,
                    _ => return Err(tonic::Status::not_found("unknown service")),
                };
                Ok(tonic::Response::new(HealthCheckResponse { status }))
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(Server))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let runc = Runc::new(std::path::Path::new("/nonexistent"));
        let check = |service: &str| Action::Grpc {
            host: "127.0.0.1".into(),
            port,
            service: service.into(),
        };
        let t = Duration::from_secs(2);
        assert_eq!(run(&check(""), &runc, "x", t).await, Ok(()));
        assert_eq!(
            run(&check("down"), &runc, "x", t).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let other = run(&check("other"), &runc, "x", t).await.unwrap_err();
        assert!(other.contains("code = NotFound"), "{other}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gone = Action::Grpc {
            host: "127.0.0.1".into(),
            port: closed,
            service: String::new(),
        };
        assert_eq!(
            run(&gone, &runc, "x", Duration::from_secs(1)).await,
            Err(format!(
                "timeout: failed to connect service \"127.0.0.1:{closed}\" within 1s"
            ))
        );
    }
}
