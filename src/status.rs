//! `ldsync status` and `ldsync history`: what each sync's runs did, its checkpoint, whether a run was left
//! unfinished, and when `ldsync run` will run it next, all read from the state store. Reading never writes.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::{Config, Mode, SyncConfig};
use crate::history::{self, RunRecord};
use crate::journal::Journal;
use crate::plan::CheckpointInfo;
use crate::report::{SyncFormat, table, write_json_document};
use crate::schedule::Schedule;
use crate::state::LocalStore;

/// Where one sync stands.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub sync: String,
    pub mode: Mode,
    pub segment: String,
    /// `None` for syncs that only run when asked (`ldsync sync`).
    pub schedule: Option<Schedule>,
    pub last_run: Option<RunRecord>,
    pub last_success: Option<DateTime<Utc>>,
    pub checkpoint: Option<CheckpointInfo>,
    /// Why the checkpoint could not be read, if it could not.
    pub checkpoint_error: Option<String>,
    /// An interrupted run whose journal the next run finishes first.
    pub unfinished_run: bool,
    /// When `ldsync run` runs the sync next; a time in the past means at once.
    pub next_run: Option<DateTime<Utc>>,
}

/// Why a sync's history could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the run history of sync `{sync}` in {dir}: {source}")]
pub struct HistoryError {
    pub sync: String,
    pub dir: String,
    pub source: std::io::Error,
}

/// The sync's run records, oldest first.
pub fn runs_of(store: &LocalStore, sync: &str) -> Result<Vec<RunRecord>, HistoryError> {
    let dir = store.sync_dir(sync);
    history::read(&dir).map_err(|source| HistoryError {
        sync: sync.to_string(),
        dir: dir.display().to_string(),
        source,
    })
}

/// Where `sync` stands as of `now`.
pub fn status_of(
    config: &Config,
    sync: &SyncConfig,
    now: DateTime<Utc>,
) -> Result<SyncStatus, HistoryError> {
    let store = LocalStore::new(config.state_dir());
    let runs = runs_of(&store, &sync.name)?;
    let last_run = runs.last().cloned();
    let (checkpoint, checkpoint_error) = match store.load(&sync.name) {
        Ok(checkpoint) => (checkpoint.map(|c| CheckpointInfo::of(&c)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(SyncStatus {
        sync: sync.name.clone(),
        mode: sync.mode,
        segment: sync.segment.clone(),
        next_run: sync
            .schedule
            .as_ref()
            .map(|s| s.next_due(last_run.as_ref().map(|r| r.started_at), now)),
        schedule: sync.schedule.clone(),
        last_success: last_success(&runs),
        last_run,
        checkpoint,
        checkpoint_error,
        unfinished_run: Journal::exists(&store.sync_dir(&sync.name)),
    })
}

/// When the last successful run (synced or nothing to change) finished.
pub fn last_success(runs: &[RunRecord]) -> Option<DateTime<Utc>> {
    runs.iter()
        .rev()
        .find(|r| r.outcome.succeeded())
        .map(|r| r.finished_at)
}

fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
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
        "added",
        "removed",
        "requests",
        "429s",
        "seconds",
        "checkpoint keys",
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
            count(|r| r.adds),
            count(|r| r.removes),
            count(|r| r.calls.requests),
            count(|r| r.calls.rate_limited),
            run.map_or("-".into(), |r| {
                format!("{:.1}", r.duration_ms as f64 / 1000.0)
            }),
            status
                .checkpoint
                .as_ref()
                .map_or("none".into(), |c| c.key_count.to_string()),
            status.next_run.map_or("-".into(), |next| {
                if next <= now {
                    "due now".into()
                } else {
                    time(&next)
                }
            }),
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

/// Writes run records, oldest first: a table or JSON.
pub fn write_history(
    runs: &[RunRecord],
    format: SyncFormat,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if format == SyncFormat::Json {
        return write_json_document(out, "runs", &runs);
    }
    let mut table = table(vec![
        "sync", "run", "started", "outcome", "added", "removed", "batches", "requests", "retries",
        "429s", "seconds",
    ]);
    for run in runs {
        table.add_row(vec![
            run.sync.clone(),
            run.run_id.clone(),
            time(&run.started_at),
            run.outcome.as_str().replace('_', " "),
            run.adds.to_string(),
            run.removes.to_string(),
            format!("{}/{}", run.batches_acknowledged, run.batches_planned),
            run.calls.requests.to_string(),
            run.calls.retries.to_string(),
            run.calls.rate_limited.to_string(),
            format!("{:.1}", run.duration_ms as f64 / 1000.0),
        ]);
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
    config: &Config,
    syncs: &[&SyncConfig],
    limit: usize,
) -> Result<Vec<RunRecord>, HistoryError> {
    let store = LocalStore::new(config.state_dir());
    let mut runs = Vec::new();
    for sync in syncs {
        runs.extend(runs_of(&store, &sync.name)?);
    }
    runs.sort_by_key(|r| r.started_at);
    let skip = runs.len().saturating_sub(limit);
    Ok(runs.split_off(skip))
}
