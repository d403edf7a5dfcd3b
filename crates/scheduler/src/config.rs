//! `KubeSchedulerConfiguration` (`kubescheduler.config.k8s.io/v1`): profiles with their
//! plugin sets (multiPoint and per extension point, enabled/disabled, `*`, weights),
//! plugin arguments, backoff, percentageOfNodesToScore and leader election; resolved
//! against upstream's defaults into runnable [`Profile`]s.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::framework::{Plugin, Profile};
use crate::plugins::{self, resources_fit};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Leader election settings (`leaderElection`).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderElection {
    pub leader_elect: bool,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub resource_name: String,
    pub resource_namespace: String,
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection {
            leader_elect: true,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            resource_name: "kube-scheduler".into(),
            resource_namespace: "kube-system".into(),
        }
    }
}

/// Plugin arguments (`pluginConfig`).
#[derive(Debug, Clone)]
pub struct PluginArgs {
    pub fit_strategy: resources_fit::Strategy,
    pub fit_resources: Vec<(String, i64)>,
    pub balanced_resources: Vec<String>,
    pub hard_pod_affinity_weight: i64,
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs {
            fit_strategy: resources_fit::Strategy::LeastAllocated,
            fit_resources: vec![("cpu".into(), 1), ("memory".into(), 1)],
            balanced_resources: vec!["cpu".into(), "memory".into()],
            hard_pod_affinity_weight: 1,
        }
    }
}

impl PluginArgs {
    pub fn fit(&self) -> resources_fit::Fit {
        resources_fit::Fit {
            strategy: self.fit_strategy.clone(),
            resources: self.fit_resources.clone(),
        }
    }

    pub fn balanced(&self) -> resources_fit::BalancedAllocation {
        resources_fit::BalancedAllocation {
            resources: self.balanced_resources.clone(),
        }
    }
}

/// The whole configuration, resolved.
pub struct SchedulerConfig {
    pub profiles: Vec<Profile>,
    pub pod_initial_backoff: Duration,
    pub pod_max_backoff: Duration,
    pub leader_election: LeaderElection,
    /// `clientConnection.kubeconfig`.
    pub kubeconfig: Option<String>,
    /// Plugins named that ferrokube does not run.
    pub warnings: Vec<String>,
}

/// Upstream's defaults: one `default-scheduler` profile with the default plugins.
pub fn default_config() -> SchedulerConfig {
    load_value(&serde_json::json!({
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
    }))
    .expect("the defaults are valid")
}

/// Reads a configuration file's text (YAML or JSON).
pub fn load(text: &str) -> Result<SchedulerConfig, ConfigError> {
    let v: Value =
        serde_norway::from_str(text).map_err(|e| ConfigError(format!("decoding: {e}")))?;
    load_value(&v)
}

fn secs(v: &Value, field: &str, default: u64) -> Result<Duration, ConfigError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Duration::from_secs(default)),
        Some(n) => match n.as_i64() {
            Some(s) if s > 0 => Ok(Duration::from_secs(s as u64)),
            _ => err(format!(
                "{field}: Invalid value: {n}: must be greater than 0"
            )),
        },
    }
}

fn go_duration(v: &Value, field: &str, default: Duration) -> Result<Duration, ConfigError> {
    match v.get(field).and_then(Value::as_str) {
        None => Ok(default),
        Some(s) => ferrokube_api::meta::parse_go_duration(s)
            .ok_or_else(|| ConfigError(format!("leaderElection.{field}: invalid duration {s:?}"))),
    }
}

