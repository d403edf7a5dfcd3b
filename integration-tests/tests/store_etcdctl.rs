//! Debian's stock `etcdctl` (3.4) against ferrokube-store: every command the foundation
//! promises, with output checked as a user would read it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{etcdctl, etcdctl_run, etcdctl_stdin, Cluster};

async fn single() -> Cluster {
    let mut c = Cluster::new(1, &[]).expect("cluster");
    c.start().await.expect("start");
    c
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test]
async fn put_get_prefix_rev_limit_json_del() {
    let c = single().await;
    let ep = c.endpoints();
    assert_eq!(etcdctl(&ep, &["put", "foo", "bar"]).unwrap(), "OK\n");
    assert_eq!(etcdctl(&ep, &["put", "foo", "baz"]).unwrap(), "OK\n");
    assert_eq!(etcdctl(&ep, &["put", "fop", "x"]).unwrap(), "OK\n");
    assert_eq!(etcdctl(&ep, &["put", "g", "y"]).unwrap(), "OK\n");
    assert_eq!(etcdctl(&ep, &["get", "foo"]).unwrap(), "foo\nbaz\n");
    // A single-key get never returns keys below it.
    assert_eq!(etcdctl(&ep, &["get", "fo"]).unwrap(), "");
    assert_eq!(
        etcdctl(&ep, &["get", "fo", "--prefix"]).unwrap(),
        "foo\nbaz\nfop\nx\n"
    );
    // The empty store is revision 1, so the first put is revision 2.
    assert_eq!(
        etcdctl(&ep, &["get", "foo", "--rev=2"]).unwrap(),
        "foo\nbar\n"
    );
    assert_eq!(etcdctl(&ep, &["get", "foo", "--rev=1"]).unwrap(), "");
    assert_eq!(
        etcdctl(&ep, &["get", "", "--prefix", "--limit=2", "--keys-only"]).unwrap(),
        "foo\n\nfop\n\n"
    );
    let j = json(&etcdctl(&ep, &["get", "fo", "--prefix", "--limit=1", "-w", "json"]).unwrap());
    assert_eq!(j["count"], 2);
    assert_eq!(j["more"], true);
    assert_eq!(j["header"]["revision"], 5);
    let kv = &j["kvs"][0];
    assert_eq!(kv["key"], "Zm9v"); // base64("foo")
    assert_eq!(kv["create_revision"], 2);
    assert_eq!(kv["mod_revision"], 3);
    assert_eq!(kv["version"], 2);
    assert_eq!(kv["value"], "YmF6"); // base64("baz")
    assert_eq!(
        etcdctl(&ep, &["get", "--from-key", "fop"]).unwrap(),
        "fop\nx\ng\ny\n"
    );
    assert_eq!(etcdctl(&ep, &["del", "foo"]).unwrap(), "1\n");
    assert_eq!(etcdctl(&ep, &["del", "foo"]).unwrap(), "0\n");
    assert_eq!(
        etcdctl(&ep, &["del", "f", "--prefix", "--prev-kv"]).unwrap(),
        "1\nfop\nx\n"
    );
    assert_eq!(etcdctl(&ep, &["get", "", "--prefix"]).unwrap(), "g\ny\n");
    // History is still there at old revisions.
    assert_eq!(
        etcdctl(&ep, &["get", "foo", "--rev=3"]).unwrap(),
        "foo\nbaz\n"
    );
    let err = etcdctl(&ep, &["get", "foo", "--rev=100"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("required revision is a future revision"),
        "{err}"
    );
}

#[tokio::test]
async fn txn_compares_and_branches() {
    let c = single().await;
    let ep = c.endpoints();
    etcdctl(&ep, &["put", "k", "v1"]).unwrap();
    let out = etcdctl_stdin(
        &ep,
        &["txn"],
        Some("value(\"k\") = \"v1\"\n\nput k v2\nget k\n\nput k failed\n\n"),
    )
    .unwrap();
    assert_eq!(out, "SUCCESS\n\nOK\n\nk\nv2\n");
    let out = etcdctl_stdin(
        &ep,
        &["txn"],
        Some("value(\"k\") = \"v1\"\n\nput k v3\n\nput other created\n\n"),
    )
    .unwrap();
    assert_eq!(out, "FAILURE\n\nOK\n");
    assert_eq!(etcdctl(&ep, &["get", "other"]).unwrap(), "other\ncreated\n");
    assert_eq!(etcdctl(&ep, &["get", "k"]).unwrap(), "k\nv2\n");
    // Optimistic concurrency on mod revision: only the first of two writers wins.
    let j = json(&etcdctl(&ep, &["get", "k", "-w", "json"]).unwrap());
    let rev = j["kvs"][0]["mod_revision"].as_i64().unwrap();
    let cas = |val: &str| {
        etcdctl_stdin(
            &ep,
            &["txn"],
            Some(&format!("mod(\"k\") = \"{rev}\"\n\nput k {val}\n\n\n")),
        )
        .unwrap()
    };
    assert!(cas("first").starts_with("SUCCESS"));
    assert!(cas("second").starts_with("FAILURE"));
    assert_eq!(etcdctl(&ep, &["get", "k"]).unwrap(), "k\nfirst\n");
}

/// Runs `etcdctl watch ...` in the background and collects its output.
struct Watch {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Watch {
    fn start(dir: &std::path::Path, ep: &str, args: &[&str]) -> Watch {
        let out = dir.join(format!("watch-{}.out", integration_tests::free_port()));
        let f = std::fs::File::create(&out).unwrap();
        let child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_ENDPOINTS")
            .args(["--endpoints", ep, "watch"])
            .args(args)
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Watch { child, out }
    }

    /// Waits until the output has `lines` lines (bounded), then returns it.
    fn wait_lines(&self, lines: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = std::fs::read_to_string(&self.out).unwrap_or_default();
            if s.lines().count() >= lines || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn watch_live_and_from_revision() {
    let c = single().await;
    let ep = c.endpoints();
    etcdctl(&ep, &["put", "w/a", "1"]).unwrap(); // rev 2
    etcdctl(&ep, &["put", "other", "x"]).unwrap(); // rev 3
    etcdctl(&ep, &["put", "w/b", "2"]).unwrap(); // rev 4
    let past = Watch::start(c.dir.path(), &ep, &["--rev=2", "--prefix", "w/"]);
    let live = Watch::start(c.dir.path(), &ep, &["--prev-kv", "w/a"]);
    std::thread::sleep(Duration::from_millis(500));
    etcdctl(&ep, &["put", "w/a", "3"]).unwrap(); // rev 5
    etcdctl(&ep, &["del", "w/a"]).unwrap(); // rev 6
    assert_eq!(
        past.wait_lines(12),
        "PUT\nw/a\n1\nPUT\nw/b\n2\nPUT\nw/a\n3\nDELETE\nw/a\n\n"
    );
    // With --prev-kv etcdctl prints the previous key-value before the new one.
    let s = live.wait_lines(10);
    assert_eq!(s, "PUT\nw/a\n1\nw/a\n3\nDELETE\nw/a\n3\nw/a\n\n");
}

#[tokio::test]
async fn leases_grant_attach_keepalive_revoke_expire() {
    let c = single().await;
    let ep = c.endpoints();
    let out = etcdctl(&ep, &["lease", "grant", "60"]).unwrap();
    // "lease 694d77aa9e38260f granted with TTL(60s)"
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    assert!(out.ends_with("granted with TTL(60s)\n"), "{out}");
    etcdctl(&ep, &["put", "--lease", &id, "leased", "v"]).unwrap();
    let ttl = etcdctl(&ep, &["lease", "timetolive", "--keys", &id]).unwrap();
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );
    let ka = etcdctl(&ep, &["lease", "keep-alive", "--once", &id]).unwrap();
    assert!(
        ka.contains(&format!("lease {id} keepalived with TTL(60)")),
        "{ka}"
    );
    let list = etcdctl(&ep, &["lease", "list"]).unwrap();
    assert!(list.contains(&id), "{list}");
    let out = etcdctl(&ep, &["lease", "revoke", &id]).unwrap();
    assert_eq!(out, format!("lease {id} revoked\n"));
    assert_eq!(etcdctl(&ep, &["get", "leased"]).unwrap(), "");
    let ttl = etcdctl(&ep, &["lease", "timetolive", &id]).unwrap();
    assert!(ttl.contains("already expired"), "{ttl}");
    // A key on a lease that is not renewed disappears after the TTL.
    let out = etcdctl(&ep, &["lease", "grant", "2"]).unwrap();
    let short = out.split_whitespace().nth(1).unwrap().to_string();
    etcdctl(&ep, &["put", "--lease", &short, "ephemeral", "v"]).unwrap();
    assert_eq!(
        etcdctl(&ep, &["get", "ephemeral"]).unwrap(),
        "ephemeral\nv\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while etcdctl(&ep, &["get", "ephemeral"]).unwrap() != "" {
        assert!(Instant::now() < deadline, "leased key outlived its lease");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Putting with an unknown lease is refused.
    let err = etcdctl(&ep, &["put", "--lease", "1234abcd", "x", "y"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("requested lease not found"), "{err}");
}

#[tokio::test]
async fn compaction_and_compacted_reads() {
    let c = single().await;
    let ep = c.endpoints();
    for i in 0..5 {
        etcdctl(&ep, &["put", "c", &i.to_string()]).unwrap(); // revs 2..=6
    }
    assert_eq!(
        etcdctl(&ep, &["compaction", "4"]).unwrap(),
        "compacted revision 4\n"
    );
    assert_eq!(etcdctl(&ep, &["get", "c", "--rev=4"]).unwrap(), "c\n2\n");
    let err = etcdctl(&ep, &["get", "c", "--rev=3"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    let err = etcdctl(&ep, &["compaction", "3"]).unwrap_err().to_string();
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    // A watch from a compacted revision is refused with the compaction point.
    let out = Command::new("timeout")
        .args(["5", "etcdctl", "--endpoints", &ep, "watch", "--rev=2", "c"])
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("required revision has been compacted"),
        "{text}"
    );
    // Events at and after the compaction point are still watchable.
    let w = Watch::start(c.dir.path(), &ep, &["--rev=4", "c"]);
    assert_eq!(w.wait_lines(9), "PUT\nc\n2\nPUT\nc\n3\nPUT\nc\n4\n");
}

#[tokio::test]
async fn endpoint_status_and_bad_input() {
    let c = single().await;
    let ep = c.endpoints();
    let j = json(&etcdctl(&ep, &["endpoint", "status", "-w", "json"]).unwrap());
    let st = &j[0]["Status"];
    assert_eq!(st["leader"], st["header"]["member_id"]);
    assert!(st["raftTerm"].as_u64().unwrap() >= 1);
    assert_eq!(st["raftIndex"], st["raftAppliedIndex"]);
    assert_eq!(st["version"], "3.4.0");
    // etcdctl 3.4 reports health on stderr.
    let (_, health) = etcdctl_run(&ep, &["endpoint", "health"], None).unwrap();
    assert!(health.contains("is healthy"), "{health}");
    let members = etcdctl(&ep, &["member", "list"]).unwrap();
    assert!(
        members.contains(", started, m0, http://127.0.0.1:"),
        "{members}"
    );
    // Oversized values are refused and nothing is stored.
    let big = "x".repeat(2 * 1024 * 1024);
    // (etcdctl reads the value from stdin when none is given.)
    let err = etcdctl_stdin(&ep, &["put", "big"], Some(&big))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("request is too large") || err.contains("larger than max"),
        "{}",
        &err[..err.len().min(300)]
    );
    assert_eq!(etcdctl(&ep, &["get", "big"]).unwrap(), "");
    let err = etcdctl(&ep, &["put", "", "v"]).unwrap_err().to_string();
    assert!(err.contains("key is not provided"), "{err}");
}

#[tokio::test]
async fn auto_compaction_keeps_only_the_retained_revisions() {
    let mut c = Cluster::new(
        1,
        &[
            "--auto-compaction-retention",
            "5",
            "--auto-compaction-interval",
            "1",
        ],
    )
    .unwrap();
    c.start().await.unwrap();
    let ep = c.endpoints();
    for i in 0..20 {
        etcdctl(&ep, &["put", "a", &i.to_string()]).unwrap(); // revisions 2..=21
    }
    // Within a few intervals the leader compacts to current - 5 = 16.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match etcdctl(&ep, &["get", "a", "--rev=15"]) {
            Err(e)
                if e.to_string()
                    .contains("required revision has been compacted") =>
            {
                break
            }
            other => assert!(Instant::now() < deadline, "not compacted: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Everything from the retention point on is still readable.
    assert_eq!(etcdctl(&ep, &["get", "a", "--rev=16"]).unwrap(), "a\n14\n");
    let j = json(&etcdctl(&ep, &["get", "a", "-w", "json"]).unwrap());
    assert_eq!(j["header"]["revision"], 21);
}
