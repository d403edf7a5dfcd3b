//! ferrokube's replicated key-value store: etcd v3 semantics on raft-rs and RocksDB.
//!
//! Start at [`Store`]: [`Store::open`] opens or bootstraps a member and runs its Raft
//! thread; its methods are the operations (range, put, delete, txn, compact, leases,
//! membership). [`etcd`] serves them as the etcd v3 gRPC API, and [`Store::peer_service`]
//! is the transport between members.
//!
//! Building blocks, bottom up:
//! - [`engine`]: the RocksDB instance and its column families;
//! - [`mvcc`]: the state machine — revisions, key index, history, leases, members;
//! - [`raftlog`]: raft-rs storage for the log and hard state;
//! - `node`: the Raft thread and its ready loop;
//! - `transport`: peer messages over gRPC.

pub mod engine;
pub mod error;
pub mod etcd;
mod logger;
pub mod mvcc;
mod node;
pub mod raftlog;
mod store;
mod transport;

pub use error::{Result, StoreError};
pub use node::{RaftSettings, RaftStatus};
pub use store::{member_id, ClusterState, MemberStatus, PeerTls, Store, StoreConfig};
