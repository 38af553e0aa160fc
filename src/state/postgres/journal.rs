//! The PostgreSQL store's run journals: a row of `journals` and a row of `journal_batches` a batch, written in one
//! transaction before the first request; each acknowledgement or refusal is an update committed before the next
//! batch is sent.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::PathBuf;

use sqlx::{AssertSqlSafe, PgPool};

use super::{Extra, PgStore, StoreCallError};
use crate::pg::Fed;
use crate::state::journal::{
    Journal, JournalBatch, JournalError, JournalHeader, Refusal, Submission, check_header,
};
use crate::state::{JournalPlace, StateError};

/// Journal batches inserted by one statement: at most this many, and no more once they hold [`INSERT_BYTES`] (a
/// big segment's import batch holds up to a million keys).
const INSERT_BATCHES: usize = 500;
const INSERT_BYTES: usize = 16 << 20;

/// How many rows a journal write must change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Exactly its row: none means the journal is not the run's.
    One,
    /// Whatever is there (closing a journal that the run's commit may have deleted already).
    AnyNumber,
}

/// A journal as its rows hold it.
struct JournalRows {
    pub header: String,
    /// What each batch carries, in batch order.
    pub units: Vec<u64>,
    pub acknowledged: BTreeSet<usize>,
    /// Each submitted batch's [`Submission`], as JSON.
    pub submissions: BTreeMap<usize, String>,
    pub refusal: Option<String>,
}

