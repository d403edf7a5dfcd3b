//! The Job controller (upstream's `job`): runs a Job's pods to completion.
//!
//! - `parallelism` pods at a time, never more than the completions still needed;
//!   without `completions`, pods run until one succeeds (a work queue). `Indexed`
//!   completion mode gives each pod an index (`<job>-<index>-xxxxx`, the
//!   `batch.kubernetes.io/job-completion-index` annotation and label,
//!   `JOB_COMPLETION_INDEX` in every container, hostname `<job>-<index>`), and the Job
//!   completes when every index has succeeded (`status.completedIndexes`).
//! - Pods carry the `batch.kubernetes.io/job-tracking` finalizer until their end is
//!   counted: finished pods' UIDs go to `status.uncountedTerminatedPods`, the finalizer
//!   comes off, then they move to `succeeded`/`failed` — so a pod deleted right after it
//!   finishes is still counted, and none twice.
//! - Failed pods are replaced after an exponential back-off (10 s, 20 s, 40 s, ...
//!   at most 6 min) since the last failure; more than `backoffLimit` (6) failures fail
//!   the Job (`BackoffLimitExceeded`), as do `activeDeadlineSeconds`
//!   (`DeadlineExceeded`) and a `podFailurePolicy` rule with `FailJob`
//!   (`PodFailurePolicy`; `Ignore` rules do not count a failure).
//! - The end is announced as upstream does: `FailureTarget` / `SuccessCriteriaMet`
//!   first, remaining pods terminated, then `Failed` / `Complete` (with
//!   `completionTime`). `suspend` deletes the active pods (`Suspended` condition) and
//!   resuming starts again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrokube_api::LabelSelector;
use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::{Api, Patch, Store, WorkQueue};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;

use crate::expectations::Expectations;
use crate::ownership::{self};
use crate::pod_status::{is_ready, phase};
use crate::{pod_control, Context, Error, InformerFactory, Runner};

const QUEUE: &str = "job";
const COMPONENT: &str = "job-controller";
/// Workers (upstream's `--concurrent-job-syncs`).
const WORKERS: usize = 5;
/// Pods created or deleted at most per sync.
const BURST: usize = 500;
/// The finalizer that keeps a Job's pod until its end is counted.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The first back-off after a failure, and the longest.
const BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(360);

/// Failures since the last success, and when the last one happened (per Job UID).
#[derive(Default, Clone, Copy)]
struct BackoffRecord {
    failures: u32,
    last_failure: i64,
}

/// Registers the informers; the runner syncs Jobs.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let expectations = Arc::new(Expectations::default());
    let jobs = crate::queue_own::<Job>(informers, &queue);
    let pods = crate::queue_controller::<Job, Pod>(informers, &queue, Some(expectations.clone()));
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        jobs,
        pods,
        expectations,
        backoff: Mutex::default(),
        queue: queue.clone(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    Ok(Runner::new(QUEUE, queue, WORKERS, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

fn has_finalizer(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

fn index_of(p: &Pod) -> Option<i32> {
    let m = &p.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| m.labels.as_ref().and_then(|l| l.get(COMPLETION_INDEX)))
        .and_then(|v| v.parse().ok())
}

/// `0-2,4,6-7` (upstream's form of `completedIndexes`).
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// The indexes a `completedIndexes` string names (bad parts are skipped).
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    set.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    set.insert(i);
                }
            }
        }
    }
    set
}

