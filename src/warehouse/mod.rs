//! The warehouse: where SQL models run, and how their key column comes back as a stream of Arrow arrays.
//!
//! A model is the text of one `SELECT` in `sql/<model>.sql`. ldsync wraps it to read only the key column, cast to
//! text when the model returns integers or UUIDs, so no other column crosses into ldsync. Embedded DuckDB runs
//! here; PostgreSQL in [`postgres`].
//!
//! Every warehouse comes with the set engine, an embedded DuckDB connection that does ldsync's set work (see
//! [`crate::set_engine`]): with a duckdb warehouse it is the warehouse's own connection, so a model's keys go into it
//! without leaving DuckDB; with PostgreSQL it is a separate in-memory DuckDB that the keys are streamed into.

pub mod postgres;

use std::path::{Path, PathBuf};

use arrow::array::ArrayRef;

use crate::config::{Config, SetEngineSettings, Statement, WarehouseConfig};
use crate::vocab::ErrorClass;

/// Why the warehouse could not run something.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("cannot open the DuckDB database {database}: {source}")]
    Open {
        database: String,
        source: duckdb::Error,
    },
    /// `sql` is the statement as connector.yaml has it, and `message` DuckDB's with what `${VAR}`s gave taken out:
    /// neither ever shows a secret from the environment.
    #[error("warehouse.startup_sql[{index}] failed: {message}\n  the statement was: {sql}")]
    Startup {
        index: usize,
        sql: String,
        message: String,
    },
    #[error("the model's SQL failed in DuckDB: {0}")]
    Model(duckdb::Error),
    #[error(
        "the model's result has no column `{column}` (its columns are: {}); return the key as `{column}` or set key_column",
        available.join(", ")
    )]
    MissingKeyColumn {
        column: String,
        available: Vec<String>,
    },
    #[error(
        "the key column `{column}` is {sql_type}; a context key must be text, an integer or a UUID (cast it in the model)"
    )]
    KeyColumnType { column: String, sql_type: String },
    #[error("warehouse.url is not a PostgreSQL URL: {0}")]
    PostgresUrl(String),
    #[error(
        "cannot connect to PostgreSQL at {target}: {message}; check warehouse.url, and that the server is up and \
         accepts this user"
    )]
    PostgresConnect { target: String, message: String },
    #[error("the model's SQL failed in PostgreSQL: {message}{}", match position {
        Some((line, column)) => format!(" (line {line}, column {column} of the model)"),
        None => String::new(),
    })]
    PostgresModel {
        message: String,
        position: Option<(usize, usize)>,
    },
    #[error(
        "the connection to PostgreSQL was lost while the model ran ({0}); nothing of its partial result was used, \
         so running it again is safe"
    )]
    PostgresLost(String),
    #[error("PostgreSQL's COPY output could not be read: {0}")]
    PostgresCopy(String),
    #[error("a column of the model's result cannot be read as text: {0}")]
    NotText(String),
    #[error("cannot set up the set engine (embedded DuckDB): {setting}: {source}")]
    Engine {
        setting: String,
        source: duckdb::Error,
    },
}

impl WarehouseError {
    /// The model's own failures are its data's; settings are the configuration's; the rest is the warehouse's.
    pub fn class(&self) -> ErrorClass {
        match self {
            WarehouseError::Model(_)
            | WarehouseError::MissingKeyColumn { .. }
            | WarehouseError::KeyColumnType { .. }
            | WarehouseError::PostgresModel { .. }
            | WarehouseError::NotText(_) => ErrorClass::Data,
            WarehouseError::Startup { .. }
            | WarehouseError::PostgresUrl(_)
            | WarehouseError::Engine { .. } => ErrorClass::Config,
            WarehouseError::Open { .. }
            | WarehouseError::PostgresConnect { .. }
            | WarehouseError::PostgresLost(_)
            | WarehouseError::PostgresCopy(_) => ErrorClass::Warehouse,
        }
    }
}

/// One column of a model's result, as the warehouse describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub sql_type: String,
}

/// How the key column will be read: its real name in the result and whether it needs a cast to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    pub sql_type: String,
    pub cast_to_text: bool,
}

/// An open warehouse connection, with its set engine.
pub enum Warehouse {
    DuckDb(duckdb::Connection),
    Postgres {
        source: postgres::Postgres,
        /// Opened when first needed: a fetch or an events sync never needs it.
        engine: std::cell::OnceCell<duckdb::Connection>,
        settings: SetEngineSettings,
    },
}

impl Warehouse {
    /// Opens the warehouse `config` (connector.yaml) names, with its set engine's settings, from its project.
    pub fn for_project(config: &Config) -> Result<Warehouse, WarehouseError> {
        Warehouse::open(
            &config.warehouse,
            &config.engine_settings(),
            &config.project_dir,
        )
    }

