//! The PostgreSQL store's events checkpoints: a row of `event_checkpoints` an events sync, the checkpoint as JSON,
//! committed in one transaction with the deletion of the journal of the run that made it.

use sqlx::AssertSqlSafe;

use super::{Extra, PgStore, StoreCallError};
use crate::state::StateError;

impl PgStore {
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

    /// Replaces an events sync's checkpoint (JSON) with the one run `run_id` made and deletes that run's journal,
    /// in one fenced transaction (see [`PgStore::fence`]): a failure anywhere leaves the old checkpoint and the
    /// journal, whole.
    pub fn commit_event_checkpoint(
        &self,
        sync: &str,
        run_id: &str,
        checkpoint: String,
    ) -> Result<(), StateError> {
        let upsert = format!(
            "INSERT INTO {} (sync, checkpoint) VALUES ($1, $2::jsonb) \
             ON CONFLICT (sync) DO UPDATE SET checkpoint = excluded.checkpoint",
            self.table("event_checkpoints")
        );
        let close = format!(
            "DELETE FROM {} WHERE sync = $1 AND run_id = $2",
            self.table("journals")
        );
        let (store, sync_name, run) = (self.clone(), sync.to_string(), run_id.to_string());
        self.call("commit the events checkpoint", move |pool| async move {
            let mut tx = pool.begin().await?;
            store.fence(&mut tx, &sync_name).await?;
            sqlx::query(AssertSqlSafe(upsert))
                .bind(&sync_name)
                .bind(checkpoint)
                .execute(&mut *tx)
                .await?;
            sqlx::query(AssertSqlSafe(close))
                .bind(&sync_name)
                .bind(run)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, StoreCallError>(())
        })
    }
}
