//! Three kube-apiservers (on 127.0.0.1, .2 and .3) whose embedded stores form one Raft
//! group, sharing one cluster CA as kubeadm arranges it: a write through one is read
//! through the others, a watch on one sees writes through another, the `kubernetes`
//! Service's endpoints list every live server and drop a dead one, and the group keeps
//! serving with one server down.

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::apiserver::ApiServer;
use integration_tests::free_port;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn endpoints(api: &ApiServer) -> String {
    api.kubectl(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[*].addresses[*].ip}",
    ])
    .unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn three_api_servers_one_store() {
    let root = tempfile::tempdir().unwrap();
    // The cluster CA, made once and given to every server.
    let ca_dir = root.path().join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let (key, crt) = (ca_dir.join("ca.key"), ca_dir.join("ca.crt"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/CN=kubernetes",
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        crt.to_str().unwrap(),
    ]);
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let ports: Vec<(u16, u16)> = ips.iter().map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ips
        .iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (ip, (_, peer)))| format!("m{i}=http://{ip}:{peer}"))
        .collect();
    let mut servers: Vec<ApiServer> = ips
        .iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (ip, (port, peer)))| {
            let dir = root.path().join(format!("m{i}"));
            std::fs::create_dir_all(dir.join("pki")).unwrap();
            std::fs::copy(&key, dir.join("pki/ca.key")).unwrap();
            std::fs::copy(&crt, dir.join("pki/ca.crt")).unwrap();
            ApiServer::new(
                &dir,
                ip,
                *port,
                *peer,
                vec![
                    "--store-name".into(),
                    format!("m{i}"),
                    "--store-initial-cluster".into(),
                    initial.join(","),
                ],
            )
        })
        .collect();
    for s in servers.iter_mut() {
        s.spawn();
    }
    for s in &servers {
        s.wait_ready();
    }
    // One store: a write through one server is read through the others, once.
    servers[0].ok(&["create", "configmap", "shared", "--from-literal=a=b"]);
    for s in &servers[1..] {
        assert_eq!(
            s.ok(&["get", "cm", "shared", "-o", "jsonpath={.data.a}"]),
            "b"
        );
    }
    assert_eq!(
        servers[2]
            .ok(&["get", "ns", "--no-headers"])
            .lines()
            .count(),
        4,
        "bootstrap objects exist once"
    );
    assert_eq!(
        servers[1]
            .ok(&["get", "priorityclasses", "--no-headers"])
            .lines()
            .count(),
        2
    );
    // A watch through one server sees a write through another.
    let rv = servers[1].ok(&[
        "get",
        "cm",
        "shared",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    servers[2].ok(&["create", "configmap", "later", "--from-literal=a=b"]);
    let events = servers[1].ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=2"
        ),
    ]);
    assert!(events.contains("\"later\""), "{events}");
    // The kubernetes endpoints list every live server...
    wait_for("three endpoints", Duration::from_secs(30), || {
        endpoints(&servers[0]) == "127.0.0.1 127.0.0.2 127.0.0.3"
    });
    let slice = servers[0].ok(&[
        "get",
        "endpointslice",
        "kubernetes",
        "-o",
        "jsonpath={.endpoints[*].addresses[*]}",
    ]);
    assert_eq!(slice, "127.0.0.1 127.0.0.2 127.0.0.3");
    // ... and drop one that dies; the other two keep serving writes.
    servers[2].kill();
    wait_for(
        "the dead server to leave the endpoints",
        Duration::from_secs(45),
        || endpoints(&servers[0]) == "127.0.0.1 127.0.0.2",
    );
    servers[1].ok(&["create", "configmap", "after", "--from-literal=a=b"]);
    assert_eq!(
        servers[0].ok(&["get", "cm", "after", "-o", "name"]).trim(),
        "configmap/after"
    );
}