fn load_value(v: &Value) -> Result<SchedulerConfig, ConfigError> {
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    if api_version != "kubescheduler.config.k8s.io/v1" || kind != "KubeSchedulerConfiguration" {
        return err(format!(
            "no kind {kind:?} is registered for version {api_version:?}: expected kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration"
        ));
    }
    let pct = percentage(v, "percentageOfNodesToScore")?.unwrap_or(0);
    let pod_initial_backoff = secs(v, "podInitialBackoffSeconds", 1)?;
    let pod_max_backoff = secs(v, "podMaxBackoffSeconds", 10)?;
    if pod_max_backoff < pod_initial_backoff {
        return err("podMaxBackoffSeconds: Invalid value: must be greater than or equal to PodInitialBackoffSeconds");
    }
    let le = &v["leaderElection"];
    let d = LeaderElection::default();
    let leader_election = LeaderElection {
        leader_elect: le["leaderElect"].as_bool().unwrap_or(d.leader_elect),
        lease_duration: go_duration(le, "leaseDuration", d.lease_duration)?,
        renew_deadline: go_duration(le, "renewDeadline", d.renew_deadline)?,
        retry_period: go_duration(le, "retryPeriod", d.retry_period)?,
        resource_name: le["resourceName"]
            .as_str()
            .map(String::from)
            .unwrap_or(d.resource_name),
        resource_namespace: le["resourceNamespace"]
            .as_str()
            .map(String::from)
            .unwrap_or(d.resource_namespace),
    };
    let mut warnings = Vec::new();
    let listed = v["profiles"].as_array().cloned().unwrap_or_default();
    let listed = if listed.is_empty() {
        vec![serde_json::json!({})]
    } else {
        listed
    };
    let mut profiles: Vec<Profile> = Vec::new();
    for (i, p) in listed.iter().enumerate() {
        let name = p["schedulerName"]
            .as_str()
            .unwrap_or("default-scheduler")
            .to_string();
        if profiles.iter().any(|q| q.scheduler_name == name) {
            return err(format!(
                "profiles[{i}].schedulerName: Duplicate value: {name:?}"
            ));
        }
        let pct = percentage(p, &format!("profiles[{i}].percentageOfNodesToScore"))?.unwrap_or(pct);
        profiles.push(profile(&name, p, pct, &mut warnings).map_err(|e| {
            ConfigError(format!("creating profile for scheduler name {name}: {e}"))
        })?);
    }
    Ok(SchedulerConfig {
        profiles,
        pod_initial_backoff,
        pod_max_backoff,
        leader_election,
        kubeconfig: v["clientConnection"]["kubeconfig"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from),
        warnings,
    })
}

fn percentage(v: &Value, field: &str) -> Result<Option<i32>, ConfigError> {
    let key = field.rsplit('.').next().unwrap_or(field);
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => match n.as_i64() {
            Some(p) if (0..=100).contains(&p) => Ok(Some(p as i32)),
            _ => err(format!(
                "{field}: Invalid value: {n}: not in valid range [0-100]"
            )),
        },
    }
}

/// `(name, weight)` pairs of a plugin set's `enabled` or `disabled` list.
fn names(set: &Value, list: &str) -> Vec<(String, Option<i64>)> {
    set[list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["weight"].as_i64().filter(|w| *w != 0),
            )
        })
        .collect()
}

fn plugin_args(config: &Value) -> Result<PluginArgs, String> {
    let mut args = PluginArgs::default();
    for pc in config.as_array().into_iter().flatten() {
        let a = &pc["args"];
        match pc["name"].as_str().unwrap_or_default() {
            "NodeResourcesFit" => {
                let st = &a["scoringStrategy"];
                if let Some(list) = st["resources"].as_array() {
                    args.fit_resources = list
                        .iter()
                        .map(|r| {
                            (
                                r["name"].as_str().unwrap_or_default().to_string(),
                                r["weight"].as_i64().unwrap_or(1),
                            )
                        })
                        .collect();
                }
                args.fit_strategy = match st["type"].as_str().unwrap_or("LeastAllocated") {
                    "LeastAllocated" => resources_fit::Strategy::LeastAllocated,
                    "MostAllocated" => resources_fit::Strategy::MostAllocated,
                    "RequestedToCapacityRatio" => {
                        let shape: Vec<(i64, i64)> = st["requestedToCapacityRatio"]["shape"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|p| {
                                (
                                    p["utilization"].as_i64().unwrap_or(0),
                                    p["score"].as_i64().unwrap_or(0),
                                )
                            })
                            .collect();
                        if shape.is_empty() {
                            return Err("scoringStrategy.requestedToCapacityRatio.shape: Required value: at least one point must be specified".into());
                        }
                        resources_fit::Strategy::RequestedToCapacityRatio(shape)
                    }
                    other => {
                        return Err(format!(
                            "scoringStrategy.type: Unsupported value: {other:?}: supported values: \"LeastAllocated\", \"MostAllocated\", \"RequestedToCapacityRatio\""
                        ))
                    }
                };
            }
            "NodeResourcesBalancedAllocation" => {
                if let Some(list) = a["resources"].as_array() {
                    args.balanced_resources = list
                        .iter()
                        .filter_map(|r| r["name"].as_str().map(String::from))
                        .collect();
                }
            }
            "InterPodAffinity" => {
                if let Some(w) = a["hardPodAffinityWeight"].as_i64() {
                    if !(0..=100).contains(&w) {
                        return Err(format!(
                            "hardPodAffinityWeight: Invalid value: {w}: not in valid range [0-100]"
                        ));
                    }
                    args.hard_pod_affinity_weight = w;
                }
            }
            _ => {}
        }
    }
    Ok(args)
}

