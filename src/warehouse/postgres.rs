//! Models on PostgreSQL (or a server that speaks its protocol), through sqlx.
//!
//! The key column (or an events model's columns, each cast to text) streams out with
//! `COPY (SELECT key::text FROM (model)) TO STDOUT`: PostgreSQL sends rows as they are produced, and ldsync turns
//! them into Arrow string arrays of [`BATCH_ROWS`] rows, handed on through a channel of two batches, so neither the whole result nor more than a few batches are ever in memory.
//!
//! sqlx is async, and ldsync's planner is not; so the connection pool lives on a worker thread with its own tokio
//! runtime, and each call sends it a job and waits for the answer. That also lets the planner be called from inside
//! the sync engine's runtime, where blocking on another runtime would not be allowed.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::array::{ArrayRef, StringBuilder};
use futures_util::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgErrorPosition, PgPoolOptions};
use sqlx::{AssertSqlSafe, Column as _, Executor, PgPool, SqlSafeStr, Statement, TypeInfo};

use super::{Column, WarehouseError, trim_model};

/// Keys per Arrow array handed to the planner.
pub const BATCH_ROWS: usize = 65_536;

/// What the worker is asked to do.
enum Job {
    Describe {
        sql: String,
        reply: SyncSender<Result<Vec<Column>, WarehouseError>>,
    },
    CopyColumns {
        /// The `SELECT` whose columns are copied out as text.
        select: String,
        reply: SyncSender<Result<Vec<ArrayRef>, WarehouseError>>,
    },
}

/// A pool of connections to PostgreSQL, served by a worker thread.
pub struct Postgres {
    jobs: Option<SyncSender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl Postgres {
    /// Connects (checking the URL, the credentials and the database at once) and sets each connection's
    /// `statement_timeout`.
    pub fn connect(
        url: &str,
        statement_timeout: Duration,
        pool_size: u32,
    ) -> Result<Postgres, WarehouseError> {
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
            WarehouseError::PostgresUrl(scrub_url(&e.to_string(), url))
        })?;
        let (jobs, incoming) = sync_channel::<Job>(1);
        let (ready, connected) = sync_channel(1);
        let target = describe_target(&options);
        let worker = std::thread::Builder::new()
            .name("ldsync-postgres".into())
            .spawn(move || serve(options, statement_timeout, pool_size, incoming, ready))
            .map_err(|e| WarehouseError::PostgresConnect {
                target: target.clone(),
                message: e.to_string(),
            })?;
        let postgres = Postgres {
            jobs: Some(jobs),
            worker: Some(worker),
        };
        match connected.recv() {
            Ok(Ok(())) => Ok(postgres),
            Ok(Err(message)) => Err(WarehouseError::PostgresConnect { target, message }),
            Err(_) => Err(WarehouseError::PostgresConnect {
                target,
                message: "the connection worker stopped".into(),
            }),
        }
    }

    /// The columns a model returns, from PostgreSQL's description of the prepared statement (nothing runs).
    pub fn describe(&self, model_sql: &str) -> Result<Vec<Column>, WarehouseError> {
        let (reply, answer) = sync_channel(1);
        self.send(Job::Describe {
            sql: trim_model(model_sql).to_string(),
            reply,
        })?;
        answer.recv().map_err(|_| worker_gone())?
    }

    /// Runs `select` and hands its columns to `sink` as Arrow string arrays, as they arrive.
    pub fn stream_columns<E: From<WarehouseError>>(
        &self,
        select: &str,
        mut sink: impl FnMut(&[ArrayRef]) -> Result<(), E>,
    ) -> Result<(), E> {
        let (reply, batches) = sync_channel(2);
        self.send(Job::CopyColumns {
            select: select.to_string(),
            reply,
        })?;
        drain(batches, &mut sink)
    }

    fn send(&self, job: Job) -> Result<(), WarehouseError> {
        self.jobs
            .as_ref()
            .ok_or_else(worker_gone)?
            .send(job)
            .map_err(|_| worker_gone())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing the job channel ends the worker's loop; it closes the pool on its way out.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Hands every batch to `sink`; a failure from either side stops the stream (the worker sees the channel close).
fn drain<E: From<WarehouseError>>(
    batches: Receiver<Result<Vec<ArrayRef>, WarehouseError>>,
    sink: &mut impl FnMut(&[ArrayRef]) -> Result<(), E>,
) -> Result<(), E> {
    for batch in batches {
        sink(&batch?)?;
    }
    Ok(())
}

fn worker_gone() -> WarehouseError {
    WarehouseError::PostgresConnect {
        target: "PostgreSQL".into(),
        message: "the connection worker stopped".into(),
    }
}

/// The worker: connects, says whether that worked, then runs jobs until the job channel closes.
fn serve(
    options: PgConnectOptions,
    statement_timeout: Duration,
    pool_size: u32,
    jobs: Receiver<Job>,
    ready: SyncSender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    runtime.block_on(async move {
        let timeout_ms = statement_timeout.as_millis();
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    let set = format!("SET statement_timeout = {timeout_ms}");
                    conn.execute(AssertSqlSafe(set)).await.map(|_| ())
                })
            })
            .connect_with(options)
            .await;
        let pool = match pool {
            Ok(pool) => {
                let _ = ready.send(Ok(()));
                pool
            }
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        // Blocking here is fine: between jobs this runtime has nothing else to do.
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Describe { sql, reply } => {
                    let _ = reply.send(describe(&pool, &sql).await);
                }
                Job::CopyColumns { select, reply } => copy_columns(&pool, &select, &reply).await,
            }
        }
        pool.close().await;
    });
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

