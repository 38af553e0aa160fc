//! `ldsync sync`: the engine that applies a sync's plan to its LaunchDarkly segment without ever losing,
//! repeating or inventing a change.
//!
//! One run: take the sync's lock; finish any run a crash left in the journal; run the model; compare it with the
//! checkpoint (or, on a first run or with `--full`, with the segment's real membership); stop at a removal gate
//! before any call; check the segment's type and size; write the new snapshot and the journal of batches; send
//! adds then removes, recording each acknowledgement; and commit the checkpoint only when every batch is
//! acknowledged. Each run leaves a record in the sync's history.

use std::time::Instant;

use arrow::array::{Array, StringArray};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::config::{Config, Mode, SegmentKind, SyncConfig};
use crate::history::{self, RunOutcome, RunRecord};
use crate::journal::{Batch, JOURNAL_FORMAT, Journal, JournalError, RunHeader};
use crate::keys::KeySet;
use crate::launchdarkly::{ApiError, CallStats, Client, Segment};
use crate::plan::{
    Action, Baseline, GateStop, Planner, STANDARD_SEGMENT_MAX_TARGETS, SyncError, SyncPlan,
    percent_gate,
};
use crate::state::{CheckpointSettings, LocalStore, StateError};
use crate::warehouse::WarehouseError;

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
        "an unfinished run ({run_id}) of this sync was started with other settings ({changes}); restore them so that \
         it can finish, or move {path} aside to abandon it and run `ldsync sync --full` to reconcile the segment"
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
    Interrupted {
        run_id: String,
        acknowledged: usize,
        total: usize,
        source: ApiError,
    },
}

/// What one sync run did, as the command prints it.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub sync: String,
    pub run_id: String,
    pub outcome: RunOutcome,
    /// An interrupted run this run finished first.
    pub resumed_run: Option<String>,
    pub adds: u64,
    pub removes: u64,
    pub batches_planned: u64,
    pub batches_acknowledged: u64,
    pub calls: CallStats,
    pub duration_ms: u64,
    pub gate_stops: Vec<String>,
    pub notes: Vec<String>,
    pub error: Option<String>,
}

/// What a run counts as it goes, whatever way it ends.
#[derive(Debug, Default)]
struct Tally {
    resumed_run: Option<String>,
    adds: u64,
    removes: u64,
    batches_planned: u64,
    batches_acknowledged: u64,
    gate_stops: Vec<GateStop>,
    notes: Vec<String>,
}

/// Runs syncs of one configuration.
pub struct Engine<'a> {
    config: &'a Config,
    planner: Planner<'a>,
    store: LocalStore,
    client: Client,
    progress: bool,
}

impl<'a> Engine<'a> {
    /// Opens the warehouse and the checkpoint store; `progress` draws a progress bar on standard error.
    pub fn new(config: &'a Config, client: Client, progress: bool) -> Result<Self, WarehouseError> {
        Ok(Engine {
            config,
            planner: Planner::open(config)?,
            store: LocalStore::new(config.state_dir()),
            client,
            progress,
        })
    }

