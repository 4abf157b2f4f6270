//! Timestamps and durations in the forms Klarna puts on the wire.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
