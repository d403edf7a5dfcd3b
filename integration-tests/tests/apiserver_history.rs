//! Watches from old resourceVersions: history older than the watch cache (here: from
//! before a restart) is read from the store, and history removed by compaction is 410
//! Gone, as upstream answers it.

use std::time::Duration;

use integration_tests::apiserver::ApiServer;
use serde_json::Value;

fn events(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn old_history_from_the_store_and_compacted_history_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::start_with(
        dir.path(),
        vec!["--etcd-compaction-interval".into(), "2s".into()],
    );
    let list: Value =
        serde_json::from_str(&api.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))
            .unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok(&[
        "create",
        "configmap",
        "before-restart",
        "--from-literal=a=b",
    ]);
    // After a restart the cache starts empty; the store still has the history.
    api.kill();
    api.spawn();
    api.wait_ready();
    let out = api.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"
        ),
    ]);
    let evs = events(&out);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "before-restart"),
        "{out}"
    );
    // Two compaction intervals later, that history is gone: 410 in an ERROR event.
    api.ok(&["create", "configmap", "later", "--from-literal=a=b"]);
    std::thread::sleep(Duration::from_secs(5));
    api.ok(&["create", "configmap", "later2", "--from-literal=a=b"]);
    std::thread::sleep(Duration::from_secs(3));
    let out = api.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=1"
        ),
    ]);
    let evs = events(&out);
    assert_eq!(evs.len(), 1, "{out}");
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");
    assert!(
        evs[0]["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version"),
        "{out}"
    );
    // A list at that revision is gone too; a list now still works.
    let err = api.fails(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"
        ),
    ]);
    assert!(
        err.contains("Expired") || err.contains("410") || err.contains("too old"),
        "{err}"
    );
    // The three, and the controller-manager's CA bundle.
    assert_eq!(api.ok(&["get", "cm", "-o", "name"]).lines().count(), 4);
}
