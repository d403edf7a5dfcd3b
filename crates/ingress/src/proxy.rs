//! The reverse proxy: HTTP and HTTPS (HTTP/1.1 and HTTP/2 from clients, HTTP/1.1 to
//! backends), each request routed by its host and path through the current [`Table`] to
//! one of the backend's ready endpoints (the next in turn; up to three are tried when
//! connecting fails). Headers as ingress-nginx sets them: `Host` kept,
//! `X-Real-IP`, `X-Forwarded-For`, `-Host`, `-Port`, `-Proto` and `-Scheme` from the
//! client's connection. Upgrades (WebSocket) are passed through. Plain HTTP to a host
//! with a certificate is redirected to HTTPS (308, see [`crate::certs`]). Errors as nginx
//! answers them: 404 with no route, 503 with no ready endpoint, 502 when no endpoint
//! answers, 504 when one does not answer within the read timeout of sending the request.
//! A client has 60 s to send a request's headers (also the idle limit between requests).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::backends::{Targets, Upstreams};
use crate::certs::Resolver;
use crate::routes::{bare_host, Routes};

/// Connecting to an endpoint (nginx's `proxy_connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Waiting for a response's head once the request is sent (nginx's
/// `proxy_read_timeout`).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Receiving a request's headers, and waiting for the next request on a kept-alive
/// connection (nginx's `client_header_timeout`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Endpoints tried per request.
const ATTEMPTS: usize = 3;

/// The body of every response.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// What requests are routed by: the served Ingresses' rules and their backends.
#[derive(Debug, Default)]
pub struct Table {
    pub routes: Routes,
    pub upstreams: Upstreams,
}

/// The proxy's state, shared by every connection.
pub struct Proxy {
    table: RwLock<Arc<Table>>,
    certs: Arc<Resolver>,
    /// Responses by status code.
    responses: Mutex<BTreeMap<u16, u64>>,
    /// The HTTPS port, for redirects.
    https_port: AtomicU16,
}

impl Proxy {
    /// A proxy routing nothing yet, serving HTTPS with `certs`.
    pub fn new(certs: Arc<Resolver>) -> Arc<Proxy> {
        Arc::new(Proxy {
            table: RwLock::default(),
            certs,
            responses: Mutex::default(),
            https_port: AtomicU16::new(443),
        })
    }

    /// Routes by `table` from now on.
    pub fn set_table(&self, table: Table) {
        *self.table.write().expect("table lock") = Arc::new(table);
    }

    /// The routing table now.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().expect("table lock").clone()
    }

    /// The HTTPS certificates.
    pub fn certs(&self) -> &Arc<Resolver> {
        &self.certs
    }

    /// Prometheus text: responses by code.
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from(
            "# HELP ingress_controller_responses_total Responses sent to clients, by status code.\n# TYPE ingress_controller_responses_total counter\n",
        );
        for (code, n) in self.responses.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "ingress_controller_responses_total{{code=\"{code}\"}} {n}"
            );
        }
        out
    }

    /// Serves plain HTTP on `listener` until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(80);
        loop {
            let Some((tcp, peer)) = accept(&listener).await else {
                continue;
            };
            tokio::spawn(
                self.clone()
                    .connection(TokioIo::new(tcp), peer, false, port),
            );
        }
    }

    /// Serves HTTPS on `listener` until the task is dropped, with the certificate each
    /// client's SNI name selects.
    pub async fn serve_https(self: Arc<Self>, listener: TcpListener) -> Result<(), rustls::Error> {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(443);
        self.https_port.store(port, Ordering::Relaxed);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.certs.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        loop {
            let Some((tcp, peer)) = accept(&listener).await else {
                continue;
            };
            let (acceptor, proxy) = (acceptor.clone(), self.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => proxy.connection(TokioIo::new(tls), peer, true, port).await,
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    }

    async fn connection<IO>(
        self: Arc<Self>,
        io: TokioIo<IO>,
        peer: SocketAddr,
        tls: bool,
        port: u16,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let proxy = self.clone();
            async move {
                let resp = proxy.handle(req, peer, tls, port).await;
                *proxy
                    .responses
                    .lock()
                    .expect("metrics lock")
                    .entry(resp.status().as_u16())
                    .or_default() += 1;
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(HEADER_TIMEOUT));
        let _ = builder.serve_connection_with_upgrades(io, service).await;
    }

    /// One request's response.
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
        port: u16,
    ) -> Response<Body> {
        let host = request_host(&req);
        if !tls && self.certs.current().redirects(bare_host(&host)) {
            return self.redirect(&req, &host);
        }
        let table = self.table();
        let Some(backend) = table.routes.lookup(&host, req.uri().path()) else {
            return error(StatusCode::NOT_FOUND, "default backend - 404");
        };
        let Some(upstream) = table.upstreams.get(backend) else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Temporarily Unavailable",
            );
        };
        let stream = match &upstream.targets {
            Targets::Endpoints(_) => {
                let mut connected = None;
                for addr in upstream.pick(ATTEMPTS) {
                    match connect(addr).await {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => tracing::debug!(%addr, ?backend, "connecting: {e}"),
                    }
                }
                connected
            }
            Targets::External(name, port) => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addrs) => {
                        let mut connected = None;
                        for addr in addrs.take(ATTEMPTS) {
                            if let Ok(s) = connect(addr).await {
                                connected = Some(s);
                                break;
                            }
                        }
                        connected
                    }
                    Err(e) => {
                        tracing::debug!(%name, "resolving: {e}");
                        None
                    }
                }
            }
            Targets::Unresolved(why) => {
                tracing::debug!(?backend, "{why}");
                None
            }
        };
        let Some(stream) = stream else {
            return match &upstream.targets {
                Targets::Endpoints(eps) if !eps.is_empty() => {
                    error(StatusCode::BAD_GATEWAY, "502 Bad Gateway")
                }
                _ => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 Service Temporarily Unavailable",
                ),
            };
        };
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let out = outgoing(req, &host, peer, tls, port, upgrade);
        // The read timeout runs from when the request is sent in full.
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        let out = out.map(|body| Sent {
            inner: body,
            done: Some(sent_tx),
        });
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(?backend, "handshake: {e}");
                    return error(StatusCode::BAD_GATEWAY, "502 Bad Gateway");
                }
            };
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let read_timer = async {
            // (An error: the body was dropped, sent or not; the clock starts.)
            let _ = sent_rx.await;
            tokio::time::sleep(READ_TIMEOUT).await;
        };
        let mut resp = tokio::select! {
            r = sender.send_request(out) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(?backend, "request: {e}");
                    return error(StatusCode::BAD_GATEWAY, "502 Bad Gateway");
                }
            },
            () = read_timer => return error(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Time-out"),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let backend_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(c), Ok(b)) = (client.await, backend_upgrade.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(c),
                            &mut TokioIo::new(b),
                        )
                        .await;
                    }
                });
            }
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }
        strip_hop_by_hop(resp.headers_mut());
        resp.map(|b| b.boxed())
    }
}

