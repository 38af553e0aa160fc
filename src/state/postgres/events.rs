//! The PostgreSQL store's events checkpoints: a row of `event_checkpoints` an events sync, the checkpoint as JSON.

use super::{Extra, PgStore};
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
}
