//! A model's keys in the set engine: the model run once (inside DuckDB for a duckdb warehouse, streamed in as
//! Arrow from other warehouses, or kept in PostgreSQL for the in-warehouse diff), its keys checked, counted and
//! made distinct, ready to compare and to write as a snapshot.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use duckdb::Connection;
use indicatif::ProgressBar;

use super::*;

/// SQL for why the key `k` is rejected: 0 when it is not, else the [`Rejection`] code.
fn rejection_sql() -> String {
    // Rust's `char::is_whitespace` (Unicode White_Space) as an RE2 class; a blank key must start with one of these
    // code points, so the regular expression only runs on keys that do.
    const WHITE_SPACE: &str = r"[\t\n\x0B\f\r\x{85}\p{Z}]*";
    const WHITE_SPACE_STARTS: &str = "9, 10, 11, 12, 13, 32, 133, 160, 5760, 8192, 8193, 8194, 8195, 8196, 8197, \
                                      8198, 8199, 8200, 8201, 8202, 8232, 8233, 8239, 8287, 12288";
    format!(
        // Most keys start with a printable ASCII character and are short: valid at a glance.
        "CAST(CASE WHEN k IS NULL THEN {null} \
              WHEN unicode(k) BETWEEN 33 AND 126 AND strlen(k) <= {MAX_KEY_CHARS} THEN 0 \
              WHEN k = '' OR (unicode(k) IN ({WHITE_SPACE_STARTS}) AND regexp_full_match(k, '{WHITE_SPACE}')) \
                THEN {blank} \
              WHEN strlen(k) > {MAX_KEY_CHARS} AND length(k) > {MAX_KEY_CHARS} THEN {too_long} \
              ELSE 0 END AS UTINYINT)",
        null = Rejection::Null.code(),
        blank = Rejection::Blank.code(),
        too_long = Rejection::TooLong.code(),
    )
}

/// A model's rows for one plan: how many there were, which were rejected, and the table that holds them (dropped
/// with this value), in the set engine or, for the in-warehouse diff, in PostgreSQL.
pub struct ModelKeys<'e> {
    pub(super) engine: &'e Connection,
    pub(super) held: RowsHeld,
    pub(super) rows: u64,
    pub(super) rejected: Rejections,
}

/// Where a model's rows are held.
pub(super) enum RowsHeld {
    /// A temporary table of the set engine.
    Engine(String),
    /// A table of the PostgreSQL state store, in the warehouse's own database.
    Warehouse(WarehouseRows),
}

impl<'e> ModelKeys<'e> {
    /// Runs the model once into the set engine and checks its keys. With a duckdb warehouse the rows never leave
    /// DuckDB, and `progress` (a step spinner) shows how far DuckDB says it is; other warehouses stream them in as
    /// Arrow, and `progress` (a fetch spinner) counts the rows. Given `in_store`, the PostgreSQL state store in the
    /// (PostgreSQL) warehouse's own database, the rows go into a table of the store instead and never leave
    /// PostgreSQL.
    pub fn load(
        warehouse: &'e Warehouse,
        model_sql: &str,
        key: &KeyColumn,
        policy: InvalidKeys,
        progress: &ProgressBar,
        in_store: Option<&PgStore>,
    ) -> Result<Self, SetEngineError> {
        let engine = warehouse.engine()?;
        if let (Warehouse::Postgres { source, .. }, Some(store)) = (warehouse, in_store) {
            let rows = WarehouseRows::load(store, model_sql, key, source.statement_timeout())?;
            let mut model = ModelKeys {
                engine,
                held: RowsHeld::Warehouse(rows),
                rows: 0,
                rejected: Rejections::default(),
            };
            model.count_rejections(policy)?;
            return Ok(model);
        }
        let table = table_name("model_keys");
        let mut model = ModelKeys {
            engine,
            held: RowsHeld::Engine(table.clone()),
            rows: 0,
            rejected: Rejections::default(),
        };
        let source = match warehouse {
            Warehouse::DuckDb(_) => {
                let column = quote_identifier(&key.name);
                format!(
                    "SELECT CAST({column} AS VARCHAR) AS k FROM {} AS ldsync_model",
                    wrap_model(model_sql)
                )
            }
            Warehouse::Postgres { .. } => {
                let streamed = stream_into_engine(warehouse, model_sql, key, progress)?;
                format!("SELECT k FROM {streamed}")
            }
        };
        let streamed_rows_counted = ProgressBar::hidden();
        let created = execute_showing_progress(
            engine,
            &format!(
                "CREATE OR REPLACE TEMP TABLE {table} AS \
                 SELECT k, {reason} AS reason FROM (SELECT k COLLATE c AS k FROM ({source}))",
                reason = rejection_sql(),
            ),
            // Rows streamed in from another warehouse were counted as they came.
            match warehouse {
                Warehouse::DuckDb(_) => progress,
                Warehouse::Postgres { .. } => &streamed_rows_counted,
            },
        );
        if let Warehouse::Postgres { .. } = warehouse {
            drop_table(engine, STREAMED);
        }
        created.map_err(|e| match warehouse {
            // The model itself ran in this statement: its errors are the model's.
            Warehouse::DuckDb(_) => SetEngineError::Warehouse(WarehouseError::Model(e)),
            Warehouse::Postgres { .. } => engine_error("checking the model's keys")(e),
        })?;
        model.count_rejections(policy)?;
        Ok(model)
    }

