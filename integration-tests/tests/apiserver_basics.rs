//! kube-apiserver as far as it goes today: TLS with a generated cluster PKI, the admin
//! kubeconfig, `/version` and the health endpoints, driven by the stock kubectl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{binary, free_port};

struct ApiServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    peer_port: u16,
}

impl ApiServer {
    fn start(dir: &Path) -> ApiServer {
        let mut s = ApiServer {
            child: None,
            dir: dir.to_path_buf(),
            port: free_port(),
            peer_port: free_port(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))
            .unwrap();
        let child = Command::new(binary("kube-apiserver"))
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &self.port.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--store-peer-url",
                &format!("http://127.0.0.1:{}", self.peer_port),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.dir.join("admin.conf"))
            .arg("--request-timeout=5s")
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Waits (bounded) for `/readyz` to pass.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.dir.join("admin.conf").exists()
                && self.kubectl(&["get", "--raw", "/readyz"]).as_deref() == Ok("ok")
            {
                return;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
                panic!("kube-apiserver not ready; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn kubectl_reaches_version_and_health_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiServer::start(dir.path());
    api.wait_ready();
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
