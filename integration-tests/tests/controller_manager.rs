//! kube-controller-manager: its flags, health and metrics endpoints, leader election
//! between two replicas, and the controllers every namespace depends on (the `default`
//! ServiceAccount, the `kube-root-ca.crt` ConfigMap), which pod admission waits for; the
//! pod garbage collector.

use std::process::{Child, Command, Stdio};

use integration_tests::apiserver::ApiServer;
use integration_tests::{binary, free_port};

/// A controller-manager replica, killed when dropped.
struct Kcm {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Kcm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kcm {
    fn start(api: &ApiServer, name: &str, extra: &[&str]) -> Kcm {
        let port = free_port();
        let log = api.dir.join(format!("{name}.log"));
        let child = Command::new(binary("kube-controller-manager"))
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &port.to_string(),
            ])
            // Quick failover for the test (upstream: 15s / 10s / 2s).
            .args([
                "--leader-elect-lease-duration=4s",
                "--leader-elect-renew-deadline=3s",
                "--leader-elect-retry-period=1s",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Kcm { child, port, log }
    }

    /// `GET https://127.0.0.1:<port><path>` (the certificate is self-signed).
    fn get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sSk", "--max-time", "5"])
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn leading(&self) -> bool {
        self.get("/metrics")
            .contains("leader_election_master_status{name=\"kube-controller-manager\"} 1")
    }
}

fn wait(what: &str, secs: u64, f: impl FnMut() -> bool, logs: &[&Kcm]) {
    integration_tests::wait_until(what, secs, f, || {
        logs.iter()
            .map(|k| std::fs::read_to_string(&k.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    })
}

fn uid(api: &ApiServer, args: &[&str]) -> String {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "jsonpath={.metadata.uid}"]);
    api.kubectl(&a).unwrap_or_default()
}

#[test]
fn service_accounts_and_root_ca_in_every_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::new(dir.path(), "127.0.0.1", free_port(), free_port(), vec![]);
    api.controllers = false;
    api.spawn();
    api.wait_ready();

    // Without the controller-manager there is no `default` account, and ServiceAccount
    // admission refuses pods (after waiting for it a little, as upstream).
    let e = api.fails(&["run", "early", "--image=busybox"]);
    assert!(
        e.contains(r#"pods "early" is forbidden: error looking up service account default/default: serviceaccount "default" not found"#),
        "{e}"
    );

    // Bad flags: one line, exit status 1.
    let out = Command::new(binary("kube-controller-manager"))
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["--controllers=*,nosuch", "--secure-port=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        r#"error: --controllers: "nosuch" is not in the list of known controllers"#
    );

    let out = Command::new(binary("kube-controller-manager"))
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args([
            "--leader-elect-lease-duration=2s",
            "--leader-elect-renew-deadline=3s",
            "--secure-port=0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: leader election: leaseDuration must be greater than renewDeadline"
    );

    // Two replicas: one leads (and holds the Lease), both answer health checks.
    let ca_file = dir.path().join("pki/ca.crt");
    let root_ca = format!("--root-ca-file={}", ca_file.display());
    let a = Kcm::start(&api, "kcm-a", &[&root_ca]);
    let b = Kcm::start(&api, "kcm-b", &[&root_ca]);
    wait(
        "the default ServiceAccount",
        30,
        || api.kubectl(&["get", "serviceaccount", "default"]).is_ok(),
        &[&a, &b],
    );
    wait(
        "/healthz",
        10,
        || a.get("/healthz") == "ok" && b.get("/healthz") == "ok",
        &[&a, &b],
    );
    assert_eq!(a.get("/nosuch"), "404 page not found\n");
    wait("one leader", 10, || a.leading() != b.leading(), &[&a, &b]);
    let holder = api.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-controller-manager",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(!holder.is_empty());
    let (leader, follower) = if a.leading() { (a, b) } else { (b, a) };
    let metrics = leader.get("/metrics");
    assert!(
        metrics.contains("workqueue_adds_total{name=\"serviceaccount\"}")
            && metrics.contains("workqueue_depth{name=\"root_ca_cert_publisher\"} 0"),
        "{metrics}"
    );

    // A pod now runs as `default`.
    api.ok(&["run", "early", "--image=busybox"]);
    assert_eq!(
        api.ok(&[
            "get",
            "pod",
            "early",
            "-o",
            "jsonpath={.spec.serviceAccountName}"
        ]),
        "default"
    );

    // The CA bundle is published with upstream's description.
    let ca = std::fs::read_to_string(dir.path().join("pki/ca.crt")).unwrap();
    let cm: serde_json::Value =
        serde_json::from_str(&api.ok(&["get", "configmap", "kube-root-ca.crt", "-o", "json"]))
            .unwrap();
    assert_eq!(cm["data"]["ca.crt"], ca.as_str());
    assert!(cm["metadata"]["annotations"]["kubernetes.io/description"]
        .as_str()
        .unwrap()
        .starts_with("Contains a CA bundle that can be used to verify the kube-apiserver"));

    // A new namespace gets both; a pod created at once waits for its account.
    api.ok(&["create", "namespace", "team"]);
    api.ok(&["run", "first", "-n", "team", "--image=busybox"]);
    wait(
        "team's CA ConfigMap",
        10,
        || {
            api.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "team"])
                .is_ok()
        },
        &[&leader],
    );

