//! `ldsync sync`: the engine that applies a sync's plan to its LaunchDarkly segment without ever losing,
//! repeating or inventing a change.
//!
//! One run: take the sync's lock; settle the journal a crash or a refusal left (finish it, or abandon it and plan
//! again); run the model; read the segment (every run, so a wrong token fails even when nothing changed); plan
//! against the checkpoint or the segment's real membership, around the keys LaunchDarkly holds as excluded; stop
//! at a removal gate before any change; check or create the segment; write the new snapshot and the journal of
//! batches; send adds then removes, recording each acknowledgement; and commit the checkpoint only when every batch
//! is acknowledged. Each run leaves a record in the sync's history.

use std::time::Instant;

use arrow::array::StringArray;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audience::{AudienceError, Delta, KeyRead, Listing, ModelKeys};
use crate::config::{Config, Mode, SegmentKind, SyncConfig, SyncEntry};
use crate::events::EventPlanner;
use crate::history::{self, EventCounts, RunOutcome, RunRecord};
use crate::journal::{
    Batch, Journal, JournalBatch, JournalError, JournalHeader, RunHeader, RunIdentity,
};
use crate::launchdarkly::{ApiError, CallStats, Client, Segment};
use crate::plan::{
    Against, Baseline, Drift, GateStop, KeySample, PlanError, PlannedRequest, Planner,
    STANDARD_SEGMENT_MAX_TARGETS, SyncError, SyncPlan,
};
use crate::progress;
use crate::shutdown::{Shutdown, Stage};
use crate::state::{Checkpoint, CheckpointSettings, PreparedSnapshot, StateError, Store, SyncLock};
use crate::warehouse::Warehouse;

/// How often a run waiting for another run of its sync tries the lock again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// How a run may depart from the defaults, for this run only.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// Compare with the segment's real membership instead of the checkpoint, and repair it.
    pub full: bool,
    /// Let a run through that a removal gate would stop.
    pub override_gates: bool,
}

/// Why a sync run failed. None of these leaves a moved checkpoint behind.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Plan(#[from] SyncError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "segment `{segment}` no longer exists, although checkpoint run {run_id} says it held {keys} targets; run \
         `ldsync sync --full` to rebuild it from the model"
    )]
    SegmentDeleted {
        segment: String,
        run_id: String,
        keys: u64,
    },
    #[error(
        "segment `{segment}` is a big segment that already includes {count} contexts, and LaunchDarkly cannot list a \
         big segment's members cheaply, so ldsync cannot tell which to remove and will not assume it is empty; \
         point the sync at a new segment key (with create_segment: big), or empty the segment in LaunchDarkly, then \
         run again"
    )]
    BigSegmentMembersUnknown { segment: String, count: u64 },
    #[error(
        "segment `{segment}` is a big segment of context kind `{segment_kind}`, but the sync sends `{sync_kind}` keys; \
         a big segment holds one context kind"
    )]
    BigSegmentKind {
        segment: String,
        segment_kind: String,
        sync_kind: String,
    },
    #[error(
        "segment `{segment}` is a standard segment, which holds at most {max} targets, and this run would leave it \
         with {after}; nothing was sent. Use a big segment: set create_segment: big and a new segment key"
    )]
    StandardSegmentFull {
        segment: String,
        after: u64,
        max: u64,
    },
    #[error(
        "segment `{segment}` was created by someone else while this run was creating it, as {found}, but this sync \
         creates {wanted}; nothing was sent. Delete that segment in LaunchDarkly, or change the sync's \
         create_segment or context_kind to match it"
    )]
    CreatedElsewhere {
        segment: String,
        wanted: String,
        found: String,
    },
    #[error(
        "an unfinished run ({run_id}) of this sync was started with other settings ({changes}); restore them so that \
         it can finish, or run `ldsync sync --full` to abandon it and reconcile the segment with the model"
    )]
    JournalSettings {
        run_id: String,
        changes: String,
        path: String,
    },
    #[error(
        "{source}; {acknowledged} of {total} batches of run {run_id} were acknowledged and the checkpoint did not \
         move: the next `ldsync sync` sends the rest first"
    )]
    FailedPartway {
        run_id: String,
        acknowledged: usize,
        total: usize,
        source: ApiError,
    },
    #[error(
        "LaunchDarkly refused batch {batch} of {total} of run {run_id} ({action} {keys}): {source}; {acknowledged} \
         batches were acknowledged and the checkpoint did not move. The refusal is recorded in the journal, so the \
         next `ldsync sync` will not send this run again: it plans afresh from the checkpoint and the segment's \
         real state"
    )]
    Refused {
        run_id: String,
        batch: usize,
        total: usize,
        action: &'static str,
        keys: String,
        acknowledged: usize,
        source: Box<ApiError>,
    },
    #[error(
        "an events sync has no --full: LaunchDarkly cannot be asked which events it already holds, and sending them \
         all again would count them twice. To send the model's events again from its first row (into a new \
         environment, say), move {checkpoint} aside"
    )]
    NoFullEventsRun { checkpoint: String },
    #[error(
        "an unfinished run ({run_id}) of this sync sends to {was}, not {now}; restore the settings so that it can \
         finish, or move its journal {path} aside"
    )]
    EventJournalSettings {
        run_id: String,
        was: String,
        now: String,
        path: String,
    },
    #[error("stopped by a shutdown signal before sending anything; the checkpoint did not move")]
    StoppedBeforeSending,
    #[error(
        "stopped by a shutdown signal after {acknowledged} of {total} batches of run {run_id} were acknowledged; the \
         checkpoint did not move: the next run sends the rest first"
    )]
    Stopped {
        run_id: String,
        acknowledged: usize,
        total: usize,
    },
    #[error(
        "stopped at once by a second shutdown signal; the checkpoint did not move, and batches not yet acknowledged \
         stay in the journal for the next run"
    )]
    StoppedAtOnce,
}

