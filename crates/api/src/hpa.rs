//! HorizontalPodAutoscalers are stored as `autoscaling/v2` and also served as
//! `autoscaling/v1` (what `kubectl autoscale` writes), converted as upstream does: v1's
//! `targetCPUUtilizationPercentage` / `currentCPUUtilizationPercentage` are the CPU
//! utilization metric, and what v1 has no field for (other metrics, current metrics,
//! conditions, behavior) travels in `autoscaling.alpha.kubernetes.io/*` annotations.

use serde_json::{json, Map, Value};

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// The fields both versions share.
const SPEC_FIELDS: [&str; 3] = ["scaleTargetRef", "minReplicas", "maxReplicas"];
const STATUS_FIELDS: [&str; 4] = [
    "observedGeneration",
    "lastScaleTime",
    "currentReplicas",
    "desiredReplicas",
];

/// An object with the `keys` of `from` it has.
fn copy_fields(from: &Value, keys: &[&str]) -> Value {
    let mut out = json!({});
    for k in keys {
        if let Some(x) = from.get(*k) {
            out[*k] = x.clone();
        }
    }
    out
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

/// `m` with its `resource` / `containerResource` source rebuilt: the name and container
/// kept, the rest written by `fill(source, rebuilt)`.
fn convert_sources(m: &Value, fill: impl Fn(&Value, &mut Value)) -> Value {
    let mut out = m.clone();
    for source in ["resource", "containerResource"] {
        if let Some(s) = m.get(source) {
            let mut o = json!({"name": s["name"]});
            if let Some(c) = s.get("container") {
                o["container"] = c.clone();
            }
            fill(s, &mut o);
            out[source] = o;
        }
    }
    out
}

/// Copies `from[from_key]` to `to[to_key]` when present.
fn carry(from: &Value, from_key: &str, to: &mut Value, to_key: &str) {
    if let Some(x) = from.get(from_key) {
        to[to_key] = x.clone();
    }
}

/// A v2 metric in v1's annotation form (`targetAverageUtilization` ...).
fn metric_to_v1(m: &Value) -> Value {
    convert_sources(m, |s, o| {
        carry(
            &s["target"],
            "averageUtilization",
            o,
            "targetAverageUtilization",
        );
        carry(&s["target"], "averageValue", o, "targetAverageValue");
    })
}

/// v1's annotation form of a metric back in v2's.
fn metric_to_v2(m: &Value) -> Value {
    convert_sources(m, |s, o| {
        o["target"] = if let Some(u) = s.get("targetAverageUtilization") {
            json!({"type": "Utilization", "averageUtilization": u})
        } else if let Some(v) = s.get("targetAverageValue") {
            json!({"type": "AverageValue", "averageValue": v})
        } else {
            s.get("target").cloned().unwrap_or(json!({}))
        };
    })
}

/// A v2 current metric in v1's annotation form.
fn current_to_v1(m: &Value) -> Value {
    convert_sources(m, |s, o| {
        carry(
            &s["current"],
            "averageUtilization",
            o,
            "currentAverageUtilization",
        );
        carry(&s["current"], "averageValue", o, "currentAverageValue");
    })
}

/// v1's annotation form of a current metric back in v2's.
fn current_to_v2(m: &Value) -> Value {
    convert_sources(m, |s, o| {
        o["current"] = json!({});
        carry(
            s,
            "currentAverageUtilization",
            &mut o["current"],
            "averageUtilization",
        );
        carry(s, "currentAverageValue", &mut o["current"], "averageValue");
    })
}

fn annotations(v: &mut Value) -> &mut Map<String, Value> {
    let meta = v
        .as_object_mut()
        .expect("an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let a = meta
        .as_object_mut()
        .expect("made an object")
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if !a.is_object() {
        *a = json!({});
    }
    a.as_object_mut().expect("made an object")
}

fn drop_empty_annotations(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if m.get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            m.remove("annotations");
        }
    }
}

