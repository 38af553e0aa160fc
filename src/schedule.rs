//! Schedules: when a sync runs under `ldsync run`. A schedule is an interval (`15m`, `4h`) or a cron expression,
//! in UTC or in a named time zone; this module reads it from connector.yaml and says when a sync is next due,
//! given when its last run started.
//!
//! A sync that missed ticks, because a run outlasted its interval or ldsync was not running, is due once, at once,
//! never once per missed tick.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// When a sync runs under `ldsync run`.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every so often, for example `15m` or `4h`, counted from the start of the last run.
    Every(Duration),
    /// At the times a cron expression (five fields, or six with seconds) names, in a time zone.
    Cron {
        expression: String,
        cron: Box<croner::Cron>,
        zone: Tz,
    },
}

/// How far before now a cron schedule's next tick is looked for: a last start older than this (a sync idle for
/// years, or a history damaged by hand) makes the sync due at its first tick of the past year, not at the end of a
/// search through every year since, which takes croner seconds to centuries for an expression that rarely or never
/// matches.
const CRON_LOOKBACK: TimeDelta = TimeDelta::days(366);

impl Schedule {
    /// When a sync on this schedule is next due, given the start of its last run (`None`: it never ran).
    ///
    /// The answer may be in the past: then the sync is due now, once. An interval sync that never ran is due now;
    /// a cron sync that never ran waits for its next tick.
    pub fn next_due(&self, last_start: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Every(every) => match last_start {
                Some(last) => TimeDelta::from_std(*every)
                    .ok()
                    .and_then(|every| last.checked_add_signed(every))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
                None => now,
            },
            // croner finds no next time only for expressions that never match (February 31st).
            Schedule::Cron { cron, zone, .. } => {
                let after = last_start.map_or(now, |last| last.max(now - CRON_LOOKBACK));
                next_tick(cron, *zone, after).unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
        }
    }
}

impl Schedule {
    /// The time between two runs around `now`: the interval, or the gap between a cron schedule's next two ticks
    /// (`None` for a cron expression that never matches). For alerts on a sync that has not succeeded in a while.
    pub fn interval_at(&self, now: DateTime<Utc>) -> Option<Duration> {
        match self {
            Schedule::Every(every) => Some(*every),
            Schedule::Cron { cron, zone, .. } => {
                let next = next_tick(cron, *zone, now)?;
                let after = next_tick(cron, *zone, next)?;
                (after - next).to_std().ok()
            }
        }
    }
}

/// The first tick of `cron` in `zone` strictly after `after`, in real time. Cron expressions name wall times, and
/// on the night daylight saving ends the clock shows an hour's wall times twice: a tick is taken in each pass
/// (every 15 minutes stays every 15 minutes), and never before `after`, so the repeated hour cannot run a sync back
/// to back.
fn next_tick(cron: &croner::Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::{Offset, TimeZone};
    let first = next_wall_tick(cron, zone, after.with_timezone(&zone), after)?;
    let offset = |t: DateTime<Utc>| t.with_timezone(&zone).offset().fix().local_minus_utc();
    let fold = offset(after) - offset(first);
    if fold <= 0 {
        return Some(first);
    }
    // The clocks went back between `after` and `first`: the wall times they show again may hold a sooner tick.
    let replay = after.with_timezone(&zone).naive_local() - TimeDelta::seconds(i64::from(fold));
    let replay_from = zone.from_local_datetime(&replay).earliest()?;
    let replayed = next_wall_tick(cron, zone, replay_from, after);
    Some(replayed.map_or(first, |tick| tick.min(first)))
}