    /// The set engine: it holds the rows, or the keys that entered and left when PostgreSQL holds the rows.
    pub fn engine(&self) -> &'e Connection {
        self.engine
    }

    /// Whether the rows are in PostgreSQL (the in-warehouse diff).
    pub fn in_warehouse(&self) -> bool {
        matches!(self.held, RowsHeld::Warehouse(_))
    }

    /// The engine's table of the rows, for `doing` something with them there.
    pub(super) fn engine_table(&self, doing: &'static str) -> Result<&str, SetEngineError> {
        match &self.held {
            RowsHeld::Engine(table) => Ok(table),
            RowsHeld::Warehouse(_) => Err(SetEngineError::InWarehouse { doing }),
        }
    }

    /// Counts rows and rejections; under `invalid_keys: fail`, the first rejected row is an error.
    fn count_rejections(&mut self, policy: InvalidKeys) -> Result<(), SetEngineError> {
        let counts: Vec<(u8, u64)> = match &self.held {
            RowsHeld::Engine(table) => query_rows(
                self.engine,
                &format!("SELECT reason, count(*) FROM {table} GROUP BY reason"),
                "counting the model's rows",
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?,
            RowsHeld::Warehouse(rows) => rows.count_by_reason()?,
        };
        for (reason, count) in counts {
            self.rows += count;
            match Rejection::from_code(reason) {
                Some(Rejection::Null) => self.rejected.null = count,
                Some(Rejection::Blank) => self.rejected.blank = count,
                Some(Rejection::TooLong) => self.rejected.too_long = count,
                None => {}
            }
        }
        if self.rejected.total() == 0 {
            return Ok(());
        }
        self.rejected.examples = match &self.held {
            RowsHeld::Engine(table) => query_rows(
                self.engine,
                &format!(
                    "SELECT rowid + 1, reason, k FROM {table} WHERE reason > 0 ORDER BY rowid LIMIT {MAX_EXAMPLES}"
                ),
                "finding the model's rejected rows",
                |row| Ok(rejected_row(row.get(0)?, row.get(1)?, row.get(2)?)),
            )?,
            RowsHeld::Warehouse(rows) => rows.rejected_examples()?,
        };
        match (policy, self.rejected.examples.first()) {
            (InvalidKeys::Fail, Some(first)) => Err(KeyError::Invalid(first.clone()).into()),
            _ => Ok(()),
        }
    }

    /// What the model's key column held, once compared with `baseline` (`distinct` counts from the comparison).
    pub fn stats(&self, delta: &Delta<'_>, baseline_keys: u64) -> KeyStats {
        let valid = self.rows - self.rejected.total();
        let distinct = (baseline_keys + delta.entered).saturating_sub(delta.left);
        KeyStats {
            rows: self.rows,
            distinct,
            duplicates: valid.saturating_sub(distinct),
            rejected: self.rejected.clone(),
        }
    }

    /// Writes the model's distinct valid keys but those `left_out`, sorted, as a Parquet snapshot at `path` (see
    /// [`write_keys`]); returns how many.
    pub fn write_snapshot(
        &self,
        path: &Path,
        left_out: &StringArray,
    ) -> Result<u64, SetEngineError> {
        self.engine_table("written as a Parquet snapshot")?;
        let model = KeySource::Model(self);
        if left_out.is_empty() {
            return write_keys(self.engine, model, path);
        }
        let left_out = KeyTable::load(self.engine, left_out)?;
        write_keys(self.engine, KeySource::Without(&model, &left_out), path)
    }
}

/// Writes the distinct keys of `keys`, sorted, as a Parquet snapshot at `path` (ZSTD, one non-null `context_key`
/// column); returns how many. Past one join's worth of keys (see [`partitions_for`]), the repeats are dropped one
/// partition of the keys' hash at a time before the sort, which DuckDB spills on its own.
fn write_keys(
    engine: &Connection,
    keys: KeySource<'_>,
    path: &Path,
) -> Result<u64, SetEngineError> {
    let partitions = partitions_for(engine, keys.len(engine)?)?;
    let distinct = Distinct::of(engine, keys, partitions)?;
    write_sorted(engine, distinct.sql(), path)
}

/// Writes the distinct keys of the one-column `distinct`, sorted, as a Parquet snapshot at `path`; returns how many.
pub(super) fn write_sorted(
    engine: &Connection,
    distinct: &str,
    path: &Path,
) -> Result<u64, SetEngineError> {
    let sql = format!(
        "COPY (SELECT k AS context_key FROM ({distinct}) ORDER BY context_key COLLATE c) TO {} \
         (FORMAT parquet, COMPRESSION zstd)",
        quote_literal(&path.to_string_lossy())
    );
    let written = engine
        .execute(&sql, [])
        .map_err(engine_error("writing the snapshot"))?;
    Ok(written as u64)
}

