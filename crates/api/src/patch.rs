//! The three patch formats of `PATCH` requests: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386) and Kubernetes' strategic merge patch, whose lists merge by key
//! (containers by `name`, container ports by `containerPort`, ...) as the types'
//! `patchMergeKey` tags say, with the `$patch`, `$setElementOrder`,
//! `$deleteFromPrimitiveList` and `$retainKeys` directives.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed (upstream answers 400).
    #[error("{0}")]
    Malformed(String),
    /// The patch is well formed but does not apply to the object (upstream answers 422).
    #[error("{0}")]
    Failed(String),
}

// ---------------------------------------------------------------- JSON patch

fn pointer_parts(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PatchError::Malformed(format!(
            "JSON pointer {path:?} must start with '/'"
        )));
    };
    Ok(rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(arr: &[Value], part: &str, allow_end: bool) -> Result<usize, PatchError> {
    if allow_end && part == "-" {
        return Ok(arr.len());
    }
    let i: usize = part
        .parse()
        .map_err(|_| PatchError::Failed(format!("invalid array index {part:?}")))?;
    let max = if allow_end {
        arr.len()
    } else {
        arr.len().saturating_sub(1)
    };
    if i > max || (!allow_end && arr.is_empty()) {
        return Err(PatchError::Failed(format!(
            "array index {i} out of bounds (length {})",
            arr.len()
        )));
    }
    Ok(i)
}

fn parent<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(p)
                .ok_or_else(|| PatchError::Failed(format!("doc is missing path: /{p}")))?,
            Value::Array(a) => {
                let i = index(a, p, false)?;
                &mut a[i]
            }
            _ => return Err(PatchError::Failed(format!("doc is missing path: /{p}"))),
        };
    }
    Ok(cur)
}

fn get(doc: &Value, parts: &[String]) -> Result<Value, PatchError> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| PatchError::Failed(format!("missing value at /{}", parts.join("/"))))?;
    }
    Ok(cur.clone())
}

fn add(doc: &mut Value, parts: &[String], value: Value) -> Result<(), PatchError> {
    let Some((last, init)) = parts.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = index(a, last, true)?;
            a.insert(i, value);
        }
        _ => {
            return Err(PatchError::Failed(format!(
                "cannot add to a scalar at /{}",
                init.join("/")
            )))
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, parts: &[String]) -> Result<Value, PatchError> {
    let Some((last, init)) = parts.split_last() else {
        return Err(PatchError::Failed(
            "cannot remove the whole document".into(),
        ));
    };
    match parent(doc, init)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| {
            PatchError::Failed(format!(
                "unable to remove nonexistent key: {last}: missing value"
            ))
        }),
        Value::Array(a) => {
            let i = index(a, last, false)?;
            Ok(a.remove(i))
        }
        _ => Err(PatchError::Failed(format!(
            "cannot remove /{}",
            parts.join("/")
        ))),
    }
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch.as_array().ok_or_else(|| {
        PatchError::Malformed("json patch must be a JSON array of operations".into())
    })?;
    let mut doc = doc.clone();
    for op in ops {
        let field = |k: &str| -> Result<&str, PatchError> {
            op.get(k).and_then(Value::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("operation {op} is missing string field {k:?}"))
            })
        };
        let path = pointer_parts(field("path")?)?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("operation {op} is missing \"value\""))
            })
        };
        match field("op")? {
            "add" => add(&mut doc, &path, value()?)?,
            "remove" => {
                remove(&mut doc, &path)?;
            }
            "replace" => {
                remove(&mut doc, &path).map_err(|_| {
                    PatchError::Failed(format!(
                        "replace operation does not apply: doc is missing key: /{}",
                        path.join("/")
                    ))
                })?;
                add(&mut doc, &path, value()?)?;
            }
            "move" => {
                let from = pointer_parts(field("from")?)?;
                let v = remove(&mut doc, &from)?;
                add(&mut doc, &path, v)?;
            }
            "copy" => {
                let from = pointer_parts(field("from")?)?;
                let v = get(&doc, &from)?;
                add(&mut doc, &path, v)?;
            }
            "test" => {
                if get(&doc, &path)? != value()? {
                    return Err(PatchError::Failed("testing value failed".into()));
                }
            }
            other => {
                return Err(PatchError::Malformed(format!(
                    "unexpected kind of operation: {other:?}"
                )))
            }
        }
    }
    Ok(doc)
}

