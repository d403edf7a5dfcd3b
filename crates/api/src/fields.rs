//! Field selectors with upstream's grammar (`k8s.io/apimachinery/pkg/fields`): terms
//! `field=value`, `field==value` or `field!=value` joined by `,`, with `\`, `,` and `=`
//! escaped by a backslash inside values. A missing field reads as the empty string.

use std::collections::BTreeMap;

/// A field selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldSelectorError(pub String);

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub field: String,
    /// `true` for `!=`.
    pub negated: bool,
    pub value: String,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub terms: Vec<Term>,
}

/// Splits on `sep` where it is not escaped by a backslash.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == sep => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unescape(v: &str) -> Result<String, FieldSelectorError> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if c == ',' || c == '=' {
                return Err(FieldSelectorError(format!(
                    "invalid field selector value {v:?}: unescaped {c:?}"
                )));
            }
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('\\' | ',' | '=')) => out.push(e),
            _ => {
                return Err(FieldSelectorError(format!(
                    "invalid field selector value {v:?}: invalid escape sequence"
                )))
            }
        }
    }
    Ok(out)
}

/// Finds the first unescaped operator in a term: `!=`, `==` or `=`.
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'!' if b.get(i + 1) == Some(&b'=') => return Some((&term[..i], true, &term[i + 2..])),
            b'=' if b.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], false, &term[i + 2..]))
            }
            b'=' => return Some((&term[..i], false, &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter / `kubectl --field-selector` syntax.
    pub fn parse(s: &str) -> Result<Self, FieldSelectorError> {
        let mut terms = Vec::new();
        if s.is_empty() {
            return Ok(FieldSelector { terms });
        }
        for part in split_unescaped(s, ',') {
            let Some((field, negated, value)) = split_term(part) else {
                return Err(FieldSelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            if field.is_empty() {
                return Err(FieldSelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            }
            terms.push(Term {
                field: field.to_string(),
                negated,
                value: unescape(value)?,
            });
        }
        Ok(FieldSelector { terms })
    }

    /// Whether an object whose selectable fields are `fields` matches.
    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| {
            let v = fields.get(&t.field).map(String::as_str).unwrap_or("");
            (v == t.value) != t.negated
        })
    }

    /// The value `field` must equal for a match, if a term pins it (e.g. `metadata.name`).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && !t.negated)
            .map(|t| t.value.as_str())
    }

    /// Fields the selector mentions, to check them against a resource's selectable fields.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|t| t.field.as_str())
    }
}

/// The fields of an object that field selectors can use, as upstream exposes them per
/// kind (`metadata.name` and, for namespaced kinds, `metadata.namespace` everywhere; a few
/// more for pods, nodes, events, ...). Absent fields read as the empty string.
pub fn selectable_fields(
    kind: &str,
    namespaced: bool,
    obj: &serde_json::Value,
) -> BTreeMap<String, String> {
    let extra: &[&str] = match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "Secret" => &["type"],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "ReplicaSet" | "ReplicationController" => &["status.replicas"],
        "Job" => &["status.successful"],
        "CertificateSigningRequest" => &["spec.signerName"],
        _ => &[],
    };
    let mut out = BTreeMap::new();
    let mut add = |path: &str| {
        let mut v = obj;
        for part in path.split('.') {
            v = v.get(part).unwrap_or(&serde_json::Value::Null);
        }
        let text = match v {
            serde_json::Value::Null => match path {
                // Booleans and counters default to their zero values.
                "spec.hostNetwork" | "spec.unschedulable" => "false".to_string(),
                "status.replicas" | "status.successful" => "0".to_string(),
                _ => String::new(),
            },
            serde_json::Value::String(s) => s.clone(),
            // `source` of a core event is an object: upstream selects on its component.
            serde_json::Value::Object(o) if path == "source" => o
                .get("component")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            other => other.to_string(),
        };
        out.insert(path.to_string(), text);
    };
    add("metadata.name");
    if namespaced {
        add("metadata.namespace");
    }
    for f in extra {
        add(f);
    }
    out
}

impl FieldSelector {
    /// Refuses selectors on fields the kind does not expose (upstream answers 400).
    pub fn check_supported(
        &self,
        fields: &BTreeMap<String, String>,
    ) -> Result<(), FieldSelectorError> {
        match self.fields().find(|f| !fields.contains_key(*f)) {
            Some(f) => Err(FieldSelectorError(format!(
                "field label not supported: {f}"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_fields_and_unsupported_labels() {
        let pod = serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always"},
            "status": {"phase": "Running"}
        });
        let f = selectable_fields("Pod", true, &pod);
        assert_eq!(f["spec.nodeName"], "n1");
        assert_eq!(f["spec.hostNetwork"], "false");
        assert_eq!(f["status.podIP"], "");
        let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Pending").unwrap();
        assert!(s.check_supported(&f).is_ok());
        assert!(s.matches(&f));
        let bad = FieldSelector::parse("spec.foo=x").unwrap();
        assert_eq!(
            bad.check_supported(&f).unwrap_err().to_string(),
            "field label not supported: spec.foo"
        );
        let node = selectable_fields(
            "Node",
            false,
            &serde_json::json!({"metadata": {"name": "n"}}),
        );
        assert!(!node.contains_key("metadata.namespace"));
        assert_eq!(node["spec.unschedulable"], "false");
        let ev = serde_json::json!({"involvedObject": {"kind": "Pod", "name": "web"}, "source": {"component": "kubelet"}, "type": "Normal"});
        let f = selectable_fields("Event", true, &ev);
        assert_eq!(
            (f["involvedObject.name"].as_str(), f["source"].as_str()),
            ("web", "kubelet")
        );
    }

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn terms_and_matching() {
        let f = set(&[("metadata.name", "web"), ("status.phase", "Running")]);
        let s = FieldSelector::parse("metadata.name=web,status.phase!=Pending").unwrap();
        assert!(s.matches(&f));
        assert!(FieldSelector::parse("").unwrap().matches(&f));
        assert!(FieldSelector::parse("metadata.name==web")
            .unwrap()
            .matches(&f));
        assert!(!FieldSelector::parse("status.phase=Pending")
            .unwrap()
            .matches(&f));
        // A missing field is the empty string.
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&f));
        assert!(!FieldSelector::parse("spec.nodeName!=").unwrap().matches(&f));
        assert_eq!(s.exact("metadata.name"), Some("web"));
        assert_eq!(s.exact("status.phase"), None);
    }

    #[test]
    fn escapes() {
        let s = FieldSelector::parse(r"metadata.name=a\,b\=c\\d,x=y").unwrap();
        assert_eq!(s.terms[0].value, r"a,b=c\d");
        assert_eq!(s.terms[1].field, "x");
    }

    #[test]
    fn errors_read_like_upstream() {
        let e = FieldSelector::parse("metadata.name").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert!(FieldSelector::parse("=x").is_err());
        assert!(FieldSelector::parse(r"a=b\q").is_err());
        assert!(FieldSelector::parse("a=b=c").is_err());
    }
}