    // What is deleted or changed is put back.
    let before = uid(&api, &["serviceaccount", "default", "-n", "team"]);
    api.ok(&["delete", "serviceaccount", "default", "-n", "team"]);
    wait(
        "the account made again",
        10,
        || {
            let now = uid(&api, &["serviceaccount", "default", "-n", "team"]);
            !now.is_empty() && now != before
        },
        &[&leader],
    );
    api.ok(&[
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"data":{"ca.crt":"tampered"}}"#,
    ]);
    let ca_in_team = || {
        api.kubectl(&[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "team",
            "-o",
            r"jsonpath={.data.ca\.crt}",
        ])
        .is_ok_and(|c| c == ca)
    };
    wait("the CA put back", 10, ca_in_team, &[&leader]);
    api.ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "team"]);
    wait("the CA ConfigMap made again", 10, ca_in_team, &[&leader]);

    // The leader goes; the other replica takes over and keeps things in place.
    drop(leader);
    wait(
        "the follower to lead",
        20,
        || follower.leading(),
        &[&follower],
    );
    api.ok(&["delete", "serviceaccount", "default", "-n", "team"]);
    wait(
        "the account made by the new leader",
        10,
        || {
            api.kubectl(&["get", "serviceaccount", "default", "-n", "team"])
                .is_ok()
        },
        &[&follower],
    );

    // With no replica running, the CA ConfigMap is changed; a new replica (its CA taken
    // from the kubeconfig, as upstream does without --root-ca-file) acts only on synced
    // caches, so it sees the change and puts the CA back.
    drop(follower);
    api.ok(&[
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"data":{"ca.crt":"tampered again"}}"#,
    ]);
    let c = Kcm::start(&api, "kcm-c", &[]);
    wait("the CA put back after a restart", 30, ca_in_team, &[&c]);
}

