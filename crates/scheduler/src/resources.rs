//! Resource arithmetic as the scheduler does it: what a pod requests (containers summed,
//! init containers as their peak, sidecars added, overhead on top), what a node can
//! give (allocatable), and the "non-zero" requests scoring uses for pods that request
//! nothing.

use std::collections::BTreeMap;

use ferrokube_api::quantity::Quantity;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

/// CPU assumed for a container without a CPU request, when scoring (upstream's 100m).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory assumed for a container without a memory request, when scoring (200Mi).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended resources and hugepages, by name.
    pub scalar: BTreeMap<String, i64>,
}

fn amount(name: &str, q: &ApiQuantity) -> Option<i64> {
    let q = Quantity::parse(&q.0).ok()?;
    let v = if name == "cpu" {
        q.milli_value()
    } else {
        q.value()
    };
    Some(v.clamp(0, i64::MAX as i128) as i64)
}

impl Resources {
    /// From a resource list (requests, allocatable); `pods` is left out.
    pub fn from_list(list: Option<&BTreeMap<String, ApiQuantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            let Some(v) = amount(name, q) else { continue };
            match name.as_str() {
                "cpu" => r.milli_cpu = v,
                "memory" => r.memory = v,
                "ephemeral-storage" => r.ephemeral_storage = v,
                "pods" => {}
                n if is_scalar(n) => {
                    r.scalar.insert(n.to_string(), v);
                }
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Each amount the larger of the two.
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }

    /// The amount of a named resource.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            n => self.scalar.get(n).copied().unwrap_or(0),
        }
    }
}

/// Extended resources (`example.com/gpu`) and hugepages are counted by name.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || (name.contains('/') && !name.starts_with("kubernetes.io/"))
        || name.starts_with("requests.")
}

fn requests(c: &Container) -> Resources {
    Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
}

fn non_zero(c: &Container) -> (i64, i64) {
    let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let has = |n: &str| req.is_some_and(|r| r.contains_key(n));
    let r = requests(c);
    (
        if has("cpu") {
            r.milli_cpu
        } else {
            DEFAULT_MILLI_CPU
        },
        if has("memory") {
            r.memory
        } else {
            DEFAULT_MEMORY
        },
    )
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// What a pod requests, as upstream computes it: the sum over containers; every init
/// container must fit alone beside the sidecars started before it, so the result is at
/// least that peak; sidecars (restartable init containers) run with the containers and
/// add to them; the pod's overhead comes on top.
pub fn pod_requests(pod: &Pod) -> Resources {
    pod_requests_with(pod, requests, |r, v| r.add(v), |r, v| r.max_with(v))
}

/// The CPU (millicores) and memory a pod counts for when scoring: as [`pod_requests`],
/// but a container without a request counts for 100m CPU / 200Mi memory.
pub fn pod_non_zero_requests(pod: &Pod) -> (i64, i64) {
    let to = |c: &Container| {
        let (cpu, mem) = non_zero(c);
        Resources {
            milli_cpu: cpu,
            memory: mem,
            ..Default::default()
        }
    };
    let r = pod_requests_with(pod, to, |r, v| r.add(v), |r, v| r.max_with(v));
    (r.milli_cpu, r.memory)
}

fn pod_requests_with(
    pod: &Pod,
    of: impl Fn(&Container) -> Resources,
    add: impl Fn(&mut Resources, &Resources),
    max: impl Fn(&mut Resources, &Resources),
) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        add(&mut total, &of(c));
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = of(c);
        if is_sidecar(c) {
            add(&mut sidecars, &r);
            max(&mut init_peak, &sidecars);
        } else {
            let mut during = sidecars.clone();
            add(&mut during, &r);
            max(&mut init_peak, &during);
        }
    }
    add(&mut total, &sidecars);
    max(&mut total, &init_peak);
    if let Some(o) = spec.overhead.as_ref() {
        add(&mut total, &Resources::from_list(Some(o)));
    }
    total
}

/// What a node offers pods: its allocatable (its capacity when allocatable is not
/// reported) and how many pods it takes.
pub fn node_allocatable(node: &Node) -> (Resources, i64) {
    let status = node.status.as_ref();
    let list = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    let pods = list
        .and_then(|l| l.get("pods"))
        .and_then(|q| amount("pods", q))
        .unwrap_or(0);
    (Resources::from_list(list), pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn requests_sum_containers_and_take_the_init_peak() {
        let p = pod(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m"}}},
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "1", "memory": "100Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        }}));
        let r = pod_requests(&p);
        assert_eq!(r.milli_cpu, 1010);
        assert_eq!(r.memory, 1 << 30);
        // Scoring counts b's missing memory request as 200Mi, the init container alone
        // as its own 100Mi.
        assert_eq!(
            pod_non_zero_requests(&p),
            (1010, (1 << 30) + DEFAULT_MEMORY)
        );
    }

    #[test]
    fn sidecars_add_to_the_containers() {
        let p = pod(json!({"spec": {
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "500m"}}}],
            "initContainers": [
                {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "300m"}}},
                {"name": "i", "resources": {"requests": {"cpu": "700m"}}},
            ],
        }}));
        // The init container runs beside the sidecar: 1000m peak; after: 800m.
        assert_eq!(pod_requests(&p).milli_cpu, 1000);
    }

    #[test]
    fn extended_resources_are_counted_by_name() {
        let p = pod(json!({"spec": {"containers": [{"name": "a",
            "resources": {"requests": {"example.com/gpu": "2", "hugepages-2Mi": "4Mi"}}}]}}));
        let r = pod_requests(&p);
        assert_eq!(r.get("example.com/gpu"), 2);
        assert_eq!(r.get("hugepages-2Mi"), 4 << 20);
    }
}
