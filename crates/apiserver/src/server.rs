//! The HTTPS front door: TLS with optional client certificates (HTTP/2 and HTTP/1.1 by
//! ALPN), then routing. Health endpoints check the embedded store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_api::status::{self, StatusError};
use ferrokube_api::Registry;
use ferrokube_store::Store;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::alloc::Allocator;
use crate::auth::{self, User};
use crate::discovery;
use crate::metrics::{Metrics, RequestLabels};
use crate::request::{self, Query, ResourcePath, Route, Verb};
use crate::rest::{error_response, full, json_response, Body, Call, Resources, MAX_BODY};
use crate::storage::Objects;
use crate::watchcache::WatchCache;

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
    pub(crate) resources: Arc<Resources>,
    /// `host:port` clients reach this server at (for `/api`).
    server_address: String,
    /// OpenAPI v3 documents by index path (`apis/apps/v1`), with their hashes; built on
    /// first use.
    openapi: std::sync::OnceLock<std::collections::BTreeMap<String, (bytes::Bytes, String)>>,
    /// The client towards kubelets (logs, exec, attach, port-forward), once configured.
    pub(crate) kubelet: std::sync::OnceLock<crate::kubelet_client::KubeletClient>,
}

/// The user a service account authenticates as, with upstream's groups.
fn service_account_user(ns: &str, account: &str) -> User {
    User {
        name: format!("system:serviceaccount:{ns}:{account}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    }
}

impl ApiServer {
    /// Builds the server over an open store, with the Service IP range and how long
    /// events live.
    pub fn new(
        store: Store,
        alloc: Allocator,
        server_address: String,
        event_ttl: Duration,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let resources = Arc::new(Resources {
            metrics: metrics.clone(),
            objects: Objects::new(store.clone(), metrics, event_ttl),
            cache: WatchCache::start(store.clone()),
            registry: std::sync::RwLock::new(Arc::new(Registry::default())),
            custom: Default::default(),
            alloc,
            tokens: std::sync::OnceLock::new(),
            rbac: Default::default(),
            admission: std::sync::OnceLock::new(),
        });
        Arc::new(ApiServer {
            store,
            resources,
            server_address,
            openapi: std::sync::OnceLock::new(),
            kubelet: std::sync::OnceLock::new(),
        })
    }

    /// Sets what signs and checks service-account tokens (`serviceaccounts/token`,
    /// bearer authentication).
    pub fn set_service_account_tokens(&self, tokens: crate::serviceaccount::Tokens) {
        let _ = self.resources.tokens.set(tokens);
    }

    /// Sets which admission plugins run (before serving; all by default).
    pub fn set_admission_plugins(&self, plugins: crate::admission::Plugins) {
        let _ = self.resources.admission.set(plugins);
    }

    /// The service account a bearer token authenticates, as upstream's service-account
    /// authenticator: a valid token of this issuer for the API's audiences, whose
    /// account (and the object it is bound to) still exists with the same uid.
    async fn bearer_user(&self, header: &http::HeaderValue) -> Option<User> {
        // The scheme is case-insensitive (RFC 7235), as upstream's bearer authenticator.
        let (scheme, token) = header.to_str().ok()?.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        let tokens = self.resources.tokens.get()?;
        if let Ok(legacy) = tokens.verify_legacy(token) {
            return self.legacy_token_user(token, &legacy).await;
        }
        let claims = match tokens.verify(token, jiff::Timestamp::now().as_second()) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("bearer token refused: {e}");
                return None;
            }
        };
        let k = &claims["kubernetes.io"];
        let ns = k["namespace"].as_str()?;
        let account = k["serviceaccount"]["name"].as_str()?;
        let bound = crate::serviceaccount::BOUND_KINDS
            .iter()
            .map(|(_, claim, plural)| (*claim, *plural));
        for (field, plural) in std::iter::once(("serviceaccount", "serviceaccounts")).chain(bound) {
            let Some(name) = k[field]["name"].as_str() else {
                continue;
            };
            let r = ferrokube_api::registry::builtin("", plural);
            let stored = self
                .resources
                .objects
                .get(&ferrokube_api::keys::object_key(&r, ns, name))
                .await
                .ok()??;
            if ferrokube_api::meta::meta_str(&stored.object, "uid") != k[field]["uid"].as_str()? {
                return None;
            }
        }
        Some(service_account_user(ns, account))
    }

    /// The service account of a legacy token (a `kubernetes.io/service-account-token`
    /// Secret's), as upstream's legacy validator with lookup: the Secret still exists,
    /// is not being deleted, holds this very token and is not marked
    /// `kubernetes.io/legacy-token-invalid-since`; the account still exists with the
    /// token's uid. The Secret's `kubernetes.io/legacy-token-last-used` label is set to
    /// the day of use (at most one write a day).
    async fn legacy_token_user(&self, token: &str, claims: &serde_json::Value) -> Option<User> {
        use base64::Engine as _;
        let ns = claims["kubernetes.io/serviceaccount/namespace"].as_str()?;
        let secret_name = claims["kubernetes.io/serviceaccount/secret.name"].as_str()?;
        let account = claims["kubernetes.io/serviceaccount/service-account.name"].as_str()?;
        let uid = claims["kubernetes.io/serviceaccount/service-account.uid"].as_str()?;
        let get = |plural: &'static str, name: &str| {
            let r = ferrokube_api::registry::builtin("", plural);
            let key = ferrokube_api::keys::object_key(&r, ns, name);
            async move { self.resources.objects.get(&key).await.ok().flatten() }
        };
        let secret = get("secrets", secret_name).await?;
        let s = &secret.object;
        let held = s
            .pointer("/data/token")
            .and_then(serde_json::Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())?;
        if held != token.as_bytes()
            || s.pointer("/metadata/deletionTimestamp").is_some()
            || s.pointer("/metadata/labels/kubernetes.io~1legacy-token-invalid-since")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|v| !v.is_empty())
        {
            return None;
        }
        let sa = get("serviceaccounts", account).await?;
        if ferrokube_api::meta::meta_str(&sa.object, "uid") != uid
            || sa.object.pointer("/metadata/deletionTimestamp").is_some()
        {
            return None;
        }
        let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
        let last = s
            .pointer("/metadata/labels/kubernetes.io~1legacy-token-last-used")
            .and_then(serde_json::Value::as_str);
        if last != Some(today.as_str()) {
            let r = ferrokube_api::registry::builtin("", "secrets");
            let key = ferrokube_api::keys::object_key(&r, ns, secret_name);
            let mark = |cur: Option<&crate::storage::Stored>| {
                let Some(cur) = cur else {
                    return Ok(crate::storage::Update::Keep);
                };
                let mut o = cur.object.clone();
                if !o["metadata"]["labels"].is_object() {
                    o["metadata"]["labels"] = serde_json::json!({});
                }
                o["metadata"]["labels"]["kubernetes.io/legacy-token-last-used"] =
                    serde_json::json!(today);
                Ok(crate::storage::Update::Put(o))
            };
            if let Err(e) = self
                .resources
                .objects
                .update(&key, &|_| Vec::new(), mark)
                .await
            {
                tracing::debug!("marking legacy token use: {e}");
            }
        }
        Some(service_account_user(ns, account))
    }

    /// Sets the client certificate and key (PEM) kube-apiserver presents to kubelets
    /// (`--kubelet-client-certificate`, `--kubelet-client-key`); without them the
    /// streaming pod subresources are unavailable.
    pub fn set_kubelet_client(&self, cert: &[u8], key: &[u8]) -> Result<(), String> {
        let client = crate::kubelet_client::KubeletClient::from_pem(cert, key)?;
        self.kubelet
            .set(client)
            .map_err(|_| "the kubelet client is already set".to_string())
    }

    /// Creates the bootstrap objects (namespaces, the `kubernetes` Service, ...).
    pub async fn bootstrap(
        &self,
        advertise: std::net::IpAddr,
        port: u16,
    ) -> Result<(), StatusError> {
        // Members of a new store group elect a leader first: retry a while on timeouts.
        let mut attempt = 0;
        loop {
            match crate::bootstrap::run(&self.resources, advertise, port).await {
                Ok(()) => break,
                Err(e) if attempt < 20 && matches!(e.code(), 500 | 503 | 504) => {
                    attempt += 1;
                    tracing::info!("bootstrap not done yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        // Custom resources are served from the first request on, then kept current.
        crate::crds::reconcile(&self.resources).await?;
        tokio::spawn(crate::crds::run(self.resources.clone()));
        tokio::spawn(crate::endpoints::run(
            self.resources.clone(),
            advertise,
            port,
        ));
        Ok(())
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
                let user = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| User::from_certificate(c))
                    .unwrap_or_else(User::anonymous);
                let user = Arc::new(user);
                let grpc = crate::grpc::router(me.clone());
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let me = me.clone();
                    let user = user.clone();
                    let mut grpc = grpc.clone();
                    async move {
                        let is_grpc = req
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        if is_grpc {
                            // Without a client certificate, a bearer token (a pod's
                            // service account) authenticates, as on the REST side.
                            let user = match req.headers().get(http::header::AUTHORIZATION) {
                                Some(h) if *user == User::anonymous() => {
                                    match me.bearer_user(h).await {
                                        Some(u) => Arc::new(u),
                                        None => return Ok(crate::grpc::unauthenticated()),
                                    }
                                }
                                _ => user,
                            };
                            req.extensions_mut().insert(user);
                            return Ok::<_, std::convert::Infallible>(
                                crate::grpc::call(&mut grpc, req).await,
                            );
                        }
                        Ok(me.handle(req, &user).await)
                    }
                });
                let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
                if let Err(e) = conn {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>, user: &User) -> Response<Body> {
        let path = req.uri().path().to_string();
        // A client certificate authenticates first; otherwise a bearer token must be a
        // valid service-account token. Credentials no authenticator accepts are refused
        // (401), as upstream refuses them.
        let bearer;
        let user = match req.headers().get(http::header::AUTHORIZATION) {
            Some(h) if *user == User::anonymous() => match self.bearer_user(h).await {
                Some(u) => {
                    bearer = u;
                    &bearer
                }
                None => return error_response(&status::unauthorized()),
            },
            _ => user,
        };
        let query = Query::parse(req.uri().query());
        let route = request::route(&path);
        if let Route::Resource(rp) = route {
            return self.resource(req, rp, query, user).await;
        }
        let verb = match *req.method() {
            Method::GET | Method::HEAD => "get",
            Method::POST => "post",
            Method::PUT => "put",
            Method::DELETE => "delete",
            Method::PATCH => "patch",
            _ => "options",
        };
        if let Err(msg) = auth::authorize_path(user, verb, &path) {
            if !self
                .resources
                .rbac
                .allows_path(&self.resources, user, verb, &path)
                .await
            {
                return error_response(&status::forbidden_path(msg));
            }
        }
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let reg = &*self.resources.registry();
        let found = |v: Option<serde_json::Value>| match v {
            Some(v) => json_response(StatusCode::OK, &v),
            None => error_response(&status::no_route()),
        };
        if req.method() != Method::GET {
            return match route {
                Route::Other => text(StatusCode::NOT_FOUND, "404 page not found\n"),
                _ => error_response(&status::method_not_supported()),
            };
        }
        match route {
            Route::Api if discovery::wants_aggregated(&accept) => {
                aggregated(&discovery::aggregated(reg, true))
            }
            Route::Apis if discovery::wants_aggregated(&accept) => {
                aggregated(&discovery::aggregated(reg, false))
            }
            Route::Api => json_response(
                StatusCode::OK,
                &discovery::api_versions(&self.server_address),
            ),
            Route::Apis => json_response(StatusCode::OK, &discovery::api_group_list(reg)),
            Route::Group(g) => found(discovery::api_group(reg, &g)),
            Route::GroupVersion(g, v) => found(discovery::resource_list(reg, &g, &v)),
            Route::Resource(_) => unreachable!("handled above"),
            Route::Other => match path.as_str() {
                "/version" => json_response(StatusCode::OK, &version()),
                "/metrics" => {
                    let body = self.resources.metrics.render();
                    full(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        body,
                    )
                }
                "/openapi/v2" => {
                    // JSON only; kubectl's v2 client asks for protobuf alone and, told no
                    // (406), goes on without it.
                    let json_ok = accept.is_empty()
                        || accept.contains("application/json")
                        || accept.contains("*/*");
                    if !json_ok {
                        return error_response(&status::not_acceptable(&accept));
                    }
                    let docs: Vec<serde_json::Value> = self
                        .openapi_docs()
                        .values()
                        .filter_map(|(b, _)| serde_json::from_slice(b).ok())
                        .collect();
                    json_response(StatusCode::OK, &ferrokube_api::openapi::v2_doc(&docs))
                }
                "/openapi/v3" => {
                    let paths: serde_json::Map<String, serde_json::Value> = self
                        .openapi_docs()
                        .iter()
                        .map(|(p, (_, hash))| {
                            (p.clone(), serde_json::json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}))
                        })
                        .collect();
                    json_response(StatusCode::OK, &serde_json::json!({"paths": paths}))
                }
                p if p.starts_with("/openapi/v3/") => {
                    match self
                        .openapi_docs()
                        .get(p.trim_start_matches("/openapi/v3/"))
                    {
                        Some((doc, hash)) => {
                            let mut r = full(StatusCode::OK, "application/json", doc.clone());
                            if let Ok(v) = http::HeaderValue::from_str(&format!("\"{hash}\"")) {
                                r.headers_mut().insert(http::header::ETAG, v);
                            }
                            r
                        }
                        None => text(StatusCode::NOT_FOUND, "404 page not found\n"),
                    }
                }
                "/healthz" => self.health("healthz", query.get("verbose").is_some()).await,
                "/livez" => self.health("livez", query.get("verbose").is_some()).await,
                "/readyz" => self.health("readyz", query.get("verbose").is_some()).await,
                p if p.starts_with("/healthz/")
                    || p.starts_with("/livez/")
                    || p.starts_with("/readyz/") =>
                {
                    self.single_check(p).await
                }
                _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
            },
        }
    }

    /// Every OpenAPI v3 document: the built-in ones (made once) and those of the custom
    /// resources served now.
    fn openapi_docs(&self) -> std::collections::BTreeMap<String, (bytes::Bytes, String)> {
        let encode = |doc: serde_json::Value| {
            let bytes = serde_json::to_vec(&doc).expect("JSON values serialize");
            let hash = format!("{:016X}", fnv1a(&bytes));
            (bytes::Bytes::from(bytes), hash)
        };
        let mut docs = self
            .openapi
            .get_or_init(|| {
                let reg = Registry::default();
                reg.group_versions()
                    .into_iter()
                    .filter_map(|(g, v)| {
                        let doc = ferrokube_api::openapi::group_version_doc(&reg, g, v)?;
                        Some((ferrokube_api::openapi::gv_path(g, v), encode(doc)))
                    })
                    .collect()
            })
            .clone();
        let custom = self.resources.custom.read().expect("custom lock").clone();
        let mut by_gv: std::collections::BTreeMap<
            (String, String),
            Vec<&ferrokube_api::crd::CustomVersion>,
        > = Default::default();
        for cv in custom.values() {
            by_gv
                .entry((cv.info.group.to_string(), cv.info.version.to_string()))
                .or_default()
                .push(cv);
        }
        for ((g, v), cvs) in by_gv {
            if let Some(doc) = ferrokube_api::openapi::custom_doc(&cvs) {
                docs.insert(ferrokube_api::openapi::gv_path(&g, &v), encode(doc));
            }
        }
        docs
    }

    /// A resource request: find the resource, authorize, read the body, serve.
    async fn resource(
        &self,
        req: Request<Incoming>,
        rp: ResourcePath,
        query: Query,
        user: &User,
    ) -> Response<Body> {
        let (r, verb) = match self.admit_request(req.method(), &rp, &query, user).await {
            Ok(x) => x,
            Err(e) => return error_response(&e),
        };
        if crate::pod_streams::is_streaming(&rp) {
            return self.pod_stream(req, &rp, &query).await;
        }
        if r.group == ferrokube_api::registry::METRICS_GROUP {
            return self
                .resource_metrics(&r, verb, &rp, &query, req.headers())
                .await;
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return error_response(&status::too_large(MAX_BODY));
                }
                return error_response(&status::bad_request(format!(
                    "reading the request body: {e}"
                )));
            }
        };
        let call = Call {
            applied: false,
            method: &parts.method,
            path: &rp,
            query: &query,
            headers: &parts.headers,
            body,
        };
        self.serve_resource(&r, verb, call).await
    }

    /// Finds the resource a request names and authorizes the user for it.
    pub(crate) async fn admit_request(
        &self,
        method: &Method,
        rp: &ResourcePath,
        query: &Query,
        user: &User,
    ) -> Result<(ferrokube_api::ResourceInfo, Verb), StatusError> {
        let Some(r) = self
            .resources
            .registry()
            .by_path(&rp.group, &rp.version, &rp.resource)
            .copied()
        else {
            return Err(status::no_route());
        };
        if rp.namespace.is_some() && !r.namespaced {
            return Err(status::no_route());
        }
        let Some(verb) = Verb::of(method, rp, query) else {
            return Err(status::method_not_supported());
        };
        let attrs = auth::Attributes {
            verb: verb.as_str(),
            group: r.group,
            resource: r.plural,
            subresource: rp.subresource.as_deref(),
            // A Namespace object is authorized within itself (upstream's RequestInfo), so
            // a RoleBinding there may grant reading it.
            namespace: if r.group.is_empty() && r.plural == "namespaces" {
                rp.name.as_deref()
            } else {
                rp.namespace.as_deref()
            },
            name: rp.name.as_deref(),
        };
        if let Err(msg) = auth::authorize_resource(user, &attrs) {
            if self
                .resources
                .rbac
                .allows_resource(&self.resources, user, &attrs)
                .await
            {
                return Ok((r, verb));
            }
            return Err(status::forbidden(
                &r,
                rp.name.as_deref().unwrap_or_default(),
                &msg,
            ));
        }
        Ok((r, verb))
    }

    /// Serves an admitted resource request and counts it.
    pub(crate) async fn serve_resource(
        &self,
        r: &ferrokube_api::ResourceInfo,
        verb: Verb,
        call: Call<'_>,
    ) -> Response<Body> {
        let rp = call.path;
        let labels = RequestLabels {
            // Upstream's metric verbs: the HTTP method, LIST/WATCH for collections.
            verb: match verb {
                Verb::Create => "POST".into(),
                Verb::Update => "PUT".into(),
                v => v.as_str().to_ascii_uppercase(),
            },
            group: r.group.to_string(),
            version: r.version.to_string(),
            resource: r.plural.to_string(),
            subresource: rp.subresource.clone().unwrap_or_default(),
            scope: if rp.name.is_some() {
                "resource"
            } else if rp.namespace.is_some() {
                "namespace"
            } else {
                "cluster"
            },
        };
        let started = std::time::Instant::now();
        let metrics = &self.resources.metrics;
        metrics.inflight(1);
        let resp = self.resources.handle(r, verb, call).await;
        metrics.inflight(-1);
        metrics.request(labels, resp.status().as_u16(), started.elapsed());
        resp
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

    async fn health(&self, endpoint: &str, verbose: bool) -> Response<Body> {
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

    async fn single_check(&self, path: &str) -> Response<Body> {
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

/// FNV-1a, for document hashes.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100000001b3)
    })
}

fn aggregated(v: &serde_json::Value) -> Response<Body> {
    full(
        StatusCode::OK,
        discovery::AGGREGATED,
        serde_json::to_vec(v).expect("JSON values serialize"),
    )
}

fn text(code: StatusCode, s: &str) -> Response<Body> {
    let mut r = full(code, "text/plain; charset=utf-8", s.to_string());
    r.headers_mut().insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    r
}
