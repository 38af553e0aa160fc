//! `connector.yaml`: the one file that says where models run, which LaunchDarkly project and environment they
//! feed, where checkpoints live, and what each sync does.
//!
//! Loading it interpolates `${VAR}` (and `${VAR:-default}`) in URLs, paths and start-up SQL, and checks every
//! value while it is read, so that a mistake is reported with its field path and its line, for example
//! `syncs[1].batch_size: at most 1500 target operations fit in one request, got 2000 at line 31 column 17`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;

/// The schema version this build of ldsync reads.
pub const CONFIG_VERSION: u32 = 1;

/// LaunchDarkly accepts at most this many target operations in one semantic-patch request.
pub const MAX_BATCH_SIZE: usize = 1_500;

/// The longest context key ldsync accepts, in characters.
pub const MAX_KEY_CHARS: usize = 256;

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
    pub engine: EngineConfig,
    /// Segment syncs (`syncs:`).
    pub syncs: Vec<SyncConfig>,
    /// Events syncs (`events:`).
    pub events: Vec<EventSyncConfig>,
}

impl Config {
    /// Reads and checks the configuration at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ConfigFile =
            serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Invalid {
                path: path.to_path_buf(),
                source,
            })?;
        check_sync_names(&file.syncs.0, &file.events).map_err(|problem| ConfigError::Syncs {
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

    /// Where the model of the sync named `model` lives on disk.
    pub fn model_file(&self, model: &str) -> PathBuf {
        self.project_dir.join("sql").join(format!("{model}.sql"))
    }

    /// Where the model of `sync` lives on disk.
    pub fn model_path(&self, sync: &SyncConfig) -> PathBuf {
        self.model_file(&sync.model)
    }

    /// The directory of the local checkpoint store (or of a postgres store's snapshot copies), resolved against
    /// the project directory.
    pub fn state_dir(&self) -> PathBuf {
        self.project_dir.join(&self.state.directory)
    }

    /// The set engine's settings, its spill directory resolved: `engine.temp_directory` against the project
    /// directory, or `.duckdb-spill` in the state directory.
    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
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

/// A sync name given on the command line that the configuration does not define.
#[derive(Debug, thiserror::Error)]
#[error("no sync named `{name}` in the configuration; its syncs are: {}", known.join(", "))]
pub struct UnknownSync {
    pub name: String,
    pub known: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[allow(dead_code)] // read only to check it
    version: ConfigVersion,
    warehouse: WarehouseConfig,
    launchdarkly: LaunchDarklyConfig,
    state: StateConfig,
    #[serde(default)]
    engine: EngineConfig,
    #[serde(default)]
    syncs: Syncs,
    #[serde(default)]
    events: Vec<EventSyncConfig>,
}

/// Checks that there is at least one sync and that names are unique across `syncs:` and `events:` (a name names
/// the sync's state directory).
fn check_sync_names(syncs: &[SyncConfig], events: &[EventSyncConfig]) -> Result<(), String> {
    if syncs.is_empty() && events.is_empty() {
        return Err(
            "no syncs defined: add at least one segment sync under `syncs:` or events sync under `events:`".into(),
        );
    }
    if let Some((i, event)) = events
        .iter()
        .enumerate()
        .find(|(i, e)| events[..*i].iter().any(|other| other.name == e.name))
    {
        return Err(format!(
            "events[{i}]: the sync name `{}` is used twice under `events:`; names must be unique",
            event.name
        ));
    }
    match events
        .iter()
        .enumerate()
        .find(|(_, e)| syncs.iter().any(|s| s.name == e.name))
    {
        Some((i, event)) => Err(format!(
            "events[{i}]: the sync name `{}` is also a segment sync's under `syncs:`; names must be unique, since \
             each names its sync's state",
            event.name
        )),
        None => Ok(()),
    }
}

struct ConfigVersion;

impl<'de> Deserialize<'de> for ConfigVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_number(deserializer, "the configuration version", |version| {
            if version != f64::from(CONFIG_VERSION) {
                return Err(format!(
                    "this ldsync reads configuration version {CONFIG_VERSION}, the file says {version}"
                ));
            }
            Ok(ConfigVersion)
        })
    }
}

/// Where models run.
#[derive(Clone)]
pub enum WarehouseConfig {
    /// Embedded DuckDB: a database file, or in memory when `database` is absent.
    DuckDb {
        database: Option<String>,
        /// Statements run once when the warehouse opens, typically views over CSV or Parquet files.
        startup_sql: Vec<String>,
    },
    /// A PostgreSQL server (or one that speaks its protocol).
    Postgres {
        url: String,
        /// How long one model query may run before PostgreSQL cancels it.
        statement_timeout: Duration,
        /// How many connections ldsync may hold open to it.
        pool_size: u32,
    },
}

/// A model query's default limit on PostgreSQL.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The default number of connections ldsync keeps to PostgreSQL.
pub const DEFAULT_POOL_SIZE: u32 = 2;

