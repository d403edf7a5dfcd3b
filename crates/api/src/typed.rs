//! Decoding request bodies against the built-in types, as upstream's decoder does: a
//! value of the wrong type is an error, and fields the type does not have are reported
//! (for `fieldValidation=Strict`) or dropped (`Warn`, `Ignore`).

use serde_json::Value;

/// What decoding against the kind's type found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The object with unknown fields removed.
    pub object: Value,
    /// Paths of the unknown fields, as upstream prints them (`spec.containers[0].imagee`).
    pub unknown: Vec<String>,
}

/// Calls `$m!` with every built-in kind served: `(group, kind) => type` pairs.
#[macro_export]
macro_rules! builtin_types {
    ($m:ident, $($args:tt)*) => {
        $m!($($args)* {
            ("", "ConfigMap") => k8s_openapi::api::core::v1::ConfigMap,
            ("", "Endpoints") => k8s_openapi::api::core::v1::Endpoints,
            ("", "Event") => k8s_openapi::api::core::v1::Event,
            ("", "LimitRange") => k8s_openapi::api::core::v1::LimitRange,
            ("", "Namespace") => k8s_openapi::api::core::v1::Namespace,
            ("", "Node") => k8s_openapi::api::core::v1::Node,
            ("", "PersistentVolumeClaim") => k8s_openapi::api::core::v1::PersistentVolumeClaim,
            ("", "PersistentVolume") => k8s_openapi::api::core::v1::PersistentVolume,
            ("", "Pod") => k8s_openapi::api::core::v1::Pod,
            ("", "PodTemplate") => k8s_openapi::api::core::v1::PodTemplate,
            ("", "ReplicationController") => k8s_openapi::api::core::v1::ReplicationController,
            ("", "ResourceQuota") => k8s_openapi::api::core::v1::ResourceQuota,
            ("", "Secret") => k8s_openapi::api::core::v1::Secret,
            ("", "ServiceAccount") => k8s_openapi::api::core::v1::ServiceAccount,
            ("", "Service") => k8s_openapi::api::core::v1::Service,
            ("", "Binding") => k8s_openapi::api::core::v1::Binding,
            ("apps", "ControllerRevision") => k8s_openapi::api::apps::v1::ControllerRevision,
            ("apps", "DaemonSet") => k8s_openapi::api::apps::v1::DaemonSet,
            ("apps", "Deployment") => k8s_openapi::api::apps::v1::Deployment,
            ("apps", "ReplicaSet") => k8s_openapi::api::apps::v1::ReplicaSet,
            ("apps", "StatefulSet") => k8s_openapi::api::apps::v1::StatefulSet,
            ("autoscaling", "HorizontalPodAutoscaler") => k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
            ("autoscaling/v1", "HorizontalPodAutoscaler") => k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler,
            ("batch", "CronJob") => k8s_openapi::api::batch::v1::CronJob,
            ("batch", "Job") => k8s_openapi::api::batch::v1::Job,
            ("certificates.k8s.io", "CertificateSigningRequest") => k8s_openapi::api::certificates::v1::CertificateSigningRequest,
            ("coordination.k8s.io", "Lease") => k8s_openapi::api::coordination::v1::Lease,
            ("discovery.k8s.io", "EndpointSlice") => k8s_openapi::api::discovery::v1::EndpointSlice,
            ("events.k8s.io", "Event") => k8s_openapi::api::events::v1::Event,
            ("networking.k8s.io", "IngressClass") => k8s_openapi::api::networking::v1::IngressClass,
            ("networking.k8s.io", "Ingress") => k8s_openapi::api::networking::v1::Ingress,
            ("networking.k8s.io", "NetworkPolicy") => k8s_openapi::api::networking::v1::NetworkPolicy,
            ("policy", "PodDisruptionBudget") => k8s_openapi::api::policy::v1::PodDisruptionBudget,
            ("policy", "Eviction") => k8s_openapi::api::policy::v1::Eviction,
            ("rbac.authorization.k8s.io", "ClusterRoleBinding") => k8s_openapi::api::rbac::v1::ClusterRoleBinding,
            ("rbac.authorization.k8s.io", "ClusterRole") => k8s_openapi::api::rbac::v1::ClusterRole,
            ("rbac.authorization.k8s.io", "RoleBinding") => k8s_openapi::api::rbac::v1::RoleBinding,
            ("rbac.authorization.k8s.io", "Role") => k8s_openapi::api::rbac::v1::Role,
            ("scheduling.k8s.io", "PriorityClass") => k8s_openapi::api::scheduling::v1::PriorityClass,
            ("storage.k8s.io", "StorageClass") => k8s_openapi::api::storage::v1::StorageClass,
            ("apiextensions.k8s.io", "CustomResourceDefinition") => k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        })
    };
}

