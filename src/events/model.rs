//! An events sync's model: the query ldsync wraps around it (each configured column cast to text, the timestamp
//! turned into Unix milliseconds by the warehouse, rows before the lateness window left in the warehouse, the rest
//! in the order of their time and row id, so that the same rows always make the same batches), and each row of its
//! result checked and turned into the custom event LaunchDarkly's metric import API takes.
//!
//! Ordering the rows is a sort, and an embedded DuckDB warehouse sorts in ldsync's own memory: a backfill of many
//! millions of rows would hold the engine's whole memory limit and spill. So with DuckDB, when the window holds more
//! than [`ROWS_PER_READ`] rows, they are read in ranges of time of about that many rows each, one after the other,
//! each sorted on its own ([`EventQuery::stream`]): the same order, with the memory of one range's sort. The ranges
//! are cut at quantiles of the rows' times that one pass over the model finds; a PostgreSQL warehouse sorts on the
//! server and is read in one query.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::config::{EventSyncConfig, MAX_KEY_CHARS};
use crate::vocab::ErrorClass;
use crate::warehouse::{Column, Warehouse, WarehouseError, quote_identifier, wrap_model};

/// Above this many rows in the window, an embedded DuckDB warehouse's rows are read in ranges of time of about this
/// many rows each (see the module's documentation).
pub const ROWS_PER_READ: u64 = 1_000_000;

/// How finely the pass that cuts the ranges divides the rows' times: at most a thousandth of the rows lie between
/// two neighbouring quantiles, so ranges come within about that of [`ROWS_PER_READ`] rows up to a billion rows.
const TIME_QUANTILES: u64 = 1024;

/// Why an events model cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EventModelError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(
        "the model's result has no column `{column}` for {field} (its columns are: {}); return it under that name or \
         set {field}",
        available.join(", ")
    )]
    MissingColumn {
        field: &'static str,
        column: String,
        available: Vec<String>,
    },
    #[error(
        "the timestamp column `{column}` is {sql_type}; it must be a timestamp, a date, or an integer of Unix \
         milliseconds (cast it in the model)"
    )]
    TimestampType { column: String, sql_type: String },
    #[error(
        "row `{row_id}` is not a valid event: {problem} (set invalid_rows: skip to leave such rows out)"
    )]
    InvalidRow { row_id: String, problem: RowProblem },
}

impl EventModelError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EventModelError::Warehouse(e) => e.class(),
            _ => ErrorClass::Data,
        }
    }
}

/// What is wrong with a row that cannot become an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowProblem {
    NoRowId,
    NoEventKey,
    NoContextKey,
    ContextKeyTooLong,
    NoTimestamp,
    TimestampBefore1970,
    TimestampInFuture,
    ValueNotANumber,
    RepeatedRowId,
}

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RowProblem::NoRowId => "no row id",
            RowProblem::NoEventKey => "no event key",
            RowProblem::NoContextKey => "no context key of any configured kind",
            RowProblem::ContextKeyTooLong => "a context key longer than 256 characters",
            RowProblem::NoTimestamp => "no timestamp",
            RowProblem::TimestampBefore1970 => "a timestamp before 1970",
            RowProblem::TimestampInFuture => {
                "a timestamp more than max_future after the run's start"
            }
            RowProblem::ValueNotANumber => "a value that is not a number",
            RowProblem::RepeatedRowId => "a row id that another row of the model has too",
        })
    }
}

/// The SQL that reads an events model: `[event key, context keys…, Unix ms, value?, row id]`, all text.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// The columns read, as the `SELECT` list.
    outputs: String,
    /// The wrapped model, as the `FROM` clause.
    from: String,
    /// The timestamp in Unix milliseconds, as SQL over the wrapped model's columns.
    epoch_ms: String,
    /// The row id as text, as SQL over the wrapped model's columns.
    row_id: String,
    /// How many context kinds the rows carry, from the second column on.
    contexts: usize,
    has_value: bool,
}

