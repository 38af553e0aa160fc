//! Models on PostgreSQL (or a server that speaks its protocol), through sqlx.
//!
//! The key column (or an events model's columns, each cast to text) streams out with
//! `COPY (SELECT key::text FROM (model)) TO STDOUT`: PostgreSQL sends rows as they are produced, and ldsync turns
//! them into Arrow string arrays of [`BATCH_ROWS`](crate::pg::BATCH_ROWS) rows, handed on through a channel of two batches, so neither the
//! whole result nor more than a few batches are ever in memory. The pool lives on a [`PgWorker`].

use std::time::Duration;

use arrow::array::ArrayRef;
use sqlx::postgres::{PgDatabaseError, PgErrorPosition};
use sqlx::{AssertSqlSafe, Column as _, Executor, PgPool, SqlSafeStr, Statement, TypeInfo};

use super::{Column, WarehouseError, trim_model};
use crate::pg::{ConnectError, CopyOutError, PgWorker, WorkerStopped};

/// A pool of connections to the warehouse.
pub struct Postgres {
    worker: PgWorker,
    statement_timeout: Duration,
}

impl Postgres {
    /// Connects (checking the URL, the credentials and the database at once) and sets each connection's
    /// `statement_timeout`.
    pub fn connect(
        url: &str,
        statement_timeout: Duration,
        pool_size: u32,
    ) -> Result<Postgres, WarehouseError> {
        let timeout = format!("SET statement_timeout = {}", statement_timeout.as_millis());
        let worker = PgWorker::connect(url, pool_size, vec![timeout]).map_err(|e| match e {
            ConnectError::Url(message) => WarehouseError::PostgresUrl(message),
            ConnectError::Refused { target, message } => {
                WarehouseError::PostgresConnect { target, message }
            }
        })?;
        Ok(Postgres {
            worker,
            statement_timeout,
        })
    }

    /// `user@host:port/database`: the database the models run in.
    pub fn target(&self) -> &str {
        self.worker.target()
    }

    /// How long one model query may run.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// The columns a model returns, from PostgreSQL's description of the prepared statement (nothing runs).
    pub fn describe(&self, model_sql: &str) -> Result<Vec<Column>, WarehouseError> {
        let sql = trim_model(model_sql).to_string();
        self.worker
            .call(move |pool| async move { describe(&pool, &sql).await })
            .map_err(|e| self.stopped(e))?
    }

    /// Runs `select` and hands its columns to `sink` as Arrow string arrays, as they arrive.
    pub fn stream_columns<E: From<WarehouseError>>(
        &self,
        select: &str,
        mut sink: impl FnMut(&[ArrayRef]) -> Result<(), E>,
    ) -> Result<(), E> {
        let batches = self
            .worker
            .copy_out::<WarehouseError>(format!("COPY ({select}) TO STDOUT"))
            .map_err(|e| self.stopped(e))?;
        // A failure from either side stops the stream (the worker sees the channel close).
        for batch in batches {
            sink(&batch?)?;
        }
        Ok(())
    }

    fn stopped(&self, e: WorkerStopped) -> WarehouseError {
        WarehouseError::PostgresConnect {
            target: self.worker.target().to_string(),
            message: e.to_string(),
        }
    }
}

async fn describe(pool: &PgPool, sql: &str) -> Result<Vec<Column>, WarehouseError> {
    let statement = pool
        .prepare(AssertSqlSafe(sql.to_string()).into_sql_str())
        .await
        .map_err(|e| model_error(e, Some(sql)))?;
    Ok(statement
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_string(),
            sql_type: c.type_info().name().to_string(),
        })
        .collect())
}

impl From<CopyOutError> for WarehouseError {
    fn from(e: CopyOutError) -> Self {
        match e {
            CopyOutError::Sql(e) => running_model_error(e),
            CopyOutError::Data(e) => WarehouseError::PostgresCopy(e.0),
        }
    }
}

/// An error while a query over the model ran: PostgreSQL's own (division by zero, say) is the model's, anything
/// else is the connection's.
pub(crate) fn running_model_error(e: sqlx::Error) -> WarehouseError {
    match e {
        sqlx::Error::Database(_) => model_error(e, None),
        other => lost(other),
    }
}

/// A failure of the connection itself, rather than of the model.
fn lost(e: sqlx::Error) -> WarehouseError {
    WarehouseError::PostgresLost(e.to_string())
}

/// PostgreSQL's own message for an error in the model, with its position turned into the model's line and column
/// when the statement was the model's own text (`model_sql`). Errors of the wrapped query that streams the keys
/// (division by zero, say) come from running the model, whose text was already checked, and carry no position.
fn model_error(e: sqlx::Error, model_sql: Option<&str>) -> WarehouseError {
    let Some(database) = e.as_database_error() else {
        return lost(e);
    };
    let Some(pg) = database.try_downcast_ref::<PgDatabaseError>() else {
        return WarehouseError::PostgresModel {
            message: database.message().to_string(),
            position: None,
        };
    };
    let position = match (pg.position(), model_sql) {
        (Some(PgErrorPosition::Original(at)), Some(sql)) => {
            at.checked_sub(1).map(|index| line_and_column(sql, index))
        }
        _ => None,
    };
    let mut message = pg.message().to_string();
    if let Some(detail) = pg.detail() {
        message.push_str(&format!(" ({detail})"));
    }
    WarehouseError::PostgresModel { message, position }
}

/// The 1-based line and column of the `index`-th character of `text`.
fn line_and_column(text: &str, index: usize) -> (usize, usize) {
    let before: String = text.chars().take(index).collect();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_become_lines_and_columns_of_the_model() {
        assert_eq!(line_and_column("SELECT 1\nFROM nope", 14), (2, 6));
        assert_eq!(line_and_column("SELECT x", 7), (1, 8));
    }
}
