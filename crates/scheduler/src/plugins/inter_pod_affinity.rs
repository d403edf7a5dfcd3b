//! InterPodAffinity: required pod affinity (a matching pod must run in the node's
//! topology domain), required anti-affinity (none may, both the new pod's terms and the
//! terms of pods already running), and preferred terms of both scored.

use std::collections::HashMap;

use crate::cache::{AffinityTerm, Cache, NodeInfo, PodInfo};
use crate::framework::{events, Code, CycleState, Plugin, Points, Reject, MAX_NODE_SCORE};

/// Counts per topology domain, `(topologyKey, value)`.
type Counts = HashMap<(String, String), i64>;

/// Counts computed at PreFilter.
#[derive(Debug, Default)]
pub struct State {
    /// Domains where a running pod's required anti-affinity matches the new pod.
    existing_anti: Counts,
    /// Domains with pods matching all of the new pod's affinity terms.
    affinity: Counts,
    /// Domains with pods matching one of the new pod's anti-affinity terms.
    anti: Counts,
}

/// Score per topology domain, computed at PreScore.
#[derive(Debug, Default)]
pub struct ScoreState {
    scores: HashMap<String, HashMap<String, i64>>,
}

fn domain(node: &NodeInfo, key: &str) -> Option<(String, String)> {
    node.labels.get(key).map(|v| (key.to_string(), v.clone()))
}

fn add(counts: &mut Counts, node: &NodeInfo, key: &str, by: i64) {
    if let Some(d) = domain(node, key) {
        *counts.entry(d).or_default() += by;
    }
}

pub struct InterPodAffinity {
    /// Weight of running pods' required affinity terms when scoring
    /// (`hardPodAffinityWeight`, 1).
    pub hard_pod_affinity_weight: i64,
}

impl Default for InterPodAffinity {
    fn default() -> Self {
        InterPodAffinity {
            hard_pod_affinity_weight: 1,
        }
    }
}

impl InterPodAffinity {
    fn state(pod: &PodInfo, cache: &Cache) -> State {
        let mut st = State::default();
        let wants = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        for node in cache.nodes() {
            if !wants && node.pods_with_affinity == 0 {
                continue;
            }
            for existing in &node.pods {
                for t in &existing.required_anti_affinity {
                    if t.matches(pod, cache) {
                        add(&mut st.existing_anti, node, &t.topology_key, 1);
                    }
                }
                if !pod.required_affinity.is_empty()
                    && pod
                        .required_affinity
                        .iter()
                        .all(|t| t.matches(existing, cache))
                {
                    for t in &pod.required_affinity {
                        add(&mut st.affinity, node, &t.topology_key, 1);
                    }
                }
                for t in &pod.required_anti_affinity {
                    if t.matches(existing, cache) {
                        add(&mut st.anti, node, &t.topology_key, 1);
                    }
                }
            }
        }
        st
    }
}

