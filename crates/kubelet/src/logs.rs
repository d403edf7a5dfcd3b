//! Reading container logs for `kubectl logs`: the CRI log file of a container attempt
//! (`<time> <stream> <P|F> <content>` per line), with upstream's options — the last N
//! lines, only lines since a time, time stamps, a byte limit, and following the file
//! until the container ends.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last this many lines (before following).
    pub tail_lines: Option<i64>,
    /// Only lines written at or after this time (nanoseconds since the epoch).
    pub since_nanos: Option<i64>,
    /// Each line prefixed with its RFC 3339 time stamp.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<i64>,
}

/// How often a followed log is checked for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// One line of a CRI log file.
struct Record<'a> {
    time: &'a str,
    partial: bool,
    content: &'a [u8],
}

fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Record {
        time,
        partial: tag == b"P",
        content,
    })
}

/// `time` as Go's RFC3339Nano prints it: fractional seconds without trailing zeros.
fn rfc3339_nano(time: &str) -> String {
    match time.split_once('.') {
        Some((secs, frac)) => {
            let digits = frac.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{secs}Z")
            } else {
                format!("{secs}.{digits}Z")
            }
        }
        None => time.to_string(),
    }
}

/// Turns log lines into output, applying the options; keeps count of the bytes.
pub struct Formatter {
    opts: LogOptions,
    written: i64,
}

impl Formatter {
    pub fn new(opts: LogOptions) -> Formatter {
        Formatter { opts, written: 0 }
    }

    /// Whether the byte limit is reached.
    pub fn full(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }

    /// Appends the output for one file line (without its newline) to `out`.
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.full() {
            return;
        }
        let Some(r) = parse(line) else { return };
        if let Some(since) = self.opts.since_nanos {
            let at = r
                .time
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_nanosecond())
                .unwrap_or(i128::MAX);
            if at < since as i128 {
                return;
            }
        }
        let start = out.len();
        if self.opts.timestamps {
            out.extend_from_slice(rfc3339_nano(r.time).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(r.content);
        if !r.partial {
            out.push(b'\n');
        }
        let mut n = (out.len() - start) as i64;
        if let Some(limit) = self.opts.limit_bytes {
            let room = limit - self.written;
            if n > room {
                out.truncate(start + room.max(0) as usize);
                n = room.max(0);
            }
        }
        self.written += n;
    }

    /// The output for a run of complete lines; with `tail`, only the last lines count.
    pub fn lines(&mut self, data: &[u8], tail: Option<i64>) -> Vec<u8> {
        let lines: Vec<&[u8]> = data
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let skip = match tail {
            Some(t) if t >= 0 => lines.len().saturating_sub(t as usize),
            _ => 0,
        };
        let mut out = Vec::new();
        for l in &lines[skip..] {
            self.line(l, &mut out);
        }
        out
    }
}

/// A log file read from the start and then followed: yields chunks of output until the
/// byte limit, the end of the file (not following), or the container's end.
pub struct Reader {
    path: PathBuf,
    file: Option<std::fs::File>,
    inode: u64,
    pending: Vec<u8>,
    format: Formatter,
    first: bool,
}

impl Reader {
    pub fn open(path: &Path, opts: LogOptions) -> std::io::Result<Reader> {
        use std::os::unix::fs::MetadataExt as _;
        let file = std::fs::File::open(path)?;
        let inode = file.metadata()?.ino();
        Ok(Reader {
            path: path.to_path_buf(),
            file: Some(file),
            inode,
            pending: Vec::new(),
            format: Formatter::new(opts),
            first: true,
        })
    }

    /// Reads what is there now (complete lines) and returns its output.
    pub fn read_available(&mut self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::MetadataExt as _;
        // A rotated log: the rest of the old file, then the new one from its start.
        if let Ok(m) = std::fs::metadata(&self.path) {
            if m.ino() != self.inode {
                let mut out = self.drain_file()?;
                self.file = Some(std::fs::File::open(&self.path)?);
                self.inode = m.ino();
                out.extend(self.drain_file()?);
                return Ok(out);
            }
        }
        self.drain_file()
    }

    fn drain_file(&mut self) -> std::io::Result<Vec<u8>> {
        let Some(f) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        let mut data = std::mem::take(&mut self.pending);
        f.read_to_end(&mut data)?;
        let cut = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.pending = data.split_off(cut);
        let tail = if self.first {
            self.first = false;
            self.format.opts.tail_lines
        } else {
            None
        };
        Ok(self.format.lines(&data, tail))
    }

    /// Whether the byte limit is reached.
    pub fn done(&self) -> bool {
        self.format.full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2024-05-01T10:00:00.100000000Z stdout F one\n\
2024-05-01T10:00:01.000000000Z stderr F two\n\
2024-05-01T10:00:02.123450000Z stdout P thr\n\
2024-05-01T10:00:02.200000000Z stdout F ee\n";

    fn read(opts: LogOptions) -> String {
        String::from_utf8(Formatter::new(opts).lines(LOG.as_bytes(), None)).unwrap()
    }

    #[test]
    fn lines_timestamps_since_and_limits() {
        assert_eq!(read(LogOptions::default()), "one\ntwo\nthree\n");
        assert_eq!(
            read(LogOptions {
                timestamps: true,
                ..Default::default()
            })
            .lines()
            .next(),
            Some("2024-05-01T10:00:00.1Z one")
        );
        let since = "2024-05-01T10:00:01Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_nanosecond() as i64;
        assert_eq!(
            read(LogOptions {
                since_nanos: Some(since),
                ..Default::default()
            }),
            "two\nthree\n"
        );
        assert_eq!(
            read(LogOptions {
                limit_bytes: Some(6),
                ..Default::default()
            }),
            "one\ntw"
        );
        let tail = Formatter::new(LogOptions::default()).lines(LOG.as_bytes(), Some(2));
        assert_eq!(
            tail, b"three\n",
            "the last two file lines are one partial line"
        );
    }

    #[test]
    fn a_reader_sees_appended_and_rotated_lines() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, &LOG.as_bytes()[..60]).unwrap();
        let mut r = Reader::open(
            &path,
            LogOptions {
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.read_available().unwrap(), b"one\n");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&LOG.as_bytes()[60..]).unwrap();
        assert_eq!(r.read_available().unwrap(), b"two\nthree\n");
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::fs::write(&path, "2024-05-01T10:00:03Z stdout F four\n").unwrap();
        assert_eq!(r.read_available().unwrap(), b"four\n");
    }
}