const POINTS: [&str; 4] = ["preFilter", "filter", "preScore", "score"];

fn profile(name: &str, p: &Value, pct: i32, warnings: &mut Vec<String>) -> Result<Profile, String> {
    let plugins = &p["plugins"];
    let args = plugin_args(&p["pluginConfig"])?;
    // Check every name first.
    for set in std::iter::once("multiPoint").chain(POINTS).chain([
        "queueSort",
        "postFilter",
        "reserve",
        "permit",
        "preBind",
        "bind",
        "postBind",
        "preEnqueue",
    ]) {
        for list in ["enabled", "disabled"] {
            for (n, _) in names(&plugins[set], list) {
                if n != "*" && !plugins::known(&n) {
                    return Err(format!("{set} plugin {n:?} does not exist"));
                }
                if list == "enabled" && plugins::NOT_IMPLEMENTED.contains(&n.as_str()) {
                    warnings.push(format!(
                        "plugin {n:?} is not implemented by ferrokube and does not run"
                    ));
                }
            }
        }
    }
    // multiPoint: the defaults, less what is disabled, plus what is enabled.
    let mut multi: Vec<(String, Option<i64>)> = plugins::DEFAULTS
        .iter()
        .map(|(n, w)| (n.to_string(), *w))
        .collect();
    let mp = &plugins["multiPoint"];
    for (n, _) in names(mp, "disabled") {
        if n == "*" {
            multi.clear();
        } else {
            multi.retain(|(m, _)| *m != n);
        }
    }
    for (n, w) in names(mp, "enabled") {
        match multi.iter_mut().find(|(m, _)| *m == n) {
            Some(e) => e.1 = w.or(e.1),
            None => multi.push((n, w)),
        }
    }
    let mut made: Vec<(String, Arc<dyn Plugin>)> = Vec::new();
    let mut get = |n: &str| -> Option<Arc<dyn Plugin>> {
        if let Some((_, p)) = made.iter().find(|(m, _)| m == n) {
            return Some(p.clone());
        }
        let p = plugins::make(n, &args)?;
        made.push((n.to_string(), p.clone()));
        Some(p)
    };
    let mut per_point: Vec<Vec<(Arc<dyn Plugin>, i64)>> = Vec::new();
    for point in POINTS {
        let implements = |p: &Arc<dyn Plugin>| {
            let pts = p.points();
            match point {
                "preFilter" => pts.pre_filter,
                "filter" => pts.filter,
                "preScore" => pts.pre_score,
                _ => pts.score,
            }
        };
        let mut set: Vec<(Arc<dyn Plugin>, i64)> = multi
            .iter()
            .filter_map(|(n, w)| get(n).filter(implements).map(|p| (p, w.unwrap_or(1))))
            .collect();
        let ps = &plugins[point];
        for (n, _) in names(ps, "disabled") {
            if n == "*" {
                set.clear();
            } else {
                set.retain(|(p, _)| p.name() != n);
            }
        }
        for (n, w) in names(ps, "enabled") {
            let Some(p) = get(&n) else { continue };
            if !implements(&p) {
                return Err(format!("plugin {n:?} does not extend {point} plugin"));
            }
            match set.iter_mut().find(|(q, _)| q.name() == n) {
                Some(e) => e.1 = w.unwrap_or(e.1),
                None => set.push((p, w.unwrap_or(1))),
            }
        }
        per_point.push(set);
    }
    let preemption_off = names(&plugins["postFilter"], "disabled")
        .iter()
        .chain(names(mp, "disabled").iter())
        .any(|(n, _)| n == "DefaultPreemption" || n == "*");
    let preemption_on = multi.iter().any(|(n, _)| n == "DefaultPreemption")
        || names(&plugins["postFilter"], "enabled")
            .iter()
            .any(|(n, _)| n == "DefaultPreemption");
    let mut it = per_point.into_iter();
    let mut next = || it.next().unwrap_or_default();
    let strip = |v: Vec<(Arc<dyn Plugin>, i64)>| v.into_iter().map(|(p, _)| p).collect();
    Ok(Profile {
        scheduler_name: name.to_string(),
        pre_filter: strip(next()),
        filter: strip(next()),
        pre_score: strip(next()),
        score: next(),
        preemption: preemption_on && !preemption_off,
        percentage_of_nodes_to_score: pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(ps: &[Arc<dyn Plugin>]) -> Vec<&'static str> {
        ps.iter().map(|p| p.name()).collect()
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = default_config();
        let p = &c.profiles[0];
        assert_eq!(p.scheduler_name, "default-scheduler");
        assert_eq!(
            names_of(&p.filter),
            vec![
                "NodeUnschedulable",
                "NodeName",
                "TaintToleration",
                "NodeAffinity",
                "NodePorts",
                "NodeResourcesFit",
                "PodTopologySpread",
                "InterPodAffinity"
            ]
        );
        let scores: Vec<(&str, i64)> = p.score.iter().map(|(p, w)| (p.name(), *w)).collect();
        assert_eq!(
            scores,
            vec![
                ("TaintToleration", 3),
                ("NodeAffinity", 2),
                ("NodeResourcesFit", 1),
                ("PodTopologySpread", 2),
                ("InterPodAffinity", 2),
                ("NodeResourcesBalancedAllocation", 1),
                ("ImageLocality", 1)
            ]
        );
        assert!(p.preemption);
        assert_eq!(c.pod_initial_backoff, Duration::from_secs(1));
        assert_eq!(c.leader_election, LeaderElection::default());
    }

    #[test]
    fn profiles_change_plugins_and_weights() {
        let c = load(
            r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
percentageOfNodesToScore: 30
leaderElection:
  leaderElect: false
profiles:
- schedulerName: default-scheduler
- schedulerName: bin-packer
  percentageOfNodesToScore: 70
  plugins:
    score:
      disabled:
      - name: "*"
      enabled:
      - name: NodeResourcesFit
        weight: 5
    postFilter:
      disabled:
      - name: DefaultPreemption
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
"#,
        )
        .unwrap();
        assert!(!c.leader_election.leader_elect);
        assert_eq!(c.profiles[0].percentage_of_nodes_to_score, 30);
        let b = &c.profiles[1];
        assert_eq!(b.scheduler_name, "bin-packer");
        assert_eq!(b.percentage_of_nodes_to_score, 70);
        assert_eq!(b.score.len(), 1);
        assert_eq!((b.score[0].0.name(), b.score[0].1), ("NodeResourcesFit", 5));
        assert!(!b.preemption);
        assert_eq!(b.filter.len(), 8);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad = |extra: &str| {
            load(&format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n{extra}"
            ))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert_eq!(
            bad("profiles:\n- plugins:\n    filter:\n      enabled:\n      - name: NoSuch\n"),
            "creating profile for scheduler name default-scheduler: filter plugin \"NoSuch\" does not exist"
        );
        assert_eq!(
            bad("profiles:\n- schedulerName: a\n- schedulerName: a\n"),
            "profiles[1].schedulerName: Duplicate value: \"a\""
        );
        assert_eq!(
            bad("percentageOfNodesToScore: 150\n"),
            "percentageOfNodesToScore: Invalid value: 150: not in valid range [0-100]"
        );
        assert_eq!(
            bad("profiles:\n- plugins:\n    filter:\n      enabled:\n      - name: ImageLocality\n"),
            "creating profile for scheduler name default-scheduler: plugin \"ImageLocality\" does not extend filter plugin"
        );
        assert!(load("apiVersion: v1\nkind: Pod\n").is_err());
    }
}
