//! Reading and writing the common parts of objects held as JSON: names, labels,
//! resourceVersion, timestamps, UIDs.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// `metadata`, if the object has one.
pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.as_object()
}

/// `metadata`, created empty when absent (the object must be a JSON object).
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let o = obj.as_object_mut().expect("objects are JSON objects");
    let m = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut().expect("just made an object")
}

/// A string field of `metadata` (`name`, `namespace`, `uid`, ...), empty when absent.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    metadata(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `metadata.name`.
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name")
}

/// `metadata.namespace`.
pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace")
}

/// `metadata.labels` as a map (non-string values are skipped).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    string_map(metadata(obj).and_then(|m| m.get("labels")))
}

/// A JSON object of strings as a map.
pub fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(obj: &mut Value, rv: i64) {
    metadata_mut(obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
}

/// The current time as upstream writes timestamps (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    format_time(jiff::Timestamp::now())
}

/// A timestamp as upstream writes it.
pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// A random (version 4) UUID, as upstream gives every object.
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Upstream's random name suffix alphabet (no vowels, no confusable characters).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` random characters for generated names (`generateName`, pod names of a
/// ReplicaSet).
pub fn random_suffix(n: usize) -> String {
    (0..n)
        .map(|_| SUFFIX_ALPHABET[rand::random_range(0..SUFFIX_ALPHABET.len())] as char)
        .collect()
}

/// The name for an object with `generateName`: the prefix cut to leave room for five
/// random characters within 63 characters, as upstream's name generator does.
pub fn generate_name(prefix: &str) -> String {
    const MAX_PREFIX: usize = 63 - 5;
    let cut = if prefix.len() > MAX_PREFIX {
        &prefix[..MAX_PREFIX]
    } else {
        prefix
    };
    format!("{cut}{}", random_suffix(5))
}

/// Parses Go's `time.Duration` text as flags and configuration files write it: one or
/// more `<number><unit>` (`90s`, `1m30s`, `1.5h`, `250ms`; units ns, us, µs, ms, s, m,
/// h), or `0`. Negative durations are refused.
pub fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut secs = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        secs += n * match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
    }
    std::time::Duration::try_from_secs_f64(secs).ok()
}

/// Go's `time.Duration` text (`1h0m0s`, `1.5s`).
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let mut n = ns.unsigned_abs();
    let mut s = String::new();
    if n < 1_000_000_000 {
        s = if n < 1000 {
            format!("{n}ns")
        } else if n < 1_000_000 {
            format!("{}µs", trim_frac(n as f64 / 1e3))
        } else {
            format!("{}ms", trim_frac(n as f64 / 1e6))
        };
    } else {
        let h = n / 3_600_000_000_000;
        n %= 3_600_000_000_000;
        let m = n / 60_000_000_000;
        n %= 60_000_000_000;
        let secs = n as f64 / 1e9;
        if h > 0 {
            s.push_str(&format!("{h}h{m}m"));
        } else if m > 0 {
            s.push_str(&format!("{m}m"));
        }
        s.push_str(&format!("{}s", trim_frac(secs)));
    }
    if neg {
        format!("-{s}")
    } else {
        s
    }
}

fn trim_frac(f: f64) -> String {
    let s = format!("{f:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Upstream's human-readable age (`translateTimestampSince`: `5s`, `3m12s`, `4h`, `2d3h`,
/// `400d`, `3y20d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let y = d / 365;
        match d % 365 {
            0 => format!("{y}y"),
            dd => format!("{y}y{dd}d"),
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// Age of a timestamp field (`<unknown>` when absent, as upstream prints it).
pub fn age(ts: Option<&str>, now: jiff::Timestamp) -> String {
    match ts.and_then(parse_time) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        use std::time::Duration;
        assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "5", "5x", "-5s", "s", "1m5"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(2_000_000), "2ms");
    }

    #[test]
    fn durations_read_like_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(4 * 3600), "4h");
        assert_eq!(human_duration(4 * 3600 + 120), "4h2m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(51 * 3600), "2d3h");
        assert_eq!(human_duration(400 * 86400), "400d");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn uids_and_names_have_upstreams_shape() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let n = generate_name(&"x".repeat(70));
        assert_eq!(n.len(), 63);
        assert!(generate_name("web-")
            .chars()
            .skip(4)
            .all(|c| SUFFIX_ALPHABET.contains(&(c as u8))));
        let t = now();
        assert!(parse_time(&t).is_some() && t.ends_with('Z') && t.len() == 20);
    }
}