    /// Runs one sync and records the run in its history.
    pub async fn run(&self, sync: &SyncConfig, options: SyncOptions) -> SyncReport {
        let started = Instant::now();
        let started_at = Utc::now();
        let run_id = format!(
            "{}-{:04x}",
            started_at.format("%Y%m%dT%H%M%SZ"),
            fastrand::u16(..)
        );
        let calls_before = self.client.stats();
        let mut tally = Tally::default();
        let result = self.run_inner(sync, &run_id, options, &mut tally).await;
        let (outcome, error) = match result {
            Ok(outcome) => (outcome, None),
            Err(EngineError::Plan(e)) => (RunOutcome::Failed, Some(e.to_string())),
            Err(e) => (
                RunOutcome::Failed,
                Some(format!("sync `{}`: {e}", sync.name)),
            ),
        };
        let error = error.map(|e| self.client.token().scrub(&e));
        let record = RunRecord {
            sync: sync.name.clone(),
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
            calls: self.client.stats().since(&calls_before),
            error: error.clone(),
        };
        if let Err(e) = history::append(&self.store.sync_dir(&sync.name), &record) {
            tracing::warn!(sync = %sync.name, error = %e, "could not append to the run history");
        }
        SyncReport {
            sync: record.sync,
            run_id,
            outcome,
            resumed_run: record.resumed_run,
            adds: record.adds,
            removes: record.removes,
            batches_planned: record.batches_planned,
            batches_acknowledged: record.batches_acknowledged,
            calls: record.calls,
            duration_ms: record.duration_ms,
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
        let _lock = self.store.lock(&sync.name)?;
        let settings = CheckpointSettings::of(self.config, sync);
        let dir = self.store.sync_dir(&sync.name);
        if let Some(journal) = Journal::open(&dir, &sync.name)? {
            tally.resumed_run = Some(journal.header.run_id.clone());
            tracing::info!(sync = %sync.name, run = %journal.header.run_id, "finishing an interrupted run first");
            self.finish(sync, journal, &settings, tally).await?;
        }
        let model = self.planner.model_keys(sync)?;
        let checkpoint = if options.full {
            None
        } else {
            self.planner.checkpoint(sync)?
        };
        let (mut plan, mut segment) = match &checkpoint {
            Some(checkpoint) => {
                let plan = self.planner.plan_against(
                    sync,
                    &model,
                    Baseline::Checkpoint(Some(checkpoint)),
                )?;
                (plan, None)
            }
            None => {
                let segment = self
                    .client
                    .get_segment(&sync.segment, &sync.context_kind)
                    .await?;
                let members = membership(sync, segment.as_ref())?;
                let plan =
                    self.planner
                        .plan_against(sync, &model, Baseline::Membership(&members))?;
                (plan, Some(segment))
            }
        };
        tally.adds = plan.adds.len() as u64;
        tally.removes = plan.removes.len() as u64;
        tally.notes.clone_from(&plan.notes);
        if sync.mode == Mode::Remove && !plan.removes.is_empty() && segment.is_none() {
            // A remove-mode checkpoint holds the keys removed, not the segment's members: read its size.
            let read = self
                .client
                .get_segment(&sync.segment, &sync.context_kind)
                .await?;
            let members = read.as_ref().map_or(0, |s| s.member_count);
            let removing = match read.as_ref().and_then(|s| s.members.as_deref()) {
                // A standard segment lists its members: only those present are really removed.
                Some(members) => held(&plan.removes, members),
                None => plan.removes.len() as u64,
            };
            plan.gate_stops
                .extend(percent_gate(sync, members, removing));
            segment = Some(read);
        }
        if !plan.gate_stops.is_empty() {
            if !options.override_gates {
                tally.gate_stops.clone_from(&plan.gate_stops);
                return Ok(RunOutcome::GateStopped);
            }
            tracing::warn!(sync = %sync.name, "removal gates overridden for this run");
        }
        if plan.adds.is_empty() && plan.removes.is_empty() {
            let unchanged = checkpoint.is_some() && plan.entered == 0 && plan.left == 0;
            if !unchanged {
                // The model moved without anything to send (keys left in add mode, say): the checkpoint follows it.
                self.store
                    .commit(&sync.name, run_id, &settings, model.keys.iter().flatten())?;
            }
            return Ok(RunOutcome::NothingToChange);
        }
        let segment = match segment {
            Some(segment) => segment,
            None => {
                self.client
                    .get_segment(&sync.segment, &sync.context_kind)
                    .await?
            }
        };
        if segment.is_none()
            && let Some(checkpoint) = &checkpoint
        {
            return Err(EngineError::SegmentDeleted {
                segment: sync.segment.clone(),
                run_id: checkpoint.manifest.run_id.clone(),
                keys: checkpoint.manifest.key_count,
            });
        }
        let kind = self.ready_segment(sync, segment, &plan, run_id).await?;
        let journal = self.write_journal(sync, run_id, &settings, kind, &model, &plan)?;
        self.finish(sync, journal, &settings, tally).await?;
        Ok(RunOutcome::Synced)
    }

    /// Checks that the segment can take the plan, creating it if it is missing and the sync allows it.
    async fn ready_segment(
        &self,
        sync: &SyncConfig,
        segment: Option<Segment>,
        plan: &SyncPlan,
        run_id: &str,
    ) -> Result<SegmentKind, EngineError> {
        let Some(segment) = segment else {
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
            self.client
                .create_segment(&sync.segment, kind, &sync.context_kind, &description)
                .await?;
            tracing::info!(sync = %sync.name, segment = %sync.segment, ?kind, "created the segment");
            return Ok(kind);
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
                let members = segment.members.as_deref().unwrap_or_default();
                let added = plan.adds.len() as u64 - held(&plan.adds, members);
                let removed = held(&plan.removes, members);
                check_standard_size(sync, segment.total_targets + added - removed)?;
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
        model: &KeySet,
        plan: &SyncPlan,
    ) -> Result<Journal, EngineError> {
        let snapshot = self
            .store
            .prepare(&sync.name, run_id, model.keys.iter().flatten())?;
        let batches = batches(plan, sync.batch_size);
        let header = RunHeader {
            format: JOURNAL_FORMAT,
            sync: sync.name.clone(),
            run_id: run_id.to_string(),
            started_at: Utc::now(),
            settings: settings.clone(),
            segment_kind,
            snapshot,
            batch_count: batches.len(),
        };
        Ok(Journal::create(
            &self.store.sync_dir(&sync.name),
            header,
            batches,
        )?)
    }

    /// Sends the journal's unacknowledged batches, then commits its checkpoint and closes it.
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
                run_id: header.run_id,
                changes: changes.join(", "),
                path: journal.path().display().to_string(),
            });
        }
        let total = journal.batch_count();
        let pending: Vec<Batch> = journal.pending().cloned().collect();
        tally.batches_planned += pending.len() as u64;
        let progress = self.progress_bar(sync, &pending);
        for batch in pending {
            let comment = format!(
                "ldsync sync `{}` run {}: {} batch {} of {total}",
                sync.name,
                header.run_id,
                batch.action.as_str(),
                batch.index + 1
            );
            let sent = self
                .client
                .change_targets(
                    &sync.segment,
                    header.segment_kind,
                    &sync.context_kind,
                    batch.action,
                    &batch.keys,
                    &comment,
                )
                .await;
            if let Err(source) = sent {
                progress.abandon();
                return Err(EngineError::Interrupted {
                    run_id: header.run_id,
                    acknowledged: journal.acknowledged_count(),
                    total,
                    source,
                });
            }
            journal.acknowledge(batch.index)?;
            tally.batches_acknowledged += 1;
            progress.inc(batch.keys.len() as u64);
        }
        progress.finish_and_clear();
        self.store
            .commit_prepared(&sync.name, &header.run_id, settings, &header.snapshot)?;
        journal.close()?;
        tracing::info!(sync = %sync.name, run = %header.run_id, batches = total, "committed the checkpoint");
        Ok(())
    }

    fn progress_bar(&self, sync: &SyncConfig, pending: &[Batch]) -> ProgressBar {
        let keys = pending.iter().map(|b| b.keys.len() as u64).sum();
        if !self.progress || pending.is_empty() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(keys), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} keys, {per_sec}, eta {eta}",
            )
            .expect("a valid progress template")
            .progress_chars("=> "),
        );
        bar.set_prefix(sync.name.clone());
        bar
    }
}

