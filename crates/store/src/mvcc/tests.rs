//! State machine tests: MVCC semantics, compaction, history, snapshots and reopening.

use ferrokube_proto::etcdserverpb::{
    compare, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest,
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use ferrokube_proto::mvccpb::event::EventType;
use ferrokube_proto::raftpeer::command::Op;
use raft::eraftpb::ConfState;

use super::*;

/// (key, value, create revision, mod revision, version)
type Kv = (String, String, i64, i64, i64);

/// (`sm` before `_dir`: fields drop in order, and the database must close — flushing
/// its files — before its directory is removed.)
struct Sm {
    sm: StateMachine,
    _dir: tempfile::TempDir,
    index: u64,
}

impl Sm {
    fn new() -> Sm {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(Engine::open(dir.path()).unwrap()).unwrap();
        sm.bootstrap(7, &[], &ConfState::default(), 1, 1).unwrap();
        Sm {
            _dir: dir,
            sm,
            index: 1,
        }
    }

    fn reopen(self) -> Sm {
        let Sm { _dir, sm, index } = self;
        drop(sm);
        let sm = StateMachine::open(Engine::open(_dir.path()).unwrap()).unwrap();
        Sm { _dir, sm, index }
    }

    fn apply(&mut self, op: Op) -> Result<Applied> {
        self.index += 1;
        self.sm.apply(self.index, 1, &op)
    }

    fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse> {
        match self.apply(Op::Txn(req))? {
            Applied::Txn(t) => Ok(t),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn put(&mut self, k: &str, v: &str) -> i64 {
        self.put_lease(k, v, 0).unwrap()
    }

    fn put_lease(&mut self, k: &str, v: &str, lease: i64) -> Result<i64> {
        let r = self.txn(TxnRequest {
            success: vec![put_op(k, v, lease)],
            ..Default::default()
        })?;
        Ok(r.header.unwrap().revision)
    }

    fn del(&mut self, k: &str, end: &str) -> i64 {
        let r = self
            .txn(TxnRequest {
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: k.into(),
                            range_end: end.into(),
                            prev_kv: true,
                        },
                    )),
                }],
                ..Default::default()
            })
            .unwrap();
        match &r.responses[0].response {
            Some(response_op::Response::ResponseDeleteRange(d)) => d.deleted,
            _ => panic!(),
        }
    }

    fn get(&self, k: &str, end: &str, rev: i64) -> Result<Vec<Kv>> {
        let r = self.sm.range(&RangeRequest {
            key: k.into(),
            range_end: end.into(),
            revision: rev,
            ..Default::default()
        })?;
        Ok(r.kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key).unwrap(),
                    String::from_utf8(kv.value).unwrap(),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                )
            })
            .collect())
    }
}

fn put_op(k: &str, v: &str, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            lease,
            ..Default::default()
        })),
    }
}

fn s(k: &str, v: &str, c: i64, m: i64, ver: i64) -> Kv {
    (k.into(), v.into(), c, m, ver)
}

#[test]
fn revisions_versions_and_history() {
    let mut t = Sm::new();
    assert_eq!(t.sm.progress().current, 1);
    assert_eq!(t.put("a", "1"), 2);
    assert_eq!(t.put("a", "2"), 3);
    assert_eq!(t.put("b", "x"), 4);
    assert_eq!(t.get("a", "", 0).unwrap(), vec![s("a", "2", 2, 3, 2)]);
    assert_eq!(t.get("a", "", 2).unwrap(), vec![s("a", "1", 2, 2, 1)]);
    assert_eq!(t.del("a", ""), 1);
    assert!(t.get("a", "", 0).unwrap().is_empty());
    // A new generation starts from version 1 with a new create revision.
    assert_eq!(t.put("a", "3"), 6);
    assert_eq!(t.get("a", "", 0).unwrap(), vec![s("a", "3", 6, 6, 1)]);
    assert_eq!(t.get("a", "", 4).unwrap(), vec![s("a", "2", 2, 3, 2)]);
    assert!(matches!(
        t.get("a", "", 99),
        Err(StoreError::FutureRevision)
    ));
    // Prefix range, count and limit.
    let r =
        t.sm.range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.count, r.more, r.kvs.len()), (2, true, 1));
}