// ---------------------------------------------------------------- merge patch

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match doc {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

// ---------------------------------------------------------------- strategic merge patch

/// How a list field merges in a strategic merge patch (and how server-side apply
/// tracks ownership of its items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    Replace,
    /// Merge items by this key.
    MergeKey(&'static str),
    /// Merge a list of scalars as a set (`finalizers`).
    MergePrimitives,
}

/// The patch strategy of list `field` below `path` (field names from the root, list
/// indexes left out), as the upstream types declare it.
pub fn list_strategy(kind: &str, path: &[String], field: &str) -> ListStrategy {
    let parent = path.last().map(String::as_str).unwrap_or("");
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    use ListStrategy::*;
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => MergeKey("name"),
        "env" if in_container => MergeKey("name"),
        "ports" if in_container => MergeKey("containerPort"),
        "ports" if kind == "Service" && path.len() == 1 && parent == "spec" => MergeKey("port"),
        "volumeMounts" if in_container => MergeKey("mountPath"),
        "volumeDevices" if in_container => MergeKey("devicePath"),
        "hostAliases" => MergeKey("ip"),
        "ownerReferences" if parent == "metadata" => MergeKey("uid"),
        "finalizers" if parent == "metadata" => MergePrimitives,
        "conditions" if parent == "status" => MergeKey("type"),
        "addresses" if kind == "Node" && parent == "status" => MergeKey("type"),
        "topologySpreadConstraints" => MergeKey("topologyKey"),
        _ => Replace,
    }
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn strategic_merge_patch(kind: &str, doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::Malformed(
            "strategic merge patch must be a JSON object".into(),
        ));
    };
    let base = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    merge_map(kind, &mut Vec::new(), base, p).map(|m| m.map(Value::Object).unwrap_or(Value::Null))
}