/// Copies the columns of `select` out as text, sending arrays every [`BATCH_ROWS`] rows.
async fn copy_columns(
    pool: &PgPool,
    select: &str,
    reply: &SyncSender<Result<Vec<ArrayRef>, WarehouseError>>,
) {
    let statement = format!("COPY ({select}) TO STDOUT");
    let result = async {
        let mut conn = pool.acquire().await.map_err(lost)?;
        let mut stream = conn
            .copy_out_raw(&statement)
            .await
            .map_err(|e| model_error(e, None))?;
        let mut rows = CopyRows::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| match e {
                sqlx::Error::Database(_) => model_error(e, None),
                other => lost(other),
            })?;
            for batch in rows.push(&chunk)? {
                // The planner stopped reading (it failed): stop copying.
                if reply.send(Ok(batch)).is_err() {
                    return Ok(());
                }
            }
        }
        if let Some(batch) = rows.finish()? {
            let _ = reply.send(Ok(batch));
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = reply.send(Err(e));
    }
}

/// Lines of `COPY … TO STDOUT` text format, decoded into Arrow arrays (one a column).
#[derive(Default)]
struct CopyRows {
    /// The start of a line that the last chunk cut.
    partial: Vec<u8>,
    /// One builder a column, made when the first line says how many columns there are.
    builders: Vec<StringBuilder>,
    rows: usize,
}

impl CopyRows {
    /// Takes a chunk of COPY data; returns the batches of arrays that filled up.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<ArrayRef>>, WarehouseError> {
        let mut full = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = if self.partial.is_empty() {
                &rest[..end]
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                &self.partial[..]
            };
            append_row(&mut self.builders, line)?;
            self.partial.clear();
            self.rows += 1;
            if self.rows == BATCH_ROWS {
                full.push(self.take());
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(full)
    }

    /// The last, partly filled array; an error if the data ended in the middle of a line.
    fn finish(mut self) -> Result<Option<Vec<ArrayRef>>, WarehouseError> {
        if !self.partial.is_empty() {
            return Err(WarehouseError::PostgresCopy(
                "the data ended in the middle of a row".into(),
            ));
        }
        Ok((self.rows > 0).then(|| self.take()))
    }

    fn take(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.builders
            .iter_mut()
            .map(|b| std::sync::Arc::new(b.finish()) as ArrayRef)
            .collect()
    }
}

/// Appends one line of COPY text (fields separated by tabs; a tab inside a value is escaped) to `builders`.
fn append_row(builders: &mut Vec<StringBuilder>, line: &[u8]) -> Result<(), WarehouseError> {
    let fields = line.split(|&b| b == b'\t');
    if builders.is_empty() {
        builders.resize_with(fields.clone().count(), StringBuilder::new);
    }
    let mut count = 0;
    for (builder, field) in builders.iter_mut().zip(fields.clone()) {
        builder.append_option(decode_copy_text(field)?.as_deref());
        count += 1;
    }
    if count != builders.len() || fields.count() != builders.len() {
        return Err(WarehouseError::PostgresCopy(format!(
            "a row has a different number of columns than the first ({})",
            builders.len()
        )));
    }
    Ok(())
}

