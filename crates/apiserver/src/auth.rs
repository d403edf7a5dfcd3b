//! Who is calling, and whether they may: the authentication → authorization steps every
//! request passes before admission. Authentication reads the verified client
//! certificate (CN is the user, O the groups, as upstream's x509 authenticator);
//! requests without one are `system:anonymous`. Authorization admits `system:masters`
//! to everything, anyone to health and version, and authenticated users to discovery;
//! everything else is up to RBAC (`crate::rbac`).

use std::fmt::Write as _;

use x509_parser::prelude::{FromDer, X509Certificate};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// The user of requests without credentials.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// The user a verified client certificate names.
    pub fn from_certificate(der: &[u8]) -> Option<User> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_string();
        let mut groups: Vec<String> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(String::from))
            .collect();
        groups.push("system:authenticated".into());
        Some(User { name, groups })
    }

    fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// What a request does, for authorization.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// Paths anyone may read (upstream's `system:public-info-viewer` role).
fn public_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Paths any authenticated user may read (upstream's `system:discovery` role).
fn discovery_path(path: &str) -> bool {
    matches!(path, "/api" | "/apis" | "/openapi/v2" | "/openapi/v3")
        || path.starts_with("/api/") && !path.trim_start_matches("/api/").contains('/')
        || path.starts_with("/apis/") && path.trim_start_matches("/apis/").split('/').count() <= 2
        || path.starts_with("/openapi/v3/")
}

/// Authorizes a request for a resource; the error is upstream's forbidden message.
pub fn authorize_resource(user: &User, a: &Attributes<'_>) -> Result<(), String> {
    if user.is_master() {
        return Ok(());
    }
    let mut msg = format!(
        "User {:?} cannot {} resource {:?}",
        user.name, a.verb, a.resource
    );
    if let Some(s) = a.subresource {
        let _ = write!(msg, " subresource {s:?}");
    }
    let _ = write!(msg, " in API group {:?}", a.group);
    match a.namespace {
        Some(ns) => {
            let _ = write!(msg, " in the namespace {ns:?}");
        }
        None => msg.push_str(" at the cluster scope"),
    }
    Err(msg)
}

/// Authorizes a request for a non-resource path.
pub fn authorize_path(user: &User, verb: &str, path: &str) -> Result<(), String> {
    let authenticated = user.groups.iter().any(|g| g == "system:authenticated");
    if user.is_master()
        || (verb == "get" && public_path(path))
        || (verb == "get" && authenticated && discovery_path(path))
    {
        return Ok(());
    }
    Err(format!(
        "forbidden: User {:?} cannot {verb} path {path:?}",
        user.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_may_do_anything_and_others_only_read_public_paths() {
        let admin = User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into()],
        };
        let anon = User::anonymous();
        let a = Attributes {
            verb: "list",
            group: "",
            resource: "pods",
            subresource: None,
            namespace: Some("default"),
            name: None,
        };
        assert!(authorize_resource(&admin, &a).is_ok());
        assert_eq!(
            authorize_resource(&anon, &a).unwrap_err(),
            "User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert!(authorize_path(&anon, "get", "/healthz").is_ok());
        assert!(authorize_path(&anon, "get", "/apis/apps/v1").is_err());
        let user = User {
            name: "jane".into(),
            groups: vec!["system:authenticated".into()],
        };
        assert!(authorize_path(&user, "get", "/apis/apps/v1").is_ok());
        assert!(authorize_path(&user, "get", "/apis/apps/v1/deployments").is_err());
        assert!(authorize_path(&anon, "get", "/metrics").is_err());
    }
}