/// The segment's members of the sync's context kind, as a baseline for a first run or `--full`.
fn membership(sync: &SyncConfig, segment: Option<&Segment>) -> Result<StringArray, EngineError> {
    match segment {
        None => Ok(StringArray::from(Vec::<&str>::new())),
        Some(segment) => match &segment.members {
            Some(members) => Ok(StringArray::from_iter_values(members)),
            None if segment.member_count == 0 => Ok(StringArray::from(Vec::<&str>::new())),
            None => Err(EngineError::BigSegmentMembersUnknown {
                segment: sync.segment.clone(),
                count: segment.member_count,
            }),
        },
    }
}

/// How many of `keys` the sorted `members` hold.
fn held(keys: &StringArray, members: &[String]) -> u64 {
    keys.iter()
        .flatten()
        .filter(|k| members.binary_search_by(|m| m.as_str().cmp(k)).is_ok())
        .count() as u64
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

/// `keys` in chunks of at most `batch_size`, each tagged with `action`.
fn chunked(
    action: Action,
    keys: &StringArray,
    batch_size: usize,
) -> impl Iterator<Item = (Action, Vec<String>)> + '_ {
    let mut keys = keys.iter().flatten().map(str::to_string);
    std::iter::from_fn(move || {
        let chunk: Vec<String> = keys.by_ref().take(batch_size).collect();
        (!chunk.is_empty()).then_some((action, chunk))
    })
}

/// The plan's adds, then its removes, in batches of at most `batch_size` keys.
fn batches(plan: &SyncPlan, batch_size: usize) -> Vec<Batch> {
    let adds = chunked(Action::Add, &plan.adds, batch_size);
    let removes = chunked(Action::Remove, &plan.removes, batch_size);
    adds.chain(removes)
        .enumerate()
        .map(|(index, (action, keys))| Batch {
            index,
            action,
            keys,
        })
        .collect()
}
