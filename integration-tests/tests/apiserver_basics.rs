//! kube-apiserver as far as it goes today: TLS with a generated cluster PKI, the admin
//! kubeconfig, `/version` and the health endpoints, driven by the stock kubectl.

use std::process::Command;

use integration_tests::apiserver::ApiServer;

#[test]
fn kubectl_reaches_version_and_health_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::start(dir.path());
    let v: serde_json::Value =
        serde_json::from_str(&api.kubectl(&["version", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1");
    assert_eq!(v["serverVersion"]["minor"], "32");
    assert!(v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap()
        .starts_with("v1.32."));
    let verbose = api.kubectl(&["get", "--raw", "/readyz?verbose"]).unwrap();
    assert_eq!(verbose, "[+]ping ok\n[+]etcd ok\nreadyz check passed\n");
    assert_eq!(api.kubectl(&["get", "--raw", "/livez"]).unwrap(), "ok");
    assert_eq!(
        api.kubectl(&["get", "--raw", "/healthz/etcd"]).unwrap(),
        "ok"
    );
    let missing = api.kubectl(&["get", "--raw", "/no/such/path"]).unwrap_err();
    assert!(
        missing.contains("NotFound") || missing.contains("404"),
        "{missing}"
    );
    // The PKI and kubeconfig survive a restart: the same admin.conf keeps working.
    let conf = std::fs::read_to_string(dir.path().join("admin.conf")).unwrap();
    api.kill();
    api.spawn();
    api.wait_ready();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin.conf")).unwrap(),
        conf
    );
    // A client that trusts other CAs (the system's) rejects the cluster's certificate.
    let out = Command::new("kubectl")
        .args(["--server", &format!("https://127.0.0.1:{}", api.port)])
        .args([
            "--certificate-authority",
            "/etc/ssl/certs/ca-certificates.crt",
        ])
        .args([
            "--token",
            "none",
            "--request-timeout=5s",
            "get",
            "--raw",
            "/livez",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate signed by unknown authority"),
        "{err}"
    );
}
