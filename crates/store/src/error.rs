//! Store errors, worded like etcd's so that etcd clients recognise them.

use tonic::{Code, Status};

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    #[error("etcdserver: storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("etcdserver: corrupt data: {0}")]
    Corrupt(String),
    #[error("etcdserver: raft: {0}")]
    Raft(#[from] raft::Error),
}

impl StoreError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use StoreError::*;
        match self {
            Compacted { .. } | FutureRevision => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExists | PeerUrlExists | NotEnoughStartedMembers => Code::FailedPrecondition,
            EmptyKey | KeyNotFound | RequestTooLarge | DuplicateKey | TooManyOps
            | InvalidArgument(_) => Code::InvalidArgument,
            Timeout | NoLeader | Stopped | Unhealthy => Code::Unavailable,
            NoSpace => Code::ResourceExhausted,
            Storage(_) | Raft(_) => Code::Internal,
            Corrupt(_) => Code::DataLoss,
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<prost::DecodeError> for StoreError {
    fn from(e: prost::DecodeError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl From<protobuf::ProtobufError> for StoreError {
    fn from(e: protobuf::ProtobufError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
