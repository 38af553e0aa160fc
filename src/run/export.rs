//! Reading a big segment's members through an export, for a run that compares the model with the segment's real
//! membership (a first mirror run onto a big segment that has members, `--full`): start the export, poll it until
//! LaunchDarkly names its file, and download the file to a temporary file (without the access token, unless the
//! file lies on the API's own origin), which the planner reads into the set engine chunk by chunk.

use super::wait::BulkWait;
use super::{RunError, Runner};
use chrono::Utc;

use crate::config::{Mode, SegmentSyncConfig};
use crate::history;
use crate::launchdarkly::{ApiError, BulkStatus, ExportFile, Segment};
use crate::progress;
use crate::vocab::SegmentKind;

impl Runner<'_> {
    /// Whether planning this run needs the big segment's members, which only an export gives: it has members (or
    /// LaunchDarkly does not say how many), and the run compares with them (`--full`, or a mirror run without a
    /// checkpoint).
    pub(super) fn needs_export(
        &self,
        sync: &SegmentSyncConfig,
        segment: &Segment,
        full: bool,
    ) -> Result<bool, RunError> {
        if segment.kind != SegmentKind::Big
            || segment.members.is_some()
            || segment.member_count == Some(0)
        {
            return Ok(false);
        }
        // Whether a checkpoint exists is all this asks: the planner checks it (its settings, its snapshot's hash)
        // when it compares with it, so reading its manifest here does not hash the snapshot a second time.
        Ok(full || (sync.mode == Mode::Mirror && self.store.load(&sync.name)?.is_none()))
    }

    /// Whether the sync's `full_every` says this run compares with the segment's real membership: no run that
    /// did so succeeded within that time.
    pub(super) fn full_due(&self, sync: &SegmentSyncConfig) -> Result<bool, RunError> {
        let Some(every) = sync.full_every else {
            return Ok(false);
        };
        let last_full = history::read(self.store, &sync.name)?
            .into_iter()
            .filter(|run| run.full && run.outcome.succeeded())
            .map(|run| run.finished_at)
            .max();
        let due = last_full.is_none_or(|at| {
            Utc::now()
                .signed_duration_since(at)
                .to_std()
                .unwrap_or_default()
                >= every
        });
        if due {
            tracing::info!(sync = %sync.name, "full_every is due: this run compares with the segment's real membership");
        }
        Ok(due)
    }

    /// Exports the big segment's members and downloads the file.
    pub(super) async fn export_members(
        &self,
        sync: &SegmentSyncConfig,
    ) -> Result<ExportFile, RunError> {
        let segment = &sync.segment;
        let exporting =
            progress::step_spinner(&sync.name, "exporting the segment's members", self.progress);
        let id = self.client.start_export(segment).await?;
        tracing::info!(sync = %sync.name, export = %id, "started an export of the big segment's members");
        let mut wait = BulkWait::before_sending(sync);
        let url = loop {
            let export = self.client.export_status(segment, &id).await?;
            match (export.status, export.file) {
                (BulkStatus::Complete, Some(url)) => break url,
                (BulkStatus::Stopped, _) => {
                    return Err(ApiError::ExportStopped {
                        segment: segment.clone(),
                        id,
                    }
                    .into());
                }
                (status, _) => {
                    let status = status.to_string();
                    wait.pause(self, &format!("export {id} ({status})"), &status)
                        .await?;
                }
            }
        };
        // Beside the set engine's spill files: the place the operator gave room for the audience's size.
        let dir = self
            .config
            .engine_settings()
            .temp_directory
            .unwrap_or_else(std::env::temp_dir);
        let mut file = ExportFile::create(segment, &dir).map_err(|e| ApiError::Download {
            segment: segment.clone(),
            host: "this machine".into(),
            problem: format!("cannot create a temporary file in {}: {e}", dir.display()),
        })?;
        let bytes = self
            .client
            .download_export(segment, &url, file.writer())
            .await?;
        exporting.finish_and_clear();
        tracing::info!(sync = %sync.name, export = %id, bytes, "downloaded the export");
        Ok(file)
    }
}
