//! The RBAC authorizer: Roles, ClusterRoles, RoleBindings and ClusterRoleBindings
//! (`rbac.authorization.k8s.io/v1`) decide what users other than `system:masters` may do,
//! with upstream's matching rules (verbs, apiGroups, `resource/subresource`, `*/sub`,
//! resourceNames, nonResourceURLs with a trailing `*`). The objects are read from the
//! store at most once a second, so a new binding takes effect within a second. The
//! bootstrap roles are upstream's defaults (trimmed to the resources served here).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::{Attributes, User};
use crate::rest::Resources;

/// One PolicyRule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
}

/// One binding: the role it grants (kind, name) and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    /// The RoleBinding's namespace; `None` for a ClusterRoleBinding.
    namespace: Option<String>,
    role_kind: String,
    role_name: String,
    subjects: Vec<Value>,
}

/// Every RBAC object, as last read.
#[derive(Debug, Default)]
struct Snapshot {
    cluster_roles: HashMap<String, Vec<Rule>>,
    roles: HashMap<(String, String), Vec<Rule>>,
    bindings: Vec<Binding>,
}

/// The authorizer, with its cached snapshot.
#[derive(Default)]
pub struct Rbac {
    cached: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

/// How long a snapshot is used before the store is read again.
const REFRESH: Duration = Duration::from_secs(1);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

fn rules(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Rule {
            verbs: strings(&r["verbs"]),
            api_groups: strings(&r["apiGroups"]),
            resources: strings(&r["resources"]),
            resource_names: strings(&r["resourceNames"]),
            non_resource_urls: strings(&r["nonResourceURLs"]),
        })
        .collect()
}

