//! `connector.yaml`: the one file that says where models run, which LaunchDarkly project and environment they
//! feed, where checkpoints live, and what each sync does.
//!
//! Loading it interpolates `${VAR}` (and `${VAR:-default}`) in URLs, paths and start-up SQL, and checks every
//! value while it is read, so that a mistake is reported with its field path and its line, for example
//! `syncs[1].batch_size: a batch holds 1 to 1500 target operations (LaunchDarkly's limit per request), got 2000 at
//! line 31 column 17`.
//!
//! It is read in two layers: `raw.rs` is the file as serde reads it (its sections' raw mappings and the
//! version check), and each section resolves into the checked value the rest of ldsync uses: `warehouse.rs`,
//! `launchdarkly.rs`, `state.rs`, `engine.rs`, `syncs.rs` and `dbt.rs` (the dbt project, and `model: ref('…')`).
//! A section is checked inside its own `Deserialize`, so that serde_yaml_ng can still name the field, line and
//! column of a mistake; `visit.rs` holds the visitors that make that so, `interpolate.rs` the `${VAR}` expansion,
//! and `fields.rs` the names, keys and durations that several sections check alike. Only [`Config::load`] reads a
//! file; [`Config::parse`] and everything below it work on text. This module resolves what depends on where the
//! file is: the paths of models, the dbt project and its manifest, the state directory and the engine's spill
//! directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod big_segment;
mod dbt;
mod engine;
mod fields;
mod interpolate;
mod launchdarkly;
mod raw;
mod state;
mod syncs;
mod visit;
mod warehouse;

pub use big_segment::{
    BigSegmentSettings, DEFAULT_IMPORT_ABOVE, MAX_FILE_BYTES, MAX_KEYS_PER_FILE,
};
pub use dbt::{DbtConfig, DbtOwner, DbtRef, Model};
pub use engine::{DEFAULT_ENGINE_MEMORY, SetEngineConfig, SetEngineSettings, parse_size};
pub use interpolate::{Statement, interpolate};
pub use launchdarkly::{DEFAULT_TOKEN_ENV, LaunchDarklyConfig, TokenSource};
pub use raw::CONFIG_VERSION;
pub use state::{DEFAULT_STATE_DIR, DEFAULT_STATE_SCHEMA, PostgresState, StateConfig};
pub use syncs::{
    DEFAULT_EVENTS_PER_BATCH, DEFAULT_LATENESS, DEFAULT_MAX_REMOVE_PERCENT, EventContext,
    EventSyncConfig, InvalidKeys, MAX_BATCH_SIZE, MAX_EVENT_BATCH_BYTES, MAX_EVENTS_PER_BATCH,
    MAX_KEY_CHARS, Mode, RemovalGates, SegmentSyncConfig, SyncEntry,
};
pub use warehouse::{DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT, WarehouseConfig};

use raw::ConfigFile;
use syncs::check_sync_names;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {problem}")]
    Syncs { path: PathBuf, problem: String },
}

/// Where a dbt project's manifest is, unless `dbt.manifest` says otherwise: dbt's target directory.
pub const DEFAULT_DBT_MANIFEST: &str = "target/manifest.json";

/// A loaded and checked `connector.yaml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The directory holding it: models (`sql/`), fixtures and relative paths resolve from here.
    pub project_dir: PathBuf,
    pub warehouse: WarehouseConfig,
    pub launchdarkly: LaunchDarklyConfig,
    pub state: StateConfig,
    /// The embedded DuckDB that does ldsync's set work (`engine:`).
    pub engine: SetEngineConfig,
    /// Segment syncs (`syncs:`).
    pub syncs: Vec<SegmentSyncConfig>,
    /// Events syncs (`events:`).
    pub events: Vec<EventSyncConfig>,
    /// The dbt project whose models syncs name with `ref()` (`dbt:`).
    pub dbt: Option<DbtConfig>,
}