impl fmt::Debug for WarehouseConfig {
    // A PostgreSQL URL may carry a password: it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WarehouseConfig::DuckDb {
                database,
                startup_sql,
            } => f
                .debug_struct("DuckDb")
                .field("database", database)
                .field("startup_sql", startup_sql)
                .finish(),
            WarehouseConfig::Postgres {
                statement_timeout,
                pool_size,
                ..
            } => f
                .debug_struct("Postgres")
                .field("url", &"<redacted>")
                .field("statement_timeout", statement_timeout)
                .field("pool_size", pool_size)
                .finish(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarehouse {
    kind: WarehouseKind,
    database: Option<Interpolated>,
    #[serde(default)]
    startup_sql: Vec<Interpolated>,
    url: Option<Interpolated>,
    statement_timeout: Option<Interpolated>,
    pool_size: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WarehouseKind {
    DuckDb,
    Postgres,
}

impl<'de> Deserialize<'de> for WarehouseConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_map(deserializer, WarehouseConfig::from_raw)
    }
}

impl WarehouseConfig {
    fn from_raw(raw: RawWarehouse) -> Result<Self, String> {
        match raw.kind {
            WarehouseKind::DuckDb => {
                if raw.statement_timeout.is_some() || raw.pool_size.is_some() {
                    return Err("`statement_timeout` and `pool_size` are for kind postgres".into());
                }
                if raw.url.is_some() {
                    return Err(
                        "`url` is for kind postgres; a duckdb warehouse takes `database` \
                                (a file path, or leave it out for an in-memory database)"
                            .into(),
                    );
                }
                Ok(WarehouseConfig::DuckDb {
                    database: raw.database.map(|d| d.0),
                    startup_sql: raw.startup_sql.into_iter().map(|s| s.0).collect(),
                })
            }
            WarehouseKind::Postgres => {
                if raw.database.is_some() || !raw.startup_sql.is_empty() {
                    return Err("a postgres warehouse takes only `url` (for example \
                                url: ${DATABASE_URL}); `database` and `startup_sql` are for duckdb"
                        .into());
                }
                let url = raw
                    .url
                    .ok_or("a postgres warehouse needs `url`, for example url: ${DATABASE_URL}")?;
                let statement_timeout = duration(
                    "statement_timeout",
                    "30s or 10m",
                    raw.statement_timeout,
                    DEFAULT_STATEMENT_TIMEOUT,
                )?;
                let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
                if pool_size == 0 {
                    return Err("`pool_size` must be at least 1".into());
                }
                Ok(WarehouseConfig::Postgres {
                    url: url.0,
                    statement_timeout,
                    pool_size,
                })
            }
        }
    }
}

/// Which LaunchDarkly account, project and environment the syncs write to, and where the token comes from.
#[derive(Debug, Clone)]
pub struct LaunchDarklyConfig {
    /// Root of the REST API, without `/api/v2`.
    pub base_url: String,
    /// Root of the events host (the metric import API): the instance's, or `events_base_url`, or `base_url`.
    pub events_base_url: String,
    pub token: TokenSource,
    pub project: String,
    pub environment: String,
}

/// Where the LaunchDarkly access token is read from. The token itself never appears in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The name of an environment variable.
    Env(String),
    /// A file holding the token (trailing white space is ignored).
    File(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLaunchDarkly {
    instance: Option<Instance>,
    base_url: Option<Interpolated>,
    events_base_url: Option<Interpolated>,
    token_env: Option<EnvVarName>,
    token_file: Option<Interpolated>,
    token: Option<IgnoredAny>,
    project: ResourceKey,
    environment: ResourceKey,
}

/// LaunchDarkly's hosted instances.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Instance {
    Us,
    Eu,
    Federal,
}

impl Instance {
    fn base_url(self) -> &'static str {
        match self {
            Instance::Us => "https://app.launchdarkly.com",
            Instance::Eu => "https://app.eu.launchdarkly.com",
            Instance::Federal => "https://app.launchdarkly.us",
        }
    }

    /// The instance's events host, where the metric import API lives.
    fn events_base_url(self) -> &'static str {
        match self {
            Instance::Us => "https://events.launchdarkly.com",
            Instance::Eu => "https://events.eu.launchdarkly.com",
            Instance::Federal => "https://events.launchdarkly.us",
        }
    }
}

/// The environment variable read for the token when the configuration names none.
pub const DEFAULT_TOKEN_ENV: &str = "LD_ACCESS_TOKEN";

impl<'de> Deserialize<'de> for LaunchDarklyConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_map(deserializer, LaunchDarklyConfig::from_raw)
    }
}

