//! The socket runc hands a terminal's master end over (`--console-socket`), for
//! containers and exec sessions with a TTY.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The socket runc sends a terminal's master end over (`--console-socket`); removed
/// when dropped. It lives in the temporary directory: socket paths are short.
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    pub fn bind(id: &str) -> std::io::Result<ConsoleSocket> {
        let path = std::env::temp_dir().join(format!(
            "ferrokube-console-{}-{}.sock",
            std::process::id(),
            &id[..id.len().min(40)]
        ));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        Ok(ConsoleSocket { path, listener })
    }

    /// The master end runc sent (runc has connected by the time `runc create` returns).
    pub fn receive(&self) -> Result<OwnedFd, String> {
        self.receive_within(std::time::Duration::ZERO, || false)
    }

    /// The master end runc sends, waiting at most `limit` for runc to connect while
    /// `waiting()` says it may still come (`runc exec` connects while it runs).
    pub fn receive_within(
        &self,
        limit: std::time::Duration,
        waiting: impl Fn() -> bool,
    ) -> Result<OwnedFd, String> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd as _, FromRawFd as _, RawFd};
        self.listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + limit;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline
                        && waiting() =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(format!("runc did not connect: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .map_err(|e| e.to_string())?;
        for c in msg.cmsgs().map_err(|e| e.to_string())? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err("no terminal received".into())
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
