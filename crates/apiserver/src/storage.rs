//! Objects in the embedded store, the way upstream's `storage.Interface` keeps them in
//! etcd: one key per object, the JSON body without `resourceVersion` (the key's mod
//! revision is the resourceVersion), creates and updates as transactions that compare
//! revisions, so concurrent writers never overwrite each other.

use ferrokube_api::keys::prefix_end;
use ferrokube_api::meta::set_resource_version;
use ferrokube_api::status::{self, StatusError};
use ferrokube_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use ferrokube_store::{Store, StoreError};
use serde_json::Value;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// One stored object with its mod revision.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    pub object: Value,
    pub revision: i64,
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Stored>,
    /// The revision the page was read at.
    pub revision: i64,
    /// Keys left after this page, if any (`more`).
    pub more: bool,
    /// How many keys are left after this page.
    pub remaining: i64,
}

/// What an update function decides.
pub enum Update {
    /// Write this object.
    Put(Value),
    /// Delete the object.
    Delete,
    /// Leave the object as it is (the answer is the current object).
    Keep,
}

/// Maps a store failure to the `Status` upstream's apiserver answers with for the same
/// etcd error.
pub fn store_error(e: StoreError) -> StatusError {
    match e {
        StoreError::Compacted { .. } => {
            status::expired("The resourceVersion for the provided list is too old.".to_string())
        }
        StoreError::FutureRevision => status::timeout(
            "Too large resource version: the requested resourceVersion is newer than the store",
        ),
        StoreError::Timeout | StoreError::NoLeader | StoreError::Unhealthy => status::timeout(
            format!("request did not complete within requested timeout - {e}"),
        ),
        StoreError::RequestTooLarge => status::too_large(1_572_864),
        other => status::internal(other),
    }
}

fn decode(key: &[u8], value: &[u8], revision: i64) -> Result<Stored, StatusError> {
    let mut object: Value = serde_json::from_slice(value).map_err(|e| {
        status::internal(format!(
            "stored object {} is not JSON: {e}",
            String::from_utf8_lossy(key)
        ))
    })?;
    set_resource_version(&mut object, revision);
    Ok(Stored {
        key: String::from_utf8_lossy(key).into_owned(),
        object,
        revision,
    })
}

/// The derived keys (allocations) an update claims and releases: those only in the new
/// object's set, and those only in the old one's.
pub fn key_changes(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|k| !b.contains(k)).cloned().collect()
    };
    (only(new, old), only(old, new))
}

/// Serializes an object for storage: everything but `metadata.resourceVersion`.
pub fn encode(object: &Value) -> Vec<u8> {
    let mut o = object.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).expect("JSON values serialize")
}

fn put_op(key: &str, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// Keys whose objects expire (upstream's `--event-ttl`: events only).
const EXPIRING_PREFIX: &str = "/registry/events/";
/// One store lease serves every event written within this window (upstream reuses
/// leases the same way, so a busy cluster does not make a lease per event); a tenth of
/// the TTL when that is shorter.
const LEASE_REUSE: Duration = Duration::from_secs(60);

fn delete_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            },
        )),
    }
}

fn mod_revision_is(key: &str, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
        range_end: vec![],
    }
}

/// The objects of the API server in the store.
#[derive(Clone)]
pub struct Objects {
    store: Store,
    metrics: std::sync::Arc<Metrics>,
    /// How long events live.
    event_ttl: Duration,
    /// The lease events are attached to now, and when it was granted.
    event_lease: std::sync::Arc<tokio::sync::Mutex<Option<(i64, Instant)>>>,
}

/// The object type of a key, for store metrics: `/registry/<resource>`.
fn key_type(key: &str) -> &str {
    let end = key.match_indices('/').nth(2).map_or(key.len(), |(i, _)| i);
    &key[..end]
}

impl Objects {
    pub fn new(store: Store, metrics: std::sync::Arc<Metrics>, event_ttl: Duration) -> Self {
        Objects {
            store,
            metrics,
            event_ttl,
            event_lease: Default::default(),
        }
    }