#[test]
fn pod_garbage_collector_removes_finished_and_orphaned_pods() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::new(dir.path(), "127.0.0.1", free_port(), free_port(), vec![]);
    api.controllers = false;
    api.spawn();
    api.wait_ready();
    let kcm = Kcm::start(
        &api,
        "kcm",
        &[
            "--controllers=podgc,serviceaccount",
            "--terminated-pod-gc-threshold=1",
        ],
    );
    for node in ["kept", "gone"] {
        api.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&format!(
                r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{node}"}}}}"#
            )),
        )
        .unwrap();
    }
    wait(
        "the default ServiceAccount",
        30,
        || api.kubectl(&["get", "sa", "default"]).is_ok(),
        &[&kcm],
    );
    let pod = |name: &str, node: &str| {
        api.kubectl_stdin(
            &["create", "-f", "-"],
            Some(&format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"busybox"}}]}}}}"#
            )),
        )
        .unwrap();
    };
    // Two finished pods with a threshold of one: the older goes.
    for name in ["done-old", "done-new"] {
        pod(name, "kept");
        api.ok(&[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Succeeded"}}"#,
        ]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // A running pod whose node is deleted: collected after the quarantine.
    pod("orphan", "gone");
    pod("running", "kept");
    api.ok(&["delete", "node", "gone"]);
    wait(
        "the older finished pod collected",
        40,
        || api.kubectl(&["get", "pod", "done-old"]).is_err(),
        &[&kcm],
    );
    wait(
        "the orphan collected",
        90,
        || api.kubectl(&["get", "pod", "orphan"]).is_err(),
        &[&kcm],
    );
    for kept in ["done-new", "running"] {
        assert!(api.kubectl(&["get", "pod", kept]).is_ok(), "{kept}");
    }
}

#[test]
fn legacy_token_secrets_authenticate_while_they_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::new(dir.path(), "127.0.0.1", free_port(), free_port(), vec![]);
    // The API server's signing key, as kubeadm hands it to the controller manager.
    api.controller_args = vec![
        "--service-account-private-key-file".into(),
        dir.path().join("pki/sa.key").display().to_string(),
    ];
    api.spawn();
    api.wait_ready();
    api.kubectl(&["create", "serviceaccount", "build-robot"])
        .unwrap();
    // No token Secret unless asked for (1.24+).
    let secrets = api.kubectl(&["get", "secrets", "-o", "name"]).unwrap();
    assert!(secrets.trim().is_empty(), "{secrets}");
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1
kind: Secret
metadata:
  name: build-robot-secret
  annotations:
    kubernetes.io/service-account.name: build-robot
type: kubernetes.io/service-account-token
",
        ),
    )
    .unwrap();
    let field = |path: &str| {
        api.kubectl(&[
            "get",
            "secret",
            "build-robot-secret",
            "-o",
            &format!("jsonpath={path}"),
        ])
        .unwrap_or_default()
    };
    integration_tests::wait_until(
        "the token filled in",
        30,
        || !field("{.data.token}").is_empty(),
        || std::fs::read_to_string(dir.path().join("controller-manager.log")).unwrap_or_default(),
    );
    let sa_uid = api
        .kubectl(&["get", "sa", "build-robot", "-o", "jsonpath={.metadata.uid}"])
        .unwrap();
    assert_eq!(
        field("{.metadata.annotations.kubernetes\\.io/service-account\\.uid}"),
        sa_uid
    );
    let decode = |b64: &str| {
        use base64::Engine as _;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(decode(&field("{.data.namespace}")), "default");
    assert!(decode(&field("{.data.ca\\.crt}")).contains("BEGIN CERTIFICATE"));
    let token = decode(&field("{.data.token}"));
    let claims: serde_json::Value = {
        use base64::Engine as _;
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["iss"], "kubernetes/serviceaccount");
    assert_eq!(
        claims["kubernetes.io/serviceaccount/secret.name"],
        "build-robot-secret"
    );

    // The token authenticates the account (which, without RBAC grants, may not list
    // pods), and its Secret records the day of use.
    let e = api.kubectl_as_token(&token, &["get", "pods"]).unwrap_err();
    assert!(
        e.contains(
            r#"User "system:serviceaccount:default:build-robot" cannot list resource "pods""#
        ),
        "{e}"
    );
    assert!(!field("{.metadata.labels.kubernetes\\.io/legacy-token-last-used}").is_empty());

    // Deleting the account deletes its token Secret, and the token stops working.
    api.kubectl(&["delete", "serviceaccount", "build-robot"])
        .unwrap();
    integration_tests::wait_until(
        "the token Secret deleted",
        30,
        || {
            api.kubectl(&[
                "get",
                "secret",
                "build-robot-secret",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .is_ok_and(|o| o.trim().is_empty())
        },
        || std::fs::read_to_string(dir.path().join("controller-manager.log")).unwrap_or_default(),
    );
    let e = api.kubectl_as_token(&token, &["get", "pods"]).unwrap_err();
    assert!(e.contains("Unauthorized"), "{e}");
}
