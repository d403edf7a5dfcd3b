//! Bad input gets etcd's errors and codes, stores nothing, and never takes the member down.

use std::io::Write;
use std::time::Duration;

use ferrokube_proto::etcdserverpb::cluster_client::ClusterClient;
use ferrokube_proto::etcdserverpb::lease_client::LeaseClient;
use ferrokube_proto::etcdserverpb::{
    request_op, LeaseGrantRequest, MemberRemoveRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use integration_tests::Cluster;
use tonic::Code;

fn put(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

fn check<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, msg: &str) {
    let e = r.expect_err("must fail");
    assert_eq!((e.code(), e.message()), (code, msg));
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let mut c = Cluster::new(1, &[]).unwrap();
    c.start().await.unwrap();
    let mut kv = c.members[0].kv();
    check(
        kv.range(RangeRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    check(
        kv.txn(TxnRequest {
            success: (0..200).map(|i| put(&format!("k{i}"))).collect(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    check(
        kv.txn(TxnRequest {
            success: vec![put("same"), put("same")],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    check(
        kv.put(PutRequest {
            key: b"k".to_vec(),
            value: vec![0; 1_600_000],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    check(
        kv.range(RangeRequest {
            key: b"k".to_vec(),
            revision: 1000,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let mut lease = LeaseClient::new(c.members[0].channel());
    check(
        lease
            .lease_grant(LeaseGrantRequest { ttl: -5, id: 0 })
            .await,
        Code::InvalidArgument,
        "etcdserver: lease TTL must be positive",
    );
    let mut cluster = ClusterClient::new(c.members[0].channel());
    check(
        cluster
            .member_remove(MemberRemoveRequest { id: 12345 })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    // None of it stored anything.
    let r = kv
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 0);
    assert_eq!(r.header.unwrap().revision, 1);
}

#[tokio::test]
async fn garbage_on_the_wire_does_not_hurt_the_member() {
    let mut c = Cluster::new(1, &[]).unwrap();
    c.start().await.unwrap();
    for port in [c.members[0].client_port, c.members[0].peer_port] {
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
            &[0u8; 4096][..],
        ] {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(garbage);
        }
    }
    let mut kv = c.members[0].kv();
    kv.put(PutRequest {
        key: b"still".to_vec(),
        value: b"here".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(c.members[0].is_running());
}
