//! The ServiceAccount controller: every active namespace has the `default`
//! ServiceAccount, made again if it is deleted.

use std::sync::Arc;

use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{Context, Error, InformerFactory, Runner};

/// The accounts every namespace gets.
pub const ACCOUNTS: [&str; 1] = ["default"];

/// Whether a write was refused because its namespace is being deleted.
pub(crate) fn namespace_terminating(e: &ferrokube_client::Error) -> bool {
    match e {
        ferrokube_client::Error::Api(s) => s
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.reason.as_deref() == Some("NamespaceTerminating"))
            }),
        _ => false,
    }
}

/// The namespace of a namespaced object.
pub(crate) fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_default()
}

/// Registers the informers; the runner syncs namespaces with one worker.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    crate::queue_namespaces(informers, &queue);
    let namespaces = informers.informer::<Namespace>().store();
    let accounts = {
        let inf = informers.informer::<ServiceAccount>();
        let q = queue.clone();
        inf.on_event(move |e| {
            if let Event::Deleted(sa) = e {
                if ACCOUNTS.contains(&sa.metadata.name.as_deref().unwrap_or_default()) {
                    q.add(namespace_of(&sa.metadata));
                }
            }
        });
        inf.store()
    };
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        namespaces,
        accounts,
    });
    Ok(Runner::new("serviceaccount", queue, 1, move |ns| {
        let sync = sync.clone();
        async move { sync.sync(&ns).await }
    }))
}

struct Sync {
    cx: Context,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
}

impl Sync {
    /// Makes the missing accounts of an active namespace.
    async fn sync(&self, ns: &str) -> Result<(), Error> {
        let Some(namespace) = self.namespaces.get(ns) else {
            return Ok(());
        };
        let active = namespace.metadata.deletion_timestamp.is_none()
            && namespace
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|p| p == "Active");
        if !active {
            return Ok(());
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.cx.client.clone(), ns);
        for name in ACCOUNTS {
            if self.accounts.get(&format!("{ns}/{name}")).is_some() {
                continue;
            }
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&sa).await {
                Ok(_) => tracing::info!(namespace = ns, name, "created service account"),
                Err(e) if e.is_conflict() || namespace_terminating(&e) || e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
