//! The taint eviction controller (upstream's `taint-eviction-controller`): a pod on a
//! Node with NoExecute taints it does not tolerate is deleted at once; one that
//! tolerates them all with `tolerationSeconds` is deleted when the shortest of those
//! runs out (counted from when the controller saw the taint), unless the taints go
//! first; tolerations without `tolerationSeconds` keep it forever. Before deleting,
//! the pod gets a `DisruptionTarget` condition (`DeletionByTaintManager`); events
//! `TaintManagerEviction` say `Marking for deletion Pod ns/name` and, when the taint
//! goes in time, `Cancelling deletion of Pod ns/name`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokube_api::scheduling::tolerates;
use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};

use crate::ownership::{key, object_key};
use crate::{Context, Error, InformerFactory, Runner};

const COMPONENT: &str = "taint-eviction-controller";
const QUEUE: &str = "taint_eviction";

/// How long a pod may stay on a Node with these NoExecute `taints`: `None` forever,
/// `Some(0)` not at all (a taint it does not tolerate, or tolerationSeconds <= 0).
pub fn toleration_time(taints: &[Taint], tolerations: &[Toleration]) -> Option<Duration> {
    let mut min: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let used: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Some(Duration::ZERO);
        }
        for t in used {
            if let Some(s) = t.toleration_seconds {
                min = Some(min.map_or(s, |m| m.min(s)));
            }
        }
    }
    min.map(|s| Duration::from_secs(s.max(0) as u64))
}

/// A pod's planned eviction.
struct Planned {
    since: Instant,
    at: Instant,
}

struct TaintEviction {
    cx: Context,
    pods: Store<Pod>,
    nodes: Store<Node>,
    planned: Mutex<HashMap<String, Planned>>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

fn no_execute(n: &Node) -> Vec<Taint> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoExecute")
        .cloned()
        .collect()
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// Registers the informers; the runner evicts pods from NoExecute-tainted Nodes.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let pods = {
        let inf = informers.informer::<Pod>();
        let q = queue.clone();
        inf.on_event(move |e| match e {
            Event::Added(p) => {
                if node_of(p).is_some() {
                    q.add(object_key(&p.metadata));
                }
            }
            Event::Updated(old, p) => {
                if node_of(p).is_some()
                    && (node_of(old) != node_of(p)
                        || old.spec.as_ref().map(|s| &s.tolerations)
                            != p.spec.as_ref().map(|s| &s.tolerations))
                {
                    q.add(object_key(&p.metadata));
                }
            }
            Event::Deleted(p) => q.add(object_key(&p.metadata)),
        });
        inf.store()
    };
    let nodes = {
        let inf = informers.informer::<Node>();
        let (q, pods) = (queue.clone(), pods.clone());
        inf.on_event(move |e| {
            let changed = match e {
                Event::Added(n) => !no_execute(n).is_empty(),
                Event::Updated(old, n) => no_execute(old) != no_execute(n),
                Event::Deleted(_) => false,
            };
            if let (true, Event::Added(n) | Event::Updated(_, n)) = (changed, e) {
                let name = n.metadata.name.as_deref();
                for p in pods.list() {
                    if node_of(&p) == name {
                        q.add(object_key(&p.metadata));
                    }
                }
            }
        });
        inf.store()
    };
    let te = Arc::new(TaintEviction {
        cx: cx.clone(),
        pods,
        nodes,
        planned: Mutex::default(),
        queue: queue.clone(),
        recorder: Recorder::for_component(cx.client.clone(), COMPONENT, &cx.host, ""),
    });
    Ok(Runner::new(QUEUE, queue, 5, move |k| {
        let te = te.clone();
        async move { te.sync(&k).await }
    }))
}

impl TaintEviction {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let pod = self
            .pods
            .get(k)
            .filter(|p| p.metadata.deletion_timestamp.is_none());
        let taints = pod
            .as_ref()
            .and_then(|p| node_of(p))
            .and_then(|n| self.nodes.get(n))
            .map(|n| no_execute(&n))
            .unwrap_or_default();
        let Some(pod) = pod.filter(|_| !taints.is_empty()) else {
            self.cancel(k).await;
            return Ok(());
        };
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let Some(allowed) = toleration_time(&taints, &tolerations) else {
            self.cancel(k).await;
            return Ok(());
        };
        let now = Instant::now();
        let at = {
            let mut planned = self.planned.lock().expect("planned lock");
            let p = planned.entry(k.to_string()).or_insert(Planned {
                since: now,
                at: now + allowed,
            });
            p.at = p.since + allowed;
            p.at
        };
        if at > now {
            self.queue.add_after(k.to_string(), at - now);
            return Ok(());
        }
        self.evict(&pod).await?;
        self.planned.lock().expect("planned lock").remove(k);
        Ok(())
    }

    async fn cancel(&self, k: &str) {
        let was = self
            .planned
            .lock()
            .expect("planned lock")
            .remove(k)
            .is_some();
        if was {
            if let Some(p) = self.pods.get(k) {
                self.recorder
                    .pod(
                        &p,
                        None,
                        EventKind::Normal,
                        "TaintManagerEviction",
                        &format!("Cancelling deletion of Pod {k}"),
                    )
                    .await;
            }
        }
    }

    async fn evict(&self, pod: &Pod) -> Result<(), Error> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        tracing::info!(pod = %key(&ns, &name), "deleting pod: NoExecute taint");
        self.recorder
            .pod(
                pod,
                None,
                EventKind::Normal,
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {}", key(&ns, &name)),
            )
            .await;
        let api: Api<Pod> = Api::namespaced(self.cx.client.clone(), &ns);
        let marked = crate::pod_status::set_condition(
            &api,
            pod,
            crate::pod_status::PodCondition {
                type_: "DisruptionTarget",
                status: "True",
                reason: Some("DeletionByTaintManager"),
                message: Some("Taint manager: deleting due to NoExecute taint"),
            },
            None,
        )
        .await?;
        if !marked {
            return Ok(());
        }
        match api.delete(&name, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            ..Default::default()
        }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            ..Default::default()
        }
    }

    #[test]
    fn toleration_times_as_upstream() {
        let t = [taint("node.kubernetes.io/unreachable")];
        // Not tolerated: at once.
        assert_eq!(toleration_time(&t, &[]), Some(Duration::ZERO));
        // The admission defaults: 300 s.
        assert_eq!(
            toleration_time(
                &t,
                &[toleration("node.kubernetes.io/unreachable", Some(300))]
            ),
            Some(Duration::from_secs(300))
        );
        // Forever.
        assert_eq!(
            toleration_time(&t, &[toleration("node.kubernetes.io/unreachable", None)]),
            None
        );
        // The shortest of several; negative counts as zero.
        let two = [taint("a"), taint("b")];
        assert_eq!(
            toleration_time(
                &two,
                &[toleration("a", Some(30)), toleration("b", Some(10))]
            ),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            toleration_time(
                &t,
                &[toleration("node.kubernetes.io/unreachable", Some(-5))]
            ),
            Some(Duration::ZERO)
        );
        // One untolerated taint among tolerated ones: at once.
        assert_eq!(
            toleration_time(&two, &[toleration("a", None)]),
            Some(Duration::ZERO)
        );
    }
}
