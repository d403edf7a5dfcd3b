//! Peer transport: raft-rs messages between members over gRPC (tonic).
//!
//! Each peer has a task that drains a queue of outgoing messages and writes them, batched,
//! to one long-lived client stream (`Stream`); snapshot messages go through their own
//! `SendSnapshot` call in 1 MiB chunks. Delivery failures are reported back to raft-rs (`report_unreachable`,
//! `report_snapshot`), which then slows down and retries as the protocol says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrokube_proto::etcdserverpb::Member;
use ferrokube_proto::raftpeer::raft_peer_client::RaftPeerClient;
use ferrokube_proto::raftpeer::raft_peer_server::RaftPeer;
use ferrokube_proto::raftpeer::{MessageBatch, SendAck, SnapshotChunk};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::node::Msg;

const SNAPSHOT_CHUNK: usize = 1 << 20;

struct Peer {
    url: String,
    tx: mpsc::UnboundedSender<Message>,
}

struct Inner {
    id: u64,
    cluster_id: AtomicU64,
    peers: Mutex<HashMap<u64, Peer>>,
    raft_tx: Sender<Msg>,
    runtime: tokio::runtime::Handle,
    tls: Option<ClientTlsConfig>,
}

/// Outgoing side of the peer transport; cheap to clone.
#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    pub(crate) fn new(
        id: u64,
        raft_tx: Sender<Msg>,
        runtime: tokio::runtime::Handle,
        tls: Option<ClientTlsConfig>,
    ) -> Self {
        Transport {
            inner: Arc::new(Inner {
                id,
                cluster_id: AtomicU64::new(0),
                peers: Mutex::new(HashMap::new()),
                raft_tx,
                runtime,
                tls,
            }),
        }
    }

    pub(crate) fn set_cluster_id(&self, id: u64) {
        self.inner.cluster_id.store(id, Ordering::Relaxed);
    }

    /// Points the transport at the current member list.
    pub(crate) fn set_members(&self, members: &[Member]) {
        // Called from the Raft thread too: channels need the runtime's context.
        let _rt = self.inner.runtime.enter();
        let mut peers = self.inner.peers.lock().unwrap();
        peers.retain(|id, _| members.iter().any(|m| m.id == *id));
        for m in members {
            if m.id == self.inner.id {
                continue;
            }
            let Some(url) = m.peer_ur_ls.first() else {
                continue;
            };
            if peers.get(&m.id).is_some_and(|p| &p.url == url) {
                continue;
            }
            let endpoint = Endpoint::from_shared(url.clone()).and_then(|e| {
                // No per-call timeout: both calls are long-lived client streams. A dead
                // peer is noticed through HTTP/2 keep-alives instead.
                let e = e
                    .connect_timeout(Duration::from_secs(1))
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(3))
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true);
                match (&self.inner.tls, url.starts_with("https://")) {
                    (Some(tls), true) => e.tls_config(tls.clone()),
                    _ => Ok(e),
                }
            });
            let endpoint = match endpoint {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(peer = format!("{:x}", m.id), url, "bad peer URL: {e}");
                    continue;
                }
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let client = RaftPeerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let inner = self.inner.clone();
            let to = m.id;
            self.inner
                .runtime
                .spawn(async move { run_peer(inner, to, client, rx).await });
            peers.insert(
                m.id,
                Peer {
                    url: url.clone(),
                    tx,
                },
            );
        }
    }

    /// Queues messages for delivery (never blocks the Raft thread).
    pub(crate) fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.inner.peers.lock().unwrap();
        for m in msgs {
            match peers.get(&m.to) {
                Some(p) => {
                    let _ = p.tx.send(m);
                }
                None => {
                    let _ = self.inner.raft_tx.send(Msg::Unreachable(m.to));
                }
            }
        }
    }
}

