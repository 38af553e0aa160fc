//! The PostgreSQL store's run lock: a session advisory lock per sync (keyed by the BLAKE3 of schema and sync) on
//! a connection of its own, which PostgreSQL releases if the process dies; the holder says who it is in
//! `run_locks`, believed only while its backend still holds an advisory lock.
//!
//! The lock also **fences** the run's writes. Nothing watches the lock's connection during a run, and when it dies
//! (a failover, `pg_terminate_backend`, an idle reaper, a dead host's connection closed by the server's TCP
//! keepalives) another host may take the lock while this run goes on. So every write a run makes (its snapshot, its
//! journal, its acknowledgements, its commit) first checks, in the write's own transaction, that `run_locks` still
//! names this process's run and that the run's lock backend still holds its lock ([`PgStore::fence`]); the row is
//! locked for the rest of the transaction, so another host's takeover waits for the write to end. A run that lost
//! its lock is told so by its next write, or by the check made before each request ([`PgStore::confirm_lock`]),
//! and stops there.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::{Extra, PgStore, StoreCallError, own_connection};
use crate::state::{StateError, SyncLock, holder_text};

/// The condition, on a row `r` of `run_locks`, that the backend it names still holds its advisory lock: a row left
/// by a session that ended says nothing.
const HOLDER_HOLDS_ITS_LOCK: &str = "EXISTS (SELECT 1 FROM pg_locks l \
     WHERE l.locktype = 'advisory' AND l.pid = r.backend_pid AND l.granted)";

impl PgStore {
    /// Takes the sync's run lock: a session advisory lock on a connection of its own, held until the returned
    /// lock is dropped or the process dies. `Ok(None)` when another run, on any host, holds it.
    pub fn try_lock(&self, sync: &str, run_id: &str) -> Result<Option<SyncLock>, StateError> {
        let key = self.lock_key(sync);
        let holder = holder_text(run_id);
        let upsert = format!(
            "INSERT INTO {} (sync, holder, backend_pid, run_id) VALUES ($1, $2, pg_backend_pid(), $3) \
             ON CONFLICT (sync) DO UPDATE SET holder = excluded.holder, backend_pid = excluded.backend_pid, \
             run_id = excluded.run_id",
            self.table("run_locks")
        );
        let (sync_name, run) = (sync.to_string(), run_id.to_string());
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
                .bind(run)
                .execute(&mut conn)
                .await?;
            Ok(Some(conn))
        })?;
        let Some(connection) = connection else {
            return Ok(None);
        };
        self.holding().insert(sync.to_string(), run_id.to_string());
        Ok(Some(SyncLock::postgres(self.clone(), sync, connection)))
    }

    /// Lets go of `sync`'s run lock: its writes are no longer this process's to make, and closing the lock's
    /// connection releases the lock.
    pub(in crate::state) fn unlock(&self, sync: &str, conn: PgConnection) {
        self.holding().remove(sync);
        self.release(conn);
    }

    /// Checks that this process's run still holds `sync`'s run lock: before each request a run sends, so that a
    /// run that lost its lock sends nothing more.
    pub fn confirm_lock(&self, sync: &str) -> Result<(), StateError> {
        let store = self.clone();
        let sync_name = sync.to_string();
        self.call("check the run lock", move |pool| async move {
            let mut conn = pool.acquire().await?;
            store.fence(&mut conn, &sync_name).await
        })
    }

    /// The fence every write of a run makes, first, in its own transaction on `conn`: `run_locks` names the run of
    /// this process that took `sync`'s lock, and that run's lock backend still holds an advisory lock. The row is
    /// locked until the transaction ends, so another host taking the lock over waits for this write to finish.
    pub(in crate::state) async fn fence(
        &self,
        conn: &mut PgConnection,
        sync: &str,
    ) -> Result<(), StoreCallError> {
        let held_by = self.holding().get(sync).cloned();
        let Some(run) = held_by else {
            return Err(StoreCallError::NotLocked {
                sync: sync.to_string(),
            });
        };
        let check = format!(
            "SELECT 1 FROM {} r WHERE r.sync = $1 AND r.run_id = $2 AND {HOLDER_HOLDS_ITS_LOCK} \
             FOR SHARE OF r",
            self.table("run_locks")
        );
        let held: Option<(i32,)> = sqlx::query_as(AssertSqlSafe(check))
            .bind(sync)
            .bind(&run)
            .fetch_optional(&mut *conn)
            .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(StoreCallError::LostLock {
                sync: sync.to_string(),
                run,
            }),
        }
    }

    /// The runs of this process holding a sync's lock, by sync.
    fn holding(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.shared
            .holding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes a connection of its own (a run lock's, which releases the lock; a session's, which drops its
    /// temporary tables).
    pub(in crate::state) fn release(&self, conn: PgConnection) {
        let _ = self.shared.worker.call(move |_| async move {
            let _ = conn.close().await;
        });
    }

    /// Who holds the sync's run lock, as the holder wrote it.
    pub fn holder(&self, sync: &str) -> String {
        let select = format!(
            "SELECT holder FROM {} r WHERE sync = $1 AND {HOLDER_HOLDS_ITS_LOCK}",
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

    /// The advisory lock's key for `sync`: the first 8 bytes of a hash of the schema and the sync's name.
    fn lock_key(&self, sync: &str) -> i64 {
        let hash = blake3::hash(format!("ldsync\0{}\0{sync}", self.shared.schema).as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash.as_bytes()[..8]);
        i64::from_le_bytes(bytes)
    }
}
