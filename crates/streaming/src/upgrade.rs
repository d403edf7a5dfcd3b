//! The HTTP side of a streaming request: which protocol it asks to upgrade to, with
//! which sub-protocol, and the `101 Switching Protocols` answer.

use futures::{SinkExt as _, StreamExt as _};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What an upgrade request negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// SPDY/3.1 with this `X-Stream-Protocol-Version`.
    Spdy { protocol: String },
    /// WebSocket with this `Sec-WebSocket-Protocol`; `accept` is the
    /// `Sec-WebSocket-Accept` value.
    WebSocket { protocol: String, accept: String },
}

/// Why a request cannot be upgraded (upstream answers these with 400 or 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("Upgrade request required")]
    NotAnUpgrade,
    #[error("unable to upgrade: unable to negotiate protocol: client supports {client:?}, server supports {server:?}")]
    NoProtocol {
        client: Vec<String>,
        server: Vec<String>,
    },
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Reads an upgrade request: a WebSocket upgrade offering one of `websocket`, or a
/// SPDY/3.1 upgrade offering one of `spdy` (the server's preference decides).
pub fn negotiate(
    headers: &HeaderMap,
    spdy: &[&str],
    websocket: &[&str],
) -> Result<Upgrade, Refused> {
    let upgrade = values(headers, "upgrade");
    let pick = |offered: Vec<String>, supported: &[&str]| {
        supported
            .iter()
            .find(|s| offered.iter().any(|o| o == *s))
            .map(|s| s.to_string())
            .ok_or_else(|| Refused::NoProtocol {
                client: offered,
                server: supported.iter().map(|s| s.to_string()).collect(),
            })
    };
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        let key = headers
            .get("sec-websocket-key")
            .ok_or(Refused::NotAnUpgrade)?;
        let protocol = pick(values(headers, "sec-websocket-protocol"), websocket)?;
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        return Ok(Upgrade::WebSocket { protocol, accept });
    }
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        let protocol = pick(values(headers, "x-stream-protocol-version"), spdy)?;
        return Ok(Upgrade::Spdy { protocol });
    }
    Err(Refused::NotAnUpgrade)
}

/// The headers of the `101 Switching Protocols` answer.
pub fn switching_headers(u: &Upgrade) -> Vec<(&'static str, String)> {
    match u {
        Upgrade::Spdy { protocol } => vec![
            ("connection", "Upgrade".into()),
            ("upgrade", "SPDY/3.1".into()),
            ("x-stream-protocol-version", protocol.clone()),
        ],
        Upgrade::WebSocket { protocol, accept } => vec![
            ("connection", "Upgrade".into()),
            ("upgrade", "websocket".into()),
            ("sec-websocket-accept", accept.clone()),
            ("sec-websocket-protocol", protocol.clone()),
        ],
    }
}

/// Unwraps a byte stream carried in a WebSocket's binary messages (how kubectl tunnels
/// a SPDY session through a WebSocket): returns the stream's end on this side.
pub fn tunnel<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) => {
                    let written = wr.write_all(&b).await;
                    if written.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn protocols_are_negotiated_by_server_preference() {
        let h = headers(&[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "Sec-WebSocket-Protocol",
                "v4.channel.k8s.io, v5.channel.k8s.io",
            ),
        ]);
        assert_eq!(
            negotiate(&h, &[], &["v5.channel.k8s.io", "v4.channel.k8s.io"]),
            Ok(Upgrade::WebSocket {
                protocol: "v5.channel.k8s.io".into(),
                // RFC 6455's example.
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            })
        );
        let h = headers(&[
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v3.channel.k8s.io"),
        ]);
        assert_eq!(
            negotiate(&h, &["v4.channel.k8s.io"], &[]),
            Ok(Upgrade::Spdy {
                protocol: "v4.channel.k8s.io".into()
            })
        );
        let h = headers(&[
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v2.channel.k8s.io"),
        ]);
        assert!(matches!(
            negotiate(&h, &["v4.channel.k8s.io"], &[]),
            Err(Refused::NoProtocol { .. })
        ));
        assert_eq!(
            negotiate(&HeaderMap::new(), &["x"], &["y"]),
            Err(Refused::NotAnUpgrade)
        );
    }
}