impl EventQuery {
    /// Describes the model (without running it), finds each configured column, and checks the timestamp's type.
    pub fn prepare(
        warehouse: &Warehouse,
        sync: &EventSyncConfig,
        model_sql: &str,
    ) -> Result<EventQuery, EventModelError> {
        let columns = warehouse.describe(model_sql)?;
        let find = |field: &'static str, wanted: &str| find_column(&columns, field, wanted);
        let timestamp = find("timestamp_column", &sync.timestamp_column)?;
        let epoch_ms = match timestamp_class(&timestamp.sql_type) {
            Some(TimestampClass::Instant) => {
                warehouse.epoch_ms_sql(&quote_identifier(&timestamp.name))
            }
            Some(TimestampClass::UnixMillis) => quote_identifier(&timestamp.name),
            None => {
                return Err(EventModelError::TimestampType {
                    column: timestamp.name.clone(),
                    sql_type: timestamp.sql_type.clone(),
                });
            }
        };
        let mut text = vec![
            find("event_key_column", &sync.event_key_column)?
                .name
                .clone(),
        ];
        for context in &sync.contexts {
            text.push(find("contexts", &context.column)?.name.clone());
        }
        let epoch_column = text.len();
        if let Some(value) = &sync.value_column {
            text.push(find("value_column", value)?.name.clone());
        }
        text.push(find("row_id_column", &sync.row_id_column)?.name.clone());
        let mut outputs: Vec<String> = text
            .iter()
            .map(|name| format!("CAST({} AS TEXT)", quote_identifier(name)))
            .collect();
        outputs.insert(epoch_column, format!("CAST({epoch_ms} AS TEXT)"));
        let row_id = outputs.last().expect("the row id is always read").clone();
        Ok(EventQuery {
            outputs: outputs.join(", "),
            from: format!("{} AS ldsync_events", wrap_model(model_sql)),
            epoch_ms,
            row_id,
            contexts: sync.contexts.len(),
            has_value: sync.value_column.is_some(),
        })
    }

