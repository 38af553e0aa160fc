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
//! The PostgreSQL store keeps the same in rows (see [`crate::state::PgStore`]): the header and every batch written in
//! one transaction, each acknowledgement or refusal committed as it comes.
//!
//! A segment sync's journal holds [`RunHeader`] and target-change [`Batch`]es; an events sync's holds its own header
//! and batches of events (see `events`), through the same [`JournalHeader`] and [`JournalBatch`] traits.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::launchdarkly::SegmentKind;
use crate::plan::Action;
use crate::state::{
    CheckpointSettings, PgStore, PreparedSnapshot, StateError, Store, sync_directory,
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
    #[error("cannot make the run's batches: {0}")]
    Batches(std::io::Error),
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
    fn run(&self) -> &RunIdentity;
    fn batch_count(&self) -> usize;
}

/// The run a journal belongs to: the fields that head every kind of run's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub format: u32,
    pub sync: String,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
}

impl RunIdentity {
    /// Run `run_id` of `sync`, starting now, in this build's journal format.
    pub fn starting(sync: &str, run_id: &str) -> Self {
        RunIdentity {
            format: JOURNAL_FORMAT,
            sync: sync.to_string(),
            run_id: run_id.to_string(),
            started_at: Utc::now(),
        }
    }
}

/// One request's worth of a journal.
pub trait JournalBatch: Serialize + DeserializeOwned + std::fmt::Debug {
    /// Its place in the run, from 0.
    fn index(&self) -> usize;
    /// What it carries, for progress: keys, events.
    fn units(&self) -> u64;
}

impl JournalHeader for RunHeader {
    fn run(&self) -> &RunIdentity {
        &self.run
    }

    fn batch_count(&self) -> usize {
        self.batch_count
    }
}

impl JournalBatch for Batch {
    fn index(&self) -> usize {
        self.index
    }

    fn units(&self) -> u64 {
        self.keys.len() as u64
    }
}

/// Whether a run left a journal in the local store's directory `dir` (without reading it).
pub fn exists(dir: &Path) -> bool {
    dir.join(JOURNAL_FILE).try_exists().unwrap_or(false)
}

/// What a segment sync's run is, and what it commits once every batch is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHeader {
    #[serde(flatten)]
    pub run: RunIdentity,
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

/// Where a batch's line lies in the journal file.
#[derive(Debug, Clone, Copy)]
struct BatchLine {
    offset: u64,
    length: usize,
}

/// A journal whose run has not committed yet. Only where each batch lies is held in memory; a batch is read from
/// the store when it is sent, so a run of millions of keys never holds them all.
#[derive(Debug)]
pub struct Journal<H = RunHeader, B = Batch> {
    pub header: H,
    /// What each batch carries (keys, events), in batch order.
    units: Vec<u64>,
    acknowledged: BTreeSet<usize>,
    refusal: Option<Refusal>,
    place: Place,
    batch: PhantomData<fn() -> B>,
}

/// Where a journal is kept.
#[derive(Debug)]
enum Place {
    /// The local store's `journal.jsonl`, and where each batch's line lies in it.
    File {
        path: PathBuf,
        lines: Vec<BatchLine>,
    },
    /// The PostgreSQL store's rows for `sync`.
    Postgres { store: PgStore, sync: String },
}

impl<H: JournalHeader, B: JournalBatch> Journal<H, B> {
    /// Writes the run's journal, whole, before anything is sent, one batch at a time as `batches` yields them.
    pub fn create(
        store: &Store,
        header: H,
        batches: impl IntoIterator<Item = std::io::Result<B>>,
    ) -> Result<Self, JournalError> {
        match store {
            Store::Local(local) => {
                Self::create_file(&local.sync_dir(&header.run().sync), header, batches)
            }
            Store::Postgres(pg) => Self::create_rows(pg, header, batches),
        }
    }

    /// The open journal of `sync`, if a run left one.
    pub fn open(store: &Store, sync: &str) -> Result<Option<Self>, JournalError> {
        match store {
            Store::Local(local) => Self::open_file(&local.sync_dir(sync), sync),
            Store::Postgres(pg) => Self::open_rows(pg, sync),
        }
    }

