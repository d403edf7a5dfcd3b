//! DefaultPreemption, upstream's PostFilter: when a pod fits no node, find nodes where
//! evicting lower-priority pods would make it fit, keeping as many of them as possible
//! (PodDisruptionBudget-protected ones first), pick the node whose victims matter least,
//! and say why when there is none.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrokube_api::LabelSelector;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::cache::{Cache, PodInfo};
use crate::framework::{Code, CycleState, Diagnosis, Profile};

/// A node where preemption makes room, and whom it evicts.
#[derive(Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
    pub pdb_violations: usize,
}

/// A PodDisruptionBudget as preemption reads it.
#[derive(Debug, Clone)]
pub struct Budget {
    pub namespace: String,
    pub selector: LabelSelector,
    pub disruptions_allowed: i32,
}

impl Budget {
    pub fn from_api(p: &PodDisruptionBudget) -> Option<Budget> {
        let spec = p.spec.as_ref()?;
        Some(Budget {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            // A budget without a selector selects no pod (policy/v1).
            selector: LabelSelector::from_api(spec.selector.as_ref()?).ok()?,
            disruptions_allowed: p.status.as_ref().map_or(0, |s| s.disruptions_allowed),
        })
    }
}

/// Whether a pod may preempt at all; the refusal is the message.
fn eligible(pod: &PodInfo, cache: &Cache) -> Result<(), String> {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("preemption: not eligible due to preemptionPolicy=Never.".into());
    }
    let nominated = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty());
    if let Some(node) = nominated.and_then(|n| cache.node(n)) {
        // Victims of an earlier preemption are still going: wait for them.
        if node
            .pods
            .iter()
            .any(|p| p.is_terminating() && p.priority < pod.priority)
        {
            return Err(
                "preemption: not eligible due to a terminating pod on the nominated node.".into(),
            );
        }
    }
    Ok(())
}

/// Splits victims into those whose eviction would break a budget and the rest (each
/// list as given), counting down the budgets' allowed disruptions as upstream does.
fn split_by_budgets(
    victims: &[Arc<PodInfo>],
    budgets: &[Budget],
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = budgets.iter().map(|b| b.disruptions_allowed).collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for v in victims {
        let mut breaks = false;
        for (i, b) in budgets.iter().enumerate() {
            if b.namespace == v.namespace
                && !b.selector.is_everything()
                && b.selector.matches(&v.labels)
            {
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    breaks = true;
                }
            }
        }
        if breaks {
            violating.push(v.clone());
        } else {
            fine.push(v.clone());
        }
    }
    (violating, fine)
}

fn fits(profile: &Profile, cache: &Cache, pod: &PodInfo, node: &str) -> Result<(), String> {
    let mut state = CycleState::default();
    profile
        .run_pre_filter(&mut state, pod, cache)
        .map_err(|r| r.reasons.join(", "))?;
    let n = cache.node(node).ok_or("node gone")?;
    profile
        .run_filters(&state, pod, n, cache)
        .map_err(|r| r.reasons.join(", "))
}

/// The fewest victims that make `pod` fit on `node`, or why none do.
fn select_victims(
    profile: &Profile,
    cache: &Cache,
    pod: &PodInfo,
    node: &str,
    budgets: &[Budget],
) -> Result<Candidate, String> {
    let info = cache.node(node).ok_or("node gone")?;
    let mut lower: Vec<Arc<PodInfo>> = info
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if lower.is_empty() {
        return Err("No preemption victims found for incoming pod".into());
    }
    let mut trial = cache.clone();
    for v in &lower {
        trial.remove_pod(&v.key);
    }
    fits(profile, &trial, pod, node)?;
    // Most important first: they are the first to be given back their place.
    lower.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| start_time(a).cmp(&start_time(b)))
    });
    let (violating, fine) = split_by_budgets(&lower, budgets);
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (list, breaks) in [(violating, true), (fine, false)] {
        for v in list {
            trial.add_pod(v.clone(), node);
            if fits(profile, &trial, pod, node).is_err() {
                trial.remove_pod(&v.key);
                if breaks {
                    pdb_violations += 1;
                }
                victims.push(v);
            }
        }
    }
    Ok(Candidate {
        node: node.to_string(),
        victims,
        pdb_violations,
    })
}

fn start_time(p: &PodInfo) -> Option<jiff::Timestamp> {
    p.pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
}

/// Upstream's order among candidates: fewest budget violations, then the lowest
/// highest-priority victim, the smallest sum of priorities, the fewest victims, the
/// latest start among the highest-priority victims; then the first.
fn pick(mut cands: Vec<Candidate>) -> Option<Candidate> {
    let key = |c: &Candidate| {
        let highest = c
            .victims
            .iter()
            .map(|v| v.priority)
            .max()
            .unwrap_or(i32::MIN);
        let sum: i64 = c
            .victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        let earliest_of_highest = c
            .victims
            .iter()
            .filter(|v| v.priority == highest)
            .filter_map(|v| start_time(v))
            .min();
        (
            c.pdb_violations,
            highest,
            sum,
            c.victims.len(),
            std::cmp::Reverse(earliest_of_highest),
        )
    };
    let best = cands
        .iter()
        .enumerate()
        .min_by(|(i, a), (j, b)| key(a).cmp(&key(b)).then(i.cmp(j)))
        .map(|(i, _)| i)?;
    Some(cands.swap_remove(best))
}