impl EngineError {
    /// The outcome a run that failed with this error records.
    fn outcome(&self) -> RunOutcome {
        match self {
            EngineError::StoppedBeforeSending
            | EngineError::Stopped { .. }
            | EngineError::StoppedAtOnce => RunOutcome::Interrupted,
            _ => RunOutcome::Failed,
        }
    }
}

/// What one sync run did, as the command prints it.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub sync: String,
    pub run_id: String,
    pub outcome: RunOutcome,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// An interrupted run this run finished first.
    pub resumed_run: Option<String>,
    pub adds: u64,
    pub removes: u64,
    pub batches_planned: u64,
    pub batches_acknowledged: u64,
    pub calls: CallStats,
    pub duration_ms: u64,
    /// Model keys left out because LaunchDarkly holds them as excluded targets.
    pub excluded: KeySample,
    /// Hand edits found in the segment and repaired by this run (mirror syncs of standard segments).
    pub drift: Option<Drift>,
    /// What an events sync sent and left out.
    pub events: Option<EventCounts>,
    pub gate_stops: Vec<String>,
    pub notes: Vec<String>,
    pub error: Option<String>,
}

impl SyncReport {
    /// Logs how the run ended.
    pub fn log(&self) {
        match &self.error {
            None => tracing::info!(
                sync = %self.sync,
                outcome = self.outcome.as_str(),
                adds = self.adds,
                removes = self.removes,
                requests = self.calls.requests,
                seconds = self.duration_ms as f64 / 1000.0,
                "sync finished"
            ),
            Some(error) => {
                tracing::error!(sync = %self.sync, outcome = self.outcome.as_str(), "{error}")
            }
        }
    }
}

/// What a run counts as it goes, whatever way it ends.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) resumed_run: Option<String>,
    adds: u64,
    removes: u64,
    pub(crate) batches_planned: u64,
    pub(crate) batches_acknowledged: u64,
    excluded: KeySample,
    drift: Option<Drift>,
    gate_stops: Vec<GateStop>,
    pub(crate) notes: Vec<String>,
    /// An events sync's counts.
    pub(crate) events: Option<EventCounts>,
}

impl Tally {
    /// Takes what the run's plan says into the tally.
    fn planned(&mut self, plan: &SyncPlan) {
        self.adds = plan.adds.len() as u64;
        self.removes = plan.removes.len() as u64;
        self.excluded = KeySample::of(plan.excluded.iter().flatten());
        self.drift = plan.drift.clone().filter(|d| !d.is_empty());
        self.notes.extend(plan.notes.iter().cloned());
        if let Some(drift) = &self.drift {
            self.notes.push(drift.to_string());
        }
    }
}

