//! The replicated state machine: an MVCC key-value store like etcd v3, plus the leases,
//! members and Raft configuration that are replicated with it.
//!
//! Every committed Raft entry is applied here in log order, deterministically, on every
//! member. Writes to RocksDB happen under the write lock together with the in-memory
//! index update, so readers always see one consistent revision.

mod index;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ferrokube_proto::etcdserverpb::{
    compare, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest,
    DeleteRangeResponse, Member, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use ferrokube_proto::mvccpb::{event::EventType, Event, KeyValue};
use ferrokube_proto::raftpeer::{LeaseRecord, RevisionRecord};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::ConfState;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use tokio::sync::watch;

pub use index::{live_at, Change, Entry, KeyIndex, KeyRange, Rev};

use crate::engine::{Engine, CF_STATE, META_PREFIX};

/// History and bookkeeping share one column family (see [`crate::engine`]).
const CF_REV: &str = CF_STATE;
const CF_META: &str = CF_STATE;
use crate::error::{Result, StoreError};

const META_APPLIED: &[u8] = b"\xffapplied";
const META_CURRENT: &[u8] = b"\xffcurrent";
const META_COMPACTED: &[u8] = b"\xffcompacted";
const META_CONF_STATE: &[u8] = b"\xffconf_state";
const META_CLUSTER_ID: &[u8] = b"\xffcluster_id";
const META_MEMBER: &[u8] = b"\xffmember/";
const META_LEASE: &[u8] = b"\xfflease/";

/// Shortest lease TTL granted, in seconds (etcd: 1.5 election timeouts, rounded up).
pub const MIN_LEASE_TTL: i64 = 2;
/// Largest lease TTL, in seconds (etcd's limit).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease as the state machine tracks it. Expiry is local time: every member starts the
/// clock when it applies the grant or a keep-alive, so a new leader knows the deadlines.
#[derive(Debug, Clone)]
pub struct LeaseState {
    pub ttl: i64,
    pub expiry: Instant,
    pub keys: BTreeSet<Vec<u8>>,
}

/// What applying one command produced.
#[derive(Debug)]
pub enum Applied {
    Txn(TxnResponse),
    Compacted,
    LeaseGranted { id: i64, ttl: i64 },
    LeaseRevoked,
    LeaseRenewed { ttl: i64 },
    MemberUpdated,
}

struct Inner {
    index: KeyIndex,
    current: i64,
    compacted: i64,
    leases: HashMap<i64, LeaseState>,
    members: BTreeMap<u64, Member>,
    conf_state: ConfState,
    applied_index: u64,
    applied_term: u64,
    cluster_id: u64,
}

/// Read-only view of the store's bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub current: i64,
    pub compacted: i64,
    pub applied_index: u64,
    pub applied_term: u64,
    pub cluster_id: u64,
}

/// The state machine serialised at an applied position, for a Raft snapshot.
pub struct StateSnapshot {
    pub data: Vec<u8>,
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// The MVCC state machine.
pub struct StateMachine {
    engine: Engine,
    inner: RwLock<Inner>,
    revision_tx: watch::Sender<i64>,
}

fn meta_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Values of every bookkeeping record whose key starts with `prefix`.
fn meta_values(engine: &Engine, prefix: &[u8]) -> Result<Vec<Box<[u8]>>> {
    let mut out = Vec::new();
    for item in engine.db.prefix_iterator_cf(engine.cf(CF_META), prefix) {
        let (k, v) = item?;
        if !k.starts_with(prefix) {
            break;
        }
        out.push(v);
    }
    Ok(out)
}

fn get_i64(engine: &Engine, key: &[u8]) -> Result<i64> {
    Ok(engine
        .db
        .get_cf(engine.cf(CF_META), key)?
        .map(|v| {
            v.as_slice()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt(format!("meta {key:?}")))
        })
        .transpose()?
        .unwrap_or(0))
}

impl StateMachine {
    /// Loads the state machine from the database, rebuilding the in-memory index.
    pub fn open(engine: Engine) -> Result<Self> {
        let inner = Self::load(&engine)?;
        let (revision_tx, _) = watch::channel(inner.current);
        Ok(StateMachine {
            engine,
            inner: RwLock::new(inner),
            revision_tx,
        })
    }

