//! The scheduling framework: plugins at extension points (PreFilter, Filter, PreScore,
//! Score with NormalizeScore), a profile that runs them for one pod, and the reasons a
//! pod does not fit, gathered into upstream's `0/N nodes are available: ...` message.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cache::{Cache, NodeInfo, PodInfo};
use crate::plugins;

/// The highest score a plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

/// How a node (or the pod, at PreFilter) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Might fit if other pods went (preemption may help).
    Unschedulable,
    /// Cannot fit whatever runs there.
    UnschedulableAndUnresolvable,
}

/// A rejection: its code and the reasons (`Insufficient cpu`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: Code,
    pub reasons: Vec<String>,
    /// The plugin that rejected (set by the framework).
    pub plugin: &'static str,
}

impl Reject {
    pub fn new(code: Code, reason: impl Into<String>) -> Reject {
        Reject {
            code,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }

    pub fn unschedulable(reason: impl Into<String>) -> Reject {
        Reject::new(Code::Unschedulable, reason)
    }

    pub fn unresolvable(reason: impl Into<String>) -> Reject {
        Reject::new(Code::UnschedulableAndUnresolvable, reason)
    }
}

/// Cluster changes that may make a pod schedulable again (bits).
pub mod events {
    pub const NODE_ADD: u32 = 1;
    pub const NODE_LABEL: u32 = 1 << 1;
    pub const NODE_TAINT: u32 = 1 << 2;
    pub const NODE_ALLOCATABLE: u32 = 1 << 3;
    pub const POD_ADD: u32 = 1 << 4;
    pub const POD_LABEL: u32 = 1 << 5;
    pub const POD_DELETE: u32 = 1 << 6;
    pub const ALL: u32 = u32::MAX;
}

/// Which extension points a plugin implements.
#[derive(Debug, Clone, Copy, Default)]
pub struct Points {
    pub pre_filter: bool,
    pub filter: bool,
    pub pre_score: bool,
    pub score: bool,
}

/// What plugins compute for one pod in one cycle (at PreFilter/PreScore) and read when
/// filtering and scoring each node.
#[derive(Default)]
pub struct CycleState {
    pub inter_pod_affinity: Option<plugins::inter_pod_affinity::State>,
    pub inter_pod_scores: Option<plugins::inter_pod_affinity::ScoreState>,
    pub spread: Option<plugins::topology_spread::State>,
    pub spread_scores: Option<plugins::topology_spread::ScoreState>,
    pub node_affinity: Option<plugins::node_affinity::State>,
}

/// A scheduling plugin. Every method has a do-nothing default; [`Plugin::points`] says
/// which ones count.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn points(&self) -> Points;
    /// The cluster events after which a pod this plugin rejected is worth retrying.
    fn events(&self) -> u32 {
        0
    }
    fn pre_filter(
        &self,
        _s: &mut CycleState,
        _pod: &PodInfo,
        _cache: &Cache,
    ) -> Result<(), Reject> {
        Ok(())
    }
    fn filter(
        &self,
        _s: &CycleState,
        _pod: &PodInfo,
        _node: &NodeInfo,
        _cache: &Cache,
    ) -> Result<(), Reject> {
        Ok(())
    }
    fn pre_score(&self, _s: &mut CycleState, _pod: &PodInfo, _nodes: &[&NodeInfo], _cache: &Cache) {
    }
    /// 0..=[`MAX_NODE_SCORE`] (before normalization any scale).
    fn score(&self, _s: &CycleState, _pod: &PodInfo, _node: &NodeInfo, _cache: &Cache) -> i64 {
        0
    }
    fn normalize(&self, _s: &CycleState, _scores: &mut [i64]) {}
}

/// Scales scores to 0..=MAX_NODE_SCORE by the highest one (reversed: the lowest raw score
/// gets the most), upstream's DefaultNormalizeScore.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// One profile (`schedulerName`): its plugins per extension point.
pub struct Profile {
    pub scheduler_name: String,
    pub pre_filter: Vec<Arc<dyn Plugin>>,
    pub filter: Vec<Arc<dyn Plugin>>,
    pub pre_score: Vec<Arc<dyn Plugin>>,
    pub score: Vec<(Arc<dyn Plugin>, i64)>,
    /// Whether DefaultPreemption runs when no node fits.
    pub preemption: bool,
    /// `percentageOfNodesToScore` (0: upstream's adaptive default).
    pub percentage_of_nodes_to_score: i32,
}

