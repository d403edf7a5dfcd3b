//! Where a backend's traffic goes: like ingress-nginx, straight to the Service's ready
//! endpoints (from its EndpointSlices, the port named as the Service port), not through
//! the ClusterIP; an ExternalName Service's traffic goes to its external name at the
//! port's number. Requests take the endpoints round-robin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ferrokube_api::endpointslice::service_of;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::routes::{Backend, ServicePortRef};

/// Where one backend's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Ready endpoints (none: the Service has no ready endpoint, 503).
    Endpoints(Vec<SocketAddr>),
    /// An ExternalName Service: a DNS name and port.
    External(String, u16),
    /// Why the backend cannot be reached (no such Service or port).
    Unresolved(String),
}

/// A backend's targets and its round-robin position.
#[derive(Debug)]
pub struct Upstream {
    pub targets: Targets,
    next: AtomicUsize,
}

impl Upstream {
    /// Up to `n` endpoints to try for one request, starting with the next in turn.
    pub fn pick(&self, n: usize) -> Vec<SocketAddr> {
        let Targets::Endpoints(eps) = &self.targets else {
            return Vec::new();
        };
        if eps.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n.min(eps.len()))
            .map(|i| eps[(start + i) % eps.len()])
            .collect()
    }
}

/// Every routed backend's upstream.
#[derive(Debug, Default)]
pub struct Upstreams(HashMap<Backend, Arc<Upstream>>);

impl Upstreams {
    /// Resolves `backends` against the Services and EndpointSlices; each keeps its turn
    /// from `previous` (the table being replaced).
    pub fn build<'a>(
        backends: impl IntoIterator<Item = &'a Backend>,
        services: impl Fn(&str, &str) -> Option<Arc<Service>>,
        slices: &[Arc<EndpointSlice>],
        previous: &Upstreams,
    ) -> Upstreams {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            if let Some(key) = service_of(s) {
                by_service.entry(key).or_default().push(s);
            }
        }
        let mut out = HashMap::new();
        for b in backends {
            let targets = match services(&b.namespace, &b.service) {
                None => {
                    Targets::Unresolved(format!("service {}/{} not found", b.namespace, b.service))
                }
                Some(svc) => resolve(
                    b,
                    &svc,
                    by_service
                        .get(&(b.namespace.as_str(), b.service.as_str()))
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                ),
            };
            let turn = previous
                .get(b)
                .map_or(0, |u| u.next.load(Ordering::Relaxed));
            out.insert(
                b.clone(),
                Arc::new(Upstream {
                    targets,
                    next: AtomicUsize::new(turn),
                }),
            );
        }
        Upstreams(out)
    }

    /// The upstream of a routed backend.
    pub fn get(&self, b: &Backend) -> Option<&Arc<Upstream>> {
        self.0.get(b)
    }
}

