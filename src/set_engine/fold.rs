//! Folding changes LaunchDarkly acknowledged into a checkpoint's keys: what a segment holds after a run that did
//! not finish (refused, or abandoned by `--full`). The keys are gathered in a temporary table of the engine, a batch
//! at a time, and the folded set is written by DuckDB as the new snapshot, so a run of millions of keys is folded
//! without holding them.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use duckdb::Connection;

use super::model::write_sorted;
use super::*;

/// A checkpoint's keys with acknowledged changes folded in; its table is dropped with it.
pub struct Fold<'e> {
    engine: &'e Connection,
    /// `k`, and `held`: whether the segment now holds it (added) or not (removed).
    table: String,
}

impl<'e> Fold<'e> {
    /// An empty fold: nothing added, nothing removed.
    pub fn new(engine: &'e Connection) -> Result<Self, SetEngineError> {
        let fold = Fold {
            engine,
            table: table_name("fold"),
        };
        engine
            .execute_batch(&format!(
                "CREATE OR REPLACE TEMP TABLE {} (k VARCHAR COLLATE c, held BOOLEAN)",
                fold.table
            ))
            .map_err(engine_error("preparing to fold acknowledged keys"))?;
        Ok(fold)
    }

    /// Takes in keys the segment now holds (`held`), or no longer holds.
    pub fn take(&mut self, keys: &[String], held: bool) -> Result<(), SetEngineError> {
        let doing = "taking in acknowledged keys";
        let schema = Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("held", DataType::Boolean, false),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(keys)),
            Arc::new(BooleanArray::from(vec![held; keys.len()])),
        ];
        let batch = RecordBatch::try_new(Arc::new(schema), columns)
            .map_err(|e| WarehouseError::NotText(e.to_string()))?;
        let mut appender = self
            .engine
            .appender_to_catalog_and_db(&self.table, "temp", "main")
            .map_err(engine_error(doing))?;
        appender
            .append_record_batch(batch)
            .and_then(|()| appender.flush())
            .map_err(engine_error(doing))
    }

    /// Writes the keys of the snapshot at `base` (none: no keys) with the keys taken in added and removed, as a
    /// Parquet snapshot at `path`; returns how many.
    pub fn write_snapshot(&self, base: Option<&Path>, path: &Path) -> Result<u64, SetEngineError> {
        let base = base.map_or(KeySource::Nothing, KeySource::Snapshot).sql()?;
        let table = &self.table;
        // A run never adds and removes one key, so the order of the two is of no matter.
        let folded = format!(
            "SELECT k FROM ({base} UNION SELECT k FROM {table} WHERE held) \
             EXCEPT SELECT k FROM {table} WHERE NOT held"
        );
        write_sorted(self.engine, &folded, path)
    }
}

impl Drop for Fold<'_> {
    fn drop(&mut self) {
        drop_table(self.engine, &self.table);
    }
}