impl LaunchDarklyConfig {
    fn from_raw(raw: RawLaunchDarkly) -> Result<Self, String> {
        if raw.token.is_some() {
            return Err("the access token never goes in connector.yaml: put it in an environment \
                        variable named by `token_env` (default LD_ACCESS_TOKEN) or a file named by `token_file`"
                .into());
        }
        let (base_url, instance_events) = match (raw.instance, raw.base_url) {
            (Some(_), Some(_)) => {
                return Err(
                    "give either `instance` (us, eu, federal) or `base_url`, not both".into(),
                );
            }
            (Some(instance), None) => (
                instance.base_url().to_string(),
                Some(instance.events_base_url()),
            ),
            (None, Some(url)) => (parse_base_url("base_url", &url.0)?, None),
            (None, None) => (
                Instance::Us.base_url().to_string(),
                Some(Instance::Us.events_base_url()),
            ),
        };
        let events_base_url = match (raw.events_base_url, instance_events) {
            (Some(url), _) => parse_base_url("events_base_url", &url.0)?,
            // A base URL of one's own (the emulator, a proxy) serves the import API too unless told otherwise.
            (None, None) => base_url.clone(),
            (None, Some(events)) => events.to_string(),
        };
        let token = match (raw.token_env, raw.token_file) {
            (Some(_), Some(_)) => {
                return Err("give either `token_env` or `token_file`, not both".into());
            }
            (Some(var), None) => TokenSource::Env(var.0),
            (None, Some(file)) => TokenSource::File(PathBuf::from(file.0)),
            (None, None) => TokenSource::Env(DEFAULT_TOKEN_ENV.to_string()),
        };
        Ok(LaunchDarklyConfig {
            base_url,
            events_base_url,
            token,
            project: raw.project.0,
            environment: raw.environment.0,
        })
    }
}

/// Checks the URL given for `field` (`base_url`, `events_base_url`): the root of an instance, https unless the host
/// is this machine.
fn parse_base_url(field: &str, url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let (secure, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = trimmed.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!(
            "`{field}` must start with https:// or http://, got `{url}`"
        ));
    };
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!("`{field}` `{url}` has no host"));
    }
    if !secure && !is_loopback(rest) {
        return Err(format!(
            "`{field}` `{url}` would send the access token in clear text; use https://, since http:// is \
             accepted only for a loopback host such as the emulator on 127.0.0.1"
        ));
    }
    if trimmed.ends_with("/api/v2") {
        return Err(format!(
            "`{field}` is the root of the instance; drop the trailing /api/v2 from `{url}`"
        ));
    }
    Ok(trimmed.to_string())
}

/// Whether the host of `authority_and_path` (`host[:port][/path]`) is this machine: `localhost`, 127.0.0.0/8 or
/// `[::1]`.
fn is_loopback(authority_and_path: &str) -> bool {
    let authority = authority_and_path.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The duration given for `field` (`examples` shows what one looks like), or `default` when it is left out.
fn duration(
    field: &str,
    examples: &str,
    given: Option<Interpolated>,
    default: Duration,
) -> Result<Duration, String> {
    let Some(text) = given else {
        return Ok(default);
    };
    humantime::parse_duration(&text.0).map_err(|e| {
        format!(
            "`{field}` takes a duration such as {examples}, got `{}`: {e}",
            text.0
        )
    })
}

/// Where checkpoints, journals and run history are kept.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// The local store's directory (relative to the project directory): one directory per sync. With a postgres
    /// store it holds only copies of checkpoint snapshots, for the set engine to read.
    pub directory: PathBuf,
    /// How long a run waits for another run of the same sync to finish before it stops (0: not at all).
    pub lock_wait: Duration,
    /// `kind: postgres`: the state is in PostgreSQL, shared by every host that runs the syncs.
    pub postgres: Option<PostgresState>,
}

/// A state store in PostgreSQL.
#[derive(Clone)]
pub struct PostgresState {
    pub url: String,
    /// The schema of ldsync's tables, created by its migrations.
    pub schema: String,
}

impl fmt::Debug for PostgresState {
    // The URL may carry a password: it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresState")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    kind: StateKind,
    directory: Option<Interpolated>,
    lock_wait: Option<Interpolated>,
    url: Option<Interpolated>,
    schema: Option<Interpolated>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum StateKind {
    Local,
    Postgres,
}

/// Where the local store keeps its files when the configuration does not say.
pub const DEFAULT_STATE_DIR: &str = ".ldsync/state";
/// The schema of a postgres state store when the configuration does not say.
pub const DEFAULT_STATE_SCHEMA: &str = "ldsync";

impl<'de> Deserialize<'de> for StateConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_map(deserializer, StateConfig::from_raw)
    }
}

impl StateConfig {
    fn from_raw(raw: RawState) -> Result<Self, String> {
        let postgres = match raw.kind {
            StateKind::Local => {
                if raw.url.is_some() || raw.schema.is_some() {
                    return Err("`url` and `schema` are for a state store of kind postgres".into());
                }
                None
            }
            StateKind::Postgres => Some(PostgresState::from_raw(raw.url, raw.schema)?),
        };
        Ok(StateConfig {
            directory: PathBuf::from(
                raw.directory
                    .map_or_else(|| DEFAULT_STATE_DIR.to_string(), |d| d.0),
            ),
            lock_wait: duration("lock_wait", "0s or 5m", raw.lock_wait, Duration::ZERO)?,
            postgres,
        })
    }
}

