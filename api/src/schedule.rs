//! When a check runs: cron schedules with their time zone, and Sensu 6's `subdues`.
//!
//! One place for both, used by validation ([`crate::validate`]) to name what is wrong and by
//! the backend's scheduler to fire, so what validates is exactly what runs.
//!
//! - **Cron** ([`CronSchedule`]): five fields or a `@` macro, with an optional `CRON_TZ=Zone`
//!   or `TZ=Zone` prefix (Sensu's, from robfig/cron) naming an IANA zone (`Europe/Paris`,
//!   `UTC`); the schedule is evaluated in that zone's local time, daylight saving included.
//!   An unknown zone is an error. Without a prefix the zone is UTC (Sensu's backend runs in
//!   whatever zone its host has; Cairn does not depend on the host).
//! - **Subdues** ([`Subdue`]): windows in which a scheduled check is not run, as sensu-go's
//!   `TimeWindowRepeated`: `begin` and `end` are RFC 3339 times with an offset, `end` not
//!   before `begin`; `repeat` is empty (the one absolute window, ends excluded) or names
//!   periods: `daily`, `weekly` (the weekday of `begin`), `weekdays`, `weekends`, `mondays` …
//!   `sundays`, `monthly` (the day of month of `begin`), `annually`. A repeated window is the
//!   same clock time and length as `begin`..`end`, in `begin`'s offset, on each day the period
//!   names, from `begin` on. The day arithmetic follows sensu-go exactly, including its edge:
//!   a window that crosses midnight is matched on its second day only when that day is one the
//!   period also names, or when the window is found from its first day in the same week.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, FixedOffset, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// A cron schedule and the zone it is read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    zone: Tz,
    cron: croner::Cron,
}

impl CronSchedule {
    /// Parses `text`: an optional `CRON_TZ=`/`TZ=` prefix, then five fields or a macro.
    ///
    /// # Errors
    /// What is wrong, quoting `text`: an unknown zone, a pattern that is not five fields, or
    /// one croner refuses.
    pub fn parse(text: &str) -> Result<CronSchedule, String> {
        let trimmed = text.trim();
        let (zone, pattern) = match trimmed.split_once(char::is_whitespace) {
            Some((prefix, rest)) if prefix.starts_with("TZ=") || prefix.starts_with("CRON_TZ=") => {
                let name = prefix.split_once('=').map_or("", |(_, zone)| zone);
                let zone = Tz::from_str(name).map_err(|_| {
                    format!(
                        "\"{text}\" names the time zone \"{name}\", which is not an IANA time zone (such as UTC or Europe/Paris)"
                    )
                })?;
                (zone, rest.trim())
            }
            _ => (Tz::UTC, trimmed),
        };
        if !pattern.starts_with('@') && pattern.split_whitespace().count() != 5 {
            return Err(format!("\"{text}\" is not a five-field cron schedule"));
        }
        let cron = croner::Cron::new(pattern)
            .parse()
            .map_err(|err| format!("\"{text}\" is not a valid cron schedule: {err}"))?;
        Ok(CronSchedule { zone, cron })
    }

    /// The zone the schedule is read in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first occurrence strictly after `after` (unix seconds); `None` when there is none.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start = self.zone.timestamp_opt(after, 0).single()?;
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|next| next.timestamp())
    }
}

/// A repeat period of a [`Subdue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Annually,
    Monthly,
    Weekly,
    Weekdays,
    Weekends,
    Daily,
    Day(Weekday),
}

/// The periods Sensu accepts, by name.
const PERIODS: [(&str, Period); 13] = [
    ("annually", Period::Annually),
    ("monthly", Period::Monthly),
    ("weekly", Period::Weekly),
    ("weekdays", Period::Weekdays),
    ("weekends", Period::Weekends),
    ("daily", Period::Daily),
    ("sundays", Period::Day(Weekday::Sun)),
    ("mondays", Period::Day(Weekday::Mon)),
    ("tuesdays", Period::Day(Weekday::Tue)),
    ("wednesdays", Period::Day(Weekday::Wed)),
    ("thursdays", Period::Day(Weekday::Thu)),
    ("fridays", Period::Day(Weekday::Fri)),
    ("saturdays", Period::Day(Weekday::Sat)),
];

