//! Calendar arithmetic for the few places that print dates, without a date-time crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// The (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's
/// civil-from-days).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn utc_strings() {
        assert_eq!(utc_string(UNIX_EPOCH), "1970-01-01 00:00:00.000000 UTC");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_846_500_123_456);
        assert_eq!(utc_string(t), "2026-11-28 06:15:00.123456 UTC");
    }
}