/// One value of COPY's text format: `\N` is NULL; backslash escapes stand for control characters, octal and hex
/// bytes and the backslash itself.
fn decode_copy_text(line: &[u8]) -> Result<Option<String>, WarehouseError> {
    if line == b"\\N" {
        return Ok(None);
    }
    if !line.contains(&b'\\') {
        return String::from_utf8(line.to_vec()).map(Some).map_err(not_utf8);
    }
    let mut bytes = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        i += 1;
        if b != b'\\' || i == line.len() {
            bytes.push(b);
            continue;
        }
        let escape = line[i];
        i += 1;
        match escape {
            b'b' => bytes.push(0x08),
            b'f' => bytes.push(0x0c),
            b'n' => bytes.push(b'\n'),
            b'r' => bytes.push(b'\r'),
            b't' => bytes.push(b'\t'),
            b'v' => bytes.push(0x0b),
            b'0'..=b'7' => {
                let digits = line[i - 1..]
                    .iter()
                    .take(3)
                    .take_while(|d| (b'0'..=b'7').contains(*d));
                let count = digits.clone().count();
                bytes.push(digits.fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += count - 1;
            }
            b'x' => {
                let digits: Vec<u8> = line[i..]
                    .iter()
                    .take(2)
                    .take_while(|d| d.is_ascii_hexdigit())
                    .copied()
                    .collect();
                let text = std::str::from_utf8(&digits).unwrap_or_default();
                bytes.push(u8::from_str_radix(text, 16).unwrap_or(b'x'));
                i += digits.len();
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).map(Some).map_err(not_utf8)
}

fn not_utf8(e: std::string::FromUtf8Error) -> WarehouseError {
    WarehouseError::PostgresCopy(format!("a key is not valid UTF-8: {e}"))
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

/// `user@host:port/database`, for messages: never the password.
fn describe_target(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// `text` with the URL (which may carry a password) left out.
fn scrub_url(text: &str, url: &str) -> String {
    text.replace(url, "<the url>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_values_decode_escapes_and_nulls() {
        assert_eq!(decode_copy_text(b"\\N").unwrap(), None);
        assert_eq!(decode_copy_text(b"plain").unwrap().unwrap(), "plain");
        assert_eq!(
            decode_copy_text(b"a\\tb\\\\c\\nd\\101\\x42")
                .unwrap()
                .unwrap(),
            "a\tb\\c\ndAB"
        );
        assert_eq!(decode_copy_text(b"").unwrap().unwrap(), "");
    }

    #[test]
    fn rows_cut_across_chunks_come_out_whole_in_full_batches() {
        let mut rows = CopyRows::default();
        let mut batches = rows.push(b"k1\nk").unwrap();
        batches.extend(rows.push(b"2\n\\N\nk4").unwrap());
        assert!(batches.is_empty());
        batches.extend(rows.push(b"\n").unwrap());
        let last = rows.finish().unwrap().unwrap();
        let values: Vec<Option<&str>> = arrow::array::AsArray::as_string::<i32>(&*last[0])
            .iter()
            .collect();
        assert_eq!(values, [Some("k1"), Some("k2"), None, Some("k4")]);
        let mut wide = CopyRows::default();
        wide.push(b"a\t1\tx\\ty\n\\N\t2\t\n").unwrap();
        let columns = wide.finish().unwrap().unwrap();
        let column = |i: usize| -> Vec<Option<String>> {
            arrow::array::AsArray::as_string::<i32>(&*columns[i])
                .iter()
                .map(|v| v.map(str::to_string))
                .collect()
        };
        assert_eq!(column(0), [Some("a".into()), None]);
        assert_eq!(column(1), [Some("1".into()), Some("2".into())]);
        assert_eq!(column(2), [Some("x\ty".into()), Some(String::new())]);
        let mut ragged = CopyRows::default();
        assert!(ragged.push(b"a\tb\nc\n").is_err());
        let mut torn = CopyRows::default();
        torn.push(b"k1\nk2").unwrap();
        assert!(torn.finish().is_err());
    }

    #[test]
    fn positions_become_lines_and_columns_of_the_model() {
        assert_eq!(line_and_column("SELECT 1\nFROM nope", 14), (2, 6));
        assert_eq!(line_and_column("SELECT x", 7), (1, 8));
    }
}
