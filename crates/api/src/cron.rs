//! CronJob schedules as upstream reads them (robfig/cron's standard parser): five
//! fields — minute, hour, day of month, month, day of week — each `*`, `?`, a number,
//! a name (`jan`-`dec`, `sun`-`sat`), a range `a-b`, a step `*/n` or `a-b/n`, or a
//! list of those; or a descriptor (`@yearly`/`@annually`, `@monthly`, `@weekly`,
//! `@daily`/`@midnight`, `@hourly`, `@every <duration>`). Times are taken in a time zone
//! (the CronJob's `timeZone`, else the controller's local one).

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Fields {
        minute: u64,
        hour: u64,
        dom: u64,
        month: u64,
        dow: u64,
        /// Whether day of month or day of week was `*`/`?` (then both must match;
        /// otherwise either may).
        dom_star: bool,
        dow_star: bool,
    },
    /// `@every <duration>`: at fixed intervals (whole seconds).
    Every(i64),
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Parses one field into a bit set of the values in `min..=max`; answers whether it
/// was a star.
fn field(
    s: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(i as u32 + name_base);
        }
        v.parse::<u32>().map_err(|_| {
            format!("failed to parse int from {v}: strconv.Atoi: parsing {v:?}: invalid syntax")
        })
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let n: u32 = st.parse().map_err(|_| {
                    format!("failed to parse int from {st}: strconv.Atoi: parsing {st:?}: invalid syntax")
                })?;
                (r, Some(n))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            if step.is_none() {
                star = true;
            }
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `n/step` runs from n to the end.
            (v, if step.is_some() { max } else { v })
        };
        if lo < min {
            return Err(format!(
                "beginning of range ({lo}) below minimum ({min}): {part}"
            ));
        }
        if hi > max {
            return Err(format!("end of range ({hi}) above maximum ({max}): {part}"));
        }
        if lo > hi {
            return Err(format!(
                "beginning of range ({lo}) beyond end of range ({hi}): {part}"
            ));
        }
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

/// Parses a schedule as upstream's validation does (the error is robfig's message).
pub fn parse(spec: &str) -> Result<Schedule, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("empty spec string".into());
    }
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if let Some(d) = spec.strip_prefix('@') {
        let fields = match d {
            "yearly" | "annually" => "0 0 1 1 *",
            "monthly" => "0 0 1 * *",
            "weekly" => "0 0 * * 0",
            "daily" | "midnight" => "0 0 * * *",
            "hourly" => "0 * * * *",
            _ => {
                if let Some(every) = d.strip_prefix("every ") {
                    let secs = go_duration(every.trim()).ok_or_else(|| {
                        format!(
                            "failed to parse duration {spec}: time: invalid duration {:?}",
                            every.trim()
                        )
                    })?;
                    return Ok(Schedule::Every(secs.max(1)));
                }
                return Err(format!("unrecognized descriptor: {spec}"));
            }
        };
        return parse(fields);
    }
    let f: Vec<&str> = spec.split_whitespace().collect();
    if f.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: {spec}",
            f.len()
        ));
    }
    let (minute, _) = field(f[0], 0, 59, &[], 0)?;
    let (hour, _) = field(f[1], 0, 23, &[], 0)?;
    let (dom, dom_star) = field(f[2], 1, 31, &[], 0)?;
    let (month, _) = field(f[3], 1, 12, MONTHS, 1)?;
    let (mut dow, dow_star) = field(f[4], 0, 7, DAYS, 0)?;
    // 7 is Sunday too.
    if dow & (1 << 7) != 0 {
        dow = (dow | 1) & !(1 << 7);
    }
    Ok(Schedule::Fields {
        minute,
        hour,
        dom,
        month,
        dow,
        dom_star,
        dow_star,
    })
}

/// Go's `time.ParseDuration` for whole units (`1h30m`, `90s`), in seconds.
fn go_duration(s: &str) -> Option<i64> {
    let mut total = 0i64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next()?);
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        total += match unit.as_str() {
            "h" => n * 3600,
            "m" => n * 60,
            "s" => n,
            "ms" => 0,
            _ => return None,
        };
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

