//! The certificates HTTPS is served with, chosen by SNI: each served Ingress's `spec.tls`
//! entries name a `kubernetes.io/tls` Secret in the Ingress's namespace for a list of
//! hosts (exact or `*.` wildcards); an entry listing no hosts serves those of the
//! Ingress's rule hosts that its certificate's names cover. A name with no certificate
//! of its own, or a client sending no SNI, gets a self-signed "Kubernetes Ingress
//! Controller Fake Certificate" made at start, as ingress-nginx does. As ingress-nginx
//! does by default, plain HTTP to a host with a certificate is redirected to HTTPS
//! unless its Ingress says `nginx.ingress.kubernetes.io/ssl-redirect: "false"`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A TLS Secret that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("secret {0} not found")]
    Missing(String),
    #[error("secret {0} has no {1}")]
    NoKey(String, &'static str),
    #[error("secret {0}: {1}")]
    Invalid(String, String),
    #[error("self-signed certificate: {0}")]
    SelfSigned(String),
}

/// Loads a certificate chain and private key from PEM.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls.key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("tls.key does not match tls.crt: {e}"))?;
    Ok(ck)
}

/// The self-signed fallback certificate.
pub fn fake_certificate() -> Result<CertifiedKey, CertError> {
    let fail = |e: rcgen::Error| CertError::SelfSigned(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec!["ingress.local".to_string()]).map_err(fail)?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Acme Co");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Kubernetes Ingress Controller Fake Certificate",
    );
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .map_err(CertError::SelfSigned)
}

/// The annotation turning the HTTPS redirect off for an Ingress's hosts.
pub const SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/ssl-redirect";

/// The certificates by host.
#[derive(Debug, Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` → certificate, keyed by `.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Hosts (or `*.` patterns) whose plain HTTP is redirected to HTTPS.
    redirect: HashSet<String>,
}

/// Whether a certificate name (exact or `*.` wildcard) covers `host`.
fn covers(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix('*') {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && format!(".{rest}") == suffix),
        None => pattern == host,
    }
}

/// The DNS names a certificate is for (its subject alternative names).
fn dns_names(key: &CertifiedKey) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Some(leaf) = key.cert.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Keys loaded from Secrets, kept from one build to the next while a Secret's
/// resourceVersion stays: a rebuild (any Endpoints change causes one) parses only the
/// Secrets that changed.
#[derive(Debug, Default)]
pub struct KeyCache(HashMap<(String, String), (String, Arc<CertifiedKey>)>);

impl KeyCache {
    fn load(
        &mut self,
        ns: &str,
        name: &str,
        secret: &impl Fn(&str, &str) -> Option<Arc<Secret>>,
    ) -> Result<Arc<CertifiedKey>, CertError> {
        let id = format!("{ns}/{name}");
        let s = secret(ns, name).ok_or_else(|| CertError::Missing(id.clone()))?;
        let version = s.metadata.resource_version.clone().unwrap_or_default();
        let slot = (ns.to_string(), name.to_string());
        if let Some((v, key)) = self.0.get(&slot) {
            if !version.is_empty() && *v == version {
                return Ok(key.clone());
            }
        }
        let data = s.data.as_ref();
        let get = |k: &'static str| {
            data.and_then(|d| d.get(k))
                .map(|b| b.0.clone())
                .ok_or_else(|| CertError::NoKey(id.clone(), k))
        };
        let key = certified_key(&get("tls.crt")?, &get("tls.key")?)
            .map_err(|e| CertError::Invalid(id.clone(), e))?;
        let key = Arc::new(key);
        self.0.insert(slot, (version, key.clone()));
        Ok(key)
    }
}