/// Why a pod fits no node: per node, the rejection.
#[derive(Debug, Default)]
pub struct Diagnosis {
    pub num_all_nodes: usize,
    /// A PreFilter rejection applies to every node.
    pub pre_filter: Option<Reject>,
    pub nodes: BTreeMap<String, Reject>,
    /// What preemption said (`preemption: ...`), when it ran.
    pub post_filter_msg: Option<String>,
}

impl Diagnosis {
    /// The plugins that rejected the pod (what events may help it).
    pub fn plugins(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .pre_filter
            .iter()
            .chain(self.nodes.values())
            .map(|r| r.plugin)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Upstream's message: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had
    /// untolerated taint {k: v}. preemption: ...`.
    pub fn message(&self) -> String {
        let mut msg = format!("0/{} nodes are available:", self.num_all_nodes);
        if let Some(r) = &self.pre_filter {
            msg.push(' ');
            msg.push_str(&r.reasons.join(", "));
            msg.push('.');
        } else {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for r in self.nodes.values() {
                for reason in &r.reasons {
                    *counts.entry(reason).or_default() += 1;
                }
            }
            let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
            parts.sort();
            msg.push(' ');
            msg.push_str(&parts.join(", "));
            msg.push('.');
        }
        if let Some(p) = &self.post_filter_msg {
            msg.push(' ');
            msg.push_str(p);
        }
        msg
    }
}

/// How many feasible nodes to find before scoring (upstream's numFeasibleNodesToFind):
/// all of up to 100 nodes; else a percentage (adaptive by default: 50 % less 1 % per
/// 125 nodes, at least 5 %), at least 100.
pub fn nodes_to_find(percentage: i32, all: usize) -> usize {
    const MIN: usize = 100;
    if all < MIN || percentage >= 100 {
        return all;
    }
    let pct = if percentage <= 0 {
        (50 - (all / 125) as i64).max(5)
    } else {
        percentage as i64
    };
    ((all as i64 * pct / 100) as usize).max(MIN)
}

impl Profile {
    /// Runs PreFilter; a rejection applies to every node.
    pub fn run_pre_filter(
        &self,
        s: &mut CycleState,
        pod: &PodInfo,
        cache: &Cache,
    ) -> Result<(), Reject> {
        for p in &self.pre_filter {
            p.pre_filter(s, pod, cache).map_err(|mut r| {
                r.plugin = p.name();
                r
            })?;
        }
        Ok(())
    }

    /// Runs every Filter plugin on a node until one rejects it.
    pub fn run_filters(
        &self,
        s: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        cache: &Cache,
    ) -> Result<(), Reject> {
        for p in &self.filter {
            p.filter(s, pod, node, cache).map_err(|mut r| {
                r.plugin = p.name();
                r
            })?;
        }
        Ok(())
    }

    /// Weighted, normalized scores of the feasible nodes, in their order.
    pub fn run_scores(
        &self,
        s: &mut CycleState,
        pod: &PodInfo,
        nodes: &[&NodeInfo],
        cache: &Cache,
    ) -> Vec<i64> {
        for p in &self.pre_score {
            p.pre_score(s, pod, nodes, cache);
        }
        let mut total = vec![0i64; nodes.len()];
        let mut scores = vec![0i64; nodes.len()];
        for (p, weight) in &self.score {
            for (i, n) in nodes.iter().enumerate() {
                scores[i] = p.score(s, pod, n, cache);
            }
            p.normalize(s, &mut scores);
            for (t, v) in total.iter_mut().zip(&scores) {
                *t += v * weight;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_message_counts_reasons_as_upstream() {
        let mut d = Diagnosis {
            num_all_nodes: 3,
            ..Default::default()
        };
        d.nodes.insert(
            "a".into(),
            Reject::unresolvable(
                "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }",
            ),
        );
        d.nodes
            .insert("b".into(), Reject::unschedulable("Insufficient cpu"));
        d.nodes
            .insert("c".into(), Reject::unschedulable("Insufficient cpu"));
        d.post_filter_msg = Some("preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.".into());
        assert_eq!(
            d.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn nodes_to_find_follows_upstream() {
        assert_eq!(nodes_to_find(0, 50), 50);
        assert_eq!(nodes_to_find(0, 1000), 420);
        assert_eq!(nodes_to_find(0, 5000), 500);
        assert_eq!(nodes_to_find(0, 10000), 500);
        assert_eq!(nodes_to_find(0, 100000), 5000);
        assert_eq!(nodes_to_find(10, 200), 100);
        assert_eq!(nodes_to_find(100, 5000), 5000);
    }
}
