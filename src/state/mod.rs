//! The state store: per sync, the key set of its last committed run and the manifest that vouches for it, the
//! journal of a run under way, the run history and the run lock. [`Store`] is one of two: the local store in files
//! under `state.directory` (this module), or the store in PostgreSQL that hosts share ([`PgStore`]).
//!
//! Layout of the local store under the state directory:
//!
//! ```text
//! <sync>/manifest.json            run id, time, key count, the snapshot's hash, settings and their fingerprint
//! <sync>/snapshot-<run>.parquet   the committed keys, sorted by byte order, one `context_key` column (ZSTD)
//! <sync>/journal.jsonl            the open run's batches and acknowledgements (see `journal`)
//! <sync>/runs.jsonl               one record per sync run (see `history`)
//! <sync>/lock                     held by the run under way
//! ```
//!
//! A commit writes the snapshot to a temporary file, fsyncs and renames it, then does the same for the manifest,
//! which names the snapshot; the manifest's rename is the commit point. A crash at any moment leaves either the old
//! manifest (and its snapshot) or the new one. Reading checks everything the manifest claims (the owner, the
//! fingerprint, the key count in the Parquet footer, the BLAKE3 hash of the snapshot's bytes), so a damaged or
//! foreign checkpoint is an error, never an empty set; the check reads the file once at disk speed, not key by key.
//!
//! The set engine writes snapshots (see [`crate::audience`]). Manifests of format 1, from earlier releases, hashed
//! the keys themselves instead of the file; they still load, and their snapshot is checked key by key until the
//! next commit replaces it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Mode, PostgresState, SyncConfig};

pub mod copy;
mod postgres;
pub use postgres::PgStore;
pub(crate) use postgres::Session;

/// The manifest format this build writes.
pub const MANIFEST_FORMAT: u32 = 2;
/// The format of earlier releases' manifests, which hash the keys rather than the snapshot file.
const KEY_HASH_FORMAT: u32 = 1;

const MANIFEST_FILE: &str = "manifest.json";
const LOCK_FILE: &str = "lock";
const KEY_COLUMN: &str = "context_key";
const READ_BATCH_ROWS: usize = 64 * 1024;

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the checkpoint manifest {path} is unreadable ({source}); move it aside and run `ldsync sync --full` to rebuild it"
    )]
    BadManifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "the checkpoint manifest {path} belongs to sync `{owner}`, not `{sync}`; each sync needs its own state directory"
    )]
    Foreign {
        path: PathBuf,
        owner: String,
        sync: String,
    },
    #[error(
        "the checkpoint manifest {path} is damaged: {problem}; move it aside and run `ldsync sync --full` to rebuild it"
    )]
    Damaged { path: PathBuf, problem: String },
    #[error(
        "the checkpoint snapshot {path} is damaged: {problem}; move the sync's state aside and run `ldsync sync --full` to rebuild it"
    )]
    DamagedSnapshot { path: PathBuf, problem: String },
    #[error(
        "another run of sync `{sync}` is under way ({holder}); runs of one sync never overlap, so this one stops \
         without changing anything{}", if waited.is_zero() {
            " (set state.lock_wait to wait for it instead)".to_string()
        } else {
            format!(" after waiting {} (state.lock_wait)", humantime::format_duration(*waited))
        }
    )]
    Locked {
        sync: String,
        /// Who holds the lock, as the holder wrote it in the lock file.
        holder: String,
        waited: std::time::Duration,
    },
    #[error("cannot read the checkpoint snapshot {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("state.url is not a PostgreSQL URL: {0}")]
    PostgresUrl(String),
    #[error(
        "cannot connect to the state store in PostgreSQL at {target}: {message}; check state.url, and that the \
         server is up and accepts this user"
    )]
    PostgresConnect { target: String, message: String },
    #[error("the state store in PostgreSQL ({location}) could not {doing}: {message}")]
    Postgres {
        location: String,
        doing: &'static str,
        message: String,
    },
    #[error(
        "the checkpoint was made with other settings ({changes}), so its keys say nothing about the segment now configured; \
         run `ldsync sync --full` to reconcile against the segment's real membership, or restore the old settings"
    )]
    SettingsChanged { changes: String },
}

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
    pub fn of(config: &Config, sync: &SyncConfig) -> Self {
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

/// Where the syncs' state is kept, as `state.kind` says.
#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
    Postgres(PgStore),
}

