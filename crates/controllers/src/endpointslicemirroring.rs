//! The EndpointSlice mirroring controller (upstream's
//! `endpointslice-mirroring-controller`): the Endpoints of a Service without a selector
//! (written by hand, like the seeds' external database) are mirrored into EndpointSlices
//! named `<endpoints>-xxxxx`, labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io`
//! (plus the Endpoints' labels), carrying its annotations (but the last-applied
//! configuration and the trigger time) and owned by the Endpoints: `addresses` as ready
//! endpoints, `notReadyAddresses` as not ready, one slice per subset's ports and
//! address family, at most 1 000 addresses per subset and 100 endpoints per slice.
//! Endpoints labelled `endpointslice.kubernetes.io/skip-mirror: "true"` (the
//! `kubernetes` Service's), and those of Services that have a selector, are not
//! mirrored; the mirrors go when the Endpoints or the Service do.

use std::net::IpAddr;
use std::sync::Arc;

use ferrokube_client::{Api, Store, WorkQueue};
use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};

use crate::endpointslice::{
    delete_slice, group_key, register_slices, slices_of, write_slices, Groups, SliceTemplate,
    MANAGED_BY_LABEL, MAX_ENDPOINTS_PER_SLICE, SERVICE_NAME_LABEL,
};
use crate::ownership;
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "endpoint_slice_mirroring";
pub const MANAGED_BY: &str = "endpointslicemirroring-controller.k8s.io";
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Upstream's `--mirroring-max-endpoints-per-subset` default.
const MAX_PER_SUBSET: usize = 1000;
/// Annotations not copied to the mirrors.
const NOT_MIRRORED: [&str; 2] = [
    "endpoints.kubernetes.io/last-change-trigger-time",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Registers the informers; the runner keeps the mirrors.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let queue: WorkQueue<String> = WorkQueue::new();
    let endpoints = crate::queue_own::<Endpoints>(informers, &queue);
    let services = crate::queue_own::<Service>(informers, &queue);
    let slices = register_slices(informers, &queue, MANAGED_BY);
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        endpoints,
        services,
        slices,
    });
    Ok(Runner::new(QUEUE, queue, 5, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

struct Sync {
    cx: Context,
    endpoints: Store<Endpoints>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

fn address_type(ip: &str) -> Option<&'static str> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some("IPv4"),
        IpAddr::V6(_) => Some("IPv6"),
    }
}

/// The mirrors' contents: per subset, its ports and address family.
pub fn desired(ep: &Endpoints) -> Groups {
    let mut groups = Groups::new();
    for sub in ep.subsets.iter().flatten() {
        let ports: Vec<EndpointPort> = sub
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let listed = sub
            .addresses
            .iter()
            .flatten()
            .map(|a| (a, true))
            .chain(sub.not_ready_addresses.iter().flatten().map(|a| (a, false)))
            .take(MAX_PER_SUBSET);
        for (a, ready) in listed {
            let Some(family) = address_type(&a.ip) else {
                continue;
            };
            let key = group_key(family, &ports);
            groups
                .entry(key)
                .or_insert_with(|| (family.to_string(), ports.clone(), vec![]))
                .2
                .push(endpoint(a, ready));
        }
    }
    groups
}

fn endpoint(a: &EndpointAddress, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![a.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..Default::default()
        }),
        hostname: a.hostname.clone(),
        node_name: a.node_name.clone(),
        target_ref: a.target_ref.clone(),
        ..Default::default()
    }
}

impl Sync {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let (ns, name) = k.split_once('/').unwrap_or(("", k));
        let api: Api<EndpointSlice> = Api::namespaced(self.cx.client.clone(), ns);
        let ours = slices_of(&self.slices, ns, name, MANAGED_BY);
        let svc = self.services.get(k);
        let ep = self.endpoints.get(k).filter(|ep| {
            let skip = ep
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SKIP_MIRROR))
                .is_some_and(|v| v == "true");
            let selectorless = svc.as_ref().is_some_and(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.selector.as_ref())
                    .is_none()
            });
            !skip && selectorless && ep.metadata.deletion_timestamp.is_none()
        });
        let Some(ep) = ep else {
            for s in ours {
                delete_slice(&api, &s).await?;
            }
            return Ok(());
        };
        let mut labels = ep.metadata.labels.clone().unwrap_or_default();
        labels.retain(|k, _| k != SERVICE_NAME_LABEL && k != MANAGED_BY_LABEL);
        labels.insert(SERVICE_NAME_LABEL.into(), name.into());
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let mut annotations = ep.metadata.annotations.clone().unwrap_or_default();
        annotations.retain(|k, _| !NOT_MIRRORED.contains(&k.as_str()));
        let template = SliceTemplate {
            generate_name: format!("{name}-"),
            namespace: ns.into(),
            labels,
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner: ownership::controller_ref::<Endpoints>(&ep.metadata),
        };
        write_slices(&api, &template, desired(&ep), ours, MAX_ENDPOINTS_PER_SLICE).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subsets_become_slices_per_family_and_ports() {
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "external-db", "namespace": "default"},
            "subsets": [
                {"addresses": [{"ip": "192.0.2.10"}, {"ip": "2001:db8::1"}],
                 "notReadyAddresses": [{"ip": "192.0.2.11"}],
                 "ports": [{"port": 3306}]},
                {"addresses": [{"ip": "192.0.2.12"}], "ports": [{"name": "admin", "port": 33060}]},
                {"addresses": [{"ip": "not-an-ip"}]}
            ]
        }))
        .unwrap();
        let g = desired(&ep);
        assert_eq!(g.len(), 3);
        let v4: Vec<_> = g
            .values()
            .filter(|(t, p, _)| t == "IPv4" && p[0].port == Some(3306))
            .collect();
        let eps = &v4[0].2;
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].conditions.as_ref().unwrap().ready, Some(false));
        assert!(g.values().any(|(t, _, _)| t == "IPv6"));
    }
}