    /// Opens the configured warehouse and its set engine, then runs the warehouse's start-up SQL (after the engine's
    /// settings, so that it may change them). Relative file paths in that SQL (and in models) resolve from
    /// `project_dir`, wherever ldsync is started from.
    pub fn open(
        config: &WarehouseConfig,
        engine: &SetEngineSettings,
        project_dir: &Path,
    ) -> Result<Warehouse, WarehouseError> {
        match config {
            WarehouseConfig::DuckDb {
                database,
                startup_sql,
            } => open_duckdb(database.as_deref(), engine, startup_sql, project_dir)
                .map(Warehouse::DuckDb),
            WarehouseConfig::Postgres {
                url,
                statement_timeout,
                pool_size,
            } => Ok(Warehouse::Postgres {
                source: postgres::Postgres::connect(url, *statement_timeout, *pool_size)?,
                engine: std::cell::OnceCell::new(),
                settings: engine.clone(),
            }),
        }
    }

    /// The DuckDB connection that does the set work.
    pub fn engine(&self) -> Result<&duckdb::Connection, WarehouseError> {
        match self {
            Warehouse::DuckDb(conn) => Ok(conn),
            Warehouse::Postgres {
                engine, settings, ..
            } => {
                if let Some(engine) = engine.get() {
                    return Ok(engine);
                }
                let opened = open_engine(settings)?;
                Ok(engine.get_or_init(|| opened))
            }
        }
    }

    /// The warehouse's own connection when it is embedded DuckDB, whose queries run (and sort) in ldsync's memory.
    pub fn embedded_duckdb(&self) -> Option<&duckdb::Connection> {
        match self {
            Warehouse::DuckDb(conn) => Some(conn),
            Warehouse::Postgres { .. } => None,
        }
    }

    /// The columns a model returns, found without running it.
    pub fn describe(&self, model_sql: &str) -> Result<Vec<Column>, WarehouseError> {
        let conn = match self {
            Warehouse::DuckDb(conn) => conn,
            Warehouse::Postgres { source, .. } => return source.describe(model_sql),
        };
        let sql = format!(
            "DESCRIBE SELECT * FROM {} AS ldsync_model",
            wrap_model(model_sql)
        );
        let mut stmt = conn.prepare(&sql).map_err(WarehouseError::Model)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(Column {
                    name: row.get(0)?,
                    sql_type: row.get(1)?,
                })
            })
            .map_err(WarehouseError::Model)?;
        rows.collect::<Result<_, _>>()
            .map_err(WarehouseError::Model)
    }

    /// Finds the key column in a model's result and checks that its type can be a context key.
    pub fn key_column(&self, model_sql: &str, wanted: &str) -> Result<KeyColumn, WarehouseError> {
        let columns = self.describe(model_sql)?;
        let column =
            find_column(&columns, wanted).ok_or_else(|| WarehouseError::MissingKeyColumn {
                column: wanted.to_string(),
                available: columns.iter().map(|c| c.name.clone()).collect(),
            })?;
        let cast_to_text = match key_type_class(&column.sql_type) {
            Some(KeyTypeClass::Text) => false,
            Some(KeyTypeClass::Castable) => true,
            None => {
                return Err(WarehouseError::KeyColumnType {
                    column: column.name.clone(),
                    sql_type: column.sql_type.clone(),
                });
            }
        };
        Ok(KeyColumn {
            name: column.name.clone(),
            sql_type: column.sql_type.clone(),
            cast_to_text,
        })
    }

    /// SQL giving the Unix milliseconds of `expr`, a timestamp, date or timestamp with time zone (a timestamp
    /// without a zone is taken as UTC), in this warehouse's dialect.
    pub fn epoch_ms_sql(&self, expr: &str) -> String {
        match self {
            Warehouse::DuckDb(_) => format!("epoch_ms(CAST({expr} AS TIMESTAMP))"),
            Warehouse::Postgres { .. } => {
                format!("CAST(FLOOR(EXTRACT(EPOCH FROM {expr}) * 1000) AS BIGINT)")
            }
        }
    }

    /// Runs the model and hands the key column to `sink` one Arrow array at a time, as the warehouse produces
    /// them; the whole result is never held by ldsync at once.
    pub fn stream_keys<E: From<WarehouseError>>(
        &self,
        model_sql: &str,
        key: &KeyColumn,
        sink: impl FnMut(&ArrayRef) -> Result<(), E>,
    ) -> Result<(), E> {
        let quoted = quote_identifier(&key.name);
        let expr = if key.cast_to_text {
            format!("CAST({quoted} AS TEXT)")
        } else {
            quoted
        };
        let sql = format!(
            "SELECT {expr} AS context_key FROM {} AS ldsync_model",
            wrap_model(model_sql)
        );
        self.stream_column(&sql, sink)
    }

    /// Runs `sql` as it is and hands its first column to `sink` batch by batch.
    pub fn stream_column<E: From<WarehouseError>>(
        &self,
        sql: &str,
        mut sink: impl FnMut(&ArrayRef) -> Result<(), E>,
    ) -> Result<(), E> {
        self.stream_columns(sql, |columns| sink(&columns[0]))
    }

    /// Runs `sql` as it is, every column of which is text, and hands its columns to `sink` batch by batch.
    pub fn stream_columns<E: From<WarehouseError>>(
        &self,
        sql: &str,
        mut sink: impl FnMut(&[ArrayRef]) -> Result<(), E>,
    ) -> Result<(), E> {
        let conn = match self {
            Warehouse::DuckDb(conn) => conn,
            Warehouse::Postgres { source, .. } => return source.stream_columns(sql, sink),
        };
        let mut stmt = conn.prepare(sql).map_err(WarehouseError::Model)?;
        let stream = stmt.stream_arrow([]).map_err(WarehouseError::Model)?;
        for batch in stream {
            let batch = batch.map_err(WarehouseError::Model)?;
            sink(batch.columns())?;
        }
        Ok(())
    }
}

