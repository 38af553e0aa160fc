//! The in-warehouse diff: when the warehouse and the state store are the same PostgreSQL database, a model's rows
//! never leave it. The model runs once into a temporary table of a session of ldsync's own (its keys checked in SQL, as the
//! set engine checks them), the keys that entered and left are found by PostgreSQL (`EXCEPT` against the
//! checkpoint's snapshot table), and only they travel to ldsync, streamed into the set engine's delta table; the
//! run's snapshot is made from the same table, inside PostgreSQL. This is how ldsync grows past one machine: the
//! warehouse does the set work, and ldsync's memory holds the delta, a batch at a time.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use duckdb::Connection;
use sqlx::{AssertSqlSafe, Connection as _, Executor};

use super::{MAX_EXAMPLES, SetEngineError, engine_error, rejected_row};
use crate::config::MAX_KEY_CHARS;
use crate::keys::{RejectedRow, Rejection};
use crate::pg::CopyOutError;
use crate::state::{PgStore, PreparedSnapshot, Session, StateError};
use crate::warehouse::postgres::running_model_error;
use crate::warehouse::{KeyColumn, WarehouseError, quote_identifier, quote_literal, wrap_model};

/// A model's rows in a temporary table of a session of the store's own: `row` (the model's order), `k` (the key as
/// text, compared byte by byte) and `reason` (why it is rejected, 0 if it is not). The table goes with the session,
/// which closes with this value, or with the process if it dies.
pub(super) struct WarehouseRows {
    session: Session,
}

/// The rows' table, in the session's temporary schema.
const ROWS: &str = "pg_temp.ldsync_model_rows";

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
    /// Runs the model once into the table, on a new session, under the warehouse's statement timeout.
    pub(super) fn load(
        store: &PgStore,
        model_sql: &str,
        key: &KeyColumn,
        statement_timeout: Duration,
    ) -> Result<Self, SetEngineError> {
        let create = format!(
            "CREATE TEMPORARY TABLE {ROWS} AS SELECT row_number() OVER () AS row, k, ({reason})::int2 AS reason \
             FROM (SELECT ({column})::text COLLATE \"C\" AS k FROM {model} AS ldsync_model) AS keys",
            reason = rejection_sql(),
            column = quote_identifier(&key.name),
            model = wrap_model(model_sql),
        );
        let timeout = format!(
            "SET LOCAL statement_timeout = {}",
            statement_timeout.as_millis()
        );
        let rows = WarehouseRows {
            session: store.session()?,
        };
        rows.session
            .run("run the model", move |mut conn| async move {
                let created = async {
                    let mut tx = conn.begin().await?;
                    tx.execute(AssertSqlSafe(timeout)).await?;
                    tx.execute(AssertSqlSafe(create)).await?;
                    tx.commit().await?;
                    // A new table has no statistics: without them PostgreSQL plans the comparison for a few rows.
                    conn.execute(AssertSqlSafe(format!("ANALYZE {ROWS}")))
                        .await
                        .map(drop)
                }
                .await;
                (conn, created)
            })?
            .map_err(lost)?;
        Ok(rows)
    }

    /// How many rows the model gave for each rejection code (0: valid).
    pub(super) fn count_by_reason(&self) -> Result<Vec<(u8, u64)>, SetEngineError> {
        let select = format!("SELECT reason, count(*) FROM {ROWS} GROUP BY reason");
        let counts: Vec<(i16, i64)> = self.fetch(select)?;
        Ok(counts
            .into_iter()
            .map(|(reason, count)| (reason as u8, count as u64))
            .collect())
    }

    /// The first rejected rows, in the model's order.
    pub(super) fn rejected_examples(&self) -> Result<Vec<RejectedRow>, SetEngineError> {
        let select = format!(
            "SELECT row, reason, k FROM {ROWS} WHERE reason > 0 ORDER BY row LIMIT {MAX_EXAMPLES}"
        );
        let rows: Vec<(i64, i16, Option<String>)> = self.fetch(select)?;
        Ok(rows
            .into_iter()
            .map(|(row, reason, value)| rejected_row(row as u64, reason as u8, value))
            .collect())
    }

    /// Finds the valid keys that entered since the snapshot in `snapshot_table` (none: nothing) and the keys that
    /// left, in PostgreSQL, and streams them into the engine's `delta` table (`k`, `gone`).
    pub(super) fn delta_into(
        &self,
        engine: &Connection,
        delta: &str,
        snapshot_table: Option<&str>,
    ) -> Result<(), SetEngineError> {
        // Anti-joins: PostgreSQL hashes one side and streams the other, in parallel, where `EXCEPT` sorts or
        // hashes both (about twice as slow at a million keys).
        let rows = ROWS;
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
        self.session.copy_out::<SetEngineError>(copy, |columns| {
            appender
                .append_record_batch(delta_batch(&columns)?)
                .map_err(engine_error(doing))
        })?;
        appender.flush().map_err(engine_error(doing))
    }

    /// Makes the snapshot run `run_id` of `sync` will commit from the valid keys but those `left_out` (at most a
    /// standard segment's excluded targets, so few enough to name in the query), inside PostgreSQL.
    pub(super) fn prepare_snapshot(
        &self,
        sync: &str,
        run_id: &str,
        left_out: &StringArray,
    ) -> Result<PreparedSnapshot, StateError> {
        let mut select = format!("SELECT DISTINCT k FROM {ROWS} WHERE reason = 0");
        if !left_out.is_empty() {
            let keys: Vec<String> = left_out.iter().flatten().map(quote_literal).collect();
            select.push_str(&format!(" AND k NOT IN ({})", keys.join(", ")));
        }
        self.session.prepare_snapshot(sync, run_id, &select)
    }

    fn fetch<T>(&self, select: String) -> Result<Vec<T>, SetEngineError>
    where
        T: Send + Unpin + 'static + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        self.session
            .run("read the model's rows", move |mut conn| async move {
                let rows = sqlx::query_as(AssertSqlSafe(select))
                    .fetch_all(&mut conn)
                    .await;
                (conn, rows)
            })?
            .map_err(lost)
    }
}

/// One `COPY` batch of `k` and `gone` (as text) as a batch of the delta table.
fn delta_batch(columns: &[ArrayRef]) -> Result<RecordBatch, SetEngineError> {
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

fn lost(e: sqlx::Error) -> SetEngineError {
    running_model_error(e).into()
}

impl From<CopyOutError> for SetEngineError {
    fn from(e: CopyOutError) -> Self {
        SetEngineError::Warehouse(e.into())
    }
}
