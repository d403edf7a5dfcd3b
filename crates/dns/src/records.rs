//! The cluster's DNS data, read from Services and EndpointSlices as the Kubernetes DNS
//! specification lays it out (what CoreDNS's `kubernetes` plugin serves):
//!
//! - `<svc>.<ns>.svc.<zone>`: A of the cluster IP; for a headless Service, A of every
//!   ready endpoint; for an ExternalName Service, a CNAME;
//! - `<hostname>.<svc>.<ns>.svc.<zone>`: A of a headless Service's endpoint (its
//!   `hostname`, else its address with dashes);
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV of named ports;
//! - `<a-b-c-d>.<ns>.pod.<zone>`: A of the address itself ("pods insecure");
//! - PTR of cluster IPs and of headless endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ferrokube_api::endpointslice::service_of;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// What a Service name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    ClusterIp(Ipv4Addr),
    /// Headless: the ready endpoints, by host label.
    Headless(BTreeMap<String, Ipv4Addr>),
    ExternalName(String),
}

/// One Service as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub target: Target,
    /// Named ports: (name, lower-case protocol, port).
    pub ports: Vec<(String, String, u16)>,
}

/// Everything the server answers from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    /// (namespace, name) → record.
    pub services: HashMap<(String, String), ServiceRecord>,
    /// Namespaces that have Services (their `<ns>.svc.<zone>` exists).
    pub namespaces: BTreeSet<String>,
    /// Reverse lookups: address → names (without the zone).
    pub reverse: HashMap<Ipv4Addr, Vec<String>>,
}

/// An endpoint's host label: its `hostname`, else its address with dashes.
fn host_label(hostname: Option<&str>, ip: Ipv4Addr) -> String {
    match hostname {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => ip.to_string().replace('.', "-"),
    }
}

impl Records {
    /// Builds the records from every Service and EndpointSlice.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Records {
        // Ready IPv4 endpoints of each Service, by host label.
        let mut endpoints: HashMap<(String, String), BTreeMap<String, (Ipv4Addr, bool)>> =
            HashMap::new();
        for s in slices {
            let Some((ns, svc)) = service_of(s) else {
                continue;
            };
            let entry = endpoints
                .entry((ns.to_string(), svc.to_string()))
                .or_default();
            for e in &s.endpoints {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                    continue;
                };
                let label = host_label(e.hostname.as_deref(), ip);
                entry.insert(
                    label,
                    (ip, e.hostname.as_deref().is_some_and(|h| !h.is_empty())),
                );
            }
        }
        let mut out = Records::default();
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
                svc.spec.as_ref(),
            ) else {
                continue;
            };
            let key = (ns.to_string(), name.to_string());
            let fqdn = format!("{name}.{ns}.svc");
            let target = if spec.type_.as_deref() == Some("ExternalName") {
                Target::ExternalName(spec.external_name.clone().unwrap_or_default())
            } else if spec.cluster_ip.as_deref() == Some("None") {
                let eps = endpoints.remove(&key).unwrap_or_default();
                for (label, (ip, named)) in &eps {
                    if *named {
                        out.reverse
                            .entry(*ip)
                            .or_default()
                            .push(format!("{label}.{fqdn}"));
                    }
                }
                Target::Headless(eps.into_iter().map(|(l, (ip, _))| (l, ip)).collect())
            } else {
                match spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()) {
                    Some(ip) => {
                        out.reverse.entry(ip).or_default().push(fqdn.clone());
                        Target::ClusterIp(ip)
                    }
                    None => continue,
                }
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let name = p.name.clone().filter(|n| !n.is_empty())?;
                    let proto = p.protocol.as_deref().unwrap_or("TCP").to_lowercase();
                    Some((name, proto, u16::try_from(p.port).ok()?))
                })
                .collect();
            out.namespaces.insert(ns.to_string());
            out.services.insert(key, ServiceRecord { target, ports });
        }
        for names in out.reverse.values_mut() {
            names.sort();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_headless_endpoints_and_external_names() {
        let svcs: Vec<Service> = serde_norway::from_str(
            "
- metadata: {name: web, namespace: default}
  spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}, {port: 81}]}
- metadata: {name: db, namespace: prod}
  spec: {clusterIP: None, ports: [{name: mysql, port: 3306}]}
- metadata: {name: ext, namespace: default}
  spec: {type: ExternalName, externalName: db.example.com}
",
        )
        .unwrap();
        let slices: Vec<EndpointSlice> = serde_norway::from_str(
            "
- metadata: {name: db-1, namespace: prod, labels: {kubernetes.io/service-name: db}}
  addressType: IPv4
  endpoints:
  - {addresses: [10.244.1.5], hostname: db-0, conditions: {ready: true}}
  - {addresses: [10.244.1.6], conditions: {ready: true}}
  - {addresses: [10.244.1.7], hostname: db-2, conditions: {ready: false}}
",
        )
        .unwrap();
        let r = Records::build(&svcs, &slices);
        let web = &r.services[&("default".into(), "web".into())];
        assert_eq!(web.target, Target::ClusterIp(Ipv4Addr::new(10, 96, 0, 20)));
        assert_eq!(web.ports, vec![("http".into(), "tcp".into(), 80)]);
        let db = &r.services[&("prod".into(), "db".into())];
        let Target::Headless(eps) = &db.target else {
            panic!("{db:?}")
        };
        assert_eq!(
            eps.keys().cloned().collect::<Vec<_>>(),
            ["10-244-1-6", "db-0"],
            "not-ready endpoints left out"
        );
        assert_eq!(
            r.reverse[&Ipv4Addr::new(10, 244, 1, 5)],
            ["db-0.db.prod.svc"]
        );
        assert_eq!(
            r.reverse[&Ipv4Addr::new(10, 96, 0, 20)],
            ["web.default.svc"]
        );
        assert_eq!(
            r.services[&("default".into(), "ext".into())].target,
            Target::ExternalName("db.example.com".into())
        );
        assert!(r.namespaces.contains("prod"));
    }
}
