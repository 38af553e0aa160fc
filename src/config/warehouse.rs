//! `warehouse:`, where models run: embedded DuckDB or a PostgreSQL server, checked and resolved from its raw
//! mapping. No I/O.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::fields::duration;
use super::interpolate::Statement;
use super::raw::{RawWarehouse, WarehouseKind};
use super::visit::from_map;

/// Where models run.
#[derive(Clone)]
pub enum WarehouseConfig {
    /// Embedded DuckDB: a database file, or in memory when `database` is absent.
    DuckDb {
        database: Option<String>,
        /// Statements run once when the warehouse opens, typically views over CSV or Parquet files.
        startup_sql: Vec<Statement>,
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
                    startup_sql: raw.startup_sql,
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
