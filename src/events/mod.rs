//! Events syncs: a model of metric events (orders, upgrades, revenue) sent to LaunchDarkly's metric import API, for
//! experiments, incrementally and exactly once.
//!
//! Each run reads the model's rows from the lateness window on (the checkpoint's watermark minus `lateness`; every
//! row on a first run), leaves out the rows the checkpoint records as sent, checks the rest ([`model`]), and packs
//! them into batches bounded in events and bytes. `plan` reports that (`plan::EventPlanner`); `sync` writes the
//! batches to the run journal, sends each under a payload ID derived from its rows and bytes (so a batch sent again
//! after a lost answer is recognised by LaunchDarkly), and commits the new checkpoint (`state::events`) only when
//! every batch is acknowledged (`run::events`). This module holds what both need: batches, their payload IDs, the
//! spool that keeps a run's batches on disk, and the rows it leaves out.

pub mod model;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

use crate::config::MAX_EVENT_BATCH_BYTES;
use crate::state::JournalBatch;
use crate::state::events::SentRow;
use model::RowProblem;

/// How many bad rows a plan or run record names by row id.
const BAD_ROW_EXAMPLES: usize = 10;

/// One import request's worth of events: the JSON array sent, byte for byte, every time the batch is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub index: usize,
    pub events: usize,
    /// `X-LaunchDarkly-Payload-ID`: derived from the sync, the batch's row ids and its bytes (see [`payload_id`]).
    pub payload_id: String,
    /// The request body before gzip: a JSON array of custom events.
    pub payload: String,
    /// The rows of its events, in order: once the batch is acknowledged they are sent, even if LaunchDarkly refuses
    /// a later batch of the run. (Empty in journals of releases before it was kept.)
    #[serde(default)]
    pub rows: Vec<SentRow>,
}

impl JournalBatch for EventBatch {
    fn index(&self) -> usize {
        self.index
    }

    fn units(&self) -> u64 {
        self.events as u64
    }
}

/// Rows that could not become events: counted by problem, and named by row id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRows {
    pub count: u64,
    pub by_problem: BTreeMap<RowProblem, u64>,
    /// `row id: problem`, for the first few.
    pub examples: Vec<String>,
}

impl BadRows {
    pub(crate) fn add(&mut self, row_id: &str, problem: RowProblem) {
        self.count += 1;
        *self.by_problem.entry(problem).or_default() += 1;
        if self.examples.len() < BAD_ROW_EXAMPLES {
            let row = if row_id.is_empty() {
                "(no row id)"
            } else {
                row_id
            };
            self.examples.push(format!("{row}: {problem}"));
        }
    }
}

impl std::fmt::Display for BadRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let problems: Vec<String> = self
            .by_problem
            .iter()
            .map(|(problem, count)| format!("{count} with {problem}"))
            .collect();
        write!(
            f,
            "{} row{} left out ({}); for example {}",
            self.count,
            if self.count == 1 { "" } else { "s" },
            problems.join(", "),
            self.examples.join("; ")
        )
    }
}

/// The payload ID of a batch of `sync`: a UUID (version 8) from a BLAKE3 hash of the sync's name, the batch's row
/// ids and its bytes. The same batch sent again has the same ID; two batches with identical events from different
/// rows (two orders of the same amount by the same user in the same millisecond) have different ones, so
/// LaunchDarkly counts both.
pub fn payload_id<'a>(
    sync: &'a str,
    row_ids: impl IntoIterator<Item = &'a str>,
    payload: &'a str,
) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in std::iter::once(sync).chain(row_ids).chain([payload]) {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Batches written to a temporary file in the sync's state directory as planning closes them, so that a run of
/// millions of events never holds them all; removed when dropped.
#[derive(Debug)]
pub struct Spool {
    out: BufWriter<NamedTempFile>,
}

impl Spool {
    const PREFIX: &str = ".events-spool.";

    pub fn new(dir: &Path) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let file = tempfile::Builder::new()
            .prefix(Self::PREFIX)
            .tempfile_in(dir)?;
        Ok(Spool {
            out: BufWriter::new(file),
        })
    }

    /// Removes the spool files of runs killed while planning (a run's own is removed when it is dropped). Call
    /// it holding the sync's lock.
    pub fn remove_stale(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(Self::PREFIX)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn push(&mut self, batch: &EventBatch) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, batch)?;
        self.out.write_all(b"\n")
    }

    /// The batches written, in order, read back one at a time.
    pub fn into_batches(
        self,
    ) -> std::io::Result<impl Iterator<Item = std::io::Result<EventBatch>>> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        let lines = BufReader::new(file.reopen()?).lines();
        // The temporary file lives as long as the iterator reading it.
        Ok(lines.map(move |line| {
            let _spool = &file;
            serde_json::from_str(&line?).map_err(std::io::Error::from)
        }))
    }
}

