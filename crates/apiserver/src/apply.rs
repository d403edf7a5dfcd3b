//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): each field manager
//! owns the fields its applied configuration sets, recorded in `managedFields` in
//! upstream's `FieldsV1` form. Applying sets those fields, removes fields the manager
//! applied before and no longer does (unless another manager owns them), and refuses to
//! change a field another applier owns with a different value unless `force=true`
//! (409 Conflict naming each field, as upstream).
//!
//! Other writes take ownership too ([`track_update`]): the fields a create, update or
//! patch sets become its manager's (operation `Update`) and leave other managers'.

use std::collections::BTreeSet;

use ferrokube_api::meta::{self, metadata_mut};
use ferrokube_api::patch::{self, list_strategy, ListStrategy};
use ferrokube_api::status::{self, StatusError};
use ferrokube_api::ResourceInfo;
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause;
use serde_json::{json, Map, Value};

use crate::rest::{Call, Resources};

/// A field path as `FieldsV1` tokens (`f:spec`, `k:{"name":"web"}`, `v:"x"`, `.`).
type Path = Vec<String>;

/// Every owned path of an applied configuration.
fn field_set(kind: &str, v: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(kind, v, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

fn walk(
    kind: &str,
    v: &Value,
    names: &mut Vec<String>,
    tokens: &mut Path,
    out: &mut BTreeSet<Path>,
) {
    let Value::Object(m) = v else {
        out.insert(tokens.clone());
        return;
    };
    for (k, child) in m {
        if tokens.is_empty() && (k == "apiVersion" || k == "kind") {
            continue;
        }
        if names.len() == 1
            && names[0] == "metadata"
            && matches!(
                k.as_str(),
                "name"
                    | "namespace"
                    | "managedFields"
                    | "resourceVersion"
                    | "uid"
                    | "creationTimestamp"
                    | "generation"
                    | "selfLink"
                    | "deletionTimestamp"
                    | "deletionGracePeriodSeconds"
            )
        {
            continue;
        }
        tokens.push(format!("f:{k}"));
        match child {
            Value::Object(cm) if !cm.is_empty() => {
                names.push(k.clone());
                walk(kind, child, names, tokens, out);
                names.pop();
            }
            Value::Array(items) => match list_strategy(kind, names, k) {
                ListStrategy::MergeKey(key) => {
                    names.push(k.clone());
                    for item in items {
                        let id = json!({key: item.get(key).cloned().unwrap_or(Value::Null)});
                        tokens.push(format!("k:{id}"));
                        let mut dot = tokens.clone();
                        dot.push(".".into());
                        out.insert(dot);
                        walk(kind, item, names, tokens, out);
                        tokens.pop();
                    }
                    names.pop();
                }
                ListStrategy::MergePrimitives => {
                    for item in items {
                        tokens.push(format!("v:{item}"));
                        out.insert(tokens.clone());
                        tokens.pop();
                    }
                }
                ListStrategy::Replace => {
                    out.insert(tokens.clone());
                }
            },
            _ => {
                out.insert(tokens.clone());
            }
        }
        tokens.pop();
    }
}

/// Converts a path set to `FieldsV1` JSON.
fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for t in p {
            cur = cur
                .entry(t.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("built as objects");
        }
    }
    Value::Object(root)
}

/// Reads `FieldsV1` JSON back into leaf paths.
fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn rec(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, c) in m {
                    path.push(k.clone());
                    rec(c, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// The value at a path, if present.
fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for t in path {
        if t == "." {
            return Some(cur);
        }
        if let Some(f) = t.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = t.strip_prefix("k:") {
            let id: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| id.iter().all(|(ik, iv)| item.get(ik) == Some(iv)))?;
        } else if let Some(val) = t.strip_prefix("v:") {
            let want: Value = serde_json::from_str(val).ok()?;
            return cur.as_array()?.iter().find(|i| **i == want);
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Removes the value at a path (a field, a keyed item, a set value).
fn remove(v: &mut Value, path: &[String]) {
    let Some((last, init)) = path.split_last() else {
        return;
    };
    if last == "." {
        return remove(v, init);
    }
    let mut cur = v;
    for t in init {
        let next = if let Some(f) = t.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = t.strip_prefix("k:") {
            let Ok(id) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|item| id.iter().all(|(ik, iv)| item.get(ik) == Some(iv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(o) = cur.as_object_mut() {
            o.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(id), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|item| !id.iter().all(|(ik, iv)| item.get(ik) == Some(iv)));
        }
    } else if let Some(val) = last.strip_prefix("v:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(val), cur.as_array_mut()) {
            a.retain(|i| *i != want);
        }
    }
}

fn render(path: &[String]) -> String {
    let mut s = String::new();
    for t in path {
        if let Some(f) = t.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = t.strip_prefix("k:") {
            s.push('[');
            s.push_str(&k.trim_matches(|c| c == '{' || c == '}').replace(':', "="));
            s.push(']');
        } else if let Some(v) = t.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

/// Managed-field entries of an object.
fn entries(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Applies `config` for `manager` onto `live` (`None` when creating). Returns the new
/// object, or the conflicts.
fn merge(
    r: &ResourceInfo,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, StatusError> {
    let new_set = field_set(r.kind, config);
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut managed = entries(&base);
    let mine_before: BTreeSet<Path> = managed
        .iter()
        .filter(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
        })
        .flat_map(|e| from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)))
        .collect();
    // Conflicts with other appliers.
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for e in &managed {
        let other = e.get("manager").and_then(Value::as_str).unwrap_or_default();
        if other == manager && e.get("operation").and_then(Value::as_str) == Some("Apply") {
            continue;
        }
        for p in from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)) {
            if p.last().map(String::as_str) == Some(".") || !new_set.contains(&p) {
                continue;
            }
            if lookup(&base, &p) != lookup(config, &p) {
                conflicts.push((other.to_string(), render(&p)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let api = r.api_version();
        let causes: Vec<StatusCause> = conflicts
            .iter()
            .map(|(m, f)| StatusCause {
                reason: Some("FieldManagerConflict".into()),
                message: Some(format!("conflict with {m:?} using {api}")),
                field: Some(f.clone()),
            })
            .collect();
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, f)| format!("- {m:?} using {api}: {f}"))
            .collect();
        let msg = if conflicts.len() == 1 {
            format!(
                "Apply failed with 1 conflict: conflict with {:?} using {api}: {}",
                conflicts[0].0, conflicts[0].1
            )
        } else {
            format!(
                "Apply failed with {} conflicts: conflicts with {}",
                conflicts.len(),
                lines.join("\n")
            )
        };
        return Err(status::with_causes(409, "Conflict", msg, causes));
    }
    // Fields this manager dropped from its configuration, owned by no one else, go.
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
    };
    let others: BTreeSet<Path> = managed
        .iter()
        .filter(|e| !is_mine(e))
        .flat_map(|e| from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)))
        .collect();
    let mut out = patch::strategic_merge_patch(r.kind, &base, config)
        .map_err(|e| status::bad_request(e.to_string()))?;
    let mut dropped: Vec<&Path> = mine_before
        .iter()
        .filter(|p| !new_set.contains(*p) && !others.contains(*p))
        .collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        remove(&mut out, p);
    }
    // Ownership: this manager owns its set; forced fields leave their old owners.
    for e in managed.iter_mut() {
        if is_mine(e) {
            continue;
        }
        let mut set = from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
        let before = set.len();
        set.retain(|p| {
            !(new_set.contains(p) && force && p.last().map(String::as_str) != Some("."))
        });
        if set.len() != before {
            e["fieldsV1"] = to_fields_v1(&set);
        }
    }
    managed.retain(|e| {
        e.get("manager").and_then(Value::as_str) != Some(manager)
            && e.get("fieldsV1")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
    });
    managed.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": r.api_version(),
        "time": meta::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(&new_set),
    }));
    metadata_mut(&mut out).insert("managedFields".into(), Value::Array(managed));
    Ok(out)
}