fn condition<'a>(s: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    s.conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Sets a condition (a change of status moves its transition time).
fn set_condition(s: &mut JobStatus, type_: &str, on: bool, reason: &str, message: &str) {
    let now = Time(jiff::Timestamp::now());
    let status = if on { "True" } else { "False" };
    let cs = s.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = cs.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Some(now.clone());
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(now);
        return;
    }
    cs.push(JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

fn finished(s: &JobStatus) -> bool {
    condition(s, "Complete").is_some() || condition(s, "Failed").is_some()
}

/// The action of the first `podFailurePolicy` rule a failed pod matches, and the
/// message upstream gives a `FailJob` match.
pub fn failure_policy_action(job: &Job, p: &Pod) -> Option<(String, String)> {
    let rules = job
        .spec
        .as_ref()?
        .pod_failure_policy
        .as_ref()?
        .rules
        .clone();
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        if let Some(codes) = &rule.on_exit_codes {
            let statuses = status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten());
            for cs in statuses {
                if codes.container_name.as_ref().is_some_and(|n| *n != cs.name) {
                    continue;
                }
                let Some(code) = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code)
                else {
                    continue;
                };
                // Exit code 0 never matches (upstream).
                if code == 0 {
                    continue;
                }
                let listed = codes.values.contains(&code);
                let hit = match codes.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed,
                    _ => false,
                };
                if hit {
                    return Some((
                        rule.action.clone(),
                        format!(
                            "Container {} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                            cs.name, rule.action
                        ),
                    ));
                }
            }
        }
        for pc in rule.on_pod_conditions.iter().flatten() {
            let has = status.conditions.iter().flatten().any(|c| {
                c.type_ == pc.type_
                    && c.status
                        == if pc.status.is_empty() {
                            "True"
                        } else {
                            pc.status.as_str()
                        }
            });
            if has {
                return Some((
                    rule.action.clone(),
                    format!(
                        "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                        pc.type_, rule.action
                    ),
                ));
            }
        }
    }
    None
}

/// The back-off before the next pod after `failures` consecutive failures.
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let shift = (failures - 1).min(16);
    (BACKOFF * 2u32.pow(shift)).min(MAX_BACKOFF)
}

struct Sync {
    cx: Context,
    jobs: Store<Job>,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    backoff: Mutex<HashMap<String, BackoffRecord>>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

/// What a sync works out about one Job's pods.
#[derive(Default)]
struct Counts {
    active: Vec<Arc<Pod>>,
    ready: i32,
    terminating: i32,
}

impl Sync {
    async fn event(&self, job: &Job, kind: EventKind, reason: &str, message: &str) {
        self.recorder
            .object(
                job.metadata.namespace.as_deref().unwrap_or_default(),
                ownership::reference::<Job>(&job.metadata),
                kind,
                reason,
                message,
            )
            .await;
    }

    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(job) = self.jobs.get(k) else {
            self.expectations.forget(k);
            return Ok(());
        };
        let mut job = (*job).clone();
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.cx.client.clone(), &ns);
        let pods = self.claim(&job, &api).await?;
        let mut status = job.status.clone().unwrap_or_default();

        // Count what ended (two steps, through uncountedTerminatedPods).
        let fail_job = self.track(&mut job, &mut status, &pods, &api).await?;
        if finished(&status) {
            return Ok(());
        }
        let spec = job.spec.clone().unwrap_or_default();
        let counts = self.counts(&pods);
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let completed: BTreeSet<i32> =
            parse_indexes(status.completed_indexes.as_deref().unwrap_or_default());
        let succeeded = if indexed {
            completed.len() as i32
        } else {
            status.succeeded.unwrap_or(0)
        };
        let failed = status.failed.unwrap_or(0);
        let now = jiff::Timestamp::now();
        let suspended = spec.suspend.unwrap_or(false);

        // Suspend and resume.
        let was_suspended = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Suspended" && c.status == "True");
        if suspended && !was_suspended && condition(&status, "FailureTarget").is_none() {
            set_condition(
                &mut status,
                "Suspended",
                true,
                "JobSuspended",
                "Job suspended",
            );
            status.start_time = None;
            self.event(&job, EventKind::Normal, "Suspended", "Job suspended")
                .await;
        } else if !suspended && was_suspended {
            set_condition(&mut status, "Suspended", false, "JobResumed", "Job resumed");
            status.start_time = Some(Time(now));
            self.event(&job, EventKind::Normal, "Resumed", "Job resumed")
                .await;
        }
        if !suspended && status.start_time.is_none() {
            status.start_time = Some(Time(now));
        }

