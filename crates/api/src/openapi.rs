//! OpenAPI v3 documents, one per group/version as upstream serves them under
//! `/openapi/v3/<api|apis/group>/<version>`: the resources' paths and operations (with
//! the `x-kubernetes-group-version-kind` and `x-kubernetes-action` extensions and the
//! query parameters kubectl checks for, such as `fieldValidation`), and the schemas of
//! the types with their descriptions (what `kubectl explain` prints), generated from the
//! compiled types.

use k8s_openapi::schemars::generate::SchemaSettings;
use k8s_openapi::schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use crate::registry::{Registry, ResourceInfo};

/// The path key of a group/version in the `/openapi/v3` index (`api/v1`,
/// `apis/apps/v1`).
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The schema name of a kind's type, when it has one.
fn add_schema(gen: &mut SchemaGenerator, group: &str, kind: &str) -> Option<String> {
    macro_rules! pick {
        ($gen:expr, $group:expr, $kind:expr, { $( ($g:literal, $k:literal) => $t:ty ),* $(,)? }) => {
            match ($group, $kind) {
                $( ($g, $k) => {
                    let s = $gen.subschema_for::<$t>();
                    s.get("$ref").and_then(Value::as_str).map(|r| r.rsplit('/').next().unwrap_or(r).to_string())
                } )*
                _ => None,
            }
        };
    }
    crate::builtin_types!(pick, gen, group, kind,)
}

