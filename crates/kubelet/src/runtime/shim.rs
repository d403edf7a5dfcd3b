//! The per-container shim (what conmon or containerd-shim are upstream): a small process
//! that outlives kubelet restarts. It creates and starts the container with runc,
//! becomes its subreaper so it can collect the exit status, writes the container's
//! stdout and stderr to a CRI-format log file (and to [`super::attach`]ed clients, who
//! may also feed its stdin), and records the exit in a file the kubelet reads.

use std::io::{Read as _, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::attach::{Frame, Hub};
use super::console::ConsoleSocket;
use super::runc::{Runc, Stdio3};

/// What a shim is told.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    pub runc_root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub exit_file: PathBuf,
    /// Rotate the log when it reaches this many bytes (`containerLogMaxSize`).
    pub log_max_size: u64,
    /// Files kept per container, the current one included (`containerLogMaxFiles`).
    pub log_max_files: u32,
    /// The container takes input (`stdin`), and closes it when the first attached
    /// client leaves (`stdinOnce`).
    pub stdin: bool,
    pub stdin_once: bool,
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
            self.log_max_size.to_string(),
            self.log_max_files.to_string(),
            self.stdin.to_string(),
            self.stdin_once.to_string(),
        ]
    }

    pub fn from_args(args: &[String]) -> Option<ShimArgs> {
        match args {
            [root, id, bundle, log, exit, max_size, max_files, stdin, stdin_once] => {
                Some(ShimArgs {
                    runc_root: root.into(),
                    id: id.clone(),
                    bundle: bundle.into(),
                    log: log.into(),
                    exit_file: exit.into(),
                    log_max_size: max_size.parse().ok()?,
                    log_max_files: max_files.parse().ok()?,
                    stdin: stdin.parse().ok()?,
                    stdin_once: stdin_once.parse().ok()?,
                })
            }
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
    /// Set when the end was not observed (the shim is gone): upstream's `Unknown`.
    #[serde(default)]
    pub lost: bool,
}

/// The marker the shim writes in the bundle once `runc start` has returned: the
/// container's process runs.
pub fn running_file(bundle: &Path) -> PathBuf {
    bundle.join("running")
}

/// Waits (at most `limit`) until the container's process runs or it has ended; whether
/// it runs.
pub fn wait_running(bundle: &Path, exit_file: &Path, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if running_file(bundle).exists() {
            return true;
        }
        if exit_file.exists() || std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Where the shim of a container records its pid: beside the exit file.
pub fn pid_file(exit_file: &Path) -> PathBuf {
    exit_file.with_file_name("shim.pid")
}

/// Whether the shim recorded for `exit_file` still runs: the pid is alive and is a shim
/// of container `id`. `None` when no pid was recorded.
pub fn shim_alive(exit_file: &Path, id: &str) -> Option<bool> {
    let pid: i32 = std::fs::read_to_string(pid_file(exit_file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    Some(args.get(1) == Some(&&b"shim"[..]) && args.contains(&id.as_bytes()))
}

/// Records that a container ended unobserved (its shim died, or the machine rebooted):
/// exit code 255 like containerd reports then, unless an exit was recorded meanwhile.
pub fn record_lost(exit_file: &Path) -> Exit {
    if let Some(e) = read_exit(exit_file) {
        return e;
    }
    let exit = Exit {
        exit_code: 255,
        signal: None,
        started_at: None,
        finished_at: now_nanos(),
        error: None,
        oom_killed: false,
        lost: true,
    };
    write_exit(exit_file, &exit);
    exit
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

/// A container's CRI log file, rotated as upstream's container log manager does: when it
/// reaches the size limit it is renamed `<log>.<YYYYMMDD-HHMMSS>`, rotated files but the
/// newest are gzipped, and the oldest go so that at most `max_files` remain.
pub struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl LogFile {
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files: max_files.max(2),
        })
    }

    /// Appends one record, rotating first when the file is full.
    pub fn write(&mut self, record: &[u8]) -> std::io::Result<()> {
        if self.max_size > 0 && self.size > 0 && self.size + record.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    /// The rotated files of this log, oldest first.
    pub fn rotated(&self) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Vec::new();
        };
        let prefix = format!("{}.", name.to_string_lossy());
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix) && !n.ends_with(".tmp"))
            })
            .map(|e| e.path())
            .collect();
        // By time stamp (and counter), whether compressed or not.
        out.sort_by_key(|p| p.to_string_lossy().trim_end_matches(".gz").to_string());
        out
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // Names sort by time; within one second a counter keeps them in order.
        let newest = self
            .rotated()
            .last()
            .map(|p| p.to_string_lossy().trim_end_matches(".gz").to_string());
        let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
        let mut target = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        let mut n = 0;
        while newest
            .as_deref()
            .is_some_and(|last| *last >= *target.to_string_lossy())
        {
            n += 1;
            target = PathBuf::from(format!("{}.{stamp}-{n:03}", self.path.display()));
        }
        std::fs::rename(&self.path, &target)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        let rotated = self.rotated();
        for old in rotated.iter().filter(|p| **p != target) {
            if old.extension().is_some_and(|e| e == "gz") {
                continue;
            }
            if let Err(e) = gzip(old) {
                tracing::warn!(log = %old.display(), "compressing a rotated log: {e}");
            }
        }
        let rotated = self.rotated();
        let excess = rotated.len().saturating_sub(self.max_files as usize - 1);
        for old in &rotated[..excess] {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }
}

