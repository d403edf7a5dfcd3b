//! The Raft member: one OS thread owns the raft-rs `RawNode`, the log and the state
//! machine's write path; everything else talks to it through a channel.
//!
//! Ready handling follows raft-rs's rules: send `messages` at once; apply a snapshot, then
//! committed entries; append new entries and the hard state with fsync *before* sending
//! `persisted_messages`; `advance`, persist the commit index, handle the light ready,
//! `advance_apply`. Every proposal carries (member, sequence) so the proposing member can
//! answer the waiting client when it applies the entry; a proposal raft-rs drops is
//! answered by the caller's timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokube_proto::etcdserverpb::Member;
use ferrokube_proto::raftpeer::{command, Command, ConfChangeContext};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, EntryType, Message, Snapshot};
use raft::{RawNode, ReadOnlyOption, StateRole};
use tokio::sync::oneshot;

use crate::error::{Result, StoreError};
use crate::mvcc::{Applied, StateMachine};
use crate::raftlog::RaftLog;
use crate::transport::Transport;

/// Requests to the Raft thread.
pub(crate) enum Msg {
    Propose {
        data: Vec<u8>,
        seq: u64,
        done: oneshot::Sender<Result<Applied>>,
    },
    ProposeConfChange {
        change: ConfChange,
        context: Vec<u8>,
        seq: u64,
        done: oneshot::Sender<Result<Applied>>,
    },
    ReadIndex(oneshot::Sender<Result<()>>),
    Raft(Vec<Message>),
    Unreachable(u64),
    SnapshotStatus(u64, bool),
}

/// What the Raft thread publishes about itself.
#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    pub leader: u64,
    pub term: u64,
    pub role: Option<String>,
    pub commit: u64,
    pub last_index: u64,
    pub applied: u64,
    /// Set when the member stopped (removed from the cluster or a storage failure).
    pub stopped: Option<String>,
}

/// Tunables of the Raft thread.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub tick: Duration,
    pub election_ticks: usize,
    /// Applied entries kept in the log before it is truncated.
    pub snapshot_count: u64,
    /// Entries kept behind the applied index when truncating, for slow followers.
    pub catch_up_entries: u64,
    /// Auto-compaction: keep this many revisions of history (0 disables).
    pub compaction_retention: i64,
    pub compaction_interval: Duration,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            snapshot_count: 10_000,
            catch_up_entries: 5_000,
            compaction_retention: 0,
            compaction_interval: Duration::from_secs(300),
        }
    }
}

struct Waiter {
    since: Instant,
    done: oneshot::Sender<Result<Applied>>,
}

struct ReadBatch {
    since: Instant,
    waiters: Vec<oneshot::Sender<Result<()>>>,
}

pub(crate) struct RaftLoop {
    id: u64,
    raw: RawNode<RaftLog>,
    sm: Arc<StateMachine>,
    transport: Transport,
    status: Arc<Mutex<RaftStatus>>,
    settings: RaftSettings,
    waiters: HashMap<u64, Waiter>,
    new_reads: Vec<oneshot::Sender<Result<()>>>,
    reads_in_flight: HashMap<u64, ReadBatch>,
    reads_ready: BTreeMap<u64, Vec<oneshot::Sender<Result<()>>>>,
    next_read_ctx: u64,
    revoking: HashMap<i64, Instant>,
    last_compaction: Instant,
    internal_seq: u64,
}

pub(crate) fn raft_config(id: u64, applied: u64, s: &RaftSettings) -> raft::Config {
    raft::Config {
        id,
        election_tick: s.election_ticks,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        ..Default::default()
    }
}

impl RaftLoop {
    pub(crate) fn new(
        id: u64,
        raw: RawNode<RaftLog>,
        sm: Arc<StateMachine>,
        transport: Transport,
        status: Arc<Mutex<RaftStatus>>,
        settings: RaftSettings,
    ) -> Self {
        RaftLoop {
            id,
            raw,
            sm,
            transport,
            status,
            settings,
            waiters: HashMap::new(),
            new_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            reads_ready: BTreeMap::new(),
            next_read_ctx: 1,
            revoking: HashMap::new(),
            last_compaction: Instant::now(),
            internal_seq: 0,
        }
    }