fn count(c: &Counts, node: &NodeInfo, key: &str) -> i64 {
    domain(node, key)
        .and_then(|d| c.get(&d).copied())
        .unwrap_or(0)
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
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
            | events::POD_ADD
            | events::POD_LABEL
            | events::POD_DELETE
    }
    fn pre_filter(&self, s: &mut CycleState, pod: &PodInfo, cache: &Cache) -> Result<(), Reject> {
        s.inter_pod_affinity = Some(InterPodAffinity::state(pod, cache));
        Ok(())
    }
    fn filter(
        &self,
        s: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) -> Result<(), Reject> {
        let Some(st) = s.inter_pod_affinity.as_ref() else {
            return Ok(());
        };
        if !pod.required_affinity.is_empty() {
            let has_keys = pod
                .required_affinity
                .iter()
                .all(|t| node.labels.contains_key(&t.topology_key));
            let satisfied = has_keys
                && pod
                    .required_affinity
                    .iter()
                    .all(|t| count(&st.affinity, node, &t.topology_key) > 0);
            // The first pod of a group that selects itself may go anywhere with the keys.
            let first_of_group = has_keys
                && st.affinity.is_empty()
                && pod
                    .required_affinity
                    .iter()
                    .all(|t| term_selects_itself(t, pod));
            if !satisfied && !first_of_group {
                return Err(Reject::new(
                    Code::UnschedulableAndUnresolvable,
                    "node(s) didn't match pod affinity rules",
                ));
            }
        }
        if pod
            .required_anti_affinity
            .iter()
            .any(|t| count(&st.anti, node, &t.topology_key) > 0)
        {
            return Err(Reject::unschedulable(
                "node(s) didn't match pod anti-affinity rules",
            ));
        }
        if !st.existing_anti.is_empty()
            && node.labels.iter().any(|(k, v)| {
                st.existing_anti
                    .get(&(k.clone(), v.clone()))
                    .is_some_and(|c| *c > 0)
            })
        {
            return Err(Reject::unschedulable(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        Ok(())
    }
    fn pre_score(&self, s: &mut CycleState, pod: &PodInfo, _: &[&NodeInfo], cache: &Cache) {
        let mut scores: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let mut bump = |node: &NodeInfo, key: &str, by: i64| {
            if let Some(v) = node.labels.get(key) {
                *scores
                    .entry(key.to_string())
                    .or_default()
                    .entry(v.clone())
                    .or_default() += by;
            }
        };
        let wants = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        for node in cache.nodes() {
            if !wants && node.pods_with_affinity == 0 {
                continue;
            }
            for existing in &node.pods {
                for (w, t) in &pod.preferred_affinity {
                    if t.matches(existing, cache) {
                        bump(node, &t.topology_key, i64::from(*w));
                    }
                }
                for (w, t) in &pod.preferred_anti_affinity {
                    if t.matches(existing, cache) {
                        bump(node, &t.topology_key, -i64::from(*w));
                    }
                }
                if self.hard_pod_affinity_weight > 0 {
                    for t in &existing.required_affinity {
                        if t.matches(pod, cache) {
                            bump(node, &t.topology_key, self.hard_pod_affinity_weight);
                        }
                    }
                }
                for (w, t) in &existing.preferred_affinity {
                    if t.matches(pod, cache) {
                        bump(node, &t.topology_key, i64::from(*w));
                    }
                }
                for (w, t) in &existing.preferred_anti_affinity {
                    if t.matches(pod, cache) {
                        bump(node, &t.topology_key, -i64::from(*w));
                    }
                }
            }
        }
        s.inter_pod_scores = Some(ScoreState { scores });
    }
    fn score(&self, s: &CycleState, _: &PodInfo, node: &NodeInfo, _: &Cache) -> i64 {
        let Some(st) = s.inter_pod_scores.as_ref() else {
            return 0;
        };
        st.scores
            .iter()
            .filter_map(|(key, by_value)| node.labels.get(key).and_then(|v| by_value.get(v)))
            .sum()
    }
    fn normalize(&self, s: &CycleState, scores: &mut [i64]) {
        if s.inter_pod_scores
            .as_ref()
            .is_none_or(|st| st.scores.is_empty())
        {
            return;
        }
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        for v in scores.iter_mut() {
            *v = if max > min {
                MAX_NODE_SCORE * (*v - min) / (max - min)
            } else {
                0
            };
        }
    }
}

/// Whether a term of a pod selects the pod itself (namespace and labels).
fn term_selects_itself(t: &AffinityTerm, pod: &PodInfo) -> bool {
    (t.namespaces.contains(&pod.namespace)
        || t.namespace_selector
            .as_ref()
            .is_some_and(|s| s.is_everything()))
        && t.selector.matches(&pod.labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn pod(name: &str, labels: Value, affinity: Value) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "labels": labels},
                "spec": {"containers": [{"name": "c"}], "affinity": affinity}}),
            )
            .unwrap(),
        )))
    }

    fn cluster() -> Cache {
        let mut c = Cache::default();
        for (name, zone) in [("a", "z1"), ("b", "z1"), ("c", "z2")] {
            c.set_node(Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name, "zone": zone}}}))
                .unwrap(),
            ));
        }
        c
    }

    fn feasible(c: &Cache, p: &PodInfo) -> Vec<String> {
        let mut s = CycleState::default();
        let plugin = InterPodAffinity::default();
        plugin.pre_filter(&mut s, p, c).unwrap();
        c.nodes()
            .iter()
            .filter(|n| plugin.filter(&s, p, n, c).is_ok())
            .map(|n| n.name.clone())
            .collect()
    }

    fn term(kind: &str, app: &str, key: &str) -> Value {
        json!({kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}})
    }

    #[test]
    fn anti_affinity_spreads_one_per_host() {
        let mut c = cluster();
        let web = |n| {
            pod(
                n,
                json!({"app": "web"}),
                term("podAntiAffinity", "web", "kubernetes.io/hostname"),
            )
        };
        assert_eq!(feasible(&c, &web("w0")).len(), 3);
        c.add_pod(web("w0"), "a");
        assert_eq!(feasible(&c, &web("w1")), vec!["b", "c"]);
        // A pod without terms is kept off too: w0's own anti-affinity selects it.
        let plain = pod("x", json!({"app": "web"}), Value::Null);
        assert_eq!(feasible(&c, &plain), vec!["b", "c"]);
        // By zone.
        let zoned = pod(
            "z",
            json!({"app": "db"}),
            term("podAntiAffinity", "web", "zone"),
        );
        assert_eq!(feasible(&c, &zoned), vec!["c"]);
    }

    #[test]
    fn affinity_follows_matching_pods_and_lets_the_first_one_in() {
        let mut c = cluster();
        let cache_pod = |n| {
            pod(
                n,
                json!({"app": "cache"}),
                term("podAffinity", "cache", "zone"),
            )
        };
        // No pod matches yet and the pod selects itself: any node with the key.
        assert_eq!(feasible(&c, &cache_pod("c0")).len(), 3);
        c.add_pod(pod("db", json!({"app": "db"}), Value::Null), "c");
        let with_db = pod(
            "w",
            json!({"app": "web"}),
            term("podAffinity", "db", "zone"),
        );
        assert_eq!(feasible(&c, &with_db), vec!["c"]);
        let with_none = pod(
            "w",
            json!({"app": "web"}),
            term("podAffinity", "nosuch", "zone"),
        );
        assert!(feasible(&c, &with_none).is_empty());
    }
}
