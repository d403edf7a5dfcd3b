//! Fault tests on real `ferrokube-store` processes on loopback: leaders killed with
//! SIGKILL under continuous writes, the whole group killed and restarted, and a member
//! whose data is wiped rejoining through a snapshot. Afterwards every acknowledged write
//! must be there, revisions must have no gaps or duplicates, and a watcher that
//! reconnects from its last revision must have seen every event exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokube_proto::etcdserverpb::kv_client::KvClient;
use ferrokube_proto::etcdserverpb::watch_client::WatchClient;
use ferrokube_proto::etcdserverpb::{
    watch_request, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use integration_tests::{etcdctl, Cluster};
use tonic::transport::Channel;

#[derive(Debug, Clone)]
struct Acked {
    key: Vec<u8>,
    value: Vec<u8>,
    revision: i64,
}

/// Writes unique keys, moving to another member on any error; records acknowledgements.
async fn writer(
    chans: Vec<Channel>,
    id: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    let mut target = id % chans.len();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k/{id}/{i:08}").into_bytes();
        let value = format!("value-{id}-{i}").into_bytes();
        i += 1;
        let req = PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        let mut kv = KvClient::new(chans[target].clone());
        match tokio::time::timeout(Duration::from_secs(8), kv.put(req)).await {
            Ok(Ok(resp)) => {
                let revision = resp.into_inner().header.unwrap().revision;
                acked.lock().unwrap().push(Acked {
                    key,
                    value,
                    revision,
                });
            }
            _ => {
                // Unknown outcome: this key may or may not exist; never reuse it.
                target = (target + 1) % chans.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A watch event as seen: (revision, key, value).
type Seen = (i64, Vec<u8>, Vec<u8>);

/// Watches `k/` from revision 2, reconnecting (to the next member) from the last revision
/// seen + 1 whenever the stream breaks. Stops once it has seen `until` (when set).
async fn watcher(
    chans: Vec<Channel>,
    until: Arc<Mutex<Option<i64>>>,
    events: Arc<Mutex<Vec<Seen>>>,
) {
    let mut next = 2i64;
    let mut target = 0usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Some(u) = *until.lock().unwrap() {
            if next > u {
                return;
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"k/".to_vec(),
                    range_end: b"k0".to_vec(),
                    start_revision: next,
                    ..Default::default()
                },
            )),
        };
        tx.send(create).await.unwrap();
        let mut client = WatchClient::new(chans[target].clone());
        let stream = tokio::time::timeout(
            Duration::from_secs(3),
            client.watch(tokio_stream_wrapper(rx)),
        )
        .await;
        if let Ok(Ok(resp)) = stream {
            let mut s = resp.into_inner();
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(2), s.message()).await;
                match msg {
                    Ok(Ok(Some(r))) => {
                        assert!(r.compact_revision == 0, "unexpected compaction");
                        for e in r.events {
                            let kv = e.kv.unwrap();
                            assert!(
                                kv.mod_revision >= next,
                                "watch went back in time: {} after asking from {next}",
                                kv.mod_revision
                            );
                            next = kv.mod_revision + 1;
                            events
                                .lock()
                                .unwrap()
                                .push((kv.mod_revision, kv.key, kv.value));
                        }
                    }
                    Err(_) => {
                        // Quiet stream: done if everything was seen, else keep waiting.
                        if let Some(u) = *until.lock().unwrap() {
                            if next > u {
                                return;
                            }
                        }
                    }
                    _ => break,
                }
            }
        }
        drop(tx);
        target = (target + 1) % chans.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("watcher did not finish in time");
}

fn tokio_stream_wrapper(
    rx: tokio::sync::mpsc::Receiver<WatchRequest>,
) -> impl futures_like::Stream<Item = WatchRequest> {
    futures_like::ReceiverStream(rx)
}

/// A minimal mpsc → Stream adapter (keeps this test free of extra dependencies).
mod futures_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    pub use tonic::codegen::tokio_stream::Stream;

    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