    fn load(engine: &Engine) -> Result<Inner> {
        let db = &engine.db;
        let meta = engine.cf(CF_META);
        let (applied_index, applied_term) = match db.get_cf(meta, META_APPLIED)? {
            Some(v) if v.len() == 16 => (
                u64::from_be_bytes(v[..8].try_into().unwrap()),
                u64::from_be_bytes(v[8..].try_into().unwrap()),
            ),
            Some(_) => return Err(StoreError::Corrupt("applied index".into())),
            None => (0, 0),
        };
        let current = get_i64(engine, META_CURRENT)?;
        let compacted = get_i64(engine, META_COMPACTED)?;
        let cluster_id = get_i64(engine, META_CLUSTER_ID)? as u64;
        let conf_state = match db.get_cf(meta, META_CONF_STATE)? {
            Some(v) => ConfState::parse_from_bytes(&v)?,
            None => ConfState::default(),
        };
        let mut members = BTreeMap::new();
        for v in meta_values(engine, META_MEMBER)? {
            let m = Member::decode(&*v)?;
            members.insert(m.id, m);
        }
        let now = Instant::now();
        let mut leases = HashMap::new();
        for v in meta_values(engine, META_LEASE)? {
            let l = LeaseRecord::decode(&*v)?;
            leases.insert(
                l.id,
                LeaseState {
                    ttl: l.ttl,
                    expiry: now + Duration::from_secs(l.ttl as u64),
                    keys: BTreeSet::new(),
                },
            );
        }
        let mut index = KeyIndex::default();
        for item in db.iterator_cf(engine.cf(CF_REV), IteratorMode::Start) {
            let (k, v) = item?;
            if k.first() == Some(&META_PREFIX) {
                break;
            }
            let rev =
                Rev::from_key(&k).ok_or_else(|| StoreError::Corrupt("revision key".into()))?;
            if rev.main > current {
                // Written by an apply whose bookkeeping did not land; cannot happen with
                // atomic batches, but never let the index run ahead of the revision.
                return Err(StoreError::Corrupt(format!(
                    "history revision {} beyond current {}",
                    rev.main, current
                )));
            }
            let rec = RevisionRecord::decode(&*v)?;
            let kv = rec.kv.unwrap_or_default();
            let change = if rec.tombstone {
                Change::Tombstone
            } else {
                Change::Put {
                    create: kv.create_revision,
                    version: kv.version,
                    lease: kv.lease,
                }
            };
            index.push(&kv.key, Entry { rev, change });
        }
        for (key, lease) in index.live_leases() {
            if let Some(l) = leases.get_mut(&lease) {
                l.keys.insert(key.clone());
            }
        }
        Ok(Inner {
            index,
            current,
            compacted,
            leases,
            members,
            conf_state,
            applied_index,
            applied_term,
            cluster_id,
        })
    }

    /// Writes the initial state of a new cluster: its members and voter set at `index`.
    pub fn bootstrap(
        &self,
        cluster_id: u64,
        members: &[Member],
        conf_state: &ConfState,
        index: u64,
        term: u64,
    ) -> Result<()> {
        let mut inner = self.inner.write().unwrap();
        let mut batch = WriteBatch::default();
        let meta = self.engine.cf(CF_META);
        batch.put_cf(meta, META_CLUSTER_ID, (cluster_id as i64).to_be_bytes());
        for m in members {
            batch.put_cf(meta, meta_key(META_MEMBER, m.id), m.encode_to_vec());
            inner.members.insert(m.id, m.clone());
        }
        batch.put_cf(meta, META_CONF_STATE, conf_state.write_to_bytes()?);
        // Like etcd, an empty store is at revision 1; the first write makes revision 2.
        batch.put_cf(meta, META_CURRENT, 1i64.to_be_bytes());
        Self::put_applied(&self.engine, &mut batch, index, term);
        // Through the WAL, synced: the Raft log is bootstrapped right after, and a replay
        // cannot recreate this state.
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.engine.db.write_opt(batch, &opts)?;
        inner.current = 1;
        self.revision_tx.send_replace(1);
        inner.cluster_id = cluster_id;
        inner.conf_state = conf_state.clone();
        inner.applied_index = index;
        inner.applied_term = term;
        Ok(())
    }