async fn run_peer(
    inner: Arc<Inner>,
    to: u64,
    client: RaftPeerClient<Channel>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    // One long-lived client stream carries ordinary messages; it is reopened when it
    // breaks, and whatever was queued meanwhile is dropped (Raft retransmits).
    let mut stream: Option<(mpsc::Sender<MessageBatch>, tokio::task::JoinHandle<()>)> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let cluster_id = inner.cluster_id.load(Ordering::Relaxed);
        let (snaps, msgs): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        if !msgs.is_empty() {
            if stream.as_ref().is_some_and(|(_, call)| call.is_finished()) {
                stream = None;
                let _ = inner.raft_tx.send(Msg::Unreachable(to));
            }
            let (tx, _) = stream.get_or_insert_with(|| {
                let (tx, out) = mpsc::channel::<MessageBatch>(256);
                let mut client = client.clone();
                let call = tokio::spawn(async move {
                    if let Err(e) = client.stream(ReceiverStream::new(out)).await {
                        tracing::debug!(peer = format!("{to:x}"), "peer stream ended: {e}");
                    }
                });
                (tx, call)
            });
            let req = MessageBatch {
                cluster_id,
                from: inner.id,
                messages: msgs
                    .iter()
                    .filter_map(|m| m.write_to_bytes().ok())
                    .collect(),
            };
            if tx.try_send(req).is_err() {
                // Full (the peer is slow or gone) or closed: drop and let Raft retry.
                let _ = inner.raft_tx.send(Msg::Unreachable(to));
            }
        }
        for mut snap in snaps {
            let data = snap.mut_snapshot().take_data();
            let head = snap.write_to_bytes().unwrap_or_default();
            let mut chunks = vec![SnapshotChunk {
                cluster_id,
                message: head,
                data: Vec::new(),
            }];
            chunks.extend(data.chunks(SNAPSHOT_CHUNK).map(|c| SnapshotChunk {
                cluster_id,
                message: Vec::new(),
                data: c.to_vec(),
            }));
            let size = data.len();
            let mut client = client.clone();
            let inner = inner.clone();
            // Snapshots travel on their own call so ordinary traffic is not held up.
            tokio::spawn(async move {
                let ok = match client.send_snapshot(tokio_stream::iter(chunks)).await {
                    Ok(_) => {
                        tracing::info!(peer = format!("{to:x}"), bytes = size, "sent snapshot");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(peer = format!("{to:x}"), "snapshot send failed: {e}");
                        false
                    }
                };
                let _ = inner.raft_tx.send(Msg::SnapshotStatus(to, ok));
            });
        }
    }
    if let Some((_, call)) = stream {
        call.abort();
    }
}

/// Incoming side: the `RaftPeer` gRPC service.
pub(crate) struct PeerService {
    pub(crate) raft_tx: Mutex<Sender<Msg>>,
    pub(crate) cluster_id: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl PeerService {
    fn check_cluster(&self, id: u64) -> Result<(), Status> {
        let ours = (self.cluster_id)();
        if ours != 0 && id != 0 && id != ours {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: ours {ours:x}, request {id:x}"
            )));
        }
        Ok(())
    }

    fn deliver(&self, msgs: Vec<Message>) -> Result<(), Status> {
        self.raft_tx
            .lock()
            .unwrap()
            .send(Msg::Raft(msgs))
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn stream(
        &self,
        req: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.message().await? {
            self.check_cluster(batch.cluster_id)?;
            let msgs = batch
                .messages
                .iter()
                .map(|b| Message::parse_from_bytes(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
            self.deliver(msgs)?;
        }
        Ok(Response::new(SendAck {}))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut stream = req.into_inner();
        let mut head: Option<Message> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            self.check_cluster(chunk.cluster_id)?;
            if head.is_none() {
                head =
                    Some(Message::parse_from_bytes(&chunk.message).map_err(|e| {
                        Status::invalid_argument(format!("bad snapshot message: {e}"))
                    })?);
            }
            data.extend_from_slice(&chunk.data);
        }
        let mut m = head.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        m.mut_snapshot().set_data(data.into());
        self.deliver(vec![m])?;
        Ok(Response::new(SendAck {}))
    }
}
