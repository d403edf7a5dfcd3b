//! PodTopologySpread: `topologySpreadConstraints` — DoNotSchedule constraints filter
//! nodes whose domain would exceed `maxSkew` (with `minDomains`, `nodeAffinityPolicy`,
//! `nodeTaintsPolicy`, `matchLabelKeys`); ScheduleAnyway constraints score nodes whose
//! domains hold fewer matching pods higher.

use std::collections::{HashMap, HashSet};

use ferrokube_api::selector::{Operator, Requirement};
use ferrokube_api::LabelSelector;
use k8s_openapi::api::core::v1::TopologySpreadConstraint;

use super::node_affinity;
use super::taint_toleration::untolerated;
use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{events, CycleState, Plugin, Points, Reject, MAX_NODE_SCORE};

/// A parsed constraint.
#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    selector: LabelSelector,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

fn constraints(pod: &PodInfo, action: &str) -> Vec<Constraint> {
    let list: &[TopologySpreadConstraint] = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default();
    list.iter()
        .filter(|c| c.when_unsatisfiable == action)
        .filter_map(|c| {
            let mut selector = match &c.label_selector {
                Some(s) => LabelSelector::from_api(s).ok()?,
                // No selector: matches no pod.
                None => LabelSelector {
                    requirements: vec![Requirement {
                        key: "\u{0}".into(),
                        operator: Operator::Exists,
                        values: vec![],
                    }],
                },
            };
            for k in c.match_label_keys.iter().flatten() {
                if let Some(v) = pod.labels.get(k) {
                    selector.requirements.push(Requirement {
                        key: k.clone(),
                        operator: Operator::In,
                        values: vec![v.clone()],
                    });
                }
            }
            Some(Constraint {
                max_skew: i64::from(c.max_skew),
                key: c.topology_key.clone(),
                selector,
                min_domains: i64::from(c.min_domains.unwrap_or(1)),
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            })
        })
        .collect()
}

/// Whether a node counts for the constraints: it has every topology key and passes the
/// inclusion policies.
fn eligible(cs: &[Constraint], pod: &PodInfo, aff: &node_affinity::State, node: &NodeInfo) -> bool {
    if !cs.iter().all(|c| node.labels.contains_key(&c.key)) {
        return false;
    }
    if cs.iter().any(|c| c.honor_affinity) && !aff.required_match(node) {
        return false;
    }
    if cs.iter().any(|c| c.honor_taints) && untolerated(pod, node).is_some() {
        return false;
    }
    true
}

fn matching(c: &Constraint, pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.pods
        .iter()
        .filter(|p| {
            p.namespace == pod.namespace && !p.is_terminating() && c.selector.matches(&p.labels)
        })
        .count() as i64
}

/// Filter state: per DoNotSchedule constraint the matching pods per domain and the
/// smallest count.
#[derive(Debug, Default)]
pub struct State {
    constraints: Vec<(Constraint, HashMap<String, i64>, i64)>,
}

/// Score state: per ScheduleAnyway constraint, counts per domain and the domain weight.
#[derive(Debug, Default)]
pub struct ScoreState {
    constraints: Vec<(Constraint, HashMap<String, i64>, f64)>,
    ignored: HashSet<String>,
}

