//! The local store's checkpoints: `<sync>/manifest.json` names `<sync>/snapshot-<run>.parquet`. A commit writes
//! the snapshot to a temporary file, fsyncs and renames it, then does the same for the manifest, whose rename is
//! the commit point: a crash at any moment leaves either the old manifest (and its snapshot) or the new one.

use std::path::Path;

use super::LocalStore;
use crate::state::StateError;
use crate::state::checkpoint::{
    Checkpoint, CheckpointSettings, Manifest, PreparedSnapshot, check_manifest, manifest_for,
};
use crate::state::files::{read_if_present, sync_directory, write_file_atomically};
use crate::state::snapshot::{flush_and_hash, partial_snapshot, remove_stale_snapshots};

pub(super) const MANIFEST_FILE: &str = "manifest.json";

impl LocalStore {
    /// The sync's committed checkpoint, or `None` before its first commit. Only reads.
    pub fn load(&self, sync: &str) -> Result<Option<Checkpoint>, StateError> {
        let dir = self.sync_dir(sync);
        let path = dir.join(MANIFEST_FILE);
        let Some(bytes) = read_if_present(&path)? else {
            return Ok(None);
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| StateError::BadManifest {
                path: path.clone(),
                source,
            })?;
        check_manifest(&manifest, sync, &path, true)?;
        Ok(Some(Checkpoint {
            snapshot_path: dir.join(&manifest.snapshot),
            manifest,
            stored: None,
        }))
    }

    /// Writes the snapshot a run will commit, before the run sends anything: `write` writes the keys as Parquet at
    /// the path it is given and says how many; the file is then flushed, hashed and renamed into place. Nothing
    /// reads it until [`LocalStore::commit_prepared`] names it in the manifest.
    pub fn prepare<E: From<StateError>>(
        &self,
        sync: &str,
        run_id: &str,
        write: impl FnOnce(&Path) -> Result<u64, E>,
    ) -> Result<PreparedSnapshot, E> {
        let dir = self.create_sync_dir(sync)?;
        let file = format!("snapshot-{run_id}.parquet");
        let temp = dir.join(partial_snapshot(&file));
        let key_count = write(&temp)?;
        let snapshot_hash = flush_and_hash(&temp)?;
        std::fs::rename(&temp, dir.join(&file)).map_err(|source| StateError::Io {
            action: "cannot rename into place",
            path: temp.clone(),
            source,
        })?;
        sync_directory(&dir)?;
        Ok(PreparedSnapshot {
            file,
            key_count,
            content_hash: None,
            snapshot_hash: Some(snapshot_hash),
        })
    }

    /// Makes a prepared snapshot the sync's checkpoint: the manifest's rename is the commit point.
    pub fn commit_prepared(
        &self,
        sync: &str,
        run_id: &str,
        settings: &CheckpointSettings,
        prepared: &PreparedSnapshot,
    ) -> Result<Manifest, StateError> {
        let dir = self.sync_dir(sync);
        let snapshot_path = dir.join(&prepared.file);
        if !snapshot_path.is_file() {
            return Err(StateError::DamagedSnapshot {
                path: snapshot_path,
                problem: "the run's prepared snapshot is missing".into(),
            });
        }
        let manifest = manifest_for(sync, run_id, settings, prepared);
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
        write_file_atomically(&dir, MANIFEST_FILE, &json)?;
        remove_stale_snapshots(&dir, &prepared.file);
        Ok(manifest)
    }
}
