//! The namespace controller: empties a namespace being deleted, then lets it go
//! (upstream's `namespace` controller).
//!
//! A deleted namespace is `Terminating` and keeps its `kubernetes` finalizer
//! (`spec.finalizers`). For each, this controller deletes every namespaced resource in
//! it (all kinds discovery finds, custom ones included), reports progress in the
//! namespace's conditions (`NamespaceContentRemaining`, `NamespaceFinalizersRemaining`,
//! `NamespaceDeletionContentFailure`, `NamespaceDeletionDiscoveryFailure`,
//! `NamespaceDeletionGroupVersionParsingFailure`), and once nothing is left removes the
//! finalizer through `namespaces/{name}/finalize` — whereupon the API server deletes it.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrokube_client::dynamic::{self, ApiResource, ObjectMetadata};
use ferrokube_client::informer::Event;
use ferrokube_client::{Api, ListParams, WorkQueue};
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Time};

use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "namespace";
const FINALIZER: &str = "kubernetes";
/// Workers (upstream's `--concurrent-namespace-syncs`).
const WORKERS: usize = 10;

/// Registers the namespace informer; the runner empties terminating namespaces.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let q = queue.clone();
    informers.informer::<Namespace>().on_event(move |e| {
        if let Event::Added(ns) | Event::Updated(_, ns) = e {
            if ns.metadata.deletion_timestamp.is_some() {
                q.add(ns.metadata.name.clone().unwrap_or_default());
            }
        }
    });
    let cx = cx.clone();
    let requeue = queue.clone();
    Ok(Runner::new(QUEUE, queue, WORKERS, move |name| {
        let (cx, requeue) = (cx.clone(), requeue.clone());
        async move {
            match sync(&cx, &name).await? {
                // Content is still going (pods terminating): look again then.
                Some(wait) => {
                    requeue.add_after(name, wait);
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }))
}

/// What one pass over a namespace's content found.
#[derive(Debug, Default, PartialEq)]
struct Progress {
    discovery_failed: Option<String>,
    /// Errors deleting or listing, one per resource.
    failures: Vec<String>,
    /// Objects left, by `resource[.group]`.
    remaining: BTreeMap<String, usize>,
    /// Objects left holding each finalizer.
    finalizers: BTreeMap<String, usize>,
    /// The longest a terminating pod may still take, in seconds.
    grace: i64,
}

impl Progress {
    fn done(&self) -> bool {
        self.discovery_failed.is_none() && self.failures.is_empty() && self.remaining.is_empty()
    }

    /// The namespace's deletion conditions, as upstream words them.
    fn conditions(&self) -> Vec<(&'static str, bool, &'static str, String)> {
        let list = |m: &BTreeMap<String, usize>, f: &dyn Fn(&String, &usize) -> String| {
            m.iter()
                .map(|(k, v)| f(k, v))
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            match &self.discovery_failed {
                Some(e) => (
                    "NamespaceDeletionDiscoveryFailure",
                    true,
                    "DiscoveryFailed",
                    format!("Discovery failed for some groups, 1 failing: {e}"),
                ),
                None => (
                    "NamespaceDeletionDiscoveryFailure",
                    false,
                    "ResourcesDiscovered",
                    "All resources successfully discovered".into(),
                ),
            },
            (
                "NamespaceDeletionGroupVersionParsingFailure",
                false,
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed".into(),
            ),
            if self.failures.is_empty() {
                (
                    "NamespaceDeletionContentFailure",
                    false,
                    "ContentDeleted",
                    "All content successfully deleted, may be waiting on finalization".into(),
                )
            } else {
                (
                    "NamespaceDeletionContentFailure",
                    true,
                    "ContentDeletionFailed",
                    format!(
                        "Failed to delete all resource types, {} remaining: {}",
                        self.failures.len(),
                        self.failures.join(", ")
                    ),
                )
            },
            if self.remaining.is_empty() {
                (
                    "NamespaceContentRemaining",
                    false,
                    "ContentRemoved",
                    "All content successfully removed".into(),
                )
            } else {
                (
                    "NamespaceContentRemaining",
                    true,
                    "SomeResourcesRemain",
                    format!(
                        "Some resources are remaining: {}",
                        list(&self.remaining, &|k, v| format!(
                            "{k} has {v} resource instances"
                        ))
                    ),
                )
            },
            if self.finalizers.is_empty() {
                (
                    "NamespaceFinalizersRemaining",
                    false,
                    "ContentHasNoFinalizers",
                    "All content-preserving finalizers finished".into(),
                )
            } else {
                (
                    "NamespaceFinalizersRemaining",
                    true,
                    "SomeFinalizersRemain",
                    format!(
                        "Some content in the namespace has finalizers remaining: {}",
                        list(&self.finalizers, &|k, v| format!(
                            "{k} in {v} resource instances"
                        ))
                    ),
                )
            },
        ]
    }
}

fn group_resource(r: &ApiResource) -> String {
    if r.group.is_empty() {
        r.plural.clone()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}

/// One pass over a terminating namespace; answers when to look again if content is
/// still going.
async fn sync(cx: &Context, name: &str) -> Result<Option<Duration>, Error> {
    let api: Api<Namespace> = Api::all(cx.client.clone());
    let Some(ns) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    let progress = delete_content(cx, name).await;
    update_conditions(&api, &ns, &progress).await?;
    if !progress.done() {
        if progress.discovery_failed.is_some() || !progress.failures.is_empty() {
            return Err(Error::Sync(format!(
                "namespace {name}: {}",
                progress
                    .discovery_failed
                    .iter()
                    .chain(&progress.failures)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        // Pods terminate within their grace period; other content (finalizers) is
        // looked at again every few seconds.
        let wait = progress.grace.clamp(2, 15) as u64;
        tracing::info!(namespace = name, remaining = ?progress.remaining, "content remaining");
        return Ok(Some(Duration::from_secs(wait)));
    }
    // Empty: our finalizer goes, and with the last one, the namespace.
    let mut finalized = ns.clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    match api.replace_subresource(name, "finalize", &finalized).await {
        Ok(_) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Deletes everything in the namespace and counts what is left.
async fn delete_content(cx: &Context, ns: &str) -> Progress {
    let mut p = Progress::default();
    let resources = match dynamic::discover(&cx.client).await {
        Ok(all) => dynamic::preferred(&all),
        Err(e) => {
            p.discovery_failed = Some(e.to_string());
            return p;
        }
    };
    let background = DeleteOptions {
        propagation_policy: Some("Background".into()),
        ..Default::default()
    };
    let now = jiff::Timestamp::now();
    for r in resources
        .iter()
        .filter(|r| r.namespaced && r.supports(&["list"]) && r.supports(&["delete"]))
    {
        let api: Api<ObjectMetadata> = Api::dynamic(cx.client.clone(), r, Some(ns));
        let gr = group_resource(r);
        if r.supports(&["deletecollection"]) {
            if let Err(e) = api
                .delete_collection(&background, &ListParams::default())
                .await
            {
                p.failures.push(format!("{gr}: {e}"));
                continue;
            }
        }
        let left = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                p.failures.push(format!("{gr}: {e}"));
                continue;
            }
        };
        if !r.supports(&["deletecollection"]) {
            for o in &left {
                let name = o.metadata.name.as_deref().unwrap_or_default();
                match api.delete(name, Some(&background)).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => p.failures.push(format!("{gr}: {e}")),
                }
            }
        }
        if left.is_empty() {
            continue;
        }
        p.remaining.insert(gr, left.len());
        for o in &left {
            for f in o.metadata.finalizers.iter().flatten() {
                *p.finalizers.entry(f.clone()).or_default() += 1;
            }
            if let Some(t) = &o.metadata.deletion_timestamp {
                p.grace = p.grace.max(t.0.as_second() - now.as_second());
            }
        }
    }
    p
}

/// Writes the deletion conditions when they changed (lastTransitionTime moves only
/// when a condition's status does).
async fn update_conditions(
    api: &Api<Namespace>,
    ns: &Namespace,
    p: &Progress,
) -> Result<(), Error> {
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let mut conditions: Vec<NamespaceCondition> = old
        .iter()
        .filter(|c| !c.type_.starts_with("Namespace"))
        .cloned()
        .collect();
    for (type_, on, reason, message) in p.conditions() {
        let status = if on { "True" } else { "False" };
        let prev = old.iter().find(|c| c.type_ == type_);
        conditions.push(NamespaceCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: match prev {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Some(now.clone()),
            },
        });
    }
    if conditions == old {
        return Ok(());
    }
    let mut updated = ns.clone();
    updated
        .status
        .get_or_insert_with(Default::default)
        .conditions = Some(conditions);
    match api
        .replace_status(ns.metadata.name.as_deref().unwrap_or_default(), &updated)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_as_upstream_words_them() {
        let mut p = Progress::default();
        assert!(p.done());
        let c = p.conditions();
        assert_eq!(c.len(), 5);
        assert!(c.iter().all(|(_, on, _, _)| !on));
        assert_eq!(c[3].3, "All content successfully removed");
        p.remaining.insert("pods".into(), 2);
        p.remaining.insert("widgets.example.com".into(), 1);
        p.finalizers.insert("example.com/hold".into(), 1);
        assert!(!p.done());
        let c = p.conditions();
        assert_eq!(
            (c[3].0, c[3].1, c[3].2),
            ("NamespaceContentRemaining", true, "SomeResourcesRemain")
        );
        assert_eq!(
            c[3].3,
            "Some resources are remaining: pods has 2 resource instances, widgets.example.com has 1 resource instances"
        );
        assert_eq!(
            c[4].3,
            "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        );
    }
}