/// Records a create, update or patch in `managedFields`: the fields it set or changed
/// become `manager`'s (operation `Update`), leave every other manager, and fields it
/// removed leave everyone.
pub fn track_update(
    r: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
) {
    let base = old.cloned().unwrap_or_else(|| json!({}));
    // A client that sends managedFields sets them (an empty list resets them).
    let mut managed = match new.pointer("/metadata/managedFields") {
        Some(Value::Array(m)) => m.clone(),
        _ => entries(&base),
    };
    let new_set = field_set(r.kind, new);
    let old_set = field_set(r.kind, &base);
    let changed: BTreeSet<Path> = new_set
        .iter()
        .filter(|p| match p.split_last() {
            Some((last, init)) if last == "." => lookup(&base, init).is_none(),
            _ => lookup(&base, p) != lookup(new, p),
        })
        .cloned()
        .collect();
    let removed: BTreeSet<Path> = old_set.difference(&new_set).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        if !managed.is_empty() {
            metadata_mut(new).insert("managedFields".into(), Value::Array(managed));
        }
        return;
    }
    let mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Update")
            && e.get("subresource").and_then(Value::as_str) == subresource
    };
    let mut own: BTreeSet<Path> = managed
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)))
        .collect();
    own.extend(changed.iter().cloned());
    own.retain(|p| !removed.contains(p));
    for e in managed.iter_mut() {
        if mine(e) {
            continue;
        }
        let mut set = from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
        let before = set.len();
        set.retain(|p| !changed.contains(p) && !removed.contains(p));
        if set.len() != before {
            e["fieldsV1"] = to_fields_v1(&set);
        }
    }
    managed.retain(|e| {
        !mine(e)
            && e.get("fieldsV1")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
    });
    if !own.is_empty() {
        let mut entry = json!({
            "manager": manager,
            "operation": "Update",
            "apiVersion": r.api_version(),
            "time": meta::now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&own),
        });
        if let Some(sub) = subresource {
            entry["subresource"] = json!(sub);
        }
        managed.push(entry);
    }
    if managed.is_empty() {
        metadata_mut(new).remove("managedFields");
    } else {
        metadata_mut(new).insert("managedFields".into(), Value::Array(managed));
    }
}