/// A stored (v2) HorizontalPodAutoscaler as `autoscaling/v1` shows it.
pub fn to_v1(v2: &Value) -> Value {
    if !v2.is_object() {
        return v2.clone();
    }
    let mut out = v2.clone();
    out["apiVersion"] = json!("autoscaling/v1");
    let spec = v2.get("spec").cloned().unwrap_or(json!({}));
    let metrics: Vec<Value> = spec["metrics"].as_array().cloned().unwrap_or_default();
    let mut s = copy_fields(&spec, &SPEC_FIELDS);
    let mut others = Vec::new();
    for m in &metrics {
        if is_cpu_utilization(m) && s.get("targetCPUUtilizationPercentage").is_none() {
            s["targetCPUUtilizationPercentage"] =
                m["resource"]["target"]["averageUtilization"].clone();
        } else {
            others.push(metric_to_v1(m));
        }
    }
    if !others.is_empty() {
        annotations(&mut out).insert(METRICS.into(), json!(Value::Array(others).to_string()));
    }
    if let Some(b) = spec.get("behavior") {
        annotations(&mut out).insert(BEHAVIOR.into(), json!(b.to_string()));
    }
    out["spec"] = s;
    if let Some(st) = v2.get("status") {
        let mut s = copy_fields(st, &STATUS_FIELDS);
        let mut others = Vec::new();
        for m in st["currentMetrics"].as_array().into_iter().flatten() {
            if m["type"] == "Resource"
                && m["resource"]["name"] == "cpu"
                && m["resource"]["current"].get("averageUtilization").is_some()
                && s.get("currentCPUUtilizationPercentage").is_none()
            {
                s["currentCPUUtilizationPercentage"] =
                    m["resource"]["current"]["averageUtilization"].clone();
            } else {
                others.push(current_to_v1(m));
            }
        }
        if !others.is_empty() {
            annotations(&mut out).insert(
                CURRENT_METRICS.into(),
                json!(Value::Array(others).to_string()),
            );
        }
        if let Some(c) = st
            .get("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        {
            annotations(&mut out).insert(CONDITIONS.into(), json!(c.to_string()));
        }
        out["status"] = s;
    }
    drop_empty_annotations(&mut out);
    out
}

/// An `autoscaling/v1` HorizontalPodAutoscaler in the stored (v2) form.
pub fn to_v2(v1: &Value) -> Value {
    if !v1.is_object() {
        return v1.clone();
    }
    let mut out = v1.clone();
    out["apiVersion"] = json!("autoscaling/v2");
    let parse = |out: &mut Value, key: &str| -> Option<Value> {
        let raw = annotations(out).remove(key)?;
        serde_json::from_str(raw.as_str()?).ok()
    };
    let metrics_annotation = parse(&mut out, METRICS);
    let behavior = parse(&mut out, BEHAVIOR);
    let current_annotation = parse(&mut out, CURRENT_METRICS);
    let conditions = parse(&mut out, CONDITIONS);
    let spec = v1.get("spec").cloned().unwrap_or(json!({}));
    let mut s = copy_fields(&spec, &SPEC_FIELDS);
    let mut metrics = Vec::new();
    if let Some(t) = spec
        .get("targetCPUUtilizationPercentage")
        .filter(|t| !t.is_null())
    {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": t}}}));
    }
    for m in metrics_annotation
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        metrics.push(metric_to_v2(m));
    }
    if !metrics.is_empty() {
        s["metrics"] = Value::Array(metrics);
    }
    if let Some(b) = behavior {
        s["behavior"] = b;
    }
    out["spec"] = s;
    if let Some(st) = v1.get("status") {
        let mut s = copy_fields(st, &STATUS_FIELDS);
        let mut current = Vec::new();
        if let Some(u) = st
            .get("currentCPUUtilizationPercentage")
            .filter(|u| !u.is_null())
        {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": u}}}));
        }
        for m in current_annotation
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            current.push(current_to_v2(m));
        }
        if !current.is_empty() {
            s["currentMetrics"] = Value::Array(current);
        }
        if let Some(c) = conditions {
            s["conditions"] = c;
        }
        out["status"] = s;
    }
    drop_empty_annotations(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_autoscale_round_trips() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}});
        let v2 = to_v2(&v1);
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        assert_eq!(to_v1(&v2), v1);
    }

    #[test]
    fn what_v1_lacks_travels_in_annotations() {
        let v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90, "averageValue": "90m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]}});
        let v1 = to_v1(&v2);
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 90);
        let a = &v1["metadata"]["annotations"];
        assert!(a[METRICS].as_str().unwrap().contains("targetAverageValue"));
        assert!(a[CONDITIONS].as_str().unwrap().contains("AbleToScale"));
        let back = to_v2(&v1);
        assert_eq!(back["spec"]["metrics"], v2["spec"]["metrics"]);
        assert_eq!(back["spec"]["behavior"], v2["spec"]["behavior"]);
        assert_eq!(back["status"]["conditions"], v2["status"]["conditions"]);
        assert!(back["metadata"].get("annotations").is_none());
    }
}