    fn put_applied(engine: &Engine, batch: &mut WriteBatch, index: u64, term: u64) {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&index.to_be_bytes());
        v[8..].copy_from_slice(&term.to_be_bytes());
        batch.put_cf(engine.cf(CF_META), META_APPLIED, v);
    }

    /// Revision, compaction point and applied position.
    pub fn progress(&self) -> Progress {
        let inner = self.inner.read().unwrap();
        Progress {
            current: inner.current,
            compacted: inner.compacted,
            applied_index: inner.applied_index,
            applied_term: inner.applied_term,
            cluster_id: inner.cluster_id,
        }
    }

    /// Subscribes to the current revision (changes after every applied write).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision_tx.subscribe()
    }

    /// The replicated Raft configuration as of the applied index.
    pub fn conf_state(&self) -> ConfState {
        self.inner.read().unwrap().conf_state.clone()
    }

    /// Members known to the cluster.
    pub fn members(&self) -> Vec<Member> {
        self.inner
            .read()
            .unwrap()
            .members
            .values()
            .cloned()
            .collect()
    }

    /// Number of keys with history in the index.
    pub fn key_count(&self) -> usize {
        self.inner.read().unwrap().index.len()
    }

    /// The database size, for status and quota checks.
    pub fn db_size(&self) -> u64 {
        self.engine.size_bytes()
    }

    // ---------------------------------------------------------------- reads

    /// Serves a range request from local state. The index is read under the lock; values
    /// are read after it is released, from a RocksDB snapshot pinned under it, so large
    /// ranges do not hold up the applier.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let inner = self.inner.read().unwrap();
        let view = View {
            inner: &inner,
            engine: &self.engine,
            overlay: None,
            pending: None,
        };
        let header = Some(ResponseHeader {
            revision: inner.current,
            ..Default::default()
        });
        let planned = view.plan_range(req)?;
        let pinned = self.engine.db.snapshot();
        drop(inner);
        let mut resp = match planned {
            Planned::Done(resp) => resp,
            Planned::Fetch(plan) => {
                let kvs = fetch_records(&self.engine, Some(&pinned), |_| None, &plan.entries)?;
                plan.finish(kvs)
            }
        };
        resp.header = header;
        Ok(resp)
    }

    /// Serves a transaction that only reads (compares and ranges) from local state.
    pub fn read_only_txn(&self, req: &TxnRequest) -> Result<TxnResponse> {
        let inner = self.inner.read().unwrap();
        let mut txn = TxnWriter {
            main: inner.current + 1,
            sub: 0,
            changes: BTreeMap::new(),
            records: HashMap::new(),
            pending: None,
        };
        let mut resp = txn.txn(&inner, &self.engine, req)?;
        resp.header = Some(ResponseHeader {
            revision: inner.current,
            ..Default::default()
        });
        Ok(resp)
    }

    /// Events with revision `from` and later that touch `range`, at most about `max`
    /// (whole revisions are never split). Returns the events and the next revision to
    /// read from.
    pub fn events(
        &self,
        from: i64,
        range: &KeyRange<'_>,
        prev_kv: bool,
        max: usize,
    ) -> Result<(Vec<Event>, i64)> {
        let inner = self.inner.read().unwrap();
        if from < inner.compacted {
            return Err(StoreError::Compacted {
                compact_revision: inner.compacted,
            });
        }
        let mut out = Vec::new();
        let mut next = inner.current + 1;
        if from > inner.current {
            return Ok((out, from));
        }
        let cf = self.engine.cf(CF_REV);
        let start = Rev::new(from, 0).to_key();
        let mut last_main = 0;
        for item in self
            .engine
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            if k.first() == Some(&META_PREFIX) {
                break;
            }
            let rev =
                Rev::from_key(&k).ok_or_else(|| StoreError::Corrupt("revision key".into()))?;
            if rev.main > inner.current {
                break;
            }
            if out.len() >= max && rev.main != last_main {
                next = rev.main;
                break;
            }
            last_main = rev.main;
            let rec = RevisionRecord::decode(&*v)?;
            let kv = rec.kv.unwrap_or_default();
            if !range.contains(&kv.key) {
                continue;
            }
            let prev = if prev_kv && rec.prev_main > 0 {
                self.record_kv(Rev::new(rec.prev_main, rec.prev_sub))?
            } else {
                None
            };
            out.push(Event {
                r#type: if rec.tombstone {
                    EventType::Delete as i32
                } else {
                    EventType::Put as i32
                },
                kv: Some(kv),
                prev_kv: prev,
            });
        }
        Ok((out, next))
    }

    fn record_kv(&self, rev: Rev) -> Result<Option<KeyValue>> {
        let v = self
            .engine
            .db
            .get_cf(self.engine.cf(CF_REV), rev.to_key())?;
        Ok(match v {
            Some(v) => RevisionRecord::decode(&*v)?.kv,
            None => None,
        })
    }

    /// Granted TTL, remaining seconds and attached keys of a lease.
    pub fn lease(&self, id: i64) -> Option<(i64, i64, Vec<Vec<u8>>)> {
        let inner = self.inner.read().unwrap();
        let l = inner.leases.get(&id)?;
        let left = l.expiry.saturating_duration_since(Instant::now());
        let left = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
        Some((l.ttl, left, l.keys.iter().cloned().collect()))
    }

    /// IDs of all leases.
    pub fn lease_ids(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.inner.read().unwrap().leases.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Leases whose deadline has passed.
    pub fn expired_leases(&self) -> Vec<i64> {
        let now = Instant::now();
        self.inner
            .read()
            .unwrap()
            .leases
            .iter()
            .filter(|(_, l)| l.expiry <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Pushes every lease deadline to at least `now + ttl` (after a leader change, as etcd).
    pub fn refresh_leases(&self) {
        let now = Instant::now();
        for l in self.inner.write().unwrap().leases.values_mut() {
            l.expiry = l.expiry.max(now + Duration::from_secs(l.ttl as u64));
        }
    }

    // ---------------------------------------------------------------- writes

    /// Starts applying a run of committed entries: holds the write lock and gathers their
    /// writes into one RocksDB batch until [`Applier::finish`].
    pub fn applier(&self) -> Applier<'_> {
        Applier {
            sm: self,
            inner: self.inner.write().unwrap(),
            batch: WriteBatch::default(),
            pending: HashMap::new(),
            applied: None,
        }
    }

    /// Applies one replicated command; see [`Applier::apply`].
    pub fn apply(
        &self,
        index: u64,
        term: u64,
        op: &ferrokube_proto::raftpeer::command::Op,
    ) -> Result<Applied> {
        let mut a = self.applier();
        let r = a.apply(index, term, op);
        a.finish()?;
        r
    }

    /// Runs a transaction against the current state; its history records go into `batch`
    /// and `pending`, the in-memory part is returned for [`TxnCommit::commit`].
    fn apply_txn(
        &self,
        inner: &Inner,
        batch: &mut WriteBatch,
        pending: &mut HashMap<Rev, RevisionRecord>,
        req: &TxnRequest,
    ) -> Result<(TxnResponse, Option<TxnCommit>)> {
        let mut txn = TxnWriter {
            main: inner.current + 1,
            sub: 0,
            changes: BTreeMap::new(),
            records: HashMap::new(),
            pending: Some(pending),
        };
        let mut resp = txn.txn(inner, &self.engine, req)?;
        // The header carries the revision the transaction produced (or read at).
        resp.header = Some(ResponseHeader {
            revision: if txn.changes.is_empty() {
                inner.current
            } else {
                txn.main
            },
            ..Default::default()
        });
        if txn.changes.is_empty() {
            return Ok((resp, None));
        }
        let rev_cf = self.engine.cf(CF_REV);
        for (rev, rec) in &txn.records {
            batch.put_cf(rev_cf, rev.to_key(), rec.encode_to_vec());
        }
        batch.put_cf(
            self.engine.cf(CF_META),
            META_CURRENT,
            txn.main.to_be_bytes(),
        );
        let TxnWriter {
            main,
            changes,
            records,
            ..
        } = txn;
        pending.extend(records);
        Ok((resp, Some(TxnCommit { main, changes })))
    }

    fn apply_compaction(
        &self,
        inner: &mut Inner,
        batch: &mut WriteBatch,
        req: &CompactionRequest,
    ) -> Result<()> {
        if req.revision <= inner.compacted {
            return Err(StoreError::Compacted {
                compact_revision: inner.compacted,
            });
        }
        if req.revision > inner.current {
            return Err(StoreError::FutureRevision);
        }
        let removed = inner.index.compact(req.revision);
        let cf = self.engine.cf(CF_REV);
        for rev in &removed {
            batch.delete_cf(cf, rev.to_key());
        }
        batch.put_cf(
            self.engine.cf(CF_META),
            META_COMPACTED,
            req.revision.to_be_bytes(),
        );
        inner.compacted = req.revision;
        Ok(())
    }

    /// Makes every applied write durable (state-machine writes skip the WAL).
    pub fn flush(&self) -> Result<()> {
        self.engine.flush_state()
    }

    /// Asks RocksDB to rewrite the compacted part of history so its space is freed.
    pub fn reclaim_space(&self) {
        let upto = Rev::new(self.progress().compacted, 0).to_key();
        self.engine
            .db
            .compact_range_cf(self.engine.cf(CF_REV), None::<&[u8]>, Some(&upto[..]));
    }

    // ---------------------------------------------------------------- snapshots

    /// Serialises the applied state for a Raft snapshot: every key of the state column
    /// family as (u32 key length, key, u32 value length, value), big-endian. The lock is
    /// held only to pin a RocksDB snapshot at the applied position; the copy is made from
    /// that snapshot, so appliers are not held up while a large state is read.
    pub fn build_snapshot(&self) -> Result<StateSnapshot> {
        let inner = self.inner.read().unwrap();
        let pinned = self.engine.db.snapshot();
        let (index, term, conf_state) = (
            inner.applied_index,
            inner.applied_term,
            inner.conf_state.clone(),
        );
        drop(inner);
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&pinned);
        opts.fill_cache(false);
        let mut data = Vec::new();
        for item in
            self.engine
                .db
                .iterator_cf_opt(self.engine.cf(CF_STATE), opts, IteratorMode::Start)
        {
            let (k, v) = item?;
            data.extend_from_slice(&(k.len() as u32).to_be_bytes());
            data.extend_from_slice(&k);
            data.extend_from_slice(&(v.len() as u32).to_be_bytes());
            data.extend_from_slice(&v);
        }
        Ok(StateSnapshot {
            data,
            index,
            term,
            conf_state,
        })
    }

    /// Replaces the whole state machine with a snapshot taken at (`index`, `term`) with
    /// configuration `conf_state`. `batch` carries the caller's own changes (the Raft log
    /// reset) so that both land in one atomic write.
    pub fn restore(
        &self,
        data: &[u8],
        index: u64,
        term: u64,
        conf_state: &ConfState,
        mut batch: WriteBatch,
    ) -> Result<()> {
        let mut inner = self.inner.write().unwrap();
        let meta = self.engine.cf(CF_STATE);
        batch.delete_range_cf(meta, &[][..], &[0xff; 32][..]);
        let mut rest = data;
        let take = |rest: &mut &[u8], n: usize| -> Result<Vec<u8>> {
            if rest.len() < n {
                return Err(StoreError::Corrupt("truncated snapshot".into()));
            }
            let (a, b) = rest.split_at(n);
            *rest = b;
            Ok(a.to_vec())
        };
        while !rest.is_empty() {
            let klen = u32::from_be_bytes(take(&mut rest, 4)?.try_into().unwrap()) as usize;
            let k = take(&mut rest, klen)?;
            let vlen = u32::from_be_bytes(take(&mut rest, 4)?.try_into().unwrap()) as usize;
            let v = take(&mut rest, vlen)?;
            batch.put_cf(meta, k, v);
        }
        batch.put_cf(meta, META_CONF_STATE, conf_state.write_to_bytes()?);
        Self::put_applied(&self.engine, &mut batch, index, term);
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.engine.db.write_opt(batch, &opts)?;
        *inner = Self::load(&self.engine)?;
        self.revision_tx.send_replace(inner.current);
        Ok(())
    }
}

