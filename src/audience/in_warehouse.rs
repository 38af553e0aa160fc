//! The in-warehouse diff: when the warehouse and the state store are the same PostgreSQL database, a model's rows
//! never leave it. The model runs once into an unlogged table of the state schema (its keys checked in SQL, as the
//! set engine checks them), the keys that entered and left are found by PostgreSQL (`EXCEPT` against the
//! checkpoint's snapshot table), and only they travel to ldsync, streamed into the set engine's delta table; the
//! run's snapshot is made from the same table, inside PostgreSQL. This is how ldsync grows past one machine: the
//! warehouse does the set work, and ldsync's memory holds the delta, a batch at a time.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use duckdb::Connection;
use sqlx::{AssertSqlSafe, Executor, PgPool};

use super::{AudienceError, MAX_EXAMPLES, engine_error, shorten, table_name};
use crate::config::MAX_KEY_CHARS;
use crate::keys::{RejectedRow, Rejection};
use crate::pg::{CopyOutError, WorkerStopped};
use crate::state::{PgStore, PreparedSnapshot, StateError};
use crate::warehouse::postgres::model_error;
use crate::warehouse::{KeyColumn, WarehouseError, quote_identifier, trim_model};

/// A model's rows in an unlogged table of the state schema: `row` (the model's order), `k` (the key as text,
/// compared byte by byte) and `reason` (why it is rejected, 0 if it is not). Dropped with this value.
pub(super) struct WarehouseRows {
    store: PgStore,
    table: String,
}

/// Why the key `k` is rejected, in PostgreSQL: 0 when it is not, else the [`Rejection`] code. Blank means empty or
/// only Unicode White_Space, the code points Rust's `char::is_whitespace` accepts.
fn rejection_sql() -> String {
    const WHITE_SPACE: &str =
        r"^[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$";
    format!(
        // Most keys start with a printable ASCII character and are short: valid at a glance.
        "CASE WHEN k IS NULL THEN {null} \
              WHEN ascii(k) BETWEEN 33 AND 126 AND octet_length(k) <= {MAX_KEY_CHARS} THEN 0 \
              WHEN k ~ '{WHITE_SPACE}' THEN {blank} \
              WHEN length(k) > {MAX_KEY_CHARS} THEN {too_long} \
              ELSE 0 END",
        null = Rejection::Null.code(),
        blank = Rejection::Blank.code(),
        too_long = Rejection::TooLong.code(),
    )
}

impl WarehouseRows {
    /// Runs the model once into a new table of the store's schema, under the warehouse's statement timeout.
    pub(super) fn load(
        store: &PgStore,
        model_sql: &str,
        key: &KeyColumn,
        statement_timeout: Duration,
    ) -> Result<Self, AudienceError> {
        let rows = WarehouseRows {
            store: store.clone(),
            table: store.table(&table_name("model_rows")),
        };
        let create = format!(
            "CREATE UNLOGGED TABLE {table} AS SELECT row_number() OVER () AS row, k, ({reason})::int2 AS reason \
             FROM (SELECT ({column})::text COLLATE \"C\" AS k FROM ({model}) AS ldsync_model) AS keys",
            table = rows.table,
            reason = rejection_sql(),
            column = quote_identifier(&key.name),
            model = trim_model(model_sql),
        );
        let timeout = format!(
            "SET LOCAL statement_timeout = {}",
            statement_timeout.as_millis()
        );
        let analyze = format!("ANALYZE {}", rows.table);
        let created = store
            .run(move |pool: PgPool| async move {
                let mut tx = pool.begin().await?;
                tx.execute(AssertSqlSafe(timeout)).await?;
                tx.execute(AssertSqlSafe(create)).await?;
                tx.commit().await?;
                // A new table has no statistics: without them PostgreSQL plans the comparison for a few rows.
                pool.execute(AssertSqlSafe(analyze)).await.map(drop)
            })
            .map_err(|e| stopped(store, e))?;
        created.map_err(|e| model_error(e, None))?;
        Ok(rows)
    }

    /// How many rows the model gave for each rejection code (0: valid).
    pub(super) fn count_by_reason(&self) -> Result<Vec<(u8, u64)>, AudienceError> {
        let select = format!(
            "SELECT reason, count(*) FROM {} GROUP BY reason",
            self.table
        );
        let counts: Vec<(i16, i64)> = self.fetch(select)?;
        Ok(counts
            .into_iter()
            .map(|(reason, count)| (reason as u8, count as u64))
            .collect())
    }