/// The first tick of `cron` at a wall time after `from`'s whose instant is after `after`. A wall time the clock
/// shows twice has two instants, and croner answers with the first; when that one is not after `after`, the
/// second is taken, or the search goes on from it.
fn next_wall_tick(
    cron: &croner::Cron,
    zone: Tz,
    mut from: DateTime<Tz>,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    use chrono::{LocalResult, TimeZone};
    // Each round moves `from` past one wall time; two rounds cover a repeated hour.
    for _ in 0..4 {
        let next = cron.find_next_occurrence(&from, false).ok()?;
        let instants = match zone.from_local_datetime(&next.naive_local()) {
            LocalResult::Ambiguous(first, second) => [first, second],
            LocalResult::Single(only) => [only, only],
            LocalResult::None => [next, next],
        };
        if let Some(tick) = instants.iter().find(|t| t.with_timezone(&Utc) > after) {
            return Some(tick.with_timezone(&Utc));
        }
        from = instants[1];
    }
    None
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(every) => write!(f, "every {}", humantime::format_duration(*every)),
            Schedule::Cron {
                expression, zone, ..
            } => write!(f, "cron {expression} ({zone})"),
        }
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Reads `text`: an interval such as `15m` or `4h`, or a cron expression evaluated in `zone`.
pub fn parse_schedule(text: &str, zone: Tz) -> Result<Schedule, String> {
    let text = text.trim();
    if !text.contains(' ') {
        let every = humantime::parse_duration(text).map_err(|e| {
            format!("`{text}` is neither an interval such as 15m or 4h ({e}) nor a cron expression")
        })?;
        if every < Duration::from_secs(1) {
            return Err(format!("interval `{text}` is shorter than one second"));
        }
        return Ok(Schedule::Every(every));
    }
    parse_cron(text, zone)
}

fn parse_cron(text: &str, zone: Tz) -> Result<Schedule, String> {
    // croner takes an empty list item (`,` or `1,,2`) as a field that matches nothing, and then searches up to the
    // year 5000 for a time that never comes: seconds of CPU each time ldsync asks when the sync is due.
    if let Some(field) = text
        .split_whitespace()
        .find(|field| field.split(',').any(str::is_empty))
    {
        return Err(format!(
            "cron expression `{text}` is invalid: its field `{field}` has an empty list item"
        ));
    }
    // croner also takes `L` (meant for the day fields) in a time field as matching nothing: the same search.
    let fields: Vec<&str> = text.split_whitespace().collect();
    let time_fields = &fields[..fields.len().saturating_sub(3)];
    if let Some(field) = time_fields.iter().find(|field| {
        !field
            .chars()
            .all(|c| c.is_ascii_digit() || "*/-,".contains(c))
    }) {
        return Err(format!(
            "cron expression `{text}` is invalid: its time field `{field}` may hold only numbers, `*`, `-`, `/` \
             and `,`"
        ));
    }
    let cron = croner::Cron::new(text)
        .with_seconds_optional()
        .parse()
        .map_err(|e| format!("cron expression `{text}` is invalid: {e}"))?;
    Ok(Schedule::Cron {
        expression: text.to_string(),
        cron: Box::new(cron),
        zone,
    })
}

/// The mapping form of a schedule: a cron expression in a time zone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZonedCron {
    cron: String,
    time_zone: String,
}

