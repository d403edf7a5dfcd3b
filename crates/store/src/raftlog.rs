//! The Raft log and hard state in RocksDB: raft-rs's [`Storage`] for this store.
//!
//! Layout in the `raft` column family: `hs` → HardState, `trunc` → index and term of the
//! last entry folded into the state machine snapshot, `e<index>` → Entry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::engine::{Engine, CF_RAFT};
use crate::error::{Result, StoreError};
use crate::mvcc::StateMachine;

const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_TRUNCATED: &[u8] = b"trunc";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [b'e'; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Raft log storage backed by RocksDB.
pub struct RaftLog {
    engine: Engine,
    sm: Arc<StateMachine>,
    hard_state: HardState,
    truncated_index: u64,
    truncated_term: u64,
    /// Term of every entry in the log, from `truncated_index + 1` on.
    terms: VecDeque<u64>,
    /// The newest entries, so that committing and replicating them needs no disk read.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    snapshots: Arc<Mutex<SnapshotSlot>>,
}

/// The snapshot being built for lagging members, or the last one built.
#[derive(Default)]
struct SnapshotSlot {
    building: bool,
    ready: Option<(Instant, Snapshot)>,
}

/// How long a built snapshot is handed out before a fresher one is made.
const SNAPSHOT_REUSE: Duration = Duration::from_secs(30);

/// Most bytes of entries kept in the cache.
const CACHE_BYTES: usize = 16 << 20;

fn storage_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RaftLog {
    /// Loads the log's bookkeeping (not the entries themselves).
    pub fn open(engine: Engine, sm: Arc<StateMachine>) -> Result<Self> {
        let cf = engine.cf(CF_RAFT);
        let hard_state = match engine.db.get_cf(cf, KEY_HARD_STATE)? {
            Some(v) => HardState::parse_from_bytes(&v)?,
            None => HardState::default(),
        };
        let (truncated_index, truncated_term) = match engine.db.get_cf(cf, KEY_TRUNCATED)? {
            Some(v) if v.len() == 16 => (
                u64::from_be_bytes(v[..8].try_into().unwrap()),
                u64::from_be_bytes(v[8..].try_into().unwrap()),
            ),
            Some(_) => return Err(StoreError::Corrupt("raft truncation point".into())),
            None => (0, 0),
        };
        let mut terms = VecDeque::new();
        let start = entry_key(truncated_index + 1);
        for item in engine
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            if k.len() != 9 || k[0] != b'e' {
                break;
            }
            let e = Entry::parse_from_bytes(&v)?;
            if e.index != truncated_index + 1 + terms.len() as u64 {
                return Err(StoreError::Corrupt(format!("raft log gap at {}", e.index)));
            }
            terms.push_back(e.term);
        }
        Ok(RaftLog {
            engine,
            sm,
            hard_state,
            truncated_index,
            truncated_term,
            terms,
            cache: VecDeque::new(),
            cache_bytes: 0,
            snapshots: Arc::default(),
        })
    }

    /// Whether nothing was ever written (a member that still has to be bootstrapped).
    pub fn is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.truncated_index == 0
            && self.terms.is_empty()
    }

    /// Starts a new cluster's log as if entries up to `index` were folded into a snapshot.
    pub fn bootstrap(&mut self, index: u64, term: u64) -> Result<()> {
        let hs = HardState {
            term,
            commit: index,
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        self.put_truncated(&mut batch, index, term);
        batch.put_cf(self.cf(), KEY_HARD_STATE, hs.write_to_bytes()?);
        self.write(batch, true)?;
        self.hard_state = hs;
        self.truncated_index = index;
        self.truncated_term = term;
        self.terms.clear();
        self.clear_cache();
        Ok(())
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    fn cache_entries(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        // Drop a conflicting tail, or everything if the new entries do not follow on.
        match self.cache.front().map(|e| e.index) {
            Some(start)
                if first.index >= start && first.index <= start + self.cache.len() as u64 =>
            {
                let keep = (first.index - start) as usize;
                for e in self.cache.drain(keep..) {
                    self.cache_bytes -= e.data.len() + e.context.len();
                }
            }
            _ => self.clear_cache(),
        }
        for e in entries {
            self.cache_bytes += e.data.len() + e.context.len();
            self.cache.push_back(e.clone());
        }
        while self.cache_bytes > CACHE_BYTES && self.cache.len() > 1 {
            let e = self.cache.pop_front().unwrap();
            self.cache_bytes -= e.data.len() + e.context.len();
        }
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.engine.cf(CF_RAFT)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.engine.db.write_opt(batch, &opts)?;
        Ok(())
    }

    fn put_truncated(&self, batch: &mut WriteBatch, index: u64, term: u64) {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&index.to_be_bytes());
        v[8..].copy_from_slice(&term.to_be_bytes());
        batch.put_cf(self.cf(), KEY_TRUNCATED, v);
    }

    fn last(&self) -> u64 {
        self.truncated_index + self.terms.len() as u64
    }

    /// Current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Appends entries (replacing any conflicting tail) and the hard state, fsynced when
    /// `sync`, before raft-rs may send messages that depend on them.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        if let Some(first) = entries.first() {
            if first.index <= self.truncated_index {
                return Err(StoreError::Corrupt(format!(
                    "append at {} overwrites the compacted log (truncated at {})",
                    first.index, self.truncated_index
                )));
            }
            let new_last = entries.last().unwrap().index;
            let old_last = self.last();
            if new_last < old_last {
                batch.delete_range_cf(self.cf(), entry_key(new_last + 1), entry_key(old_last + 1));
            }
            for e in entries {
                batch.put_cf(self.cf(), entry_key(e.index), e.write_to_bytes()?);
            }
        }
        if let Some(hs) = hs {
            batch.put_cf(self.cf(), KEY_HARD_STATE, hs.write_to_bytes()?);
        }
        self.write(batch, sync)?;
        if let Some(first) = entries.first() {
            let keep = (first.index - self.truncated_index - 1) as usize;
            self.terms.truncate(keep);
            self.terms.extend(entries.iter().map(|e| e.term));
        }
        self.cache_entries(entries);
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a commit index learnt after a Ready (raft-rs's light ready). Not synced: a
    /// lost commit index is learnt again from the quorum, and [`RaftLog::cover_applied`]
    /// repairs one left below the applied index. Written all the same, so that after a
    /// process crash a restarted member knows how far it had got (its reads wait for that).
    pub fn set_commit(&mut self, commit: u64) -> Result<()> {
        if commit <= self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.append(&[], Some(&hs), false)
    }

    /// At start: entries up to `applied` were committed (only committed entries are
    /// applied), so a persisted commit index below it is stale; raise it, as raft-rs
    /// refuses to start with an applied index above the commit index.
    pub fn cover_applied(&mut self, applied: u64) -> Result<()> {
        if applied <= self.hard_state.commit {
            return Ok(());
        }
        if applied > self.last() {
            return Err(StoreError::Corrupt(format!(
                "state machine applied {applied} beyond the raft log's last index {}",
                self.last()
            )));
        }
        let mut hs = self.hard_state.clone();
        hs.commit = applied;
        self.append(&[], Some(&hs), true)
    }

    /// Installs a snapshot received from the leader: the state machine is replaced and the
    /// log reset, atomically.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let mut hs = self.hard_state.clone();
        // Term and vote stay as raft-rs hands them over in the same Ready's hard state:
        // raising the term here would pair it with a vote cast in an older term.
        hs.commit = hs.commit.max(meta.index);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(), entry_key(0), entry_key(u64::MAX));
        self.put_truncated(&mut batch, meta.index, meta.term);
        batch.put_cf(self.cf(), KEY_HARD_STATE, hs.write_to_bytes()?);
        self.sm.restore(
            snap.get_data(),
            meta.index,
            meta.term,
            meta.get_conf_state(),
            batch,
        )?;
        self.hard_state = hs;
        self.truncated_index = meta.index;
        self.truncated_term = meta.term;
        self.terms.clear();
        self.clear_cache();
        Ok(())
    }

    /// Drops entries up to and including `upto` (which must be applied already).
    pub fn compact(&mut self, upto: u64) -> Result<()> {
        if upto <= self.truncated_index || upto > self.last() {
            return Ok(());
        }
        let term = self
            .term_of(upto)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(), entry_key(0), entry_key(upto + 1));
        self.put_truncated(&mut batch, upto, term);
        self.write(batch, false)?;
        let n = (upto - self.truncated_index) as usize;
        self.terms.drain(..n);
        while self.cache.front().is_some_and(|e| e.index <= upto) {
            let e = self.cache.pop_front().unwrap();
            self.cache_bytes -= e.data.len() + e.context.len();
        }
        self.truncated_index = upto;
        self.truncated_term = term;
        Ok(())
    }

    /// Index of the first entry still in the log.
    pub fn first(&self) -> u64 {
        self.truncated_index + 1
    }

    /// Index of the last entry in the log.
    pub fn last_index_now(&self) -> u64 {
        self.last()
    }

    fn term_of(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.terms.get((idx - self.truncated_index - 1) as usize) {
            Some(t) => Ok(*t),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.sm.conf_state(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        if let Some(start) = self.cache.front().map(|e| e.index) {
            if low >= start {
                for e in self
                    .cache
                    .range((low - start) as usize..(high - start) as usize)
                {
                    size += u64::from(e.compute_size());
                    if !out.is_empty() && size > max_size {
                        break;
                    }
                    out.push(e.clone());
                }
                return Ok(out);
            }
        }
        let start = entry_key(low);
        for item in self
            .engine
            .db
            .iterator_cf(self.cf(), IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item.map_err(storage_err)?;
            if k.len() != 9 || k[0] != b'e' {
                break;
            }
            let e = Entry::parse_from_bytes(&v).map_err(storage_err)?;
            if e.index >= high {
                break;
            }
            size += v.len() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        if out.is_empty() || out[0].index != low {
            return Err(storage_err(format!("raft log entry {low} missing")));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut slot = self.snapshots.lock().unwrap();
        if let Some((made, snap)) = &slot.ready {
            let index = snap.get_metadata().index;
            // Usable if recent and the log still continues right after it.
            if index >= request_index
                && index >= self.truncated_index
                && made.elapsed() < SNAPSHOT_REUSE
            {
                return Ok(snap.clone());
            }
        }
        if !slot.building {
            slot.building = true;
            let sm = self.sm.clone();
            let slots = self.snapshots.clone();
            // Built off the Raft thread; raft-rs asks again on the next heartbeat.
            let spawned = std::thread::Builder::new()
                .name("raft-snapshot".into())
                .spawn(move || {
                    let built = sm.build_snapshot();
                    let mut slot = slots.lock().unwrap();
                    slot.building = false;
                    match built {
                        Ok(s) => {
                            let mut snap = Snapshot::default();
                            snap.set_data(s.data.into());
                            let meta = snap.mut_metadata();
                            meta.index = s.index;
                            meta.term = s.term;
                            meta.set_conf_state(s.conf_state);
                            slot.ready = Some((Instant::now(), snap));
                        }
                        Err(e) => tracing::error!("building a raft snapshot failed: {e}"),
                    }
                });
            if spawned.is_err() {
                slot.building = false;
            }
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path) -> RaftLog {
        let engine = Engine::open(dir).unwrap();
        let sm = Arc::new(StateMachine::open(engine.clone()).unwrap());
        RaftLog::open(engine, sm).unwrap()
    }

    fn indexes(log: &RaftLog, low: u64, high: u64) -> Vec<(u64, u64)> {
        log.entries(low, high, None, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    #[test]
    fn append_overwrites_a_conflicting_tail_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        assert!(log.is_empty());
        log.bootstrap(1, 1).unwrap();
        let es: Vec<Entry> = (2..=6).map(|i| entry(i, 1)).collect();
        log.append(&es, None, true).unwrap();
        // A new leader replaces 5 and 6 with one entry of term 2.
        log.append(&[entry(5, 2)], None, true).unwrap();
        assert_eq!(log.last_index().unwrap(), 5);
        assert_eq!(indexes(&log, 2, 6), vec![(2, 1), (3, 1), (4, 1), (5, 2)]);
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.first_index().unwrap(), 2);
        assert_eq!(log.last_index().unwrap(), 5);
        // Read from disk (the cache starts empty) the same entries.
        assert_eq!(indexes(&log, 2, 6), vec![(2, 1), (3, 1), (4, 1), (5, 2)]);
        assert_eq!(log.term(1).unwrap(), 1);
        assert_eq!(log.term(5).unwrap(), 2);
        assert!(matches!(
            log.term(6),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    #[test]
    fn compaction_moves_the_first_index_and_keeps_the_boundary_term() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.bootstrap(1, 1).unwrap();
        let es: Vec<Entry> = (2..=10).map(|i| entry(i, 1 + i / 5)).collect();
        log.append(&es, None, true).unwrap();
        log.compact(6).unwrap();
        assert_eq!(log.first_index().unwrap(), 7);
        assert_eq!(log.term(6).unwrap(), 2);
        assert!(matches!(
            log.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            log.entries(6, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(indexes(&log, 7, 11).len(), 4);
        // Size limits still return at least one entry.
        let one = log
            .entries(7, 11, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
        drop(log);
        let log = open(dir.path());
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (7, 10)
        );
    }

    #[test]
    fn a_stale_commit_index_is_raised_to_the_applied_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.bootstrap(1, 1).unwrap();
        let es: Vec<Entry> = (2..=4).map(|i| entry(i, 1)).collect();
        log.append(&es, None, true).unwrap();
        log.cover_applied(3).unwrap();
        assert_eq!(log.hard_state().commit, 3);
        assert!(
            log.cover_applied(9).is_err(),
            "applied beyond the log is corruption"
        );
    }
}
