//! A segment sync's run: settle the journal a crash or a refusal left (finish it, or abandon it, keeping what
//! LaunchDarkly acknowledged of it in the checkpoint, and plan again);
//! run the model; read the segment (every run, so a wrong token fails even when nothing changed); plan against the
//! checkpoint or the segment's real membership, around the keys LaunchDarkly holds as excluded; stop at a removal
//! gate before any change; check or create the segment; write the new snapshot and the journal of batches; send
//! adds then removes (a big segment's large adds as CSV imports, see [`super::import`]), recording each
//! acknowledgement; and commit the checkpoint only when every batch is acknowledged.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::send::abandon_or_resume;
use super::{RunError, Runner, SyncOptions, Tally};
use crate::config::{Mode, SegmentSyncConfig};
use crate::history::RunOutcome;
use crate::launchdarkly::Segment;
use crate::plan::{
    ExecutablePlan, KeySample, PlanError, PlannedRequest, STANDARD_SEGMENT_MAX_TARGETS, SyncPlan,
    SyncPlanError,
};
use crate::progress;
use crate::set_engine::{Listing, SetEngineError};
use crate::state::{
    CheckpointSettings, Journal, JournalBatch, JournalHeader, PreparedSnapshot, RunIdentity,
};
use crate::vocab::{Action, Delivery, SegmentKind};

/// What a segment sync's run is, and what it commits once every batch is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHeader {
    #[serde(flatten)]
    pub run: RunIdentity,
    pub settings: CheckpointSettings,
    pub segment_kind: SegmentKind,
    /// The snapshot written for this run, committed as the checkpoint at the end.
    pub snapshot: PreparedSnapshot,
    pub batch_count: usize,
}

/// One request's worth of target changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub index: usize,
    pub action: Action,
    /// How the keys go: a batch of target changes (what journals written before imports existed hold), or a
    /// big segment's CSV import.
    #[serde(default, skip_serializing_if = "Delivery::is_batch")]
    pub delivery: Delivery,
    pub keys: Vec<String>,
}

impl JournalHeader for RunHeader {
    fn run(&self) -> &RunIdentity {
        &self.run
    }

    fn batch_count(&self) -> usize {
        self.batch_count
    }
}

impl JournalBatch for Batch {
    fn index(&self) -> usize {
        self.index
    }

    fn units(&self) -> u64 {
        self.keys.len() as u64
    }
}

/// A segment sync's run journal.
pub type SegmentJournal = Journal<RunHeader, Batch>;