    fn create_rows(
        pg: &PgStore,
        header: H,
        batches: impl IntoIterator<Item = std::io::Result<B>>,
    ) -> Result<Self, JournalError> {
        let run = header.run().clone();
        let header_json =
            serde_json::to_string(&header).expect("a journal header always serializes");
        let mut units = Vec::with_capacity(header.batch_count());
        let rows = batches.into_iter().map(|batch| {
            let batch = batch.map_err(JournalError::Batches)?;
            units.push(batch.units());
            Ok::<_, JournalError>((
                batch.units(),
                serde_json::to_string(&batch).expect("a batch always serializes"),
            ))
        });
        pg.create_journal(&run.sync, &run.run_id, header_json, rows)?;
        Ok(Journal {
            header,
            units,
            acknowledged: BTreeSet::new(),
            refusal: None,
            place: Place::Postgres {
                store: pg.clone(),
                sync: run.sync,
            },
            batch: PhantomData,
        })
    }

    fn open_rows(pg: &PgStore, sync: &str) -> Result<Option<Self>, JournalError> {
        let Some(rows) = pg.open_journal(sync)? else {
            return Ok(None);
        };
        let place = Place::Postgres {
            store: pg.clone(),
            sync: sync.to_string(),
        };
        let damaged = |problem: String| JournalError::Damaged {
            path: PathBuf::from(place.describe()),
            line: 1,
            problem,
        };
        let header: H = serde_json::from_str(&rows.header).map_err(|e| damaged(e.to_string()))?;
        check_header(&header, sync).map_err(damaged)?;
        if rows.units.len() != header.batch_count() {
            return Err(damaged(format!(
                "it lists {} batches, its header says {}",
                rows.units.len(),
                header.batch_count()
            )));
        }
        let refusal = rows
            .refusal
            .map(|refusal| serde_json::from_str::<Refusal>(&refusal))
            .transpose()
            .map_err(|e| damaged(e.to_string()))?;
        Ok(Some(Journal {
            header,
            units: rows.units,
            acknowledged: rows.acknowledged,
            refusal,
            place,
            batch: PhantomData,
        }))
    }

