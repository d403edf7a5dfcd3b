//! What a new cluster starts with, created through the ordinary create path (so it gets
//! uids, defaults and allocations like anything else): the four system namespaces, the
//! `kubernetes` Service at the first address of the service range with Endpoints and an
//! EndpointSlice naming this API server, the two system PriorityClasses, and upstream's
//! default ClusterRoles and ClusterRoleBindings. Existing objects are left alone.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use ferrokube_api::status::StatusError;
use http::{HeaderMap, Method};
use serde_json::{json, Value};

use crate::request::{Query, ResourcePath};
use crate::rest::{Call, Resources};

async fn ensure(
    res: &Arc<Resources>,
    group: &str,
    plural: &str,
    ns: Option<&str>,
    obj: Value,
) -> Result<(), StatusError> {
    let r = ferrokube_api::registry::builtin(group, plural);
    let path = ResourcePath {
        group: group.into(),
        version: r.version.into(),
        namespace: ns.map(String::from),
        resource: plural.into(),
        name: None,
        subresource: None,
        rest: None,
        watch_prefix: false,
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = ferrokube_api::keys::object_key(&r, ns.unwrap_or_default(), name);
    if res.objects.get(&key).await?.is_some() {
        return Ok(());
    }
    let call = Call {
        applied: false,
        method: &Method::POST,
        path: &path,
        query: &Query::parse(None),
        headers: &HeaderMap::new(),
        body: Bytes::from(serde_json::to_vec(&obj).expect("JSON")),
    };
    match res.create(&r, &call).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason() == "AlreadyExists" => Ok(()),
        // Another API server starting at the same time made it first (the Service's
        // IP is then taken by it): fine.
        Err(_) if res.objects.get(&key).await?.is_some() => Ok(()),
        Err(e) => {
            tracing::error!(?e, "bootstrap object {plural}/{name}");
            Err(e)
        }
    }
}

/// Creates the bootstrap objects that are missing.
pub async fn run(
    res: &Arc<Resources>,
    advertise: IpAddr,
    secure_port: u16,
) -> Result<(), StatusError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(
            res,
            "",
            "namespaces",
            None,
            json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    for (name, value, desc) in [
        ("system-node-critical", 2000001000, "Used for system critical pods that must not be moved from their current node."),
        ("system-cluster-critical", 2000000000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
    ] {
        ensure(
            res,
            "scheduling.k8s.io",
            "priorityclasses",
            None,
            json!({"metadata": {"name": name}, "value": value, "description": desc}),
        )
        .await?;
    }
    for (name, role) in crate::rbac::bootstrap_cluster_roles() {
        ensure(
            res,
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            json!({"metadata": {"name": name, "labels": role["labels"]}, "rules": role["rules"]}),
        )
        .await?;
    }
    for (name, role, groups) in crate::rbac::BOOTSTRAP_BINDINGS {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}))
            .collect();
        ensure(
            res,
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                   "subjects": subjects}),
        )
        .await?;
    }
    let ip = res.alloc.nth(1).to_string();
    ensure(
        res,
        "",
        "services",
        Some("default"),
        json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"type": "ClusterIP", "clusterIP": ip, "sessionAffinity": "None",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": secure_port}]}}),
    )
    .await?;
    let addr = advertise.to_string();
    ensure(
        res,
        "",
        "endpoints",
        Some("default"),
        json!({"metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
               "subsets": [{"addresses": [{"ip": addr}], "ports": [{"name": "https", "port": secure_port, "protocol": "TCP"}]}]}),
    )
    .await?;
    let family = if advertise.is_ipv4() { "IPv4" } else { "IPv6" };
    ensure(
        res,
        "discovery.k8s.io",
        "endpointslices",
        Some("default"),
        json!({"metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
               "addressType": family,
               "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
               "ports": [{"name": "https", "port": secure_port, "protocol": "TCP"}]}),
    )
    .await?;
    Ok(())
}