/// Opens a separate in-memory set engine (for warehouses other than DuckDB).
fn open_engine(settings: &SetEngineSettings) -> Result<duckdb::Connection, WarehouseError> {
    let conn = duckdb::Connection::open_in_memory().map_err(|source| WarehouseError::Open {
        database: ":memory:".to_string(),
        source,
    })?;
    apply_engine_settings(&conn, settings)?;
    Ok(conn)
}

/// Where the engine spills: `dir` when its parent exists, else a directory of the same name in the nearest
/// ancestor that exists. DuckDB creates its spill directory when it first spills, but not the directories above it
/// (a state directory no run has made yet: a first plan, or any run on the PostgreSQL store), and opening the engine
/// creates nothing itself (`plan` writes nothing). The empty ancestor of a relative path is the working directory
/// (`--config connector.yaml` in the project's directory).
fn spill_directory(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap_or(dir.as_os_str());
    dir.ancestors()
        .skip(1)
        .find(|ancestor| ancestor.as_os_str().is_empty() || ancestor.is_dir())
        .map_or_else(|| dir.to_path_buf(), |ancestor| ancestor.join(name))
}

/// Applies the set engine's memory limit, threads and spill directory to a DuckDB connection.
fn apply_engine_settings(
    conn: &duckdb::Connection,
    settings: &SetEngineSettings,
) -> Result<(), WarehouseError> {
    let mut statements = vec![format!(
        "SET memory_limit = {}",
        quote_literal(&settings.memory_limit)
    )];
    if let Some(threads) = settings.threads {
        statements.push(format!("SET threads = {threads}"));
    }
    if let Some(dir) = &settings.temp_directory {
        statements.push(format!(
            "SET temp_directory = {}",
            quote_literal(&spill_directory(dir).to_string_lossy())
        ));
    }
    for sql in statements {
        conn.execute_batch(&sql)
            .map_err(|source| WarehouseError::Engine {
                setting: sql.clone(),
                source,
            })?;
    }
    Ok(())
}

fn open_duckdb(
    database: Option<&str>,
    engine: &SetEngineSettings,
    startup_sql: &[Statement],
    project_dir: &Path,
) -> Result<duckdb::Connection, WarehouseError> {
    let conn = match database {
        None => duckdb::Connection::open_in_memory(),
        Some(path) => duckdb::Connection::open(project_dir.join(path)),
    }
    .map_err(|source| WarehouseError::Open {
        database: database.unwrap_or(":memory:").to_string(),
        source,
    })?;
    apply_engine_settings(&conn, engine)?;
    let project_dir = if project_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        project_dir
    };
    let search_path = project_dir
        .canonicalize()
        .unwrap_or_else(|_| project_dir.to_path_buf());
    let set_search_path = format!(
        "SET file_search_path = {}",
        quote_literal(&search_path.to_string_lossy())
    );
    conn.execute_batch(&set_search_path)
        .map_err(|source| WarehouseError::Engine {
            setting: set_search_path.clone(),
            source,
        })?;
    for (index, statement) in startup_sql.iter().enumerate() {
        conn.execute_batch(statement.text())
            .map_err(|source| WarehouseError::Startup {
                index,
                sql: statement.written().to_string(),
                message: statement.scrub(&source.to_string()),
            })?;
    }
    Ok(conn)
}

enum KeyTypeClass {
    Text,
    Castable,
}