    /// The first rejected rows, in the model's order.
    pub(super) fn rejected_examples(&self) -> Result<Vec<RejectedRow>, AudienceError> {
        let select = format!(
            "SELECT row, reason, k FROM {} WHERE reason > 0 ORDER BY row LIMIT {MAX_EXAMPLES}",
            self.table
        );
        let rows: Vec<(i64, i16, Option<String>)> = self.fetch(select)?;
        Ok(rows
            .into_iter()
            .map(|(row, reason, value)| RejectedRow {
                row: row as u64,
                reason: Rejection::from_code(reason as u8).unwrap_or(Rejection::Null),
                value: value.as_deref().map(shorten),
            })
            .collect())
    }

    /// Finds the valid keys that entered since the snapshot in `snapshot_table` (none: nothing) and the keys that
    /// left, in PostgreSQL, and streams them into the engine's `delta` table (`k`, `gone`).
    pub(super) fn delta_into(
        &self,
        engine: &Connection,
        delta: &str,
        snapshot_table: Option<&str>,
    ) -> Result<(), AudienceError> {
        // Anti-joins: PostgreSQL hashes one side and streams the other, in parallel, where `EXCEPT` sorts or
        // hashes both (about twice as slow at a million keys).
        let rows = &self.table;
        let copy = match snapshot_table {
            Some(snapshot) => format!(
                "COPY (SELECT DISTINCT m.k, false FROM {rows} m WHERE m.reason = 0 \
                   AND NOT EXISTS (SELECT 1 FROM {snapshot} s WHERE s.key = m.k) \
                 UNION ALL SELECT s.key, true FROM {snapshot} s \
                   WHERE NOT EXISTS (SELECT 1 FROM {rows} m WHERE m.reason = 0 AND m.k = s.key)) TO STDOUT"
            ),
            None => {
                format!("COPY (SELECT DISTINCT k, false FROM {rows} WHERE reason = 0) TO STDOUT")
            }
        };
        let doing = "taking in the keys that entered and left";
        let mut appender = engine
            .appender_to_catalog_and_db(delta, "temp", "main")
            .map_err(engine_error(doing))?;
        let batches = self
            .store
            .copy_out::<AudienceError>(copy)
            .map_err(|e| stopped(&self.store, e))?;
        for columns in batches {
            appender
                .append_record_batch(delta_batch(&columns?)?)
                .map_err(engine_error(doing))?;
        }
        appender.flush().map_err(engine_error(doing))
    }

    /// Makes the snapshot run `run_id` of `sync` will commit from the valid keys, inside PostgreSQL.
    pub(super) fn prepare_snapshot(
        &self,
        sync: &str,
        run_id: &str,
    ) -> Result<PreparedSnapshot, StateError> {
        let select = format!("SELECT DISTINCT k FROM {} WHERE reason = 0", self.table);
        self.store.prepare_from_query(sync, run_id, &select)
    }

    fn fetch<T>(&self, select: String) -> Result<Vec<T>, AudienceError>
    where
        T: Send + Unpin + 'static + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        self.store
            .run(move |pool: PgPool| async move {
                sqlx::query_as(AssertSqlSafe(select)).fetch_all(&pool).await
            })
            .map_err(|e| stopped(&self.store, e))?
            .map_err(lost)
    }
}

impl Drop for WarehouseRows {
    fn drop(&mut self) {
        let drop = format!("DROP TABLE IF EXISTS {}", self.table);
        let dropped = self
            .store
            .run(move |pool: PgPool| async move { pool.execute(AssertSqlSafe(drop)).await });
        if !matches!(dropped, Ok(Ok(_))) {
            tracing::debug!(table = %self.table, "could not drop the model's rows in PostgreSQL");
        }
    }
}

/// One `COPY` batch of `k` and `gone` (as text) as a batch of the delta table.
fn delta_batch(columns: &[ArrayRef]) -> Result<RecordBatch, AudienceError> {
    let keys = columns[0].clone();
    let gone: BooleanArray = columns[1]
        .as_string::<i32>()
        .iter()
        .map(|flag| flag.map(|f| f == "t"))
        .collect();
    let schema = Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("gone", DataType::Boolean, true),
    ]);
    RecordBatch::try_new(Arc::new(schema), vec![keys, Arc::new(gone)])
        .map_err(|e| WarehouseError::NotText(e.to_string()).into())
}

fn lost(e: sqlx::Error) -> AudienceError {
    match e {
        sqlx::Error::Database(_) => model_error(e, None).into(),
        other => WarehouseError::PostgresLost(other.to_string()).into(),
    }
}

impl From<CopyOutError> for AudienceError {
    fn from(e: CopyOutError) -> Self {
        AudienceError::Warehouse(e.into())
    }
}

fn stopped(store: &PgStore, e: WorkerStopped) -> AudienceError {
    WarehouseError::PostgresConnect {
        target: store.location(),
        message: e.to_string(),
    }
    .into()
}
