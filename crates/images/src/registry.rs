//! The Docker/OCI registry v2 protocol, client side: manifests and blobs by tag or
//! digest (with Bearer token auth and redirects), and pushes (blob uploads, manifests).
//! Plain HTTP for mirrors on loopback, HTTPS with the system's CA bundle otherwise.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

use crate::Error;

/// Media types of manifests, most specific first in `Accept`.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// `sha256:<hex>` of some bytes.
pub fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Where a registry is reached: `http://127.0.0.1:5000` or `https://registry-1.docker.io`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: String,
    pub host: String,
}

impl Endpoint {
    /// Parses `http://host:port` / `https://host`; a bare host means HTTPS.
    pub fn parse(s: &str) -> Result<Endpoint, Error> {
        let (scheme, host) = match s.split_once("://") {
            Some((sc, h)) => (sc.to_string(), h.trim_end_matches('/').to_string()),
            None => ("https".to_string(), s.trim_end_matches('/').to_string()),
        };
        if scheme != "http" && scheme != "https" || host.is_empty() {
            return Err(Error::Registry(format!("bad registry endpoint {s:?}")));
        }
        Ok(Endpoint { scheme, host })
    }
}

/// Credentials for a registry (from `imagePullSecrets`).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// A client for one registry endpoint and repository.
pub struct Registry {
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    credentials: Option<Credentials>,
    token: Option<String>,
}

