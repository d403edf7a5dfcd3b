//! `crates/client` against kube-apiserver over the gRPC resource service: typed calls go
//! through the same authorization, admission and validation as REST; watches, the
//! informer cache, and leader election on a Lease.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrokube_client::informer::Event;
use ferrokube_client::{
    Api, Client, Config, ElectionConfig, Informer, LeaderElection, ListParams, Patch,
};
use integration_tests::apiserver::ApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, WatchEvent};
use serde_json::json;
use tokio_stream::StreamExt as _;

fn client(api: &ApiServer) -> Client {
    Client::new(&Config::from_kubeconfig(&api.kubeconfig()).unwrap()).unwrap()
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("a".to_string(), "1".to_string())])),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let c = client(&api);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let created = cms.create(&cm("one", &[("app", "x")])).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        cms.create(&cm("one", &[])).await.unwrap_err().reason(),
        Some("AlreadyExists")
    );
    cms.create(&cm("two", &[("app", "y")])).await.unwrap();
    let got = cms.get("one").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["a"], "1");
    let selected = cms
        .list(&ListParams {
            label_selector: Some("app=x".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 1);
    assert!(selected.metadata.resource_version.is_some());
    // kubectl sees what the client wrote: one store, one API.
    assert_eq!(
        api.ok(&["get", "cm", "one", "-o", "jsonpath={.metadata.labels.app}"]),
        "x"
    );
    // Patches of every kind.
    cms.patch("one", &Patch::Merge(json!({"data": {"b": "2"}})))
        .await
        .unwrap();
    cms.patch("one", &Patch::Strategic(json!({"data": {"c": "3"}})))
        .await
        .unwrap();
    let applied = cms
        .patch("one", &Patch::Apply { config: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}, "data": {"d": "4"}}), manager: "test".into(), force: false })
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap().len(), 4);
    // Every write is recorded under its field manager.
    let managers: Vec<(String, String)> = cms
        .get("one")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("test".into(), "Apply".into())),
        "{managers:?}"
    );
    assert!(
        managers.iter().any(|(_, op)| op == "Update"),
        "{managers:?}"
    );
    // Optimistic concurrency: a stale resourceVersion is a Conflict.
    let err = cms.replace("one", &got).await.unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(409), Some("Conflict")));
    // Validation and admission are REST's: an invalid pod is 422 with upstream's message.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let bad: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
    )
    .unwrap();
    let err = pods.create(&bad).await.unwrap_err();
    assert_eq!(err.code(), Some(422));
    assert!(
        err.to_string()
            .contains("spec.containers[0].image: Required value"),
        "{err}"
    );
    let good: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    let p = pods.create(&good).await.unwrap();
    assert_eq!(
        p.spec.unwrap().restart_policy.as_deref(),
        Some("Always"),
        "defaults applied"
    );
    // Subresources: binding.
    pods.create_subresource("p", "binding", &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}}))
        .await
        .unwrap();
    assert_eq!(
        pods.get("p")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("n1")
    );
    // Delete: gone at once, or marked (a bound pod terminates gracefully).
    assert!(cms.delete("two", None).await.unwrap().is_none());
    assert!(cms.get("two").await.unwrap_err().is_not_found());
    let marked = pods
        .delete("p", None)
        .await
        .unwrap()
        .expect("a bound pod is only marked");
    assert!(marked.metadata.deletion_timestamp.is_some());
    // An unknown resource and an unreachable namespace answer like REST.
    let other: Api<ConfigMap> = Api::namespaced(c.clone(), "missing");
    let err = other.create(&cm("x", &[])).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_informers() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let c = client(&api);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    cms.create(&cm("before", &[])).await.unwrap();
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = cms
        .watch(&ListParams {
            resource_version: Some(rv),
            ..Default::default()
        })
        .await
        .unwrap();
    cms.create(&cm("w", &[])).await.unwrap();
    cms.patch("w", &Patch::Merge(json!({"data": {"x": "y"}})))
        .await
        .unwrap();
    cms.delete("w", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        seen.push(match ev {
            WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.unwrap()),
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.metadata.name.unwrap()),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.unwrap()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["ADDED w", "MODIFIED w", "DELETED w"]);
    // A watch that cannot start says why, as an ERROR event.
    let bad = cms
        .watch(&ListParams {
            label_selector: Some("a in ((".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), Box::pin(bad).next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, WatchEvent::ErrorStatus(ref s) if s.code == Some(400)),
        "{first:?}"
    );

    // The informer fills its cache and reports changes.
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut inf = Informer::new(Api::<ConfigMap>::all(c.clone()), ListParams::default());
    let e2 = events.clone();
    inf.on_event(move |e| {
        let line = match e {
            Event::Added(o) => format!("added {}", o.metadata.name.clone().unwrap()),
            Event::Updated(_, o) => format!("updated {}", o.metadata.name.clone().unwrap()),
            Event::Deleted(o) => format!("deleted {}", o.metadata.name.clone().unwrap()),
        };
        e2.lock().unwrap().push(line);
    });
    let store = inf.store();
    let task = tokio::spawn(inf.run());
    let wait = |what: &'static str| {
        let events = events.clone();
        async move {
            for _ in 0..100 {
                if events.lock().unwrap().iter().any(|e| e == what) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "informer never reported {what}: {:?}",
                events.lock().unwrap()
            );
        }
    };
    wait("added before").await;
    assert!(store.has_synced());
    assert!(store.get("default/before").is_some());
    cms.create(&cm("later", &[])).await.unwrap();
    wait("added later").await;
    cms.patch("later", &Patch::Merge(json!({"data": {"k": "v"}})))
        .await
        .unwrap();
    wait("updated later").await;
    assert_eq!(
        store.get("default/later").unwrap().data.as_ref().unwrap()["k"],
        "v"
    );
    cms.delete("later", None).await.unwrap();
    wait("deleted later").await;
    assert!(store.get("default/later").is_none());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let c = client(&api);
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    let cfg = |id: &str| ElectionConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..ElectionConfig::new("kube-system", "test-leader", id)
    };
    let leading = Arc::new(Mutex::new(Vec::<String>::new()));
    // A leads until told to stop; B waits meanwhile.
    let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
    let la = leading.clone();
    let a = tokio::spawn(
        LeaderElection::new(leases.clone(), cfg("a")).run(move || async move {
            la.lock().unwrap().push("a".into());
            let _ = stopped_a.await;
        }),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lb = leading.clone();
    let b = tokio::spawn(
        LeaderElection::new(leases.clone(), cfg("b")).run(move || async move {
            lb.lock().unwrap().push("b".into());
            std::future::pending::<()>().await;
        }),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        *leading.lock().unwrap(),
        ["a"],
        "b must not lead while a renews"
    );
    let lease = leases.get("test-leader").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("a"));
    // A stops and releases: B takes over.
    stop_a.send(()).unwrap();
    a.await.unwrap().unwrap();
    for _ in 0..50 {
        if leading.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*leading.lock().unwrap(), ["a", "b"]);
    let spec = leases.get("test-leader").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    // B crashes (its task is dropped without releasing): C takes over after the lease
    // duration.
    b.abort();
    let lc = leading.clone();
    let c_task = tokio::spawn(LeaderElection::new(leases.clone(), cfg("c")).run(
        move || async move {
            lc.lock().unwrap().push("c".into());
            std::future::pending::<()>().await;
        },
    ));
    for _ in 0..60 {
        if leading.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*leading.lock().unwrap(), ["a", "b", "c"]);
    c_task.abort();
}

