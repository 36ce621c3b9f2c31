//! Task schedules: when a task runs by itself.
//!
//! An operator writes one or more `[[task.schedule]]` tables ([`ScheduleSpec`]);
//! [`Schedule::compile`] validates one into a [`Schedule`] that answers "when is the next run"
//! ([`Schedule::next_after`]) and "which run did we miss" ([`Schedule::last_between`]).
//!
//! # Forms
//!
//! Each schedule has exactly one "when":
//! - `cron`: a croner expression with 5 fields (minute hour day-of-month month day-of-week) or 6
//!   (second first). Croner evaluates it as written, including croner's daylight-saving rules.
//! - `daily_at = ["08:00", "17:30"]`: fixed times of day.
//! - `every_minutes = N` (1..=1440), optionally `between = ["08:00", "18:00"]` (both ends
//!   inclusive, default the whole day). Slots start at the window start (or midnight) and
//!   repeat every N minutes up to the window end; the count starts again every day, so the last
//!   slot of a day and the first of the next can be closer than N minutes (every 7: 23:55, then
//!   00:00).
//!
//! `days_of_week` and `days_of_month` (1..=31 or `"last"`) filter the days `daily_at` and
//! `every_minutes` run on; given both, a day must match both. A day a month does not have (the
//! 30th in February) is skipped in that month. `start_date` and `end_date` (inclusive, in the
//! schedule's zone) bound every form. `timezone` is an IANA name, default `UTC`.
//!
//! # Daylight saving
//!
//! - A wall-clock time the clock skips (02:30 when it jumps from 02:00 to 03:00) runs once, at
//!   the first instant after the gap (03:00). Several skipped slots of the same day collapse into
//!   that one run, and a slot at 03:00 is the same run.
//! - A wall-clock time the clock repeats (01:30 when it goes back from 02:00 to 01:00): `daily_at`
//!   runs once, on the first pass. `every_minutes` runs its slots on both passes, so the runs
//!   keep their real-time spacing through the repeated hour (every 30: 01:00 and 01:30 summer
//!   time, then 01:00 and 01:30 standard time, then 02:00).
//! - `cron` follows croner: a fixed time (single second, minute and hour) behaves like
//!   `daily_at`; a wildcard or stepped time runs on both passes of a repeated hour and skips the
//!   slots inside a gap.
//!
//! Invariant: successive [`Schedule::next_after`] calls, each fed the previous answer, return
//! strictly increasing instants, and [`Schedule::last_between`] agrees with them.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Timelike, Utc,
    Weekday,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Year};
use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The forms that say when a schedule fires; a schedule sets exactly one.
const WHEN_FORMS: &str = "cron, daily_at or every_minutes";

/// How far the slot search walks before giving up. Day filters always match some day within a
/// few years (no month filter exists), so this only ends searches that cannot succeed.
const SEARCH_DAYS: usize = 366 * 28;

/// One schedule as written in a task's TOML (`[[task.schedule]]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A cron expression, 5 fields (minute hour day-of-month month day-of-week) or 6 (second
    /// first), in croner syntax (`L`, `#`, `W`, names like `mon` and `jan`, `@daily`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Times of day as `HH:MM` (24-hour clock), e.g. `["08:00", "17:30"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_at: Option<Vec<String>>,
    /// Run every this many minutes (1..=1440), counted from the start of `between` or midnight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_minutes: Option<u32>,
    /// With `every_minutes`: the daily window `["HH:MM", "HH:MM"]`, both ends inclusive. Without
    /// it the window is the whole day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub between: Option<Vec<String>>,
    /// Only on these weekdays: `mon`..`sun` or full names, any case. Not with `cron`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_of_week: Option<Vec<String>>,
    /// Only on these days of the month: 1..=31 or `"last"`. Not with `cron`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_of_month: Option<Vec<DayOfMonth>>,
    /// First day the schedule runs (inclusive, in `timezone`), as `YYYY-MM-DD`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_optional_date"
    )]
    pub start_date: Option<NaiveDate>,
    /// Last day the schedule runs (inclusive, in `timezone`), as `YYYY-MM-DD`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_optional_date"
    )]
    pub end_date: Option<NaiveDate>,
    /// IANA time zone the times and dates are read in, e.g. `Europe/Berlin`. Default `UTC`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// A day of the month in `days_of_month`: a number (written as an integer), or the month's last
/// day (written `"last"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DayOfMonth {
    /// The day with this number; [`Schedule::compile`] checks it is 1..=31.
    Day(u32),
    /// The last day of the month, whatever its length.
    Last,
}

impl fmt::Display for DayOfMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DayOfMonth::Day(day) => write!(f, "{day}"),
            DayOfMonth::Last => f.write_str("last"),
        }
    }
}

impl Serialize for DayOfMonth {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            DayOfMonth::Day(day) => serializer.serialize_u32(*day),
            DayOfMonth::Last => serializer.serialize_str("last"),
        }
    }
}

impl<'de> Deserialize<'de> for DayOfMonth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DayVisitor;

        impl Visitor<'_> for DayVisitor {
            type Value = DayOfMonth;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a day of the month 1..=31 or "last""#)
            }

            fn visit_u64<E: de::Error>(self, day: u64) -> Result<DayOfMonth, E> {
                // The range is checked by `Schedule::compile`, which names the value.
                u32::try_from(day)
                    .map(DayOfMonth::Day)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(day), &self))
            }

            fn visit_i64<E: de::Error>(self, day: i64) -> Result<DayOfMonth, E> {
                u32::try_from(day)
                    .map(DayOfMonth::Day)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(day), &self))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<DayOfMonth, E> {
                if text.eq_ignore_ascii_case("last") {
                    Ok(DayOfMonth::Last)
                } else {
                    Err(E::invalid_value(Unexpected::Str(text), &self))
                }
            }
        }

        deserializer.deserialize_any(DayVisitor)
    }
}

/// Reads an optional date written either as a TOML date (`2026-01-01`) or as a string
/// (`"2026-01-01"`, which is also how it serializes).
fn deserialize_optional_date<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<NaiveDate>, D::Error> {
    struct DateValue(NaiveDate);
    struct DateVisitor;

    impl<'de> Visitor<'de> for DateVisitor {
        type Value = DateValue;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a date as YYYY-MM-DD")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<DateValue, E> {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(DateValue)
                .map_err(|_| E::invalid_value(Unexpected::Str(text), &self))
        }

        // The toml crate hands its native date values over as a map that its own `Datetime`
        // knows how to read.
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DateValue, A::Error> {
            let value = toml::value::Datetime::deserialize(de::value::MapAccessDeserializer::new(map))?;
            match value {
                toml::value::Datetime {
                    date: Some(date),
                    time: None,
                    offset: None,
                } => NaiveDate::from_ymd_opt(date.year.into(), date.month.into(), date.day.into())
                    .map(DateValue)
                    .ok_or_else(|| de::Error::custom(format!("{date} is not a date"))),
                other => Err(de::Error::invalid_value(
                    Unexpected::Other(&other.to_string()),
                    &self,
                )),
            }
        }
    }

    impl<'de> Deserialize<'de> for DateValue {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(DateVisitor)
        }
    }

    Ok(Option::<DateValue>::deserialize(deserializer)?.map(|DateValue(date)| date))
}

/// A schedule the operator wrote that cannot be compiled: the field, its offending value as
/// written, and what is wrong with it.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{field}: \"{value}\" {message}")]
pub struct ScheduleError {
    /// The [`ScheduleSpec`] field, as written in TOML (`cron`, `daily_at`, …).
    pub field: &'static str,
    /// The offending value as written; empty when the field is missing or an empty list.
    pub value: String,
    /// What is wrong, e.g. `is not a time of day as HH:MM`.
    pub message: String,
}

