//! Byte sizes as operators write them: `100MB`, `1.5GB`, `512 KiB`, `1048576`.
//!
//! `KB`/`MB`/`GB`/`TB` are 1024-based, as in Harbor's quotas, and `KiB`…`TiB` are accepted as
//! synonyms. Every message that shows a size also shows its exact bytes, so the 1024 base is never
//! a surprise.

use std::fmt;

/// A whole number of bytes, parsed from and displayed in the operator's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(u64);

/// Why a size string was rejected. The text says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size; expected a number of bytes or a number with a unit such as 100MB")]
    Empty,
    #[error(
        "`{0}` is not a size; expected a number with an optional unit B, KB, MB, GB, TB (1024-based) or KiB, MiB, GiB, TiB, for example 100MB or 1.5GB"
    )]
    Syntax(String),
    #[error(
        "unknown unit `{unit}` in `{input}`; expected B, KB, MB, GB, TB (1024-based) or KiB, MiB, GiB, TiB"
    )]
    Unit { input: String, unit: String },
    #[error("`{0}` is negative; a size must be zero or more")]
    Negative(String),
    #[error(
        "`{input}` is {bytes} bytes, not a whole number of bytes; write a whole number of bytes or use a smaller unit"
    )]
    Fraction { input: String, bytes: String },
    #[error("`{0}` is larger than the largest supported size (2^63-1 bytes)")]
    TooLarge(String),
}

const UNITS: [(&str, u32); 5] = [("TB", 4), ("GB", 3), ("MB", 2), ("KB", 1), ("B", 0)];

/// Sizes above this are meaningless to registries (OCI descriptor sizes are int64).
pub const MAX_BYTES: u64 = i64::MAX as u64;

impl ByteSize {
    /// A size of exactly `bytes`.
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    /// The exact number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The exact bytes with the human text beside them, as messages print a measured value.
    pub fn exact(self) -> String {
        format!("{} bytes ({})", self.bytes(), self.human())
    }

    /// Human text for a measured value, exact when short and approximate (`about 1.23MB`)
    /// otherwise; callers print the exact bytes beside it.
    pub fn human(self) -> String {
        let exact = self.to_string();
        let plain_bytes = exact
            .trim_end_matches('B')
            .bytes()
            .all(|b| b.is_ascii_digit());
        if self.0 < 1024 || !plain_bytes {
            return exact;
        }
        for (name, power) in UNITS {
            let unit = 1024u64.pow(power);
            if self.0 >= unit && power > 0 {
                return format!("about {:.2}{name}", self.0 as f64 / unit as f64);
            }
        }
        exact
    }
}

impl std::str::FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text.is_empty() {
            return Err(SizeError::Empty);
        }
        if text.starts_with('-') {
            return Err(SizeError::Negative(text.to_owned()));
        }
        let digits_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, rest) = text.split_at(digits_end);
        let unit = rest.trim_start();
        let power = parse_unit(unit).ok_or_else(|| {
            if unit.chars().all(|c| c.is_ascii_alphabetic()) {
                SizeError::Unit {
                    input: text.to_owned(),
                    unit: unit.to_owned(),
                }
            } else {
                SizeError::Syntax(text.to_owned())
            }
        })?;
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if (whole.is_empty() && fraction.is_empty())
            || fraction.contains('.')
            || (number.contains('.') && fraction.is_empty())
        {
            return Err(SizeError::Syntax(text.to_owned()));
        }
        // Exact rational arithmetic: value = (whole * 10^f + fraction) * 1024^power / 10^f.
        let too_large = || SizeError::TooLarge(text.to_owned());
        let whole_n: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        if fraction.len() > 18 {
            return Err(SizeError::Syntax(text.to_owned()));
        }
        let scale = 10u128.pow(fraction.len() as u32);
        let fraction_n: u128 = if fraction.is_empty() {
            0
        } else {
            fraction
                .parse()
                .map_err(|_| SizeError::Syntax(text.to_owned()))?
        };
        let numerator = whole_n
            .checked_mul(scale)
            .and_then(|n| n.checked_add(fraction_n))
            .and_then(|n| n.checked_mul(1024u128.pow(power)))
            .ok_or_else(too_large)?;
        if numerator % scale != 0 {
            let bytes = format!(
                "{}.{}",
                numerator / scale,
                format!("{:0width$}", numerator % scale, width = fraction.len())
                    .trim_end_matches('0')
            );
            return Err(SizeError::Fraction {
                input: text.to_owned(),
                bytes,
            });
        }
        let bytes = numerator / scale;
        if bytes > u128::from(MAX_BYTES) {
            return Err(too_large());
        }
        Ok(Self(bytes as u64))
    }
}