    /// The store lease a write of `key` attaches to (0: none).
    async fn lease_for(&self, key: &str) -> Result<i64, StatusError> {
        if !key.starts_with(EXPIRING_PREFIX) || self.event_ttl.is_zero() {
            return Ok(0);
        }
        let reuse = LEASE_REUSE.min(self.event_ttl / 10);
        let mut cur = self.event_lease.lock().await;
        if let Some((id, at)) = *cur {
            if at.elapsed() < reuse {
                return Ok(id);
            }
        }
        let ttl = (self.event_ttl + reuse).as_secs_f64().ceil() as i64;
        let (id, _) = self.store.lease_grant(ttl, 0).await.map_err(store_error)?;
        *cur = Some((id, Instant::now()));
        Ok(id)
    }

    fn observe(&self, op: &'static str, key: &str, started: Instant) {
        self.metrics.store(op, key_type(key), started.elapsed());
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads one object; `None` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<Stored>, StatusError> {
        let started = Instant::now();
        let resp = self
            .store
            .range(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .map_err(store_error)?;
        self.observe("get", key, started);
        match resp.kvs.first() {
            Some(kv) => Ok(Some(decode(&kv.key, &kv.value, kv.mod_revision)?)),
            None => Ok(None),
        }
    }

    /// Lists keys under `prefix` from `start` (inclusive; empty = the prefix itself), at
    /// `revision` (0 = latest, linearizable), at most `limit` (0 = all).
    pub async fn list(
        &self,
        prefix: &str,
        start: &str,
        revision: i64,
        limit: i64,
    ) -> Result<Page, StatusError> {
        let from = if start.is_empty() { prefix } else { start };
        let started = Instant::now();
        let resp = self
            .store
            .range(RangeRequest {
                key: from.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                revision,
                limit,
                ..Default::default()
            })
            .await
            .map_err(store_error)?;
        self.observe("list", prefix, started);
        let items = resp
            .kvs
            .iter()
            .map(|kv| decode(&kv.key, &kv.value, kv.mod_revision))
            .collect::<Result<Vec<_>, _>>()?;
        let read_at = resp.header.map_or(0, |h| h.revision);
        Ok(Page {
            remaining: (resp.count - items.len() as i64).max(0),
            items,
            revision: if revision > 0 { revision } else { read_at },
            more: resp.more,
        })
    }

    /// Creates an object; a failed compare (the object or a `claim` key exists) comes
    /// back as `Ok(None)`. `claim` keys (allocations) are created with it.
    pub async fn create(
        &self,
        key: &str,
        object: &Value,
        claim: &[String],
    ) -> Result<Option<i64>, StatusError> {
        let lease = self.lease_for(key).await?;
        let mut compare = vec![mod_revision_is(key, 0)];
        let mut success = vec![put_op(key, encode(object), lease)];
        for k in claim {
            compare.push(mod_revision_is(k, 0));
            success.push(put_op(k, key.as_bytes().to_vec(), 0));
        }
        let started = Instant::now();
        let resp = self
            .store
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await
            .map_err(store_error)?;
        self.observe("create", key, started);
        Ok(resp
            .succeeded
            .then(|| resp.header.map_or(0, |h| h.revision)))
    }

    /// Writes `object` if the key is still at `revision`, creating the `claim` keys (which
    /// must be absent) and deleting the `release` keys in the same transaction. `Ok(None)`
    /// when a compare failed.
    pub async fn put_if(
        &self,
        key: &str,
        revision: i64,
        object: &Value,
        claim: &[String],
        release: &[String],
    ) -> Result<Option<i64>, StatusError> {
        let lease = self.lease_for(key).await?;
        let mut compare = vec![mod_revision_is(key, revision)];
        let mut success = vec![put_op(key, encode(object), lease)];
        for k in claim {
            compare.push(mod_revision_is(k, 0));
            success.push(put_op(k, key.as_bytes().to_vec(), 0));
        }
        for k in release {
            success.push(delete_op(k));
        }
        let started = Instant::now();
        let resp = self
            .store
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await
            .map_err(store_error)?;
        self.observe("update", key, started);
        Ok(resp
            .succeeded
            .then(|| resp.header.map_or(0, |h| h.revision)))
    }

    /// Every key under `prefix` (allocation keys), without values.
    pub async fn keys(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeSet<String>, StatusError> {
        let resp = self
            .store
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                keys_only: true,
                ..Default::default()
            })
            .await
            .map_err(store_error)?;
        Ok(resp
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect())
    }

    /// Deletes the key if it is still at `revision`, and `also` keys unconditionally
    /// (released allocations). Returns the deletion revision, `Ok(None)` when it moved on.
    pub async fn delete_if(
        &self,
        key: &str,
        revision: i64,
        also: &[String],
    ) -> Result<Option<i64>, StatusError> {
        let mut success = vec![delete_op(key)];
        success.extend(also.iter().map(|k| delete_op(k)));
        let started = Instant::now();
        let resp = self
            .store
            .txn(TxnRequest {
                compare: vec![mod_revision_is(key, revision)],
                success,
                failure: vec![],
            })
            .await
            .map_err(store_error)?;
        self.observe("delete", key, started);
        if !resp.succeeded {
            return Ok(None);
        }
        let deleted = resp.responses.first().and_then(|r| match &r.response {
            Some(response_op::Response::ResponseDeleteRange(d)) => Some(d.deleted),
            _ => None,
        });
        Ok((deleted == Some(1)).then(|| resp.header.map_or(0, |h| h.revision)))
    }

    /// Upstream's `GuaranteedUpdate`: reads the object, lets `f` decide, and writes with
    /// a revision compare, retrying from a fresh read when another writer got there first
    /// (a bounded number of times). `f` sees `None` for an absent key. Returns the
    /// outcome: the written object, `None` after a delete, or the unchanged one.
    pub async fn update<F>(
        &self,
        key: &str,
        derived: &(dyn Fn(&Value) -> Vec<String> + Sync),
        mut f: F,
    ) -> Result<Outcome, StatusError>
    where
        F: FnMut(Option<&Stored>) -> Result<Update, StatusError>,
    {
        for _ in 0..16 {
            let current = self.get(key).await?;
            match f(current.as_ref())? {
                Update::Keep => {
                    return Ok(match current {
                        Some(c) => Outcome::Unchanged(c),
                        None => Outcome::Deleted(None, 0),
                    })
                }
                Update::Put(mut obj) => {
                    let rev = current.as_ref().map_or(0, |c| c.revision);
                    if let Some(c) = &current {
                        if encode(&obj) == encode(&c.object) {
                            return Ok(Outcome::Unchanged(current.expect("checked")));
                        }
                    }
                    let old_keys = current
                        .as_ref()
                        .map(|c| derived(&c.object))
                        .unwrap_or_default();
                    let (claim, release) = key_changes(&old_keys, &derived(&obj));
                    if let Some(new_rev) = self.put_if(key, rev, &obj, &claim, &release).await? {
                        set_resource_version(&mut obj, new_rev);
                        return Ok(Outcome::Written(Stored {
                            key: key.to_string(),
                            object: obj,
                            revision: new_rev,
                        }));
                    }
                }
                Update::Delete => {
                    let Some(c) = current else {
                        return Ok(Outcome::Deleted(None, 0));
                    };
                    if let Some(rev) = self.delete_if(key, c.revision, &derived(&c.object)).await? {
                        return Ok(Outcome::Deleted(Some(c), rev));
                    }
                }
            }
        }
        Err(status::timeout(
            "too many concurrent writers to the same object; try again",
        ))
    }
}

/// What [`Objects::update`] did.
#[derive(Debug)]
pub enum Outcome {
    Written(Stored),
    /// Deleted (the last stored version and the deletion revision), or absent.
    Deleted(Option<Stored>, i64),
    Unchanged(Stored),
}