/// One subdue window of a check (Sensu 6's `subdues` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subdue {
    begin: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
    repeat: Vec<Period>,
}

impl Subdue {
    /// Parses one `subdues` entry as stored (`{"begin", "end", "repeat"}`).
    ///
    /// # Errors
    /// What is wrong, naming the field: not an object, an unknown field, a time that is not
    /// RFC 3339 with an offset, `end` before `begin`, an unknown period.
    pub fn parse(value: &serde_json::Value) -> Result<Subdue, String> {
        let Some(object) = value.as_object() else {
            return Err("a subdue window is an object with begin, end and repeat".to_owned());
        };
        if let Some(unknown) = object
            .keys()
            .find(|key| !matches!(key.as_str(), "begin" | "end" | "repeat"))
        {
            return Err(format!(
                "unknown field \"{unknown}\": a subdue window has begin, end and repeat"
            ));
        }
        let time = |field: &str| -> Result<DateTime<FixedOffset>, String> {
            let text = object
                .get(field)
                .and_then(|value| value.as_str())
                .ok_or_else(|| {
                    format!(
                        "{field} is required: an RFC 3339 time such as 2022-04-18T17:00:00-07:00"
                    )
                })?;
            DateTime::parse_from_rfc3339(text).map_err(|err| {
                format!("{field} \"{text}\" is not an RFC 3339 time with an offset (such as 2022-04-18T17:00:00-07:00): {err}")
            })
        };
        let begin = time("begin")?;
        let end = time("end")?;
        if end < begin {
            return Err("end time must be after begin time".to_owned());
        }
        let mut repeat = Vec::new();
        match object.get("repeat") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(items)) => {
                for item in items {
                    let name = item.as_str().unwrap_or_default();
                    let Some((_, period)) = PERIODS.iter().find(|(known, _)| *known == name) else {
                        let known: Vec<&str> = PERIODS.iter().map(|(name, _)| *name).collect();
                        return Err(format!(
                            "invalid repeat period {item}: one of {}",
                            known.join(", ")
                        ));
                    };
                    repeat.push(*period);
                }
            }
            Some(other) => return Err(format!("repeat must be a list of periods, not {other}")),
        }
        Ok(Subdue { begin, end, repeat })
    }

    /// Whether `now` (unix seconds) falls in this window.
    pub fn contains(&self, now: i64) -> bool {
        let Some(now) = Utc.timestamp_opt(now, 0).single() else {
            return false;
        };
        let now = now.with_timezone(self.begin.offset());
        if self.repeat.is_empty() {
            return now > self.begin && now < self.end;
        }
        self.repeat.iter().any(|period| match period {
            Period::Annually => {
                now.day() == self.begin.day()
                    && now.month() == self.begin.month()
                    && self.on_day_of(now)
            }
            Period::Monthly => now.day() == self.begin.day() && self.on_day_of(now),
            Period::Weekly => self.on_weekday(now, self.begin.weekday()),
            Period::Weekdays => [
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ]
            .into_iter()
            .any(|day| self.on_weekday(now, day)),
            Period::Weekends => {
                self.on_weekday(now, Weekday::Sat) || self.on_weekday(now, Weekday::Sun)
            }
            Period::Daily => self.on_day_of(now),
            Period::Day(day) => self.on_weekday(now, *day),
        })
    }

    /// The window's length.
    fn length(&self) -> Duration {
        self.end - self.begin
    }

    /// The window opening at `begin`'s clock time on the day `days` after `now`'s, in
    /// `begin`'s offset, holds `now` (ends excluded).
    fn opening_holds(&self, now: DateTime<FixedOffset>, days: i64) -> bool {
        if now < self.begin {
            return false;
        }
        let Some(today) = now
            .date_naive()
            .and_time(self.begin.time())
            .checked_add_signed(Duration::days(days))
        else {
            return false;
        };
        let Some(opens) = self.begin.offset().from_local_datetime(&today).single() else {
            return false;
        };
        now > opens && now < opens + self.length()
    }

    /// sensu-go's `inTimeRange`: the window opening today holds `now`.
    fn on_day_of(&self, now: DateTime<FixedOffset>) -> bool {
        self.opening_holds(now, 0)
    }

    /// sensu-go's `inDayTimeRange`: the window opening on `day` of `now`'s week (Sunday first,
    /// as Go counts) holds `now`.
    fn on_weekday(&self, now: DateTime<FixedOffset>, day: Weekday) -> bool {
        let offset =
            i64::from(day.num_days_from_sunday()) - i64::from(now.weekday().num_days_from_sunday());
        self.opening_holds(now, offset)
    }
}

