//! The local store's run history: `<sync>/runs.jsonl`, one JSON line a run, each appended and fsynced. A torn last
//! line (a crash in the middle of an append) is cut off before the next append, so the next record is whole.

use std::fs::File;
use std::io::Write;

use super::LocalStore;
use crate::state::StateError;
use crate::state::files::cut_torn_last_line;

const HISTORY_FILE: &str = "runs.jsonl";

impl LocalStore {
    /// Appends one run's record (a JSON line) to `sync`'s history, durably.
    pub(in crate::state) fn append_run(
        &self,
        sync: &str,
        mut line: String,
    ) -> Result<(), StateError> {
        let dir = self.sync_dir(sync);
        let path = dir.join(HISTORY_FILE);
        let mut append = || {
            std::fs::create_dir_all(&dir)?;
            line.push('\n');
            let mut file = File::options()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            let torn = cut_torn_last_line(&mut file)?;
            if torn > 0 {
                tracing::warn!(
                    history = %path.display(),
                    torn_bytes = torn,
                    "cut a torn last line off the run history"
                );
            }
            file.write_all(line.as_bytes())?;
            file.sync_data()
        };
        let appended = append();
        appended.map_err(|source| StateError::Io {
            action: "cannot append to",
            path,
            source,
        })
    }

    /// `sync`'s run records, oldest first, as stored. Bytes that are not UTF-8 (a last line torn inside a character)
    /// read as U+FFFD, so that such a line is left out like any torn line rather than making the history unreadable.
    pub(in crate::state) fn runs(&self, sync: &str) -> Result<Vec<String>, StateError> {
        let path = self.sync_dir(sync).join(HISTORY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_string)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(StateError::Io {
                action: "cannot read",
                path,
                source,
            }),
        }
    }
}
