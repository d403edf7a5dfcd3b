//! Custom resources: what a CustomResourceDefinition declares (names, scope, served
//! versions, schema, printer columns, subresources), checking a CRD, validating and
//! pruning custom objects against the structural schema of their version, and printing
//! their table rows.

use serde_json::{json, Map, Value};

use crate::registry::{intern, ResourceInfo, ALL_VERBS};
use crate::status::FieldError;
use crate::table::Column;

/// One served version of a custom resource.
#[derive(Debug, Clone)]
pub struct CustomVersion {
    pub info: ResourceInfo,
    /// The version objects are stored as (all versions share one key space).
    pub storage_version: &'static str,
    /// `openAPIV3Schema`.
    pub schema: Value,
    pub columns: Vec<PrinterColumn>,
    /// Scale subresource paths: spec replicas, status replicas, label selector.
    pub scale: Option<(String, String, Option<String>)>,
}

/// An `additionalPrinterColumns` entry.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
    pub json_path: String,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn strs(v: &Value, p: &str) -> Vec<&'static str> {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(intern).collect())
        .unwrap_or_default()
}

/// Checks a CRD as upstream's validation does for the parts that matter to serving.
pub fn check(crd: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    let name = s(crd, "/metadata/name");
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural", ""));
    }
    if s(crd, "/spec/names/kind").is_empty() {
        errs.push(FieldError::required("spec.names.kind", ""));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let scope = s(crd, "/spec/scope");
    if scope != "Namespaced" && scope != "Cluster" {
        errs.push(FieldError::not_supported(
            "spec.scope",
            scope,
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage") == Some(&json!(true)))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.push(FieldError::invalid_raw(
            "spec.versions",
            format!("{} versions marked as storage", storage),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            errs.push(FieldError::required(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "schemas are required",
            ));
        }
        if s(v, "/name").is_empty() {
            errs.push(FieldError::required(format!("spec.versions[{i}].name"), ""));
        }
    }
    errs
}

/// Upstream's version priority: GA before beta before alpha, higher numbers first,
/// then anything else alphabetically.
pub fn version_priority(v: &str) -> (u8, std::cmp::Reverse<u32>, std::cmp::Reverse<u32>, String) {
    use std::cmp::Reverse;
    let parse = |s: &str| -> Option<(u32, u8, u32)> {
        let rest = s.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let major: u32 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 0, 0));
        }
        for (word, rank) in [("beta", 1), ("alpha", 2)] {
            if let Some(n) = tail.strip_prefix(word) {
                return Some((major, rank, n.parse().ok()?));
            }
        }
        None
    };
    match parse(v) {
        Some((major, rank, minor)) => (rank, Reverse(major), Reverse(minor), String::new()),
        None => (3, Reverse(0), Reverse(0), v.to_string()),
    }
}

