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
/// come back unchanged. The error is the type mismatch, as a message.
pub fn decode(group: &str, kind: &str, obj: &Value) -> Result<Decoded, String> {
    use k8s_openapi::api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch,
        certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, events::v1 as events, networking::v1 as networking,
        policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling,
        storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    let rt = round_trip!(group, kind, obj, {
        ("", "ConfigMap") => core::ConfigMap,
        ("", "Endpoints") => core::Endpoints,
        ("", "Event") => core::Event,
        ("", "LimitRange") => core::LimitRange,
        ("", "Namespace") => core::Namespace,
        ("", "Node") => core::Node,
        ("", "PersistentVolumeClaim") => core::PersistentVolumeClaim,
        ("", "PersistentVolume") => core::PersistentVolume,
        ("", "Pod") => core::Pod,
        ("", "PodTemplate") => core::PodTemplate,
        ("", "ReplicationController") => core::ReplicationController,
        ("", "ResourceQuota") => core::ResourceQuota,
        ("", "Secret") => core::Secret,
        ("", "ServiceAccount") => core::ServiceAccount,
        ("", "Service") => core::Service,
        ("", "Binding") => core::Binding,
        ("apps", "ControllerRevision") => apps::ControllerRevision,
        ("apps", "DaemonSet") => apps::DaemonSet,
        ("apps", "Deployment") => apps::Deployment,
        ("apps", "ReplicaSet") => apps::ReplicaSet,
        ("apps", "StatefulSet") => apps::StatefulSet,
        ("autoscaling", "HorizontalPodAutoscaler") => autoscaling::HorizontalPodAutoscaler,
        ("batch", "CronJob") => batch::CronJob,
        ("batch", "Job") => batch::Job,
        ("certificates.k8s.io", "CertificateSigningRequest") => certificates::CertificateSigningRequest,
        ("coordination.k8s.io", "Lease") => coordination::Lease,
        ("discovery.k8s.io", "EndpointSlice") => discovery::EndpointSlice,
        ("events.k8s.io", "Event") => events::Event,
        ("networking.k8s.io", "IngressClass") => networking::IngressClass,
        ("networking.k8s.io", "Ingress") => networking::Ingress,
        ("networking.k8s.io", "NetworkPolicy") => networking::NetworkPolicy,
        ("policy", "PodDisruptionBudget") => policy::PodDisruptionBudget,
        ("policy", "Eviction") => policy::Eviction,
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => rbac::ClusterRoleBinding,
        ("rbac.authorization.k8s.io", "ClusterRole") => rbac::ClusterRole,
        ("rbac.authorization.k8s.io", "RoleBinding") => rbac::RoleBinding,
        ("rbac.authorization.k8s.io", "Role") => rbac::Role,
        ("scheduling.k8s.io", "PriorityClass") => scheduling::PriorityClass,
        ("storage.k8s.io", "StorageClass") => storage::StorageClass,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => apiextensions::CustomResourceDefinition,
    });
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
