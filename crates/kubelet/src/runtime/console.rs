//! The socket runc hands a terminal's master end over (`--console-socket`), for
//! containers with a TTY, and resizing terminals.

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
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd as _, FromRawFd as _, RawFd};
        self.listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| format!("runc did not connect: {e}"))?;
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

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, nix::libc::winsize);

/// Sets a terminal's size (the processes on it get SIGWINCH).
pub fn set_size(fd: &OwnedFd, width: u32, height: u32) {
    use std::os::fd::AsRawFd as _;
    let ws = nix::libc::winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    let _ = unsafe { set_window_size(fd.as_raw_fd(), &ws) };
}