    /// Runs the query for the rows at or after `since_ms` (and those without a timestamp, which are reported; every
    /// row when `since_ms` is `None`) and hands `sink` their columns batch by batch. Rows come in the order of their
    /// time, then their row id: the same rows make the same batches (so the same payload IDs) in every run, and a
    /// run's acknowledged batches hold its earliest events. With an embedded DuckDB warehouse and more than
    /// [`ROWS_PER_READ`] rows, the rows are read in ranges of time, in order.
    pub fn stream<E: From<WarehouseError>>(
        &self,
        warehouse: &Warehouse,
        since_ms: Option<i64>,
        sink: impl FnMut(&[ArrayRef]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.stream_in_reads(warehouse, since_ms, Some(ROWS_PER_READ), sink)
    }

    /// [`EventQuery::stream`] with ranges of about `rows_per_read` rows, or in one read sorted whole when `None`
    /// (what the events benchmark compares with).
    pub fn stream_in_reads<E: From<WarehouseError>>(
        &self,
        warehouse: &Warehouse,
        since_ms: Option<i64>,
        rows_per_read: Option<u64>,
        mut sink: impl FnMut(&[ArrayRef]) -> Result<(), E>,
    ) -> Result<(), E> {
        let whole = TimeRange {
            from: since_ms,
            until: None,
        };
        let ranges = match rows_per_read {
            Some(rows) => self.time_ranges(warehouse, since_ms, rows)?,
            None => vec![whole],
        };
        for range in ranges {
            warehouse.stream_columns(&self.sql(range), &mut sink)?;
        }
        Ok(())
    }

    /// The ranges of time the rows at or after `since_ms` are read in: one (from `since_ms` on) unless the warehouse
    /// is embedded DuckDB and they are more than `rows_per_read`; then ranges of about that many rows, cut at
    /// quantiles of the rows' times. Ranges never split a millisecond, so one millisecond holding more rows than
    /// that is read whole.
    fn time_ranges(
        &self,
        warehouse: &Warehouse,
        since_ms: Option<i64>,
        rows_per_read: u64,
    ) -> Result<Vec<TimeRange>, WarehouseError> {
        let whole = TimeRange {
            from: since_ms,
            until: None,
        };
        let Some(conn) = warehouse.embedded_duckdb() else {
            return Ok(vec![whole]);
        };
        let (rows, quantiles) = self.time_quantiles(conn, whole)?;
        let reads = rows.div_ceil(rows_per_read.max(1));
        let mut cuts: Vec<i64> = (1..reads)
            .filter_map(|i| {
                let at = (i * TIME_QUANTILES / reads) as usize;
                quantiles.get(at.checked_sub(1)?).copied()
            })
            .filter(|&cut| since_ms.is_none_or(|since| cut > since))
            .collect();
        cuts.dedup();
        let mut ranges = Vec::with_capacity(cuts.len() + 1);
        let mut from = since_ms;
        for cut in cuts {
            ranges.push(TimeRange {
                from,
                until: Some(cut),
            });
            from = Some(cut);
        }
        ranges.push(TimeRange { from, until: None });
        Ok(ranges)
    }

    /// How many rows `range` holds, and the times (Unix ms, ascending) that cut them into [`TIME_QUANTILES`] parts
    /// (none when no row has a time), in one pass over the model that keeps a summary of the times, not the rows.
    fn time_quantiles(
        &self,
        conn: &duckdb::Connection,
        range: TimeRange,
    ) -> Result<(u64, Vec<i64>), WarehouseError> {
        let fractions: Vec<String> = (1..TIME_QUANTILES)
            .map(|i| (i as f64 / TIME_QUANTILES as f64).to_string())
            .collect();
        let sql = format!(
            "WITH summary AS (SELECT count(*) AS row_count, approx_quantile(TRY_CAST({} AS DOUBLE), [{}]) AS cuts \
             FROM {}{}) SELECT row_count, CAST(floor(unnest(cuts)) AS BIGINT) FROM summary",
            self.epoch_ms,
            fractions.join(", "),
            self.from,
            self.condition(range)
        );
        let mut stmt = conn.prepare(&sql).map_err(WarehouseError::Model)?;
        let mut rows = 0;
        let mut cuts = Vec::new();
        let mut answer = stmt.query([]).map_err(WarehouseError::Model)?;
        while let Some(row) = answer.next().map_err(WarehouseError::Model)? {
            rows = row.get::<_, i64>(0).map_err(WarehouseError::Model)?;
            cuts.extend(
                row.get::<_, Option<i64>>(1)
                    .map_err(WarehouseError::Model)?,
            );
        }
        cuts.sort_unstable();
        Ok((u64::try_from(rows).unwrap_or_default(), cuts))
    }

    /// The query for the rows of `range`, in the order of their time, then their row id.
    fn sql(&self, range: TimeRange) -> String {
        format!(
            "SELECT {} FROM {}{} ORDER BY {}, {}",
            self.outputs,
            self.from,
            self.condition(range),
            self.epoch_ms,
            self.row_id
        )
    }

    /// The `WHERE` clause that keeps the rows of `range` (none for every row); the last range, open at its end, has
    /// the rows without a time too.
    fn condition(&self, range: TimeRange) -> String {
        let epoch = &self.epoch_ms;
        let from = range.from.map(|from| format!("{epoch} >= {from}"));
        let condition = match (from, range.until) {
            (None, None) => return String::new(),
            (Some(from), None) => format!("{from} OR {epoch} IS NULL"),
            (None, Some(until)) => format!("{epoch} < {until}"),
            (Some(from), Some(until)) => format!("{from} AND {epoch} < {until}"),
        };
        format!(" WHERE {condition}")
    }

    /// The rows of one batch of the query's result.
    pub fn rows(&self, columns: &[ArrayRef]) -> Result<Rows, WarehouseError> {
        let text = |i: usize| as_text(&columns[i]);
        let at = 1 + self.contexts;
        Ok(Rows {
            event_key: text(0)?,
            contexts: (1..at).map(text).collect::<Result<_, _>>()?,
            epoch_ms: text(at)?,
            value: self.has_value.then(|| text(at + 1)).transpose()?,
            row_id: text(columns.len() - 1)?,
        })
    }
}

/// The rows whose time (Unix ms) is at or after `from` and before `until`; `None` leaves that end open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeRange {
    from: Option<i64>,
    until: Option<i64>,
}

/// A column of text as a plain string array, whichever string layout the warehouse produced.
fn as_text(column: &ArrayRef) -> Result<StringArray, WarehouseError> {
    let cast = arrow::compute::cast(column, &DataType::Utf8)
        .map_err(|e| WarehouseError::NotText(e.to_string()))?;
    Ok(cast.as_string::<i32>().clone())
}