fn operation_id(verb: &str, r: &ResourceInfo, namespaced: bool) -> String {
    let group = if r.group.is_empty() {
        "Core".to_string()
    } else {
        r.group
            .trim_end_matches(".k8s.io")
            .split('.')
            .map(|p| {
                let mut c = p.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect()
    };
    let version = {
        let mut c = r.version.chars();
        c.next()
            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
            .unwrap_or_default()
    };
    let ns = if namespaced { "Namespaced" } else { "" };
    format!("{verb}{group}{version}{ns}{}", r.kind)
}

fn param(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn write_params(apply: bool) -> Vec<Value> {
    let mut p = vec![
        param("dryRun", "string", "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed"),
        param("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes."),
        param("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict"),
    ];
    if apply {
        p.push(param("force", "boolean", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people."));
    }
    p
}

fn body_ref(schema: &str) -> Value {
    json!({"schema": {"$ref": format!("#/components/schemas/{schema}")}})
}

fn operation(verb: &str, action: &str, r: &ResourceInfo, namespaced: bool, schema: &str) -> Value {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let mut op = json!({
        "operationId": operation_id(verb, r, namespaced),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "responses": {"200": {"description": "OK", "content": {"application/json": body_ref(schema)}}},
    });
    match action {
        "post" | "put" => {
            op["parameters"] = json!(write_params(false));
            op["requestBody"] = json!({"content": {"*/*": body_ref(schema)}, "required": true});
        }
        "patch" => {
            op["parameters"] = json!(write_params(true));
            let patch = body_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch");
            let mut content = json!({
                "application/apply-patch+yaml": patch,
                "application/json-patch+json": patch,
                "application/merge-patch+json": patch,
            });
            // Custom resources take no strategic merge patches (kubectl then sends merge
            // patches).
            let builtin = crate::registry::BUILTIN
                .iter()
                .any(|b| b.group == r.group && b.version == r.version && b.plural == r.plural);
            if builtin {
                content["application/strategic-merge-patch+json"] = patch;
            }
            op["requestBody"] = json!({"content": content, "required": true});
        }
        "list" | "watchlist" => {
            op["parameters"] = json!([
                param("labelSelector", "string", "A selector to restrict the list of returned objects by their labels."),
                param("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields."),
                param("limit", "integer", "limit is a maximum number of responses to return for a list call."),
                param("continue", "string", "The continue option should be set when retrieving more results from the server."),
                param("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
                param("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
            ]);
        }
        _ => {}
    }
    op
}

/// The definition a property refers to (`$ref`, `allOf: [$ref]`, or array `items`).
fn referenced(prop: &Value) -> Option<String> {
    let r = prop
        .get("$ref")
        .or_else(|| prop.pointer("/allOf/0/$ref"))
        .or_else(|| prop.pointer("/items/$ref"))
        .or_else(|| prop.pointer("/items/allOf/0/$ref"))?;
    r.as_str()
        .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
}

/// Marks list properties with their patch strategy (`x-kubernetes-patch-strategy`,
/// `x-kubernetes-patch-merge-key`), so clients compute strategic merge patches that
/// merge lists by key as the server does.
fn annotate_lists(
    schemas: &mut Map<String, Value>,
    kind: &str,
    def: &str,
    path: &mut Vec<String>,
    seen: &mut Vec<String>,
) {
    if seen.iter().any(|s| s == def) || path.len() > 12 {
        return;
    }
    seen.push(def.to_string());
    let props: Vec<(String, Value)> = match schemas.get(def).and_then(|d| d.get("properties")) {
        Some(Value::Object(p)) => p.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => vec![],
    };
    for (field, prop) in props {
        if prop.get("type").and_then(Value::as_str) == Some("array") {
            let ext = match crate::patch::list_strategy(kind, path, &field) {
                crate::patch::ListStrategy::MergeKey(key) => Some((json!("merge"), Some(key))),
                crate::patch::ListStrategy::MergePrimitives => Some((json!("merge"), None)),
                crate::patch::ListStrategy::Replace => None,
            };
            if let Some((strategy, key)) = ext {
                if let Some(Value::Object(p)) = schemas
                    .get_mut(def)
                    .and_then(|d| d.pointer_mut(&format!("/properties/{field}")))
                {
                    p.insert("x-kubernetes-patch-strategy".into(), strategy);
                    if let Some(k) = key {
                        p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
                    }
                }
            }
        }
        if let Some(target) = referenced(&prop) {
            path.push(field.clone());
            annotate_lists(schemas, kind, &target, path, seen);
            path.pop();
        }
    }
    seen.pop();
}

/// The paths and operations of one resource.
fn add_paths(paths: &mut Map<String, Value>, root: &str, r: &ResourceInfo, schema: &str) {
    let (collection, item) = if r.namespaced {
        (
            format!("{root}/namespaces/{{namespace}}/{}", r.plural),
            format!("{root}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
        )
    } else {
        (
            format!("{root}/{}", r.plural),
            format!("{root}/{}/{{name}}", r.plural),
        )
    };
    let ns = r.namespaced;
    let mut c = Map::new();
    c.insert("get".into(), operation("list", "list", r, ns, schema));
    c.insert("post".into(), operation("create", "post", r, ns, schema));
    if r.verbs.contains(&"deletecollection") {
        c.insert(
            "delete".into(),
            operation(
                "deleteCollection",
                "deletecollection",
                r,
                ns,
                "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            ),
        );
    }
    paths.insert(collection, Value::Object(c));
    let mut i = Map::new();
    i.insert("get".into(), operation("read", "get", r, ns, schema));
    i.insert("put".into(), operation("replace", "put", r, ns, schema));
    i.insert("patch".into(), operation("patch", "patch", r, ns, schema));
    i.insert(
        "delete".into(),
        operation(
            "delete",
            "delete",
            r,
            ns,
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
        ),
    );
    paths.insert(item.clone(), Value::Object(i));
    if r.subresources.contains(&"status") {
        let mut s = Map::new();
        s.insert("get".into(), operation("read", "get", r, ns, schema));
        s.insert("put".into(), operation("replace", "put", r, ns, schema));
        s.insert("patch".into(), operation("patch", "patch", r, ns, schema));
        // Status operations are not the kind's main operations for kubectl.
        for op in s.values_mut() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            op["operationId"] = json!(format!("{id}Status"));
        }
        paths.insert(format!("{item}/status"), Value::Object(s));
    }
}

/// The schema name upstream gives a custom resource (`com.example.v1.Widget`).
pub fn custom_schema_name(r: &ResourceInfo) -> String {
    let reversed: Vec<&str> = r.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
}

/// The OpenAPI v3 document of a custom resource group/version: its resources with the
/// CRDs' schemas (metadata as ObjectMeta).
pub fn custom_doc(versions: &[&crate::crd::CustomVersion]) -> Option<Value> {
    let first = versions.first()?;
    let root = format!("/apis/{}/{}", first.info.group, first.info.version);
    let mut gen = SchemaSettings::openapi3().into_generator();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    let mut schemas = gen.take_definitions(true);
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    let mut paths = Map::new();
    for cv in versions {
        let r = &cv.info;
        let name = custom_schema_name(r);
        let mut schema = cv.schema.clone();
        if let Some(o) = schema.as_object_mut() {
            let props = o.entry("properties").or_insert_with(|| json!({}));
            props["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
            props["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
            props["metadata"] = json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "description": "Standard object's metadata."});
            o.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
            );
        }
        schemas.insert(name.clone(), schema);
        add_paths(&mut paths, &root, r, &name);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The OpenAPI v3 document of one group/version; `None` when nothing is served there.
pub fn group_version_doc(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> = reg
        .resources()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut gen = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut gvks: Vec<(String, Value)> = Vec::new();
    let root = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for r in &rs {
        let Some(schema) = add_schema(&mut gen, r.group, r.kind) else {
            continue;
        };
        gvks.push((
            schema.clone(),
            json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
        ));
        add_paths(&mut paths, &root, r, &schema);
    }
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    let mut schemas = gen.take_definitions(true);
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    for (name, gvk) in gvks {
        let kind = gvk[0]["kind"].as_str().unwrap_or_default().to_string();
        annotate_lists(&mut schemas, &kind, &name, &mut Vec::new(), &mut Vec::new());
        if let Some(Value::Object(s)) = schemas.get_mut(&name) {
            s.insert("x-kubernetes-group-version-kind".into(), gvk);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Converts an OpenAPI v3 operation into its Swagger 2.0 form.
fn v2_operation(op: &Value, path_params: &[&str]) -> Value {
    let mut out = op.clone();
    let Some(o) = out.as_object_mut() else {
        return out;
    };
    let mut params: Vec<Value> = path_params
        .iter()
        .map(|p| json!({"name": p, "in": "path", "required": true, "type": "string", "uniqueItems": true}))
        .collect();
    for p in o
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut q = p.clone();
        if let Some(qo) = q.as_object_mut() {
            if let Some(Value::Object(schema)) = qo.remove("schema") {
                for (k, v) in schema {
                    qo.insert(k, v);
                }
            }
        }
        params.push(q);
    }
    if let Some(body) = o.remove("requestBody") {
        let content = body
            .get("content")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let schema = content
            .values()
            .next()
            .and_then(|c| c.get("schema"))
            .cloned()
            .unwrap_or(json!({}));
        params.push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
        let consumes: Vec<&String> = content.keys().collect();
        o.insert("consumes".into(), json!(consumes));
    }
    o.insert("parameters".into(), Value::Array(params));
    if let Some(Value::Object(responses)) = o.get_mut("responses") {
        for r in responses.values_mut() {
            let schema = r.pointer("/content/application~1json/schema").cloned();
            if let Some(ro) = r.as_object_mut() {
                ro.remove("content");
                if let Some(sc) = schema {
                    ro.insert("schema".into(), sc);
                }
            }
        }
    }
    o.insert(
        "produces".into(),
        json!([
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf"
        ]),
    );
    o.insert("schemes".into(), json!(["https"]));
    out
}

/// The Swagger 2.0 document (`/openapi/v2`) made from the OpenAPI v3 documents of every
/// group/version.
pub fn v2_doc(v3_docs: &[Value]) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for doc in v3_docs {
        for (path, item) in doc
            .get("paths")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let params: Vec<&str> = ["namespace", "name"]
                .into_iter()
                .filter(|p| path.contains(&format!("{{{p}}}")))
                .collect();
            let mut ops = Map::new();
            for (method, op) in item.as_object().into_iter().flatten() {
                ops.insert(method.clone(), v2_operation(op, &params));
            }
            paths.insert(path.clone(), Value::Object(ops));
        }
        for (name, schema) in doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            definitions.insert(name.clone(), schema.clone());
        }
    }
    let doc = json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}],
    });
    // References point at definitions in Swagger 2.0.
    let text = doc
        .to_string()
        .replace("#/components/schemas/", "#/definitions/");
    serde_json::from_str(&text).expect("re-reading our own JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_v1_has_deployments_with_their_schema() {
        let doc = group_version_doc(&Registry::default(), "apps", "v1").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let d = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let spec_ref = d["properties"]["spec"].to_string();
        assert!(
            spec_ref.contains("#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"),
            "{spec_ref}"
        );
        assert!(
            doc["components"]["schemas"]["io.k8s.api.core.v1.Container"]["properties"]["image"]
                ["description"]
                .as_str()
                .is_some_and(|d| d.contains("image"))
        );
        let containers =
            &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let ports =
            &doc["components"]["schemas"]["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        assert!(group_version_doc(&Registry::default(), "nope", "v1").is_none());
        let v2 = v2_doc(&[doc]);
        assert_eq!(v2["swagger"], "2.0");
        let op = &v2["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["put"];
        let params = op["parameters"].as_array().unwrap();
        assert!(params
            .iter()
            .any(|p| p["in"] == "path" && p["name"] == "namespace"));
        assert_eq!(
            params.iter().find(|p| p["in"] == "body").unwrap()["schema"]["$ref"],
            "#/definitions/io.k8s.api.apps.v1.Deployment"
        );
        assert!(v2["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
        assert!(!v2.to_string().contains("#/components/"));
    }
}
