//! The TTL-after-finished controller (upstream's `ttl-after-finished`): a Job with
//! `ttlSecondsAfterFinished` is deleted (in the foreground, so its pods go first) that
//! many seconds after it completed or failed.

use std::sync::Arc;
use std::time::Duration;

use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Preconditions};

use crate::ownership::key;
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "ttl_jobs_to_delete";

/// When a finished Job's time is up (seconds since the epoch), if it has a TTL.
pub fn expires_at(job: &Job) -> Option<i64> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let status = job.status.as_ref()?;
    let end = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
        .next()
        .or_else(|| status.completion_time.as_ref().map(|t| t.0.as_second()))?;
    Some(end + i64::from(ttl))
}

/// Registers the Job informer; the runner deletes expired Jobs.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let jobs: Store<Job> = {
        let inf = informers.informer::<Job>();
        let q = queue.clone();
        inf.on_event(move |e| {
            if let Event::Added(j) | Event::Updated(_, j) = e {
                if j.metadata.deletion_timestamp.is_none() && expires_at(j).is_some() {
                    q.add(key(
                        j.metadata.namespace.as_deref().unwrap_or_default(),
                        j.metadata.name.as_deref().unwrap_or_default(),
                    ));
                }
            }
        });
        inf.store()
    };
    let cx = cx.clone();
    let requeue = queue.clone();
    let jobs = Arc::new(jobs);
    Ok(Runner::new(QUEUE, queue, 5, move |k| {
        let (cx, requeue, jobs) = (cx.clone(), requeue.clone(), jobs.clone());
        async move {
            let Some(job) = jobs.get(&k) else {
                return Ok(());
            };
            let Some(at) = expires_at(&job) else {
                return Ok(());
            };
            let left = at - jiff::Timestamp::now().as_second();
            if left > 0 {
                requeue.add_after(k, Duration::from_secs(left as u64));
                return Ok(());
            }
            let ns = job.metadata.namespace.clone().unwrap_or_default();
            let name = job.metadata.name.clone().unwrap_or_default();
            let api: Api<Job> = Api::namespaced(cx.client.clone(), &ns);
            // The cache may be behind (the TTL changed): read it again.
            let Some(fresh) = api.get_opt(&name).await? else {
                return Ok(());
            };
            if fresh.metadata.uid != job.metadata.uid
                || expires_at(&fresh).is_none_or(|t| t > jiff::Timestamp::now().as_second())
            {
                requeue.add(k);
                return Ok(());
            }
            tracing::info!(
                namespace = ns,
                job = name,
                "deleting finished job: its TTL expired"
            );
            let opts = DeleteOptions {
                propagation_policy: Some("Foreground".into()),
                preconditions: Some(Preconditions {
                    uid: fresh.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, Some(&opts)).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        }
    }))
}