/// `file` → `file.gz`, replacing it.
fn gzip(file: &Path) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.gz.tmp", file.display()));
    let mut enc =
        flate2::write::GzEncoder::new(std::fs::File::create(&tmp)?, flate2::Compression::default());
    std::io::copy(&mut std::fs::File::open(file)?, &mut enc)?;
    enc.finish()?.sync_all()?;
    std::fs::rename(&tmp, format!("{}.gz", file.display()))?;
    std::fs::remove_file(file)
}

/// The longest log record; longer lines are split into partial (`P`) records, as
/// upstream's runtimes split them.
const MAX_LOG_LINE: usize = 16 << 10;

/// Copies one output stream of the container to attached clients as it comes, and
/// into the log, a CRI record per line.
fn copy(
    stream: &'static str,
    from: OwnedFd,
    log: Arc<Mutex<LogFile>>,
    hub: Arc<Hub>,
) -> std::thread::JoinHandle<()> {
    let record = move |tag: &str, body: &[u8]| {
        let mut out = format!("{} {stream} {tag} ", now_nanos()).into_bytes();
        out.extend_from_slice(body);
        out.push(b'\n');
        if let Ok(mut f) = log.lock() {
            let _ = f.write(&out);
        }
    };
    std::thread::spawn(move || {
        let mut r = std::fs::File::from(from);
        let mut buf = vec![0u8; 32 << 10];
        let mut line = Vec::new();
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let chunk = buf[..n].to_vec();
            line.extend_from_slice(&chunk);
            hub.broadcast(&if stream == "stderr" {
                Frame::Stderr(chunk)
            } else {
                Frame::Stdout(chunk)
            });
            while let Some(i) = line.iter().position(|b| *b == b'\n') {
                record("F", &line[..i]);
                line.drain(..=i);
            }
            while line.len() >= MAX_LOG_LINE {
                record("P", &line[..MAX_LOG_LINE]);
                line.drain(..MAX_LOG_LINE);
            }
        }
        if !line.is_empty() {
            record("F", &line);
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
                lost: false,
            },
        );
        1
    };
    let log = match LogFile::open(&a.log, a.log_max_size, a.log_max_files) {
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
    // A container with a terminal: runc hands the pty's master over a console socket,
    // and everything the container writes comes through it (as stdout, as upstream logs
    // tty output).
    let terminal = std::fs::read(a.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["process"]["terminal"] == true);
    let console = if terminal {
        match ConsoleSocket::bind(&a.id) {
            Ok(c) => Some(c),
            Err(e) => return fail(format!("console socket: {e}")),
        }
    } else {
        None
    };
    // Without a terminal, a container that takes input reads a pipe whose other end
    // attached clients write to; it stays open (and empty) until then.
    let (stdin, stdin_w) = if a.stdin && !terminal {
        // Close-on-exec: only the container's end (its stdin) may pass on.
        match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok((r, w)) => (Stdio::from(r), Some(w)),
            Err(e) => return fail(format!("pipe: {e}")),
        }
    } else {
        (Stdio::null(), None)
    };
    if let Err(e) = runc.create(
        &a.id,
        &a.bundle,
        &pid_file,
        console.as_ref().map(|c| c.path.as_path()),
        Stdio3 {
            stdin,
            stdout: Stdio::from(out_w),
            stderr: Stdio::from(err_w),
        },
    ) {
        return fail(e.to_string());
    }
    // The terminal's master end: output comes from it, input and sizes go to it.
    let master = match console.map(|c| c.receive()) {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            let _ = runc.delete(&a.id);
            return fail(format!("console socket: {e}"));
        }
        None => None,
    };
    let dup = |m: &OwnedFd| m.try_clone().ok();
    let terminal_in = master.as_ref().filter(|_| a.stdin).and_then(dup);
    let hub = Arc::new(Hub::new(
        stdin_w.or(terminal_in),
        master.as_ref().and_then(dup),
        a.stdin_once,
    ));
    if let Err(e) = hub.listen(&a.bundle) {
        let _ = runc.delete(&a.id);
        return fail(format!("attach socket: {e}"));
    }
    let mut readers = vec![
        copy("stdout", out_r, log.clone(), hub.clone()),
        copy("stderr", err_r, log.clone(), hub.clone()),
    ];
    if let Some(m) = master {
        readers.push(copy("stdout", m, log, hub.clone()));
    }
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
    // The kubelet waits for this before running hooks and probes in the container.
    let _ = std::fs::write(running_file(&a.bundle), pid.to_string());
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
    hub.close();
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
            lost: false,
        },
    );
    0
}

