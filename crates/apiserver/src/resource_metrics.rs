//! The resource metrics API, `metrics.k8s.io/v1beta1` (`NodeMetrics`, `PodMetrics`),
//! that `kubectl top` and autoscalers read. Upstream serves it from metrics-server
//! through the aggregation layer; here kube-apiserver asks the kubelets of the nodes
//! concerned for their usage ([`ferrokube_proto::kubelet::StatsResponse`]) at request
//! time and answers as metrics-server does: only nodes and pods with a measurement
//! appear, a single one without one is `NotFound`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferrokube_api::keys::list_prefix;
use ferrokube_api::meta::{format_time, go_duration};
use ferrokube_api::status::{self, StatusError};
use ferrokube_api::ResourceInfo;
use ferrokube_proto::kubelet::{StatsRequest, StatsResponse, Usage};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Value};

use crate::request::{Query, ResourcePath, Verb};
use crate::rest::{error_response, json_response, Body, Resources, Shape};
use crate::server::ApiServer;

/// How long a kubelet may take to answer (metrics-server's scrape timeout is 10 s).
const KUBELET_TIMEOUT: Duration = Duration::from_secs(5);

/// The canonical quantity of `n` nano-units (`250m`, `1500000n`).
fn cpu_quantity(nano_cores: u64) -> String {
    ferrokube_api::quantity::Quantity::parse(&format!("{nano_cores}n"))
        .map(|q| q.to_string())
        .unwrap_or_else(|_| format!("{nano_cores}n"))
}

/// A byte count as a binary-SI quantity (`12Mi`, `4100Ki`, `1001`).
fn memory_quantity(bytes: u64) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        if let Ok(q) = ferrokube_api::quantity::Quantity::parse(&format!("{}Ki", bytes / 1024)) {
            return q.to_string();
        }
    }
    bytes.to_string()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "cpu": cpu_quantity(u.cpu_nano_cores),
        "memory": memory_quantity(u.memory_working_set_bytes),
    })
}

/// The `timestamp` and `window` of a measurement.
fn timing(stats: &StatsResponse) -> (String, String) {
    let ts = jiff::Timestamp::from_nanosecond(stats.timestamp_nanos as i128)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    (format_time(ts), go_duration(stats.window_nanos))
}

/// The metadata of a metrics object: the measured object's name, namespace and labels.
fn metadata(source: &Value) -> Value {
    let mut m = json!({
        "name": source["metadata"]["name"],
        "creationTimestamp": format_time(jiff::Timestamp::now()),
    });
    if let Some(ns) = source["metadata"]["namespace"].as_str() {
        m["namespace"] = json!(ns);
    }
    if let Some(labels) = source["metadata"]["labels"].as_object() {
        m["labels"] = json!(labels);
    }
    m
}

/// `NodeMetrics` of a node from its kubelet's answer.
pub fn node_metrics(node: &Value, stats: &StatsResponse) -> Option<Value> {
    let usage = stats.node.as_ref()?;
    let (timestamp, window) = timing(stats);
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": metadata(node),
        "timestamp": timestamp,
        "window": window,
        "usage": usage_json(usage),
    }))
}

/// `PodMetrics` of a pod from its node's kubelet's answer (by namespace and name, as
/// a static pod's mirror has a uid of its own).
pub fn pod_metrics(pod: &Value, stats: &StatsResponse) -> Option<Value> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let measured = stats
        .pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)?;
    let containers: Vec<Value> = measured
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "usage": c.usage.as_ref().map(usage_json).unwrap_or(json!({}))}))
        .collect();
    let (timestamp, window) = timing(stats);
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": metadata(pod),
        "timestamp": timestamp,
        "window": window,
        "containers": containers,
    }))
}

impl ApiServer {
    /// Serves a `metrics.k8s.io` request (already authorized).
    pub(crate) async fn resource_metrics(
        &self,
        r: &ResourceInfo,
        verb: Verb,
        rp: &ResourcePath,
        query: &Query,
        headers: &HeaderMap,
    ) -> Response<Body> {
        let items = match verb {
            Verb::Get | Verb::List => self.metrics_items(r, rp, query).await,
            _ => Err(status::method_not_supported()),
        };
        let items = match items {
            Ok(items) => items,
            Err(e) => return error_response(&e),
        };
        let body = match (Shape::from_request(headers, query), verb) {
            (Shape::Table(inc), Verb::Get) => self.resources.table(r, &items, None, inc),
            (Shape::Table(inc), _) => self.resources.table(r, &items, Some(json!({})), inc),
            (_, Verb::Get) => items.into_iter().next().unwrap_or_default(),
            _ => json!({
                "kind": format!("{}List", r.kind),
                "apiVersion": r.api_version(),
                "metadata": {},
                "items": items,
            }),
        };
        json_response(StatusCode::OK, &body)
    }

