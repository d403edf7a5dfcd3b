//! Port-forward streams. kubectl opens a pair of SPDY streams per connection it
//! forwards, both with headers `port` and `requestID`: an `error` stream (the server
//! writes a message there when the connection fails) and a `data` stream. Over a
//! WebSocket the same SPDY session is tunneled in binary messages
//! ([`crate::upgrade::tunnel`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::session::{Session, Stream};

/// The SPDY sub-protocol (`X-Stream-Protocol-Version`).
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";

/// The WebSocket sub-protocol of a tunneled SPDY session.
pub const WEBSOCKET_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// How long half of a pair waits for the other.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// One forwarded connection: its port and its two streams.
pub struct Forward {
    pub port: u16,
    pub data: Stream,
    pub error: Stream,
}

#[derive(Default)]
struct Pending {
    data: Option<Stream>,
    error: Option<Stream>,
    since: Option<Instant>,
}

/// The forwarded connections of a session, as their stream pairs complete.
pub struct Forwards {
    session: Session,
    pending: HashMap<String, Pending>,
}

impl Forwards {
    pub fn new(session: Session) -> Forwards {
        Forwards {
            session,
            pending: HashMap::new(),
        }
    }

    /// The next complete pair; `None` once the client has closed the session.
    pub async fn next(&mut self) -> Option<Forward> {
        loop {
            let s = self.session.streams.recv().await?;
            self.pending
                .retain(|_, p| p.since.is_some_and(|t| t.elapsed() < PAIR_TIMEOUT));
            let kind = s.header("streamtype").unwrap_or_default().to_string();
            // Old clients send no request id: their error stream comes just before the
            // data stream.
            let request = match s.header("requestid") {
                Some(id) => id.to_string(),
                None if kind == "data" => s.id.saturating_sub(2).to_string(),
                None => s.id.to_string(),
            };
            let p = self.pending.entry(request.clone()).or_default();
            p.since.get_or_insert_with(Instant::now);
            match kind.as_str() {
                "data" if p.data.is_none() => p.data = Some(s),
                "error" if p.error.is_none() => p.error = Some(s),
                _ => {
                    tracing::debug!(stream = %kind, "unexpected port-forward stream; reset");
                    s.writer.reset().await;
                    continue;
                }
            }
            if p.data.is_none() || p.error.is_none() {
                continue;
            }
            let p = self.pending.remove(&request).expect("present");
            let (data, error) = (p.data.expect("set"), p.error.expect("set"));
            let port = data.header("port").unwrap_or_default().to_string();
            match port.parse::<u16>() {
                Ok(port) if port > 0 => return Some(Forward { port, data, error }),
                Ok(_) => fail(&error, "port must be > 0").await,
                Err(e) => {
                    fail(
                        &error,
                        &format!("encountered error parsing port {port:?}: {e}"),
                    )
                    .await
                }
            }
            data.writer.reset().await;
        }
    }
}

/// Reports a failed connection on its error stream and closes it.
pub async fn fail(error: &Stream, message: &str) {
    let _ = error.writer.send(message.as_bytes()).await;
    error.writer.finish().await;
}
