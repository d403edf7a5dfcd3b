//! Service-account tokens: JWTs kube-apiserver signs for `serviceaccounts/token`
//! (TokenRequest, what `kubectl create token` and the kubelet's projected
//! `serviceAccountToken` volumes ask for) and accepts as bearer credentials, as
//! upstream's `--service-account-signing-key-file` / `--service-account-key-file` /
//! `--service-account-issuer` / `--api-audiences` do; and the legacy tokens
//! kube-controller-manager (`--service-account-private-key-file`) puts in
//! `kubernetes.io/service-account-token` Secrets, with upstream's legacy claims and
//! issuer `kubernetes/serviceaccount`, no expiry and no audience. Keys are ECDSA P-256
//! (ES256); the key id is upstream's: the URL-safe SHA-256 of the public key's DER.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde_json::{json, Value};
use sha2::Digest as _;

/// The DER prefix of a P-256 public key (SubjectPublicKeyInfo) before its 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// What a token may be bound to: the kind, its claim under `kubernetes.io`, and its
/// core `v1` resource.
pub const BOUND_KINDS: [(&str, &str, &str); 3] = [
    ("Pod", "pod", "pods"),
    ("Secret", "secret", "secrets"),
    ("Node", "node", "nodes"),
];

/// The issuer kubeadm configures.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The issuer of legacy (Secret-held) tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Why a key or token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("service account key: {0}")]
    Key(String),
    #[error("invalid bearer token")]
    Invalid,
    #[error("token has expired")]
    Expired,
    #[error("token audiences {0:?} are not accepted")]
    Audience(Vec<String>),
}

/// The SubjectPublicKeyInfo DER of a P-256 point.
fn spki(point: &[u8]) -> Vec<u8> {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    der
}

/// The P-256 points of the `PUBLIC KEY` blocks of a PEM file.
pub fn public_keys_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, TokenError> {
    use rustls::pki_types::pem::{PemObject as _, SectionKind};
    let mut out = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| TokenError::Key(e.to_string()))?;
        if kind != SectionKind::PublicKey {
            continue;
        }
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 => out.push(point.to_vec()),
            _ => {
                return Err(TokenError::Key(
                    "only ECDSA P-256 public keys are supported".into(),
                ))
            }
        }
    }
    Ok(out)
}

/// Signs and verifies service-account tokens.
pub struct Tokens {
    key: EcdsaKeyPair,
    key_id: String,
    rng: SystemRandom,
    /// Points of the keys tokens may be signed with (the signing key's among them).
    verify_keys: Vec<Vec<u8>>,
    pub issuer: String,
    /// What a token must be meant for (`--api-audiences`; the issuer by default).
    pub audiences: Vec<String>,
}

impl Tokens {
    /// From the signing key (PKCS#8 PEM, `sa.key`) and extra verification keys.
    pub fn new(
        signing_pem: &[u8],
        extra_public_pem: Option<&[u8]>,
        issuer: &str,
        audiences: Vec<String>,
    ) -> Result<Tokens, TokenError> {
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(signing_pem)
            .map_err(|e| TokenError::Key(format!("sa.key: {e}")))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| TokenError::Key(format!("only ECDSA P-256 keys are supported: {e}")))?;
        let point = key.public_key().as_ref().to_vec();
        let key_id = B64.encode(sha2::Sha256::digest(spki(&point)));
        let mut verify_keys = vec![point];
        if let Some(pem) = extra_public_pem {
            for k in public_keys_from_pem(pem)? {
                if !verify_keys.contains(&k) {
                    verify_keys.push(k);
                }
            }
        }
        let audiences = if audiences.is_empty() {
            vec![issuer.to_string()]
        } else {
            audiences
        };
        Ok(Tokens {
            key,
            key_id,
            rng,
            verify_keys,
            issuer: issuer.to_string(),
            audiences,
        })
    }

    /// A signed token with these claims (the issuer is added).
    pub fn sign(&self, claims: &Value) -> String {
        let mut claims = claims.clone();
        claims["iss"] = json!(self.issuer);
        self.sign_as_is(&claims)
    }

    fn sign_as_is(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .expect("ECDSA signing does not fail");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    /// The claims of a token signed by one of the keys, checked in the signature only
    /// (the issuer and the rest are for the caller to check).
    fn signed_claims(&self, token: &str) -> Result<Value, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Invalid)?;
        if header["alg"] != "ES256" {
            return Err(TokenError::Invalid);
        }
        let sig = B64.decode(s).map_err(|_| TokenError::Invalid)?;
        let input = &token[..h.len() + 1 + c.len()];
        let signed = self.verify_keys.iter().any(|k| {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, k)
                .verify(input.as_bytes(), &sig)
                .is_ok()
        });
        if !signed {
            return Err(TokenError::Invalid);
        }
        B64.decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Invalid)
    }

    /// The claims of a legacy token (issuer `kubernetes/serviceaccount`) signed by one
    /// of the keys. Whether its Secret and account still exist is the caller's check.
    pub fn verify_legacy(&self, token: &str) -> Result<Value, TokenError> {
        let claims = self.signed_claims(token)?;
        if claims["iss"] != LEGACY_ISSUER {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }

    /// A legacy token for the account `(name, uid)` of `namespace`, held by the Secret
    /// `secret` (upstream's legacy claims).
    pub fn sign_legacy(&self, namespace: &str, account: (&str, &str), secret: &str) -> String {
        let (name, uid) = account;
        let claims = json!({
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": uid,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        self.sign_as_is(&claims)
    }

    /// The claims of a token signed by one of the keys, from this issuer, current at
    /// `now` (seconds since the epoch) and meant for one of the API's audiences.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let claims = self.signed_claims(token)?;
        if claims["iss"] != self.issuer.as_str() {
            return Err(TokenError::Invalid);
        }
        let (exp, nbf) = (claims["exp"].as_i64(), claims["nbf"].as_i64());
        if exp.is_none_or(|e| e <= now) {
            return Err(TokenError::Expired);
        }
        if nbf.is_some_and(|n| n > now + 60) {
            return Err(TokenError::Invalid);
        }
        let aud: Vec<String> = match &claims["aud"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => vec![],
        };
        if !aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(TokenError::Audience(aud));
        }
        Ok(claims)
    }
}

