//! The run journal: what a sync run is about to send, written durably before the first request, and each
//! acknowledgement appended as it arrives. It is what makes a run crash-safe: a run killed at any moment leaves a
//! journal from which the next run sends exactly the batches that were never acknowledged, then commits the
//! checkpoint the journal names.
//!
//! `<sync>/journal.jsonl` holds one JSON record a line: the run's header first, then every batch, all written
//! through a temporary file that is fsynced and renamed (so a journal is either whole or absent), then one `ack`
//! line per acknowledged batch, each fsynced before the next batch is sent. A crash while appending can tear only
//! the last line, which reads as a batch not yet acknowledged, and re-sending it is safe because LaunchDarkly
//! applies target changes idempotently; the torn tail is cut off before anything else is appended.
//!
//! A batch LaunchDarkly refuses for good (400, 404, 422) gets a `refused` line: such a run is never resumed, since
//! sending the same batch again would fail the same way. The next run abandons it and plans again.
//!
//! A segment sync's journal holds [`RunHeader`] and target-change [`Batch`]es; an events sync's holds its own header
//! and batches of events (see `events`), through the same [`JournalHeader`] and [`JournalBatch`] traits.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::launchdarkly::SegmentKind;
use crate::plan::Action;
use crate::state::{
    CheckpointSettings, PreparedSnapshot, StateError, read_if_present, sync_directory,
    write_file_atomically_with,
};

/// The journal format this build writes and reads.
pub const JOURNAL_FORMAT: u32 = 1;
const JOURNAL_FILE: &str = "journal.jsonl";

/// Why a journal could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot append to the run journal {path}: {source}")]
    Append {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the run journal {path} is damaged at line {line}: {problem}; move it aside and run `ldsync sync --full` to \
         reconcile the segment"
    )]
    Damaged {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// What a journal's first line must say, whatever kind of sync wrote it.
pub trait JournalHeader: Serialize + DeserializeOwned + Clone + std::fmt::Debug {
    fn format(&self) -> u32;
    fn sync(&self) -> &str;
    fn run_id(&self) -> &str;
    fn batch_count(&self) -> usize;
}

/// One request's worth of a journal.
pub trait JournalBatch: Serialize + DeserializeOwned + std::fmt::Debug {
    /// Its place in the run, from 0.
    fn index(&self) -> usize;
}

impl JournalHeader for RunHeader {
    fn format(&self) -> u32 {
        self.format
    }

    fn sync(&self) -> &str {
        &self.sync
    }

    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn batch_count(&self) -> usize {
        self.batch_count
    }
}

impl JournalBatch for Batch {
    fn index(&self) -> usize {
        self.index
    }
}

/// Whether a run left a journal in `dir` (without reading it).
pub fn exists(dir: &Path) -> bool {
    dir.join(JOURNAL_FILE).try_exists().unwrap_or(false)
}

/// What a segment sync's run is, and what it commits once every batch is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHeader {
    pub format: u32,
    pub sync: String,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub settings: CheckpointSettings,
    pub segment_kind: SegmentKind,
    /// The snapshot written for this run, committed as the checkpoint at the end.
    pub snapshot: PreparedSnapshot,
    pub batch_count: usize,
}

/// One request's worth of target changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub index: usize,
    pub action: Action,
    pub keys: Vec<String>,
}

/// LaunchDarkly's final refusal of one batch of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub index: usize,
    pub at: DateTime<Utc>,
    /// What LaunchDarkly said, token scrubbed.
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[serde(bound(
    serialize = "H: Serialize, B: Serialize",
    deserialize = "H: DeserializeOwned, B: DeserializeOwned"
))]
enum Record<H, B> {
    Run(H),
    Batch(B),
    Ack { index: usize, at: DateTime<Utc> },
    Refused(Refusal),
}

/// The lines of a journal that carry no header or batch.
type Mark = Record<(), ()>;

/// A journal on disk whose run has not committed yet.
#[derive(Debug)]
pub struct Journal<H = RunHeader, B = Batch> {
    pub header: H,
    batches: Vec<B>,
    acknowledged: BTreeSet<usize>,
    refusal: Option<Refusal>,
    path: PathBuf,
}

impl<H: JournalHeader, B: JournalBatch> Journal<H, B> {
    /// Writes the run's journal, whole, before anything is sent (line by line: the journal of a large run is
    /// never held as one string).
    pub fn create(dir: &Path, header: H, batches: Vec<B>) -> Result<Self, JournalError> {
        write_file_atomically_with(dir, JOURNAL_FILE, |out| {
            write_record(out, &Record::<&H, ()>::Run(&header))?;
            for batch in &batches {
                write_record(out, &Record::<(), &B>::Batch(batch))?;
            }
            Ok(())
        })?;
        Ok(Journal {
            header,
            batches,
            acknowledged: BTreeSet::new(),
            refusal: None,
            path: dir.join(JOURNAL_FILE),
        })
    }

