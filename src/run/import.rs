//! Sending one journal batch as a big segment's CSV import: upload the file (waiting while another import of the
//! environment runs), record the import's ID in the journal as soon as LaunchDarkly gives it, then poll the import
//! until it is complete. A run killed at any point resumes from the journal: a batch already submitted is never
//! uploaded again, its import is polled; an import LaunchDarkly stops is a refusal, and the next run plans afresh.

use super::segment::{Batch, SegmentJournal};
use super::wait::BulkWait;
use super::{RunError, Runner};
use crate::config::SegmentSyncConfig;
use crate::launchdarkly::{ApiError, BulkStatus, ImportStart, import_file};

impl Runner<'_> {
    /// Sends `batch` (adds) as an import into the sync's big segment and waits until LaunchDarkly completes it.
    pub(super) async fn import_batch(
        &self,
        sync: &SegmentSyncConfig,
        batch: &Batch,
        journal: &mut SegmentJournal,
    ) -> Result<(), RunError> {
        let file = import_file(&batch.keys);
        let content_hash = format!("blake3:{}", blake3::hash(&file).to_hex());
        let mut wait = BulkWait::sending(sync, journal);
        let id = match journal.submission(batch.index) {
            Some(submitted) if submitted.content_hash == content_hash => {
                tracing::info!(sync = %sync.name, import = %submitted.id, batch = batch.index + 1, "waiting on the import an earlier run submitted");
                submitted.id.clone()
            }
            Some(submitted) => {
                return Err(RunError::ImportChanged {
                    id: submitted.id.clone(),
                    batch: batch.index + 1,
                    path: journal.location(),
                });
            }
            None => {
                let name = format!(
                    "ldsync-{}-{}.csv",
                    journal.header.run.run_id,
                    batch.index + 1
                );
                let id = self.submit_import(sync, &name, &file, &mut wait).await?;
                journal.record_submission(batch.index, &id, &content_hash)?;
                tracing::info!(sync = %sync.name, import = %id, batch = batch.index + 1, keys = batch.keys.len(), "uploaded an import");
                id
            }
        };
        drop(file);
        self.await_import(sync, &id, &mut wait).await
    }

    /// Uploads the file, waiting while another import of the environment runs; returns the import's ID.
    async fn submit_import(
        &self,
        sync: &SegmentSyncConfig,
        name: &str,
        file: &[u8],
        wait: &mut BulkWait,
    ) -> Result<String, RunError> {
        loop {
            match self.client.start_import(&sync.segment, name, file).await? {
                ImportStart::Started(id) => return Ok(id),
                ImportStart::Busy(message) => {
                    if wait.first() {
                        tracing::warn!(sync = %sync.name, %message, "another import of the environment is running; waiting for it to finish");
                    }
                    wait.pause(
                        self,
                        "another import of the environment to finish",
                        &message,
                    )
                    .await?;
                }
            }
        }
    }

    /// Polls import `id` until LaunchDarkly completes it.
    async fn await_import(
        &self,
        sync: &SegmentSyncConfig,
        id: &str,
        wait: &mut BulkWait,
    ) -> Result<(), RunError> {
        loop {
            match self.client.import_status(&sync.segment, id).await? {
                BulkStatus::Complete => return Ok(()),
                BulkStatus::Stopped => {
                    return Err(ApiError::ImportStopped {
                        segment: sync.segment.clone(),
                        id: id.to_string(),
                    }
                    .into());
                }
                BulkStatus::PendingApproval => {
                    return Err(RunError::ImportAwaitsApproval {
                        segment: sync.segment.clone(),
                        id: id.to_string(),
                    });
                }
                BulkStatus::Working(status) => {
                    wait.pause(self, &format!("import {id} ({status})"), &status)
                        .await?;
                }
            }
        }
    }
}
