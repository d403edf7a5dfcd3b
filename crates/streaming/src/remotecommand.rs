//! `exec` and `attach` streams, whichever protocol carries them: SPDY (protocol
//! `v4.channel.k8s.io`, a stream per channel) or WebSocket (`v5.channel.k8s.io` or
//! `v4.channel.k8s.io`, a one-byte channel prefix per message). Both end up as the same
//! [`Streams`]: input (stdin, its end, terminal resizes) and output (stdout, stderr and
//! the final status on the error channel).

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::session::{Session, Stream};

/// The SPDY sub-protocol (`X-Stream-Protocol-Version`) this server speaks for exec and
/// attach.
pub const SPDY_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];

/// The WebSocket sub-protocols (`Sec-WebSocket-Protocol`), preferred first. v5 adds the
/// CLOSE channel that signals the end of stdin.
pub const WEBSOCKET_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// How long the client has to open all its SPDY streams (upstream's
/// `streamCreationTimeout` default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Which streams the client asked for (the `stdin`, `stdout`, `stderr` and `tty` query
/// parameters). With a terminal there is no separate stderr, as upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    /// Options from query values (`true`/`1`), stderr dropped with a terminal.
    pub fn new(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Options {
        Options {
            stdin,
            stdout,
            stderr: stderr && !tty,
            tty,
        }
    }
}

/// What the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin(Bytes),
    /// Stdin has ended.
    StdinClosed,
    Resize {
        width: u16,
        height: u16,
    },
}

/// How a command ended, for the error channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    ExitCode(i32),
    /// It could not be run (or the stream failed): an internal error with this message.
    Error(String),
}

impl Outcome {
    /// The `Status` the v4 and v5 protocols send on the error channel.
    pub fn status(&self) -> serde_json::Value {
        match self {
            Outcome::Success => serde_json::json!({"metadata": {}, "status": "Success"}),
            Outcome::ExitCode(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Error(msg) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {msg}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": msg}]},
                "code": 500,
            }),
        }
    }
}

enum Out {
    Stdout(Bytes),
    Stderr(Bytes),
    Done(Outcome, oneshot::Sender<()>),
}

/// The client went away: nothing more can be sent.
#[derive(Debug, thiserror::Error)]
#[error("the client has gone")]
pub struct Gone;

/// The output side of a session.
pub struct Output {
    tx: mpsc::Sender<Out>,
}

impl Output {
    pub async fn stdout(&self, data: Bytes) -> Result<(), Gone> {
        self.tx.send(Out::Stdout(data)).await.map_err(|_| Gone)
    }

    pub async fn stderr(&self, data: Bytes) -> Result<(), Gone> {
        self.tx.send(Out::Stderr(data)).await.map_err(|_| Gone)
    }

    /// Sends the outcome, closes the streams and the connection, and waits until that
    /// is done.
    pub async fn finish(self, outcome: Outcome) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Out::Done(outcome, ack)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
    }
}

/// A session's two sides.
pub struct Streams {
    /// Ends when the client has gone.
    pub input: mpsc::Receiver<Input>,
    pub output: Output,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TerminalSize {
    width: u16,
    height: u16,
}

/// Reads terminal sizes from a stream of concatenated JSON objects.
#[derive(Default)]
struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    fn push(&mut self, data: &[u8]) -> Vec<Input> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(t)) => {
                    used = it.byte_offset();
                    out.push(Input::Resize {
                        width: t.width,
                        height: t.height,
                    });
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // Not a size: skip what was read so far.
                    used = self.buf.len();
                    break;
                }
                None => {
                    used = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..used);
        out
    }
}