/// One batch of an events model's rows, column by column.
pub struct Rows {
    event_key: StringArray,
    contexts: Vec<StringArray>,
    epoch_ms: StringArray,
    value: Option<StringArray>,
    row_id: StringArray,
}

/// A row that is a valid event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow<'a> {
    pub row_id: &'a str,
    pub event_key: &'a str,
    /// The key of each context kind the row has, by the kind's place in the sync's `contexts`.
    pub contexts: Vec<(usize, &'a str)>,
    pub at_ms: i64,
    pub value: Option<f64>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.row_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The row id of row `i`, or an empty string when it has none.
    pub fn row_id(&self, i: usize) -> &str {
        value(&self.row_id, i).unwrap_or_default()
    }

    /// Row `i` as an event, or what is wrong with it.
    pub fn event(&self, i: usize) -> Result<EventRow<'_>, RowProblem> {
        let row_id = value(&self.row_id, i).ok_or(RowProblem::NoRowId)?;
        let event_key = value(&self.event_key, i).ok_or(RowProblem::NoEventKey)?;
        let contexts: Vec<(usize, &str)> = self
            .contexts
            .iter()
            .enumerate()
            .filter_map(|(kind, keys)| value(keys, i).map(|key| (kind, key)))
            .collect();
        if contexts.is_empty() {
            return Err(RowProblem::NoContextKey);
        }
        if contexts
            .iter()
            .any(|(_, key)| key.chars().count() > MAX_KEY_CHARS)
        {
            return Err(RowProblem::ContextKeyTooLong);
        }
        let at_ms: i64 = value(&self.epoch_ms, i)
            .ok_or(RowProblem::NoTimestamp)?
            .parse()
            .map_err(|_| RowProblem::NoTimestamp)?;
        if at_ms < 0 {
            return Err(RowProblem::TimestampBefore1970);
        }
        let value = match self.value.as_ref().and_then(|values| value(values, i)) {
            None => None,
            Some(text) => Some(
                text.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or(RowProblem::ValueNotANumber)?,
            ),
        };
        Ok(EventRow {
            row_id,
            event_key,
            contexts,
            at_ms,
            value,
        })
    }
}

/// The value of row `i`, `None` when it is null or blank.
fn value(array: &StringArray, i: usize) -> Option<&str> {
    array
        .is_valid(i)
        .then(|| array.value(i))
        .filter(|text| !text.trim().is_empty())
}

/// A custom event as the metric import API takes it.
#[derive(Debug, Serialize)]
pub struct ImportEvent<'a> {
    kind: &'static str,
    key: &'a str,
    #[serde(rename = "creationDate")]
    creation_date: i64,
    #[serde(rename = "contextKeys")]
    context_keys: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "metricValue", skip_serializing_if = "Option::is_none")]
    metric_value: Option<f64>,
}

impl<'a> ImportEvent<'a> {
    /// The event of `row`, its context keys under the kinds of `sync`.
    pub fn of(row: &EventRow<'a>, sync: &'a EventSyncConfig) -> Self {
        ImportEvent {
            kind: "custom",
            key: row.event_key,
            creation_date: row.at_ms,
            context_keys: row
                .contexts
                .iter()
                .map(|&(kind, key)| (sync.contexts[kind].kind.as_str(), key))
                .collect(),
            metric_value: row.value,
        }
    }
}

enum TimestampClass {
    /// A point in time the warehouse converts to Unix milliseconds (a timestamp without a zone is taken as UTC).
    Instant,
    /// An integer already holding Unix milliseconds.
    UnixMillis,
}

/// Whether a column of `sql_type` (as DuckDB or PostgreSQL names it) can be an event's timestamp.
fn timestamp_class(sql_type: &str) -> Option<TimestampClass> {
    let upper = sql_type.to_ascii_uppercase();
    if upper.starts_with("TIMESTAMP") || upper == "DATE" {
        return Some(TimestampClass::Instant);
    }
    matches!(
        upper.as_str(),
        "BIGINT" | "INTEGER" | "HUGEINT" | "UBIGINT" | "UINTEGER" | "INT8" | "INT4"
    )
    .then_some(TimestampClass::UnixMillis)
}

