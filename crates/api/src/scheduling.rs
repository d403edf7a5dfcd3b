//! Where a pod may go, as upstream's component-helpers decide it: required node
//! affinity (`nodeSelector` and node selector terms, labels and `metadata.name` fields)
//! and taints versus tolerations. kube-scheduler's plugins and the DaemonSet controller
//! share them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

use crate::selector::{Operator, Requirement};

/// A parsed node selector term: label requirements and `metadata.name` requirements;
/// `None` from [`Term::parse`] when the term can match nothing (empty or invalid).
#[derive(Debug, Clone)]
pub struct Term {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

fn requirement(r: &NodeSelectorRequirement) -> Option<Requirement> {
    let values = r.values.clone().unwrap_or_default();
    let operator = match r.operator.as_str() {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        "Gt" => Operator::GreaterThan,
        "Lt" => Operator::LessThan,
        _ => return None,
    };
    Some(Requirement {
        key: r.key.clone(),
        operator,
        values,
    })
}

impl Term {
    pub fn parse(t: &NodeSelectorTerm) -> Option<Term> {
        let labels: Option<Vec<_>> = t
            .match_expressions
            .iter()
            .flatten()
            .map(requirement)
            .collect();
        let fields: Option<Vec<_>> = t.match_fields.iter().flatten().map(requirement).collect();
        let (labels, fields) = (labels?, fields?);
        if labels.is_empty() && fields.is_empty() {
            return None;
        }
        Some(Term { labels, fields })
    }

    /// Whether a node with this name and these labels matches.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let fields = BTreeMap::from([("metadata.name".to_string(), name.to_string())]);
        self.labels.iter().all(|r| r.matches(labels))
            && self
                .fields
                .iter()
                .all(|r| r.key == "metadata.name" && r.matches(&fields))
    }
}

/// A pod's hard node constraints: `nodeSelector` and the required node affinity terms
/// (any must match).
#[derive(Debug, Default, Clone)]
pub struct RequiredNodeAffinity {
    node_selector: BTreeMap<String, String>,
    /// `None`: no required affinity.
    required: Option<Vec<Option<Term>>>,
}

impl RequiredNodeAffinity {
    pub fn of(spec: Option<&PodSpec>) -> RequiredNodeAffinity {
        RequiredNodeAffinity {
            node_selector: spec
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
            required: spec
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .map(|r| r.node_selector_terms.iter().map(Term::parse).collect()),
        }
    }

    /// Whether a node with this name and these labels satisfies both.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.required.as_ref().is_none_or(|terms| {
                terms
                    .iter()
                    .any(|t| t.as_ref().is_some_and(|t| t.matches(name, labels)))
            })
    }
}

/// Whether a toleration tolerates a taint (upstream's ToleratesTaint): the effect
/// matches (empty: all), the key matches (empty with Exists: all keys), and with the
/// Equal operator (the default) the value matches.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            key == taint.key
                && t.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The first taint with one of `effects` that no toleration tolerates.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        effects.contains(&taint.effect.as_str()) && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}
