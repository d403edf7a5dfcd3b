//! The resource API: get, list, watch, create, update, patch, delete and deletecollection
//! for every resource in the registry, with upstream's semantics — resourceVersion as
//! the store revision, optimistic concurrency, defaulting, validation, admission,
//! graceful deletion and finalizers, `Table` output, subresources.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use ferrokube_api::fields::{selectable_fields, FieldSelector};
use ferrokube_api::keys::{list_prefix, object_key};
use ferrokube_api::meta::{self, metadata_mut};
use ferrokube_api::patch::{self, PatchError};
use ferrokube_api::status::{self, FieldError, StatusError};
use ferrokube_api::table::{self, Include};
use ferrokube_api::{checks, defaults, typed, LabelSelector, Registry, ResourceInfo};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Map, Value};

use crate::alloc::{self, Allocator};
use crate::request::{Query, ResourcePath, Verb};
use crate::storage::{Objects, Outcome, Stored, Update};
use crate::watchcache::WatchCache;

/// Errors of streamed bodies (gRPC responses share the connection's body type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response bodies: whole documents or streams (watch, gRPC).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A whole-document response.
pub fn full(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(
            Full::new(body.into())
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts")
}

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    full(
        code,
        "application/json",
        serde_json::to_vec(v).expect("JSON values serialize"),
    )
}

/// A `Status` error response.
pub fn error_response(e: &StatusError) -> Response<Body> {
    let body = serde_json::to_value(&e.0).expect("Status serializes");
    json_response(
        StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

/// The largest request body accepted (upstream's 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Kinds whose `metadata.generation` tracks spec changes.
const GENERATION_KINDS: &[&str] = &[
    "Deployment",
    "ReplicaSet",
    "ReplicationController",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "CronJob",
    "HorizontalPodAutoscaler",
    "Ingress",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "CustomResourceDefinition",
    "PersistentVolumeClaim",
];

/// The most evictions a PodDisruptionBudget may hold unconfirmed by its controller.
const MAX_DISRUPTED_PODS: usize = 2000;

/// How a response should look, from the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    Table(Include),
    PartialMetadata,
}

impl Shape {
    pub fn from_request(headers: &HeaderMap, query: &Query) -> Shape {
        let accept = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // The first acceptable form wins, as upstream negotiates.
        for part in accept.split(',') {
            let p = part.replace(' ', "");
            if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
                let include = match query.str("includeObject") {
                    "None" => Include::None,
                    "Object" => Include::Object,
                    _ => Include::Metadata,
                };
                return Shape::Table(include);
            }
            if p.contains("as=PartialObjectMetadata") && p.contains("g=meta.k8s.io") {
                return Shape::PartialMetadata;
            }
            if p.starts_with("application/json") || p.starts_with("*/*") || p.is_empty() {
                return Shape::Object;
            }
        }
        Shape::Object
    }
}

/// The validation directive of a write (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

/// A write's options from its query.
struct WriteOptions {
    dry_run: bool,
    validation: FieldValidation,
}

impl WriteOptions {
    fn from(query: &Query) -> Result<WriteOptions, StatusError> {
        let dry_run = match query.get("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(status::bad_request(format!(
                    "Invalid dryRun value: {other:?}. Valid values are: \"All\""
                )))
            }
        };
        let validation = match query.get("fieldValidation") {
            None | Some("") | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(other) => {
                return Err(status::bad_request(format!(
                    "fieldValidation {other:?} is invalid: must be one of Ignore, Warn, Strict"
                )))
            }
        };
        Ok(WriteOptions {
            dry_run,
            validation,
        })
    }
}

/// The resource API.
pub struct Resources {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub objects: Objects,
    pub cache: Arc<WatchCache>,
    /// Built-in and custom resources; replaced whole when CRDs change.
    pub registry: std::sync::RwLock<Arc<Registry>>,
    /// Served custom resource versions by (group, version, plural).
    pub custom: std::sync::RwLock<
        std::collections::HashMap<(String, String, String), Arc<ferrokube_api::crd::CustomVersion>>,
    >,
    pub alloc: Allocator,
    /// Signs service-account tokens, once a key is configured.
    pub tokens: std::sync::OnceLock<crate::serviceaccount::Tokens>,
    /// Authorizes users other than `system:masters`.
    pub rbac: crate::rbac::Rbac,
    /// The admission plugins switched on (all, unless set otherwise).
    pub admission: std::sync::OnceLock<crate::admission::Plugins>,
}

/// One call to the resource API.
pub struct Call<'a> {
    pub method: &'a Method,
    pub path: &'a ResourcePath,
    pub query: &'a Query,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// Written by server-side apply, which records field ownership itself.
    pub applied: bool,
}

impl Call<'_> {
    /// The field manager of a write: `fieldManager`, else the user agent's product
    /// (`kubectl`, `OpenAPI-Generator`), as upstream names it.
    pub fn manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        let ua = header_str(self.headers, http::header::USER_AGENT);
        match ua
            .split('/')
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(p) => p.to_string(),
            None => "unknown".to_string(),
        }
    }
}

/// A finished response plus warnings (sent as `Warning` headers).
pub(crate) struct Answer {
    pub(crate) code: StatusCode,
    pub(crate) body: Value,
    warnings: Vec<String>,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer {
            code: StatusCode::OK,
            body,
            warnings: vec![],
        }
    }
}

fn strip_type(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    v
}

