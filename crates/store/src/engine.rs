//! The RocksDB instance shared by the Raft log and the MVCC state machine.
//!
//! One database, one write-ahead log, four column families:
//! - `raft`: log entries (`e` + index), hard state, truncation point;
//! - `rev`: MVCC history, revision → [`RevisionRecord`](ferrokube_proto::raftpeer::RevisionRecord);
//! - `meta`: applied index, revisions, conf state, members, leases;
//!
//! Because every column family shares one WAL, a synced write of the Raft log also makes
//! every earlier state-machine write durable.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

use crate::error::Result;

pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_REV: &str = "rev";
pub(crate) const CF_META: &str = "meta";

/// Handle on the open database.
#[derive(Clone)]
pub struct Engine {
    pub(crate) db: Arc<DB>,
}

impl Engine {
    /// Opens (creating if needed) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        let cfs = [CF_RAFT, CF_REV, CF_META].map(|name| {
            let mut o = Options::default();
            o.set_write_buffer_size(32 << 20);
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Engine { db: Arc::new(db) })
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Approximate bytes on disk (SST files plus memtables) across column families.
    pub fn size_bytes(&self) -> u64 {
        [CF_RAFT, CF_REV, CF_META]
            .iter()
            .map(|n| {
                let cf = self.cf(n);
                let sst = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                sst + mem
            })
            .sum()
    }
}
