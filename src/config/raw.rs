//! The parsed form: `connector.yaml` as serde reads it, before its values are checked and resolved. No I/O.
//!
//! [`ConfigFile`] is the whole file; its sections deserialize through the `Raw*` mappings here, which the section
//! modules (`warehouse.rs`, `launchdarkly.rs`, `state.rs`, `engine.rs`) turn into their checked values inside
//! `Deserialize`, so that a mistake keeps its line and column. Segment and events syncs have no raw form: each
//! field is checked as it is read (`syncs.rs`).

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};

use super::dbt::{DbtConfig, DbtOwner};
use super::engine::SetEngineConfig;
use super::fields::{EnvVarName, ResourceKey};
use super::interpolate::{Interpolated, Statement};
use super::launchdarkly::{Instance, LaunchDarklyConfig};
use super::state::StateConfig;
use super::syncs::{EventSyncConfig, Syncs};
use super::visit::from_number;
use super::warehouse::WarehouseConfig;

/// The schema version this build of ldsync reads.
pub const CONFIG_VERSION: u32 = 1;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    /// Read only to check it.
    #[serde(rename = "version")]
    _version: ConfigVersion,
    pub(super) warehouse: WarehouseConfig,
    pub(super) launchdarkly: LaunchDarklyConfig,
    pub(super) state: StateConfig,
    #[serde(default)]
    pub(super) engine: SetEngineConfig,
    #[serde(default)]
    pub(super) syncs: Syncs,
    #[serde(default)]
    pub(super) events: Vec<EventSyncConfig>,
    #[serde(default)]
    pub(super) dbt: Option<DbtConfig>,
}

/// `version:`, which must be the one this build reads.
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

/// `warehouse:` as written; [`WarehouseConfig`] checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWarehouse {
    pub(super) kind: WarehouseKind,
    pub(super) database: Option<Interpolated>,
    #[serde(default)]
    pub(super) startup_sql: Vec<Statement>,
    pub(super) url: Option<Interpolated>,
    pub(super) statement_timeout: Option<Interpolated>,
    pub(super) pool_size: Option<u32>,
}

/// `warehouse.kind`.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum WarehouseKind {
    DuckDb,
    Postgres,
}

/// `launchdarkly:` as written; [`LaunchDarklyConfig`] checks it. `token` is read only to refuse it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLaunchDarkly {
    pub(super) instance: Option<Instance>,
    pub(super) base_url: Option<Interpolated>,
    pub(super) events_base_url: Option<Interpolated>,
    pub(super) token_env: Option<EnvVarName>,
    pub(super) token_file: Option<Interpolated>,
    pub(super) token: Option<IgnoredAny>,
    pub(super) project: ResourceKey,
    pub(super) environment: ResourceKey,
}

/// `state:` as written; [`StateConfig`] checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) kind: StateKind,
    pub(super) directory: Option<Interpolated>,
    pub(super) lock_wait: Option<Interpolated>,
    pub(super) url: Option<Interpolated>,
    pub(super) schema: Option<Interpolated>,
}

/// `state.kind`.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum StateKind {
    Local,
    Postgres,
}

/// `engine:` as written; [`SetEngineConfig`] checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEngine {
    pub(super) memory_limit: Option<Interpolated>,
    pub(super) threads: Option<u32>,
    pub(super) temp_directory: Option<Interpolated>,
}

/// `dbt:` as written; [`DbtConfig`] checks it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDbt {
    pub(super) project_dir: Interpolated,
    pub(super) manifest: Option<Interpolated>,
    pub(super) owner: Option<DbtOwner>,
    pub(super) max_manifest_age: Option<Interpolated>,
}
