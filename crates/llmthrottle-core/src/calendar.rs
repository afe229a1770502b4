//! Calendar periods (UTC) for quotas that reset on the day, week or month boundary.

use crate::error::{CoreError, Result};

const NS_PER_DAY: u64 = 86_400 * 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// Resets at 00:00 UTC.
    Day,
    /// Resets on Monday 00:00 UTC.
    Week,
    /// Resets on the first of the month, 00:00 UTC.
    Month,
    /// Resets every `n` nanoseconds counted from the Unix epoch.
    Fixed(u64),
}

/// The accepted forms, as every error about a period names them.
pub const PERIOD_FORMS: &str =
    "day, week or month (calendar, UTC; also daily/weekly/monthly, d/w/mo) or a duration such as 12h, 30d or 2w";

impl Period {
    /// The one period grammar, shared by quotas, budgets, the policy file and reports:
    /// `day|daily|d`, `week|weekly|w`, `month|monthly|mo` are calendar periods (UTC); anything
    /// else must be a duration (`12h`, `30d`, `2w`), kept as `Fixed`. What a duration means is
    /// the caller's: a quota resets every `n` ns from the epoch, a budget drains over a rolling
    /// window of `n` ns.
    pub fn parse(text: &str) -> Result<Period> {
        match text.trim().to_ascii_lowercase().as_str() {
            "day" | "daily" | "d" => Ok(Period::Day),
            "week" | "weekly" | "w" => Ok(Period::Week),
            "month" | "monthly" | "mo" => Ok(Period::Month),
            other => crate::rate::parse_duration_ns(other)
                .map(Period::Fixed)
                .map_err(|_| CoreError::Config(format!("unknown period {text:?}: use {PERIOD_FORMS}"))),
        }
    }

    /// A period for a quota: `parse`, and at least an hour long.
    pub fn parse_quota(text: &str) -> Result<Period> {
        let period = Period::parse(text)?;
        // Cells tell periods apart by a 16-bit tag, which repeats after 65,536 periods:
        // an hour's period repeats after 7.5 years, a second's after 18 hours.
        if let Period::Fixed(ns) = period {
            if ns < 3_600_000_000_000 {
                return Err(CoreError::Config(format!(
                    "quota period {text:?} is shorter than an hour: use a rate such as \"N/{}\" for short windows",
                    text.trim()
                )));
            }
        }
        Ok(period)
    }

    /// True for the calendar periods (day, week, month).
    pub fn is_calendar(self) -> bool {
        !matches!(self, Period::Fixed(_))
    }

    /// The index of the period containing `wall_ns` (consecutive periods have consecutive indexes).
    // Not inlined: inlined into a decision's loop over limits, the compiler computed every
    // kind of period (the month's date arithmetic included) before the loop, for every
    // decision, even when no limit was a quota.
    #[inline(never)]
    pub fn index(self, wall_ns: u64) -> u64 {
        match self {
            Period::Day => wall_ns / NS_PER_DAY,
            // 1970-01-01 was a Thursday: shifting by three days puts week boundaries on Mondays.
            Period::Week => (wall_ns / NS_PER_DAY + 3) / 7,
            Period::Month => {
                let (year, month, _) = civil_from_days((wall_ns / NS_PER_DAY) as i64);
                (year as u64) * 12 + (month as u64 - 1)
            }
            Period::Fixed(ns) => wall_ns / ns,
        }
    }

    /// Wall-clock nanoseconds at which period `index` begins.
    pub fn start_ns(self, index: u64) -> u64 {
        match self {
            Period::Day => index.saturating_mul(NS_PER_DAY),
            Period::Week => (index.saturating_mul(7)).saturating_sub(3).saturating_mul(NS_PER_DAY),
            Period::Month => {
                // Held far above the last year whose start fits in u64 ns (2554), so that the
                // date arithmetic cannot overflow; the product below saturates anyway.
                let year = (index / 12).min(1 << 32) as i64;
                let month = (index % 12) as u32 + 1;
                (days_from_civil(year, month, 1).max(0) as u64).saturating_mul(NS_PER_DAY)
            }
            Period::Fixed(ns) => index.saturating_mul(ns),
        }
    }

    /// Nanoseconds from `wall_ns` until the current period ends.
    pub fn remaining_ns(self, wall_ns: u64) -> u64 {
        self.start_ns(self.index(wall_ns).saturating_add(1))
            .saturating_sub(wall_ns)
    }
}

// Howard Hinnant's proleptic Gregorian conversions (public domain algorithms).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn civil_round_trip() {
        // Every day of ±2,000 years natively; a spread sample of them under miri.
        for days in (-800_000..800_000i64).step_by(if cfg!(miri) { 997 } else { 1 }) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn month_boundaries() {
        // 2026-01-31T23:59:59Z and 2026-02-01T00:00:00Z
        let jan31 = 1_769_903_999 * S;
        let feb1 = 1_769_904_000 * S;
        assert_eq!(Period::Month.index(feb1), Period::Month.index(jan31) + 1);
        assert_eq!(Period::Month.remaining_ns(jan31), S);
        assert_eq!(Period::Month.start_ns(Period::Month.index(feb1)), feb1);
    }

    #[test]
    fn week_starts_on_monday() {
        // 2026-11-23 is a Monday.
        let monday = 1_795_392_000 * S;
        assert_eq!(Period::Week.index(monday), Period::Week.index(monday - 1) + 1);
        assert_eq!(Period::Week.start_ns(Period::Week.index(monday)), monday);
    }

    #[test]
    fn day_and_fixed() {
        assert_eq!(Period::Day.remaining_ns(86_400 * S - 5), 5);
        assert_eq!(Period::Fixed(10).index(25), 2);
        assert_eq!(Period::Fixed(10).remaining_ns(25), 5);
        assert_eq!(Period::parse("12h").unwrap(), Period::Fixed(12 * 3_600_000_000_000));
    }

    #[test]
    fn one_grammar_for_every_period() {
        for (text, period) in [
            ("day", Period::Day),
            ("Daily", Period::Day),
            ("d", Period::Day),
            ("week", Period::Week),
            ("weekly", Period::Week),
            ("w", Period::Week),
            ("month", Period::Month),
            (" monthly ", Period::Month),
            ("mo", Period::Month),
        ] {
            assert_eq!(Period::parse(text).unwrap(), period, "{text}");
            assert!(period.is_calendar());
        }
        assert_eq!(Period::parse("30m").unwrap(), Period::Fixed(30 * 60 * S));
        assert_eq!(Period::parse("2w").unwrap(), Period::Fixed(14 * 86_400 * S));
        assert!(!Period::parse("30d").unwrap().is_calendar());
        let err = Period::parse("fortnight").unwrap_err().to_string();
        assert!(
            err.contains("unknown period \"fortnight\"") && err.contains(PERIOD_FORMS),
            "{err}"
        );
        // Quotas need an hour at least; the grammar itself does not.
        assert!(Period::parse_quota("30m")
            .unwrap_err()
            .to_string()
            .contains("shorter than an hour"));
        assert_eq!(Period::parse_quota("daily").unwrap(), Period::Day);
    }
}
