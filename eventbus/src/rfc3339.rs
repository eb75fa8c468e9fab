//! The envelope's `time` field on the wire: RFC 3339 in UTC.
//!
//! Every event is stamped on publish and read on every delivery, so both directions take a
//! direct path for the shape the framework writes (`2026-11-23T10:15:01.123Z`, fractions of
//! 0, 3, 6 or 9 digits, as chrono writes them) and hand anything else (offsets other than `Z`,
//! leap seconds, lower-case separators, odd fraction lengths) to chrono's full RFC 3339
//! parser, so every timestamp chrono accepts is still accepted, with the same value.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use serde::{de, Deserializer, Serializer};

/// Writes `time` as chrono's serde does: `YYYY-MM-DDTHH:MM:SS`, the fraction in 3, 6 or 9
/// digits when not zero, then `Z`.
pub(crate) fn serialize<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 40];
    match format(time, &mut buf) {
        Some(text) => serializer.serialize_str(text),
        None => serializer.collect_str(&time.format("%+")),
    }
}

/// Reads an RFC 3339 timestamp into UTC.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(Visitor)
}

struct Visitor;

impl de::Visitor<'_> for Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an RFC 3339 timestamp")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        parse(text).map_err(E::custom)
    }
}

/// Parses an RFC 3339 timestamp into UTC.
pub(crate) fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match parse_utc_z(text.as_bytes()) {
        Some(time) => Ok(time),
        None => DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)),
    }
}

/// The direct path: `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, seconds below 60.
fn parse_utc_z(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(digits(0..4)?).ok()?;
    let (month, day) = (digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let mut nanos = 0u32;
    let rest = &b[19..];
    let zone = match rest.first() {
        Some(b'.') => {
            let fraction = &rest[1..];
            let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return None;
            }
            nanos = digits(20..20 + n)? * 10u32.pow(9 - n as u32);
            &fraction[n..]
        }
        _ => rest,
    };
    if zone != b"Z" || second >= 60 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(NaiveDateTime::new(date, time).and_utc())
}

/// Formats the common case (years 0000-9999, no leap second) into `buf`; `None` otherwise.
pub(crate) fn format<'b>(time: &DateTime<Utc>, buf: &'b mut [u8; 40]) -> Option<&'b str> {
    let year = u32::try_from(time.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut at = put(buf, 0, year, 4);
    for (separator, value) in [
        (b'-', time.month()),
        (b'-', time.day()),
        (b'T', time.hour()),
        (b':', time.minute()),
        (b':', time.second()),
    ] {
        buf[at] = separator;
        at = put(buf, at + 1, value, 2);
    }
    if nanos != 0 {
        buf[at] = b'.';
        at = if nanos % 1_000_000 == 0 {
            put(buf, at + 1, nanos / 1_000_000, 3)
        } else if nanos % 1_000 == 0 {
            put(buf, at + 1, nanos / 1_000, 6)
        } else {
            put(buf, at + 1, nanos, 9)
        };
    }
    buf[at] = b'Z';
    std::str::from_utf8(&buf[..at + 1]).ok()
}

/// Writes `value` as `width` decimal digits at `at`; returns the index after them.
fn put(buf: &mut [u8; 40], at: usize, value: u32, width: u32) -> usize {
    for i in 0..width {
        buf[at + i as usize] = b'0' + ((value / 10u32.pow(width - 1 - i)) % 10) as u8;
    }
    at + width as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes with chrono's own serde, the reference the direct path must match.
    fn chrono_text(time: &DateTime<Utc>) -> String {
        serde_json::to_value(time)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn random_time() -> DateTime<Utc> {
        let secs = fastrand::i64(0..253_402_300_799);
        let nanos = match fastrand::u8(0..4) {
            0 => 0,
            1 => fastrand::u32(0..1000) * 1_000_000,
            2 => fastrand::u32(0..1_000_000) * 1000,
            _ => fastrand::u32(0..1_000_000_000),
        };
        DateTime::from_timestamp(secs, nanos).unwrap_or_default()
    }

    #[test]
    fn formats_as_chrono_does_and_reads_back() {
        for _ in 0..20_000 {
            let time = random_time();
            let mut buf = [0u8; 40];
            let text = format(&time, &mut buf).expect("in range");
            assert_eq!(text, chrono_text(&time), "{time:?}");
            assert_eq!(parse(text), Ok(time), "{text}");
            assert_eq!(
                parse_utc_z(text.as_bytes()),
                Some(time),
                "direct path: {text}"
            );
        }
    }

    #[test]
    fn reads_what_chrono_reads() {
        for text in [
            "2026-11-23T10:15:01Z",
            "2026-11-23T10:15:01.1Z",
            "2026-11-23T10:15:01.123456789Z",
            "2026-11-23t10:15:01z",
            "2026-11-23 10:15:01Z",
            "2026-11-23T10:15:01+02:00",
            "2026-11-23T10:15:01.5-05:30",
            "2016-12-31T23:59:60Z",
            "2026-11-23T10:15:01.1234567891Z",
        ] {
            let expected = DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc));
            assert_eq!(parse(text), expected, "{text}");
        }
    }

    #[test]
    fn rejects_what_chrono_rejects() {
        for text in [
            "",
            "2026-11-23",
            "2026-11-23T10:15:01",
            "2026-13-23T10:15:01Z",
            "2026-02-30T10:15:01Z",
            "2026-11-23T24:15:01Z",
            "2026-11-23T10:15:01.Z",
            "2026-11-23T10:15:01ZZ",
            "2026-11-23T10:15:01+0200",
            "２０２６-11-23T10:15:01Z",
            "+2026-11-23T10:15:01Z",
        ] {
            assert!(
                DateTime::parse_from_rfc3339(text).is_err(),
                "chrono accepts {text}"
            );
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