impl PostgresState {
    fn from_raw(url: Option<Interpolated>, schema: Option<Interpolated>) -> Result<Self, String> {
        let url =
            url.ok_or("a postgres state store needs `url`, for example url: ${LDSYNC_STATE_URL}")?;
        let schema = schema.map_or_else(|| DEFAULT_STATE_SCHEMA.to_string(), |s| s.0);
        let plain = schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if schema.is_empty() || schema.len() > 63 || !plain {
            return Err(format!(
                "`schema` takes a PostgreSQL schema name of 1 to 63 lowercase letters, digits and underscores, \
                 got `{schema}`"
            ));
        }
        Ok(PostgresState { url: url.0, schema })
    }
}

/// The embedded DuckDB that does ldsync's set work: it holds a model's keys, finds those that entered or left, and
/// writes checkpoints, spilling to disk past its memory limit. With a duckdb warehouse it is the warehouse's own
/// connection, so these settings apply to the models too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// DuckDB's `memory_limit`, such as `256MB` or `2GB`.
    pub memory_limit: String,
    /// How many threads DuckDB uses; all cores when absent.
    pub threads: Option<u32>,
    /// Where DuckDB spills past its memory limit, relative to the project directory; absent: in the state
    /// directory.
    pub temp_directory: Option<PathBuf>,
}

/// The set engine's memory limit when the configuration does not say: enough for tens of millions of keys
/// without spilling much, small enough for a shared host.
pub const DEFAULT_ENGINE_MEMORY: &str = "256MB";

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            memory_limit: DEFAULT_ENGINE_MEMORY.to_string(),
            threads: None,
            temp_directory: None,
        }
    }
}

/// The set engine's settings as the warehouse applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    pub memory_limit: String,
    pub threads: Option<u32>,
    /// Absent: DuckDB's own default.
    pub temp_directory: Option<PathBuf>,
}

/// The defaults, spilling where DuckDB spills by default.
impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            memory_limit: DEFAULT_ENGINE_MEMORY.to_string(),
            threads: None,
            temp_directory: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    memory_limit: Option<Interpolated>,
    threads: Option<u32>,
    temp_directory: Option<Interpolated>,
}

impl<'de> Deserialize<'de> for EngineConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_map(deserializer, EngineConfig::from_raw)
    }
}

impl EngineConfig {
    fn from_raw(raw: RawEngine) -> Result<Self, String> {
        let memory_limit = raw
            .memory_limit
            .map_or_else(|| DEFAULT_ENGINE_MEMORY.to_string(), |m| m.0);
        match parse_size(&memory_limit) {
            Some(bytes) if bytes >= MIN_ENGINE_MEMORY => {}
            Some(_) => {
                return Err(format!(
                    "`memory_limit` must be at least 64MB (DuckDB does not spill reliably below it), got \
                     `{memory_limit}`"
                ));
            }
            None => {
                return Err(format!(
                    "`memory_limit` takes a size such as 256MB or 2GB, got `{memory_limit}`"
                ));
            }
        }
        if raw.threads == Some(0) {
            return Err("`threads` must be at least 1".into());
        }
        Ok(EngineConfig {
            memory_limit,
            threads: raw.threads,
            temp_directory: raw.temp_directory.map(|d| PathBuf::from(d.0)),
        })
    }
}

/// The smallest `engine.memory_limit`: below it DuckDB runs out of memory now and then instead of spilling.
const MIN_ENGINE_MEMORY: u64 = 64_000_000;

/// The bytes of a size such as `256MB`, `1.5GB` or `244.1 MiB` (DuckDB's units: KB, MB, GB, TB of 1000 and KiB,
/// MiB, GiB, TiB of 1024); `None` when it is not one.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let unit_start = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_start);
    let scale: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let number: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    Some((number * scale) as u64)
}

/// What a sync does with the keys that entered or left its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Keys that entered the model are added to the segment; keys that left are left alone.
    Add,
    /// Keys that entered the model are removed from the segment.
    Remove,
    /// The segment's targets of the sync's context kind equal the model.
    Mirror,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Add => "add",
            Mode::Remove => "remove",
            Mode::Mirror => "mirror",
        })
    }
}

/// What happens to a row whose key is null, blank or too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InvalidKeys {
    /// The sync stops with an error naming the row (the default: a bad key usually means a bad model).
    #[default]
    Fail,
    /// The row is left out, counted, and reported with examples.
    Skip,
}