/// Whether a column of `sql_type` (as DuckDB or PostgreSQL names it) can hold context keys.
fn key_type_class(sql_type: &str) -> Option<KeyTypeClass> {
    let upper = sql_type.to_ascii_uppercase();
    match upper.as_str() {
        "VARCHAR" | "TEXT" | "STRING" => Some(KeyTypeClass::Text),
        "TINYINT" | "SMALLINT" | "INTEGER" | "BIGINT" | "HUGEINT" | "UTINYINT" | "USMALLINT"
        | "UINTEGER" | "UBIGINT" | "UHUGEINT" | "UUID" => Some(KeyTypeClass::Castable),
        // PostgreSQL's names.
        "BPCHAR" | "NAME" | "CITEXT" | "INT2" | "INT4" | "INT8" | "CHAR" => {
            Some(KeyTypeClass::Castable)
        }
        _ if upper.starts_with("VARCHAR(") => Some(KeyTypeClass::Text),
        _ => None,
    }
}

/// The column of `columns` named `wanted`: an exact match first, then one that differs only in case.
pub fn find_column<'c>(columns: &'c [Column], wanted: &str) -> Option<&'c Column> {
    columns
        .iter()
        .find(|c| c.name == wanted)
        .or_else(|| columns.iter().find(|c| c.name.eq_ignore_ascii_case(wanted)))
}

/// A model's SQL without the trailing semicolons and white space that would break wrapping it in a subquery.
pub(crate) fn trim_model(sql: &str) -> &str {
    sql.trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

/// A model's SQL as a parenthesized subquery, `(model\n)`: the closing parenthesis goes on a line of its own, so a
/// model whose last line is a `--` comment does not comment it out. Nothing goes before the model's first line,
/// so a warehouse's error that names a line of the query names the same line of the model.
pub(crate) fn wrap_model(sql: &str) -> String {
    format!("({}\n)", trim_model(sql))
}

pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    #[test]
    fn a_spill_directory_under_missing_directories_falls_back_to_the_nearest_that_exists() {
        let base = tempfile::tempdir().unwrap();
        let deep = base.path().join("state/.duckdb-spill");
        assert_eq!(spill_directory(&deep), base.path().join(".duckdb-spill"));
        // A relative state directory (`--config connector.yaml` in the project, no `.ldsync` yet): the working
        // directory, which is there, not a path DuckDB cannot create.
        let relative = Path::new("no-such-directory-for-ldsync/state/.duckdb-spill");
        assert_eq!(spill_directory(relative), PathBuf::from(".duckdb-spill"));
    }

    fn memory() -> Warehouse {
        let config = WarehouseConfig::DuckDb {
            database: None,
            startup_sql: vec!["CREATE TABLE t AS SELECT i AS id, 'k' || i AS name, i::DOUBLE * 1.5 AS score FROM range(5000) r(i)".into()],
        };
        Warehouse::open(&config, &SetEngineSettings::default(), Path::new(".")).unwrap()
    }

    #[test]
    fn key_column_is_found_and_typed() {
        let wh = memory();
        let text = wh
            .key_column("SELECT name AS context_key FROM t;", "context_key")
            .unwrap();
        assert!(!text.cast_to_text);
        let int = wh.key_column("SELECT id FROM t", "ID").unwrap();
        assert_eq!(int.name, "id");
        assert!(int.cast_to_text);
        let err = wh.key_column("SELECT score FROM t", "score").unwrap_err();
        assert!(err.to_string().contains("is DOUBLE"), "{err}");
        let err = wh
            .key_column("SELECT id, score FROM t", "context_key")
            .unwrap_err();
        assert!(
            err.to_string().contains("its columns are: id, score"),
            "{err}"
        );
    }

    #[test]
    fn keys_stream_in_batches_as_text() {
        let wh = memory();
        let key = wh.key_column("SELECT id FROM t", "id").unwrap();
        let mut batches = 0;
        let mut seen = Vec::new();
        wh.stream_keys::<WarehouseError>("SELECT id FROM t ORDER BY id", &key, |array| {
            batches += 1;
            seen.extend(
                array
                    .as_string::<i32>()
                    .iter()
                    .map(|k| k.unwrap().to_string()),
            );
            Ok(())
        })
        .unwrap();
        assert!(batches > 1, "5000 rows come in more than one batch");
        assert_eq!(seen.len(), 5000);
        assert_eq!(seen[4999], "4999");
    }

    #[test]
    fn sql_errors_carry_duckdb_text() {
        let wh = memory();
        let err = wh.describe("SELECT nope FROM t").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let config = WarehouseConfig::DuckDb {
            database: None,
            startup_sql: vec![
                "SELECT 1".into(),
                "CREATE VIEW v AS SELECT * FROM missing_table".into(),
            ],
        };
        let err = Warehouse::open(&config, &SetEngineSettings::default(), Path::new("."))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("warehouse.startup_sql[1] failed"),
            "{err}"
        );
    }
}
