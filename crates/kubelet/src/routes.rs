//! Routes to the other nodes' pod ranges (host-gw, like flannel's backend of that name):
//! for every other Node with a `podCIDR` and an `InternalIP`, a route
//! `<podCIDR> via <InternalIP>` in the kubelet's network namespace, so pods on different
//! nodes reach each other without encapsulation (the nodes share a link). Routes are
//! tagged with their own protocol number, so those of vanished nodes are found and
//! removed, and nothing else is touched.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use ferrokube_client::{Api, Client, Informer, ListParams, Store};
use k8s_openapi::api::core::v1::Node;

/// The routing protocol number marking the kubelet's routes (`ip route ... proto 77`).
pub const ROUTE_PROTO: &str = "77";

/// Wanted routes: pod range → node address, for every node but `me`.
pub fn desired(nodes: &[std::sync::Arc<Node>], me: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let Some(spec) = &n.spec else { continue };
        let mut cidrs: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
        if cidrs.is_empty() {
            cidrs.extend(spec.pod_cidr.clone());
        }
        let addresses = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .cloned()
            .unwrap_or_default();
        for cidr in cidrs {
            let v6 = cidr.contains(':');
            let via = addresses
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
                .find(|a| a.contains(':') == v6);
            if let Some(via) = via {
                out.insert(cidr, via);
            }
        }
    }
    out
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The kubelet's routes now: pod range → gateway.
fn current() -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for family in ["-4", "-6"] {
        let text = ip(&[family, "-j", "route", "show", "proto", ROUTE_PROTO])?;
        let routes: Vec<serde_json::Value> =
            serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text })
                .map_err(|e| format!("ip -j route: {e}"))?;
        for r in routes {
            if let (Some(dst), Some(gw)) = (r["dst"].as_str(), r["gateway"].as_str()) {
                out.insert(dst.to_string(), gw.to_string());
            }
        }
    }
    Ok(out)
}

/// Makes the routes what `want` says; errors of single routes are logged and the rest
/// still applied.
pub fn sync(want: &BTreeMap<String, String>) -> Result<(), String> {
    let have = current()?;
    for (cidr, via) in want {
        if have.get(cidr) != Some(via) {
            match ip(&["route", "replace", cidr, "via", via, "proto", ROUTE_PROTO]) {
                Ok(_) => tracing::info!(%cidr, %via, "route to a node's pods"),
                Err(e) => tracing::warn!(%cidr, %via, "adding a route to a node's pods: {e}"),
            }
        }
    }
    for cidr in have.keys().filter(|c| !want.contains_key(*c)) {
        match ip(&["route", "del", cidr, "proto", ROUTE_PROTO]) {
            Ok(_) => tracing::info!(%cidr, "removed the route to a node's pods"),
            Err(e) => tracing::warn!(%cidr, "removing a route: {e}"),
        }
    }
    Ok(())
}

/// Watches the Nodes and keeps the routes to their pod ranges, until dropped.
pub async fn run(client: Client, me: String) {
    let mut informer = Informer::new(Api::<Node>::all(client), ListParams::default());
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let c2 = changed.clone();
    informer.on_event(move |_| c2.notify_one());
    let store: Store<Node> = informer.store();
    tokio::spawn(informer.run());
    loop {
        if store.has_synced() {
            let want = desired(&store.list(), &me);
            let result = tokio::task::spawn_blocking(move || sync(&want)).await;
            if let Ok(Err(e)) = result {
                tracing::warn!("routes to other nodes' pods: {e}");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), changed.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_route_per_other_node_and_family() {
        let node = |name: &str, cidrs: &[&str], ips: &[&str]| -> std::sync::Arc<Node> {
            let addrs: Vec<_> = ips
                .iter()
                .map(|a| json!({"type": "InternalIP", "address": a}))
                .chain([json!({"type": "Hostname", "address": name})])
                .collect();
            std::sync::Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name},
                    "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
                    "status": {"addresses": addrs}}))
                .unwrap(),
            )
        };
        let nodes = [
            node("me", &["10.244.0.0/24"], &["192.168.1.1"]),
            node(
                "b",
                &["10.244.1.0/24", "fd00:1::/64"],
                &["192.168.1.2", "fc00::2"],
            ),
            node("c", &["10.244.2.0/24"], &[]),
            node("d", &[], &["192.168.1.4"]),
        ];
        let want = desired(&nodes, "me");
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            [
                ("10.244.1.0/24".to_string(), "192.168.1.2".to_string()),
                ("fd00:1::/64".to_string(), "fc00::2".to_string()),
            ]
        );
    }
}
