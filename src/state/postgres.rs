//! The state store in PostgreSQL (`state.kind: postgres`): what the local store keeps in files, in tables that every
//! host running the syncs shares, created by the migrations in `sql/migrations/` in the schema `state.schema`
//! names.
//!
//! - A run's snapshot goes into a table of its own, `snapshot_<id>`, registered in `snapshots`, in one transaction
//!   (so it is whole or absent). The set engine reads a snapshot from a Parquet copy under `state.directory`: the
//!   copy the run wrote before uploading it, or, on another host, one downloaded once.
//! - A commit is one transaction: the checkpoint row names the new snapshot, the replaced snapshots are dropped and
//!   the run's journal is deleted. A crash before it leaves the old checkpoint and the journal; after it, neither.
//! - A run's journal is a row of `journals` and a row of `journal_batches` a batch, written in one transaction
//!   before the first request; each acknowledgement is an update committed before the next batch is sent.
//! - Runs of one sync never overlap: a run holds a session advisory lock for the sync on a connection of its own,
//!   which PostgreSQL releases if the process dies, and says who it is in `run_locks`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, StringArray};
use chrono::Utc;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};

use super::{
    Checkpoint, CheckpointSettings, LocalStore, Manifest, PreparedSnapshot, StateError,
    StoredSnapshot, SyncLock, check_manifest, holder_text, manifest_for, remove_stale_snapshots,
    write_parquet_arrays_to,
};
use crate::config::PostgresState;
use crate::pg::{ConnectError, Fed, PgWorker, copy_text};

/// ldsync's migrations, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("sql/migrations");

/// Bytes of `COPY` data sent to PostgreSQL at a time.
const COPY_CHUNK: usize = 1 << 20;
/// Journal batches inserted by one statement.
const INSERT_BATCHES: usize = 500;

/// A state store in PostgreSQL. Cloning it shares its connections.
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

struct Shared {
    worker: PgWorker,
    schema: String,
    /// The Parquet copies of snapshots that the set engine reads, one directory per sync.
    copies: LocalStore,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.location())
    }
}

/// A journal as its rows hold it.
pub(crate) struct JournalRows {
    pub header: String,
    /// What each batch carries, in batch order.
    pub units: Vec<u64>,
    pub acknowledged: BTreeSet<usize>,
    pub refusal: Option<String>,
}

impl PgStore {
    /// Connects, creates the schema if needed and applies the migrations this build has that the database lacks.
    pub fn open(state: &PostgresState, copies: PathBuf) -> Result<PgStore, StateError> {
        let worker = PgWorker::connect(&state.url, 2, Vec::new()).map_err(|e| match e {
            ConnectError::Url(message) => StateError::PostgresUrl(message),
            ConnectError::Refused { target, message } => {
                StateError::PostgresConnect { target, message }
            }
        })?;
        let store = PgStore {
            shared: Arc::new(Shared {
                worker,
                schema: state.schema.clone(),
                copies: LocalStore::new(copies),
            }),
        };
        let schema = store.shared.schema.clone();
        store.call("apply its migrations", move |pool| async move {
            migrate(&pool, &schema).await
        })?;
        Ok(store)
    }

    /// `user@host:port/database, schema <schema>`: where the state is, for messages.
    pub fn location(&self) -> String {
        format!(
            "{}, schema {}",
            self.shared.worker.target(),
            self.shared.schema
        )
    }

    /// Where the sync's snapshot copies are kept on this host.
    pub fn host_dir(&self, sync: &str) -> PathBuf {
        self.shared.copies.sync_dir(sync)
    }

