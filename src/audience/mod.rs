//! A model's audience in the set engine: the set work of a plan, done by DuckDB.
//!
//! A model runs once per plan, into a temporary table of its rows, numbered in the model's order, each key checked
//! in SQL. That table is compared with a baseline (the checkpoint's Parquet snapshot, the segment's real members,
//! or nothing) by one full outer join, so only the keys that entered or left come back to ldsync, sorted, as
//! Arrow. DuckDB does this in parallel and spills to its temporary directory past its memory limit, so a plan's
//! memory stays flat however large the audience; the new snapshot is written from the same table by DuckDB's own
//! Parquet writer. Keys compare byte by byte (`COLLATE c`): the order of snapshots and of requests.
//!
//! When the warehouse and the state store are the same PostgreSQL database, the model's rows stay in it instead,
//! and PostgreSQL finds what entered and left (see `in_warehouse`).
//!
//! A key is rejected when it is null, blank (empty or only white space, as Unicode defines it) or longer than 256
//! characters. What a rejection does is the sync's `invalid_keys` setting: stop with an error naming the first such
//! row, or count them and keep a few examples for the report.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use duckdb::Connection;
use indicatif::ProgressBar;

use crate::config::{InvalidKeys, MAX_KEY_CHARS, parse_size};
use crate::keys::{KeyError, KeyStats, RejectedRow, Rejection, Rejections};
use crate::state::{PgStore, PreparedSnapshot, StateError};
use crate::warehouse::{
    KeyColumn, Warehouse, WarehouseError, quote_identifier, quote_literal, trim_model,
};

/// How many rejected rows a report shows as examples.
const MAX_EXAMPLES: usize = 5;

/// Why the set work failed.
#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("the set engine (embedded DuckDB) failed while {doing}: {source}")]
    Engine {
        doing: &'static str,
        source: duckdb::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "the model's keys are in PostgreSQL (the in-warehouse diff), not in the set engine, so they cannot be \
         {doing} there"
    )]
    InWarehouse { doing: &'static str },
}

mod in_warehouse;
use in_warehouse::WarehouseRows;

fn engine_error(doing: &'static str) -> impl FnOnce(duckdb::Error) -> AudienceError {
    move |source| AudienceError::Engine { doing, source }
}

/// Where a set of keys comes from, as SQL the engine can join.
#[derive(Clone, Copy)]
pub enum KeySource<'a> {
    /// The valid keys of the model loaded in [`ModelKeys`] (repeats included).
    Model(&'a ModelKeys<'a>),
    /// A checkpoint's Parquet snapshot (distinct keys in its `context_key` column).
    Snapshot(&'a Path),
    /// Keys loaded into a [`KeyTable`].
    Table(&'a KeyTable<'a>),
    /// No keys at all.
    Nothing,
}

impl KeySource<'_> {
    /// A query giving the keys as one column `k`, compared byte by byte.
    fn sql(&self) -> Result<String, AudienceError> {
        Ok(match self {
            KeySource::Model(model) => {
                format!(
                    "SELECT k FROM {} WHERE reason = 0",
                    model.engine_table("compared")?
                )
            }
            KeySource::Snapshot(path) => format!(
                "SELECT context_key COLLATE c AS k FROM read_parquet({})",
                quote_literal(&path.to_string_lossy())
            ),
            KeySource::Table(table) => format!("SELECT k FROM {}", table.name),
            KeySource::Nothing => "SELECT CAST(NULL AS VARCHAR) COLLATE c AS k WHERE false".into(),
        })
    }

    /// How many keys it gives (repeats included).
    fn len(&self, engine: &Connection) -> Result<u64, AudienceError> {
        Ok(match self {
            KeySource::Model(model) => model.rows - model.rejected.total(),
            KeySource::Table(table) => table.count,
            KeySource::Nothing => 0,
            KeySource::Snapshot(path) => query_rows(
                engine,
                &format!(
                    "SELECT num_rows FROM parquet_file_metadata({})",
                    quote_literal(&path.to_string_lossy())
                ),
                "reading the snapshot's row count",
                |row| row.get::<_, u64>(0),
            )?
            .into_iter()
            .sum(),
        })
    }
}

/// How many keys one join of the engine may take for each byte of its memory limit. DuckDB's hash join spills, but
/// not without bound: at 256 MB it joins 10M keys of 20 characters, and fails on 100M even at 512 MB. Past this,
/// [`Delta::between`] joins the keys in partitions of their hash, one after another.
const KEYS_PER_JOIN_BYTE: f64 = 1.0 / 24.0;

