//! An events sync's checkpoint: how far its model has been sent (the watermark: the latest event's time and row
//! id), and the ids of the rows sent within the lateness window behind it, so that a row arriving late is sent
//! once and a row already sent is never sent again.
//!
//! The local store keeps it in `<sync>/events-checkpoint.json`, written through a temporary file that is fsynced and
//! renamed, so a crash leaves the old checkpoint or the new one; the PostgreSQL store in a row. The run journal
//! carries the checkpoint its run commits.

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::{StateError, Store};
use crate::config::{Config, EventSyncConfig};
use crate::vocab::ErrorClass;

/// The checkpoint format this build writes and reads.
pub const EVENT_CHECKPOINT_FORMAT: u32 = 1;

/// Why an events checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EventCheckpointError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "the events checkpoint {path} is unreadable or damaged ({problem}); move it aside to send the model's events \
         again from its first row, or restore it from a backup"
    )]
    Damaged { path: PathBuf, problem: String },
    #[error(
        "the events checkpoint {path} was made for {was}, not {now}: the events it counts as sent went there. Restore \
         the old settings, or move the checkpoint aside to send the model's events to {now} from its first row"
    )]
    SettingsChanged {
        path: PathBuf,
        was: String,
        now: String,
    },
}

impl EventCheckpointError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EventCheckpointError::State(e) => e.class(),
            EventCheckpointError::Damaged { .. } | EventCheckpointError::SettingsChanged { .. } => {
                ErrorClass::StateStore
            }
        }
    }
}

/// Where an events sync sends its events: change it and the checkpoint says nothing about what was sent there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    pub project: String,
    pub environment: String,
}

impl EventSettings {
    pub fn of(config: &Config) -> Self {
        EventSettings {
            project: config.launchdarkly.project.clone(),
            environment: config.launchdarkly.environment.clone(),
        }
    }
}

impl std::fmt::Display for EventSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.project, self.environment)
    }
}

/// The latest event sent: its time and row id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Watermark {
    pub at_ms: i64,
    pub row_id: String,
}

impl Watermark {
    pub fn time(&self) -> DateTime<Utc> {
        millis_to_time(self.at_ms)
    }
}

/// A row sent within the lateness window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SentRow {
    pub row_id: String,
    pub at_ms: i64,
}

/// What an events checkpoint holds besides who made it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The latest event sent; `None` before the first event.
    pub watermark: Option<Watermark>,
    /// The rows sent at or after the watermark's time minus the lateness window, sorted by row id.
    pub recent: Vec<SentRow>,
    /// Events sent since the first run.
    pub events_sent: u64,
}

impl Progress {
    /// Where the next run starts reading: the watermark's time minus `lateness`; `None` (from the first row) before
    /// the first event.
    pub fn window_start(&self, lateness_ms: i64) -> Option<i64> {
        self.watermark
            .as_ref()
            .map(|w| w.at_ms.saturating_sub(lateness_ms))
    }
}

/// Below this many ids, [`SentRows`] never prunes.
const PRUNE_FLOOR: usize = 4_096;

/// The rows a run sends, kept only as far as the checkpoint they lead to needs them: the ids dated before the
/// latest row's time minus `lateness` are dropped as rows come (at the latest when the ids kept have doubled since
/// the last pruning), so a first run or a backfill of millions of rows holds the ids inside the lateness window,
/// not every id it sends. Rows come in time order, so a pruned id is never needed again; a row repeating a pruned
/// id (more than `lateness` later) counts as a new row, as it would in a later run.
#[derive(Debug)]
pub struct SentRows {
    /// Row id to time, within the window (and what arrived since the last pruning).
    rows: HashMap<String, i64>,
    latest: Option<Watermark>,
    count: u64,
    lateness_ms: i64,
    prune_at: usize,
}

impl SentRows {
    pub fn new(lateness_ms: i64) -> Self {
        SentRows {
            rows: HashMap::new(),
            latest: None,
            count: 0,
            lateness_ms,
            prune_at: PRUNE_FLOOR,
        }
    }

    /// Records a row sent; `false` (and nothing recorded) when a row of the same id is recorded already.
    pub fn insert(&mut self, row_id: &str, at_ms: i64) -> bool {
        if self.rows.contains_key(row_id) {
            return false;
        }
        self.rows.insert(row_id.to_string(), at_ms);
        self.count += 1;
        if self
            .latest
            .as_ref()
            .is_none_or(|latest| (at_ms, row_id) > (latest.at_ms, latest.row_id.as_str()))
        {
            self.latest = Some(Watermark {
                at_ms,
                row_id: row_id.to_string(),
            });
        }
        if self.rows.len() >= self.prune_at {
            self.prune();
        }
        true
    }