    fn create_file(
        dir: &Path,
        header: H,
        batches: impl IntoIterator<Item = std::io::Result<B>>,
    ) -> Result<Self, JournalError> {
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
            refusal: None,
            place: Place::File {
                path: dir.join(JOURNAL_FILE),
                lines,
            },
            batch: PhantomData,
        })
    }

    /// The open journal in `dir`, if a run left one, read line by line. A torn last line (a crash or power loss in
    /// the middle of an append) is cut off the file first, so that what is appended next starts on a line of its
    /// own.
    fn open_file(dir: &Path, sync: &str) -> Result<Option<Self>, JournalError> {
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

    /// Batch `index` of the run, read from the store.
    pub fn batch(&self, index: usize) -> Result<B, JournalError> {
        let unreadable = || JournalError::Damaged {
            path: PathBuf::from(self.place.describe()),
            line: index + 2,
            problem: format!("batch {index} cannot be read back"),
        };
        let batch = match &self.place {
            Place::File { path, lines } => {
                match serde_json::from_slice::<Record<H, B>>(&read_line(path, lines[index])?) {
                    Ok(Record::Batch(batch)) => Some(batch),
                    _ => None,
                }
            }
            Place::Postgres { store, sync } => store
                .journal_batch(sync, index)?
                .and_then(|json| serde_json::from_str::<B>(&json).ok()),
        };
        batch
            .filter(|batch| batch.index() == index)
            .ok_or_else(unreadable)
    }

    /// The indices of the batches not acknowledged yet, in the order they are to be sent.
    pub fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.units.len()).filter(|index| !self.acknowledged.contains(index))
    }

    /// What the batches not acknowledged yet carry (keys, events), in all.
    pub fn pending_units(&self) -> u64 {
        self.pending().map(|index| self.units[index]).sum()
    }

    /// What batch `index` carries.
    pub fn units(&self, index: usize) -> u64 {
        self.units[index]
    }

    /// Where the journal is, for messages.
    pub fn location(&self) -> String {
        self.place.describe()
    }

    pub fn batch_count(&self) -> usize {
        self.units.len()
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
        match &self.place {
            Place::File { path, .. } => append(
                path,
                &Mark::Ack {
                    index,
                    at: Utc::now(),
                },
            )?,
            Place::Postgres { store, sync } => store.acknowledge(sync, index)?,
        }
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
        match &self.place {
            Place::File { path, .. } => append(path, &Mark::Refused(refusal.clone()))?,
            Place::Postgres { store, sync } => {
                let json = serde_json::to_string(&refusal).expect("a refusal always serializes");
                store.refuse(sync, json)?;
            }
        }
        self.refusal = Some(refusal);
        Ok(())
    }

    /// Removes the journal: its run committed, or it is abandoned (refused, or replaced by a `--full` run).
    pub fn close(self) -> Result<(), JournalError> {
        let path = match self.place {
            Place::File { path, .. } => path,
            Place::Postgres { store, sync } => return Ok(store.close_journal(&sync)?),
        };
        std::fs::remove_file(&path).map_err(|source| StateError::Io {
            action: "cannot remove",
            path: path.clone(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(sync_directory(dir)?)
    }
}

impl Place {
    fn describe(&self) -> String {
        match self {
            Place::File { path, .. } => path.display().to_string(),
            Place::Postgres { store, sync } => format!("{} journals[{sync}]", store.location()),
        }
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

/// Whether `header` heads a journal this build reads, of sync `sync`; what is wrong if not.
fn check_header<H: JournalHeader>(header: &H, sync: &str) -> Result<(), String> {
    let run = header.run();
    if run.format != JOURNAL_FORMAT {
        return Err(format!(
            "format {}, this ldsync reads {JOURNAL_FORMAT}",
            run.format
        ));
    }
    if run.sync != sync {
        return Err(format!("it belongs to sync `{}`, not `{sync}`", run.sync));
    }
    Ok(())
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
            refusal: self.refusal,
            place: Place::File {
                path: self.path.to_path_buf(),
                lines: self.lines,
            },
            batch: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

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
        journal.pending().collect()
    }

    #[test]
    fn acknowledgements_survive_a_reopen_and_only_unacknowledged_batches_stay_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal =
            Journal::create_file(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        journal.acknowledge(1).unwrap();
        let reopened = Journal::<RunHeader, Batch>::open_file(dir.path(), "pro-users")
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
            Journal::<RunHeader, Batch>::open_file(dir.path(), "pro-users")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_torn_last_line_is_an_acknowledgement_that_never_happened() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal =
            Journal::create_file(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        journal.acknowledge(0).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(br#"{"record":"ack","index":1,"at":"2026-"#)
            .unwrap();
        let reopened = Journal::<RunHeader, Batch>::open_file(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(pending(&reopened), [1, 2]);
    }

    #[test]
    fn a_refusal_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal =
            Journal::create_file(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        journal.acknowledge(0).unwrap();
        assert_eq!(journal.refusal(), None);
        journal
            .refuse(1, "400 invalid_request: `b` is excluded")
            .unwrap();
        let reopened = Journal::<RunHeader, Batch>::open_file(dir.path(), "pro-users")
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
        let mut first =
            Journal::create_file(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        first.acknowledge(0).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let whole = std::fs::read(&path).unwrap();
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(br#"{"record":"ack","index":1,"at":"2026-"#)
            .unwrap();
        drop(file);

        let mut resumed = Journal::<RunHeader, Batch>::open_file(dir.path(), "pro-users")
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the torn tail is cut off"
        );
        resumed.acknowledge(1).unwrap();

        let third = Journal::<RunHeader, Batch>::open_file(dir.path(), "pro-users")
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
        Journal::create_file(dir.path(), header(3), batches().into_iter().map(Ok)).unwrap();
        let foreign = Journal::<RunHeader, Batch>::open_file(dir.path(), "other")
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
        let missing = Journal::<RunHeader, Batch>::open_file(dir.path(), "pro-users")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("damaged at line 3: unexpected record"),
            "{missing}"
        );
        std::fs::write(&path, "not json\n").unwrap();
        let garbage = Journal::<RunHeader, Batch>::open_file(dir.path(), "pro-users")
            .unwrap_err()
            .to_string();
        assert!(garbage.contains("damaged at line 1"), "{garbage}");
    }
}