macro_rules! round_trip {
    ($group:expr, $kind:expr, $obj:expr, { $( ($g:literal, $k:literal) => $t:ty ),* $(,)? }) => {
        match ($group, $kind) {
            $( ($g, $k) => {
                let typed: $t = serde_json::from_value($obj.clone()).map_err(|e| e.to_string())?;
                Some(serde_json::to_value(&typed).map_err(|e| e.to_string())?)
            } )*
            _ => None,
        }
    };
}

/// Decodes `obj` as `kind` of `group`. Kinds without a compiled type (custom resources)
/// come back unchanged. The error is the type mismatch, as a message. (A kind served in
/// an older version besides its stored one is found as `group/version`, see
/// [`type_group`].)
/// The group under which [`decode`] finds the type of `kind` in `group`/`version`.
pub fn type_group<'a>(group: &'a str, version: &str, kind: &str) -> std::borrow::Cow<'a, str> {
    if group == "autoscaling" && version == "v1" && kind == "HorizontalPodAutoscaler" {
        std::borrow::Cow::Owned(format!("{group}/{version}"))
    } else {
        std::borrow::Cow::Borrowed(group)
    }
}

pub fn decode(group: &str, kind: &str, obj: &Value) -> Result<Decoded, String> {
    let rt = crate::builtin_types!(round_trip, group, kind, obj,);
    let Some(rt) = rt else {
        return Ok(Decoded {
            object: obj.clone(),
            unknown: vec![],
        });
    };
    let mut object = obj.clone();
    let mut unknown = Vec::new();
    prune(&mut object, &rt, String::new(), &mut unknown);
    Ok(Decoded { object, unknown })
}

/// Removes from `v` every non-null field that the round-tripped `typed` lacks, noting
/// its path.
fn prune(v: &mut Value, typed: &Value, path: String, unknown: &mut Vec<String>) {
    match (v, typed) {
        (Value::Object(m), Value::Object(t)) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(&k) {
                    Some(tv) => prune(m.get_mut(&k).expect("listed"), tv, child, unknown),
                    None => {
                        // `kind` and `apiVersion` are read before decoding; nulls are
                        // absent values.
                        if m[&k].is_null()
                            || (path.is_empty() && (k == "kind" || k == "apiVersion"))
                        {
                            continue;
                        }
                        m.remove(&k);
                        unknown.push(child);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(t)) => {
            for (i, (item, titem)) in a.iter_mut().zip(t).enumerate() {
                prune(item, titem, format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_and_dropped() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "x", "creationTimestamp": null, "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "imagee": "typo"}], "bogus": 1}});
        let d = decode("", "Pod", &pod).unwrap();
        assert_eq!(d.unknown, vec!["spec.bogus", "spec.containers[0].imagee"]);
        assert!(d.object["spec"].get("bogus").is_none());
        assert_eq!(d.object["metadata"]["labels"]["a"], "b");
        assert!(decode(
            "apps",
            "Deployment",
            &json!({"spec": {"replicas": "three"}})
        )
        .is_err());
        let cr = json!({"spec": {"anything": 1}});
        assert_eq!(decode("example.com", "Widget", &cr).unwrap().object, cr);
        // Secret data must be base64.
        assert!(decode("", "Secret", &json!({"data": {"k": "!!"}})).is_err());
    }
}
