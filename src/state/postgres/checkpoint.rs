//! The PostgreSQL store's checkpoints: a run's snapshot in a table of its own, `snapshot_<id>`, registered in
//! `snapshots` and uploaded in one transaction (so it is whole or absent); the checkpoint row names it. A commit
//! is one transaction: the checkpoint row names the new snapshot, the replaced snapshots are dropped and the run's
//! journal is deleted. The set engine reads a snapshot from a Parquet copy under `state.directory`: the copy the
//! run wrote before uploading it, or, on another host, one fetched once ([`PgStore::fetch_copy`]).

use std::path::Path;

use arrow::array::StringArray;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

use std::path::PathBuf;

use sqlx::PgPool;

use super::{Extra, PgStore, StoreCallError};
use crate::pg::{Fed, copy_text};
use crate::state::StateError;
use crate::state::checkpoint::{
    Checkpoint, CheckpointSettings, Manifest, PreparedSnapshot, StoredSnapshot, check_manifest,
    manifest_for,
};
use crate::state::snapshot::{SnapshotKeys, remove_stale_snapshots};
/// Bytes of `COPY` data sent to PostgreSQL at a time.
const COPY_CHUNK: usize = 1 << 20;

impl PgStore {
    /// The sync's committed checkpoint, or `None` before its first commit. The set engine reads its snapshot from
    /// a local copy, downloaded when it is first asked for if this host has none (see
    /// [`Checkpoint::fetch_snapshot`]); the in-warehouse diff reads the snapshot's table instead.
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

    /// Makes the snapshot of run `run_id` from the distinct keys `select` gives on `conn` (one text column), in
    /// one transaction: the in-warehouse diff's snapshot, which never leaves PostgreSQL.
    pub(in crate::state) async fn snapshot_from(
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

    /// Registers a new snapshot of run `run` (replacing an earlier attempt of the same run) and returns its id;
    /// fenced (see [`PgStore::fence`]).
    async fn new_snapshot(
        &self,
        tx: &mut sqlx::PgConnection,
        sync: &str,
        run: &str,
    ) -> Result<i64, StoreCallError> {
        self.fence(tx, sync).await?;
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

    /// Makes a prepared snapshot the sync's checkpoint and deletes the run's journal, in one fenced transaction
    /// (see [`PgStore::fence`]); drops the snapshots it replaces.
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
            tables.fence(&mut tx, &sync_name).await?;
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

    /// The table of snapshot `id`'s keys.
    pub(crate) fn snapshot_table(&self, id: i64) -> String {
        self.table(&format!("snapshot_{id}"))
    }

    /// Uploads the keys of the Parquet file at `path` as the snapshot of run `run_id`, in one transaction.
    fn upload(
        &self,
        sync: &str,
        run_id: &str,
        path: &Path,
        key_count: u64,
    ) -> Result<(), StateError> {
        let keys = SnapshotKeys::open(path, key_count, None)?;
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
}

/// A snapshot's keys as `COPY` data, about [`COPY_CHUNK`] bytes at a time.
struct CopyChunks {
    keys: SnapshotKeys,
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
