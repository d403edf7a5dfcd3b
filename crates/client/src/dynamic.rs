//! Resources found at run time: discovery of what the API server serves (built-in
//! kinds and custom resources alike) and [`ObjectMetadata`], the kind-agnostic view of
//! an object that the garbage collector and the namespace controller work with.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::{Client, Error};

/// One resource the API server serves, as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiResource {
    pub group: String,
    pub version: String,
    /// The plural (`replicasets`).
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
}

impl ApiResource {
    /// `group/version`, or `version` for the core group (an `apiVersion`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether the resource supports every one of `verbs`.
    pub fn supports(&self, verbs: &[&str]) -> bool {
        verbs
            .iter()
            .all(|v| self.verbs.iter().any(|have| have == v))
    }
}

/// The group of an `apiVersion` (`apps/v1` → `apps`, `v1` → the core group `""`).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Every resource the API server serves (no subresources), each group's versions in
/// the server's order of preference.
pub async fn discover(client: &Client) -> Result<Vec<ApiResource>, Error> {
    let answer = client
        .call(ferrokube_proto::resources::Request {
            r#ref: None,
            verb: "discovery".into(),
            ..Default::default()
        })
        .await?;
    let doc: serde_json::Value = crate::api::decode(&answer)?;
    Ok(parse_discovery(&doc))
}

fn parse_discovery(doc: &serde_json::Value) -> Vec<ApiResource> {
    let mut out = Vec::new();
    let str_of = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    for group in doc["items"].as_array().into_iter().flatten() {
        let g = group["metadata"]["name"].as_str().unwrap_or_default();
        for version in group["versions"].as_array().into_iter().flatten() {
            for r in version["resources"].as_array().into_iter().flatten() {
                out.push(ApiResource {
                    group: g.to_string(),
                    version: str_of(version, "version"),
                    plural: str_of(r, "resource"),
                    kind: str_of(&r["responseKind"], "kind"),
                    namespaced: r["scope"] == "Namespaced",
                    verbs: r["verbs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect(),
                });
            }
        }
    }
    out
}

/// Of each group's resources, the one of the preferred version (the first served).
pub fn preferred(resources: &[ApiResource]) -> Vec<ApiResource> {
    let mut seen = std::collections::HashSet::new();
    resources
        .iter()
        .filter(|r| seen.insert((r.group.clone(), r.plural.clone())))
        .cloned()
        .collect()
}

/// Any object, seen only as its type and metadata (the rest of the body, and the
/// metadata's `managedFields`, are dropped when decoding, so caches of every kind stay
/// small).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectMetadata {
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, deserialize_with = "without_managed_fields")]
    pub metadata: ObjectMeta,
}

fn without_managed_fields<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let mut m = ObjectMeta::deserialize(d)?;
    m.managed_fields = None;
    Ok(m)
}

impl crate::informer::Object for ObjectMetadata {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn discovery_lists_resources_in_preferred_order() {
        let doc = json!({"items": [
            {"metadata": {}, "versions": [{"version": "v1", "resources": [
                {"resource": "pods", "responseKind": {"group": "", "version": "v1", "kind": "Pod"},
                 "scope": "Namespaced", "verbs": ["get", "list", "watch", "delete"]}]}]},
            {"metadata": {"name": "autoscaling"}, "versions": [
                {"version": "v2", "resources": [{"resource": "horizontalpodautoscalers",
                  "responseKind": {"kind": "HorizontalPodAutoscaler"}, "scope": "Namespaced", "verbs": ["list"]}]},
                {"version": "v1", "resources": [{"resource": "horizontalpodautoscalers",
                  "responseKind": {"kind": "HorizontalPodAutoscaler"}, "scope": "Namespaced", "verbs": ["list"]}]}]},
            {"metadata": {"name": "rbac.authorization.k8s.io"}, "versions": [{"version": "v1", "resources": [
                {"resource": "clusterroles", "responseKind": {"kind": "ClusterRole"}, "scope": "Cluster", "verbs": []}]}]},
        ]});
        let all = parse_discovery(&doc);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].api_version(), "v1");
        assert!(all[0].namespaced && all[0].supports(&["list", "delete"]));
        assert!(!all[0].supports(&["deletecollection"]));
        assert!(!all[3].namespaced);
        let p = preferred(&all);
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].api_version(), "autoscaling/v2");
        assert_eq!(group_of("apps/v1"), "apps");
        assert_eq!(group_of("v1"), "");
    }

    #[test]
    fn metadata_view_drops_the_body() {
        let o: ObjectMetadata = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "uid": "u", "managedFields": [{"manager": "m"}]},
            "data": {"big": "x"},
        }))
        .unwrap();
        assert_eq!(o.metadata.uid.as_deref(), Some("u"));
        assert!(o.metadata.managed_fields.is_none());
        assert_eq!(
            serde_json::to_value(&o).unwrap()["data"],
            serde_json::Value::Null
        );
    }
}