/// Limits on what one run may remove; a run over any of them stops before its first call.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemovalGates {
    /// The largest share of the segment's known members, in percent, that one run may remove.
    #[serde(default = "default_max_remove_percent", deserialize_with = "percent")]
    pub max_remove_percent: Option<f64>,
    /// The largest number of members one run may remove.
    #[serde(default)]
    pub max_remove_count: Option<u64>,
    /// Whether a mirror model that returns no valid keys may go ahead and empty its segment.
    #[serde(default)]
    pub allow_empty_model: bool,
}

/// By default one run may remove at most a tenth of a segment.
pub const DEFAULT_MAX_REMOVE_PERCENT: f64 = 10.0;

fn default_max_remove_percent() -> Option<f64> {
    Some(DEFAULT_MAX_REMOVE_PERCENT)
}

fn percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    from_number(deserializer, "a percentage from 0 to 100", |p| {
        if (0.0..=100.0).contains(&p) {
            Ok(Some(p))
        } else {
            Err(format!("a percentage from 0 to 100, got {p}"))
        }
    })
}

impl Default for RemovalGates {
    fn default() -> Self {
        RemovalGates {
            max_remove_percent: default_max_remove_percent(),
            max_remove_count: None,
            allow_empty_model: false,
        }
    }
}

/// One sync: a model, the segment it feeds, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Unique within the file; names the sync's state directory and appears in every message about it.
    #[serde(deserialize_with = "sync_name")]
    pub name: String,
    /// The model's name: its SQL is `sql/<model>.sql` beside connector.yaml.
    #[serde(deserialize_with = "model_name")]
    pub model: String,
    /// The LaunchDarkly segment key.
    #[serde(deserialize_with = "resource_key")]
    pub segment: String,
    #[serde(default = "default_context_kind", deserialize_with = "context_kind")]
    pub context_kind: String,
    pub mode: Mode,
    /// The model's column that holds the context key.
    #[serde(default = "default_key_column", deserialize_with = "column_name")]
    pub key_column: String,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Target operations per request, at most 1,500.
    #[serde(default = "default_batch_size", deserialize_with = "batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub invalid_keys: InvalidKeys,
    #[serde(default)]
    pub gates: RemovalGates,
    /// Create the segment, of this type, when it does not exist yet; without it a missing segment is an error.
    #[serde(default)]
    pub create_segment: Option<SegmentKind>,
}

impl SyncConfig {
    /// Whether the two syncs would fight over one segment's targets: same segment and context kind, and one of them
    /// removes keys (mirror or remove mode). Two add syncs only ever add, so they can share a segment.
    pub fn conflicts_with(&self, other: &SyncConfig) -> bool {
        self.segment == other.segment
            && self.context_kind == other.context_kind
            && (self.mode != Mode::Add || other.mode != Mode::Add)
    }
}

/// One events sync: a model of metric events (orders, upgrades, revenue) sent to LaunchDarkly's metric import API
/// for experiments, incrementally: each run sends only the rows past the checkpoint's watermark.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSyncConfig {
    /// Unique among all syncs; names the sync's state directory and appears in every message about it.
    #[serde(deserialize_with = "sync_name")]
    pub name: String,
    /// The model's name: its SQL is `sql/<model>.sql` beside connector.yaml.
    #[serde(deserialize_with = "model_name")]
    pub model: String,
    /// The column holding each event's key: the metric's event key in LaunchDarkly.
    #[serde(default = "default_event_key_column", deserialize_with = "column_name")]
    pub event_key_column: String,
    /// Which column holds the key of each context kind (at least one; a row needs a key of at least one kind).
    #[serde(
        default = "default_event_contexts",
        deserialize_with = "event_contexts"
    )]
    pub contexts: Vec<EventContext>,
    /// The column holding when the event happened: a timestamp, or an integer of Unix milliseconds.
    #[serde(default = "default_timestamp_column", deserialize_with = "column_name")]
    pub timestamp_column: String,
    /// The column holding a numeric metric's value; leave it out for conversion metrics.
    #[serde(default, deserialize_with = "optional_column_name")]
    pub value_column: Option<String>,
    /// The column holding a stable, unique id of each row, so that no event is sent twice.
    #[serde(default = "default_row_id_column", deserialize_with = "column_name")]
    pub row_id_column: String,
    /// How late a row may arrive in the warehouse and still be sent: each run reads back this far behind the
    /// watermark, and sends the rows there that no earlier run sent.
    #[serde(default = "default_lateness", deserialize_with = "lateness")]
    pub lateness: Duration,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Events per request (each request also stays under [`MAX_EVENT_BATCH_BYTES`]).
    #[serde(
        default = "default_events_per_batch",
        deserialize_with = "events_per_batch"
    )]
    pub batch_size: usize,
    /// What happens to a row without an event key, a context key or a timestamp, or with a value that is not a
    /// number: by default it is left out, counted and reported with its row id.
    #[serde(default = "skip_invalid_rows")]
    pub invalid_rows: InvalidKeys,
}

/// A context kind of an events sync and the model column that holds its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    pub kind: String,
    pub column: String,
}