    /// The schema-qualified name of one of the store's tables.
    pub fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.shared.schema)
    }

    /// The sync's committed checkpoint, or `None` before its first commit. The set engine reads its snapshot from
    /// a local copy, downloaded when it is first asked for if this host has none (see
    /// [`Checkpoint::snapshot_path`]); the in-warehouse diff reads the snapshot's table instead.
    pub fn load(&self, sync: &str) -> Result<Option<Checkpoint>, StateError> {
        let Some((manifest, snapshot_id)) = self.manifest(sync)? else {
            return Ok(None);
        };
        Ok(Some(Checkpoint {
            snapshot_path: self.shared.copies.sync_dir(sync).join(&manifest.snapshot),
            manifest,
            stored: Some(StoredSnapshot {
                store: self.clone(),
                id: snapshot_id,
            }),
        }))
    }

    /// `user@host:port/database`: the database the store is in.
    pub fn target(&self) -> &str {
        self.shared.worker.target()
    }

    /// A connection of its own, for work that lives in one session (temporary tables); closed when dropped.
    pub(crate) fn session(&self) -> Result<Session, StateError> {
        let conn = self.call("open a session", move |pool| async move {
            own_connection(&pool).await
        })?;
        Ok(Session {
            store: self.clone(),
            conn: std::sync::Mutex::new(Some(conn)),
        })
    }

    /// Makes the snapshot of run `run_id` from the distinct keys `select` gives on `conn` (one text column), in
    /// one transaction: the in-warehouse diff's snapshot, which never leaves PostgreSQL.
    async fn snapshot_from(
        &self,
        conn: &mut PgConnection,
        sync: &str,
        run: &str,
        select: &str,
    ) -> Result<u64, StoreCallError> {
        let mut tx = conn.begin().await?;
        let id = self.new_snapshot(&mut tx, sync, run).await?;
        let table = self.snapshot_table(id);
        let created = tx
            .execute(AssertSqlSafe(format!(
                "CREATE TABLE {table} AS SELECT k::text COLLATE \"C\" AS key FROM ({select}) AS keys (k)"
            )))
            .await?;
        let key_count = created.rows_affected();
        self.seal(&mut tx, id, key_count).await?;
        tx.commit().await?;
        Ok(key_count)
    }

    /// Finishes snapshot `id` once its table holds its `key_count` keys: records the count and gathers the table's
    /// statistics (without them PostgreSQL plans the in-warehouse diff for a table of a few rows, a sort-merge
    /// instead of a hash anti-join: three times as slow at 10M keys).
    async fn seal(
        &self,
        tx: &mut sqlx::PgConnection,
        id: i64,
        key_count: u64,
    ) -> Result<(), sqlx::Error> {
        let analyze = format!("ANALYZE {}", self.snapshot_table(id));
        tx.execute(AssertSqlSafe(analyze)).await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET key_count = $1 WHERE id = $2",
            self.table("snapshots")
        )))
        .bind(key_count as i64)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map(drop)
    }

    /// Drops the tables of the snapshots whose rows were just deleted (`ids`, as `DELETE … RETURNING id` gives
    /// them).
    async fn drop_snapshot_tables(
        &self,
        tx: &mut PgConnection,
        ids: Vec<(i64,)>,
    ) -> Result<(), sqlx::Error> {
        for (id,) in ids {
            let drop = format!("DROP TABLE IF EXISTS {}", self.snapshot_table(id));
            tx.execute(AssertSqlSafe(drop)).await?;
        }
        Ok(())
    }

    /// Registers a new snapshot of run `run` (replacing an earlier attempt of the same run) and returns its id.
    async fn new_snapshot(
        &self,
        tx: &mut sqlx::PgConnection,
        sync: &str,
        run: &str,
    ) -> Result<i64, StoreCallError> {
        let committed: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT snapshot_id FROM {} WHERE sync = $1 AND run_id = $2",
            self.table("checkpoints")
        )))
        .bind(sync)
        .bind(run)
        .fetch_optional(&mut *tx)
        .await?;
        if committed.is_some() {
            return Err(StoreCallError::Committed {
                run: run.to_string(),
            });
        }
        let snapshots = self.table("snapshots");
        let earlier: Vec<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
            "DELETE FROM {snapshots} WHERE sync = $1 AND run_id = $2 RETURNING id"
        )))
        .bind(sync)
        .bind(run)
        .fetch_all(&mut *tx)
        .await?;
        self.drop_snapshot_tables(tx, earlier).await?;
        let (id,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {snapshots} (sync, run_id, key_count) VALUES ($1, $2, 0) RETURNING id"
        )))
        .bind(sync)
        .bind(run)
        .fetch_one(&mut *tx)
        .await?;
        Ok(id)
    }

    /// The manifest of the sync's committed checkpoint, checked, and the id of its snapshot.
    pub fn manifest(&self, sync: &str) -> Result<Option<(Manifest, i64)>, StateError> {
        let select = format!(
            "SELECT c.manifest::text, s.id, s.key_count FROM {} c JOIN {} s ON s.id = c.snapshot_id \
             WHERE c.sync = $1",
            self.table("checkpoints"),
            self.table("snapshots")
        );
        let row = self.fetch_one::<(String, i64, i64)>(
            "read the checkpoint",
            select,
            sync,
            Extra::Nothing,
        )?;
        let Some((manifest, snapshot_id, key_count)) = row else {
            return Ok(None);
        };
        let place = PathBuf::from(format!("{} checkpoints[{sync}]", self.location()));
        let manifest: Manifest =
            serde_json::from_str(&manifest).map_err(|source| StateError::BadManifest {
                path: place.clone(),
                source,
            })?;
        check_manifest(&manifest, sync, &place, false)?;
        if u64::try_from(key_count).ok() != Some(manifest.key_count) {
            return Err(StateError::Damaged {
                path: place,
                problem: format!(
                    "its snapshot holds {key_count} keys, its manifest says {}",
                    manifest.key_count
                ),
            });
        }
        Ok(Some((manifest, snapshot_id)))
    }

    /// Writes the snapshot a run will commit: `write` writes the local copy (see [`LocalStore::prepare`]), which
    /// is then uploaded into a table of its own, whole, before the run sends anything.
    pub fn prepare<E: From<StateError>>(
        &self,
        sync: &str,
        run_id: &str,
        write: impl FnOnce(&Path) -> Result<u64, E>,
    ) -> Result<PreparedSnapshot, E> {
        let prepared = self.shared.copies.prepare(sync, run_id, write)?;
        let path = self.shared.copies.sync_dir(sync).join(&prepared.file);
        self.upload(sync, run_id, &path, prepared.key_count)?;
        Ok(prepared)
    }

    /// Makes a prepared snapshot the sync's checkpoint and deletes the run's journal, in one transaction; drops
    /// the snapshots it replaces.
    pub fn commit_prepared(
        &self,
        sync: &str,
        run_id: &str,
        settings: &CheckpointSettings,
        prepared: &PreparedSnapshot,
    ) -> Result<Manifest, StateError> {
        let manifest = manifest_for(sync, run_id, settings, prepared);
        let json = serde_json::to_string(&manifest).expect("a manifest always serializes");
        let (sync_name, run) = (sync.to_string(), run_id.to_string());
        let tables = self.clone();
        let missing = self.call("commit the checkpoint", move |pool| async move {
            let mut tx = pool.begin().await?;
            let snapshot: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT id, key_count FROM {} WHERE sync = $1 AND run_id = $2",
                tables.table("snapshots")
            )))
            .bind(&sync_name)
            .bind(&run)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((snapshot_id, _)) = snapshot else {
                return Ok::<_, StoreCallError>(true);
            };
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (sync, run_id, snapshot_id, manifest, committed_at) \
                 VALUES ($1, $2, $3, $4::jsonb, now()) ON CONFLICT (sync) DO UPDATE SET \
                 run_id = excluded.run_id, snapshot_id = excluded.snapshot_id, \
                 manifest = excluded.manifest, committed_at = excluded.committed_at",
                tables.table("checkpoints")
            )))
            .bind(&sync_name)
            .bind(&run)
            .bind(snapshot_id)
            .bind(json)
            .execute(&mut *tx)
            .await?;
            let replaced: Vec<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE sync = $1 AND id <> $2 RETURNING id",
                tables.table("snapshots")
            )))
            .bind(&sync_name)
            .bind(snapshot_id)
            .fetch_all(&mut *tx)
            .await?;
            tables.drop_snapshot_tables(&mut tx, replaced).await?;
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE sync = $1 AND run_id = $2",
                tables.table("journals")
            )))
            .bind(&sync_name)
            .bind(&run)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(false)
        })?;
        if missing {
            return Err(StateError::DamagedSnapshot {
                path: PathBuf::from(format!("{} snapshots[{sync}, {run_id}]", self.location())),
                problem: "the run's prepared snapshot is missing".into(),
            });
        }
        remove_stale_snapshots(&self.shared.copies.sync_dir(sync), &prepared.file);
        Ok(manifest)
    }

    /// Takes the sync's run lock: a session advisory lock on a connection of its own, held until the returned
    /// lock is dropped or the process dies. `Ok(None)` when another run, on any host, holds it.
    pub fn try_lock(&self, sync: &str, run_id: &str) -> Result<Option<SyncLock>, StateError> {
        let key = self.lock_key(sync);
        let holder = holder_text(run_id);
        let upsert = format!(
            "INSERT INTO {} (sync, holder, backend_pid) VALUES ($1, $2, pg_backend_pid()) \
             ON CONFLICT (sync) DO UPDATE SET holder = excluded.holder, backend_pid = excluded.backend_pid",
            self.table("run_locks")
        );
        let sync_name = sync.to_string();
        let connection = self.call("take the run lock", move |pool| async move {
            let mut conn = own_connection(&pool).await?;
            let (taken,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            if !taken {
                conn.close().await?;
                return Ok::<_, StoreCallError>(None);
            }
            sqlx::query(AssertSqlSafe(upsert))
                .bind(sync_name)
                .bind(holder)
                .execute(&mut conn)
                .await?;
            Ok(Some(conn))
        })?;
        Ok(connection.map(|conn| SyncLock::postgres(self.clone(), conn)))
    }

    /// Closes a connection of its own (a run lock's, which releases the lock; a session's, which drops its
    /// temporary tables).
    pub(super) fn release(&self, conn: PgConnection) {
        let _ = self.shared.worker.call(move |_| async move {
            let _ = conn.close().await;
        });
    }

    /// Who holds the sync's run lock, as the holder wrote it.
    pub fn holder(&self, sync: &str) -> String {
        let select = format!(
            "SELECT holder FROM {} r WHERE sync = $1 AND EXISTS (SELECT 1 FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.pid = r.backend_pid AND l.granted)",
            self.table("run_locks")
        );
        match self.fetch_one::<(String,)>(
            "read the run lock's holder",
            select,
            sync,
            Extra::Nothing,
        ) {
            Ok(Some((holder,))) => holder,
            _ => "a process that has not said who it is".to_string(),
        }
    }

    /// Writes a run's journal, whole, in one transaction: its header, then the batches `batches` yields, each
    /// with what it carries. An error from `batches` rolls it back.
    pub(crate) fn create_journal<E: From<StateError>>(
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
                while bodies.len() < INSERT_BATCHES {
                    let Some((carried, body)) = fed.take()? else {
                        break;
                    };
                    indices.push(index);
                    units.push(carried as i64);
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
    pub(crate) fn open_journal(&self, sync: &str) -> Result<Option<JournalRows>, StateError> {
        let header_sql = format!(
            "SELECT header::text, refusal::text FROM {} WHERE sync = $1",
            self.table("journals")
        );
        let batches_sql = format!(
            "SELECT batch_index, units, acknowledged_at IS NOT NULL FROM {} WHERE sync = $1 \
             ORDER BY batch_index",
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
            let batches: Vec<(i32, i64, bool)> = sqlx::query_as(AssertSqlSafe(batches_sql))
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
        for (position, (index, carried, acked)) in batches.into_iter().enumerate() {
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
        }
        Ok(Some(JournalRows {
            header,
            units,
            acknowledged,
            refusal,
        }))
    }

    /// Batch `index` of the sync's open journal, as JSON.
    pub(crate) fn journal_batch(
        &self,
        sync: &str,
        index: usize,
    ) -> Result<Option<String>, StateError> {
        let select = format!(
            "SELECT batch::text FROM {} WHERE sync = $1 AND batch_index = $2",
            self.table("journal_batches")
        );
        let batch = self.fetch_one::<(String,)>(
            "read the run journal",
            select,
            sync,
            Extra::Index(index as i32),
        )?;
        Ok(batch.map(|(batch,)| batch))
    }

    /// Records, committed, that LaunchDarkly acknowledged batch `index` of the sync's open journal.
    pub(crate) fn acknowledge(&self, sync: &str, index: usize) -> Result<(), StateError> {
        let update = format!(
            "UPDATE {} SET acknowledged_at = now() WHERE sync = $1 AND batch_index = $2",
            self.table("journal_batches")
        );
        self.execute(
            "record an acknowledgement",
            update,
            sync,
            Extra::Index(index as i32),
        )
    }

    /// Records, committed, LaunchDarkly's refusal (as JSON) of a batch of the sync's open journal.
    pub(crate) fn refuse(&self, sync: &str, refusal: String) -> Result<(), StateError> {
        let update = format!(
            "UPDATE {} SET refusal = $2::jsonb WHERE sync = $1",
            self.table("journals")
        );
        self.execute("record a refusal", update, sync, Extra::Text(refusal))
    }

    /// Deletes the sync's open journal (its batches go with it).
    pub(crate) fn close_journal(&self, sync: &str) -> Result<(), StateError> {
        let delete = format!("DELETE FROM {} WHERE sync = $1", self.table("journals"));
        self.execute("remove the run journal", delete, sync, Extra::Nothing)
    }

    /// Whether a run of the sync left a journal (false when the store cannot be read: status only reports it).
    pub fn journal_exists(&self, sync: &str) -> bool {
        let select = format!("SELECT 1 FROM {} WHERE sync = $1", self.table("journals"));
        let found = self.fetch_one::<(i32,)>("read the run journal", select, sync, Extra::Nothing);
        matches!(found, Ok(Some(_)))
    }

    /// Appends a run's record (JSON) to the sync's history.
    pub fn append_run(
        &self,
        sync: &str,
        run_id: &str,
        finished_at: chrono::DateTime<Utc>,
        record: String,
    ) -> Result<(), StateError> {
        let insert = format!(
            "INSERT INTO {} (sync, run_id, finished_at, record) VALUES ($1, $2, $3::timestamptz, $4::jsonb) \
             ON CONFLICT (sync, run_id) DO UPDATE SET finished_at = excluded.finished_at, record = excluded.record",
            self.table("runs")
        );
        let (sync_name, run) = (sync.to_string(), run_id.to_string());
        let at = finished_at.to_rfc3339();
        self.call("append to the run history", move |pool| async move {
            sqlx::query(AssertSqlSafe(insert))
                .bind(sync_name)
                .bind(run)
                .bind(at)
                .bind(record)
                .execute(&pool)
                .await
                .map(drop)
        })
    }

    /// The sync's run records (JSON), oldest first.
    pub fn runs(&self, sync: &str) -> Result<Vec<String>, StateError> {
        let select = format!(
            "SELECT record::text FROM {} WHERE sync = $1 ORDER BY finished_at, run_id",
            self.table("runs")
        );
        let rows = self.fetch::<(String,)>("read the run history", select, sync, Extra::Nothing)?;
        Ok(rows.into_iter().map(|(record,)| record).collect())
    }

    /// An events sync's checkpoint (JSON), if it has one.
    pub fn event_checkpoint(&self, sync: &str) -> Result<Option<String>, StateError> {
        let select = format!(
            "SELECT checkpoint::text FROM {} WHERE sync = $1",
            self.table("event_checkpoints")
        );
        let row = self.fetch_one::<(String,)>(
            "read the events checkpoint",
            select,
            sync,
            Extra::Nothing,
        )?;
        Ok(row.map(|(checkpoint,)| checkpoint))
    }

    /// Replaces an events sync's checkpoint (JSON).
    pub fn commit_event_checkpoint(
        &self,
        sync: &str,
        checkpoint: String,
    ) -> Result<(), StateError> {
        let upsert = format!(
            "INSERT INTO {} (sync, checkpoint) VALUES ($1, $2::jsonb) \
             ON CONFLICT (sync) DO UPDATE SET checkpoint = excluded.checkpoint",
            self.table("event_checkpoints")
        );
        self.execute(
            "commit the events checkpoint",
            upsert,
            sync,
            Extra::Text(checkpoint),
        )
    }

    /// The table of snapshot `id`'s keys.
    pub(crate) fn snapshot_table(&self, id: i64) -> String {
        self.table(&format!("snapshot_{id}"))
    }

    /// The advisory lock's key for `sync`: the first 8 bytes of a hash of the schema and the sync's name.
    fn lock_key(&self, sync: &str) -> i64 {
        let hash = blake3::hash(format!("ldsync\0{}\0{sync}", self.shared.schema).as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash.as_bytes()[..8]);
        i64::from_le_bytes(bytes)
    }

    /// Uploads the keys of the Parquet file at `path` as the snapshot of run `run_id`, in one transaction.
    fn upload(
        &self,
        sync: &str,
        run_id: &str,
        path: &Path,
        key_count: u64,
    ) -> Result<(), StateError> {
        let keys = super::SnapshotKeys::open(path, key_count, None)?;
        let chunks = CopyChunks {
            keys,
            buffer: Vec::with_capacity(COPY_CHUNK + 1024),
        };
        let (sync_name, run) = (sync.to_string(), run_id.to_string());
        let tables = self.clone();
        let write = move |pool: PgPool, mut fed: Fed<Vec<u8>>| async move {
            let mut tx = pool.begin().await?;
            let id = tables.new_snapshot(&mut tx, &sync_name, &run).await?;
            let table = tables.snapshot_table(id);
            tx.execute(AssertSqlSafe(format!(
                "CREATE TABLE {table} (key text COLLATE \"C\" NOT NULL)"
            )))
            .await?;
            let mut copy = tx
                .copy_in_raw(&format!("COPY {table} (key) FROM STDIN"))
                .await?;
            while let Some(chunk) = fed.take()? {
                copy.send(chunk).await?;
            }
            let copied = copy.finish().await?;
            if copied != key_count {
                return Err(StoreCallError::Count { copied, key_count });
            }
            tables.seal(&mut tx, id, key_count).await?;
            tx.commit().await?;
            Ok(())
        };
        self.feed("upload the snapshot", write, chunks)
    }

    /// Downloads snapshot `snapshot_id` of run `run_id` into its local Parquet copy.
    pub(super) fn download(
        &self,
        sync: &str,
        run_id: &str,
        snapshot_id: i64,
    ) -> Result<(), StateError> {
        let copy = format!("COPY {} (key) TO STDOUT", self.snapshot_table(snapshot_id));
        let batches = self
            .shared
            .worker
            .copy_out::<StoreCallError>(copy)
            .map_err(|e| self.failed("download the snapshot", e))?;
        self.shared.copies.prepare(sync, run_id, |path| {
            let arrays = batches.into_iter().map(|batch| {
                batch
                    .map(|columns| columns[0].as_string::<i32>().clone())
                    .map_err(|e| self.failed("download the snapshot", e))
            });
            write_parquet_arrays_to(path, arrays)
        })?;
        Ok(())
    }

    /// The rows `select` gives for `sync` (`$1`; `$2` is what `extra` holds).
    fn fetch<T>(
        &self,
        doing: &'static str,
        select: String,
        sync: &str,
        extra: Extra,
    ) -> Result<Vec<T>, StateError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static,
    {
        let sync_name = sync.to_string();
        self.call(doing, move |pool| async move {
            let query = sqlx::query_as(AssertSqlSafe(select)).bind(sync_name);
            let query = match extra {
                Extra::Nothing => query,
                Extra::Index(index) => query.bind(index),
                Extra::Text(text) => query.bind(text),
            };
            query.fetch_all(&pool).await
        })
    }

    /// The first row `select` gives for `sync`, if any (see [`PgStore::fetch`]).
    fn fetch_one<T>(
        &self,
        doing: &'static str,
        select: String,
        sync: &str,
        extra: Extra,
    ) -> Result<Option<T>, StateError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static,
    {
        Ok(self.fetch(doing, select, sync, extra)?.into_iter().next())
    }

    /// Runs one statement on `sync`'s rows: `$1` is the sync, `$2` what `extra` holds.
    fn execute(
        &self,
        doing: &'static str,
        sql: String,
        sync: &str,
        extra: Extra,
    ) -> Result<(), StateError> {
        let sync_name = sync.to_string();
        self.call(doing, move |pool| async move {
            let query = sqlx::query(AssertSqlSafe(sql)).bind(sync_name);
            let query = match extra {
                Extra::Nothing => query,
                Extra::Index(index) => query.bind(index),
                Extra::Text(text) => query.bind(text),
            };
            query.execute(&pool).await.map(drop)
        })
    }

    /// Runs `job` on the store's connections while this thread hands it `items` (see [`PgWorker::feed`]); an error
    /// from `items` is returned as it is.
    fn feed<I, E, Fut>(
        &self,
        doing: &'static str,
        job: impl FnOnce(PgPool, Fed<I>) -> Fut + Send + 'static,
        items: impl IntoIterator<Item = Result<I, E>>,
    ) -> Result<(), E>
    where
        I: Send + 'static,
        E: From<StateError>,
        Fut: std::future::Future<Output = Result<(), StoreCallError>> + Send + 'static,
    {
        match self.shared.worker.feed(job, items) {
            Ok(Ok(written)) => written.map_err(|e| self.failed(doing, e).into()),
            Ok(Err(feeder)) => Err(feeder),
            Err(stopped) => Err(self.failed(doing, stopped).into()),
        }
    }

    /// Runs `job` on the store's connections and waits for it.
    fn call<T, E, Fut>(
        &self,
        doing: &'static str,
        job: impl FnOnce(PgPool) -> Fut + Send + 'static,
    ) -> Result<T, StateError>
    where
        T: Send + 'static,
        E: Into<StoreCallError> + Send + 'static,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
    {
        match self.shared.worker.call(job) {
            Ok(result) => result.map_err(|e| self.failed(doing, e.into())),
            Err(stopped) => Err(self.failed(doing, stopped)),
        }
    }

    /// The store could not do what `doing` says, because of `e`.
    fn failed(&self, doing: &'static str, e: impl std::fmt::Display) -> StateError {
        StateError::Postgres {
            location: self.location(),
            doing,
            message: e.to_string(),
        }
    }
}

/// A connection of the store's own, held between jobs: each job takes it and gives it back.
pub(crate) struct Session {
    store: PgStore,
    conn: std::sync::Mutex<Option<PgConnection>>,
}

impl Session {
    /// Runs `job` on the session's connection; `doing` names it in errors.
    pub(crate) fn run<T, Fut>(
        &self,
        doing: &'static str,
        job: impl FnOnce(PgConnection) -> Fut + Send + 'static,
    ) -> Result<T, StateError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = (PgConnection, T)> + Send + 'static,
    {
        let conn = self.take(doing)?;
        let (conn, result) = self
            .store
            .shared
            .worker
            .call(move |_| job(conn))
            .map_err(|e| self.store.failed(doing, e))?;
        self.give_back(conn);
        Ok(result)
    }

    /// Copies rows out on the session (see [`PgWorker::copy_out`]), handing each batch to `sink`.
    pub(crate) fn copy_out<E: From<crate::pg::CopyOutError> + From<StateError> + Send + 'static>(
        &self,
        statement: String,
        mut sink: impl FnMut(Vec<arrow::array::ArrayRef>) -> Result<(), E>,
    ) -> Result<(), E> {
        let doing = "copy rows out";
        let mut conn = self.take(doing)?;
        let (back, returned) = std::sync::mpsc::sync_channel(1);
        let batches = self
            .store
            .shared
            .worker
            .stream(move |_, reply| async move {
                if let Err(e) = crate::pg::copy_rows(&mut conn, &statement, &reply).await {
                    let _ = reply.send(Err(E::from(e)));
                }
                let _ = back.send(conn);
            })
            .map_err(|e| self.store.failed(doing, e))?;
        let mut drained = Ok(());
        for batch in batches {
            if let Err(e) = batch.and_then(&mut sink) {
                drained = Err(e);
                break;
            }
        }
        // The job gives the connection back once it sees the reader gone or the copy done.
        if let Ok(conn) = returned.recv() {
            self.give_back(conn);
        }
        drained
    }

    /// Makes the snapshot of run `run_id` from the distinct keys `select` gives on the session (see
    /// [`PgStore::snapshot_from`]).
    pub(crate) fn prepare_snapshot(
        &self,
        sync: &str,
        run_id: &str,
        select: &str,
    ) -> Result<PreparedSnapshot, StateError> {
        let doing = "make the snapshot";
        let (store, sync_name, run, select) = (
            self.store.clone(),
            sync.to_string(),
            run_id.to_string(),
            select.to_string(),
        );
        let made = self.run(doing, move |mut conn| async move {
            let made = store
                .snapshot_from(&mut conn, &sync_name, &run, &select)
                .await;
            (conn, made)
        })?;
        Ok(PreparedSnapshot {
            file: format!("snapshot-{run_id}.parquet"),
            key_count: made.map_err(|e| self.store.failed(doing, e))?,
            content_hash: None,
            snapshot_hash: None,
        })
    }

    fn take(&self, doing: &'static str) -> Result<PgConnection, StateError> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| StateError::Postgres {
                location: self.store.location(),
                doing,
                message: "the session's connection was lost".into(),
            })
    }

    fn give_back(&self, conn: PgConnection) {
        *self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(conn) = self
            .conn
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            self.store.release(conn);
        }
    }
}

