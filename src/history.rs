//! Run history: one record per sync run, saying what the run did and how it ended, so an operator (or `ldsync
//! run`'s status) can tell what happened without reading logs. The local store keeps a JSON line a run in
//! `<sync>/runs.jsonl`; the PostgreSQL store a row a run.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::BadRows;
use crate::launchdarkly::CallStats;
use crate::plan::{Drift, KeySample};
use crate::state::{StateError, Store};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every batch was acknowledged and the checkpoint committed.
    Synced,
    /// The model matched the checkpoint's effect: no write call was made.
    NothingToChange,
    /// A removal gate stopped the run before any call.
    GateStopped,
    /// The run failed; the checkpoint did not move.
    Failed,
    /// A shutdown signal stopped the run; the checkpoint did not move, and the next run finishes its journal.
    Interrupted,
}

impl RunOutcome {
    /// The outcome as the run records spell it (`nothing_to_change`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Synced => "synced",
            RunOutcome::NothingToChange => "nothing_to_change",
            RunOutcome::GateStopped => "gate_stopped",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
        }
    }

    /// Every outcome, for metrics that show a zero before the first run of each.
    pub const ALL: [RunOutcome; 5] = [
        RunOutcome::Synced,
        RunOutcome::NothingToChange,
        RunOutcome::GateStopped,
        RunOutcome::Failed,
        RunOutcome::Interrupted,
    ];

    /// Whether the run did what it was asked (a gate stop is the sync protecting itself, not a success).
    pub fn succeeded(self) -> bool {
        matches!(self, RunOutcome::Synced | RunOutcome::NothingToChange)
    }
}

/// One sync run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub sync: String,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub outcome: RunOutcome,
    /// The run of an earlier, interrupted journal this run finished first, if any.
    pub resumed_run: Option<String>,
    pub adds: u64,
    pub removes: u64,
    /// A segment sync's audience when the run planned: the model's valid keys, counted once each (`None` for events
    /// syncs, runs that failed before planning, and records written before ldsync recorded it).
    #[serde(default)]
    pub audience: Option<u64>,
    /// Batches acknowledged by LaunchDarkly in this run (resumed ones included).
    pub batches_acknowledged: u64,
    pub batches_planned: u64,
    /// Model keys left out because LaunchDarkly holds them as excluded targets.
    #[serde(default)]
    pub excluded: KeySample,
    /// Hand edits found in the segment and repaired (mirror syncs of standard segments).
    #[serde(default)]
    pub drift: Option<Drift>,
    /// What an events sync sent and left out (`None` for segment syncs).
    #[serde(default)]
    pub events: Option<EventCounts>,
    /// Whether the run compared with the segment's real membership (`--full`, or the sync's `full_every` due).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    pub calls: CallStats,
    pub error: Option<String>,
}

/// What one run of an events sync sent and left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Events acknowledged by LaunchDarkly in this run (a resumed run's included).
    pub sent: u64,
    /// Rows in the lateness window that an earlier run had sent.
    pub already_sent: u64,
    pub bad_rows: BadRows,
    /// The latest event sent, once the run committed.
    pub watermark: Option<DateTime<Utc>>,
}

/// Appends `record` to its sync's history, durably.
pub fn append(store: &Store, record: &RunRecord) -> Result<(), StateError> {
    let line = serde_json::to_string(record).expect("run records always serialize");
    store.append_run(&record.sync, &record.run_id, record.finished_at, line)
}

/// The sync's run records, oldest first. A torn last line of the local store's file (a crash while appending) is
/// left out.
pub fn read(store: &Store, sync: &str) -> Result<Vec<RunRecord>, StateError> {
    Ok(store
        .runs(sync)?
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LocalStore;
    use std::io::Write;

    fn record(run_id: &str, outcome: RunOutcome, now: DateTime<Utc>) -> RunRecord {
        RunRecord {
            sync: "s".into(),
            run_id: run_id.into(),
            started_at: now,
            finished_at: now,
            duration_ms: 5,
            outcome,
            resumed_run: None,
            adds: 3,
            removes: 1,
            audience: Some(40),
            batches_acknowledged: 2,
            batches_planned: 2,
            excluded: KeySample::default(),
            drift: None,
            events: None,
            full: false,
            calls: CallStats {
                requests: 3,
                retries: 1,
                ..CallStats::default()
            },
            error: None,
        }
    }

    /// What a crash in the middle of an append leaves: `fragment`, part of a line, at the end of `path`.
    fn tear(path: &std::path::Path, fragment: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(fragment)
            .unwrap();
    }

    #[test]
    fn records_append_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let record = |run_id: &str, outcome| record(run_id, outcome, now);
        let store = Store::Local(LocalStore::new(dir.path()));
        append(&store, &record("r1", RunOutcome::Failed)).unwrap();
        append(&store, &record("r2", RunOutcome::Synced)).unwrap();
        tear(&dir.path().join("s").join("runs.jsonl"), b"{\"sync\":");
        let records = read(&store, "s").unwrap();
        assert_eq!(
            records,
            [
                record("r1", RunOutcome::Failed),
                record("r2", RunOutcome::Synced)
            ]
        );
    }

    #[test]
    fn a_last_line_torn_inside_a_character_is_left_out_too() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let store = Store::Local(LocalStore::new(dir.path()));
        append(&store, &record("r1", RunOutcome::Failed, now)).unwrap();
        // A crash in the middle of an error message naming `café`: the torn line ends inside the two bytes of `é`.
        let torn = "{\"sync\":\"s\",\"error\":\"caf\u{e9}".as_bytes();
        tear(
            &dir.path().join("s").join("runs.jsonl"),
            &torn[..torn.len() - 1],
        );
        assert_eq!(
            read(&store, "s").unwrap(),
            [record("r1", RunOutcome::Failed, now)]
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_before_the_next_record_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let record = |run_id: &str, outcome| record(run_id, outcome, now);
        let store = Store::Local(LocalStore::new(dir.path()));
        append(&store, &record("r1", RunOutcome::Failed)).unwrap();
        append(&store, &record("r2", RunOutcome::Synced)).unwrap();
        let path = dir.path().join("s").join("runs.jsonl");
        let whole = std::fs::read(&path).unwrap();
        tear(&path, b"{\"sync\":\"s\",\"run_id\":\"crashed");

        append(&store, &record("r3", RunOutcome::Synced)).unwrap();
        assert_eq!(
            read(&store, "s").unwrap(),
            [
                record("r1", RunOutcome::Failed),
                record("r2", RunOutcome::Synced),
                record("r3", RunOutcome::Synced)
            ]
        );
        let third = serde_json::to_string(&record("r3", RunOutcome::Synced)).unwrap() + "\n";
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [whole, third.into_bytes()].concat(),
            "the torn line is cut off, and the next record starts where it began"
        );
    }
}