/// The most events one import request carries by default.
pub const DEFAULT_EVENTS_PER_BATCH: usize = 1_000;
/// The most events one import request may carry.
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;
/// The most bytes of JSON (before gzip) one import request carries; LaunchDarkly's limit is unpublished and
/// integrations assume 10 MB.
pub const MAX_EVENT_BATCH_BYTES: usize = 1024 * 1024;
/// How late a row may arrive by default.
pub const DEFAULT_LATENESS: Duration = Duration::from_secs(3600);

fn default_event_key_column() -> String {
    "event_key".to_string()
}

fn default_event_contexts() -> Vec<EventContext> {
    vec![EventContext {
        kind: default_context_kind(),
        column: default_key_column(),
    }]
}

fn default_timestamp_column() -> String {
    "occurred_at".to_string()
}

fn default_row_id_column() -> String {
    "row_id".to_string()
}

fn default_lateness() -> Duration {
    DEFAULT_LATENESS
}

fn default_events_per_batch() -> usize {
    DEFAULT_EVENTS_PER_BATCH
}

fn skip_invalid_rows() -> InvalidKeys {
    InvalidKeys::Skip
}

fn optional_column_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    column_name(deserializer).map(Some)
}

fn lateness<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    from_str(deserializer, "a duration", |text| {
        humantime::parse_duration(text).map_err(|e| {
            format!("`lateness` takes a duration such as 0s, 30m or 2h, got `{text}`: {e}")
        })
    })
}

fn events_per_batch<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    from_number(deserializer, "a whole number of events", |size| {
        if size.fract() != 0.0 || !(1.0..=MAX_EVENTS_PER_BATCH as f64).contains(&size) {
            return Err(format!(
                "an import request holds 1 to {MAX_EVENTS_PER_BATCH} events, got {size}"
            ));
        }
        Ok(size as usize)
    })
}

/// Reads `contexts:`, a mapping of context kind to column, such as `{user: user_id, organization: org_id}`.
fn event_contexts<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<EventContext>, D::Error> {
    struct ContextsVisitor;
    impl<'de> Visitor<'de> for ContextsVisitor {
        type Value = Vec<EventContext>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of context kind to column, such as {user: user_id}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut contexts: Vec<EventContext> = Vec::new();
            while let Some(ContextKind(kind)) = map.next_key()? {
                let ColumnName(column) = map.next_value()?;
                if contexts.iter().any(|c| c.kind == kind) {
                    return Err(de::Error::custom(format!(
                        "context kind `{kind}` is given twice"
                    )));
                }
                contexts.push(EventContext { kind, column });
            }
            if contexts.is_empty() {
                return Err(de::Error::custom(
                    "give at least one context kind and its column, such as {user: user_id}",
                ));
            }
            Ok(contexts)
        }
    }
    deserializer.deserialize_map(ContextsVisitor)
}

/// One sync of either kind, as commands and the scheduler see it.
#[derive(Debug, Clone, Copy)]
pub enum SyncEntry<'a> {
    Segment(&'a SyncConfig),
    Events(&'a EventSyncConfig),
}

impl<'a> SyncEntry<'a> {
    pub fn name(&self) -> &'a str {
        match self {
            SyncEntry::Segment(sync) => &sync.name,
            SyncEntry::Events(sync) => &sync.name,
        }
    }

    /// The segment sync, if this is one.
    pub fn segment(self) -> Option<&'a SyncConfig> {
        match self {
            SyncEntry::Segment(sync) => Some(sync),
            SyncEntry::Events(_) => None,
        }
    }

    /// The events sync, if this is one.
    pub fn events(self) -> Option<&'a EventSyncConfig> {
        match self {
            SyncEntry::Events(sync) => Some(sync),
            SyncEntry::Segment(_) => None,
        }
    }

    pub fn schedule(&self) -> Option<&'a Schedule> {
        match self {
            SyncEntry::Segment(sync) => sync.schedule.as_ref(),
            SyncEntry::Events(sync) => sync.schedule.as_ref(),
        }
    }
}

/// A standard segment (at most 15,000 targets) or a big one (unbounded, one context kind, Enterprise plans).
/// LaunchDarkly never changes a segment's type after it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentKind {
    Standard,
    Big,
}

fn default_context_kind() -> String {
    "user".to_string()
}

fn default_key_column() -> String {
    "context_key".to_string()
}

fn default_batch_size() -> usize {
    MAX_BATCH_SIZE
}

fn batch_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    from_number(
        deserializer,
        "a whole number of target operations",
        |size| {
            if size.fract() != 0.0 || !(1.0..=MAX_BATCH_SIZE as f64).contains(&size) {
                return Err(format!(
                    "a batch holds 1 to {MAX_BATCH_SIZE} target operations (LaunchDarkly's limit per request), got {size}"
                ));
            }
            Ok(size as usize)
        },
    )
}