impl Certificates {
    /// The certificates of the served Ingresses (oldest first: the first entry for a host
    /// wins), reading Secrets through `secret(namespace, name)` and keeping their keys in
    /// `cache` (keys no Ingress uses any more leave it). Entries that cannot be served are
    /// left out and reported.
    pub fn build<'a>(
        ingresses: impl IntoIterator<Item = &'a Ingress>,
        secret: impl Fn(&str, &str) -> Option<Arc<Secret>>,
        cache: &mut KeyCache,
    ) -> (Certificates, Vec<CertError>) {
        let mut out = Certificates::default();
        let mut problems = Vec::new();
        // One Secret may serve several entries: load it once.
        let mut loaded: HashMap<(String, String), Option<Arc<CertifiedKey>>> = HashMap::new();
        for ing in ingresses {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            for tls in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
                let Some(name) = tls.secret_name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let key = loaded
                    .entry((ns.to_string(), name.to_string()))
                    .or_insert_with(|| match cache.load(ns, name, &secret) {
                        Ok(k) => Some(k),
                        Err(e) => {
                            problems.push(e);
                            None
                        }
                    })
                    .clone();
                let Some(key) = key else { continue };
                let listed: Vec<String> = tls
                    .hosts
                    .iter()
                    .flatten()
                    .map(|h| h.to_ascii_lowercase())
                    .collect();
                let hosts = if listed.is_empty() {
                    // No hosts: the Ingress's rule hosts the certificate is for.
                    let names = dns_names(&key);
                    ing.spec
                        .iter()
                        .flat_map(|s| s.rules.iter().flatten())
                        .filter_map(|r| r.host.as_deref())
                        .map(str::to_ascii_lowercase)
                        .filter(|h| names.iter().any(|n| covers(n, h)))
                        .collect()
                } else {
                    listed
                };
                let redirect = ing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SSL_REDIRECT_ANNOTATION))
                    .is_none_or(|v| v != "false");
                for h in hosts {
                    if redirect {
                        out.redirect.insert(h.clone());
                    }
                    match h.strip_prefix('*') {
                        Some(suffix) => out.wildcard.entry(suffix.to_string()),
                        None => out.exact.entry(h),
                    }
                    .or_insert_with(|| key.clone());
                }
            }
        }
        cache.0.retain(|slot, _| loaded.contains_key(slot));
        (out, problems)
    }

    /// The certificate for an SNI name, if one is configured.
    pub fn for_name(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact.get(&name).or_else(|| {
            let (first, rest) = name.split_once('.')?;
            (!first.is_empty())
                .then(|| self.wildcard.get(&format!(".{rest}")))
                .flatten()
        })
    }

    /// Whether `name` has a certificate of its own.
    pub fn has(&self, name: &str) -> bool {
        self.for_name(name).is_some()
    }

    /// Whether plain HTTP for `host` is redirected to HTTPS.
    pub fn redirects(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.redirect.iter().any(|p| covers(p, &host))
    }
}

/// The rustls resolver over the current certificates (swapped in as they change).
#[derive(Debug)]
pub struct Resolver {
    current: RwLock<Arc<Certificates>>,
    fake: Arc<CertifiedKey>,
}

impl Resolver {
    /// A resolver with no certificates yet, falling back to `fake`.
    pub fn new(fake: CertifiedKey) -> Resolver {
        Resolver {
            current: RwLock::new(Arc::default()),
            fake: Arc::new(fake),
        }
    }

    /// Replaces the certificates.
    pub fn set(&self, certs: Certificates) {
        *self.current.write().expect("certificates lock") = Arc::new(certs);
    }

    /// The certificates now.
    pub fn current(&self) -> Arc<Certificates> {
        self.current.read().expect("certificates lock").clone()
    }

    /// The certificate served for an SNI name (`None`: no SNI).
    pub fn choose(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let certs = self.current();
        name.and_then(|n| certs.for_name(n))
            .unwrap_or(&self.fake)
            .clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn tls_secret(host: &str) -> Arc<Secret> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut s = Secret {
            type_: Some("kubernetes.io/tls".into()),
            ..Default::default()
        };
        s.data = Some(
            [
                ("tls.crt".to_string(), ByteString(cert.pem().into_bytes())),
                (
                    "tls.key".to_string(),
                    ByteString(key.serialize_pem().into_bytes()),
                ),
            ]
            .into(),
        );
        Arc::new(s)
    }