/// Serves an apply request: create when absent, else merge with ownership.
pub async fn serve(
    res: &Resources,
    r: &ResourceInfo,
    call: &Call<'_>,
    dry_run: bool,
) -> Result<(StatusCode, Value), StatusError> {
    let manager = call.query.str("fieldManager").to_string();
    if manager.is_empty() {
        return Err(status::bad_request(
            "PATCH with apply requires a fieldManager",
        ));
    }
    let force = call.query.flag("force");
    let mut config: Value = serde_json::from_slice(&call.body).map_err(|e| {
        status::bad_request(format!(
            "error decoding YAML: {e}; this server reads apply configurations in their JSON form"
        ))
    })?;
    let name = call.path.name.clone().unwrap_or_default();
    if meta::name(&config) != name {
        return Err(status::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta::name(&config)
        )));
    }
    if config.get("apiVersion").and_then(Value::as_str) != Some(&r.api_version())
        || config.get("kind").and_then(Value::as_str) != Some(r.kind)
    {
        return Err(status::bad_request(format!(
            "the apiVersion and kind of an apply configuration must be {} {}",
            r.api_version(),
            r.kind
        )));
    }
    if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let key = ferrokube_api::keys::object_key(
        r,
        call.path.namespace.as_deref().unwrap_or_default(),
        &name,
    );
    for _ in 0..8 {
        let current = res.objects.get(&key).await?;
        let merged = merge(
            r,
            current.as_ref().map(|c| &c.object),
            &config,
            &manager,
            force,
        )?;
        let resp = match current {
            None => res.create_from_apply(r, call, merged, dry_run).await,
            Some(c) => {
                res.replace_from_apply(r, call, c.revision, merged, dry_run)
                    .await
            }
        };
        match resp {
            Err(e) if e.code() == 409 && e.reason() != "Conflict" => continue, // created meanwhile
            Err(e)
                if e.code() == 409
                    && e.0
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains(ferrokube_api::status::MODIFIED)) =>
            {
                continue
            }
            Err(e) => return Err(e),
            Ok(answer) => return Ok(answer),
        }
    }
    Err(status::conflict(r, &name, status::MODIFIED))
}