impl PgStore {
    /// Writes a run's journal, whole, in one transaction: its header, then the batches `batches` yields, each
    /// with what it carries. An error from `batches` rolls it back.
    fn insert_journal<E: From<StateError>>(
        &self,
        sync: &str,
        run_id: &str,
        header: String,
        batches: impl Iterator<Item = Result<(u64, String), E>>,
    ) -> Result<(), E> {
        let (sync_name, run) = (sync.to_string(), run_id.to_string());
        let tables = self.clone();
        let write = move |pool: PgPool, mut fed: Fed<(u64, String)>| async move {
            let mut tx = pool.begin().await?;
            tables.fence(&mut tx, &sync_name).await?;
            let journals = tables.table("journals");
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {journals} WHERE sync = $1"
            )))
            .bind(&sync_name)
            .execute(&mut *tx)
            .await?;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {journals} (sync, run_id, header) VALUES ($1, $2, $3::jsonb)"
            )))
            .bind(&sync_name)
            .bind(&run)
            .bind(header)
            .execute(&mut *tx)
            .await?;
            let insert = format!(
                "INSERT INTO {} (sync, batch_index, units, batch) \
                 SELECT $1, i, u, b::jsonb FROM UNNEST($2::int4[], $3::int8[], $4::text[]) AS t(i, u, b)",
                tables.table("journal_batches")
            );
            let mut index = 0i32;
            loop {
                let (mut indices, mut units, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
                let mut bytes = 0;
                while bodies.len() < INSERT_BATCHES && bytes < INSERT_BYTES {
                    let Some((carried, body)) = fed.take()? else {
                        break;
                    };
                    indices.push(index);
                    units.push(carried as i64);
                    bytes += body.len();
                    bodies.push(body);
                    index += 1;
                }
                if bodies.is_empty() {
                    break;
                }
                sqlx::query(AssertSqlSafe(insert.clone()))
                    .bind(&sync_name)
                    .bind(indices)
                    .bind(units)
                    .bind(bodies)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, StoreCallError>(())
        };
        self.feed("write the run journal", write, batches)
    }

    /// The sync's open journal, if a run left one: its header, what each batch carries, which were acknowledged
    /// and LaunchDarkly's refusal.
    fn journal_rows(&self, sync: &str) -> Result<Option<JournalRows>, StateError> {
        let header_sql = format!(
            "SELECT header::text, refusal::text FROM {} WHERE sync = $1",
            self.table("journals")
        );
        let batches_sql = format!(
            "SELECT batch_index, units, acknowledged_at IS NOT NULL, submission::text FROM {} \
             WHERE sync = $1 ORDER BY batch_index",
            self.table("journal_batches")
        );
        let sync_name = sync.to_string();
        let rows = self.call("read the run journal", move |pool| async move {
            let mut tx = pool.begin().await?;
            let header: Option<(String, Option<String>)> =
                sqlx::query_as(AssertSqlSafe(header_sql))
                    .bind(&sync_name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((header, refusal)) = header else {
                return Ok::<_, StoreCallError>(None);
            };
            let batches: Vec<(i32, i64, bool, Option<String>)> =
                sqlx::query_as(AssertSqlSafe(batches_sql))
                    .bind(&sync_name)
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(Some((header, refusal, batches)))
        })?;
        let Some((header, refusal, batches)) = rows else {
            return Ok(None);
        };
        let mut units = Vec::with_capacity(batches.len());
        let mut acknowledged = BTreeSet::new();
        let mut submissions = BTreeMap::new();
        for (position, (index, carried, acked, submitted)) in batches.into_iter().enumerate() {
            if usize::try_from(index).ok() != Some(position) {
                return Err(StateError::Damaged {
                    path: PathBuf::from(format!("{} journal_batches[{sync}]", self.location())),
                    problem: format!("batch {position} is missing"),
                });
            }
            units.push(carried.max(0) as u64);
            if acked {
                acknowledged.insert(position);
            }
            if let Some(submitted) = submitted {
                submissions.insert(position, submitted);
            }
        }
        Ok(Some(JournalRows {
            header,
            units,
            acknowledged,
            submissions,
            refusal,
        }))
    }

    /// Batch `index` of run `run`'s journal of `sync`, as JSON.
    fn journal_batch(
        &self,
        sync: &str,
        run: &str,
        index: usize,
    ) -> Result<Option<String>, StateError> {
        let select = format!(
            "SELECT b.batch::text FROM {} b JOIN {} j USING (sync) \
             WHERE b.sync = $1 AND j.run_id = $2 AND b.batch_index = $3",
            self.table("journal_batches"),
            self.table("journals")
        );
        let (sync_name, run) = (sync.to_string(), run.to_string());
        let batch: Option<(String,)> =
            self.call("read the run journal", move |pool| async move {
                sqlx::query_as(AssertSqlSafe(select))
                    .bind(sync_name)
                    .bind(run)
                    .bind(index as i32)
                    .fetch_optional(&pool)
                    .await
            })?;
        Ok(batch.map(|(batch,)| batch))
    }

    /// Records, committed, that LaunchDarkly acknowledged batch `index` of run `run`'s journal of `sync`.
    fn acknowledge(&self, sync: &str, run: &str, index: usize) -> Result<(), StateError> {
        let update = format!(
            "UPDATE {} b SET acknowledged_at = now() FROM {} j \
             WHERE b.sync = $1 AND j.sync = b.sync AND j.run_id = $2 AND b.batch_index = $3",
            self.table("journal_batches"),
            self.table("journals")
        );
        let index = Extra::Index(index as i32);
        self.write_journal_rows(
            "record an acknowledgement",
            update,
            sync,
            run,
            index,
            Rows::One,
        )
    }

    /// Records, committed, that LaunchDarkly took a batch of run `run`'s journal of `sync` in as an import (the
    /// [`Submission`] as JSON, which names the batch).
    fn submit(&self, sync: &str, run: &str, submission: String) -> Result<(), StateError> {
        let update = format!(
            "UPDATE {} b SET submission = $3::jsonb FROM {} j WHERE b.sync = $1 AND j.sync = b.sync \
             AND j.run_id = $2 AND b.batch_index = ($3::jsonb ->> 'index')::integer",
            self.table("journal_batches"),
            self.table("journals")
        );
        let submission = Extra::Text(submission);
        self.write_journal_rows("record an import", update, sync, run, submission, Rows::One)
    }

    /// Records, committed, LaunchDarkly's refusal (as JSON) of a batch of run `run`'s journal of `sync`.
    fn refuse(&self, sync: &str, run: &str, refusal: String) -> Result<(), StateError> {
        let update = format!(
            "UPDATE {} SET refusal = $3::jsonb WHERE sync = $1 AND run_id = $2",
            self.table("journals")
        );
        let refusal = Extra::Text(refusal);
        self.write_journal_rows("record a refusal", update, sync, run, refusal, Rows::One)
    }

    /// Deletes run `run`'s journal of `sync` (its batches go with it), if the run's commit has not already.
    fn close_journal(&self, sync: &str, run: &str) -> Result<(), StateError> {
        let delete = format!(
            "DELETE FROM {} WHERE sync = $1 AND run_id = $2",
            self.table("journals")
        );
        let rows = Rows::AnyNumber;
        self.write_journal_rows(
            "remove the run journal",
            delete,
            sync,
            run,
            Extra::Nothing,
            rows,
        )
    }

    /// Runs `sql` on run `run`'s journal rows of `sync` (`$1` the sync, `$2` the run, `$3` what `extra` holds),
    /// fenced (see [`PgStore::fence`]), in one transaction that fails unless it changed the `rows` it should: a
    /// journal that is no longer the run's is never written.
    fn write_journal_rows(
        &self,
        doing: &'static str,
        sql: String,
        sync: &str,
        run: &str,
        extra: Extra,
        rows: Rows,
    ) -> Result<(), StateError> {
        let (store, sync_name, run) = (self.clone(), sync.to_string(), run.to_string());
        self.call(doing, move |pool| async move {
            let mut tx = pool.begin().await?;
            store.fence(&mut tx, &sync_name).await?;
            let changed = extra
                .bind(sqlx::query(AssertSqlSafe(sql)).bind(&sync_name).bind(&run))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if changed == 0 && rows == Rows::One {
                return Err(StoreCallError::NotTheRunsJournal {
                    sync: sync_name,
                    run,
                });
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Whether a run of the sync left a journal (false when the store cannot be read: status only reports it).
    pub(in crate::state) fn journal_exists(&self, sync: &str) -> bool {
        let select = format!("SELECT 1 FROM {} WHERE sync = $1", self.table("journals"));
        let found = self.fetch_one::<(i32,)>("read the run journal", select, sync, Extra::Nothing);
        matches!(found, Ok(Some(_)))
    }
}

/// A journal's rows: the store, the sync and the run they belong to.
#[derive(Debug)]
pub(crate) struct JournalAt {
    store: PgStore,
    sync: String,
    run: String,
}

impl PgStore {
    /// Writes the run's journal, whole, in one transaction.
    pub(in crate::state) fn create_journal<H: JournalHeader, B: JournalBatch>(
        &self,
        header: H,
        batches: impl IntoIterator<Item = std::io::Result<B>>,
    ) -> Result<Journal<H, B>, JournalError> {
        let run = header.run().clone();
        let header_json =
            serde_json::to_string(&header).expect("a journal header always serializes");
        let mut units = Vec::with_capacity(header.batch_count());
        let rows = batches.into_iter().map(|batch| {
            let batch = batch.map_err(JournalError::Batches)?;
            units.push(batch.units());
            Ok::<_, JournalError>((
                batch.units(),
                serde_json::to_string(&batch).expect("a batch always serializes"),
            ))
        });
        self.insert_journal(&run.sync, &run.run_id, header_json, rows)?;
        Ok(Journal {
            header,
            units,
            acknowledged: BTreeSet::new(),
            submissions: BTreeMap::new(),
            refusal: None,
            place: JournalPlace::Rows(JournalAt {
                store: self.clone(),
                sync: run.sync,
                run: run.run_id,
            }),
            batch: PhantomData,
        })
    }

    /// The open journal of `sync`, if a run left one.
    pub(in crate::state) fn open_journal<H: JournalHeader, B: JournalBatch>(
        &self,
        sync: &str,
    ) -> Result<Option<Journal<H, B>>, JournalError> {
        let Some(rows) = self.journal_rows(sync)? else {
            return Ok(None);
        };
        let damaged = |problem: String| JournalError::Damaged {
            path: PathBuf::from(self.journal_place(sync)),
            line: 1,
            problem,
        };
        let header: H = serde_json::from_str(&rows.header).map_err(|e| damaged(e.to_string()))?;
        check_header(&header, sync).map_err(damaged)?;
        let place = JournalAt {
            store: self.clone(),
            sync: sync.to_string(),
            run: header.run().run_id.clone(),
        };
        if rows.units.len() != header.batch_count() {
            return Err(damaged(format!(
                "it lists {} batches, its header says {}",
                rows.units.len(),
                header.batch_count()
            )));
        }
        let refusal = rows
            .refusal
            .map(|refusal| serde_json::from_str::<Refusal>(&refusal))
            .transpose()
            .map_err(|e| damaged(e.to_string()))?;
        let submissions = rows
            .submissions
            .into_iter()
            .map(|(index, json)| Ok((index, serde_json::from_str::<Submission>(&json)?)))
            .collect::<Result<_, serde_json::Error>>()
            .map_err(|e| damaged(e.to_string()))?;
        Ok(Some(Journal {
            header,
            units: rows.units,
            acknowledged: rows.acknowledged,
            submissions,
            refusal,
            place: JournalPlace::Rows(place),
            batch: PhantomData,
        }))
    }
}

impl PgStore {
    /// Where `sync`'s journal is, for messages.
    fn journal_place(&self, sync: &str) -> String {
        format!("{} journals[{sync}]", self.location())
    }
}

impl JournalAt {
    pub(in crate::state) fn describe(&self) -> String {
        self.store.journal_place(&self.sync)
    }

    /// Batch `index`, read back from its row; `None` when the row is missing or not a batch.
    pub(in crate::state) fn batch<B: JournalBatch>(
        &self,
        index: usize,
    ) -> Result<Option<B>, JournalError> {
        Ok(self
            .store
            .journal_batch(&self.sync, &self.run, index)?
            .and_then(|json| serde_json::from_str::<B>(&json).ok()))
    }

    pub(in crate::state) fn acknowledge(&self, index: usize) -> Result<(), JournalError> {
        Ok(self.store.acknowledge(&self.sync, &self.run, index)?)
    }

    pub(in crate::state) fn refuse(&self, refusal: &Refusal) -> Result<(), JournalError> {
        let json = serde_json::to_string(refusal).expect("a refusal always serializes");
        Ok(self.store.refuse(&self.sync, &self.run, json)?)
    }

    pub(in crate::state) fn submit(&self, submission: &Submission) -> Result<(), JournalError> {
        let json = serde_json::to_string(submission).expect("a submission always serializes");
        Ok(self.store.submit(&self.sync, &self.run, json)?)
    }

    pub(in crate::state) fn close(self) -> Result<(), JournalError> {
        Ok(self.store.close_journal(&self.sync, &self.run)?)
    }

    /// Checks that this process's run still holds the sync's run lock (see [`PgStore::confirm_lock`]).
    pub(in crate::state) fn confirm_lock(&self) -> Result<(), JournalError> {
        Ok(self.store.confirm_lock(&self.sync)?)
    }
}
