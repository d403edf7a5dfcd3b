//! Driving `runc`: create, start, state, kill, delete, each a run of the `runc` binary
//! with the kubelet's own state root, so several kubelets on one machine (tests) never
//! see each other's containers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

/// `runc state` output (the fields used).
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub id: String,
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
}

/// A runc with its state directory.
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
}

/// A failed runc run: the command and what it printed.
#[derive(Debug, thiserror::Error)]
#[error("runc {command}: {message}")]
pub struct RuncError {
    pub command: String,
    pub message: String,
}

/// Why runc cannot be run (not found on `PATH`), or `None` when it can. A look at the
/// file system, cheap enough for every sync.
pub fn missing() -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join("runc"))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    (!found).then(|| "runc: executable file not found in $PATH".to_string())
}

/// The stdio a container is created with (without a terminal, runc passes it on).
pub struct Stdio3 {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Runc {
    pub fn new(root: &Path) -> Runc {
        Runc {
            binary: PathBuf::from("runc"),
            root: root.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Result<String, RuncError> {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RuncError {
                command: args.join(" "),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(RuncError {
                command: args.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `runc create`, the container's stdin, stdout and stderr the given files (pipes),
    /// or with a terminal, its master end sent to `console_socket`; runc's own messages go
    /// to `<bundle>/runc.log`, whose last error is reported.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        io: Stdio3,
    ) -> Result<(), RuncError> {
        let log = bundle.join("runc.log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json"]);
        cmd.args(["create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(socket) = console_socket {
            cmd.arg("--console-socket").arg(socket);
        }
        let out = cmd
            .arg(id)
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr)
            .status()
            .map_err(|e| RuncError {
                command: format!("create {id}"),
                message: e.to_string(),
            })?;
        if !out.success() {
            // The last error runc logged, else its exit status.
            let message = std::fs::read_to_string(&log)
                .ok()
                .and_then(|text| {
                    text.lines()
                        .rev()
                        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .filter(|v| v["level"] == "error")
                        .find_map(|v| v["msg"].as_str().map(String::from))
                })
                .unwrap_or_else(|| format!("exited with {out}"));
            return Err(RuncError {
                command: format!("create {id}"),
                message,
            });
        }
        Ok(())
    }

    pub fn start(&self, id: &str) -> Result<(), RuncError> {
        self.run(&["start", id]).map(|_| ())
    }

    pub fn state(&self, id: &str) -> Result<State, RuncError> {
        let out = self.run(&["state", id])?;
        serde_json::from_str(&out).map_err(|e| RuncError {
            command: format!("state {id}"),
            message: e.to_string(),
        })
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<(), RuncError> {
        self.run(&["kill", id, signal]).map(|_| ())
    }

    /// `runc exec` of `argv` in a running container (its environment, directory and
    /// user), stdin closed; returns the exit code and the combined output (at most
    /// 10 KiB), or an error when it runs longer than `timeout` (it is then killed).
    pub fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: std::time::Duration,
    ) -> Result<(i32, String), RuncError> {
        use std::io::Read as _;
        let fail = |message: String| RuncError {
            command: format!("exec {id}"),
            message,
        };
        let (mut reader, writer) = std::io::pipe().map_err(|e| fail(e.to_string()))?;
        let writer2 = writer.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut child = self
            .command(&["exec", id])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        // The pipe's write ends live only in the child now: reading ends when it does.
        let collector = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = (&mut reader).take(10 << 10).read_to_end(&mut out);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            out
        });
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            match child.try_wait().map_err(|e| fail(e.to_string()))? {
                Some(status) => break status,
                None if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("command timed out after {timeout:?}")));
                }
                None => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        let out = collector.join().unwrap_or_default();
        Ok((
            status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out).into_owned(),
        ))
    }

    /// `runc delete --force`: the container is gone afterwards, running or not.
    pub fn delete(&self, id: &str) -> Result<(), RuncError> {
        match self.run(&["delete", "--force", id]) {
            Ok(_) => Ok(()),
            Err(e) if e.message.contains("does not exist") || e.message.contains("not found") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
