//! The RocksDB instance shared by the Raft log and the MVCC state machine.
//!
//! One database, two column families:
//! - `raft`: log entries (`e` + index), hard state, truncation point — written through
//!   the WAL, fsynced before raft-rs may act on them;
//! - `state`: the state machine — MVCC history keyed by revision (16-byte big-endian keys,
//!   first byte below 0x80) and bookkeeping under keys starting with 0xFF (applied index,
//!   revisions, conf state, members, leases).
//!
//! State-machine writes skip the WAL: the Raft log is the source of truth and whatever a
//! crash loses is re-applied from it. That is safe because the applied index is written in
//! the same batch as the data it covers, one column family flushes atomically, and the
//! Raft log is only truncated after the state column family has been flushed
//! ([`Engine::flush_state`]).

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, FlushOptions, Options, WriteBatch, WriteOptions, DB,
};

use crate::error::Result;

pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_STATE: &str = "state";
/// First byte of every bookkeeping key in the state column family.
pub(crate) const META_PREFIX: u8 = 0xff;

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
        let cfs = [CF_RAFT, CF_STATE].map(|name| {
            let mut o = Options::default();
            o.set_write_buffer_size(32 << 20);
            if name == CF_RAFT {
                // Log entries live briefly: compressing them costs CPU and saves little.
                o.set_compression_type(rocksdb::DBCompressionType::None);
            } else {
                // Recent history is rewritten by compactions soon: compress only what
                // settles in the lower levels.
                use rocksdb::DBCompressionType::{Lz4, None as Plain};
                o.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
            }
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

    /// Options for state-machine writes (no WAL; see the module docs).
    pub(crate) fn state_write_opts() -> WriteOptions {
        let mut o = WriteOptions::default();
        o.disable_wal(true);
        o
    }

    /// Writes a state-machine batch.
    pub(crate) fn write_state(&self, batch: WriteBatch) -> Result<()> {
        self.db.write_opt(batch, &Self::state_write_opts())?;
        Ok(())
    }

    /// Makes every state-machine write so far durable (before the Raft log that could
    /// replay them is truncated).
    pub fn flush_state(&self) -> Result<()> {
        let mut o = FlushOptions::default();
        o.set_wait(true);
        self.db.flush_cf_opt(self.cf(CF_STATE), &o)?;
        Ok(())
    }

    /// Approximate bytes on disk (SST files plus memtables) across column families.
    pub fn size_bytes(&self) -> u64 {
        [CF_RAFT, CF_STATE]
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
