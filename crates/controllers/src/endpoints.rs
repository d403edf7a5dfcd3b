//! The endpoints controller (upstream's `endpoints-controller`): the Endpoints of every
//! Service with a selector — one address per pod the selector matches that has an IP,
//! is not finished and (unless `publishNotReadyAddresses`) not terminating; Ready pods
//! (or all, with `publishNotReadyAddresses`) under `addresses`, the others under
//! `notReadyAddresses`; each Service port resolved per pod (a named `targetPort` is the
//! pod's container port of that name and protocol, a pod without it is left out of that
//! port); addresses with the same ports share a subset. A headless Service without
//! ports gets port-less addresses. The Endpoints carry the Service's labels (and
//! `service.kubernetes.io/headless` for headless ones) and go with the Service;
//! Services without a selector are left alone (their Endpoints are the user's). More
//! than 1 000 addresses are truncated, marked `endpoints.kubernetes.io/over-capacity`.
//!
//! What a pod contributes is shared with the EndpointSlice controller.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::ownership::{key, object_key};
use crate::pod_status::{is_ready, phase};
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "endpoint";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
const MAX_CAPACITY: usize = 1000;

/// Whether a pod has a place among a Service's endpoints (upstream's
/// `ShouldPodBeInEndpoints`).
pub fn pod_in_endpoints(p: &Pod, include_terminating: bool) -> bool {
    if matches!(phase(p), "Succeeded" | "Failed") {
        return false;
    }
    let st = p.status.as_ref();
    let has_ip = st
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|i| !i.is_empty())
        || st
            .and_then(|s| s.pod_ips.as_ref())
            .is_some_and(|v| !v.is_empty());
    has_ip && (include_terminating || p.metadata.deletion_timestamp.is_none())
}

/// The pod's IPv4 address (the address family ferrokube's Services have).
pub fn pod_ip(p: &Pod) -> Option<String> {
    let st = p.status.as_ref()?;
    st.pod_ips
        .iter()
        .flatten()
        .map(|i| i.ip.clone())
        .chain(st.pod_ip.clone())
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
}

/// The port a Service port reaches on a pod (upstream's `FindPort`): a number as it is,
/// a name as the pod's container (or sidecar) port of that name and protocol.
pub fn find_port(p: &Pod, sp: &ServicePort) -> Option<i32> {
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
    match sp.target_port.as_ref() {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = p.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|cp| cp.container_port)
        }
    }
}

/// Whether a pod's hostname names it under the Service (`<hostname>.<svc>.<ns>...`).
pub fn sets_hostname(p: &Pod, svc: &Service) -> bool {
    let spec = p.spec.as_ref();
    spec.and_then(|s| s.hostname.as_deref())
        .is_some_and(|h| !h.is_empty())
        && spec.and_then(|s| s.subdomain.as_deref()) == svc.metadata.name.as_deref()
        && p.metadata.namespace == svc.metadata.namespace
}

/// Whether a Service has no cluster IP (headless).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The pods a Service's selector matches (none without a selector).
pub fn selected_pods(svc: &Service, pods: &Store<Pod>) -> Option<Vec<Arc<Pod>>> {
    let sel = svc.spec.as_ref()?.selector.clone()?;
    let ns = svc.metadata.namespace.clone();
    Some(
        pods.list()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace == ns && {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                }
            })
            .collect(),
    )
}

