//! Rolling limits out: whether a limit refuses (`enforcement`), and the share of a limit at which
//! an allowed push is warned (`warn_at`), with the `Warning` header values that carry the words.

use std::fmt;
use std::str::FromStr;

/// What a limit does to a push that breaks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Enforcement {
    /// Refuse it: the original product's only behaviour.
    #[default]
    Enforce,
    /// Let it through, tell the client what it would have been refused with, log and count it.
    Warn,
    /// Let it through, log and count it; the client sees nothing.
    DryRun,
}

impl Enforcement {
    /// Every mode, for metrics that pre-register their label values.
    pub const ALL: [Self; 3] = [Self::Enforce, Self::Warn, Self::DryRun];

    /// The spelling in configuration files, logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Warn => "warn",
            Self::DryRun => "dry-run",
        }
    }

    /// Whether a push that breaks the limit is refused.
    pub const fn refuses(self) -> bool {
        matches!(self, Self::Enforce)
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Enforcement {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| {
                format!("unknown enforcement `{text}`; expected enforce, warn or dry-run")
            })
    }
}

/// A share of a limit, written `"90%"` (up to two decimals, more than 0% and at most 100%).
/// Kept in hundredths of a percent so that comparisons are exact integer arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Share {
    basis_points: u32,
}

impl Share {
    const WHOLE: u32 = 10_000;

    /// Whether `value` has reached this share of `limit`.
    pub fn reached(self, value: u64, limit: u64) -> bool {
        u128::from(value) * u128::from(Self::WHOLE)
            >= u128::from(limit) * u128::from(self.basis_points)
    }

    /// `value` as a share of `limit`, rounded down, for messages (`limit` 0 reads as 100%).
    fn percent_of(value: u64, limit: u64) -> u128 {
        if limit == 0 {
            return 100;
        }
        u128::from(value) * 100 / u128::from(limit)
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.basis_points / 100;
        match self.basis_points % 100 {
            0 => write!(f, "{whole}%"),
            hundredths if hundredths % 10 == 0 => write!(f, "{whole}.{}%", hundredths / 10),
            hundredths => write!(f, "{whole}.{hundredths:02}%"),
        }
    }
}

impl FromStr for Share {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "expected a share of the limit such as \"90%\" (more than 0% and at most 100%, up to two decimals), found `{text}`"
            )
        };
        let number = text.strip_suffix('%').ok_or_else(bad)?.trim_end();
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || whole.len() > 3 || !digits(whole) {
            return Err(bad());
        }
        if fraction.len() > 2 || !digits(fraction) || (number.contains('.') && fraction.is_empty())
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let hundredths: u32 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
        let basis_points = whole * 100 + hundredths;
        if basis_points == 0 || basis_points > Self::WHOLE {
            return Err(bad());
        }
        Ok(Self { basis_points })
    }
}

/// The soft-limit warning for an image that reached `share` of its size limit.
pub(crate) fn size_warning(
    image: &str,
    measured: u64,
    limit: u64,
    share: Share,
    rule: &str,
) -> String {
    format!(
        "{image}: the image's layers total {measured} bytes, {pct}% of the limit of {limit} bytes set by {rule} (warn_at {share}); a push over the limit will be refused",
        pct = Share::percent_of(measured, limit),
    )
}

/// The soft-limit warning for a repository whose tag count reached `share` of its limit.
pub(crate) fn tag_warning(
    repository: &str,
    after: u64,
    limit: u64,
    share: Share,
    rule: &str,
) -> String {
    format!(
        "{repository} now has {after} of its {limit} tag{s} ({rule}, warn_at {share}); a push of a new tag beyond {limit} will be refused. Delete tags you no longer need",
        s = if limit == 1 { "" } else { "s" },
    )
}

/// What a client reads when a limit it broke is not enforced yet (`warn`).
pub(crate) fn waived_warning(message: &str) -> String {
    format!(
        "this push breaks a limit that is not enforced yet (enforcement: warn); once it is: {message}"
    )
}

/// The most warning data a registry may send, over every `Warning` header of a response.
pub const MAX_WARNING_BYTES: usize = 4096;

