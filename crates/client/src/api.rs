//! The connection to kube-apiserver and typed calls on one kind of resource.

use std::marker::PhantomData;
use std::pin::Pin;

use ferrokube_proto::resources::resources_client::ResourcesClient;
use ferrokube_proto::resources::{Request, ResourceRef};
use futures::Stream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, WatchEvent};
use k8s_openapi::{NamespaceResourceScope, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{Config, Error};

/// A connection to kube-apiserver's resource service. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: ResourcesClient<Channel>,
    /// The field manager writes are recorded under (default: the program's name).
    manager: std::sync::Arc<str>,
    /// Bearer credentials, when there is no client certificate.
    token: Option<std::sync::Arc<TokenSource>>,
}

/// A bearer token, inline or read from a file at most once a minute (the kubelet renews
/// projected service-account tokens in place).
struct TokenSource {
    fixed: Option<String>,
    file: Option<std::path::PathBuf>,
    cached: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl TokenSource {
    fn token(&self) -> Result<String, Error> {
        if let Some(t) = &self.fixed {
            return Ok(t.clone());
        }
        let Some(file) = &self.file else {
            return Err(Error::Config("no token".into()));
        };
        let mut cached = self.cached.lock().expect("token lock");
        if let Some((at, t)) = cached.as_ref() {
            if at.elapsed() < std::time::Duration::from_secs(60) {
                return Ok(t.clone());
            }
        }
        let t = std::fs::read_to_string(file)
            .map_err(|e| Error::Config(format!("{}: {e}", file.display())))?
            .trim()
            .to_string();
        *cached = Some((std::time::Instant::now(), t.clone()));
        Ok(t)
    }
}

/// What a call answered: the HTTP-equivalent code and the JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: u16,
    pub body: Vec<u8>,
    pub warnings: Vec<String>,
}

impl Client {
    /// Connects (lazily: the first call dials) with mutual TLS.
    pub fn new(cfg: &Config) -> Result<Client, Error> {
        let host = cfg
            .server
            .trim_start_matches("https://")
            .rsplit_once(':')
            .map_or(cfg.server.as_str(), |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&cfg.ca_pem))
            .domain_name(host);
        if !cfg.cert_pem.is_empty() {
            tls = tls.identity(Identity::from_pem(&cfg.cert_pem, &cfg.key_pem));
        }
        let token = (cfg.token.is_some() || cfg.token_file.is_some()).then(|| {
            std::sync::Arc::new(TokenSource {
                fixed: cfg.token.clone(),
                file: cfg.token_file.clone(),
                cached: Default::default(),
            })
        });
        let endpoint = Endpoint::from_shared(cfg.server.clone())
            .map_err(|e| Error::Config(format!("server {:?}: {e}", cfg.server)))?
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(20))
            .connect_timeout(std::time::Duration::from_secs(5));
        let inner = ResourcesClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(8 * 1024 * 1024);
        let manager = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "ferrokube-client".into());
        Ok(Client {
            inner,
            manager: manager.into(),
            token,
        })
    }

    /// The request with this client's bearer token, if it has one.
    fn authorized<T>(&self, msg: T) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            let v = format!("Bearer {}", t.token()?)
                .parse()
                .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }

    /// Records writes under this field manager (a component's name).
    pub fn with_field_manager(mut self, manager: &str) -> Client {
        self.manager = manager.into();
        self
    }

    /// One request, as REST would carry it.
    pub async fn call(&self, mut req: Request) -> Result<Answer, Error> {
        if matches!(req.verb.as_str(), "create" | "update" | "patch") {
            req.query
                .entry("fieldManager".into())
                .or_insert_with(|| self.manager.to_string());
        }
        let resp = self
            .inner
            .clone()
            .call(self.authorized(req)?)
            .await?
            .into_inner();
        Ok(Answer {
            code: resp.code as u16,
            body: resp.body,
            warnings: resp.warnings,
        })
    }

    /// A watch: raw JSON events.
    pub async fn watch_raw(
        &self,
        req: Request,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<Vec<u8>, Error>> + Send>>, Error> {
        let stream = self
            .inner
            .clone()
            .watch(self.authorized(req)?)
            .await?
            .into_inner();
        Ok(Box::pin(
            stream.map(|r| r.map(|e| e.event).map_err(Error::from)),
        ))
    }
}

/// Options of list and watch calls.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<u32>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u32>,
    pub bookmarks: bool,
}

