//! The EndpointSlice controller (upstream's `endpointslice-controller`): the IPv4
//! EndpointSlices of every Service with a selector, named `<svc>-xxxxx`, labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by:
//! endpointslice-controller.k8s.io` (plus the Service's labels, and
//! `service.kubernetes.io/headless` for headless ones) and owned by the Service. Every
//! pod the selector matches with an IP and not finished is an endpoint — terminating
//! ones too, with conditions `ready` (serving and not terminating, or
//! `publishNotReadyAddresses`), `serving` and `terminating` —, with its node, zone,
//! hostname and pod reference; pods reaching the same ports share slices of at most
//! `--max-endpoints-per-slice` (100) endpoints, sorted by address. A Service with no
//! endpoints keeps one empty slice, as upstream. Slices are written only when they
//! change, and extra ones deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::endpoints::{
    find_port, is_headless, pod_in_endpoints, pod_ip, pod_ref, selected_pods, sets_hostname,
    HEADLESS_LABEL,
};
use crate::ownership;
use crate::pod_status::is_ready;
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "endpoint_slice";
pub use ferrokube_api::endpointslice::SERVICE_NAME_LABEL;
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Upstream's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Registers the informers; the runner keeps Services' EndpointSlices.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let (services, pods) = crate::endpoints::register(informers, &queue);
    let slices = register_slices(informers, &queue, MANAGED_BY);
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        services,
        pods,
        nodes: informers.informer::<Node>().store(),
        slices,
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
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
}

/// A Service's endpoints grouped by the ports they reach (sorted by address).
pub fn desired(
    svc: &Service,
    pods: &[Arc<Pod>],
    zone_of: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for p in pods {
        if !pod_in_endpoints(p, true) {
            continue;
        }
        let Some(ip) = pod_ip(p) else { continue };
        let ports: Vec<EndpointPort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                find_port(p, sp).map(|port| EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: Some(port),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        let serving = is_ready(p);
        let terminating = p.metadata.deletion_timestamp.is_some();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: sets_hostname(p, svc)
                .then(|| p.spec.as_ref().and_then(|s| s.hostname.clone()))
                .flatten(),
            zone: node.as_deref().and_then(&zone_of),
            node_name: node,
            target_ref: Some(pod_ref(p)),
            ..Default::default()
        };
        let k = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(k)
            .or_insert_with(|| (ports, vec![]))
            .1
            .push(endpoint);
    }
    for (_, eps) in groups.values_mut() {
        eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    }
    groups
}