impl Runner<'_> {
    /// Plans one sync against what LaunchDarkly really holds: reads the segment (which also confirms the token on
    /// every run), then lets the planner compare the model with the segment's membership or the checkpoint. Sends
    /// nothing. With `Listing::InEngine`, the keys for a big segment stay in the set engine.
    async fn plan_run(
        &self,
        sync: &SegmentSyncConfig,
        full: bool,
        listing: Listing,
    ) -> Result<ExecutablePlan<'_>, RunError> {
        let segment = self
            .client
            .get_segment(&sync.segment, &sync.context_kind)
            .await?;
        let mut exported = match &segment {
            Some(segment) if self.needs_export(sync, segment, full)? => {
                Some(self.export_members(sync).await?)
            }
            _ => None,
        };
        Ok(self
            .planner
            .plan_for_segment(sync, segment, full, listing, exported.as_mut())?)
    }

    /// `ldsync plan --full`: the plan a `sync --full` would execute, against the segment's real membership.
    pub async fn plan_full(&self, sync: &SegmentSyncConfig) -> Result<SyncPlan, SyncPlanError> {
        match self.plan_run(sync, true, Listing::Listed).await {
            Ok(run) => Ok(run.plan),
            Err(RunError::Plan(e)) => Err(e),
            Err(e) => Err(self.planner.error(
                sync,
                PlanError::LaunchDarkly(self.client.token().scrub(&e.to_string())),
            )),
        }
    }

    pub(super) async fn run_segment(
        &self,
        sync: &SegmentSyncConfig,
        run_id: &str,
        options: SyncOptions,
        tally: &mut Tally,
    ) -> Result<RunOutcome, RunError> {
        let settings = CheckpointSettings::of(self.config, sync);
        self.settle_journal(sync, &settings, options, tally).await?;
        // `full_every` compares with the membership, but unlike `--full` it finishes an interrupted run first.
        let full = options.full || self.full_due(sync)?;
        tally.full = full;
        let mut run = self.plan_run(sync, full, Listing::InEngine).await?;
        tally.planned(&run.plan);
        if !run.plan.gate_stops.is_empty() {
            if !options.override_gates {
                tally.gate_stops.clone_from(&run.plan.gate_stops);
                return Ok(RunOutcome::GateStopped);
            }
            tracing::warn!(sync = %sync.name, "removal gates overridden for this run");
        }
        if run.plan.adds.is_empty() && run.plan.removes.is_empty() {
            if !run.keep_checkpoint {
                // The model moved without anything to send (keys left in add mode, say): the checkpoint follows it.
                let snapshot = self.prepare_snapshot(sync, run_id, &run)?;
                self.store
                    .commit_prepared(&sync.name, run_id, &settings, &snapshot)?;
            }
            return Ok(tally.nothing_more_to_change());
        }
        if self.shutdown.requested() {
            return Err(RunError::StoppedBeforeSending);
        }
        let segment_kind = self
            .ready_segment(sync, run.segment.take(), &run.plan, run_id)
            .await?;
        let journal = self.write_journal(sync, run_id, &settings, segment_kind, &run)?;
        // The set engine's copies of the model and the delta are no longer needed while the batches are sent.
        drop(run);
        self.finish(sync, journal, &settings, tally).await?;
        Ok(RunOutcome::Synced)
    }

    /// Deals with the journal an earlier run left: finishes it, or abandons it when LaunchDarkly refused one of
    /// its batches (sending it again would fail the same way) or when this run is `--full` (it compares with the
    /// segment's real membership, whatever that run had done).
    async fn settle_journal(
        &self,
        sync: &SegmentSyncConfig,
        settings: &CheckpointSettings,
        options: SyncOptions,
        tally: &mut Tally,
    ) -> Result<(), RunError> {
        let Some(journal) = SegmentJournal::open(self.store, &sync.name)? else {
            return Ok(());
        };
        let run = journal.header.run.run_id.clone();
        let mut abandoned = if options.full {
            Some(format!(
                "abandoned unfinished run {run}: --full compares with the segment's real membership instead"
            ))
        } else {
            journal.refusal().map(|refusal| {
                format!(
                    "run {run} was refused by LaunchDarkly ({}); planned afresh from the checkpoint and the \
                     segment's real state instead of sending it again",
                    refusal.reason
                )
            })
        };
        if let Some(note) = &mut abandoned
            && journal.acknowledged_count() > 0
        {
            self.fold_acknowledged(sync, &journal)?;
            note.push_str(&format!(
                "; the {} batches LaunchDarkly acknowledged of it are kept in the checkpoint",
                journal.acknowledged_count()
            ));
        }
        match abandon_or_resume(&sync.name, journal, abandoned, tally)? {
            Some(journal) => self.finish(sync, journal, settings, tally).await,
            None => Ok(()),
        }
    }

    /// Commits, as the checkpoint an abandoned run leaves, what the segment holds after it: the committed checkpoint
    /// (when it was made with the run's settings) with the batches LaunchDarkly acknowledged applied. So a later run
    /// that compares with the checkpoint (a big segment, which LaunchDarkly cannot list) removes a key such a batch
    /// added and the model has since dropped, and adds back a key such a batch removed and the model holds again.
    /// The commit is the abandoned run's own: it closes that run's journal, as its finish would have.
    fn fold_acknowledged(
        &self,
        sync: &SegmentSyncConfig,
        journal: &SegmentJournal,
    ) -> Result<(), RunError> {
        let header = &journal.header;
        let run_id = &header.run.run_id;
        let checkpoint = self.store.load(&sync.name)?;
        if checkpoint
            .as_ref()
            .is_some_and(|c| c.manifest.run_id == *run_id)
        {
            // Folded already, by a run that stopped before it closed the journal.
            return Ok(());
        }
        let base = checkpoint.filter(|c| c.manifest.settings.changes(&header.settings).is_empty());
        let error = |e: SetEngineError| RunError::Plan(self.planner.error(sync, e));
        let mut fold = self.planner.fold(sync)?;
        let pending: BTreeSet<usize> = journal.pending().collect();
        for index in (0..journal.batch_count()).filter(|index| !pending.contains(index)) {
            let batch = journal.batch(index)?;
            // A remove sync's checkpoint holds the keys it removed; the others', the keys the segment holds.
            let held = header.settings.mode == Mode::Remove || batch.action == Action::Add;
            fold.take(&batch.keys, held).map_err(error)?;
        }
        let base = match &base {
            Some(checkpoint) => {
                checkpoint.verify()?;
                Some(checkpoint.fetch_snapshot()?)
            }
            None => None,
        };
        let prepared = self.store.prepare(&sync.name, run_id, |path| {
            fold.write_snapshot(base, path).map_err(error)
        })?;
        self.store
            .commit_prepared(&sync.name, run_id, &header.settings, &prepared)?;
        tracing::info!(sync = %sync.name, run = %run_id, keys = prepared.key_count, "kept the acknowledged batches of an abandoned run in the checkpoint");
        Ok(())
    }

    /// Checks that the segment can take the plan, creating it if it is missing and the sync allows it.
    async fn ready_segment(
        &self,
        sync: &SegmentSyncConfig,
        segment: Option<Segment>,
        plan: &SyncPlan,
        run_id: &str,
    ) -> Result<SegmentKind, RunError> {
        let segment = match segment {
            Some(segment) => segment,
            None => {
                let Some(kind) = sync.create_segment else {
                    return Err(self.client.unknown_segment(&sync.segment).into());
                };
                if kind == SegmentKind::Standard {
                    check_standard_size(sync, plan.adds.len() as u64)?;
                }
                let description = format!(
                    "Kept in step with a warehouse model by ldsync (sync `{}`, run {run_id}).",
                    sync.name
                );
                let created = self
                    .client
                    .create_segment(&sync.segment, kind, &sync.context_kind, &description)
                    .await?;
                check_created(sync, kind, &created)?;
                tracing::info!(sync = %sync.name, segment = %sync.segment, ?kind, "created the segment");
                created
            }
        };
        match segment.kind {
            SegmentKind::Big => {
                let segment_kind = segment.big_context_kind.unwrap_or_default();
                if segment_kind != sync.context_kind {
                    return Err(RunError::BigSegmentKind {
                        segment: sync.segment.clone(),
                        segment_kind,
                        sync_kind: sync.context_kind.clone(),
                    });
                }
            }
            SegmentKind::Standard => {
                check_standard_size(sync, plan.targets_after(&segment))?;
            }
        }
        Ok(segment.kind)
    }

    /// Writes the run's snapshot and journal, durably, before anything is sent.
    fn write_journal(
        &self,
        sync: &SegmentSyncConfig,
        run_id: &str,
        settings: &CheckpointSettings,
        segment_kind: SegmentKind,
        planned: &ExecutablePlan<'_>,
    ) -> Result<SegmentJournal, RunError> {
        let snapshot = self.prepare_snapshot(sync, run_id, planned)?;
        let error = |e: SetEngineError| RunError::Plan(self.planner.error(sync, e));
        let plan = &planned.plan;
        let mut adds = planned.read(&plan.adds).map_err(error)?;
        let mut removes = planned.read(&plan.removes).map_err(error)?;
        let header = RunHeader {
            run: RunIdentity::starting(&sync.name, run_id),
            settings: settings.clone(),
            segment_kind,
            snapshot,
            batch_count: plan.requests.len(),
        };
        Ok(Journal::create(
            self.store,
            header,
            // Adds are read to their end before the removes' query starts.
            batches(&plan.requests, adds.keys().chain(removes.keys())),
        )?)
    }

    /// Writes the snapshot this run will commit: what LaunchDarkly is asked to hold, the model's keys but those the
    /// plan leaves out.
    fn prepare_snapshot(
        &self,
        sync: &SegmentSyncConfig,
        run_id: &str,
        planned: &ExecutablePlan<'_>,
    ) -> Result<PreparedSnapshot, RunError> {
        let writing = progress::step_spinner(&sync.name, "writing the snapshot", self.progress);
        let (model, left_out) = (&planned.model, &planned.left_out);
        let prepared = match model.prepare_in_warehouse(&sync.name, run_id, left_out) {
            Some(prepared) => prepared.map_err(RunError::from),
            None => self.store.prepare(&sync.name, run_id, |path| {
                model
                    .write_snapshot(path, left_out)
                    .map_err(|e| RunError::Plan(self.planner.error(sync, e)))
            }),
        };
        writing.finish_and_clear();
        prepared
    }

    /// Sends the journal's unacknowledged batches, then commits its checkpoint and closes it. A batch LaunchDarkly
    /// refuses for good is recorded as refused, so that no later run sends it again.
    async fn finish(
        &self,
        sync: &SegmentSyncConfig,
        mut journal: SegmentJournal,
        settings: &CheckpointSettings,
        tally: &mut Tally,
    ) -> Result<(), RunError> {
        let header = journal.header.clone();
        let changes = header.settings.changes(settings);
        if !changes.is_empty() {
            return Err(RunError::JournalSettings {
                run_id: header.run.run_id,
                changes: changes.join(", "),
                path: journal.location(),
            });
        }
        let segment_kind = header.segment_kind;
        self.send_pending(
            &mut journal,
            tally,
            |batch: &Batch| {
                let keys = KeySample::of(batch.keys.iter().map(String::as_str));
                (batch.action.as_str(), keys.to_string())
            },
            async |batch: &Batch, journal: &mut SegmentJournal| {
                if batch.delivery == Delivery::Import {
                    return self.import_batch(sync, batch, journal).await;
                }
                let comment = format!(
                    "ldsync sync `{}` run {}: {} batch {} of {}",
                    sync.name,
                    header.run.run_id,
                    batch.action.as_str(),
                    batch.index + 1,
                    header.batch_count
                );
                self.client
                    .change_targets(
                        &sync.segment,
                        segment_kind,
                        &sync.context_kind,
                        batch.action,
                        &batch.keys,
                        &comment,
                    )
                    .await?;
                Ok(())
            },
        )
        .await?;
        self.store
            .commit_prepared(&sync.name, &header.run.run_id, settings, &header.snapshot)?;
        journal.close()?;
        tracing::info!(sync = %sync.name, run = %header.run.run_id, batches = header.batch_count, "committed the checkpoint");
        Ok(())
    }
}

