//! Events exist once and are served twice: as core `v1` Events and as
//! `events.k8s.io/v1` Events, whose fields have other names. They are stored in the core
//! form (as upstream stores them) and converted on the way in and out.

use serde_json::{Map, Value};

/// (events.k8s.io name, core name) of every renamed field.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(v: &Value, from_events: bool, api_version: &str) -> Value {
    let Some(o) = v.as_object() else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, val) in o {
        let renamed = RENAMED
            .iter()
            .find(|(e, c)| if from_events { e == k } else { c == k })
            .map(|(e, c)| if from_events { *c } else { *e });
        out.insert(renamed.unwrap_or(k).to_string(), val.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    Value::Object(out)
}

/// An `events.k8s.io/v1` Event in the core (stored) form.
pub fn to_core(v: &Value) -> Value {
    rename(v, true, "v1")
}

/// A stored (core) Event in the `events.k8s.io/v1` form.
pub fn from_core(v: &Value) -> Value {
    rename(v, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_map_both_ways() {
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "x"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "Successfully assigned", "reason": "Scheduled",
            "reportingController": "default-scheduler", "type": "Normal"});
        let core = to_core(&e);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "Successfully assigned");
        assert_eq!(core["reportingComponent"], "default-scheduler");
        assert!(core.get("note").is_none());
        assert_eq!(from_core(&core), e);
    }
}