impl Sync {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let (ns, name) = k.split_once('/').unwrap_or(("", k));
        let api: Api<EndpointSlice> = Api::namespaced(self.cx.client.clone(), ns);
        let ours = slices_of(&self.slices, ns, name, MANAGED_BY);
        let svc = self
            .services
            .get(k)
            .filter(|s| s.metadata.deletion_timestamp.is_none());
        let pods = svc.as_ref().and_then(|s| selected_pods(s, &self.pods));
        let (Some(svc), Some(pods)) = (svc, pods) else {
            // Gone, or without a selector: none of ours stay (the garbage collector
            // would take them with the Service too).
            for s in ours {
                delete_slice(&api, &s).await?;
            }
            return Ok(());
        };
        let nodes = &self.nodes;
        let zone_of = |n: &str| {
            nodes.get(n).and_then(|node| {
                node.metadata
                    .labels
                    .as_ref()?
                    .get("topology.kubernetes.io/zone")
                    .cloned()
            })
        };
        let mut groups: Groups = desired(&svc, &pods, zone_of)
            .into_iter()
            .map(|(_, (ports, eps))| (group_key("IPv4", &ports), ("IPv4".to_string(), ports, eps)))
            .collect();
        if groups.is_empty() {
            // The placeholder: one empty slice.
            groups.insert(String::new(), ("IPv4".into(), vec![], vec![]));
        }
        let template = SliceTemplate {
            generate_name: format!("{name}-"),
            namespace: ns.into(),
            labels: self.labels(&svc),
            annotations: None,
            owner: ownership::controller_ref::<Service>(&svc.metadata),
        };
        write_slices(&api, &template, groups, ours, MAX_ENDPOINTS_PER_SLICE).await
    }

    /// A slice's labels: the Service's (but the reserved ones), its name, the manager,
    /// and the headless mark.
    fn labels(&self, svc: &Service) -> BTreeMap<String, String> {
        let mut l = svc.metadata.labels.clone().unwrap_or_default();
        l.retain(|k, _| k != SERVICE_NAME_LABEL && k != MANAGED_BY_LABEL && k != HEADLESS_LABEL);
        l.insert(
            SERVICE_NAME_LABEL.into(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        l.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        if is_headless(svc) {
            l.insert(HEADLESS_LABEL.into(), String::new());
        }
        l
    }
}

/// Registers the EndpointSlice informer queueing the Service of every slice `manager`
/// manages (a slice of ours changed or deleted by someone else is put back); its store.
pub fn register_slices(
    informers: &mut InformerFactory,
    queue: &WorkQueue<String>,
    manager: &'static str,
) -> Store<EndpointSlice> {
    let inf = informers.informer::<EndpointSlice>();
    let q = queue.clone();
    inf.on_event(move |e| {
        let (ferrokube_client::informer::Event::Added(s)
        | ferrokube_client::informer::Event::Updated(_, s)
        | ferrokube_client::informer::Event::Deleted(s)) = e;
        let labels = s.metadata.labels.clone().unwrap_or_default();
        if labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(manager) {
            if let Some(svc) = labels.get(SERVICE_NAME_LABEL) {
                q.add(ownership::key(
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    svc,
                ));
            }
        }
    });
    inf.store()
}

/// The slices of Service `ns/name` that `manager` manages.
pub fn slices_of(
    slices: &Store<EndpointSlice>,
    ns: &str,
    name: &str,
    manager: &str,
) -> Vec<Arc<EndpointSlice>> {
    slices
        .list()
        .into_iter()
        .filter(|s| {
            let l = s.metadata.labels.clone().unwrap_or_default();
            s.metadata.namespace.as_deref() == Some(ns)
                && l.get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
                && l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(manager)
        })
        .collect()
}

/// Slices' desired contents: key (from [`group_key`], or "" for the placeholder) →
/// (address type, ports, endpoints).
pub type Groups = BTreeMap<String, (String, Vec<EndpointPort>, Vec<Endpoint>)>;

/// The key of the slices of one address type and port list.
pub fn group_key(address_type: &str, ports: &[EndpointPort]) -> String {
    format!(
        "{address_type}/{}",
        serde_json::to_string(ports).unwrap_or_default()
    )
}

/// What every slice of one owner carries.
pub struct SliceTemplate {
    pub generate_name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
}

/// Brings an owner's slices (`ours`) to `groups`: each group's endpoints in slices of at
/// most `max`, reusing the existing slices of the same key (in name order), rewriting
/// only those that differ, creating what is missing and deleting the rest.
pub async fn write_slices(
    api: &Api<EndpointSlice>,
    t: &SliceTemplate,
    groups: Groups,
    ours: Vec<Arc<EndpointSlice>>,
    max: usize,
) -> Result<(), Error> {
    let mut existing: BTreeMap<String, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
    for s in ours {
        let ports = s.ports.clone().unwrap_or_default();
        let key = if s.endpoints.is_empty() && ports.is_empty() {
            String::new()
        } else {
            group_key(&s.address_type, &ports)
        };
        existing.entry(key).or_default().push(s);
    }
    for v in existing.values_mut() {
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    for (key, (address_type, ports, endpoints)) in groups {
        let mut reuse = existing.remove(&key).unwrap_or_default().into_iter();
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![vec![]]
        } else {
            endpoints
                .chunks(max.max(1))
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        for chunk in chunks {
            let want_ports = Some(ports.clone());
            match reuse.next() {
                Some(cur) => {
                    if cur.endpoints == chunk
                        && cur.ports == want_ports
                        && cur.metadata.labels.as_ref() == Some(&t.labels)
                        && cur.metadata.annotations == t.annotations
                    {
                        continue;
                    }
                    let mut s = (*cur).clone();
                    s.endpoints = chunk;
                    s.ports = want_ports;
                    s.metadata.labels = Some(t.labels.clone());
                    s.metadata.annotations = t.annotations.clone();
                    match api
                        .replace(cur.metadata.name.as_deref().unwrap_or_default(), &s)
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let s = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(t.generate_name.clone()),
                            namespace: Some(t.namespace.clone()),
                            labels: Some(t.labels.clone()),
                            annotations: t.annotations.clone(),
                            owner_references: Some(vec![t.owner.clone()]),
                            ..Default::default()
                        },
                        address_type: address_type.clone(),
                        endpoints: chunk,
                        ports: want_ports,
                    };
                    api.create(&s).await?;
                }
            }
        }
        for extra in reuse {
            delete_slice(api, &extra).await?;
        }
    }
    for rest in existing.into_values().flatten() {
        delete_slice(api, &rest).await?;
    }
    Ok(())
}

/// Deletes a slice (gone already is fine).
pub async fn delete_slice(api: &Api<EndpointSlice>, s: &EndpointSlice) -> Result<(), Error> {
    match api
        .delete(s.metadata.name.as_deref().unwrap_or_default(), None)
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
    use serde_json::json;

    fn pod(i: usize, ready: bool, deleting: bool) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": format!("p{i}"), "namespace": "default", "uid": format!("u{i}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", i / 200, i % 200 + 2),
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn svc() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        }))
        .unwrap()
    }

    #[test]
    fn conditions_as_upstream() {
        let pods = [
            pod(0, true, false),
            pod(1, false, false),
            pod(2, true, true),
        ];
        let g = desired(&svc(), &pods, |_| Some("z1".into()));
        let (ports, eps) = g.values().next().unwrap();
        assert_eq!(ports[0].port, Some(8080));
        assert_eq!(ports[0].name.as_deref(), Some(""));
        let c = |i: usize| eps[i].conditions.clone().unwrap();
        assert_eq!(
            (c(0).ready, c(0).serving, c(0).terminating),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!((c(1).ready, c(1).serving), (Some(false), Some(false)));
        // Terminating but still serving: listed, not ready.
        assert_eq!(
            (c(2).ready, c(2).serving, c(2).terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(eps[0].zone.as_deref(), Some("z1"));
    }

    #[test]
    fn one_group_per_port_set_sorted_by_address() {
        let pods: Vec<Arc<Pod>> = (0..150).rev().map(|i| pod(i, true, false)).collect();
        let g = desired(&svc(), &pods, |_| None);
        assert_eq!(g.len(), 1);
        let (_, eps) = g.values().next().unwrap();
        assert_eq!(eps.len(), 150);
        assert!(eps.windows(2).all(|w| w[0].addresses <= w[1].addresses));
        assert_eq!(eps.chunks(MAX_ENDPOINTS_PER_SLICE).count(), 2);
    }
}
