//! The horizontal pod autoscaler (upstream's `horizontal-pod-autoscaler-controller`,
//! autoscaling/v2): every `--horizontal-pod-autoscaler-sync-period` (15 s) each
//! HorizontalPodAutoscaler reads its target's `scale` subresource and the usage of the
//! target's pods from `metrics.k8s.io`, and sets the target's replicas.
//!
//! - Metrics: `Resource` and `ContainerResource` (cpu, memory) as `Utilization` (percent
//!   of the pods' requests) or `AverageValue`; the proposal is the largest over the
//!   metrics. Pods being deleted or failed are left out; pending pods and, for CPU, pods
//!   still starting (within `--horizontal-pod-autoscaler-cpu-initialization-period` and
//!   not Ready for a full metrics window, or never Ready within
//!   `--horizontal-pod-autoscaler-initial-readiness-delay`) count as using nothing when
//!   scaling up; pods without metrics count as using their whole request when scaling
//!   down and nothing when scaling up. Within `--horizontal-pod-autoscaler-tolerance`
//!   (0.1) of the target nothing changes. (`Pods`, `Object` and `External` metrics need
//!   a custom metrics API ferrokube does not serve: the HPA reports them failed.)
//! - Without `behavior`: the highest recommendation of the last
//!   `--horizontal-pod-autoscaler-downscale-stabilization` (5 min) wins when scaling
//!   down, scale-ups at most double (at least to 4), and min/max bound the result. With
//!   `behavior`: each direction's stabilization window and rate policies (`Pods`,
//!   `Percent` per `periodSeconds`, `selectPolicy` Max/Min/Disabled), upstream's
//!   defaults filling what is left out.
//! - Status `currentReplicas`, `desiredReplicas`, `currentMetrics`, `lastScaleTime` and
//!   the conditions `AbleToScale`, `ScalingActive`, `ScalingLimited` with upstream's
//!   reasons and messages; events `SuccessfulRescale` ("New size: 3; reason: cpu
//!   resource utilization (percentage of request) above target") and the failures'.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokube_api::quantity::Quantity;
use ferrokube_api::LabelSelector;
use ferrokube_client::dynamic::{self, ApiResource};
use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, ListParams, Store, WorkQueue};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus,
    MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};

use crate::ownership::{self, object_key};
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "horizontalpodautoscaler";
const COMPONENT: &str = "horizontal-pod-autoscaler";
// Upstream's condition reasons and messages.
const SCALE_UP_LIMIT: (&str, &str) = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
const SCALE_DOWN_LIMIT: (&str, &str) = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);
const TOO_MANY: (&str, &str) = (
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
const TOO_FEW: (&str, &str) = (
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);
const WITHIN_RANGE: (&str, &str) = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
const DOWN_STABILIZED: (&str, &str) = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const UP_STABILIZED: (&str, &str) = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const READY_FOR_NEW_SCALE: (&str, &str) =
    ("ReadyForNewScale", "recommended size matches current size");

/// How long discovery results are reused to find a target's resource.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// The controller's flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub sync_period: Duration,
    pub tolerance: f64,
    pub downscale_stabilization: Duration,
    pub cpu_initialization_period: Duration,
    pub initial_readiness_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sync_period: Duration::from_secs(15),
            tolerance: 0.1,
            downscale_stabilization: Duration::from_secs(300),
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// A pod's usage from `metrics.k8s.io/v1beta1` (what metrics-server serves).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodMetrics {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub timestamp: Option<Time>,
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

/// One container's usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerMetrics {
    pub name: String,
    #[serde(default)]
    pub usage: BTreeMap<String, ApiQuantity>,
}

fn milli(q: &ApiQuantity) -> i64 {
    Quantity::parse(&q.0)
        .map(|q| q.milli_value().clamp(i64::MIN as i128, i64::MAX as i128) as i64)
        .unwrap_or(0)
}

fn milli_quantity(m: i64) -> ApiQuantity {
    let text = if m % 1000 == 0 {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    };
    ApiQuantity(text)
}

/// One pod's measured usage (milli-units) and when it was measured.
#[derive(Debug, Clone, Copy)]
pub struct PodUsage {
    pub value: i64,
    pub timestamp: i64,
    pub window: Duration,
}

/// What a pod is for a replica calculation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodGroup {
    Ready,
    /// Pending, or for CPU still starting: counts as using nothing on a scale-up.
    Unready,
    /// No measurement.
    Missing,
    /// Being deleted or failed: left out.
    Ignored,
}

/// Upstream's `groupPods`: which pods count, for `resource`.
pub fn group_pod(
    p: &Pod,
    usage: Option<&PodUsage>,
    resource: &str,
    now: i64,
    cfg: &Config,
) -> PodGroup {
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    if p.metadata.deletion_timestamp.is_some() || phase == "Failed" {
        return PodGroup::Ignored;
    }
    if phase == "Pending" {
        return PodGroup::Unready;
    }
    let Some(u) = usage else {
        return PodGroup::Missing;
    };
    if resource != "cpu" {
        return PodGroup::Ready;
    }
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let start = p
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.as_second());
    let (Some(ready), Some(start)) = (ready, start) else {
        return PodGroup::Unready;
    };
    let transition = ready
        .last_transition_time
        .as_ref()
        .map_or(start, |t| t.0.as_second());
    let unready = if start + cfg.cpu_initialization_period.as_secs() as i64 > now {
        // Still starting: its usage counts once it has been Ready a whole window.
        ready.status == "False" || u.timestamp < transition + u.window.as_secs() as i64
    } else {
        // Never became Ready soon after starting.
        ready.status == "False" && start + cfg.initial_readiness_delay.as_secs() as i64 > transition
    };
    if unready {
        PodGroup::Unready
    } else {
        PodGroup::Ready
    }
}

