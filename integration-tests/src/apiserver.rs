//! A `kube-apiserver` process on loopback with its own data directory, and the stock
//! kubectl pointed at it through the admin kubeconfig it writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{binary, free_port};

/// A running kube-apiserver; killed when dropped.
pub struct ApiServer {
    child: Option<Child>,
    pub dir: PathBuf,
    /// The loopback address it binds and advertises.
    pub ip: String,
    pub port: u16,
    pub peer_port: u16,
    /// More flags (store group membership).
    pub extra: Vec<String>,
    /// The network namespace it (and kubectl) run in, if not the test's own.
    pub netns: Option<String>,
    /// Whether a kube-controller-manager runs beside it, started once the server is
    /// ready (default: yes; pods need the `default` ServiceAccount it makes).
    pub controllers: bool,
    /// More kube-controller-manager flags.
    pub controller_args: Vec<String>,
    controller_manager: std::sync::Mutex<Option<Child>>,
}

impl ApiServer {
    /// Starts one and waits until `/readyz` passes.
    pub fn start(dir: &Path) -> ApiServer {
        ApiServer::start_with(dir, vec![])
    }

    /// Starts one with extra flags and waits until `/readyz` passes.
    pub fn start_with(dir: &Path, extra: Vec<String>) -> ApiServer {
        let mut s = ApiServer::new(dir, "127.0.0.1", free_port(), free_port(), extra);
        s.spawn();
        s.wait_ready();
        s
    }

    /// One not started yet, on `ip` (a loopback address) with these ports and flags.
    pub fn new(dir: &Path, ip: &str, port: u16, peer_port: u16, extra: Vec<String>) -> ApiServer {
        ApiServer {
            child: None,
            dir: dir.to_path_buf(),
            ip: ip.to_string(),
            port,
            peer_port,
            extra,
            netns: None,
            controllers: true,
            controller_args: vec![],
            controller_manager: std::sync::Mutex::new(None),
        }
    }

    /// Runs `program` where this server runs (inside its network namespace, if any).
    fn here(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts the process (again) on the same ports and data.
    pub fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))
            .unwrap();
        let child = self
            .here(binary("kube-apiserver"))
            .args(["--bind-address", &self.ip, "--advertise-address", &self.ip])
            .args(["--secure-port", &self.port.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--store-peer-url",
                &format!("http://{}:{}", self.ip, self.peer_port),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts kube-controller-manager (admin credentials, the cluster CA published) if it
    /// is wanted and not running, and waits (bounded) for the `default` ServiceAccount.
    fn start_controller_manager(&self) {
        let mut kcm = self.controller_manager.lock().unwrap();
        // (One that exited, e.g. having lost its lease while the server was down, is
        // started again.)
        let running = kcm
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !self.controllers || running {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("controller-manager.log"))
            .unwrap();
        let child = self
            .here(binary("kube-controller-manager"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--root-ca-file")
            .arg(self.dir.join("pki/ca.crt"))
            .args(["--bind-address", &self.ip])
            .args(["--secure-port", &free_port().to_string()])
            .args(&self.controller_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        *kcm = Some(child);
        drop(kcm);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .kubectl(&["get", "serviceaccount", "default", "-o", "name"])
            .is_err()
        {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("controller-manager.log"))
                    .unwrap_or_default();
                panic!("no default ServiceAccount after 30 s; controller-manager log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `binary` beside the server (where it runs) with the admin kubeconfig and
    /// `args`, logging to `<dir>/<log>.log`; killed when the handle drops.
    pub fn component(&self, binary_name: &str, log: &str, args: &[&str]) -> Component {
        let log = self.dir.join(format!("{log}.log"));
        let child = self
            .here(binary(binary_name))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary_name}: {e}"));
        Component { child, log }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.conf")
    }

    /// `https://<ip>:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// A kubectl command with the admin kubeconfig and a request timeout.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut c = self.here("kubectl");
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--request-timeout=10s")
            .args(args)
            .env_remove("KUBECONFIG");
        c
    }

    /// Runs kubectl; stdout on success, stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_stdin(args, None)
    }

    /// kubectl as the holder of a bearer `token` (a kubeconfig of this server's cluster
    /// with only the token as credentials); stdout or stderr.
    pub fn kubectl_as_token(&self, token: &str, args: &[&str]) -> Result<String, String> {
        let admin: serde_json::Value = serde_json::from_str(
            &self
                .kubectl(&["config", "view", "--raw", "-o", "json"])
                .expect("kubectl config view"),
        )
        .expect("kubeconfig JSON");
        let cluster = &admin["clusters"][0]["cluster"];
        let conf = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        });
        let path = self.dir.join(format!(
            "token-{}.conf",
            &token[token.len().saturating_sub(12)..]
        ));
        std::fs::write(&path, conf.to_string()).expect("writing the kubeconfig");
        let mut a = vec!["--kubeconfig", path.to_str().expect("utf-8 path")];
        a.extend_from_slice(args);
        self.kubectl(&a)
    }

    /// Runs kubectl with `stdin` fed to it.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        use std::io::Write as _;
        let mut c = self.kubectl_command(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs kubectl and panics (with the server log) when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        self.kubectl(args).unwrap_or_else(|e| {
            panic!(
                "kubectl {args:?} failed: {e}\nserver log:\n{}",
                self.log_tail()
            )
        })
    }

    /// `kubectl get <what> -o jsonpath=<path>`; empty when the object is missing.
    pub fn jsonpath(&self, what: &[&str], path: &str) -> String {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        let p = format!("jsonpath={path}");
        args.extend_from_slice(&["-o", &p]);
        self.kubectl(&args).unwrap_or_default()
    }

    /// Runs kubectl and returns its error output, panicking when it succeeds.
    pub fn fails(&self, args: &[&str]) -> String {
        match self.kubectl(args) {
            Ok(out) => panic!("kubectl {args:?} should have failed; printed:\n{out}"),
            Err(e) => e,
        }
    }

    /// The end of the server's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log[log
            .char_indices()
            .map(|(i, _)| i)
            .find(|i| *i >= start)
            .unwrap_or(0)..]
            .to_string()
    }

    /// Waits (bounded) for `/readyz` to pass.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.kubeconfig().exists()
                && self.kubectl(&["get", "--raw", "/readyz"]).as_deref() == Ok("ok")
            {
                self.start_controller_manager();
                return;
            }
            if Instant::now() > deadline {
                panic!("kube-apiserver not ready; log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
        let kcm = self
            .controller_manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut c) = kcm {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A control-plane process started by [`ApiServer::component`]; killed when dropped.
pub struct Component {
    pub child: Child,
    pub log: PathBuf,
}

impl Component {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