    /// Runs until the channel closes or the member stops.
    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        let tick = self.settings.tick;
        let mut next_tick = Instant::now() + tick;
        // A lone voter need not wait an election timeout to lead.
        let cs = self.sm.conf_state();
        if cs.voters == [self.id] {
            let _ = self.raw.campaign();
        }
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(m) => self.handle(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            for _ in 0..4096 {
                match rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick;
                }
                self.raw.tick();
                self.on_tick();
            }
            self.issue_reads();
            if let Err(e) = self.on_ready() {
                self.stop(format!("storage failure: {e}"));
                break;
            }
            if self.status.lock().unwrap().stopped.is_some() {
                break;
            }
        }
        self.fail_all(|| StoreError::Stopped);
    }

    fn stop(&mut self, why: String) {
        tracing::error!(
            member = format!("{:x}", self.id),
            "raft member stopped: {why}"
        );
        self.status.lock().unwrap().stopped = Some(why);
    }

    fn fail_all(&mut self, err: impl Fn() -> StoreError) {
        for (_, w) in self.waiters.drain() {
            let _ = w.done.send(Err(err()));
        }
        for r in self.new_reads.drain(..) {
            let _ = r.send(Err(err()));
        }
        for (_, b) in self.reads_in_flight.drain() {
            for r in b.waiters {
                let _ = r.send(Err(err()));
            }
        }
        for (_, rs) in std::mem::take(&mut self.reads_ready) {
            for r in rs {
                let _ = r.send(Err(err()));
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Propose { data, seq, done } => {
                let r = self.raw.propose(Vec::new(), data);
                self.track(seq, done, r);
            }
            Msg::ProposeConfChange {
                change,
                context,
                seq,
                done,
            } => {
                // Followers forward the proposal to the leader, which accepts one
                // membership change at a time.
                if self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf() {
                    let _ = done.send(Err(StoreError::Unhealthy));
                    return;
                }
                let r = self.raw.propose_conf_change(context, change);
                self.track(seq, done, r);
            }
            Msg::ReadIndex(done) => self.new_reads.push(done),
            Msg::Raft(msgs) => {
                for m in msgs {
                    if let Err(e) = self.raw.step(m) {
                        tracing::debug!("raft step: {e}");
                    }
                }
            }
            Msg::Unreachable(id) => self.raw.report_unreachable(id),
            Msg::SnapshotStatus(id, ok) => self.raw.report_snapshot(
                id,
                if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                },
            ),
        }
    }

    /// Waits for a proposal raft-rs accepted to be applied, or answers its refusal.
    fn track(&mut self, seq: u64, done: oneshot::Sender<Result<Applied>>, r: raft::Result<()>) {
        match r {
            Ok(()) => {
                let since = Instant::now();
                self.waiters.insert(seq, Waiter { since, done });
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = done.send(Err(StoreError::NoLeader));
            }
            Err(e) => {
                let _ = done.send(Err(StoreError::Raft(e)));
            }
        }
    }

    fn issue_reads(&mut self) {
        if self.new_reads.is_empty() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        self.reads_in_flight.insert(
            ctx,
            ReadBatch {
                since: Instant::now(),
                waiters: std::mem::take(&mut self.new_reads),
            },
        );
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Raft drops read-index requests when there is no leader or the leader has not yet
        // committed in its term: ask again.
        for (ctx, b) in self.reads_in_flight.iter_mut() {
            if now.duration_since(b.since) > Duration::from_millis(300) {
                b.since = now;
                self.raw.read_index(ctx.to_be_bytes().to_vec());
            }
        }
        // Waiters whose client gave up.
        self.waiters
            .retain(|_, w| !w.done.is_closed() || w.since.elapsed() < Duration::from_secs(1));
        self.reads_in_flight.retain(|_, b| {
            b.waiters.retain(|w| !w.is_closed());
            !b.waiters.is_empty()
        });
        if self.raw.raft.state == StateRole::Leader {
            self.leader_duties(now);
        }
    }

    fn propose_internal(&mut self, op: command::Op) {
        self.internal_seq += 1;
        let cmd = Command {
            proposer: 0,
            seq: self.internal_seq,
            op: Some(op),
        };
        if let Err(e) = self.raw.propose(Vec::new(), cmd.encode_to_vec()) {
            tracing::debug!("internal proposal dropped: {e}");
        }
    }

    fn leader_duties(&mut self, now: Instant) {
        self.revoking
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(3));
        for id in self.sm.expired_leases() {
            if self.revoking.contains_key(&id) {
                continue;
            }
            self.revoking.insert(id, now);
            tracing::info!(lease = id, "lease expired; revoking");
            self.propose_internal(command::Op::LeaseRevoke(
                ferrokube_proto::etcdserverpb::LeaseRevokeRequest { id },
            ));
        }
        let retention = self.settings.compaction_retention;
        if retention > 0
            && now.duration_since(self.last_compaction) >= self.settings.compaction_interval
        {
            self.last_compaction = now;
            let p = self.sm.progress();
            let target = p.current - retention;
            if target > p.compacted {
                tracing::info!(revision = target, "auto-compacting");
                self.propose_internal(command::Op::Compaction(
                    ferrokube_proto::etcdserverpb::CompactionRequest {
                        revision: target,
                        physical: false,
                    },
                ));
            }
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            let became_leader = ss.raft_state == StateRole::Leader;
            let mut st = self.status.lock().unwrap();
            st.leader = ss.leader_id;
            st.role = Some(format!("{:?}", ss.raft_state));
            drop(st);
            if became_leader {
                self.sm.refresh_leases();
            }
            // Proposals in flight may have been dropped with the old leader; they time out.
        }
        self.transport.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            let snap: Snapshot = rd.snapshot().clone();
            self.raw.mut_store().apply_snapshot(&snap)?;
            self.transport.set_members(&self.sm.members());
            tracing::info!(index = snap.get_metadata().index, "installed snapshot");
        }
        let read_states = rd.take_read_states();
        self.apply_entries(rd.take_committed_entries())?;
        let must_sync = rd.must_sync();
        let hs = rd.hs().cloned();
        if !rd.entries().is_empty() || hs.is_some() {
            self.raw
                .mut_store()
                .append(rd.entries(), hs.as_ref(), must_sync)?;
        }
        self.transport.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        for rs in read_states {
            let ctx = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or([0; 8]));
            if let Some(b) = self.reads_in_flight.remove(&ctx) {
                self.reads_ready
                    .entry(rs.index)
                    .or_default()
                    .extend(b.waiters);
            }
        }
        let applied = self.sm.progress().applied_index;
        while let Some(entry) = self.reads_ready.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for w in entry.remove() {
                let _ = w.send(Ok(()));
            }
        }
        self.maybe_truncate_log(applied)?;
        let store = self.raw.store();
        let mut st = self.status.lock().unwrap();
        st.term = self.raw.raft.term;
        st.commit = store.hard_state().commit;
        st.last_index = store.last_index_now();
        st.applied = applied;
        Ok(())
    }

    fn maybe_truncate_log(&mut self, applied: u64) -> Result<()> {
        let store = self.raw.store();
        if applied.saturating_sub(store.first()) < self.settings.snapshot_count {
            return Ok(());
        }
        let upto = applied.saturating_sub(self.settings.catch_up_entries);
        if upto >= store.first() {
            tracing::debug!(upto, "truncating raft log");
            // Entries about to go must never be needed for a replay after a crash.
            self.sm.flush()?;
            self.raw.mut_store().compact(upto)?;
        }
        Ok(())
    }

    fn respond(&mut self, proposer: u64, seq: u64, result: Result<Applied>) {
        if proposer != self.id {
            return;
        }
        if let Some(w) = self.waiters.remove(&seq) {
            let _ = w.done.send(result);
        }
    }

    /// Applies committed entries in one state-machine batch, then answers their proposers.
    fn apply_entries(&mut self, entries: Vec<raft::eraftpb::Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let sm = self.sm.clone();
        let mut applier = sm.applier();
        let mut answers = Vec::with_capacity(entries.len());
        let mut members_changed = false;
        let mut removed_self = false;
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => applier.noop(e.index, e.term),
                EntryType::EntryNormal => {
                    let cmd = match Command::decode(&e.data[..]) {
                        Ok(c) => c,
                        Err(err) => {
                            tracing::error!(index = e.index, "undecodable entry: {err}");
                            applier.noop(e.index, e.term);
                            continue;
                        }
                    };
                    let result = match &cmd.op {
                        Some(op) => applier.apply(e.index, e.term, op),
                        None => {
                            applier.noop(e.index, e.term);
                            Err(StoreError::InvalidArgument("empty command".into()))
                        }
                    };
                    answers.push((cmd.proposer, cmd.seq, result));
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)?;
                    let ctx = ConfChangeContext::decode(&e.context[..]).unwrap_or_default();
                    // raft-rs may ask storage for a snapshot while applying the change,
                    // which reads the state machine: release the write lock first.
                    applier.finish()?;
                    applier = sm.applier();
                    let cs = match self.raw.apply_conf_change(&cc) {
                        Ok(cs) => cs,
                        Err(err) => {
                            applier.noop(e.index, e.term);
                            answers.push((ctx.proposer, ctx.seq, Err(StoreError::Raft(err))));
                            continue;
                        }
                    };
                    let (add, remove) = match cc.get_change_type() {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            (ctx.member.as_ref(), None)
                        }
                        ConfChangeType::RemoveNode => (None, Some(cc.node_id)),
                    };
                    applier.conf_change(e.index, e.term, &cs, add, remove)?;
                    tracing::info!(node = format!("{:x}", cc.node_id), change = ?cc.get_change_type(), "membership changed");
                    members_changed = true;
                    removed_self |= remove == Some(self.id);
                    answers.push((ctx.proposer, ctx.seq, Ok(Applied::MemberUpdated)));
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)?;
                    tracing::warn!(
                        index = e.index,
                        "ignoring unsupported joint configuration change {cc:?}"
                    );
                    applier.noop(e.index, e.term);
                }
            }
        }
        let members = members_changed.then(|| applier.members());
        // A failed batch write is a storage failure: stop before answering anyone.
        applier.finish()?;
        if let Some(members) = members {
            self.transport.set_members(&members);
        }
        for (proposer, seq, result) in answers {
            if let Err(err @ (StoreError::Storage(_) | StoreError::Corrupt(_))) = &result {
                let msg = err.to_string();
                self.respond(proposer, seq, result);
                return Err(StoreError::Corrupt(msg));
            }
            self.respond(proposer, seq, result);
        }
        if removed_self {
            self.stop("removed from the cluster".into());
        }
        Ok(())
    }
}

/// Builds a conf change for adding or removing `node`.
pub(crate) fn conf_change(node: u64, add: bool) -> ConfChange {
    let mut cc = ConfChange {
        node_id: node,
        ..Default::default()
    };
    cc.set_change_type(if add {
        ConfChangeType::AddNode
    } else {
        ConfChangeType::RemoveNode
    });
    cc
}

/// Member data carried in a conf change entry.
pub(crate) fn conf_change_context(proposer: u64, seq: u64, member: Option<Member>) -> Vec<u8> {
    ConfChangeContext {
        proposer,
        seq,
        member,
    }
    .encode_to_vec()
}
