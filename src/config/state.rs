//! `state:`, where checkpoints, journals and run history are kept: a local directory or a PostgreSQL schema,
//! checked and resolved from its raw mapping. No I/O.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::fields::duration;
use super::interpolate::Interpolated;
use super::raw::{RawState, StateKind};
use super::visit::from_map;

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