/// Parses every entry of a check's `subdues`.
///
/// # Errors
/// The index of the first bad entry and what is wrong with it.
pub fn parse_subdues(values: &[serde_json::Value]) -> Result<Vec<Subdue>, (usize, String)> {
    values
        .iter()
        .enumerate()
        .map(|(index, value)| Subdue::parse(value).map_err(|err| (index, err)))
        .collect()
}

/// Whether any of `subdues` holds `now` (unix seconds).
pub fn subdued(subdues: &[Subdue], now: i64) -> bool {
    subdues.iter().any(|subdue| subdue.contains(now))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp()
    }

    #[test]
    fn cron_is_read_in_its_zone_with_daylight_saving() {
        let utc = CronSchedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            utc.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T02:30:00Z"))
        );
        let paris = CronSchedule::parse("CRON_TZ=Europe/Paris 0 9 * * *").unwrap();
        // Winter: UTC+1; summer (from 29 March 2026): UTC+2.
        assert_eq!(
            paris.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T08:00:00Z"))
        );
        assert_eq!(
            paris.next_after(at("2026-06-01T00:00:00Z")),
            Some(at("2026-06-01T07:00:00Z"))
        );
        let tokyo = CronSchedule::parse("TZ=Asia/Tokyo 0 8 * * FRI").unwrap();
        assert_eq!(tokyo.zone(), Tz::Asia__Tokyo);
        // Friday 08:00 in Tokyo is Thursday 23:00 UTC.
        assert_eq!(
            tokyo.next_after(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-03T23:00:00Z"))
        );
        assert!(CronSchedule::parse("@hourly").is_ok());
    }

    #[test]
    fn bad_cron_schedules_say_what_is_wrong() {
        let err = CronSchedule::parse("CRON_TZ=Mars/Olympus 0 9 * * *").unwrap_err();
        assert!(
            err.contains("\"Mars/Olympus\", which is not an IANA time zone"),
            "{err}"
        );
        let err = CronSchedule::parse("* * *").unwrap_err();
        assert!(err.contains("is not a five-field cron schedule"), "{err}");
        let err = CronSchedule::parse("61 * * * *").unwrap_err();
        assert!(err.contains("is not a valid cron schedule"), "{err}");
    }

    #[test]
    fn the_documented_subdues_hold_what_sensu_says() {
        // checks.md's example: weekday nights, weekends, and a Friday hour, all at UTC-7.
        let subdues = parse_subdues(&[
            json!({"begin": "2022-04-18T17:00:00-07:00", "end": "2022-04-19T08:00:00-07:00", "repeat": ["weekdays"]}),
            json!({"begin": "2022-04-23T00:00:00-07:00", "end": "2022-04-23T23:59:59-07:00", "repeat": ["weekends"]}),
            json!({"begin": "2022-04-22T10:00:00-07:00", "end": "2022-04-22T11:00:00-07:00", "repeat": ["fridays"]}),
        ])
        .unwrap();
        // Wednesday 2026-12-09.
        assert!(
            subdued(&subdues, at("2026-12-09T20:00:00-07:00")),
            "weekday evening"
        );
        assert!(
            subdued(&subdues, at("2026-12-09T03:00:00-07:00")),
            "weekday early morning"
        );
        assert!(
            !subdued(&subdues, at("2026-12-09T12:00:00-07:00")),
            "weekday noon"
        );
        assert!(
            subdued(&subdues, at("2026-12-12T12:00:00-07:00")),
            "Saturday noon"
        );
        assert!(
            subdued(&subdues, at("2026-12-13T12:00:00-07:00")),
            "Sunday noon"
        );
        assert!(
            subdued(&subdues, at("2026-12-11T10:30:00-07:00")),
            "the Friday hour"
        );
        assert!(
            !subdued(&subdues, at("2026-12-11T11:30:00-07:00")),
            "after it"
        );
        // Before `begin`, nothing repeats yet.
        assert!(!subdued(&subdues, at("2022-04-01T20:00:00-07:00")));
    }

    #[test]
    fn absolute_monthly_and_annual_windows() {
        let once =
            Subdue::parse(&json!({"begin": "2026-12-08T10:00:00Z", "end": "2026-12-08T11:00:00Z"}))
                .unwrap();
        assert!(once.contains(at("2026-12-08T10:30:00Z")));
        assert!(
            !once.contains(at("2026-12-08T10:00:00Z")),
            "ends excluded, as Sensu"
        );
        assert!(!once.contains(at("2026-12-09T10:30:00Z")));
        let monthly = Subdue::parse(&json!({"begin": "2026-01-15T01:00:00+02:00", "end": "2026-01-15T03:00:00+02:00", "repeat": ["monthly"]})).unwrap();
        assert!(monthly.contains(at("2026-07-15T02:00:00+02:00")));
        assert!(!monthly.contains(at("2026-07-16T02:00:00+02:00")));
        let yearly = Subdue::parse(&json!({"begin": "2025-12-25T00:00:00Z", "end": "2025-12-25T23:00:00Z", "repeat": ["annually"]})).unwrap();
        assert!(yearly.contains(at("2026-12-25T12:00:00Z")));
        assert!(!yearly.contains(at("2026-11-25T12:00:00Z")));
        let daily = Subdue::parse(&json!({"begin": "2026-01-01T23:00:00Z", "end": "2026-01-02T01:00:00Z", "repeat": ["daily"]})).unwrap();
        assert!(daily.contains(at("2026-06-01T23:30:00Z")));
        // sensu-go's daily window is found from today's opening only.
        assert!(!daily.contains(at("2026-06-02T00:30:00Z")));
    }

    #[test]
    fn bad_subdues_name_the_entry_and_field() {
        let err = parse_subdues(&[
            json!({"begin": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z"}),
            json!({"begin": "17:00", "end": "2026-01-01T01:00:00Z"}),
        ])
        .unwrap_err();
        assert_eq!(err.0, 1);
        assert!(
            err.1.contains("begin \"17:00\" is not an RFC 3339 time"),
            "{}",
            err.1
        );
        let err =
            Subdue::parse(&json!({"begin": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}))
                .unwrap_err();
        assert_eq!(err, "end time must be after begin time");
        let err = Subdue::parse(&json!({"begin": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z", "repeat": ["fortnightly"]})).unwrap_err();
        assert!(
            err.starts_with("invalid repeat period \"fortnightly\""),
            "{err}"
        );
        let err = Subdue::parse(
            &json!({"begin": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z", "days": {}}),
        )
        .unwrap_err();
        assert!(err.contains("unknown field \"days\""), "{err}");
    }
}