/// The second parameter of a statement on a sync's rows.
enum Extra {
    Nothing,
    Index(i32),
    Text(String),
}

/// What went wrong in a job on the store's connections.
#[derive(Debug, thiserror::Error)]
enum StoreCallError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    CopyOut(#[from] crate::pg::CopyOutError),
    #[error("the data to write stopped before its end")]
    Aborted(#[from] crate::pg::FeedAborted),
    #[error(
        "run {run}'s snapshot is the committed checkpoint already, and a committed snapshot never changes"
    )]
    Committed { run: String },
    #[error("{copied} keys were copied, the snapshot holds {key_count}")]
    Count { copied: u64, key_count: u64 },
}

/// A connection outside the pool, with the pool's settings: for a lock or a session that must outlive one job.
async fn own_connection(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let options: PgConnectOptions = (*pool.connect_options()).clone();
    PgConnection::connect_with(&options).await
}

/// Creates the store's schema if needed and applies the migrations, on a connection of their own whose
/// `search_path` is the schema.
async fn migrate(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    // Two hosts starting at once: the lock keeps them from racing to create the schema.
    conn.execute("SELECT pg_advisory_lock(hashtext('ldsync schema'))")
        .await?;
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    let result = async {
        // `IF NOT EXISTS` notices on every start are noise.
        conn.execute("SET client_min_messages TO warning").await?;
        conn.execute(AssertSqlSafe(create)).await?;
        conn.execute(AssertSqlSafe(format!("SET search_path TO \"{schema}\"")))
            .await?;
        MIGRATOR
            .run_direct(None, &mut conn, false)
            .await
            .map_err(sqlx::Error::from)
    }
    .await;
    let _ = conn.close().await;
    result
}

/// A snapshot's keys as `COPY` data, about [`COPY_CHUNK`] bytes at a time.
struct CopyChunks {
    keys: super::SnapshotKeys,
    buffer: Vec<u8>,
}

impl Iterator for CopyChunks {
    type Item = Result<Vec<u8>, StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buffer.len() < COPY_CHUNK {
            match self.keys.next() {
                Some(Ok(keys)) => append_keys(&mut self.buffer, &keys),
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        (!self.buffer.is_empty()).then(|| Ok(std::mem::take(&mut self.buffer)))
    }
}

fn append_keys(out: &mut Vec<u8>, keys: &StringArray) {
    for key in keys.iter().flatten() {
        copy_text(out, key);
        out.push(b'\n');
    }
}
