//! An events sync's run: take the sync's lock; finish the run an interruption left in the journal (or, when
//! LaunchDarkly refused one of its batches, commit what its acknowledged batches sent and abandon the rest); plan
//! from the checkpoint; write the batches and the checkpoint they lead to into the journal; send each batch to the
//! metric import API, recording each acknowledgement; commit the checkpoint only when every batch is acknowledged.
//!
//! A batch whose answer was lost is sent again with the same bytes, so under the same payload ID, and LaunchDarkly
//! counts its events once. A refused run's acknowledged events are never sent again: batches go in the order of
//! their events' time, so those are the run's earliest events, and the checkpoint takes them in.

use std::collections::BTreeSet;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::send::abandon_or_resume;
use super::{RunError, Runner, SyncOptions, Tally};
use crate::config::EventSyncConfig;
use crate::events::{EventBatch, Spool};
use crate::history::{EventCounts, RunOutcome};
use crate::plan::EventPlan;
use crate::state::events::{
    self as checkpoint, EVENT_CHECKPOINT_FORMAT, EventCheckpoint, EventSettings, Progress, SentRows,
};
use crate::state::{Journal, JournalHeader, RunIdentity, StateError};

/// What an events run is, and the checkpoint it commits once every batch is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRunHeader {
    #[serde(flatten)]
    pub run: RunIdentity,
    pub settings: EventSettings,
    /// The checkpoint's progress after this run.
    pub next: Progress,
    pub event_count: u64,
    pub batch_count: usize,
}

impl JournalHeader for EventRunHeader {
    fn run(&self) -> &RunIdentity {
        &self.run
    }

    fn batch_count(&self) -> usize {
        self.batch_count
    }
}

/// An events sync's run journal.
type EventJournal = Journal<EventRunHeader, EventBatch>;

