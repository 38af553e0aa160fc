//! `ldsync status` and `ldsync history`: what each sync's runs did, its checkpoint, whether a run was left
//! unfinished, and when `ldsync run` will run it next, all read from the state store. Reading never writes.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, Mode, SyncEntry};
use crate::history::{self, RunRecord};
use crate::plan::CheckpointInfo;
use crate::report::{
    RUN_COLUMNS, SyncFormat, added_or_sent, run_cells, table, time, write_json_document,
};
use crate::schedule::Schedule;
use crate::state::events::{self as event_checkpoint, EventSettings};
use crate::state::{StateError, Store};

/// Where one sync stands.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub sync: String,
    /// `segment` or `events`.
    pub kind: &'static str,
    /// A segment sync's mode and segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// `None` for syncs that only run when asked (`ldsync sync`).
    pub schedule: Option<Schedule>,
    pub last_run: Option<RunRecord>,
    pub last_success: Option<DateTime<Utc>>,
    pub checkpoint: Option<CheckpointInfo>,
    /// An events sync's committed checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_checkpoint: Option<EventCheckpointInfo>,
    /// Why the checkpoint could not be read, if it could not.
    pub checkpoint_error: Option<String>,
    /// An interrupted run whose journal the next run finishes first.
    pub unfinished_run: bool,
    /// When `ldsync run` runs the sync next; a time in the past means at once.
    pub next_run: Option<DateTime<Utc>>,
}

/// How far an events sync has sent its model.
#[derive(Debug, Clone, Serialize)]
pub struct EventCheckpointInfo {
    pub run_id: String,
    pub committed_at: DateTime<Utc>,
    /// The time of the latest event sent.
    pub watermark: Option<DateTime<Utc>>,
    /// Events sent since the first run.
    pub events_sent: u64,
}

/// Why a sync's history could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the run history of sync `{sync}`: {source}")]
pub struct HistoryError {
    pub sync: String,
    pub source: StateError,
}

/// The sync's run records, oldest first.
pub fn runs_of(store: &Store, sync: &str) -> Result<Vec<RunRecord>, HistoryError> {
    history::read(store, sync).map_err(|source| HistoryError {
        sync: sync.to_string(),
        source,
    })
}

/// Where `sync` stands as of `now`.
pub fn status_of(
    config: &Config,
    store: &Store,
    sync: SyncEntry<'_>,
    now: DateTime<Utc>,
) -> Result<SyncStatus, HistoryError> {
    let runs = runs_of(store, sync.name())?;
    Ok(status_with_runs(config, store, sync, &runs, now))
}

/// Where `sync` stands as of `now`, given its run records (oldest first) already read.
pub fn status_with_runs(
    config: &Config,
    store: &Store,
    sync: SyncEntry<'_>,
    runs: &[RunRecord],
    now: DateTime<Utc>,
) -> SyncStatus {
    let name = sync.name();
    let last_run = runs.last().cloned();
    let mut status = SyncStatus {
        sync: name.to_string(),
        kind: "segment",
        mode: None,
        segment: None,
        next_run: sync
            .schedule()
            .map(|s| s.next_due(last_run.as_ref().map(|r| r.started_at), now)),
        schedule: sync.schedule().cloned(),
        last_success: last_success(runs),
        last_run,
        checkpoint: None,
        events_checkpoint: None,
        checkpoint_error: None,
        unfinished_run: store.journal_exists(name),
    };
    match sync {
        SyncEntry::Segment(sync) => {
            status.mode = Some(sync.mode);
            status.segment = Some(sync.segment.clone());
            match store.manifest(name) {
                Ok(manifest) => status.checkpoint = manifest.as_ref().map(CheckpointInfo::of),
                Err(e) => status.checkpoint_error = Some(e.to_string()),
            }
        }
        SyncEntry::Events(sync) => {
            status.kind = "events";
            let settings = EventSettings::of(config);
            match event_checkpoint::load(store, sync, &settings) {
                Ok(checkpoint) => {
                    status.events_checkpoint = checkpoint.map(|c| EventCheckpointInfo {
                        run_id: c.run_id,
                        committed_at: c.committed_at,
                        watermark: c.progress.watermark.map(|w| w.time()),
                        events_sent: c.progress.events_sent,
                    })
                }
                Err(e) => status.checkpoint_error = Some(e.to_string()),
            }
        }
    }
    status
}

/// When the last successful run (synced or nothing to change) finished.
pub fn last_success(runs: &[RunRecord]) -> Option<DateTime<Utc>> {
    runs.iter()
        .rev()
        .find(|r| r.outcome.succeeded())
        .map(|r| r.finished_at)
}

