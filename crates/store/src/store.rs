//! [`Store`]: the handle the rest of the process uses — open a member, read, write, watch,
//! manage leases and membership. Every write goes through Raft; reads are linearizable
//! (ReadIndex) unless serializable is asked for.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrokube_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseRevokeRequest, Member, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use ferrokube_proto::raftpeer::raft_peer_server::RaftPeerServer;
use ferrokube_proto::raftpeer::{command, Command, MemberAttributes};
use prost::Message as _;
use raft::eraftpb::ConfState;
use raft::RawNode;
use tokio::sync::oneshot;

use crate::engine::Engine;
use crate::error::{Result, StoreError};
use crate::mvcc::{Applied, KeyRange, StateMachine};
use crate::node::{
    conf_change, conf_change_context, raft_config, Msg, RaftLoop, RaftSettings, RaftStatus,
};
use crate::raftlog::RaftLog;
use crate::transport::{PeerService, Transport};

/// Whether a member starts a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// PEM-encoded TLS material for the transport between members: every member presents
/// `cert`/`key` and accepts only peers whose certificates `ca` signed.
#[derive(Clone)]
pub struct PeerTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls { .. }")
    }
}

/// How to open a member.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// The URL other members reach this one at (also what its member ID is derived from).
    pub advertise_peer_url: String,
    pub advertise_client_urls: Vec<String>,
    /// Every initial member as (name, peer URL); used only when the data dir is empty.
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    pub cluster_token: String,
    pub raft: RaftSettings,
    /// How long a client request may wait for Raft before failing with a timeout.
    pub request_timeout: Duration,
    /// Largest request accepted (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Writes are refused once the database is larger (etcd's `--quota-backend-bytes`).
    pub quota_backend_bytes: u64,
    /// Most operations in one transaction (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// TLS for connections to other members (used for `https://` peer URLs).
    pub peer_tls: Option<PeerTls>,
}

impl StoreConfig {
    /// A single-member configuration with etcd's defaults.
    pub fn single(name: &str, data_dir: PathBuf, peer_url: &str, client_url: &str) -> Self {
        StoreConfig {
            name: name.into(),
            data_dir,
            advertise_peer_url: peer_url.into(),
            advertise_client_urls: vec![client_url.into()],
            initial_cluster: vec![(name.into(), peer_url.into())],
            initial_cluster_state: ClusterState::New,
            cluster_token: "etcd-cluster".into(),
            raft: RaftSettings::default(),
            request_timeout: Duration::from_secs(5),
            max_request_bytes: 1_572_864,
            quota_backend_bytes: 2 << 30,
            max_txn_ops: 128,
            peer_tls: None,
        }
    }
}

/// FNV-1a, for stable member and cluster IDs.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.iter().chain(b"/") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h.max(1)
}

/// The member ID for a peer URL in a cluster, the same on every member.
pub fn member_id(peer_url: &str, token: &str) -> u64 {
    fnv(&[token.as_bytes(), peer_url.as_bytes()])
}

struct Shared {
    id: u64,
    cfg: StoreConfig,
    sm: Arc<StateMachine>,
    raft_tx: Mutex<mpsc::Sender<Msg>>,
    status: Arc<Mutex<RaftStatus>>,
    seq: AtomicU64,
    transport: Transport,
    /// Commit index found in the log at start; local reads wait until it is applied, so
    /// that a restarted member never answers from a state older than before the restart.
    boot_commit: u64,
    caught_up: std::sync::atomic::AtomicBool,
}

/// A running store member. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// What a transaction may do, found before it is proposed.
#[derive(Debug, Default, Clone, Copy)]
struct TxnShape {
    writes: bool,
    puts: bool,
}

/// A point-in-time view of a member for `Status` and health checks.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub id: u64,
    pub cluster_id: u64,
    pub raft: RaftStatus,
    pub revision: i64,
    pub compacted: i64,
    pub db_size: u64,
}

