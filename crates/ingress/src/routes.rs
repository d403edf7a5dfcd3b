//! The routing table of the Ingresses a controller serves: which backend a request's
//! host and path go to, with upstream's matching rules laid out as ingress-nginx lays
//! them out, one virtual server per host —
//! - the server: the request's host exactly (case-insensitive, port ignored), else a
//!   `*.` wildcard host matching exactly one more label, else the catch-all server of
//!   the host-less rules;
//! - paths within it: `Exact` matches the path exactly; `Prefix` matches element-wise on
//!   `/` (`/foo` matches `/foo`, `/foo/`, `/foo/bar`, not `/foobar`; a trailing `/` in the
//!   rule is ignored); `ImplementationSpecific` is treated as `Prefix` here; the longest
//!   path wins, `Exact` before `Prefix` at equal length, the oldest Ingress on ties;
//! - no path matches: the server's default — for a host, the `defaultBackend` of the
//!   (oldest) Ingress that brought the host; for the catch-all server, the
//!   `defaultBackend` of the oldest Ingress with no rules — else nothing (404).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

/// Where matched traffic goes: a Service port in the Ingress's namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub port: ServicePortRef,
}

/// A Service port by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServicePortRef {
    Number(i32),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Prefix,
    Exact,
}

#[derive(Debug, Clone)]
struct PathRule {
    path: String,
    kind: Kind,
    backend: Backend,
}

/// One virtual server: its path rules and what the rest of its paths go to.
#[derive(Debug, Default, Clone)]
struct Server {
    rules: Vec<PathRule>,
    default: Option<Backend>,
}

impl Server {
    fn lookup(&self, path: &str) -> Option<&Backend> {
        best(&self.rules, path).or(self.default.as_ref())
    }
}

/// Every served Ingress's rules, by virtual server.
#[derive(Debug, Default, Clone)]
pub struct Routes {
    exact_hosts: BTreeMap<String, Server>,
    /// `*.example.com` → its server, keyed by the suffix after `*`.
    wildcard_hosts: BTreeMap<String, Server>,
    catch_all: Server,
}

fn backend(ns: &str, b: &IngressBackend) -> Option<Backend> {
    let s = b.service.as_ref()?;
    let port = s.port.as_ref()?;
    let port = match (&port.name, port.number) {
        (Some(n), _) if !n.is_empty() => ServicePortRef::Name(n.clone()),
        (_, Some(n)) => ServicePortRef::Number(n),
        _ => return None,
    };
    Some(Backend {
        namespace: ns.to_string(),
        service: s.name.clone(),
        port,
    })
}

impl Routes {
    /// Builds the table from the Ingresses this controller serves (sorted here oldest
    /// first: the order decides defaults and ties).
    pub fn build<'a>(ingresses: impl IntoIterator<Item = &'a Ingress>) -> Routes {
        let mut list: Vec<&Ingress> = ingresses.into_iter().collect();
        list.sort_by_key(|i| {
            (
                i.metadata.creation_timestamp.clone().map(|t| t.0),
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            )
        });
        let mut r = Routes::default();
        for ing in list {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = &ing.spec else { continue };
            let default = spec.default_backend.as_ref().and_then(|b| backend(ns, b));
            let rules = spec.rules.as_deref().unwrap_or_default();
            if rules.is_empty() && r.catch_all.default.is_none() {
                r.catch_all.default = default.clone();
            }
            for rule in rules {
                let server = match rule.host.as_deref().map(str::to_ascii_lowercase) {
                    None => &mut r.catch_all,
                    Some(h) if h.is_empty() => &mut r.catch_all,
                    Some(h) => {
                        let (map, key) = match h.strip_prefix('*') {
                            Some(suffix) => (&mut r.wildcard_hosts, suffix.to_string()),
                            None => (&mut r.exact_hosts, h),
                        };
                        // The Ingress that brings a host gives it its default.
                        map.entry(key).or_insert_with(|| Server {
                            rules: Vec::new(),
                            default: default.clone(),
                        })
                    }
                };
                let Some(http) = &rule.http else { continue };
                server.rules.extend(http.paths.iter().filter_map(|p| {
                    Some(PathRule {
                        path: p.path.clone().unwrap_or_else(|| "/".into()),
                        kind: if p.path_type == "Exact" {
                            Kind::Exact
                        } else {
                            Kind::Prefix
                        },
                        backend: backend(ns, &p.backend)?,
                    })
                }));
            }
        }
        r
    }

    /// The backend of a request for `host` (a Host header: the port is ignored) and
    /// `path`.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = bare_host(host).to_ascii_lowercase();
        if let Some(s) = self.exact_hosts.get(&host) {
            return s.lookup(path);
        }
        let wildcard = host.split_once('.').and_then(|(first, rest)| {
            (!first.is_empty())
                .then(|| self.wildcard_hosts.get(&format!(".{rest}")))
                .flatten()
        });
        wildcard.unwrap_or(&self.catch_all).lookup(path)
    }

    /// Every backend some request can reach, each once.
    pub fn backends(&self) -> std::collections::BTreeSet<&Backend> {
        self.exact_hosts
            .values()
            .chain(self.wildcard_hosts.values())
            .chain([&self.catch_all])
            .flat_map(|s| s.rules.iter().map(|r| &r.backend).chain(&s.default))
            .collect()
    }

    /// Whether nothing is routed (no rules and no default backend).
    pub fn is_empty(&self) -> bool {
        self.backends().is_empty()
    }
}