/// Linearizable read of every `k/` key from `chan`.
async fn read_all(chan: Channel) -> (i64, BTreeMap<Vec<u8>, (Vec<u8>, i64)>) {
    let mut kv = KvClient::new(chan);
    let resp = kv
        .range(RangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    let rev = resp.header.unwrap().revision;
    let map = resp
        .kvs
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
        .collect();
    (rev, map)
}

fn check_acked(acked: &[Acked], data: &BTreeMap<Vec<u8>, (Vec<u8>, i64)>) {
    let mut revs: Vec<i64> = acked.iter().map(|a| a.revision).collect();
    revs.sort_unstable();
    let before = revs.len();
    revs.dedup();
    assert_eq!(
        before,
        revs.len(),
        "two acknowledged writes share a revision"
    );
    for a in acked {
        let got = data.get(&a.key).unwrap_or_else(|| {
            panic!(
                "acknowledged write {} (revision {}) is lost",
                String::from_utf8_lossy(&a.key),
                a.revision
            )
        });
        assert_eq!(
            got.0,
            a.value,
            "value of {}",
            String::from_utf8_lossy(&a.key)
        );
        assert_eq!(
            got.1,
            a.revision,
            "revision of {}",
            String::from_utf8_lossy(&a.key)
        );
    }
}

/// Once a leader is agreed, reads everything through it and checks that more than `min`
/// writes were acknowledged and every one of them is there; returns the revision read at,
/// the data and the acknowledgements.
async fn verify_acked(
    c: &mut Cluster,
    chans: &[Channel],
    acked: &Mutex<Vec<Acked>>,
    min: usize,
) -> (i64, BTreeMap<Vec<u8>, (Vec<u8>, i64)>, Vec<Acked>) {
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let (rev, data) = read_all(chans[leader].clone()).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > min,
        "too few writes acknowledged: {}",
        acked.len()
    );
    check_acked(&acked, &data);
    (rev, data, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kills_under_writes_lose_nothing() {
    let mut c = Cluster::new(3, &["--snapshot-count", "500"]).unwrap();
    c.start().await.unwrap();
    let chans: Vec<Channel> = c.members.iter().map(|m| m.channel()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let until = Arc::new(Mutex::new(None));
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for id in 0..4 {
        writers.push(tokio::spawn(writer(
            chans.clone(),
            id,
            stop.clone(),
            acked.clone(),
        )));
    }
    let watch = tokio::spawn(watcher(chans.clone(), until.clone(), events.clone()));
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = match c.wait_leader(Duration::from_secs(20)).await {
            Ok(l) => l,
            Err(e) => {
                c.dump_logs();
                panic!("round {round}: {e}");
            }
        };
        c.members[leader].kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.restart(leader).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let (final_rev, data, acked) = verify_acked(&mut c, &chans, &acked, 100).await;
    // Every revision after the empty store's 1 is one put of a k/ key.
    assert_eq!(final_rev as usize - 1, data.len(), "revisions have gaps");
    *until.lock().unwrap() = Some(final_rev);
    if let Err(e) = tokio::time::timeout(Duration::from_secs(60), watch).await {
        c.dump_logs();
        panic!("watcher did not catch up: {e}");
    }
    let events = events.lock().unwrap().clone();
    let revs: Vec<i64> = events.iter().map(|e| e.0).collect();
    let expected: Vec<i64> = (2..=final_rev).collect();
    assert_eq!(
        revs, expected,
        "watch events must cover every revision exactly once"
    );
    for (rev, key, value) in &events {
        let (v, r) = &data[key];
        assert_eq!((v, r), (value, rev));
    }
    eprintln!(
        "acknowledged {} writes across 4 leader kills; final revision {final_rev}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_group_kill_and_restart_keeps_acknowledged_writes() {
    let mut c = Cluster::new(3, &[]).unwrap();
    c.start().await.unwrap();
    let chans: Vec<Channel> = c.members.iter().map(|m| m.channel()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = tokio::spawn(writer(chans.clone(), 0, stop.clone(), acked.clone()));
    let w2 = tokio::spawn(writer(chans.clone(), 1, stop.clone(), acked.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill everything while writes are in flight.
    for m in &mut c.members {
        m.kill();
    }
    stop.store(true, Ordering::Relaxed);
    w.await.unwrap();
    w2.await.unwrap();
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    let (_, data, _) = verify_acked(&mut c, &chans, &acked, 20).await;
    // Each member, read locally, has the same data once it caught up.
    for (i, ch) in chans.iter().enumerate() {
        if let Err(got) =
            wait_local_count(ch.clone(), data.len() as i64, Duration::from_secs(10)).await
        {
            panic!("member {i} did not catch up: {got:?}");
        }
    }
}

/// Waits (bounded) until a member's local (serializable) count of `k/` keys is `n`;
/// returns the last answer on failure.
async fn wait_local_count(ch: Channel, n: i64, limit: Duration) -> Result<(), String> {
    let mut kv = KvClient::new(ch);
    let deadline = Instant::now() + limit;
    loop {
        let r = kv
            .range(RangeRequest {
                key: b"k/".to_vec(),
                range_end: b"k0".to_vec(),
                serializable: true,
                count_only: true,
                ..Default::default()
            })
            .await;
        let last = match r {
            Ok(r) if r.get_ref().count == n => return Ok(()),
            Ok(r) => format!("count {}", r.into_inner().count),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_rejoins_through_snapshot() {
    let mut c = Cluster::new(3, &["--snapshot-count", "50"]).unwrap();
    c.start().await.unwrap();
    let ep = c.members[0].endpoint();
    let mut kv = c.members[0].kv();
    for i in 0..300 {
        kv.put(PutRequest {
            key: format!("k/{i:04}").into_bytes(),
            value: format!("v{i}").into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Take member 2 out, wipe it, and add it back as a new member.
    c.members[2].kill();
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let list = etcdctl(&ep, &["member", "list"]).unwrap();
    let line = list
        .lines()
        .find(|l| l.contains(&c.members[2].peer_url()))
        .expect("member 2 listed");
    let id = line.split(',').next().unwrap().trim().to_string();
    let out = etcdctl(&ep, &["member", "remove", &id]).unwrap();
    // etcdctl pads the ID to 16 columns ("Member  e2e2…" for IDs below 2^60).
    assert!(
        out.starts_with("Member ") && out.contains(&format!("{id} removed from cluster")),
        "{out}"
    );
    std::fs::remove_dir_all(&c.members[2].data_dir).unwrap();
    let peer = format!("--peer-urls={}", c.members[2].peer_url());
    let out = etcdctl(&ep, &["member", "add", "m2", &peer]).unwrap();
    assert!(
        out.contains("Member") && out.contains("added to cluster"),
        "{out}"
    );
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    let ic = c.initial_cluster();
    c.members[2].start(&ic, "existing").unwrap();
    if let Err(got) = wait_local_count(c.members[2].channel(), 300, Duration::from_secs(30)).await {
        c.dump_logs();
        panic!("wiped member did not catch up: {got}");
    }
    let log = std::fs::read_to_string(&c.members[2].log).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "member 2 did not catch up by snapshot"
    );
    // It takes part in replication from now on.
    kv.put(PutRequest {
        key: b"k/after".to_vec(),
        value: b"x".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    if let Err(got) = wait_local_count(c.members[2].channel(), 301, Duration::from_secs(10)).await {
        panic!("new write did not reach the rejoined member: {got}");
    }
    // Once it runs, the member publishes its name and client URLs through Raft.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = etcdctl(&ep, &["member", "list"]).unwrap();
        assert_eq!(members.lines().count(), 3, "{members}");
        if members.contains(", started, m2, ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m2 never published itself: {members}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_is_delayed_not_starved_of_events() {
    let mut c = Cluster::new(1, &[]).unwrap();
    c.start().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k/".to_vec(),
                range_end: b"k0".to_vec(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut client = WatchClient::new(c.members[0].channel());
    let mut stream = client
        .watch(tokio_stream_wrapper(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    // Write far more than the transport's flow-control windows hold while not reading.
    let mut kv = c.members[0].kv();
    let n = 3000;
    for i in 0..n {
        kv.put(PutRequest {
            key: format!("k/{i:05}").into_bytes(),
            value: vec![b'x'; 1024],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events stopped coming")
            .unwrap()
            .unwrap();
        for e in r.events {
            seen.push(e.kv.unwrap().mod_revision);
        }
    }
    let expected: Vec<i64> = (2..2 + n as i64).collect();
    assert_eq!(seen, expected);
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_right_after_compaction_keeps_revision_and_compaction_point() {
    let mut c = Cluster::new(1, &[]).unwrap();
    c.start().await.unwrap();
    let ep = c.members[0].endpoint();
    let mut kv = c.members[0].kv();
    for i in 0..100 {
        kv.put(PutRequest {
            key: b"k/c".to_vec(),
            value: format!("{i}").into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap(); // revisions 2..=101
    }
    etcdctl(&ep, &["compaction", "80"]).unwrap();
    c.members[0].kill();
    c.restart(0).unwrap();
    // The first local read after the restart already sees everything from before it.
    let mut kv = c.members[0].kv();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let r = kv
            .range(RangeRequest {
                key: b"k/c".to_vec(),
                serializable: true,
                ..Default::default()
            })
            .await;
        if let Ok(r) = r {
            break r.into_inner();
        }
        assert!(Instant::now() < deadline, "restarted member never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        first.header.unwrap().revision,
        101,
        "served an older state after restart"
    );
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let mut kv = c.members[0].kv();
    let r = kv
        .range(RangeRequest {
            key: b"k/c".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, 101, "revision went backwards");
    assert_eq!(r.kvs[0].value, b"99");
    let old = kv
        .range(RangeRequest {
            key: b"k/c".to_vec(),
            revision: 79,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        old.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let at = kv
        .range(RangeRequest {
            key: b"k/c".to_vec(),
            revision: 80,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at.kvs[0].value, b"78");
    // The next write continues the sequence.
    let r = kv
        .put(PutRequest {
            key: b"k/c".to_vec(),
            value: b"next".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, 102);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_through_snapshot() {
    let mut c = Cluster::new(3, &["--snapshot-count", "50"]).unwrap();
    c.start().await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let follower = (leader + 1) % 3;
    c.members[follower].kill();
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let writer = (follower + 1) % 3;
    let mut kv = c.members[writer].kv();
    for i in 0..300 {
        kv.put(PutRequest {
            key: format!("k/{i:04}").into_bytes(),
            value: format!("v{i}").into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // Its log position is long gone from the others' logs: only a snapshot helps.
    c.restart(follower).unwrap();
    if let Err(got) =
        wait_local_count(c.members[follower].channel(), 300, Duration::from_secs(30)).await
    {
        c.dump_logs();
        panic!("lagging member did not catch up: {got}");
    }
    let log = std::fs::read_to_string(&c.members[follower].log).unwrap();
    assert!(
        log.contains("installed snapshot"),
        "caught up without a snapshot?"
    );
    let r = KvClient::new(c.members[follower].channel())
        .range(RangeRequest {
            key: b"k/0299".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kvs[0].value, b"v299");
}