/// The reference an endpoint makes to its pod.
pub fn pod_ref(p: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Queues a Service's key for each pod event whose pod a Service selects (before or
/// after the change), and for each Service event.
pub fn register(
    informers: &mut InformerFactory,
    queue: &WorkQueue<String>,
) -> (Store<Service>, Store<Pod>) {
    let services = crate::queue_own::<Service>(informers, queue);
    let pods = {
        let inf = informers.informer::<Pod>();
        let (q, services) = (queue.clone(), services.clone());
        inf.on_event(move |e| {
            let notify = |p: &Pod| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                for s in services.list() {
                    let sel = s.spec.as_ref().and_then(|sp| sp.selector.as_ref());
                    if s.metadata.namespace == p.metadata.namespace
                        && sel.is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
                    {
                        q.add(object_key(&s.metadata));
                    }
                }
            };
            match e {
                Event::Added(p) | Event::Deleted(p) => notify(p),
                Event::Updated(old, p) => {
                    // Only what endpoints show matters.
                    let view = |p: &Pod| {
                        (
                            p.metadata.labels.clone(),
                            p.metadata.deletion_timestamp.clone(),
                            p.status
                                .as_ref()
                                .map(|s| (s.pod_ip.clone(), s.phase.clone())),
                            is_ready(p),
                            p.spec
                                .as_ref()
                                .map(|s| (s.node_name.clone(), s.hostname.clone())),
                        )
                    };
                    if view(old) != view(p) {
                        if old.metadata.labels != p.metadata.labels {
                            notify(old);
                        }
                        notify(p);
                    }
                }
            }
        });
        inf.store()
    };
    (services, pods)
}