/// The inputs of one metric's replica calculation.
pub struct Sample {
    pub name: String,
    pub group: PodGroup,
    /// Usage in milli-units (Ready and Unready pods with metrics).
    pub usage: i64,
    /// The pod's request of the resource, milli-units (for Utilization).
    pub request: i64,
}

/// Upstream's replica calculator for a utilization (`target` percent of requests) or,
/// with `per_pod`, an average value (`target` milli-units a pod). Returns the
/// proposal, the utilization (percent; for averages the average, milli) and the raw
/// average usage, milli.
pub fn replicas_for(
    current: i32,
    samples: &[Sample],
    target: i64,
    per_pod: bool,
    tolerance: f64,
) -> Result<(i32, i64, i64), String> {
    if samples.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let ready_count = samples
        .iter()
        .filter(|s| s.group == PodGroup::Ready)
        .count();
    let unready: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.group == PodGroup::Unready)
        .collect();
    let missing: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.group == PodGroup::Missing)
        .collect();
    let measured: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.group == PodGroup::Ready)
        .collect();
    if measured.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ratio_of = |usage: i64, requests: i64, count: usize| -> (f64, i64, i64) {
        if per_pod {
            let avg = usage / count.max(1) as i64;
            (
                usage as f64 / (target as f64 * count.max(1) as f64),
                avg,
                avg,
            )
        } else {
            let utilization = if requests > 0 {
                usage * 100 / requests
            } else {
                0
            };
            (
                utilization as f64 / target as f64,
                utilization,
                usage / count.max(1) as i64,
            )
        }
    };
    let usage: i64 = measured.iter().map(|s| s.usage).sum();
    let requests: i64 = measured.iter().map(|s| s.request).sum();
    if !per_pod && requests == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let (ratio, utilization, raw) = ratio_of(usage, requests, measured.len());
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= tolerance {
            return Ok((current, utilization, raw));
        }
        let base = if per_pod { ready_count } else { measured.len() };
        return Ok(((ratio * base as f64).ceil() as i32, utilization, raw));
    }
    // Fill in what is unknown on the side that dampens the change.
    let mut usage2 = usage;
    let mut requests2 = requests;
    let mut count = measured.len();
    for s in &missing {
        if ratio < 1.0 {
            // As using (at least) its target: the request, or more for a target above
            // 100 % (upstream).
            usage2 += if per_pod {
                target
            } else {
                s.request * target.max(100) / 100
            };
        }
        requests2 += s.request;
        count += 1;
    }
    if scale_up_with_unready {
        for s in &unready {
            requests2 += s.request;
            count += 1;
        }
    }
    let (ratio2, _, _) = ratio_of(usage2, requests2, count);
    if (1.0 - ratio2).abs() <= tolerance
        || (ratio < 1.0 && ratio2 > 1.0)
        || (ratio > 1.0 && ratio2 < 1.0)
    {
        return Ok((current, utilization, raw));
    }
    let proposal = (ratio2 * count as f64).ceil() as i32;
    if (ratio2 < 1.0 && proposal > current) || (ratio2 > 1.0 && proposal < current) {
        return Ok((current, utilization, raw));
    }
    Ok((proposal, utilization, raw))
}

/// Upstream's defaults for a direction's behavior.
fn rules(hpa: &HorizontalPodAutoscaler, up: bool, cfg: &Config) -> HPAScalingRules {
    let b = hpa.spec.as_ref().and_then(|s| s.behavior.clone());
    let given = b.and_then(|b| if up { b.scale_up } else { b.scale_down });
    let pct = |v: i32| k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
        type_: "Percent".into(),
        value: v,
        period_seconds: 15,
    };
    let default = if up {
        HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![
                pct(100),
                k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
                    type_: "Pods".into(),
                    value: 4,
                    period_seconds: 15,
                },
            ]),
        }
    } else {
        HPAScalingRules {
            stabilization_window_seconds: Some(cfg.downscale_stabilization.as_secs() as i32),
            select_policy: Some("Max".into()),
            policies: Some(vec![pct(100)]),
        }
    };
    match given {
        None => default,
        Some(g) => HPAScalingRules {
            stabilization_window_seconds: g
                .stabilization_window_seconds
                .or(default.stabilization_window_seconds),
            select_policy: g.select_policy.or(default.select_policy),
            policies: g.policies.filter(|p| !p.is_empty()).or(default.policies),
        },
    }
}

/// Replicas changed in the last `period` (scale events are (when, change)).
fn changed_within(events: &[(Instant, i32)], period: Duration, now: Instant) -> i32 {
    events
        .iter()
        .filter(|(t, _)| now.duration_since(*t) < period)
        .map(|(_, n)| n)
        .sum()
}