/// The column of `columns` named `wanted`, or the error that names the setting `field` that asked for it.
fn find_column<'c>(
    columns: &'c [Column],
    field: &'static str,
    wanted: &str,
) -> Result<&'c Column, EventModelError> {
    crate::warehouse::find_column(columns, wanted).ok_or_else(|| EventModelError::MissingColumn {
        field,
        column: wanted.to_string(),
        available: columns.iter().map(|c| c.name.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{SetEngineSettings, Statement, WarehouseConfig};

    /// An in-memory DuckDB warehouse with 2,000 events in shuffled order: one a second, 500 of them in a single
    /// millisecond, 20 without a time.
    fn warehouse() -> Warehouse {
        let table = "CREATE TABLE e AS
            SELECT 'r' || i AS row_id, 'order' AS event_key, 'u' || (i % 7) AS user_id,
                   CASE WHEN i % 100 = 0 THEN NULL
                        WHEN i BETWEEN 1000 AND 1499 THEN TIMESTAMP '2026-01-01 12:00:00'
                        ELSE TIMESTAMP '2026-01-01' + to_seconds(i) END AS occurred_at
            FROM range(2000) r(i) ORDER BY hash(i)";
        let config = WarehouseConfig::DuckDb {
            database: None,
            startup_sql: vec![Statement::from(table)],
        };
        Warehouse::open(&config, &SetEngineSettings::default(), Path::new(".")).unwrap()
    }

    fn query(warehouse: &Warehouse) -> EventQuery {
        let sync: EventSyncConfig = serde_yaml_ng::from_str(
            "{name: orders, model: orders, contexts: {user: user_id}, timestamp_column: occurred_at}",
        )
        .unwrap();
        EventQuery::prepare(warehouse, &sync, "SELECT * FROM e").unwrap()
    }

    /// The row ids `ranges` read, in the order read.
    fn row_ids(
        warehouse: &Warehouse,
        query: &EventQuery,
        ranges: &[TimeRange],
    ) -> Vec<Vec<String>> {
        ranges
            .iter()
            .map(|&range| {
                let mut ids = Vec::new();
                warehouse
                    .stream_columns::<WarehouseError>(&query.sql(range), |columns| {
                        let rows = query.rows(columns)?;
                        ids.extend((0..rows.len()).map(|i| rows.row_id(i).to_string()));
                        Ok(())
                    })
                    .unwrap();
                ids
            })
            .collect()
    }

    #[test]
    fn rows_read_in_ranges_of_time_come_in_the_order_one_sorted_query_gives() {
        let warehouse = warehouse();
        let query = query(&warehouse);
        let since = Some(1_767_225_600_000 + 300_000); // 00:05 on 2026-01-01: rows 0–299 are before the window.
        for since in [None, since] {
            let whole = TimeRange {
                from: since,
                until: None,
            };
            let expected = row_ids(&warehouse, &query, &[whole]).concat();
            let ranges = query.time_ranges(&warehouse, since, 100).unwrap();
            let read = row_ids(&warehouse, &query, &ranges);
            assert_eq!(read.concat(), expected, "since {since:?}");
            assert!(
                ranges.len() >= 10,
                "{} ranges for since {since:?}",
                ranges.len()
            );
            assert_eq!(ranges[0].from, since);
            assert_eq!(ranges.last().unwrap().until, None);
            // The 500 rows of one millisecond are read together; every other range holds about 100 rows.
            let sizes: Vec<usize> = read.iter().map(Vec::len).collect();
            assert_eq!(sizes.iter().filter(|&&n| n > 150).count(), 1, "{sizes:?}");
            assert!(sizes.iter().any(|&n| n >= 500), "{sizes:?}");
        }
    }

    #[test]
    fn rows_no_more_than_one_read_holds_are_read_in_one_range() {
        let warehouse = warehouse();
        let query = query(&warehouse);
        let ranges = query.time_ranges(&warehouse, None, 2_000).unwrap();
        assert_eq!(
            ranges,
            [TimeRange {
                from: None,
                until: None
            }]
        );
        assert_eq!(row_ids(&warehouse, &query, &ranges)[0].len(), 2_000);
    }
}