/// Reads a container's exit record, if it has ended.
pub fn read_exit(path: &Path) -> Option<Exit> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The end of a CRI-format log as the container wrote it (read as `kubectl logs` reads it): its last `lines` lines, at
/// most `max_bytes` bytes (what upstream's `FallbackToLogsOnError` reports).
pub fn log_tail(path: &Path, lines: usize, max_bytes: usize) -> String {
    let Ok(data) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let text = crate::logs::Formatter::new(crate::logs::LogOptions::default())
        .lines(data.as_bytes(), None);
    let out = String::from_utf8_lossy(&text);
    let kept: Vec<&str> = out.lines().collect();
    let mut tail = kept[kept.len().saturating_sub(lines)..].join("\n");
    if !tail.is_empty() {
        tail.push('\n');
    }
    if tail.len() > max_bytes {
        let mut cut = tail.len() - max_bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_string();
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_compress_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path, 100, 3).unwrap();
        for i in 0..20 {
            log.write(format!("record {i:03} .................\n").as_bytes())
                .unwrap();
        }
        let rotated = log.rotated();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(rotated[0].to_string_lossy().ends_with(".gz"), "{rotated:?}");
        assert!(
            !rotated[1].to_string_lossy().ends_with(".gz"),
            "{rotated:?}"
        );
        // Oldest to newest, the kept records are in order and end with the last one.
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&rotated[0]).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        text += &std::fs::read_to_string(&rotated[1]).unwrap();
        text += &std::fs::read_to_string(&path).unwrap();
        let nums: Vec<u32> = text.lines().map(|l| l[7..10].parse().unwrap()).collect();
        assert_eq!(nums.last(), Some(&19));
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
    }
}