impl ScheduleError {
    fn new(field: &'static str, value: impl Into<String>, message: impl Into<String>) -> Self {
        ScheduleError {
            field,
            value: value.into(),
            message: message.into(),
        }
    }
}

/// A validated, compiled schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    when: When,
    days: DayFilter,
    dates: DateRange,
    timezone: Tz,
}

#[derive(Debug, Clone)]
enum When {
    /// Evaluated by croner as written.
    Cron {
        expression: String,
        // Boxed: a `Cron` is large next to the other variants.
        pattern: Box<Cron>,
    },
    /// One fixed-time croner pattern per time of day, with the day filters in its day fields.
    /// Croner runs a fixed time that falls into a gap at the end of the gap, and a repeated one
    /// only on its first pass: exactly the `daily_at` rules.
    DailyAt {
        times: Vec<NaiveTime>,
        patterns: Vec<Cron>,
    },
    /// The day's slots, computed here rather than by croner: croner's interval rules skip the
    /// slots inside a gap (a window inside the skipped hour would not run that day at all), and
    /// it classifies a pattern as fixed or interval by its shape, so `every_minutes = 1440`
    /// would follow other rules than `every_minutes = 720`.
    Every {
        minutes: u32,
        window: Option<(NaiveTime, NaiveTime)>,
        /// Ascending wall-clock times of one day.
        slots: Vec<NaiveTime>,
    },
}

/// `days_of_week` and `days_of_month`; an empty list does not filter.
#[derive(Debug, Clone, Default)]
struct DayFilter {
    /// Ascending from Monday, without repeats.
    weekdays: Vec<Weekday>,
    /// Ascending, `Last` at the end, without repeats.
    days_of_month: Vec<DayOfMonth>,
}

/// `start_date` and `end_date` with the instants they bound in the schedule's zone.
#[derive(Debug, Clone, Copy)]
struct DateRange {
    start: Option<NaiveDate>,
    end: Option<NaiveDate>,
    /// First instant of `start`.
    opens: Option<DateTime<Utc>>,
    /// First instant of the day after `end`: fire times are before it.
    closes: Option<DateTime<Utc>>,
}

impl Schedule {
    /// Validates `spec`, naming the first offending field and value.
    pub fn compile(spec: &ScheduleSpec) -> Result<Schedule, ScheduleError> {
        let timezone = parse_timezone(spec.timezone.as_deref())?;
        check_one_when_form(spec)?;
        if spec.between.is_some() && spec.every_minutes.is_none() {
            return Err(ScheduleError::new(
                "between",
                join(spec.between.iter().flatten()),
                "only applies to every_minutes",
            ));
        }
        if spec.cron.is_some() {
            // A cron expression has its own day fields; a second way to say the same thing would
            // raise the question which one wins.
            for (field, values) in [
                ("days_of_week", spec.days_of_week.as_ref().map(join)),
                ("days_of_month", spec.days_of_month.as_ref().map(join)),
            ] {
                if let Some(values) = values {
                    return Err(ScheduleError::new(
                        field,
                        values,
                        "cannot be combined with cron; write the days in the cron expression",
                    ));
                }
            }
        }
        let days = DayFilter::parse(spec.days_of_week.as_deref(), spec.days_of_month.as_deref())?;
        let when = if let Some(expression) = &spec.cron {
            When::Cron {
                expression: expression.clone(),
                pattern: Box::new(parse_cron(expression)?),
            }
        } else if let Some(times) = &spec.daily_at {
            compile_daily_at(times, &days)?
        } else {
            let minutes = spec.every_minutes.expect("check_one_when_form saw one form");
            compile_every(minutes, spec.between.as_deref())?
        };
        let dates = DateRange::new(spec.start_date, spec.end_date, timezone)?;
        Ok(Schedule {
            when,
            days,
            dates,
            timezone,
        })
    }

    /// The first fire time strictly after `after`, or None if the schedule has ended (end_date
    /// passed).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Before the range opens, search from just before its first instant. Fire times are
        // whole seconds, so no fire time lies between the two.
        let after = match self.dates.opens {
            Some(opens) if after < opens => opens - TimeDelta::nanoseconds(1),
            _ => after,
        };
        let next = match &self.when {
            When::Cron { pattern, .. } => self.croner_next(std::slice::from_ref(pattern.as_ref()), after),
            When::DailyAt { patterns, .. } => self.croner_next(patterns, after),
            When::Every { slots, .. } => self.slot_next(slots, after),
        }?;
        self.dates
            .closes
            .is_none_or(|closes| next < closes)
            .then_some(next)
    }

    /// The latest fire time at or before `at` but strictly after `since` (used for the
    /// missed-run policy), or None.
    pub fn last_between(&self, since: DateTime<Utc>, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = match self.dates.closes {
            Some(closes) if at >= closes => closes - TimeDelta::nanoseconds(1),
            _ => at,
        };
        if at <= since {
            return None;
        }
        let last = match &self.when {
            When::Cron { pattern, .. } => self.croner_last(std::slice::from_ref(pattern.as_ref()), at),
            When::DailyAt { patterns, .. } => self.croner_last(patterns, at),
            When::Every { slots, .. } => self.slot_last(slots, since, at),
        }?;
        (last > since && self.dates.opens.is_none_or(|opens| last >= opens)).then_some(last)
    }

    /// Human-readable summary for `ferry task show`, e.g. "daily at 08:00, 17:30 on mon-fri
    /// (Europe/Berlin)".
    pub fn describe(&self) -> String {
        let mut text = match &self.when {
            When::Cron { expression, .. } => format!("cron \"{expression}\""),
            When::DailyAt { times, .. } => format!("daily at {}", join(times.iter().map(hh_mm))),
            When::Every { minutes, window, .. } => {
                let mut text = match minutes {
                    1 => "every minute".to_owned(),
                    n => format!("every {n} minutes"),
                };
                if let Some((first, last)) = window {
                    text += &format!(" from {} to {}", hh_mm(first), hh_mm(last));
                }
                text
            }
        };
        text += &self.days.describe();
        text += &self.dates.describe();
        text + &format!(" ({})", self.timezone.name())
    }

    /// The earliest next occurrence of any of `patterns` after `after`.
    fn croner_next(&self, patterns: &[Cron], after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.with_timezone(&self.timezone);
        patterns
            .iter()
            // Croner reports a pattern that never matches again as an error: no occurrence.
            .filter_map(|pattern| pattern.find_next_occurrence(&after, false).ok())
            .min()
            .map(|next| next.to_utc())
    }

    /// The latest occurrence of any of `patterns` at or before `at`.
    fn croner_last(&self, patterns: &[Cron], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = at.with_timezone(&self.timezone);
        patterns
            .iter()
            .filter_map(|pattern| pattern.find_previous_occurrence(&at, true).ok())
            .max()
            .map(|last| last.to_utc())
    }

    /// The first slot instant after `after`.
    fn slot_next(&self, slots: &[NaiveTime], after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = after.with_timezone(&self.timezone).date_naive();
        // The day before is searched too: if a clock went back over midnight, a slot of that day
        // can come after `after`. A day two days on starts more than a day of wall-clock time
        // later, and clocks never move by a day, so once a day has a slot after `after` only the
        // following day can still hold an earlier one.
        let mut best: Option<DateTime<Utc>> = None;
        let mut last_day = None;
        for date in today.pred_opt().unwrap_or(today).iter_days().take(SEARCH_DAYS) {
            if last_day.is_some_and(|last_day| date > last_day)
                || self.dates.end.is_some_and(|end| date > end)
            {
                break;
            }
            if !self.days.matches(date) {
                continue;
            }
            let found = self.slot_instants(slots, date).into_iter().find(|t| *t > after);
            if let Some(found) = found {
                best = Some(best.map_or(found, |best| best.min(found)));
                last_day.get_or_insert(date.succ_opt().unwrap_or(date));
            }
        }
        best
    }

    /// The last slot instant at or before `at` and after `since`; the mirror of `slot_next`.
    fn slot_last(
        &self,
        slots: &[NaiveTime],
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let today = at.with_timezone(&self.timezone).date_naive();
        let first_day = since.with_timezone(&self.timezone).date_naive().pred_opt();
        let mut best: Option<DateTime<Utc>> = None;
        let mut last_day = None;
        // Reversed, chrono's day iterator walks back from its first day.
        for date in today
            .succ_opt()
            .unwrap_or(today)
            .iter_days()
            .rev()
            .take(SEARCH_DAYS)
        {
            if last_day.is_some_and(|last_day| date < last_day)
                || first_day.is_some_and(|first_day| date < first_day)
                || self.dates.start.is_some_and(|start| date < start)
            {
                break;
            }
            if !self.days.matches(date) {
                continue;
            }
            let found = self.slot_instants(slots, date).into_iter().rfind(|t| *t <= at);
            if let Some(found) = found {
                best = Some(best.map_or(found, |best| best.max(found)));
                last_day.get_or_insert(date.pred_opt().unwrap_or(date));
            }
        }
        best.filter(|best| *best > since)
    }

    /// Every instant `slots` fire at on `date`, ascending and without repeats.
    fn slot_instants(&self, slots: &[NaiveTime], date: NaiveDate) -> Vec<DateTime<Utc>> {
        let mut instants = Vec::with_capacity(slots.len() + 1);
        for slot in slots {
            let wall = date.and_time(*slot);
            match self.timezone.from_local_datetime(&wall) {
                LocalResult::Single(instant) => instants.push(instant.to_utc()),
                // The clock went back: the slot happens on both passes.
                LocalResult::Ambiguous(first, second) => {
                    instants.push(first.to_utc());
                    instants.push(second.to_utc());
                }
                // The clock jumped over the slot: it runs when the clock resumes, together
                // with any other slot the jump swallowed.
                LocalResult::None => instants.push(end_of_gap(self.timezone, wall)),
            }
        }
        instants.sort_unstable();
        instants.dedup();
        instants
    }
}

