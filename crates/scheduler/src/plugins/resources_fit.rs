//! NodeResourcesFit (the node has room for the pod's requests and one more pod; scored
//! LeastAllocated, MostAllocated or RequestedToCapacityRatio) and
//! NodeResourcesBalancedAllocation (prefers nodes whose resources stay evenly used).

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::framework::{events, CycleState, Plugin, Points, Reject, MAX_NODE_SCORE};

/// How NodeResourcesFit scores (`scoringStrategy.type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    LeastAllocated,
    MostAllocated,
    /// `(utilization %, score 0..=10)` points of a piecewise linear function.
    RequestedToCapacityRatio(Vec<(i64, i64)>),
}

/// NodeResourcesFit with its scoring strategy and weighted resources.
pub struct Fit {
    pub strategy: Strategy,
    pub resources: Vec<(String, i64)>,
}

impl Default for Fit {
    fn default() -> Self {
        Fit {
            strategy: Strategy::LeastAllocated,
            resources: vec![("cpu".into(), 1), ("memory".into(), 1)],
        }
    }
}

/// Requested (with the pod) and allocatable amounts of a resource on a node; CPU and
/// memory count pods without requests at the scoring defaults when `non_zero`.
fn amounts(pod: &PodInfo, node: &NodeInfo, resource: &str, non_zero: bool) -> (i64, i64) {
    let requested = match (resource, non_zero) {
        ("cpu", true) => node.non_zero_requested.0 + pod.non_zero.0,
        ("memory", true) => node.non_zero_requested.1 + pod.non_zero.1,
        (r, _) => node.requested.get(r) + pod.requests.get(r),
    };
    (requested, node.allocatable.get(resource))
}

fn shape_score(shape: &[(i64, i64)], utilization: i64) -> i64 {
    // Scores in the shape are 0..=10; the framework's are 0..=100.
    let scale = MAX_NODE_SCORE / 10;
    let Some(first) = shape.first() else { return 0 };
    if utilization <= first.0 {
        return first.1 * scale;
    }
    for w in shape.windows(2) {
        let ((u0, s0), (u1, s1)) = (w[0], w[1]);
        if utilization <= u1 {
            return (s0 * scale) + (s1 - s0) * scale * (utilization - u0) / (u1 - u0).max(1);
        }
    }
    shape.last().map(|l| l.1 * scale).unwrap_or(0)
}

impl Plugin for Fit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn points(&self) -> Points {
        Points {
            pre_filter: false,
            filter: true,
            pre_score: false,
            score: true,
        }
    }
    fn events(&self) -> u32 {
        events::NODE_ADD | events::NODE_ALLOCATABLE | events::POD_DELETE
    }
    fn filter(
        &self,
        _: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _: &Cache,
    ) -> Result<(), Reject> {
        let mut reasons = Vec::new();
        if node.pods.len() as i64 + 1 > node.allowed_pods {
            reasons.push("Too many pods".to_string());
        }
        let want = &pod.requests;
        let free = |r: &str| node.allocatable.get(r) - node.requested.get(r);
        for (r, amount) in [
            ("cpu", want.milli_cpu),
            ("memory", want.memory),
            ("ephemeral-storage", want.ephemeral_storage),
        ] {
            if amount > 0 && amount > free(r) {
                reasons.push(format!("Insufficient {r}"));
            }
        }
        for (r, amount) in &want.scalar {
            if *amount > 0 && *amount > free(r) {
                reasons.push(format!("Insufficient {r}"));
            }
        }
        if reasons.is_empty() {
            return Ok(());
        }
        Err(Reject {
            code: crate::framework::Code::Unschedulable,
            reasons,
            plugin: "",
        })
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Cache) -> i64 {
        let (mut sum, mut weights) = (0i64, 0i64);
        for (r, w) in &self.resources {
            let (requested, capacity) = amounts(pod, node, r, true);
            if capacity == 0 {
                continue;
            }
            let s = match &self.strategy {
                Strategy::LeastAllocated if requested > capacity => 0,
                Strategy::LeastAllocated => (capacity - requested) * MAX_NODE_SCORE / capacity,
                Strategy::MostAllocated => requested.min(capacity) * MAX_NODE_SCORE / capacity,
                Strategy::RequestedToCapacityRatio(shape) => {
                    shape_score(shape, requested.min(capacity) * 100 / capacity)
                }
            };
            sum += s * w;
            weights += w;
        }
        if weights == 0 {
            0
        } else {
            sum / weights
        }
    }
}

