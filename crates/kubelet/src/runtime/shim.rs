//! The per-container shim (what conmon or containerd-shim are upstream): a small process
//! that outlives kubelet restarts. It creates and starts the container with runc,
//! becomes its subreaper so it can collect the exit status, writes the container's
//! stdout and stderr to a CRI-format log file, and records the exit in a file the
//! kubelet reads.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::runc::Runc;

/// What a shim is told.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    pub runc_root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub exit_file: PathBuf,
}

impl ShimArgs {
    /// The command-line form (after the `shim` word).
    pub fn to_args(&self) -> Vec<String> {
        vec![
            self.runc_root.display().to_string(),
            self.id.clone(),
            self.bundle.display().to_string(),
            self.log.display().to_string(),
            self.exit_file.display().to_string(),
        ]
    }

    pub fn from_args(args: &[String]) -> Option<ShimArgs> {
        match args {
            [root, id, bundle, log, exit] => Some(ShimArgs {
                runc_root: root.into(),
                id: id.clone(),
                bundle: bundle.into(),
                log: log.into(),
                exit_file: exit.into(),
            }),
            _ => None,
        }
    }
}

/// How a container ended (or why it never started).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: String,
    /// Set when runc could not create or start the container.
    pub error: Option<String>,
    /// The kernel's OOM killer ended it (its memory cgroup counted a kill).
    #[serde(default)]
    pub oom_killed: bool,
}

/// How many OOM kills a container's memory cgroup saw (cgroup v2 `memory.events`, v1
/// `memory.oom_control`); 0 when unknown.
fn oom_kills(bundle: &Path) -> u64 {
    let cgroup = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["linux"]["cgroupsPath"].as_str().map(String::from))
        .unwrap_or_default();
    let rel = cgroup.trim_start_matches('/');
    let read_counter = |path: PathBuf, key: &str| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    };
    read_counter(
        Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
        "oom_kill ",
    )
    .or_else(|| {
        read_counter(
            Path::new("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.oom_control"),
            "oom_kill ",
        )
    })
    .unwrap_or(0)
}

fn now_nanos() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%9fZ")
        .to_string()
}

fn write_exit(path: &Path, exit: &Exit) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, serde_json::to_vec(exit).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Copies one stream into the log, a CRI line per line.
fn copy(
    stream: &'static str,
    from: OwnedFd,
    log: Arc<Mutex<std::fs::File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(std::fs::File::from(from));
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let body = line.strip_suffix(b"\n").unwrap_or(&line);
                    let mut out = format!("{} {stream} F ", now_nanos()).into_bytes();
                    out.extend_from_slice(body);
                    out.push(b'\n');
                    if let Ok(mut f) = log.lock() {
                        let _ = f.write_all(&out);
                    }
                }
            }
        }
    })
}

/// Runs the shim; returns the process exit status.
pub fn run(a: &ShimArgs) -> i32 {
    // Orphans (the container's init, once runc create has exited) come to us.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let fail = |msg: String| {
        write_exit(
            &a.exit_file,
            &Exit {
                exit_code: 128,
                signal: None,
                started_at: None,
                finished_at: now_nanos(),
                error: Some(msg),
                oom_killed: false,
            },
        );
        1
    };
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
    {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => return fail(format!("log {}: {e}", a.log.display())),
    };
    let (out_r, out_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let (err_r, err_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let runc = Runc::new(&a.runc_root);
    let pid_file = a.bundle.join("init.pid");
    if let Err(e) = runc.create(
        &a.id,
        &a.bundle,
        &pid_file,
        Stdio::from(out_w),
        Stdio::from(err_w),
    ) {
        return fail(e.to_string());
    }
    let readers = [
        copy("stdout", out_r, log.clone()),
        copy("stderr", err_r, log),
    ];
    let pid: i32 = match std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
    {
        Some(p) => p,
        None => return fail("runc wrote no pid".into()),
    };
    if let Err(e) = runc.start(&a.id) {
        let _ = runc.delete(&a.id);
        return fail(e.to_string());
    }
    let started = now_nanos();
    let (code, signal) = loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => break (c, None),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => {
                break (128 + s as i32, Some(s as i32))
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return fail(format!("waiting for the container: {e}"));
            }
        }
    };
    for r in readers {
        let _ = r.join();
    }
    // Read before runc deletes the cgroup.
    let oom_killed = oom_kills(&a.bundle) > 0;
    write_exit(
        &a.exit_file,
        &Exit {
            oom_killed,
            exit_code: code,
            signal,
            started_at: Some(started),
            finished_at: now_nanos(),
            error: None,
        },
    );
    0
}

/// Reads a container's exit record, if it has ended.
pub fn read_exit(path: &Path) -> Option<Exit> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