/// A transaction's own writes: changed keys and their new history records.
type Overlay<'a> = (
    &'a BTreeMap<Vec<u8>, Entry>,
    &'a HashMap<Rev, RevisionRecord>,
);

/// Applies committed entries under one write lock, into one RocksDB batch. Each entry's
/// effect is visible to the next one at once (memory is updated as entries are applied;
/// their records are served from `pending` until the batch is written); readers see
/// nothing until [`Applier::finish`] has written the batch and released the lock.
pub struct Applier<'a> {
    sm: &'a StateMachine,
    inner: std::sync::RwLockWriteGuard<'a, Inner>,
    batch: WriteBatch,
    pending: HashMap<Rev, RevisionRecord>,
    applied: Option<(u64, u64)>,
}

impl Applier<'_> {
    /// Records that entry `index` (no state change) was applied.
    pub fn noop(&mut self, index: u64, term: u64) {
        self.applied = Some((index, term));
    }

    /// Members as of the entries applied so far.
    pub fn members(&self) -> Vec<Member> {
        self.inner.members.values().cloned().collect()
    }

    /// Applies a membership change: the new voter set and the member table.
    pub fn conf_change(
        &mut self,
        index: u64,
        term: u64,
        conf_state: &ConfState,
        add: Option<&Member>,
        remove: Option<u64>,
    ) -> Result<()> {
        let meta = self.sm.engine.cf(CF_META);
        self.batch
            .put_cf(meta, META_CONF_STATE, conf_state.write_to_bytes()?);
        if let Some(m) = add {
            self.batch
                .put_cf(meta, meta_key(META_MEMBER, m.id), m.encode_to_vec());
            self.inner.members.insert(m.id, m.clone());
        }
        if let Some(id) = remove {
            self.batch.delete_cf(meta, meta_key(META_MEMBER, id));
            self.inner.members.remove(&id);
        }
        self.inner.conf_state = conf_state.clone();
        self.applied = Some((index, term));
        Ok(())
    }

    /// Applies one replicated command at Raft position (`index`, `term`). A returned error
    /// is deterministic (every member reaches it) and leaves the data unchanged; only the
    /// applied index moves. Every path checks before it writes, so a failed command adds
    /// nothing to the batch.
    pub fn apply(
        &mut self,
        index: u64,
        term: u64,
        op: &ferrokube_proto::raftpeer::command::Op,
    ) -> Result<Applied> {
        use ferrokube_proto::raftpeer::command::Op;
        let sm = self.sm;
        let meta = sm.engine.cf(CF_META);
        self.applied = Some((index, term));
        let inner = &mut *self.inner;
        let batch = &mut self.batch;
        let pending = &mut self.pending;
        let now = Instant::now();
        match op {
            Op::Txn(req) => {
                let (resp, commit) = sm.apply_txn(inner, batch, pending, req)?;
                if let Some(c) = commit {
                    c.commit(inner);
                }
                Ok(Applied::Txn(resp))
            }
            Op::Compaction(req) => {
                sm.apply_compaction(inner, batch, req)?;
                Ok(Applied::Compacted)
            }
            Op::LeaseGrant(req) => {
                if inner.leases.contains_key(&req.id) {
                    return Err(StoreError::LeaseExists);
                }
                if req.id <= 0 {
                    return Err(StoreError::InvalidArgument(
                        "lease ID must be positive".into(),
                    ));
                }
                let ttl = req.ttl.clamp(MIN_LEASE_TTL, MAX_LEASE_TTL);
                let rec = LeaseRecord { id: req.id, ttl };
                batch.put_cf(
                    meta,
                    meta_key(META_LEASE, req.id as u64),
                    rec.encode_to_vec(),
                );
                inner.leases.insert(
                    req.id,
                    LeaseState {
                        ttl,
                        expiry: now + Duration::from_secs(ttl as u64),
                        keys: BTreeSet::new(),
                    },
                );
                Ok(Applied::LeaseGranted { id: req.id, ttl })
            }
            Op::LeaseRevoke(req) => {
                let Some(l) = inner.leases.get(&req.id) else {
                    return Err(StoreError::LeaseNotFound);
                };
                let ops = l
                    .keys
                    .iter()
                    .map(|key| RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: key.clone(),
                                ..Default::default()
                            },
                        )),
                    })
                    .collect();
                let txn = TxnRequest {
                    success: ops,
                    ..Default::default()
                };
                let (_, commit) = sm.apply_txn(inner, batch, pending, &txn)?;
                if let Some(c) = commit {
                    c.commit(inner);
                }
                batch.delete_cf(meta, meta_key(META_LEASE, req.id as u64));
                inner.leases.remove(&req.id);
                Ok(Applied::LeaseRevoked)
            }
            Op::LeaseKeepAlive(id) => match inner.leases.get_mut(id) {
                Some(l) => {
                    l.expiry = now + Duration::from_secs(l.ttl as u64);
                    Ok(Applied::LeaseRenewed { ttl: l.ttl })
                }
                None => Err(StoreError::LeaseNotFound),
            },
            Op::MemberAttributes(attrs) => match inner.members.get_mut(&attrs.id) {
                Some(m) => {
                    m.name = attrs.name.clone();
                    m.client_ur_ls = attrs.client_urls.clone();
                    batch.put_cf(meta, meta_key(META_MEMBER, m.id), m.encode_to_vec());
                    Ok(Applied::MemberUpdated)
                }
                None => Err(StoreError::MemberNotFound),
            },
        }
    }

    /// Writes the batch (with the last applied position), then lets readers and watchers
    /// see the new state.
    pub fn finish(mut self) -> Result<()> {
        if let Some((index, term)) = self.applied {
            StateMachine::put_applied(&self.sm.engine, &mut self.batch, index, term);
            self.inner.applied_index = index;
            self.inner.applied_term = term;
        }
        let batch = std::mem::take(&mut self.batch);
        if !batch.is_empty() {
            self.sm.engine.write_state(batch)?;
        }
        let current = self.inner.current;
        drop(self.inner);
        if current != *self.sm.revision_tx.borrow() {
            self.sm.revision_tx.send_replace(current);
        }
        Ok(())
    }
}

