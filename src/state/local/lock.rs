//! The local store's run lock: `<sync>/lock`, locked by the run under way (the operating system releases it when
//! the process dies) and holding who that run is.

use std::fs::File;
use std::io::Write;

use super::LocalStore;
use crate::state::{LockHold, StateError, SyncLock, holder_text};

const LOCK_FILE: &str = "lock";

impl LocalStore {
    /// Takes the sync's run lock, so that two runs of one sync never overlap on this state directory, and writes
    /// who holds it into the lock file. `Ok(None)` when another run holds it; [`LocalStore::holder`] says who.
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