        // Decide whether it failed or succeeded.
        let deadline_passed = match (spec.active_deadline_seconds, &status.start_time) {
            (Some(d), Some(t)) if !suspended => now.as_second() - t.0.as_second() >= d,
            _ => false,
        };
        if condition(&status, "FailureTarget").is_none() {
            let why = if let Some(msg) = fail_job {
                Some(("PodFailurePolicy", msg))
            } else if failed > spec.backoff_limit.unwrap_or(6) {
                Some((
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit".to_string(),
                ))
            } else if deadline_passed {
                Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline".to_string(),
                ))
            } else {
                None
            };
            if let Some((reason, message)) = why {
                set_condition(&mut status, "FailureTarget", true, reason, &message);
            }
        }
        let complete = if let Some(c) = spec.completions {
            if indexed {
                (0..c).all(|i| completed.contains(&i))
            } else {
                succeeded >= c
            }
        } else {
            succeeded > 0 && counts.active.is_empty()
        };
        if condition(&status, "FailureTarget").is_none()
            && condition(&status, "SuccessCriteriaMet").is_none()
            && complete
        {
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                true,
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
        }
        let ending = condition(&status, "FailureTarget")
            .or_else(|| condition(&status, "SuccessCriteriaMet"))
            .cloned();

        let mut active = counts.active.clone();
        if ending.is_some() || suspended {
            // Nothing more runs.
            for p in &active {
                let name = p.metadata.name.clone().unwrap_or_default();
                pod_control::delete_pod(
                    &api,
                    &name,
                    &self.recorder,
                    &ownership::reference::<Job>(&job.metadata),
                )
                .await?;
            }
            active.clear();
        } else if self.expectations.satisfied(k) {
            active = self
                .manage(&job, k, &api, active, succeeded, &completed, &uid)
                .await?;
        }
        status.active = Some(active.len() as i32);
        status.ready = Some(if active.is_empty() { 0 } else { counts.ready });
        status.terminating = Some(counts.terminating);

        // Every pod gone and counted: the end.
        if let Some(end) = &ending {
            let all_done = active.is_empty()
                && counts.terminating == 0
                && !pods.iter().any(|p| has_finalizer(p))
                && status.uncounted_terminated_pods.as_ref().is_none_or(|u| {
                    u.succeeded.iter().flatten().next().is_none()
                        && u.failed.iter().flatten().next().is_none()
                });
            if all_done {
                let reason = end.reason.clone().unwrap_or_default();
                let message = end.message.clone().unwrap_or_default();
                if end.type_ == "FailureTarget" {
                    set_condition(&mut status, "Failed", true, &reason, &message);
                    self.event(&job, EventKind::Warning, &reason, &message)
                        .await;
                } else {
                    set_condition(&mut status, "Complete", true, &reason, &message);
                    status.completion_time = Some(Time(jiff::Timestamp::now()));
                    self.event(&job, EventKind::Normal, "Completed", "Job completed")
                        .await;
                }
                self.backoff.lock().expect("backoff lock").remove(&uid);
            }
        }
        self.write_status(&mut job, status.clone()).await?;

        // Wake up for the deadline or the end of a back-off.
        if !finished(&status) && !suspended {
            if let (Some(d), Some(t)) = (spec.active_deadline_seconds, &status.start_time) {
                let left = t.0.as_second() + d - jiff::Timestamp::now().as_second();
                if left > 0 {
                    self.queue
                        .add_after(k.to_string(), Duration::from_secs(left as u64));
                }
            }
        }
        Ok(())
    }

    /// The Job's pods: its own that match its selector, orphans it matches (adopted),
    /// and its own that stopped matching released with their tracking finalizer.
    async fn claim(&self, job: &Job, api: &Api<Pod>) -> Result<Vec<Arc<Pod>>, Error> {
        let selector = job
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| LabelSelector::from_api(s).ok())
            .filter(|s| !s.is_everything());
        let matches = |p: &Pod| {
            selector
                .as_ref()
                .is_some_and(|s| s.matches(&p.metadata.labels.clone().unwrap_or_default()))
        };
        ownership::claim::<Job, _>(
            api,
            &job.metadata,
            self.pods.list(),
            matches,
            Some(TRACKING_FINALIZER),
        )
        .await
    }

    fn counts(&self, pods: &[Arc<Pod>]) -> Counts {
        let mut c = Counts::default();
        for p in pods {
            let terminal = matches!(phase(p), "Succeeded" | "Failed");
            if p.metadata.deletion_timestamp.is_some() {
                if !terminal {
                    c.terminating += 1;
                }
                continue;
            }
            if !terminal {
                if is_ready(p) {
                    c.ready += 1;
                }
                c.active.push(p.clone());
            }
        }
        c
    }

    /// Records finished pods: first their UIDs in `uncountedTerminatedPods`, then off
    /// comes the finalizer, then they are counted. Answers the message of a `FailJob`
    /// match of the pod failure policy.
    async fn track(
        &self,
        job: &mut Job,
        status: &mut JobStatus,
        pods: &[Arc<Pod>],
        api: &Api<Pod>,
    ) -> Result<Option<String>, Error> {
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let mut succeeded: BTreeSet<String> = uncounted
            .succeeded
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut failed: BTreeSet<String> =
            uncounted.failed.unwrap_or_default().into_iter().collect();
        let mut completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or_default());
        let mut fail_job = None;
        let mut to_release = Vec::new();
        let mut new_failures = 0u32;
        let mut last_failure = 0i64;
        let mut new_success = false;
        for p in pods.iter().filter(|p| has_finalizer(p)) {
            let puid = p.metadata.uid.clone().unwrap_or_default();
            let done_ok = phase(p) == "Succeeded";
            let done_bad =
                phase(p) == "Failed" || (p.metadata.deletion_timestamp.is_some() && !done_ok);
            if !done_ok && !done_bad {
                continue;
            }
            to_release.push(p.clone());
            if succeeded.contains(&puid) || failed.contains(&puid) {
                continue;
            }
            if done_ok {
                succeeded.insert(puid);
                if let Some(i) = index_of(p) {
                    completed.insert(i);
                }
                new_success = true;
                continue;
            }
            match failure_policy_action(job, p) {
                Some((action, _)) if action == "Ignore" => continue,
                Some((action, msg)) if action == "FailJob" => {
                    fail_job.get_or_insert(msg);
                }
                _ => {}
            }
            failed.insert(puid);
            new_failures += 1;
            let finished_at = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| {
                    cs.iter()
                        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                        .map(|t| t.0.as_second())
                        .max()
                })
                .unwrap_or_else(|| jiff::Timestamp::now().as_second());
            last_failure = last_failure.max(finished_at);
        }
        {
            let mut b = self.backoff.lock().expect("backoff lock");
            let r = b.entry(uid.clone()).or_default();
            if new_success {
                *r = BackoffRecord::default();
            }
            if new_failures > 0 {
                r.failures += new_failures;
                r.last_failure = r.last_failure.max(last_failure);
            }
        }
        let set = |s: &BTreeSet<String>| (!s.is_empty()).then(|| s.iter().cloned().collect());
        if to_release.is_empty()
            && status.uncounted_terminated_pods.as_ref().is_none_or(|u| {
                u.succeeded.iter().flatten().next().is_none()
                    && u.failed.iter().flatten().next().is_none()
            })
        {
            return Ok(fail_job);
        }
        // Step 1: remember them.
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: set(&succeeded),
            failed: set(&failed),
        });
        if !completed.is_empty() {
            status.completed_indexes = Some(format_indexes(&completed));
        }
        self.write_status(job, status.clone()).await?;
        // Step 2: let them go.
        for p in &to_release {
            let rest: Vec<&String> = p
                .metadata
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != TRACKING_FINALIZER)
                .collect();
            let patch = json!([
                {"op": "test", "path": "/metadata/uid", "value": p.metadata.uid},
                {"op": "test", "path": "/metadata/finalizers", "value": p.metadata.finalizers},
                {"op": "replace", "path": "/metadata/finalizers", "value": rest},
            ]);
            let name = p.metadata.name.clone().unwrap_or_default();
            match api.patch(&name, &Patch::Json(patch)).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Step 3: count what is let go (or gone).
        let still_held: BTreeSet<String> = pods
            .iter()
            .filter(|p| {
                has_finalizer(p) && !to_release.iter().any(|r| r.metadata.uid == p.metadata.uid)
            })
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        let (s_now, s_keep): (Vec<String>, Vec<String>) =
            succeeded.into_iter().partition(|u| !still_held.contains(u));
        let (f_now, f_keep): (Vec<String>, Vec<String>) =
            failed.into_iter().partition(|u| !still_held.contains(u));
        status.succeeded = Some(status.succeeded.unwrap_or(0) + s_now.len() as i32);
        status.failed = Some(status.failed.unwrap_or(0) + f_now.len() as i32);
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: set(&s_keep.into_iter().collect()),
            failed: set(&f_keep.into_iter().collect()),
        });
        self.write_status(job, status.clone()).await?;
        Ok(fail_job)
    }

    /// Creates or deletes pods toward the number that should run; answers the active
    /// pods after it.
    #[allow(clippy::too_many_arguments)]
    async fn manage(
        &self,
        job: &Job,
        k: &str,
        api: &Api<Pod>,
        mut active: Vec<Arc<Pod>>,
        succeeded: i32,
        completed: &BTreeSet<i32>,
        uid: &str,
    ) -> Result<Vec<Arc<Pod>>, Error> {
        let spec = job.spec.clone().unwrap_or_default();
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let want = match spec.completions {
            None if succeeded > 0 => active.len() as i32,
            None => parallelism,
            Some(c) => (c - succeeded).clamp(0, parallelism),
        } as usize;
        if active.len() > want {
            // Too many (parallelism lowered): the newest go first.
            active.sort_by(|a, b| crate::replicaset::deletion_order(a, b));
            let extra: Vec<Arc<Pod>> = active.drain(..active.len() - want).collect();
            self.expectations.expect(k, 0, extra.len() as i64);
            for p in extra {
                let name = p.metadata.name.clone().unwrap_or_default();
                if !pod_control::delete_pod(
                    api,
                    &name,
                    &self.recorder,
                    &ownership::reference::<Job>(&job.metadata),
                )
                .await?
                {
                    self.expectations.observed(k, 0, 1);
                }
            }
            return Ok(active);
        }
        if active.len() == want {
            return Ok(active);
        }
        // After failures, the next pods wait out the back-off.
        let record = self.backoff.lock().expect("backoff lock").get(uid).copied();
        if let Some(r) = record {
            let wait = backoff_delay(r.failures);
            let left = r.last_failure + wait.as_secs() as i64 - jiff::Timestamp::now().as_second();
            if left > 0 {
                self.queue
                    .add_after(k.to_string(), Duration::from_secs(left as u64));
                return Ok(active);
            }
        }
        let n = (want - active.len()).min(BURST);
        let mut pods = Vec::with_capacity(n);
        if spec.completion_mode.as_deref() == Some("Indexed") {
            let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
            let todo = (0..spec.completions.unwrap_or(0))
                .filter(|i| !completed.contains(i) && !running.contains(i))
                .take(n);
            for i in todo {
                pods.push(pod_for(job, Some(i)));
            }
        } else {
            pods.resize_with(n, || pod_for(job, None));
        }
        if pods.is_empty() {
            return Ok(active);
        }
        self.expectations.expect(k, pods.len() as i64, 0);
        if let Err(e) = pod_control::create_pods(
            api,
            pods,
            &self.recorder,
            &ownership::reference::<Job>(&job.metadata),
        )
        .await
        {
            self.expectations.forget(k);
            return Err(Error::Sync(format!("creating pods: {e}")));
        }
        Ok(active)
    }

    async fn write_status(&self, job: &mut Job, status: JobStatus) -> Result<(), Error> {
        let mut updated = job.clone();
        updated.status = Some(status);
        if let Some(stored) = crate::write_status(&self.cx.client, &*job, &updated).await? {
            *job = stored;
        }
        Ok(())
    }
}