impl ListParams {
    fn query(&self) -> std::collections::HashMap<String, String> {
        let mut q = std::collections::HashMap::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                q.insert(k.to_string(), v.clone());
            }
        };
        put("labelSelector", &self.label_selector);
        put("fieldSelector", &self.field_selector);
        put("continue", &self.continue_token);
        put("resourceVersion", &self.resource_version);
        put("limit", &self.limit.map(|l| l.to_string()));
        put(
            "timeoutSeconds",
            &self.timeout_seconds.map(|l| l.to_string()),
        );
        if self.bookmarks {
            q.insert("allowWatchBookmarks".into(), "true".into());
        }
        q
    }
}

/// A patch and its type.
#[derive(Debug, Clone)]
pub enum Patch {
    /// RFC 7386.
    Merge(serde_json::Value),
    /// RFC 6902.
    Json(serde_json::Value),
    /// Kubernetes strategic merge patch.
    Strategic(serde_json::Value),
    /// Server-side apply with a field manager; `force` takes conflicting fields.
    Apply {
        config: serde_json::Value,
        manager: String,
        force: bool,
    },
}

/// A list answer.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(bound = "K: DeserializeOwned")]
pub struct ObjectList<K> {
    #[serde(default)]
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta,
    #[serde(default)]
    pub items: Vec<K>,
}

/// Calls on one resource, in one namespace or across all (or cluster-scoped): typed by
/// a k8s-openapi kind, or by any serde type for a resource found at run time
/// ([`Api::dynamic`], e.g. with [`crate::dynamic::ObjectMetadata`]).
#[derive(Clone)]
pub struct Api<K> {
    client: Client,
    /// Group, version and plural.
    resource: std::sync::Arc<(String, String, String)>,
    namespace: Option<String>,
    _k: PhantomData<fn() -> K>,
}

impl<K: Resource> Api<K> {
    fn typed(client: Client, namespace: Option<String>) -> Self {
        Api {
            client,
            resource: std::sync::Arc::new((
                K::GROUP.to_string(),
                K::VERSION.to_string(),
                K::URL_PATH_SEGMENT.to_string(),
            )),
            namespace,
            _k: PhantomData,
        }
    }

    /// Cluster-scoped kinds, or namespaced kinds across all namespaces (list/watch).
    pub fn all(client: Client) -> Self {
        Self::typed(client, None)
    }

    /// A namespaced kind in one namespace.
    pub fn namespaced(client: Client, ns: &str) -> Self
    where
        K: Resource<Scope = NamespaceResourceScope>,
    {
        Self::typed(client, Some(ns.to_string()))
    }
}

impl<K> Api<K> {
    /// A resource found at run time (discovery), in `namespace` or across all (and
    /// cluster-scoped ones with `None`).
    pub fn dynamic(
        client: Client,
        resource: &crate::dynamic::ApiResource,
        namespace: Option<&str>,
    ) -> Self {
        Api {
            client,
            resource: std::sync::Arc::new((
                resource.group.clone(),
                resource.version.clone(),
                resource.plural.clone(),
            )),
            namespace: namespace.map(String::from),
            _k: PhantomData,
        }
    }

    /// The resource's plural name (`pods`).
    pub fn plural(&self) -> &str {
        &self.resource.2
    }
}

