//! Waiting on LaunchDarkly's processing of a big segment's import or export: polls further and further apart
//! (0.1 s, then half as long again each time, up to 5 s), no longer in all than the sync's `big_segment.wait`, and
//! cut short by a shutdown signal, which stops the run as a signal stops it between batches.

use std::time::{Duration, Instant};

use super::segment::SegmentJournal;
use super::{RunError, Runner};
use crate::config::SegmentSyncConfig;
use crate::shutdown::Stage;

/// The first wait between two polls; each wait is half as long again, up to [`LONGEST_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(100);
const LONGEST_POLL: Duration = Duration::from_secs(5);

/// One wait on LaunchDarkly's processing (an import, an export): polls further and further apart, no longer in all
/// than the sync's `big_segment.wait`, and cut short by a shutdown signal.
pub(super) struct BulkWait {
    started: Instant,
    limit: Duration,
    next: Duration,
    polls: u32,
    /// The run whose journal is being sent (run ID, batches acknowledged, batches), for the error a shutdown
    /// signal makes; `None` before the journal is written.
    sending: Option<(String, usize, usize)>,
}

impl BulkWait {
    /// A wait on one import of the run whose journal this is.
    pub(super) fn sending(sync: &SegmentSyncConfig, journal: &SegmentJournal) -> Self {
        let run = journal.header.run.run_id.clone();
        BulkWait::new(
            sync,
            Some((run, journal.acknowledged_count(), journal.batch_count())),
        )
    }

    /// A wait before anything is sent: an export while planning.
    pub(super) fn before_sending(sync: &SegmentSyncConfig) -> Self {
        BulkWait::new(sync, None)
    }

    fn new(sync: &SegmentSyncConfig, sending: Option<(String, usize, usize)>) -> Self {
        BulkWait {
            started: Instant::now(),
            limit: sync.big_segment.wait,
            next: FIRST_POLL,
            polls: 0,
            sending,
        }
    }

    /// Whether no pause was taken yet.
    pub(super) fn first(&self) -> bool {
        self.polls == 0
    }

    /// Waits before the next poll of `what`, unless the wait is spent or a shutdown signal came.
    pub(super) async fn pause(
        &mut self,
        runner: &Runner<'_>,
        what: &str,
        last: &str,
    ) -> Result<(), RunError> {
        let waited = self.started.elapsed();
        if waited >= self.limit {
            return Err(RunError::BulkWaitSpent {
                what: what.to_string(),
                waited: humantime::format_duration(Duration::from_secs(waited.as_secs()))
                    .to_string(),
                last: last.to_string(),
            });
        }
        let pause = self.next.min(self.limit - waited);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = runner.shutdown.reached(Stage::Stopping) => {}
        }
        if runner.shutdown.requested() {
            return Err(match self.sending.clone() {
                Some((run_id, acknowledged, total)) => RunError::Stopped {
                    run_id,
                    acknowledged,
                    total,
                },
                None => RunError::StoppedBeforeSending,
            });
        }
        self.polls += 1;
        self.next = (self.next * 3 / 2).min(LONGEST_POLL);
        Ok(())
    }
}