/// Values for index entries: from `local` (records not yet in RocksDB) or RocksDB, read
/// at `pinned` when given.
fn fetch_records<'r>(
    engine: &Engine,
    pinned: Option<&rocksdb::Snapshot<'_>>,
    local: impl Fn(&Rev) -> Option<&'r RevisionRecord>,
    entries: &[(Vec<u8>, Entry)],
) -> Result<Vec<KeyValue>> {
    let mut out: Vec<Option<KeyValue>> = vec![None; entries.len()];
    let mut wanted = Vec::new();
    for (i, (_, e)) in entries.iter().enumerate() {
        match local(&e.rev) {
            Some(rec) => out[i] = rec.kv.clone(),
            None => wanted.push(i),
        }
    }
    if !wanted.is_empty() {
        let cf = engine.cf(CF_REV);
        let keys: Vec<_> = wanted
            .iter()
            .map(|&i| (cf, entries[i].1.rev.to_key()))
            .collect();
        let mut opts = ReadOptions::default();
        if let Some(snap) = pinned {
            opts.set_snapshot(snap);
        }
        for (&i, got) in wanted.iter().zip(engine.db.multi_get_cf_opt(keys, &opts)) {
            let v = got?.ok_or_else(|| {
                StoreError::Corrupt(format!("missing history record {:?}", entries[i].1.rev))
            })?;
            out[i] = RevisionRecord::decode(&*v)?.kv;
        }
    }
    out.into_iter()
        .map(|kv| kv.ok_or_else(|| StoreError::Corrupt("record without key-value".into())))
        .collect()
}

