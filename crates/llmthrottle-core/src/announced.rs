//! What a provider's response headers announce of its rate limits: the one reader of their
//! names and formats, used by every way in (the wrapped SDK clients, the gateway, the batch
//! runner).
//!
//! - OpenAI: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as durations
//!   (`6m0s`, `1.5s`, `20ms`, `1h2m3s`), per minute.
//! - Azure OpenAI: the same names; requests counted per 10 seconds, resets also in plain seconds.
//! - Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
//!   remaining,reset}`, resets as RFC 3339 instants.
//!
//! A response carries a dozen or more headers; one pass over them finds every limit header by
//! its name in any case. A value that is not a plain ASCII count (Azure sometimes sends `-1`)
//! announces nothing; a reset that cannot be read is `None`.

/// Whose headers: each names and counts its limits its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderFamily {
    OpenAi,
    Azure,
    Anthropic,
}

/// One announced limit: `limit` of `dimension` per `window_s`, `remaining` of it now, whole
/// again in `reset_s` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Announced {
    pub dimension: &'static str,
    pub limit: u64,
    pub remaining: u64,
    pub reset_s: Option<f64>,
    pub window_s: f64,
}

/// (dimension, limit header, remaining header, reset header), lower case.
type Names = (&'static str, &'static str, &'static str, &'static str);

// Azure OpenAI sends OpenAI's names.
const OPENAI: [Names; 2] = [
    (
        "requests",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ),
    (
        "tokens",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ),
];

const ANTHROPIC: [Names; 4] = [
    (
        "requests",
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
    (
        "tokens",
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ),
    (
        "input_tokens",
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    (
        "output_tokens",
        "anthropic-ratelimit-output-tokens-limit",
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ),
];

impl HeaderFamily {
    /// The family of a provider name (`"openai"`, `"azure"`, `"anthropic"`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "openai" => Some(Self::OpenAi),
            "azure" => Some(Self::Azure),
            "anthropic" => Some(Self::Anthropic),
            _ => None,
        }
    }

    fn names(self) -> &'static [Names] {
        match self {
            Self::OpenAi | Self::Azure => &OPENAI,
            Self::Anthropic => &ANTHROPIC,
        }
    }

    /// The window a limit of `dimension` is announced over: Azure announces its requests per
    /// 10 seconds (a 120 RPM deployment says `x-ratelimit-limit-requests: 20`), every other
    /// limit is per minute.
    fn window_s(self, dimension: &str) -> f64 {
        if self == Self::Azure && dimension == "requests" {
            10.0
        } else {
            60.0
        }
    }

    fn prefix(self) -> &'static [u8] {
        match self {
            Self::Anthropic => b"anthropic-ratelimit-",
            Self::OpenAi | Self::Azure => b"x-ratelimit-",
        }
    }
}

/// The values of one response's limit headers, filled one header at a time.
#[derive(Default)]
pub struct LimitHeaders<'a> {
    values: [Option<&'a [u8]>; 12],
}

impl<'a> LimitHeaders<'a> {
    /// Notes one header (a later one of the same name wins, as in a mapping of headers).
    pub fn see(&mut self, family: HeaderFamily, name: &[u8], value: &'a [u8]) {
        let prefix = family.prefix();
        if name.len() <= prefix.len() || !name[..prefix.len()].eq_ignore_ascii_case(prefix) {
            return;
        }
        for (position, names) in family.names().iter().enumerate() {
            for (field, wanted) in [names.1, names.2, names.3].iter().enumerate() {
                if name.eq_ignore_ascii_case(wanted.as_bytes()) {
                    self.values[3 * position + field] = Some(value);
                    return;
                }
            }
        }
    }

    /// The limits announced, in the family's order; `now_unix_s` reads Anthropic's instants.
    pub fn announced(&self, family: HeaderFamily, now_unix_s: f64) -> Vec<Announced> {
        let mut found = Vec::new();
        for (position, &(dimension, ..)) in family.names().iter().enumerate() {
            let (Some(limit), Some(remaining)) = (
                self.values[3 * position].and_then(parse_count),
                self.values[3 * position + 1].and_then(parse_count),
            ) else {
                continue;
            };
            let reset_s = self.values[3 * position + 2].and_then(|reset| match family {
                HeaderFamily::Anthropic => parse_rfc3339(reset).map(|at| (at - now_unix_s).max(0.0)),
                HeaderFamily::OpenAi | HeaderFamily::Azure => parse_reset_duration(reset),
            });
            found.push(Announced {
                dimension,
                limit,
                remaining,
                reset_s,
                window_s: family.window_s(dimension),
            });
        }
        found
    }
}

