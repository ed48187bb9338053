//! Byte sizes written the way Docker writes them (`"16g"`, `"512m"`), binary units.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes. Parses `<digits>[b|k|m|g|t][b]`, case-insensitive, with 1024-based units;
/// formats in the largest unit that divides it evenly (`16g` stays `16g`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("a size is a number followed by an optional unit b, k, m, g or t")]
    Syntax,
    #[error("a size must be larger than zero")]
    Zero,
    #[error("the size does not fit in 64 bits")]
    Overflow,
}

const UNITS: [(char, u64); 5] = [
    ('t', 1 << 40),
    ('g', 1 << 30),
    ('m', 1 << 20),
    ('k', 1 << 10),
    ('b', 1),
];

impl ByteSize {
    pub const fn bytes(n: u64) -> Self {
        Self(n)
    }

    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }

    pub const fn as_bytes(self) -> u64 {
        self.0
    }

    pub const fn as_mib(self) -> u64 {
        self.0 >> 20
    }

    pub fn parse(s: &str) -> Result<Self, SizeError> {
        let lower = s.trim().to_ascii_lowercase();
        let digits_end = lower
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(lower.len());
        let (digits, unit) = lower.split_at(digits_end);
        if digits.is_empty() {
            return Err(SizeError::Syntax);
        }
        let unit = unit
            .strip_suffix('b')
            .filter(|u| !u.is_empty())
            .unwrap_or(unit);
        let mult = match unit {
            "" | "b" => 1,
            u => {
                let mut chars = u.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => UNITS
                        .iter()
                        .find(|(name, _)| *name == c)
                        .map(|(_, m)| *m)
                        .ok_or(SizeError::Syntax)?,
                    _ => return Err(SizeError::Syntax),
                }
            }
        };
        let n: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
        let bytes = n.checked_mul(mult).ok_or(SizeError::Overflow)?;
        if bytes == 0 {
            return Err(SizeError::Zero);
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, mult) = UNITS
            .iter()
            .find(|(_, m)| self.0.is_multiple_of(*m))
            .copied()
            .unwrap_or(('b', 1));
        if unit == 'b' {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}{}", self.0 / mult, unit)
        }
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, SizeError> {
        Self::parse(s)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn docker_forms() {
        assert_eq!(ByteSize::parse("16g").unwrap(), ByteSize::gib(16));
        assert_eq!(ByteSize::parse("16GB").unwrap(), ByteSize::gib(16));
        assert_eq!(ByteSize::parse("512m").unwrap().as_mib(), 512);
        assert_eq!(ByteSize::parse("4096").unwrap().as_bytes(), 4096);
        assert_eq!(ByteSize::parse("1b").unwrap().as_bytes(), 1);
        assert_eq!(ByteSize::gib(16).to_string(), "16g");
        assert_eq!(ByteSize::mib(1536).to_string(), "1536m");
        assert_eq!(ByteSize::bytes(1000).to_string(), "1000");
    }

    #[test]
    fn refusals() {
        assert_eq!(ByteSize::parse("g"), Err(SizeError::Syntax));
        assert_eq!(ByteSize::parse("16x"), Err(SizeError::Syntax));
        assert_eq!(ByteSize::parse("16gg"), Err(SizeError::Syntax));
        assert_eq!(ByteSize::parse("-1g"), Err(SizeError::Syntax));
        assert_eq!(ByteSize::parse("0m"), Err(SizeError::Zero));
        assert_eq!(ByteSize::parse("99999999999t"), Err(SizeError::Overflow));
    }

    proptest! {
        #[test]
        fn display_parses_back(n in 1u64..u64::MAX) {
            let s = ByteSize::bytes(n);
            prop_assert_eq!(ByteSize::parse(&s.to_string()).unwrap(), s);
        }

        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = ByteSize::parse(&s);
        }
    }
}