/// `Warning` header values for `texts`: `299 - "<text>"`, code 299 and agent `-` with no date, as
/// the distribution spec requires. Quotes and backslashes are escaped, anything but printable
/// ASCII becomes `?` (header values are not UTF-8), and texts are shortened so that all values
/// together stay within [`MAX_WARNING_BYTES`].
pub fn warning_headers(texts: &[String]) -> Vec<String> {
    const FRAME: usize = "299 - \"\"".len();
    const ELLIPSIS: &str = "...";
    let mut budget = MAX_WARNING_BYTES;
    let mut values = Vec::with_capacity(texts.len());
    for text in texts {
        if budget <= FRAME + ELLIPSIS.len() {
            break;
        }
        let room = budget - FRAME;
        let mut quoted = String::with_capacity(text.len().min(room));
        let mut cut = false;
        for c in text.chars() {
            let (first, second) = match c {
                '"' | '\\' => ('\\', Some(c)),
                ' '..='~' => (c, None),
                _ => ('?', None),
            };
            let width = 1 + usize::from(second.is_some());
            if quoted.len() + width > room - ELLIPSIS.len() {
                cut = true;
                break;
            }
            quoted.push(first);
            quoted.extend(second);
        }
        if cut {
            quoted.push_str(ELLIPSIS);
        }
        let value = format!("299 - \"{quoted}\"");
        budget -= value.len();
        values.push(value);
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforcement_spellings() {
        for mode in Enforcement::ALL {
            assert_eq!(mode.as_str().parse::<Enforcement>(), Ok(mode));
        }
        for bad in ["Enforce", "dry_run", "dryrun", "", "off"] {
            let e = bad.parse::<Enforcement>().unwrap_err();
            assert!(e.contains("expected enforce, warn or dry-run"), "{e}");
        }
        assert_eq!(Enforcement::default(), Enforcement::Enforce);
    }

    #[test]
    fn shares_parse_exactly() {
        let ok = [
            ("90%", 9000, "90%"),
            ("100%", 10_000, "100%"),
            ("0.01%", 1, "0.01%"),
            ("99.5%", 9950, "99.5%"),
            ("12.34%", 1234, "12.34%"),
            ("7 %", 700, "7%"),
        ];
        for (text, bp, shown) in ok {
            let share: Share = text.parse().unwrap();
            assert_eq!(share.basis_points, bp, "{text}");
            assert_eq!(share.to_string(), shown);
        }
        for bad in [
            "90", "0%", "0.00%", "100.01%", "101%", "-5%", "1.234%", "%", ".5%", "5.%", "ninety%",
            "90%%", "1e2%", "", "+5%",
        ] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reached_is_exact_at_the_threshold() {
        let share: Share = "90%".parse().unwrap();
        assert!(share.reached(9, 10));
        assert!(!share.reached(8, 10));
        assert!(share.reached(900, 1000));
        assert!(!share.reached(899, 1000));
        assert!(share.reached(u64::MAX, u64::MAX));
        let third: Share = "33.33%".parse().unwrap();
        assert!(third.reached(3333, 10_000));
        assert!(!third.reached(3332, 10_000));
    }

    #[test]
    fn warning_values_are_quoted_and_bounded() {
        let values = warning_headers(&["say \"hi\" \\ ok é".to_owned()]);
        assert_eq!(
            values,
            vec!["299 - \"say \\\"hi\\\" \\\\ ok ?\"".to_owned()]
        );
        let long = vec!["x".repeat(5000), "y".repeat(5000), "z".to_owned()];
        let values = warning_headers(&long);
        let total: usize = values.iter().map(String::len).sum();
        assert!(total <= MAX_WARNING_BYTES, "{total}");
        assert!(values[0].ends_with("...\""));
        assert!(values.iter().all(|v| v.starts_with("299 - \"")));
        // Escapes are never split in half.
        let quotes = vec!["\"".repeat(3000)];
        let value = &warning_headers(&quotes)[0];
        assert!(value.len() <= MAX_WARNING_BYTES);
        assert!(value.ends_with("...\""));
        assert!(!value.trim_end_matches("...\"").ends_with("\\\\\""));
    }
}
