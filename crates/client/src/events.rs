//! Events about pods and nodes, as upstream's components record them (the kubelet's
//! `Pulled`, `Started`, `BackOff`, ...; the scheduler's `Scheduled`, `FailedScheduling`):
//! core `v1` Events named `<object>.<hex nanoseconds>`, a repeat of the same event within
//! ten minutes counted on the first one instead of written again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Api, Client, Patch};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::json;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// An event written recently: its name, count and when it was first written.
struct Seen {
    name: String,
    count: i32,
    first: Instant,
}

/// Records the events of one component.
pub struct Recorder {
    client: Client,
    /// The reporting component (`kubelet`, `default-scheduler`).
    component: String,
    /// The host it runs on (the kubelet's node name).
    host: String,
    /// Its reporting instance (`<component>-<host>` but for the kubelet: the node).
    instance: String,
    /// The action of `events.k8s.io` Events (the scheduler's `Scheduling`).
    action: Option<String>,
    /// By (pod uid, reason, message).
    seen: Mutex<HashMap<(String, String, String), Seen>>,
}

const REPEAT_WINDOW: Duration = Duration::from_secs(600);

impl Recorder {
    /// The kubelet's recorder, on node `host`.
    pub fn new(client: Client, host: &str) -> Recorder {
        Recorder {
            client,
            component: "kubelet".into(),
            host: host.into(),
            instance: host.into(),
            action: None,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The recorder of a control-plane component (`default-scheduler`) on `host`, whose
    /// events carry `action` (none when empty).
    pub fn for_component(client: Client, component: &str, host: &str, action: &str) -> Recorder {
        Recorder {
            client,
            component: component.into(),
            host: host.into(),
            instance: format!("{component}-{host}"),
            action: (!action.is_empty()).then(|| action.into()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about a pod (a container of it when `container` is given).
    pub async fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
        };
        self.emit(&ns, involved, kind, reason, message).await;
    }

    /// Records an event about this kubelet's Node (in `default`, with the node's name as
    /// its UID, as upstream's kubelet refers to its node).
    pub async fn node(&self, kind: Kind, reason: &str, message: &str) {
        let involved = ObjectReference {
            kind: Some("Node".into()),
            name: Some(self.host.clone()),
            uid: Some(self.host.clone()),
            ..Default::default()
        };
        self.emit("default", involved, kind, reason, message).await;
    }

    /// Records an event about any object (`involved`), in `ns`.
    pub async fn object(
        &self,
        ns: &str,
        involved: ObjectReference,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        self.emit(ns, involved, kind, reason, message).await;
    }

    async fn emit(
        &self,
        ns: &str,
        involved: ObjectReference,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        let uid = involved.uid.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let now = Time(jiff::Timestamp::now());
        let key = (uid.clone(), reason.to_string(), message.to_string());
        let repeat = {
            let mut seen = self.seen.lock().expect("events lock");
            seen.retain(|_, v| v.first.elapsed() < REPEAT_WINDOW);
            seen.get_mut(&key).map(|v| {
                v.count += 1;
                (v.name.clone(), v.count)
            })
        };
        if let Some((name, count)) = repeat {
            let patch = json!({"count": count, "lastTimestamp": now});
            if api.patch(&name, &Patch::Merge(patch)).await.is_ok() {
                return;
            }
        }
        let nanos = jiff::Timestamp::now().as_nanosecond();
        let name = format!("{}.{nanos:x}", involved.name.as_deref().unwrap_or_default());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.into()),
            message: Some(message.into()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: Some(self.host.clone()),
            }),
            action: self.action.clone(),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            type_: Some(match kind {
                Kind::Normal => "Normal".into(),
                Kind::Warning => "Warning".into(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        match api.create(&event).await {
            Ok(_) => {
                self.seen.lock().expect("events lock").insert(
                    key,
                    Seen {
                        name,
                        count: 1,
                        first: Instant::now(),
                    },
                );
            }
            Err(e) => tracing::debug!("recording event {reason}: {e}"),
        }
    }
}
