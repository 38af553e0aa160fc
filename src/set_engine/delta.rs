//! Comparing key sets in the set engine: a [`Delta`] holds the keys that entered and left between a baseline and
//! the model, [`KeyList`]s name them (listed, or left in the engine for a big segment's millions), and [`KeyRead`]
//! streams them back out in order, a batch at a time.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use duckdb::Connection;

use super::model::{RowsHeld, key_batch};
use super::*;

/// Keys loaded into a temporary table of the engine (a segment's members, say), distinct, dropped with this value.
pub struct KeyTable<'e> {
    pub(super) engine: &'e Connection,
    pub(super) name: String,
    /// How many distinct keys it holds.
    pub count: u64,
}

impl<'e> KeyTable<'e> {
    /// Loads the distinct `keys` into a new temporary table.
    pub fn load(engine: &'e Connection, keys: &StringArray) -> Result<Self, SetEngineError> {
        let mut table = KeyTable::start(engine)?;
        table.append(keys)?;
        table.finish()
    }

    /// A new, empty temporary table, to [`append`](Self::append) keys to chunk by chunk (millions of keys read
    /// from a file, say) and then [`finish`](Self::finish).
    pub fn start(engine: &'e Connection) -> Result<Self, SetEngineError> {
        let table = KeyTable {
            engine,
            name: table_name("keys"),
            count: 0,
        };
        engine
            .execute_batch(&format!(
                "CREATE OR REPLACE TEMP TABLE {} (k VARCHAR COLLATE c)",
                table.name
            ))
            .map_err(engine_error(LOADING_KEYS))?;
        Ok(table)
    }

    /// Adds `keys` (repeats allowed) to a table [`start`](Self::start) made.
    pub fn append(&mut self, keys: &StringArray) -> Result<(), SetEngineError> {
        let mut appender = self
            .engine
            .appender_to_catalog_and_db(&self.name, "temp", "main")
            .map_err(engine_error(LOADING_KEYS))?;
        let array: ArrayRef = Arc::new(keys.clone());
        appender
            .append_record_batch(key_batch(&array)?)
            .and_then(|()| appender.flush())
            .map_err(engine_error(LOADING_KEYS))
    }

    /// Keeps each key once, and counts them.
    pub fn finish(mut self) -> Result<Self, SetEngineError> {
        let distinct = format!("SELECT DISTINCT k FROM {}", self.name);
        self.engine
            .execute_batch(&format!(
                "CREATE OR REPLACE TEMP TABLE {} AS {distinct}",
                self.name
            ))
            .map_err(engine_error(LOADING_KEYS))?;
        self.count = query_rows(
            self.engine,
            &format!("SELECT count(*) FROM {}", self.name),
            LOADING_KEYS,
            |row| row.get::<_, u64>(0),
        )?
        .into_iter()
        .sum();
        Ok(self)
    }
}

const LOADING_KEYS: &str = "taking in a list of keys";

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
    /// The set engine holding the delta's table.
    pub fn engine(&self) -> &'e Connection {
        self.engine
    }

    /// Compares `current` with `baseline` in one full outer join; `baseline` must be distinct, `current` may
    /// repeat keys.
    pub fn between(
        engine: &'e Connection,
        current: KeySource<'_>,
        baseline: KeySource<'_>,
    ) -> Result<Self, SetEngineError> {
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
    ) -> Result<Self, SetEngineError> {
        let RowsHeld::Warehouse(rows) = &model.held else {
            return Err(SetEngineError::InWarehouse {
                doing: "compared in PostgreSQL while they are in the set engine",
            });
        };
        let delta = Self::create(model.engine)?;
        rows.delta_into(model.engine, &delta.table, snapshot_table)?;
        delta.counted()
    }

    /// An empty delta table.
    fn create(engine: &'e Connection) -> Result<Self, SetEngineError> {
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
    fn counted(mut self) -> Result<Self, SetEngineError> {
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
    pub(super) fn in_partitions(
        engine: &'e Connection,
        current: &str,
        baseline: &str,
        partitions: u64,
    ) -> Result<Self, SetEngineError> {
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
    pub fn entered_keys(&self) -> Result<StringArray, SetEngineError> {
        sorted_keys(self.engine, &self.query(Direction::Entered))
    }

    /// The keys that left, sorted by byte order.
    pub fn left_keys(&self) -> Result<StringArray, SetEngineError> {
        sorted_keys(self.engine, &self.query(Direction::Left))
    }

    /// The keys that moved in `direction`, listed or left in the engine with this delta.
    pub fn list(&self, direction: Direction, listing: Listing) -> Result<KeyList, SetEngineError> {
        Ok(match listing {
            Listing::Listed => KeyList::Listed(sorted_keys(self.engine, &self.query(direction))?),
            Listing::InEngine => KeyList::InEngine {
                count: match direction {
                    Direction::Entered => self.entered,
                    Direction::Left => self.left,
                },
                query: sorted_query(&self.query(direction)),
            },
        })
    }

    fn query(&self, direction: Direction) -> String {
        let gone = direction == Direction::Left;
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

/// The most bytes `key` takes as a line of a CSV file: quoted, its quotes doubled, and a newline.
pub fn csv_line_bytes(key: &str) -> u64 {
    (key.len() + key.matches('"').count() + 3) as u64
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

    /// The most bytes one of the keys takes as a line of a CSV file (see [`csv_line_bytes`]); 0 for no keys.
    pub fn longest_csv_line(&self, engine: &Connection) -> Result<u64, SetEngineError> {
        match self {
            KeyList::Listed(keys) => {
                Ok(keys.iter().flatten().map(csv_line_bytes).max().unwrap_or(0))
            }
            KeyList::InEngine { query, .. } => {
                let quotes = "length(k) - length(replace(k, '\"', ''))";
                let sql = format!(
                    "SELECT coalesce(max(strlen(k) + {quotes} + 3), 0)::UBIGINT FROM ({query})"
                );
                let longest = query_rows(engine, &sql, "measuring the keys", |row| {
                    row.get::<_, u64>(0)
                })?;
                Ok(longest.into_iter().max().unwrap_or(0))
            }
        }
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
    pub fn prepare(engine: &'k Connection, list: &'k KeyList) -> Result<Self, SetEngineError> {
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
pub type Keys<'k> = Box<dyn Iterator<Item = Result<String, SetEngineError>> + 'k>;

/// The keys of one Arrow batch of a one-column result, as owned strings.
fn batch_keys(
    batch: duckdb::Result<RecordBatch>,
    doing: &'static str,
) -> Vec<Result<String, SetEngineError>> {
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
) -> Result<StringArray, SetEngineError> {
    sorted_keys(
        engine,
        &format!(
            "SELECT DISTINCT a.k FROM ({}) AS a SEMI JOIN ({}) AS b ON a.k = b.k",
            keys.sql()?,
            of.sql()?
        ),
    )
}
