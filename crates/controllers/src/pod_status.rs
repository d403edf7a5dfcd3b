//! What controllers read from a pod's status (upstream's `podutil`), and the one
//! condition write they make.

use ferrokube_client::{Api, Patch};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::Error;

/// A condition a controller sets on a pod.
pub struct PodCondition<'a> {
    pub type_: &'a str,
    pub status: &'a str,
    pub reason: Option<&'a str>,
    pub message: Option<&'a str>,
}

/// Sets one condition of `pod` (a strategic merge keyed by type, guarded by the pod's
/// uid), and its `phase` when given. `Ok(false)` when the pod is gone or replaced.
pub async fn set_condition(
    api: &Api<Pod>,
    pod: &Pod,
    c: PodCondition<'_>,
    phase: Option<&str>,
) -> Result<bool, Error> {
    let mut cond = json!({
        "type": c.type_,
        "status": c.status,
        "lastTransitionTime": ferrokube_api::meta::now(),
    });
    if let Some(r) = c.reason {
        cond["reason"] = json!(r);
    }
    if let Some(m) = c.message {
        cond["message"] = json!(m);
    }
    let mut patch = json!({
        "metadata": {"uid": pod.metadata.uid},
        "status": {"conditions": [cond]},
    });
    if let Some(p) = phase {
        patch["status"]["phase"] = json!(p);
    }
    match api
        .patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `status.phase` (empty when unset).
pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Since when the pod has been Ready (`None`: not Ready).
pub fn ready_since(p: &Pod) -> Option<jiff::Timestamp> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(jiff::Timestamp::now)
        })
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Not finished and not being deleted.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed")
}
