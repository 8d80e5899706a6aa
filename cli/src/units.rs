//! Durations and sizes as operators type them.

use std::time::Duration;

/// Parses `90`, `90s`, `5m`, `2h`, `7d`, `1w`, `500ms`, or a sum such as
/// `1h30m`. A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty duration".to_owned());
    }
    if text.contains(['.', ',']) {
        return Err(format!(
            "{text:?}: give whole numbers of a unit, such as 90m rather than 1.5h"
        ));
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut millis: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration such as 90s, 15m, 12h or 7d"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "" => return Err(format!("{text:?}: a number needs a unit (s, m, h, d, w)")),
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (ms, s, m, h, d, w)"
                ));
            }
        };
        rest = &rest[unit_len..];
        millis = value
            .checked_mul(unit)
            .and_then(|v| millis.checked_add(v))
            .ok_or_else(|| format!("{text:?} is too large"))?;
    }
    Ok(Duration::from_millis(millis))
}

/// Parses a duration as [`parse_duration`] does, for what is kept in whole
/// seconds (a topic's max age, a token's lifetime): a part of a second, or
/// nothing at all, is refused rather than rounded to 0, which would mean
/// "no limit" or "already expired".
pub fn parse_whole_seconds(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() != 0 || duration.is_zero() {
        return Err(format!(
            "{text:?}: give whole seconds, at least 1s (such as 90s, 15m, 7d)"
        ));
    }
    Ok(duration)
}

/// Parses a topic's age limit: whole seconds as [`parse_duration`] reads
/// them, where `0` (or `0s`) means no limit.
pub fn parse_age_limit(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "{text:?}: give whole seconds (such as 90s, 15m, 7d), or 0 for no limit"
        ));
    }
    Ok(duration)
}

/// Parses a byte size: `1024`, `10KiB`, `500MiB`, `2GiB` (powers of 1024,
/// also written `K`, `M`, `G`, `T`) or `10KB`, `2GB` (powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.contains(['.', ',']) {
        return Err(format!(
            "{text:?}: give whole numbers of a unit, such as 1536MiB rather than 1.5GiB"
        ));
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "{text:?} is not a size such as 1048576, 500MiB or 2GB"
        ));
    }
    let value: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let multiplier: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "5x", "1h 5m", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for fraction in ["1.5h", "0,5d"] {
            let error = parse_duration(fraction).unwrap_err();
            assert!(error.contains("whole numbers"), "{fraction:?}: {error}");
        }
    }

    #[test]
    fn whole_seconds_refuse_parts_of_a_second_and_zero() {
        assert_eq!(parse_whole_seconds("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_whole_seconds("2000ms"), Ok(Duration::from_secs(2)));
        for bad in ["500ms", "1s500ms", "0s", "0"] {
            let error = parse_whole_seconds(bad).unwrap_err();
            assert!(error.contains("whole seconds"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn age_limits_take_zero_for_none_but_not_parts_of_a_second() {
        assert_eq!(parse_age_limit("0"), Ok(Duration::ZERO));
        assert_eq!(parse_age_limit("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_age_limit("7d"), Ok(Duration::from_secs(7 * 86_400)));
        let error = parse_age_limit("1500ms").unwrap_err();
        assert!(error.contains("whole seconds"), "{error}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("10KiB"), Ok(10_240));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        for bad in ["", "MiB", "5 parsecs", "99999999999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        let error = parse_size("1.5GiB").unwrap_err();
        assert!(error.contains("whole numbers"), "{error}");
    }
}
