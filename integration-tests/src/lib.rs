//! Harness for whole-system tests: starts the real binaries (built by `cargo build
//! --workspace --bins` before the tests run) as processes on loopback, and cleans them up
//! when dropped, also when a test fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferrokube_proto::etcdserverpb::kv_client::KvClient;
use ferrokube_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ferrokube_proto::etcdserverpb::StatusRequest;
use tonic::transport::Channel;

pub mod apiserver;
pub mod netns;
pub mod node;
pub mod registry;

/// Path of a binary built from this workspace (next to the test executable's directory).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
/// Waits up to `secs` for `f`; on timeout, panics with what `logs` returns.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}; logs:\n{}", logs());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One `ferrokube-store` member process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra_args: Vec<String>,
    /// Serve client and peer URLs over https (the TLS flags go in `extra_args`).
    pub tls: bool,
    child: Option<Child>,
}

impl Member {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }

    /// The endpoint as etcdctl takes it (host:port).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts the process with `--initial-cluster` and `state`.
    pub fn start(&mut self, initial_cluster: &str, state: &str) -> Result<()> {
        assert!(self.child.is_none(), "member {} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("ferrokube-store"))
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(&self.extra_args)
            .env("RUST_LOG", "info,raft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn ferrokube-store")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to exit on its own; returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = &mut self.child {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Some(st);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Connects a gRPC channel (lazily: it reconnects after restarts).
    pub fn channel(&self) -> Channel {
        Channel::from_shared(self.client_url())
            .expect("url")
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(8))
            .connect_lazy()
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel())
    }

    /// Leader ID this member reports, if it answers.
    pub async fn leader(&self) -> Option<(u64, u64)> {
        let mut m = MaintenanceClient::new(self.channel());
        let st = tokio::time::timeout(Duration::from_secs(2), m.status(StatusRequest {}))
            .await
            .ok()?
            .ok()?
            .into_inner();
        let id = st.header?.member_id;
        (st.leader != 0).then_some((st.leader, id))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A group of members on loopback, each with its own data dir under a temp dir.
/// (`members` before `dir`: fields drop in order, and the processes must be gone before
/// their directory is removed, or they write into it again.)
pub struct Cluster {
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Prepares `n` members (not started) with extra flags for each.
    pub fn new(n: usize, extra_args: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                tls: false,
                child: None,
            })
            .collect();
        Ok(Cluster { dir, members })
    }

    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts every member as a new cluster and waits for a leader.
    pub async fn start(&mut self) -> Result<()> {
        let ic = self.initial_cluster();
        for m in &mut self.members {
            m.start(&ic, "new")?;
        }
        self.wait_leader(Duration::from_secs(20)).await?;
        Ok(())
    }

    /// Restarts member `i` with its existing data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let ic = self.initial_cluster();
        self.members[i].start(&ic, "new")
    }

    /// Waits until every running member agrees on a leader; returns the leader's index.
    pub async fn wait_leader(&mut self, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            let mut running = 0;
            for m in &mut self.members {
                if m.is_running() {
                    running += 1;
                    if let Some((l, _)) = m.leader().await {
                        leaders.push(l);
                    }
                }
            }
            if running > 0 && leaders.len() == running && leaders.iter().all(|l| *l == leaders[0]) {
                let leader = leaders[0];
                for (i, m) in self.members.iter().enumerate() {
                    if let Some((_, id)) = m.leader().await {
                        if id == leader {
                            return Ok(i);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "no agreed leader within {limit:?}; logs in {}",
            self.dir.path().display()
        )
    }

    /// Comma-separated etcdctl endpoints of all members.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Prints every member's log (for failing tests).
    pub fn dump_logs(&self) {
        for m in &self.members {
            if let Ok(s) = std::fs::read_to_string(&m.log) {
                let tail: Vec<&str> = s.lines().rev().take(40).collect();
                eprintln!("--- {} log (last lines) ---", m.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Runs etcdctl (v3 API) against `endpoints`; returns stdout, failing on a non-zero exit.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Result<String> {
    etcdctl_stdin(endpoints, args, None)
}

/// Like [`etcdctl`], feeding `stdin` (for `txn -i`).
pub fn etcdctl_stdin(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    etcdctl_run(endpoints, args, stdin).map(|(out, _)| out)
}

/// Runs etcdctl; returns stdout and stderr (some commands report on stderr).
pub fn etcdctl_run(
    endpoints: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(String, String)> {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        // etcdctl refuses flags that an exported ETCDCTL_* variable also sets.
        .env_remove("ETCDCTL_ENDPOINTS")
        .env_remove("ETCDCTL_COMMAND_TIMEOUT")
        .args(["--endpoints", endpoints, "--command-timeout=10s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run etcdctl (package etcd-client)")?;
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "etcdctl {:?} failed: {}{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}