/// Runs preemption for a pod that fits nowhere: the chosen candidate, or the
/// `preemption: ...` message.
pub fn preempt(
    profile: &Profile,
    cache: &Cache,
    pod: &PodInfo,
    diag: &Diagnosis,
    budgets: &[Budget],
) -> Result<Candidate, String> {
    eligible(pod, cache)?;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut cands = Vec::new();
    for node in cache.nodes() {
        let helpful = match (&diag.pre_filter, diag.nodes.get(&node.name)) {
            (Some(r), _) => r.code == Code::Unschedulable,
            (None, Some(r)) => r.code == Code::Unschedulable,
            (None, None) => false,
        };
        if !helpful {
            *reasons
                .entry("Preemption is not helpful for scheduling".into())
                .or_default() += 1;
            continue;
        }
        match select_victims(profile, cache, pod, &node.name, budgets) {
            Ok(c) => cands.push(c),
            Err(why) => *reasons.entry(why).or_default() += 1,
        }
    }
    match pick(cands) {
        Some(c) => Ok(c),
        None => {
            let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            parts.sort();
            Err(format!(
                "preemption: 0/{} nodes are available: {}.",
                diag.num_all_nodes,
                parts.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_config;
    use crate::scheduler::find_node;
    use serde_json::json;

    fn node(c: &mut Cache, name: &str, cpu: &str) {
        c.set_node(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}}),
            )
            .unwrap(),
        ));
    }

    fn pod(name: &str, cpu: &str, priority: i32, extra: serde_json::Value) -> Arc<PodInfo> {
        let mut spec = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}],
            "priority": priority});
        if let Some(o) = extra.as_object() {
            for (k, v) in o {
                spec[k] = v.clone();
            }
        }
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": name}},
                "spec": spec}),
            )
            .unwrap(),
        )))
    }

    fn run(c: &Cache, p: &PodInfo, budgets: &[Budget]) -> Result<(String, Vec<String>), String> {
        let cfg = default_config();
        let profile = &cfg.profiles[0];
        let diag = find_node(profile, c, p, 0).0.unwrap_err();
        preempt(profile, c, p, &diag, budgets).map(|cand| {
            (
                cand.node,
                cand.victims.iter().map(|v| v.key.clone()).collect(),
            )
        })
    }

    #[test]
    fn evicts_the_least_important_pods_that_make_room() {
        let mut c = Cache::default();
        node(&mut c, "a", "2");
        node(&mut c, "b", "2");
        c.add_pod(pod("a-low", "1", 10, json!({})), "a");
        c.add_pod(pod("a-mid", "1", 100, json!({})), "a");
        c.add_pod(pod("b-low", "1500m", 10, json!({})), "b");
        c.add_pod(pod("b-high", "500m", 1000, json!({})), "b");
        // Needs 1 CPU: on a, evicting a-low suffices (a-mid is given back its place);
        // on b, b-low; a's victim has the same priority but a-mid... both candidates
        // evict one pod of priority 10: the first node wins.
        assert_eq!(
            run(&c, &pod("p", "1", 500, json!({})), &[]).unwrap(),
            ("a".into(), vec!["d/a-low".into()])
        );
        // Needs 2 CPU: only a can be emptied (b-high outranks the pod).
        assert_eq!(
            run(&c, &pod("q", "2", 500, json!({})), &[]).unwrap(),
            ("a".into(), vec!["d/a-mid".into(), "d/a-low".into()])
        );
    }

    #[test]
    fn budgets_steer_the_choice() {
        let mut c = Cache::default();
        node(&mut c, "a", "1");
        node(&mut c, "b", "1");
        c.add_pod(pod("guarded", "1", 10, json!({})), "a");
        c.add_pod(pod("free", "1", 10, json!({})), "b");
        let budget = Budget {
            namespace: "d".into(),
            selector: LabelSelector::parse("app=guarded").unwrap(),
            disruptions_allowed: 0,
        };
        assert_eq!(
            run(&c, &pod("p", "1", 500, json!({})), &[budget])
                .unwrap()
                .0,
            "b"
        );
    }

    #[test]
    fn says_why_not() {
        let mut c = Cache::default();
        node(&mut c, "a", "1");
        node(&mut c, "b", "1");
        c.add_pod(pod("high", "1", 1000, json!({})), "a");
        c.set_node(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "b"}, "spec": {"unschedulable": true},
                "status": {"allocatable": {"cpu": "1", "pods": "110"}}}),
            )
            .unwrap(),
        ));
        assert_eq!(
            run(&c, &pod("p", "1", 500, json!({})), &[]).unwrap_err(),
            "preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            run(
                &c,
                &pod("n", "1", 5000, json!({"preemptionPolicy": "Never"})),
                &[]
            )
            .unwrap_err(),
            "preemption: not eligible due to preemptionPolicy=Never."
        );
    }
}
