//! The local store's events checkpoints: `<sync>/events-checkpoint.json`, written through a temporary file that is
//! fsynced and renamed, so a crash leaves the old checkpoint or the new one.

use std::path::PathBuf;

use super::LocalStore;
use crate::state::StateError;
use crate::state::files::{read_if_present, write_file_atomically};

pub(super) const CHECKPOINT_FILE: &str = "events-checkpoint.json";

impl LocalStore {
    /// The file of `sync`'s events checkpoint.
    pub(in crate::state) fn event_checkpoint_path(&self, sync: &str) -> PathBuf {
        self.sync_dir(sync).join(CHECKPOINT_FILE)
    }

    /// `sync`'s events checkpoint as stored, if it has one.
    pub(in crate::state) fn read_event_checkpoint(
        &self,
        sync: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        read_if_present(&self.event_checkpoint_path(sync))
    }

    /// Replaces `sync`'s events checkpoint, atomically.
    pub(in crate::state) fn write_event_checkpoint(
        &self,
        sync: &str,
        mut json: Vec<u8>,
    ) -> Result<(), StateError> {
        let dir = self.create_sync_dir(sync)?;
        json.push(b'\n');
        write_file_atomically(&dir, CHECKPOINT_FILE, &json)
    }
}
