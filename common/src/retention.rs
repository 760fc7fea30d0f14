//! Retention policies: which snapshots `forget` keeps, with restic's
//! semantics (<https://restic.readthedocs.io/en/stable/060_forget.html>).
//!
//! Sans-IO: the caller lists the snapshots ([`Item`]), [`apply`] decides, and
//! the caller deletes the records in each [`Group::remove`]. Nothing here
//! reads the clock: `keep-within` counts back from the newest snapshot of
//! each group, as restic does, not from "now".
//!
//! # Semantics
//!
//! Snapshots are grouped by host and by their set of paths (order does not
//! matter). Within a group, sorted newest first, a snapshot is kept when any
//! rule keeps it:
//!
//! - `keep-last n`: the `n` newest snapshots;
//! - `keep-hourly`, `keep-daily`, `keep-weekly`, `keep-monthly`,
//!   `keep-yearly n`: the newest snapshot of each of the `n` most recent
//!   hours, days, ISO 8601 weeks, months or years that hold a snapshot;
//! - `keep-within d`: every snapshot taken after the group's newest minus
//!   `d`, a [`CalendarDuration`] (`6m` is six months) counted back on the
//!   calendar as restic does (`newest.AddDate(-y, -m, -d).Add(-h hours)`);
//! - `keep-within-hourly`, `-daily`, `-weekly`, `-monthly`, `-yearly d`: the
//!   newest snapshot of each hour, day, ISO week, month or year among those
//!   `keep-within d` would keep;
//! - `keep-tags [t, ...]`: every snapshot carrying one of these tags.
//!
//! As in restic (since 0.17), when a counted rule (`keep-last` to
//! `keep-yearly`) still has count left after the newest snapshot of every
//! bucket, the group's oldest snapshot is kept too, so the history reaches as
//! far back as the policy allows; its reason is `"oldest"`.
//!
//! Calendar buckets are computed in **UTC**, where restic uses the machine's
//! local time zone: the same repository then gives the same answer on every
//! machine. Times before 1970 are fine; any `i64` time is accepted.
//!
//! A count of [`UNLIMITED`] (restic's `-1`, `"unlimited"` in a config file)
//! keeps every bucket. A policy with no rule would remove everything, so it
//! is refused with [`PolicyError::Empty`].

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::SnapshotId;
use crate::duration::{CalendarDuration, civil_from_days, days_from_civil};

/// A count meaning "every bucket" (restic's `-1`).
pub const UNLIMITED: u32 = u32::MAX;

/// Which snapshots to keep. A count or duration of 0 turns that rule off.
///
/// In TOML (the agent's `[retention]` table): `keep-last`, `keep-hourly`,
/// `keep-daily`, `keep-weekly`, `keep-monthly`, `keep-yearly` (each a
/// non-negative integer, or `-1` / `"unlimited"`), `keep-within` and
/// `keep-within-hourly` to `keep-within-yearly` (each a duration string in
/// restic's syntax, `"1y5m7d2h"`, `m` being months) and `keep-tags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Keep the `last` newest snapshots.
    #[serde(rename = "keep-last", deserialize_with = "count")]
    pub last: u32,
    /// Keep the newest snapshot of each of the last `hourly` hours that hold one.
    #[serde(rename = "keep-hourly", deserialize_with = "count")]
    pub hourly: u32,
    /// Keep the newest snapshot of each of the last `daily` days that hold one.
    #[serde(rename = "keep-daily", deserialize_with = "count")]
    pub daily: u32,
    /// Keep the newest snapshot of each of the last `weekly` ISO weeks that
    /// hold one.
    #[serde(rename = "keep-weekly", deserialize_with = "count")]
    pub weekly: u32,
    /// Keep the newest snapshot of each of the last `monthly` months that
    /// hold one.
    #[serde(rename = "keep-monthly", deserialize_with = "count")]
    pub monthly: u32,
    /// Keep the newest snapshot of each of the last `yearly` years that hold
    /// one.
    #[serde(rename = "keep-yearly", deserialize_with = "count")]
    pub yearly: u32,
    /// Keep every snapshot taken after its group's newest snapshot minus
    /// this (on the calendar).
    #[serde(rename = "keep-within")]
    pub within: CalendarDuration,
    /// Keep the newest snapshot of each hour among those `within` this of
    /// the group's newest.
    #[serde(rename = "keep-within-hourly")]
    pub within_hourly: CalendarDuration,
    /// ... of each day.
    #[serde(rename = "keep-within-daily")]
    pub within_daily: CalendarDuration,
    /// ... of each ISO week.
    #[serde(rename = "keep-within-weekly")]
    pub within_weekly: CalendarDuration,
    /// ... of each month.
    #[serde(rename = "keep-within-monthly")]
    pub within_monthly: CalendarDuration,
    /// ... of each year.
    #[serde(rename = "keep-within-yearly")]
    pub within_yearly: CalendarDuration,
    /// Keep every snapshot carrying any of these tags.
    #[serde(rename = "keep-tags")]
    pub tags: Vec<String>,
}