/// The bound the rate policies put on a scale-up (`up`) or scale-down from `current`,
/// given the recent scale-ups and scale-downs (each period starts from the count before
/// both, as upstream 1.32 counts).
pub fn rate_limit(
    r: &HPAScalingRules,
    up: bool,
    current: i32,
    events: &Events,
    now: Instant,
) -> i32 {
    let select = r.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut out: Option<i32> = None;
    for p in r.policies.iter().flatten() {
        let period = Duration::from_secs(p.period_seconds.max(0) as u64);
        let start = current - changed_within(&events.0, period, now)
            + changed_within(&events.1, period, now);
        let proposal = if up {
            match p.type_.as_str() {
                "Pods" => start + p.value,
                _ => (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
            }
        } else {
            match p.type_.as_str() {
                "Pods" => start - p.value,
                _ => (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i32,
            }
        };
        // "Max" picks the policy allowing the most change, "Min" the least.
        let most_change = (select == "Max") == up;
        out = Some(match out {
            None => proposal,
            Some(o) if most_change => o.max(proposal),
            Some(o) => o.min(proposal),
        });
    }
    out.unwrap_or(current)
}

fn condition(
    ty: &str,
    status: bool,
    reason: &str,
    message: &str,
) -> HorizontalPodAutoscalerCondition {
    HorizontalPodAutoscalerCondition {
        type_: ty.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: None,
    }
}

/// Sets `c` among `conds`, keeping the transition time when the status stays.
fn set_condition(
    conds: &mut Vec<HorizontalPodAutoscalerCondition>,
    mut c: HorizontalPodAutoscalerCondition,
) {
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            c.last_transition_time = if x.status == c.status {
                x.last_transition_time.clone()
            } else {
                Some(Time(jiff::Timestamp::now()))
            };
            *x = c;
        }
        None => {
            c.last_transition_time = Some(Time(jiff::Timestamp::now()));
            conds.push(c);
        }
    }
}

/// Registers the informers; the runner syncs each autoscaler every sync period.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    // New autoscalers and changed specs now; every one again each sync period (not on
    // its own status writes).
    let hpas = {
        let inf = informers.informer::<HorizontalPodAutoscaler>();
        let q = queue.clone();
        inf.on_event(move |e| match e {
            Event::Added(h) => q.add(object_key(&h.metadata)),
            Event::Updated(old, h) => {
                if old.spec != h.spec || old.metadata.generation != h.metadata.generation {
                    q.add(object_key(&h.metadata))
                }
            }
            Event::Deleted(h) => q.add(object_key(&h.metadata)),
        });
        inf.store()
    };
    let a = Arc::new(Autoscaler {
        cx: cx.clone(),
        cfg: cx.hpa.clone(),
        hpas,
        pods: informers.informer::<Pod>().store(),
        queue: queue.clone(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
        recommendations: Mutex::default(),
        scale_events: Mutex::default(),
        discovery: Mutex::default(),
    });
    let resync = a.clone();
    let period = a.cfg.sync_period;
    Ok(Runner::new(QUEUE, queue, 5, move |k| {
        let a = a.clone();
        async move { a.sync(&k).await }
    })
    .alongside(crate::every(COMPONENT, period, move || {
        for h in resync.hpas.list() {
            resync.queue.add(object_key(&h.metadata));
        }
        async { Ok(()) }
    })))
}

/// Recent scale-ups and scale-downs: (when, by how many).
pub type Events = (Vec<(Instant, i32)>, Vec<(Instant, i32)>);

struct Autoscaler {
    cx: Context,
    cfg: Config,
    hpas: Store<HorizontalPodAutoscaler>,
    pods: Store<Pod>,
    queue: WorkQueue<String>,
    recorder: Recorder,
    /// Per autoscaler: (when, proposal) of recent syncs.
    recommendations: Mutex<HashMap<String, Vec<(Instant, i32)>>>,
    /// Per autoscaler: recent scale-ups and scale-downs (when, by how many).
    scale_events: Mutex<HashMap<String, Events>>,
    discovery: Mutex<Option<(Instant, Vec<ApiResource>)>>,
}

/// A metric's name in messages and events, as upstream spells it.
fn metric_name(m: &MetricSpec) -> String {
    match (m.type_.as_str(), &m.resource, &m.container_resource) {
        ("Resource", Some(r), _) if r.target.type_ == "Utilization" => {
            format!("{} resource utilization (percentage of request)", r.name)
        }
        ("Resource", Some(r), _) => format!("{} resource", r.name),
        ("ContainerResource", _, Some(r)) if r.target.type_ == "Utilization" => {
            format!(
                "{} container resource utilization (percentage of request)",
                r.name
            )
        }
        ("ContainerResource", _, Some(r)) => format!("{} container resource", r.name),
        (t, _, _) => format!("{t} metric"),
    }
}