/// How `ldsync status` writes where the syncs stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    /// A line per sync, then what needs attention.
    Table,
    /// `{"syncs": [...]}` with every count.
    Json,
    /// The status page `ldsync run` serves: each sync with charts of its last runs, as one HTML file.
    Html,
}

/// Writes the status of each sync: a table, then what needs attention, or JSON.
pub fn write_status(
    statuses: &[SyncStatus],
    now: DateTime<Utc>,
    format: SyncFormat,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if format == SyncFormat::Json {
        return write_json_document(out, "syncs", &statuses);
    }
    let mut table = table(vec![
        "sync",
        "schedule",
        "last run",
        "outcome",
        "added / sent",
        "removed",
        "requests",
        "429s",
        "seconds",
        "checkpoint",
        "next run",
    ]);
    for status in statuses {
        let run = status.last_run.as_ref();
        let count = |f: fn(&RunRecord) -> u64| run.map_or("-".into(), |r| f(r).to_string());
        table.add_row(vec![
            status.sync.clone(),
            status
                .schedule
                .as_ref()
                .map_or("when asked".into(), ToString::to_string),
            run.map_or("never".into(), |r| time(&r.started_at)),
            run.map_or("-".into(), |r| r.outcome.as_str().replace('_', " ")),
            count(|r| added_or_sent(r.adds, r.events.as_ref())),
            count(|r| r.removes),
            count(|r| r.calls.requests),
            count(|r| r.calls.rate_limited),
            run.map_or("-".into(), |r| {
                format!("{:.1}", r.duration_ms as f64 / 1000.0)
            }),
            checkpoint_cell(status),
            next_run_cell(status, now),
        ]);
    }
    writeln!(out, "{table}")?;
    for status in statuses {
        if status.unfinished_run {
            writeln!(
                out,
                "• {}: an interrupted run is waiting in its journal; the next run finishes it first",
                status.sync
            )?;
        }
        if let Some(error) = &status.checkpoint_error {
            writeln!(out, "✗ {}: {error}", status.sync)?;
        }
        if let Some(error) = status.last_run.as_ref().and_then(|r| r.error.as_ref()) {
            writeln!(out, "✗ last run: {error}")?;
        }
    }
    Ok(())
}

/// When the sync runs next, as of `now`: a time, `due now`, or `-` for a sync that runs only when asked.
pub fn next_run_cell(status: &SyncStatus, now: DateTime<Utc>) -> String {
    status.next_run.map_or("-".into(), |next| {
        if next <= now {
            "due now".into()
        } else {
            time(&next)
        }
    })
}

/// The checkpoint in a word: its key count, or the time of its latest event.
pub fn checkpoint_cell(status: &SyncStatus) -> String {
    if let Some(checkpoint) = &status.checkpoint {
        return format!("{} keys", checkpoint.key_count);
    }
    match &status.events_checkpoint {
        Some(events) => events
            .watermark
            .as_ref()
            .map_or("no events yet".into(), |at| {
                format!("events to {}", time(at))
            }),
        None => "none".into(),
    }
}

/// Writes run records, oldest first: a table or JSON.
pub fn write_history(
    runs: &[RunRecord],
    format: SyncFormat,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if format == SyncFormat::Json {
        return write_json_document(out, "runs", &runs);
    }
    let mut table = table(
        ["sync", "run", "started"]
            .into_iter()
            .chain(RUN_COLUMNS)
            .collect(),
    );
    for run in runs {
        let mut row = vec![run.sync.clone(), run.run_id.clone(), time(&run.started_at)];
        row.extend(run_cells(run));
        table.add_row(row);
    }
    writeln!(out, "{table}")?;
    for run in runs.iter().filter(|r| r.error.is_some()) {
        writeln!(
            out,
            "✗ {}: {}",
            run.run_id,
            run.error.as_deref().unwrap_or_default()
        )?;
    }
    Ok(())
}

/// The run records of `syncs`, merged in order of their start, the last `limit` of them.
pub fn history_of(
    store: &Store,
    syncs: &[SyncEntry<'_>],
    limit: usize,
) -> Result<Vec<RunRecord>, HistoryError> {
    let mut runs = Vec::new();
    for sync in syncs {
        runs.extend(runs_of(store, sync.name())?);
    }
    runs.sort_by_key(|r| r.started_at);
    let skip = runs.len().saturating_sub(limit);
    Ok(runs.split_off(skip))
}
