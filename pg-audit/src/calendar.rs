//! Calendar arithmetic, without a date-time crate: the runtime prints and reads RFC 3339
//! times and names migration files, the capture worker writes commit times as PostgreSQL's
//! text, and both read PostgreSQL's binary timestamps. Written once here for all of them.

/// Seconds from the Unix epoch (1970-01-01) to PostgreSQL's (2000-01-01 UTC), from which its
/// binary `timestamptz` counts microseconds.
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// The (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's
/// civil-from-days), for any day of the proleptic Gregorian calendar.
///
/// ```
/// assert_eq!(pg_audit::calendar::civil_from_days(0), (1970, 1, 1));
/// assert_eq!(pg_audit::calendar::civil_from_days(-1), (1969, 12, 31));
/// ```
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
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

/// Days since 1970-01-01 of a (year, month, day) (Howard Hinnant's days-from-civil); the
/// inverse of [`civil_from_days`] for a real date. An impossible one (February 30th) counts
/// on into the next month: check it by converting back.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `days` since 1970-01-01 and the seconds into that day of a count of seconds since
/// 1970-01-01 (negative before it).
pub fn days_and_seconds(unix_secs: i64) -> (i64, i64) {
    (unix_secs.div_euclid(86_400), unix_secs.rem_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_round_trip_across_eras_and_leap_days() {
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(1900, 2, 29)), (1900, 3, 1));
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
        assert_eq!(PG_EPOCH_UNIX_SECS, 10_957 * 86_400);
        assert_eq!(days_and_seconds(-1), (-1, 86_399));
    }
}