impl Config {
    /// Reads and checks the configuration at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Checks `text` as the configuration at `path` (which is not read: it names the file in errors and is where
    /// relative paths resolve from).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Invalid {
                path: path.to_path_buf(),
                source,
            })?;
        check_sync_names(&file.syncs.0, &file.events)
            .and_then(|()| check_dbt_models(&file))
            .map_err(|problem| ConfigError::Syncs {
                path: path.to_path_buf(),
                problem,
            })?;
        // Empty when the file is in the working directory, so that paths print as `sql/x.sql`.
        let project_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Config {
            path: path.to_path_buf(),
            project_dir,
            warehouse: file.warehouse,
            launchdarkly: file.launchdarkly,
            state: file.state,
            engine: file.engine,
            syncs: file.syncs.0,
            events: file.events,
            dbt: file.dbt,
        })
    }

    /// Every sync, segment syncs first, each in the configuration's order.
    pub fn all_syncs(&self) -> impl Iterator<Item = SyncEntry<'_>> {
        let segments = self.syncs.iter().map(SyncEntry::Segment);
        segments.chain(self.events.iter().map(SyncEntry::Events))
    }

    /// The syncs named in `names`, in the configuration's order; every sync when `names` is empty.
    pub fn select_syncs(&self, names: &[String]) -> Result<Vec<SyncEntry<'_>>, UnknownSync> {
        if let Some(unknown) = names
            .iter()
            .find(|name| !self.all_syncs().any(|s| s.name() == name.as_str()))
        {
            return Err(UnknownSync {
                name: unknown.clone(),
                known: self.all_syncs().map(|s| s.name().to_string()).collect(),
            });
        }
        Ok(self
            .all_syncs()
            .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name()))
            .collect())
    }

    /// Where the model `sql/<name>.sql` lives on disk.
    pub fn model_file(&self, name: &str) -> PathBuf {
        self.project_dir.join("sql").join(format!("{name}.sql"))
    }

    /// How messages and reports name `model`: its file (`sql/pro_users.sql`), or its `ref('pro_users')`.
    pub fn model_label(&self, model: &Model) -> String {
        match model {
            Model::File(name) => self.model_file(name).display().to_string(),
            Model::Dbt(reference) => reference.to_string(),
        }
    }

    /// The dbt project's directory, resolved against the project directory (`None` without a `dbt:` section).
    pub fn dbt_project_dir(&self) -> Option<PathBuf> {
        let dbt = self.dbt.as_ref()?;
        Some(self.project_dir.join(&dbt.project_dir))
    }

    /// The dbt manifest `ref()` resolves through: `dbt.manifest` against the project directory, or
    /// `target/manifest.json` in the dbt project (`None` without a `dbt:` section).
    pub fn dbt_manifest(&self) -> Option<PathBuf> {
        let dbt = self.dbt.as_ref()?;
        Some(match &dbt.manifest {
            Some(manifest) => self.project_dir.join(manifest),
            None => self
                .project_dir
                .join(&dbt.project_dir)
                .join(DEFAULT_DBT_MANIFEST),
        })
    }

    /// The directory of the local checkpoint store (or of a postgres store's snapshot copies), resolved against
    /// the project directory.
    pub fn state_dir(&self) -> PathBuf {
        self.project_dir.join(&self.state.directory)
    }

    /// The set engine's settings, its spill directory resolved: `engine.temp_directory` against the project
    /// directory, or `.duckdb-spill` in the state directory.
    pub fn engine_settings(&self) -> SetEngineSettings {
        SetEngineSettings {
            memory_limit: self.engine.memory_limit.clone(),
            threads: self.engine.threads,
            temp_directory: Some(self.engine.temp_directory.as_ref().map_or_else(
                || self.state_dir().join(".duckdb-spill"),
                |dir| self.project_dir.join(dir),
            )),
        }
    }

    /// How long a run waits for another run of the same sync (`state.lock_wait`).
    pub fn lock_wait(&self) -> Duration {
        self.state.lock_wait
    }
}

/// Checks that a `dbt:` section is there when a sync names a dbt model.
fn check_dbt_models(file: &ConfigFile) -> Result<(), String> {
    if file.dbt.is_some() {
        return Ok(());
    }
    let segment = file
        .syncs
        .0
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("syncs[{i}]"), &s.name, &s.model));
    let events = file
        .events
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("events[{i}]"), &s.name, &s.model));
    match segment
        .chain(events)
        .find(|(_, _, model)| model.dbt().is_some())
    {
        Some((at, name, model)) => Err(format!(
            "{at}.model: sync `{name}` names the dbt model {model}, but there is no `dbt:` section to resolve it \
             through; add `dbt: {{project_dir: <the dbt project's directory>}}`"
        )),
        None => Ok(()),
    }
}

/// A sync name given on the command line that the configuration does not define.
#[derive(Debug, thiserror::Error)]
#[error("no sync named `{name}` in the configuration; its syncs are: {}", known.join(", "))]
pub struct UnknownSync {
    pub name: String,
    pub known: Vec<String>,
}
