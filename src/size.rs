//! Byte sizes on the command line (`-max-output 16MiB`): a whole number
//! with an optional unit, in powers of 1024 (`KiB`, `MiB`, `GiB`, `TiB`)
//! or of 1000 (`kB`, `MB`, `GB`, `TB`).

use thiserror::Error;

/// Why a size was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    /// Anything that is not `<whole number>[unit]`.
    #[error("invalid size {0:?} (expected a whole number of bytes, optionally with a unit: KiB, MiB, GiB, TiB, kB, MB, GB, TB)")]
    Invalid(String),
    /// Zero bytes.
    #[error("size {0:?} is zero")]
    Zero(String),
    /// More than 64 bits of bytes.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Units and their factors. `K` and `M` alone are refused: whether they
/// mean 1000 or 1024 is a guess.
const UNITS: [(&str, u64); 11] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("", 1),
];

/// Parses `8MiB`, `512KiB`, `100MB`, `4096`, ... into a number of bytes.
/// Zero is refused.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let factor = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, factor)| *factor);
    let (Some(factor), false) = (factor, number.is_empty()) else {
        return Err(SizeError::Invalid(text.to_owned()));
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| SizeError::Overflow(text.to_owned()))?;
    if bytes == 0 {
        return Err(SizeError::Zero(text.to_owned()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        for (text, bytes) in [
            ("1", 1),
            ("4096", 4096),
            ("10B", 10),
            ("512KiB", 512 * 1024),
            ("8MiB", 8 << 20),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("3kB", 3_000),
            ("3KB", 3_000),
            ("100MB", 100_000_000),
            ("1GB", 1_000_000_000),
            ("007MiB", 7 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn refused() {
        for text in [
            "", "MiB", "8M", "8K", "8mib", "8 MiB", " 8", "-1", "+1", "1.5MiB", "8MiBs", "0x10",
        ] {
            assert_eq!(
                parse_size(text),
                Err(SizeError::Invalid(text.to_owned())),
                "{text:?}"
            );
        }
        assert_eq!(parse_size("0"), Err(SizeError::Zero("0".into())));
        assert_eq!(parse_size("0MiB"), Err(SizeError::Zero("0MiB".into())));
        for text in ["18446744073709551616", "16777216TiB"] {
            assert_eq!(
                parse_size(text),
                Err(SizeError::Overflow(text.to_owned())),
                "{text}"
            );
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }
}
