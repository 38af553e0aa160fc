//! The PostgreSQL store's run history: a row of `runs` a run, the record as JSON.

use chrono::Utc;
use sqlx::AssertSqlSafe;

use super::{Extra, PgStore};
use crate::state::StateError;

impl PgStore {
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
}
