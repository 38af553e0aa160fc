//! The set engine: the set work of a plan, done by an embedded DuckDB. [`model`] runs a model and checks its
//! keys, [`delta`] compares key sets and reads the differences back, and [`in_warehouse`] leaves that work to
//! PostgreSQL when the warehouse and the state store are one database.
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
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use duckdb::Connection;

use crate::config::{InvalidKeys, MAX_KEY_CHARS, parse_size};
use crate::keys::{KeyError, KeyStats, RejectedRow, Rejection, Rejections};
use crate::state::{PgStore, PreparedSnapshot, StateError};
use crate::vocab::Direction;
use crate::vocab::ErrorClass;
use crate::warehouse::{
    KeyColumn, Warehouse, WarehouseError, quote_identifier, quote_literal, wrap_model,
};

/// How many rejected rows a report shows as examples.
const MAX_EXAMPLES: usize = 5;

/// Why the set work failed.
#[derive(Debug, thiserror::Error)]
pub enum SetEngineError {
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

impl SetEngineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SetEngineError::Warehouse(e) => e.class(),
            SetEngineError::Keys(_) => ErrorClass::Data,
            SetEngineError::State(e) => e.class(),
            SetEngineError::Engine { .. } | SetEngineError::InWarehouse { .. } => {
                ErrorClass::Internal
            }
        }
    }
}

mod delta;
mod fold;
mod in_warehouse;
mod model;

pub use delta::{Delta, KeyList, KeyRead, KeyTable, Keys, Listing, csv_line_bytes, held_by};
pub use fold::Fold;
use in_warehouse::WarehouseRows;
pub use model::ModelKeys;

fn engine_error(doing: &'static str) -> impl FnOnce(duckdb::Error) -> SetEngineError {
    move |source| SetEngineError::Engine { doing, source }
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
    /// The keys of a source but those of a [`KeyTable`].
    Without(&'a KeySource<'a>, &'a KeyTable<'a>),
    /// No keys at all.
    Nothing,
}

impl KeySource<'_> {
    /// A query giving the keys as one column `k`, compared byte by byte.
    fn sql(&self) -> Result<String, SetEngineError> {
        Ok(match self {
            KeySource::Model(model) => {
                format!(
                    "SELECT k FROM {} WHERE reason = 0",
                    model.engine_table("compared")?
                )
            }
            KeySource::Snapshot(path) => format!(
                "SELECT context_key COLLATE c AS k FROM {}",
                read_snapshot(path)
            ),
            KeySource::Table(table) => format!("SELECT k FROM {}", table.name),
            KeySource::Without(keys, left_out) => format!(
                "SELECT a.k FROM ({}) AS a ANTI JOIN {} AS b ON a.k = b.k",
                keys.sql()?,
                left_out.name
            ),
            KeySource::Nothing => "SELECT CAST(NULL AS VARCHAR) COLLATE c AS k WHERE false".into(),
        })
    }

    /// How many keys it gives (repeats included); at most that many for [`KeySource::Without`].
    fn len(&self, engine: &Connection) -> Result<u64, SetEngineError> {
        Ok(match self {
            KeySource::Without(keys, _) => keys.len(engine)?,
            KeySource::Model(model) => model.rows - model.rejected.total(),
            KeySource::Table(table) => table.count,
            KeySource::Nothing => 0,
            KeySource::Snapshot(path) => query_rows(
                engine,
                &format!("SELECT count(*)::UBIGINT FROM {}", read_snapshot(path)),
                "reading the snapshot's row count",
                |row| row.get::<_, u64>(0),
            )?
            .into_iter()
            .sum(),
        })
    }
}

/// The table function that reads the Parquet snapshot at `path`, that file alone: `read_parquet` takes its path as a
/// glob, so a directory named with `*`, `?` or `[` would match other files beside the snapshot too.
fn read_snapshot(path: &Path) -> String {
    format!(
        "read_single_parquet_file({})",
        quote_literal(&path.to_string_lossy())
    )
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
fn partitions_for(engine: &Connection, keys: u64) -> Result<u64, SetEngineError> {
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

/// The keys of the one-column `query`, sorted by byte order, as one array.
fn sorted_keys(engine: &Connection, query: &str) -> Result<StringArray, SetEngineError> {
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
) -> Result<Box<dyn Iterator<Item = Option<&str>> + '_>, SetEngineError> {
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
) -> Result<Vec<T>, SetEngineError> {
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
    use indicatif::ProgressBar;

    use super::model::Distinct;
    use super::*;
    use crate::config::{SetEngineSettings, Statement, WarehouseConfig};
    use std::collections::BTreeSet;

    /// An in-memory duckdb warehouse whose table `m` holds `keys`, in order, and whose `startup_sql` ran first.
    fn warehouse_with(keys: &[Option<&str>], startup_sql: &[&str]) -> Warehouse {
        let mut statements: Vec<Statement> =
            startup_sql.iter().map(|s| Statement::from(*s)).collect();
        statements.push("CREATE TABLE m (k VARCHAR)".into());
        let config = WarehouseConfig::DuckDb {
            database: None,
            startup_sql: statements,
        };
        let warehouse =
            Warehouse::open(&config, &SetEngineSettings::default(), Path::new(".")).unwrap();
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
    ) -> Result<ModelKeys<'w>, SetEngineError> {
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
    fn a_snapshot_holds_the_distinct_keys_sorted_but_those_left_out() {
        let warehouse = warehouse_with(
            &[Some("b"), Some("a"), None, Some("b"), Some("é"), Some("B")],
            &[],
        );
        let model = load(&warehouse, InvalidKeys::Skip).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.parquet");
        assert_eq!(
            model
                .write_snapshot(&path, &StringArray::from(vec!["b"]))
                .unwrap(),
            3
        );
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
        assert_eq!(
            snapshot_keys(engine, &path),
            ["B", "a", "é"],
            "the key left out is not written"
        );
        // And it reads back as a baseline.
        let delta = Delta::between(
            warehouse.engine().unwrap(),
            KeySource::Model(&model),
            KeySource::Snapshot(&path),
        )
        .unwrap();
        assert_eq!((delta.entered, delta.left), (1, 0));
    }

    /// The keys of the snapshot at `path`, in the file's order, as DuckDB reads them.
    fn snapshot_keys(engine: &Connection, path: &Path) -> Vec<String> {
        query_rows(
            engine,
            &format!("SELECT context_key FROM read_parquet('{}')", path.display()),
            "",
            |row| row.get::<_, String>(0),
        )
        .unwrap()
    }

    #[test]
    fn a_fold_adds_and_removes_acknowledged_keys_from_the_base_snapshot() {
        let warehouse = warehouse_with(&[], &[]);
        let engine = warehouse.engine().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.parquet");
        let file = std::fs::File::create(&base).unwrap();
        crate::state::write_parquet_keys(file, ["a", "b", "c"].into_iter()).unwrap();
        let mut fold = Fold::new(engine).unwrap();
        fold.take(&["d".to_string(), "a".to_string()], true)
            .unwrap();
        fold.take(&["b".to_string()], false).unwrap();
        let path = dir.path().join("folded.parquet");
        assert_eq!(fold.write_snapshot(Some(&base), &path).unwrap(), 3);
        assert_eq!(snapshot_keys(engine, &path), ["a", "c", "d"]);
        let without_base = dir.path().join("acknowledged.parquet");
        assert_eq!(fold.write_snapshot(None, &without_base).unwrap(), 2);
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
        let entered = delta.list(Direction::Entered, Listing::InEngine).unwrap();
        let left = delta.list(Direction::Left, Listing::InEngine).unwrap();
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