impl ZonedCron {
    fn parse(self) -> Result<Schedule, String> {
        let zone: Tz = self.time_zone.parse().map_err(|_| {
            format!(
                "time_zone `{}` is not an IANA time zone name such as Europe/Berlin or America/New_York",
                self.time_zone
            )
        })?;
        parse_cron(self.cron.trim(), zone)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScheduleVisitor;
        impl<'de> Visitor<'de> for ScheduleVisitor {
            type Value = Schedule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a schedule: an interval such as 4h, a cron expression (UTC), or {cron: ..., time_zone: ...}",
                )
            }
            // Errors are raised inside the visitor so that they carry the field's line.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Schedule, E> {
                parse_schedule(v, Tz::UTC).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Schedule, A::Error> {
                let raw = ZonedCron::deserialize(de::value::MapAccessDeserializer::new(map))?;
                raw.parse().map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(ScheduleVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn schedules_are_intervals_or_cron() {
        assert!(
            matches!(parse_schedule("4h", Tz::UTC), Ok(Schedule::Every(d)) if d == Duration::from_secs(4 * 3600))
        );
        assert!(matches!(
            parse_schedule("*/15 * * * *", Tz::UTC),
            Ok(Schedule::Cron { .. })
        ));
        let err = parse_schedule("every day", Tz::UTC).unwrap_err();
        assert!(err.contains("cron expression"), "{err}");
        assert!(parse_schedule("4 parsecs", Tz::UTC).is_err());
        let err = parse_schedule("4x", Tz::UTC).unwrap_err();
        assert!(err.contains("neither an interval"), "{err}");
        let err = parse_schedule("500ms", Tz::UTC).unwrap_err();
        assert!(err.contains("shorter than one second"), "{err}");
    }

    #[test]
    fn an_interval_counts_from_the_last_start_and_runs_missed_ticks_once() {
        let every = Schedule::Every(Duration::from_secs(3600));
        let now = at("2026-11-24T10:00:00Z");
        assert_eq!(every.next_due(None, now), now);
        assert_eq!(
            every.next_due(Some(at("2026-11-24T09:30:00Z")), now),
            at("2026-11-24T10:30:00Z")
        );
        // Down for a day: due an hour after the last start, which is long past, so due now, once.
        assert_eq!(
            every.next_due(Some(at("2026-11-23T09:00:00Z")), now),
            at("2026-11-23T10:00:00Z")
        );
    }

    #[test]
    fn the_interval_of_a_schedule_is_its_period_or_the_gap_between_its_next_two_ticks() {
        let now = at("2026-11-24T10:20:00Z");
        let every = parse_schedule("4h", Tz::UTC).unwrap();
        assert_eq!(every.interval_at(now), Some(Duration::from_secs(4 * 3600)));
        let quarterly = parse_schedule("*/15 * * * *", Tz::UTC).unwrap();
        assert_eq!(quarterly.interval_at(now), Some(Duration::from_secs(900)));
        // Weekdays at 06:00: on a Friday, the next two ticks are Monday's and Tuesday's.
        let weekdays = parse_schedule("0 6 * * 1-5", Tz::UTC).unwrap();
        assert_eq!(
            weekdays.interval_at(at("2026-11-27T12:00:00Z")),
            Some(Duration::from_secs(24 * 3600))
        );
    }

    #[test]
    fn cron_ticks_follow_the_time_zone_and_daylight_saving() {
        let berlin = ZonedCron {
            cron: "0 6 * * *".into(),
            time_zone: "Europe/Berlin".into(),
        }
        .parse()
        .unwrap();
        // 06:00 in Berlin is 05:00 UTC in winter and 04:00 UTC in summer.
        let winter = at("2026-11-24T05:00:00Z");
        assert_eq!(
            berlin.next_due(Some(winter), winter),
            at("2026-11-25T05:00:00Z")
        );
        let summer = at("2026-07-01T04:00:00Z");
        assert_eq!(
            berlin.next_due(Some(summer), summer),
            at("2026-07-02T04:00:00Z")
        );
        // Never ran: the next tick after now.
        assert_eq!(
            berlin.next_due(None, at("2026-11-24T07:00:00Z")),
            at("2026-11-25T05:00:00Z")
        );
        // A tick missed while ldsync was down is due at once: the first tick after the last start.
        assert_eq!(
            berlin.next_due(Some(at("2026-11-20T05:00:01Z")), at("2026-11-24T07:00:00Z")),
            at("2026-11-21T05:00:00Z")
        );
        assert_eq!(berlin.to_string(), "cron 0 6 * * * (Europe/Berlin)");
    }

    #[test]
    fn the_repeated_hour_of_the_fall_back_night_never_runs_a_sync_back_to_back() {
        // On 2026-10-25 Berlin's clocks go from 03:00 CEST back to 02:00 CET: 02:00-02:59 happens twice, first at
        // 00:00-00:59 UTC, then at 01:00-01:59 UTC.
        let berlin = ZonedCron {
            cron: "*/15 * * * *".into(),
            time_zone: "Europe/Berlin".into(),
        }
        .parse()
        .unwrap();
        // A run that started at 02:20 CET (the second pass): the next tick is 02:30 CET, not 02:30 CEST an hour
        // earlier, which would make the sync due at once again and again.
        let second_pass = at("2026-10-25T01:20:00Z");
        assert_eq!(
            berlin.next_due(Some(second_pass), second_pass),
            at("2026-10-25T01:30:00Z")
        );
        // In the first pass, ticks follow each other as on any night.
        let first_pass = at("2026-10-25T00:20:00Z");
        assert_eq!(
            berlin.next_due(Some(first_pass), first_pass),
            at("2026-10-25T00:30:00Z")
        );
        // Every tick of the night comes after the start it follows, fifteen minutes on, across both passes.
        let mut start = at("2026-10-24T23:50:00Z");
        for _ in 0..12 {
            let next = berlin.next_due(Some(start), start);
            assert!(
                next > start && next - start <= TimeDelta::minutes(15),
                "{start} -> {next}"
            );
            start = next;
        }
        assert_eq!(start, at("2026-10-25T02:45:00Z"));
    }

    #[test]
    fn a_cron_field_with_an_empty_list_item_is_an_error_not_a_search_to_the_year_5000() {
        // Found by the schedule fuzz target (fuzz/regressions/schedule): croner accepted it, and each question
        // of when the sync is due took ten seconds.
        let started = std::time::Instant::now();
        for text in [", 22 * * *", "1,,2 * * * *", "0 6 * * 1,"] {
            let err = parse_schedule(text, Tz::UTC).unwrap_err();
            assert!(err.contains("has an empty list item"), "{text}: {err}");
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_letter_in_a_time_field_is_an_error_not_a_search_to_the_year_5000() {
        // Found by the schedule fuzz target (fuzz/regressions/schedule): croner took `L` in the seconds or hours
        // field as matching nothing, and each question of when the sync is due took seconds to minutes.
        let started = std::time::Instant::now();
        for (text, field) in [
            ("l */15 * * * *", "l"),
            ("0 L * * *", "L"),
            ("5 4 3x * * *", "3x"),
        ] {
            let err = parse_schedule(text, Tz::UTC).unwrap_err();
            assert!(
                err.contains(&format!("its time field `{field}` may hold only numbers")),
                "{text}: {err}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // The day fields keep croner's words: the last day of the month, Mondays, January.
        for text in [
            "0 6 L * *",
            "0 6 * * MON",
            "0 6 1 JAN *",
            "*/10 0-5 * * 1-5",
        ] {
            assert!(parse_schedule(text, Tz::UTC).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_last_start_from_ages_ago_is_looked_past_within_a_year_not_searched_through_the_centuries()
    {
        // Found by the schedule fuzz target (fuzz/regressions/schedule): a cron that never matches (February 31st)
        // after a start in the year -201,000 kept croner searching for more than ten seconds.
        let now = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let ancient = DateTime::from_timestamp(-6_409_289_000_000, 0).unwrap();
        let started = std::time::Instant::now();
        let never = parse_schedule("0 0 31 2 *", Tz::UTC).unwrap();
        assert_eq!(never.next_due(Some(ancient), now), DateTime::<Utc>::MAX_UTC);
        assert!(started.elapsed() < Duration::from_secs(2));
        // A daily sync idle for ten years is due at once: its first tick of the past year, after that start.
        let daily = parse_schedule("0 6 * * *", Tz::UTC).unwrap();
        let ten_years_ago = now - TimeDelta::days(3653);
        let due = daily.next_due(Some(ten_years_ago), now);
        assert!(
            due > ten_years_ago && due <= now && due >= now - CRON_LOOKBACK,
            "{due}"
        );
    }

    #[test]
    fn unknown_time_zones_are_errors() {
        let err = ZonedCron {
            cron: "0 6 * * *".into(),
            time_zone: "Mars/Olympus".into(),
        }
        .parse()
        .unwrap_err();
        assert!(
            err.contains("`Mars/Olympus` is not an IANA time zone"),
            "{err}"
        );
    }
}