pub struct PodTopologySpread;

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
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
        events::NODE_ADD
            | events::NODE_LABEL
            | events::NODE_TAINT
            | events::POD_ADD
            | events::POD_LABEL
            | events::POD_DELETE
    }
    fn pre_filter(&self, s: &mut CycleState, pod: &PodInfo, cache: &Cache) -> Result<(), Reject> {
        let cs = constraints(pod, "DoNotSchedule");
        if cs.is_empty() {
            s.spread = None;
            return Ok(());
        }
        let aff = node_affinity::State::of(pod);
        let mut out: Vec<(Constraint, HashMap<String, i64>, i64)> =
            cs.iter().map(|c| (c.clone(), HashMap::new(), 0)).collect();
        for node in cache.nodes() {
            if !eligible(&cs, pod, &aff, node) {
                continue;
            }
            for (c, counts, _) in out.iter_mut() {
                let v = node.labels[&c.key].clone();
                *counts.entry(v).or_default() += matching(c, pod, node);
            }
        }
        for (c, counts, min) in out.iter_mut() {
            *min = if (counts.len() as i64) < c.min_domains {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            };
        }
        s.spread = Some(State { constraints: out });
        Ok(())
    }
    fn filter(
        &self,
        s: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) -> Result<(), Reject> {
        let Some(st) = s.spread.as_ref() else {
            return Ok(());
        };
        for (c, counts, min) in &st.constraints {
            let Some(v) = node.labels.get(&c.key) else {
                return Err(Reject::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let own = i64::from(c.selector.matches(&pod.labels));
            let skew = counts.get(v).copied().unwrap_or(0) + own - min;
            if skew > c.max_skew {
                return Err(Reject::unschedulable(
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }
    fn pre_score(&self, s: &mut CycleState, pod: &PodInfo, nodes: &[&NodeInfo], cache: &Cache) {
        let cs = constraints(pod, "ScheduleAnyway");
        if cs.is_empty() {
            s.spread_scores = None;
            return;
        }
        let aff = node_affinity::State::of(pod);
        let mut st = ScoreState::default();
        let mut domains: Vec<HashSet<String>> = vec![HashSet::new(); cs.len()];
        for n in nodes {
            if !cs.iter().all(|c| n.labels.contains_key(&c.key)) {
                st.ignored.insert(n.name.clone());
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                domains[i].insert(n.labels[&c.key].clone());
            }
        }
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
        for node in cache.nodes() {
            if !eligible(&cs, pod, &aff, node) {
                continue;
            }
            for (i, c) in cs.iter().enumerate() {
                let v = &node.labels[&c.key];
                if domains[i].contains(v) {
                    *counts[i].entry(v.clone()).or_default() += matching(c, pod, node);
                }
            }
        }
        st.constraints = cs
            .into_iter()
            .zip(counts)
            .zip(domains)
            .map(|((c, counts), d)| (c, counts, ((d.len() + 2) as f64).ln()))
            .collect();
        s.spread_scores = Some(st);
    }
    fn score(&self, s: &CycleState, _: &PodInfo, node: &NodeInfo, _: &Cache) -> i64 {
        let Some(st) = s.spread_scores.as_ref() else {
            return 0;
        };
        if st.ignored.contains(&node.name) {
            return -1;
        }
        let mut score = 0f64;
        for (c, counts, weight) in &st.constraints {
            let v = &node.labels[&c.key];
            let cnt = counts.get(v).copied().unwrap_or(0) as f64;
            score += cnt * weight + (c.max_skew - 1) as f64;
        }
        score.round() as i64
    }
    fn normalize(&self, s: &CycleState, scores: &mut [i64]) {
        if s.spread_scores.is_none() {
            return;
        }
        let valid = scores.iter().copied().filter(|v| *v >= 0);
        let (min, max) = valid.fold((i64::MAX, 0i64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        for v in scores.iter_mut() {
            *v = if *v < 0 {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *v) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn pod(name: &str, spread: Value) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c"}], "topologySpreadConstraints": spread}}),
            )
            .unwrap(),
        )))
    }

    fn constraint(skew: i32, key: &str, action: &str) -> Value {
        json!([{"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": action,
            "labelSelector": {"matchLabels": {"app": "web"}}}])
    }

    fn cluster() -> Cache {
        let mut c = Cache::default();
        for (name, zone) in [("a", Some("z1")), ("b", Some("z2")), ("c", None)] {
            let mut labels = json!({"kubernetes.io/hostname": name});
            if let Some(z) = zone {
                labels["zone"] = json!(z);
            }
            c.set_node(Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                    .unwrap(),
            ));
        }
        c
    }

    fn feasible(c: &Cache, p: &PodInfo) -> Vec<(String, Option<String>)> {
        let mut s = CycleState::default();
        PodTopologySpread.pre_filter(&mut s, p, c).unwrap();
        c.nodes()
            .iter()
            .map(|n| {
                let r = PodTopologySpread
                    .filter(&s, p, n, c)
                    .err()
                    .map(|r| r.reasons[0].clone());
                (n.name.clone(), r)
            })
            .collect()
    }

    #[test]
    fn do_not_schedule_keeps_the_skew() {
        let mut c = cluster();
        let spread = constraint(1, "zone", "DoNotSchedule");
        c.add_pod(pod("w0", spread.clone()), "a");
        let r = feasible(&c, &pod("w1", spread.clone()));
        assert_eq!(
            r[0],
            (
                "a".into(),
                Some("node(s) didn't match pod topology spread constraints".into())
            )
        );
        assert_eq!(r[1], ("b".into(), None));
        assert_eq!(
            r[2],
            (
                "c".into(),
                Some(
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .into()
                )
            )
        );
        c.add_pod(pod("w1", spread.clone()), "b");
        let r = feasible(&c, &pod("w2", spread));
        assert!(r[0].1.is_none() && r[1].1.is_none());
    }

    #[test]
    fn min_domains_counts_missing_domains_as_empty() {
        let mut c = cluster();
        let spread = json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "minDomains": 3, "labelSelector": {"matchLabels": {"app": "web"}}}]);
        c.add_pod(pod("w0", spread.clone()), "a");
        c.add_pod(pod("w1", spread.clone()), "b");
        // Two domains < 3: the global minimum is 0, so 1 + 1 - 0 > 1 everywhere.
        let r = feasible(&c, &pod("w2", spread));
        assert!(r.iter().all(|(_, e)| e.is_some()), "{r:?}");
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains() {
        let mut c = cluster();
        let spread = constraint(1, "zone", "ScheduleAnyway");
        c.add_pod(pod("w0", spread.clone()), "a");
        let p = pod("w1", spread);
        let nodes: Vec<&NodeInfo> = c.nodes().iter().collect();
        let mut s = CycleState::default();
        PodTopologySpread.pre_score(&mut s, &p, &nodes, &c);
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| PodTopologySpread.score(&s, &p, n, &c))
            .collect();
        PodTopologySpread.normalize(&s, &mut scores);
        assert!(scores[1] > scores[0], "{scores:?}");
        assert_eq!(scores[2], 0);
    }
}
