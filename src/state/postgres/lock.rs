//! The PostgreSQL store's run lock: a session advisory lock per sync (keyed by the BLAKE3 of schema and sync) on
//! a connection of its own, which PostgreSQL releases if the process dies; the holder says who it is in
//! `run_locks`, believed only while its backend still holds an advisory lock.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::{Extra, PgStore, StoreCallError, own_connection};
use crate::state::{StateError, SyncLock, holder_text};

impl PgStore {
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
    pub(in crate::state) fn release(&self, conn: PgConnection) {
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

    /// The advisory lock's key for `sync`: the first 8 bytes of a hash of the schema and the sync's name.
    fn lock_key(&self, sync: &str) -> i64 {
        let hash = blake3::hash(format!("ldsync\0{}\0{sync}", self.shared.schema).as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash.as_bytes()[..8]);
        i64::from_le_bytes(bytes)
    }
}