/// Registers the informers; the runner keeps Services' Endpoints.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let (services, pods) = register(informers, &queue);
    let endpoints = informers.informer::<Endpoints>().store();
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        services,
        pods,
        endpoints,
    });
    Ok(Runner::new(QUEUE, queue, 5, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

struct Sync {
    cx: Context,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
}

/// The subsets of a Service's Endpoints from its pods (upstream's `syncService` and
/// `RepackSubsets`), and whether addresses were left out past the capacity.
pub fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> (Vec<EndpointSubset>, bool) {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let ports = spec.ports.clone().unwrap_or_default();
    // Port list (as a key) → (ready, not ready) addresses.
    type Groups = BTreeMap<
        String,
        (
            Vec<EndpointPort>,
            Vec<EndpointAddress>,
            Vec<EndpointAddress>,
        ),
    >;
    let mut groups: Groups = BTreeMap::new();
    let mut add = |eps: Vec<EndpointPort>, a: EndpointAddress, ready: bool| {
        let k = serde_json::to_string(&eps).unwrap_or_default();
        let g = groups.entry(k).or_insert_with(|| (eps, vec![], vec![]));
        if ready {
            g.1.push(a);
        } else {
            g.2.push(a);
        }
    };
    for p in pods {
        if !pod_in_endpoints(p, publish) {
            continue;
        }
        let Some(ip) = pod_ip(p) else { continue };
        let address = EndpointAddress {
            ip,
            hostname: sets_hostname(p, svc)
                .then(|| p.spec.as_ref().and_then(|s| s.hostname.clone()))
                .flatten(),
            node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(p)),
        };
        let ready = publish || is_ready(p);
        if ports.is_empty() {
            if is_headless(svc) {
                add(vec![], address, ready);
            }
            continue;
        }
        for sp in &ports {
            let Some(port) = find_port(p, sp) else {
                continue;
            };
            let ep = EndpointPort {
                name: sp.name.clone(),
                port,
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            };
            add(vec![ep], address.clone(), ready);
        }
    }
    // Repack: addresses with the same set of ports share one subset.
    let mut by_address: BTreeMap<(String, bool), (EndpointAddress, Vec<EndpointPort>)> =
        BTreeMap::new();
    for (_, (eps, ready, not_ready)) in groups {
        for (list, r) in [(ready, true), (not_ready, false)] {
            for a in list {
                let uid = a
                    .target_ref
                    .as_ref()
                    .and_then(|t| t.uid.clone())
                    .unwrap_or_default();
                let e = by_address
                    .entry((format!("{}/{uid}", a.ip), r))
                    .or_insert_with(|| (a.clone(), vec![]));
                e.1.extend(eps.iter().cloned());
            }
        }
    }
    let mut packed: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    let truncated = by_address.len() > MAX_CAPACITY;
    for ((_, ready), (a, mut eps)) in by_address.into_iter().take(MAX_CAPACITY) {
        eps.sort_by(|x, y| (&x.name, x.port).cmp(&(&y.name, y.port)));
        let k = serde_json::to_string(&eps).unwrap_or_default();
        let s = packed.entry(k).or_insert_with(|| EndpointSubset {
            ports: (!eps.is_empty()).then(|| eps.clone()),
            ..Default::default()
        });
        let list = if ready {
            s.addresses.get_or_insert_with(Vec::new)
        } else {
            s.not_ready_addresses.get_or_insert_with(Vec::new)
        };
        list.push(a);
    }
    (packed.into_values().collect(), truncated)
}

impl Sync {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let (ns, name) = k.split_once('/').unwrap_or(("", k));
        let api: Api<Endpoints> = Api::namespaced(self.cx.client.clone(), ns);
        let Some(svc) = self.services.get(k) else {
            // The Service is gone: so are its Endpoints.
            if self.endpoints.get(k).is_some() {
                match api.delete(name, None).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        };
        if svc.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(pods) = selected_pods(&svc, &self.pods) else {
            // No selector: the Endpoints are the user's.
            return Ok(());
        };
        let (subsets, truncated) = subsets(&svc, &pods);
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        if is_headless(&svc) {
            labels.insert(HEADLESS_LABEL.into(), String::new());
        } else {
            labels.remove(HEADLESS_LABEL);
        }
        // From the cache; from the server when the cache is behind (a create or a
        // replace that lost a race), a bounded number of times.
        let mut current: Option<Endpoints> = self.endpoints.get(&key(ns, name)).as_deref().cloned();
        for _ in 0..3 {
            let mut want = current.clone().unwrap_or_else(|| Endpoints {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            });
            want.subsets = (!subsets.is_empty()).then(|| subsets.clone());
            want.metadata.labels = (!labels.is_empty()).then(|| labels.clone());
            let annotations = want
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            if truncated {
                annotations.insert(OVER_CAPACITY.into(), "truncated".into());
            } else {
                annotations.remove(OVER_CAPACITY);
            }
            if annotations.is_empty() {
                want.metadata.annotations = None;
            }
            let written = match &current {
                Some(cur) if *cur == want => return Ok(()),
                Some(_) => api.replace(name, &want).await,
                None => api.create(&want).await,
            };
            match written {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() && current.is_some() => return Ok(()),
                Err(e) if e.is_conflict() || e.is_already_exists() => {
                    current = api.get_opt(name).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Sync(format!("endpoints {k} kept changing")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, ports: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ip,
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
            }))
            .unwrap(),
        )
    }

    fn svc(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20", "ports": ports},
        }))
        .unwrap()
    }

    #[test]
    fn ready_and_not_ready_with_named_ports() {
        let s = svc(json!([{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]));
        let named = json!([{"name": "web", "containerPort": 8080}]);
        let pods = [
            pod("a", "10.244.0.2", true, named.clone()),
            pod("b", "10.244.0.3", false, named),
            // No port of that name: left out of the port.
            pod("c", "10.244.0.4", true, json!([])),
        ];
        let (subs, truncated) = subsets(&s, &pods);
        assert!(!truncated);
        assert_eq!(subs.len(), 1);
        let sub = &subs[0];
        assert_eq!(sub.ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(sub.addresses.as_ref().unwrap()[0].ip, "10.244.0.2");
        assert_eq!(
            sub.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.244.0.3"
        );
        assert_eq!(
            sub.addresses.as_ref().unwrap()[0]
                .target_ref
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn pods_with_other_ports_get_other_subsets_and_publish_not_ready() {
        let mut s =
            svc(json!([{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]));
        let pods = [
            pod(
                "a",
                "10.244.0.2",
                false,
                json!([{"name": "web", "containerPort": 8080}]),
            ),
            pod(
                "b",
                "10.244.0.3",
                true,
                json!([{"name": "web", "containerPort": 9090}]),
            ),
        ];
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let (subs, _) = subsets(&s, &pods);
        assert_eq!(subs.len(), 2);
        assert!(subs.iter().all(|s| s.not_ready_addresses.is_none()));
    }

    #[test]
    fn headless_without_ports_and_finished_pods() {
        let mut s = svc(json!(null));
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let mut done = (*pod("d", "10.244.0.9", true, json!([]))).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = [pod("a", "10.244.0.2", true, json!([])), Arc::new(done)];
        let (subs, _) = subsets(&s, &pods);
        assert_eq!(subs.len(), 1);
        assert!(subs[0].ports.is_none());
        assert_eq!(subs[0].addresses.as_ref().unwrap().len(), 1);
    }
}
