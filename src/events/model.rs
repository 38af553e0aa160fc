//! An events sync's model: the query ldsync wraps around it (each configured column cast to text, the timestamp
//! turned into Unix milliseconds by the warehouse, rows before the lateness window left in the warehouse, the rest
//! in the order of their time and row id, so that the same rows always make the same batches), and each row of its
//! result checked and turned into the custom event LaunchDarkly's metric import API takes.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::config::{EventSyncConfig, MAX_KEY_CHARS};
use crate::vocab::ErrorClass;
use crate::warehouse::{Column, Warehouse, WarehouseError, quote_identifier, wrap_model};

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
    /// The wrapped model, without the window's condition.
    select: String,
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
            select: format!(
                "SELECT {} FROM {} AS ldsync_events",
                outputs.join(", "),
                wrap_model(model_sql)
            ),
            epoch_ms,
            row_id,
            contexts: sync.contexts.len(),
            has_value: sync.value_column.is_some(),
        })
    }

    /// The query for the rows at or after `since_ms` (and those without a timestamp, which are reported); every
    /// row when `since_ms` is `None`. Rows come in the order of their time, then their row id: the same rows make
    /// the same batches (so the same payload IDs) in every run, and a run's acknowledged batches hold its earliest
    /// events.
    pub fn sql(&self, since_ms: Option<i64>) -> String {
        let epoch = &self.epoch_ms;
        let window = since_ms.map_or(String::new(), |since| {
            format!(" WHERE {epoch} >= {since} OR {epoch} IS NULL")
        });
        format!("{}{window} ORDER BY {epoch}, {}", self.select, self.row_id)
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
