//! The local store's run lock: `<sync>/lock`, locked by the run under way (the operating system releases it when
//! the process dies) and holding who that run is. The run that takes it removes the temporary files a killed run
//! left in the sync's directory.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::LocalStore;
use super::checkpoint::MANIFEST_FILE;
use super::events::CHECKPOINT_FILE;
use super::journal::JOURNAL_FILE;
use crate::state::files::is_temporary_of;
use crate::state::snapshot::is_partial_snapshot;
use crate::state::{LockHold, StateError, SyncLock, holder_text};

const LOCK_FILE: &str = "lock";

impl LocalStore {
    /// Takes the sync's run lock, so that two runs of one sync never overlap on this state directory, writes who
    /// holds it into the lock file, and removes the temporary files a killed run left behind (see
    /// [`remove_temporary_files`]). `Ok(None)` when another run holds it; [`LocalStore::holder`] says who.
    pub fn try_lock(&self, sync: &str, run_id: &str) -> Result<Option<SyncLock>, StateError> {
        let path = self.create_sync_dir(sync)?.join(LOCK_FILE);
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| StateError::Io {
                action,
                path,
                source,
            }
        };
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("cannot open"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(source)) => return Err(io("cannot lock")(source)),
        }
        let holder = holder_text(run_id);
        file.set_len(0).map_err(io("cannot write"))?;
        file.write_all(holder.as_bytes())
            .map_err(io("cannot write"))?;
        remove_temporary_files(path.parent().unwrap_or(Path::new(".")));
        Ok(Some(SyncLock(LockHold::File(file))))
    }

    /// Who holds the sync's run lock, as the holder wrote it.
    pub fn holder(&self, sync: &str) -> String {
        std::fs::read_to_string(self.sync_dir(sync).join(LOCK_FILE))
            .ok()
            .filter(|text| !text.trim().is_empty())
            .unwrap_or_else(|| "a process that has not said who it is".to_string())
    }
}

/// Removes, from the sync's directory `dir`, the files a run killed in the middle of writing them left: the
/// temporary files of the manifest's, the journal's and the events checkpoint's atomic writes, and snapshots not yet
/// renamed into place. Only ldsync's own temporary names, and only under the sync's lock, so no run is writing them;
/// the committed manifest, snapshot, journal and checkpoint are never among them. A file that cannot be removed is a
/// warning, not an error: it takes no part in the run.
fn remove_temporary_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let temporary = [MANIFEST_FILE, JOURNAL_FILE, CHECKPOINT_FILE]
            .iter()
            .any(|target| is_temporary_of(name, target))
            || is_partial_snapshot(name);
        if !temporary || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::info!(
                path = %entry.path().display(),
                "removed a temporary file a killed run left behind"
            ),
            Err(e) => tracing::warn!(
                path = %entry.path().display(),
                error = %e,
                "could not remove a temporary file a killed run left behind"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_the_lock_removes_only_ldsyncs_temporary_files() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path());
        let dir = store.create_sync_dir("pro-users").unwrap();
        let left_by_a_kill = [
            ".manifest.json.Ab3xYz",
            ".journal.jsonl.q7W2e9",
            ".events-checkpoint.json.000000",
            ".snapshot-r2.parquet.partial",
        ];
        let kept = [
            // The sync's committed state.
            "manifest.json",
            "snapshot-r1.parquet",
            "journal.jsonl",
            "runs.jsonl",
            "events-checkpoint.json",
            // Someone else's files, however close their names come.
            "notes.txt",
            ".manifest.json.bak",
            ".manifest.json.Ab3xYz.keep",
            ".journal.jsonl.ab-12c",
            ".runs.jsonl.Ab3xYz",
            ".other.json.Ab3xYz",
            ".snapshot-r2.parquet",
            "snapshot-r2.parquet.partial",
            ".snapshot-r2.csv.partial",
        ];
        for name in left_by_a_kill.iter().chain(&kept) {
            std::fs::write(dir.join(name), name).unwrap();
        }
        // A directory with a temporary file's name is not a file ldsync wrote.
        std::fs::create_dir(dir.join(".manifest.json.Dir123")).unwrap();

        let lock = store.try_lock("pro-users", "r3").unwrap();
        assert!(lock.is_some());
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected: Vec<String> = kept
            .iter()
            .chain(&["lock", ".manifest.json.Dir123"])
            .map(|n| n.to_string())
            .collect();
        expected.sort();
        assert_eq!(left, expected);
        for name in kept {
            assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), name);
        }
    }
}
