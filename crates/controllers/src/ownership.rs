//! Controller references: who controls an object, the reference a controller puts on
//! what it makes, and adopting or releasing a dependent (upstream's
//! `ControllerRefManager`). Writes are strategic merge patches that carry the
//! dependent's UID, so they never touch another object made under the same name.

use std::sync::Arc;

use ferrokube_client::{Api, Patch};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::Error;

/// The reference with `controller: true`, if any.
pub fn controller_of(m: &ObjectMeta) -> Option<&OwnerReference> {
    m.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The controller reference an owner of kind `O` puts on what it makes.
pub fn controller_ref<O: k8s_openapi::Resource>(owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: O::API_VERSION.into(),
        kind: O::KIND.into(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// `namespace/name`: the work-queue key of a namespaced object.
pub fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Makes `owner` the controller of an orphan; `false` when it is gone or changed.
pub async fn adopt<K: Serialize + DeserializeOwned>(
    api: &Api<K>,
    dependent: &ObjectMeta,
    owner: OwnerReference,
) -> Result<bool, Error> {
    let patch = json!({"metadata": {"ownerReferences": [owner], "uid": dependent.uid}});
    match api
        .patch(
            dependent.name.as_deref().unwrap_or_default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Drops the reference to the owner with `owner_uid` from a dependent that no longer
/// matches its selector, and the owner's `finalizer` on it if one is named.
pub async fn release<K: Serialize + DeserializeOwned>(
    api: &Api<K>,
    dependent: &ObjectMeta,
    owner_uid: &str,
    finalizer: Option<&str>,
) -> Result<(), Error> {
    let mut patch = json!({"metadata": {
        "ownerReferences": [{"$patch": "delete", "uid": owner_uid}],
        "uid": dependent.uid,
    }});
    if let Some(f) = finalizer {
        patch["metadata"]["$deleteFromPrimitiveList/finalizers"] = json!([f]);
    }
    match api
        .patch(
            dependent.name.as_deref().unwrap_or_default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The dependents an owner of kind `O` controls (upstream's `ClaimObjects`), from
/// `candidates` in the owner's namespace: its own that `matches` accepts; orphans it
/// accepts, adopted unless the owner or the orphan is being deleted; and its own that
/// stopped matching, released (dropping `finalizer`, the owner's mark on its
/// dependents, if named) unless the owner is being deleted.
pub async fn claim<O, K>(
    api: &Api<K>,
    owner: &ObjectMeta,
    candidates: Vec<Arc<K>>,
    matches: impl Fn(&K) -> bool,
    finalizer: Option<&str>,
) -> Result<Vec<Arc<K>>, Error>
where
    O: k8s_openapi::Resource,
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned,
{
    let uid = owner.uid.as_deref().unwrap_or_default();
    let deleting = owner.deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for d in candidates {
        let m = d.metadata();
        if m.namespace != owner.namespace {
            continue;
        }
        let matched = matches(&d);
        match controller_of(m) {
            Some(r) if r.uid == uid => {
                if matched {
                    owned.push(d);
                } else if !deleting {
                    release(api, m, uid, finalizer).await?;
                }
            }
            Some(_) => {}
            None if matched
                && !deleting
                && m.deletion_timestamp.is_none()
                && adopt(api, m, controller_ref::<O>(owner)).await? =>
            {
                owned.push(d)
            }
            None => {}
        }
    }
    Ok(owned)
}

/// `namespace/name` of an object's metadata.
pub fn object_key(m: &ObjectMeta) -> String {
    key(
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    )
}

/// A reference to an object of kind `K` (what events name as their object).
pub fn reference<K: k8s_openapi::Resource>(m: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::API_VERSION.into()),
        kind: Some(K::KIND.into()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}
