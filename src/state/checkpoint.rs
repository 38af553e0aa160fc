//! A committed checkpoint, whichever store keeps it: the [`Manifest`] that vouches for a snapshot of keys, the
//! [`CheckpointSettings`] it is valid for, a snapshot prepared by a run before it commits, and the checks a
//! manifest must pass before its snapshot is believed. Format only; each store reads and writes these its own way.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StateError;
use super::postgres::PgStore;
use super::snapshot::{SnapshotKeys, hash_file, open};
use crate::config::{Config, Mode, SegmentSyncConfig};

/// The manifest format this build writes.
pub const MANIFEST_FORMAT: u32 = 2;
/// The format of earlier releases' manifests, which hash the keys rather than the snapshot file.
pub(crate) const KEY_HASH_FORMAT: u32 = 1;

/// The settings that make a checkpoint valid: change one and the snapshot no longer describes the segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    pub project: String,
    pub environment: String,
    pub segment: String,
    pub context_kind: String,
    pub mode: Mode,
}

impl CheckpointSettings {
    pub fn of(config: &Config, sync: &SegmentSyncConfig) -> Self {
        CheckpointSettings {
            project: config.launchdarkly.project.clone(),
            environment: config.launchdarkly.environment.clone(),
            segment: sync.segment.clone(),
            context_kind: sync.context_kind.clone(),
            mode: sync.mode,
        }
    }

    /// A short stable hash of the settings.
    pub fn fingerprint(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for part in [
            &self.project,
            &self.environment,
            &self.segment,
            &self.context_kind,
            &self.mode.to_string(),
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.finalize().to_hex()[..16].to_string()
    }

    /// What differs between `self` (the checkpoint's) and `now`, as `field: old → new` pairs.
    pub fn changes(&self, now: &CheckpointSettings) -> Vec<String> {
        let mode = (self.mode.to_string(), now.mode.to_string());
        [
            ("project", (&self.project, &now.project)),
            ("environment", (&self.environment, &now.environment)),
            ("segment", (&self.segment, &now.segment)),
            ("context_kind", (&self.context_kind, &now.context_kind)),
            ("mode", (&mode.0, &mode.1)),
        ]
        .into_iter()
        .filter(|(_, (was, is))| was != is)
        .map(|(field, (was, is))| format!("{field}: {was} → {is}"))
        .collect()
    }
}

/// What a committed checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub sync: String,
    pub run_id: String,
    pub committed_at: DateTime<Utc>,
    pub key_count: u64,
    /// Format 1: `blake3:` and the hash of the keys in order, each preceded by its length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// Format 2: `blake3:` and the hash of the snapshot file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_hash: Option<String>,
    /// The snapshot's file name, beside the manifest.
    pub snapshot: String,
    pub settings: CheckpointSettings,
    pub fingerprint: String,
}

/// A snapshot written for a run that has not committed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedSnapshot {
    /// Its file name in the sync's directory.
    pub file: String,
    pub key_count: u64,
    /// Set by earlier releases, which hashed the keys (a manifest of format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// `blake3:` and the hash of the file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_hash: Option<String>,
}

/// The manifest that commits `prepared` as run `run_id`'s checkpoint, now.
pub(crate) fn manifest_for(
    sync: &str,
    run_id: &str,
    settings: &CheckpointSettings,
    prepared: &PreparedSnapshot,
) -> Manifest {
    Manifest {
        // A journal left by an earlier release prepared a snapshot whose keys it hashed.
        format: if prepared.content_hash.is_some() {
            KEY_HASH_FORMAT
        } else {
            MANIFEST_FORMAT
        },
        sync: sync.to_string(),
        run_id: run_id.to_string(),
        committed_at: Utc::now(),
        key_count: prepared.key_count,
        content_hash: prepared.content_hash.clone(),
        snapshot_hash: prepared.snapshot_hash.clone(),
        snapshot: prepared.file.clone(),
        settings: settings.clone(),
        fingerprint: settings.fingerprint(),
    }
}

/// Checks a manifest's format, owner and fingerprint, and that it names a snapshot file and (`hash_required`: the
/// local store's) the snapshot's hash.
pub(crate) fn check_manifest(
    manifest: &Manifest,
    sync: &str,
    path: &Path,
    hash_required: bool,
) -> Result<(), StateError> {
    let damaged = |problem: String| StateError::Damaged {
        path: path.to_path_buf(),
        problem,
    };
    let hash_present = match manifest.format {
        KEY_HASH_FORMAT => manifest.content_hash.is_some(),
        MANIFEST_FORMAT => manifest.snapshot_hash.is_some(),
        other => {
            return Err(damaged(format!(
                "it has format {other}, this ldsync reads formats {KEY_HASH_FORMAT} and {MANIFEST_FORMAT}"
            )));
        }
    };
    if hash_required && !hash_present {
        return Err(damaged("it has no hash for its snapshot".into()));
    }
    if manifest.sync != sync {
        return Err(StateError::Foreign {
            path: path.to_path_buf(),
            owner: manifest.sync.clone(),
            sync: sync.to_string(),
        });
    }
    if manifest.fingerprint != manifest.settings.fingerprint() {
        return Err(damaged(
            "its fingerprint does not match its settings".into(),
        ));
    }
    let plain_name = Path::new(&manifest.snapshot)
        .file_name()
        .map(|n| n == manifest.snapshot.as_str());
    if plain_name != Some(true) || !manifest.snapshot.ends_with(".parquet") {
        return Err(damaged(format!(
            "it names the snapshot `{}`",
            manifest.snapshot
        )));
    }
    Ok(())
}

