//! Where the API server is and who we are: read from a kubeconfig (the current
//! context's cluster and user, with inline `-data` fields or file paths).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::Error;

/// Connection settings: server URL, CA, and credentials — a client certificate and key
/// (PEM), or a bearer token (inline, or a file re-read as it rotates).
#[derive(Clone)]
pub struct Config {
    /// `https://host:port`.
    pub server: String,
    pub ca_pem: Vec<u8>,
    /// Empty when the credentials are a token.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// Where a pod's service-account credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: Option<String>,
    certificate_authority: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: Option<String>,
    client_certificate: Option<PathBuf>,
    client_key_data: Option<String>,
    client_key: Option<PathBuf>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: String,
}

fn material(
    data: &Option<String>,
    file: &Option<PathBuf>,
    base: &Path,
    what: &str,
) -> Result<Vec<u8>, Error> {
    if let Some(d) = data {
        return base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map_err(|e| Error::Config(format!("{what}: {e}")));
    }
    if let Some(f) = file {
        let p = if f.is_absolute() {
            f.clone()
        } else {
            base.join(f)
        };
        return std::fs::read(&p)
            .map_err(|e| Error::Config(format!("{what} {}: {e}", p.display())));
    }
    Err(Error::Config(format!("the kubeconfig has no {what}")))
}

impl Config {
    /// Reads a kubeconfig file.
    pub fn from_kubeconfig(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_kubeconfig_text(&text, base)
    }

    /// Parses kubeconfig text; relative file paths resolve against `base`.
    pub fn from_kubeconfig_text(text: &str, base: &Path) -> Result<Config, Error> {
        let kc: Kubeconfig =
            serde_norway::from_str(text).map_err(|e| Error::Config(format!("kubeconfig: {e}")))?;
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == kc.current_context)
            .or(kc.contexts.first())
            .ok_or_else(|| Error::Config("the kubeconfig has no context".into()))?;
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx.item.cluster)
            .ok_or_else(|| {
                Error::Config(format!(
                    "no cluster {:?} in the kubeconfig",
                    ctx.item.cluster
                ))
            })?;
        let user = kc
            .users
            .iter()
            .find(|u| u.name == ctx.item.user)
            .ok_or_else(|| {
                Error::Config(format!("no user {:?} in the kubeconfig", ctx.item.user))
            })?;
        let c = &cluster.item;
        let u = &user.item;
        let ca_pem = material(
            &c.certificate_authority_data,
            &c.certificate_authority,
            base,
            "certificate authority",
        )?;
        let server = c.server.trim_end_matches('/').to_string();
        let token_file = u.token_file.as_ref().map(|f| {
            if f.is_absolute() {
                f.clone()
            } else {
                base.join(f)
            }
        });
        if u.client_certificate_data.is_none()
            && u.client_certificate.is_none()
            && (u.token.is_some() || token_file.is_some())
        {
            return Ok(Config {
                server,
                ca_pem,
                cert_pem: Vec::new(),
                key_pem: Vec::new(),
                token: u.token.clone(),
                token_file,
            });
        }
        Ok(Config {
            server,
            ca_pem,
            cert_pem: material(
                &u.client_certificate_data,
                &u.client_certificate,
                base,
                "client certificate",
            )?,
            key_pem: material(&u.client_key_data, &u.client_key, base, "client key")?,
            token: None,
            token_file: None,
        })
    }

    /// The configuration from `kubeconfig` when given, else the in-cluster one (upstream's
    /// `clientcmd.BuildConfigFromFlags` with no master URL). Errors name the file.
    pub fn from_kubeconfig_or_in_cluster(kubeconfig: Option<&Path>) -> Result<Config, Error> {
        match kubeconfig {
            Some(p) => Config::from_kubeconfig(p)
                .map_err(|e| Error::Config(format!("kubeconfig {}: {e}", p.display()))),
            None => Config::in_cluster(),
        }
    }

    /// The configuration of a process running in a pod: the API server at
    /// `KUBERNETES_SERVICE_HOST`:`KUBERNETES_SERVICE_PORT`, the pod's service-account token
    /// (re-read as the kubelet renews it) and the cluster CA, as upstream's
    /// `rest.InClusterConfig`.
    pub fn in_cluster() -> Result<Config, Error> {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Error::Config(
                        "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined".into(),
                    )
                })
        };
        let host = var("KUBERNETES_SERVICE_HOST")?;
        let port = var("KUBERNETES_SERVICE_PORT")?;
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let ca = dir.join("ca.crt");
        let ca_pem =
            std::fs::read(&ca).map_err(|e| Error::Config(format!("{}: {e}", ca.display())))?;
        let token_file = dir.join("token");
        if let Err(e) = std::fs::metadata(&token_file) {
            return Err(Error::Config(format!("{}: {e}", token_file.display())));
        }
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Config {
            server: format!("https://{host}:{port}"),
            ca_pem,
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
            token: None,
            token_file: Some(token_file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_current_context() {
        let text = "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443/\n  name: k\ncontexts:\n- context:\n    cluster: k\n    user: admin\n  name: admin@k\ncurrent-context: admin@k\nusers:\n- name: admin\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";
        let c = Config::from_kubeconfig_text(text, Path::new("/")).unwrap();
        assert_eq!(c.server, "https://127.0.0.1:6443");
        assert_eq!(
            (
                c.ca_pem.as_slice(),
                c.cert_pem.as_slice(),
                c.key_pem.as_slice()
            ),
            (&b"CA"[..], &b"CERT"[..], &b"KEY"[..])
        );
        assert!(Config::from_kubeconfig_text("users: []", Path::new("/")).is_err());
        assert!(c.token.is_none());
    }

    #[test]
    fn token_users() {
        let text = "clusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://10.96.0.1:443\n  name: k\ncontexts:\n- context: {cluster: k, user: sa}\n  name: c\ncurrent-context: c\nusers:\n- name: sa\n  user:\n    token: abc\n";
        let c = Config::from_kubeconfig_text(text, Path::new("/")).unwrap();
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert!(c.cert_pem.is_empty());
        let text = text.replace("token: abc", "tokenFile: token");
        let c = Config::from_kubeconfig_text(&text, Path::new("/sa")).unwrap();
        assert_eq!(c.token_file, Some(PathBuf::from("/sa/token")));
    }
}