impl Store {
    /// The configured store; for PostgreSQL, connected, with its migrations applied.
    pub fn open(config: &Config) -> Result<Store, StateError> {
        match &config.state.postgres {
            None => Ok(Store::Local(LocalStore::new(config.state_dir()))),
            Some(postgres) => {
                PgStore::open(postgres, postgres_copies(config, postgres)).map(Store::Postgres)
            }
        }
    }

    /// The sync's committed checkpoint, or `None` before its first commit.
    pub fn load(&self, sync: &str) -> Result<Option<Checkpoint>, StateError> {
        match self {
            Store::Local(local) => local.load(sync),
            Store::Postgres(pg) => pg.load(sync),
        }
    }

    /// Writes the snapshot a run will commit (`write` writes it as Parquet at the path it is given, and says how
    /// many keys), before the run sends anything.
    pub fn prepare<E: From<StateError>>(
        &self,
        sync: &str,
        run_id: &str,
        write: impl FnOnce(&Path) -> Result<u64, E>,
    ) -> Result<PreparedSnapshot, E> {
        match self {
            Store::Local(local) => local.prepare(sync, run_id, write),
            Store::Postgres(pg) => pg.prepare(sync, run_id, write),
        }
    }

    /// The manifest of the sync's committed checkpoint, without reading its snapshot (for status).
    pub fn manifest(&self, sync: &str) -> Result<Option<Manifest>, StateError> {
        match self {
            Store::Local(local) => Ok(local.load(sync)?.map(|c| c.manifest)),
            Store::Postgres(pg) => Ok(pg.manifest(sync)?.map(|(manifest, _)| manifest)),
        }
    }

    /// Makes a prepared snapshot the sync's checkpoint. The PostgreSQL store also deletes the run's journal in the
    /// same transaction; the local store's journal is closed after (a crash between resumes it, and its commit is
    /// made again).
    pub fn commit_prepared(
        &self,
        sync: &str,
        run_id: &str,
        settings: &CheckpointSettings,
        prepared: &PreparedSnapshot,
    ) -> Result<Manifest, StateError> {
        match self {
            Store::Local(local) => local.commit_prepared(sync, run_id, settings, prepared),
            Store::Postgres(pg) => pg.commit_prepared(sync, run_id, settings, prepared),
        }
    }

    /// Commits `keys` (distinct) as the sync's new checkpoint, written with ldsync's own Parquet writer: for
    /// checkpoints made outside a run (moving a checkpoint between stores, tests, benchmarks).
    pub fn commit<'a>(
        &self,
        sync: &str,
        run_id: &str,
        settings: &CheckpointSettings,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<Manifest, StateError> {
        let prepared = self.prepare(sync, run_id, |path| write_parquet_keys_to(path, keys))?;
        self.commit_prepared(sync, run_id, settings, &prepared)
    }

    /// Takes the sync's run lock; `Ok(None)` when another run holds it ([`Store::holder`] says who).
    pub fn try_lock(&self, sync: &str, run_id: &str) -> Result<Option<SyncLock>, StateError> {
        match self {
            Store::Local(local) => local.try_lock(sync, run_id),
            Store::Postgres(pg) => pg.try_lock(sync, run_id),
        }
    }

    /// Who holds the sync's run lock, as the holder wrote it.
    pub fn holder(&self, sync: &str) -> String {
        match self {
            Store::Local(local) => local.holder(sync),
            Store::Postgres(pg) => pg.holder(sync),
        }
    }

