//! Attaching to a running container's own stdio (`kubectl attach`, `kubectl run -i`):
//! the shim listens on a socket in the container's bundle, sends every client what the
//! container writes from then on, and passes what clients send to the container's
//! stdin (`stdin: true`) or terminal (`tty: true`, which also takes resizes). With
//! `stdinOnce` the container's stdin closes when the first client attached to it
//! leaves, as upstream (a terminal stays open: closing it would hang the container up,
//! as with containerd). Frames both ways: a kind byte, a 4-byte big-endian length,
//! the payload.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The socket's name in the bundle.
pub const SOCKET: &str = "attach";

/// Largest payload a frame carries.
const MAX_FRAME: usize = 1 << 20;

/// How long one write to a client may take before it is cut off.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Output chunks queued per client before it counts as gone.
const CLIENT_QUEUE: usize = 1024;

/// One message on the attach socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → shim, first: whether the client attaches to stdin.
    Hello {
        stdin: bool,
    },
    /// Client → shim: input for the container.
    Stdin(Vec<u8>),
    /// Client → shim: the client's input has ended.
    CloseStdin,
    /// Client → shim: the terminal's new size.
    Resize {
        width: u16,
        height: u16,
    },
    /// Shim → client: what the container wrote.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Frame {
    /// The frame as sent.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, Vec<u8>) = match self {
            Frame::Hello { stdin } => (0, vec![u8::from(*stdin)]),
            Frame::Stdin(d) => (1, d.clone()),
            Frame::CloseStdin => (2, Vec::new()),
            Frame::Resize { width, height } => {
                let mut p = width.to_be_bytes().to_vec();
                p.extend_from_slice(&height.to_be_bytes());
                (3, p)
            }
            Frame::Stdout(d) => (4, d.clone()),
            Frame::Stderr(d) => (5, d.clone()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// The kind and payload length a 5-byte header announces.
    pub fn header(h: [u8; 5]) -> std::io::Result<(u8, usize)> {
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!("attach frame of {len} bytes")));
        }
        Ok((h[0], len))
    }

    /// A frame from its kind and payload.
    pub fn decode(kind: u8, payload: Vec<u8>) -> std::io::Result<Frame> {
        Ok(match (kind, payload.as_slice()) {
            (0, [b]) => Frame::Hello { stdin: *b != 0 },
            (1, _) => Frame::Stdin(payload),
            (2, []) => Frame::CloseStdin,
            (3, [w0, w1, h0, h1]) => Frame::Resize {
                width: u16::from_be_bytes([*w0, *w1]),
                height: u16::from_be_bytes([*h0, *h1]),
            },
            (4, _) => Frame::Stdout(payload),
            (5, _) => Frame::Stderr(payload),
            _ => return Err(invalid(format!("bad attach frame of kind {kind}"))),
        })
    }

    /// Reads one frame; `None` at the end of the stream.
    pub fn read(r: &mut impl Read) -> std::io::Result<Option<Frame>> {
        let mut h = [0u8; 5];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (kind, len) = Frame::header(h)?;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        Frame::decode(kind, payload).map(Some)
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// `dir/name` by a short path: socket paths are limited to 108 bytes and bundles sit
/// deep, so the directory is opened and named through `/proc/self/fd`. The directory
/// stays open as long as the returned handle lives.
pub fn short_path(dir: &Path, name: &str) -> std::io::Result<(std::fs::File, PathBuf)> {
    let d = std::fs::File::open(dir)?;
    let p = PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()));
    Ok((d, p))
}

/// A client's queue of encoded output frames.
type Queue = std::sync::mpsc::SyncSender<Arc<Vec<u8>>>;

/// Where the container's input goes and how its terminal is resized.
pub struct Hub {
    /// Each client's output queue.
    clients: Mutex<Vec<Queue>>,
    /// The container's stdin (the write end of its pipe, or its terminal); `None` once
    /// closed or when it takes none.
    stdin: Mutex<Option<std::fs::File>>,
    terminal: Option<OwnedFd>,
    stdin_once: bool,
}

impl Hub {
    pub fn new(stdin: Option<OwnedFd>, terminal: Option<OwnedFd>, stdin_once: bool) -> Hub {
        Hub {
            clients: Mutex::new(Vec::new()),
            stdin: Mutex::new(stdin.map(std::fs::File::from)),
            terminal,
            stdin_once,
        }
    }