/// Checks that a segment this run asked to create (or found created by someone else) is what the sync creates.
fn check_created(
    sync: &SegmentSyncConfig,
    wanted: SegmentKind,
    segment: &Segment,
) -> Result<(), RunError> {
    let describe = |kind: SegmentKind, context_kind: &str| match kind {
        SegmentKind::Standard => "a standard segment".to_string(),
        SegmentKind::Big => format!("a big segment of context kind `{context_kind}`"),
    };
    let found = describe(
        segment.kind,
        segment.big_context_kind.as_deref().unwrap_or_default(),
    );
    let wanted = describe(wanted, &sync.context_kind);
    if found != wanted {
        return Err(RunError::CreatedElsewhere {
            segment: sync.segment.clone(),
            wanted,
            found,
        });
    }
    Ok(())
}

fn check_standard_size(sync: &SegmentSyncConfig, after: u64) -> Result<(), RunError> {
    if after > STANDARD_SEGMENT_MAX_TARGETS {
        return Err(RunError::StandardSegmentFull {
            segment: sync.segment.clone(),
            after,
            max: STANDARD_SEGMENT_MAX_TARGETS,
        });
    }
    Ok(())
}

/// The plan's requests, each with its keys, in order: `sync` sends exactly the requests `plan` prints.
/// `keys` are the adds, then the removes, as the requests take them.
fn batches<'k>(
    requests: &'k [PlannedRequest],
    mut keys: impl Iterator<Item = Result<String, SetEngineError>> + 'k,
) -> impl Iterator<Item = std::io::Result<Batch>> + 'k {
    requests.iter().enumerate().map(move |(index, request)| {
        let keys: Vec<String> = keys
            .by_ref()
            .take(request.keys)
            .collect::<Result<_, _>>()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if keys.len() != request.keys {
            return Err(std::io::Error::other(format!(
                "the set engine gave {} keys for batch {}, whose plan has {}",
                keys.len(),
                index + 1,
                request.keys
            )));
        }
        Ok(Batch {
            index,
            action: request.action,
            delivery: request.delivery,
            keys,
        })
    })
}
