//! Schedules as connector.yaml gives them (an interval, a cron expression in UTC, or `{cron, time_zone}`), and as
//! `parse_schedule` reads a text in a time zone; then when each is next due, for a last start and a now the input
//! gives (a last start comes from the run history, which ldsync did not write in this run). A cron schedule is
//! never due at or before the start it follows.
//!
//! The input is lines: a time zone name (UTC when it names none), the last start in seconds since the epoch (`-`:
//! never ran), now in seconds since the epoch, then the schedule's text.
#![no_main]

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use ldsync::schedule::{Schedule, parse_schedule};
use libfuzzer_sys::fuzz_target;

fn time(seconds: i64) -> DateTime<Utc> {
    // chrono's range is about ±8.2e12 s around the epoch.
    DateTime::from_timestamp(seconds % 8_000_000_000_000, 0).expect("in chrono's range")
}

fn check(schedule: &Schedule, last_start: Option<DateTime<Utc>>, now: DateTime<Utc>) {
    let due = schedule.next_due(last_start, now);
    if let (Schedule::Cron { .. }, Some(last)) = (schedule, last_start) {
        assert!(
            due > last || due == DateTime::<Utc>::MAX_UTC,
            "{schedule} after a start at {last}: due at {due}"
        );
    }
    let _ = schedule.to_string();
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = input.splitn(4, '\n');
    let (Some(zone), Some(last_start), Some(now), Some(text)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return;
    };
    let zone: Tz = zone.parse().unwrap_or(Tz::UTC);
    let last_start = last_start.trim().parse().ok().map(time);
    let now = time(now.trim().parse().unwrap_or(1_764_000_000));
    if let Ok(schedule) = parse_schedule(text, zone) {
        check(&schedule, last_start, now);
    }
    if let Ok(schedule) = serde_yaml_ng::from_str::<Schedule>(text) {
        check(&schedule, last_start, now);
    }
});
