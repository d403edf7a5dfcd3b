//! Discovery documents, built from the registry: the legacy `/api`, `/apis`,
//! `/apis/{group}` and per-group-version resource lists, and the aggregated form
//! (`apidiscovery.k8s.io/v2`) kubectl 1.32 asks for first. Only what is served is
//! listed: subresources appear once their handlers exist.

use ferrokube_api::{Registry, ResourceInfo};
use serde_json::{json, Value};

/// The aggregated discovery media type.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery first.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        first
            .replace(' ', "")
            .contains("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    })
}

/// A served subresource: its kind (group, version, kind) and verbs.
fn subresource(
    r: &ResourceInfo,
    sub: &str,
) -> Option<(
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
)> {
    const GPU: &[&str] = &["get", "patch", "update"];
    match sub {
        "status" => Some(("", "", "", GPU)),
        "scale" => Some(("autoscaling", "v1", "Scale", GPU)),
        "binding" if r.kind == "Pod" => Some(("", "v1", "Binding", &["create"])),
        "eviction" if r.kind == "Pod" => Some(("policy", "v1", "Eviction", &["create"])),
        "log" if r.kind == "Pod" => Some(("", "", "", &["get"])),
        "exec" if r.kind == "Pod" => Some(("", "v1", "PodExecOptions", &["create", "get"])),
        "attach" if r.kind == "Pod" => Some(("", "v1", "PodAttachOptions", &["create", "get"])),
        "portforward" if r.kind == "Pod" => {
            Some(("", "v1", "PodPortForwardOptions", &["create", "get"]))
        }
        _ => None,
    }
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0]})
}

fn groups(reg: &Registry) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for (g, v) in reg.group_versions() {
        if g.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(name, _)| *name == g) {
            Some((_, vs)) => vs.push(v),
            None => out.push((g, vec![v])),
        }
    }
    out
}

/// `/apis`.
pub fn api_group_list(reg: &Registry) -> Value {
    let gs: Vec<Value> = groups(reg)
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `/apis/{group}`.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let (g, vs) = groups(reg).into_iter().find(|(g, _)| *g == group)?;
    let mut v = group_entry(g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// `/api/v1` or `/apis/{group}/{version}`.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> = reg
        .resources()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in rs {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        resources.push(e);
        for sub in r.subresources {
            let Some((g, v, k, verbs)) = subresource(r, sub) else {
                continue;
            };
            let mut s = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": if k.is_empty() { r.kind } else { k },
                "verbs": verbs,
            });
            if !g.is_empty() {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            resources.push(s);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The aggregated document for `/api` (`legacy`) or `/apis`.
pub fn aggregated(reg: &Registry, legacy: bool) -> Value {
    let mut items = Vec::new();
    let gvs: Vec<(&str, Vec<&str>)> = if legacy {
        vec![("", vec!["v1"])]
    } else {
        groups(reg)
    };
    for (g, vs) in gvs {
        let versions: Vec<Value> = vs
            .iter()
            .map(|v| {
                let resources: Vec<Value> = reg
                    .resources()
                    .iter()
                    .filter(|r| r.group == g && r.version == *v)
                    .map(|r| {
                        let subs: Vec<Value> = r
                            .subresources
                            .iter()
                            .filter_map(|sub| {
                                let (sg, sv, sk, verbs) = subresource(r, sub)?;
                                let kind = if sk.is_empty() {
                                    json!({"group": r.group, "version": r.version, "kind": r.kind})
                                } else {
                                    json!({"group": sg, "version": sv, "kind": sk})
                                };
                                Some(json!({"subresource": sub, "responseKind": kind, "verbs": verbs}))
                            })
                            .collect();
                        let mut e = json!({
                            "resource": r.plural,
                            "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": r.singular,
                            "verbs": r.verbs,
                        });
                        if !r.short_names.is_empty() {
                            e["shortNames"] = json!(r.short_names);
                        }
                        if !r.categories.is_empty() {
                            e["categories"] = json!(r.categories);
                        }
                        if !subs.is_empty() {
                            e["subresources"] = json!(subs);
                        }
                        e
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        let mut item = json!({"metadata": {"creationTimestamp": null}, "versions": versions});
        if !g.is_empty() {
            item["metadata"]["name"] = json!(g);
        }
        items.push(item);
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_list_served_resources() {
        let reg = Registry::default();
        let core = resource_list(&reg, "", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"pods/binding")
        );
        assert!(names.contains(&"pods/exec") && names.contains(&"pods/log"));
        assert!(names.contains(&"pods/attach") && names.contains(&"pods/portforward"));
        assert!(!names.contains(&"pods/proxy"), "not served");
        let apps = resource_list(&reg, "apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert!(api_group(&reg, "apps").is_some());
        assert!(api_group(&reg, "nope").is_none());
        let agg = aggregated(&reg, false);
        assert!(agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["metadata"]["name"] == "apps"));
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
    }
}