/// The keys of the one-column `sql` in `partition` of `partitions` partitions of their hash (all of them when there
/// is one).
fn partition_sql(sql: &str, partitions: u64, partition: u64) -> String {
    match partitions {
        1 => sql.to_string(),
        _ => format!("SELECT k FROM ({sql}) WHERE hash(k) % {partitions} = {partition}"),
    }
}

/// In how many partitions to compare sets of `keys` keys, given the engine's memory limit.
fn partitions_for(engine: &Connection, keys: u64) -> Result<u64, AudienceError> {
    let limit: Vec<String> = query_rows(
        engine,
        "SELECT current_setting('memory_limit')",
        "reading the memory limit",
        |row| row.get(0),
    )?;
    let Some(bytes) = limit.first().and_then(|l| parse_size(l)) else {
        return Ok(1);
    };
    let per_partition = (bytes as f64 * KEYS_PER_JOIN_BYTE).max(1.0);
    Ok(((keys as f64 / per_partition).ceil() as u64).max(1))
}

/// A name for a temporary table that no other table of this process has.
fn table_name(purpose: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("ldsync_{purpose}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Drops a temporary table, as its owner goes away: the warehouse of a daemon stays open across runs.
fn drop_table(engine: &Connection, table: &str) {
    if let Err(e) = engine.execute_batch(&format!("DROP TABLE IF EXISTS temp.{table}")) {
        tracing::debug!(table, error = %e, "could not drop a temporary table");
    }
}

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
    engine: &'e Connection,
    held: Held,
    rows: u64,
    rejected: Rejections,
}

/// Where a model's rows are held.
enum Held {
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
    ) -> Result<Self, AudienceError> {
        let engine = warehouse.engine()?;
        if let (Warehouse::Postgres { source, .. }, Some(store)) = (warehouse, in_store) {
            let rows = WarehouseRows::load(store, model_sql, key, source.statement_timeout())?;
            let mut model = ModelKeys {
                engine,
                held: Held::Warehouse(rows),
                rows: 0,
                rejected: Rejections::default(),
            };
            model.count_rejections(policy)?;
            return Ok(model);
        }
        let table = table_name("model_keys");
        let mut model = ModelKeys {
            engine,
            held: Held::Engine(table.clone()),
            rows: 0,
            rejected: Rejections::default(),
        };
        let source = match warehouse {
            Warehouse::DuckDb(_) => {
                let column = quote_identifier(&key.name);
                format!(
                    "SELECT CAST({column} AS VARCHAR) AS k FROM ({}) AS ldsync_model",
                    trim_model(model_sql)
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
            Warehouse::DuckDb(_) => AudienceError::Warehouse(WarehouseError::Model(e)),
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
        matches!(self.held, Held::Warehouse(_))
    }

    /// The engine's table of the rows, for `doing` something with them there.
    fn engine_table(&self, doing: &'static str) -> Result<&str, AudienceError> {
        match &self.held {
            Held::Engine(table) => Ok(table),
            Held::Warehouse(_) => Err(AudienceError::InWarehouse { doing }),
        }
    }

    /// Counts rows and rejections; under `invalid_keys: fail`, the first rejected row is an error.
    fn count_rejections(&mut self, policy: InvalidKeys) -> Result<(), AudienceError> {
        let counts: Vec<(u8, u64)> = match &self.held {
            Held::Engine(table) => query_rows(
                self.engine,
                &format!("SELECT reason, count(*) FROM {table} GROUP BY reason"),
                "counting the model's rows",
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?,
            Held::Warehouse(rows) => rows.count_by_reason()?,
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
            Held::Engine(table) => query_rows(
                self.engine,
                &format!(
                    "SELECT rowid + 1, reason, k FROM {table} WHERE reason > 0 ORDER BY rowid LIMIT {MAX_EXAMPLES}"
                ),
                "finding the model's rejected rows",
                |row| Ok(rejected_row(row.get(0)?, row.get(1)?, row.get(2)?)),
            )?,
            Held::Warehouse(rows) => rows.rejected_examples()?,
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

    /// Writes the model's distinct valid keys, sorted, as a Parquet snapshot at `path` (ZSTD, one non-null
    /// `context_key` column); returns how many. Past one join's worth of keys (see [`partitions_for`]), the repeats
    /// are dropped one partition of the keys' hash at a time before the sort, which DuckDB spills on its own.
    pub fn write_snapshot(&self, path: &Path) -> Result<u64, AudienceError> {
        let doing = "writing the snapshot";
        self.engine_table("written as a Parquet snapshot")?;
        let model = KeySource::Model(self);
        let partitions = partitions_for(self.engine, model.len(self.engine)?)?;
        let distinct = Distinct::of(self.engine, model, partitions)?;
        let sql = format!(
            "COPY (SELECT k AS context_key FROM ({}) ORDER BY context_key COLLATE c) TO {} \
             (FORMAT parquet, COMPRESSION zstd)",
            distinct.sql(),
            quote_literal(&path.to_string_lossy())
        );
        let written = self.engine.execute(&sql, []).map_err(engine_error(doing))?;
        Ok(written as u64)
    }
}

/// The distinct keys of a source: a query when one pass can drop the repeats, else a temporary table filled one
/// partition of the keys' hash at a time (dropped with this value).
struct Distinct<'e> {
    engine: &'e Connection,
    table: Option<String>,
    query: String,
}

impl<'e> Distinct<'e> {
    fn of(
        engine: &'e Connection,
        source: KeySource<'_>,
        partitions: u64,
    ) -> Result<Self, AudienceError> {
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

    fn sql(&self) -> &str {
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
    /// For rows held in PostgreSQL: makes the snapshot of run `run_id` from them, there; `None` for rows held in
    /// the set engine, whose snapshot is written with [`ModelKeys::write_snapshot`].
    pub fn prepare_in_warehouse(
        &self,
        sync: &str,
        run_id: &str,
    ) -> Option<Result<PreparedSnapshot, StateError>> {
        match &self.held {
            Held::Engine(_) => None,
            Held::Warehouse(rows) => Some(rows.prepare_snapshot(sync, run_id)),
        }
    }
}

impl Drop for ModelKeys<'_> {
    fn drop(&mut self) {
        if let Held::Engine(table) = &self.held {
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
) -> Result<&'static str, AudienceError> {
    let engine = warehouse.engine()?;
    engine
        .execute_batch(&format!(
            "CREATE OR REPLACE TEMP TABLE {STREAMED} (k VARCHAR)"
        ))
        .map_err(engine_error("preparing for the model's keys"))?;
    let mut appender = engine
        .appender_to_catalog_and_db(STREAMED, "temp", "main")
        .map_err(engine_error("preparing for the model's keys"))?;
    warehouse.stream_keys::<AudienceError>(model_sql, key, |array| {
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
fn key_batch(array: &ArrayRef) -> Result<RecordBatch, AudienceError> {
    let data_type = array.data_type();
    if !matches!(data_type, DataType::Utf8 | DataType::LargeUtf8) {
        return Err(KeyError::NotText(data_type.clone()).into());
    }
    let schema = Schema::new(vec![Field::new("k", data_type.clone(), true)]);
    RecordBatch::try_new(Arc::new(schema), vec![array.clone()])
        .map_err(|e| WarehouseError::NotText(e.to_string()).into())
}

/// Keys loaded into a temporary table of the engine (a segment's members, say), distinct, dropped with this value.
pub struct KeyTable<'e> {
    engine: &'e Connection,
    name: String,
    /// How many distinct keys it holds.
    pub count: u64,
}

impl<'e> KeyTable<'e> {
    /// Loads the distinct `keys` into a new temporary table.
    pub fn load(engine: &'e Connection, keys: &StringArray) -> Result<Self, AudienceError> {
        let mut table = KeyTable {
            engine,
            name: table_name("keys"),
            count: 0,
        };
        let doing = "taking in a list of keys";
        engine
            .execute_batch(&format!(
                "CREATE OR REPLACE TEMP TABLE {} (k VARCHAR COLLATE c)",
                table.name
            ))
            .map_err(engine_error(doing))?;
        let mut appender = engine
            .appender_to_catalog_and_db(&table.name, "temp", "main")
            .map_err(engine_error(doing))?;
        let array: ArrayRef = Arc::new(keys.clone());
        appender
            .append_record_batch(key_batch(&array)?)
            .and_then(|()| appender.flush())
            .map_err(engine_error(doing))?;
        drop(appender);
        let distinct = format!("SELECT DISTINCT k FROM {}", table.name);
        engine
            .execute_batch(&format!(
                "CREATE OR REPLACE TEMP TABLE {} AS {distinct}",
                table.name
            ))
            .map_err(engine_error(doing))?;
        table.count = query_rows(
            engine,
            &format!("SELECT count(*) FROM {}", table.name),
            doing,
            |row| row.get::<_, u64>(0),
        )?
        .into_iter()
        .sum();
        Ok(table)
    }
}

impl Drop for KeyTable<'_> {
    fn drop(&mut self) {
        drop_table(self.engine, &self.name);
    }
}

/// The keys that entered `current` and left it since `baseline`, held in a temporary table of the engine (dropped
/// with this value), with their counts.
pub struct Delta<'e> {
    engine: &'e Connection,
    table: String,
    /// Distinct keys of `current` that `baseline` does not hold.
    pub entered: u64,
    /// Keys of `baseline` that `current` does not hold.
    pub left: u64,
}

impl<'e> Delta<'e> {
    /// Compares `current` with `baseline` in one full outer join; `baseline` must be distinct, `current` may
    /// repeat keys.
    pub fn between(
        engine: &'e Connection,
        current: KeySource<'_>,
        baseline: KeySource<'_>,
    ) -> Result<Self, AudienceError> {
        let (current_sql, baseline_sql) = (current.sql()?, baseline.sql()?);
        let keys = current.len(engine)?.max(baseline.len(engine)?);
        let partitions = partitions_for(engine, keys)?;
        if partitions > 1 {
            tracing::debug!(keys, partitions, "comparing the keys in partitions");
        }
        Self::in_partitions(engine, &current_sql, &baseline_sql, partitions)
    }

    /// Compares the model's rows held in PostgreSQL with the snapshot in the table `snapshot_table` of the same
    /// database (none: nothing), there; only the keys that entered and left come into the engine.
    pub fn in_warehouse(
        model: &ModelKeys<'e>,
        snapshot_table: Option<&str>,
    ) -> Result<Self, AudienceError> {
        let Held::Warehouse(rows) = &model.held else {
            return Err(AudienceError::InWarehouse {
                doing: "compared in PostgreSQL while they are in the set engine",
            });
        };
        let delta = Self::create(model.engine)?;
        rows.delta_into(model.engine, &delta.table, snapshot_table)?;
        delta.counted()
    }

    /// An empty delta table.
    fn create(engine: &'e Connection) -> Result<Self, AudienceError> {
        let delta = Delta {
            engine,
            table: table_name("delta"),
            entered: 0,
            left: 0,
        };
        engine
            .execute_batch(&format!(
                "CREATE OR REPLACE TEMP TABLE {} (k VARCHAR COLLATE c, gone BOOLEAN)",
                delta.table
            ))
            .map_err(engine_error("comparing keys"))?;
        Ok(delta)
    }

    /// This delta with its counts of keys that entered and left.
    fn counted(mut self) -> Result<Self, AudienceError> {
        let counts: Vec<(bool, u64)> = query_rows(
            self.engine,
            &format!("SELECT gone, count(*) FROM {} GROUP BY gone", self.table),
            "counting the keys that entered and left",
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        for (gone, count) in counts {
            if gone {
                self.left = count;
            } else {
                self.entered = count;
            }
        }
        Ok(self)
    }

    /// Compares `current` with `baseline` in `partitions` joins, one after another, each over the keys of one
    /// partition of their hash.
    fn in_partitions(
        engine: &'e Connection,
        current: &str,
        baseline: &str,
        partitions: u64,
    ) -> Result<Self, AudienceError> {
        let delta = Self::create(engine)?;
        for partition in 0..partitions {
            // Equal keys hash alike, so each partition holds all of a key's rows on both sides.
            let part = |sql: &str| partition_sql(sql, partitions, partition);
            engine
                .execute_batch(&format!(
                    "INSERT INTO {table} \
                     SELECT DISTINCT coalesce(c.k, b.k) AS k, c.k IS NULL AS gone \
                     FROM ({current}) AS c FULL OUTER JOIN ({baseline}) AS b ON c.k = b.k \
                     WHERE c.k IS NULL OR b.k IS NULL",
                    table = delta.table,
                    current = part(current),
                    baseline = part(baseline),
                ))
                .map_err(engine_error("comparing keys"))?;
        }
        delta.counted()
    }

    /// The keys that entered, sorted by byte order.
    pub fn entered_keys(&self) -> Result<StringArray, AudienceError> {
        sorted_keys(self.engine, &self.query(false))
    }

    /// The keys that left, sorted by byte order.
    pub fn left_keys(&self) -> Result<StringArray, AudienceError> {
        sorted_keys(self.engine, &self.query(true))
    }

    /// The keys that entered (`gone` false) or left, listed or left in the engine with this delta.
    pub fn list(&self, gone: bool, listing: Listing) -> Result<KeyList, AudienceError> {
        Ok(match listing {
            Listing::Listed => KeyList::Listed(sorted_keys(self.engine, &self.query(gone))?),
            Listing::InEngine => KeyList::InEngine {
                count: if gone { self.left } else { self.entered },
                query: sorted_query(&self.query(gone)),
            },
        })
    }

    fn query(&self, gone: bool) -> String {
        format!("SELECT k FROM {} WHERE gone = {gone}", self.table)
    }
}

impl Drop for Delta<'_> {
    fn drop(&mut self) {
        drop_table(self.engine, &self.table);
    }
}

/// Whether a plan's keys are brought into ldsync's memory or left in the set engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Listed in memory: what `plan` shows, and what a sync of a standard segment (at most 15,000 targets) sends.
    Listed,
    /// Left in the engine: a sync of a big segment, whose delta can be the whole audience, streams them into its
    /// journal batch by batch.
    InEngine,
}

/// Keys sorted by byte order, listed in ldsync's memory or left in the set engine.
#[derive(Debug, Clone)]
pub enum KeyList {
    Listed(StringArray),
    /// `count` keys that `query` gives, over a temporary table of the engine that outlives this list.
    InEngine {
        count: u64,
        query: String,
    },
}

impl KeyList {
    pub fn empty() -> KeyList {
        KeyList::Listed(StringArray::from(Vec::<&str>::new()))
    }

    pub fn len(&self) -> usize {
        match self {
            KeyList::Listed(keys) => keys.len(),
            KeyList::InEngine { count, .. } => *count as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The listed keys; none when they were left in the engine.
    pub fn iter(&self) -> impl Iterator<Item = Option<&str>> {
        match self {
            KeyList::Listed(keys) => Some(keys.iter()),
            KeyList::InEngine { .. } => None,
        }
        .into_iter()
        .flatten()
    }
}

/// A prepared read of a [`KeyList`]'s keys, in order, from memory or from the set engine.
pub struct KeyRead<'k> {
    list: &'k KeyList,
    statement: Option<duckdb::Statement<'k>>,
}

impl<'k> KeyRead<'k> {
    pub fn prepare(engine: &'k Connection, list: &'k KeyList) -> Result<Self, AudienceError> {
        let statement = match list {
            KeyList::Listed(_) => None,
            KeyList::InEngine { query, .. } => Some(
                engine
                    .prepare(query)
                    .map_err(engine_error("reading the planned keys"))?,
            ),
        };
        Ok(KeyRead { list, statement })
    }

    /// The keys, one owned string at a time; from the engine, one Arrow batch at a time. The engine's query starts
    /// at the first key asked for, and one connection holds one open query: read lists one after the other, each
    /// to its end (`Iterator::chain`).
    pub fn keys(&mut self) -> Keys<'_> {
        let Some(statement) = &mut self.statement else {
            return Box::new(self.list.iter().flatten().map(|key| Ok(key.to_string())));
        };
        Box::new(
            std::iter::once(statement).flat_map(|statement| -> Keys<'_> {
                let doing = "reading the planned keys";
                match statement.stream_arrow([]) {
                    Ok(batches) => {
                        Box::new(batches.flat_map(move |batch| batch_keys(batch, doing)))
                    }
                    Err(e) => Box::new(std::iter::once(Err(engine_error(doing)(e)))),
                }
            }),
        )
    }
}

/// Keys read in order, from memory or from the set engine.
pub type Keys<'k> = Box<dyn Iterator<Item = Result<String, AudienceError>> + 'k>;

/// The keys of one Arrow batch of a one-column result, as owned strings.
fn batch_keys(
    batch: duckdb::Result<RecordBatch>,
    doing: &'static str,
) -> Vec<Result<String, AudienceError>> {
    let keys = batch.map_err(engine_error(doing)).and_then(|batch| {
        Ok(text_values(batch.column(0))?
            .flatten()
            .map(|k| Ok(k.to_string()))
            .collect())
    });
    keys.unwrap_or_else(|e| vec![Err(e)])
}

/// The distinct keys of `keys` that `of` holds too, sorted by byte order.
pub fn held_by(
    engine: &Connection,
    keys: KeySource<'_>,
    of: KeySource<'_>,
) -> Result<StringArray, AudienceError> {
    sorted_keys(
        engine,
        &format!(
            "SELECT DISTINCT a.k FROM ({}) AS a SEMI JOIN ({}) AS b ON a.k = b.k",
            keys.sql()?,
            of.sql()?
        ),
    )
}

/// The keys of the one-column `query`, sorted by byte order, as one array.
fn sorted_keys(engine: &Connection, query: &str) -> Result<StringArray, AudienceError> {
    let doing = "reading keys";
    let mut statement = engine
        .prepare(&sorted_query(query))
        .map_err(engine_error(doing))?;
    let mut keys = StringBuilder::new();
    for batch in statement.stream_arrow([]).map_err(engine_error(doing))? {
        let batch = batch.map_err(engine_error(doing))?;
        keys.extend(text_values(batch.column(0))?);
    }
    Ok(keys.finish())
}

/// The one-column `query`, sorted by byte order.
fn sorted_query(query: &str) -> String {
    format!("SELECT k FROM ({query}) ORDER BY k COLLATE c")
}

/// The values of a text column, whichever of Arrow's string types it arrived as.
fn text_values(
    column: &ArrayRef,
) -> Result<Box<dyn Iterator<Item = Option<&str>> + '_>, AudienceError> {
    Ok(match column.data_type() {
        DataType::Utf8 => Box::new(column.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(column.as_string::<i64>().iter()),
        DataType::Utf8View => Box::new(column.as_string_view().iter()),
        other => return Err(KeyError::NotText(other.clone()).into()),
    })
}

/// Runs `sql` and maps each row.
fn query_rows<T>(
    engine: &Connection,
    sql: &str,
    doing: &'static str,
    map: impl FnMut(&duckdb::Row<'_>) -> duckdb::Result<T>,
) -> Result<Vec<T>, AudienceError> {
    let mut statement = engine.prepare(sql).map_err(engine_error(doing))?;
    let rows = statement.query_map([], map).map_err(engine_error(doing))?;
    rows.collect::<Result<_, _>>().map_err(engine_error(doing))
}

/// Rejected row `row` (from 1, in the model's order), with its rejection code and its key as an example shows it.
fn rejected_row(row: u64, code: u8, value: Option<String>) -> RejectedRow {
    RejectedRow {
        row,
        reason: Rejection::from_code(code).unwrap_or(Rejection::Null),
        value: value.as_deref().map(shorten),
    }
}

fn shorten(key: &str) -> String {
    const SHOWN: usize = 40;
    match key.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &key[..cut]),
        None => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EngineSettings, WarehouseConfig};
    use std::collections::BTreeSet;

    /// An in-memory duckdb warehouse whose table `m` holds `keys`, in order, and whose `startup_sql` ran first.
    fn warehouse_with(keys: &[Option<&str>], startup_sql: &[&str]) -> Warehouse {
        let mut statements: Vec<String> = startup_sql.iter().map(|s| s.to_string()).collect();
        statements.push("CREATE TABLE m (k VARCHAR)".into());
        let config = WarehouseConfig::DuckDb {
            database: None,
            startup_sql: statements,
        };
        let warehouse =
            Warehouse::open(&config, &EngineSettings::default(), Path::new(".")).unwrap();
        {
            let mut appender = warehouse.engine().unwrap().appender("m").unwrap();
            for key in keys {
                appender.append_row([key]).unwrap();
            }
        }
        warehouse
    }

    fn load<'w>(
        warehouse: &'w Warehouse,
        policy: InvalidKeys,
    ) -> Result<ModelKeys<'w>, AudienceError> {
        let sql = "SELECT k FROM m";
        let key = warehouse.key_column(sql, "k").unwrap();
        ModelKeys::load(warehouse, sql, &key, policy, &ProgressBar::hidden(), None)
    }

    fn strings(keys: &StringArray) -> Vec<String> {
        keys.iter().map(|k| k.unwrap().to_string()).collect()
    }

    #[test]
    fn rejected_rows_are_counted_with_examples_in_model_order() {
        let long = "x".repeat(257);
        let exactly = "y".repeat(256);
        let accents = "é".repeat(200); // 400 bytes, 200 characters: not too long
        let warehouse = warehouse_with(
            &[
                Some("ok"),
                None,
                Some("  "),
                Some(&long),
                Some(""),
                Some(&exactly),
                Some(&accents),
                Some("\u{3000}\t\u{85}"),
                Some(" padded "),
                Some("ok"),
            ],
            &[],
        );
        let model = load(&warehouse, InvalidKeys::Skip).unwrap();
        let delta = Delta::between(
            warehouse.engine().unwrap(),
            KeySource::Model(&model),
            KeySource::Nothing,
        )
        .unwrap();
        let stats = model.stats(&delta, 0);
        assert_eq!((stats.rows, stats.distinct, stats.duplicates), (10, 4, 1));
        let r = &stats.rejected;
        assert_eq!((r.null, r.blank, r.too_long), (1, 3, 1));
        let examples: Vec<(u64, Rejection)> =
            r.examples.iter().map(|e| (e.row, e.reason)).collect();
        assert_eq!(
            examples,
            [
                (2, Rejection::Null),
                (3, Rejection::Blank),
                (4, Rejection::TooLong),
                (5, Rejection::Blank),
                (8, Rejection::Blank)
            ]
        );
        assert_eq!(r.examples[0].value, None);
        assert_eq!(
            r.examples[2].value.as_deref(),
            Some(&*format!("{}…", "x".repeat(40)))
        );
        assert_eq!(
            strings(&delta.entered_keys().unwrap()),
            [" padded ", "ok", &exactly, &accents]
        );
    }

    #[test]
    fn a_failing_policy_names_the_first_rejected_row() {
        let warehouse = warehouse_with(&[Some("a"), Some("b"), Some("c"), Some(" "), None], &[]);
        let err = load(&warehouse, InvalidKeys::Fail).err().unwrap();
        assert_eq!(
            err.to_string(),
            "row 4 of the model has a blank key (\" \"); fix the model or set invalid_keys: skip to leave such rows out"
        );
    }

    #[test]
    fn keys_compare_byte_by_byte_whatever_the_default_collation() {
        let warehouse = warehouse_with(
            &[Some("b"), Some("A"), Some("a"), Some("é"), Some("B")],
            &["SET default_collation = 'nocase'"],
        );
        let model = load(&warehouse, InvalidKeys::Fail).unwrap();
        let members = StringArray::from(vec!["a", "Z", "a"]);
        let members = KeyTable::load(warehouse.engine().unwrap(), &members).unwrap();
        assert_eq!(members.count, 2, "a repeated member counts once");
        let delta = Delta::between(
            warehouse.engine().unwrap(),
            KeySource::Model(&model),
            KeySource::Table(&members),
        )
        .unwrap();
        assert_eq!(
            strings(&delta.entered_keys().unwrap()),
            ["A", "B", "b", "é"]
        );
        assert_eq!(strings(&delta.left_keys().unwrap()), ["Z"]);
    }

    #[test]
    fn a_snapshot_holds_the_distinct_keys_sorted() {
        let warehouse = warehouse_with(
            &[Some("b"), Some("a"), None, Some("b"), Some("é"), Some("B")],
            &[],
        );
        let model = load(&warehouse, InvalidKeys::Skip).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.parquet");
        assert_eq!(model.write_snapshot(&path).unwrap(), 4);
        // Read back by DuckDB, in the file's order.
        let engine = warehouse.engine().unwrap();
        let columns = query_rows(
            engine,
            &format!("DESCRIBE SELECT * FROM read_parquet('{}')", path.display()),
            "",
            |row| row.get::<_, String>(0),
        )
        .unwrap();
        assert_eq!(columns, ["context_key"]);
        let keys = query_rows(
            engine,
            &format!("SELECT context_key FROM read_parquet('{}')", path.display()),
            "",
            |row| row.get::<_, String>(0),
        )
        .unwrap();
        assert_eq!(keys, ["B", "a", "b", "é"]);
        // And it reads back as a baseline.
        let delta = Delta::between(
            warehouse.engine().unwrap(),
            KeySource::Model(&model),
            KeySource::Snapshot(&path),
        )
        .unwrap();
        assert_eq!((delta.entered, delta.left), (0, 0));
    }

    #[test]
    fn large_sets_are_compared_in_partitions_of_the_memory_limit() {
        let warehouse = warehouse_with(&[], &["SET memory_limit = '256MB'"]);
        let engine = warehouse.engine().unwrap();
        assert_eq!(partitions_for(engine, 1_000_000).unwrap(), 1);
        assert_eq!(partitions_for(engine, 10_000_000).unwrap(), 1);
        assert_eq!(partitions_for(engine, 100_000_000).unwrap(), 10);
    }

    #[test]
    fn repeats_are_dropped_the_same_in_partitions() {
        let keys: Vec<String> = (0..500).map(|i| format!("k{}", i % 170)).collect();
        let rows: Vec<Option<&str>> = keys.iter().map(|k| Some(k.as_str())).collect();
        let warehouse = warehouse_with(&rows, &[]);
        let model = load(&warehouse, InvalidKeys::Fail).unwrap();
        let expected: Vec<String> = keys
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for partitions in [1, 3] {
            let distinct = Distinct::of(
                warehouse.engine().unwrap(),
                KeySource::Model(&model),
                partitions,
            )
            .unwrap();
            let keys = sorted_keys(warehouse.engine().unwrap(), distinct.sql()).unwrap();
            assert_eq!(strings(&keys), expected, "{partitions} partitions");
        }
    }

    #[test]
    fn lists_left_in_the_engine_are_read_one_after_the_other() {
        let warehouse = warehouse_with(&[Some("d"), Some("a"), Some("c"), Some("d")], &[]);
        let engine = warehouse.engine().unwrap();
        let model = load(&warehouse, InvalidKeys::Fail).unwrap();
        let previous = KeyTable::load(engine, &StringArray::from(vec!["a", "b", "z"])).unwrap();
        let delta = Delta::between(
            engine,
            KeySource::Model(&model),
            KeySource::Table(&previous),
        )
        .unwrap();
        let entered = delta.list(false, Listing::InEngine).unwrap();
        let left = delta.list(true, Listing::InEngine).unwrap();
        assert_eq!((entered.len(), left.len()), (2, 2));
        assert_eq!(entered.iter().count(), 0, "nothing is held in memory");
        let mut entered = KeyRead::prepare(engine, &entered).unwrap();
        let mut left = KeyRead::prepare(engine, &left).unwrap();
        let keys: Vec<String> = entered
            .keys()
            .chain(left.keys())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(keys, ["c", "d", "b", "z"]);
    }

    fn key_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "[a-c]{0,3}",      // short keys that collide often
            "user-[0-9]{1,4}", // realistic keys
            "\\PC{1,6}",       // any printable unicode
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn the_delta_is_the_set_difference(
            model in proptest::collection::vec(key_strategy(), 0..120),
            previous in proptest::collection::btree_set(key_strategy(), 0..120),
            through_snapshot in proptest::bool::ANY,
            partitions in 1u64..4,
        ) {
            let rows: Vec<Option<&str>> = model.iter().map(|k| Some(k.as_str())).collect();
            let warehouse = warehouse_with(&rows, &[]);
            let model_keys = load(&warehouse, InvalidKeys::Skip).unwrap();
            let engine = warehouse.engine().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let snapshot = dir.path().join("previous.parquet");
            let previous_array = StringArray::from_iter_values(previous.iter());
            let table = KeyTable::load(engine, &previous_array).unwrap();
            let baseline = if through_snapshot {
                let file = std::fs::File::create(&snapshot).unwrap();
                crate::state::write_parquet_keys(file, previous.iter().map(String::as_str)).unwrap();
                KeySource::Snapshot(&snapshot)
            } else {
                KeySource::Table(&table)
            };
            let delta = Delta::in_partitions(
                engine,
                &KeySource::Model(&model_keys).sql().unwrap(),
                &baseline.sql().unwrap(),
                partitions,
            )
            .unwrap();

            let valid: BTreeSet<String> = model.iter().filter(|k| !k.trim().is_empty()).cloned().collect();
            let entered: Vec<String> = valid.difference(&previous).cloned().collect();
            let left: Vec<String> = previous.difference(&valid).cloned().collect();
            let held: Vec<String> = previous.intersection(&valid).cloned().collect();
            proptest::prop_assert_eq!(strings(&delta.entered_keys().unwrap()), entered);
            proptest::prop_assert_eq!(strings(&delta.left_keys().unwrap()), left);
            proptest::prop_assert_eq!(strings(&held_by(engine, baseline, KeySource::Model(&model_keys)).unwrap()), held);
            let stats = model_keys.stats(&delta, previous.len() as u64);
            proptest::prop_assert_eq!(stats.distinct, valid.len() as u64);
            proptest::prop_assert_eq!(stats.rows, model.len() as u64);
            proptest::prop_assert_eq!(stats.duplicates + stats.distinct + stats.rejected.total(), model.len() as u64);
        }
    }
}