/// Merges patch map `p` into `base`; `None` means the map is deleted (`$patch: delete`).
fn merge_map(
    kind: &str,
    path: &mut Vec<String>,
    mut base: Map<String, Value>,
    p: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match p.get("$patch").map(|v| v.as_str()) {
        Some(Some("delete")) => return Ok(None),
        Some(Some("replace")) => {
            let mut m = p.clone();
            m.remove("$patch");
            return Ok(Some(m));
        }
        Some(Some("merge")) | None => {}
        Some(other) => {
            return Err(PatchError::Malformed(format!(
                "unknown patch type: {:?} in map: {}",
                other.unwrap_or("<not a string>"),
                Value::Object(p.clone())
            )))
        }
    }
    let retain = match p.get("$retainKeys") {
        Some(Value::Array(keys)) => Some(
            keys.iter()
                .map(|k| {
                    k.as_str().map(String::from).ok_or_else(|| {
                        PatchError::Malformed("$retainKeys must be a list of strings".into())
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(PatchError::Malformed(
                "$retainKeys must be a list of strings".into(),
            ))
        }
        None => None,
    };
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(del) = v else {
                return Err(PatchError::Malformed(format!("{k} must be a list")));
            };
            if let Some(Value::Array(items)) = base.get_mut(field) {
                items.retain(|i| !del.contains(i));
            }
            continue;
        }
        if v.is_null() {
            base.remove(k);
            continue;
        }
        let merged = match (base.remove(k), v) {
            (Some(Value::Object(b)), Value::Object(pv)) => {
                path.push(k.clone());
                let r = merge_map(kind, path, b, pv);
                path.pop();
                r?.map(Value::Object)
            }
            (None, Value::Object(pv)) => {
                path.push(k.clone());
                let r = merge_map(kind, path, Map::new(), pv);
                path.pop();
                r?.map(|m| Value::Object(strip_directives(m)))
            }
            (b, Value::Array(pv)) => {
                let base_items = match b {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let order = p
                    .get(&format!("$setElementOrder/{k}"))
                    .and_then(Value::as_array);
                Some(Value::Array(merge_list(
                    kind,
                    path,
                    k,
                    base_items,
                    pv,
                    order.map(Vec::as_slice),
                )?))
            }
            (_, other) => Some(other.clone()),
        };
        if let Some(m) = merged {
            base.insert(k.clone(), m);
        }
    }
    if let Some(keys) = retain {
        base.retain(|k, _| keys.contains(k));
    }
    Ok(Some(base))
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    m
}

fn merge_list(
    kind: &str,
    path: &mut Vec<String>,
    field: &str,
    base: Vec<Value>,
    patch: &[Value],
    order: Option<&[Value]>,
) -> Result<Vec<Value>, PatchError> {
    match list_strategy(kind, path, field) {
        ListStrategy::Replace => {
            // `$patch: replace` items are directives, not content.
            Ok(patch
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect())
        }
        ListStrategy::MergePrimitives => {
            let mut out = base;
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            if let Some(order) = order {
                out = reorder(out, order, |a, b| a == b);
            }
            Ok(out)
        }
        ListStrategy::MergeKey(key) => {
            if patch
                .iter()
                .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                return Ok(patch
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect());
            }
            let mut out = base;
            path.push(field.to_string());
            for item in patch {
                let Value::Object(pi) = item else {
                    path.pop();
                    return Err(PatchError::Malformed(format!(
                        "items of {field} must be objects"
                    )));
                };
                let Some(kv) = pi.get(key) else {
                    path.pop();
                    return Err(PatchError::Failed(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let pos = out.iter().position(|b| b.get(key) == Some(kv));
                let delete = pi.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let b = match std::mem::take(&mut out[i]) {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        match merge_map(kind, path, b, pi)? {
                            Some(m) => out[i] = Value::Object(m),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    (None, false) => {
                        if let Some(m) = merge_map(kind, path, Map::new(), pi)? {
                            out.push(Value::Object(strip_directives(m)));
                        }
                    }
                }
            }
            path.pop();
            if let Some(order) = order {
                out = reorder(out, order, |a, b| a.get(key) == b.get(key));
            }
            Ok(out)
        }
    }
}

/// Puts items named in `order` first, in that order; the rest keep their relative order.
fn reorder(
    items: Vec<Value>,
    order: &[Value],
    same: impl Fn(&Value, &Value) -> bool,
) -> Vec<Value> {
    let mut rest = items;
    let mut out = Vec::with_capacity(rest.len());
    for o in order {
        if let Some(i) = rest.iter().position(|x| same(x, o)) {
            out.push(rest.remove(i));
        }
    }
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_ops() {
        let doc = json!({"a": [1, 2], "b": {"c": 1}});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "replace", "path": "/b/c", "value": 2},
                {"op": "copy", "from": "/b", "path": "/d"},
                {"op": "remove", "path": "/a/0"},
                {"op": "test", "path": "/d/c", "value": 2},
                {"op": "add", "path": "/e~1f", "value": true}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"a": [2, 3], "b": {"c": 2}, "d": {"c": 2}, "e/f": true})
        );
        assert!(matches!(
            json_patch(&doc, &json!([{"op": "test", "path": "/b/c", "value": 9}])),
            Err(PatchError::Failed(_))
        ));
        assert!(matches!(
            json_patch(&doc, &json!([{"op": "remove", "path": "/zz"}])),
            Err(PatchError::Failed(_))
        ));
        assert!(matches!(
            json_patch(&doc, &json!({})),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            json_patch(&doc, &json!([{"op": "frob", "path": "/a"}])),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn merge_patch_replaces_lists_and_deletes_nulls() {
        let doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        assert_eq!(
            merge_patch(&doc, &json!({"a": {"b": null, "d": 3}, "l": [3]})),
            json!({"a": {"c": 2, "d": 3}, "l": [3]})
        );
    }

    #[test]
    fn strategic_merge_by_keys_and_directives() {
        let pod = json!({"metadata": {"finalizers": ["a"]},
            "spec": {"containers": [
                {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                 "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "busybox"}],
             "tolerations": [{"key": "x"}]}});
        let patch = json!({"metadata": {"finalizers": ["b"]},
            "spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
                "containers": [
                {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 443}]},
                {"name": "side", "$patch": "delete"}],
             "tolerations": [{"key": "y"}]}});
        let out = strategic_merge_patch("Pod", &pod, &patch).unwrap();
        let cs = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "y"}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));

        let svc =
            json!({"spec": {"ports": [{"port": 80, "name": "http"}], "selector": {"a": "1"}}});
        let out = strategic_merge_patch(
            "Service",
            &svc,
            &json!({"spec": {"ports": [{"port": 443}], "selector": {"$patch": "replace", "b": "2"}}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["selector"], json!({"b": "2"}));

        let out = strategic_merge_patch(
            "Deployment",
            &json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
            &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let out = strategic_merge_patch(
            "Pod",
            &json!({"metadata": {"finalizers": ["a", "b"]}}),
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert!(matches!(
            strategic_merge_patch(
                "Pod",
                &pod,
                &json!({"spec": {"containers": [{"image": "x"}]}})
            ),
            Err(PatchError::Failed(_))
        ));
    }
}