fn header_str(h: &HeaderMap, name: http::header::HeaderName) -> &str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Parses a JSON request body (YAML that is JSON is JSON too).
fn parse_body(body: &[u8], content_type: &str) -> Result<Value, StatusError> {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    if !ct.is_empty()
        && !matches!(
            ct,
            "application/json"
                | "application/yaml"
                | "application/json-patch+json"
                | "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/apply-patch+yaml"
                | "application/vnd.kubernetes.protobuf"
                | "*/*"
        )
    {
        return Err(status::unsupported_media_type(ct));
    }
    if ct == "application/vnd.kubernetes.protobuf" {
        return ferrokube_api::protobuf::decode(body)
            .map_err(|e| status::bad_request(format!("decoding the protobuf body: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| {
        if ct.contains("yaml") {
            status::bad_request(format!(
                "the body is not JSON ({e}); this server reads YAML bodies only in their JSON form"
            ))
        } else {
            status::bad_request(format!(
                "Object 'Kind' is missing in '{}': {e}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        }
    })
}

impl Resources {
    /// The resources served now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().expect("registry lock").clone()
    }

    /// The custom resource version `r` is, if it is one.
    pub fn custom(&self, r: &ResourceInfo) -> Option<Arc<ferrokube_api::crd::CustomVersion>> {
        self.custom
            .read()
            .expect("custom lock")
            .get(&(
                r.group.to_string(),
                r.version.to_string(),
                r.plural.to_string(),
            ))
            .cloned()
    }

    /// Answers a resource request (already authorized).
    pub async fn handle(
        self: &Arc<Self>,
        r: &ResourceInfo,
        verb: Verb,
        call: Call<'_>,
    ) -> Response<Body> {
        let shape = Shape::from_request(call.headers, call.query);
        let result = match verb {
            Verb::Watch => {
                return crate::watch::serve(self.clone(), *r, call.path, call.query, shape).await
            }
            Verb::Get => self.get(r, &call, shape).await,
            Verb::List => self.list(r, &call, shape).await,
            Verb::Create => self.create(r, &call).await,
            Verb::Update => self.update(r, &call).await,
            Verb::Patch => self.patch(r, &call).await,
            Verb::Delete => self.delete(r, &call).await,
            Verb::DeleteCollection => self.delete_collection(r, &call).await,
        };
        match result {
            Ok(mut a) => {
                // Tables print the stored form; objects are shown in the form asked for.
                let body = match (shape, verb) {
                    (Shape::Table(inc), Verb::Get) if a.code.is_success() => {
                        self.table(r, &[a.body], None, inc)
                    }
                    (Shape::Table(_), Verb::List) => a.body,
                    _ => {
                        self.present(r, &mut a.body);
                        a.body
                    }
                };
                let mut resp = json_response(a.code, &body);
                for w in a.warnings {
                    if let Ok(v) = http::HeaderValue::from_str(&format!("299 - {w:?}")) {
                        resp.headers_mut().append("warning", v);
                    }
                }
                resp
            }
            Err(e) => error_response(&e),
        }
    }

    fn key(&self, r: &ResourceInfo, ns: Option<&str>, name: &str) -> String {
        object_key(r, ns.unwrap_or_default(), name)
    }

    fn derived(&self, r: &ResourceInfo) -> impl Fn(&Value) -> Vec<String> + Sync + '_ {
        let service = r.kind == "Service" && r.group.is_empty();
        move |v: &Value| {
            if service {
                self.alloc.keys(v)
            } else {
                vec![]
            }
        }
    }

    /// A `Table` of objects (`Accept: ...;as=Table;g=meta.k8s.io;v=v1`).
    pub fn table(
        &self,
        r: &ResourceInfo,
        items: &[Value],
        list_meta: Option<Value>,
        include: Include,
    ) -> Value {
        let now = jiff::Timestamp::now();
        if let Some(cv) = self.custom(r) {
            let cols: Vec<Value> = ferrokube_api::crd::columns(&cv)
                .iter()
                .map(|(c, _)| c.definition())
                .collect();
            let rows: Vec<Value> = items
                .iter()
                .map(|o| {
                    let object = match include {
                        Include::None => Value::Null,
                        Include::Metadata => table::partial_metadata(o),
                        Include::Object => o.clone(),
                    };
                    json!({"cells": ferrokube_api::crd::cells(&cv, o, now), "object": object})
                })
                .collect();
            return json!({
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": list_meta.unwrap_or(json!({})),
                "columnDefinitions": cols,
                "rows": rows,
            });
        }
        let cols: Vec<Value> = table::columns(r.kind)
            .iter()
            .map(|c| c.definition())
            .collect();
        let rows: Vec<Value> = items
            .iter()
            .map(|o| table::row(r.kind, o, now, include))
            .collect();
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": list_meta.unwrap_or(json!({})),
            "columnDefinitions": cols,
            "rows": rows,
        })
    }

    // ------------------------------------------------------------------ reads

    async fn get(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
        shape: Shape,
    ) -> Result<Answer, StatusError> {
        let p = call.path;
        let name = p.name.as_deref().unwrap_or_default();
        let stored = self
            .objects
            .get(&self.key(r, p.namespace.as_deref(), name))
            .await?
            .ok_or_else(|| status::not_found(r, name))?;
        match p.subresource.as_deref() {
            None => {}
            Some("status") if r.subresources.contains(&"status") => {}
            Some("scale") if r.subresources.contains(&"scale") => {
                return Ok(Answer::ok(scale_of(r, &stored.object)))
            }
            Some(_) => return Err(status::no_route()),
        }
        if shape == Shape::PartialMetadata {
            return Ok(Answer::ok(table::partial_metadata(&stored.object)));
        }
        Ok(Answer::ok(stored.object))
    }

    /// The selectors of a list or watch, checked.
    pub fn selectors(
        r: &ResourceInfo,
        q: &Query,
        name: Option<&str>,
    ) -> Result<(LabelSelector, FieldSelector), StatusError> {
        let labels = LabelSelector::parse(q.str("labelSelector"))
            .map_err(|e| status::bad_request(format!("unable to parse requirement: {e}")))?;
        let mut fields = FieldSelector::parse(q.str("fieldSelector"))
            .map_err(|e| status::bad_request(e.to_string()))?;
        let sample = selectable_fields(r.kind, r.namespaced, &json!({}));
        fields
            .check_supported(&sample)
            .map_err(|e| status::bad_request(e.to_string()))?;
        if let Some(n) = name {
            fields = FieldSelector::parse(&format!("metadata.name={n}"))
                .map_err(|e| status::bad_request(e.to_string()))
                .map(|mut f| {
                    f.terms.extend(fields.terms);
                    f
                })?;
        }
        Ok((labels, fields))
    }

    /// Whether an object passes a list's or watch's selectors.
    pub fn selected(
        r: &ResourceInfo,
        labels: &LabelSelector,
        fields: &FieldSelector,
        obj: &Value,
    ) -> bool {
        labels.matches(&meta::labels(obj))
            && (fields.terms.is_empty()
                || fields.matches(&selectable_fields(r.kind, r.namespaced, obj)))
    }

    /// Reads the list revision a request asks for: 0 for the latest.
    async fn list_revision(&self, q: &Query) -> Result<i64, StatusError> {
        let rv = q.str("resourceVersion");
        if rv.is_empty() || rv == "0" {
            return Ok(0);
        }
        let n: i64 = rv
            .parse()
            .map_err(|_| status::bad_request(format!("invalid resource version: {rv:?}")))?;
        match q.str("resourceVersionMatch") {
            "Exact" => Ok(n),
            "" | "NotOlderThan" => {
                // Not older than n: the latest, once the store has reached n.
                for _ in 0..30 {
                    if self.objects.store().state().progress().current >= n {
                        return Ok(0);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status::timeout(format!(
                    "Too large resource version: {n}, current: {}",
                    self.objects.store().state().progress().current
                )))
            }
            other => Err(status::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            ))),
        }
    }

    /// Lists objects, filtered, in pages. Returns the items, the revision read at, and the
    /// continue token and remaining count when more are left.
    pub async fn list_items(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        q: &Query,
    ) -> Result<(Vec<Value>, i64, Option<String>, Option<i64>), StatusError> {
        let (labels, fields) = Self::selectors(r, q, None)?;
        let ns = ns.or_else(|| fields.exact("metadata.namespace"));
        let prefix = list_prefix(r, ns);
        let limit: i64 = match q.get("limit") {
            Some(l) if !l.is_empty() => l.parse().unwrap_or(0).max(0),
            _ => 0,
        };
        let (mut revision, mut start) = match q.get("continue") {
            Some(c) if !c.is_empty() => {
                let (rv, rel) = decode_continue(c)?;
                (rv, format!("{prefix}{rel}"))
            }
            _ => (self.list_revision(q).await?, String::new()),
        };
        let filtered = !labels.is_everything() || !fields.terms.is_empty();
        // A single object by name needs no scan.
        if let (Some(name), 0) = (fields.exact("metadata.name"), limit) {
            if ns.is_some() || !r.namespaced {
                let key = format!("{prefix}{name}");
                let page = self.objects.list(&key, "", revision, 1).await?;
                let items = page
                    .items
                    .into_iter()
                    .filter(|s| s.key == key && Self::selected(r, &labels, &fields, &s.object))
                    .map(|s| s.object)
                    .collect();
                return Ok((items, page.revision, None, None));
            }
        }
        let mut items = Vec::new();
        let chunk = if limit > 0 {
            limit.max(if filtered { 500 } else { 0 })
        } else {
            0
        };
        for _ in 0..10_000 {
            let page = self
                .objects
                .list(&prefix, &start, revision, chunk)
                .await
                .map_err(|e| {
                    if e.code() == 410 && q.get("continue").is_some() {
                        status::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
                    } else {
                        e
                    }
                })?;
            revision = page.revision;
            let more = page.more;
            let mut last_key = None;
            for s in page.items {
                last_key = Some(s.key.clone());
                if Self::selected(r, &labels, &fields, &s.object) {
                    items.push(s.object);
                    if limit > 0 && items.len() as i64 >= limit {
                        break;
                    }
                }
            }
            let full = limit > 0 && items.len() as i64 >= limit;
            if full || !more {
                // Is anything left after the last key we looked at?
                let left = match &last_key {
                    Some(k) if full => {
                        let after = format!("{k}\0");
                        let rest = self.objects.list(&prefix, &after, revision, 1).await?;
                        (!rest.items.is_empty())
                            .then_some((after, rest.remaining + rest.items.len() as i64))
                    }
                    _ => None,
                };
                return Ok(match left {
                    Some((after, count)) => {
                        let token = encode_continue(revision, &after[prefix.len()..]);
                        (items, revision, Some(token), (!filtered).then_some(count))
                    }
                    None => (items, revision, None, None),
                });
            }
            start = format!("{}\0", last_key.expect("a page with more has items"));
        }
        Err(status::timeout("list did not finish"))
    }

    async fn list(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
        shape: Shape,
    ) -> Result<Answer, StatusError> {
        let ns = call.path.namespace.as_deref();
        let (items, revision, cont, remaining) = self.list_items(r, ns, call.query).await?;
        let mut lm = json!({"resourceVersion": revision.to_string()});
        if let Some(c) = cont {
            lm["continue"] = json!(c);
        }
        if let Some(n) = remaining {
            lm["remainingItemCount"] = json!(n);
        }
        let body = match shape {
            Shape::Table(inc) => self.table(r, &items, Some(lm), inc),
            Shape::PartialMetadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": lm,
                "items": items.iter().map(table::partial_metadata).collect::<Vec<_>>(),
            }),
            Shape::Object => json!({
                "kind": format!("{}List", r.kind),
                "apiVersion": r.api_version(),
                "metadata": lm,
                "items": items.into_iter().map(strip_type).collect::<Vec<_>>(),
            }),
        };
        Ok(Answer::ok(body))
    }

    // ------------------------------------------------------------------ admission

    /// Reads and checks a write's body: JSON, of this resource's kind, in the request's
    /// namespace.
    fn body_object(&self, r: &ResourceInfo, call: &Call<'_>) -> Result<Value, StatusError> {
        let ct = header_str(call.headers, http::header::CONTENT_TYPE);
        let mut obj = parse_body(&call.body, ct)?;
        if !obj.is_object() {
            return Err(status::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        if !api_version.is_empty() && api_version != r.api_version() {
            return Err(status::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                r.api_version()
            )));
        }
        if !kind.is_empty() && kind != r.kind {
            return Err(status::bad_request(format!(
                "{kind} in version {:?} cannot be handled as a {}: the object provided is unrecognized (must be of type {})",
                r.version, r.kind, r.kind
            )));
        }
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        if r.namespaced {
            let path_ns = call.path.namespace.clone().unwrap_or_default();
            let body_ns = meta::namespace(&obj).to_string();
            if !body_ns.is_empty() && body_ns != path_ns {
                return Err(status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            metadata_mut(&mut obj).insert("namespace".into(), json!(path_ns));
        } else {
            metadata_mut(&mut obj).remove("namespace");
        }
        Ok(obj)
    }

    /// Decodes against the type: type errors are 400, unknown fields per
    /// `fieldValidation`.
    fn decode_typed(
        &self,
        r: &ResourceInfo,
        obj: Value,
        validation: FieldValidation,
        warnings: &mut Vec<String>,
    ) -> Result<Value, StatusError> {
        let cannot = |why: String| {
            status::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {why}",
                r.kind, r.version, r.kind
            ))
        };
        let d = match self.custom(r) {
            // Custom resources: the version's structural schema validates and prunes.
            Some(cv) => {
                let mut object = obj;
                let (errs, unknown) = ferrokube_api::crd::validate(&cv.schema, &mut object);
                if !errs.is_empty() {
                    return Err(status::invalid(r.group, r.kind, meta::name(&object), &errs));
                }
                typed::Decoded { object, unknown }
            }
            None => typed::decode(&typed::type_group(r.group, r.version, r.kind), r.kind, &obj)
                .map_err(cannot)?,
        };
        if !d.unknown.is_empty() {
            match validation {
                FieldValidation::Strict => {
                    let list: Vec<String> = d
                        .unknown
                        .iter()
                        .map(|u| format!("unknown field {u:?}"))
                        .collect();
                    return Err(cannot(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
                FieldValidation::Warn => {
                    warnings.extend(d.unknown.iter().map(|u| format!("unknown field {u:?}")))
                }
                FieldValidation::Ignore => {}
            }
        }
        Ok(d.object)
    }

    fn validate(r: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Result<(), StatusError> {
        let mut errs = checks::object_meta(r.kind, obj, r.namespaced);
        errs.extend(checks::object(r.kind, obj));
        if let Some(old) = old {
            errs.extend(checks::update(r.kind, old, obj));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(status::invalid(r.group, r.kind, meta::name(obj), &errs))
        }
    }

    async fn check_namespace(
        &self,
        r: &ResourceInfo,
        ns: &str,
        name: &str,
    ) -> Result<(), StatusError> {
        let ns_info = ferrokube_api::registry::builtin("", "namespaces");
        match self.objects.get(&object_key(&ns_info, "", ns)).await? {
            None => Err(status::not_found(&ns_info, ns)),
            Some(s) if s.object.pointer("/metadata/deletionTimestamp").is_some() => {
                let mut e = status::forbidden(
                    r,
                    name,
                    &format!("unable to create new content in namespace {ns} because it is being terminated"),
                );
                // Upstream's NamespaceLifecycle names the cause, so clients can tell.
                if let Some(d) = e.0.details.as_mut() {
                    d.causes = Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
                            reason: Some("NamespaceTerminating".into()),
                            field: Some("metadata.namespace".into()),
                            message: Some("namespace is being terminated".into()),
                        },
                    ]);
                }
                Err(e)
            }
            Some(_) => Ok(()),
        }
    }

    /// Admission for creates: metadata the server owns, defaults, kind-specific
    /// mutation (pods, jobs, secrets, namespaces, services), then validation.
    async fn prepare_create(&self, r: &ResourceInfo, obj: &mut Value) -> Result<(), StatusError> {
        {
            let m = metadata_mut(obj);
            m.insert("uid".into(), json!(meta::new_uid()));
            m.insert("creationTimestamp".into(), json!(meta::now()));
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "generation",
            ] {
                m.remove(k);
            }
            if GENERATION_KINDS.contains(&r.kind) || self.custom(r).is_some() {
                m.insert("generation".into(), json!(1));
            }
            drop_empty_metadata(m);
        }
        defaults::apply(r.kind, obj);
        if r.subresources.contains(&"status") {
            let status = if self.custom(r).is_some() {
                None
            } else {
                initial_status(r.kind, obj)
            };
            match status {
                Some(s) => obj["status"] = s,
                None => {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        match (r.group, r.kind) {
            ("", "Pod") => self.admit_pod(obj).await?,
            ("", "Namespace") => {
                let name = meta::name(obj).to_string();
                let m = metadata_mut(obj);
                let labels = m.entry("labels").or_insert(json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
                obj["status"] = json!({"phase": "Active"});
            }
            ("", "Secret") => merge_string_data(obj),
            ("batch", "Job") => job_selector(obj),
            ("networking.k8s.io", "Ingress") => self.admit_ingress(obj).await?,
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                let errs = ferrokube_api::crd::check(obj);
                if !errs.is_empty() {
                    return Err(status::invalid(r.group, r.kind, meta::name(obj), &errs));
                }
                // The cleanup finalizer: custom objects go before their definition.
                let m = metadata_mut(obj);
                let f = m.entry("finalizers").or_insert(json!([]));
                if let Some(list) = f.as_array_mut() {
                    push_unique(list, crate::crds::CLEANUP_FINALIZER);
                }
                obj["status"] = json!({"acceptedNames": {"kind": "", "plural": ""}, "conditions": [], "storedVersions": []});
            }
            ("", "Service") => {
                let taken = self.objects.keys(alloc::ROOT).await?;
                self.alloc
                    .assign(obj, None, &taken)
                    .map_err(|errs| status::invalid(r.group, r.kind, meta::name(obj), &errs))?;
            }
            _ => {}
        }
        Self::validate(r, obj, None)
    }

    /// The DefaultIngressClass plugin: an Ingress naming no class (neither
    /// `spec.ingressClassName` nor the deprecated annotation) gets the default one.
    async fn admit_ingress(&self, ing: &mut Value) -> Result<(), StatusError> {
        let plugins = self.admission.get().copied().unwrap_or_default();
        let annotation = meta::metadata(ing)
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get("kubernetes.io/ingress.class"))
            .and_then(Value::as_str)
            .map(String::from);
        let annotated = annotation.is_some();
        // Upstream's create-time check: the annotation and the field agree.
        if let (Some(a), Some(c)) = (&annotation, ing["spec"]["ingressClassName"].as_str()) {
            if a != c {
                let err = FieldError::invalid(
                    "annotations.kubernetes.io/ingress.class",
                    a,
                    "must match `ingressClassName` when both are specified",
                );
                return Err(status::invalid(
                    "networking.k8s.io",
                    "Ingress",
                    meta::name(ing),
                    &[err],
                ));
            }
        }
        if !plugins.default_ingress_class
            || annotated
            || !ing.get("spec").is_some_and(Value::is_object)
            || ing["spec"]
                .get("ingressClassName")
                .is_some_and(|c| !c.is_null())
        {
            return Ok(());
        }
        let classes = ferrokube_api::registry::builtin("networking.k8s.io", "ingressclasses");
        let page = self
            .objects
            .list(&list_prefix(&classes, None), "", 0, 0)
            .await?;
        let all: Vec<Value> = page.items.into_iter().map(|s| s.object).collect();
        if let Some(name) = crate::admission::default_ingress_class(&all) {
            ing["spec"]["ingressClassName"] = json!(name);
        }
        Ok(())
    }

    /// Pod admission: the service account, priority and default tolerations upstream's
    /// admission plugins add.
    async fn admit_pod(&self, pod: &mut Value) -> Result<(), StatusError> {
        if !pod.get("spec").is_some_and(Value::is_object) {
            return Ok(());
        }
        let plugins = self.admission.get().copied().unwrap_or_default();
        let pods = ferrokube_api::registry::builtin("", "pods");
        let mirror = meta::metadata(pod)
            .and_then(|m| m.get("annotations"))
            .is_some_and(|a| a.get(crate::admission::MIRROR_ANNOTATION).is_some());
        if plugins.service_account {
            self.admit_service_account(pod, mirror).await?;
        }
        let spec = pod["spec"].as_object_mut().expect("checked above");
        // The deprecated alias follows the name.
        if let Some(sa) = spec.get("serviceAccountName").cloned() {
            spec.insert("serviceAccount".into(), sa);
        }
        spec.entry("enableServiceLinks").or_insert(json!(true));
        if plugins.default_toleration_seconds {
            let tolerations = spec.entry("tolerations").or_insert(json!([]));
            if let Some(list) = tolerations.as_array_mut() {
                for key in [
                    "node.kubernetes.io/not-ready",
                    "node.kubernetes.io/unreachable",
                ] {
                    let has = list.iter().any(|t| {
                        t.get("key").and_then(Value::as_str) == Some(key)
                            && matches!(
                                t.get("effect").and_then(Value::as_str),
                                None | Some("NoExecute") | Some("")
                            )
                    });
                    if !has {
                        list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                    }
                }
            }
        }
        if !plugins.priority {
            return Ok(());
        }
        // Priority.
        let class = spec
            .get("priorityClassName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let pc_info = ferrokube_api::registry::builtin("scheduling.k8s.io", "priorityclasses");
        let (value, policy) = if class.is_empty() {
            (0, Some(json!("PreemptLowerPriority")))
        } else {
            match self.objects.get(&object_key(&pc_info, "", &class)).await? {
                Some(pc) => (
                    pc.object.get("value").and_then(Value::as_i64).unwrap_or(0),
                    pc.object.get("preemptionPolicy").cloned(),
                ),
                None => {
                    return Err(status::forbidden(
                        &pods,
                        meta::name(pod),
                        &format!("no PriorityClass with name {class} was found"),
                    ));
                }
            }
        };
        // As upstream: the class decides; a pod may repeat its values, not contradict them.
        let given = spec.get("priority").and_then(Value::as_i64);
        if let Some(g) = given.filter(|g| *g != value) {
            return Err(status::forbidden(
                &pods,
                meta::name(pod),
                &format!("the integer value of priority ({g}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"),
            ));
        }
        let given = spec
            .get("preemptionPolicy")
            .and_then(Value::as_str)
            .map(String::from);
        if let (Some(g), Some(p)) = (&given, policy.as_ref().and_then(Value::as_str)) {
            if g != p {
                return Err(status::forbidden(
                    &pods,
                    meta::name(pod),
                    &format!("the string value of PreemptionPolicy ({g}) must not be provided in pod spec; priority admission controller computed {p} from the given PriorityClass name"),
                ));
            }
        }
        let spec = pod["spec"].as_object_mut().expect("checked above");
        spec.insert("priority".into(), json!(value));
        if let Some(p) = policy {
            spec.insert("preemptionPolicy".into(), p);
        }
        Ok(())
    }

    /// The ServiceAccount plugin at pod creation: mirror pods reach no credentials;
    /// other pods run as `default` unless they name an account, which must exist (the
    /// `default` one is waited for up to about two seconds, as its controller makes it
    /// with the namespace), and get its token volume and image pull secrets.
    async fn admit_service_account(
        &self,
        pod: &mut Value,
        mirror: bool,
    ) -> Result<(), StatusError> {
        let pods = ferrokube_api::registry::builtin("", "pods");
        if mirror {
            return match crate::admission::mirror_pod_refusal(pod) {
                Some(why) => Err(status::forbidden(&pods, meta::name(pod), why)),
                None => Ok(()),
            };
        }
        let spec = pod["spec"].as_object_mut().expect("checked by admit_pod");
        let name = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| spec.get("serviceAccount").and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        spec.insert("serviceAccountName".into(), json!(name));
        let ns = meta::namespace(pod).to_string();
        let sa = ferrokube_api::registry::builtin("", "serviceaccounts");
        let key = object_key(&sa, &ns, &name);
        let attempts = if name == "default" { 10 } else { 1 };
        let mut account = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(rand::random_range(100..200))).await;
            }
            if let Some(found) = self.objects.get(&key).await? {
                account = Some(found.object);
                break;
            }
        }
        let Some(account) = account else {
            return Err(status::forbidden(
                &pods,
                meta::name(pod),
                &format!("error looking up service account {ns}/{name}: serviceaccount {name:?} not found"),
            ));
        };
        let automount = crate::admission::should_automount(&account, pod);
        crate::admission::apply_service_account(pod, &account, automount, &meta::random_suffix(5));
        Ok(())
    }

    /// Admission for updates: keeps what the server owns, honours the subresource (the
    /// main resource cannot change status; `status` changes only status), bumps the
    /// generation on spec changes, validates.
    async fn prepare_update(
        &self,
        r: &ResourceInfo,
        sub: Option<&str>,
        old: &Value,
        mut new: Value,
    ) -> Result<Value, StatusError> {
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        if sub == Some("finalize") {
            // Only the namespace's finalizers change.
            let mut out = old.clone();
            out["spec"]["finalizers"] = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            new = out;
        } else if sub == Some("status") {
            // Only the status changes (and, as upstream allows, nothing else).
            let mut out = old.clone();
            out["status"] = new.get("status").cloned().unwrap_or(json!({}));
            new = out;
        } else if r.subresources.contains(&"status") {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        {
            let m = metadata_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        m.insert(k.into(), v.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
            m.remove("selfLink");
            drop_empty_metadata(m);
        }
        defaults::apply(r.kind, &mut new);
        match (r.group, r.kind) {
            ("", "Secret") => merge_string_data(&mut new),
            ("apiextensions.k8s.io", "CustomResourceDefinition") if sub != Some("status") => {
                let errs = ferrokube_api::crd::check(&new);
                if !errs.is_empty() {
                    return Err(status::invalid(r.group, r.kind, meta::name(&new), &errs));
                }
            }
            ("", "Namespace") => {
                let name = meta::name(&new).to_string();
                let m = metadata_mut(&mut new);
                let labels = m.entry("labels").or_insert(json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
                if sub != Some("status") {
                    new["status"] = old
                        .get("status")
                        .cloned()
                        .unwrap_or(json!({"phase": "Active"}));
                }
                if sub != Some("finalize") {
                    // spec.finalizers change only through `finalize`.
                    match old.pointer("/spec/finalizers") {
                        Some(f) => new["spec"]["finalizers"] = f.clone(),
                        None => {
                            if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                                spec.remove("finalizers");
                            }
                        }
                    }
                }
            }
            ("", "Service") => {
                let taken = self.objects.keys(alloc::ROOT).await?;
                self.alloc
                    .assign(&mut new, Some(old), &taken)
                    .map_err(|errs| status::invalid(r.group, r.kind, meta::name(&new), &errs))?;
            }
            ("", "Pod") => {
                // Fields set by admission at create stay as they were.
                for f in [
                    "serviceAccountName",
                    "serviceAccount",
                    "priority",
                    "nodeName",
                    "enableServiceLinks",
                    "preemptionPolicy",
                ] {
                    if let (Some(v), Some(spec)) = (
                        old.pointer(&format!("/spec/{f}")),
                        new.get_mut("spec").and_then(Value::as_object_mut),
                    ) {
                        if !spec.contains_key(f) {
                            spec.insert(f.into(), v.clone());
                        }
                    }
                }
            }
            _ => {}
        }
        let custom_changed = self.custom(r).is_some() && {
            // Custom resources: any change outside metadata and status.
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("metadata");
                    o.remove("status");
                }
                v
            };
            strip(old) != strip(&new)
        };
        if (GENERATION_KINDS.contains(&r.kind) && old.get("spec") != new.get("spec"))
            || custom_changed
        {
            let g = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            metadata_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        Self::validate(r, &new, Some(old))?;
        Ok(new)
    }

    // ------------------------------------------------------------------ writes

    pub(crate) async fn create(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Answer, StatusError> {
        let p = call.path;
        if p.name.is_some() {
            return match (p.subresource.as_deref(), r.kind) {
                (Some("binding"), "Pod") => self.bind(r, call).await,
                (Some("eviction"), "Pod") => self.evict(r, call).await,
                (Some("token"), "ServiceAccount") => self.token_request(r, call).await,
                _ => Err(status::method_not_supported()),
            };
        }
        if !r.verbs.contains(&"create") {
            return Err(status::method_not_supported());
        }
        let opts = WriteOptions::from(call.query)?;
        let mut warnings = Vec::new();
        let obj = self.body_object(r, call)?;
        let obj = self.decode_typed(r, obj, opts.validation, &mut warnings)?;
        let mut obj = Self::to_storage(r, obj);
        let generate = meta::meta_str(&obj, "generateName").to_string();
        if meta::name(&obj).is_empty() && !generate.is_empty() {
            metadata_mut(&mut obj).insert("name".into(), json!(meta::generate_name(&generate)));
        }
        let name = meta::name(&obj).to_string();
        if r.namespaced {
            self.check_namespace(r, p.namespace.as_deref().unwrap_or_default(), &name)
                .await?;
        }
        let template = obj.clone();
        for _ in 0..8 {
            let mut obj = template.clone();
            self.prepare_create(r, &mut obj).await?;
            if !call.applied {
                crate::apply::track_update(r, None, &mut obj, &call.manager(), None);
            }
            let name = meta::name(&obj).to_string();
            if opts.dry_run {
                return Ok(Answer {
                    code: StatusCode::CREATED,
                    body: obj,
                    warnings,
                });
            }
            let key = self.key(r, p.namespace.as_deref(), &name);
            let claim = self.derived(r)(&obj);
            match self.objects.create(&key, &obj, &claim).await? {
                Some(rev) => {
                    meta::set_resource_version(&mut obj, rev);
                    return Ok(Answer {
                        code: StatusCode::CREATED,
                        body: obj,
                        warnings,
                    });
                }
                None => {
                    if self.objects.get(&key).await?.is_some() {
                        return Err(status::already_exists(r, &name));
                    }
                    // An allocation raced with another create: allocate again.
                }
            }
        }
        Err(status::timeout("could not allocate; try again"))
    }

    pub(crate) async fn update(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Answer, StatusError> {
        let p = call.path;
        let name = p.name.clone().unwrap_or_default();
        if !r.verbs.contains(&"update") {
            return Err(status::method_not_supported());
        }
        match p.subresource.as_deref() {
            None => {}
            Some("status") if r.subresources.contains(&"status") => {}
            Some("finalize") if r.subresources.contains(&"finalize") => {}
            Some("scale") if r.subresources.contains(&"scale") => {
                let scale = parse_body(
                    &call.body,
                    header_str(call.headers, http::header::CONTENT_TYPE),
                )?;
                return self.write_scale(r, call, move |_| Ok(scale.clone())).await;
            }
            Some(_) => return Err(status::method_not_supported()),
        }
        let opts = WriteOptions::from(call.query)?;
        let mut warnings = Vec::new();
        let obj = self.body_object(r, call)?;
        let obj = self.decode_typed(r, obj, opts.validation, &mut warnings)?;
        let obj = Self::to_storage(r, obj);
        let body_name = meta::name(&obj);
        if body_name != name {
            return Err(status::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let want_rv = meta::meta_str(&obj, "resourceVersion").to_string();
        let mut a = self
            .write(r, call, opts.dry_run, |cur| {
                let cur = cur.ok_or_else(|| status::not_found(r, &name))?;
                if !want_rv.is_empty() && want_rv != cur.revision.to_string() {
                    return Err(status::conflict(r, &name, status::MODIFIED));
                }
                Ok(obj.clone())
            })
            .await?;
        a.warnings.extend(warnings);
        Ok(a)
    }

    /// The read-modify-write of update and patch: `f` produces the desired object from
    /// the current one; admission runs on it; the write compares revisions.
    async fn write<F>(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
        dry_run: bool,
        mut f: F,
    ) -> Result<Answer, StatusError>
    where
        F: FnMut(Option<&Stored>) -> Result<Value, StatusError>,
    {
        let p = call.path;
        let name = p.name.clone().unwrap_or_default();
        let key = self.key(r, p.namespace.as_deref(), &name);
        let sub = p.subresource.as_deref();
        for _ in 0..16 {
            let Some(cur) = self.objects.get(&key).await? else {
                f(None)?;
                return Err(status::not_found(r, &name));
            };
            let desired = f(Some(&cur))?;
            let mut new = self.prepare_update(r, sub, &cur.object, desired).await?;
            if !call.applied {
                crate::apply::track_update(r, Some(&cur.object), &mut new, &call.manager(), sub);
            }
            if dry_run {
                return Ok(Answer::ok(new));
            }
            // Finalizers emptied on an object being deleted (for a namespace, its
            // spec.finalizers too): it goes now.
            let empty = |p: &str| {
                new.pointer(p)
                    .and_then(Value::as_array)
                    .is_none_or(|f| f.is_empty())
            };
            let namespace = r.kind == "Namespace" && r.group.is_empty();
            if new.pointer("/metadata/deletionTimestamp").is_some()
                && empty("/metadata/finalizers")
                && (!namespace || empty("/spec/finalizers"))
                && !(r.kind == "Pod" && grace_pending(&new))
            {
                let release = self.derived(r)(&cur.object);
                if self
                    .objects
                    .delete_if(&key, cur.revision, &release)
                    .await?
                    .is_some()
                {
                    return Ok(Answer::ok(new));
                }
                continue;
            }
            if storage_equal(&new, &cur.object) {
                return Ok(Answer::ok(cur.object));
            }
            let derived = self.derived(r);
            let (claim, release) =
                crate::storage::key_changes(&derived(&cur.object), &derived(&new));
            if let Some(rev) = self
                .objects
                .put_if(&key, cur.revision, &new, &claim, &release)
                .await?
            {
                let mut new = new;
                meta::set_resource_version(&mut new, rev);
                return Ok(Answer::ok(new));
            }
        }
        Err(status::conflict(r, &name, status::MODIFIED))
    }

    async fn patch(&self, r: &ResourceInfo, call: &Call<'_>) -> Result<Answer, StatusError> {
        let p = call.path;
        let name = p.name.clone().unwrap_or_default();
        if !r.verbs.contains(&"patch") {
            return Err(status::method_not_supported());
        }
        let opts = WriteOptions::from(call.query)?;
        let ct = header_str(call.headers, http::header::CONTENT_TYPE)
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let patch_doc = parse_body(&call.body, &ct)?;
        let kind = r.kind;
        let custom = self.custom(r).is_some();
        let apply = move |base: &Value| -> Result<Value, StatusError> {
            let out = match ct.as_str() {
                "application/json-patch+json" => patch::json_patch(base, &patch_doc),
                "application/merge-patch+json" => Ok(patch::merge_patch(base, &patch_doc)),
                "application/strategic-merge-patch+json" if custom => {
                    return Err(status::unsupported_media_type_of(
                        "application/strategic-merge-patch+json",
                        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ))
                }
                "application/strategic-merge-patch+json" => {
                    patch::strategic_merge_patch(kind, base, &patch_doc)
                }
                // Applying to `scale` sets what the configuration sets.
                "application/apply-patch+yaml" => Ok(patch::merge_patch(base, &patch_doc)),
                other => {
                    return Err(status::unsupported_media_type_of(
                        other,
                        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
                    ))
                }
            };
            out.map_err(|e| match e {
                PatchError::Malformed(m) => status::bad_request(m),
                PatchError::Failed(m) => status::unprocessable(m),
            })
        };
        match p.subresource.as_deref() {
            None => {}
            Some("status") if r.subresources.contains(&"status") => {}
            Some("scale") if r.subresources.contains(&"scale") => {
                return self.write_scale(r, call, apply).await;
            }
            Some(_) => return Err(status::method_not_supported()),
        }
        let is_apply = header_str(call.headers, http::header::CONTENT_TYPE)
            .starts_with("application/apply-patch");
        if is_apply {
            return crate::apply::serve(self, r, call, opts.dry_run)
                .await
                .map(|(code, body)| Answer {
                    code,
                    body,
                    warnings: vec![],
                });
        }
        let mut warnings = Vec::new();
        let validation = opts.validation;
        let mut a = self
            .write(r, call, opts.dry_run, |cur| {
                let cur = cur.ok_or_else(|| status::not_found(r, &name))?;
                let mut shown = cur.object.clone();
                self.present(r, &mut shown);
                let patched = apply(&shown)?;
                if !patched.is_object() {
                    return Err(status::unprocessable("the patch must leave an object"));
                }
                let rv = meta::meta_str(&patched, "resourceVersion");
                if !rv.is_empty() && rv != cur.revision.to_string() {
                    return Err(status::conflict(r, &name, status::MODIFIED));
                }
                if meta::name(&patched) != name {
                    return Err(status::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        meta::name(&patched)
                    )));
                }
                warnings.clear();
                self.decode_typed(r, patched, validation, &mut warnings)
                    .map(|o| Self::to_storage(r, o))
            })
            .await?;
        a.warnings.extend(warnings);
        Ok(a)
    }

    /// Writes through the `scale` subresource: `f` turns the current Scale into the
    /// desired one, whose `spec.replicas` goes to the parent.
    async fn write_scale<F>(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
        f: F,
    ) -> Result<Answer, StatusError>
    where
        F: Fn(&Value) -> Result<Value, StatusError>,
    {
        let opts = WriteOptions::from(call.query)?;
        let name = call.path.name.clone().unwrap_or_default();
        let parent = ResourcePath {
            subresource: None,
            ..call.path.clone()
        };
        let parent_call = Call {
            applied: false,
            method: call.method,
            path: &parent,
            query: call.query,
            headers: call.headers,
            body: Bytes::new(),
        };
        let a = self
            .write(r, &parent_call, opts.dry_run, |cur| {
                let cur = cur.ok_or_else(|| status::not_found(r, &name))?;
                let scale = f(&scale_of(r, &cur.object))?;
                let rv = meta::meta_str(&scale, "resourceVersion");
                if !rv.is_empty() && rv != cur.revision.to_string() {
                    return Err(status::conflict(r, &name, status::MODIFIED));
                }
                let replicas = scale
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if replicas < 0 {
                    return Err(status::invalid(
                        "autoscaling",
                        "Scale",
                        &name,
                        &[FieldError::invalid_raw(
                            "spec.replicas",
                            replicas.to_string(),
                            "must be greater than or equal to 0",
                        )],
                    ));
                }
                let mut obj = cur.object.clone();
                obj["spec"]["replicas"] = json!(replicas);
                Ok(obj)
            })
            .await?;
        Ok(Answer::ok(scale_of(r, &a.body)))
    }

    /// `pods/binding`: assigns a node, once.
    async fn bind(&self, r: &ResourceInfo, call: &Call<'_>) -> Result<Answer, StatusError> {
        let name = call.path.name.clone().unwrap_or_default();
        let binding = parse_body(
            &call.body,
            header_str(call.headers, http::header::CONTENT_TYPE),
        )?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            return Err(status::invalid(
                "",
                "Binding",
                &name,
                &[FieldError::required("target.name", "")],
            ));
        }
        let key = self.key(r, call.path.namespace.as_deref(), &name);
        let out = self
            .objects
            .update(&key, &|_| vec![], |cur| {
                let cur = cur.ok_or_else(|| status::not_found(r, &name))?;
                if cur.object.pointer("/metadata/deletionTimestamp").is_some() {
                    return Err(status::conflict(r, &name, "pod is being deleted, cannot be assigned to a host"));
                }
                let assigned = cur
                    .object
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !assigned.is_empty() {
                    let binding_res = ResourceInfo { plural: "pods/binding", ..*r };
                    return Err(status::conflict(
                        &binding_res,
                        &name,
                        &format!("pod {name} is already assigned to node {assigned:?}"),
                    ));
                }
                let mut pod = cur.object.clone();
                pod["spec"]["nodeName"] = json!(node);
                let conds = pod["status"]
                    .as_object_mut()
                    .map(|s| s.entry("conditions").or_insert(json!([])));
                if let Some(Value::Array(list)) = conds {
                    list.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
                    list.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now()}));
                }
                Ok(Update::Put(pod))
            })
            .await?;
        let _ = out;
        Ok(Answer {
            code: StatusCode::CREATED,
            body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            warnings: vec![],
        })
    }

    /// `serviceaccounts/token` (TokenRequest): a signed token for the account, bound
    /// to a pod, secret or node when asked, as upstream validates and answers it.
    async fn token_request(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Answer, StatusError> {
        let tokens = self
            .tokens
            .get()
            .ok_or_else(|| status::unavailable("no service account signing key is configured"))?;
        let ns = call.path.namespace.clone().unwrap_or_default();
        let name = call.path.name.clone().unwrap_or_default();
        let req = parse_body(
            &call.body,
            header_str(call.headers, http::header::CONTENT_TYPE),
        )?;
        let invalid =
            |e: FieldError| status::invalid("authentication.k8s.io", "TokenRequest", &name, &[e]);
        let spec = &req["spec"];
        let seconds = spec["expirationSeconds"].as_i64().unwrap_or(3600);
        if seconds < 600 {
            return Err(invalid(FieldError::invalid_raw(
                "spec.expirationSeconds",
                seconds.to_string(),
                "may not specify a duration less than 10 minutes",
            )));
        }
        if seconds > 1 << 32 {
            return Err(invalid(FieldError::invalid_raw(
                "spec.expirationSeconds",
                seconds.to_string(),
                "may not specify a duration larger than 2^32 seconds",
            )));
        }
        let audiences: Vec<String> = spec["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .filter(|a: &Vec<String>| !a.is_empty())
            .unwrap_or_else(|| tokens.audiences.clone());
        let account = self
            .objects
            .get(&self.key(r, Some(&ns), &name))
            .await?
            .ok_or_else(|| status::not_found(r, &name))?
            .object;
        let bound_ref = &spec["boundObjectRef"];
        let kind = bound_ref["kind"].as_str().unwrap_or_default();
        let bindable = crate::serviceaccount::BOUND_KINDS
            .iter()
            .find(|(k, _, _)| *k == kind);
        let bound = match bindable {
            None if kind.is_empty() => None,
            Some(&(kind, _, plural)) => {
                let br = ferrokube_api::registry::builtin("", plural);
                let bname = bound_ref["name"].as_str().unwrap_or_default().to_string();
                let obj = self
                    .objects
                    .get(&self.key(&br, Some(&ns), &bname))
                    .await?
                    .ok_or_else(|| status::not_found(&br, &bname))?
                    .object;
                if kind == "Pod"
                    && obj
                        .pointer("/spec/serviceAccountName")
                        .and_then(Value::as_str)
                        != Some(name.as_str())
                {
                    return Err(status::bad_request(format!(
                        "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                    )));
                }
                let uid = meta::meta_str(&obj, "uid").to_string();
                let given = bound_ref["uid"].as_str().unwrap_or_default();
                if !given.is_empty() && given != uid {
                    return Err(status::conflict(
                        &br,
                        &bname,
                        &format!("the UID in the bound object reference ({given}) does not match the UID in record. The object might have been deleted and then recreated"),
                    ));
                }
                Some((kind, bname, uid))
            }
            None => {
                let supported: Vec<&str> = crate::serviceaccount::BOUND_KINDS
                    .iter()
                    .map(|(k, _, _)| *k)
                    .collect();
                return Err(invalid(FieldError::not_supported(
                    "spec.boundObjectRef.kind",
                    kind,
                    &supported,
                )));
            }
        };
        let now = jiff::Timestamp::now().as_second();
        let claims = crate::serviceaccount::claims(
            &ns,
            (&name, meta::meta_str(&account, "uid")),
            bound.as_ref().map(|(k, n, u)| (*k, n.as_str(), u.as_str())),
            &audiences,
            now,
            seconds,
        );
        let token = tokens.sign(&claims);
        let expires = jiff::Timestamp::from_second(now + seconds).unwrap_or(jiff::Timestamp::MAX);
        let mut out_spec =
            json!({"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": null});
        if let Some((kind, bname, uid)) = &bound {
            out_spec["boundObjectRef"] =
                json!({"kind": kind, "apiVersion": "v1", "name": bname, "uid": uid});
        }
        Ok(Answer {
            code: StatusCode::CREATED,
            body: json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
                "spec": out_spec,
                "status": {"token": token, "expirationTimestamp": meta::format_time(expires)},
            }),
            warnings: vec![],
        })
    }

    /// `pods/eviction` (upstream's EvictionREST): a delete that respects the pod's
    /// PodDisruptionBudget. Pods that are Pending, finished or already terminating go
    /// at once; a pod with one budget goes when the budget allows a disruption (the
    /// budget's `disruptionsAllowed` is taken down and the pod noted in its
    /// `disruptedPods`), or, not being Ready, when the budget is healthy anyway (or its
    /// `unhealthyPodEvictionPolicy` is AlwaysAllow). The pod gets a `DisruptionTarget`
    /// condition (`EvictionByEvictionAPI`) before it is deleted.
    async fn evict(&self, r: &ResourceInfo, call: &Call<'_>) -> Result<Answer, StatusError> {
        let ns = call.path.namespace.clone().unwrap_or_default();
        let name = call.path.name.clone().unwrap_or_default();
        let body = if call.body.is_empty() {
            json!({})
        } else {
            parse_body(&call.body, "application/json")?
        };
        if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str) {
            if n != name {
                return Err(status::bad_request(
                    "name in URL does not match name in Eviction object",
                ));
            }
        }
        let mut opts = body.get("deleteOptions").cloned().unwrap_or(json!({}));
        if !opts.is_object()
            || opts
                .get("preconditions")
                .is_some_and(|p| !p.is_object() && !p.is_null())
        {
            return Err(status::bad_request(
                "Eviction in version \"v1\" cannot be handled as a Eviction: deleteOptions and its preconditions must be objects",
            ));
        }
        if opts.get("preconditions").is_some_and(Value::is_null) {
            opts.as_object_mut()
                .expect("checked")
                .remove("preconditions");
        }
        if call.query.get("dryRun") == Some("All") {
            opts["dryRun"] = json!(["All"]);
        }
        let dry = opts.get("dryRun").is_some();
        let rv_unset = opts.pointer("/preconditions/resourceVersion").is_none();
        let success = || Answer {
            code: StatusCode::CREATED,
            body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            warnings: vec![],
        };
        // Pods already disrupted (finished or terminating) or not yet running go without
        // a budget's say; a conflict with a concurrent change is retried from a fresh
        // read unless the caller named a resourceVersion (upstream's EvictionsRetry).
        let mut attempt = 0;
        let pod = loop {
            let pod = self
                .objects
                .get(&self.key(r, Some(&ns), &name))
                .await?
                .ok_or_else(|| status::not_found(r, &name))?;
            let phase = pod
                .object
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let terminating = pod.object.pointer("/metadata/deletionTimestamp").is_some();
            if !(matches!(phase.as_str(), "Succeeded" | "Failed" | "Pending") || terminating) {
                break pod;
            }
            let mut o = opts.clone();
            if !matches!(phase.as_str(), "Succeeded" | "Failed") && !terminating && rv_unset {
                if !o["preconditions"].is_object() {
                    o["preconditions"] = json!({});
                }
                o["preconditions"]["resourceVersion"] = json!(pod.revision.to_string());
            }
            match self.disrupt_and_delete(r, &ns, &name, o, dry).await {
                Ok(()) => return Ok(success()),
                Err(e) if e.code() == 409 && rv_unset && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let rv = pod.revision.to_string();
        let pdb_info = ferrokube_api::registry::builtin("policy", "poddisruptionbudgets");
        let labels = meta::labels(&pod.object);
        let budgets: Vec<Stored> = self
            .objects
            .list(&list_prefix(&pdb_info, Some(&ns)), "", 0, 0)
            .await?
            .items
            .into_iter()
            .filter(|b| {
                // A budget without a selector, or an empty one, matches nothing here.
                b.object
                    .pointer("/spec/selector")
                    .and_then(|s| serde_json::from_value(s.clone()).ok())
                    .and_then(|s| LabelSelector::from_api(&s).ok())
                    .is_some_and(|s| !s.is_everything() && s.matches(&labels))
            })
            .collect();
        if budgets.len() > 1 {
            return Err(status::failure_without_reason(
                500,
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        let Some(budget) = budgets.into_iter().next() else {
            self.disrupt_and_delete(r, &ns, &name, opts, dry).await?;
            return Ok(success());
        };
        let pdb_name = meta::name(&budget.object).to_string();
        let int = |p: &str| {
            budget
                .object
                .pointer(p)
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let ready = pod
            .object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        let always_allow = budget
            .object
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            == Some("AlwaysAllow");
        let still_processing = |name: &str| {
            status::too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.",
                10,
                vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
                        reason: Some("DisruptionBudget".into()),
                        message: Some(format!(
                            "The disruption budget {name} is still being processed by the server."
                        )),
                        field: None,
                    },
                ],
            )
        };
        // Not Ready: it counts for nothing, so it may go while the budget is healthy.
        if !ready
            && (always_allow
                || (int("/status/currentHealthy") >= int("/status/desiredHealthy")
                    && int("/status/desiredHealthy") > 0))
        {
            let mut o = opts.clone();
            if rv_unset {
                if !o["preconditions"].is_object() {
                    o["preconditions"] = json!({});
                }
                o["preconditions"]["resourceVersion"] = json!(rv);
            }
            return match self.disrupt_and_delete(r, &ns, &name, o, dry).await {
                Ok(()) => Ok(success()),
                Err(e) if e.code() == 409 && rv_unset => Err(still_processing(&pdb_name)),
                Err(e) => Err(e),
            };
        }
        let pdb_key = self.key(&pdb_info, Some(&ns), &pdb_name);
        let pod_name = name.clone();
        let decrement = |cur: Option<&Stored>| -> Result<Update, StatusError> {
            let Some(cur) = cur else {
                return Err(still_processing(&pdb_name));
            };
            let mut b = cur.object.clone();
            let get = |p: &str| b.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            if get("/status/observedGeneration") < get("/metadata/generation") {
                return Err(still_processing(&pdb_name));
            }
            let allowed = get("/status/disruptionsAllowed");
            if allowed < 0 {
                return Err(status::forbidden(
                    &pdb_info,
                    &pdb_name,
                    "pdb disruptions allowed is negative",
                ));
            }
            let disrupted = b
                .pointer("/status/disruptedPods")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            if disrupted > MAX_DISRUPTED_PODS {
                return Err(status::forbidden(
                    &pdb_info,
                    &pdb_name,
                    "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
                ));
            }
            if allowed == 0 {
                return Err(status::too_many_requests(
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    0,
                    vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
                        reason: Some("DisruptionBudget".into()),
                        message: Some(format!(
                            "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                            get("/status/desiredHealthy"),
                            get("/status/currentHealthy")
                        )),
                        field: None,
                    }],
                ));
            }
            if dry {
                return Ok(Update::Keep);
            }
            let st = &mut b["status"];
            st["disruptionsAllowed"] = json!(allowed - 1);
            if allowed - 1 == 0 {
                if let Some(cs) = st.get_mut("conditions").and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter(|c| c["type"] == "DisruptionAllowed") {
                        if c["status"] != "False" {
                            c["status"] = json!("False");
                            c["lastTransitionTime"] = json!(meta::now());
                        }
                        c["reason"] = json!("InsufficientPods");
                    }
                }
            }
            if !st["disruptedPods"].is_object() {
                st["disruptedPods"] = json!({});
            }
            st["disruptedPods"][&pod_name] = json!(meta::now());
            Ok(Update::Put(b))
        };
        self.objects
            .update(&pdb_key, &|_| Vec::new(), decrement)
            .await?;
        self.disrupt_and_delete(r, &ns, &name, opts, dry).await?;
        Ok(success())
    }

    /// Marks a pod `DisruptionTarget` (EvictionByEvictionAPI) and deletes it with
    /// `opts`; a resourceVersion precondition there applies to both writes.
    async fn disrupt_and_delete(
        &self,
        r: &ResourceInfo,
        ns: &str,
        name: &str,
        mut opts: Value,
        dry: bool,
    ) -> Result<(), StatusError> {
        if !dry {
            let key = self.key(r, Some(ns), name);
            let want_rv = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from);
            let mark = |cur: Option<&Stored>| -> Result<Update, StatusError> {
                let Some(cur) = cur else {
                    return Err(status::not_found(r, name));
                };
                if want_rv
                    .as_deref()
                    .is_some_and(|rv| rv != cur.revision.to_string())
                {
                    return Err(status::conflict(r, name, status::MODIFIED));
                }
                let mut p = cur.object.clone();
                if p.pointer("/metadata/deletionTimestamp").is_some() {
                    return Ok(Update::Keep);
                }
                if !p["status"]["conditions"].is_array() {
                    p["status"]["conditions"] = json!([]);
                }
                let cs = p["status"]["conditions"]
                    .as_array_mut()
                    .expect("made an array");
                if cs
                    .iter()
                    .any(|c| c["type"] == "DisruptionTarget" && c["status"] == "True")
                {
                    return Ok(Update::Keep);
                }
                cs.retain(|c| c["type"] != "DisruptionTarget");
                cs.push(json!({
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "EvictionByEvictionAPI",
                    "message": "Eviction API: evicting",
                    "lastTransitionTime": meta::now(),
                }));
                Ok(Update::Put(p))
            };
            if let Outcome::Written(s) = self.objects.update(&key, &self.derived(r), mark).await? {
                if want_rv.is_some() {
                    opts["preconditions"]["resourceVersion"] = json!(s.revision.to_string());
                }
            }
        }
        self.delete_object(r, Some(ns), name, &opts, dry).await?;
        Ok(())
    }

    fn delete_options(&self, call: &Call<'_>) -> Result<Value, StatusError> {
        let mut opts = if call.body.is_empty() {
            json!({})
        } else {
            parse_body(&call.body, "application/json")?
        };
        let q = call.query;
        if let Some(g) = q.get("gracePeriodSeconds") {
            opts["gracePeriodSeconds"] = json!(g
                .parse::<i64>()
                .map_err(|_| status::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?);
        }
        if let Some(p) = q.get("propagationPolicy") {
            opts["propagationPolicy"] = json!(p);
        }
        if let Some(o) = q.get("orphanDependents") {
            opts["orphanDependents"] = json!(o == "true");
        }
        if q.get("dryRun") == Some("All") {
            opts["dryRun"] = json!(["All"]);
        }
        match opts.get("propagationPolicy").and_then(Value::as_str) {
            None | Some("Orphan" | "Background" | "Foreground") => {}
            Some(other) => {
                return Err(status::invalid(
                    "",
                    "DeleteOptions",
                    "",
                    &[FieldError::not_supported(
                        "propagationPolicy",
                        other,
                        &["Foreground", "Background", "Orphan", "nil"],
                    )],
                ))
            }
        }
        Ok(opts)
    }

    async fn delete(&self, r: &ResourceInfo, call: &Call<'_>) -> Result<Answer, StatusError> {
        if call.path.subresource.is_some() || !r.verbs.contains(&"delete") {
            return Err(status::method_not_supported());
        }
        let opts = self.delete_options(call)?;
        let name = call.path.name.clone().unwrap_or_default();
        let dry = opts.get("dryRun").is_some();
        let out = self
            .delete_object(r, call.path.namespace.as_deref(), &name, &opts, dry)
            .await?;
        Ok(Answer::ok(out))
    }

    /// Deletes one object: at once, or by marking it (finalizers, graceful pods,
    /// namespaces). Answers with a `Status` (deleted) or the marked object.
    pub async fn delete_object(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
        dry_run: bool,
    ) -> Result<Value, StatusError> {
        let key = self.key(r, ns, name);
        // NamespaceLifecycle: the namespaces the cluster itself lives in stay.
        if r.kind == "Namespace"
            && r.group.is_empty()
            && ["default", "kube-system", "kube-public"].contains(&name)
        {
            return Err(status::forbidden(
                r,
                name,
                "this namespace may not be deleted",
            ));
        }
        let now = jiff::Timestamp::now();
        let policy = opts
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| {
                (opts.get("orphanDependents") == Some(&json!(true))).then(|| "Orphan".to_string())
            });
        let grace_opt = opts.get("gracePeriodSeconds").and_then(Value::as_i64);
        let pre_uid = opts
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        let pre_rv = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        let decide = |cur: Option<&Stored>| -> Result<Update, StatusError> {
            let cur = cur.ok_or_else(|| status::not_found(r, name))?;
            let o = &cur.object;
            if let Some(u) = &pre_uid {
                let have = meta::meta_str(o, "uid");
                if u != have {
                    return Err(status::conflict(r, name, &format!("Precondition failed: UID in precondition: {u}, UID in object meta: {have}")));
                }
            }
            if let Some(rv) = &pre_rv {
                if *rv != cur.revision.to_string() {
                    return Err(status::conflict(r, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", cur.revision)));
                }
            }
            let mut finalizers: Vec<Value> = o
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut grace = 0;
            if r.kind == "Pod" && r.group.is_empty() {
                let spec_grace = o
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30);
                grace = grace_opt.unwrap_or(spec_grace).max(0);
                let node = o
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let phase = o
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if node.is_empty() || phase == "Succeeded" || phase == "Failed" {
                    grace = 0;
                }
            }
            let namespace = r.kind == "Namespace" && r.group.is_empty();
            let already = o.pointer("/metadata/deletionTimestamp").is_some();
            let before = finalizers.clone();
            gc_finalizers(&mut finalizers, policy.as_deref());
            if already && finalizers != before {
                // A later delete may change how dependents go (orphan / foreground).
                if finalizers.is_empty() && !(r.kind == "Pod" && grace_pending(o)) {
                    return Ok(Update::Delete);
                }
                let mut obj = o.clone();
                metadata_mut(&mut obj).insert("finalizers".into(), Value::Array(finalizers));
                return Ok(Update::Put(obj));
            }
            if already {
                // A second delete may only shorten a pod's grace period.
                let current = o
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if finalizers.is_empty() && (r.kind != "Pod" || grace == 0) {
                    return Ok(Update::Delete);
                }
                if r.kind == "Pod" && grace < current {
                    let mut obj = o.clone();
                    let m = metadata_mut(&mut obj);
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    m.insert(
                        "deletionTimestamp".into(),
                        json!(meta::format_time(
                            now + jiff::SignedDuration::from_secs(grace)
                        )),
                    );
                    return Ok(Update::Put(obj));
                }
                return Ok(Update::Keep);
            }
            let ns_finalizers = namespace
                && o.pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
            if finalizers.is_empty() && grace == 0 && !ns_finalizers {
                return Ok(Update::Delete);
            }
            let mut obj = o.clone();
            {
                let m = metadata_mut(&mut obj);
                m.insert(
                    "deletionTimestamp".into(),
                    json!(meta::format_time(
                        now + jiff::SignedDuration::from_secs(grace)
                    )),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                if !finalizers.is_empty() {
                    m.insert("finalizers".into(), Value::Array(finalizers));
                }
            }
            if namespace {
                obj["status"]["phase"] = json!("Terminating");
            }
            Ok(Update::Put(obj))
        };
        if dry_run {
            let cur = self.objects.get(&key).await?;
            return match decide(cur.as_ref())? {
                Update::Delete => Ok(deleted_status(r, name, cur.as_ref().map(|c| &c.object))),
                Update::Put(o) => Ok(o),
                Update::Keep => Ok(cur.map(|c| c.object).unwrap_or(Value::Null)),
            };
        }
        let derived = self.derived(r);
        match self.objects.update(&key, &derived, decide).await? {
            Outcome::Deleted(last, _) => {
                Ok(deleted_status(r, name, last.as_ref().map(|s| &s.object)))
            }
            Outcome::Written(s) | Outcome::Unchanged(s) => Ok(s.object),
        }
    }

    async fn delete_collection(
        &self,
        r: &ResourceInfo,
        call: &Call<'_>,
    ) -> Result<Answer, StatusError> {
        if !r.verbs.contains(&"deletecollection") {
            return Err(status::method_not_supported());
        }
        let opts = self.delete_options(call)?;
        let dry = opts.get("dryRun").is_some();
        let ns = call.path.namespace.as_deref();
        let (items, revision, _, _) = self.list_items(r, ns, call.query).await?;
        let mut deleted = Vec::new();
        for item in items {
            let name = meta::name(&item).to_string();
            let item_ns = meta::namespace(&item).to_string();
            let item_ns = (!item_ns.is_empty()).then_some(item_ns);
            match self
                .delete_object(r, item_ns.as_deref(), &name, &opts, dry)
                .await
            {
                Ok(_) => deleted.push(strip_type(item)),
                Err(e) if e.code() == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Answer::ok(json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
            "items": deleted,
        })))
    }
}

/// Drops empty label, annotation, finalizer and owner lists from metadata, as Go's
/// `omitempty` does (a patch that removes the last finalizer leaves none, not `[]`).
fn drop_empty_metadata(m: &mut serde_json::Map<String, Value>) {
    for k in [
        "labels",
        "annotations",
        "finalizers",
        "ownerReferences",
        "managedFields",
    ] {
        let empty = match m.get(k) {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            m.remove(k);
        }
    }
}

/// The garbage collector's finalizers after a delete with `policy` (upstream's
/// `deletionFinalizersForGarbageCollection`): `Orphan` asks for `orphan`, `Foreground`
/// for `foregroundDeletion` (never both), `Background` for neither; no policy keeps
/// what the object has.
fn gc_finalizers(finalizers: &mut Vec<Value>, policy: Option<&str>) {
    let (orphan, foreground) = match policy {
        Some("Orphan") => (true, false),
        Some("Foreground") => (false, true),
        Some(_) => (false, false),
        None => return,
    };
    finalizers.retain(|f| f != "orphan" && f != "foregroundDeletion");
    if orphan {
        finalizers.push(json!("orphan"));
    }
    if foreground {
        finalizers.push(json!("foregroundDeletion"));
    }
}

/// Whether `r` is events.k8s.io's Event (stored as a core Event).
fn is_events_api(r: &ResourceInfo) -> bool {
    r.group == "events.k8s.io" && r.kind == "Event"
}

/// Whether `r` is autoscaling/v1's HorizontalPodAutoscaler (stored as autoscaling/v2).
fn is_hpa_v1(r: &ResourceInfo) -> bool {
    r.group == "autoscaling" && r.version == "v1" && r.kind == "HorizontalPodAutoscaler"
}

impl Resources {
    /// An object (or list) from storage in the form `r` serves it.
    pub fn present(&self, r: &ResourceInfo, v: &mut Value) {
        if self.custom(r).is_some() {
            present_version(r, v);
        } else if is_hpa_v1(r) {
            let mine = |o: &Value| o.get("kind").and_then(Value::as_str) == Some(r.kind);
            if mine(v) {
                *v = ferrokube_api::hpa::to_v1(v);
            } else if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
                for i in items.iter_mut() {
                    let had_type = i.get("apiVersion").is_some();
                    *i = ferrokube_api::hpa::to_v1(i);
                    if !had_type {
                        if let Some(o) = i.as_object_mut() {
                            o.remove("apiVersion");
                        }
                    }
                }
            }
        } else if is_events_api(r) {
            let convert = |o: &Value| {
                if o.get("kind").and_then(Value::as_str) == Some("Event")
                    || o.get("involvedObject").is_some()
                {
                    ferrokube_api::events::from_core(o)
                } else {
                    o.clone()
                }
            };
            if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
                for i in items.iter_mut() {
                    let had_type = i.get("apiVersion").is_some();
                    *i = convert(i);
                    if !had_type {
                        if let Some(o) = i.as_object_mut() {
                            o.remove("apiVersion");
                        }
                    }
                }
            } else if v.get("kind").and_then(Value::as_str) == Some("Event") {
                *v = convert(v);
            }
        }
    }

    /// An object in the form `r` serves it, in the form it is stored in.
    fn to_storage(r: &ResourceInfo, v: Value) -> Value {
        if is_events_api(r) {
            ferrokube_api::events::to_core(&v)
        } else if is_hpa_v1(r) {
            ferrokube_api::hpa::to_v2(&v)
        } else {
            v
        }
    }
}

