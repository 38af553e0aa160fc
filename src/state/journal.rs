//! The run journal: what a sync run is about to send, written durably before the first request, and each
//! acknowledgement appended as it arrives. It is what makes a run crash-safe: a run killed at any moment leaves a
//! journal from which the next run sends exactly the batches that were never acknowledged, then commits the
//! checkpoint the journal names.
//!
//! The local store's `<sync>/journal.jsonl` (see `local/journal.rs`) holds one JSON record a line: the run's header first, then every batch, all written
//! through a temporary file that is fsynced and renamed (so a journal is either whole or absent), then one `ack`
//! line per acknowledged batch, each fsynced before the next batch is sent. A crash while appending can tear only
//! the last line, which reads as a batch not yet acknowledged, and re-sending it is safe because LaunchDarkly
//! applies target changes idempotently; the torn tail is cut off before anything else is appended.
//!
//! A batch LaunchDarkly refuses for good (400, 404, 422) gets a `refused` line: such a run is never resumed, since
//! sending the same batch again would fail the same way. The next run abandons it and plans again.
//!
//! The PostgreSQL store keeps the same in rows (see `postgres/journal.rs`): the header and every batch written in
//! one transaction, each acknowledgement or refusal committed as it comes.
//!
//! A segment sync's journal holds its run header and target-change batches (see `run::segment`); an events sync's holds its own header
//! and batches of events (see `events`), through the same [`JournalHeader`] and [`JournalBatch`] traits.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{JournalPlace, StateError, Store};
use crate::vocab::ErrorClass;

/// The journal format this build writes and reads.
pub const JOURNAL_FORMAT: u32 = 1;

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

impl JournalError {
    pub fn class(&self) -> ErrorClass {
        match self {
            JournalError::State(e) => e.class(),
            JournalError::Append { .. } | JournalError::Damaged { .. } => ErrorClass::StateStore,
            JournalError::Batches(_) => ErrorClass::Internal,
        }
    }
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

/// LaunchDarkly's final refusal of one batch of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub index: usize,
    pub at: DateTime<Utc>,
    /// What LaunchDarkly said, token scrubbed.
    pub reason: String,
}

/// A batch LaunchDarkly took in for processing of its own (a big segment's CSV import), before it is done: what
/// it was given as, so that a later run waits for that import instead of submitting the batch again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub index: usize,
    /// LaunchDarkly's ID of the import.
    pub id: String,
    /// What was uploaded (`blake3:<hex>` of the file), checked before a later run waits on `id`.
    pub content_hash: String,
    pub at: DateTime<Utc>,
}

/// A journal whose run has not committed yet. Only where each batch lies is held in memory; a batch is read from
/// the store when it is sent, so a run of millions of keys never holds them all.
#[derive(Debug)]
pub struct Journal<H, B> {
    pub header: H,
    /// What each batch carries (keys, events), in batch order.
    pub(super) units: Vec<u64>,
    pub(super) acknowledged: BTreeSet<usize>,
    /// Batches LaunchDarkly took in but has not finished, by index.
    pub(super) submissions: BTreeMap<usize, Submission>,
    pub(super) refusal: Option<Refusal>,
    pub(super) place: JournalPlace,
    pub(super) batch: PhantomData<fn() -> B>,
}

impl<H: JournalHeader, B: JournalBatch> Journal<H, B> {
    /// Writes the run's journal, whole, before anything is sent, one batch at a time as `batches` yields them.
    pub fn create(
        store: &Store,
        header: H,
        batches: impl IntoIterator<Item = std::io::Result<B>>,
    ) -> Result<Self, JournalError> {
        store.create_journal(header, batches)
    }

    /// The open journal of `sync`, if a run left one.
    pub fn open(store: &Store, sync: &str) -> Result<Option<Self>, JournalError> {
        store.open_journal(sync)
    }

    /// Batch `index` of the run, read from the store.
    pub fn batch(&self, index: usize) -> Result<B, JournalError> {
        let unreadable = || JournalError::Damaged {
            path: PathBuf::from(self.place.describe()),
            line: index + 2,
            problem: format!("batch {index} cannot be read back"),
        };
        self.place
            .batch::<H, B>(index)?
            .filter(|batch| batch.index() == index)
            .ok_or_else(unreadable)
    }

    /// The indices of the batches not acknowledged yet, in the order they are to be sent.
    pub fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.units.len()).filter(|index| !self.acknowledged.contains(index))
    }

    /// What the batches not acknowledged yet carry (keys, events), in all.
    pub fn pending_units(&self) -> u64 {
        // Saturating: what a journal says a batch carries is read from the store, so a tampered one cannot
        // overflow the sum.
        self.pending()
            .map(|index| self.units[index])
            .fold(0, u64::saturating_add)
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
        self.place.acknowledge(index)?;
        self.acknowledged.insert(index);
        Ok(())
    }

    /// How batch `index` was submitted, if LaunchDarkly took it in for processing of its own.
    pub fn submission(&self, index: usize) -> Option<&Submission> {
        self.submissions.get(&index)
    }

    /// Records, durably, that LaunchDarkly took batch `index` in as import `id` of a file whose content hash is
    /// `content_hash`.
    pub fn record_submission(
        &mut self,
        index: usize,
        id: &str,
        content_hash: &str,
    ) -> Result<(), JournalError> {
        let submission = Submission {
            index,
            id: id.to_string(),
            content_hash: content_hash.to_string(),
            at: Utc::now(),
        };
        self.place.submit(&submission)?;
        self.submissions.insert(index, submission);
        Ok(())
    }

    /// Records, durably, that LaunchDarkly refused batch `index` for good, and why.
    pub fn refuse(&mut self, index: usize, reason: &str) -> Result<(), JournalError> {
        let refusal = Refusal {
            index,
            at: Utc::now(),
            reason: reason.to_string(),
        };
        self.place.refuse(&refusal)?;
        self.refusal = Some(refusal);
        Ok(())
    }

    /// Removes the journal: its run committed, or it is abandoned (refused, or replaced by a `--full` run).
    pub fn close(self) -> Result<(), JournalError> {
        self.place.close()
    }

    /// Checks, before a request is sent, that the run writing this journal still holds its sync's run lock: always
    /// so for the local store's file lock, which lives as long as the process; asked of PostgreSQL for its
    /// advisory lock, which a lost connection takes away.
    pub fn confirm_lock(&self) -> Result<(), JournalError> {
        self.place.confirm_lock()
    }
}

/// Whether `header` heads a journal this build reads, of sync `sync`; what is wrong if not.
pub(super) fn check_header<H: JournalHeader>(header: &H, sync: &str) -> Result<(), String> {
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
