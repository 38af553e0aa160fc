//! The state store: per sync, the key set of its last committed run and the manifest that vouches for it, the
//! journal of a run under way, the run history, an events sync's checkpoint and the run lock. [`Store`] is one of
//! two backends, side by side: the local store in files under `state.directory` ([`local`]), or the store in
//! PostgreSQL that hosts share ([`postgres`]). This file is the boundary: what a store does, and the one place that
//! says which backend does it. Nothing outside `state/` asks which store it has.
//!
//! What both backends share: the checkpoint's format ([`checkpoint`]: manifest, settings, prepared snapshots),
//! snapshots as Parquet files and their hashes ([`snapshot`]), durable file writes ([`files`]), the journal's
//! records ([`journal`]), the events checkpoint's format ([`events`]), and copying checkpoints between the two
//! ([`copy`]).
//!
//! Reading a checkpoint checks everything the manifest claims (the owner, the fingerprint, the key count, the
//! BLAKE3 hash of the snapshot's bytes), so a damaged or foreign checkpoint is an error, never an empty set.
//! Manifests of format 1, from earlier releases, hashed the keys themselves instead of the file; they still load,
//! and their snapshot is checked key by key until the next commit replaces it.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::config::{Config, PostgresState};
use crate::vocab::ErrorClass;

pub mod checkpoint;
pub mod copy;
pub mod events;
mod files;
pub mod journal;
mod local;
mod postgres;
pub mod snapshot;

pub use checkpoint::{Checkpoint, CheckpointSettings, Manifest, PreparedSnapshot};
pub use journal::{
    Journal, JournalBatch, JournalError, JournalHeader, Refusal, RunIdentity, Submission,
};
pub use local::LocalStore;
pub use postgres::PgStore;
pub(crate) use postgres::Session;
pub use snapshot::write_parquet_keys;
use snapshot::write_parquet_keys_to;

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
        "run {run} of sync `{sync}` lost its run lock in the state store in PostgreSQL ({location}): the lock's \
         connection was closed (a failover, an idle-connection reaper, pg_terminate_backend, or the server's TCP \
         keepalives giving this host up) or another host's run has taken the sync over. It stopped without sending \
         anything more and without touching the sync's state; the run that holds the lock now, or the next run, \
         finishes its journal"
    )]
    LostLock {
        sync: String,
        run: String,
        location: String,
    },
    #[error(
        "ldsync tried to change sync `{sync}`'s state in PostgreSQL ({location}) without holding the sync's run \
         lock, and did not: every change to a sync's state is made by the run that holds its lock"
    )]
    NotLocked { sync: String, location: String },
    #[error(
        "the checkpoint was made with other settings ({changes}), so its keys say nothing about the segment now configured; \
         run `ldsync sync --full` to reconcile against the segment's real membership, or restore the old settings"
    )]
    SettingsChanged { changes: String },
}

impl StateError {
    /// A URL that is not one is connector.yaml's; the rest is the state store's.
    pub fn class(&self) -> ErrorClass {
        match self {
            StateError::PostgresUrl(_) => ErrorClass::Config,
            _ => ErrorClass::StateStore,
        }
    }
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

    /// Whether the store answers: the local store's directory can be made and read, the PostgreSQL store answers
    /// a query within a few seconds (for `ldsync run`'s readiness).
    pub fn check(&self) -> Result<(), StateError> {
        match self {
            Store::Local(local) => local.check(),
            Store::Postgres(pg) => pg.check(),
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
    /// checkpoints made outside a run (tests, benchmarks), holding the sync's run lock as a run does.
    pub fn commit<'a>(
        &self,
        sync: &str,
        run_id: &str,
        settings: &CheckpointSettings,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<Manifest, StateError> {
        let _lock = self
            .try_lock(sync, run_id)?
            .ok_or_else(|| StateError::Locked {
                sync: sync.to_string(),
                holder: self.holder(sync),
                waited: std::time::Duration::ZERO,
            })?;
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
            Store::Local(local) => local.journal_exists(sync),
            Store::Postgres(pg) => pg.journal_exists(sync),
        }
    }

    /// Writes a run's journal, whole, before anything is sent.
    pub(crate) fn create_journal<H: JournalHeader, B: JournalBatch>(
        &self,
        header: H,
        batches: impl IntoIterator<Item = std::io::Result<B>>,
    ) -> Result<Journal<H, B>, JournalError> {
        match self {
            Store::Local(local) => local.create_journal(header, batches),
            Store::Postgres(pg) => pg.create_journal(header, batches),
        }
    }

    /// The journal a run of `sync` left, if any.
    pub(crate) fn open_journal<H: JournalHeader, B: JournalBatch>(
        &self,
        sync: &str,
    ) -> Result<Option<Journal<H, B>>, JournalError> {
        match self {
            Store::Local(local) => local.open_journal(sync),
            Store::Postgres(pg) => pg.open_journal(sync),
        }
    }

    /// Appends one run's record (a JSON document) to `sync`'s run history, durably.
    pub fn append_run(
        &self,
        sync: &str,
        run_id: &str,
        finished_at: DateTime<Utc>,
        record: String,
    ) -> Result<(), StateError> {
        match self {
            Store::Local(local) => local.append_run(sync, record),
            Store::Postgres(pg) => pg.append_run(sync, run_id, finished_at, record),
        }
    }

    /// `sync`'s run records (JSON documents), oldest first.
    pub fn runs(&self, sync: &str) -> Result<Vec<String>, StateError> {
        match self {
            Store::Local(local) => local.runs(sync),
            Store::Postgres(pg) => pg.runs(sync),
        }
    }

    /// Where `sync`'s events checkpoint is kept, for messages: its file, or its row.
    pub fn event_checkpoint_location(&self, sync: &str) -> String {
        match self {
            Store::Local(local) => local.event_checkpoint_path(sync).display().to_string(),
            Store::Postgres(pg) => format!("{} event_checkpoints[{sync}]", pg.location()),
        }
    }

    /// `sync`'s events checkpoint (a JSON document) as stored, if it has one.
    pub fn read_event_checkpoint(&self, sync: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Store::Local(local) => local.read_event_checkpoint(sync),
            Store::Postgres(pg) => Ok(pg.event_checkpoint(sync)?.map(String::into_bytes)),
        }
    }

