//! `ldsync copy-checkpoints`: moves syncs' checkpoints between the local store (the files under `state.directory`)
//! and the PostgreSQL store, so that a team can move to shared state, or back, without a full resync.
//!
//! A segment sync's checkpoint is copied as it is (its keys, its run, its settings), checked on the way out and
//! committed on the way in as any run's checkpoint is; an events sync's watermark the same. Both stores' run locks
//! are held while a sync is copied, and a sync with an unfinished run in either store is refused: that run's
//! journal belongs to the store it started in, and finishing it there first is what keeps it from being lost.

use crate::config::{Config, SyncEntry};
use crate::state::events::{self as event_checkpoint, EventCheckpointError, EventSettings};
use crate::state::{CheckpointSettings, LocalStore, PgStore, StateError, Store, postgres_copies};
use crate::vocab::ErrorClass;

/// Which store a copy reads from; the other is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The files under state.directory.
    Local,
    /// The PostgreSQL store at state.url.
    Postgres,
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::Local => "local",
            StoreKind::Postgres => "postgres",
        })
    }
}

/// Why a sync's checkpoint was not copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyCheckpointError {
    #[error(
        "copy-checkpoints moves checkpoints between state.directory and a PostgreSQL store: set state.kind: postgres \
         and state.url in the configuration first"
    )]
    NoPostgres,
    #[error(transparent)]
    Open(StateError),
    #[error("sync `{sync}`: {source}")]
    State { sync: String, source: StateError },
    #[error("sync `{sync}`: {source}")]
    Events {
        sync: String,
        source: EventCheckpointError,
    },
    #[error(
        "sync `{sync}` is running in the {store} store ({holder}); copy its checkpoint once the run is over"
    )]
    Locked {
        sync: String,
        store: StoreKind,
        holder: String,
    },
    #[error(
        "sync `{sync}` has an unfinished run in the {store} store; finish it there first (`ldsync sync {sync}` with \
         state.kind: {store}), then copy its checkpoint"
    )]
    Unfinished { sync: String, store: StoreKind },
    #[error(
        "sync `{sync}` already has a checkpoint in the {store} store (run {run_id}); pass --replace to overwrite it"
    )]
    Exists {
        sync: String,
        store: StoreKind,
        run_id: String,
    },
}

impl CopyCheckpointError {
    pub fn class(&self) -> ErrorClass {
        match self {
            CopyCheckpointError::NoPostgres => ErrorClass::Config,
            CopyCheckpointError::Open(e) | CopyCheckpointError::State { source: e, .. } => {
                e.class()
            }
            CopyCheckpointError::Events { source, .. } => source.class(),
            CopyCheckpointError::Locked { .. }
            | CopyCheckpointError::Unfinished { .. }
            | CopyCheckpointError::Exists { .. } => ErrorClass::StateStore,
        }
    }
}

/// What was copied for one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// A segment sync's checkpoint: its run and how many keys.
    Checkpoint { run_id: String, key_count: u64 },
    /// An events sync's checkpoint: its run.
    Events { run_id: String },
    /// The source has no checkpoint for the sync.
    Nothing,
}

/// The two stores of a copy.
pub struct Copier<'c> {
    config: &'c Config,
    from: (StoreKind, Store),
    to: (StoreKind, Store),
}

impl<'c> Copier<'c> {
    /// Opens both stores (connecting to PostgreSQL and applying its migrations).
    pub fn open(config: &'c Config, from: StoreKind) -> Result<Self, CopyCheckpointError> {
        let postgres = config
            .state
            .postgres
            .as_ref()
            .ok_or(CopyCheckpointError::NoPostgres)?;
        let local = Store::Local(LocalStore::new(config.state_dir()));
        let shared = PgStore::open(postgres, postgres_copies(config, postgres))
            .map(Store::Postgres)
            .map_err(CopyCheckpointError::Open)?;
        let (from, to) = match from {
            StoreKind::Local => ((StoreKind::Local, local), (StoreKind::Postgres, shared)),
            StoreKind::Postgres => ((StoreKind::Postgres, shared), (StoreKind::Local, local)),
        };
        Ok(Copier { config, from, to })
    }