/// Checks a string against a character rule, naming what it is when it fails.
fn checked<'de, D: Deserializer<'de>>(
    deserializer: D,
    what: &str,
    allowed: fn(char) -> bool,
    rule: &str,
) -> Result<String, D::Error> {
    from_str(deserializer, "a string", |value| {
        if value.is_empty() {
            return Err(format!("{what} must not be empty"));
        }
        if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
            return Err(format!(
                "{what} `{value}` has the character {bad:?}; {rule}"
            ));
        }
        Ok(value.to_string())
    })
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn sync_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked(
        deserializer,
        "a sync name",
        is_key_char,
        "use letters, digits, `.`, `_` and `-`",
    )
}

fn model_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    const RULE: &str = "name a model by its file under sql/ without `.sql`, for example `pro_users` for sql/pro_users.sql";
    from_str(deserializer, "a model name", |name| {
        let allowed = |c: char| is_key_char(c) || c == '/';
        if name.is_empty()
            || !name.chars().all(allowed)
            || name.ends_with(".sql")
            || name.split('/').any(|part| part.is_empty() || part == "..")
        {
            return Err(format!("model `{name}`: {RULE}"));
        }
        Ok(name.to_string())
    })
}

fn resource_key<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked(
        deserializer,
        "a LaunchDarkly key",
        is_key_char,
        "LaunchDarkly keys use letters, digits, `.`, `_` and `-`",
    )
}

fn column_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked(
        deserializer,
        "a column name",
        |c| c.is_alphanumeric() || c == '_',
        "name a column of the model's result (letters, digits and `_`)",
    )
}

fn context_kind<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    from_str(deserializer, "a context kind", |kind| {
        if kind == "kind" || kind == "multi" {
            return Err(format!(
                "`{kind}` is reserved by LaunchDarkly and cannot be a context kind"
            ));
        }
        if kind.is_empty() || !kind.chars().all(is_key_char) {
            return Err(format!(
                "context kind `{kind}`: context kinds use letters, digits, `.`, `_` and `-`"
            ));
        }
        Ok(kind.to_string())
    })
}

/// A context kind, checked.
struct ContextKind(String);

impl<'de> Deserialize<'de> for ContextKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        context_kind(deserializer).map(ContextKind)
    }
}

/// A column name, checked.
struct ColumnName(String);

impl<'de> Deserialize<'de> for ColumnName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        column_name(deserializer).map(ColumnName)
    }
}

/// A LaunchDarkly project or environment key.
struct ResourceKey(String);

impl<'de> Deserialize<'de> for ResourceKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        resource_key(deserializer).map(ResourceKey)
    }
}

/// The name of an environment variable.
struct EnvVarName(String);

impl<'de> Deserialize<'de> for EnvVarName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(
            deserializer,
            "an environment variable name",
            |c| c.is_ascii_alphanumeric() || c == '_',
            "name the variable (letters, digits and `_`), not its value",
        )
        .map(EnvVarName)
    }
}

/// The list of segment syncs, whose names must be unique.
#[derive(Default)]
struct Syncs(Vec<SyncConfig>);

impl<'de> Deserialize<'de> for Syncs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(SyncsVisitor)
    }
}

struct SyncsVisitor;

impl<'de> Visitor<'de> for SyncsVisitor {
    type Value = Syncs;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of syncs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Syncs, A::Error> {
        let mut syncs: Vec<SyncConfig> = Vec::new();
        while let Some(sync) = seq.next_element::<SyncConfig>()? {
            if let Some(j) = syncs.iter().position(|s| s.name == sync.name) {
                return Err(de::Error::custom(format!(
                    "the sync name `{}` is used by syncs[{j}] and syncs[{}]; names must be unique",
                    sync.name,
                    syncs.len()
                )));
            }
            if let Some(other) = syncs.iter().find(|s| s.conflicts_with(&sync)) {
                return Err(de::Error::custom(format!(
                    "syncs `{}` ({}) and `{}` ({}) both write the `{}` targets of segment `{}`, and a {} sync \
                     removes what the other adds; give each its own segment, or make both add syncs",
                    other.name,
                    other.mode,
                    sync.name,
                    sync.mode,
                    sync.context_kind,
                    sync.segment,
                    if other.mode == Mode::Add {
                        sync.mode
                    } else {
                        other.mode
                    },
                )));
            }
            syncs.push(sync);
        }
        Ok(Syncs(syncs))
    }
}

/// A string with `${VAR}` and `${VAR:-default}` replaced from the environment as it is read.
struct Interpolated(String);

impl<'de> Deserialize<'de> for Interpolated {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str(deserializer, "a string", |raw| {
            interpolate(raw, |name| std::env::var(name).ok()).map(Interpolated)
        })
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with values from `lookup`.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in `{text}`"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{expr}}}` is not a variable reference; write ${{NAME}} or ${{NAME:-default}}"
            ));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "the environment variable {name} is not set (or write ${{{name}:-default}})"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// serde_yaml_ng marks an error with the path and line of the value being visited only when the error is raised