impl Proxy {
    /// The 308 to the same URL over HTTPS.
    fn redirect<B>(&self, req: &Request<B>, host: &str) -> Response<Body> {
        let port = self.https_port.load(Ordering::Relaxed);
        let authority = match port {
            443 => bare_host(host).to_string(),
            p => format!("{}:{p}", bare_host(host)),
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{authority}{path}");
        Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, location)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(
                Full::new(Bytes::from_static(b"308 Permanent Redirect\n"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap_or_else(|_| error(StatusCode::BAD_REQUEST, "400 Bad Request"))
    }
}

/// A request body that tells when it has been sent in full (or dropped).
struct Sent<B> {
    inner: B,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Sent<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("accepting a connection: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default()
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Drops the headers that describe one connection, not the message (RFC 9110 7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        h.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        h.remove(name);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// The request sent to the backend: origin-form URI, HTTP/1.1, the client's host and
/// the forwarding headers.
fn outgoing(
    req: Request<Incoming>,
    host: &str,
    peer: SocketAddr,
    tls: bool,
    port: u16,
    upgrade: bool,
) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    parts.version = http::Version::HTTP_11;
    let h = &mut parts.headers;
    let upgrade_to = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(h);
    // HTTP/2 clients may split cookies over several fields; HTTP/1.1 has one.
    let cookies: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect();
    if cookies.len() > 1 {
        if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
            h.insert(header::COOKIE, v);
        }
    }
    if upgrade {
        if let Some(u) = upgrade_to {
            h.insert(header::UPGRADE, u);
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""));
    let ip = peer.ip().to_string();
    let scheme = if tls { "https" } else { "http" };
    if !host.is_empty() {
        h.insert(header::HOST, value(host));
    }
    h.insert("x-real-ip", value(&ip));
    h.insert("x-forwarded-for", value(&ip));
    h.insert("x-forwarded-host", value(host));
    h.insert("x-forwarded-port", value(&port.to_string()));
    h.insert("x-forwarded-proto", value(scheme));
    h.insert("x-forwarded-scheme", value(scheme));
    Request::from_parts(parts, body)
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// An error answered by the proxy itself.
fn error(code: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(format!("{text}\n")))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_the_authority_or_the_host_header() {
        let r = Request::builder()
            .uri("/x")
            .header("host", "foo.example.com:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), "foo.example.com:8080");
        let r = Request::builder()
            .uri("https://bar.example.com/x")
            .header("host", "ignored")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), "bar.example.com");
    }

    #[test]
    fn hop_by_hop_headers_go_upgrades_are_seen() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
    }
}