/// A service-account token instead of a client certificate (what a pod's in-cluster
/// configuration carries): authenticated and authorized as the account; a bad token is
/// refused as unauthenticated, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    api.ok(&["create", "serviceaccount", "reader"]);
    api.ok(&[
        "create",
        "rolebinding",
        "reader-view",
        "--clusterrole=view",
        "--serviceaccount=default:reader",
    ]);
    let token = api.ok(&["create", "token", "reader"]).trim().to_string();
    let admin = Config::from_kubeconfig(&api.kubeconfig()).unwrap();
    let as_token = |t: &str| Config {
        cert_pem: Vec::new(),
        key_pem: Vec::new(),
        token: Some(t.to_string()),
        token_file: None,
        ..admin.clone()
    };
    let reader = Client::new(&as_token(&token)).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(reader.clone(), "default");
    let listed = cms.list(&ListParams::default()).await.unwrap();
    assert!(listed
        .items
        .iter()
        .all(|c| c.metadata.namespace.as_deref() == Some("default")));
    let denied = cms.create(&cm("nope", &[])).await.unwrap_err();
    assert_eq!(denied.code(), Some(403), "{denied}");
    assert!(
        denied
            .to_string()
            .contains("system:serviceaccount:default:reader"),
        "{denied}"
    );
    // The same token from a file, as a pod's projected token is read.
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let from_file = Config {
        token: None,
        token_file: Some(file),
        ..as_token("")
    };
    let pods: Api<Pod> = Api::namespaced(Client::new(&from_file).unwrap(), "default");
    pods.list(&ListParams::default()).await.unwrap();
    let bad = Client::new(&as_token("not-a-token")).unwrap();
    let e = Api::<ConfigMap>::namespaced(bad, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    match &e {
        ferrokube_client::Error::Transport(s) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{e}")
        }
        other => panic!("expected unauthenticated, got {other}"),
    }
    assert!(api.kubectl(&["get", "configmap", "nope"]).is_err());
}