    /// Listens on `<bundle>/attach` and serves clients on threads of their own.
    pub fn listen(self: &Arc<Self>, bundle: &Path) -> std::io::Result<()> {
        let (_dir, path) = short_path(bundle, SOCKET)?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let hub = self.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let hub = hub.clone();
                std::thread::spawn(move || hub.serve(stream));
            }
        });
        Ok(())
    }

    fn serve(&self, stream: UnixStream) {
        let Ok(mut reader) = stream.try_clone() else {
            return;
        };
        // Output goes out on a thread of the client's own, so that a slow client never
        // holds the container up; one that falls behind by a queue's worth, or cannot
        // be written to, is cut off (its socket shut, so its side sees the end).
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(CLIENT_QUEUE);
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        let mut writer = stream;
        std::thread::spawn(move || {
            for bytes in rx {
                if writer.write_all(&bytes).is_err() {
                    break;
                }
            }
            let _ = writer.shutdown(std::net::Shutdown::Both);
        });
        self.clients.lock().expect("lock").push(tx);
        let mut on_stdin = false;
        while let Ok(Some(frame)) = Frame::read(&mut reader) {
            match frame {
                Frame::Hello { stdin } => on_stdin = stdin,
                Frame::Stdin(data) => {
                    // Written outside the lock: a container that does not read its
                    // input blocks this client only.
                    let target = self
                        .stdin
                        .lock()
                        .expect("lock")
                        .as_ref()
                        .and_then(|f| f.try_clone().ok());
                    if let Some(mut f) = target {
                        let _ = f.write_all(&data);
                    }
                }
                Frame::CloseStdin => {
                    if on_stdin {
                        self.stdin_ended();
                    }
                    on_stdin = false;
                }
                Frame::Resize { width, height } => {
                    if let Some(t) = &self.terminal {
                        super::console::set_size(t, width.into(), height.into());
                    }
                }
                Frame::Stdout(_) | Frame::Stderr(_) => break,
            }
        }
        // The client's input has ended (it may still read: a half close). It is let go
        // once a write to it fails.
        if on_stdin {
            self.stdin_ended();
        }
    }

    /// A client attached to stdin is done with it: with `stdinOnce`, the container's
    /// stdin closes for good. (A terminal stays: closing it would hang the container up.)
    fn stdin_ended(&self) {
        if self.stdin_once && self.terminal.is_none() {
            self.stdin.lock().expect("lock").take();
        }
    }

    /// Queues what the container wrote for every client; clients whose queue is full
    /// (gone quiet) are cut off.
    pub fn broadcast(&self, frame: &Frame) {
        let mut clients = self.clients.lock().expect("lock");
        if clients.is_empty() {
            return;
        }
        let bytes = Arc::new(frame.encode());
        clients.retain(|tx| tx.try_send(bytes.clone()).is_ok());
    }

    /// The container has ended: every client's stream ends once its queue is out.
    pub fn close(&self) {
        self.clients.lock().expect("lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello { stdin: true },
            Frame::Stdin(b"echo hi\n".to_vec()),
            Frame::CloseStdin,
            Frame::Resize {
                width: 91,
                height: 37,
            },
            Frame::Stdout(b"hi\n".to_vec()),
            Frame::Stderr(Vec::new()),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(f.encode());
        }
        let mut r = wire.as_slice();
        for f in &frames {
            assert_eq!(Frame::read(&mut r).unwrap().as_ref(), Some(f));
        }
        assert_eq!(Frame::read(&mut r).unwrap(), None);
        // Unknown kinds, bad sizes and huge lengths are refused.
        assert!(Frame::read(&mut [9u8, 0, 0, 0, 0].as_slice()).is_err());
        assert!(Frame::read(&mut [3u8, 0, 0, 0, 1, 7].as_slice()).is_err());
        assert!(Frame::read(&mut [1u8, 0xff, 0, 0, 0].as_slice()).is_err());
    }

    #[test]
    fn clients_get_output_and_feed_stdin_once() {
        let dir = tempfile::tempdir().unwrap();
        let (in_r, in_w) = nix::unistd::pipe().unwrap();
        let hub = Arc::new(Hub::new(Some(in_w), None, true));
        hub.listen(dir.path()).unwrap();
        let (_d, path) = short_path(dir.path(), SOCKET).unwrap();
        let mut a = UnixStream::connect(&path).unwrap();
        let mut b = UnixStream::connect(&path).unwrap();
        a.write_all(&Frame::Hello { stdin: true }.encode()).unwrap();
        a.write_all(&Frame::Stdin(b"line\n".to_vec()).encode())
            .unwrap();
        b.write_all(&Frame::Hello { stdin: false }.encode())
            .unwrap();
        // Both are registered once accepted; wait for it.
        let mut got = [0u8; 5];
        let mut container_stdin = std::fs::File::from(in_r);
        container_stdin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"line\n");
        for _ in 0..100 {
            if hub.clients.lock().unwrap().len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        hub.broadcast(&Frame::Stdout(b"out".to_vec()));
        hub.broadcast(&Frame::Stderr(b"err".to_vec()));
        for c in [&mut a, &mut b] {
            assert_eq!(
                Frame::read(c).unwrap(),
                Some(Frame::Stdout(b"out".to_vec()))
            );
            assert_eq!(
                Frame::read(c).unwrap(),
                Some(Frame::Stderr(b"err".to_vec()))
            );
        }
        // The stdin client leaves: with stdinOnce the container sees the end of input.
        a.write_all(&Frame::CloseStdin.encode()).unwrap();
        let mut rest = Vec::new();
        container_stdin.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        hub.close();
        assert_eq!(Frame::read(&mut b).unwrap(), None);
    }
}