impl Store {
    /// Opens the data dir (bootstrapping it if empty) and starts the Raft thread. Must be
    /// called inside a tokio runtime (peer delivery runs on it).
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| StoreError::InvalidArgument(format!("data dir: {e}")))?;
        let engine = Engine::open(&cfg.data_dir)?;
        let sm = Arc::new(StateMachine::open(engine.clone())?);
        let mut log = RaftLog::open(engine, sm.clone())?;
        let id = member_id(&cfg.advertise_peer_url, &cfg.cluster_token);
        let mut initial_members: Vec<Member> = cfg
            .initial_cluster
            .iter()
            .map(|(name, url)| Member {
                id: member_id(url, &cfg.cluster_token),
                name: name.clone(),
                peer_ur_ls: vec![url.clone()],
                client_ur_ls: Vec::new(),
                is_learner: false,
            })
            .collect();
        initial_members.sort_by_key(|m| m.id);
        let fresh = log.is_empty();
        if fresh && cfg.initial_cluster_state == ClusterState::New {
            let members = initial_members.clone();
            if !members.iter().any(|m| m.id == id) {
                return Err(StoreError::InvalidArgument(format!(
                    "--initial-cluster has no member with this member's peer URL {}",
                    cfg.advertise_peer_url
                )));
            }
            let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
            let id_bytes: Vec<[u8; 8]> = ids.iter().map(|i| i.to_be_bytes()).collect();
            let mut parts: Vec<&[u8]> = vec![cfg.cluster_token.as_bytes()];
            parts.extend(id_bytes.iter().map(|b| &b[..]));
            let cluster_id = fnv(&parts);
            let cs = ConfState {
                voters: ids,
                ..Default::default()
            };
            sm.bootstrap(cluster_id, &members, &cs, 1, 1)?;
            log.bootstrap(1, 1)?;
            tracing::info!(
                member = format!("{id:x}"),
                cluster = format!("{cluster_id:x}"),
                "bootstrapped new cluster"
            );
        }
        let applied = sm.progress().applied_index;
        log.cover_applied(applied)?;
        let boot_commit = log.hard_state().commit;
        let (raft_tx, raft_rx) = mpsc::channel();
        let tls = cfg.peer_tls.as_ref().map(|t| {
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca))
                .identity(tonic::transport::Identity::from_pem(&t.cert, &t.key))
        });
        let transport = Transport::new(id, raft_tx.clone(), tokio::runtime::Handle::current(), tls);
        transport.set_cluster_id(sm.progress().cluster_id);
        if fresh && cfg.initial_cluster_state == ClusterState::Existing {
            // Until the leader's snapshot brings the member list, reach peers through
            // --initial-cluster.
            transport.set_members(&initial_members);
        } else {
            transport.set_members(&sm.members());
        }
        let raw = RawNode::new(
            &raft_config(id, applied, &cfg.raft),
            log,
            &crate::logger::raft_logger(id),
        )?;
        let status = Arc::new(Mutex::new(RaftStatus::default()));
        let rl = RaftLoop::new(
            id,
            raw,
            sm.clone(),
            transport.clone(),
            status.clone(),
            cfg.raft.clone(),
        );
        std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || rl.run(raft_rx))
            .map_err(|e| StoreError::InvalidArgument(format!("raft thread: {e}")))?;
        let store = Store {
            shared: Arc::new(Shared {
                id,
                cfg,
                sm,
                raft_tx: Mutex::new(raft_tx),
                status,
                // Sequence numbers must not repeat across restarts: entries proposed before
                // a crash may still be applied after it, and must not answer new callers.
                seq: AtomicU64::new((rand::random::<u64>() >> 2).max(1)),
                transport,
                boot_commit,
                caught_up: std::sync::atomic::AtomicBool::new(applied >= boot_commit),
            }),
        };
        store.spawn_background();
        Ok(store)
    }

    fn spawn_background(&self) {
        // Publish this member's name and client URLs once a leader exists (like etcd).
        let s = self.clone();
        tokio::spawn(async move {
            for attempt in 0..600u32 {
                tokio::time::sleep(Duration::from_millis(if attempt == 0 { 50 } else { 500 }))
                    .await;
                if s.shared.status.lock().unwrap().stopped.is_some() {
                    return;
                }
                let me = s
                    .shared
                    .sm
                    .members()
                    .into_iter()
                    .find(|m| m.id == s.shared.id);
                let Some(me) = me else { continue };
                if me.name == s.shared.cfg.name
                    && me.client_ur_ls == s.shared.cfg.advertise_client_urls
                {
                    return;
                }
                let attrs = MemberAttributes {
                    id: s.shared.id,
                    name: s.shared.cfg.name.clone(),
                    client_urls: s.shared.cfg.advertise_client_urls.clone(),
                };
                if s.propose(command::Op::MemberAttributes(attrs))
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        });
        // Keep the transport's cluster ID current (it is learnt from a snapshot on join).
        let s = self.clone();
        tokio::spawn(async move {
            let mut rx = s.shared.sm.subscribe();
            loop {
                s.shared
                    .transport
                    .set_cluster_id(s.shared.sm.progress().cluster_id);
                if rx.changed().await.is_err() || s.shared.sm.progress().cluster_id != 0 {
                    s.shared
                        .transport
                        .set_cluster_id(s.shared.sm.progress().cluster_id);
                    return;
                }
            }
        });
    }

    /// The peer-transport gRPC service to serve on this member's peer URL.
    pub fn peer_service(
        &self,
    ) -> RaftPeerServer<impl ferrokube_proto::raftpeer::raft_peer_server::RaftPeer> {
        let sm = self.shared.sm.clone();
        RaftPeerServer::new(PeerService {
            raft_tx: Mutex::new(self.shared.raft_tx.lock().unwrap().clone()),
            cluster_id: Arc::new(move || sm.progress().cluster_id),
        })
        .max_decoding_message_size(usize::MAX)
    }

    /// This member's ID.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.shared.cfg
    }

    /// The state machine, for watches and local reads.
    pub fn state(&self) -> &Arc<StateMachine> {
        &self.shared.sm
    }

    fn send(&self, m: Msg) -> Result<()> {
        self.shared
            .raft_tx
            .lock()
            .unwrap()
            .send(m)
            .map_err(|_| StoreError::Stopped)
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.shared.cfg.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    async fn propose(&self, op: command::Op) -> Result<Applied> {
        self.check_running()?;
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let data = Command {
            proposer: self.shared.id,
            seq,
            op: Some(op),
        }
        .encode_to_vec();
        if data.len() > self.shared.cfg.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        let (done, rx) = oneshot::channel();
        self.send(Msg::Propose { data, seq, done })?;
        self.wait(rx).await
    }

    fn check_running(&self) -> Result<()> {
        match self.shared.status.lock().unwrap().stopped {
            Some(_) => Err(StoreError::Stopped),
            None => Ok(()),
        }
    }

    /// Waits (bounded by the request timeout) until the member has re-applied what its log
    /// had committed when it started. Local reads go through here.
    pub async fn wait_caught_up(&self) -> Result<()> {
        if self.shared.caught_up.load(Ordering::Relaxed) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.shared.cfg.request_timeout;
        loop {
            if self.shared.sm.progress().applied_index >= self.shared.boot_commit {
                self.shared.caught_up.store(true, Ordering::Relaxed);
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until this member has applied everything committed before the call (ReadIndex).
    pub async fn linearize(&self) -> Result<()> {
        self.check_running()?;
        let (done, rx) = oneshot::channel();
        self.send(Msg::ReadIndex(done))?;
        self.wait(rx).await
    }

    /// The response header for the current local state.
    pub fn header(&self) -> ResponseHeader {
        let p = self.shared.sm.progress();
        ResponseHeader {
            cluster_id: p.cluster_id,
            member_id: self.shared.id,
            revision: p.current,
            raft_term: self.shared.status.lock().unwrap().term,
        }
    }

    /// Range read.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        if req.serializable {
            self.wait_caught_up().await?;
        } else {
            self.linearize().await?;
        }
        let mut resp = self.shared.sm.range(&req)?;
        // Keep the revision the data was read at (a later one would make a list's
        // resourceVersion claim changes it does not contain).
        let mut header = self.header();
        header.revision = resp.header.map_or(header.revision, |h| h.revision);
        resp.header = Some(header);
        Ok(resp)
    }

    /// Put one key.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(req)),
            }],
            ..Default::default()
        };
        let mut resp = self.txn(txn).await?;
        match resp.responses.pop().and_then(|r| r.response) {
            Some(response_op::Response::ResponsePut(p)) => Ok(p),
            _ => Err(StoreError::Corrupt(
                "put answered with another response".into(),
            )),
        }
    }

    /// Delete a key or range.
    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(req)),
            }],
            ..Default::default()
        };
        let mut resp = self.txn(txn).await?;
        match resp.responses.pop().and_then(|r| r.response) {
            Some(response_op::Response::ResponseDeleteRange(d)) => Ok(d),
            _ => Err(StoreError::Corrupt(
                "delete answered with another response".into(),
            )),
        }
    }

    /// Transaction: compare, then run the success or failure branch atomically.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        let TxnShape { writes, puts } = self.validate_txn(&req)?;
        // Past the quota only deletes (and reads) go through, as with etcd's NOSPACE alarm.
        if puts && self.shared.sm.db_size() > self.shared.cfg.quota_backend_bytes {
            return Err(StoreError::NoSpace);
        }
        if !writes {
            // Read-only transactions are served like linearizable reads, without a log entry.
            self.linearize().await?;
            let mut resp = self.shared.sm.read_only_txn(&req)?;
            self.fill_headers(&mut resp);
            return Ok(resp);
        }
        match self.propose(command::Op::Txn(req)).await? {
            Applied::Txn(mut resp) => {
                self.fill_headers(&mut resp);
                Ok(resp)
            }
            _ => Err(StoreError::Corrupt(
                "txn answered with another result".into(),
            )),
        }
    }

    /// Completes the headers of a transaction's responses, keeping the revision the state
    /// machine recorded for it.
    fn fill_headers(&self, resp: &mut TxnResponse) {
        let mut h = self.header();
        if let Some(rev) = resp.header.as_ref().map(|h| h.revision) {
            h.revision = rev;
        }
        fn fill(resp: &mut TxnResponse, h: &ResponseHeader) {
            resp.header = Some(*h);
            for r in &mut resp.responses {
                match &mut r.response {
                    Some(response_op::Response::ResponseRange(x)) => x.header = Some(*h),
                    Some(response_op::Response::ResponsePut(x)) => x.header = Some(*h),
                    Some(response_op::Response::ResponseDeleteRange(x)) => x.header = Some(*h),
                    Some(response_op::Response::ResponseTxn(x)) => fill(x, h),
                    None => {}
                }
            }
        }
        fill(resp, &h);
    }

    /// Checks a transaction's shape before it is proposed.
    fn validate_txn(&self, req: &TxnRequest) -> Result<TxnShape> {
        let max_ops = self.shared.cfg.max_txn_ops;
        if req.success.len() > max_ops || req.failure.len() > max_ops {
            return Err(StoreError::TooManyOps);
        }
        for c in &req.compare {
            if c.key.is_empty() {
                return Err(StoreError::EmptyKey);
            }
        }
        let mut shape = TxnShape::default();
        for branch in [&req.success, &req.failure] {
            let mut puts: Vec<&[u8]> = Vec::new();
            let mut dels: Vec<(&[u8], &[u8])> = Vec::new();
            for op in branch {
                match &op.request {
                    Some(request_op::Request::RequestRange(r)) => {
                        if r.key.is_empty() {
                            return Err(StoreError::EmptyKey);
                        }
                    }
                    Some(request_op::Request::RequestPut(p)) => {
                        if p.key.is_empty() {
                            return Err(StoreError::EmptyKey);
                        }
                        if p.key.len() + p.value.len() > self.shared.cfg.max_request_bytes {
                            return Err(StoreError::RequestTooLarge);
                        }
                        if puts.contains(&p.key.as_slice()) {
                            return Err(StoreError::DuplicateKey);
                        }
                        puts.push(&p.key);
                        shape.writes = true;
                        shape.puts = true;
                    }
                    Some(request_op::Request::RequestDeleteRange(d)) => {
                        if d.key.is_empty() {
                            return Err(StoreError::EmptyKey);
                        }
                        dels.push((&d.key, &d.range_end));
                        shape.writes = true;
                    }
                    Some(request_op::Request::RequestTxn(t)) => {
                        let inner = self.validate_txn(t)?;
                        shape.writes |= inner.writes;
                        shape.puts |= inner.puts;
                    }
                    None => return Err(StoreError::InvalidArgument("empty request op".into())),
                }
            }
            for (k, end) in &dels {
                let r = KeyRange::new(k, end);
                if puts.iter().any(|p| r.contains(p)) {
                    return Err(StoreError::DuplicateKey);
                }
            }
        }
        Ok(shape)
    }

    /// Compacts history up to `revision`.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        match self
            .propose(command::Op::Compaction(CompactionRequest {
                revision,
                physical: true,
            }))
            .await?
        {
            Applied::Compacted => {
                let sm = self.shared.sm.clone();
                // Free the space in the background; history is already gone logically.
                tokio::task::spawn_blocking(move || sm.reclaim_space());
                Ok(())
            }
            _ => Err(StoreError::Corrupt(
                "compaction answered with another result".into(),
            )),
        }
    }

    /// Grants a lease; `id` 0 picks one.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<(i64, i64)> {
        if ttl <= 0 {
            return Err(StoreError::InvalidArgument(
                "lease TTL must be positive".into(),
            ));
        }
        if ttl > crate::mvcc::MAX_LEASE_TTL {
            return Err(StoreError::InvalidArgument("too large lease TTL".into()));
        }
        let id = if id == 0 {
            (rand::random::<u64>() >> 1).max(1) as i64
        } else {
            id
        };
        match self
            .propose(command::Op::LeaseGrant(LeaseGrantRequest { ttl, id }))
            .await?
        {
            Applied::LeaseGranted { id, ttl } => Ok((id, ttl)),
            _ => Err(StoreError::Corrupt(
                "lease grant answered with another result".into(),
            )),
        }
    }

    /// Revokes a lease, deleting its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        self.propose(command::Op::LeaseRevoke(LeaseRevokeRequest { id }))
            .await
            .map(|_| ())
    }

    /// Renews a lease; returns its TTL.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        match self.propose(command::Op::LeaseKeepAlive(id)).await? {
            Applied::LeaseRenewed { ttl } => Ok(ttl),
            _ => Err(StoreError::Corrupt(
                "keep-alive answered with another result".into(),
            )),
        }
    }

    /// Members of the cluster.
    pub fn members(&self) -> Vec<Member> {
        self.shared.sm.members()
    }

    /// Adds a voting member reachable at `peer_urls`.
    pub async fn member_add(&self, peer_urls: Vec<String>) -> Result<Member> {
        let url = peer_urls
            .first()
            .ok_or_else(|| StoreError::InvalidArgument("member peer URLs not given".into()))?;
        for u in &peer_urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(StoreError::InvalidArgument(format!(
                    "URL scheme must be http or https: {u}"
                )));
            }
        }
        if self
            .members()
            .iter()
            .any(|m| m.peer_ur_ls.iter().any(|u| peer_urls.contains(u)))
        {
            return Err(StoreError::PeerUrlExists);
        }
        let member = Member {
            id: member_id(url, &self.shared.cfg.cluster_token),
            name: String::new(),
            peer_ur_ls: peer_urls,
            client_ur_ls: Vec::new(),
            is_learner: false,
        };
        self.conf_change(conf_change(member.id, true), Some(member.clone()))
            .await?;
        Ok(member)
    }

    /// Removes a member.
    pub async fn member_remove(&self, id: u64) -> Result<()> {
        if !self.members().iter().any(|m| m.id == id) {
            return Err(StoreError::MemberNotFound);
        }
        self.conf_change(conf_change(id, false), None).await
    }

    async fn conf_change(
        &self,
        change: raft::eraftpb::ConfChange,
        member: Option<Member>,
    ) -> Result<()> {
        self.check_running()?;
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let context = conf_change_context(self.shared.id, seq, member);
        let (done, rx) = oneshot::channel();
        self.send(Msg::ProposeConfChange {
            change,
            context,
            seq,
            done,
        })?;
        self.wait(rx).await.map(|_| ())
    }

    /// Raft and storage status of this member.
    pub fn status(&self) -> MemberStatus {
        let p = self.shared.sm.progress();
        MemberStatus {
            id: self.shared.id,
            cluster_id: p.cluster_id,
            raft: self.shared.status.lock().unwrap().clone(),
            revision: p.current,
            compacted: p.compacted,
            db_size: self.shared.sm.db_size(),
        }
    }
}