/// A range's index work done: either the answer, or the entries whose values it needs.
enum Planned {
    Done(RangeResponse),
    Fetch(RangePlan),
}

struct RangePlan {
    entries: Vec<(Vec<u8>, Entry)>,
    count: i64,
    more: bool,
    /// Sort by value (descending?) and then keep `limit`.
    value_sort: Option<(bool, usize)>,
    keys_only: bool,
}

impl RangePlan {
    fn finish(self, mut kvs: Vec<KeyValue>) -> RangeResponse {
        let mut more = self.more;
        if let Some((descending, limit)) = self.value_sort {
            kvs.sort_by(|a, b| a.value.cmp(&b.value));
            if descending {
                kvs.reverse();
            }
            more = kvs.len() > limit;
            kvs.truncate(limit);
            if self.keys_only {
                for kv in &mut kvs {
                    kv.value.clear();
                }
            }
        }
        RangeResponse {
            header: None,
            kvs,
            more,
            count: self.count,
        }
    }
}

/// A consistent read view: the committed index plus, inside a transaction, its own writes.
struct View<'a> {
    inner: &'a Inner,
    engine: &'a Engine,
    overlay: Option<Overlay<'a>>,
    /// Records of earlier entries in the batch being applied, not yet in RocksDB.
    pending: Option<&'a HashMap<Rev, RevisionRecord>>,
}