fn binding(b: &Value, namespace: Option<&str>) -> Binding {
    Binding {
        namespace: namespace.map(String::from),
        role_kind: b["roleRef"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        role_name: b["roleRef"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        subjects: b["subjects"].as_array().cloned().unwrap_or_default(),
    }
}

impl Snapshot {
    /// Builds the snapshot from the four kinds' objects.
    fn from_objects(
        cluster_roles: &[Value],
        roles: &[Value],
        cluster_bindings: &[Value],
        bindings: &[Value],
    ) -> Snapshot {
        let name = |o: &Value| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let ns = |o: &Value| {
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        Snapshot {
            cluster_roles: cluster_roles.iter().map(|r| (name(r), rules(r))).collect(),
            roles: roles.iter().map(|r| ((ns(r), name(r)), rules(r))).collect(),
            bindings: cluster_bindings
                .iter()
                .map(|b| binding(b, None))
                .chain(bindings.iter().map(|b| binding(b, Some(&ns(b)))))
                .collect(),
        }
    }

    /// The rules granted to `user` that apply in `namespace` (`None`: cluster scope).
    fn rules_for(&self, user: &User, namespace: Option<&str>) -> Vec<&Rule> {
        let mut out = Vec::new();
        for b in &self.bindings {
            if let Some(bns) = &b.namespace {
                if namespace != Some(bns.as_str()) {
                    continue;
                }
            }
            if !b
                .subjects
                .iter()
                .any(|s| applies(s, user, b.namespace.as_deref()))
            {
                continue;
            }
            let rules = match (b.role_kind.as_str(), &b.namespace) {
                ("ClusterRole", _) => self.cluster_roles.get(&b.role_name),
                ("Role", Some(ns)) => self.roles.get(&(ns.clone(), b.role_name.clone())),
                _ => None,
            };
            out.extend(rules.into_iter().flatten());
        }
        out
    }

    fn allows_resource(&self, user: &User, a: &Attributes<'_>) -> bool {
        let combined = match a.subresource {
            Some(s) => format!("{}/{s}", a.resource),
            None => a.resource.to_string(),
        };
        self.rules_for(user, a.namespace).iter().any(|r| {
            has(&r.verbs, a.verb)
                && has(&r.api_groups, a.group)
                && r.resources.iter().any(|res| {
                    res == "*"
                        || *res == combined
                        || a.subresource.is_some_and(|s| *res == format!("*/{s}"))
                })
                && (r.resource_names.is_empty()
                    || a.name
                        .is_some_and(|n| r.resource_names.iter().any(|x| x == n)))
        })
    }

    fn allows_path(&self, user: &User, verb: &str, path: &str) -> bool {
        self.rules_for(user, None).iter().any(|r| {
            has(&r.verbs, verb)
                && r.non_resource_urls.iter().any(|u| {
                    u == "*"
                        || u == path
                        || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                })
        })
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == "*" || v == want)
}

/// Whether a binding's subject is this user (a ServiceAccount subject without a
/// namespace takes the RoleBinding's).
fn applies(s: &Value, user: &User, binding_ns: Option<&str>) -> bool {
    let name = s["name"].as_str().unwrap_or_default();
    match s["kind"].as_str().unwrap_or_default() {
        "User" => user.name == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = s["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .or(binding_ns)
                .unwrap_or_default();
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

impl Rbac {
    async fn snapshot(&self, res: &Resources) -> Arc<Snapshot> {
        let mut cached = self.cached.lock().await;
        if let Some((at, s)) = cached.as_ref() {
            if at.elapsed() < REFRESH {
                return s.clone();
            }
        }
        let list = |plural: &'static str| async move {
            let r = ferrokube_api::registry::builtin("rbac.authorization.k8s.io", plural);
            let prefix = ferrokube_api::keys::list_prefix(&r, None);
            match res.objects.list(&prefix, "", 0, 0).await {
                Ok(page) => page.items.into_iter().map(|s| s.object).collect(),
                Err(e) => {
                    tracing::warn!(?e, "reading {plural} for RBAC");
                    Vec::new()
                }
            }
        };
        let snap = Arc::new(Snapshot::from_objects(
            &list("clusterroles").await,
            &list("roles").await,
            &list("clusterrolebindings").await,
            &list("rolebindings").await,
        ));
        *cached = Some((Instant::now(), snap.clone()));
        snap
    }

    /// Whether RBAC grants the resource request.
    pub async fn allows_resource(&self, res: &Resources, user: &User, a: &Attributes<'_>) -> bool {
        self.snapshot(res).await.allows_resource(user, a)
    }

    /// Whether RBAC grants the non-resource request.
    pub async fn allows_path(&self, res: &Resources, user: &User, verb: &str, path: &str) -> bool {
        self.snapshot(res).await.allows_path(user, verb, path)
    }
}

/// Read-only access to a namespace's workloads and configuration (not Secrets).
fn view_rules() -> Value {
    let read = json!(["get", "list", "watch"]);
    json!([
        {"apiGroups": [""], "resources": ["configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services", "services/status", "pods/log", "pods/status", "replicationcontrollers/status", "bindings", "events", "limitranges", "resourcequotas", "resourcequotas/status", "namespaces", "namespaces/status"], "verbs": read},
        {"apiGroups": ["apps"], "resources": ["controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale", "deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status"], "verbs": read},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], "verbs": read},
        {"apiGroups": ["batch"], "resources": ["cronjobs", "cronjobs/status", "jobs", "jobs/status"], "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingresses/status", "networkpolicies"], "verbs": read},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets", "poddisruptionbudgets/status"], "verbs": read},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": read},
    ])
}

/// `view` plus writing workloads, configuration and Secrets.
fn edit_rules() -> Value {
    let write = json!(["create", "delete", "deletecollection", "patch", "update"]);
    let mut rules = view_rules().as_array().cloned().unwrap_or_default();
    rules.extend([
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": [""], "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "pods/eviction"], "verbs": ["create", "delete", "deletecollection", "patch", "update", "get"]}),
        json!({"apiGroups": [""], "resources": ["configmaps", "endpoints", "persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale", "secrets", "serviceaccounts", "services", "services/proxy"], "verbs": write}),
        json!({"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}),
        json!({"apiGroups": ["apps"], "resources": ["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale"], "verbs": write}),
        json!({"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": write}),
        json!({"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": write}),
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": write}),
        json!({"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": write}),
        json!({"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": write}),
    ]);
    Value::Array(rules)
}