// inside the visitor. These helpers run each check inside one, so every message points at its own line.

/// Reads a string and converts it with `convert`.
fn from_str<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    convert: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct StrVisitor<F> {
        expecting: &'static str,
        convert: F,
    }
    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for StrVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.convert)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(StrVisitor { expecting, convert })
}

/// Reads a number (integer or not) and converts it with `convert`.
fn from_number<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    convert: impl FnOnce(f64) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct NumberVisitor<F> {
        expecting: &'static str,
        convert: F,
    }
    impl<'de, T, F: FnOnce(f64) -> Result<T, String>> Visitor<'de> for NumberVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            (self.convert)(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            self.visit_f64(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            self.visit_f64(v as f64)
        }
    }
    deserializer.deserialize_any(NumberVisitor { expecting, convert })
}

/// Reads a mapping as `R`, then checks and converts it with `convert`.
fn from_map<'de, D, R, T>(
    deserializer: D,
    convert: fn(R) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
{
    struct MapVisitor<R, T> {
        convert: fn(R) -> Result<T, String>,
    }
    impl<'de, R: Deserialize<'de>, T> Visitor<'de> for MapVisitor<R, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.convert)(raw).map_err(de::Error::custom)
        }
    }
    deserializer.deserialize_map(MapVisitor { convert })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "DAY").then(|| "day2".to_string())
    }

    #[test]
    fn interpolation_replaces_set_variables_and_defaults() {
        assert_eq!(
            interpolate("fixtures/${DAY}/users.csv", lookup).unwrap(),
            "fixtures/day2/users.csv"
        );
        assert_eq!(
            interpolate("${MISSING:-day1}/${DAY}", lookup).unwrap(),
            "day1/day2"
        );
        assert_eq!(interpolate("no variables", lookup).unwrap(), "no variables");
    }

    #[test]
    fn interpolation_errors_name_the_variable() {
        let err = interpolate("x${MISSING}y", lookup).unwrap_err();
        assert!(err.contains("MISSING is not set"), "{err}");
        let err = interpolate("${unterminated", lookup).unwrap_err();
        assert!(err.contains("without a closing"), "{err}");
        let err = interpolate("${a b}", lookup).unwrap_err();
        assert!(err.contains("not a variable reference"), "{err}");
    }

    #[test]
    fn engine_settings_take_sizes_and_default_to_a_bounded_engine() {
        let engine: EngineConfig =
            serde_yaml_ng::from_str("memory_limit: 1.5GB\nthreads: 2\ntemp_directory: spill\n")
                .unwrap();
        assert_eq!(
            engine,
            EngineConfig {
                memory_limit: "1.5GB".into(),
                threads: Some(2),
                temp_directory: Some(PathBuf::from("spill")),
            }
        );
        let defaults: EngineConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(defaults, EngineConfig::default());
        assert_eq!(defaults.memory_limit, "256MB");
        let err = serde_yaml_ng::from_str::<EngineConfig>("memory_limit: 32MB")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`memory_limit` must be at least 64MB"),
            "{err}"
        );
        for wrong in [
            "memory_limit: lots",
            "memory_limit: 12",
            "memory_limit: -1GB",
        ] {
            let err = serde_yaml_ng::from_str::<EngineConfig>(wrong)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`memory_limit` takes a size such as 256MB or 2GB"),
                "{err}"
            );
        }
        let err = serde_yaml_ng::from_str::<EngineConfig>("threads: 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`threads` must be at least 1"), "{err}");
        let err = serde_yaml_ng::from_str::<EngineConfig>("memroy_limit: 1GB")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `memroy_limit`"), "{err}");
    }

    #[test]
    fn base_urls_are_instance_roots() {
        assert_eq!(
            parse_base_url("base_url", "http://127.0.0.1:8765/").unwrap(),
            "http://127.0.0.1:8765"
        );
        assert!(parse_base_url("base_url", "app.launchdarkly.com").is_err());
        for loopback in [
            "http://localhost:8765",
            "http://127.0.0.2",
            "http://[::1]:8765/",
        ] {
            assert!(parse_base_url("base_url", loopback).is_ok(), "{loopback}");
        }
        for remote in [
            "http://app.launchdarkly.com",
            "http://10.0.0.7:8765",
            "http://127.0.0.1.example.com",
        ] {
            assert!(
                parse_base_url("base_url", remote)
                    .unwrap_err()
                    .contains("would send the access token in clear text"),
                "{remote}"
            );
        }
        assert_eq!(
            parse_base_url("base_url", "https://ld.internal.example.com/").unwrap(),
            "https://ld.internal.example.com"
        );
        assert!(
            parse_base_url("base_url", "https://app.launchdarkly.com/api/v2")
                .unwrap_err()
                .contains("drop the trailing")
        );
    }
}