impl View<'_> {
    /// Live entries in `range` at revision `at` (the overlay applies at the current revision).
    fn live(&self, range: &KeyRange<'_>, at: i64) -> Vec<(Vec<u8>, Entry)> {
        let base = self
            .inner
            .index
            .range(range)
            .filter_map(|(k, h)| live_at(h, at).map(|e| (k.clone(), e)));
        match self.overlay {
            Some((changes, _)) if !changes.is_empty() => {
                let mut merged: BTreeMap<Vec<u8>, Option<Entry>> =
                    base.map(|(k, e)| (k, Some(e))).collect();
                for (k, e) in changes {
                    if range.contains(k) {
                        merged.insert(k.clone(), e.is_live().then_some(*e));
                    }
                }
                merged
                    .into_iter()
                    .filter_map(|(k, e)| e.map(|e| (k, e)))
                    .collect()
            }
            _ => base.collect(),
        }
    }

    fn kv_from_index(key: &[u8], e: &Entry) -> KeyValue {
        let (create, version, lease) = match e.change {
            Change::Put {
                create,
                version,
                lease,
            } => (create, version, lease),
            Change::Tombstone => (0, 0, 0),
        };
        KeyValue {
            key: key.to_vec(),
            create_revision: create,
            mod_revision: e.rev.main,
            version,
            value: Vec::new(),
            lease,
        }
    }

    /// Full key-values (with values) for `entries`.
    fn fetch(&self, entries: &[(Vec<u8>, Entry)]) -> Result<Vec<KeyValue>> {
        let local = |rev: &Rev| {
            self.overlay
                .and_then(|(_, recs)| recs.get(rev))
                .or_else(|| self.pending.and_then(|p| p.get(rev)))
        };
        fetch_records(self.engine, None, local, entries)
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        match self.plan_range(req)? {
            Planned::Done(resp) => Ok(resp),
            Planned::Fetch(plan) => {
                let kvs = self.fetch(&plan.entries)?;
                Ok(plan.finish(kvs))
            }
        }
    }

    /// Everything a range needs from the index; values are fetched separately (so that a
    /// plain range can fetch them after releasing the lock).
    fn plan_range(&self, req: &RangeRequest) -> Result<Planned> {
        use ferrokube_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
        let current = self.inner.current;
        let at = if req.revision <= 0 {
            current
        } else if req.revision > current {
            return Err(StoreError::FutureRevision);
        } else if req.revision < self.inner.compacted {
            return Err(StoreError::Compacted {
                compact_revision: self.inner.compacted,
            });
        } else {
            req.revision
        };
        // Inside a transaction that already wrote, reads see those writes.
        let at = match self.overlay {
            Some((c, _)) if !c.is_empty() && req.revision <= 0 => at + 1,
            _ => at,
        };
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut live = self.live(&range, at);
        let count = live.len() as i64;
        let filtered = req.min_mod_revision > 0
            || req.max_mod_revision > 0
            || req.min_create_revision > 0
            || req.max_create_revision > 0;
        if filtered {
            live.retain(|(k, e)| {
                let kv = Self::kv_from_index(k, e);
                (req.min_mod_revision <= 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision <= 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision <= 0
                        || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision <= 0
                        || kv.create_revision <= req.max_create_revision)
            });
        }
        if req.count_only {
            return Ok(Planned::Done(RangeResponse {
                header: None,
                kvs: Vec::new(),
                more: false,
                count,
            }));
        }
        let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let order = match (order, target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        let limit = if req.limit > 0 {
            req.limit as usize
        } else {
            usize::MAX
        };
        if order != SortOrder::None && target == SortTarget::Value {
            // Sorting by value needs every value first.
            return Ok(Planned::Fetch(RangePlan {
                entries: live,
                count,
                more: false,
                value_sort: Some((order == SortOrder::Descend, limit)),
                keys_only: req.keys_only,
            }));
        }
        // Sort (if asked) on index data, then fetch only what is returned.
        if order != SortOrder::None {
            let key_of = |(k, e): &(Vec<u8>, Entry)| {
                let kv = Self::kv_from_index(k, e);
                match target {
                    SortTarget::Version => (kv.version, Vec::new()),
                    SortTarget::Create => (kv.create_revision, Vec::new()),
                    SortTarget::Mod => (kv.mod_revision, Vec::new()),
                    _ => (0, kv.key),
                }
            };
            live.sort_by_key(key_of);
            if order == SortOrder::Descend {
                live.reverse();
            }
        }
        let total = live.len();
        live.truncate(limit);
        let more = total > live.len() || (!filtered && count as usize > live.len());
        if req.keys_only {
            let kvs = live
                .iter()
                .map(|(k, e)| Self::kv_from_index(k, e))
                .collect();
            return Ok(Planned::Done(RangeResponse {
                header: None,
                kvs,
                more,
                count,
            }));
        }
        Ok(Planned::Fetch(RangePlan {
            entries: live,
            count,
            more,
            value_sort: None,
            keys_only: false,
        }))
    }

    fn compare(&self, c: &Compare) -> Result<bool> {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let range = KeyRange::new(&c.key, &c.range_end);
        let live = self.live(&range, self.inner.current);
        let target = CompareTarget::try_from(c.target)
            .map_err(|_| StoreError::InvalidArgument("unknown compare target".into()))?;
        let result = CompareResult::try_from(c.result)
            .map_err(|_| StoreError::InvalidArgument("unknown compare result".into()))?;
        let kvs = if live.is_empty() {
            if target == CompareTarget::Value {
                return Ok(false);
            }
            vec![KeyValue::default()]
        } else if target == CompareTarget::Value {
            self.fetch(&live)?
        } else {
            live.iter()
                .map(|(k, e)| Self::kv_from_index(k, e))
                .collect()
        };
        let ok = |ord: std::cmp::Ordering| match result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
            CompareResult::NotEqual => ord.is_ne(),
        };
        for kv in &kvs {
            let ord = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version) => kv.version.cmp(v),
                (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => {
                    kv.create_revision.cmp(v)
                }
                (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => kv.mod_revision.cmp(v),
                (Some(TargetUnion::Value(v)), CompareTarget::Value) => kv.value.cmp(v),
                (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => kv.lease.cmp(v),
                (None, CompareTarget::Version) => kv.version.cmp(&0),
                (None, CompareTarget::Create) => kv.create_revision.cmp(&0),
                (None, CompareTarget::Mod) => kv.mod_revision.cmp(&0),
                (None, CompareTarget::Value) => kv.value.as_slice().cmp(&[][..]),
                (None, CompareTarget::Lease) => kv.lease.cmp(&0),
                _ => {
                    return Err(StoreError::InvalidArgument(
                        "compare target does not match its value".into(),
                    ))
                }
            };
            if !ok(ord) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Builds one transaction's changes before they are committed.
struct TxnWriter<'p> {
    main: i64,
    sub: i64,
    changes: BTreeMap<Vec<u8>, Entry>,
    records: HashMap<Rev, RevisionRecord>,
    /// Records written by earlier entries of the batch being applied.
    pending: Option<&'p HashMap<Rev, RevisionRecord>>,
}

impl TxnWriter<'_> {
    fn view<'a>(&'a self, inner: &'a Inner, engine: &'a Engine) -> View<'a> {
        View {
            inner,
            engine,
            overlay: Some((&self.changes, &self.records)),
            pending: self.pending,
        }
    }

    /// The key's entry in force now, counting this transaction's writes.
    fn current(&self, inner: &Inner, key: &[u8]) -> Option<Entry> {
        match self.changes.get(key) {
            Some(e) => e.is_live().then_some(*e),
            None => inner
                .index
                .get(key)
                .and_then(|h| h.last().copied())
                .filter(Entry::is_live),
        }
    }

    fn next_rev(&mut self) -> Rev {
        let r = Rev::new(self.main, self.sub);
        self.sub += 1;
        r
    }

    /// Runs a transaction. As in etcd, every compare — nested transactions' too — is
    /// evaluated against the state before the transaction, then the chosen branches run.
    fn txn(&mut self, inner: &Inner, engine: &Engine, req: &TxnRequest) -> Result<TxnResponse> {
        let mut path = Vec::new();
        self.compare_path(inner, engine, req, &mut path)?;
        self.run_txn(inner, engine, req, &mut path.into_iter())
    }

    /// The branch each (nested) transaction takes, in depth-first order.
    fn compare_path(
        &self,
        inner: &Inner,
        engine: &Engine,
        req: &TxnRequest,
        path: &mut Vec<bool>,
    ) -> Result<()> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.view(inner, engine).compare(c)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                self.compare_path(inner, engine, t, path)?;
            }
        }
        Ok(())
    }

    fn run_txn(
        &mut self,
        inner: &Inner,
        engine: &Engine,
        req: &TxnRequest,
        path: &mut std::vec::IntoIter<bool>,
    ) -> Result<TxnResponse> {
        let succeeded = path
            .next()
            .ok_or_else(|| StoreError::Corrupt("transaction path".into()))?;
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.view(inner, engine).range(r)?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.put(inner, engine, p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete(inner, engine, d)?)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    response_op::Response::ResponseTxn(self.run_txn(inner, engine, t, path)?)
                }
                None => return Err(StoreError::InvalidArgument("empty request op".into())),
            };
            responses.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    fn put(&mut self, inner: &Inner, engine: &Engine, p: &PutRequest) -> Result<PutResponse> {
        if p.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if self.changes.contains_key(&p.key) {
            return Err(StoreError::DuplicateKey);
        }
        let prev = self.current(inner, &p.key);
        let prev_kv = match prev {
            Some(e) if p.prev_kv || p.ignore_value => Some(
                self.view(inner, engine)
                    .fetch(&[(p.key.clone(), e)])?
                    .remove(0),
            ),
            _ => None,
        };
        let value = if p.ignore_value {
            match &prev_kv {
                Some(kv) => kv.value.clone(),
                None => return Err(StoreError::KeyNotFound),
            }
        } else {
            p.value.clone()
        };
        let lease = if p.ignore_lease {
            match prev.map(|e| e.change) {
                Some(Change::Put { lease, .. }) => lease,
                _ => return Err(StoreError::KeyNotFound),
            }
        } else {
            p.lease
        };
        if lease != 0 && !inner.leases.contains_key(&lease) {
            return Err(StoreError::LeaseNotFound);
        }
        let (create, version) = match prev.map(|e| e.change) {
            Some(Change::Put {
                create, version, ..
            }) => (create, version + 1),
            _ => (self.main, 1),
        };
        let rev = self.next_rev();
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: create,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        let (prev_main, prev_sub) = prev.map(|e| (e.rev.main, e.rev.sub)).unwrap_or((0, 0));
        self.records.insert(
            rev,
            RevisionRecord {
                kv: Some(kv),
                tombstone: false,
                prev_main,
                prev_sub,
            },
        );
        self.changes.insert(
            p.key.clone(),
            Entry {
                rev,
                change: Change::Put {
                    create,
                    version,
                    lease,
                },
            },
        );
        Ok(PutResponse {
            header: None,
            prev_kv: if p.prev_kv { prev_kv } else { None },
        })
    }

    fn delete(
        &mut self,
        inner: &Inner,
        engine: &Engine,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        if d.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        let range = KeyRange::new(&d.key, &d.range_end);
        let view = self.view(inner, engine);
        let live = view.live(&range, inner.current + 1);
        let prev_kvs = if d.prev_kv {
            view.fetch(&live)?
        } else {
            Vec::new()
        };
        for (key, e) in &live {
            if self.changes.contains_key(key) {
                return Err(StoreError::DuplicateKey);
            }
            let rev = self.next_rev();
            self.records.insert(
                rev,
                RevisionRecord {
                    kv: Some(KeyValue {
                        key: key.clone(),
                        mod_revision: rev.main,
                        ..Default::default()
                    }),
                    tombstone: true,
                    prev_main: e.rev.main,
                    prev_sub: e.rev.sub,
                },
            );
            self.changes.insert(
                key.clone(),
                Entry {
                    rev,
                    change: Change::Tombstone,
                },
            );
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted: live.len() as i64,
            prev_kvs,
        })
    }
}

/// The in-memory half of a written transaction.
struct TxnCommit {
    main: i64,
    changes: BTreeMap<Vec<u8>, Entry>,
}

impl TxnCommit {
    fn commit(self, inner: &mut Inner) {
        for (key, entry) in self.changes {
            let old = match inner
                .index
                .get(&key)
                .and_then(|h| h.last())
                .map(|e| e.change)
            {
                Some(Change::Put { lease, .. }) => lease,
                _ => 0,
            };
            let new = match entry.change {
                Change::Put { lease, .. } => lease,
                Change::Tombstone => 0,
            };
            if old != new {
                if let Some(l) = inner.leases.get_mut(&old) {
                    l.keys.remove(&key);
                }
                if let Some(l) = inner.leases.get_mut(&new) {
                    l.keys.insert(key.clone());
                }
            }
            inner.index.push(&key, entry);
        }
        inner.current = self.main;
    }
}

#[cfg(test)]
mod tests;