fn parse_unit(unit: &str) -> Option<u32> {
    let upper = unit.to_ascii_uppercase();
    // `KiB` is a synonym of `KB`: both are 1024-based here.
    let base = match upper.strip_suffix("IB") {
        Some(prefix) if !prefix.is_empty() => format!("{prefix}B"),
        _ => upper,
    };
    if base.is_empty() {
        return Some(0);
    }
    UNITS
        .iter()
        .find(|(name, _)| *name == base)
        .map(|(_, power)| *power)
}

impl fmt::Display for ByteSize {
    /// The largest unit that shows the value exactly with at most three decimals, so that
    /// parsing the text gives back the same bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, power) in UNITS {
            let unit = 1024u64.pow(power);
            if self.0 < unit && self.0 != 0 {
                continue;
            }
            if self.0 == 0 && power > 0 {
                continue;
            }
            let whole = self.0 / unit;
            let rest = self.0 % unit;
            if rest == 0 {
                return write!(f, "{whole}{name}");
            }
            // rest / unit as a decimal with at most three digits, if exact.
            let thousandths = u128::from(rest) * 1000;
            if thousandths % u128::from(unit) == 0 {
                let digits = format!("{:03}", thousandths / u128::from(unit));
                return write!(f, "{whole}.{}{name}", digits.trim_end_matches('0'));
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl TryFrom<&str> for ByteSize {
    type Error = SizeError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_spellings() {
        let table: &[(&str, u64)] = &[
            ("0", 0),
            ("1048576", 1_048_576),
            ("100B", 100),
            ("1KB", 1024),
            ("1kb", 1024),
            ("1KiB", 1024),
            ("1 kib", 1024),
            ("20MB", 20_971_520),
            ("20 MB", 20_971_520),
            ("20mib", 20_971_520),
            ("100MB", 104_857_600),
            ("1GB", 1_073_741_824),
            ("1.5GB", 1_610_612_736),
            ("5GB", 5_368_709_120),
            ("2TB", 2_199_023_255_552),
            ("0.5KB", 512),
            (".5KB", 512),
            ("  7MB  ", 7_340_032),
        ];
        for (text, bytes) in table {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(*bytes)), "{text}");
        }
    }

    #[test]
    fn rejects_bad_spellings_with_a_reason() {
        let table: &[(&str, &str)] = &[
            ("", "empty size"),
            ("10XB", "unknown unit `XB`"),
            ("10PB", "unknown unit `PB`"),
            ("-1MB", "negative"),
            ("1.2.3MB", "not a size"),
            ("MB", "not a size"),
            ("1.MB", "not a size"),
            ("1.1KB", "1126.4 bytes"),
            ("0.5B", "not a whole number of bytes"),
            ("9999999999TB", "larger than the largest"),
            (
                "99999999999999999999999999999999999999999",
                "larger than the largest",
            ),
            ("10 M B", "not a size"),
        ];
        for (text, fragment) in table {
            let err = text.parse::<ByteSize>().expect_err(text).to_string();
            assert!(err.contains(fragment), "{text}: {err}");
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        let table: &[(u64, &str)] = &[
            (0, "0B"),
            (1, "1B"),
            (1023, "1023B"),
            (1024, "1KB"),
            (1536, "1.5KB"),
            (20_971_520, "20MB"),
            (1_610_612_736, "1.5GB"),
            (1_073_741_824, "1GB"),
            (1_073_741_825, "1073741825B"),
            (5_368_709_120, "5GB"),
        ];
        for (bytes, text) in table {
            assert_eq!(ByteSize(*bytes).to_string(), *text);
        }
    }

    #[test]
    fn human_text_is_short_for_odd_values() {
        assert_eq!(ByteSize(20_971_520).human(), "20MB");
        assert_eq!(ByteSize(20_971_521).human(), "about 20.00MB");
    }

    proptest! {
        #[test]
        fn display_round_trips(bytes in 0u64..=MAX_BYTES) {
            let size = ByteSize(bytes);
            prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        }

        #[test]
        fn unit_multiples_round_trip(n in 0u64..100_000, power in 0u32..5) {
            let bytes = n * 1024u64.pow(power);
            let size = ByteSize(bytes);
            prop_assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,24}") {
            let _ = text.parse::<ByteSize>();
        }
    }
}
