//! Rate strings (`"500/min"`, `"30k/min"`, `"1.5M/day"`, `"100/10s"`) and durations.

use crate::error::{CoreError, Result};

const NS_PER_S: u64 = 1_000_000_000;

/// `amount` units per `period_ns`, as written by the user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub amount: f64,
    pub period_ns: u64,
}

impl Rate {
    /// Parses `N/unit` where `N` may carry a `k`, `M` or `G` suffix and `unit` is
    /// `s|sec|second|m|min|minute|h|hour|d|day` (plurals accepted), optionally preceded by a
    /// count (`100/10s`).
    pub fn parse(text: &str) -> Result<Rate> {
        let bad = |why: &str| {
            CoreError::Config(format!(
                "malformed rate {text:?}: {why} (expected N/unit such as \"500/min\" or \"30k/min\"; units: s, min, h, day)"
            ))
        };
        let (amount_text, period_text) = text.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let amount = parse_amount(amount_text.trim()).map_err(|why| bad(&why))?;
        if amount <= 0.0 {
            return Err(bad("the amount must be positive"));
        }
        let period_ns = parse_duration_ns(period_text).map_err(|why| bad(&why))?;
        Ok(Rate { amount, period_ns })
    }
}

/// A number with an optional `k`/`M`/`G` (thousand, million, billion) suffix.
pub fn parse_amount(text: &str) -> std::result::Result<f64, String> {
    let text = text.trim().replace('_', "");
    let (digits, scale) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 1e3),
        Some('m' | 'M') => (&text[..text.len() - 1], 1e6),
        Some('g' | 'G' | 'b' | 'B') => (&text[..text.len() - 1], 1e9),
        _ => (text.as_str(), 1.0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{text:?} is not a number"));
    }
    let value: f64 = digits.parse().map_err(|_| format!("{text:?} is not a number"))?;
    let value = value * scale;
    if !value.is_finite() || value > 1e18 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(value)
}

/// A duration such as `min`, `10s`, `1.5h`, `500ms`, `2 days` (a bare unit means one of it).
pub fn parse_duration_ns(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit"))?;
    let (count_text, unit) = text.split_at(split);
    let count: f64 = if count_text.is_empty() {
        1.0
    } else {
        count_text
            .parse()
            .map_err(|_| format!("{count_text:?} is not a number"))?
    };
    let unit_ns: u64 = match unit.trim() {
        "ms" | "msec" | "millisecond" | "milliseconds" => NS_PER_S / 1000,
        "s" | "sec" | "secs" | "second" | "seconds" => NS_PER_S,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * NS_PER_S,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600 * NS_PER_S,
        "d" | "day" | "days" => 86_400 * NS_PER_S,
        "w" | "week" | "weeks" => 7 * 86_400 * NS_PER_S,
        other => return Err(format!("unknown unit {other:?}")),
    };
    let ns = count * unit_ns as f64;
    // Ten years: anything longer is a typo, and keeps every later product inside u64.
    if !(1.0..=3650.0 * 86_400.0 * 1e9).contains(&ns) {
        return Err(format!("duration {text:?} is out of range (1ns to 10 years)"));
    }
    Ok(ns.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let r = Rate::parse("500/min").unwrap();
        assert_eq!((r.amount, r.period_ns), (500.0, 60 * NS_PER_S));
        assert_eq!(Rate::parse("30k/min").unwrap().amount, 30_000.0);
        assert_eq!(Rate::parse("1.5M/day").unwrap().amount, 1_500_000.0);
        assert_eq!(Rate::parse("100/10s").unwrap().period_ns, 10 * NS_PER_S);
        assert_eq!(Rate::parse(" 7 / second ").unwrap().period_ns, NS_PER_S);
        assert_eq!(Rate::parse("1/h").unwrap().period_ns, 3600 * NS_PER_S);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "500",
            "/min",
            "abc/min",
            "-5/min",
            "0/min",
            "5/lightyear",
            "5/0s",
            "nan/s",
            "inf/s",
            "1e400/s",
            "5/min/min",
            "1..2/s",
            "5/-1s",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
