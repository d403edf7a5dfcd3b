//! The health and metrics endpoints of a control-plane component (upstream's
//! kube-controller-manager and kube-scheduler secure ports): `/healthz`, `/livez` and
//! `/readyz` answer `ok` while the component's check passes (500 with the reason
//! otherwise), `/metrics` answers Prometheus text. Served over HTTPS with the given
//! certificate, or with a self-signed one made in memory at start, as upstream does
//! without `--tls-cert-file`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What can go wrong setting up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving certificate: {0}")]
    Certificate(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Where a component serves its endpoints: upstream's `--bind-address`, `--secure-port`
/// (0: not at all), `--tls-cert-file` and `--tls-private-key-file`.
pub struct Endpoint {
    /// The component, named in a self-signed certificate.
    pub component: &'static str,
    pub addr: std::net::SocketAddr,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

/// Binds the endpoint now (a taken port is an error at start) and serves it in the
/// background; a failure while serving ends the process. Nothing when the port is 0.
pub async fn start(ep: Endpoint, health: Arc<dyn Health>) -> Result<(), Error> {
    if ep.addr.port() == 0 {
        return Ok(());
    }
    let read = |p: &std::path::Path, flag: &str| {
        std::fs::read(p).map_err(|e| Error::Io(format!("{flag} {}", p.display()), e))
    };
    let identity = match (&ep.cert_file, &ep.key_file) {
        (Some(c), Some(k)) => Identity {
            cert_pem: read(c, "--tls-cert-file")?,
            key_pem: read(k, "--tls-private-key-file")?,
        },
        _ => Identity::self_signed(ep.component)?,
    };
    let addr = ep.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("listen on {addr}"), e))?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, &identity, health).await {
            tracing::error!(%addr, "serving: {e}");
            std::process::exit(1);
        }
    });
    tracing::info!(%addr, "serving /healthz and /metrics");
    Ok(())
}

/// Appends upstream's `leader_election_master_status` gauge for the Lease `name`.
pub fn leader_election_metric(out: &mut String, name: &str, leading: bool) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease.");
    let _ = writeln!(out, "# TYPE leader_election_master_status gauge");
    let _ = writeln!(
        out,
        "leader_election_master_status{{name=\"{name}\"}} {}",
        u8::from(leading)
    );
}

/// A component's state as its endpoints report it.
pub trait Health: Send + Sync + 'static {
    /// `Ok` when healthy, else why not.
    fn check(&self) -> Result<(), String>;
    /// The metrics in Prometheus text format.
    fn metrics(&self) -> String;
    /// A JSON body for `/healthz` and `/livez` in place of `ok` (kube-proxy's); the status
    /// is then 200 or 503 by [`Health::check`].
    fn healthz_json(&self) -> Option<String> {
        None
    }
    /// A plain-text answer (status code, body) for a path of the component's own
    /// (cluster DNS's `/health` and `/ready`), consulted before the standard ones.
    fn own_path(&self, _path: &str) -> Option<(u16, String)> {
        None
    }
}

/// Binds `addr` now and serves the endpoints over plain HTTP in the background
/// (kube-proxy's `--healthz-bind-address` and `--metrics-bind-address`).
pub async fn start_plain(addr: std::net::SocketAddr, health: Arc<dyn Health>) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("listen on {addr}"), e))?;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let health = health.clone();
            tokio::spawn(serve_connection(TokioIo::new(tcp), health));
        }
    });
    tracing::info!(%addr, "serving /healthz and /metrics over HTTP");
    Ok(())
}

/// Answers requests on one connection until it closes.
async fn serve_connection<IO>(io: TokioIo<IO>, health: Arc<dyn Health>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let health = health.clone();
        async move { Ok::<_, Infallible>(answer(&req, health.as_ref())) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

/// A certificate (PEM chain) and key (PEM) to serve with.
pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Identity {
    /// A self-signed certificate for `localhost` and the loopback addresses, named
    /// `<component>@<unix time>` like upstream's in-memory one.
    pub fn self_signed(component: &str) -> Result<Identity, Error> {
        let fail = |e: rcgen::Error| Error::Certificate(e.to_string());
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(fail)?;
        for ip in [
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ] {
            params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{component}@{now}"));
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let cert = params.self_signed(&key).map_err(fail)?;
        Ok(Identity {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        })
    }

    fn server_config(&self) -> Result<rustls::ServerConfig, Error> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pem = |e: rustls::pki_types::pem::Error| Error::Certificate(e.to_string());
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(pem)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    identity: &Identity,
    health: Arc<dyn Health>,
) -> Result<(), Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config()?));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake: {e}"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            serve_connection(TokioIo::new(tls), health).await;
        });
    }
}

/// One request's answer.
fn answer(req: &Request<Incoming>, health: &dyn Health) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ct: &str, body: String| {
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, ct)
            .header("X-Content-Type-Options", "nosniff")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "Method Not Allowed\n".into(),
        );
    }
    if let Some((code, body)) = health.own_path(req.uri().path()) {
        return reply(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            TEXT,
            body,
        );
    }
    match req.uri().path() {
        "/healthz" | "/livez" => {
            if let Some(body) = health.healthz_json() {
                let code = match health.check() {
                    Ok(()) => StatusCode::OK,
                    Err(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                reply(code, "application/json", body)
            } else {
                answer_check(health, reply)
            }
        }
        "/readyz" => answer_check(health, reply),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            health.metrics(),
        ),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "404 page not found\n".into()),
    }
}

/// `ok`, or 500 with the failed check.
fn answer_check(
    health: &dyn Health,
    reply: impl Fn(StatusCode, &str, String) -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match health.check() {
        Ok(()) => reply(StatusCode::OK, TEXT, "ok".into()),
        Err(why) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("[-]{why} failed\nhealthz check failed\n"),
        ),
    }
}
