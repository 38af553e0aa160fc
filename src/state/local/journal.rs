//! The local store's run journal: `<sync>/journal.jsonl`, one JSON record a line: the run's header first, then
//! every batch, all written through a temporary file that is fsynced and renamed (so a journal is either whole or
//! absent), then one `ack` line per acknowledged batch, each fsynced before the next batch is sent. A crash while
//! appending can tear only the last line, which is cut off before anything else is appended.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::LocalStore;
use crate::state::files::{sync_directory, write_file_atomically_with};
use crate::state::journal::{
    Journal, JournalBatch, JournalError, JournalHeader, Refusal, Submission, check_header,
};
use crate::state::{JournalPlace, StateError};

pub(super) const JOURNAL_FILE: &str = "journal.jsonl";

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
    Submitted(Submission),
    Refused(Refusal),
}

/// The lines of a journal that carry no header or batch.
type Mark = Record<(), ()>;

/// Where a batch's line lies in the journal file.
#[derive(Debug, Clone, Copy)]
struct BatchLine {
    offset: u64,
    length: usize,
}

/// A journal file and where each batch's line lies in it.
#[derive(Debug)]
pub(crate) struct JournalFile {
    path: PathBuf,
    lines: Vec<BatchLine>,
}

impl LocalStore {
    /// Whether a run of `sync` left a journal (without reading it).
    pub(in crate::state) fn journal_exists(&self, sync: &str) -> bool {
        self.sync_dir(sync)
            .join(JOURNAL_FILE)
            .try_exists()
            .unwrap_or(false)
    }

    /// Writes the run's journal file, whole, through a temporary file.
    pub(in crate::state) fn create_journal<H: JournalHeader, B: JournalBatch>(
        &self,
        header: H,
        batches: impl IntoIterator<Item = std::io::Result<B>>,
    ) -> Result<Journal<H, B>, JournalError> {
        create_in(&self.sync_dir(&header.run().sync), header, batches)
    }

    /// The open journal of `sync`, if a run left one (see [`open_in`]).
    pub(in crate::state) fn open_journal<H: JournalHeader, B: JournalBatch>(
        &self,
        sync: &str,
    ) -> Result<Option<Journal<H, B>>, JournalError> {
        open_in(&self.sync_dir(sync), sync)
    }
}

/// Writes a run's journal file in the sync's directory `dir`, whole, through a temporary file.
fn create_in<H: JournalHeader, B: JournalBatch>(
    dir: &Path,
    header: H,
    batches: impl IntoIterator<Item = std::io::Result<B>>,
) -> Result<Journal<H, B>, JournalError> {
    let mut lines = Vec::with_capacity(header.batch_count());
    let mut units = Vec::with_capacity(header.batch_count());
    write_file_atomically_with(dir, JOURNAL_FILE, |out| {
        let mut offset = write_record(out, &Record::<&H, ()>::Run(&header))? as u64;
        for batch in batches {
            let batch = batch?;
            let length = write_record(out, &Record::<(), &B>::Batch(&batch))?;
            lines.push(BatchLine {
                offset,
                length: length - 1,
            });
            units.push(batch.units());
            offset += length as u64;
        }
        Ok(())
    })?;
    debug_assert_eq!(lines.len(), header.batch_count());
    Ok(Journal {
        header,
        units,
        acknowledged: BTreeSet::new(),
        submissions: BTreeMap::new(),
        refusal: None,
        place: JournalPlace::File(JournalFile {
            path: dir.join(JOURNAL_FILE),
            lines,
        }),
        batch: PhantomData,
    })
}

/// The open journal in the sync's directory `dir`, if a run left one, read line by line. A torn last line (a crash
/// or power loss in the middle of an append) is cut off the file first, so that what is appended next starts on a
/// line of its own.
fn open_in<H: JournalHeader, B: JournalBatch>(
    dir: &Path,
    sync: &str,
) -> Result<Option<Journal<H, B>>, JournalError> {
    let path = dir.join(JOURNAL_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                action: "cannot open",
                path,
                source,
            }
            .into());
        }
    };
    let mut reader = JournalReader::new(&path, sync);
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(|source| StateError::Io {
                action: "cannot read",
                path: path.clone(),
                source,
            })?;
        if read == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            tracing::warn!(
                journal = %path.display(),
                torn_bytes = read,
                "cutting a torn last line off the run journal"
            );
            truncate(&path, offset)?;
            break;
        }
        reader.line(&line[..read - 1], offset)?;
        offset += read as u64;
    }
    reader.finish().map(Some)
}

impl JournalFile {
    pub(in crate::state) fn describe(&self) -> String {
        self.path.display().to_string()
    }

    /// Batch `index`, read back from its line; `None` when the line is not that batch's.
    pub(in crate::state) fn batch<H: JournalHeader, B: JournalBatch>(
        &self,
        index: usize,
    ) -> Result<Option<B>, JournalError> {
        let line = read_line(&self.path, self.lines[index])?;
        Ok(match serde_json::from_slice::<Record<H, B>>(&line) {
            Ok(Record::Batch(batch)) => Some(batch),
            _ => None,
        })
    }

