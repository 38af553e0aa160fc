//! The local store: every sync's state in files under `state.directory`, one directory a sync.
//!
//! ```text
//! <sync>/manifest.json            run id, time, key count, the snapshot's hash, settings and their fingerprint
//! <sync>/snapshot-<run>.parquet   the committed keys, sorted by byte order, one `context_key` column (ZSTD)
//! <sync>/journal.jsonl            the open run's batches and acknowledgements (see `journal`)
//! <sync>/runs.jsonl               one record per sync run (see `history`)
//! <sync>/events-checkpoint.json   an events sync's checkpoint (see `events`)
//! <sync>/lock                     held by the run under way
//! ```
//!
//! A run killed mid-write may leave `.manifest.json.XXXXXX`, `.journal.jsonl.XXXXXX`, `.events-checkpoint.json.XXXXXX`
//! (atomic writes' temporary files) or `.snapshot-<run>.parquet.partial`; the next run to take the lock removes them.

mod checkpoint;
mod events;
mod history;
pub(super) mod journal;
mod lock;

use std::path::PathBuf;

use super::StateError;

/// The checkpoint store on local disk.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// Where the sync's checkpoint, journal and run history live.
    pub fn sync_dir(&self, sync: &str) -> PathBuf {
        self.root.join(sync)
    }

    /// Whether the state directory can be made and read.
    pub fn check(&self) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.root)
            .and_then(|()| std::fs::read_dir(&self.root).map(drop))
            .map_err(|source| StateError::Io {
                action: "cannot read",
                path: self.root.clone(),
                source,
            })
    }

    /// The sync's directory, created if needed.
    pub fn create_sync_dir(&self, sync: &str) -> Result<PathBuf, StateError> {
        let dir = self.sync_dir(sync);
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            action: "cannot create",
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }
}