fn resolve(b: &Backend, svc: &Service, slices: &[&EndpointSlice]) -> Targets {
    let spec = svc.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let port = ports.iter().find(|p| match &b.port {
        ServicePortRef::Number(n) => p.port == *n,
        ServicePortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
    });
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        let name = spec
            .and_then(|s| s.external_name.clone())
            .unwrap_or_default();
        // An ExternalName Service needs no ports: a numbered backend port is the port.
        let number = port.map(|p| p.port).or(match b.port {
            ServicePortRef::Number(n) => Some(n),
            ServicePortRef::Name(_) => None,
        });
        return match number.and_then(|n| u16::try_from(n).ok()) {
            Some(n) if !name.is_empty() => Targets::External(name, n),
            _ => Targets::Unresolved(format!(
                "service {}/{} has no port {:?}",
                b.namespace, b.service, b.port
            )),
        };
    }
    let Some(port) = port else {
        return Targets::Unresolved(format!(
            "service {}/{} has no port {:?}",
            b.namespace, b.service, b.port
        ));
    };
    if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
        return Targets::Unresolved(format!(
            "service {}/{} port {} is not TCP",
            b.namespace, b.service, port.port
        ));
    }
    let port_name = port.name.as_deref().unwrap_or_default();
    let mut addrs = Vec::new();
    for s in slices {
        let Some(number) = s
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p.port)
            .and_then(|n| u16::try_from(n).ok())
        else {
            continue;
        };
        for e in &s.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            if let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) {
                addrs.push(SocketAddr::new(ip, number));
            }
        }
    }
    addrs.sort();
    addrs.dedup();
    Targets::Endpoints(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(svc: &str, port: ServicePortRef) -> Backend {
        Backend {
            namespace: "web".into(),
            service: svc.into(),
            port,
        }
    }

    #[test]
    fn ready_endpoints_of_the_named_port_round_robin() {
        let svc: Service = serde_norway::from_str(
            "metadata: {name: app, namespace: web}
spec:
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: admin, port: 9000}",
        )
        .unwrap();
        let ext: Service = serde_norway::from_str(
            "metadata: {name: ext, namespace: web}
spec: {type: ExternalName, externalName: db.example.com}",
        )
        .unwrap();
        let slice: EndpointSlice = serde_norway::from_str(
            "metadata: {name: app-1, namespace: web, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: admin, port: 9000, protocol: TCP}]
endpoints:
- {addresses: [10.0.0.2], conditions: {ready: true}}
- {addresses: [10.0.0.1]}
- {addresses: [10.0.0.3], conditions: {ready: false}}",
        )
        .unwrap();
        let other: EndpointSlice = serde_norway::from_str(
            "metadata: {name: other-1, namespace: web, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{name: http, port: 1, protocol: TCP}]
endpoints: [{addresses: [10.9.9.9]}]",
        )
        .unwrap();
        let (svc, ext) = (Arc::new(svc), Arc::new(ext));
        let services = |ns: &str, name: &str| match (ns, name) {
            ("web", "app") => Some(svc.clone()),
            ("web", "ext") => Some(ext.clone()),
            _ => None,
        };
        let by_number = backend("app", ServicePortRef::Number(80));
        let by_name = backend("app", ServicePortRef::Name("admin".into()));
        let wrong_port = backend("app", ServicePortRef::Number(81));
        let missing = backend("gone", ServicePortRef::Number(80));
        let external = backend("ext", ServicePortRef::Number(5432));
        let all = [&by_number, &by_name, &wrong_port, &missing, &external];
        let slices = [Arc::new(slice), Arc::new(other)];
        let u = Upstreams::build(all, services, &slices, &Upstreams::default());
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            u.get(&by_number).unwrap().targets,
            Targets::Endpoints(vec![addr("10.0.0.1:8080"), addr("10.0.0.2:8080")])
        );
        assert_eq!(
            u.get(&by_name).unwrap().targets,
            Targets::Endpoints(vec![addr("10.0.0.1:9000"), addr("10.0.0.2:9000")])
        );
        assert!(matches!(
            u.get(&wrong_port).unwrap().targets,
            Targets::Unresolved(_)
        ));
        assert_eq!(
            u.get(&missing).unwrap().targets,
            Targets::Unresolved("service web/gone not found".into())
        );
        assert_eq!(
            u.get(&external).unwrap().targets,
            Targets::External("db.example.com".into(), 5432)
        );
        // Round-robin, with the others to retry after the first.
        let up = u.get(&by_number).unwrap();
        assert_eq!(up.pick(3), [addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]);
        assert_eq!(up.pick(1), [addr("10.0.0.2:8080")]);
        assert_eq!(up.pick(1), [addr("10.0.0.1:8080")]);
        assert!(u.get(&external).unwrap().pick(3).is_empty());
        // A rebuilt table keeps each backend's turn.
        let again = Upstreams::build([&by_number], services, &slices, &u);
        assert_eq!(
            again.get(&by_number).unwrap().pick(1),
            [addr("10.0.0.2:8080")]
        );
    }
}