    /// Whether a run of the sync left a journal, unfinished.
    pub fn journal_exists(&self, sync: &str) -> bool {
        match self {
            Store::Local(local) => crate::journal::exists(&local.sync_dir(sync)),
            Store::Postgres(pg) => pg.journal_exists(sync),
        }
    }

    /// The sync's directory on this host: the local store's, or where the PostgreSQL store keeps its snapshot
    /// copies. A run's scratch files (an events run's spool) go there.
    pub fn host_dir(&self, sync: &str) -> PathBuf {
        match self {
            Store::Local(local) => local.sync_dir(sync),
            Store::Postgres(pg) => pg.host_dir(sync),
        }
    }
}

/// Where the PostgreSQL store keeps its snapshot copies on this host: a directory of the state directory whose
/// name no sync can have (`@` is not allowed in sync names), one a schema.
fn postgres_copies(config: &Config, postgres: &PostgresState) -> PathBuf {
    config
        .state_dir()
        .join(format!("postgres@{}", postgres.schema))
}

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
        let temp = dir.join(format!(".{file}.partial"));
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
        Ok(Some(SyncLock(Held::File(file))))
    }

    /// Who holds the sync's run lock, as the holder wrote it.
    pub fn holder(&self, sync: &str) -> String {
        std::fs::read_to_string(self.sync_dir(sync).join(LOCK_FILE))
            .ok()
            .filter(|text| !text.trim().is_empty())
            .unwrap_or_else(|| "a process that has not said who it is".to_string())
    }
}