/// A pod of the Job's template (for `index`, in Indexed mode).
fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let t = spec.template;
    let tm = t.metadata.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = tm.labels.clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = tm.annotations.clone().unwrap_or_default();
    let mut pod_spec = t.spec.clone().unwrap_or_default();
    let mut generate = format!("{name}-");
    if let Some(i) = index {
        labels.insert(COMPLETION_INDEX.into(), i.to_string());
        annotations.insert(COMPLETION_INDEX.into(), i.to_string());
        generate = format!("{name}-{i}-");
        if pod_spec.hostname.is_none() {
            pod_spec.hostname = Some(format!("{name}-{i}"));
        }
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
        };
        for c in pod_spec
            .containers
            .iter_mut()
            .chain(pod_spec.init_containers.iter_mut().flatten())
        {
            let list = c.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                list.push(env.clone());
            }
        }
    }
    let mut finalizers = tm.finalizers.clone().unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![ownership::controller_ref::<Job>(&job.metadata)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_in_upstreams_form() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert!(parse_indexes("").is_empty());
    }

    #[test]
    fn back_off_doubles_to_six_minutes() {
        assert_eq!(backoff_delay(0), Duration::ZERO);
        assert_eq!(backoff_delay(1), Duration::from_secs(10));
        assert_eq!(backoff_delay(3), Duration::from_secs(40));
        assert_eq!(backoff_delay(6), Duration::from_secs(320));
        assert_eq!(backoff_delay(7), Duration::from_secs(360));
        assert_eq!(backoff_delay(100), Duration::from_secs(360));
    }

    #[test]
    fn pod_failure_policy_as_upstream() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "spec": {"template": {"spec": {"containers": []}},
                "podFailurePolicy": {"rules": [
                    {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]}},
        }))
        .unwrap();
        let pod = |code: i32, conds: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "default"},
                "status": {"phase": "Failed", "conditions": conds, "containerStatuses": [{
                    "name": "main", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code}}}]},
            }))
            .unwrap()
        };
        let (action, msg) = failure_policy_action(&job, &pod(42, json!([]))).unwrap();
        assert_eq!(action, "FailJob");
        assert_eq!(
            msg,
            "Container main for pod default/p failed with exit code 42 matching FailJob rule at index 0"
        );
        assert!(failure_policy_action(&job, &pod(1, json!([]))).is_none());
        let (action, _) = failure_policy_action(
            &job,
            &pod(137, json!([{"type": "DisruptionTarget", "status": "True"}])),
        )
        .unwrap();
        assert_eq!(action, "Ignore");
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "sample", "uid": "u"},
            "spec": {"completionMode": "Indexed", "completions": 3,
                "template": {"metadata": {"labels": {"job-name": "sample"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }))
        .unwrap();
        let p = pod_for(&job, Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("sample-2-"));
        assert_eq!(p.metadata.labels.as_ref().unwrap()[COMPLETION_INDEX], "2");
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("sample-2"));
        assert_eq!(
            spec.containers[0].env.as_ref().unwrap()[0].name,
            "JOB_COMPLETION_INDEX"
        );
        assert_eq!(
            p.metadata.finalizers.unwrap(),
            vec![TRACKING_FINALIZER.to_string()]
        );
    }
}