impl Autoscaler {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(hpa) = self.hpas.get(k) else {
            self.recommendations.lock().expect("lock").remove(k);
            self.scale_events.lock().expect("lock").remove(k);
            return Ok(());
        };
        self.reconcile(k, &hpa).await
    }

    async fn target_resource(&self, api_version: &str, kind: &str) -> Result<ApiResource, String> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        let find = |rs: &[ApiResource]| {
            rs.iter()
                .find(|r| r.group == group && r.version == version && r.kind == kind)
                .cloned()
        };
        {
            let d = self.discovery.lock().expect("lock");
            if let Some((at, rs)) = d.as_ref() {
                if at.elapsed() < DISCOVERY_TTL {
                    if let Some(r) = find(rs) {
                        return Ok(r);
                    }
                }
            }
        }
        let rs = dynamic::discover(&self.cx.client)
            .await
            .map_err(|e| e.to_string())?;
        let found = find(&rs);
        *self.discovery.lock().expect("lock") = Some((Instant::now(), rs));
        found.ok_or_else(|| format!("no matches for kind \"{kind}\" in group \"{group}\""))
    }

    async fn reconcile(&self, k: &str, hpa: &HorizontalPodAutoscaler) -> Result<(), Error> {
        let ns = hpa.metadata.namespace.clone().unwrap_or_default();
        let spec = hpa.spec.clone().unwrap_or_default();
        let involved = ownership::reference::<HorizontalPodAutoscaler>(&hpa.metadata);
        let mut status = hpa.status.clone().unwrap_or_default();
        let mut conds = status.conditions.take().unwrap_or_default();
        status.observed_generation = hpa.metadata.generation;
        let target = &spec.scale_target_ref;
        let reference = format!("{}/{}", target.kind, target.name);
        let scale_api = match self
            .target_resource(target.api_version.as_deref().unwrap_or("v1"), &target.kind)
            .await
        {
            Ok(r) => Api::<Scale>::dynamic(self.cx.client.clone(), &r, Some(&ns)),
            Err(e) => return self.fail_scale(hpa, status, conds, &e).await,
        };
        let scale = match scale_api.get_subresource(&target.name, "scale").await {
            Ok(s) => s,
            Err(e) => return self.fail_scale(hpa, status, conds, &e.to_string()).await,
        };
        set_condition(
            &mut conds,
            condition(
                "AbleToScale",
                true,
                "SucceededGetScale",
                "the HPA controller was able to get the target's current scale",
            ),
        );
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        status.current_replicas = Some(current);
        // The count found first is a recommendation too: a new (or restarted) autoscaler
        // does not scale down within its first stabilization window.
        self.recommendations
            .lock()
            .expect("lock")
            .entry(k.to_string())
            .or_insert_with(|| vec![(Instant::now(), current)]);
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let mut rescale_reason = String::new();
        let desired = if current == 0 && min != 0 {
            set_condition(
                &mut conds,
                condition(
                    "ScalingActive",
                    false,
                    "ScalingDisabled",
                    "scaling is disabled since the replica count of the target is zero",
                ),
            );
            status.current_metrics = None;
            0
        } else if current > max {
            rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
            status.current_metrics = None;
            max
        } else if current < min {
            rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
            status.current_metrics = None;
            min
        } else {
            let selector = scale
                .status
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            let sel = match LabelSelector::parse(&selector) {
                Ok(s) if !selector.is_empty() => s,
                _ => {
                    let msg = "the HPA target's scale is missing a selector";
                    self.warn(&ns, &involved, "SelectorRequired", "selector is required")
                        .await;
                    set_condition(
                        &mut conds,
                        condition("ScalingActive", false, "InvalidSelector", msg),
                    );
                    return self.write(hpa, status, conds).await;
                }
            };
            let (proposal, metric, metric_statuses, failed) =
                self.compute(hpa, &ns, &sel, current).await;
            if let Some((reason, message, overall)) = failed {
                self.warn(&ns, &involved, "FailedComputeMetricsReplicas", &overall)
                    .await;
                set_condition(
                    &mut conds,
                    condition(
                        "ScalingActive",
                        false,
                        &reason,
                        &format!("the HPA was unable to compute the replica count: {message}"),
                    ),
                );
                status.current_metrics = (!metric_statuses.is_empty()).then_some(metric_statuses);
                return self.write(hpa, status, conds).await;
            }
            set_condition(
                &mut conds,
                condition(
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    &format!(
                        "the HPA was able to successfully calculate a replica count from {metric}"
                    ),
                ),
            );
            status.current_metrics = Some(metric_statuses);
            let normalized = if spec.behavior.is_none() {
                self.normalize(k, current, proposal, min, max, &mut conds)
            } else {
                self.normalize_with_behavior(k, hpa, current, proposal, min, max, &mut conds)
            };
            if normalized > current {
                rescale_reason = format!("{metric} above target");
            } else if normalized < current {
                rescale_reason = "All metrics below target".into();
            }
            normalized
        };
        if desired != current {
            let mut updated = scale.clone();
            updated.spec.get_or_insert_with(Default::default).replicas = Some(desired);
            match scale_api
                .replace_subresource(&target.name, "scale", &updated)
                .await
            {
                Ok(_) => {
                    set_condition(
                        &mut conds,
                        condition(
                            "AbleToScale",
                            true,
                            "SucceededRescale",
                            &format!(
                                "the HPA controller was able to update the target scale to {desired}"
                            ),
                        ),
                    );
                    self.recorder
                        .object(
                            &ns,
                            involved.clone(),
                            EventKind::Normal,
                            "SuccessfulRescale",
                            &format!("New size: {desired}; reason: {rescale_reason}"),
                        )
                        .await;
                    tracing::info!(hpa = k, target = %reference, from = current, to = desired, reason = %rescale_reason, "rescaled");
                    let now = Instant::now();
                    let mut ev = self.scale_events.lock().expect("lock");
                    let e = ev.entry(k.to_string()).or_default();
                    if desired > current {
                        e.0.push((now, desired - current));
                    } else {
                        e.1.push((now, current - desired));
                    }
                    let keep = Duration::from_secs(1800);
                    e.0.retain(|(t, _)| now.duration_since(*t) < keep);
                    e.1.retain(|(t, _)| now.duration_since(*t) < keep);
                    drop(ev);
                    status.last_scale_time = Some(Time(jiff::Timestamp::now()));
                }
                Err(e) => {
                    self.warn(
                        &ns,
                        &involved,
                        "FailedRescale",
                        &format!("New size: {desired}; reason: {rescale_reason}; error: {e}"),
                    )
                    .await;
                    set_condition(
                        &mut conds,
                        condition(
                            "AbleToScale",
                            false,
                            "FailedUpdateScale",
                            &format!(
                                "the HPA controller was unable to update the target scale: {e}"
                            ),
                        ),
                    );
                    self.write(hpa, status, conds).await?;
                    return Err(e.into());
                }
            }
        }
        status.desired_replicas = desired;
        self.write(hpa, status, conds).await
    }

    async fn warn(
        &self,
        ns: &str,
        involved: &k8s_openapi::api::core::v1::ObjectReference,
        reason: &str,
        message: &str,
    ) {
        self.recorder
            .object(ns, involved.clone(), EventKind::Warning, reason, message)
            .await;
    }

    async fn fail_scale(
        &self,
        hpa: &HorizontalPodAutoscaler,
        status: HorizontalPodAutoscalerStatus,
        mut conds: Vec<HorizontalPodAutoscalerCondition>,
        why: &str,
    ) -> Result<(), Error> {
        let ns = hpa.metadata.namespace.clone().unwrap_or_default();
        let involved = ownership::reference::<HorizontalPodAutoscaler>(&hpa.metadata);
        self.warn(&ns, &involved, "FailedGetScale", why).await;
        set_condition(
            &mut conds,
            condition(
                "AbleToScale",
                false,
                "FailedGetScale",
                &format!("the HPA controller was unable to get the target's current scale: {why}"),
            ),
        );
        self.write(hpa, status, conds).await
    }

    async fn write(
        &self,
        hpa: &HorizontalPodAutoscaler,
        mut status: HorizontalPodAutoscalerStatus,
        conds: Vec<HorizontalPodAutoscalerCondition>,
    ) -> Result<(), Error> {
        status.conditions = Some(conds);
        let mut updated = hpa.clone();
        updated.status = Some(status);
        crate::write_status(&self.cx.client, hpa, &updated).await?;
        Ok(())
    }

    /// Every metric's proposal: the largest and the name of the metric that gave it, and
    /// the metrics' status. Each failed metric gets its warning event; when all failed,
    /// or some failed and the rest would scale down (upstream holds then), the failure:
    /// the first failed metric's reason and message, and the overall error.
    async fn compute(
        &self,
        hpa: &HorizontalPodAutoscaler,
        ns: &str,
        sel: &LabelSelector,
        current: i32,
    ) -> (
        i32,
        String,
        Vec<MetricStatus>,
        Option<(String, String, String)>,
    ) {
        let involved = ownership::reference::<HorizontalPodAutoscaler>(&hpa.metadata);
        let specs = hpa
            .spec
            .as_ref()
            .and_then(|s| s.metrics.clone())
            .unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && sel.matches(&p.metadata.labels.clone().unwrap_or_default())
            })
            .collect();
        let usage = self.pod_metrics(ns, sel).await;
        let mut best: Option<(i32, String)> = None;
        let mut statuses = Vec::new();
        let mut first_err: Option<(String, String, String)> = None;
        let mut invalid = 0;
        for m in &specs {
            let name = metric_name(m);
            match self.metric_replicas(m, &pods, &usage, current) {
                Ok((proposal, st)) => {
                    statuses.push(st);
                    if best.as_ref().is_none_or(|(b, _)| proposal > *b) {
                        best = Some((proposal, name));
                    }
                }
                Err((reason, msg)) => {
                    self.warn(ns, &involved, &reason, &msg).await;
                    invalid += 1;
                    if first_err.is_none() {
                        let what = match (m.type_.as_str(), &m.resource, &m.container_resource) {
                            ("Resource", Some(r), _) => format!("{} resource", r.name),
                            ("ContainerResource", _, Some(r)) => format!("{} container", r.name),
                            (t, _, _) => t.to_lowercase(),
                        };
                        let wrapped = format!("failed to get {what} metric value: {msg}");
                        first_err = Some((reason, msg, wrapped));
                    }
                }
            }
        }
        let failed = |first: Option<(String, String, String)>| {
            first.map(|(reason, msg, wrapped)| {
                (
                    reason,
                    msg,
                    format!(
                        "invalid metrics ({invalid} invalid out of {}), first error is: {wrapped}",
                        specs.len()
                    ),
                )
            })
        };
        match best {
            Some((p, _)) if invalid > 0 && p < current => {
                (current, String::new(), statuses, failed(first_err))
            }
            Some((p, name)) => (p, name, statuses, None),
            None => (current, String::new(), statuses, failed(first_err)),
        }
    }

    /// Usage per pod (and per container) of the pods the selector matches.
    async fn pod_metrics(
        &self,
        ns: &str,
        sel: &LabelSelector,
    ) -> Result<HashMap<String, PodMetrics>, String> {
        let res = ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            plural: "pods".into(),
            kind: "PodMetrics".into(),
            namespaced: true,
            verbs: vec!["get".into(), "list".into()],
        };
        let api: Api<PodMetrics> = Api::dynamic(self.cx.client.clone(), &res, Some(ns));
        let params = ListParams {
            label_selector: Some(sel.to_string()),
            ..Default::default()
        };
        let list = api
            .list(&params)
            .await
            .map_err(|e| format!("unable to fetch metrics from resource metrics API: {e}"))?;
        if list.items.is_empty() {
            return Err("no metrics returned from resource metrics API".into());
        }
        Ok(list
            .items
            .into_iter()
            .map(|m| (m.metadata.name.clone().unwrap_or_default(), m))
            .collect())
    }

    /// One Resource/ContainerResource metric's proposal and status.
    fn metric_replicas(
        &self,
        m: &MetricSpec,
        pods: &[Arc<Pod>],
        usage: &Result<HashMap<String, PodMetrics>, String>,
        current: i32,
    ) -> Result<(i32, MetricStatus), (String, String)> {
        let (resource, container, target) = match (m.type_.as_str(), &m.resource, &m.container_resource) {
            ("Resource", Some(r), _) => (r.name.clone(), None, r.target.clone()),
            ("ContainerResource", _, Some(r)) => {
                (r.name.clone(), Some(r.container.clone()), r.target.clone())
            }
            (t @ ("Pods" | "Object" | "External"), _, _) => {
                return Err((
                    format!("FailedGet{t}Metric"),
                    format!(
                        "unable to get {} metric: no custom metrics API (custom.metrics.k8s.io/external.metrics.k8s.io) is served",
                        t.to_lowercase()
                    ),
                ))
            }
            (t, _, _) => {
                return Err((
                    "InvalidMetricSourceType".into(),
                    format!("unknown metric source type {t:?}"),
                ))
            }
        };
        let reason = if container.is_some() {
            "FailedGetContainerResourceMetric"
        } else {
            "FailedGetResourceMetric"
        };
        let fail = |what: &str, e: String| {
            (
                reason.to_string(),
                format!("failed to get {resource} {what}: {e}"),
            )
        };
        let usage = usage.as_ref().map_err(|e| {
            fail(
                if target.type_ == "Utilization" {
                    "utilization"
                } else {
                    "usage"
                },
                e.clone(),
            )
        })?;
        let now = jiff::Timestamp::now().as_second();
        let mut samples = Vec::new();
        for p in pods {
            let name = p.metadata.name.clone().unwrap_or_default();
            let pm = usage.get(&name);
            // A pod's usage counts only if every container concerned reports the
            // resource (upstream's metrics client); otherwise the pod is missing.
            let pod_usage = pm.and_then(|pm| {
                let concerned: Vec<&ContainerMetrics> = pm
                    .containers
                    .iter()
                    .filter(|c| container.as_ref().is_none_or(|n| *n == c.name))
                    .collect();
                let values: Option<Vec<i64>> = concerned
                    .iter()
                    .map(|c| c.usage.get(&resource).map(milli))
                    .collect();
                let value: i64 = values.filter(|_| !concerned.is_empty())?.iter().sum();
                Some(PodUsage {
                    value,
                    timestamp: pm.timestamp.as_ref().map_or(now, |t| t.0.as_second()),
                    window: pm
                        .window
                        .as_deref()
                        .and_then(ferrokube_api::meta::parse_go_duration)
                        .unwrap_or(Duration::from_secs(30)),
                })
            });
            let group = group_pod(p, pod_usage.as_ref(), &resource, now, &self.cfg);
            let mut request = 0;
            if target.type_ == "Utilization" && group != PodGroup::Ignored {
                // The containers and the sidecars (restartable init containers).
                let sidecars = p
                    .spec
                    .iter()
                    .flat_map(|s| s.init_containers.iter().flatten())
                    .filter(|c| c.restart_policy.as_deref() == Some("Always"));
                for c in p
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .chain(sidecars)
                {
                    if container.as_ref().is_some_and(|n| *n != c.name) {
                        continue;
                    }
                    let req = c
                        .resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get(&resource));
                    match req {
                        Some(q) => request += milli(q),
                        None => {
                            return Err(fail(
                                "utilization",
                                format!(
                                    "missing request for {resource} in container {} of Pod {name}",
                                    c.name
                                ),
                            ))
                        }
                    }
                }
            }
            if group != PodGroup::Ignored {
                samples.push(Sample {
                    name,
                    group,
                    usage: pod_usage.map_or(0, |u| u.value),
                    request,
                });
            }
        }
        let (target_value, per_pod) = match target.type_.as_str() {
            "Utilization" => (i64::from(target.average_utilization.unwrap_or(80)), false),
            "AverageValue" => (target.average_value.as_ref().map_or(0, milli), true),
            t => {
                return Err((
                    reason.into(),
                    format!("invalid target type {t:?} for a resource metric"),
                ))
            }
        };
        if target_value <= 0 {
            return Err((
                reason.into(),
                "the metric's target must be above zero".into(),
            ));
        }
        let (proposal, utilization, raw) =
            replicas_for(current, &samples, target_value, per_pod, self.cfg.tolerance)
                .map_err(|e| fail(if per_pod { "usage" } else { "utilization" }, e))?;
        let current_value = MetricValueStatus {
            average_utilization: (!per_pod).then_some(utilization as i32),
            average_value: Some(milli_quantity(raw)),
            value: None,
        };
        let st = match container {
            Some(c) => MetricStatus {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricStatus {
                    name: resource,
                    container: c,
                    current: current_value,
                }),
                ..Default::default()
            },
            None => MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus {
                    name: resource,
                    current: current_value,
                }),
                ..Default::default()
            },
        };
        Ok((proposal, st))
    }

    /// Without `behavior`: downscale stabilization, the scale-up rate, min/max.
    fn normalize(
        &self,
        k: &str,
        current: i32,
        proposal: i32,
        min: i32,
        max: i32,
        conds: &mut Vec<HorizontalPodAutoscalerCondition>,
    ) -> i32 {
        let now = Instant::now();
        let stabilized = {
            let mut recs = self.recommendations.lock().expect("lock");
            let r = recs.entry(k.to_string()).or_default();
            r.retain(|(t, _)| now.duration_since(*t) <= self.cfg.downscale_stabilization);
            r.push((now, proposal));
            r.iter().map(|(_, v)| *v).max().unwrap_or(proposal)
        };
        if stabilized != proposal {
            set_condition(
                conds,
                condition("AbleToScale", true, DOWN_STABILIZED.0, DOWN_STABILIZED.1),
            );
        } else {
            set_condition(
                conds,
                condition(
                    "AbleToScale",
                    true,
                    READY_FOR_NEW_SCALE.0,
                    READY_FOR_NEW_SCALE.1,
                ),
            );
        }
        let up_limit = (2 * current).max(4);
        let (value, limited, reason, message) = if stabilized > up_limit && up_limit < max {
            (up_limit, true, SCALE_UP_LIMIT.0, SCALE_UP_LIMIT.1)
        } else if stabilized > max {
            (max, true, TOO_MANY.0, TOO_MANY.1)
        } else if stabilized < min {
            (min, true, TOO_FEW.0, TOO_FEW.1)
        } else {
            (stabilized, false, WITHIN_RANGE.0, WITHIN_RANGE.1)
        };
        set_condition(conds, condition("ScalingLimited", limited, reason, message));
        value
    }

    /// With `behavior`: stabilization windows per direction, rate policies, min/max.
    #[allow(clippy::too_many_arguments)]
    fn normalize_with_behavior(
        &self,
        k: &str,
        hpa: &HorizontalPodAutoscaler,
        current: i32,
        proposal: i32,
        min: i32,
        max: i32,
        conds: &mut Vec<HorizontalPodAutoscalerCondition>,
    ) -> i32 {
        let up = rules(hpa, true, &self.cfg);
        let down = rules(hpa, false, &self.cfg);
        let now = Instant::now();
        let window = |r: &HPAScalingRules| {
            Duration::from_secs(r.stabilization_window_seconds.unwrap_or(0).max(0) as u64)
        };
        let (up_w, down_w) = (window(&up), window(&down));
        let stabilized = {
            let mut recs = self.recommendations.lock().expect("lock");
            let r = recs.entry(k.to_string()).or_default();
            let mut up_rec = proposal;
            let mut down_rec = proposal;
            for (t, v) in r.iter() {
                let age = now.duration_since(*t);
                if age < up_w {
                    up_rec = up_rec.min(*v);
                }
                if age < down_w {
                    down_rec = down_rec.max(*v);
                }
            }
            let longest = up_w.max(down_w);
            r.retain(|(t, _)| now.duration_since(*t) < longest);
            r.push((now, proposal));
            current.max(up_rec).min(down_rec)
        };
        if stabilized != proposal {
            if proposal >= current {
                set_condition(
                    conds,
                    condition("AbleToScale", true, UP_STABILIZED.0, UP_STABILIZED.1),
                );
            } else {
                set_condition(
                    conds,
                    condition("AbleToScale", true, DOWN_STABILIZED.0, DOWN_STABILIZED.1),
                );
            }
        } else {
            set_condition(
                conds,
                condition(
                    "AbleToScale",
                    true,
                    READY_FOR_NEW_SCALE.0,
                    READY_FOR_NEW_SCALE.1,
                ),
            );
        }
        let events = self
            .scale_events
            .lock()
            .expect("lock")
            .get(k)
            .cloned()
            .unwrap_or_default();
        let (value, limited, reason, message) = if stabilized > current {
            // (Not below the current count while earlier scale-ups fill the period.)
            let limit = rate_limit(&up, true, current, &events, now).max(current);
            let bound = limit.min(max);
            if stabilized > bound {
                if limit < max {
                    (bound, true, SCALE_UP_LIMIT.0, SCALE_UP_LIMIT.1)
                } else {
                    (bound, true, TOO_MANY.0, TOO_MANY.1)
                }
            } else {
                (stabilized, false, WITHIN_RANGE.0, WITHIN_RANGE.1)
            }
        } else if stabilized < current {
            let limit = rate_limit(&down, false, current, &events, now).min(current);
            let bound = limit.max(min);
            if stabilized < bound {
                if limit > min {
                    (bound, true, SCALE_DOWN_LIMIT.0, SCALE_DOWN_LIMIT.1)
                } else {
                    (bound, true, TOO_FEW.0, TOO_FEW.1)
                }
            } else {
                (stabilized, false, WITHIN_RANGE.0, WITHIN_RANGE.1)
            }
        } else {
            (stabilized, false, WITHIN_RANGE.0, WITHIN_RANGE.1)
        };
        set_condition(conds, condition("ScalingLimited", limited, reason, message));
        value.clamp(min.min(max), max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(group: PodGroup, usage: i64, request: i64) -> Sample {
        Sample {
            name: String::new(),
            group,
            usage,
            request,
        }
    }

    #[test]
    fn utilization_replicas_as_upstream() {
        // Two pods at 200% of a 50% target: 8 wanted.
        let s = [
            sample(PodGroup::Ready, 200, 100),
            sample(PodGroup::Ready, 200, 100),
        ];
        assert_eq!(replicas_for(2, &s, 50, false, 0.1).unwrap(), (8, 200, 200));
        // Within the tolerance: unchanged.
        let s = [sample(PodGroup::Ready, 105, 100)];
        assert_eq!(replicas_for(1, &s, 100, false, 0.1).unwrap().0, 1);
        // Scale down: 3 pods at 10% of a 50% target → 1.
        let s = [
            sample(PodGroup::Ready, 10, 100),
            sample(PodGroup::Ready, 10, 100),
            sample(PodGroup::Ready, 10, 100),
        ];
        assert_eq!(replicas_for(3, &s, 50, false, 0.1).unwrap().0, 1);
    }

    #[test]
    fn missing_and_unready_pods_dampen() {
        // Scale down with a pod missing metrics: it counts as at its request (100%),
        // so (10+10+100)/300 = 40% of a 50% target → ceil(0.8 * 3) = 3: held.
        let s = [
            sample(PodGroup::Ready, 10, 100),
            sample(PodGroup::Ready, 10, 100),
            sample(PodGroup::Missing, 0, 100),
        ];
        assert_eq!(replicas_for(3, &s, 50, false, 0.1).unwrap().0, 3);
        // Scale up with an unready pod: it counts as using nothing: 200/200 = 100% of
        // 50% → ratio 2 over 2 pods → 4 (not ceil(4 * 1) from the ready pod alone...).
        let s = [
            sample(PodGroup::Ready, 200, 100),
            sample(PodGroup::Unready, 0, 100),
        ];
        assert_eq!(replicas_for(2, &s, 50, false, 0.1).unwrap().0, 4);
        // A target above 100 %: a missing pod counts as at the target on a scale-down.
        let s = [
            sample(PodGroup::Ready, 10, 100),
            sample(PodGroup::Missing, 0, 100),
        ];
        // (10 + 150) / 200 = 80 % of 150 %: ratio 0.53 → ceil(1.07) = 2: held at 2.
        assert_eq!(replicas_for(2, &s, 150, false, 0.1).unwrap().0, 2);
        // No requests at all: an error, not a proposal of zero.
        assert!(replicas_for(1, &[sample(PodGroup::Ready, 10, 0)], 50, false, 0.1).is_err());
        // No measured pod at all: an error.
        assert!(replicas_for(1, &[sample(PodGroup::Missing, 0, 100)], 50, false, 0.1).is_err());
    }

    #[test]
    fn average_value_replicas() {
        // 3 pods averaging 300m against 100m a pod → 9.
        let s = [
            sample(PodGroup::Ready, 300, 0),
            sample(PodGroup::Ready, 300, 0),
            sample(PodGroup::Ready, 300, 0),
        ];
        assert_eq!(replicas_for(3, &s, 100, true, 0.1).unwrap().0, 9);
    }

    #[test]
    fn rate_policies() {
        let up = HPAScalingRules {
            select_policy: Some("Max".into()),
            policies: Some(vec![
                k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
                    type_: "Percent".into(),
                    value: 100,
                    period_seconds: 15,
                },
                k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
                    type_: "Pods".into(),
                    value: 4,
                    period_seconds: 15,
                },
            ]),
            ..Default::default()
        };
        let now = Instant::now();
        let none: Events = Default::default();
        // From 1: max(2, 5) = 5; from 10: max(20, 14) = 20.
        assert_eq!(rate_limit(&up, true, 1, &none, now), 5);
        assert_eq!(rate_limit(&up, true, 10, &none, now), 20);
        // 4 added in this period: the period started at 6 → max(12, 10).
        assert_eq!(
            rate_limit(&up, true, 10, &(vec![(now, 4)], vec![]), now),
            12
        );
        let down = HPAScalingRules {
            select_policy: Some("Max".into()),
            policies: Some(vec![k8s_openapi::api::autoscaling::v2::HPAScalingPolicy {
                type_: "Percent".into(),
                value: 50,
                period_seconds: 60,
            }]),
            ..Default::default()
        };
        assert_eq!(rate_limit(&down, false, 10, &none, now), 5);
        let disabled = HPAScalingRules {
            select_policy: Some("Disabled".into()),
            ..down
        };
        assert_eq!(rate_limit(&disabled, false, 10, &none, now), 10);
    }
}
