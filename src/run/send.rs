//! Sending a journal's batches, for both kinds of run: each unacknowledged batch in order, only while the run still
//! holds its sync's lock, each acknowledgement recorded before the next is sent, a final refusal recorded so no
//! later run sends that batch again; and what a run does with a journal an earlier run left (finish it, or abandon
//! it).

use super::{RunError, Runner, Tally};
use crate::progress;
use crate::state::{Journal, JournalBatch, JournalHeader};

impl Runner<'_> {
    /// Sends a journal's unacknowledged batches in order through `send` (which may record in the journal how
    /// LaunchDarkly took a batch in), recording each acknowledgement. A batch LaunchDarkly refuses for good is
    /// recorded as refused, so that no later run sends it again; any other failure, or a shutdown signal, leaves
    /// the rest in the journal for the next run.
    pub(crate) async fn send_pending<H: JournalHeader, B: JournalBatch>(
        &self,
        journal: &mut Journal<H, B>,
        tally: &mut Tally,
        describe: impl Fn(&B) -> (&'static str, String),
        send: impl AsyncFn(&B, &mut Journal<H, B>) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let run_id = journal.header.run().run_id.clone();
        let total = journal.batch_count();
        let pending: Vec<usize> = journal.pending().collect();
        tally.batches_planned += pending.len() as u64;
        let progress = progress::send_bar(
            &journal.header.run().sync,
            journal.pending_units(),
            self.progress,
        );
        for index in pending {
            if self.shutdown.requested() {
                progress.abandon();
                return Err(RunError::Stopped {
                    run_id,
                    acknowledged: journal.acknowledged_count(),
                    total,
                });
            }
            // A run that lost its lock (on the PostgreSQL store) sends nothing more.
            journal.confirm_lock()?;
            // Read from the journal as it is sent: a run never holds all its batches.
            let batch = journal.batch(index)?;
            if let Err(failure) = send(&batch, journal).await {
                progress.abandon();
                let RunError::Api(source) = failure else {
                    return Err(failure);
                };
                let acknowledged = journal.acknowledged_count();
                if !source.is_final_for_batch() {
                    return Err(RunError::FailedPartway {
                        run_id,
                        acknowledged,
                        total,
                        source,
                    });
                }
                let reason = self.client.token().scrub(&source.to_string());
                journal.refuse(index, &reason)?;
                let (action, keys) = describe(&batch);
                return Err(RunError::Refused {
                    run_id,
                    batch: index + 1,
                    total,
                    action,
                    keys,
                    acknowledged,
                    source: Box::new(source),
                });
            }
            journal.acknowledge(index)?;
            tally.batches_acknowledged += 1;
            progress.inc(journal.units(index));
        }
        progress.finish_and_clear();
        Ok(())
    }
}

/// Closes the journal an earlier run left when `abandoned` says why it must not be finished (noted in the run's
/// report), or hands it back to be finished, noting which run this one resumes.
pub(crate) fn abandon_or_resume<H: JournalHeader, B: JournalBatch>(
    sync: &str,
    journal: Journal<H, B>,
    abandoned: Option<String>,
    tally: &mut Tally,
) -> Result<Option<Journal<H, B>>, RunError> {
    let run = journal.header.run().run_id.clone();
    if let Some(note) = abandoned {
        tracing::warn!(sync = %sync, run = %run, "{note}");
        tally.notes.push(note);
        journal.close()?;
        return Ok(None);
    }
    tracing::info!(sync = %sync, run = %run, "finishing an interrupted run first");
    tally.resumed_run = Some(run);
    Ok(Some(journal))
}