/// The served versions a (valid) CRD declares, preferred version first.
pub fn versions(crd: &Value) -> Vec<CustomVersion> {
    let group = intern(s(crd, "/spec/group"));
    let plural = intern(s(crd, "/spec/names/plural"));
    let kind = intern(s(crd, "/spec/names/kind"));
    let singular = match s(crd, "/spec/names/singular") {
        "" => intern(&kind.to_ascii_lowercase()),
        x => intern(x),
    };
    let namespaced = s(crd, "/spec/scope") == "Namespaced";
    let short_names: &'static [&'static str] =
        Box::leak(strs(crd, "/spec/names/shortNames").into_boxed_slice());
    let categories: &'static [&'static str] =
        Box::leak(strs(crd, "/spec/names/categories").into_boxed_slice());
    let all = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage_version = all
        .iter()
        .find(|v| v.get("storage") == Some(&json!(true)))
        .map(|v| intern(s(v, "/name")))
        .unwrap_or_default();
    let mut all = all;
    all.sort_by_key(|v| version_priority(s(v, "/name")));
    all.iter()
        .filter(|v| v.get("served") == Some(&json!(true)))
        .map(|v| {
            let status = v.pointer("/subresources/status").is_some();
            let scale = v.pointer("/subresources/scale").map(|sc| {
                (
                    s(sc, "/specReplicasPath").to_string(),
                    s(sc, "/statusReplicasPath").to_string(),
                    sc.get("labelSelectorPath")
                        .and_then(Value::as_str)
                        .map(String::from),
                )
            });
            let subresources: &'static [&'static str] = match (status, scale.is_some()) {
                (true, true) => &["scale", "status"],
                (true, false) => &["status"],
                (false, true) => &["scale"],
                (false, false) => &[],
            };
            let columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| {
                    cols.iter()
                        .map(|c| PrinterColumn {
                            name: s(c, "/name").to_string(),
                            ty: s(c, "/type").to_string(),
                            format: s(c, "/format").to_string(),
                            description: s(c, "/description").to_string(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
                            json_path: s(c, "/jsonPath").to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            CustomVersion {
                info: ResourceInfo {
                    group,
                    version: intern(s(v, "/name")),
                    kind,
                    plural,
                    singular,
                    namespaced,
                    short_names,
                    categories,
                    verbs: ALL_VERBS,
                    subresources,
                    storage_prefix: intern(&format!("{group}/{plural}")),
                },
                storage_version,
                schema: v
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or(json!({"type": "object"})),
                columns,
                scale,
            }
        })
        .collect()
}

/// Validates `v` against a structural schema, removing fields the schema does not
/// declare (unless it preserves unknown fields). Returns the validation errors and the
/// paths of the removed fields.
pub fn validate(schema: &Value, v: &mut Value) -> (Vec<FieldError>, Vec<String>) {
    let mut errs = Vec::new();
    let mut unknown = Vec::new();
    // apiVersion, kind and metadata are the server's; the schema covers the rest.
    if let Value::Object(m) = v {
        let mut rest = Map::new();
        for (k, val) in std::mem::take(m) {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                m.insert(k, val);
            } else {
                rest.insert(k, val);
            }
        }
        let mut body = Value::Object(rest);
        let mut top = schema.clone();
        if let Some(p) = top.get_mut("properties").and_then(Value::as_object_mut) {
            for k in ["apiVersion", "kind", "metadata"] {
                p.remove(k);
            }
        }
        walk(&top, &mut body, "", &mut errs, &mut unknown);
        if let Value::Object(rest) = body {
            m.extend(rest);
        }
    }
    (errs, unknown)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn walk(
    schema: &Value,
    v: &mut Value,
    path: &str,
    errs: &mut Vec<FieldError>,
    unknown: &mut Vec<String>,
) {
    let at = |p: &str| {
        if p.is_empty() {
            "<root>".to_string()
        } else {
            p.to_string()
        }
    };
    if v.is_null() {
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        if !matches!(v, Value::String(_)) && type_name(v) != "integer" {
            errs.push(FieldError::invalid_raw(
                at(path),
                shown(v),
                "must be an integer or a string",
            ));
        }
        return;
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = ty == actual || (ty == "number" && actual == "integer");
        if !ok {
            errs.push(FieldError {
                field: at(path),
                kind: crate::status::FieldErrorType::Invalid,
                value: Some(shown(v)),
                detail: format!("must be of type {ty}"),
            });
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            errs.push(FieldError::not_supported(
                at(path),
                v.as_str().unwrap_or(&v.to_string()),
                &list,
            ));
        }
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if x < min {
                    errs.push(FieldError::invalid_raw(
                        at(path),
                        n.to_string(),
                        format!("should be greater than or equal to {min}"),
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if x > max {
                    errs.push(FieldError::invalid_raw(
                        at(path),
                        n.to_string(),
                        format!("should be less than or equal to {max}"),
                    ));
                }
            }
        }
        Value::String(st) => {
            let len = st.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    errs.push(FieldError::invalid(
                        at(path),
                        st,
                        format!("should be at least {min} chars long"),
                    ));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    errs.push(FieldError {
                        field: at(path),
                        kind: crate::status::FieldErrorType::TooLong,
                        value: None,
                        detail: format!("may not be more than {max} bytes"),
                    });
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    errs.push(FieldError {
                        field: at(path),
                        kind: crate::status::FieldErrorType::TooMany,
                        value: Some(items.len().to_string()),
                        detail: format!("must have at most {max} items"),
                    });
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    errs.push(FieldError::invalid_raw(
                        at(path),
                        format!("{} items", items.len()),
                        format!("should have at least {min} items"),
                    ));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), errs, unknown);
                }
            }
        }
        Value::Object(m) => {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(r) = req.as_str() {
                    if !m.contains_key(r) {
                        let p = if path.is_empty() {
                            r.to_string()
                        } else {
                            format!("{path}.{r}")
                        };
                        errs.push(FieldError::required(p, ""));
                    }
                }
            }
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let sub = props.and_then(|ps| ps.get(&k)).or(match additional {
                    Some(Value::Object(_)) => additional,
                    _ => None,
                });
                match sub {
                    Some(sub) => walk(sub, m.get_mut(&k).expect("listed"), &p, errs, unknown),
                    None if preserve || additional == Some(&json!(true)) => {}
                    None => {
                        m.remove(&k);
                        unknown.push(p);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Reads a simple JSONPath (`.spec.replicas`, `.status.conditions[0].type`,
/// `.metadata.labels.app`).
pub fn json_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    let p = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    for part in p.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

/// The table columns of a custom resource version: Name, its printer columns, then Age
/// unless a column already shows the creation timestamp.
pub fn columns(cv: &CustomVersion) -> Vec<(Column, Option<String>)> {
    let mut out = vec![(
        Column {
            name: "Name",
            ty: "string",
            format: "name",
            priority: 0,
        },
        None,
    )];
    for c in &cv.columns {
        out.push((
            Column {
                name: intern(&c.name),
                ty: intern(&c.ty),
                format: intern(&c.format),
                priority: c.priority,
            },
            Some(c.json_path.clone()),
        ));
    }
    if !cv
        .columns
        .iter()
        .any(|c| c.json_path == ".metadata.creationTimestamp")
    {
        out.push((
            Column {
                name: "Age",
                ty: "date",
                format: "",
                priority: 0,
            },
            Some(".metadata.creationTimestamp".into()),
        ));
    }
    out
}

/// One row's cells for a custom resource version.
pub fn cells(cv: &CustomVersion, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    columns(cv)
        .iter()
        .map(|(col, path)| match path {
            None => json!(crate::meta::name(obj)),
            Some(p) => match (json_path(obj, p), col.ty) {
                (Some(Value::String(t)), "date") => json!(crate::meta::age(Some(t), now)),
                (Some(v), _) => v.clone(),
                (None, _) => Value::Null,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "color": {"type": "string", "enum": ["red", "blue"]},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}}]}
        })
    }

    #[test]
    fn a_crd_declares_its_versions() {
        assert!(check(&crd()).is_empty());
        let v = versions(&crd());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].info.api_version(), "example.com/v1");
        assert_eq!(v[0].info.singular, "widget");
        assert_eq!(v[0].info.short_names, ["wd"]);
        assert_eq!(v[0].info.subresources, ["status"]);
        let mut bad = crd();
        bad["metadata"]["name"] = json!("nope");
        assert_eq!(check(&bad)[0].field, "metadata.name");
    }

    #[test]
    fn objects_are_validated_and_pruned() {
        let schema = &versions(&crd())[0].schema;
        let mut ok = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "a"},
            "spec": {"size": 3, "color": "red", "typo": 1, "extra": {"anything": true}}});
        let (errs, unknown) = validate(schema, &mut ok);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(unknown, ["spec.typo"]);
        assert!(ok["spec"].get("typo").is_none());
        assert_eq!(ok["spec"]["extra"]["anything"], true);
        let mut bad = json!({"spec": {"size": 30, "color": "green"}});
        let (errs, _) = validate(schema, &mut bad);
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.contains(
                &"spec.size: Invalid value: 30: should be less than or equal to 10".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.color: Unsupported value: \"green\"")),
            "{text:?}"
        );
        let mut missing = json!({"spec": {"size": "big"}});
        let (errs, _) = validate(schema, &mut missing);
        assert_eq!(
            errs[0].to_string(),
            "spec.size: Invalid value: \"big\": must be of type integer"
        );
        let mut none = json!({"spec": {}});
        assert_eq!(
            validate(schema, &mut none).0[0].to_string(),
            "spec.size: Required value"
        );
    }

    #[test]
    fn versions_sort_like_upstream() {
        let mut vs = vec![
            "v1alpha1", "v1", "foo", "v2beta1", "v2", "v1beta2", "v1beta1",
        ];
        vs.sort_by_key(|v| version_priority(v));
        assert_eq!(
            vs,
            ["v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn printer_columns() {
        let cv = &versions(&crd())[0];
        let obj = json!({"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"size": 3}});
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        assert_eq!(
            cells(cv, &obj, now),
            vec![json!("a"), json!(3), json!("60s")]
        );
        assert_eq!(
            columns(cv).iter().map(|c| c.0.name).collect::<Vec<_>>(),
            ["Name", "Size", "Age"]
        );
    }
}
