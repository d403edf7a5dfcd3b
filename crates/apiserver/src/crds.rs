//! The CustomResourceDefinition controller inside the API server (upstream's
//! apiextensions-apiserver controllers): serves the versions each CRD declares, marks CRDs
//! `NamesAccepted` and `Established`, and, when a CRD is deleted, deletes its custom
//! objects before letting the definition go (the cleanup finalizer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_api::keys::{list_prefix, prefix_end, ROOT};
use ferrokube_api::meta;
use ferrokube_api::registry::builtin;
use ferrokube_api::status::StatusError;
use ferrokube_api::Registry;
use ferrokube_proto::etcdserverpb::DeleteRangeRequest;
use serde_json::{json, Value};

use crate::rest::Resources;
use crate::storage::{store_error, Update};
use crate::watchcache::SinceError;

/// The finalizer that makes custom objects go before their definition.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn crd_prefix() -> String {
    list_prefix(
        &builtin("apiextensions.k8s.io", "customresourcedefinitions"),
        None,
    )
}

/// Reads every CRD and brings serving, statuses and cleanups in line. Returns the
/// revision the CRDs were read at.
pub async fn reconcile(res: &Arc<Resources>) -> Result<i64, StatusError> {
    let page = res.objects.list(&crd_prefix(), "", 0, 0).await?;
    let mut infos = Vec::new();
    let mut custom = HashMap::new();
    let builtins = Registry::default();
    let mut to_establish = Vec::new();
    for item in &page.items {
        let crd = &item.object;
        if crd.pointer("/metadata/deletionTimestamp").is_some() {
            cleanup(res, item.key.clone(), crd).await?;
            continue;
        }
        if !ferrokube_api::crd::check(crd).is_empty() {
            continue;
        }
        for cv in ferrokube_api::crd::versions(crd) {
            let r = cv.info;
            if builtins.by_path(r.group, r.version, r.plural).is_some() {
                continue;
            }
            infos.push(r);
            custom.insert(
                (
                    r.group.to_string(),
                    r.version.to_string(),
                    r.plural.to_string(),
                ),
                Arc::new(cv),
            );
        }
        to_establish.push(item.key.clone());
    }
    *res.registry.write().expect("registry lock") = Arc::new(Registry::with_custom(infos));
    *res.custom.write().expect("custom lock") = custom;
    // Served now: say so.
    for key in to_establish {
        establish(res, &key).await?;
    }
    Ok(page.revision)
}

/// The status of an established CRD.
fn established_status(crd: &Value, old: Option<&Value>) -> Value {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if accepted.get("singular").is_none() {
        accepted["singular"] = json!(kind.to_ascii_lowercase());
    }
    if accepted.get("listKind").is_none() {
        accepted["listKind"] = json!(format!("{kind}List"));
    }
    let storage = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v.get("storage") == Some(&json!(true))))
        .and_then(|v| v.get("name").cloned())
        .unwrap_or(json!(""));
    let mut stored: Vec<Value> = old
        .and_then(|o| o.get("storedVersions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !stored.contains(&storage) {
        stored.push(storage);
    }
    let previous = |t: &str| {
        old.and_then(|o| o.get("conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!(t))))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(meta::now()))
    };
    json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": previous("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": previous("Established")},
        ],
        "storedVersions": stored,
    })
}

async fn establish(res: &Arc<Resources>, key: &str) -> Result<(), StatusError> {
    res.objects
        .update(key, &|_| vec![], |cur| {
            let Some(cur) = cur else {
                return Ok(Update::Keep);
            };
            let status = established_status(&cur.object, cur.object.get("status"));
            if cur.object.get("status") == Some(&status) {
                return Ok(Update::Keep);
            }
            let mut crd = cur.object.clone();
            crd["status"] = status;
            Ok(Update::Put(crd))
        })
        .await?;
    Ok(())
}

/// Deletes a terminating CRD's custom objects, then its cleanup finalizer (and with the
/// last finalizer, the CRD).
async fn cleanup(res: &Arc<Resources>, key: String, crd: &Value) -> Result<(), StatusError> {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !group.is_empty() && !plural.is_empty() {
        let prefix = format!("{ROOT}{group}/{plural}/");
        res.objects
            .store()
            .delete_range(DeleteRangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            })
            .await
            .map_err(store_error)?;
    }
    res.objects
        .update(&key, &|_| vec![], |cur| {
            let Some(cur) = cur else {
                return Ok(Update::Keep);
            };
            let mut crd = cur.object.clone();
            let finalizers: Vec<Value> = crd
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .map(|f| {
                    f.iter()
                        .filter(|x| x.as_str() != Some(CLEANUP_FINALIZER))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if finalizers.is_empty() {
                return Ok(Update::Delete);
            }
            crd["metadata"]["finalizers"] = Value::Array(finalizers);
            Ok(Update::Put(crd))
        })
        .await?;
    Ok(())
}

/// Runs the controller: reconciles after every change to a CRD, and every minute.
pub async fn run(res: Arc<Resources>) {
    let prefix = crd_prefix();
    let mut head = res.cache.subscribe();
    loop {
        let mut after = match reconcile(&res).await {
            Ok(rev) => rev,
            Err(e) => {
                tracing::warn!("reconciling CRDs: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let resync = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match res.cache.since(after, &prefix, 1) {
                Ok((events, _)) if !events.is_empty() => break,
                Ok((_, upto)) => after = after.max(upto),
                Err(SinceError::Gone(_)) | Err(SinceError::Store(_)) => break,
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(resync) => break,
            }
        }
    }
}