    /// Replaces `sync`'s events checkpoint (a JSON document) with the one run `run_id` made, atomically. The
    /// PostgreSQL store also deletes the run's journal in the same transaction; the local store's journal is closed
    /// after (a crash between finishes the journal again, and its commit is made again).
    pub fn commit_event_checkpoint(
        &self,
        sync: &str,
        run_id: &str,
        json: Vec<u8>,
    ) -> Result<(), StateError> {
        match self {
            Store::Local(local) => local.write_event_checkpoint(sync, json),
            Store::Postgres(pg) => {
                let text = String::from_utf8(json).expect("serde_json writes UTF-8");
                pg.commit_event_checkpoint(sync, run_id, text)
            }
        }
    }

    /// The PostgreSQL store, when it is kept in database `target` (`user@host:port/database`), where the
    /// in-warehouse diff can compare a model with its checkpoint without moving the keys.
    pub fn in_database(&self, target: &str) -> Option<&PgStore> {
        match self {
            Store::Postgres(pg) if pg.target() == target => Some(pg),
            Store::Local(_) | Store::Postgres(_) => None,
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

/// Held while a run of one sync is under way; released when dropped, and if the process dies, by the operating
/// system (the local store's lock file) or by PostgreSQL (the session's advisory lock).
#[derive(Debug)]
pub struct SyncLock(LockHold);

#[derive(Debug)]
enum LockHold {
    File(#[allow(dead_code)] File),
    Postgres {
        store: PgStore,
        sync: String,
        connection: Option<sqlx::PgConnection>,
    },
}

impl SyncLock {
    fn postgres(store: PgStore, sync: &str, connection: sqlx::PgConnection) -> Self {
        SyncLock(LockHold::Postgres {
            store,
            sync: sync.to_string(),
            connection: Some(connection),
        })
    }
}

impl Drop for SyncLock {
    fn drop(&mut self) {
        if let LockHold::Postgres {
            store,
            sync,
            connection,
        } = &mut self.0
            && let Some(connection) = connection.take()
        {
            store.unlock(sync, connection);
        }
    }
}

/// Where a journal is kept: the local store's file or the PostgreSQL store's rows.
#[derive(Debug)]
pub(crate) enum JournalPlace {
    File(local::journal::JournalFile),
    Rows(postgres::JournalAt),
}

impl JournalPlace {
    fn describe(&self) -> String {
        match self {
            JournalPlace::File(file) => file.describe(),
            JournalPlace::Rows(rows) => rows.describe(),
        }
    }

    fn batch<H: JournalHeader, B: JournalBatch>(
        &self,
        index: usize,
    ) -> Result<Option<B>, JournalError> {
        match self {
            JournalPlace::File(file) => file.batch::<H, B>(index),
            JournalPlace::Rows(rows) => rows.batch(index),
        }
    }

    fn acknowledge(&self, index: usize) -> Result<(), JournalError> {
        match self {
            JournalPlace::File(file) => file.acknowledge(index),
            JournalPlace::Rows(rows) => rows.acknowledge(index),
        }
    }

    fn refuse(&self, refusal: &Refusal) -> Result<(), JournalError> {
        match self {
            JournalPlace::File(file) => file.refuse(refusal),
            JournalPlace::Rows(rows) => rows.refuse(refusal),
        }
    }

    fn submit(&self, submission: &Submission) -> Result<(), JournalError> {
        match self {
            JournalPlace::File(file) => file.submit(submission),
            JournalPlace::Rows(rows) => rows.submit(submission),
        }
    }

    fn close(self) -> Result<(), JournalError> {
        match self {
            JournalPlace::File(file) => file.close(),
            JournalPlace::Rows(rows) => rows.close(),
        }
    }

    fn confirm_lock(&self) -> Result<(), JournalError> {
        match self {
            JournalPlace::File(_) => Ok(()),
            JournalPlace::Rows(rows) => rows.confirm_lock(),
        }
    }
}
/// How a run lock's holder says who it is: the run, the process and the host, and since when.
pub(crate) fn holder_text(run_id: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::checkpoint::{KEY_HASH_FORMAT, MANIFEST_FORMAT};
    use super::snapshot::{ContentHasher, hash_file};
    use super::*;
    use crate::config::Mode;

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
        // The run lock's file stays, as every run's does.
        let files: Vec<String> = std::fs::read_dir(dir.path().join("s"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lock")
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
