//! Calendar durations in restic's syntax: `1y5m7d2h` is one year, five
//! **months**, seven days and two hours.
//!
//! restic's `Duration` (`internal/restic/duration.go`) is what `--keep-within`
//! and its `-hourly` to `-yearly` forms take, and what the agent's
//! `[retention]` table and `find --newer/--older` take here. It is not a
//! number of seconds: it is applied on the calendar, as Go's
//! `t.AddDate(-y, -m, -d).Add(-h hours)` does (in UTC here), so a month back
//! from 31 March is "31 February", which Go normalizes to 3 March (2 March in
//! a leap year), and a year back from 29 February 2024 is 1 March 2023.
//!
//! # Syntax
//!
//! One or more `<number><unit>` pairs, in any order, with units `y`
//! (years), `m` (months), `d` (days) and `h` (hours); each number is a
//! non-negative decimal integer of ASCII digits, at most 4294967295.
//! Whitespace around the whole is ignored (restic trims it). Refused:
//! the empty string, a number without a unit (`5`), an unknown unit (`5x`,
//! `5s`, `5w`), a unit without a number (`m`), a sign (`-1d`, `+1d`),
//! a fraction (`1.5d`) and inner whitespace (`5 d`). A unit given twice
//! takes the last value (`1d2d` is two days), as restic's parser does.
//! A zero duration (`0d`) is valid and turns a rule off.
//!
//! Nothing here reads the clock: [`CalendarDuration::before`] takes the
//! time to count back from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nanoseconds in an hour.
const HOUR_NS: i128 = 3_600_000_000_000;
/// Nanoseconds in a day.
const DAY_NS: i64 = 86_400_000_000_000;

/// A span of years, months, days and hours, applied on the UTC calendar
/// (restic's `Duration`). The default is zero, which rules treat as "off".
///
/// In TOML and JSON it is a string in restic's syntax (`"6m"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CalendarDuration {
    /// Whole years.
    pub years: u32,
    /// Whole months.
    pub months: u32,
    /// Whole days.
    pub days: u32,
    /// Whole hours.
    pub hours: u32,
}

/// A string that is not a duration in restic's syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing (or only whitespace) was given.
    #[error("an empty duration: give one like 7d, 6m (months), 12h or 1y5m7d2h")]
    Empty,
    /// A place where a number must start holds something else (a sign, a
    /// dot, a letter, a space).
    #[error(
        "{text:?} is not a duration: expected a number at {found:?} (durations look like 1y5m7d2h)"
    )]
    NoNumber {
        /// The whole text.
        text: String,
        /// What stands where the number should.
        found: char,
    },
    /// A number ends the text.
    #[error("{text:?} is not a duration: {number} has no unit (y, m for months, d or h)")]
    NoUnit {
        /// The whole text.
        text: String,
        /// The number without a unit.
        number: String,
    },
    /// A number is followed by something other than `y`, `m`, `d`, `h`.
    #[error(
        "{text:?} is not a duration: unknown unit {unit:?} after {number} (y, m for months, d or h)"
    )]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The number before it.
        number: String,
        /// The character found.
        unit: char,
    },
    /// A number above 4294967295.
    #[error("{text:?} is not a duration: {number} is too large")]
    TooLarge {
        /// The whole text.
        text: String,
        /// The number.
        number: String,
    },
}

impl CalendarDuration {
    /// True when every part is zero: a rule with this duration is off.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The instant this duration before `time_ns` (ns since the Unix epoch),
    /// in ns since the epoch: years, months and days are taken off the UTC
    /// calendar date (a day of the month past the month's end runs into the
    /// next month, as Go's `AddDate` does), then the hours off the result.
    /// Wider than `i64` so that no input overflows; the result may lie
    /// before 1677.
    pub fn before(&self, time_ns: i64) -> i128 {
        let day = time_ns.div_euclid(DAY_NS);
        let time_of_day = i128::from(time_ns.rem_euclid(DAY_NS));
        let (year, month, mday) = civil_from_days(day);
        // Months since year 0, in i64: years up to u32::MAX times 12 fit.
        let months =
            year * 12 + i64::from(month) - 1 - i64::from(self.years) * 12 - i64::from(self.months);
        let first = days_from_civil(
            months.div_euclid(12),
            // Invariant: rem_euclid(12) is in 0..12.
            months.rem_euclid(12) as u32 + 1,
            1,
        );
        let day = first + i64::from(mday) - 1 - i64::from(self.days);
        i128::from(day) * i128::from(DAY_NS) + time_of_day - i128::from(self.hours) * HOUR_NS
    }
}

