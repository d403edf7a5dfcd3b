//! ControllerRevisions (upstream's `history` package): the pod templates a DaemonSet or
//! StatefulSet has had, each stored as the patch that brings it back
//! (`{"spec":{"template":{..., "$patch":"replace"}}}`, what `kubectl rollout undo`
//! applies), named `<owner>-<hash>`, labelled `controller-revision-hash`, numbered.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrokube_client::{Api, Client, Store};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::json;

use crate::deployment::template_hash;
use crate::ownership;
use crate::Error;

/// The label with the hash of a revision (and of the pods made from it).
pub const REVISION_HASH: &str = "controller-revision-hash";

/// The revisions the owner controls.
pub fn owned(
    store: &Store<ControllerRevision>,
    owner: &ObjectMeta,
) -> Vec<Arc<ControllerRevision>> {
    store
        .list()
        .into_iter()
        .filter(|r| {
            r.metadata.namespace == owner.namespace
                && ownership::controller_of(&r.metadata).map(|o| &o.uid) == owner.uid.as_ref()
        })
        .collect()
}

/// A revision's hash label.
pub fn hash_of(r: &ControllerRevision) -> Option<&str> {
    r.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

/// The pod template a revision holds.
pub fn template_of(r: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = r.data.as_ref()?.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// The revision of `template` for an owner of kind `K`: an existing one (renumbered as
/// the newest when an older template comes back) or a new one; answers its hash.
pub async fn current<K: k8s_openapi::Resource>(
    client: &Client,
    store: &Store<ControllerRevision>,
    owner: &ObjectMeta,
    template: &PodTemplateSpec,
    collisions: Option<i32>,
) -> Result<String, Error> {
    let ns = owner.namespace.clone().unwrap_or_default();
    let mut patch = serde_json::to_value(template).unwrap_or_default();
    patch["$patch"] = json!("replace");
    let data = json!({"spec": {"template": patch}});
    let revisions = owned(store, owner);
    let max = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    if let Some(r) = revisions
        .iter()
        .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        if r.revision < max {
            let mut bumped = (**r).clone();
            bumped.revision = max + 1;
            api.replace(r.metadata.name.as_deref().unwrap_or_default(), &bumped)
                .await?;
        }
        return Ok(hash_of(r).unwrap_or_default().to_string());
    }
    let hash = template_hash(template, collisions);
    let name = format!("{}-{hash}", owner.name.as_deref().unwrap_or_default());
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.clone());
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            labels: Some(labels),
            owner_references: Some(vec![ownership::controller_ref::<K>(owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: max + 1,
    };
    match api.create(&rev).await {
        Ok(_) => Ok(hash),
        // Made before (the cache is behind): the retry finds it.
        Err(e) if e.is_already_exists() => Err(Error::Sync(format!(
            "controller revision {name} already exists"
        ))),
        Err(e) => Err(e.into()),
    }
}