impl Resources {
    /// Creates an object from an apply configuration (admission as for any create).
    pub(crate) async fn create_from_apply(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
        obj: Value,
        dry_run: bool,
    ) -> Result<(StatusCode, Value), StatusError> {
        let collection = crate::request::ResourcePath {
            name: None,
            ..call.path.clone()
        };
        let mut q = format!("fieldManager={}", call.query.str("fieldManager"));
        if dry_run {
            q.push_str("&dryRun=All");
        }
        let query = crate::request::Query::parse(Some(&q));
        let c = Call {
            applied: true,
            method: &http::Method::POST,
            path: &collection,
            query: &query,
            headers: &http::HeaderMap::new(),
            body: serde_json::to_vec(&obj).expect("JSON").into(),
        };
        self.create(r, &c).await.map(|a| (a.code, a.body))
    }

    /// Replaces an object with the merged result of an apply, if it is still at
    /// `revision`.
    pub(crate) async fn replace_from_apply(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
        revision: i64,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<(StatusCode, Value), StatusError> {
        meta::set_resource_version(&mut obj, revision);
        let mut q = String::from("fieldValidation=Strict");
        if dry_run {
            q.push_str("&dryRun=All");
        }
        let query = crate::request::Query::parse(Some(&q));
        let c = Call {
            applied: true,
            method: &http::Method::PUT,
            path: call.path,
            query: &query,
            headers: &http::HeaderMap::new(),
            body: serde_json::to_vec(&obj).expect("JSON").into(),
        };
        self.update(r, &c).await.map(|a| (a.code, a.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokube_api::Registry;

    fn deploy() -> ResourceInfo {
        *Registry::default().by_name("deployments")[0]
    }

    #[test]
    fn owned_fields_round_trip_through_fields_v1() {
        let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        let set = field_set("Deployment", &cfg);
        assert!(set.contains(&vec!["f:spec".to_string(), "f:replicas".into()]));
        assert!(set.contains(&vec![
            "f:spec".to_string(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"web\"}".into(),
            "f:image".into()
        ]));
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
    }

    #[test]
    fn apply_merges_removes_and_conflicts() {
        let r = deploy();
        let a1 = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 2}});
        let live = merge(&r, None, &a1, "alice", false).unwrap();
        assert_eq!(live["spec"]["replicas"], 2);
        // Alice drops label b: it goes.
        let a2 = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}}, "spec": {"replicas": 2}});
        let live = merge(&r, Some(&live), &a2, "alice", false).unwrap();
        assert!(live["metadata"]["labels"].get("b").is_none());
        // Bob wants other replicas: conflict, unless forced.
        let b = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 5}});
        let e = merge(&r, Some(&live), &b, "bob", false).unwrap_err();
        assert_eq!(e.code(), 409);
        assert_eq!(e.0.message.as_deref(), Some("Apply failed with 1 conflict: conflict with \"alice\" using apps/v1: .spec.replicas"));
        let live = merge(&r, Some(&live), &b, "bob", true).unwrap();
        assert_eq!(live["spec"]["replicas"], 5);
        // An Update manager's fields conflict too.
        let mut updated = live.clone();
        updated["spec"]["paused"] = json!(true);
        track_update(&r, Some(&live), &mut updated, "kubectl-patch", None);
        let fields = updated["metadata"]["managedFields"].to_string();
        assert!(
            fields.contains("kubectl-patch") && fields.contains("f:paused"),
            "{fields}"
        );
        let pause = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"paused": false}});
        let e = merge(&r, Some(&updated), &pause, "alice", false).unwrap_err();
        assert!(e.to_string().contains("kubectl-patch"), "{e}");
        // Same value is no conflict.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}}});
        assert!(merge(&r, Some(&live), &same, "carol", false).is_ok());
    }
}