    /// Copies one sync's checkpoint, holding both stores' run locks.
    pub fn copy(&self, sync: SyncEntry<'_>, replace: bool) -> Result<Copied, CopyCheckpointError> {
        let name = sync.name();
        let run_id = uuid::Uuid::now_v7().to_string();
        let _locks = [&self.from, &self.to]
            .map(|(kind, store)| self.lock(*kind, store, name, &run_id))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        for (kind, store) in [&self.from, &self.to] {
            if store.journal_exists(name) {
                return Err(CopyCheckpointError::Unfinished {
                    sync: name.to_string(),
                    store: *kind,
                });
            }
        }
        match sync {
            SyncEntry::Segment(segment) => {
                let settings = CheckpointSettings::of(self.config, segment);
                self.copy_segment(name, &settings, replace)
            }
            SyncEntry::Events(events) => {
                let settings = EventSettings::of(self.config);
                let events_error = |source| CopyCheckpointError::Events {
                    sync: name.to_string(),
                    source,
                };
                let Some(checkpoint) = event_checkpoint::load(&self.from.1, events, &settings)
                    .map_err(events_error)?
                else {
                    return Ok(Copied::Nothing);
                };
                if let Some(existing) =
                    event_checkpoint::load(&self.to.1, events, &settings).map_err(events_error)?
                {
                    self.refuse_existing(name, existing.run_id, replace)?;
                }
                event_checkpoint::commit(&self.to.1, &checkpoint)
                    .map_err(|source| self.state_error(name, source))?;
                Ok(Copied::Events {
                    run_id: checkpoint.run_id,
                })
            }
        }
    }

    fn copy_segment(
        &self,
        name: &str,
        settings: &CheckpointSettings,
        replace: bool,
    ) -> Result<Copied, CopyCheckpointError> {
        let error = |source| self.state_error(name, source);
        let Some(checkpoint) = self.from.1.load(name).map_err(error)? else {
            return Ok(Copied::Nothing);
        };
        checkpoint
            .check_settings(settings)
            .and_then(|()| checkpoint.verify())
            .map_err(error)?;
        let manifest = &checkpoint.manifest;
        let copied = Copied::Checkpoint {
            run_id: manifest.run_id.clone(),
            key_count: manifest.key_count,
        };
        if let Some(existing) = self.to.1.manifest(name).map_err(error)? {
            // A run's snapshot never changes: the same run there means the same keys.
            if existing.run_id == manifest.run_id {
                return Ok(copied);
            }
            self.refuse_existing(name, existing.run_id, replace)?;
        }
        let snapshot = checkpoint.fetch_snapshot().map_err(error)?;
        let prepared = self
            .to
            .1
            .prepare(name, &manifest.run_id, |path| {
                std::fs::copy(snapshot, path)
                    .map(|_| manifest.key_count)
                    .map_err(|source| StateError::Io {
                        action: "cannot copy the snapshot to",
                        path: path.to_path_buf(),
                        source,
                    })
            })
            .map_err(error)?;
        self.to
            .1
            .commit_prepared(name, &manifest.run_id, &manifest.settings, &prepared)
            .map_err(error)?;
        Ok(copied)
    }

    fn lock(
        &self,
        kind: StoreKind,
        store: &Store,
        sync: &str,
        run_id: &str,
    ) -> Result<crate::state::SyncLock, CopyCheckpointError> {
        store
            .try_lock(sync, run_id)
            .map_err(|source| self.state_error(sync, source))?
            .ok_or_else(|| CopyCheckpointError::Locked {
                sync: sync.to_string(),
                store: kind,
                holder: store.holder(sync),
            })
    }

    fn refuse_existing(
        &self,
        sync: &str,
        run_id: String,
        replace: bool,
    ) -> Result<(), CopyCheckpointError> {
        if replace {
            return Ok(());
        }
        Err(CopyCheckpointError::Exists {
            sync: sync.to_string(),
            store: self.to.0,
            run_id,
        })
    }

    fn state_error(&self, sync: &str, source: StateError) -> CopyCheckpointError {
        CopyCheckpointError::State {
            sync: sync.to_string(),
            source,
        }
    }

    /// The store copied from and the one copied to.
    pub fn direction(&self) -> (StoreKind, StoreKind) {
        (self.from.0, self.to.0)
    }
}