/// Serves exec/attach over a SPDY session: waits for the client's streams (error, and
/// stdin, stdout, stderr, resize as `opts` says), then pumps them.
pub async fn spdy(mut session: Session, opts: Options) -> Result<Streams, String> {
    let mut streams: Vec<Stream> = Vec::new();
    let wanted = |t: &str| match t {
        "error" => true,
        "stdin" => opts.stdin,
        "stdout" => opts.stdout,
        "stderr" => opts.stderr,
        "resize" => opts.tty,
        _ => false,
    };
    let count = ["error", "stdin", "stdout", "stderr", "resize"]
        .iter()
        .filter(|t| wanted(t))
        .count();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while streams.len() < count {
        let s = match tokio::time::timeout_at(deadline, session.streams.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("the client closed the connection".into()),
            Err(_) => return Err("timed out waiting for the client's streams".into()),
        };
        let kind = s.header("streamtype").unwrap_or_default().to_string();
        if !wanted(&kind)
            || streams
                .iter()
                .any(|o| o.header("streamtype") == Some(&kind))
        {
            tracing::debug!(stream = %kind, "unexpected stream; reset");
            s.writer.reset().await;
            continue;
        }
        streams.push(s);
    }
    let mut take = |kind: &str| {
        streams
            .iter()
            .position(|s| s.header("streamtype") == Some(kind))
            .map(|i| streams.swap_remove(i))
    };
    let error = take("error").expect("counted");
    let (stdin, stdout, stderr, resize) = (
        take("stdin"),
        take("stdout"),
        take("stderr"),
        take("resize"),
    );
    let (in_tx, input) = mpsc::channel(16);
    if let Some(mut s) = stdin {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            while let Some(d) = s.data.recv().await {
                if tx.send(Input::Stdin(d)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::StdinClosed).await;
        });
    }
    if let Some(mut s) = resize {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            let mut dec = ResizeDecoder::default();
            while let Some(d) = s.data.recv().await {
                for r in dec.push(&d) {
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // The input ends when the client has gone: the session's stream channel closes
    // then. Holding the sender until that keeps `input` open while stdin is done.
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
    tokio::spawn(async move {
        let mut session = session;
        let mut in_tx = Some(in_tx);
        loop {
            tokio::select! {
                out = out_rx.recv() => match out {
                    Some(Out::Stdout(d)) => if let Some(s) = &stdout { let _ = s.writer.send(&d).await; },
                    Some(Out::Stderr(d)) => if let Some(s) = &stderr { let _ = s.writer.send(&d).await; },
                    Some(Out::Done(outcome, ack)) => {
                        let status = serde_json::to_vec(&outcome.status()).unwrap_or_default();
                        let _ = error.writer.send(&status).await;
                        for s in [&stdout, &stderr].into_iter().flatten() {
                            s.writer.finish().await;
                        }
                        error.writer.finish().await;
                        session.close().await;
                        let _ = ack.send(());
                        return;
                    }
                    None => { session.close().await; return; }
                },
                s = session.streams.recv(), if in_tx.is_some() => match s {
                    Some(extra) => extra.writer.reset().await,
                    None => in_tx = None,
                },
            }
        }
    });
    Ok(Streams {
        input,
        output: Output { tx: out_tx },
    })
}

/// Serves exec/attach over a WebSocket with the negotiated sub-protocol (one of
/// [`WEBSOCKET_PROTOCOLS`]).
pub fn websocket<S>(ws: WebSocketStream<S>, protocol: &str) -> Streams
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let v5 = protocol == "v5.channel.k8s.io";
    let (mut sink, mut source) = ws.split();
    let (in_tx, input) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut resize = ResizeDecoder::default();
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            let inputs = match channel {
                0 => vec![Input::Stdin(Bytes::copy_from_slice(rest))],
                4 => resize.push(rest),
                255 if v5 && rest.first() == Some(&0) => vec![Input::StdinClosed],
                _ => Vec::new(),
            };
            for i in inputs {
                if in_tx.send(i).await.is_err() {
                    return;
                }
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
    tokio::spawn(async move {
        let frame = |channel: u8, data: &[u8]| {
            let mut m = Vec::with_capacity(data.len() + 1);
            m.push(channel);
            m.extend_from_slice(data);
            Message::Binary(m.into())
        };
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Stdout(d) => {
                    if sink.send(frame(1, &d)).await.is_err() {
                        return;
                    }
                }
                Out::Stderr(d) => {
                    if sink.send(frame(2, &d)).await.is_err() {
                        return;
                    }
                }
                Out::Done(outcome, ack) => {
                    let status = serde_json::to_vec(&outcome.status()).unwrap_or_default();
                    let _ = sink.send(frame(3, &status)).await;
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        })))
                        .await;
                    let _ = sink.flush().await;
                    let _ = ack.send(());
                    return;
                }
            }
        }
    });
    Streams {
        input,
        output: Output { tx: out_tx },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizes_are_read_across_chunks() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"Hei"#), vec![]);
        assert_eq!(
            d.push(br#"ght":24}{"Width":100,"Height":30}"#),
            vec![
                Input::Resize {
                    width: 80,
                    height: 24
                },
                Input::Resize {
                    width: 100,
                    height: 30
                }
            ]
        );
        assert_eq!(d.push(b"garbage"), vec![]);
        assert_eq!(
            d.push(br#"{"Width":1,"Height":2}"#),
            vec![Input::Resize {
                width: 1,
                height: 2
            }]
        );
    }

    #[test]
    fn exit_codes_are_reported_as_upstream() {
        let s = Outcome::ExitCode(3).status();
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(Outcome::Success.status()["status"], "Success");
        assert_eq!(Outcome::Error("x".into()).status()["code"], 500);
    }
}