    pub(in crate::state) fn acknowledge(&self, index: usize) -> Result<(), JournalError> {
        append(
            &self.path,
            &Mark::Ack {
                index,
                at: Utc::now(),
            },
        )
    }

    pub(in crate::state) fn refuse(&self, refusal: &Refusal) -> Result<(), JournalError> {
        append(&self.path, &Mark::Refused(refusal.clone()))
    }

    pub(in crate::state) fn submit(&self, submission: &Submission) -> Result<(), JournalError> {
        append(&self.path, &Mark::Submitted(submission.clone()))
    }

    /// Removes the file, durably.
    pub(in crate::state) fn close(self) -> Result<(), JournalError> {
        std::fs::remove_file(&self.path).map_err(|source| StateError::Io {
            action: "cannot remove",
            path: self.path.clone(),
            source,
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        Ok(sync_directory(dir)?)
    }
}

/// Reads one batch's line from the journal file at `path`.
fn read_line(path: &Path, line: BatchLine) -> Result<Vec<u8>, JournalError> {
    let read_error = |source| StateError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    file.seek(SeekFrom::Start(line.offset))
        .map_err(read_error)?;
    let mut bytes = vec![0; line.length];
    file.read_exact(&mut bytes).map_err(read_error)?;
    Ok(bytes)
}

/// Appends one mark to the journal file at `path`, durably.
fn append(path: &Path, record: &Mark) -> Result<(), JournalError> {
    let append_error = |source| JournalError::Append {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::options()
        .append(true)
        .open(path)
        .map_err(append_error)?;
    write_record(&mut file, record).map_err(append_error)?;
    file.sync_data().map_err(append_error)
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

/// Writes one record as a line, in one write; returns the line's length, its newline included.
fn write_record(out: &mut dyn Write, record: &impl Serialize) -> std::io::Result<usize> {
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    out.write_all(&line)?;
    Ok(line.len())
}

/// Reads a journal's lines in order, checking each, and keeps where each batch lies.
struct JournalReader<'a, H, B> {
    path: &'a Path,
    sync: &'a str,
    header: Option<H>,
    lines: Vec<BatchLine>,
    units: Vec<u64>,
    acknowledged: BTreeSet<usize>,
    submissions: BTreeMap<usize, Submission>,
    refusal: Option<Refusal>,
    line_number: usize,
    batch: PhantomData<fn() -> B>,
}

impl<'a, H: JournalHeader, B: JournalBatch> JournalReader<'a, H, B> {
    fn new(path: &'a Path, sync: &'a str) -> Self {
        JournalReader {
            path,
            sync,
            header: None,
            lines: Vec::new(),
            units: Vec::new(),
            acknowledged: BTreeSet::new(),
            submissions: BTreeMap::new(),
            refusal: None,
            line_number: 0,
            batch: PhantomData,
        }
    }

    fn damaged(&self, problem: String) -> JournalError {
        JournalError::Damaged {
            path: self.path.to_path_buf(),
            line: self.line_number.max(1),
            problem,
        }
    }

    /// Takes one whole line (without its newline), which starts at `offset` in the file.
    fn line(&mut self, text: &[u8], offset: u64) -> Result<(), JournalError> {
        self.line_number += 1;
        let record = serde_json::from_slice::<Record<H, B>>(text)
            .map_err(|e| self.damaged(e.to_string()))?;
        let Some(header) = &self.header else {
            return match record {
                Record::Run(header) => self.start(header),
                _ => Err(self.damaged("it does not start with the run's header".into())),
            };
        };
        let batch_count = header.batch_count();
        match record {
            Record::Batch(batch)
                if self.acknowledged.is_empty()
                    && self.refusal.is_none()
                    && batch.index() == self.lines.len() =>
            {
                self.lines.push(BatchLine {
                    offset,
                    length: text.len(),
                });
                self.units.push(batch.units());
            }
            Record::Ack { index, .. } if index < batch_count => {
                self.acknowledged.insert(index);
            }
            Record::Submitted(submission) if submission.index < batch_count => {
                self.submissions.insert(submission.index, submission);
            }
            Record::Refused(refused) if refused.index < batch_count => {
                self.refusal = Some(refused);
            }
            other => return Err(self.damaged(format!("unexpected record {other:?}"))),
        }
        Ok(())
    }

    fn start(&mut self, header: H) -> Result<(), JournalError> {
        check_header(&header, self.sync).map_err(|problem| self.damaged(problem))?;
        self.header = Some(header);
        Ok(())
    }

    fn finish(mut self) -> Result<Journal<H, B>, JournalError> {
        let Some(header) = self.header.take() else {
            return Err(self.damaged("it does not start with the run's header".into()));
        };
        if self.lines.len() != header.batch_count() {
            return Err(self.damaged(format!(
                "it lists {} batches, its header says {}",
                self.units.len(),
                header.batch_count()
            )));
        }
        Ok(Journal {
            header,
            units: self.units,
            acknowledged: self.acknowledged,
            submissions: self.submissions,
            refusal: self.refusal,
            place: JournalPlace::File(JournalFile {
                path: self.path.to_path_buf(),
                lines: self.lines,
            }),
            batch: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::run::{Batch, RunHeader};
    use crate::state::{CheckpointSettings, PreparedSnapshot, RunIdentity};
    use crate::vocab::{Action, Delivery, SegmentKind};

    fn header(batch_count: usize) -> RunHeader {
        RunHeader {
            run: RunIdentity::starting("pro-users", "r1"),
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
                content_hash: None,
                snapshot_hash: Some("blake3:00".into()),
            },
            batch_count,
        }
    }

    fn batches() -> Vec<Batch> {
        vec![
            Batch {
                index: 0,
                action: Action::Add,
                delivery: Delivery::Import,
                keys: vec!["a".into(), "b".into()],
            },
            Batch {
                index: 1,
                action: Action::Add,
                delivery: Delivery::Batch,
                keys: vec!["c".into()],
            },
            Batch {
                index: 2,
                action: Action::Remove,
                delivery: Delivery::Batch,
                keys: vec!["z".into()],
            },
        ]
    }

    fn pending(journal: &Journal<RunHeader, Batch>) -> Vec<usize> {
        journal.pending().collect()
    }

    #[test]
    fn acknowledgements_survive_a_reopen_and_only_unacknowledged_batches_stay_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = create_in(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        journal.acknowledge(1).unwrap();
        let reopened = open_in::<RunHeader, Batch>(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(reopened.header, journal.header);
        assert_eq!(pending(&reopened), [0, 2]);
        let first = reopened.pending().next().unwrap();
        assert_eq!(reopened.batch(first).unwrap().keys, ["a", "b"]);
        assert_eq!(reopened.batch(2).unwrap(), batches()[2]);
        assert_eq!(reopened.pending_units(), 3);
        reopened.close().unwrap();
        assert!(
            open_in::<RunHeader, Batch>(dir.path(), "pro-users")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_torn_last_line_is_an_acknowledgement_that_never_happened() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = create_in(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        journal.acknowledge(0).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(br#"{"record":"ack","index":1,"at":"2026-"#)
            .unwrap();
        let reopened = open_in::<RunHeader, Batch>(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(pending(&reopened), [1, 2]);
    }

    #[test]
    fn a_refusal_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = create_in(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        journal.acknowledge(0).unwrap();
        assert_eq!(journal.refusal(), None);
        journal
            .refuse(1, "400 invalid_request: `b` is excluded")
            .unwrap();
        let reopened = open_in::<RunHeader, Batch>(dir.path(), "pro-users")
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
    fn a_submitted_import_survives_a_reopen_and_an_old_batch_line_reads_as_a_batch_request() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = create_in(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        journal.record_submission(0, "imp-1", "blake3:ab").unwrap();
        let reopened = open_in::<RunHeader, Batch>(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        let submitted = reopened.submission(0).unwrap();
        assert_eq!(
            (
                submitted.index,
                submitted.id.as_str(),
                submitted.content_hash.as_str()
            ),
            (0, "imp-1", "blake3:ab")
        );
        assert_eq!(reopened.submission(1), None);
        assert_eq!(
            pending(&reopened),
            [0, 1, 2],
            "submitted is not acknowledged"
        );
        assert_eq!(reopened.batch(0).unwrap().delivery, Delivery::Import);
        // A journal written before imports existed names no delivery: its batches are batch requests.
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.matches("\"delivery\":\"import\"").count(), 1);
        assert_eq!(reopened.batch(1).unwrap().delivery, Delivery::Batch);
    }

    #[test]
    fn a_torn_tail_is_cut_before_the_resumed_run_appends_and_a_third_run_reads_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = create_in(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        first.acknowledge(0).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let whole = std::fs::read(&path).unwrap();
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(br#"{"record":"ack","index":1,"at":"2026-"#)
            .unwrap();
        drop(file);

        let mut resumed = open_in::<RunHeader, Batch>(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the torn tail is cut off"
        );
        resumed.acknowledge(1).unwrap();

        let third = open_in::<RunHeader, Batch>(dir.path(), "pro-users")
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
        create_in(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        let foreign = open_in::<RunHeader, Batch>(dir.path(), "other")
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
        let missing = open_in::<RunHeader, Batch>(dir.path(), "pro-users")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("damaged at line 3: unexpected record"),
            "{missing}"
        );
        std::fs::write(&path, "not json\n").unwrap();
        let garbage = open_in::<RunHeader, Batch>(dir.path(), "pro-users")
            .unwrap_err()
            .to_string();
        assert!(garbage.contains("damaged at line 1"), "{garbage}");
    }
}