/// A sync's plan for this run, with what it was made from.
struct RunPlan<'e> {
    plan: SyncPlan,
    model: ModelKeys<'e>,
    /// Where keys the plan left in the set engine are read from.
    delta: Delta<'e>,
    /// The segment as read at the start of the run; `None` when it does not exist yet.
    segment: Option<Segment>,
    /// Whether the model's keys equal the checkpoint's, so that a run with nothing to send leaves it be.
    model_matches_checkpoint: bool,
}

/// Runs syncs of one configuration.
pub struct Engine<'a> {
    pub(crate) config: &'a Config,
    planner: Planner<'a>,
    pub(crate) events: EventPlanner<'a>,
    pub(crate) store: &'a Store,
    pub(crate) client: Client,
    progress: bool,
    pub(crate) shutdown: Shutdown,
}

impl<'a> Engine<'a> {
    /// Syncs models of an open warehouse through `client`, keeping their state in `store`.
    pub fn new(
        config: &'a Config,
        warehouse: &'a Warehouse,
        store: &'a Store,
        client: Client,
    ) -> Self {
        Engine {
            config,
            planner: Planner::new(config, warehouse, store),
            events: EventPlanner::new(config, warehouse, store),
            store,
            client,
            progress: false,
            shutdown: Shutdown::never(),
        }
    }

