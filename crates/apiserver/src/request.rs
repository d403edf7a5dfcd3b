//! What a request asks for, read from its path and query the way upstream's
//! `RequestInfoFactory` reads them: `/api/v1/namespaces/{ns}/{resource}/{name}/{sub}`,
//! `/apis/{group}/{version}/...`, the deprecated `/watch/` prefix, and the verb from the
//! method.

use std::collections::HashMap;

use http::Method;

/// A request for a resource (or a collection of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Anything after the subresource (the path of a `proxy` request).
    pub rest: Option<String>,
    /// The deprecated `/watch/` path prefix was used.
    pub watch_prefix: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/api`: the legacy group's versions.
    Api,
    /// `/apis`: every group.
    Apis,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`: the resources of a group/version.
    GroupVersion(String, String),
    Resource(ResourcePath),
    /// Any other path (health, version, OpenAPI, metrics, or nothing).
    Other,
}

/// Reads the route from a path.
pub fn route(path: &str) -> Route {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => return Route::Api,
        ["apis"] => return Route::Apis,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v] => return Route::GroupVersion(String::new(), v.to_string()),
        ["apis", g, v] => return Route::GroupVersion(g.to_string(), v.to_string()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Other,
    };
    let mut rest = rest;
    let watch_prefix = rest.first() == Some(&"watch");
    if watch_prefix {
        rest = &rest[1..];
    }
    if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
        return Route::Other;
    }
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        // `/namespaces/{ns}/status` and `/finalize` are subresources of the namespace.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        } else {
            // The namespace object itself.
            return Route::Resource(ResourcePath {
                group: group.into(),
                version: version.into(),
                namespace: None,
                resource: "namespaces".into(),
                name: namespace,
                subresource: rest.get(2).map(|s| s.to_string()),
                rest: None,
                watch_prefix,
            });
        }
    }
    Route::Resource(ResourcePath {
        group: group.into(),
        version: version.into(),
        namespace,
        resource: rest[0].to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
        rest: (rest.len() > 3).then(|| rest[3..].join("/")),
        watch_prefix,
    })
}

/// The verb of a resource request, as authorization and audit name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// Reads the verb from the method, the path and the `watch` parameter.
    pub fn of(method: &Method, path: &ResourcePath, query: &Query) -> Option<Verb> {
        let collection = path.name.is_none();
        Some(match *method {
            Method::GET | Method::HEAD => {
                if path.watch_prefix || query.flag("watch") {
                    Verb::Watch
                } else if collection {
                    Verb::List
                } else {
                    Verb::Get
                }
            }
            Method::POST => Verb::Create,
            Method::PUT => Verb::Update,
            Method::PATCH => Verb::Patch,
            Method::DELETE if collection => Verb::DeleteCollection,
            Method::DELETE => Verb::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// Query parameters, decoded (`+` is a space, as Go's `url.Values` encodes it), in
/// order; a repeated parameter keeps every value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Query(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    /// Parameters given as a map (the gRPC resource service).
    pub fn from_map(m: HashMap<String, String>) -> Query {
        Query(m.into_iter().collect())
    }

    /// A parameter's first value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// Every value of a parameter, in order (`command=sh&command=-c`).
    pub fn all(&self, k: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A parameter, empty when absent.
    pub fn str(&self, k: &str) -> &str {
        self.get(k).unwrap_or_default()
    }

    /// A boolean parameter (`watch=1`, `watch=true`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match route(path) {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths_read_like_upstream() {
        let r = res("/api/v1/namespaces/default/pods/web/log");
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (Some("default"), "pods", Some("web"), Some("log"))
        );
        let r = res("/apis/apps/v1/deployments");
        assert_eq!(
            (r.group.as_str(), r.namespace, r.name),
            ("apps", None, None)
        );
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let r = res("/api/v1/namespaces/x/status");
        assert_eq!(
            (r.resource.as_str(), r.subresource.as_deref()),
            ("namespaces", Some("status"))
        );
        let r = res("/api/v1/namespaces");
        assert_eq!((r.resource.as_str(), r.name), ("namespaces", None));
        let r = res("/api/v1/watch/namespaces/default/pods");
        assert!(r.watch_prefix);
        assert_eq!(r.resource, "pods");
        let r = res("/api/v1/namespaces/default/services/web:80/proxy/a/b");
        assert_eq!(r.rest.as_deref(), Some("a/b"));
        assert_eq!(route("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(
            route("/api/v1"),
            Route::GroupVersion("".into(), "v1".into())
        );
        assert_eq!(route("/healthz"), Route::Other);
    }

    #[test]
    fn queries_decode_like_go() {
        let q = Query::parse(Some("labelSelector=app+in+%28a%2Cb%29&watch=1&limit=5"));
        assert_eq!(q.str("labelSelector"), "app in (a,b)");
        assert!(q.flag("watch"));
        assert_eq!(q.get("limit"), Some("5"));
        assert_eq!(q.get("nope"), None);
    }
}