/// A Host header's host: without its port (an IPv6 literal keeps its brackets) and
/// trailing dot.
pub fn bare_host(host: &str) -> &str {
    let h = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => {
            if h.starts_with('[') && !h.ends_with(']') {
                host
            } else {
                h
            }
        }
        _ => host,
    };
    h.trim_end_matches('.')
}

/// Whether a `Prefix` rule path matches a request path element-wise.
fn prefix_matches(rule: &str, path: &str) -> bool {
    let rule = rule.trim_end_matches('/');
    if rule.is_empty() {
        return true; // "/" matches everything
    }
    match path.strip_prefix(rule) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// How a matching rule ranks: longer paths first, then Exact before Prefix.
fn key(r: &PathRule) -> (usize, Kind) {
    (r.path.trim_end_matches('/').len(), r.kind)
}

/// The longest matching rule (Exact before Prefix at equal length).
fn best<'a>(rules: &'a [PathRule], path: &str) -> Option<&'a Backend> {
    rules
        .iter()
        .filter(|r| match r.kind {
            Kind::Exact => r.path == path,
            Kind::Prefix => prefix_matches(&r.path, path),
        })
        // (The first of equals: rules are in Ingress age order, and the oldest wins.)
        .fold(None::<&PathRule>, |best, r| match best {
            Some(b) if key(b) >= key(r) => Some(b),
            _ => Some(r),
        })
        .map(|r| &r.backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(yaml: &str) -> Ingress {
        serde_norway::from_str(yaml).unwrap()
    }

    /// One Ingress with the given (pathType, path, service) rules for `host`.
    fn routes(host: Option<&str>, paths: &[(&str, &str, &str)]) -> Routes {
        let mut y = String::from("metadata: {name: i, namespace: default}\nspec:\n  rules:\n  - ");
        if let Some(h) = host {
            y.push_str(&format!("host: \"{h}\"\n    "));
        }
        y.push_str("http:\n      paths:\n");
        for (kind, path, svc) in paths {
            y.push_str(&format!(
                "      - {{path: \"{path}\", pathType: {kind}, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
            ));
        }
        Routes::build([&ingress(&y)])
    }

    fn to(r: &Routes, host: &str, path: &str) -> Option<String> {
        r.lookup(host, path).map(|b| b.service.clone())
    }

    #[test]
    fn upstreams_examples_table() {
        // https://kubernetes.io/docs/concepts/services-networking/ingress/#examples
        /// (rules as (pathType, path), request path, matches).
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, bool);
        let cases: &[Case] = &[
            (&[("Prefix", "/")], "/anything/at/all", true),
            (&[("Exact", "/foo")], "/foo", true),
            (&[("Exact", "/foo")], "/bar", false),
            (&[("Exact", "/foo")], "/foo/", false),
            (&[("Exact", "/foo/")], "/foo", false),
            (&[("Prefix", "/foo")], "/foo", true),
            (&[("Prefix", "/foo")], "/foo/", true),
            (&[("Prefix", "/foo/")], "/foo", true),
            (&[("Prefix", "/foo/")], "/foo/", true),
            (&[("Prefix", "/aaa/bb")], "/aaa/bbb", false),
            (&[("Prefix", "/aaa/bbb")], "/aaa/bbb", true),
            (&[("Prefix", "/aaa/bbb/")], "/aaa/bbb", true),
            (&[("Prefix", "/aaa/bbb")], "/aaa/bbb/", true),
            (&[("Prefix", "/aaa/bbb")], "/aaa/bbb/ccc", true),
            (&[("Prefix", "/aaa/bbb")], "/aaa/bbbxyz", false),
            (&[("Prefix", "/aaa")], "/ccc", false),
            (&[("ImplementationSpecific", "/foo")], "/foo/bar", true),
        ];
        for (rules, path, matches) in cases {
            let paths: Vec<(&str, &str, &str)> =
                rules.iter().map(|(k, p)| (*k, *p, "svc")).collect();
            let r = routes(None, &paths);
            assert_eq!(to(&r, "x", path).is_some(), *matches, "{rules:?} {path}");
        }
        // Several rules: the longest wins; Exact before Prefix.
        let r = routes(
            None,
            &[
                ("Prefix", "/", "root"),
                ("Prefix", "/aaa", "a"),
                ("Prefix", "/aaa/bbb", "b"),
            ],
        );
        assert_eq!(to(&r, "x", "/aaa/ccc").as_deref(), Some("a"));
        assert_eq!(to(&r, "x", "/aaa/bbb").as_deref(), Some("b"));
        assert_eq!(to(&r, "x", "/ccc").as_deref(), Some("root"));
        let r = routes(
            None,
            &[("Prefix", "/foo", "prefix"), ("Exact", "/foo", "exact")],
        );
        assert_eq!(to(&r, "x", "/foo").as_deref(), Some("exact"));
        assert_eq!(to(&r, "x", "/foo/x").as_deref(), Some("prefix"));
    }

    #[test]
    fn hosts_exact_wildcard_and_default_backend() {
        let exact = routes(Some("foo.bar.com"), &[("Prefix", "/", "foo")]);
        assert_eq!(to(&exact, "foo.bar.com", "/").as_deref(), Some("foo"));
        assert_eq!(to(&exact, "FOO.bar.com:8080", "/").as_deref(), Some("foo"));
        assert_eq!(to(&exact, "foo.bar.com.", "/").as_deref(), Some("foo"));
        assert_eq!(to(&exact, "bar.com", "/"), None);
        let wild = routes(Some("*.foo.com"), &[("Prefix", "/", "wild")]);
        assert_eq!(to(&wild, "bar.foo.com", "/").as_deref(), Some("wild"));
        assert_eq!(to(&wild, "baz.bar.foo.com", "/"), None, "one label only");
        assert_eq!(to(&wild, "foo.com", "/"), None);
        let all = Routes::build([
            &ingress(
                "metadata: {name: a, namespace: default, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  defaultBackend: {service: {name: a-default, port: {name: http}}}
  rules:
  - host: '*.foo.com'
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: wild, port: {number: 80}}}}]}
  - http: {paths: [{path: /any, pathType: Prefix, backend: {service: {name: any, port: {number: 80}}}}]}",
            ),
            &ingress(
                "metadata: {name: b, namespace: other, creationTimestamp: '2024-02-01T00:00:00Z'}
spec:
  rules:
  - host: a.foo.com
    http: {paths: [{path: /app, pathType: Exact, backend: {service: {name: app, port: {number: 8080}}}}]}",
            ),
            &ingress(
                "metadata: {name: c, namespace: other, creationTimestamp: '2024-03-01T00:00:00Z'}
spec:
  defaultBackend: {service: {name: catch-all, port: {number: 80}}}",
            ),
            &ingress(
                "metadata: {name: d, namespace: other, creationTimestamp: '2024-04-01T00:00:00Z'}
spec:
  defaultBackend: {service: {name: later, port: {number: 80}}}",
            ),
        ]);
        let app = all.lookup("a.foo.com", "/app").unwrap();
        assert_eq!(
            (app.namespace.as_str(), app.service.as_str(), &app.port),
            ("other", "app", &ServicePortRef::Number(8080))
        );
        // A host's server answers alone: no fall-through to the wildcard or the
        // catch-all; b set no defaultBackend, so 404.
        assert_eq!(to(&all, "a.foo.com", "/else"), None);
        // The wildcard's unmatched paths: the defaultBackend of the Ingress that brought it.
        let d = all.lookup("x.foo.com", "/").unwrap();
        assert_eq!(d.service, "wild");
        assert_eq!(to(&all, "x.org", "/any/thing").as_deref(), Some("any"));
        // The catch-all server's default: the oldest Ingress without rules.
        assert_eq!(to(&all, "x.org", "/nothing").as_deref(), Some("catch-all"));
        let backends: Vec<&str> = all.backends().iter().map(|b| b.service.as_str()).collect();
        assert_eq!(backends, ["a-default", "any", "wild", "app", "catch-all"]);
    }

    #[test]
    fn host_headers_lose_their_port() {
        assert_eq!(bare_host("foo.com:8080"), "foo.com");
        assert_eq!(bare_host("foo.com."), "foo.com");
        assert_eq!(bare_host("[::1]:80"), "[::1]");
        assert_eq!(bare_host("[::1]"), "[::1]");
        assert_eq!(bare_host("10.0.0.1"), "10.0.0.1");
    }
}