/// Packs events into JSON arrays of at most `max_events` events and [`MAX_EVENT_BATCH_BYTES`] bytes, writing each
/// to the spool (if any) as it closes.
pub(crate) struct Batcher<'s> {
    sync: String,
    max_events: usize,
    current: String,
    rows: Vec<SentRow>,
    closed: Vec<usize>,
    spool: Option<&'s mut Spool>,
}

impl<'s> Batcher<'s> {
    pub(crate) fn new(sync: &str, max_events: usize, spool: Option<&'s mut Spool>) -> Self {
        Batcher {
            sync: sync.to_string(),
            max_events,
            current: String::new(),
            rows: Vec::new(),
            closed: Vec::new(),
            spool,
        }
    }

    /// Adds the event of row `row_id`, dated `at_ms`.
    pub(crate) fn push(&mut self, row_id: &str, at_ms: i64, event: &str) -> std::io::Result<()> {
        // `[` + events joined by `,` + `]`.
        let events = self.rows.len();
        let grown = self.current.len() + event.len() + 2;
        if events == self.max_events || (events > 0 && grown > MAX_EVENT_BATCH_BYTES) {
            self.close()?;
        }
        self.current
            .push(if self.rows.is_empty() { '[' } else { ',' });
        self.current.push_str(event);
        self.rows.push(SentRow {
            row_id: row_id.to_string(),
            at_ms,
        });
        Ok(())
    }

    fn close(&mut self) -> std::io::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.current.push(']');
        let payload = std::mem::take(&mut self.current);
        let rows = std::mem::take(&mut self.rows);
        let events = rows.len();
        if let Some(spool) = self.spool.as_deref_mut() {
            let row_ids = rows.iter().map(|row| row.row_id.as_str());
            spool.push(&EventBatch {
                index: self.closed.len(),
                events,
                payload_id: payload_id(&self.sync, row_ids, &payload),
                payload,
                rows,
            })?;
        }
        self.closed.push(events);
        Ok(())
    }

    /// The events in each batch.
    pub(crate) fn finish(mut self) -> std::io::Result<Vec<usize>> {
        self.close()?;
        Ok(self.closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batches `events` (row id, JSON) make, spooled and read back.
    fn batched(max_events: usize, events: &[(String, String)]) -> Vec<EventBatch> {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path()).unwrap();
        let mut batcher = Batcher::new("s", max_events, Some(&mut spool));
        for (at_ms, (row_id, event)) in events.iter().enumerate() {
            batcher.push(row_id, at_ms as i64, event).unwrap();
        }
        let sizes = batcher.finish().unwrap();
        let batches: Vec<EventBatch> = spool.into_batches().unwrap().map(Result::unwrap).collect();
        assert_eq!(sizes, batches.iter().map(|b| b.events).collect::<Vec<_>>());
        batches
    }

    #[test]
    fn batches_close_at_their_event_count_and_byte_size() {
        let events: Vec<(String, String)> = (0..7)
            .map(|i| (format!("r{i}"), format!("{{\"n\":{i}}}")))
            .collect();
        let batches = batched(3, &events);
        assert_eq!(
            batches.iter().map(|b| b.events).collect::<Vec<_>>(),
            [3, 3, 1]
        );
        assert_eq!(batches[0].payload, r#"[{"n":0},{"n":1},{"n":2}]"#);
        assert_eq!(batches[2].payload, r#"[{"n":6}]"#);
        assert_eq!(
            batches[2].rows,
            [SentRow {
                row_id: "r6".into(),
                at_ms: 6
            }],
            "a batch names its rows, so that a refused run's acknowledged ones are kept"
        );
        assert_eq!(batches[2].index, 2);

        let big = format!("\"{}\"", "x".repeat(MAX_EVENT_BATCH_BYTES / 2));
        let events: Vec<(String, String)> =
            (0..3).map(|i| (format!("r{i}"), big.clone())).collect();
        let batches = batched(1000, &events);
        assert_eq!(
            batches.len(),
            3,
            "two halves and their brackets overflow a batch"
        );
        assert!(
            batches
                .iter()
                .all(|b| b.payload.len() <= MAX_EVENT_BATCH_BYTES)
        );
        let parsed: Vec<String> = serde_json::from_str(&batches[0].payload).unwrap();
        assert_eq!(parsed.len(), 1);
    }

    #[test]
    fn payload_ids_follow_the_sync_the_rows_and_the_bytes() {
        let id = payload_id("orders", ["r1", "r2"], "[1,2]");
        assert_eq!(id, payload_id("orders", ["r1", "r2"], "[1,2]"));
        assert_eq!(id.len(), 36);
        for other in [
            payload_id("refunds", ["r1", "r2"], "[1,2]"),
            payload_id("orders", ["r1", "r3"], "[1,2]"),
            payload_id("orders", ["r1", "r2"], "[1,3]"),
            payload_id("orders", ["r1r", "2"], "[1,2]"),
        ] {
            assert_ne!(id, other);
        }
    }
}