impl<K> Api<K>
where
    K: Serialize + DeserializeOwned,
{
    fn reference(&self, name: &str, subresource: &str) -> ResourceRef {
        ResourceRef {
            group: self.resource.0.clone(),
            version: self.resource.1.clone(),
            resource: self.resource.2.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            name: name.to_string(),
            subresource: subresource.to_string(),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        verb: &str,
        name: &str,
        sub: &str,
        query: std::collections::HashMap<String, String>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<T, Error> {
        let answer = self
            .client
            .call(Request {
                r#ref: Some(self.reference(name, sub)),
                verb: verb.to_string(),
                query,
                content_type: content_type.to_string(),
                body,
            })
            .await?;
        decode(&answer)
    }

    pub async fn get(&self, name: &str) -> Result<K, Error> {
        self.send("get", name, "", Default::default(), "", vec![])
            .await
    }

    /// Reads a subresource (`scale`).
    pub async fn get_subresource(&self, name: &str, sub: &str) -> Result<K, Error> {
        self.send("get", name, sub, Default::default(), "", vec![])
            .await
    }

    /// `get`, with `None` for NotFound.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>, Error> {
        match self.get(name).await {
            Ok(k) => Ok(Some(k)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, p: &ListParams) -> Result<ObjectList<K>, Error> {
        self.send("list", "", "", p.query(), "", vec![]).await
    }

    pub async fn create(&self, obj: &K) -> Result<K, Error> {
        self.send(
            "create",
            "",
            "",
            Default::default(),
            "application/json",
            serde_json::to_vec(obj)?,
        )
        .await
    }

    /// Replaces the object (with its resourceVersion: a stale one is a Conflict).
    pub async fn replace(&self, name: &str, obj: &K) -> Result<K, Error> {
        self.send(
            "update",
            name,
            "",
            Default::default(),
            "application/json",
            serde_json::to_vec(obj)?,
        )
        .await
    }

    /// Replaces the status subresource.
    pub async fn replace_status(&self, name: &str, obj: &K) -> Result<K, Error> {
        self.replace_subresource(name, "status", obj).await
    }

    /// Replaces through a subresource (`status`, a namespace's `finalize`).
    pub async fn replace_subresource(&self, name: &str, sub: &str, obj: &K) -> Result<K, Error> {
        self.send(
            "update",
            name,
            sub,
            Default::default(),
            "application/json",
            serde_json::to_vec(obj)?,
        )
        .await
    }

    pub async fn patch(&self, name: &str, patch: &Patch) -> Result<K, Error> {
        self.patch_sub(name, "", patch).await
    }

    pub async fn patch_status(&self, name: &str, patch: &Patch) -> Result<K, Error> {
        self.patch_sub(name, "status", patch).await
    }

    async fn patch_sub(&self, name: &str, sub: &str, patch: &Patch) -> Result<K, Error> {
        let mut q = std::collections::HashMap::new();
        let (ct, body) = match patch {
            Patch::Merge(v) => ("application/merge-patch+json", v),
            Patch::Json(v) => ("application/json-patch+json", v),
            Patch::Strategic(v) => ("application/strategic-merge-patch+json", v),
            Patch::Apply {
                config,
                manager,
                force,
            } => {
                q.insert("fieldManager".to_string(), manager.clone());
                if *force {
                    q.insert("force".to_string(), "true".to_string());
                }
                ("application/apply-patch+yaml", config)
            }
        };
        self.send("patch", name, sub, q, ct, serde_json::to_vec(body)?)
            .await
    }

    /// Deletes; the answer is the object when it is only marked (finalizers, graceful
    /// pods) and `None` once it is gone.
    pub async fn delete(
        &self,
        name: &str,
        options: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>,
    ) -> Result<Option<K>, Error> {
        let body = match options {
            Some(o) => serde_json::to_vec(o)?,
            None => vec![],
        };
        let v: serde_json::Value = self
            .send(
                "delete",
                name,
                "",
                Default::default(),
                "application/json",
                body,
            )
            .await?;
        if v.get("kind").and_then(|k| k.as_str()) == Some("Status") {
            return Ok(None);
        }
        Ok(Some(serde_json::from_value(v)?))
    }

    /// Deletes every object the selectors in `p` match (in the namespace, or across
    /// all); the answer lists what was deleted or marked.
    pub async fn delete_collection(
        &self,
        options: &k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions,
        p: &ListParams,
    ) -> Result<ObjectList<K>, Error> {
        self.send(
            "deletecollection",
            "",
            "",
            p.query(),
            "application/json",
            serde_json::to_vec(options)?,
        )
        .await
    }

    /// Creates a subresource object (`pods/binding`, `pods/eviction`).
    pub async fn create_subresource<T: Serialize>(
        &self,
        name: &str,
        sub: &str,
        obj: &T,
    ) -> Result<serde_json::Value, Error> {
        self.send(
            "create",
            name,
            sub,
            Default::default(),
            "application/json",
            serde_json::to_vec(obj)?,
        )
        .await
    }

    /// Watches from `p.resource_version` (empty: current state first, as ADDED events).
    pub async fn watch(
        &self,
        p: &ListParams,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<WatchEvent<K>, Error>> + Send>>, Error>
    where
        K: Send + 'static,
    {
        let raw = self
            .client
            .watch_raw(Request {
                r#ref: Some(self.reference("", "")),
                verb: "watch".into(),
                query: p.query(),
                content_type: String::new(),
                body: vec![],
            })
            .await?;
        Ok(Box::pin(raw.map(|r| {
            let bytes = r?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            if v.get("type").and_then(|t| t.as_str()) == Some("ERROR") {
                let status: Status = serde_json::from_value(v["object"].clone())?;
                return Ok(WatchEvent::ErrorStatus(status));
            }
            Ok(serde_json::from_value::<WatchEvent<K>>(v)?)
        })))
    }
}

/// A call's JSON, or its `Status` error.
pub(crate) fn decode<T: DeserializeOwned>(a: &Answer) -> Result<T, Error> {
    if a.code >= 400 {
        let status: Status = serde_json::from_slice(&a.body).unwrap_or_else(|_| Status {
            code: Some(i32::from(a.code)),
            message: Some(String::from_utf8_lossy(&a.body).into_owned()),
            ..Default::default()
        });
        return Err(Error::Api(Box::new(status)));
    }
    Ok(serde_json::from_slice(&a.body)?)
}