#[test]
fn transactions_compare_and_see_their_own_writes() {
    let mut t = Sm::new();
    t.put("k", "v1");
    let cmp = |target: compare::TargetUnion, tgt: compare::CompareTarget| Compare {
        result: compare::CompareResult::Equal as i32,
        target: tgt as i32,
        key: b"k".to_vec(),
        target_union: Some(target),
        range_end: Vec::new(),
    };
    let get_k = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })),
    };
    let r = t
        .txn(TxnRequest {
            compare: vec![cmp(
                compare::TargetUnion::ModRevision(2),
                compare::CompareTarget::Mod,
            )],
            success: vec![put_op("k", "v2", 0), get_k.clone()],
            failure: vec![],
        })
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 3);
    match &r.responses[1].response {
        Some(response_op::Response::ResponseRange(g)) => assert_eq!(g.kvs[0].value, b"v2"),
        _ => panic!(),
    }
    // The same compare now fails: optimistic concurrency.
    let r = t
        .txn(TxnRequest {
            compare: vec![cmp(
                compare::TargetUnion::ModRevision(2),
                compare::CompareTarget::Mod,
            )],
            success: vec![put_op("k", "lost", 0)],
            failure: vec![get_k],
        })
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(
        r.header.unwrap().revision,
        3,
        "a failed compare writes nothing"
    );
    assert_eq!(t.get("k", "", 0).unwrap()[0].1, "v2");
    // Value compare on a missing key is false.
    let r = t
        .txn(TxnRequest {
            compare: vec![Compare {
                key: b"missing".to_vec(),
                ..cmp(
                    compare::TargetUnion::Value(Vec::new()),
                    compare::CompareTarget::Value,
                )
            }],
            ..Default::default()
        })
        .unwrap();
    assert!(!r.succeeded);
}

#[test]
fn failed_commands_change_nothing_but_the_applied_index() {
    let mut t = Sm::new();
    t.put("a", "1");
    let before = t.sm.progress();
    assert!(matches!(
        t.put_lease("b", "x", 42),
        Err(StoreError::LeaseNotFound)
    ));
    let dup = t.txn(TxnRequest {
        success: vec![put_op("c", "1", 0), put_op("c", "2", 0)],
        ..Default::default()
    });
    assert!(matches!(dup, Err(StoreError::DuplicateKey)));
    let after = t.sm.progress();
    assert_eq!(after.current, before.current);
    assert_eq!(after.applied_index, before.applied_index + 2);
    assert!(t.get("b", "", 0).unwrap().is_empty());
    assert!(t.get("c", "", 0).unwrap().is_empty());
}

#[test]
fn compaction_keeps_reads_at_and_after_the_point() {
    let mut t = Sm::new();
    for i in 0..5 {
        t.put("c", &i.to_string()); // revisions 2..=6
    }
    t.put("gone", "x"); // 7
    t.del("gone", ""); // 8
    t.put("d", "y"); // 9
    t.apply(Op::Compaction(CompactionRequest {
        revision: 8,
        physical: true,
    }))
    .unwrap();
    assert!(matches!(
        t.get("c", "", 7),
        Err(StoreError::Compacted {
            compact_revision: 8
        })
    ));
    assert_eq!(t.get("c", "", 8).unwrap(), vec![s("c", "4", 2, 6, 5)]);
    // The delete at the compaction revision is still delivered to a watch from there.
    let range = KeyRange::new(b"a", &[0]);
    let (ev, next) = t.sm.events(8, &range, true, 100).unwrap();
    assert_eq!(next, 10);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].r#type, EventType::Delete as i32);
    assert_eq!(ev[0].prev_kv.as_ref().unwrap().value, b"x");
    assert!(matches!(
        t.sm.events(7, &range, false, 100),
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        t.apply(Op::Compaction(CompactionRequest {
            revision: 5,
            physical: true
        })),
        Err(StoreError::Compacted { .. })
    ));
    // Reopening rebuilds the same index, revision and compaction point.
    let t = t.reopen();
    let p = t.sm.progress();
    assert_eq!((p.current, p.compacted), (9, 8));
    assert_eq!(t.get("c", "", 0).unwrap(), vec![s("c", "4", 2, 6, 5)]);
    assert!(t.get("gone", "", 0).unwrap().is_empty());
}

#[test]
fn events_follow_revisions_and_never_split_one() {
    let mut t = Sm::new();
    t.put("w/a", "1"); // 2
    t.txn(TxnRequest {
        success: vec![put_op("w/b", "2", 0), put_op("w/c", "3", 0)],
        ..Default::default()
    })
    .unwrap(); // 3 (two events)
    t.put("other", "x"); // 4
    t.put("w/a", "4"); // 5
    let range = KeyRange::new(b"w/", b"w0");
    // Asking for one event still returns both events of revision 3.
    let (ev, next) = t.sm.events(3, &range, false, 1).unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(next, 4);
    let (ev, next) = t.sm.events(next, &range, true, 10).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kv.as_ref().unwrap().mod_revision, 5);
    assert_eq!(ev[0].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(next, 6);
    // A future start revision returns nothing, never old events.
    let (ev, next) = t.sm.events(50, &range, false, 10).unwrap();
    assert!(ev.is_empty());
    assert_eq!(next, 50);
}