    /// The metrics objects a get or list asks for.
    async fn metrics_items(
        &self,
        r: &ResourceInfo,
        rp: &ResourcePath,
        query: &Query,
    ) -> Result<Vec<Value>, StatusError> {
        let (labels, fields) = Resources::selectors(r, query, rp.name.as_deref())?;
        let source_r =
            ferrokube_api::registry::builtin("", if r.namespaced { "pods" } else { "nodes" });
        let ns = rp.namespace.as_deref();
        let sources: Vec<Value> = self
            .resources
            .objects
            .list(&list_prefix(&source_r, ns), "", 0, 0)
            .await?
            .items
            .into_iter()
            .map(|s| s.object)
            .filter(|o| Resources::selected(r, &labels, &fields, o))
            .collect();
        // The nodes to ask: the selected nodes, or those the selected pods run on.
        let wanted: BTreeSet<&str> = sources
            .iter()
            .filter_map(|o| {
                if r.namespaced {
                    o["spec"]["nodeName"].as_str()
                } else {
                    o["metadata"]["name"].as_str()
                }
            })
            .filter(|n| !n.is_empty())
            .collect();
        let fetched;
        let nodes: &[Value] = if r.namespaced {
            let mut found = Vec::new();
            for n in wanted {
                // A node gone meanwhile has nothing to report.
                if let Ok(node) = self.core_object("nodes", "", n).await {
                    found.push(node);
                }
            }
            fetched = found;
            &fetched
        } else {
            &sources
        };
        let stats = self.node_stats(nodes).await;
        let items: Vec<Value> = sources
            .iter()
            .filter_map(|o| {
                if r.namespaced {
                    pod_metrics(o, stats.get(o["spec"]["nodeName"].as_str()?)?)
                } else {
                    node_metrics(o, stats.get(o["metadata"]["name"].as_str()?)?)
                }
            })
            .collect();
        if let (Some(name), true) = (rp.name.as_deref(), items.is_empty()) {
            // metrics-server's resource names and its `<namespace>/<name>` for pods.
            let (plural, shown) = match ns {
                Some(ns) if r.namespaced => ("podmetrics", format!("{ns}/{name}")),
                _ => ("nodemetrics", name.to_string()),
            };
            let named = ResourceInfo { plural, ..*r };
            return Err(status::not_found(&named, &shown));
        }
        Ok(items)
    }

    /// The usage every node's kubelet reports, asked in parallel; a node whose kubelet
    /// cannot be reached is left out (as metrics-server leaves out a failed scrape).
    async fn node_stats(&self, nodes: &[Value]) -> BTreeMap<String, StatsResponse> {
        let mut calls = tokio::task::JoinSet::new();
        for n in nodes {
            let name = n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut kubelet = match self.kubelet_at(n) {
                Ok(k) => k,
                Err(e) => {
                    let why = e.0.message.clone().unwrap_or_default();
                    tracing::debug!(node = %name, "no kubelet to ask for stats: {why}");
                    continue;
                }
            };
            calls.spawn(async move {
                let answer =
                    tokio::time::timeout(KUBELET_TIMEOUT, kubelet.stats(StatsRequest {})).await;
                match answer {
                    Ok(Ok(resp)) => Some((name, resp.into_inner())),
                    Ok(Err(e)) => {
                        tracing::warn!(node = %name, "kubelet stats: {}", e.message());
                        None
                    }
                    Err(_) => {
                        tracing::warn!(node = %name, "kubelet stats: no answer in {KUBELET_TIMEOUT:?}");
                        None
                    }
                }
            });
        }
        let mut out = BTreeMap::new();
        while let Some(done) = calls.join_next().await {
            if let Ok(Some((name, stats))) = done {
                out.insert(name, stats);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokube_proto::kubelet::{ContainerUsage, PodUsage};

    fn stats() -> StatsResponse {
        let usage = |cpu, mem| {
            Some(Usage {
                cpu_nano_cores: cpu,
                memory_working_set_bytes: mem,
            })
        };
        StatsResponse {
            timestamp_nanos: 1_700_000_000_500_000_000,
            window_nanos: 10_250_000_000,
            node: usage(1_500_000_000, 2 << 30),
            pods: vec![PodUsage {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u1".into(),
                containers: vec![
                    ContainerUsage {
                        name: "app".into(),
                        usage: usage(1_234_567, 4096 * 3),
                    },
                    ContainerUsage {
                        name: "side".into(),
                        usage: usage(250_000_000, 1001),
                    },
                ],
            }],
        }
    }

    #[test]
    fn objects_read_as_metrics_server_writes_them() {
        let node = json!({"metadata": {"name": "n1", "labels": {"role": "x"}}});
        let m = node_metrics(&node, &stats()).unwrap();
        assert_eq!(m["kind"], "NodeMetrics");
        assert_eq!(m["metadata"]["name"], "n1");
        assert_eq!(m["metadata"]["labels"]["role"], "x");
        assert_eq!(m["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(m["window"], "10.25s");
        assert_eq!(m["usage"], json!({"cpu": "1500m", "memory": "2Gi"}));

        let pod = json!({"metadata": {"name": "web", "namespace": "default", "uid": "mirror"}});
        let m = pod_metrics(&pod, &stats()).unwrap();
        assert_eq!(m["metadata"]["namespace"], "default");
        assert_eq!(
            m["containers"],
            json!([
                {"name": "app", "usage": {"cpu": "1234567n", "memory": "12Ki"}},
                {"name": "side", "usage": {"cpu": "250m", "memory": "1001"}},
            ])
        );
        let other = json!({"metadata": {"name": "db", "namespace": "default"}});
        assert!(pod_metrics(&other, &stats()).is_none());
        // No second sample of the node yet: no NodeMetrics.
        let mut first = stats();
        first.node = None;
        assert!(node_metrics(&node, &first).is_none());
    }
}
