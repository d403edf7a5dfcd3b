//! The etcd v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance subset) over a [`Store`],
//! so that `etcdctl` and etcd client libraries work against ferrokube's store.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use ferrokube_proto::etcdserverpb::kv_server::{Kv, KvServer};
use ferrokube_proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use ferrokube_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use ferrokube_proto::etcdserverpb::watch_server::{Watch, WatchServer};
use ferrokube_proto::etcdserverpb::*;
use ferrokube_proto::mvccpb::event::EventType;
use futures::Stream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::StoreError;
use crate::mvcc::KeyRange;
use crate::store::Store;

/// The etcd API version this server speaks (reported by `Status`).
pub const API_VERSION: &str = "3.4.0";

/// Most events sent in one watch response (whole revisions are never split).
const WATCH_BATCH: usize = 1000;

/// All etcd services over one store, ready to add to a tonic router.
#[derive(Clone)]
pub struct EtcdApi {
    store: Store,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl EtcdApi {
    pub fn new(store: Store) -> Self {
        EtcdApi { store }
    }

    /// Adds the KV, Watch, Lease, Cluster and Maintenance services to a router.
    pub fn add_to(self, server: &mut tonic::transport::Server) -> tonic::transport::server::Router {
        let limit = self.store.config().max_request_bytes + 512 * 1024;
        server
            .add_service(KvServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(WatchServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(LeaseServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(ClusterServer::new(self.clone()).max_decoding_message_size(limit))
            .add_service(MaintenanceServer::new(self).max_decoding_message_size(limit))
    }
}

#[tonic::async_trait]
impl Kv for EtcdApi {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(StoreError::EmptyKey.into());
        }
        Ok(Response::new(self.store.range(req).await?))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(self.store.put(req.into_inner()).await?))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(
            self.store.delete_range(req.into_inner()).await?,
        ))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new(self.store.txn(req.into_inner()).await?))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.store.compact(req.into_inner().revision).await?;
        Ok(Response::new(CompactionResponse {
            header: Some(self.store.header()),
        }))
    }
}

