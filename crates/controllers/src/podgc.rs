//! The pod garbage collector (upstream's `podgc`), every 20 s:
//!
//! - finished pods (`Succeeded`/`Failed`) beyond `--terminated-pod-gc-threshold`
//!   (12 500; 0 turns this off) are deleted, oldest first;
//! - pods bound to a node that no longer exists (not in the cache and, 40 s later, not
//!   on the server either) are marked `Failed` with a `DisruptionTarget` condition
//!   (`DeletionByPodGC`) and deleted at once;
//! - pods being deleted that were never scheduled are deleted at once (no kubelet
//!   will confirm them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokube_client::{Api, Store};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;

use crate::pod_status::phase;
use crate::{Context, Error, InformerFactory, Runner};

const PERIOD: Duration = Duration::from_secs(20);
/// How long a node must be missing before its pods are collected.
const QUARANTINE: Duration = Duration::from_secs(40);
/// Upstream's default `--terminated-pod-gc-threshold`.
pub const DEFAULT_THRESHOLD: usize = 12_500;

/// Registers the informers; the runner collects every [`PERIOD`].
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let pods = informers.informer::<Pod>().store();
    let nodes = informers.informer::<Node>().store();
    let gc = Arc::new(PodGc {
        cx: cx.clone(),
        pods,
        nodes,
        threshold: cx.terminated_pod_gc_threshold,
        missing_since: Mutex::default(),
    });
    Ok(Runner {
        queue_name: "podgc",
        counts: Box::new(Default::default),
        run: Box::pin(async move {
            crate::every("pod-garbage-collector", PERIOD, || gc.collect()).await
        }),
    })
}

struct PodGc {
    cx: Context,
    pods: Store<Pod>,
    nodes: Store<Node>,
    threshold: usize,
    /// Nodes pods are bound to that the cache lacks, and since when.
    missing_since: Mutex<HashMap<String, Instant>>,
}

fn node_of(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// The finished pods past `threshold`, oldest first.
pub fn over_threshold(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    if threshold == 0 {
        return Vec::new();
    }
    let mut done: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
        })
        .cloned()
        .collect();
    let excess = done.len().saturating_sub(threshold);
    done.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    done.truncate(excess);
    done
}

impl PodGc {
    async fn collect(&self) -> Result<(), Error> {
        let pods = self.pods.list();
        for p in over_threshold(&pods, self.threshold) {
            self.delete(&p, None).await?;
        }
        // Pods of nodes that are gone.
        let mut orphaned = Vec::new();
        {
            let mut missing = self.missing_since.lock().expect("missing lock");
            let mut still = HashMap::new();
            for p in &pods {
                let node = node_of(p);
                if node.is_empty() || self.nodes.get(node).is_some() {
                    continue;
                }
                let since = *missing.get(node).unwrap_or(&Instant::now());
                still.insert(node.to_string(), since);
                if since.elapsed() >= QUARANTINE {
                    orphaned.push(p.clone());
                }
            }
            *missing = still;
        }
        let nodes: Api<Node> = Api::all(self.cx.client.clone());
        let mut checked: HashMap<String, bool> = HashMap::new();
        for p in orphaned {
            let node = node_of(&p).to_string();
            let exists = match checked.get(&node) {
                Some(e) => *e,
                None => {
                    let e = nodes.get_opt(&node).await?.is_some();
                    checked.insert(node.clone(), e);
                    e
                }
            };
            if exists {
                continue;
            }
            tracing::info!(pod = ?p.metadata.name, node, "collecting a pod of a node that is gone");
            if !matches!(phase(&p), "Succeeded" | "Failed") {
                self.mark_failed(&p).await?;
            }
            self.delete(&p, Some(0)).await?;
        }
        // Terminating pods that were never scheduled.
        for p in pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_empty())
        {
            self.delete(p, Some(0)).await?;
        }
        Ok(())
    }

    async fn mark_failed(&self, p: &Pod) -> Result<(), Error> {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.cx.client.clone(), &ns);
        crate::pod_status::set_condition(
            &api,
            p,
            crate::pod_status::PodCondition {
                type_: "DisruptionTarget",
                status: "True",
                reason: Some("DeletionByPodGC"),
                message: Some("PodGC: node no longer exists"),
            },
            Some("Failed"),
        )
        .await?;
        Ok(())
    }

    async fn delete(&self, p: &Pod, grace: Option<i64>) -> Result<(), Error> {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.cx.client.clone(), &ns);
        let opts = DeleteOptions {
            grace_period_seconds: grace,
            preconditions: Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Preconditions {
                    uid: p.metadata.uid.clone(),
                    resource_version: None,
                },
            ),
            ..Default::default()
        };
        match api
            .delete(p.metadata.name.as_deref().unwrap_or_default(), Some(&opts))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, created: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "status": {"phase": phase},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn oldest_finished_pods_past_the_threshold() {
        let pods = vec![
            pod("new-done", "Succeeded", "2026-01-03T00:00:00Z"),
            pod("running", "Running", "2026-01-01T00:00:00Z"),
            pod("old-done", "Failed", "2026-01-01T00:00:00Z"),
            pod("mid-done", "Succeeded", "2026-01-02T00:00:00Z"),
        ];
        let names = |v: Vec<Arc<Pod>>| -> Vec<String> {
            v.iter().map(|p| p.metadata.name.clone().unwrap()).collect()
        };
        assert_eq!(
            names(over_threshold(&pods, 1)),
            vec!["old-done", "mid-done"]
        );
        assert!(over_threshold(&pods, 3).is_empty());
        assert!(over_threshold(&pods, 0).is_empty());
    }
}