fn parse_timezone(name: Option<&str>) -> Result<Tz, ScheduleError> {
    let Some(name) = name else {
        return Ok(Tz::UTC);
    };
    if name.trim().is_empty() {
        return Err(ScheduleError::new(
            "timezone",
            name,
            "is empty; leave it out for UTC",
        ));
    }
    Tz::from_str(name).map_err(|_| {
        ScheduleError::new(
            "timezone",
            name,
            "is not an IANA time zone name such as Europe/Berlin or UTC",
        )
    })
}

fn check_one_when_form(spec: &ScheduleSpec) -> Result<(), ScheduleError> {
    let forms = [
        ("cron", spec.cron.clone()),
        ("daily_at", spec.daily_at.as_ref().map(join)),
        ("every_minutes", spec.every_minutes.map(|n| n.to_string())),
    ];
    let mut set = forms
        .into_iter()
        .filter_map(|(field, value)| Some((field, value?)));
    let Some((first, _)) = set.next() else {
        return Err(ScheduleError::new(
            "cron",
            "",
            format!("is missing; set one of {WHEN_FORMS}"),
        ));
    };
    match set.next() {
        Some((second, value)) => Err(ScheduleError::new(
            second,
            value,
            format!("cannot be combined with {first}; set only one of {WHEN_FORMS}"),
        )),
        None => Ok(()),
    }
}

/// Cron expressions take 5 or 6 fields; croner's optional year field is refused.
fn cron_parser() -> CronParser {
    CronParser::builder().year(Year::Disallowed).build()
}

fn parse_cron(expression: &str) -> Result<Cron, ScheduleError> {
    let pattern = cron_parser()
        .parse(expression)
        .map_err(|error| ScheduleError::new("cron", expression, explain_cron_error(expression, &error)))?;
    // A day that never comes (`0 0 31 2 *`) would parse and then never run. The reference
    // instant is fixed so validation does not depend on the clock; croner gives up at year 5000.
    let reference = NaiveDate::from_ymd_opt(2000, 1, 1)
        .expect("2000-01-01 is a date")
        .and_time(NaiveTime::MIN)
        .and_utc();
    if pattern.find_next_occurrence(&reference, true).is_err() {
        return Err(ScheduleError::new(
            "cron",
            expression,
            "never fires: no date matches its day and month fields",
        ));
    }
    Ok(pattern)
}

/// Croner's reason for refusing `expression`, naming the field at fault when one is: croner
/// reports "number out of bounds" but not where.
fn explain_cron_error(expression: &str, error: &CronError) -> String {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        5 => &["minute", "hour", "day-of-month", "month", "day-of-week"],
        6 => &["second", "minute", "hour", "day-of-month", "month", "day-of-week"],
        count if matches!(error, CronError::InvalidPattern(_)) => {
            return format!(
                "has {count} fields; write 5 (minute hour day-of-month month day-of-week) or 6 \
                 (second first)"
            );
        }
        _ => return cron_reason(error),
    };
    // Each field parsed on its own, with every other field `*`: the first that fails is at fault.
    for (index, (field, name)) in fields.iter().zip(names).enumerate() {
        let mut probe = vec!["*"; fields.len()];
        probe[index] = field;
        if let Err(field_error) = cron_parser().parse(&probe.join(" ")) {
            return format!(
                "has a bad {name} field \"{field}\": {}",
                cron_reason(&field_error)
            );
        }
    }
    cron_reason(error)
}