#[test]
fn leases_delete_their_keys_and_survive_reopen() {
    let mut t = Sm::new();
    t.apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 5 }))
        .unwrap();
    assert!(matches!(
        t.apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 5 })),
        Err(StoreError::LeaseExists)
    ));
    t.put_lease("l/1", "a", 5).unwrap();
    t.put_lease("l/2", "b", 5).unwrap();
    t.put("l/3", "c");
    let mut t = t.reopen();
    let (granted, left, keys) = t.sm.lease(5).unwrap();
    assert_eq!(granted, 60);
    assert!(left > 0 && left <= 60);
    assert_eq!(keys, vec![b"l/1".to_vec(), b"l/2".to_vec()]);
    let before = t.sm.progress().current;
    t.apply(Op::LeaseRevoke(LeaseRevokeRequest { id: 5 }))
        .unwrap();
    // Lease grants take no revision; revoking deletes both keys in one revision.
    assert_eq!(t.sm.progress().current, before + 1);
    assert_eq!(t.get("l/", "l0", 0).unwrap(), vec![s("l/3", "c", 4, 4, 1)]);
    assert!(t.sm.lease(5).is_none());
    // Re-putting a key without a lease detaches it.
    t.apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 6 }))
        .unwrap();
    t.put_lease("m", "1", 6).unwrap();
    t.put("m", "2");
    assert!(t.sm.lease(6).unwrap().2.is_empty());
}

#[test]
fn snapshot_restores_an_identical_state() {
    let mut a = Sm::new();
    for i in 0..50 {
        a.put(&format!("k/{i:02}"), &i.to_string());
    }
    a.del("k/1", "k/2");
    a.apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 9 }))
        .unwrap();
    a.put_lease("leased", "v", 9).unwrap();
    a.apply(Op::Compaction(CompactionRequest {
        revision: 20,
        physical: true,
    }))
    .unwrap();
    let snap = a.sm.build_snapshot().unwrap();
    let data = snap.data;
    let p = a.sm.progress();
    assert_eq!((snap.index, snap.term), (p.applied_index, p.applied_term));
    let b = Sm::new();
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    b.sm.restore(
        &data,
        p.applied_index,
        p.applied_term,
        &cs,
        WriteBatch::default(),
    )
    .unwrap();
    let q = b.sm.progress();
    assert_eq!(
        (q.current, q.compacted, q.applied_index),
        (p.current, p.compacted, p.applied_index)
    );
    assert_eq!(b.get("", "\0", 0).unwrap(), a.get("", "\0", 0).unwrap());
    assert_eq!(
        b.get("k/15", "", 25).unwrap(),
        a.get("k/15", "", 25).unwrap()
    );
    assert_eq!(b.sm.lease(9).unwrap().2, vec![b"leased".to_vec()]);
    assert_eq!(b.sm.conf_state().voters, vec![1, 2, 3]);
    let b = b.reopen();
    assert_eq!(b.get("", "\0", 0).unwrap(), a.get("", "\0", 0).unwrap());
}

#[test]
fn nested_compares_see_the_state_before_the_transaction() {
    let mut t = Sm::new();
    // The nested compare "x is absent" is judged before the outer put of x, as in etcd.
    let nested = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: b"x".to_vec(),
            target_union: Some(compare::TargetUnion::Version(0)),
            range_end: Vec::new(),
        }],
        success: vec![put_op("y", "x-was-absent", 0)],
        failure: vec![put_op("y", "x-was-present", 0)],
    };
    t.txn(TxnRequest {
        success: vec![
            put_op("x", "1", 0),
            RequestOp {
                request: Some(request_op::Request::RequestTxn(nested)),
            },
        ],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(t.get("y", "", 0).unwrap()[0].1, "x-was-absent");
}

#[test]
fn ranges_sort_limit_and_count() {
    use ferrokube_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    let mut t = Sm::new();
    t.put("s/a", "3"); // 2
    t.put("s/b", "1"); // 3
    t.put("s/c", "2"); // 4
    t.put("s/a", "0"); // 5: a is now the newest and smallest
    let ask = |order: SortOrder, target: SortTarget, limit: i64, keys_only: bool| {
        let r =
            t.sm.range(&RangeRequest {
                key: b"s/".to_vec(),
                range_end: b"s0".to_vec(),
                sort_order: order as i32,
                sort_target: target as i32,
                limit,
                keys_only,
                ..Default::default()
            })
            .unwrap();
        let keys: Vec<String> = r
            .kvs
            .iter()
            .map(|kv| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value)
                )
            })
            .collect();
        (keys, r.count, r.more, r.header.unwrap().revision)
    };
    assert_eq!(
        ask(SortOrder::Descend, SortTarget::Value, 2, false),
        (vec!["s/c=2".into(), "s/b=1".into()], 3, true, 5)
    );
    assert_eq!(
        ask(SortOrder::Ascend, SortTarget::Value, 0, true),
        (
            vec!["s/a=".into(), "s/b=".into(), "s/c=".into()],
            3,
            false,
            5
        )
    );
    assert_eq!(
        ask(SortOrder::Descend, SortTarget::Mod, 1, false),
        (vec!["s/a=0".into()], 3, true, 5)
    );
    assert_eq!(
        ask(SortOrder::None, SortTarget::Key, 0, false),
        (
            vec!["s/a=0".into(), "s/b=1".into(), "s/c=2".into()],
            3,
            false,
            5
        )
    );
}