/// NodeResourcesBalancedAllocation: the closer the node's CPU and memory use fractions
/// (with the pod), the higher the score.
pub struct BalancedAllocation {
    pub resources: Vec<String>,
}

impl Default for BalancedAllocation {
    fn default() -> Self {
        BalancedAllocation {
            resources: vec!["cpu".into(), "memory".into()],
        }
    }
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn points(&self) -> Points {
        Points {
            score: true,
            ..Default::default()
        }
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Cache) -> i64 {
        // A pod that requests none of the resources is not scored (as upstream skips it).
        if self.resources.iter().all(|r| pod.requests.get(r) == 0) {
            return 0;
        }
        let fractions: Vec<f64> = self
            .resources
            .iter()
            .filter_map(|r| {
                let (requested, capacity) = amounts(pod, node, r, false);
                (capacity > 0).then(|| (requested as f64 / capacity as f64).min(1.0))
            })
            .collect();
        let std = match fractions.as_slice() {
            [] => 0.0,
            [a, b] => (a - b).abs() / 2.0,
            f => {
                let mean = f.iter().sum::<f64>() / f.len() as f64;
                (f.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / f.len() as f64).sqrt()
            }
        };
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn node(cpu: &str, mem: &str, pods: &str) -> Cache {
        let mut c = Cache::default();
        c.set_node(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": pods}}}))
            .unwrap(),
        ));
        c
    }

    fn pod(name: &str, cpu: Option<&str>, mem: Option<&str>) -> Arc<PodInfo> {
        let mut req = serde_json::Map::new();
        if let Some(c) = cpu {
            req.insert("cpu".into(), json!(c));
        }
        if let Some(m) = mem {
            req.insert("memory".into(), json!(m));
        }
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": req}}]}}))
            .unwrap(),
        )))
    }

    #[test]
    fn filter_names_every_short_resource() {
        let mut c = node("1", "1Gi", "1");
        c.add_pod(pod("a", Some("500m"), None), "n");
        let n = c.node("n").unwrap();
        let r = Fit::default()
            .filter(
                &CycleState::default(),
                &pod("b", Some("600m"), Some("2Gi")),
                n,
                &c,
            )
            .unwrap_err();
        assert_eq!(
            r.reasons,
            vec!["Too many pods", "Insufficient cpu", "Insufficient memory"]
        );
        let c = node("1", "1Gi", "10");
        let n = c.node("n").unwrap();
        assert!(Fit::default()
            .filter(
                &CycleState::default(),
                &pod("b", Some("1"), Some("1Gi")),
                n,
                &c
            )
            .is_ok());
    }

    #[test]
    fn scores_as_upstream() {
        // Upstream's example: node 4000m/10000 bytes, pod 3000m/5000 (no pods yet).
        let c = node("4", "10000", "10");
        let n = c.node("n").unwrap();
        let p = pod("p", Some("3"), Some("5000"));
        let s = CycleState::default();
        // LeastAllocated: cpu (4000-3000)*100/4000 = 25, memory 50: mean 37.
        assert_eq!(Fit::default().score(&s, &p, n, &c), 37);
        let most = Fit {
            strategy: Strategy::MostAllocated,
            ..Fit::default()
        };
        // MostAllocated: 75 and 50: 62.
        assert_eq!(most.score(&s, &p, n, &c), 62);
        let ratio = Fit {
            strategy: Strategy::RequestedToCapacityRatio(vec![(0, 0), (100, 10)]),
            ..Fit::default()
        };
        assert_eq!(ratio.score(&s, &p, n, &c), 62);
        // Balanced: fractions 0.75 and 0.5: std 0.125: 87.
        assert_eq!(BalancedAllocation::default().score(&s, &p, n, &c), 87);
        // A pod without requests counts as 100m / 200Mi when scoring LeastAllocated.
        let big = node("1", "400Mi", "10");
        let n = big.node("n").unwrap();
        assert_eq!(Fit::default().score(&s, &pod("e", None, None), n, &big), 70);
    }
}
