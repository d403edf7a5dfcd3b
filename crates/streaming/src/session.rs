//! The server side of a SPDY session: the peer (kubectl) opens streams, each is
//! answered at once and handed over with its headers, its incoming data and a writer.
//! PINGs are echoed; WINDOW_UPDATE and SETTINGS are read and ignored, as spdystream
//! keeps no flow-control windows either.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::spdy::{Codec, Frame, Headers, MAX_DATA};

/// A stream the peer opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The stream's data; ends when the peer half-closes or resets it (or the session
    /// ends).
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

impl Stream {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::spdy::header(&self.headers, name)
    }
}

/// Sends on one stream. Cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Frame>,
}

/// The session is gone: nothing more can be sent.
#[derive(Debug, thiserror::Error)]
#[error("the SPDY session has ended")]
pub struct Closed;

impl StreamWriter {
    /// Sends data (cut into frames of at most [`MAX_DATA`] bytes).
    pub async fn send(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(MAX_DATA) {
            self.frames
                .send(Frame::Data {
                    stream_id: self.id,
                    fin: false,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-closes the stream: this side sends no more.
    pub async fn finish(&self) {
        let _ = self
            .frames
            .send(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }

    /// Resets (cancels) the stream.
    pub async fn reset(&self) {
        let _ = self
            .frames
            .send(Frame::RstStream {
                stream_id: self.id,
                status: crate::spdy::CANCEL,
            })
            .await;
    }
}

/// A running session: the streams the peer opens arrive on `streams`. Dropping it ends
/// the session: what was queued is sent, then the connection is closed.
pub struct Session {
    pub streams: mpsc::Receiver<Stream>,
    reader: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// Serves a session on a connection (after the HTTP upgrade).
    pub fn start<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(64);
        let (streams_tx, streams) = mpsc::channel(16);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        // The sending (deflate) and receiving (inflate) zlib streams are independent:
        // each task has a codec of its own.
        let writer = tokio::spawn(async move {
            let mut codec = Codec::new();
            let mut buf = Vec::with_capacity(MAX_DATA + 64);
            loop {
                let frame = tokio::select! {
                    f = frames_rx.recv() => f,
                    _ = &mut stopped => {
                        // Send what is queued, then close.
                        frames_rx.close();
                        buf.clear();
                        while let Ok(f) = frames_rx.try_recv() {
                            codec.encode(&f, &mut buf);
                        }
                        let _ = wr.write_all(&buf).await;
                        let _ = wr.flush().await;
                        let _ = wr.shutdown().await;
                        return;
                    }
                };
                let Some(frame) = frame else { return };
                buf.clear();
                codec.encode(&frame, &mut buf);
                // Batch what else is queued into one write.
                while buf.len() < 256 << 10 {
                    match frames_rx.try_recv() {
                        Ok(f) => codec.encode(&f, &mut buf),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        });
        let reader = tokio::spawn(async move {
            let mut codec = Codec::new();
            let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
            loop {
                let frame = match codec.read(&mut rd).await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("SPDY session ends: {e}");
                        break;
                    }
                };
                match frame {
                    Frame::SynStream {
                        stream_id,
                        fin,
                        headers,
                    } => {
                        let (tx, data) = mpsc::channel(16);
                        if !fin {
                            open.insert(stream_id, tx);
                        }
                        let reply = Frame::SynReply {
                            stream_id,
                            fin: false,
                            headers: Vec::new(),
                        };
                        if frames_tx.send(reply).await.is_err() {
                            break;
                        }
                        let stream = Stream {
                            id: stream_id,
                            headers,
                            data,
                            writer: StreamWriter {
                                id: stream_id,
                                frames: frames_tx.clone(),
                            },
                        };
                        if streams_tx.send(stream).await.is_err() {
                            let _ = frames_tx
                                .send(Frame::RstStream {
                                    stream_id,
                                    status: crate::spdy::REFUSED_STREAM,
                                })
                                .await;
                        }
                    }
                    Frame::Data {
                        stream_id,
                        fin,
                        data,
                    } => {
                        if let Some(tx) = open.get(&stream_id) {
                            // Dropped when nobody reads the stream.
                            if !data.is_empty() {
                                let _ = tx.send(data).await;
                            }
                        }
                        if fin {
                            open.remove(&stream_id);
                        }
                    }
                    Frame::RstStream { stream_id, .. } => {
                        open.remove(&stream_id);
                    }
                    Frame::Ping(id) => {
                        let echoed = frames_tx.send(Frame::Ping(id)).await;
                        if echoed.is_err() {
                            break;
                        }
                    }
                    Frame::GoAway { .. } => break,
                    Frame::Headers {
                        stream_id,
                        fin: true,
                        ..
                    } => {
                        open.remove(&stream_id);
                    }
                    _ => {}
                }
            }
        });
        Session {
            streams,
            reader,
            stop: Some(stop),
            writer: Some(writer),
        }
    }

    /// Ends the session: sends what is queued, closes the connection and waits (at most
    /// a few seconds) until that is done.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(w) = self.writer.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client side, with a codec per direction as a real peer has.
    struct Peer {
        out: Codec,
        inp: Codec,
        io: tokio::io::DuplexStream,
    }

    impl Peer {
        async fn send(&mut self, f: Frame) {
            let mut b = Vec::new();
            self.out.encode(&f, &mut b);
            self.io.write_all(&b).await.unwrap();
        }
        async fn recv(&mut self) -> Option<Frame> {
            self.inp.read(&mut self.io).await.unwrap()
        }
    }

    #[tokio::test]
    async fn streams_are_answered_and_carry_data_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(b);
        let mut peer = Peer {
            out: Codec::new(),
            inp: Codec::new(),
            io: a,
        };
        peer.send(Frame::SynStream {
            stream_id: 1,
            fin: false,
            headers: vec![("streamType".into(), "stdin".into())],
        })
        .await;
        let mut s = session.streams.recv().await.unwrap();
        assert_eq!(s.header("streamtype"), Some("stdin"));
        assert_eq!(
            peer.recv().await,
            Some(Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: vec![]
            })
        );
        peer.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"abc"),
        })
        .await;
        assert_eq!(s.data.recv().await.unwrap(), Bytes::from_static(b"abc"));
        assert!(s.data.recv().await.is_none(), "FIN ends the stream's data");
        s.writer.send(b"out").await.unwrap();
        s.writer.finish().await;
        peer.send(Frame::Ping(5)).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(peer.recv().await.unwrap());
        }
        assert_eq!(
            got,
            vec![
                Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::from_static(b"out")
                },
                Frame::Data {
                    stream_id: 1,
                    fin: true,
                    data: Bytes::new()
                },
                Frame::Ping(5),
            ]
        );
        session.close().await;
        assert_eq!(peer.recv().await, None, "closing ends the connection");
    }
}
