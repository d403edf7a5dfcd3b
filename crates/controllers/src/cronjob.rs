//! The CronJob controller (upstream's `cronjob`, its second version): at each time the
//! schedule names (in `timeZone`, else the controller's local zone), a Job from the
//! `jobTemplate` named `<cronjob>-<minutes since the epoch>` — as long as the time is
//! not older than `startingDeadlineSeconds`, the CronJob is not suspended and
//! `concurrencyPolicy` allows it (`Allow`; `Forbid` skips while a Job runs; `Replace`
//! deletes the running ones first). `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime` follow the Jobs; finished Jobs beyond
//! `successfulJobsHistoryLimit` (3) and `failedJobsHistoryLimit` (1) are deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_api::cron::{self, Schedule};
use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::{Api, Store, WorkQueue};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job, JobStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Time};

use crate::ownership::{self};
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "cronjob";
const COMPONENT: &str = "cronjob-controller";
/// The annotation with the time a Job was scheduled for (RFC 3339, in the zone).
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this are not counted (upstream's limit).
const MAX_MISSED: usize = 100;

/// Registers the informers; the runner syncs CronJobs.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let cronjobs = crate::queue_own::<CronJob>(informers, &queue);
    let jobs = crate::queue_controller::<CronJob, Job>(informers, &queue, None);
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        cronjobs,
        jobs,
        queue: queue.clone(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    Ok(Runner::new(QUEUE, queue, 5, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

/// `Complete` or `Failed`, if the Job has finished.
fn finished(s: Option<&JobStatus>) -> Option<&str> {
    s?.conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

/// A Job's name for the time it was scheduled for.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// The latest scheduled time in `(earliest, now]`, and how many were missed before it
/// (counting stops past [`MAX_MISSED`]).
pub fn most_recent(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize) {
    let mut latest = None;
    let mut count = 0;
    let mut t = earliest;
    while let Some(next) = schedule.next(t, tz) {
        if next > now {
            break;
        }
        latest = Some(next);
        count += 1;
        t = next;
        if count > MAX_MISSED {
            // Jump close to now: only the latest time matters.
            let skip = now
                .checked_sub(jiff::SignedDuration::from_secs(3600))
                .unwrap_or(now);
            if t < skip {
                t = skip;
            }
        }
    }
    (latest, count.saturating_sub(1))
}

struct Sync {
    cx: Context,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

impl Sync {
    async fn event(&self, cj: &CronJob, kind: EventKind, reason: &str, message: &str) {
        let m = &cj.metadata;
        let involved = ownership::reference::<CronJob>(m);
        self.recorder
            .object(
                m.namespace.as_deref().unwrap_or_default(),
                involved,
                kind,
                reason,
                message,
            )
            .await;
    }

    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(cj) = self.cronjobs.get(k) else {
            return Ok(());
        };
        let mut cj = (*cj).clone();
        let ns = cj.metadata.namespace.clone().unwrap_or_default();
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let spec = cj.spec.clone().unwrap_or_default();
        let jobs_api: Api<Job> = Api::namespaced(self.cx.client.clone(), &ns);
        let mut owned: Vec<Arc<Job>> = self
            .jobs
            .list()
            .into_iter()
            .filter(|j| {
                j.metadata.namespace.as_deref() == Some(ns.as_str())
                    && ownership::controller_of(&j.metadata).is_some_and(|r| r.uid == uid)
            })
            .collect();
        let mut status = cj.status.clone().unwrap_or_default();

        // Follow the Jobs: finished ones leave `active`; the last success is noted.
        let mut active: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
        for j in &owned {
            let name = j.metadata.name.clone().unwrap_or_default();
            let listed = active.iter().any(|a| a.uid == j.metadata.uid);
            match finished(j.status.as_ref()) {
                None if !listed => {
                    self.event(
                        &cj,
                        EventKind::Warning,
                        "UnexpectedJob",
                        &format!("Saw a job that the controller did not create or forgot: {name}"),
                    )
                    .await;
                }
                None => {}
                Some(how) if listed => {
                    active.retain(|a| a.uid != j.metadata.uid);
                    self.event(
                        &cj,
                        EventKind::Normal,
                        "SawCompletedJob",
                        &format!("Saw completed job: {name}, status: {how}"),
                    )
                    .await;
                }
                Some(how) => {
                    let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
                    if how == "Complete"
                        && done.as_ref().map(|t| t.0)
                            > status.last_successful_time.as_ref().map(|t| t.0)
                    {
                        status.last_successful_time = done;
                    }
                }
            }
        }
        // Jobs listed but gone (asked of the server: the cache may not have a new one yet).
        let mut kept = Vec::with_capacity(active.len());
        for a in active {
            if owned.iter().any(|j| j.metadata.uid == a.uid) {
                kept.push(a);
                continue;
            }
            let name = a.name.clone().unwrap_or_default();
            match jobs_api.get_opt(&name).await? {
                Some(j) if j.metadata.uid == a.uid => kept.push(a),
                _ => {
                    self.event(
                        &cj,
                        EventKind::Normal,
                        "MissingJob",
                        &format!("Active job went missing: {name}"),
                    )
                    .await
                }
            }
        }
        let active = kept;
        status.active = (!active.is_empty()).then_some(active.clone());

        if cj.metadata.deletion_timestamp.is_some() {
            return self.write_status(&mut cj, status).await;
        }
        self.cleanup(&cj, &mut owned, &jobs_api).await?;

        let tz = match spec.time_zone.as_deref() {
            Some(name) => match cron::time_zone(name) {
                Ok(tz) => tz,
                Err(_) => {
                    self.event(
                        &cj,
                        EventKind::Warning,
                        "UnknownTimeZone",
                        &format!("invalid timeZone: {name:?}: unknown time zone {name}"),
                    )
                    .await;
                    return self.write_status(&mut cj, status).await;
                }
            },
            None => TimeZone::system(),
        };
        let schedule = match cron::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                self.event(
                    &cj,
                    EventKind::Warning,
                    "UnparseableSchedule",
                    &format!("unparseable schedule: {:?} : {e}", spec.schedule),
                )
                .await;
                return self.write_status(&mut cj, status).await;
            }
        };
        if spec.suspend.unwrap_or(false) {
            return self.write_status(&mut cj, status).await;
        }
        let now = Timestamp::now();
        let mut earliest = status
            .last_schedule_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        if let Some(d) = spec.starting_deadline_seconds {
            let deadline = now
                .checked_sub(jiff::SignedDuration::from_secs(d))
                .unwrap_or(now);
            if deadline > earliest {
                earliest = deadline;
            }
        }
        let (scheduled, missed) = most_recent(&schedule, &tz, earliest, now);
        if missed > MAX_MISSED {
            self.event(
                &cj,
                EventKind::Warning,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            )
            .await;
        }
        let requeue = |from: Timestamp| {
            if let Some(next) = schedule.next(from, &tz) {
                let wait = next.as_millisecond() - Timestamp::now().as_millisecond() + 100;
                self.queue
                    .add_after(k.to_string(), Duration::from_millis(wait.max(100) as u64));
            }
        };
        let Some(scheduled) = scheduled else {
            requeue(now);
            return self.write_status(&mut cj, status).await;
        };
        let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), scheduled);
        let already = owned
            .iter()
            .any(|j| j.metadata.name.as_deref() == Some(name.as_str()));
        if already {
            requeue(now);
            return self.write_status(&mut cj, status).await;
        }
        if let Some(d) = spec.starting_deadline_seconds {
            if scheduled.as_second() + d < now.as_second() {
                self.event(
                    &cj,
                    EventKind::Warning,
                    "MissSchedule",
                    &format!(
                        "Missed scheduled time to start a job: {}",
                        rfc3339(scheduled, &tz)
                    ),
                )
                .await;
                requeue(now);
                return self.write_status(&mut cj, status).await;
            }
        }
        let running: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !running.is_empty() => {
                self.event(
                    &cj,
                    EventKind::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                )
                .await;
                requeue(now);
                return self.write_status(&mut cj, status).await;
            }
            Some("Replace") => {
                for a in &running {
                    let n = a.name.clone().unwrap_or_default();
                    let opts = DeleteOptions {
                        propagation_policy: Some("Background".into()),
                        ..Default::default()
                    };
                    match jobs_api.delete(&n, Some(&opts)).await {
                        Ok(_) => {
                            self.event(
                                &cj,
                                EventKind::Normal,
                                "SuccessfulDelete",
                                &format!("Deleted job {n}"),
                            )
                            .await
                        }
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                status.active = None;
            }
            _ => {}
        }
        let job = job_for(&cj, &name, scheduled, &tz);
        match jobs_api.create(&job).await {
            Ok(created) => {
                self.event(
                    &cj,
                    EventKind::Normal,
                    "SuccessfulCreate",
                    &format!("Created job {name}"),
                )
                .await;
                status
                    .active
                    .get_or_insert_with(Vec::new)
                    .push(ownership::reference::<Job>(&created.metadata));
            }
            Err(e) if e.is_already_exists() => {}
            Err(e) if crate::serviceaccount::namespace_terminating(&e) => return Ok(()),
            Err(e) => {
                self.event(
                    &cj,
                    EventKind::Warning,
                    "FailedCreate",
                    &format!("Error creating job: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
        status.last_schedule_time = Some(Time(scheduled));
        requeue(now);
        self.write_status(&mut cj, status).await
    }

    /// Finished Jobs beyond the history limits go, oldest first.
    async fn cleanup(
        &self,
        cj: &CronJob,
        owned: &mut Vec<Arc<Job>>,
        api: &Api<Job>,
    ) -> Result<(), Error> {
        let spec = cj.spec.clone().unwrap_or_default();
        for (how, limit) in [
            ("Complete", spec.successful_jobs_history_limit),
            ("Failed", spec.failed_jobs_history_limit),
        ] {
            let Some(limit) = limit else { continue };
            let mut done: Vec<Arc<Job>> = owned
                .iter()
                .filter(|j| {
                    finished(j.status.as_ref()) == Some(how)
                        && j.metadata.deletion_timestamp.is_none()
                })
                .cloned()
                .collect();
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            if excess == 0 {
                continue;
            }
            let started = |j: &Job| {
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .or(j.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0)
            };
            done.sort_by_key(|j| started(j));
            for j in done.into_iter().take(excess) {
                let n = j.metadata.name.clone().unwrap_or_default();
                let opts = DeleteOptions {
                    propagation_policy: Some("Background".into()),
                    ..Default::default()
                };
                match api.delete(&n, Some(&opts)).await {
                    Ok(_) => {
                        self.event(
                            cj,
                            EventKind::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted job {n}"),
                        )
                        .await
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                owned.retain(|o| o.metadata.uid != j.metadata.uid);
            }
        }
        Ok(())
    }

    async fn write_status(
        &self,
        cj: &mut CronJob,
        status: k8s_openapi::api::batch::v1::CronJobStatus,
    ) -> Result<(), Error> {
        let mut updated = cj.clone();
        updated.status = Some(status);
        if let Some(stored) = crate::write_status(&self.cx.client, &*cj, &updated).await? {
            *cj = stored;
        }
        Ok(())
    }
}

fn rfc3339(t: Timestamp, tz: &TimeZone) -> String {
    let z = t.to_zoned(tz.clone());
    let offset = z.offset();
    if offset.seconds() == 0 {
        return format!("{}Z", z.datetime().strftime("%Y-%m-%dT%H:%M:%S"));
    }
    z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// The Job for one scheduled time: the template's labels and annotations, the
/// scheduled-time annotation, owned by the CronJob.
pub fn job_for(cj: &CronJob, name: &str, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let template = spec.job_template;
    let tm = template.metadata.clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = tm.annotations.clone().unwrap_or_default();
    annotations.insert(SCHEDULED_AT.into(), rfc3339(scheduled, tz));
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: cj.metadata.namespace.clone(),
            labels: tm.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![ownership::controller_ref::<CronJob>(&cj.metadata)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn names_count_minutes_since_the_epoch() {
        assert_eq!(
            job_name("hello", at("2026-12-04T05:30:00Z")),
            "hello-29939370"
        );
    }

    #[test]
    fn the_most_recent_time_and_what_was_missed() {
        let s = cron::parse("*/1 * * * *").unwrap();
        let utc = TimeZone::UTC;
        let (t, missed) = most_recent(
            &s,
            &utc,
            at("2026-12-04T05:00:10Z"),
            at("2026-12-04T05:03:30Z"),
        );
        assert_eq!(t, Some(at("2026-12-04T05:03:00Z")));
        assert_eq!(missed, 2);
        let (t, _) = most_recent(
            &s,
            &utc,
            at("2026-12-04T05:00:10Z"),
            at("2026-12-04T05:00:50Z"),
        );
        assert_eq!(t, None);
        // Far behind: the latest still comes out, quickly.
        let (t, missed) = most_recent(
            &s,
            &utc,
            at("2026-01-01T00:00:00Z"),
            at("2026-12-04T05:03:30Z"),
        );
        assert_eq!(t, Some(at("2026-12-04T05:03:00Z")));
        assert!(missed > MAX_MISSED);
    }

    #[test]
    fn scheduled_time_annotation_in_the_zone() {
        let cj: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "hello", "namespace": "default", "uid": "u"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"metadata": {"labels": {"a": "b"}},
                "spec": {"template": {"spec": {"containers": []}}}}},
        }))
        .unwrap();
        let tz = cron::time_zone("Asia/Shanghai").unwrap();
        let j = job_for(&cj, "hello-1", at("2026-12-04T05:30:00Z"), &tz);
        assert_eq!(
            j.metadata.annotations.unwrap()[SCHEDULED_AT],
            "2026-12-04T13:30:00+08:00"
        );
        assert_eq!(j.metadata.labels.unwrap()["a"], "b");
        assert_eq!(j.metadata.owner_references.unwrap()[0].kind, "CronJob");
    }
}
