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
            Schedule::Cron { cron, zone, .. } => {
                let after = last_start.unwrap_or(now).with_timezone(zone);
                cron.find_next_occurrence(&after, false)
                    .map(|next| next.with_timezone(&Utc))
                    // croner finds no next time only for expressions that never match (February 31st).
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
        }
    }
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
