use std::time::Duration;

/// Parses `90`, `90s`, `30m`, `24h` or `7d`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 30m, 24h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h or d")),
    };
    let secs = n
        .checked_mul(mult)
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("{s:?} is not a positive duration that fits"))?;
    Ok(Duration::from_secs(secs))
}

/// A time limit that may be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<Duration>);

/// [`parse`], or `never` for no limit.
pub fn parse_or_never(s: &str) -> Result<Limit, String> {
    match s.trim() {
        "never" => Ok(Limit(None)),
        other => parse(other).map(|d| Limit(Some(d))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse("0s").is_err());
        assert!(parse("1y").is_err());
        assert!(parse("h").is_err());
        assert_eq!(parse_or_never("never").unwrap(), Limit(None));
        assert_eq!(
            parse_or_never("2h").unwrap(),
            Limit(Some(Duration::from_secs(7200)))
        );
    }
}