fn trim(text: &[u8]) -> &[u8] {
    let start = text.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &text[start..end]
}

/// A plain ASCII count (at most 18 digits, surrounding whitespace allowed).
pub fn parse_count(text: &[u8]) -> Option<u64> {
    let text = trim(text);
    if text.is_empty() || text.len() > 18 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u64, |total, &digit| {
        total.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// `digits` or `digits.digits` at the start of `text`: (value, bytes read).
fn decimal(text: &[u8]) -> Option<(f64, usize)> {
    let whole = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if whole == 0 {
        return None;
    }
    let mut end = whole;
    if text.get(whole) == Some(&b'.') {
        let fraction = text[whole + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if fraction > 0 {
            end = whole + 1 + fraction;
        }
    }
    let value: f64 = std::str::from_utf8(&text[..end]).ok()?.parse().ok()?;
    Some((value, end))
}

/// An `x-ratelimit-reset-*` value in seconds: OpenAI's durations (`6m0s`, `1.5s`, `20ms`,
/// `1h2m3s`) or Azure's plain seconds (`45`); None if malformed.
pub fn parse_reset_duration(text: &[u8]) -> Option<f64> {
    let text = trim(text);
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    if let Some((seconds, read)) = decimal(text) {
        if read == text.len() {
            return Some(seconds);
        }
    }
    let (mut total, mut at) = (0.0, 0);
    while at < text.len() {
        let (value, read) = decimal(&text[at..])?;
        at += read;
        let rest = &text[at..];
        let (unit, scale) = if rest.starts_with(b"ms") {
            (2, 1e-3)
        } else {
            match rest.first() {
                Some(b'h') => (1, 3600.0),
                Some(b'm') => (1, 60.0),
                Some(b's') => (1, 1.0),
                _ => return None,
            }
        };
        at += unit;
        total += value * scale;
    }
    Some(total)
}

fn digits(text: &[u8], at: usize, count: usize) -> Option<i64> {
    let part = text.get(at..at + count)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(part.iter().fold(0, |total, &d| total * 10 + i64::from(d - b'0')))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// An RFC 3339 instant (`2026-12-06T22:38:05Z`, with optional fractional seconds and a `Z` or
/// `+hh:mm` offset; none means UTC) as seconds since the Unix epoch; None if malformed.
pub fn parse_rfc3339(text: &[u8]) -> Option<f64> {
    let text = trim(text);
    if text.len() < 16 || text.len() > 64 {
        return None;
    }
    let (year, month, day) = (digits(text, 0, 4)?, digits(text, 5, 2)?, digits(text, 8, 2)?);
    if text[4] != b'-' || text[7] != b'-' || !matches!(text[10], b'T' | b't' | b' ') {
        return None;
    }
    let (hour, minute) = (digits(text, 11, 2)?, digits(text, 14, 2)?);
    if text[13] != b':' {
        return None;
    }
    let mut at = 16;
    let mut second = 0.0;
    if text.get(at) == Some(&b':') {
        let whole = digits(text, at + 1, 2)?;
        at += 3;
        let mut fraction = 0.0;
        if text.get(at) == Some(&b'.') {
            let (value, read) = decimal(&text[at - 2..])?; // "ss.fff" as one decimal
            if read <= 3 {
                return None;
            }
            fraction = value - whole as f64;
            at += read - 2;
        }
        second = whole as f64 + fraction;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second >= 60.0
    {
        return None;
    }
    let offset_s = match &text[at..] {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (hours, minutes) = match rest {
                [_, _, b':', _, _] => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                [_, _, _, _] => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    let whole = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 - offset_s;
    Some(whole as f64 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(family: HeaderFamily, headers: &[(&str, &str)], now: f64) -> Vec<Announced> {
        let mut seen = LimitHeaders::default();
        for (name, value) in headers {
            seen.see(family, name.as_bytes(), value.as_bytes());
        }
        seen.announced(family, now)
    }

    #[test]
    fn openai_limits_in_any_case_with_duration_resets() {
        let found = announced(
            HeaderFamily::OpenAi,
            &[
                ("X-RateLimit-Limit-Requests", "500"),
                ("x-ratelimit-remaining-requests", " 499 "),
                ("x-ratelimit-reset-requests", "120ms"),
                ("x-ratelimit-limit-tokens", "30000"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("X-RATELIMIT-RESET-TOKENS", "6m0s"),
                ("content-type", "application/json"),
            ],
            0.0,
        );
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].dimension, found[0].limit, found[0].remaining),
            ("requests", 500, 499)
        );
        assert!((found[0].reset_s.unwrap() - 0.12).abs() < 1e-12);
        assert_eq!(
            (found[1].limit, found[1].remaining, found[1].reset_s),
            (30000, 0, Some(360.0))
        );
    }

    #[test]
    fn azure_counts_requests_per_ten_seconds_and_skips_minus_one() {
        let found = announced(
            HeaderFamily::Azure,
            &[
                ("x-ratelimit-limit-requests", "20"),
                ("x-ratelimit-remaining-requests", "19"),
                ("x-ratelimit-reset-requests", "45"),
                ("x-ratelimit-limit-tokens", "-1"),
                ("x-ratelimit-remaining-tokens", "-1"),
            ],
            0.0,
        );
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].window_s, found[0].reset_s), (10.0, Some(45.0)));
    }

    #[test]
    fn anthropic_resets_are_instants() {
        let now = parse_rfc3339(b"2026-12-06T22:38:05Z").unwrap();
        let found = announced(
            HeaderFamily::Anthropic,
            &[
                ("anthropic-ratelimit-input-tokens-limit", "40000"),
                ("anthropic-ratelimit-input-tokens-remaining", "39000"),
                ("anthropic-ratelimit-input-tokens-reset", "2026-12-06T22:38:17.5Z"),
                ("x-ratelimit-limit-requests", "5"),
            ],
            now,
        );
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].dimension, found[0].reset_s), ("input_tokens", Some(12.5)));
    }

    #[test]
    fn counts_are_plain_ascii_digits() {
        assert_eq!(parse_count(b"42"), Some(42));
        assert_eq!(parse_count(b"999999999999999999"), Some(999_999_999_999_999_999));
        for bad in [
            &b""[..],
            b"-1",
            b"1e3",
            b"\xb2",
            b"1\xb2",
            b"1234567890123456789",
            b"4 2",
        ] {
            assert_eq!(parse_count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        for (text, seconds) in [
            ("6m0s", 360.0),
            ("1.5s", 1.5),
            ("20ms", 0.02),
            ("1h2m3s", 3723.0),
            ("45", 45.0),
            ("2.5", 2.5),
            ("1m30s", 90.0),
        ] {
            assert!(
                (parse_reset_duration(text.as_bytes()).unwrap() - seconds).abs() < 1e-9,
                "{text}"
            );
        }
        for bad in ["", "s", "1x", "ms", "1.s", "-1s", "1s2", "1 s", &"1".repeat(65)] {
            assert_eq!(parse_reset_duration(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn instants() {
        assert_eq!(parse_rfc3339(b"1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339(b"1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(parse_rfc3339(b"1969-12-31T23:00:00-0100"), Some(0.0));
        assert_eq!(parse_rfc3339(b"2000-03-01T00:00:00"), Some(951_868_800.0));
        assert_eq!(parse_rfc3339(b"2024-02-29 12:00"), Some(1_709_208_000.0));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-12-06T24:00:00Z",
            "2026-12-06T22:38:60Z",
            "2026-12-06T22:38:05.Z",
            "2026-12-06T22:38:05Q",
            "2026-12-06",
            "yesterday at noon",
        ] {
            assert_eq!(parse_rfc3339(bad.as_bytes()), None, "{bad}");
        }
    }
}