    fn leaf(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].to_vec()
    }

    #[test]
    fn names_choose_their_certificates_and_the_rest_fall_back() {
        let foo = tls_secret("foo.example.com");
        let wild = tls_secret("*.apps.example.com");
        let other = tls_secret("ignored");
        let ing: Ingress = serde_norway::from_str(
            "metadata: {name: i, namespace: web}
spec:
  tls:
  - {hosts: [foo.example.com], secretName: foo}
  - {hosts: ['*.apps.example.com'], secretName: wild}
  - {hosts: [gone.example.com], secretName: missing}
  - {hosts: [bad.example.com], secretName: bad}
  - {secretName: hostless}
  rules:
  - host: covered.example.com
  - host: uncovered.example.com",
        )
        .unwrap();
        let mut bad = (*other).clone();
        bad.data.as_mut().unwrap().remove("tls.key");
        let bad = Arc::new(bad);
        let hostless = tls_secret("covered.example.com");
        let lookup = |ns: &str, name: &str| {
            assert_eq!(ns, "web");
            match name {
                "foo" => Some(foo.clone()),
                "wild" => Some(wild.clone()),
                "bad" => Some(bad.clone()),
                "hostless" => Some(hostless.clone()),
                _ => None,
            }
        };
        let mut cache = KeyCache::default();
        let (certs, problems) = Certificates::build([&ing], lookup, &mut cache);
        let msgs: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "secret web/missing not found",
                "secret web/bad has no tls.key"
            ]
        );
        let r = Resolver::new(fake_certificate().unwrap());
        r.set(certs);
        let want = |s: &Secret| {
            let d = s.data.as_ref().unwrap();
            leaf(&certified_key(&d["tls.crt"].0, &d["tls.key"].0).unwrap())
        };
        assert_eq!(leaf(&r.choose(Some("FOO.example.com"))), want(&foo));
        assert_eq!(leaf(&r.choose(Some("x.apps.example.com"))), want(&wild));
        assert_eq!(leaf(&r.choose(Some("y.x.apps.example.com"))), leaf(&r.fake));
        assert_eq!(leaf(&r.choose(Some("gone.example.com"))), leaf(&r.fake));
        assert_eq!(leaf(&r.choose(None)), leaf(&r.fake));
        // A host-less entry: the rule hosts its certificate names.
        assert_eq!(
            leaf(&r.choose(Some("covered.example.com"))),
            want(&hostless)
        );
        assert_eq!(
            leaf(&r.choose(Some("uncovered.example.com"))),
            leaf(&r.fake)
        );
        let certs = r.current();
        assert!(certs.has("foo.example.com"));
        assert!(!certs.has("bar.example.com"));
        assert!(certs.redirects("foo.example.com") && certs.redirects("x.apps.example.com"));
        assert!(!certs.redirects("uncovered.example.com"));
        // The annotation turns the redirect off.
        let mut quiet = ing.clone();
        quiet.metadata.annotations =
            Some([(SSL_REDIRECT_ANNOTATION.into(), "false".into())].into());
        let (certs, _) = Certificates::build([&quiet], lookup, &mut KeyCache::default());
        assert!(certs.has("foo.example.com") && !certs.redirects("foo.example.com"));
    }

    #[test]
    fn keys_are_parsed_again_only_when_their_secret_changes() {
        let ing: Ingress = serde_norway::from_str(
            "metadata: {name: i, namespace: web}
spec: {tls: [{hosts: [foo.example.com], secretName: foo}]}",
        )
        .unwrap();
        let versioned = |v: &str| {
            let mut s = (*tls_secret("foo.example.com")).clone();
            s.metadata.resource_version = Some(v.into());
            Arc::new(s)
        };
        let (v1, v2) = (versioned("1"), versioned("2"));
        let mut cache = KeyCache::default();
        let key = |secret: &Arc<Secret>, cache: &mut KeyCache| {
            let (certs, _) = Certificates::build([&ing], |_, _| Some(secret.clone()), cache);
            certs.for_name("foo.example.com").unwrap().clone()
        };
        let first = key(&v1, &mut cache);
        assert!(Arc::ptr_eq(&first, &key(&v1, &mut cache)), "reused");
        let changed = key(&v2, &mut cache);
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_ne!(leaf(&first), leaf(&changed), "the new Secret's certificate");
        // No Ingress names it any more: it leaves the cache.
        let _ = Certificates::build([], |_, _| Some(v2.clone()), &mut cache);
        assert!(cache.0.is_empty());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = tls_secret("a");
        let b = tls_secret("b");
        let err = certified_key(
            &a.data.as_ref().unwrap()["tls.crt"].0,
            &b.data.as_ref().unwrap()["tls.key"].0,
        )
        .unwrap_err();
        assert!(err.starts_with("tls.key does not match tls.crt"), "{err}");
        assert!(certified_key(b"junk", b"junk").is_err());
    }
}
