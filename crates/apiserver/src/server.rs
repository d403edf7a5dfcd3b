//! The HTTPS front door: TLS with optional client certificates (HTTP/2 and HTTP/1.1 by
//! ALPN), then routing. Health endpoints check the embedded store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferrokube_store::Store;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Kubernetes version whose API this server implements.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
    #[error("accept: {0}")]
    Io(#[from] std::io::Error),
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> ServeError {
    ServeError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Builds the TLS configuration: the serving certificate, and client certificates
/// verified against `client_ca` when presented (requests without one stay anonymous).
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca).map_err(|e| pem_err(client_ca, e))? {
        roots
            .add(c.map_err(|e| pem_err(client_ca, e))?)
            .map_err(|e| ServeError::ClientCa(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServeError::ClientCa(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The API server's shared state.
pub struct ApiServer {
    store: Store,
}

impl ApiServer {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(ApiServer { store })
    }

    /// Accepts connections until the listener fails; each connection is served on its own
    /// task, and a failed handshake only ends that connection.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<(), ServeError> {
        let acceptor = TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let me = self.clone();
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let svc = service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
                });
                let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                if let Err(e) = conn {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let verbose = req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|p| p == "verbose" || p.starts_with("verbose="))
        });
        match (req.method(), path.as_str()) {
            (&Method::GET, "/version") => json(StatusCode::OK, &version()),
            (&Method::GET, "/healthz") => self.health("healthz", verbose).await,
            (&Method::GET, "/livez") => self.health("livez", verbose).await,
            (&Method::GET, "/readyz") => self.health("readyz", verbose).await,
            (&Method::GET, p)
                if p.starts_with("/healthz/")
                    || p.starts_with("/livez/")
                    || p.starts_with("/readyz/") =>
            {
                self.single_check(p).await
            }
            _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }

    /// Named checks, in upstream's style: `ping` always passes, `etcd` needs a
    /// linearizable round through the store.
    async fn checks(&self) -> Vec<(&'static str, Result<(), String>)> {
        let store = match tokio::time::timeout(Duration::from_secs(2), self.store.linearize()).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        vec![("ping", Ok(())), ("etcd", store)]
    }

    async fn health(&self, endpoint: &str, verbose: bool) -> Response<Full<Bytes>> {
        let checks = self.checks().await;
        let ok = checks.iter().all(|(_, r)| r.is_ok());
        let mut body = String::new();
        if verbose || !ok {
            for (name, r) in &checks {
                match r {
                    Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
                    Err(_) => body.push_str(&format!("[-]{name} failed: reason withheld\n")),
                }
            }
        }
        if ok {
            if verbose {
                body.push_str(&format!("{endpoint} check passed\n"));
            } else {
                body.push_str("ok");
            }
            text(StatusCode::OK, &body)
        } else {
            for (name, r) in &checks {
                if let Err(e) = r {
                    tracing::warn!(check = name, "{endpoint} check failed: {e}");
                }
            }
            body.push_str(&format!("{endpoint} check failed\n"));
            text(StatusCode::INTERNAL_SERVER_ERROR, &body)
        }
    }

    async fn single_check(&self, path: &str) -> Response<Full<Bytes>> {
        let name = path.rsplit('/').next().unwrap_or_default();
        match self.checks().await.into_iter().find(|(n, _)| *n == name) {
            Some((_, Ok(()))) => text(StatusCode::OK, "ok"),
            Some((n, Err(_))) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("internal server error: {n} check failed\n"),
            ),
            None => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }
}

/// The `/version` document.
pub fn version() -> serde_json::Value {
    serde_json::json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+ferrokube.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }),
    })
}

fn json(code: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn text(code: StatusCode, s: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(s.to_string())))
        .expect("static response parts")
}
