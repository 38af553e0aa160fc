//! An events sync's checkpoint: how far its model has been sent (the watermark: the latest event's time and row
//! id), and the ids of the rows sent within the lateness window behind it, so that a row arriving late is sent
//! once and a row already sent is never sent again.
//!
//! The local store keeps it in `<sync>/events-checkpoint.json`, written through a temporary file that is fsynced and
//! renamed, so a crash leaves the old checkpoint or the new one; the PostgreSQL store in a row. The run journal
//! carries the checkpoint its run commits.

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

/// Commits `checkpoint` atomically.
pub fn commit(store: &Store, checkpoint: &EventCheckpoint) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(checkpoint).expect("a checkpoint always serializes");
    store.write_event_checkpoint(&checkpoint.sync, json)
}

/// Unix milliseconds as a time (the latest representable time when out of range).
pub fn millis_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
