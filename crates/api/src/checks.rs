//! Validation of whole objects, with upstream's field paths and messages, for the kinds
//! the seed notes use: names, labels and annotations of every object, then what each
//! kind requires (containers with names and images, selectors that match templates,
//! service ports, ...), and what may not change on update.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::meta::{labels, metadata, string_map};
use crate::selector::LabelSelector;
use crate::status::FieldError;
use crate::validation::{
    config_map_key, dns1035_label, dns1123_label, dns1123_subdomain, label_value, qualified_name,
};

type Errors = Vec<FieldError>;

/// The name rule of a kind.
fn name_rule(kind: &str) -> fn(&str) -> Vec<String> {
    match kind {
        "Namespace" | "Node" => dns1123_label_or_node,
        "Service" => dns1035_label,
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => path_segment_name,
        _ => dns1123_subdomain,
    }
}

/// Upstream's `ValidatePathSegmentName` (RBAC objects: `system:coredns` is a name).
fn path_segment_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s == "." || s == ".." {
        errs.push(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

fn dns1123_label_or_node(s: &str) -> Vec<String> {
    // Nodes are subdomains, namespaces labels; both are covered by their own rule.
    if s.contains('.') {
        dns1123_subdomain(s)
    } else {
        dns1123_label(s)
    }
}

/// Checks `metadata` of any object: the name (unless it will be generated), labels,
/// annotations.
pub fn object_meta(kind: &str, obj: &Value, namespaced: bool) -> Errors {
    let mut errs = Errors::new();
    let m = metadata(obj);
    let name = m
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let generate = m
        .and_then(|m| m.get("generateName"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() && generate.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if !name.is_empty() {
        let rule = if kind == "Namespace" {
            dns1123_label
        } else {
            name_rule(kind)
        };
        for e in rule(name) {
            errs.push(FieldError::invalid("metadata.name", name, e));
        }
    }
    if !namespaced {
        if let Some(ns) = m.and_then(|m| m.get("namespace")).and_then(Value::as_str) {
            if !ns.is_empty() {
                errs.push(FieldError::forbidden(
                    "metadata.namespace",
                    "not allowed on this type",
                ));
            }
        }
    }
    errs.extend(label_map(&labels(obj), "metadata.labels"));
    let finalizers: Vec<&str> = m
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    // Qualified names (upstream refuses unqualified non-standard names on built-in kinds
    // too, and only warns for custom resources; ferrokube does not tell them apart here).
    for (i, f) in finalizers.iter().enumerate() {
        for e in qualified_name(f) {
            errs.push(FieldError::invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                e,
            ));
        }
    }
    if finalizers.contains(&"orphan") && finalizers.contains(&"foregroundDeletion") {
        errs.push(FieldError::invalid_raw(
            "metadata.finalizers",
            format!(
                "[]string{{{}}}",
                finalizers
                    .iter()
                    .map(|f| format!("{f:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
    let ann = string_map(m.and_then(|m| m.get("annotations")));
    let mut total = 0;
    for (k, v) in &ann {
        total += k.len() + v.len();
        for e in qualified_name(k) {
            errs.push(FieldError::invalid("metadata.annotations", k, e));
        }
    }
    if total > 256 * 1024 {
        errs.push(FieldError {
            field: "metadata.annotations".into(),
            kind: crate::status::FieldErrorType::TooLong,
            value: None,
            detail: "may not be more than 262144 bytes".into(),
        });
    }
    errs
}

/// The finalizers Kubernetes itself defines (the only names without a domain).
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

/// A namespace's finalizer (`spec.finalizers`): a qualified name, and a
/// domain-prefixed one unless standard.
pub fn finalizer_name(name: &str, field: &str) -> Errors {
    let mut errs: Errors = qualified_name(name)
        .into_iter()
        .map(|e| FieldError::invalid(field, name, e))
        .collect();
    if errs.is_empty() && !name.contains('/') && !STANDARD_FINALIZERS.contains(&name) {
        errs.push(FieldError::invalid(
            field,
            name,
            "name is neither a standard finalizer name nor is it fully qualified",
        ));
    }
    errs
}

fn label_map(l: &BTreeMap<String, String>, field: &str) -> Errors {
    let mut errs = Errors::new();
    for (k, v) in l {
        for e in qualified_name(k) {
            errs.push(FieldError::invalid(field, k, e));
        }
        for e in label_value(v) {
            errs.push(FieldError::invalid(field, v, e));
        }
    }
    errs
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn arr<'a>(v: &'a Value, p: &str) -> &'a [Value] {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn go_map(m: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    format!("map[string]string{{{}}}", parts.join(", "))
}

/// Upstream's `IsValidPortName`.
fn port_name(p: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if p.len() > 15 {
        errs.push("must be no more than 15 characters".to_string());
    }
    if !p
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || p.is_empty()
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !p.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if p.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if p.starts_with('-') || p.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// A port given by number or name (`ValidatePortNumOrName`).
fn port_num_or_name(v: Option<&Value>, field: String) -> Errors {
    let mut errs = Errors::new();
    match v {
        Some(Value::String(name)) => {
            for e in port_name(name) {
                errs.push(FieldError::invalid(field.clone(), name, e));
            }
        }
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                errs.push(FieldError::invalid_raw(
                    field,
                    n.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        _ => errs.push(FieldError::required(field, "")),
    }
    errs
}

/// A probe or lifecycle handler: exactly one of `kinds`, with valid ports.
fn handler(h: &Value, at: &str, kinds: &[&str]) -> Errors {
    let mut errs = Errors::new();
    let given: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| h.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    match given.len() {
        0 => errs.push(FieldError::required(at, "must specify a handler type")),
        1 => {}
        _ => errs.push(FieldError::forbidden(
            format!("{at}.{}", given[1]),
            "may not specify more than 1 handler type",
        )),
    }
    for kind in ["httpGet", "tcpSocket"] {
        if let Some(a) = h.get(kind).filter(|v| !v.is_null()) {
            errs.extend(port_num_or_name(a.get("port"), format!("{at}.{kind}.port")));
        }
    }
    if let Some(g) = h.get("grpc").filter(|v| !v.is_null()) {
        errs.extend(port_num_or_name(g.get("port"), format!("{at}.grpc.port")));
    }
    errs
}

/// Checks a pod spec at `path` (`spec` or `spec.template.spec`).
pub fn pod_spec(spec: &Value, path: &str, restart_policies: &[&str]) -> Errors {
    let mut errs = Errors::new();
    let containers = arr(spec, "/containers");
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = BTreeSet::new();
    for (list, items) in [
        ("initContainers", arr(spec, "/initContainers")),
        ("containers", containers),
    ] {
        for (i, c) in items.iter().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            let name = s(c, "/name");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{at}.name"), ""));
            } else {
                for e in dns1123_label(name) {
                    errs.push(FieldError::invalid(format!("{at}.name"), name, e));
                }
                if !names.insert(name.to_string()) {
                    errs.push(FieldError::duplicate(format!("{at}.name"), name));
                }
            }
            if s(c, "/image").trim().is_empty() {
                errs.push(FieldError::required(format!("{at}.image"), ""));
            }
            for (j, p) in arr(c, "/ports").iter().enumerate() {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    errs.push(FieldError::invalid_raw(
                        format!("{at}.ports[{j}].containerPort"),
                        port.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                let proto = s(p, "/protocol");
                if !["TCP", "UDP", "SCTP"].contains(&proto) {
                    errs.push(FieldError::not_supported(
                        format!("{at}.ports[{j}].protocol"),
                        proto,
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
            }
            for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(probe) = c.get(kind) {
                    errs.extend(handler(
                        probe,
                        &format!("{at}.{kind}"),
                        &["exec", "httpGet", "tcpSocket", "grpc"],
                    ));
                    let success = probe.get("successThreshold").and_then(Value::as_i64);
                    if kind != "readinessProbe" && success.is_some_and(|n| n != 1) {
                        errs.push(FieldError::invalid_raw(
                            format!("{at}.{kind}.successThreshold"),
                            success.unwrap_or_default().to_string(),
                            "must be 1",
                        ));
                    }
                }
            }
            for hook in ["postStart", "preStop"] {
                if let Some(h) = c.pointer(&format!("/lifecycle/{hook}")) {
                    errs.extend(handler(
                        h,
                        &format!("{at}.lifecycle.{hook}"),
                        &["exec", "httpGet", "tcpSocket", "sleep"],
                    ));
                }
            }
            let policy = s(c, "/imagePullPolicy");
            if !["Always", "IfNotPresent", "Never"].contains(&policy) {
                errs.push(FieldError::not_supported(
                    format!("{at}.imagePullPolicy"),
                    policy,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
    }
    let policy = s(spec, "/restartPolicy");
    if !restart_policies.contains(&policy) {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            policy,
            restart_policies,
        ));
    }
    let mut volumes = BTreeSet::new();
    for (i, v) in arr(spec, "/volumes").iter().enumerate() {
        let name = s(v, "/name");
        let at = format!("{path}.volumes[{i}].name");
        if name.is_empty() {
            errs.push(FieldError::required(at, ""));
        } else if !volumes.insert(name.to_string()) {
            errs.push(FieldError::duplicate(at, name));
        } else {
            for e in dns1123_label(name) {
                errs.push(FieldError::invalid(at.clone(), name, e));
            }
        }
    }
    for (list, items) in [
        ("initContainers", arr(spec, "/initContainers")),
        ("containers", containers),
    ] {
        for (i, c) in items.iter().enumerate() {
            for (j, m) in arr(c, "/volumeMounts").iter().enumerate() {
                let name = s(m, "/name");
                if !volumes.contains(name) {
                    errs.push(FieldError {
                        field: format!("{path}.{list}[{i}].volumeMounts[{j}].name"),
                        kind: crate::status::FieldErrorType::NotFound,
                        value: Some(format!("{name:?}")),
                        detail: String::new(),
                    });
                }
                if s(m, "/mountPath").is_empty() {
                    errs.push(FieldError::required(
                        format!("{path}.{list}[{i}].volumeMounts[{j}].mountPath"),
                        "",
                    ));
                }
            }
        }
    }
    if let Some(ns) = spec.get("nodeSelector") {
        errs.extend(label_map(
            &string_map(Some(ns)),
            &format!("{path}.nodeSelector"),
        ));
    }
    errs
}

/// A workload's selector and template labels (`spec.selector` must be present and match
/// `spec.template.metadata.labels`).
fn selector_and_template(obj: &Value, template_path: &str, restart: &[&str]) -> Errors {
    let mut errs = Errors::new();
    let template = obj.pointer(template_path).unwrap_or(&Value::Null);
    let tpath = template_path.trim_start_matches('/').replace('/', ".");
    let tlabels = string_map(template.pointer("/metadata/labels"));
    match obj.pointer("/spec/selector") {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            let parsed = serde_json::from_value(sel.clone())
                .map_err(|e| e.to_string())
                .and_then(|api| LabelSelector::from_api(&api).map_err(|e| e.to_string()));
            match parsed {
                Err(e) => errs.push(FieldError::invalid_raw("spec.selector", sel.to_string(), e)),
                Ok(sel) if sel.is_everything() => errs.push(FieldError::invalid_raw(
                    "spec.selector",
                    "v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}".into(),
                    "empty selector is invalid for deployment",
                )),
                Ok(sel) if !sel.matches(&tlabels) => errs.push(FieldError::invalid_raw(
                    format!("{tpath}.metadata.labels"),
                    go_map(&tlabels),
                    "`selector` does not match template `labels`",
                )),
                Ok(_) => {}
            }
        }
    }
    errs.extend(pod_spec(
        template.get("spec").unwrap_or(&Value::Null),
        &format!("{tpath}.spec"),
        restart,
    ));
    errs
}

fn non_negative(obj: &Value, p: &str, errs: &mut Errors) {
    if let Some(n) = obj.pointer(p).and_then(Value::as_i64) {
        if n < 0 {
            errs.push(FieldError::invalid_raw(
                p.trim_start_matches('/').replace('/', "."),
                n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
}

const ALWAYS: &[&str] = &["Always"];
const ANY_RESTART: &[&str] = &["Always", "OnFailure", "Never"];
const JOB_RESTART: &[&str] = &["OnFailure", "Never"];

/// Checks what a kind requires of its content (not metadata; see [`object_meta`]).
pub fn object(kind: &str, obj: &Value) -> Errors {
    let mut errs = Errors::new();
    match kind {
        "Namespace" => {
            let finalizers = obj.pointer("/spec/finalizers").and_then(Value::as_array);
            for (i, f) in finalizers.into_iter().flatten().enumerate() {
                errs.extend(finalizer_name(
                    f.as_str().unwrap_or_default(),
                    &format!("spec.finalizers[{i}]"),
                ));
            }
        }
        "Pod" => errs.extend(pod_spec(
            obj.get("spec").unwrap_or(&Value::Null),
            "spec",
            ANY_RESTART,
        )),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            non_negative(obj, "/spec/replicas", &mut errs);
            errs.extend(selector_and_template(obj, "/spec/template", ALWAYS));
        }
        "StatefulSet" => {
            non_negative(obj, "/spec/replicas", &mut errs);
            // The template's mounts may name volumeClaimTemplates: they count as volumes.
            let mut with_claims = obj.clone();
            let claims: Vec<Value> = obj
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.pointer("/metadata/name").cloned())
                .map(|n| serde_json::json!({"name": n, "persistentVolumeClaim": {"claimName": n}}))
                .collect();
            if let Some(spec) = with_claims
                .pointer_mut("/spec/template/spec")
                .and_then(Value::as_object_mut)
            {
                let volumes = spec.entry("volumes").or_insert(Value::Array(vec![]));
                if let Some(v) = volumes.as_array_mut() {
                    v.extend(claims);
                }
            }
            errs.extend(selector_and_template(
                &with_claims,
                "/spec/template",
                ALWAYS,
            ));
        }
        "ReplicationController" => {
            non_negative(obj, "/spec/replicas", &mut errs);
            let sel = string_map(obj.pointer("/spec/selector"));
            let tl = string_map(obj.pointer("/spec/template/metadata/labels"));
            if sel.is_empty() {
                errs.push(FieldError::required("spec.selector", ""));
            } else if !sel.iter().all(|(k, v)| tl.get(k) == Some(v)) {
                errs.push(FieldError::invalid_raw(
                    "spec.template.metadata.labels",
                    go_map(&tl),
                    "`selector` does not match template `labels`",
                ));
            }
            errs.extend(pod_spec(
                obj.pointer("/spec/template/spec").unwrap_or(&Value::Null),
                "spec.template.spec",
                ALWAYS,
            ));
        }
        "Job" => {
            non_negative(obj, "/spec/parallelism", &mut errs);
            non_negative(obj, "/spec/completions", &mut errs);
            non_negative(obj, "/spec/backoffLimit", &mut errs);
            errs.extend(pod_spec(
                obj.pointer("/spec/template/spec").unwrap_or(&Value::Null),
                "spec.template.spec",
                JOB_RESTART,
            ));
        }
        "CronJob" => {
            let schedule = s(obj, "/spec/schedule");
            if schedule.trim().is_empty() {
                errs.push(FieldError::required("spec.schedule", ""));
            } else if let Err(e) = crate::cron::parse(schedule) {
                errs.push(FieldError::invalid("spec.schedule", schedule, e));
            }
            if let Some(tz) = obj.pointer("/spec/timeZone").and_then(Value::as_str) {
                if let Err(e) = crate::cron::time_zone(tz) {
                    errs.push(FieldError::invalid("spec.timeZone", tz, e));
                }
            }
            errs.extend(pod_spec(
                obj.pointer("/spec/jobTemplate/spec/template/spec")
                    .unwrap_or(&Value::Null),
                "spec.jobTemplate.spec.template.spec",
                JOB_RESTART,
            ));
        }
        "Service" => service(obj, &mut errs),
        "Ingress" => ingress(obj, &mut errs),
        "ConfigMap" | "Secret" => {
            let mut seen = BTreeSet::new();
            for field in ["data", "binaryData", "stringData"] {
                for k in obj
                    .get(field)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|m| m.keys())
                {
                    for e in config_map_key(k) {
                        errs.push(FieldError::invalid(format!("{field}[{k}]"), k, e));
                    }
                    if field == "binaryData" && !seen.insert(k.clone()) {
                        errs.push(FieldError::invalid(
                            format!("data[{k}]"),
                            k,
                            "duplicate of key present in binaryData",
                        ));
                    } else {
                        seen.insert(k.clone());
                    }
                }
            }
        }
        _ => {}
    }
    errs
}

const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];

/// Upstream's Ingress checks: rules or a default backend, one backend type with a port
/// name or number, hosts that are DNS subdomains (a `*.` first label allowed), and a
/// `pathType` for every path, whose paths are absolute and, for Exact and Prefix, clean.
fn ingress(obj: &Value, errs: &mut Errors) {
    let rules = arr(obj, "/spec/rules");
    let default = obj.pointer("/spec/defaultBackend");
    if rules.is_empty() && default.is_none() {
        errs.push(FieldError::invalid_raw(
            "spec",
            "[]networking.IngressRule(nil)".into(),
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(b) = default {
        ingress_backend(b, "spec.defaultBackend", errs);
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let host = s(rule, "/host");
        if !host.is_empty() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            for e in crate::validation::dns1123_subdomain(bare) {
                errs.push(FieldError::invalid(format!("{at}.host"), host, e));
            }
            if bare.contains('*') {
                errs.push(FieldError::invalid(
                    format!("{at}.host"),
                    host,
                    "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                ));
            }
        }
        for (j, p) in arr(rule, "/http/paths").iter().enumerate() {
            let at = format!("{at}.http.paths[{j}]");
            let path = s(p, "/path");
            match p.get("pathType").and_then(Value::as_str) {
                None => errs.push(FieldError::required(
                    format!("{at}.pathType"),
                    "pathType must be specified",
                )),
                Some(t) if !PATH_TYPES.contains(&t) => errs.push(FieldError::not_supported(
                    format!("{at}.pathType"),
                    t,
                    PATH_TYPES,
                )),
                Some(t) => {
                    if !path.starts_with('/') && (t != "ImplementationSpecific" || !path.is_empty())
                    {
                        errs.push(FieldError::invalid(
                            format!("{at}.path"),
                            path,
                            "must be an absolute path",
                        ));
                    } else if t != "ImplementationSpecific" {
                        for bad in ["//", "/./", "/../", "%2f", "%2F"] {
                            if path.contains(bad) {
                                errs.push(FieldError::invalid(
                                    format!("{at}.path"),
                                    path,
                                    format!("must not contain '{bad}'"),
                                ));
                            }
                        }
                        for bad in ["/..", "/."] {
                            if path.ends_with(bad) {
                                errs.push(FieldError::invalid(
                                    format!("{at}.path"),
                                    path,
                                    format!("cannot end with '{bad}'"),
                                ));
                            }
                        }
                    }
                }
            }
            match p.get("backend") {
                Some(b) => ingress_backend(b, &format!("{at}.backend"), errs),
                None => errs.push(FieldError::required(format!("{at}.backend"), "")),
            }
        }
    }
}

fn ingress_backend(b: &Value, at: &str, errs: &mut Errors) {
    let service = b.get("service");
    let resource = b.get("resource");
    match (service, resource) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            at,
            "",
            "cannot set both resource and service backends",
        )),
        (None, None) => errs.push(FieldError::invalid(
            at,
            "",
            "one backend type must be specified",
        )),
        (Some(svc), None) => {
            let at = format!("{at}.service");
            if s(svc, "/name").is_empty() {
                errs.push(FieldError::required(format!("{at}.name"), ""));
            }
            let name = s(svc, "/port/name");
            let number = svc.pointer("/port/number").and_then(Value::as_i64);
            match (name.is_empty(), number) {
                (false, Some(_)) => errs.push(FieldError::invalid(
                    format!("{at}.port"),
                    "",
                    "cannot set both port name & port number",
                )),
                (true, None) => errs.push(FieldError::required(
                    format!("{at}.port"),
                    "port name or number is required",
                )),
                (true, Some(n)) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid_raw(
                    format!("{at}.port.number"),
                    n.to_string(),
                    "must be between 1 and 65535, inclusive",
                )),
                (false, None) => {
                    for e in port_name(name) {
                        errs.push(FieldError::invalid(format!("{at}.port.name"), name, e));
                    }
                }
                _ => {}
            }
        }
        (None, Some(_)) => {}
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

fn service(obj: &Value, errs: &mut Errors) {
    let ty = s(obj, "/spec/type");
    if !SERVICE_TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", ty, SERVICE_TYPES));
        return;
    }
    let headless = s(obj, "/spec/clusterIP") == "None";
    let ports = arr(obj, "/spec/ports");
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if ty == "ExternalName" && s(obj, "/spec/externalName").is_empty() {
        errs.push(FieldError::required("spec.externalName", ""));
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid_raw(
                format!("spec.ports[{i}].port"),
                port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = s(p, "/name");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("spec.ports[{i}].name"), ""));
        } else if !name.is_empty() {
            if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("spec.ports[{i}].name"), name));
            }
            for e in dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("spec.ports[{i}].name"),
                    name,
                    e,
                ));
            }
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if ty == "ClusterIP" && np != 0 {
                errs.push(FieldError::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
}

/// Checks that an update does not change what may not change.
pub fn update(kind: &str, old: &Value, new: &Value) -> Errors {
    let mut errs = Errors::new();
    let immutable = |p: &str, errs: &mut Errors| {
        if old.pointer(p) != new.pointer(p) {
            let field = p.trim_start_matches('/').replace('/', ".");
            let shown = new.pointer(p).map(|v| match v {
                Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            });
            errs.push(FieldError {
                field,
                kind: crate::status::FieldErrorType::Invalid,
                value: shown.or(Some("\"\"".into())),
                detail: "field is immutable".into(),
            });
        }
    };
    match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" => {
            immutable("/spec/selector", &mut errs)
        }
        // A Node's pod range, once set, stays (the kubelet configured its network for it).
        "Node" => {
            let was = old
                .pointer("/spec/podCIDRs")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .cloned()
                .or_else(|| {
                    old.pointer("/spec/podCIDR")
                        .and_then(Value::as_str)
                        .filter(|c| !c.is_empty())
                        .map(|c| vec![Value::String(c.into())])
                });
            if let Some(was) = was {
                let now = new.pointer("/spec/podCIDRs").and_then(Value::as_array);
                let now_one = new.pointer("/spec/podCIDR").and_then(Value::as_str);
                if now.is_some_and(|n| *n != was)
                    || now_one.is_some_and(|c| was.first().and_then(Value::as_str) != Some(c))
                {
                    errs.push(FieldError::forbidden(
                        "spec.podCIDRs",
                        "node updates may not change podCIDR except from \"\" to valid",
                    ));
                }
            }
        }
        "Service"
            if s(old, "/spec/type") != "ExternalName" && s(new, "/spec/type") != "ExternalName" =>
        {
            immutable("/spec/clusterIP", &mut errs)
        }
        "ConfigMap" | "Secret" if old.get("immutable") == Some(&Value::Bool(true)) => {
            for f in ["data", "binaryData"] {
                if old.get(f) != new.get(f) {
                    errs.push(FieldError::forbidden(
                        f,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        "Pod" => {
            // Only images, activeDeadlineSeconds, added tolerations and a few more may change.
            let mut a = old.get("spec").cloned().unwrap_or(Value::Null);
            let mut b = new.get("spec").cloned().unwrap_or(Value::Null);
            for spec in [&mut a, &mut b] {
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs {
                            if let Some(c) = c.as_object_mut() {
                                c.remove("image");
                            }
                        }
                    }
                }
                if let Some(o) = spec.as_object_mut() {
                    o.remove("activeDeadlineSeconds");
                    o.remove("tolerations");
                    o.remove("terminationGracePeriodSeconds");
                    o.remove("schedulingGates");
                }
            }
            if a != b {
                errs.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        _ => {}
    }
    errs
}

#[cfg(test)]
mod path_segment_tests {
    #[test]
    fn rbac_names_are_path_segments() {
        assert!(super::path_segment_name("system:coredns").is_empty());
        assert_eq!(super::path_segment_name("a/b"), ["may not contain '/'"]);
        assert_eq!(super::path_segment_name(".."), ["may not be '..'"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_labels() {
        let e = object_meta("Pod", &json!({"metadata": {"name": "Bad_Name"}}), true);
        assert_eq!(e[0].field, "metadata.name");
        let e = object_meta("Service", &json!({"metadata": {"name": "1abc"}}), true);
        assert_eq!(e.len(), 1);
        let e = object_meta("Pod", &json!({"metadata": {}}), true);
        assert_eq!(
            e[0].to_string(),
            "metadata.name: Required value: name or generateName is required"
        );
        let e = object_meta(
            "Pod",
            &json!({"metadata": {"name": "a", "labels": {"a": "b c"}}}),
            true,
        );
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn ingresses_as_upstream_validates_them() {
        let all = |v: Value| -> Vec<String> {
            object("Ingress", &v)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            all(json!({"spec": {}})),
            ["spec: Invalid value: []networking.IngressRule(nil): either `defaultBackend` or `rules` must be specified"]
        );
        let path = |p: Value| json!({"spec": {"rules": [{"host": "foo.example.com", "http": {"paths": [p]}}]}});
        let svc = json!({"service": {"name": "web", "port": {"number": 80}}});
        assert!(all(path(
            json!({"path": "/", "pathType": "Prefix", "backend": svc})
        ))
        .is_empty());
        assert!(all(path(
            json!({"pathType": "ImplementationSpecific", "backend": svc})
        ))
        .is_empty());
        assert_eq!(
            all(path(json!({"path": "/", "backend": svc}))),
            ["spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified"]
        );
        assert_eq!(
            all(path(json!({"path": "/", "pathType": "Regex", "backend": svc}))),
            ["spec.rules[0].http.paths[0].pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""]
        );
        assert_eq!(
            all(path(json!({"path": "foo", "pathType": "Exact", "backend": svc}))),
            ["spec.rules[0].http.paths[0].path: Invalid value: \"foo\": must be an absolute path"]
        );
        assert_eq!(
            all(path(
                json!({"path": "/a//b", "pathType": "Prefix", "backend": svc})
            )),
            ["spec.rules[0].http.paths[0].path: Invalid value: \"/a//b\": must not contain '//'"]
        );
        let both = json!({"service": {"name": "web", "port": {"number": 80, "name": "http"}}});
        assert_eq!(
            all(path(json!({"path": "/", "pathType": "Prefix", "backend": both}))),
            ["spec.rules[0].http.paths[0].backend.service.port: Invalid value: \"\": cannot set both port name & port number"]
        );
        assert_eq!(
            all(path(json!({"path": "/", "pathType": "Prefix", "backend": {}}))),
            ["spec.rules[0].http.paths[0].backend: Invalid value: \"\": one backend type must be specified"]
        );
        let host = |h: &str| json!({"spec": {"rules": [{"host": h}]}});
        assert!(all(host("*.example.com")).is_empty());
        assert_eq!(all(host("a.*.example.com")).len(), 2);
        assert_eq!(
            all(host("Foo.com"))[0].split(':').next(),
            Some("spec.rules[0].host")
        );
    }

    #[test]
    fn workloads_need_matching_selectors() {
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}},
              "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always"}]}}}});
        let e = object("Deployment", &d);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].to_string(),
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"b\"}: `selector` does not match template `labels`"
        );
        let pod = json!({"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "imagePullPolicy": "Always"}]}});
        assert_eq!(
            object("Pod", &pod)[0].to_string(),
            "spec.containers[0].image: Required value"
        );
        let job = json!({"spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always"}]}}}});
        assert_eq!(
            object("Job", &job)[0].field,
            "spec.template.spec.restartPolicy"
        );
    }

    #[test]
    fn probes_and_hooks_need_one_handler_and_valid_ports() {
        let pod = json!({"spec": {"restartPolicy": "Always", "containers": [{
            "name": "c", "image": "i", "imagePullPolicy": "Always",
            "livenessProbe": {"httpGet": {"path": "/", "port": "Bad_Name"}, "successThreshold": 2},
            "readinessProbe": {"tcpSocket": {"port": 0}},
            "startupProbe": {"periodSeconds": 1},
            "lifecycle": {"preStop": {"exec": {"command": ["true"]}, "sleep": {"seconds": 1}}}
        }]}});
        let shown: Vec<String> = object("Pod", &pod).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            vec![
                "spec.containers[0].livenessProbe.httpGet.port: Invalid value: \"Bad_Name\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
                "spec.containers[0].readinessProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.containers[0].startupProbe: Required value: must specify a handler type",
                "spec.containers[0].lifecycle.preStop.sleep: Forbidden: may not specify more than 1 handler type",
            ]
        );
        let ok = json!({"spec": {"restartPolicy": "Always", "containers": [{
            "name": "c", "image": "i", "imagePullPolicy": "Always",
            "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
            "livenessProbe": {"httpGet": {"path": "/", "port": "http"}},
            "readinessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 3}
        }]}});
        assert!(object("Pod", &ok).is_empty(), "{:?}", object("Pod", &ok));
    }

    #[test]
    fn services_and_updates() {
        let svc = json!({"spec": {"type": "ClusterIP"}});
        assert_eq!(
            object("Service", &svc)[0].to_string(),
            "spec.ports: Required value"
        );
        let old = json!({"spec": {"clusterIP": "10.96.0.5", "type": "ClusterIP"}});
        let new = json!({"spec": {"clusterIP": "10.96.0.6", "type": "ClusterIP"}});
        assert_eq!(
            update("Service", &old, &new)[0].to_string(),
            "spec.clusterIP: Invalid value: \"10.96.0.6\": field is immutable"
        );
        let p1 = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let p2 = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}});
        assert!(update("Pod", &p1, &p2).is_empty());
        let p3 = json!({"spec": {"containers": [{"name": "d", "image": "b"}]}});
        assert_eq!(update("Pod", &p1, &p3)[0].field, "spec");
    }
}