/// The distinct keys of a source: a query when one pass can drop the repeats, else a temporary table filled one
/// partition of the keys' hash at a time (dropped with this value).
pub(super) struct Distinct<'e> {
    engine: &'e Connection,
    table: Option<String>,
    query: String,
}

impl<'e> Distinct<'e> {
    pub(super) fn of(
        engine: &'e Connection,
        source: KeySource<'_>,
        partitions: u64,
    ) -> Result<Self, SetEngineError> {
        let doing = "dropping repeated keys";
        if partitions == 1 {
            return Ok(Distinct {
                engine,
                table: None,
                query: format!("SELECT DISTINCT k FROM ({})", source.sql()?),
            });
        }
        let table = table_name("distinct");
        let distinct = Distinct {
            engine,
            query: format!("SELECT k FROM {table}"),
            table: Some(table.clone()),
        };
        engine
            .execute_batch(&format!(
                "CREATE OR REPLACE TEMP TABLE {table} (k VARCHAR COLLATE c)"
            ))
            .map_err(engine_error(doing))?;
        for partition in 0..partitions {
            engine
                .execute_batch(&format!(
                    "INSERT INTO {table} SELECT DISTINCT k FROM ({})",
                    partition_sql(&source.sql()?, partitions, partition)
                ))
                .map_err(engine_error(doing))?;
        }
        Ok(distinct)
    }

    pub(super) fn sql(&self) -> &str {
        &self.query
    }
}

impl Drop for Distinct<'_> {
    fn drop(&mut self) {
        if let Some(table) = &self.table {
            drop_table(self.engine, table);
        }
    }
}

impl ModelKeys<'_> {
    /// For rows held in PostgreSQL: makes the snapshot of run `run_id` from them but those `left_out`, there;
    /// `None` for rows held in the set engine, whose snapshot is written with [`ModelKeys::write_snapshot`].
    pub fn prepare_in_warehouse(
        &self,
        sync: &str,
        run_id: &str,
        left_out: &StringArray,
    ) -> Option<Result<PreparedSnapshot, StateError>> {
        match &self.held {
            RowsHeld::Engine(_) => None,
            RowsHeld::Warehouse(rows) => Some(rows.prepare_snapshot(sync, run_id, left_out)),
        }
    }
}

impl Drop for ModelKeys<'_> {
    fn drop(&mut self) {
        if let RowsHeld::Engine(table) = &self.held {
            drop_table(self.engine, table);
        }
    }
}

/// Runs the model's `sql` on the engine; while it runs, `progress` shows how far DuckDB estimates it is (when it is
/// drawn).
fn execute_showing_progress(
    engine: &Connection,
    sql: &str,
    progress: &ProgressBar,
) -> duckdb::Result<()> {
    if progress.is_hidden() {
        return engine.execute_batch(sql);
    }
    engine.set_query_progress_tracking(true)?;
    let query = engine.progress_handle();
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(percent) = query.query_progress().percentage() {
                    progress.set_message(format!("running the model, {percent:.0}% done"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let result = engine.execute_batch(sql);
        done.store(true, Ordering::Relaxed);
        result
    });
    engine.set_query_progress_tracking(false)?;
    result
}

/// Streams the model's key column from a warehouse other than DuckDB into the engine's table [`STREAMED`].
fn stream_into_engine(
    warehouse: &Warehouse,
    model_sql: &str,
    key: &KeyColumn,
    fetched: &ProgressBar,
) -> Result<&'static str, SetEngineError> {
    let engine = warehouse.engine()?;
    engine
        .execute_batch(&format!(
            "CREATE OR REPLACE TEMP TABLE {STREAMED} (k VARCHAR)"
        ))
        .map_err(engine_error("preparing for the model's keys"))?;
    let mut appender = engine
        .appender_to_catalog_and_db(STREAMED, "temp", "main")
        .map_err(engine_error("preparing for the model's keys"))?;
    warehouse.stream_keys::<SetEngineError>(model_sql, key, |array| {
        fetched.inc(array.len() as u64);
        appender
            .append_record_batch(key_batch(array)?)
            .map_err(engine_error("taking in the model's keys"))
    })?;
    appender
        .flush()
        .map_err(engine_error("taking in the model's keys"))?;
    Ok(STREAMED)
}

/// Rows streamed from a warehouse other than DuckDB, before they are checked.
const STREAMED: &str = "ldsync_streamed_keys";

/// One streamed array of keys as a batch of one column `k`.
pub(super) fn key_batch(array: &ArrayRef) -> Result<RecordBatch, SetEngineError> {
    let data_type = array.data_type();
    if !matches!(data_type, DataType::Utf8 | DataType::LargeUtf8) {
        return Err(KeyError::NotText(data_type.clone()).into());
    }
    let schema = Schema::new(vec![Field::new("k", data_type.clone(), true)]);
    RecordBatch::try_new(Arc::new(schema), vec![array.clone()])
        .map_err(|e| WarehouseError::NotText(e.to_string()).into())
}