impl Schedule {
    fn day_matches(&self, t: DateTime) -> bool {
        let Schedule::Fields {
            dom,
            dow,
            dom_star,
            dow_star,
            ..
        } = self
        else {
            return true;
        };
        let d = dom & (1 << t.day()) != 0;
        let w = dow & (1 << t.weekday().to_sunday_zero_offset()) != 0;
        if *dom_star || *dow_star {
            d && w
        } else {
            d || w
        }
    }

    /// The first time strictly after `after` that the schedule names, in `tz`
    /// (none within five years).
    pub fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let (minute, hour, month) = match self {
            Schedule::Every(secs) => return after.checked_add(secs.seconds()).ok(),
            Schedule::Fields {
                minute,
                hour,
                month,
                ..
            } => (*minute, *hour, *month),
        };
        let start = after.to_zoned(tz.clone()).datetime();
        // The next whole minute.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year() + 5;
        while t.year() <= limit {
            if month & (1 << t.month()) == 0 {
                t = t
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.day_matches(t) {
                t = t
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if hour & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if minute & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let ts = tz.to_ambiguous_timestamp(t).compatible().ok()?;
            // A time the clocks skipped (or repeated earlier) is not after `after`.
            if ts > after {
                return Some(ts);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// The time zone a CronJob names (an IANA name), as upstream's validation accepts it.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() {
        return Err("timeZone must be nil or non-empty string".into());
    }
    if name.eq_ignore_ascii_case("local") {
        return Err(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .into(),
        );
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fields_and_descriptors_parse_as_upstream() {
        assert!(parse("*/1 * * * *").is_ok());
        assert!(parse("0 0 * * MON-FRI").is_ok());
        assert!(parse("5 4 * * sun").is_ok());
        assert_eq!(parse("@daily"), parse("0 0 * * *"));
        assert_eq!(parse("@every 1h30m"), Ok(Schedule::Every(5400)));
        assert_eq!(
            parse("* * * *").unwrap_err(),
            "expected exactly 5 fields, found 4: * * * *"
        );
        assert_eq!(
            parse("61 * * * *").unwrap_err(),
            "end of range (61) above maximum (59): 61"
        );
        assert!(parse("TZ=UTC * * * * *").is_err());
        assert!(parse("@fortnightly").is_err());
    }

    #[test]
    fn next_times() {
        let utc = TimeZone::UTC;
        let every_minute = parse("*/1 * * * *").unwrap();
        assert_eq!(
            every_minute.next(at("2026-12-04T05:00:30Z"), &utc),
            Some(at("2026-12-04T05:01:00Z"))
        );
        assert_eq!(
            every_minute.next(at("2026-12-04T05:01:00Z"), &utc),
            Some(at("2026-12-04T05:02:00Z"))
        );
        let weekday_morning = parse("30 8 * * 1-5").unwrap();
        // 2026-12-05 is a Saturday: the next is Monday the 7th.
        assert_eq!(
            weekday_morning.next(at("2026-12-04T09:00:00Z"), &utc),
            Some(at("2026-12-07T08:30:00Z"))
        );
        // Day of month or day of week when both are given.
        let either = parse("0 0 13 * 5").unwrap();
        assert_eq!(
            either.next(at("2026-12-04T00:00:00Z"), &utc),
            Some(at("2026-12-11T00:00:00Z"))
        );
        let yearly = parse("@yearly").unwrap();
        assert_eq!(
            yearly.next(at("2026-12-04T00:00:00Z"), &utc),
            Some(at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            parse("0 0 30 2 *")
                .unwrap()
                .next(at("2026-01-01T00:00:00Z"), &utc),
            None
        );
    }

    #[test]
    fn time_zones() {
        let tz = time_zone("Asia/Shanghai").unwrap();
        let nine = parse("0 9 * * *").unwrap();
        assert_eq!(
            nine.next(at("2026-12-04T00:00:00Z"), &tz),
            Some(at("2026-12-04T01:00:00Z"))
        );
        assert_eq!(
            time_zone("Mars/Base").unwrap_err(),
            "unknown time zone Mars/Base"
        );
    }
}