    /// How many rows were recorded, pruned or not.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn prune(&mut self) {
        if let Some(latest) = &self.latest {
            let cutoff = latest.at_ms.saturating_sub(self.lateness_ms);
            self.rows.retain(|_, at_ms| *at_ms >= cutoff);
        }
        self.prune_at = (self.rows.len() * 2).max(PRUNE_FLOOR);
    }

    /// The progress of `base` once these rows are sent too: the later watermark, the rows of both within the
    /// lateness window behind it, and the events sent counted.
    pub fn advance(self, base: Progress) -> Progress {
        let watermark = base.watermark.into_iter().chain(self.latest).max();
        let cutoff = watermark
            .as_ref()
            .map_or(i64::MIN, |w| w.at_ms.saturating_sub(self.lateness_ms));
        let added = self
            .rows
            .into_iter()
            .map(|(row_id, at_ms)| SentRow { row_id, at_ms });
        let mut recent: Vec<SentRow> = base
            .recent
            .into_iter()
            .chain(added)
            .filter(|row| row.at_ms >= cutoff)
            .collect();
        recent.sort();
        Progress {
            watermark,
            recent,
            events_sent: base.events_sent + self.count,
        }
    }
}

/// A committed events checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCheckpoint {
    pub format: u32,
    pub sync: String,
    pub run_id: String,
    pub committed_at: DateTime<Utc>,
    pub settings: EventSettings,
    #[serde(flatten)]
    pub progress: Progress,
}

/// The sync's committed checkpoint, checked against its settings; `None` before its first commit.
pub fn load(
    store: &Store,
    sync: &EventSyncConfig,
    settings: &EventSettings,
) -> Result<Option<EventCheckpoint>, EventCheckpointError> {
    let path = PathBuf::from(store.event_checkpoint_location(&sync.name));
    let Some(bytes) = store.read_event_checkpoint(&sync.name)? else {
        return Ok(None);
    };
    let damaged = |problem: String| EventCheckpointError::Damaged {
        path: path.clone(),
        problem,
    };
    let checkpoint: EventCheckpoint =
        serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    if checkpoint.format != EVENT_CHECKPOINT_FORMAT {
        return Err(damaged(format!(
            "format {}, this ldsync reads {EVENT_CHECKPOINT_FORMAT}",
            checkpoint.format
        )));
    }
    if checkpoint.sync != sync.name {
        return Err(damaged(format!(
            "it belongs to sync `{}`, not `{}`",
            checkpoint.sync, sync.name
        )));
    }
    if &checkpoint.settings != settings {
        return Err(EventCheckpointError::SettingsChanged {
            path,
            was: checkpoint.settings.to_string(),
            now: settings.to_string(),
        });
    }
    Ok(Some(checkpoint))
}

/// Commits `checkpoint` atomically; the PostgreSQL store deletes the journal of the checkpoint's run in the same
/// transaction (see [`Store::commit_event_checkpoint`]).
pub fn commit(store: &Store, checkpoint: &EventCheckpoint) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(checkpoint).expect("a checkpoint always serializes");
    store.commit_event_checkpoint(&checkpoint.sync, &checkpoint.run_id, json)
}

/// Unix milliseconds as a time (the latest representable time when out of range).
pub fn millis_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of a million rows a second apart, with a minute of lateness, holds about a minute's ids, never all.
    #[test]
    fn sent_rows_keep_only_the_ids_inside_the_lateness_window() {
        let mut sent = SentRows::new(60_000);
        let mut most = 0;
        for i in 0..1_000_000i64 {
            assert!(sent.insert(&format!("r{i}"), i * 1000));
            most = most.max(sent.rows.len());
        }
        assert!(most <= 2 * PRUNE_FLOOR, "held {most} ids at once");
        assert!(
            !sent.insert("r999999", 999_999_000),
            "a repeated id is caught"
        );
        let base = Progress {
            watermark: Some(Watermark {
                at_ms: 10,
                row_id: "old".into(),
            }),
            recent: vec![SentRow {
                row_id: "old".into(),
                at_ms: 10,
            }],
            events_sent: 7,
        };
        let next = sent.advance(base);
        assert_eq!(
            next.watermark,
            Some(Watermark {
                at_ms: 999_999_000,
                row_id: "r999999".into()
            })
        );
        assert_eq!(next.events_sent, 1_000_007);
        assert_eq!(
            next.recent.len(),
            61,
            "the rows of the last minute, its first second included"
        );
        assert!(next.recent.iter().all(|row| row.at_ms >= 999_939_000));
    }
}
