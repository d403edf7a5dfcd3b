//! NodeAffinity: `nodeSelector` and required node affinity must match the node's labels
//! (and `metadata.name` fields); preferred terms add their weights to the score.

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{default_normalize, events, CycleState, Plugin, Points, Reject};

use ferrokube_api::scheduling::RequiredNodeAffinity;
pub use ferrokube_api::scheduling::Term;

/// What the plugin reads from the pod once per cycle.
#[derive(Debug, Default)]
pub struct State {
    required: RequiredNodeAffinity,
    preferred: Vec<(i32, Option<Term>)>,
}

impl State {
    pub fn of(pod: &PodInfo) -> State {
        let spec = pod.pod.spec.as_ref();
        let na = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref());
        State {
            required: RequiredNodeAffinity::of(spec),
            preferred: na
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .into_iter()
                .flatten()
                .map(|p| (p.weight, Term::parse(&p.preference)))
                .collect(),
        }
    }

    /// Whether the node satisfies nodeSelector and required node affinity.
    pub fn required_match(&self, node: &NodeInfo) -> bool {
        self.required.matches(&node.name, &node.labels)
    }
}

pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn points(&self) -> Points {
        Points {
            pre_filter: true,
            filter: true,
            pre_score: true,
            score: true,
        }
    }
    fn events(&self) -> u32 {
        events::NODE_ADD | events::NODE_LABEL
    }
    fn pre_filter(&self, s: &mut CycleState, pod: &PodInfo, _: &Cache) -> Result<(), Reject> {
        s.node_affinity = Some(State::of(pod));
        Ok(())
    }
    fn filter(
        &self,
        s: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) -> Result<(), Reject> {
        let ok = match &s.node_affinity {
            Some(st) => st.required_match(node),
            None => State::of(pod).required_match(node),
        };
        if ok {
            Ok(())
        } else {
            Err(Reject::unresolvable(
                "node(s) didn't match Pod's node affinity/selector",
            ))
        }
    }
    fn pre_score(&self, s: &mut CycleState, pod: &PodInfo, _: &[&NodeInfo], _: &Cache) {
        if s.node_affinity.is_none() {
            s.node_affinity = Some(State::of(pod));
        }
    }
    fn score(&self, s: &CycleState, _: &PodInfo, node: &NodeInfo, _: &Cache) -> i64 {
        s.node_affinity
            .as_ref()
            .map(|st| {
                st.preferred
                    .iter()
                    .filter(|(_, t)| {
                        t.as_ref()
                            .is_some_and(|t| t.matches(&node.name, &node.labels))
                    })
                    .map(|(w, _)| i64::from(*w))
                    .sum()
            })
            .unwrap_or(0)
    }
    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn cache() -> Cache {
        let mut c = Cache::default();
        for (name, labels) in [
            ("a", json!({"disktype": "ssd", "gen": "3"})),
            ("b", json!({"disktype": "hdd", "gen": "5"})),
        ] {
            c.set_node(Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                    .unwrap(),
            ));
        }
        c
    }

    fn fits(spec: serde_json::Value) -> Vec<String> {
        let c = cache();
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c"}]);
        let pod = PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "d"}, "spec": spec}),
            )
            .unwrap(),
        ));
        let mut s = CycleState::default();
        NodeAffinity.pre_filter(&mut s, &pod, &c).unwrap();
        c.nodes()
            .iter()
            .filter(|n| NodeAffinity.filter(&s, &pod, n, &c).is_ok())
            .map(|n| n.name.clone())
            .collect()
    }

    fn required(exprs: serde_json::Value) -> serde_json::Value {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}})
    }

    #[test]
    fn node_selector_and_required_terms() {
        assert_eq!(
            fits(json!({"nodeSelector": {"disktype": "ssd"}})),
            vec!["a"]
        );
        assert_eq!(
            fits(json!({"nodeSelector": {"disktype": "nvme"}})),
            Vec::<String>::new()
        );
        assert_eq!(
            fits(required(
                json!([{"key": "disktype", "operator": "In", "values": ["hdd", "nvme"]}])
            )),
            vec!["b"]
        );
        assert_eq!(
            fits(required(
                json!([{"key": "disktype", "operator": "NotIn", "values": ["hdd"]}])
            )),
            vec!["a"]
        );
        assert_eq!(
            fits(required(
                json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])
            )),
            vec!["b"]
        );
        assert_eq!(
            fits(required(
                json!([{"key": "gen", "operator": "Lt", "values": ["4"]}])
            )),
            vec!["a"]
        );
        assert_eq!(
            fits(required(
                json!([{"key": "zone", "operator": "DoesNotExist"}])
            ))
            .len(),
            2
        );
        assert!(fits(required(json!([{"key": "zone", "operator": "Exists"}]))).is_empty());
        // matchFields on the node's name; an empty term matches nothing.
        let by_name = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{}, {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}});
        assert_eq!(fits(by_name), vec!["b"]);
    }

    #[test]
    fn preferred_terms_score_their_weight() {
        let c = cache();
        let pod = PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
                "containers": [{"name": "c"}],
                "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 20, "preference": {"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["ssd"]}]}},
                    {"weight": 80, "preference": {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}},
                ]}}}}))
            .unwrap(),
        ));
        let mut s = CycleState::default();
        let nodes: Vec<&NodeInfo> = c.nodes().iter().collect();
        NodeAffinity.pre_score(&mut s, &pod, &nodes, &c);
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| NodeAffinity.score(&s, &pod, n, &c))
            .collect();
        assert_eq!(scores, vec![20, 80]);
        NodeAffinity.normalize(&s, &mut scores);
        assert_eq!(scores, vec![25, 100]);
    }
}