/// The claims of a token for a service account, bound to an object (a pod, a
/// secret or a node) when given, valid from `now` for `seconds`.
pub fn claims(
    namespace: &str,
    account: (&str, &str),
    bound: Option<(&str, &str, &str)>,
    audiences: &[String],
    now: i64,
    seconds: i64,
) -> Value {
    let (name, uid) = account;
    let mut k8s = json!({
        "namespace": namespace,
        "serviceaccount": {"name": name, "uid": uid},
    });
    if let Some((kind, bname, buid)) = bound {
        if let Some((_, claim, _)) = BOUND_KINDS.iter().find(|(k, _, _)| *k == kind) {
            k8s[*claim] = json!({"name": bname, "uid": buid});
        }
    }
    json!({
        "aud": audiences,
        "exp": now + seconds,
        "iat": now,
        "nbf": now,
        "jti": ferrokube_api::meta::new_uid(),
        "kubernetes.io": k8s,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(audiences: Vec<String>) -> (Tokens, String) {
        let kp = rcgen::KeyPair::generate().unwrap();
        let t = Tokens::new(
            kp.serialize_pem().as_bytes(),
            None,
            DEFAULT_ISSUER,
            audiences,
        )
        .unwrap();
        (t, kp.public_key_pem())
    }

    #[test]
    fn tokens_verify_only_as_signed_and_meant() {
        let (t, public_pem) = tokens(vec![]);
        assert_eq!(t.audiences, [DEFAULT_ISSUER]);
        let c = claims(
            "default",
            ("robot", "sa-uid"),
            Some(("Pod", "web", "pod-uid")),
            &[DEFAULT_ISSUER.to_string()],
            1_000,
            3600,
        );
        let tok = t.sign(&c);
        let got = t.verify(&tok, 1_010).unwrap();
        assert_eq!(got["sub"], "system:serviceaccount:default:robot");
        assert_eq!(got["kubernetes.io"]["pod"]["name"], "web");
        assert_eq!(got["iss"], DEFAULT_ISSUER);
        assert!(matches!(t.verify(&tok, 4_600), Err(TokenError::Expired)));
        // Tampered claims, a foreign key, other audiences: refused.
        let mut parts: Vec<&str> = tok.split('.').collect();
        let forged = B64.encode(
            c.to_string()
                .replace("robot", "admin")
                .replace("\"aud\"", "\"iss\":\"x\",\"aud\""),
        );
        parts[1] = &forged;
        assert!(matches!(
            t.verify(&parts.join("."), 1_010),
            Err(TokenError::Invalid)
        ));
        let (other, _) = tokens(vec![]);
        assert!(matches!(
            other.verify(&tok, 1_010),
            Err(TokenError::Invalid)
        ));
        let vault = t.sign(&claims(
            "default",
            ("robot", "u"),
            None,
            &["vault".into()],
            1_000,
            3600,
        ));
        assert!(matches!(
            t.verify(&vault, 1_010),
            Err(TokenError::Audience(_))
        ));
        assert!(matches!(t.verify("a.b", 1_010), Err(TokenError::Invalid)));
        // The public key file form verifies what the signing key signed.
        assert_eq!(
            public_keys_from_pem(public_pem.as_bytes()).unwrap(),
            t.verify_keys
        );
    }

    #[test]
    fn legacy_tokens_carry_upstreams_claims_and_verify_only_as_legacy() {
        let (t, _) = tokens(vec![]);
        let tok = t.sign_legacy("default", ("build-robot", "sa-uid"), "build-robot-secret");
        let c = t.verify_legacy(&tok).unwrap();
        assert_eq!(c["iss"], LEGACY_ISSUER);
        assert_eq!(c["sub"], "system:serviceaccount:default:build-robot");
        assert_eq!(
            c["kubernetes.io/serviceaccount/secret.name"],
            "build-robot-secret"
        );
        // Not a bound token (no expiry, no audience), and a bound one is not legacy.
        assert!(t.verify(&tok, 1_000).is_err());
        let bound = t.sign(&claims(
            "default",
            ("r", "u"),
            None,
            &[DEFAULT_ISSUER.into()],
            1_000,
            60,
        ));
        assert!(matches!(t.verify_legacy(&bound), Err(TokenError::Invalid)));
        let (other, _) = tokens(vec![]);
        assert!(other.verify_legacy(&tok).is_err());
    }
}