impl Runner<'_> {
    /// Runs one events sync; see the module's comment.
    pub(crate) async fn run_events(
        &self,
        sync: &EventSyncConfig,
        run_id: &str,
        options: SyncOptions,
        tally: &mut Tally,
    ) -> Result<RunOutcome, RunError> {
        let dir = self.store.host_dir(&sync.name);
        if options.full {
            let checkpoint = self.store.event_checkpoint_location(&sync.name);
            return Err(RunError::NoFullEventsRun { checkpoint });
        }
        Spool::remove_stale(&dir);
        let settings = EventSettings::of(self.config);
        tally.events = Some(EventCounts::default());
        self.settle_event_journal(sync, &settings, tally).await?;
        let checkpoint = self.events.checkpoint(sync)?;
        let mut spool = Spool::new(&dir).map_err(|source| StateError::Io {
            action: "cannot create a spool file in",
            path: dir.clone(),
            source,
        })?;
        let plan = self
            .events
            .plan_from(sync, checkpoint.as_ref(), Some(&mut spool))?;
        let counts = tally.events.get_or_insert_default();
        counts.already_sent = plan.already_sent;
        counts.bad_rows = plan.bad_rows.clone();
        counts.watermark = checkpoint
            .as_ref()
            .and_then(|c| c.progress.watermark.as_ref())
            .map(|w| w.time());
        if plan.bad_rows.count > 0 {
            tally.notes.push(plan.bad_rows.to_string());
        }
        if !plan.has_changes() {
            return Ok(tally.nothing_more_to_change());
        }
        if self.shutdown.requested() {
            return Err(RunError::StoppedBeforeSending);
        }
        let journal = self.write_event_journal(sync, run_id, &settings, plan, spool)?;
        self.finish_events(sync, journal, &settings, tally).await?;
        Ok(RunOutcome::Synced)
    }

    /// Finishes the run an interruption left, or abandons it when LaunchDarkly refused one of its batches.
    async fn settle_event_journal(
        &self,
        sync: &EventSyncConfig,
        settings: &EventSettings,
        tally: &mut Tally,
    ) -> Result<(), RunError> {
        let Some(journal) = EventJournal::open(self.store, &sync.name)? else {
            return Ok(());
        };
        let abandoned = match journal.refusal() {
            None => None,
            Some(refusal) => {
                let kept = self.keep_acknowledged(sync, &journal, settings)?;
                Some(format!(
                    "run {} was refused by LaunchDarkly ({}); {kept}planned afresh from the checkpoint instead of \
                     sending the rest again",
                    journal.header.run.run_id, refusal.reason
                ))
            }
        };
        match abandon_or_resume(&sync.name, journal, abandoned, tally)? {
            Some(journal) => self.finish_events(sync, journal, settings, tally).await,
            None => Ok(()),
        }
    }

    /// Commits the checkpoint that a refused run's acknowledged batches lead to (the committed one, with their rows
    /// sent), so that no later run sends those events again; says what it kept, for the run's note. Done once: a
    /// checkpoint of the refused run itself has them already.
    fn keep_acknowledged(
        &self,
        sync: &EventSyncConfig,
        journal: &EventJournal,
        settings: &EventSettings,
    ) -> Result<String, RunError> {
        check_journal_settings(journal, settings)?;
        let run_id = &journal.header.run.run_id;
        let committed = self.events.checkpoint(sync)?;
        if committed.as_ref().is_some_and(|c| &c.run_id == run_id) {
            return Ok(String::new());
        }
        let pending: BTreeSet<usize> = journal.pending().collect();
        let mut sent = SentRows::new(sync.lateness_ms());
        for index in (0..journal.batch_count()).filter(|index| !pending.contains(index)) {
            for row in journal.batch(index)?.rows {
                sent.insert(&row.row_id, row.at_ms);
            }
        }
        if sent.count() == 0 {
            return Ok(String::new());
        }
        let kept = format!(
            "the {} events its acknowledged batches sent are in the checkpoint; ",
            sent.count()
        );
        let base = committed.map(|c| c.progress).unwrap_or_default();
        checkpoint::commit(
            self.store,
            &EventCheckpoint {
                format: EVENT_CHECKPOINT_FORMAT,
                sync: sync.name.clone(),
                run_id: run_id.clone(),
                committed_at: Utc::now(),
                settings: settings.clone(),
                progress: sent.advance(base),
            },
        )?;
        Ok(kept)
    }

    /// Writes the run's batches and the checkpoint they lead to, durably, before anything is sent.
    fn write_event_journal(
        &self,
        sync: &EventSyncConfig,
        run_id: &str,
        settings: &EventSettings,
        plan: EventPlan,
        spool: Spool,
    ) -> Result<EventJournal, RunError> {
        let header = EventRunHeader {
            run: RunIdentity::starting(&sync.name, run_id),
            settings: settings.clone(),
            next: plan.next,
            event_count: plan.events,
            batch_count: plan.batch_events.len(),
        };
        let dir = self.store.host_dir(&sync.name);
        let spooled = spool.into_batches().map_err(|source| StateError::Io {
            action: "cannot read the spooled batches in",
            path: dir,
            source,
        })?;
        Ok(EventJournal::create(self.store, header, spooled)?)
    }

    /// Sends the journal's unacknowledged batches, then commits its checkpoint and closes it.
    async fn finish_events(
        &self,
        sync: &EventSyncConfig,
        mut journal: EventJournal,
        settings: &EventSettings,
        tally: &mut Tally,
    ) -> Result<(), RunError> {
        check_journal_settings(&journal, settings)?;
        let header = journal.header.clone();
        let unsent = journal.pending_units();
        self.send_pending(
            &mut journal,
            tally,
            |batch: &EventBatch| ("import", format!("{} events", batch.events)),
            async |batch: &EventBatch, _: &mut EventJournal| {
                let payload = batch.payload.as_bytes();
                Ok(self
                    .client
                    .import_events(payload, &batch.payload_id)
                    .await?)
            },
        )
        .await?;
        let committed = EventCheckpoint {
            format: EVENT_CHECKPOINT_FORMAT,
            sync: sync.name.clone(),
            run_id: header.run.run_id.clone(),
            committed_at: Utc::now(),
            settings: settings.clone(),
            progress: header.next.clone(),
        };
        checkpoint::commit(self.store, &committed)?;
        journal.close()?;
        let counts = tally.events.get_or_insert_default();
        counts.sent += unsent;
        counts.watermark = header.next.watermark.as_ref().map(|w| w.time());
        tracing::info!(sync = %sync.name, run = %header.run.run_id, events = header.event_count, "committed the checkpoint");
        Ok(())
    }
}

/// A journal's run sent its events to the project and environment of `settings`, or is not this run's to finish.
fn check_journal_settings(
    journal: &EventJournal,
    settings: &EventSettings,
) -> Result<(), RunError> {
    let header = &journal.header;
    if &header.settings == settings {
        return Ok(());
    }
    Err(RunError::EventJournalSettings {
        run_id: header.run.run_id.clone(),
        was: header.settings.to_string(),
        now: settings.to_string(),
        path: journal.location(),
    })
}
