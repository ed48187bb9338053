//! Timestamps as the WebSocket documents write them.
//!
//! Seed 004 writes `2023-05-23T12:34:56Z`, seed 003 `2023-05-06T13:13:42.637-0400` (an ISO 8601
//! offset without a colon). Both parse; a parsed timestamp keeps its text so that it serializes
//! back exactly as received, and new timestamps are written as RFC 3339 UTC with milliseconds.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant with its textual form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timestamp {
    unix_millis: i64,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a timestamp is written YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|+HHMM)")]
pub struct TimestampError;

impl Timestamp {
    pub fn now() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self::from_unix_millis(millis)
    }

    pub fn from_unix_millis(unix_millis: i64) -> Self {
        let days = unix_millis.div_euclid(86_400_000);
        let ms_of_day = unix_millis.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
        let (min, rest) = (rest / 60_000, rest % 60_000);
        let (s, ms) = (rest / 1000, rest % 1000);
        let text = format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{ms:03}Z");
        Self { unix_millis, text }
    }

    pub fn unix_millis(&self) -> i64 {
        self.unix_millis
    }

    pub fn unix_seconds(&self) -> i64 {
        self.unix_millis.div_euclid(1000)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn parse(s: &str) -> Result<Self, TimestampError> {
        let b = s.as_bytes();
        let num = |range: std::ops::Range<usize>| -> Result<i64, TimestampError> {
            let part = b.get(range).ok_or(TimestampError)?;
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(TimestampError);
            }
            part.iter()
                .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
                .ok_or(TimestampError)
        };
        let sep = |i: usize, c: u8| {
            if b.get(i) == Some(&c) {
                Ok(())
            } else {
                Err(TimestampError)
            }
        };
        let year = num(0..4)?;
        sep(4, b'-')?;
        let month = num(5..7)?;
        sep(7, b'-')?;
        let day = num(8..10)?;
        if !matches!(b.get(10), Some(b'T' | b't')) {
            return Err(TimestampError);
        }
        let hour = num(11..13)?;
        sep(13, b':')?;
        let minute = num(14..16)?;
        sep(16, b':')?;
        let second = num(17..19)?;
        let mut i = 19;
        let mut millis = 0i64;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
            if end == start || end - start > 9 {
                return Err(TimestampError);
            }
            let frac = &b[start..end];
            millis = (0..3).fold(0, |acc, k| {
                acc * 10 + frac.get(k).map_or(0, |d| i64::from(d - b'0'))
            });
            i = end;
        }
        let offset_minutes = match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(&sign @ (b'+' | b'-')) => {
                let oh = num(i + 1..i + 3)?;
                let om = match b.len() - i {
                    6 if b[i + 3] == b':' => num(i + 4..i + 6)?,
                    5 => num(i + 3..i + 5)?,
                    _ => return Err(TimestampError),
                };
                if oh > 23 || om > 59 {
                    return Err(TimestampError);
                }
                let m = oh * 60 + om;
                if sign == b'-' { -m } else { m }
            }
            _ => return Err(TimestampError),
        };
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return Err(TimestampError);
        }
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
        Ok(Self {
            unix_millis: secs * 1000 + millis,
            text: s.to_owned(),
        })
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, TimestampError> {
        Self::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
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
    fn seed_forms() {
        let a = Timestamp::parse("2023-05-23T12:34:56Z").unwrap();
        assert_eq!(a.unix_seconds(), 1_684_845_296);
        let b = Timestamp::parse("2023-05-06T13:13:42.637-0400").unwrap();
        assert_eq!(b.unix_millis(), 1_683_393_222_637);
        let c = Timestamp::parse("2023-05-06T13:13:42.637-04:00").unwrap();
        assert_eq!(b.unix_millis(), c.unix_millis());
        assert_eq!(b.as_str(), "2023-05-06T13:13:42.637-0400");
    }

    #[test]
    fn refusals() {
        for s in [
            "",
            "2023-05-23",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-05-23T24:00:00Z",
            "2023-05-23T12:34:56",
            "2023-05-23T12:34:56+1",
            "2023-05-23T12:34:56.Z",
            "2023-05-23T12:34:56Zjunk",
            "2023-05-23T12:34:56+04:0",
        ] {
            assert!(Timestamp::parse(s).is_err(), "{s:?} accepted");
        }
        assert!(Timestamp::parse("2024-02-29T00:00:00Z").is_ok());
    }

    proptest! {
        #[test]
        fn formatting_parses_back(ms in -62_000_000_000_000i64..250_000_000_000_000) {
            let t = Timestamp::from_unix_millis(ms);
            prop_assert_eq!(Timestamp::parse(t.as_str()).unwrap(), t);
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = Timestamp::parse(&s);
        }

        #[test]
        fn never_panics_near_valid(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,10})?(Z|[+-][0-9:]{0,6})") {
            let _ = Timestamp::parse(&s);
        }
    }
}