/// Custom objects are stored in the version they were written in and shown in the
/// version asked for (the `None` conversion strategy: only `apiVersion` changes).
pub fn present_version(r: &ResourceInfo, v: &mut Value) {
    let api_version = json!(r.api_version());
    let is_mine = |o: &Value| o.get("kind").and_then(Value::as_str) == Some(r.kind);
    if is_mine(v) {
        v["apiVersion"] = api_version;
    } else if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
        for i in items {
            if i.get("apiVersion").is_some() {
                i["apiVersion"] = api_version.clone();
            }
        }
    }
}

fn push_unique(list: &mut Vec<Value>, f: &str) {
    if !list.iter().any(|v| v.as_str() == Some(f)) {
        list.push(json!(f));
    }
}

/// Whether a terminating pod still waits for its kubelet (grace period not zero).
fn grace_pending(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        > 0
}

fn storage_equal(a: &Value, b: &Value) -> bool {
    crate::storage::encode(a) == crate::storage::encode(b)
}

/// The `Status` of a deletion that happened.
fn deleted_status(r: &ResourceInfo, name: &str, last: Option<&Value>) -> Value {
    let mut details = json!({"name": name, "kind": r.plural});
    if !r.group.is_empty() {
        details["group"] = json!(r.group);
    }
    if let Some(uid) = last
        .map(|o| meta::meta_str(o, "uid"))
        .filter(|u| !u.is_empty())
    {
        details["uid"] = json!(uid);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// The status a new object starts with, for kinds with a status subresource.
fn initial_status(kind: &str, obj: &Value) -> Option<Value> {
    Some(match kind {
        "Pod" => json!({"phase": "Pending", "qosClass": qos_class(obj)}),
        "PersistentVolumeClaim" | "PersistentVolume" => json!({"phase": "Pending"}),
        "Service" => json!({"loadBalancer": {}}),
        "Namespace" => json!({"phase": "Active"}),
        "Node" | "CertificateSigningRequest" | "CustomResourceDefinition" => {
            return obj.get("status").cloned()
        }
        _ => json!({}),
    })
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(pod: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = ["containers", "initContainers"].into_iter().flat_map(|k| {
        pod.pointer(&format!("/spec/{k}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    });
    for c in containers {
        let req = c
            .pointer("/resources/requests")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let lim = c
            .pointer("/resources/limits")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for res in ["cpu", "memory"] {
            let (q, l) = (req.get(res).or(lim.get(res)), lim.get(res));
            if q.is_some() || l.is_some() {
                any = true;
            }
            match (q, l) {
                (Some(q), Some(l)) if q == l => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// `stringData` is written into `data` (base64) and never stored.
fn merge_string_data(secret: &mut Value) {
    let Some(o) = secret.as_object_mut() else {
        return;
    };
    let Some(Value::Object(sd)) = o.remove("stringData") else {
        return;
    };
    let data = o.entry("data").or_insert(json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (k, v) in sd {
        let text = v.as_str().unwrap_or_default();
        data[&k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// A Job's selector and pod labels: the job's uid, as upstream generates them.
fn job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let uid = meta::meta_str(job, "uid").to_string();
    let name = meta::name(job).to_string();
    job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let Some(t) = job
        .pointer_mut("/spec/template")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let m = t.entry("metadata").or_insert(json!({}));
    let labels = m
        .as_object_mut()
        .map(|m| m.entry("labels").or_insert(json!({})));
    if let Some(Value::Object(l)) = labels {
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            l.insert(k.into(), json!(v));
        }
    }
}

/// The autoscaling/v1 `Scale` view of a scalable object.
fn scale_of(r: &ResourceInfo, obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut meta = Map::new();
    for k in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = m.get(k) {
            meta.insert(k.into(), v.clone());
        }
    }
    let selector = match obj.pointer("/spec/selector") {
        Some(Value::Object(sel)) if r.kind == "ReplicationController" => sel
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        Some(sel) => serde_json::from_value(sel.clone())
            .ok()
            .and_then(|api| LabelSelector::from_api(&api).ok())
            .map(|s| s.to_string())
            .unwrap_or_default(),
        None => String::new(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

fn encode_continue(rv: i64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64::engine::general_purpose::STANDARD.encode(token.to_string())
}

fn decode_continue(c: &str) -> Result<(i64, String), StatusError> {
    let bad = || {
        status::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(c)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v
        .get("rv")
        .and_then(Value::as_i64)
        .filter(|r| *r > 0)
        .ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rv, start.to_string()))
}