/// The manifest that commits `prepared` as run `run_id`'s checkpoint, now.
fn manifest_for(
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

/// How a run lock's holder says who it is: the run, the process and the host, and since when.
fn holder_text(run_id: &str) -> String {
    format!(
        "run {run_id}, process {} on {}, since {}",
        std::process::id(),
        host_name(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// This machine's name, for lock holders: the kernel's hostname, or `this host`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "this host".to_string())
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

/// Held while a run of one sync is under way; released when dropped, and if the process dies, by the operating
/// system (the local store's lock file) or by PostgreSQL (the session's advisory lock).
#[derive(Debug)]
pub struct SyncLock(Held);

#[derive(Debug)]
enum Held {
    File(#[allow(dead_code)] File),
    Postgres {
        store: PgStore,
        connection: Option<sqlx::PgConnection>,
    },
}

impl SyncLock {
    fn postgres(store: PgStore, connection: sqlx::PgConnection) -> Self {
        SyncLock(Held::Postgres {
            store,
            connection: Some(connection),
        })
    }
}

impl Drop for SyncLock {
    fn drop(&mut self) {
        if let Held::Postgres { store, connection } = &mut self.0
            && let Some(connection) = connection.take()
        {
            store.release(connection);
        }
    }
}

/// Checks a manifest's format, owner and fingerprint, and that it names a snapshot file and (`hash_required`: the
/// local store's) the snapshot's hash.
pub(super) fn check_manifest(
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
    snapshot_path: PathBuf,
    /// The snapshot's table, for a checkpoint of the PostgreSQL store: `snapshot_path` is then a local copy, checked
    /// against the key count (the transaction that wrote the table vouches for its keys), where the local store's
    /// own snapshot is checked against the manifest's hash too.
    stored: Option<StoredSnapshot>,
}

/// A snapshot kept in the PostgreSQL store.
#[derive(Debug, Clone)]
struct StoredSnapshot {
    store: PgStore,
    id: i64,
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

    /// Where the snapshot lies as a Parquet file. A checkpoint of the PostgreSQL store is downloaded the first time
    /// this host asks for it, and its copy checked against the store's key count.
    pub fn snapshot_path(&self) -> Result<&Path, StateError> {
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
            self.snapshot_path()?,
            self.manifest.key_count,
            expected_hash,
        )
    }
}

/// The keys of a snapshot, batch by batch, checked against the manifest's count and hash at the end.
pub struct SnapshotKeys {
    reader: ParquetRecordBatchReader,
    path: PathBuf,
    expected_count: u64,
    /// The hash of the keys a manifest of format 1 gives.
    expected_hash: Option<String>,
    hash: ContentHasher,
    done: bool,
}

impl SnapshotKeys {
    /// The keys of the snapshot at `path`, to be checked at the end against `expected_count` and, for a snapshot
    /// of format 1, `expected_hash`.
    fn open(
        path: &Path,
        expected_count: u64,
        expected_hash: Option<String>,
    ) -> Result<SnapshotKeys, StateError> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(open(path)?)
            .and_then(|b| b.with_batch_size(READ_BATCH_ROWS).build())
            .map_err(|source| StateError::Parquet {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SnapshotKeys {
            reader,
            path: path.to_path_buf(),
            expected_count,
            expected_hash,
            hash: ContentHasher::default(),
            done: false,
        })
    }

    fn damaged(&self, problem: String) -> StateError {
        StateError::DamagedSnapshot {
            path: self.path.clone(),
            problem,
        }
    }

    fn next_batch(&mut self) -> Option<Result<StringArray, StateError>> {
        match self.reader.next() {
            Some(Ok(batch)) => Some(self.keys_of(&batch)),
            Some(Err(source)) => Some(Err(StateError::Parquet {
                path: self.path.clone(),
                source: source.into(),
            })),
            None => self.verify_end().err().map(Err),
        }
    }

    fn keys_of(&mut self, batch: &RecordBatch) -> Result<StringArray, StateError> {
        let column = batch.column(0);
        if batch.num_columns() != 1
            || column.data_type() != &DataType::Utf8
            || column.null_count() > 0
        {
            return Err(self.damaged(format!(
                "expected one non-null text column, found {}",
                batch.schema()
            )));
        }
        let keys = column.as_string::<i32>().clone();
        keys.iter().flatten().for_each(|k| self.hash.add(k));
        Ok(keys)
    }

    fn verify_end(&mut self) -> Result<(), StateError> {
        let count = self.hash.count;
        let hash = std::mem::take(&mut self.hash).finish();
        if count != self.expected_count {
            return Err(self.damaged(format!(
                "it holds {count} keys, its manifest says {}",
                self.expected_count
            )));
        }
        if self
            .expected_hash
            .as_ref()
            .is_some_and(|expected| hash != *expected)
        {
            return Err(self.damaged("its content hash does not match its manifest".into()));
        }
        Ok(())
    }
}

impl Iterator for SnapshotKeys {
    type Item = Result<StringArray, StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_batch();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Hashes keys in order, each preceded by its length, in large chunks.
#[derive(Default)]
struct ContentHasher {
    hasher: blake3::Hasher,
    buffer: Vec<u8>,
    count: u64,
}

impl ContentHasher {
    const CHUNK: usize = 64 * 1024;

    fn add(&mut self, key: &str) {
        self.buffer
            .extend_from_slice(&(key.len() as u64).to_le_bytes());
        self.buffer.extend_from_slice(key.as_bytes());
        self.count += 1;
        if self.buffer.len() >= Self::CHUNK {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
        }
    }

    fn finish(mut self) -> String {
        self.hasher.update(&self.buffer);
        format!("blake3:{}", self.hasher.finalize().to_hex())
    }
}

/// Writes `keys` as a new Parquet file at `path` with ldsync's own writer; returns how many.
fn write_parquet_keys_to<'a>(
    path: &Path,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<u64, StateError> {
    let file = File::create(path).map_err(|source| StateError::Io {
        action: "cannot create",
        path: path.to_path_buf(),
        source,
    })?;
    let mut count = 0;
    write_parquet_keys(file, keys.into_iter().inspect(|_| count += 1)).map_err(|source| {
        StateError::Parquet {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(count)
}

/// Writes arrays of keys (none null) as a new Parquet file at `path`; returns how many keys.
fn write_parquet_arrays_to(
    path: &Path,
    arrays: impl Iterator<Item = Result<StringArray, StateError>>,
) -> Result<u64, StateError> {
    let file = File::create(path).map_err(|source| StateError::Io {
        action: "cannot create",
        path: path.to_path_buf(),
        source,
    })?;
    let parquet_error = |source| StateError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let mut writer = KeyWriter::new(file).map_err(parquet_error)?;
    for array in arrays {
        writer.write(array?).map_err(parquet_error)?;
    }
    writer.close().map_err(parquet_error)
}

fn open(path: &Path) -> Result<File, StateError> {
    File::open(path).map_err(|source| StateError::Io {
        action: "cannot open",
        path: path.to_path_buf(),
        source,
    })
}

/// Flushes the file at `path` to disk and returns `blake3:` and the hash of its bytes.
fn flush_and_hash(path: &Path) -> Result<String, StateError> {
    open(path)?.sync_all().map_err(|source| StateError::Io {
        action: "cannot flush",
        path: path.to_path_buf(),
        source,
    })?;
    hash_file(path)
}

/// `blake3:` and the BLAKE3 hash of the file's bytes, computed on two threads: BLAKE3 is a tree, so the file's left
/// and right subtrees are hashed apart, each read at disk speed, and joined into the same hash as one pass would
/// give.
fn hash_file(path: &Path) -> Result<String, StateError> {
    use blake3::hazmat::{HasherExt, Mode, left_subtree_len, merge_subtrees_root};
    let io = |source| StateError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    };
    let len = open(path)?.metadata().map_err(io)?.len();
    if len <= blake3::CHUNK_LEN as u64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(open(path)?).map_err(io)?;
        return Ok(format!("blake3:{}", hasher.finalize().to_hex()));
    }
    let subtree = |offset: u64, length: u64| {
        let mut file = open(path)?;
        file.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(offset);
        hasher.update_reader(file.take(length)).map_err(io)?;
        Ok::<_, StateError>(hasher.finalize_non_root())
    };
    let left_len = left_subtree_len(len);
    let (left, right) = std::thread::scope(|scope| {
        let right = scope.spawn(|| subtree(left_len, len - left_len));
        let left = subtree(0, left_len);
        let right = right
            .join()
            .unwrap_or_else(|_| Err(io(std::io::Error::other("the hashing thread stopped"))));
        (left, right)
    });
    let hash = merge_subtrees_root(&left?, &right?, Mode::Hash);
    Ok(format!("blake3:{}", hash.to_hex()))
}

/// Writes keys as a Parquet file with one non-null `context_key` column.
pub fn write_parquet_keys<'a, W: Write + Send>(
    out: W,
    keys: impl Iterator<Item = &'a str>,
) -> Result<(), parquet::errors::ParquetError> {
    const WRITE_BATCH_ROWS: usize = 64 * 1024;
    let mut writer = KeyWriter::new(out)?;
    let mut keys = keys.peekable();
    while keys.peek().is_some() {
        writer.write(StringArray::from_iter_values(
            keys.by_ref().take(WRITE_BATCH_ROWS),
        ))?;
    }
    writer.close().map(drop)
}

/// Writes arrays of keys as Parquet with one non-null `context_key` column, counting them.
struct KeyWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: Arc<Schema>,
    count: u64,
}

impl<W: Write + Send> KeyWriter<W> {
    fn new(out: W) -> Result<Self, parquet::errors::ParquetError> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            KEY_COLUMN,
            DataType::Utf8,
            false,
        )]));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        Ok(KeyWriter {
            writer: ArrowWriter::try_new(out, schema.clone(), Some(props))?,
            schema,
            count: 0,
        })
    }

    fn write(&mut self, keys: StringArray) -> Result<(), parquet::errors::ParquetError> {
        self.count += keys.len() as u64;
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(keys)])?;
        self.writer.write(&batch)
    }

    fn close(self) -> Result<u64, parquet::errors::ParquetError> {
        self.writer.close()?;
        Ok(self.count)
    }
}

