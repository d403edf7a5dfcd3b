//! SPDY/3.1 framing, as kubectl (through moby/spdystream) speaks it: control frames
//! (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE)
//! and data frames, with header blocks compressed by one zlib stream per direction
//! against SPDY/3's preset dictionary.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The SPDY version in every control frame.
pub const VERSION: u16 = 3;

/// Data frames are cut at this size (the format allows up to 16 MiB).
pub const MAX_DATA: usize = 32 << 10;

/// A header block larger than this (decompressed) ends the session: a guard against a
/// peer that sends a zlib bomb.
const MAX_HEADER_BLOCK: usize = 256 << 10;

/// A frame larger than this ends the session.
const MAX_FRAME: usize = 1 << 20;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status: the stream is refused.
pub const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: the stream is cancelled.
pub const CANCEL: u32 = 5;

/// Header names and values, names lower-case as SPDY/3 requires.
pub type Headers = Vec<(String, String)>;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings,
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: bytes::Bytes,
    },
    /// A control frame of a type this side ignores (as the spec asks).
    Unknown(u16),
}

/// A broken session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

/// SPDY/3's header compression dictionary: length-prefixed common header names and
/// values, then common status lines, dates and media types as one run of text.
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TEXT: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivate",
        "max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1424);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TEXT.as_bytes());
    d
}

/// Encodes and decodes the frames of one session; it holds the two zlib streams, so a
/// session uses one codec for all its frames.
pub struct Codec {
    dict: Vec<u8>,
    deflate: Compress,
    inflate: Decompress,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        let dict = dictionary();
        let mut deflate = Compress::new(Compression::best(), true);
        deflate
            .set_dictionary(&dict)
            .expect("a fresh deflate stream takes a dictionary");
        Codec {
            dict,
            deflate,
            inflate: Decompress::new(true),
        }
    }

    fn compress_headers(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before_in = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate into a growing buffer");
            input = &input[(self.deflate.total_in() - before_in) as usize..];
            // Done when all input is in and the flush fitted (spare room remains).
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    fn decompress_headers(&mut self, mut block: &[u8]) -> Result<Headers, Error> {
        let mut raw: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        loop {
            if raw.len() > MAX_HEADER_BLOCK {
                return Err(protocol("header block too large"));
            }
            raw.reserve(1024);
            let before_in = self.inflate.total_in();
            let before_out = raw.len();
            match self
                .inflate
                .decompress_vec(block, &mut raw, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => return Err(protocol("header compression stream ended")),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(|e| protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
            }
            block = &block[(self.inflate.total_in() - before_in) as usize..];
            let progressed = raw.len() > before_out || self.inflate.total_in() > before_in;
            if block.is_empty() && raw.len() < raw.capacity() {
                break;
            }
            if !progressed && block.is_empty() {
                break;
            }
        }
        parse_header_block(&raw)
    }

    /// Appends the wire form of `f` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[u8]| {
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(payload);
        };
        let flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p.extend_from_slice(&0u32.to_be_bytes());
                p.extend_from_slice(&[0, 0]);
                p.extend(self.compress_headers(headers));
                control(out, SYN_STREAM, flag(*fin), &p);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let mut p = Vec::new();
                p.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p.extend(self.compress_headers(headers));
                control(out, kind, flag(*fin), &p);
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(out, RST_STREAM, 0, &p);
            }
            Frame::Settings => control(out, SETTINGS, 0, &0u32.to_be_bytes()),
            Frame::Ping(id) => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                let mut p = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(out, GOAWAY, 0, &p);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, WINDOW_UPDATE, 0, &p);
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(flag(*fin));
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
            Frame::Unknown(_) => {}
        }
    }

    /// Reads the next frame; `None` at a clean end of the connection (between frames).
    pub async fn read<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Option<Frame>, Error> {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        r.read_exact(&mut head[1..]).await?;
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(protocol(format!("frame of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        let word = |i: usize| -> Result<u32, Error> {
            payload
                .get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| protocol("short control frame"))
        };
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream_id,
                fin,
                data: payload.into(),
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(protocol(format!("unsupported version {version}")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let frame = match kind {
            SYN_STREAM => {
                let stream_id = word(0)? & 0x7fff_ffff;
                if payload.len() < 10 {
                    return Err(protocol("short SYN_STREAM"));
                }
                let headers = self.decompress_headers(&payload[10..])?;
                Frame::SynStream {
                    stream_id,
                    fin,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                let stream_id = word(0)? & 0x7fff_ffff;
                let headers = self.decompress_headers(&payload[4..])?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            RST_STREAM => Frame::RstStream {
                stream_id: word(0)? & 0x7fff_ffff,
                status: word(4)?,
            },
            SETTINGS => Frame::Settings,
            PING => Frame::Ping(word(0)?),
            GOAWAY => Frame::GoAway {
                last_good: word(0)? & 0x7fff_ffff,
                status: word(4).unwrap_or(0),
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream_id: word(0)? & 0x7fff_ffff,
                delta: word(4)? & 0x7fff_ffff,
            },
            other => Frame::Unknown(other),
        };
        Ok(Some(frame))
    }
}

fn parse_header_block(raw: &[u8]) -> Result<Headers, Error> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], Error> {
        let s = raw
            .get(at..at + n)
            .ok_or_else(|| protocol("truncated header block"))?;
        at += n;
        Ok(s)
    };
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = word(take(4)?);
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = word(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = word(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

/// The first value of header `name` (names are compared without case).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        // Its size, and its zlib id (Adler-32), which peers check.
        assert_eq!(d.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &d {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xE3C6_A7C2);
    }

    #[tokio::test]
    async fn frames_round_trip_through_one_codec_pair() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                fin: false,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "8080".into()),
                ],
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: vec![],
            },
            Frame::SynStream {
                stream_id: 3,
                fin: true,
                headers: vec![("streamtype".into(), "stdout".into())],
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: bytes::Bytes::from_static(b"hello"),
            },
            Frame::Ping(7),
            Frame::RstStream {
                stream_id: 3,
                status: CANCEL,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 100,
            },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
        ];
        let (mut tx, mut rx) = (Codec::new(), Codec::new());
        let mut wire = Vec::new();
        for f in &frames {
            tx.encode(f, &mut wire);
        }
        let mut r = &wire[..];
        let mut got = Vec::new();
        while let Some(f) = rx.read(&mut r).await.unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error() {
        let mut wire = vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0e];
        wire.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        let err = Codec::new().read(&mut &wire[..]).await.unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
        let wire = [0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1];
        let err = Codec::new().read(&mut &wire[..]).await.unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }
}