struct Resp {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

fn system_tls() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for path in ["/etc/ssl/certs/ca-certificates.crt"] {
        if let Ok(iter) = CertificateDer::pem_file_iter(path) {
            for c in iter.flatten() {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A `WWW-Authenticate: Bearer realm=..,service=..,scope=..` challenge.
fn bearer_challenge(h: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))?;
    let mut realm = None;
    let mut params = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.trim_matches('"').to_string();
        if k == "realm" {
            realm = Some(v);
        } else {
            params.push((k.to_string(), v));
        }
    }
    Some((realm?, params))
}

impl Registry {
    pub fn new(endpoint: Endpoint, credentials: Option<Credentials>) -> Registry {
        Registry {
            endpoint,
            tls: system_tls(),
            credentials,
            token: None,
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Resp, Error> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| Error::Registry(format!("{url}: {e}")))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| Error::Registry(format!("{url}: no host")))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Error::Registry(format!("connect {host}:{port}: {e}")))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(
                http::header::HOST,
                uri.authority().map_or(host.clone(), |a| a.to_string()),
            )
            .header(http::header::USER_AGENT, "ferrokube-kubelet");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Registry(e.to_string()))?;
        macro_rules! exchange {
            ($io:expr) => {{
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io))
                    .await
                    .map_err(|e| Error::Registry(format!("{url}: {e}")))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|e| Error::Registry(format!("{url}: {e}")))?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| Error::Registry(format!("{url}: {e}")))?
                    .to_bytes();
                Resp {
                    status,
                    headers,
                    body,
                }
            }};
        }
        if https {
            let name =
                ServerName::try_from(host.clone()).map_err(|e| Error::Registry(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Registry(format!("TLS to {host}: {e}")))?;
            Ok(exchange!(tls))
        } else {
            Ok(exchange!(tcp))
        }
    }

    /// A request to the registry API, following redirects and answering one Bearer
    /// challenge.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        mut headers: Vec<(&str, String)>,
        body: Bytes,
    ) -> Result<Resp, Error> {
        let mut url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}://{}{}", self.endpoint.scheme, self.endpoint.host, path)
        };
        let mut challenged = false;
        for _ in 0..6 {
            let mut h = headers.clone();
            if let Some(t) = &self.token {
                h.push(("authorization", format!("Bearer {t}")));
            } else if let Some(c) = &self.credentials {
                let basic = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password));
                h.push(("authorization", format!("Basic {basic}")));
            }
            let resp = self.send_once(&method, &url, &h, body.clone()).await?;
            if resp.status.is_redirection() {
                let loc = resp
                    .headers
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Error::Registry(format!("{url}: redirect without a location"))
                    })?;
                url = if loc.starts_with("http") {
                    loc.to_string()
                } else {
                    format!("{}://{}{}", self.endpoint.scheme, self.endpoint.host, loc)
                };
                // Storage backends must not see our registry credentials.
                headers.retain(|(k, _)| *k != "authorization");
                continue;
            }
            if resp.status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = resp
                    .headers
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(bearer_challenge);
                if let Some((realm, params)) = challenge {
                    self.token = Some(self.fetch_token(&realm, &params).await?);
                    continue;
                }
            }
            return Ok(resp);
        }
        Err(Error::Registry(format!("{url}: too many redirects")))
    }

    async fn fetch_token(&self, realm: &str, params: &[(String, String)]) -> Result<String, Error> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.replace(' ', "%20")
                        .replace(':', "%3A")
                        .replace('/', "%2F")
                        .replace(',', "%2C")
                )
            })
            .collect();
        let url = if query.is_empty() {
            realm.to_string()
        } else {
            format!("{realm}?{}", query.join("&"))
        };
        let mut h = Vec::new();
        if let Some(c) = &self.credentials {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.password));
            h.push(("authorization", format!("Basic {basic}")));
        }
        let resp = self.send_once(&Method::GET, &url, &h, Bytes::new()).await?;
        if !resp.status.is_success() {
            return Err(Error::Unauthorized(format!(
                "token from {realm}: {}",
                resp.status
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&resp.body)?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| Error::Unauthorized(format!("no token from {realm}")))
    }

    /// A manifest (or index) by tag or digest: its bytes, media type and digest.
    pub async fn manifest(
        &mut self,
        repository: &str,
        object: &str,
    ) -> Result<(Bytes, String, String), Error> {
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{repository}/manifests/{object}"),
                vec![("accept", accept)],
                Bytes::new(),
            )
            .await?;
        match resp.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::NotFound(format!(
                    "manifest unknown: {repository}:{object}"
                )))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Error::Unauthorized(format!(
                    "{repository}:{object}: {}",
                    resp.status
                )))
            }
            s => {
                return Err(Error::Registry(format!(
                    "manifest {repository}:{object}: {s}"
                )))
            }
        }
        let digest = sha256(&resp.body);
        if object.starts_with("sha256:") && object != digest {
            return Err(Error::Digest(format!(
                "manifest {object} has digest {digest}"
            )));
        }
        let media = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&resp.body)
                    .ok()?
                    .get("mediaType")?
                    .as_str()
                    .map(String::from)
            })
            .unwrap_or_default();
        Ok((resp.body, media, digest))
    }

    /// A blob by digest, verified.
    pub async fn blob(&mut self, repository: &str, digest: &str) -> Result<Bytes, Error> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{repository}/blobs/{digest}"),
                vec![],
                Bytes::new(),
            )
            .await?;
        if resp.status != StatusCode::OK {
            return Err(Error::Registry(format!("blob {digest}: {}", resp.status)));
        }
        let got = sha256(&resp.body);
        if got != digest {
            return Err(Error::Digest(format!("blob {digest} has digest {got}")));
        }
        Ok(resp.body)
    }

    /// Uploads a blob (monolithic upload) unless the registry has it.
    pub async fn push_blob(&mut self, repository: &str, data: Bytes) -> Result<String, Error> {
        let digest = sha256(&data);
        let head = self
            .send(
                Method::HEAD,
                &format!("/v2/{repository}/blobs/{digest}"),
                vec![],
                Bytes::new(),
            )
            .await?;
        if head.status == StatusCode::OK {
            return Ok(digest);
        }
        let start = self
            .send(
                Method::POST,
                &format!("/v2/{repository}/blobs/uploads/"),
                vec![],
                Bytes::new(),
            )
            .await?;
        if start.status != StatusCode::ACCEPTED {
            return Err(Error::Registry(format!(
                "starting an upload: {}",
                start.status
            )));
        }
        let loc = start
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Registry("upload without a location".into()))?
            .to_string();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = self
            .send(
                Method::PUT,
                &format!("{loc}{sep}digest={}", digest.replace(':', "%3A")),
                vec![("content-type", "application/octet-stream".into())],
                data,
            )
            .await?;
        if put.status != StatusCode::CREATED {
            return Err(Error::Registry(format!(
                "uploading {digest}: {}",
                put.status
            )));
        }
        Ok(digest)
    }

    /// Puts a manifest under a tag.
    pub async fn push_manifest(
        &mut self,
        repository: &str,
        tag: &str,
        media_type: &str,
        data: Bytes,
    ) -> Result<String, Error> {
        let digest = sha256(&data);
        let resp = self
            .send(
                Method::PUT,
                &format!("/v2/{repository}/manifests/{tag}"),
                vec![("content-type", media_type.into())],
                data,
            )
            .await?;
        if resp.status != StatusCode::CREATED {
            return Err(Error::Registry(format!(
                "putting manifest {repository}:{tag}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            )));
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_endpoints() {
        let (realm, params) = bearer_challenge(
            "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/nginx:pull\"",
        )
        .unwrap();
        assert_eq!(realm, "https://auth.docker.io/token");
        assert_eq!(
            params[1],
            (
                "scope".to_string(),
                "repository:library/nginx:pull".to_string()
            )
        );
        assert!(bearer_challenge("Basic realm=x").is_none());
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:5000/").unwrap().host,
            "127.0.0.1:5000"
        );
        assert_eq!(Endpoint::parse("quay.io").unwrap().scheme, "https");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert_eq!(
            sha256(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