    /// The open journal in `dir`, if a run left one. A torn last line (a crash or power loss in the middle of an
    /// append) is cut off the file first, so that what is appended next starts on a line of its own.
    pub fn open(dir: &Path, sync: &str) -> Result<Option<Self>, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let Some(bytes) = read_if_present(&path)? else {
            return Ok(None);
        };
        let whole = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1);
        if whole < bytes.len() {
            tracing::warn!(
                journal = %path.display(),
                torn_bytes = bytes.len() - whole,
                "cutting a torn last line off the run journal"
            );
            truncate(&path, whole as u64)?;
        }
        let text = String::from_utf8_lossy(&bytes[..whole]);
        parse(&text, &path, sync).map(Some)
    }

    /// Batch `index` of the run.
    pub fn batch(&self, index: usize) -> &B {
        &self.batches[index]
    }

    /// The batches not acknowledged yet, in the order they are to be sent.
    pub fn pending(&self) -> impl Iterator<Item = &B> {
        self.batches
            .iter()
            .filter(|b| !self.acknowledged.contains(&b.index()))
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    pub fn acknowledged_count(&self) -> usize {
        self.acknowledged.len()
    }

    /// LaunchDarkly's refusal of a batch of this run, if it refused one: the run must not be resumed.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// Records, durably, that LaunchDarkly acknowledged batch `index`.
    pub fn acknowledge(&mut self, index: usize) -> Result<(), JournalError> {
        self.append(&Mark::Ack {
            index,
            at: Utc::now(),
        })?;
        self.acknowledged.insert(index);
        Ok(())
    }

    /// Records, durably, that LaunchDarkly refused batch `index` for good, and why.
    pub fn refuse(&mut self, index: usize, reason: &str) -> Result<(), JournalError> {
        let refusal = Refusal {
            index,
            at: Utc::now(),
            reason: reason.to_string(),
        };
        self.append(&Mark::Refused(refusal.clone()))?;
        self.refusal = Some(refusal);
        Ok(())
    }

    fn append(&self, record: &Mark) -> Result<(), JournalError> {
        let append_error = |source| JournalError::Append {
            path: self.path.clone(),
            source,
        };
        let mut file = File::options()
            .append(true)
            .open(&self.path)
            .map_err(append_error)?;
        file.write_all(line(record).as_bytes())
            .map_err(append_error)?;
        file.sync_data().map_err(append_error)
    }

    /// Removes the journal: its run committed, or it is abandoned (refused, or replaced by a `--full` run).
    pub fn close(self) -> Result<(), JournalError> {
        std::fs::remove_file(&self.path).map_err(|source| StateError::Io {
            action: "cannot remove",
            path: self.path.clone(),
            source,
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        Ok(sync_directory(dir)?)
    }
}

/// Cuts the file at `path` to its first `length` bytes, durably.
fn truncate(path: &Path, length: u64) -> Result<(), JournalError> {
    let append_error = |source| JournalError::Append {
        path: path.to_path_buf(),
        source,
    };
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(append_error)?;
    file.set_len(length).map_err(append_error)?;
    file.sync_all().map_err(append_error)
}

/// Writes one record as a line.
fn write_record(out: &mut dyn Write, record: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

fn line(record: &Mark) -> String {
    let mut text = serde_json::to_string(record).expect("journal records always serialize");
    text.push('\n');
    text
}

fn parse<H: JournalHeader, B: JournalBatch>(
    text: &str,
    path: &Path,
    sync: &str,
) -> Result<Journal<H, B>, JournalError> {
    let damaged = |line: usize, problem: String| JournalError::Damaged {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let complete = text;
    let mut records = complete.lines().enumerate().map(|(i, l)| {
        serde_json::from_str::<Record<H, B>>(l).map_err(|e| damaged(i + 1, e.to_string()))
    });
    let header = match records.next().transpose()? {
        Some(Record::Run(header)) => header,
        _ => return Err(damaged(1, "it does not start with the run's header".into())),
    };
    if header.format() != JOURNAL_FORMAT {
        return Err(damaged(
            1,
            format!(
                "format {}, this ldsync reads {JOURNAL_FORMAT}",
                header.format()
            ),
        ));
    }
    if header.sync() != sync {
        return Err(damaged(
            1,
            format!("it belongs to sync `{}`, not `{sync}`", header.sync()),
        ));
    }
    let batch_count = header.batch_count();
    let mut batches = Vec::with_capacity(batch_count);
    let mut acknowledged = BTreeSet::new();
    let mut refusal = None;
    for (i, record) in records.enumerate() {
        let line_number = i + 2;
        match record? {
            Record::Batch(batch)
                if acknowledged.is_empty()
                    && refusal.is_none()
                    && batch.index() == batches.len() =>
            {
                batches.push(batch)
            }
            Record::Ack { index, .. } if index < batch_count => {
                acknowledged.insert(index);
            }
            Record::Refused(refused) if refused.index < batch_count => {
                refusal = Some(refused);
            }
            other => return Err(damaged(line_number, format!("unexpected record {other:?}"))),
        }
    }
    if batches.len() != batch_count {
        return Err(damaged(
            complete.lines().count(),
            format!(
                "it lists {} batches, its header says {batch_count}",
                batches.len(),
            ),
        ));
    }
    Ok(Journal {
        header,
        batches,
        acknowledged,
        refusal,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    fn header(batch_count: usize) -> RunHeader {
        RunHeader {
            format: JOURNAL_FORMAT,
            sync: "pro-users".into(),
            run_id: "r1".into(),
            started_at: Utc::now(),
            settings: CheckpointSettings {
                project: "default".into(),
                environment: "production".into(),
                segment: "pro-users".into(),
                context_kind: "user".into(),
                mode: Mode::Mirror,
            },
            segment_kind: SegmentKind::Standard,
            snapshot: PreparedSnapshot {
                file: "snapshot-r1.parquet".into(),
                key_count: 2,
                content_hash: "blake3:00".into(),
            },
            batch_count,
        }
    }

    fn batches() -> Vec<Batch> {
        vec![
            Batch {
                index: 0,
                action: Action::Add,
                keys: vec!["a".into(), "b".into()],
            },
            Batch {
                index: 1,
                action: Action::Add,
                keys: vec!["c".into()],
            },
            Batch {
                index: 2,
                action: Action::Remove,
                keys: vec!["z".into()],
            },
        ]
    }

    fn pending(journal: &Journal) -> Vec<usize> {
        journal.pending().map(|b| b.index).collect()
    }

    #[test]
    fn acknowledgements_survive_a_reopen_and_only_unacknowledged_batches_stay_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create(dir.path(), header(3), batches()).unwrap();
        journal.acknowledge(1).unwrap();
        let reopened = Journal::<RunHeader, Batch>::open(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(reopened.header, journal.header);
        assert_eq!(pending(&reopened), [0, 2]);
        assert_eq!(reopened.pending().next().unwrap().keys, ["a", "b"]);
        reopened.close().unwrap();
        assert!(
            Journal::<RunHeader, Batch>::open(dir.path(), "pro-users")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_torn_last_line_is_an_acknowledgement_that_never_happened() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create(dir.path(), header(3), batches()).unwrap();
        journal.acknowledge(0).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(br#"{"record":"ack","index":1,"at":"2026-"#)
            .unwrap();
        let reopened = Journal::<RunHeader, Batch>::open(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(pending(&reopened), [1, 2]);
    }

    #[test]
    fn a_refusal_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create(dir.path(), header(3), batches()).unwrap();
        journal.acknowledge(0).unwrap();
        assert_eq!(journal.refusal(), None);
        journal
            .refuse(1, "400 invalid_request: `b` is excluded")
            .unwrap();
        let reopened = Journal::<RunHeader, Batch>::open(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        let refusal = reopened.refusal().unwrap();
        assert_eq!(
            (refusal.index, refusal.reason.as_str()),
            (1, "400 invalid_request: `b` is excluded")
        );
        assert_eq!(pending(&reopened), [1, 2]);
    }

    #[test]
    fn a_torn_tail_is_cut_before_the_resumed_run_appends_and_a_third_run_reads_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Journal::create(dir.path(), header(3), batches()).unwrap();
        first.acknowledge(0).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let whole = std::fs::read(&path).unwrap();
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(br#"{"record":"ack","index":1,"at":"2026-"#)
            .unwrap();
        drop(file);

        let mut resumed = Journal::<RunHeader, Batch>::open(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the torn tail is cut off"
        );
        resumed.acknowledge(1).unwrap();

        let third = Journal::<RunHeader, Batch>::open(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(pending(&third), [2]);
        assert_eq!(third.acknowledged_count(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 1 + 3 + 2, "header, batches, two acks");
    }

    #[test]
    fn damage_and_foreign_journals_are_errors_that_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        Journal::create(dir.path(), header(3), batches()).unwrap();
        let foreign = Journal::<RunHeader, Batch>::open(dir.path(), "other")
            .unwrap_err()
            .to_string();
        assert!(
            foreign.contains("line 1: it belongs to sync `pro-users`, not `other`"),
            "{foreign}"
        );
        let path = dir.path().join(JOURNAL_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let without_batch: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("\"index\":1,"))
            .collect();
        std::fs::write(&path, without_batch.join("\n") + "\n").unwrap();
        let missing = Journal::<RunHeader, Batch>::open(dir.path(), "pro-users")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("damaged at line 3: unexpected record"),
            "{missing}"
        );
        std::fs::write(&path, "not json\n").unwrap();
        let garbage = Journal::<RunHeader, Batch>::open(dir.path(), "pro-users")
            .unwrap_err()
            .to_string();
        assert!(garbage.contains("damaged at line 1"), "{garbage}");
    }
}
