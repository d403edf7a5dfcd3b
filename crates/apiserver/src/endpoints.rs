//! The `kubernetes` Service's endpoints follow the live API servers, as upstream's lease
//! endpoint reconciler does: each API server keeps a key under `/registry/masterleases/`
//! attached to a store lease with a 15 s TTL and renews it; every 10 s each server
//! writes the addresses of the unexpired keys into the `kubernetes` Endpoints and
//! EndpointSlice. A server that dies drops out within the TTL.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_api::keys::{object_key, prefix_end};
use ferrokube_api::registry::builtin;
use ferrokube_api::status::StatusError;
use ferrokube_proto::etcdserverpb::{PutRequest, RangeRequest};
use serde_json::{json, Value};

use crate::rest::Resources;
use crate::storage::{store_error, Update};

const PREFIX: &str = "/registry/masterleases/";
const TTL: i64 = 15;

/// This server's address in the lease set; returns the store lease it is attached to.
async fn announce(res: &Resources, ip: IpAddr, lease: Option<i64>) -> Result<i64, StatusError> {
    let store = res.objects.store();
    if let Some(id) = lease {
        if store.lease_keep_alive(id).await.is_ok() {
            return Ok(id);
        }
    }
    let (id, _) = store.lease_grant(TTL, 0).await.map_err(store_error)?;
    store
        .put(PutRequest {
            key: format!("{PREFIX}{ip}").into_bytes(),
            value: json!({"ip": ip.to_string()}).to_string().into_bytes(),
            lease: id,
            ..Default::default()
        })
        .await
        .map_err(store_error)?;
    Ok(id)
}

/// The addresses of the live API servers, sorted.
async fn live(res: &Resources) -> Result<Vec<String>, StatusError> {
    let resp = res
        .objects
        .store()
        .range(RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: prefix_end(PREFIX.as_bytes()),
            keys_only: true,
            ..Default::default()
        })
        .await
        .map_err(store_error)?;
    let mut ips: Vec<String> = resp
        .kvs
        .iter()
        .filter_map(|kv| {
            std::str::from_utf8(&kv.key)
                .ok()?
                .strip_prefix(PREFIX)
                .map(String::from)
        })
        .collect();
    ips.sort();
    Ok(ips)
}

/// Writes the addresses into the Endpoints and EndpointSlice (when they differ).
async fn reconcile(res: &Resources, ips: &[String], port: u16) -> Result<(), StatusError> {
    if ips.is_empty() {
        return Ok(());
    }
    let ep_key = object_key(&builtin("", "endpoints"), "default", "kubernetes");
    res.objects
        .update(&ep_key, &|_| vec![], |cur| {
            let Some(cur) = cur else { return Ok(Update::Keep) };
            let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
            let subsets = json!([{"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
            if cur.object.get("subsets") == Some(&subsets) {
                return Ok(Update::Keep);
            }
            let mut ep = cur.object.clone();
            ep["subsets"] = subsets;
            Ok(Update::Put(ep))
        })
        .await?;
    let slice_key = object_key(
        &builtin("discovery.k8s.io", "endpointslices"),
        "default",
        "kubernetes",
    );
    res.objects
        .update(&slice_key, &|_| vec![], |cur| {
            let Some(cur) = cur else {
                return Ok(Update::Keep);
            };
            let endpoints: Vec<Value> = ips
                .iter()
                .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
                .collect();
            if cur.object.get("endpoints") == Some(&json!(endpoints)) {
                return Ok(Update::Keep);
            }
            let mut slice = cur.object.clone();
            slice["endpoints"] = json!(endpoints);
            Ok(Update::Put(slice))
        })
        .await?;
    Ok(())
}

/// Runs the reconciler until the process ends.
pub async fn run(res: Arc<Resources>, ip: IpAddr, port: u16) {
    let mut lease = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        match announce(&res, ip, lease).await {
            Ok(id) => lease = Some(id),
            Err(e) => {
                tracing::warn!("renewing this API server's endpoint lease: {e}");
                lease = None;
                continue;
            }
        }
        // Reconcile right away, then every other renewal (10 s).
        if n.is_multiple_of(2) {
            let result = async { reconcile(&res, &live(&res).await?, port).await }.await;
            if let Err(e) = result {
                tracing::warn!("reconciling the kubernetes endpoints: {e}");
            }
        }
        n += 1;
    }
}
