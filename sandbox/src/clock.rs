//! The sandbox's clock (real time plus an offset tests can advance), and timestamps and
//! durations in the forms Klarna puts on the wire.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Real time plus an offset that only grows: [`Clock::advance`] lets tests move past
/// expiries (Payment Requests, tokens, idempotency keys) without waiting.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset: Mutex<Duration>,
}

impl Clock {
    /// The sandbox's now.
    pub(crate) fn now(&self) -> SystemTime {
        SystemTime::now() + *self.offset()
    }

    /// Moves the clock forward by `by`.
    pub(crate) fn advance(&self, by: Duration) {
        let mut offset = self.offset();
        *offset = offset.saturating_add(by);
    }

    fn offset(&self) -> std::sync::MutexGuard<'_, Duration> {
        self.offset
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Formats `t` as RFC 3339 in UTC with nanosecond precision, e.g.
/// `2025-02-26T17:25:34.534721775Z` (the precision Klarna's timestamps have).
pub(crate) fn rfc3339_nanos(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let nanos = since.subsec_nanos();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let second_of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm,
/// restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// 1970-01-01 + `days` is year-month-day (the inverse of [`civil_from_days`]), for years
/// 1970..=9999.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 date-time, e.g. `2025-02-26T17:25:34.534721775Z` or
/// `2025-02-26T18:25:34+01:00` (`T`/`Z` also in lower case, up to nine fraction digits), as
/// Klarna takes for `interaction_expiry.timestamp`. Times before 1970 and leap seconds are
/// refused.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = bytes.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let punctuation = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if bytes.len() < 20
        || punctuation.iter().any(|(i, c)| bytes[*i] != *c)
        || !matches!(bytes[10], b'T' | b't')
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let value: u32 = fraction[..digits].parse().ok()?;
        nanos = value * 10u32.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let utc = match rest {
        "Z" | "z" => local,
        offset => {
            // ±HH:MM, the last six bytes of the text.
            let o = offset.as_bytes();
            if o.len() != 6 || !matches!(o[0], b'+' | b'-') || o[3] != b':' {
                return None;
            }
            let end = text.len();
            let (hours, minutes) = (number(end - 5..end - 3)?, number(end - 2..end)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let shift = hours * 3600 + minutes * 60;
            if o[0] == b'+' {
                local.checked_sub(shift)?
            } else {
                local + shift
            }
        }
    };
    Some(UNIX_EPOCH + Duration::new(utc, nanos))
}

/// Parses the ISO 8601 durations Klarna accepts for `interaction_expiry.duration`:
/// `P[nW][nD][T[nH][nM][nS]]` with whole numbers, e.g. `PT15M`, `PT3H`, `P1DT12H`.
pub(crate) fn parse_iso8601_duration(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total = 0u64;
    let mut any = false;
    for (part, units) in [
        (date, &[('W', 604_800), ('D', 86_400)][..]),
        (time.unwrap_or(""), &[('H', 3600), ('M', 60), ('S', 1)][..]),
    ] {
        let mut number = String::new();
        let mut next_unit = 0;
        for c in part.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let position = units.iter().position(|(unit, _)| *unit == c)?;
            // Units must come in order, each at most once, each with a number.
            if position < next_unit || number.is_empty() {
                return None;
            }
            let value: u64 = number.parse().ok()?;
            total = total.checked_add(value.checked_mul(units[position].1)?)?;
            number.clear();
            next_unit = position + 1;
            any = true;
        }
        if !number.is_empty() {
            return None;
        }
    }
    any.then(|| Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_740_590_734, 534_721_775);
        assert_eq!(rfc3339_nanos(t), "2025-02-26T17:25:34.534721775Z");
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_nanos(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn parses_rfc3339() {
        let t = UNIX_EPOCH + Duration::new(1_740_590_734, 534_721_775);
        assert_eq!(parse_rfc3339("2025-02-26T17:25:34.534721775Z"), Some(t));
        assert_eq!(parse_rfc3339(&rfc3339_nanos(t)), Some(t));
        let whole = UNIX_EPOCH + Duration::from_secs(1_740_590_734);
        assert_eq!(parse_rfc3339("2025-02-26T17:25:34Z"), Some(whole));
        assert_eq!(parse_rfc3339("2025-02-26t17:25:34z"), Some(whole));
        assert_eq!(parse_rfc3339("2025-02-26T18:55:34+01:30"), Some(whole));
        assert_eq!(parse_rfc3339("2025-02-26T12:25:34-05:00"), Some(whole));
        let half = UNIX_EPOCH + Duration::new(1_740_590_734, 500_000_000);
        assert_eq!(parse_rfc3339("2025-02-26T17:25:34.5Z"), Some(half));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        for bad in [
            "",
            "2025-02-26",
            "2025-02-26T17:25:34",
            "2025-02-26 17:25:34Z",
            "2025-02-30T17:25:34Z",
            "2023-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-02-26T24:00:00Z",
            "2025-02-26T17:25:60Z",
            "2025-02-26T17:25:34.Z",
            "2025-02-26T17:25:34.1234567890Z",
            "2025-02-26T17:25:34+0100",
            "2025-02-26T17:25:34+01:60",
            "2025-02-26T17:25:34UTC",
            "1969-12-31T23:59:59Z",
            "+2025-02-26T17:25:34Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_clock_advances() {
        let clock = Clock::default();
        let before = clock.now();
        clock.advance(Duration::from_secs(3600));
        assert!(clock.now() >= before + Duration::from_secs(3600));
    }

    #[test]
    fn parses_durations() {
        let secs = |s| parse_iso8601_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("PT15M"), Some(900));
        assert_eq!(secs("PT3H"), Some(10_800));
        assert_eq!(secs("P2D"), Some(172_800));
        assert_eq!(secs("P1DT1H30M5S"), Some(91_805));
        for bad in [
            "", "P", "PT", "15M", "PTM", "PT15", "PT1M1H", "P1H", "PT-1M", "PT1.5H",
        ] {
            assert_eq!(secs(bad), None, "{bad}");
        }
    }
}
