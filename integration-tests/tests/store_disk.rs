//! Running out of space: the backend quota (a clean, reported refusal) and a real full
//! disk (a tmpfs filled to the brim). Either way nothing unacknowledged is claimed and
//! nothing acknowledged is lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferrokube_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use integration_tests::{etcdctl, Cluster};

/// A tmpfs mounted for one test, unmounted when dropped (also on failure).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn put_until_error(
    c: &Cluster,
    value_size: usize,
    limit: usize,
) -> (Vec<Vec<u8>>, tonic::Status) {
    let mut kv = c.members[0].kv();
    let mut acked = Vec::new();
    for i in 0..limit {
        let key = format!("k/{i:06}").into_bytes();
        let r = kv
            .put(PutRequest {
                key: key.clone(),
                value: vec![b'v'; value_size],
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => acked.push(key),
            Err(e) => return (acked, e),
        }
    }
    panic!("no error after {limit} writes");
}

#[tokio::test]
async fn quota_refuses_writes_but_keeps_data_and_allows_deletes() {
    let mut c = Cluster::new(1, &["--quota-backend-bytes", "3000000"]).unwrap();
    c.start().await.unwrap();
    let (acked, err) = put_until_error(&c, 8192, 5000).await;
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "etcdserver: mvcc: database space exceeded");
    assert!(!acked.is_empty());
    let ep = c.endpoints();
    let alarms = etcdctl(&ep, &["alarm", "list"]).unwrap();
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    let mut kv = c.members[0].kv();
    let count = kv
        .range(RangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count as usize, acked.len());
    // Deleting is how an operator gets out of it.
    let d = kv
        .delete_range(DeleteRangeRequest {
            key: acked[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 1);
}

#[tokio::test]
async fn full_disk_stops_the_member_without_losing_acknowledged_writes() {
    let mut c = Cluster::new(1, &[]).unwrap();
    let fs = Tmpfs::mount(&c.dir.path().join("full"), "12m");
    c.members[0].data_dir = fs.0.join("data");
    c.start().await.unwrap();
    let (acked, err) = put_until_error(&c, 6000, 20000).await;
    assert!(
        acked.len() > 100,
        "only {} writes before the disk filled",
        acked.len()
    );
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Internal | tonic::Code::Unknown
        ),
        "{err:?}"
    );
    // The member stops instead of serving without being able to persist.
    let status = c.members[0]
        .wait_exit(Duration::from_secs(10))
        .expect("member exits after a storage failure");
    assert!(!status.success());
    // Either our own fail-stop (which names the error) or, depending on where in RocksDB
    // the write failed, an assertion inside Debian's librocksdb aborting the process: both
    // stop the member before it can acknowledge anything it did not persist.
    let log = std::fs::read_to_string(&c.members[0].log).unwrap();
    assert!(
        log.contains("No space left on device") || log.contains("rocksdb::WritableFileWriter"),
        "{log}"
    );
    // Move the data somewhere with room and start again: every acknowledged write is there.
    let moved = c.dir.path().join("moved");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&c.members[0].data_dir)
        .arg(&moved)
        .status()
        .unwrap();
    assert!(st.success());
    drop(fs);
    c.members[0].data_dir = moved;
    let ic = c.initial_cluster();
    c.members[0].start(&ic, "new").unwrap();
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let mut kv = c.members[0].kv();
    let r = kv
        .range(RangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let present: std::collections::HashSet<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
    for k in &acked {
        assert!(
            present.contains(k),
            "acknowledged {} lost",
            String::from_utf8_lossy(k)
        );
    }
    // And it takes writes again.
    kv.put(PutRequest {
        key: b"after".to_vec(),
        value: b"x".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
}