/// A committed checkpoint: its manifest and a way to stream its keys.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub manifest: Manifest,
    pub(crate) snapshot_path: PathBuf,
    /// The snapshot's table, for a checkpoint of the PostgreSQL store: `snapshot_path` is then a local copy, checked
    /// against the key count (the transaction that wrote the table vouches for its keys), where the local store's
    /// own snapshot is checked against the manifest's hash too.
    pub(crate) stored: Option<StoredSnapshot>,
}

/// A snapshot kept in the PostgreSQL store.
#[derive(Debug, Clone)]
pub(crate) struct StoredSnapshot {
    pub(crate) store: PgStore,
    pub(crate) id: i64,
}

impl Checkpoint {
    /// Checks that this checkpoint was made for `now`'s settings.
    pub fn check_settings(&self, now: &CheckpointSettings) -> Result<(), StateError> {
        let changes = self.manifest.settings.changes(now);
        if changes.is_empty() {
            return Ok(());
        }
        Err(StateError::SettingsChanged {
            changes: changes.join(", "),
        })
    }

    /// Fetches the snapshot onto this host, if it is not here yet, and says where its Parquet file lies: a
    /// checkpoint of the PostgreSQL store is downloaded the first time this host asks for it (a `COPY` out of its
    /// table), and its copy checked against the store's key count; the local store's is already here.
    pub fn fetch_snapshot(&self) -> Result<&Path, StateError> {
        if let Some(stored) = &self.stored {
            if !self.snapshot_path.is_file() {
                stored
                    .store
                    .download(&self.manifest.sync, &self.manifest.run_id, stored.id)?;
            }
            self.check_key_count()?;
        }
        Ok(&self.snapshot_path)
    }

    /// The PostgreSQL store holding the snapshot as a table, and that table's name.
    pub fn stored_table(&self) -> Option<(&PgStore, String)> {
        self.stored
            .as_ref()
            .map(|stored| (&stored.store, stored.store.snapshot_table(stored.id)))
    }

    /// Checks that the snapshot is the one the manifest describes: its key count (from the Parquet footer) and the
    /// hash of its bytes; a snapshot of format 1 is read through and its keys hashed.
    pub fn verify(&self) -> Result<(), StateError> {
        let expected = match (&self.stored, &self.manifest.snapshot_hash) {
            // Its local copy is checked when it is read.
            (Some(_), _) => return Ok(()),
            (None, None) => return self.keys()?.try_for_each(|batch| batch.map(drop)),
            (None, Some(hash)) => hash,
        };
        self.check_key_count()?;
        if &hash_file(&self.snapshot_path)? != expected {
            return Err(StateError::DamagedSnapshot {
                path: self.snapshot_path.clone(),
                problem: "its content hash does not match its manifest".into(),
            });
        }
        Ok(())
    }

    /// Checks the key count in the snapshot file's Parquet footer against the manifest's.
    fn check_key_count(&self) -> Result<(), StateError> {
        let path = &self.snapshot_path;
        use parquet::file::reader::FileReader;
        let rows = parquet::file::reader::SerializedFileReader::new(open(path)?)
            .map_err(|source| StateError::Parquet {
                path: path.clone(),
                source,
            })?
            .metadata()
            .file_metadata()
            .num_rows();
        let damaged = |problem: String| StateError::DamagedSnapshot {
            path: path.clone(),
            problem,
        };
        if u64::try_from(rows).ok() != Some(self.manifest.key_count) {
            return Err(damaged(format!(
                "it holds {rows} keys, its manifest says {}",
                self.manifest.key_count
            )));
        }
        Ok(())
    }

    /// Streams the committed keys in order. The last item is an error if the keys do not match the manifest.
    pub fn keys(&self) -> Result<SnapshotKeys, StateError> {
        let expected_hash = match self.stored {
            None => self.manifest.content_hash.clone(),
            Some(_) => None,
        };
        SnapshotKeys::open(
            self.fetch_snapshot()?,
            self.manifest.key_count,
            expected_hash,
        )
    }
}