/// A policy that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No rule is set: applying it would remove every snapshot.
    #[error("the retention policy sets no keep-* rule; it would remove every snapshot")]
    Empty,
    /// A `keep-tags` entry is the empty string, which no snapshot carries.
    #[error("keep-tags holds an empty tag")]
    EmptyTag,
}

impl Policy {
    /// True when no rule is set (every count 0, every duration zero, no
    /// tag).
    pub fn is_empty(&self) -> bool {
        // Destructured so that a new rule cannot be forgotten here.
        let Self {
            last,
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
            within,
            within_hourly,
            within_daily,
            within_weekly,
            within_monthly,
            within_yearly,
            tags,
        } = self;
        [last, hourly, daily, weekly, monthly, yearly]
            .iter()
            .all(|n| **n == 0)
            && [
                within,
                within_hourly,
                within_daily,
                within_weekly,
                within_monthly,
                within_yearly,
            ]
            .iter()
            .all(|d| d.is_zero())
            && tags.is_empty()
    }

    /// Checks the policy can be applied. Call it when reading a policy from
    /// the user, so a mistake shows before any snapshot is looked at.
    ///
    /// # Errors
    /// [`PolicyError::Empty`] when no rule is set, [`PolicyError::EmptyTag`]
    /// for a `""` tag.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.is_empty() {
            return Err(PolicyError::Empty);
        }
        if self.tags.iter().any(String::is_empty) {
            return Err(PolicyError::EmptyTag);
        }
        Ok(())
    }
}

/// What [`apply`] needs to know of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The snapshot's id.
    pub id: SnapshotId,
    /// When the backup started, ns since the Unix epoch (as
    /// [`Snapshot::time_ns`](crate::snapshot::Snapshot::time_ns)).
    pub time_ns: i64,
    /// Host name recorded in the snapshot.
    pub host: String,
    /// Source paths. Snapshots record raw bytes: convert them one to one
    /// where possible, since two path sets that convert to the same strings
    /// (e.g. lossily, from non-UTF-8 names) fall into one group.
    pub paths: Vec<String>,
    /// User tags.
    pub tags: Vec<String>,
}

/// The decision for one group of snapshots (same host, same set of paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The group's host.
    pub host: String,
    /// The group's paths, sorted.
    pub paths: Vec<String>,
    /// Snapshots to keep, newest first, each with the rules that keep it:
    /// `"last"`, `"hourly"`, `"daily"`, `"weekly"`, `"monthly"`, `"yearly"`,
    /// `"oldest"`, `"within"`, `"within-hourly"`, `"within-daily"`,
    /// `"within-weekly"`, `"within-monthly"`, `"within-yearly"`, `"tag"`.
    pub keep: Vec<(SnapshotId, Vec<&'static str>)>,
    /// Snapshots to remove, newest first.
    pub remove: Vec<SnapshotId>,
}

/// Decides, group by group, which snapshots `policy` keeps and which it
/// removes. Every distinct id of `items` lands in exactly one `keep` or
/// `remove` list; an id listed twice counts once (its first listing). Groups
/// come sorted by host, then paths; the result does not depend on the order
/// of `items` (equal times are ordered by id).
///
/// # Errors
/// [`PolicyError`] when `policy` fails [`Policy::validate`]; nothing is
/// decided then.
pub fn apply(policy: &Policy, items: &[Item]) -> Result<Vec<Group>, PolicyError> {
    policy.validate()?;
    let mut seen = HashSet::new();
    let mut groups: BTreeMap<(&str, Vec<&str>), Vec<&Item>> = BTreeMap::new();
    for item in items {
        if !seen.insert(item.id) {
            continue;
        }
        let mut paths: Vec<&str> = item.paths.iter().map(String::as_str).collect();
        paths.sort_unstable();
        groups
            .entry((item.host.as_str(), paths))
            .or_default()
            .push(item);
    }
    Ok(groups
        .into_iter()
        .map(|((host, paths), mut members)| {
            members.sort_unstable_by(|a, b| b.time_ns.cmp(&a.time_ns).then(a.id.cmp(&b.id)));
            let mut group = Group {
                host: host.to_owned(),
                paths: paths.into_iter().map(str::to_owned).collect(),
                keep: Vec::new(),
                remove: Vec::new(),
            };
            for (item, reasons) in members.iter().zip(decide(policy, &members)) {
                if reasons.is_empty() {
                    group.remove.push(item.id);
                } else {
                    group.keep.push((item.id, reasons));
                }
            }
            group
        })
        .collect())
}

