//! A session of ldsync's own on the PostgreSQL store: one connection kept for a whole job (the in-warehouse diff's
//! temporary table lives and dies with it), so nothing it makes outlives the process.

use sqlx::PgConnection;

use super::PgStore;
use crate::state::{PreparedSnapshot, StateError};

/// A connection of the store's own, held between jobs: each job takes it and gives it back.
pub(crate) struct Session {
    pub(super) store: PgStore,
    pub(super) conn: std::sync::Mutex<Option<PgConnection>>,
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
