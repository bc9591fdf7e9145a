//! Go's duration syntax, which the original's flags and notes use.
//!
//! Flags such as `-poll-interval 1h30m` and the await-command timeout text
//! (`2h0m0s await-command timeout reached`) must read exactly as they did
//! under the Go daemon, so both parsing and formatting follow Go's rules.

use std::time::Duration;

use thiserror::Error;

/// Why a duration string was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    /// Empty input.
    #[error("empty duration")]
    Empty,
    /// A leading minus sign.
    #[error("negative duration {0:?}")]
    Negative(String),
    /// Zero is never a useful interval or timeout.
    #[error("zero duration {0:?}")]
    Zero(String),
    /// Anything that is not `<number><unit>...` or a bare number of seconds.
    #[error("invalid duration {0:?} (expected e.g. 60s, 1h30m, 300ms, or seconds)")]
    Invalid(String),
    /// Larger than Go's duration can hold (about 290 years).
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

const UNITS: [(&str, u128); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("", 0),
];

/// Go's duration is an int64 of nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses Go duration syntax (`300ms`, `1h30m`, `1.5h`) or a bare unsigned
/// integer meaning seconds (`60`). Zero and negative values are refused.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative(text.to_owned()));
    }
    let nanos = if text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u128 = text
            .parse()
            .map_err(|_| DurationError::Overflow(text.into()))?;
        seconds.checked_mul(1_000_000_000)
    } else {
        parse_go_nanos(text.strip_prefix('+').unwrap_or(text))
            .ok_or_else(|| DurationError::Invalid(text.to_owned()))?
    };
    let nanos = nanos
        .filter(|n| *n <= MAX_NANOS)
        .ok_or_else(|| DurationError::Overflow(text.to_owned()))?;
    if nanos == 0 {
        return Err(DurationError::Zero(text.to_owned()));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Returns `None` for malformed input and `Some(None)` on overflow.
fn parse_go_nanos(mut rest: &str) -> Option<Option<u128>> {
    if rest.is_empty() {
        return None;
    }
    let mut total: Option<u128> = Some(0);
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(frac) => {
                let frac_len = frac.bytes().take_while(u8::is_ascii_digit).count();
                frac.split_at(frac_len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale = UNITS
            .iter()
            .find(|(name, _)| !name.is_empty() && *name == unit)
            .map(|(_, scale)| *scale)?;
        total = total.and_then(|t| add_component(t, int_part, frac_part, scale));
        rest = after;
    }
    Some(total)
}

fn add_component(total: u128, int_part: &str, frac_part: &str, scale: u128) -> Option<u128> {
    let whole: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut value = whole.checked_mul(scale)?;
    // Digits beyond nanosecond precision cannot change the result.
    let mut place = scale;
    for digit in frac_part.bytes().take(30) {
        place /= 10;
        value += u128::from(digit - b'0') * place;
    }
    total.checked_add(value).filter(|v| *v <= MAX_NANOS)
}

/// Formats like Go's `time.Duration.String`: `2h0m0s`, `1m30s`, `1.5s`, `300ms`.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}\u{b5}s", fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", fraction(nanos, 1_000_000));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let seconds = fraction(nanos % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    }
}

/// Drops sub-millisecond digits, for delays shown in logs.
pub fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// `value / unit` with the remainder as trailing-zero-free decimals.
fn fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let rest = value % unit;
    if rest == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let decimals = format!("{rest:0width$}");
    format!("{whole}.{}", decimals.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax_and_bare_seconds() {
        let cases = [
            ("60", 60_000_000_000u64),
            ("60s", 60_000_000_000),
            ("300ms", 300_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("2us", 2_000),
            ("2\u{b5}s", 2_000),
            ("1m0.5s", 60_500_000_000),
            (".5s", 500_000_000),
            ("+5s", 5_000_000_000),
            ("1ns", 1),
        ];
        for (text, nanos) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_nanos(nanos)),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_bad_durations() {
        for text in [
            "", "-4h", "60y", "4hours", "0", "0s", "h", "1.s.", ".", "1h-5m", "5 s", "s5",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
        assert!(matches!(
            parse_duration("-4h"),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(parse_duration("0"), Err(DurationError::Zero(_))));
        assert!(matches!(
            parse_duration("3000000h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (Duration::from_secs(7200), "2h0m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_micros(5), "5\u{b5}s"),
            (Duration::from_nanos(5), "5ns"),
            (Duration::from_secs(3600 + 1), "1h0m1s"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_duration(duration), text);
        }
    }
}