impl FromStr for CalendarDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, DurationError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let mut d = Self::default();
        let mut rest = s;
        while !rest.is_empty() {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (number, after) = rest.split_at(end);
            if number.is_empty() {
                return Err(DurationError::NoNumber {
                    text: text.to_owned(),
                    // Invariant: `rest` is not empty.
                    found: after.chars().next().unwrap_or(' '),
                });
            }
            let mut chars = after.chars();
            let Some(unit) = chars.next() else {
                return Err(DurationError::NoUnit {
                    text: text.to_owned(),
                    number: number.to_owned(),
                });
            };
            let n: u32 = number.parse().map_err(|_| DurationError::TooLarge {
                text: text.to_owned(),
                number: number.to_owned(),
            })?;
            let slot = match unit {
                'y' => &mut d.years,
                'm' => &mut d.months,
                'd' => &mut d.days,
                'h' => &mut d.hours,
                _ => {
                    return Err(DurationError::UnknownUnit {
                        text: text.to_owned(),
                        number: number.to_owned(),
                        unit,
                    });
                }
            };
            *slot = n;
            rest = chars.as_str();
        }
        Ok(d)
    }
}

impl fmt::Display for CalendarDuration {
    /// restic's form: the non-zero parts in the order y, m, d, h (`1y5m`);
    /// zero is `0h`, so that every output parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0h");
        }
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for CalendarDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CalendarDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = CalendarDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"7d\", \"6m\" (months) or \"1y5m7d2h\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CalendarDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Days since 1970-01-01 of the proleptic Gregorian date `year-month-day`
/// (`month` 1..=12; a `day` past the month's end counts on into the next).
///
/// Howard Hinnant's `days_from_civil`
/// (<http://howardhinnant.github.io/date_algorithms.html>). Exact for any
/// year within a few billion of today.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian `(year, month 1..=12, day 1..=31)` of a day
/// number since 1970-01-01: Hinnant's `civil_from_days`, the inverse of
/// [`days_from_civil`].
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Invariant: the ranges noted above make both casts lossless.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(years: u32, months: u32, days: u32, hours: u32) -> CalendarDuration {
        CalendarDuration {
            years,
            months,
            days,
            hours,
        }
    }

    /// ns since the epoch of `y-m-d h:00` UTC.
    fn at(y: i64, m: u32, day: u32, h: i64) -> i64 {
        days_from_civil(y, m, day) * DAY_NS + h * 3_600_000_000_000
    }

    #[test]
    fn parses_each_form() {
        let ok = |s: &str| s.parse::<CalendarDuration>().unwrap();
        assert_eq!(ok("6m"), d(0, 6, 0, 0), "m is months, not minutes");
        assert_eq!(ok("1y5m7d2h"), d(1, 5, 7, 2));
        assert_eq!(ok("2h"), d(0, 0, 0, 2));
        assert_eq!(ok("7d"), d(0, 0, 7, 0));
        assert_eq!(ok("3y"), d(3, 0, 0, 0));
        assert_eq!(ok("0d"), d(0, 0, 0, 0));
        assert!(ok("0d").is_zero() && !ok("1h").is_zero());
        // Any order; a repeated unit keeps its last value (restic's parser).
        assert_eq!(ok("2h1y"), d(1, 0, 0, 2));
        assert_eq!(ok("1d2d"), d(0, 0, 2, 0));
        // Leading zeros, surrounding whitespace.
        assert_eq!(ok("007d"), d(0, 0, 7, 0));
        assert_eq!(ok(" 6m\n"), d(0, 6, 0, 0));
        assert_eq!(ok("4294967295y"), d(u32::MAX, 0, 0, 0));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        let err = |s: &str| s.parse::<CalendarDuration>().unwrap_err();
        assert_eq!(err(""), DurationError::Empty);
        assert_eq!(err("  "), DurationError::Empty);
        assert!(matches!(err("5"), DurationError::NoUnit { number, .. } if number == "5"));
        assert!(matches!(err("1d5"), DurationError::NoUnit { number, .. } if number == "5"));
        assert!(matches!(
            err("5x"),
            DurationError::UnknownUnit { unit: 'x', .. }
        ));
        assert!(matches!(
            err("90s"),
            DurationError::UnknownUnit { unit: 's', .. }
        ));
        assert!(matches!(
            err("2w"),
            DurationError::UnknownUnit { unit: 'w', .. }
        ));
        assert!(matches!(
            err("5M"),
            DurationError::UnknownUnit { unit: 'M', .. }
        ));
        assert!(matches!(
            err("m"),
            DurationError::NoNumber { found: 'm', .. }
        ));
        assert!(matches!(
            err("-1d"),
            DurationError::NoNumber { found: '-', .. }
        ));
        assert!(matches!(
            err("+1d"),
            DurationError::NoNumber { found: '+', .. }
        ));
        assert!(matches!(
            err("1.5d"),
            DurationError::UnknownUnit { unit: '.', .. }
        ));
        assert!(matches!(
            err("5 d"),
            DurationError::UnknownUnit { unit: ' ', .. }
        ));
        assert!(matches!(
            err("1d 2h"),
            DurationError::NoNumber { found: ' ', .. }
        ));
        assert!(matches!(err("4294967296y"), DurationError::TooLarge { .. }));
        assert!(matches!(
            err("٣d"),
            DurationError::NoNumber { found: '٣', .. }
        ));
        assert!(matches!(
            err("1dé"),
            DurationError::NoNumber { found: 'é', .. }
        ));
        assert!(matches!(
            err("2026-11-20"),
            DurationError::UnknownUnit { unit: '-', .. }
        ));
        // The message says what m means.
        assert!(err("5x").to_string().contains("m for months"));
    }

    #[test]
    fn display_round_trips() {
        for s in ["1y5m7d2h", "6m", "2h", "1y1h", "0h"] {
            let v: CalendarDuration = s.parse().unwrap();
            assert_eq!(v.to_string(), s);
        }
        assert_eq!(d(0, 0, 0, 0).to_string(), "0h");
        assert_eq!(
            "2h1y".parse::<CalendarDuration>().unwrap().to_string(),
            "1y2h"
        );
    }

    #[test]
    fn before_counts_back_on_the_calendar() {
        let t = at(2024, 8, 15, 12);
        assert_eq!(d(0, 6, 0, 0).before(t), i128::from(at(2024, 2, 15, 12)));
        assert_eq!(d(0, 0, 0, 2).before(t), i128::from(at(2024, 8, 15, 10)));
        assert_eq!(d(0, 0, 1, 0).before(t), i128::from(at(2024, 8, 14, 12)));
        assert_eq!(d(1, 5, 7, 2).before(t), i128::from(at(2023, 3, 8, 10)));
        assert_eq!(d(0, 0, 0, 0).before(t), i128::from(t));
        // Month ends run over, as Go's AddDate: 31 March - 1 month is
        // "31 February", i.e. 3 March (2 March in a leap year).
        assert_eq!(
            d(0, 1, 0, 0).before(at(2023, 3, 31, 0)),
            i128::from(at(2023, 3, 3, 0))
        );
        assert_eq!(
            d(0, 1, 0, 0).before(at(2024, 3, 31, 0)),
            i128::from(at(2024, 3, 2, 0))
        );
        assert_eq!(
            d(1, 0, 0, 0).before(at(2024, 2, 29, 5)),
            i128::from(at(2023, 3, 1, 5))
        );
        // Across a year end, and hours across midnight.
        assert_eq!(
            d(0, 2, 0, 0).before(at(2024, 1, 31, 0)),
            i128::from(at(2023, 12, 1, 0))
        );
        assert_eq!(
            d(0, 0, 0, 3).before(at(2024, 1, 1, 1)),
            i128::from(at(2023, 12, 31, 22))
        );
        // 12 months and 1 year agree; 30 days and 1 month do not.
        let t = at(2024, 5, 31, 0);
        assert_eq!(d(0, 12, 0, 0).before(t), d(1, 0, 0, 0).before(t));
        assert_eq!(d(0, 1, 0, 0).before(t), i128::from(at(2024, 5, 1, 0)));
        assert_eq!(d(0, 0, 30, 0).before(t), i128::from(at(2024, 5, 1, 0)));
        assert_eq!(d(0, 0, 31, 0).before(t), i128::from(at(2024, 4, 30, 0)));
        // Before 1970, and sub-day times keep their fraction.
        assert_eq!(d(0, 0, 1, 0).before(-1), i128::from(-1 - DAY_NS));
        assert_eq!(d(0, 1, 0, 0).before(0), i128::from(at(1969, 12, 1, 0)));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let max = d(u32::MAX, u32::MAX, u32::MAX, u32::MAX);
        for t in [i64::MIN, -1, 0, i64::MAX] {
            assert!(max.before(t) < i128::from(t));
            assert_eq!(d(0, 0, 0, 0).before(t), i128::from(t));
        }
    }

    #[test]
    fn calendar_helpers() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for day in [-1_000_000, -719_468, -1, 0, 59, 11_016, 20_000, 1_000_000] {
            let (y, m, dd) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, dd), day);
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        // A day past the month's end runs into the next month.
        assert_eq!(days_from_civil(2023, 2, 31), days_from_civil(2023, 3, 3));
    }

    #[test]
    fn toml_and_json() {
        #[derive(Deserialize, Serialize, PartialEq, Debug)]
        struct T {
            d: CalendarDuration,
        }
        let t: T = toml::from_str("d = \"1y6m\"").unwrap();
        assert_eq!(t.d, d(1, 6, 0, 0));
        assert_eq!(toml::to_string(&t).unwrap().trim(), "d = \"1y6m\"");
        for bad in ["d = 6", "d = \"6\"", "d = \"\"", "d = \"6 m\""] {
            assert!(toml::from_str::<T>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn random_strings_never_panic(s in "\\PC{0,24}") {
            let _ = s.parse::<CalendarDuration>();
        }

        #[test]
        fn duration_like_strings_never_panic_and_round_trip(
            s in "[-+ 0-9ymdhsw.]{0,16}",
        ) {
            if let Ok(v) = s.parse::<CalendarDuration>() {
                let again: CalendarDuration = v.to_string().parse().unwrap();
                prop_assert_eq!(again, v);
            }
        }

        #[test]
        fn before_is_never_later(
            years in 0u32..3000, months in 0u32..50, days in 0u32..1000, hours in 0u32..100,
            t in any::<i64>(),
        ) {
            let v = d(years, months, days, hours);
            let b = v.before(t);
            prop_assert!(b <= i128::from(t));
            prop_assert_eq!(b == i128::from(t), v.is_zero());
        }
    }
}