#[tonic::async_trait]
impl Watch for EtcdApi {
    type WatchStream = Streamed<WatchResponse>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<WatchResponse, Status>>(64);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut watchers: HashMap<i64, (JoinHandle<()>, Arc<Notify>)> = HashMap::new();
            let mut next_id: i64 = 0;
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => break,
                };
                let Ok(Some(msg)) = msg else { break };
                match msg.request_union {
                    Some(watch_request::RequestUnion::CreateRequest(c)) => {
                        watchers.retain(|_, (h, _)| !h.is_finished());
                        let id = if c.watch_id != 0 {
                            c.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        let range_ok =
                            !c.key.is_empty() && KeyRange::new(&c.key, &c.range_end).is_valid();
                        if watchers.contains_key(&id) || !range_ok {
                            let reason = if range_ok {
                                "etcdserver: duplicate watch ID"
                            } else {
                                "etcdserver: invalid watch key range"
                            };
                            let resp = WatchResponse {
                                header: Some(store.header()),
                                watch_id: id,
                                created: true,
                                canceled: true,
                                cancel_reason: reason.into(),
                                ..Default::default()
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        if c.watch_id == 0 {
                            next_id += 1;
                        }
                        // A restarted member first re-applies its log, so "now" is not
                        // older than before the restart.
                        if let Err(e) = store.wait_caught_up().await {
                            let _ = tx.send(Err(Status::from(e))).await;
                            break;
                        }
                        // Read the revision once: the watch starts right after the revision
                        // the created response reports, with nothing in between.
                        let mut header = store.header();
                        let start = if c.start_revision > 0 {
                            c.start_revision
                        } else {
                            header.revision + 1
                        };
                        if c.start_revision <= 0 {
                            header.revision = start - 1;
                        }
                        let created = WatchResponse {
                            header: Some(header),
                            watch_id: id,
                            created: true,
                            ..Default::default()
                        };
                        if tx.send(Ok(created)).await.is_err() {
                            break;
                        }
                        let progress = Arc::new(Notify::new());
                        let h = tokio::spawn(run_watcher(
                            store.clone(),
                            id,
                            start,
                            c,
                            tx.clone(),
                            progress.clone(),
                        ));
                        watchers.insert(id, (h, progress));
                    }
                    Some(watch_request::RequestUnion::CancelRequest(c)) => {
                        if let Some((h, _)) = watchers.remove(&c.watch_id) {
                            let was_running = !h.is_finished();
                            h.abort();
                            if was_running {
                                let resp = WatchResponse {
                                    header: Some(store.header()),
                                    watch_id: c.watch_id,
                                    canceled: true,
                                    ..Default::default()
                                };
                                if tx.send(Ok(resp)).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                        for (_, p) in watchers.values() {
                            p.notify_one();
                        }
                    }
                    None => {}
                }
            }
            for (h, _) in watchers.into_values() {
                h.abort();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Streams one watcher's events: replays history from its start revision, then follows
/// new revisions. Reading from history for every batch means a slow client only delays
/// itself and never loses events.
async fn run_watcher(
    store: Store,
    id: i64,
    start: i64,
    c: WatchCreateRequest,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    progress: Arc<Notify>,
) {
    let sm = store.state().clone();
    let mut rev_rx = sm.subscribe();
    let mut next = start;
    let no_put = c
        .filters
        .contains(&(watch_create_request::FilterType::Noput as i32));
    let no_delete = c
        .filters
        .contains(&(watch_create_request::FilterType::Nodelete as i32));
    let range = KeyRange::new(&c.key, &c.range_end);
    let mut ticker = tokio::time::interval(Duration::from_secs(600));
    ticker.tick().await;
    loop {
        rev_rx.borrow_and_update();
        loop {
            let (events, nxt) = match sm.events(next, &range, c.prev_kv, WATCH_BATCH) {
                Ok(r) => r,
                Err(StoreError::Compacted { compact_revision }) => {
                    let _ = tx
                        .send(Ok(WatchResponse {
                            header: Some(store.header()),
                            watch_id: id,
                            canceled: true,
                            compact_revision,
                            cancel_reason: StoreError::Compacted { compact_revision }.to_string(),
                            ..Default::default()
                        }))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = tx
                        .send(Ok(WatchResponse {
                            header: Some(store.header()),
                            watch_id: id,
                            canceled: true,
                            cancel_reason: e.to_string(),
                            ..Default::default()
                        }))
                        .await;
                    return;
                }
            };
            let events: Vec<_> = events
                .into_iter()
                .filter(|e| {
                    let put = e.r#type == EventType::Put as i32;
                    !(put && no_put || !put && no_delete)
                })
                .collect();
            if !events.is_empty() {
                let mut header = store.header();
                header.revision = nxt - 1;
                let resp = WatchResponse {
                    header: Some(header),
                    watch_id: id,
                    events,
                    ..Default::default()
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            let caught_up = nxt > sm.progress().current || nxt == next;
            next = nxt;
            if caught_up {
                break;
            }
        }
        let notify = tokio::select! {
            r = rev_rx.changed() => {
                if r.is_err() {
                    return;
                }
                false
            }
            _ = progress.notified() => true,
            _ = ticker.tick(), if c.progress_notify => true,
        };
        if notify && next > sm.progress().current {
            // Progress up to what this watcher has delivered, not a later revision.
            let mut header = store.header();
            header.revision = next - 1;
            let resp = WatchResponse {
                header: Some(header),
                watch_id: id,
                ..Default::default()
            };
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Lease for EtcdApi {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = req.into_inner();
        let (id, ttl) = self.store.lease_grant(req.ttl, req.id).await?;
        Ok(Response::new(LeaseGrantResponse {
            header: Some(self.store.header()),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.store.lease_revoke(req.into_inner().id).await?;
        Ok(Response::new(LeaseRevokeResponse {
            header: Some(self.store.header()),
        }))
    }

    type LeaseKeepAliveStream = Streamed<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let resp = match store.lease_keep_alive(r.id).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse {
                        header: Some(store.header()),
                        id: r.id,
                        ttl,
                    }),
                    Err(StoreError::LeaseNotFound) => Ok(LeaseKeepAliveResponse {
                        header: Some(store.header()),
                        id: r.id,
                        ttl: 0,
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        self.store.linearize().await?;
        let resp = match self.store.state().lease(req.id) {
            Some((granted, left, keys)) => LeaseTimeToLiveResponse {
                header: Some(self.store.header()),
                id: req.id,
                ttl: left,
                granted_ttl: granted,
                keys: if req.keys { keys } else { Vec::new() },
            },
            None => LeaseTimeToLiveResponse {
                header: Some(self.store.header()),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.store.linearize().await?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.store.header()),
            leases: self
                .store
                .state()
                .lease_ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl Cluster for EtcdApi {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = req.into_inner();
        if req.is_learner {
            return Err(Status::invalid_argument(
                "etcdserver: learner members are not supported",
            ));
        }
        let member = self.store.member_add(req.peer_ur_ls).await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.store.header()),
            member: Some(member),
            members: self.store.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.store.member_remove(req.into_inner().id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.store.header()),
            members: self.store.members(),
        }))
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: member update is not supported",
        ))
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: Some(self.store.header()),
            members: self.store.members(),
        }))
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: learner members are not supported",
        ))
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdApi {
    async fn alarm(&self, _req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let st = self.store.status();
        let alarms = if st.db_size > self.store.config().quota_backend_bytes {
            vec![AlarmMember {
                member_id: st.id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        };
        Ok(Response::new(AlarmResponse {
            header: Some(self.store.header()),
            alarms,
        }))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let st = self.store.status();
        Ok(Response::new(StatusResponse {
            header: Some(self.store.header()),
            version: API_VERSION.into(),
            db_size: st.db_size as i64,
            leader: st.raft.leader,
            raft_index: st.raft.commit,
            raft_term: st.raft.term,
            raft_applied_index: st.raft.applied,
            errors: st.raft.stopped.into_iter().collect(),
            db_size_in_use: st.db_size as i64,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let sm = self.store.state().clone();
        tokio::task::spawn_blocking(move || sm.reclaim_space())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.store.header()),
        }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented("etcdserver: hash is not supported"))
    }

    async fn hash_kv(
        &self,
        _req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        Err(Status::unimplemented("etcdserver: hashkv is not supported"))
    }

    type SnapshotStream = Streamed<SnapshotResponse>;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "etcdserver: snapshot is not supported",
        ))
    }

    async fn move_leader(
        &self,
        _req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: move-leader is not supported",
        ))
    }
}