    /// Draws a progress bar on standard error while batches are sent.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self.planner = self.planner.with_progress(progress);
        self.events = self.events.with_progress(progress);
        self
    }

    /// Stops runs when `shutdown` says so: after the request in flight at the first signal, at once at the second.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Runs one sync, of either kind, and records the run in its history.
    pub async fn run(&self, sync: SyncEntry<'_>, options: SyncOptions) -> SyncReport {
        let started = Instant::now();
        let started_at = Utc::now();
        // Time-ordered and unique: a run's snapshot never shares a name with the committed one.
        let run_id = uuid::Uuid::now_v7().to_string();
        let calls_before = self.client.stats();
        let mut tally = Tally::default();
        // Dropping the run at an await point is safe: every write to the journal and the store happens between them.
        let inner = async {
            match sync {
                SyncEntry::Segment(sync) => {
                    self.run_inner(sync, &run_id, options, &mut tally).await
                }
                SyncEntry::Events(sync) => {
                    self.run_events(sync, &run_id, options, &mut tally).await
                }
            }
        };
        let result = tokio::select! {
            result = inner => result,
            () = self.shutdown.reached(Stage::StopNow) => Err(EngineError::StoppedAtOnce),
        };
        let name = sync.name();
        let (outcome, error) = match result {
            Ok(outcome) => (outcome, None),
            Err(EngineError::Plan(e)) => (RunOutcome::Failed, Some(e.to_string())),
            Err(e) => (e.outcome(), Some(format!("sync `{name}`: {e}"))),
        };
        let error = error.map(|e| self.client.token().scrub(&e));
        let record = RunRecord {
            sync: name.to_string(),
            run_id: run_id.clone(),
            started_at,
            finished_at: Utc::now(),
            duration_ms: started.elapsed().as_millis() as u64,
            outcome,
            resumed_run: tally.resumed_run.clone(),
            adds: tally.adds,
            removes: tally.removes,
            batches_acknowledged: tally.batches_acknowledged,
            batches_planned: tally.batches_planned,
            excluded: tally.excluded.clone(),
            drift: tally.drift.clone(),
            events: tally.events.clone(),
            calls: self.client.stats().since(&calls_before),
            error: error.clone(),
        };
        if let Err(e) = history::append(self.store, &record) {
            tracing::warn!(sync = %name, error = %e, "could not append to the run history");
        }
        SyncReport {
            sync: record.sync,
            run_id,
            outcome,
            started_at,
            finished_at: record.finished_at,
            resumed_run: record.resumed_run,
            adds: record.adds,
            removes: record.removes,
            batches_planned: record.batches_planned,
            batches_acknowledged: record.batches_acknowledged,
            calls: record.calls,
            duration_ms: record.duration_ms,
            excluded: record.excluded,
            drift: record.drift,
            events: record.events,
            gate_stops: tally.gate_stops.iter().map(ToString::to_string).collect(),
            notes: tally.notes,
            error,
        }
    }

    async fn run_inner(
        &self,
        sync: &SyncConfig,
        run_id: &str,
        options: SyncOptions,
        tally: &mut Tally,
    ) -> Result<RunOutcome, EngineError> {
        let _lock = self.lock(&sync.name, run_id).await?;
        let settings = CheckpointSettings::of(self.config, sync);
        self.settle_journal(sync, &settings, options, tally).await?;
        let run = self.plan_run(sync, options.full, Listing::InEngine).await?;
        tally.planned(&run.plan);
        if !run.plan.gate_stops.is_empty() {
            if !options.override_gates {
                tally.gate_stops.clone_from(&run.plan.gate_stops);
                return Ok(RunOutcome::GateStopped);
            }
            tracing::warn!(sync = %sync.name, "removal gates overridden for this run");
        }
        if run.plan.adds.is_empty() && run.plan.removes.is_empty() {
            if !run.model_matches_checkpoint {
                // The model moved without anything to send (keys left in add mode, say): the checkpoint follows it.
                let snapshot = self.prepare_snapshot(sync, run_id, &run.model)?;
                self.store
                    .commit_prepared(&sync.name, run_id, &settings, &snapshot)?;
            }
            return Ok(RunOutcome::NothingToChange);
        }
        if self.shutdown.requested() {
            return Err(EngineError::StoppedBeforeSending);
        }
        let segment_kind = self
            .ready_segment(sync, run.segment, &run.plan, run_id)
            .await?;
        let journal =
            self.write_journal(sync, run_id, &settings, segment_kind, &run.model, &run.plan)?;
        // The engine's copies of the model and the delta are no longer needed while the batches are sent.
        drop((run.delta, run.model));
        self.finish(sync, journal, &settings, tally).await?;
        Ok(RunOutcome::Synced)
    }

    /// Takes the sync's run lock, waiting up to `state.lock_wait` for a run under way (without holding up other
    /// syncs of the same process, which share its thread), then stops naming the holder.
    pub(crate) async fn lock(&self, sync: &str, run_id: &str) -> Result<SyncLock, EngineError> {
        let wait = self.config.lock_wait();
        let started = Instant::now();
        loop {
            if let Some(lock) = self.store.try_lock(sync, run_id)? {
                return Ok(lock);
            }
            if started.elapsed() >= wait {
                return Err(StateError::Locked {
                    sync: sync.to_string(),
                    holder: self.store.holder(sync),
                    waited: wait,
                }
                .into());
            }
            tokio::time::sleep(LOCK_POLL.min(wait - started.elapsed())).await;
        }
    }

    /// Deals with the journal an earlier run left: finishes it, or abandons it when LaunchDarkly refused one of
    /// its batches (sending it again would fail the same way) or when this run is `--full` (it compares with the
    /// segment's real membership, whatever that run had done).
    async fn settle_journal(
        &self,
        sync: &SyncConfig,
        settings: &CheckpointSettings,
        options: SyncOptions,
        tally: &mut Tally,
    ) -> Result<(), EngineError> {
        let Some(journal) = Journal::<RunHeader, Batch>::open(self.store, &sync.name)? else {
            return Ok(());
        };
        let run = journal.header.run.run_id.clone();
        let abandoned = if options.full {
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
        match abandon_or_resume(&sync.name, journal, abandoned, tally)? {
            Some(journal) => self.finish(sync, journal, settings, tally).await,
            None => Ok(()),
        }
    }

    /// Plans one sync against what LaunchDarkly really holds: reads the segment (which also confirms the token on
    /// every run), then compares the model with the segment's membership (mirror syncs of standard segments, first
    /// runs, `full`) or with the checkpoint, and leaves out keys the segment excludes. Sends nothing. With
    /// `Listing::InEngine`, the keys for a big segment (which has no excluded targets) stay in the set engine.
    async fn plan_run(
        &self,
        sync: &SyncConfig,
        full: bool,
        listing: Listing,
    ) -> Result<RunPlan<'a>, EngineError> {
        let segment = self
            .client
            .get_segment(&sync.segment, &sync.context_kind)
            .await?;
        let checkpoint = if full {
            None
        } else {
            self.planner.checkpoint(sync)?
        };
        let members = StringArray::from_iter_values(
            segment
                .as_ref()
                .and_then(|s| s.members.as_deref())
                .unwrap_or_default(),
        );
        let baseline = baseline(sync, segment.as_ref(), checkpoint.as_ref(), &members)?;
        let model = self.planner.model_keys(
            sync,
            match baseline {
                Baseline::Checkpoint(_) => Against::Checkpoint,
                Baseline::Membership(_) => Against::Membership,
            },
        )?;
        let big = match &segment {
            Some(segment) => segment.kind == SegmentKind::Big && segment.excluded.is_empty(),
            None => sync.create_segment == Some(SegmentKind::Big),
        };
        let listing = if big { listing } else { Listing::Listed };
        let (mut plan, delta) = self.planner.plan_against(sync, &model, baseline, listing)?;
        let model_matches_checkpoint = match (&checkpoint, baseline) {
            (None, _) => false,
            (Some(_), Baseline::Checkpoint(_)) => plan.entered == 0 && plan.left == 0,
            // Compared with the membership (a standard segment: small), a second comparison says it.
            (Some(checkpoint), Baseline::Membership(_)) => {
                self.planner.matches_checkpoint(sync, &model, checkpoint)?
            }
        };
        if let Some(segment) = &segment {
            self.planner
                .fit_to_segment(sync, &mut plan, segment, baseline, checkpoint.as_ref())?;
        }
        Ok(RunPlan {
            plan,
            model,
            delta,
            segment,
            model_matches_checkpoint,
        })
    }

    /// `ldsync plan --full`: the plan a `sync --full` would execute, against the segment's real membership.
    pub async fn plan_full(&self, sync: &SyncConfig) -> Result<SyncPlan, SyncError> {
        match self.plan_run(sync, true, Listing::Listed).await {
            Ok(run) => Ok(run.plan),
            Err(EngineError::Plan(e)) => Err(e),
            Err(e) => Err(self.planner.error(
                sync,
                PlanError::LaunchDarkly(self.client.token().scrub(&e.to_string())),
            )),
        }
    }

    /// Checks that the segment can take the plan, creating it if it is missing and the sync allows it.
    async fn ready_segment(
        &self,
        sync: &SyncConfig,
        segment: Option<Segment>,
        plan: &SyncPlan,
        run_id: &str,
    ) -> Result<SegmentKind, EngineError> {
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
                    return Err(EngineError::BigSegmentKind {
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
        sync: &SyncConfig,
        run_id: &str,
        settings: &CheckpointSettings,
        segment_kind: SegmentKind,
        model: &ModelKeys<'_>,
        plan: &SyncPlan,
    ) -> Result<Journal, EngineError> {
        let snapshot = self.prepare_snapshot(sync, run_id, model)?;
        let error = |e: AudienceError| EngineError::Plan(self.planner.error(sync, e));
        let engine = model.engine();
        let mut adds = KeyRead::prepare(engine, &plan.adds).map_err(error)?;
        let mut removes = KeyRead::prepare(engine, &plan.removes).map_err(error)?;
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

    /// Writes the model's keys as the snapshot this run will commit.
    fn prepare_snapshot(
        &self,
        sync: &SyncConfig,
        run_id: &str,
        model: &ModelKeys<'_>,
    ) -> Result<PreparedSnapshot, EngineError> {
        let writing = progress::step_spinner(&sync.name, "writing the snapshot", self.progress);
        let prepared = match model.prepare_in_warehouse(&sync.name, run_id) {
            Some(prepared) => prepared.map_err(EngineError::from),
            None => self.store.prepare(&sync.name, run_id, |path| {
                model
                    .write_snapshot(path)
                    .map_err(|e| EngineError::Plan(self.planner.error(sync, e)))
            }),
        };
        writing.finish_and_clear();
        prepared
    }

    /// Sends the journal's unacknowledged batches, then commits its checkpoint and closes it. A batch LaunchDarkly
    /// refuses for good is recorded as refused, so that no later run sends it again.
    async fn finish(
        &self,
        sync: &SyncConfig,
        mut journal: Journal,
        settings: &CheckpointSettings,
        tally: &mut Tally,
    ) -> Result<(), EngineError> {
        let header = journal.header.clone();
        let changes = header.settings.changes(settings);
        if !changes.is_empty() {
            return Err(EngineError::JournalSettings {
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
            async |batch: &Batch| {
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
                    .await
            },
        )
        .await?;
        self.store
            .commit_prepared(&sync.name, &header.run.run_id, settings, &header.snapshot)?;
        journal.close()?;
        tracing::info!(sync = %sync.name, run = %header.run.run_id, batches = header.batch_count, "committed the checkpoint");
        Ok(())
    }

    /// Sends a journal's unacknowledged batches in order through `send`, recording each acknowledgement. A batch
    /// LaunchDarkly refuses for good is recorded as refused, so that no later run sends it again; any other failure,
    /// or a shutdown signal, leaves the rest in the journal for the next run.
    pub(crate) async fn send_pending<H: JournalHeader, B: JournalBatch>(
        &self,
        journal: &mut Journal<H, B>,
        tally: &mut Tally,
        describe: impl Fn(&B) -> (&'static str, String),
        send: impl AsyncFn(&B) -> Result<(), ApiError>,
    ) -> Result<(), EngineError> {
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
                return Err(EngineError::Stopped {
                    run_id,
                    acknowledged: journal.acknowledged_count(),
                    total,
                });
            }
            // Read from the journal as it is sent: a run never holds all its batches.
            let batch = journal.batch(index)?;
            if let Err(source) = send(&batch).await {
                progress.abandon();
                let acknowledged = journal.acknowledged_count();
                if !source.is_final_for_batch() {
                    return Err(EngineError::FailedPartway {
                        run_id,
                        acknowledged,
                        total,
                        source,
                    });
                }
                let reason = self.client.token().scrub(&source.to_string());
                journal.refuse(index, &reason)?;
                let (action, keys) = describe(&batch);
                return Err(EngineError::Refused {
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
) -> Result<Option<Journal<H, B>>, EngineError> {
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

/// What a run compares the model with:
/// - a standard segment's real membership in mirror mode (every run, so hand edits are repaired), and on a first
///   run or `--full` in any mode;
/// - the checkpoint otherwise;
/// - nothing on a first add- or remove-mode run against a big segment that has members: LaunchDarkly cannot list
///   them cheaply, and adding a member or removing a non-member changes nothing, so every model key is sent.
///
/// Only a mirror run needs a big segment's members; without a checkpoint it stops rather than guess them.
fn baseline<'p>(
    sync: &SyncConfig,
    segment: Option<&Segment>,
    checkpoint: Option<&'p Checkpoint>,
    members: &'p StringArray,
) -> Result<Baseline<'p>, EngineError> {
    let Some(segment) = segment else {
        return match checkpoint {
            Some(checkpoint) => Err(EngineError::SegmentDeleted {
                segment: sync.segment.clone(),
                run_id: checkpoint.manifest.run_id.clone(),
                keys: checkpoint.manifest.key_count,
            }),
            None => Ok(Baseline::Membership(members)),
        };
    };
    let listed = segment.members.is_some();
    Ok(match checkpoint {
        _ if listed && sync.mode == Mode::Mirror => Baseline::Membership(members),
        Some(checkpoint) => Baseline::Checkpoint(Some(checkpoint)),
        None if listed || segment.member_count == 0 => Baseline::Membership(members),
        None if sync.mode != Mode::Mirror => Baseline::Checkpoint(None),
        None => {
            return Err(EngineError::BigSegmentMembersUnknown {
                segment: sync.segment.clone(),
                count: segment.member_count,
            });
        }
    })
}

/// Checks that a segment this run asked to create (or found created by someone else) is what the sync creates.
fn check_created(
    sync: &SyncConfig,
    wanted: SegmentKind,
    segment: &Segment,
) -> Result<(), EngineError> {
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
        return Err(EngineError::CreatedElsewhere {
            segment: sync.segment.clone(),
            wanted,
            found,
        });
    }
    Ok(())
}

fn check_standard_size(sync: &SyncConfig, after: u64) -> Result<(), EngineError> {
    if after > STANDARD_SEGMENT_MAX_TARGETS {
        return Err(EngineError::StandardSegmentFull {
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
    mut keys: impl Iterator<Item = Result<String, AudienceError>> + 'k,
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
            keys,
        })
    })
}
