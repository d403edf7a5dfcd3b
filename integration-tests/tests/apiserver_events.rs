//! Events: one object served as core `v1` and `events.k8s.io/v1` Events (fields renamed
//! both ways), and expired after `--event-ttl`.

use std::time::{Duration, Instant};

use integration_tests::apiserver::ApiServer;

#[test]
fn events_are_served_twice_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start_with(dir.path(), vec!["--event-ttl".into(), "3s".into()]);
    // Written through events.k8s.io (as the scheduler does), read as a core Event.
    let ev = r#"{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"web.1","namespace":"default"},
        "eventTime":"2026-01-01T00:00:00.000000Z","reportingController":"default-scheduler","reportingInstance":"s1",
        "action":"Binding","reason":"Scheduled","type":"Normal","note":"Successfully assigned default/web to node-1",
        "regarding":{"kind":"Pod","namespace":"default","name":"web","apiVersion":"v1"}}"#;
    let f = dir.path().join("ev.json");
    std::fs::write(&f, ev).unwrap();
    api.ok(&[
        "create",
        "--raw",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        "-f",
        f.to_str().unwrap(),
    ]);
    let core: serde_json::Value =
        serde_json::from_str(&api.ok(&["get", "events", "web.1", "-o", "json"])).unwrap();
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(
        core["message"],
        "Successfully assigned default/web to node-1"
    );
    assert_eq!(core["involvedObject"]["name"], "web");
    assert_eq!(core["reportingComponent"], "default-scheduler");
    let table = api.ok(&["get", "events"]);
    assert!(
        table.contains("Scheduled")
            && table.contains("pod/web")
            && table.contains("Successfully assigned"),
        "{table}"
    );
    let back: serde_json::Value = serde_json::from_str(&api.ok(&[
        "get",
        "--raw",
        "/apis/events.k8s.io/v1/namespaces/default/events/web.1",
    ]))
    .unwrap();
    assert_eq!(back["note"], "Successfully assigned default/web to node-1");
    assert_eq!(back["regarding"]["kind"], "Pod");
    assert!(back.get("message").is_none());
    // Events go after the TTL (3 s here; 1 h by default).
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.kubectl(&["get", "events", "web.1"]).is_ok() {
        assert!(Instant::now() < deadline, "the event outlived its TTL");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Other objects do not expire.
    api.ok(&["create", "configmap", "stays", "--from-literal=a=b"]);
    std::thread::sleep(Duration::from_secs(5));
    api.ok(&["get", "configmap", "stays"]);
}