/// Croner's message without its variant prefix and final period, starting in lower case.
fn cron_reason(error: &CronError) -> String {
    let reason = match error {
        CronError::EmptyPattern => "is empty".to_owned(),
        // Croner quotes the upper-cased text, which is not what the operator wrote.
        CronError::IllegalCharacters(_) => "contains a character cron does not allow".to_owned(),
        CronError::ComponentError(message) | CronError::InvalidPattern(message) => message.clone(),
        other => other.to_string(),
    };
    let reason = reason.trim_end_matches('.');
    let mut chars = reason.chars();
    chars
        .next()
        .map(|first| first.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

fn compile_daily_at(times: &[String], days: &DayFilter) -> Result<When, ScheduleError> {
    if times.is_empty() {
        return Err(ScheduleError::new(
            "daily_at",
            "",
            "is empty; list at least one HH:MM",
        ));
    }
    let mut parsed = times
        .iter()
        .map(|time| parse_time_of_day("daily_at", time))
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort_unstable();
    parsed.dedup();
    let (day_of_month, day_of_week) = days.cron_fields();
    let patterns = parsed
        .iter()
        .map(|time| {
            let text = format!(
                "{} {} {} {day_of_month} * {day_of_week}",
                time.second(),
                time.minute(),
                time.hour()
            );
            cron_parser()
                .parse(&text)
                .expect("a daily_at pattern is built from validated parts")
        })
        .collect();
    Ok(When::DailyAt {
        times: parsed,
        patterns,
    })
}

fn compile_every(minutes: u32, between: Option<&[String]>) -> Result<When, ScheduleError> {
    if !(1..=1440).contains(&minutes) {
        return Err(ScheduleError::new(
            "every_minutes",
            minutes.to_string(),
            "is not between 1 and 1440 minutes",
        ));
    }
    let window = between.map(parse_window).transpose()?;
    let (first, last) = window.unwrap_or((
        NaiveTime::MIN,
        NaiveTime::from_hms_opt(23, 59, 0).expect("23:59 is a time"),
    ));
    let minute_of_day = |time: NaiveTime| time.num_seconds_from_midnight() / 60;
    let slots = (minute_of_day(first)..=minute_of_day(last))
        .step_by(minutes as usize)
        .map(|minute| NaiveTime::from_hms_opt(minute / 60, minute % 60, 0).expect("a minute of the day"))
        .collect();
    Ok(When::Every {
        minutes,
        window,
        slots,
    })
}

fn parse_window(between: &[String]) -> Result<(NaiveTime, NaiveTime), ScheduleError> {
    let [first, last] = between else {
        return Err(ScheduleError::new(
            "between",
            join(between),
            "needs exactly two times: the start and the end of the window",
        ));
    };
    let (first_time, last_time) = (
        parse_time_of_day("between", first)?,
        parse_time_of_day("between", last)?,
    );
    if first_time > last_time {
        return Err(ScheduleError::new(
            "between",
            join(between),
            "starts after it ends; a window cannot cross midnight (use two schedules)",
        ));
    }
    Ok((first_time, last_time))
}

/// `H:MM` or `HH:MM` on a 24-hour clock.
fn parse_time_of_day(field: &'static str, text: &str) -> Result<NaiveTime, ScheduleError> {
    let parsed = text.split_once(':').and_then(|(hour, minute)| {
        let digits = |part: &str, lengths: std::ops::RangeInclusive<usize>| {
            lengths.contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(hour, 1..=2) || !digits(minute, 2..=2) {
            return None;
        }
        NaiveTime::from_hms_opt(hour.parse().ok()?, minute.parse().ok()?, 0)
    });
    parsed.ok_or_else(|| ScheduleError::new(field, text, "is not a time of day as HH:MM (00:00 to 23:59)"))
}

impl DayFilter {
    fn parse(
        weekdays: Option<&[String]>,
        days_of_month: Option<&[DayOfMonth]>,
    ) -> Result<DayFilter, ScheduleError> {
        let mut filter = DayFilter::default();
        if let Some(names) = weekdays {
            if names.is_empty() {
                return Err(ScheduleError::new(
                    "days_of_week",
                    "",
                    "is empty; leave it out to run on every day",
                ));
            }
            for name in names {
                filter.weekdays.push(parse_weekday(name).ok_or_else(|| {
                    ScheduleError::new(
                        "days_of_week",
                        name,
                        "is not a weekday: write mon..sun or the full name",
                    )
                })?);
            }
            filter
                .weekdays
                .sort_unstable_by_key(Weekday::num_days_from_monday);
            filter.weekdays.dedup();
        }
        if let Some(days) = days_of_month {
            if days.is_empty() {
                return Err(ScheduleError::new(
                    "days_of_month",
                    "",
                    "is empty; leave it out to run on every day",
                ));
            }
            if let Some(bad) = days
                .iter()
                .find(|day| matches!(day, DayOfMonth::Day(n) if !(1..=31).contains(n)))
            {
                return Err(ScheduleError::new(
                    "days_of_month",
                    bad.to_string(),
                    r#"is not a day of the month 1..=31 or "last""#,
                ));
            }
            filter.days_of_month = days.to_vec();
            filter.days_of_month.sort_unstable();
            filter.days_of_month.dedup();
        }
        Ok(filter)
    }

    fn matches(&self, date: NaiveDate) -> bool {
        let weekday_matches = self.weekdays.is_empty() || self.weekdays.contains(&date.weekday());
        let day_matches = self.days_of_month.is_empty()
            || self.days_of_month.iter().any(|day| match day {
                DayOfMonth::Day(n) => date.day() == *n,
                DayOfMonth::Last => date.succ_opt().is_none_or(|next| next.day() == 1),
            });
        weekday_matches && day_matches
    }

    /// The day-of-month and day-of-week fields of a croner pattern with the same meaning.
    fn cron_fields(&self) -> (String, String) {
        let day_of_month = if self.days_of_month.is_empty() {
            "*".to_owned()
        } else {
            let days = self.days_of_month.iter().map(|day| match day {
                DayOfMonth::Day(n) => n.to_string(),
                DayOfMonth::Last => "L".to_owned(),
            });
            days.collect::<Vec<_>>().join(",")
        };
        let day_of_week = if self.weekdays.is_empty() {
            "*".to_owned()
        } else {
            let days = self
                .weekdays
                .iter()
                .map(|day| day.num_days_from_sunday().to_string());
            let days = days.collect::<Vec<_>>().join(",");
            // Croner, like classic cron, runs on either day field when both are set; `+` makes
            // it both, which is what two filters mean.
            if self.days_of_month.is_empty() {
                days
            } else {
                format!("+{days}")
            }
        };
        (day_of_month, day_of_week)
    }

    fn describe(&self) -> String {
        let weekdays = describe_weekdays(&self.weekdays);
        let numbered = join(self.days_of_month.iter().filter_map(|day| match day {
            DayOfMonth::Day(n) => Some(n),
            DayOfMonth::Last => None,
        }));
        let last = self.days_of_month.contains(&DayOfMonth::Last);
        let days_of_month = match (numbered.is_empty(), last) {
            (true, false) => String::new(),
            (true, true) => "the last day of the month".to_owned(),
            (false, false) => format!("day {numbered} of the month"),
            (false, true) => format!("day {numbered} and the last day of the month"),
        };
        match (weekdays.is_empty(), days_of_month.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!(" on {weekdays}"),
            (true, false) => format!(" on {days_of_month}"),
            (false, false) => format!(" on {days_of_month} if it is a {weekdays}"),
        }
    }
}

/// `mon`..`sun` or the full name, any case.
fn parse_weekday(name: &str) -> Option<Weekday> {
    const NAMES: [(&str, &str, Weekday); 7] = [
        ("mon", "monday", Weekday::Mon),
        ("tue", "tuesday", Weekday::Tue),
        ("wed", "wednesday", Weekday::Wed),
        ("thu", "thursday", Weekday::Thu),
        ("fri", "friday", Weekday::Fri),
        ("sat", "saturday", Weekday::Sat),
        ("sun", "sunday", Weekday::Sun),
    ];
    let name = name.to_ascii_lowercase();
    NAMES
        .iter()
        .find(|(short, long, _)| name == *short || name == *long)
        .map(|(_, _, day)| *day)
}

/// Weekdays in Monday-first order, three or more consecutive ones as a range: "mon-fri",
/// "sat, sun".
fn describe_weekdays(weekdays: &[Weekday]) -> String {
    let short = |day: &Weekday| day.to_string().to_ascii_lowercase();
    let mut parts = Vec::new();
    let mut rest = weekdays;
    while let Some(first) = rest.first() {
        let run = rest
            .windows(2)
            .take_while(|pair| pair[0].succ() == pair[1])
            .count()
            + 1;
        match run {
            1 | 2 => parts.extend(rest[..run].iter().map(short)),
            _ => parts.push(format!("{}-{}", short(first), short(&rest[run - 1]))),
        }
        rest = &rest[run..];
    }
    parts.join(", ")
}

impl DateRange {
    fn new(
        start: Option<NaiveDate>,
        end: Option<NaiveDate>,
        timezone: Tz,
    ) -> Result<DateRange, ScheduleError> {
        if let (Some(start), Some(end)) = (start, end)
            && end < start
        {
            return Err(ScheduleError::new(
                "end_date",
                end.to_string(),
                format!("is before start_date {start}"),
            ));
        }
        let first_instant = |date: NaiveDate| {
            let midnight = date.and_time(NaiveTime::MIN);
            match timezone.from_local_datetime(&midnight) {
                LocalResult::Single(instant) | LocalResult::Ambiguous(instant, _) => instant.to_utc(),
                LocalResult::None => end_of_gap(timezone, midnight),
            }
        };
        Ok(DateRange {
            start,
            end,
            opens: start.map(first_instant),
            closes: end.and_then(|end| end.succ_opt()).map(first_instant),
        })
    }

    fn describe(&self) -> String {
        match (self.start, self.end) {
            (None, None) => String::new(),
            (Some(start), None) => format!(" from {start}"),
            (None, Some(end)) => format!(" until {end}"),
            (Some(start), Some(end)) => format!(" from {start} to {end}"),
        }
    }
}

/// The first instant after the spring-forward gap that swallows the wall-clock time `wall`: the
/// moment the clock jumps, which reads as the end of the gap (03:00 for a jump from 02:00).
fn end_of_gap(timezone: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    let reads_past_wall = |seconds: i64| {
        DateTime::from_timestamp(seconds, 0)
            .is_some_and(|instant| instant.with_timezone(&timezone).naive_local() > wall)
    };
    // UTC offsets stay within ±15 hours, so `wall` read as UTC and moved 15 hours either way
    // brackets the jump: the clock reads before `wall` at `low` and past it at `high`. The
    // bisection assumes the clock changes only this once in between, as in every real zone.
    let wall_as_utc = wall.and_utc().timestamp();
    let (mut low, mut high) = (wall_as_utc - 15 * 3600, wall_as_utc + 15 * 3600);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if reads_past_wall(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    DateTime::from_timestamp(high, 0).expect("within a day of a valid wall-clock time")
}

fn hh_mm(time: &NaiveTime) -> String {
    time.format("%H:%M").to_string()
}

/// A list as one value for an error or a summary: `08:00, 18:00`.
fn join<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test instants are RFC 3339")
            .to_utc()
    }

    fn schedule(toml_text: &str) -> Schedule {
        let spec: ScheduleSpec = toml::from_str(toml_text).expect("test specs parse");
        Schedule::compile(&spec).expect("test specs compile")
    }

    /// `count` successive fire times after `after`, each search starting from the previous
    /// answer, as a scheduler would.
    fn fires(schedule: &Schedule, after: &str, count: usize) -> Vec<String> {
        std::iter::successors(schedule.next_after(utc(after)), |last| schedule.next_after(*last))
            .take(count)
            .map(|instant| instant.to_rfc3339_opts(SecondsFormat::Secs, true))
            .collect()
    }

    fn error(toml_text: &str) -> ScheduleError {
        let spec: ScheduleSpec = toml::from_str(toml_text).expect("test specs parse");
        Schedule::compile(&spec).expect_err("the spec is invalid")
    }

    fn assert_error(toml_text: &str, field: &str, value: &str) -> ScheduleError {
        let error = error(toml_text);
        assert_eq!((error.field, error.value.as_str()), (field, value), "{error}");
        error
    }

    // --- Friendly forms -------------------------------------------------------------------

    #[test]
    fn daily_at_fires_at_each_time_in_order() {
        // Unsorted and repeated times; Berlin is UTC+1 in January.
        let s = schedule(
            r#"daily_at = ["17:30", "08:00", "17:30"]
               timezone = "Europe/Berlin""#,
        );
        assert_eq!(
            fires(&s, "2026-01-05T00:00:00Z", 3),
            [
                "2026-01-05T07:00:00Z",
                "2026-01-05T16:30:00Z",
                "2026-01-06T07:00:00Z"
            ]
        );
    }

    #[test]
    fn days_of_week_skip_the_weekend() {
        let s = schedule(
            r#"daily_at = ["08:00", "17:30"]
               days_of_week = ["Monday", "TUE", "wed", "thursday", "fri"]
               timezone = "Europe/Berlin""#,
        );
        // Friday 2026-01-09 after its 17:30 run: next is Monday.
        assert_eq!(
            fires(&s, "2026-01-09T16:30:00Z", 2),
            ["2026-01-12T07:00:00Z", "2026-01-12T16:30:00Z"]
        );
    }

    #[test]
    fn every_minutes_aligns_to_the_window_and_includes_its_end() {
        // New York is UTC-5 in January.
        let s = schedule(
            r#"every_minutes = 15
               between = ["08:00", "18:00"]
               timezone = "America/New_York""#,
        );
        assert_eq!(
            fires(&s, "2026-01-05T12:59:00Z", 2),
            ["2026-01-05T13:00:00Z", "2026-01-05T13:15:00Z"]
        );
        assert_eq!(
            fires(&s, "2026-01-05T22:50:00Z", 2),
            ["2026-01-05T23:00:00Z", "2026-01-06T13:00:00Z"]
        );
    }

    #[test]
    fn every_minutes_without_between_aligns_to_midnight_every_day() {
        let s = schedule("every_minutes = 7");
        // 7 does not divide the day: 23:55 is the last slot, then the count restarts.
        assert_eq!(
            fires(&s, "2026-01-05T23:50:00Z", 3),
            [
                "2026-01-05T23:55:00Z",
                "2026-01-06T00:00:00Z",
                "2026-01-06T00:07:00Z"
            ]
        );
    }

    #[test]
    fn every_minutes_that_do_not_divide_the_hour() {
        let every_45 = schedule(
            r#"every_minutes = 45
               between = ["08:00", "18:00"]"#,
        );
        // 08:00 + 13 × 45 minutes = 17:45; the next slot, 18:30, is outside the window.
        assert_eq!(
            fires(&every_45, "2026-01-05T17:00:00Z", 2),
            ["2026-01-05T17:45:00Z", "2026-01-06T08:00:00Z"]
        );
        let every_90 = schedule("every_minutes = 90");
        assert_eq!(
            fires(&every_90, "2026-01-05T21:00:00Z", 3),
            [
                "2026-01-05T22:30:00Z",
                "2026-01-06T00:00:00Z",
                "2026-01-06T01:30:00Z"
            ]
        );
    }

    #[test]
    fn days_of_month_pick_days() {
        let s = schedule(
            r#"daily_at = ["06:00"]
               days_of_month = [15, 1]"#,
        );
        assert_eq!(
            fires(&s, "2026-01-01T06:00:00Z", 2),
            ["2026-01-15T06:00:00Z", "2026-02-01T06:00:00Z"]
        );
    }

    #[test]
    fn last_day_of_february_in_leap_and_common_years() {
        let daily = schedule(
            r#"daily_at = ["06:00"]
               days_of_month = ["last"]"#,
        );
        assert_eq!(
            fires(&daily, "2026-02-01T00:00:00Z", 2),
            ["2026-02-28T06:00:00Z", "2026-03-31T06:00:00Z"]
        );
        assert_eq!(fires(&daily, "2028-02-01T00:00:00Z", 1), ["2028-02-29T06:00:00Z"]);
        // every_minutes filters days in this module, daily_at in croner: they must agree.
        let every = schedule(
            r#"every_minutes = 720
               days_of_month = ["last"]"#,
        );
        assert_eq!(
            fires(&every, "2026-02-01T00:00:00Z", 3),
            [
                "2026-02-28T00:00:00Z",
                "2026-02-28T12:00:00Z",
                "2026-03-31T00:00:00Z"
            ]
        );
        assert_eq!(fires(&every, "2028-02-01T00:00:00Z", 1), ["2028-02-29T00:00:00Z"]);
    }

    #[test]
    fn days_of_week_and_days_of_month_must_both_match() {
        // The first 1st of a month on a Monday in 2026 is June 1 (classic cron would run on
        // every 1st and every Monday).
        let daily = schedule(
            r#"daily_at = ["06:00"]
               days_of_month = [1]
               days_of_week = ["mon"]"#,
        );
        assert_eq!(fires(&daily, "2026-01-01T00:00:00Z", 1), ["2026-06-01T06:00:00Z"]);
        let every = schedule(
            r#"every_minutes = 1440
               days_of_month = [1]
               days_of_week = ["mon"]"#,
        );
        assert_eq!(fires(&every, "2026-01-01T00:00:00Z", 1), ["2026-06-01T00:00:00Z"]);
    }

    #[test]
    fn date_range_bounds_the_schedule() {
        let s = schedule(
            r#"daily_at = ["06:00"]
               days_of_month = [1, 15]
               start_date = "2026-01-01"
               end_date = "2026-12-31""#,
        );
        assert_eq!(fires(&s, "2025-06-01T00:00:00Z", 1), ["2026-01-01T06:00:00Z"]);
        assert_eq!(fires(&s, "2026-12-01T06:00:00Z", 1), ["2026-12-15T06:00:00Z"]);
        assert_eq!(
            s.next_after(utc("2026-12-15T06:00:00Z")),
            None,
            "2027-01-01 is past the end"
        );

        let last_day = schedule(
            r#"every_minutes = 720
               end_date = 2026-12-31"#,
        );
        assert_eq!(
            fires(&last_day, "2026-12-31T00:00:00Z", 5),
            ["2026-12-31T12:00:00Z"],
            "the end date is inclusive"
        );
    }

    #[test]
    fn date_range_is_read_in_the_schedule_zone() {
        // Berlin's 2026-01-01 00:30 is 2025-12-31 23:30 UTC; Berlin's 2026-01-02 begins at
        // 2026-01-01 23:00 UTC.
        let s = schedule(
            r#"daily_at = ["00:30"]
               start_date = "2026-01-01"
               end_date = "2026-01-01"
               timezone = "Europe/Berlin""#,
        );
        assert_eq!(fires(&s, "2025-12-01T00:00:00Z", 3), ["2025-12-31T23:30:00Z"]);
    }

    #[test]
    fn cron_with_five_and_six_fields() {
        let five = schedule(r#"cron = "30 9 * * mon""#);
        assert_eq!(
            fires(&five, "2026-01-05T10:00:00Z", 2),
            ["2026-01-12T09:30:00Z", "2026-01-19T09:30:00Z"]
        );
        let six = schedule(r#"cron = "0 */5 * * * *""#);
        assert_eq!(
            fires(&six, "2026-01-05T10:02:30Z", 2),
            ["2026-01-05T10:05:00Z", "2026-01-05T10:10:00Z"]
        );
        let seconds = schedule(r#"cron = "15 0 12 * * *""#);
        assert_eq!(
            fires(&seconds, "2026-01-05T00:00:00Z", 1),
            ["2026-01-05T12:00:15Z"]
        );
    }

    #[test]
    fn cron_with_a_date_range() {
        let s = schedule(
            r#"cron = "0 12 * * *"
               start_date = "2026-03-01"
               end_date = "2026-03-02""#,
        );
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", 5),
            ["2026-03-01T12:00:00Z", "2026-03-02T12:00:00Z"]
        );
    }

    // --- Daylight saving ------------------------------------------------------------------
    // New York: 2026-03-08 02:00 EST → 03:00 EDT at 07:00Z; 2026-11-01 02:00 EDT → 01:00 EST at
    // 06:00Z. Berlin: 2026-03-29 02:00 CET → 03:00 CEST at 01:00Z; 2026-10-25 03:00 CEST →
    // 02:00 CET at 01:00Z.

    #[test]
    fn daily_at_in_a_spring_forward_gap_runs_when_the_clock_resumes() {
        let new_york = schedule(
            r#"daily_at = ["02:30"]
               timezone = "America/New_York""#,
        );
        assert_eq!(
            fires(&new_york, "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
        let berlin = schedule(
            r#"daily_at = ["02:30"]
               timezone = "Europe/Berlin""#,
        );
        assert_eq!(
            fires(&berlin, "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
    }

    #[test]
    fn daily_at_times_swallowed_by_one_gap_run_once() {
        // 02:30 moves to 03:00, where 03:00 runs anyway: one run.
        let s = schedule(
            r#"daily_at = ["02:30", "03:00"]
               timezone = "America/New_York""#,
        );
        assert_eq!(
            fires(&s, "2026-03-08T00:00:00Z", 3),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-09T07:00:00Z"
            ]
        );
    }

    #[test]
    fn daily_at_in_a_fall_back_overlap_runs_on_the_first_pass_only() {
        let new_york = schedule(
            r#"daily_at = ["01:30"]
               timezone = "America/New_York""#,
        );
        assert_eq!(
            fires(&new_york, "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T05:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z"
            ]
        );
        // From inside the second pass (01:15 EST), 01:30 EST is not a run.
        assert_eq!(
            fires(&new_york, "2026-11-01T06:15:00Z", 1),
            ["2026-11-02T06:30:00Z"]
        );

        let berlin = schedule(
            r#"daily_at = ["02:30"]
               timezone = "Europe/Berlin""#,
        );
        assert_eq!(
            fires(&berlin, "2026-10-24T00:00:00Z", 3),
            [
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z"
            ]
        );
        assert_eq!(
            fires(&berlin, "2026-10-25T01:15:00Z", 1),
            ["2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn cron_fixed_times_follow_the_daily_at_rules() {
        let s = schedule(
            r#"cron = "30 2 * * *"
               timezone = "America/New_York""#,
        );
        assert_eq!(fires(&s, "2026-03-08T00:00:00Z", 1), ["2026-03-08T07:00:00Z"]);
        let s = schedule(
            r#"cron = "30 1 * * *"
               timezone = "America/New_York""#,
        );
        assert_eq!(
            fires(&s, "2026-11-01T00:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn every_minutes_across_spring_forward() {
        // Slots that divide the hour: 03:00 is both the regular slot and the gap's run.
        let every_15 = schedule(
            r#"every_minutes = 15
               timezone = "America/New_York""#,
        );
        assert_eq!(
            fires(&every_15, "2026-03-08T06:40:00Z", 3),
            [
                "2026-03-08T06:45:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:15:00Z"
            ]
        );
        // Every 7: 01:59 EST, then 02:06..02:55 are skipped and run once at 03:00 EDT, then 03:02.
        let every_7 = schedule(
            r#"every_minutes = 7
               timezone = "America/New_York""#,
        );
        assert_eq!(
            fires(&every_7, "2026-03-08T06:55:00Z", 3),
            [
                "2026-03-08T06:59:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:02:00Z"
            ]
        );
        let every_30 = schedule(
            r#"every_minutes = 30
               timezone = "Europe/Berlin""#,
        );
        assert_eq!(
            fires(&every_30, "2026-03-29T00:15:00Z", 3),
            [
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z"
            ]
        );
    }

    #[test]
    fn every_minutes_window_inside_the_gap_still_runs_that_day() {
        let s = schedule(
            r#"every_minutes = 20
               between = ["02:00", "02:40"]
               timezone = "Europe/Berlin""#,
        );
        assert_eq!(
            fires(&s, "2026-03-28T00:50:00Z", 5),
            [
                "2026-03-28T01:00:00Z",
                "2026-03-28T01:20:00Z",
                "2026-03-28T01:40:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:00:00Z",
            ]
        );
    }

    #[test]
    fn every_minutes_across_fall_back_runs_on_both_passes() {
        let new_york = schedule(
            r#"every_minutes = 30
               timezone = "America/New_York""#,
        );
        assert_eq!(
            fires(&new_york, "2026-11-01T04:15:00Z", 6),
            [
                "2026-11-01T04:30:00Z", // 00:30 EDT
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T06:30:00Z", // 01:30 EST
                "2026-11-01T07:00:00Z", // 02:00 EST
            ]
        );
        let berlin = schedule(
            r#"every_minutes = 30
               timezone = "Europe/Berlin""#,
        );
        assert_eq!(
            fires(&berlin, "2026-10-24T23:45:00Z", 5),
            [
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T00:30:00Z", // 02:30 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T01:30:00Z", // 02:30 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
            ]
        );
    }

    /// Every form over both transitions of both zones: answers strictly increase, and
    /// `last_between` finds exactly the runs `next_after` produced.
    #[test]
    fn successive_runs_strictly_increase_and_last_between_agrees() {
        let specs = [
            r#"daily_at = ["00:30", "01:30", "02:30", "03:00"]"#,
            "every_minutes = 7",
            "every_minutes = 30",
            r#"every_minutes = 20
               between = ["01:00", "03:00"]"#,
            r#"cron = "*/30 * * * *""#,
            r#"cron = "30 1,2 * * *""#,
        ];
        // Each zone's 2026 transition dates; the window runs from the day before to the day after.
        let zones = [
            ("America/New_York", ["2026-03-08", "2026-11-01"]),
            ("Europe/Berlin", ["2026-03-29", "2026-10-25"]),
            // Clocks change at midnight: the repeated hour is the end of the previous day.
            ("America/Santiago", ["2026-04-05", "2026-09-06"]),
            // Clocks move by half an hour.
            ("Australia/Lord_Howe", ["2026-04-05", "2026-10-04"]),
        ];
        for (timezone, transitions) in zones {
            for spec in specs {
                let s = schedule(&format!("{spec}\ntimezone = \"{timezone}\""));
                for transition in transitions {
                    let day = utc(&format!("{transition}T00:00:00Z"));
                    let (mut previous, to) = (day - TimeDelta::days(1), day + TimeDelta::days(2));
                    while let Some(next) = s.next_after(previous).filter(|next| *next < to) {
                        assert!(next > previous, "{spec} {timezone}: {next} after {previous}");
                        assert_eq!(s.last_between(previous, next), Some(next), "{spec} {timezone}");
                        let just_before = next - TimeDelta::seconds(1);
                        assert_eq!(
                            s.last_between(previous, just_before),
                            None,
                            "{spec} {timezone}: nothing between {previous} and {next}"
                        );
                        previous = next;
                    }
                }
            }
        }
    }

    #[test]
    fn clocks_that_change_at_midnight_or_by_half_an_hour() {
        // Santiago goes back from 2026-04-05 00:00 -03 to 2026-04-04 23:00 -04 (at 03:00Z).
        let fall_back = schedule(
            r#"every_minutes = 30
               timezone = "America/Santiago""#,
        );
        assert_eq!(
            fires(&fall_back, "2026-04-05T01:45:00Z", 5),
            [
                "2026-04-05T02:00:00Z", // 04-04 23:00 -03
                "2026-04-05T02:30:00Z", // 04-04 23:30 -03
                "2026-04-05T03:00:00Z", // 04-04 23:00 -04
                "2026-04-05T03:30:00Z", // 04-04 23:30 -04
                "2026-04-05T04:00:00Z", // 04-05 00:00 -04
            ]
        );
        // Santiago skips 2026-09-06 00:00..01:00: the day, and the date range, open at 01:00 -03.
        let spring = schedule(
            r#"daily_at = ["00:30"]
               start_date = "2026-09-06"
               timezone = "America/Santiago""#,
        );
        assert_eq!(
            fires(&spring, "2026-09-01T00:00:00Z", 2),
            ["2026-09-06T04:00:00Z", "2026-09-07T03:30:00Z"]
        );
        // Lord Howe skips 2026-10-04 02:00..02:30 (+10:30 → +11:00, at 15:30Z).
        let half_hour = schedule(
            r#"every_minutes = 20
               timezone = "Australia/Lord_Howe""#,
        );
        assert_eq!(
            fires(&half_hour, "2026-10-03T15:00:00Z", 3),
            [
                "2026-10-03T15:10:00Z",
                "2026-10-03T15:30:00Z",
                "2026-10-03T15:40:00Z"
            ]
        );
    }

    // --- last_between ---------------------------------------------------------------------

    #[test]
    fn last_between_finds_the_latest_run_in_the_interval() {
        let s = schedule(
            r#"daily_at = ["08:00", "17:30"]
               timezone = "Europe/Berlin""#,
        );
        let since = utc("2026-01-04T00:00:00Z");
        assert_eq!(
            s.last_between(since, utc("2026-01-05T12:00:00Z")),
            Some(utc("2026-01-05T07:00:00Z"))
        );
        assert_eq!(
            s.last_between(since, utc("2026-01-05T16:30:00Z")),
            Some(utc("2026-01-05T16:30:00Z")),
            "`at` is inclusive"
        );
        assert_eq!(
            s.last_between(utc("2026-01-05T07:00:00Z"), utc("2026-01-05T12:00:00Z")),
            None,
            "`since` is exclusive"
        );

        let every = schedule(
            r#"every_minutes = 15
               between = ["08:00", "18:00"]"#,
        );
        assert_eq!(
            every.last_between(since, utc("2026-01-06T03:00:00Z")),
            Some(utc("2026-01-05T18:00:00Z"))
        );
        assert_eq!(
            every.last_between(utc("2026-01-05T18:00:00Z"), utc("2026-01-06T07:59:00Z")),
            None
        );
    }

    #[test]
    fn last_between_respects_the_date_range() {
        let s = schedule(
            r#"every_minutes = 60
               start_date = "2026-01-05"
               end_date = "2026-01-05""#,
        );
        let since = utc("2026-01-01T00:00:00Z");
        assert_eq!(
            s.last_between(since, utc("2026-02-01T00:00:00Z")),
            Some(utc("2026-01-05T23:00:00Z"))
        );
        assert_eq!(s.last_between(since, utc("2026-01-04T23:59:59Z")), None);

        let cron = schedule(
            r#"cron = "0 12 * * *"
               end_date = "2026-03-02""#,
        );
        assert_eq!(
            cron.last_between(since, utc("2026-06-01T00:00:00Z")),
            Some(utc("2026-03-02T12:00:00Z"))
        );
    }

    #[test]
    fn last_between_sees_the_second_pass_of_a_repeated_hour() {
        let s = schedule(
            r#"every_minutes = 30
               timezone = "America/New_York""#,
        );
        // 06:45Z is 01:45 EST, the second pass: the latest run is 01:30 EST.
        assert_eq!(
            s.last_between(utc("2026-11-01T00:00:00Z"), utc("2026-11-01T06:45:00Z")),
            Some(utc("2026-11-01T06:30:00Z"))
        );
    }

    // --- describe -------------------------------------------------------------------------

    #[test]
    fn describe_summarises_each_form() {
        let cases = [
            (
                r#"daily_at = ["17:30", "08:00"]
                   days_of_week = ["mon", "tue", "wed", "thu", "fri"]
                   timezone = "Europe/Berlin""#,
                "daily at 08:00, 17:30 on mon-fri (Europe/Berlin)",
            ),
            (
                r#"every_minutes = 15
                   between = ["08:00", "18:00"]
                   timezone = "America/New_York""#,
                "every 15 minutes from 08:00 to 18:00 (America/New_York)",
            ),
            ("every_minutes = 1", "every minute (UTC)"),
            (r#"cron = "0 */5 * * * *""#, r#"cron "0 */5 * * * *" (UTC)"#),
            (
                r#"daily_at = ["06:00"]
                   days_of_month = [1, 15]
                   start_date = "2026-01-01"
                   end_date = "2026-12-31""#,
                "daily at 06:00 on day 1, 15 of the month from 2026-01-01 to 2026-12-31 (UTC)",
            ),
            (
                r#"daily_at = ["06:00"]
                   days_of_month = ["last", 1]
                   days_of_week = ["sun", "sat"]"#,
                "daily at 06:00 on day 1 and the last day of the month if it is a sat, sun (UTC)",
            ),
            (
                r#"every_minutes = 60
                   days_of_month = ["last"]
                   days_of_week = ["mon", "wed", "fri"]
                   end_date = "2026-12-31""#,
                "every 60 minutes on the last day of the month if it is a mon, wed, fri \
                 until 2026-12-31 (UTC)",
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(schedule(spec).describe(), expected);
        }
    }

    // --- Validation -----------------------------------------------------------------------

    #[test]
    fn error_display_names_field_and_value() {
        let error = assert_error(r#"cron = "61 * * * *""#, "cron", "61 * * * *");
        assert_eq!(
            error.to_string(),
            r#"cron: "61 * * * *" has a bad minute field "61": number out of bounds"#
        );
    }

    #[test]
    fn bad_timezones_are_refused() {
        assert_error(
            r#"daily_at = ["08:00"]
               timezone = """#,
            "timezone",
            "",
        );
        assert_error(
            r#"daily_at = ["08:00"]
               timezone = "Mars/Olympus_Mons""#,
            "timezone",
            "Mars/Olympus_Mons",
        );
    }

    #[test]
    fn bad_cron_expressions_are_refused_with_croners_reason() {
        let error = assert_error(r#"cron = "0 25 * * *""#, "cron", "0 25 * * *");
        assert!(error.message.contains("hour field \"25\""), "{error}");
        let error = assert_error(r#"cron = "0 0 * *""#, "cron", "0 0 * *");
        assert!(error.message.starts_with("has 4 fields"), "{error}");
        let error = assert_error(r#"cron = "0 0 0 1 1 * 2030""#, "cron", "0 0 0 1 1 * 2030");
        assert!(error.message.starts_with("has 7 fields"), "{error}");
        let error = assert_error(r#"cron = "*/0 * * * *""#, "cron", "*/0 * * * *");
        assert!(error.message.contains("step cannot be zero"), "{error}");
        let error = assert_error(r#"cron = "0 x * * *""#, "cron", "0 x * * *");
        assert!(error.message.contains("hour field \"x\""), "{error}");
        assert_error(r#"cron = """#, "cron", "");
        let error = assert_error(r#"cron = "0 0 31 2 *""#, "cron", "0 0 31 2 *");
        assert!(error.message.starts_with("never fires"), "{error}");
    }

    #[test]
    fn bad_times_of_day_are_refused() {
        for bad in ["8:00pm", "24:00", "08:60", "0800", "08:0", ""] {
            assert_error(&format!("daily_at = [\"08:00\", \"{bad}\"]"), "daily_at", bad);
        }
        assert_error("daily_at = []", "daily_at", "");
        // H:MM is accepted.
        assert_eq!(
            schedule(r#"daily_at = ["8:05"]"#).describe(),
            "daily at 08:05 (UTC)"
        );
    }

    #[test]
    fn bad_windows_are_refused() {
        assert_error(
            r#"daily_at = ["08:00"]
               between = ["08:00", "18:00"]"#,
            "between",
            "08:00, 18:00",
        );
        assert_error(
            r#"every_minutes = 5
               between = ["08:00"]"#,
            "between",
            "08:00",
        );
        assert_error(
            r#"every_minutes = 5
               between = ["08:00", "12:00", "18:00"]"#,
            "between",
            "08:00, 12:00, 18:00",
        );
        assert_error(
            r#"every_minutes = 5
               between = ["18:00", "08:00"]"#,
            "between",
            "18:00, 08:00",
        );
        assert_error(
            r#"every_minutes = 5
               between = ["08:00", "6pm"]"#,
            "between",
            "6pm",
        );
    }

    #[test]
    fn every_minutes_out_of_range_is_refused() {
        assert_error("every_minutes = 0", "every_minutes", "0");
        assert_error("every_minutes = 1441", "every_minutes", "1441");
        schedule("every_minutes = 1440");
    }

    #[test]
    fn bad_day_filters_are_refused() {
        assert_error(
            r#"daily_at = ["08:00"]
               days_of_week = ["mon", "funday"]"#,
            "days_of_week",
            "funday",
        );
        assert_error(
            r#"daily_at = ["08:00"]
               days_of_week = []"#,
            "days_of_week",
            "",
        );
        for bad in [0, 32] {
            assert_error(
                &format!("daily_at = [\"08:00\"]\ndays_of_month = [1, {bad}]"),
                "days_of_month",
                &bad.to_string(),
            );
        }
        assert_error(
            r#"every_minutes = 5
               days_of_month = []"#,
            "days_of_month",
            "",
        );
    }

    #[test]
    fn day_filters_with_cron_are_refused() {
        assert_error(
            r#"cron = "0 8 * * *"
               days_of_week = ["mon", "tue"]"#,
            "days_of_week",
            "mon, tue",
        );
        assert_error(
            r#"cron = "0 8 * * *"
               days_of_month = [1, "last"]"#,
            "days_of_month",
            "1, last",
        );
    }

    #[test]
    fn end_date_before_start_date_is_refused() {
        let error = assert_error(
            r#"daily_at = ["08:00"]
               start_date = "2026-01-01"
               end_date = "2025-12-31""#,
            "end_date",
            "2025-12-31",
        );
        assert_eq!(error.message, "is before start_date 2026-01-01");
    }

    #[test]
    fn exactly_one_when_form_is_required() {
        let error = assert_error(r#"timezone = "UTC""#, "cron", "");
        assert!(
            error.message.contains("cron, daily_at or every_minutes"),
            "{error}"
        );
        let error = assert_error(
            r#"cron = "0 8 * * *"
               daily_at = ["08:00", "09:00"]"#,
            "daily_at",
            "08:00, 09:00",
        );
        assert!(
            error.message.starts_with("cannot be combined with cron"),
            "{error}"
        );
        assert_error(
            r#"daily_at = ["08:00"]
               every_minutes = 15"#,
            "every_minutes",
            "15",
        );
    }

    // --- Serde ----------------------------------------------------------------------------

    #[test]
    fn the_documented_example_parses_and_compiles() {
        #[derive(Deserialize)]
        struct File {
            task: Task,
        }
        #[derive(Deserialize)]
        struct Task {
            schedule: Vec<ScheduleSpec>,
        }
        let file: File = toml::from_str(
            r#"
[[task.schedule]]
daily_at = ["08:00", "17:30"]
days_of_week = ["mon", "tue", "wed", "thu", "fri"]
timezone = "Europe/Berlin"

[[task.schedule]]
every_minutes = 15
between = ["08:00", "18:00"]
timezone = "America/New_York"

[[task.schedule]]
cron = "0 */5 * * * *"
timezone = "UTC"

[[task.schedule]]
daily_at = ["06:00"]
days_of_month = [1, 15, "last"]
start_date = "2026-01-01"
end_date = 2026-12-31
"#,
        )
        .expect("the example parses");
        assert_eq!(file.task.schedule.len(), 4);
        for spec in &file.task.schedule {
            Schedule::compile(spec).expect("the example compiles");
        }
        let last = &file.task.schedule[3];
        assert_eq!(
            last.days_of_month,
            Some(vec![DayOfMonth::Day(1), DayOfMonth::Day(15), DayOfMonth::Last])
        );
        assert_eq!(last.end_date, NaiveDate::from_ymd_opt(2026, 12, 31));

        // The validated configuration travels as JSON between services.
        let json = serde_json::to_value(last).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "daily_at": ["06:00"],
                "days_of_month": [1, 15, "last"],
                "start_date": "2026-01-01",
                "end_date": "2026-12-31",
            })
        );
        let back: ScheduleSpec = serde_json::from_value(json).expect("deserializes");
        assert_eq!(&back, last);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_parse_errors() {
        let error = toml::from_str::<ScheduleSpec>("every_minute = 5").expect_err("typo");
        assert!(error.to_string().contains("every_minute"), "{error}");
        let error = toml::from_str::<ScheduleSpec>(r#"days_of_month = ["first"]"#)
            .expect_err("only \"last\" is a word");
        assert!(error.to_string().contains(r#""last""#), "{error}");
        let error = toml::from_str::<ScheduleSpec>("start_date = 2026-01-01T08:00:00")
            .expect_err("a date, not a date-time");
        assert!(error.to_string().contains("YYYY-MM-DD"), "{error}");
        let error =
            toml::from_str::<ScheduleSpec>(r#"start_date = "01.01.2026""#).expect_err("ISO dates only");
        assert!(error.to_string().contains("YYYY-MM-DD"), "{error}");
    }
}
