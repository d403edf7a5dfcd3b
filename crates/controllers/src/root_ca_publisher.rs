//! The root CA certificate publisher: every namespace has the `kube-root-ca.crt`
//! ConfigMap holding the cluster's CA bundle under `ca.crt` (what pods use to verify
//! kube-apiserver), put back when it is changed or deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::serviceaccount::{namespace_of, namespace_terminating};
use crate::{Context, Error, InformerFactory, Runner};

/// The ConfigMap's name.
pub const CONFIG_MAP: &str = "kube-root-ca.crt";

const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Registers the informers; the runner syncs namespaces with one worker. Needs the
/// CA bundle.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let Some(root_ca) = cx.root_ca.clone() else {
        return Err(
            "the root CA certificate publisher needs --root-ca-file or a CA in --kubeconfig".into(),
        );
    };
    let queue: WorkQueue<String> = WorkQueue::new();
    crate::queue_namespaces(informers, &queue);
    let config_maps = {
        let inf = informers.informer::<ConfigMap>();
        let q = queue.clone();
        inf.on_event(move |e| {
            let cm = match e {
                Event::Updated(_, cm) | Event::Deleted(cm) => cm,
                Event::Added(_) => return,
            };
            if cm.metadata.name.as_deref() == Some(CONFIG_MAP) {
                q.add(namespace_of(&cm.metadata));
            }
        });
        inf.store()
    };
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        root_ca,
        config_maps,
    });
    Ok(Runner::new("root_ca_cert_publisher", queue, 1, move |ns| {
        let sync = sync.clone();
        async move { sync.sync(&ns).await }
    }))
}

struct Sync {
    cx: Context,
    root_ca: Arc<str>,
    config_maps: Store<ConfigMap>,
}

impl Sync {
    /// Creates the ConfigMap, or puts back its data and description.
    async fn sync(&self, ns: &str) -> Result<(), Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.cx.client.clone(), ns);
        let data = BTreeMap::from([("ca.crt".to_string(), self.root_ca.to_string())]);
        let Some(current) = self.config_maps.get(&format!("{ns}/{CONFIG_MAP}")) else {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.into()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_string(),
                        DESCRIPTION.to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            return match api.create(&cm).await {
                Ok(_) => Ok(()),
                // The namespace is gone or going: nothing to publish. (Already there means
                // the cache is behind: the retry reads it again and checks its content.)
                Err(e) if e.is_not_found() || namespace_terminating(&e) => Ok(()),
                Err(e) => Err(e.into()),
            };
        };
        let described = current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
            .is_some_and(|d| !d.is_empty());
        if current.data.as_ref() == Some(&data) && described {
            return Ok(());
        }
        let mut cm = (*current).clone();
        cm.data = Some(data);
        cm.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
        match api.replace(CONFIG_MAP, &cm).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
