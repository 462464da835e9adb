//! PostgreSQL time: microseconds since 2000-01-01 00:00:00 UTC, the unit of pgoutput's commit
//! timestamps. Conversion to and from RFC 3339 text and "now", in one place.
//!
//! Commit times are rendered once per transaction (`crate::event::TxText`), so plain
//! `format!` is fast enough; civil dates use Howard Hinnant's algorithms (proleptic Gregorian),
//! which need no calendar crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time (µs) of the PostgreSQL epoch, 2000-01-01T00:00:00Z.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Now, in microseconds since 2000-01-01 UTC.
pub fn now() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix.saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// `pg_micros` as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn to_rfc3339(pg_micros: i64) -> String {
    let unix = i128::from(pg_micros) + i128::from(PG_EPOCH_UNIX_MICROS);
    let micros = unix.rem_euclid(1_000_000);
    let secs = unix.div_euclid(1_000_000);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` → microseconds since 2000-01-01; `None` if it is not that.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let body = text.strip_suffix('Z')?;
    let (date, time) = body.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':');
    let (h, mi, s): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 || frac.len() > 9 {
        return None;
    }
    let micros: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    let days = days_from_civil(y, m, day)?;
    let unix = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + mi * 60 + s)?
        .checked_mul(1_000_000)?
        .checked_add(micros)?;
    unix.checked_sub(PG_EPOCH_UNIX_MICROS)
}

/// Days since 1970-01-01 → (year, month, day).
fn civil_from_days(z: i128) -> (i128, i128, i128) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.checked_mul(146_097)?.checked_add(doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc3339() {
        assert_eq!(to_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(to_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        let unix = 1_795_688_430i64 * 1_000_000 + 123_456;
        assert_eq!(to_rfc3339(unix - PG_EPOCH_UNIX_MICROS), "2026-11-26T10:20:30.123456Z");
        // Outside years 0–9999 it renders what it can, and never panics.
        assert_eq!(to_rfc3339(-63_200_000_000_000_000), "-003-04-09T12:26:40.000000Z");
        let _ = to_rfc3339(i64::MAX);
        let _ = to_rfc3339(i64::MIN);
    }

    #[test]
    fn parses_what_it_renders() {
        for t in [
            0,
            -1,
            1,
            851_000_000_123_456,
            -946_684_800_000_000,
            3_000_000_000_000_000,
        ] {
            assert_eq!(parse_rfc3339(&to_rfc3339(t)), Some(t), "{t}");
        }
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-01-01 00:00:00"), None);
        assert_eq!(parse_rfc3339("99999999999999999-01-01T00:00:00Z"), None);
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        assert!(now() > parse_rfc3339("2026-01-01T00:00:00Z").unwrap_or(i64::MAX));
    }
}