/// `edit` plus Roles and RoleBindings of the namespace.
fn admin_rules() -> Value {
    let mut rules = edit_rules().as_array().cloned().unwrap_or_default();
    rules.push(json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings", "roles"], "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}));
    rules.push(json!({"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]}));
    Value::Array(rules)
}

/// Upstream's default ClusterRoles (name, labels, rules) that this API server serves.
pub fn bootstrap_cluster_roles() -> Vec<(&'static str, Value)> {
    let bootstrapping = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let role = |rules: Value| json!({"labels": bootstrapping.clone(), "rules": rules});
    vec![
        (
            "cluster-admin",
            role(json!([
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ])),
        ),
        ("admin", role(admin_rules())),
        ("edit", role(edit_rules())),
        ("view", role(view_rules())),
        (
            "system:discovery",
            role(
                json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
            ),
        ),
        (
            "system:public-info-viewer",
            role(
                json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
            ),
        ),
        (
            "system:basic-user",
            role(json!([
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ])),
        ),
    ]
}

/// Upstream's default ClusterRoleBindings: (name, role, subject groups).
pub const BOOTSTRAP_BINDINGS: &[(&str, &str, &[&str])] = &[
    ("cluster-admin", "cluster-admin", &["system:masters"]),
    (
        "system:discovery",
        "system:discovery",
        &["system:authenticated"],
    ),
    (
        "system:basic-user",
        "system:basic-user",
        &["system:authenticated"],
    ),
    (
        "system:public-info-viewer",
        "system:public-info-viewer",
        &["system:authenticated", "system:unauthenticated"],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn attrs<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: Option<&'a str>,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource,
            subresource: sub,
            namespace: ns,
            name,
        }
    }

    fn snapshot() -> Snapshot {
        let view = json!({"metadata": {"name": "view"}, "rules": view_rules()});
        let dns = json!({"metadata": {"name": "system:coredns"}, "rules": [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]});
        let sub = json!({"metadata": {"name": "logs"}, "rules": [
            {"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["get"]},
            {"nonResourceURLs": ["/metrics", "/logs/*"], "verbs": ["get"]}]});
        let role = json!({"metadata": {"name": "pod-reader", "namespace": "team"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
        let crb = json!({"metadata": {"name": "system:coredns"}, "roleRef": {"kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]});
        let crb2 = json!({"metadata": {"name": "logs"}, "roleRef": {"kind": "ClusterRole", "name": "logs"},
            "subjects": [{"kind": "Group", "name": "ops"}]});
        let rb = json!({"metadata": {"name": "reader", "namespace": "team"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader"}, {"kind": "User", "name": "jane"}]});
        let rb2 = json!({"metadata": {"name": "pods", "namespace": "team"}, "roleRef": {"kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "User", "name": "bob"}]});
        Snapshot::from_objects(&[view, dns, sub], &[role], &[crb, crb2], &[rb, rb2])
    }

    #[test]
    fn bindings_grant_their_roles_where_they_apply() {
        let s = snapshot();
        let dns = user("system:serviceaccount:kube-system:coredns", &[]);
        assert!(s.allows_resource(&dns, &attrs("list", "", "services", None, None, None)));
        assert!(s.allows_resource(
            &dns,
            &attrs(
                "watch",
                "discovery.k8s.io",
                "endpointslices",
                None,
                None,
                None
            )
        ));
        assert!(!s.allows_resource(
            &dns,
            &attrs("create", "", "services", None, Some("x"), None)
        ));
        assert!(!s.allows_resource(&dns, &attrs("list", "", "secrets", None, None, None)));
        // A RoleBinding's ServiceAccount subject defaults to the binding's namespace, and
        // grants only there.
        let reader = user("system:serviceaccount:team:reader", &[]);
        assert!(s.allows_resource(
            &reader,
            &attrs("list", "", "configmaps", None, Some("team"), None)
        ));
        assert!(!s.allows_resource(
            &reader,
            &attrs("list", "", "configmaps", None, Some("other"), None)
        ));
        assert!(!s.allows_resource(&reader, &attrs("list", "", "configmaps", None, None, None)));
        assert!(!s.allows_resource(
            &reader,
            &attrs("get", "", "secrets", None, Some("team"), Some("s"))
        ));
        let bob = user("bob", &[]);
        assert!(s.allows_resource(
            &bob,
            &attrs("get", "", "pods", None, Some("team"), Some("p"))
        ));
        assert!(!s.allows_resource(&bob, &attrs("list", "", "pods", None, Some("team"), None)));
    }

    #[test]
    fn subresources_resource_names_and_paths() {
        let s = snapshot();
        let ops = user("ann", &["ops"]);
        assert!(s.allows_resource(
            &ops,
            &attrs("get", "", "pods", Some("log"), Some("a"), Some("p"))
        ));
        assert!(!s.allows_resource(&ops, &attrs("get", "", "pods", None, Some("a"), Some("p"))));
        assert!(s.allows_resource(
            &ops,
            &attrs("get", "", "configmaps", None, Some("a"), Some("one"))
        ));
        assert!(!s.allows_resource(
            &ops,
            &attrs("get", "", "configmaps", None, Some("a"), Some("two"))
        ));
        assert!(!s.allows_resource(
            &ops,
            &attrs("list", "", "configmaps", None, Some("a"), None)
        ));
        assert!(s.allows_path(&ops, "get", "/metrics"));
        assert!(s.allows_path(&ops, "get", "/logs/kube.log"));
        assert!(!s.allows_path(&ops, "get", "/debug"));
        assert!(!s.allows_path(&ops, "post", "/metrics"));
    }
}
