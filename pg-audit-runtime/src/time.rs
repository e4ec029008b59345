//! RFC 3339 and UTC times, printed and read without a date-time crate (the calendar
//! arithmetic is the engine's, [`pg_audit::calendar`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pg_audit::calendar::{civil_from_days, days_from_civil};

/// Reads an RFC 3339 time, `2026-11-28T06:15:00.123456Z` or with an offset (`+01:00`), as
/// [`rfc3339`] writes it and JSON producers send it. `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // A leap second is read as the last second of its minute.
    let second = second.min(59);
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<9}", &fraction[..digits.min(9)]);
        nanos = padded.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let (h, m) = (num_of(&rest[1..3])?, num_of(&rest[4..6])?);
            sign * (h * 3_600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return None; // 2026-02-30
    }
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn num_of(digits: &str) -> Option<i64> {
    digits
        .bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| digits.parse().ok())?
}

/// Serde for [`SystemTime`] as an RFC 3339 string ([`rfc3339`], [`parse_rfc3339`]).
pub(crate) mod serde_rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        super::parse_rfc3339(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "`{text}` is not an RFC 3339 time such as 2026-11-28T06:15:00.000000Z"
            ))
        })
    }
}

/// `t` as `YYYY-MM-DD HH:MM:SS.ffffff UTC` (times before 1970 print as the epoch).
pub fn utc_string(t: SystemTime) -> String {
    let (date, time) = date_and_time(t);
    format!("{date} {time} UTC")
}

/// `t` as RFC 3339 in UTC with microseconds, `2026-11-28T06:15:00.000000Z`: for JSON.
pub fn rfc3339(t: SystemTime) -> String {
    let (date, time) = date_and_time(t);
    format!("{date}T{time}Z")
}

/// `YYYY-MM-DD` and `HH:MM:SS.ffffff` of `t` in UTC.
fn date_and_time(t: SystemTime) -> (String, String) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            rem / 3_600,
            rem % 3_600 / 60,
            rem % 60,
            since.subsec_micros()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_strings() {
        assert_eq!(utc_string(UNIX_EPOCH), "1970-01-01 00:00:00.000000 UTC");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_846_500_123_456);
        assert_eq!(utc_string(t), "2026-11-28 06:15:00.123456 UTC");
    }

    #[test]
    fn rfc3339_reads_back_what_it_writes_and_offsets() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_846_500_123_456);
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(parse_rfc3339("2026-11-28T07:15:00.123456+01:00"), Some(t));
        assert_eq!(
            parse_rfc3339("2026-11-28T06:15:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_846_500))
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00.5Z"),
            Some(UNIX_EPOCH + Duration::from_millis(1_709_164_800_500))
        );
        for bad in [
            "",
            "2026-11-28",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T06:15:00",
            "2026-11-28T06:15:00.Z",
            "2026-11-28T06:15:00+0100",
            "+026-11-28T06:15:00Z",
            "2026-11-28T06:15:00Zjunk",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