/// Writes `name` in `dir` through a temporary file that is fsynced and renamed into place.
fn write_atomically(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let target = dir.join(name);
    let io = |action, source| StateError::Io {
        action,
        path: target.clone(),
        source,
    };
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(|e| io("cannot create a temporary file for", e))?;
    write(temp.as_file_mut())?;
    temp.as_file()
        .sync_all()
        .map_err(|e| io("cannot flush", e))?;
    temp.persist(&target)
        .map_err(|e| io("cannot rename into place", e.error))?;
    Ok(())
}

/// The file's bytes, or `None` when it does not exist.
pub(crate) fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` as `name` in `dir` atomically and makes the rename durable.
pub(crate) fn write_file_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), StateError> {
    write_file_atomically_with(dir, name, |out| out.write_all(bytes))
}

/// Writes `dir/name` through `write` (buffered), atomically: a temporary file, fsynced, renamed into place, and the
/// directory fsynced.
pub(crate) fn write_file_atomically_with(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), StateError> {
    write_atomically(dir, name, |file| {
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)
            .and_then(|()| out.flush())
            .map_err(|source| StateError::Io {
                action: "cannot write",
                path: dir.join(name),
                source,
            })
    })?;
    sync_directory(dir)
}

pub(crate) fn sync_directory(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::Io {
            action: "cannot flush",
            path: dir.to_path_buf(),
            source,
        })
}

/// Removes snapshots that no manifest names any more (left by earlier commits or by a crash before a commit), and
/// snapshots a crash left half written.
fn remove_stale_snapshots(dir: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = (name.starts_with("snapshot-") && name.ends_with(".parquet"))
            || (name.starts_with(".snapshot-") && name.ends_with(".partial"));
        if stale
            && name != current
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "could not remove an old snapshot");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CheckpointSettings {
        CheckpointSettings {
            project: "p".into(),
            environment: "production".into(),
            segment: "seg".into(),
            context_kind: "user".into(),
            mode: Mode::Mirror,
        }
    }

    fn read_all(checkpoint: &Checkpoint) -> Result<Vec<String>, StateError> {
        let mut keys = Vec::new();
        for batch in checkpoint.keys()? {
            keys.extend(batch?.iter().map(|k| k.unwrap().to_string()));
        }
        Ok(keys)
    }

    #[test]
    fn a_commit_round_trips_and_replaces_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::new(dir.path()));
        assert!(
            store.load("s").unwrap().is_none(),
            "no checkpoint before the first commit"
        );

        let many: Vec<String> = (0..150_000).map(|i| format!("k{i:07}")).collect();
        let manifest = store
            .commit("s", "run1", &settings(), many.iter().map(String::as_str))
            .unwrap();
        assert_eq!(manifest.key_count, 150_000);
        let loaded = store.load("s").unwrap().unwrap();
        assert_eq!(loaded.manifest, manifest);
        assert_eq!(read_all(&loaded).unwrap(), many);

        // As a run killed while writing its snapshot leaves it.
        std::fs::write(
            dir.path().join("s/.snapshot-killed.parquet.partial"),
            b"PAR1",
        )
        .unwrap();
        store.commit("s", "run2", &settings(), ["a", "b"]).unwrap();
        let loaded = store.load("s").unwrap().unwrap();
        assert_eq!(loaded.manifest.run_id, "run2");
        assert_eq!(read_all(&loaded).unwrap(), ["a", "b"]);
        let files: Vec<String> = std::fs::read_dir(dir.path().join("s"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files.len(),
            2,
            "only the manifest and the current snapshot remain, no half-written one: {files:?}"
        );
    }

    /// A run of an earlier release, killed after it prepared its snapshot, left a journal whose snapshot is vouched
    /// for by the hash of its keys: finishing it commits a manifest of format 1, which is checked key by key.
    #[test]
    fn a_snapshot_prepared_by_an_earlier_release_commits_as_format_1() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::new(dir.path()));
        let keys = ["a", "b", "c"];
        let mut hash = ContentHasher::default();
        keys.iter().for_each(|k| hash.add(k));
        let mut prepared = store
            .prepare("s", "old-run", |path| write_parquet_keys_to(path, keys))
            .unwrap();
        prepared.snapshot_hash = None;
        prepared.content_hash = Some(hash.finish());
        let manifest = store
            .commit_prepared("s", "old-run", &settings(), &prepared)
            .unwrap();
        assert_eq!((manifest.format, manifest.key_count), (KEY_HASH_FORMAT, 3));
        let loaded = store.load("s").unwrap().unwrap();
        loaded.verify().unwrap();
        assert_eq!(read_all(&loaded).unwrap(), keys);

        // A key changed under the same count fails the keys' hash.
        let other = tempfile::tempdir().unwrap();
        Store::Local(LocalStore::new(other.path()))
            .commit("s", "x", &settings(), ["a", "b", "d"])
            .unwrap();
        let snapshot = std::fs::read_dir(other.path().join("s"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "parquet"))
            .unwrap();
        std::fs::copy(snapshot, dir.path().join("s").join(&manifest.snapshot)).unwrap();
        let err = store.load("s").unwrap().unwrap().verify().unwrap_err();
        assert!(
            err.to_string()
                .contains("its content hash does not match its manifest"),
            "{err}"
        );

        // The next commit writes format 2.
        let next = store.commit("s", "new-run", &settings(), keys).unwrap();
        assert_eq!(next.format, MANIFEST_FORMAT);
        assert!(next.content_hash.is_none() && next.snapshot_hash.is_some());
    }

    #[test]
    fn a_file_hashed_on_two_threads_has_its_one_pass_blake3() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, 1024, 1025, 2048, 4096 + 7, 1_000_003] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(
                hash_file(&path).unwrap(),
                format!("blake3:{}", blake3::hash(&bytes).to_hex()),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn an_empty_key_set_is_a_real_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::new(dir.path()));
        store
            .commit("s", "run1", &settings(), std::iter::empty())
            .unwrap();
        let loaded = store.load("s").unwrap().unwrap();
        assert_eq!(loaded.manifest.key_count, 0);
        assert!(read_all(&loaded).unwrap().is_empty());
    }

    #[test]
    fn a_changed_snapshot_fails_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::new(dir.path()));
        let first = store.commit("s", "run1", &settings(), ["a", "b"]).unwrap();
        // Swap in a snapshot with the same number of different keys, as a stray copy or bit rot would.
        let other = Store::Local(LocalStore::new(dir.path().join("other")));
        other.commit("s", "run1", &settings(), ["a", "c"]).unwrap();
        std::fs::copy(
            dir.path().join("other/s").join(&first.snapshot),
            dir.path().join("s").join(&first.snapshot),
        )
        .unwrap();
        let err = store.load("s").unwrap().unwrap().verify().unwrap_err();
        assert!(
            err.to_string()
                .contains("its content hash does not match its manifest"),
            "{err}"
        );
    }

    #[test]
    fn settings_changes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::new(dir.path()));
        store.commit("s", "run1", &settings(), ["a"]).unwrap();
        let now = CheckpointSettings {
            segment: "other".into(),
            mode: Mode::Add,
            ..settings()
        };
        let err = store
            .load("s")
            .unwrap()
            .unwrap()
            .check_settings(&now)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("(segment: seg → other, mode: mirror → add)"),
            "{err}"
        );
        assert_ne!(now.fingerprint(), settings().fingerprint());
    }

    #[test]
    fn a_tampered_fingerprint_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::new(dir.path()));
        store.commit("s", "run1", &settings(), ["a"]).unwrap();
        let path = dir.path().join("s/manifest.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"segment\": \"seg\"", "\"segment\": \"edited\""),
        )
        .unwrap();
        let err = store.load("s").unwrap_err();
        assert!(
            err.to_string()
                .contains("its fingerprint does not match its settings"),
            "{err}"
        );
    }
}