/// The reasons to keep each of `sorted` (one group, newest first, not
/// empty); an empty list means remove.
fn decide(policy: &Policy, sorted: &[&Item]) -> Vec<Vec<&'static str>> {
    struct Rule {
        reason: &'static str,
        left: u32,
        bucket: fn(i64, usize) -> i64,
        last: Option<i64>,
    }
    let mut rules = [
        (
            policy.last,
            "last",
            (|_, nr| nr as i64) as fn(i64, usize) -> i64,
        ),
        (policy.hourly, "hourly", hour_bucket),
        (policy.daily, "daily", day_bucket),
        (policy.weekly, "weekly", week_bucket),
        (policy.monthly, "monthly", month_bucket),
        (policy.yearly, "yearly", year_bucket),
    ]
    .map(|(left, reason, bucket)| Rule {
        reason,
        left,
        bucket,
        last: None,
    });
    // restic counts keep-within back from the newest snapshot, on the
    // calendar; a zero duration turns the rule off.
    let newest = sorted.first().map_or(0, |i| i.time_ns);
    let cutoff = |d: &CalendarDuration| (!d.is_zero()).then(|| d.before(newest));
    let within = cutoff(&policy.within);
    struct WithinRule {
        reason: &'static str,
        cutoff: Option<i128>,
        bucket: fn(i64, usize) -> i64,
        last: Option<i64>,
    }
    let mut within_rules = [
        (
            &policy.within_hourly,
            "within-hourly",
            hour_bucket as fn(i64, usize) -> i64,
        ),
        (&policy.within_daily, "within-daily", day_bucket),
        (&policy.within_weekly, "within-weekly", week_bucket),
        (&policy.within_monthly, "within-monthly", month_bucket),
        (&policy.within_yearly, "within-yearly", year_bucket),
    ]
    .map(|(d, reason, bucket)| WithinRule {
        reason,
        cutoff: cutoff(d),
        bucket,
        last: None,
    });

    let oldest = sorted.len().saturating_sub(1);
    let mut out = Vec::with_capacity(sorted.len());
    for (nr, item) in sorted.iter().enumerate() {
        let time = i128::from(item.time_ns);
        let mut reasons = Vec::new();
        let mut keep_oldest = false;
        for rule in rules.iter_mut().filter(|r| r.left > 0) {
            let bucket = (rule.bucket)(item.time_ns, nr);
            if rule.last != Some(bucket) {
                rule.last = Some(bucket);
                if rule.left != UNLIMITED {
                    rule.left -= 1;
                }
                reasons.push(rule.reason);
            } else if nr == oldest {
                keep_oldest = true;
            }
        }
        if keep_oldest {
            reasons.push("oldest");
        }
        if within.is_some_and(|c| time > c) {
            reasons.push("within");
        }
        for rule in &mut within_rules {
            if rule.cutoff.is_some_and(|c| time > c) {
                let bucket = (rule.bucket)(item.time_ns, nr);
                if rule.last != Some(bucket) {
                    rule.last = Some(bucket);
                    reasons.push(rule.reason);
                }
            }
        }
        if item.tags.iter().any(|t| policy.tags.contains(t)) {
            reasons.push("tag");
        }
        out.push(reasons);
    }
    out
}

/// The hour a time falls in (UTC).
fn hour_bucket(time_ns: i64, _: usize) -> i64 {
    seconds(time_ns).div_euclid(3600)
}

/// The day a time falls in (UTC).
fn day_bucket(time_ns: i64, _: usize) -> i64 {
    days(time_ns)
}

/// The ISO week a time falls in (UTC), as `year * 100 + week`.
fn week_bucket(time_ns: i64, _: usize) -> i64 {
    let (year, week) = iso_week(days(time_ns));
    year * 100 + i64::from(week)
}

/// The month a time falls in (UTC), as months since year 0.
fn month_bucket(time_ns: i64, _: usize) -> i64 {
    let (year, month, _) = civil_from_days(days(time_ns));
    year * 12 + i64::from(month) - 1
}

/// The year a time falls in (UTC).
fn year_bucket(time_ns: i64, _: usize) -> i64 {
    civil_from_days(days(time_ns)).0
}

/// Whole seconds since the epoch, rounded down (also before 1970).
fn seconds(time_ns: i64) -> i64 {
    time_ns.div_euclid(1_000_000_000)
}

/// Whole days since 1970-01-01 (UTC), rounded down.
fn days(time_ns: i64) -> i64 {
    seconds(time_ns).div_euclid(86_400)
}

/// ISO 8601 `(week-based year, week 1..=53)` of a day number: weeks start on
/// Monday and week 1 is the one holding the year's first Thursday, so a
/// week belongs to the year of its Thursday.
fn iso_week(days: i64) -> (i64, u32) {
    // 1970-01-01 was a Thursday: weekday 3 counting Monday as 0.
    let weekday = (days + 3).rem_euclid(7);
    let thursday = days - weekday + 3;
    let (year, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
    // Invariant: a Thursday's ordinal day is below 366, so week <= 53.
    (year, week as u32)
}

/// Deserializes a rule count: a non-negative integer, or `-1` or
/// `"unlimited"` for [`UNLIMITED`].
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct Count;
    impl serde::de::Visitor<'_> for Count {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a count from 0 to 4294967295, -1 or \"unlimited\"")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            match v {
                -1 => Ok(UNLIMITED),
                _ => u32::try_from(v)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
            }
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u32, E> {
            match v {
                "unlimited" => Ok(UNLIMITED),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(Count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000_000_000;
    const DAY: i64 = 24 * HOUR;

    /// ns since the epoch of `y-m-d h:00` UTC.
    fn at(y: i64, m: u32, d: u32, h: i64) -> i64 {
        days_from_civil(y, m, d) * DAY + h * HOUR
    }

    fn id(n: u8) -> SnapshotId {
        SnapshotId([n; 32])
    }

    fn item(n: u8, time_ns: i64) -> Item {
        Item {
            id: id(n),
            time_ns,
            host: "h".into(),
            paths: vec!["/home".into()],
            tags: vec![],
        }
    }

    /// Runs `policy` over `items` (one group expected) and returns the kept
    /// ids' bytes, newest first.
    fn kept(policy: &Policy, items: &[Item]) -> Vec<u8> {
        let groups = apply(policy, items).unwrap();
        assert_eq!(groups.len(), 1);
        groups[0].keep.iter().map(|(id, _)| id.0[0]).collect()
    }

    #[test]
    fn iso_weeks_and_days() {
        // ISO weeks around year ends.
        let week = |y, m, d| iso_week(days_from_civil(y, m, d));
        assert_eq!(week(2020, 12, 31), (2020, 53)); // a Thursday
        assert_eq!(week(2021, 1, 3), (2020, 53)); // Sunday
        assert_eq!(week(2021, 1, 4), (2021, 1)); // Monday
        assert_eq!(week(2018, 12, 31), (2019, 1)); // Monday in next year's week 1
        assert_eq!(week(1970, 1, 1), (1970, 1));
        assert_eq!(week(2024, 6, 15), (2024, 24));
        // Before the epoch, days round down, not toward zero.
        assert_eq!(days(-1), -1);
        assert_eq!(civil_from_days(days(-1)), (1969, 12, 31));
    }

    #[test]
    fn keep_last() {
        let items: Vec<_> = (1..=5).map(|n| item(n, i64::from(n) * HOUR)).collect();
        let policy = Policy {
            last: 3,
            ..Policy::default()
        };
        let groups = apply(&policy, &items).unwrap();
        assert_eq!(
            groups[0].keep,
            [
                (id(5), vec!["last"]),
                (id(4), vec!["last"]),
                (id(3), vec!["last"])
            ]
        );
        assert_eq!(groups[0].remove, [id(2), id(1)]);
    }

    #[test]
    fn keep_daily_keeps_newest_of_each_day() {
        // Three snapshots a day over three days (08:00, 12:00, 20:00).
        let mut items = Vec::new();
        for (day, d) in [(0u8, 1), (1, 2), (2, 3)] {
            for (slot, h) in [(0u8, 8), (1, 12), (2, 20)] {
                items.push(item(day * 3 + slot + 1, at(2024, 3, d, h)));
            }
        }
        let daily = |n| Policy {
            daily: n,
            ..Policy::default()
        };
        // 20:00 of each day; the count is used up, so the oldest is not kept.
        assert_eq!(kept(&daily(3), &items), [9, 6, 3]);
        assert_eq!(kept(&daily(2), &items), [9, 6]);
        // Count left over: the group's oldest snapshot is kept as well.
        let groups = apply(&daily(5), &items).unwrap();
        assert_eq!(
            groups[0].keep,
            [
                (id(9), vec!["daily"]),
                (id(6), vec!["daily"]),
                (id(3), vec!["daily"]),
                (id(1), vec!["oldest"]),
            ]
        );
        assert_eq!(kept(&daily(UNLIMITED), &items), [9, 6, 3, 1]);
    }

    #[test]
    fn keep_hourly() {
        let items = [
            item(1, at(2024, 3, 1, 10)),
            item(2, at(2024, 3, 1, 10) + HOUR / 2),
            item(3, at(2024, 3, 1, 11)),
            item(4, at(2024, 3, 1, 11) + 1),
        ];
        let policy = Policy {
            hourly: 2,
            ..Policy::default()
        };
        assert_eq!(kept(&policy, &items), [4, 2]);
    }

    #[test]
    fn keep_weekly_uses_iso_weeks_across_the_year_end() {
        let items = [
            item(1, at(2020, 12, 28, 12)), // Monday, week 53 of 2020
            item(2, at(2020, 12, 31, 12)), // Thursday, week 53 of 2020
            item(3, at(2021, 1, 3, 12)),   // Sunday, still week 53 of 2020
            item(4, at(2021, 1, 4, 12)),   // Monday, week 1 of 2021
            item(5, at(2021, 1, 5, 12)),   // Tuesday, week 1 of 2021
        ];
        let weekly = |n| Policy {
            weekly: n,
            ..Policy::default()
        };
        assert_eq!(kept(&weekly(2), &items), [5, 3]);
        assert_eq!(kept(&weekly(1), &items), [5]);
        assert_eq!(kept(&weekly(3), &items), [5, 3, 1]);
        let groups = apply(&weekly(3), &items).unwrap();
        assert_eq!(groups[0].keep[2], (id(1), vec!["oldest"]));
    }

    #[test]
    fn keep_monthly_and_yearly() {
        let items = [
            item(1, at(2022, 6, 1, 0)),
            item(2, at(2022, 11, 30, 0)),
            item(3, at(2023, 1, 31, 23)),
            item(4, at(2023, 2, 1, 0)),
            item(5, at(2023, 2, 28, 0)),
            item(6, at(2024, 2, 29, 0)),
        ];
        let monthly = Policy {
            monthly: 3,
            ..Policy::default()
        };
        assert_eq!(kept(&monthly, &items), [6, 5, 3]);
        let yearly = Policy {
            yearly: 2,
            ..Policy::default()
        };
        assert_eq!(kept(&yearly, &items), [6, 5]);
        // Combined: reasons accumulate on one snapshot.
        let both = Policy {
            monthly: 2,
            yearly: 3,
            ..Policy::default()
        };
        let groups = apply(&both, &items).unwrap();
        assert_eq!(
            groups[0].keep,
            [
                (id(6), vec!["monthly", "yearly"]),
                (id(5), vec!["monthly", "yearly"]),
                (id(2), vec!["yearly"]),
            ]
        );
    }

    #[test]
    fn keep_within_counts_from_the_newest_snapshot() {
        // Years in the past: "now" plays no part.
        let newest = at(2001, 5, 10, 12);
        let items = [
            item(1, newest - 3 * DAY),
            item(2, newest - 2 * DAY),
            item(3, newest - DAY - 1),
            item(4, newest - DAY + 1),
            item(5, newest),
        ];
        let policy = within("1d");
        assert_eq!(kept(&policy, &items), [5, 4]);
        let groups = apply(&policy, &items).unwrap();
        assert_eq!(groups[0].keep[0].1, ["within"]);
        assert_eq!(groups[0].remove, [id(3), id(2), id(1)]);
        // Hours and combined units.
        assert_eq!(kept(&within("25h"), &items), [5, 4, 3]);
        assert_eq!(kept(&within("2d1h"), &items), [5, 4, 3, 2]);
    }

    /// A policy with only `keep-within TEXT`.
    fn within(text: &str) -> Policy {
        Policy {
            within: text.parse().unwrap(),
            ..Policy::default()
        }
    }

    #[test]
    fn keep_within_months_is_calendar_months() {
        // `6m` is six months, not six minutes: a snapshot an hour, a day
        // and five months older than the newest stays.
        let newest = at(2024, 8, 15, 12);
        let items = [
            item(1, at(2024, 2, 15, 12)),     // exactly six months: not after
            item(2, at(2024, 2, 15, 12) + 1), // just inside
            item(3, at(2024, 3, 15, 12)),
            item(4, newest - DAY),
            item(5, newest - HOUR),
            item(6, newest),
        ];
        assert_eq!(kept(&within("6m"), &items), [6, 5, 4, 3, 2]);
        // Across month ends: a month before 31 March is 3 March (Go's
        // AddDate runs "31 February" over), not the end of February.
        let newest = at(2023, 3, 31, 0);
        let items = [
            item(1, at(2023, 2, 28, 0)),
            item(2, at(2023, 3, 2, 23)),
            item(3, at(2023, 3, 3, 0)),
            item(4, at(2023, 3, 3, 0) + 1),
            item(5, newest),
        ];
        assert_eq!(kept(&within("1m"), &items), [5, 4]);
        // In a leap year the run-over lands on 2 March.
        let items = [
            item(1, at(2024, 3, 2, 0)),
            item(2, at(2024, 3, 2, 1)),
            item(3, at(2024, 3, 31, 0)),
        ];
        assert_eq!(kept(&within("1m"), &items), [3, 2]);
        // 30 days and a month differ when the month before has 31 days.
        let items = [item(1, at(2024, 7, 31, 12)), item(2, at(2024, 8, 31, 0))];
        assert_eq!(kept(&within("1m"), &items), [2, 1]);
        assert_eq!(kept(&within("30d"), &items), [2]);
        // A year back from 29 February is 1 March.
        let items = [
            item(1, at(2023, 3, 1, 0)),
            item(2, at(2023, 3, 1, 1)),
            item(3, at(2024, 2, 29, 0)),
        ];
        assert_eq!(kept(&within("1y"), &items), [3, 2]);
        assert_eq!(kept(&within("12m"), &items), [3, 2]);
    }

    #[test]
    fn keep_within_buckets_keep_the_newest_of_each_period_inside_the_window() {
        // Two snapshots a day (06:00, 18:00) for ten days.
        let mut items = Vec::new();
        for day in 0..10u8 {
            items.push(item(2 * day + 1, at(2024, 6, 1 + u32::from(day), 6)));
            items.push(item(2 * day + 2, at(2024, 6, 1 + u32::from(day), 18)));
        }
        let p = |daily: &str| Policy {
            within_daily: daily.parse().unwrap(),
            ..Policy::default()
        };
        // The newest is 10 June 18:00; three days back is 7 June 18:00, so
        // the 18:00 snapshots of 8, 9 and 10 June, and 8 June is the day
        // of the oldest one inside. No "oldest" extra, as in restic.
        assert_eq!(kept(&p("3d"), &items), [20, 18, 16]);
        let groups = apply(&p("3d"), &items).unwrap();
        assert_eq!(groups[0].keep[0].1, ["within-daily"]);
        // 3d12h reaches 7 June 06:00 exclusive: 7 June 18:00 also counts.
        assert_eq!(kept(&p("3d12h"), &items), [20, 18, 16, 14]);
        let weekly = Policy {
            within_weekly: "1m".parse().unwrap(),
            ..Policy::default()
        };
        // 1..2 June 2024 are in ISO week 22, 3..9 in week 23, 10 in week 24.
        assert_eq!(kept(&weekly, &items), [20, 18, 4]);
        let all = Policy {
            within_hourly: "1h".parse().unwrap(),
            within_monthly: "1y".parse().unwrap(),
            within_yearly: "1y".parse().unwrap(),
            ..Policy::default()
        };
        let groups = apply(&all, &items).unwrap();
        assert_eq!(
            groups[0].keep,
            [(
                id(20),
                vec!["within-hourly", "within-monthly", "within-yearly"]
            )]
        );
    }

    #[test]
    fn keep_tags() {
        let mut items: Vec<_> = (1..=4).map(|n| item(n, i64::from(n) * HOUR)).collect();
        items[0].tags = vec!["release".into()];
        items[2].tags = vec!["x".into(), "pin".into()];
        let policy = Policy {
            tags: vec!["pin".into(), "release".into()],
            ..Policy::default()
        };
        assert_eq!(kept(&policy, &items), [3, 1]);
        let policy = Policy {
            last: 1,
            tags: vec!["release".into()],
            ..Policy::default()
        };
        let groups = apply(&policy, &items).unwrap();
        assert_eq!(
            groups[0].keep,
            [(id(4), vec!["last"]), (id(1), vec!["tag"])]
        );
    }

    #[test]
    fn groups_by_host_and_path_set() {
        let mut a = item(1, 10);
        a.paths = vec!["/b".into(), "/a".into()];
        let mut b = item(2, 20);
        b.paths = vec!["/a".into(), "/b".into()];
        let mut c = item(3, 30);
        c.paths = vec!["/a".into()];
        let mut d = item(4, 40);
        d.host = "other".into();
        d.paths = vec!["/a".into(), "/b".into()];
        let policy = Policy {
            last: 1,
            ..Policy::default()
        };
        let groups = apply(&policy, &[a, b, c, d]).unwrap();
        let summary: Vec<_> = groups
            .iter()
            .map(|g| {
                (
                    g.host.as_str(),
                    g.paths.clone(),
                    g.keep.iter().map(|k| k.0).collect::<Vec<_>>(),
                    g.remove.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("h", vec!["/a".into()], vec![id(3)], vec![]),
                (
                    "h",
                    vec!["/a".into(), "/b".into()],
                    vec![id(2)],
                    vec![id(1)]
                ),
                ("other", vec!["/a".into(), "/b".into()], vec![id(4)], vec![]),
            ]
        );
    }

    #[test]
    fn empty_policy_is_refused() {
        let items = [item(1, 0)];
        assert_eq!(apply(&Policy::default(), &items), Err(PolicyError::Empty));
        assert_eq!(apply(&Policy::default(), &[]), Err(PolicyError::Empty));
        assert!(Policy::default().is_empty());
        assert!(within("0d").is_empty(), "a zero duration is no rule");
        let bad_tag = Policy {
            tags: vec![String::new()],
            ..Policy::default()
        };
        assert!(!bad_tag.is_empty());
        assert_eq!(bad_tag.validate(), Err(PolicyError::EmptyTag));
        for p in [
            Policy {
                last: 1,
                ..Policy::default()
            },
            Policy {
                yearly: 1,
                ..Policy::default()
            },
            within("1h"),
            Policy {
                within_yearly: "1y".parse().unwrap(),
                ..Policy::default()
            },
            Policy {
                tags: vec!["t".into()],
                ..Policy::default()
            },
        ] {
            assert!(!p.is_empty() && p.validate().is_ok(), "{p:?}");
        }
        assert_eq!(
            apply(
                &Policy {
                    last: 1,
                    ..Policy::default()
                },
                &[]
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn duplicate_ids_count_once_and_input_order_does_not_matter() {
        let items = [item(1, 5), item(2, 5), item(3, 7), item(1, 5)];
        let policy = Policy {
            last: 2,
            ..Policy::default()
        };
        let groups = apply(&policy, &items).unwrap();
        assert_eq!(kept(&policy, &items), [3, 1]);
        assert_eq!(groups[0].remove, [id(2)]);
        let mut reversed = items.to_vec();
        reversed.reverse();
        assert_eq!(apply(&policy, &reversed).unwrap(), groups);
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let items = [
            item(1, i64::MIN),
            item(2, -1),
            item(3, 0),
            item(4, i64::MAX),
        ];
        let policy = Policy {
            last: 1,
            hourly: UNLIMITED,
            daily: UNLIMITED,
            weekly: UNLIMITED,
            monthly: UNLIMITED,
            yearly: UNLIMITED,
            within: "4294967295y".parse().unwrap(),
            within_hourly: "4294967295y4294967295m".parse().unwrap(),
            within_daily: "1h".parse().unwrap(),
            within_weekly: "1d".parse().unwrap(),
            within_monthly: "1m".parse().unwrap(),
            within_yearly: "4294967295d".parse().unwrap(),
            tags: vec!["t".into()],
        };
        assert_eq!(kept(&policy, &items), [4, 3, 2, 1]);
        let one_year = Policy {
            yearly: 2,
            ..Policy::default()
        };
        // i64::MAX ns is in 2262, 0 in 1970, -1 in 1969, i64::MIN in 1677.
        assert_eq!(kept(&one_year, &items), [4, 3]);
    }

    #[test]
    fn policy_toml() {
        let p: Policy = toml::from_str(
            "keep-last = 3\nkeep-daily = -1\nkeep-weekly = \"unlimited\"\n\
             keep-within = \"1y5m7d2h\"\nkeep-within-daily = \"6m\"\nkeep-tags = [\"pin\"]\n",
        )
        .unwrap();
        assert_eq!(
            p,
            Policy {
                last: 3,
                daily: UNLIMITED,
                weekly: UNLIMITED,
                within: "1y5m7d2h".parse().unwrap(),
                within_daily: "6m".parse().unwrap(),
                tags: vec!["pin".into()],
                ..Policy::default()
            }
        );
        assert_eq!(
            toml::from_str::<Policy>(&toml::to_string(&p).unwrap()).unwrap(),
            p
        );
        assert_eq!(toml::from_str::<Policy>("").unwrap(), Policy::default());
        for bad in [
            "keep-last = -2",
            "keep-last = 4294967296",
            "keep-last = \"all\"",
            "keep-last = 1.5",
            "keep-lats = 1",
            "keep-within = 86400",
            "keep-within = \"90\"",
            "keep-within = \"15s\"",
            "keep-within = \"\"",
            "keep-within = \"-1d\"",
            "keep-within-s = 86400",
            "keep-within-minutely = \"1d\"",
        ] {
            assert!(toml::from_str::<Policy>(bad).is_err(), "{bad}");
        }
    }

    fn arb_item() -> impl Strategy<Value = Item> {
        let time = prop_oneof![
            any::<i64>(),
            // Mostly clustered, so buckets collide.
            (0i64..3 * 366 * DAY).prop_map(|t| 1_600_000_000_000_000_000 + t),
        ];
        (
            any::<u8>(),
            time,
            0u8..3,
            prop::collection::vec(prop::sample::select(vec!["/a", "/b", "/c"]), 1..3),
            prop::collection::vec(prop::sample::select(vec!["t", "u"]), 0..2),
        )
            .prop_map(|(n, time_ns, host, paths, tags)| Item {
                id: id(n),
                time_ns,
                host: format!("h{host}"),
                paths: paths.into_iter().map(String::from).collect(),
                tags: tags.into_iter().map(String::from).collect(),
            })
    }

    fn arb_duration() -> impl Strategy<Value = CalendarDuration> {
        let part = || prop_oneof![Just(0u32), 0u32..40, any::<u32>()];
        prop_oneof![
            Just(CalendarDuration::default()),
            (part(), part(), part(), part()).prop_map(|(years, months, days, hours)| {
                CalendarDuration {
                    years,
                    months,
                    days,
                    hours,
                }
            }),
        ]
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        let n = || prop_oneof![Just(0u32), 0u32..6, Just(UNLIMITED)];
        let d = arb_duration;
        (
            (n(), n(), n(), n(), n(), n()),
            (d(), d(), d(), d(), d(), d()),
            prop::collection::vec(prop::sample::select(vec!["t", "v"]), 0..2),
        )
            .prop_map(
                |(
                    (last, hourly, daily, weekly, monthly, yearly),
                    (
                        within,
                        within_hourly,
                        within_daily,
                        within_weekly,
                        within_monthly,
                        within_yearly,
                    ),
                    tags,
                )| Policy {
                    last,
                    hourly,
                    daily,
                    weekly,
                    monthly,
                    yearly,
                    within,
                    within_hourly,
                    within_daily,
                    within_weekly,
                    within_monthly,
                    within_yearly,
                    tags: tags.into_iter().map(String::from).collect(),
                },
            )
    }

    proptest! {
        #[test]
        fn apply_partitions_its_input(
            policy in arb_policy(),
            items in prop::collection::vec(arb_item(), 0..40),
        ) {
            let Ok(groups) = apply(&policy, &items) else {
                prop_assert!(policy.is_empty());
                return Ok(());
            };
            let mut out: Vec<SnapshotId> = Vec::new();
            for g in &groups {
                prop_assert!(!g.keep.is_empty() || !g.remove.is_empty());
                out.extend(g.keep.iter().map(|k| k.0));
                out.extend(&g.remove);
                for (id, reasons) in &g.keep {
                    prop_assert!(!reasons.is_empty());
                    // Each member belongs to its group.
                    let first = items.iter().find(|i| i.id == *id).unwrap();
                    prop_assert_eq!(&first.host, &g.host);
                }
                // A counted or within rule always keeps the newest snapshot.
                let counted = [policy.last, policy.hourly, policy.daily, policy.weekly,
                    policy.monthly, policy.yearly].iter().any(|&n| n > 0);
                let timed = [&policy.within, &policy.within_hourly, &policy.within_daily,
                    &policy.within_weekly, &policy.within_monthly, &policy.within_yearly]
                    .iter().any(|d| !d.is_zero());
                if counted || timed {
                    let newest = g.keep.iter().map(|k| k.0).chain(g.remove.iter().copied())
                        .map(|id| items.iter().find(|i| i.id == id).unwrap().time_ns)
                        .max().unwrap();
                    let kept_newest = g.keep.iter()
                        .any(|k| items.iter().find(|i| i.id == k.0).unwrap().time_ns == newest);
                    prop_assert!(kept_newest);
                }
            }
            let distinct: HashSet<_> = items.iter().map(|i| i.id).collect();
            prop_assert_eq!(out.len(), distinct.len());
            prop_assert_eq!(out.into_iter().collect::<HashSet<_>>(), distinct);
        }
    }
}
