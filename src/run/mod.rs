//! `ldsync sync`: the runner that applies a sync's plan to LaunchDarkly without ever losing, repeating or
//! inventing a change, for both kinds of sync.
//!
//! Every run is the same list of steps: take the sync's run lock ([`Runner::lock`]); settle the journal a crash
//! or a refusal left (finish it, or abandon it); plan; stop at a removal gate; write the journal of batches before
//! anything is sent; send each batch, recording each acknowledgement ([`send`]); commit the checkpoint only when
//! every batch is acknowledged; and record the run in the sync's history ([`Runner::run`]). [`segment`] holds the
//! steps of a segment sync, [`events`] those of an events sync.

mod events;
mod export;
mod import;
mod segment;
mod send;
mod wait;

use std::time::Instant;

use chrono::Utc;
use serde::Serialize;

use crate::config::{Config, SyncEntry};
use crate::history::{self, EventCounts, RunOutcome, RunRecord};
use crate::launchdarkly::{ApiError, Client};
use crate::plan::{Drift, EventPlanner, GateStop, KeySample, Planner, SyncPlan, SyncPlanError};
use crate::shutdown::{Shutdown, Stage};
use crate::state::{JournalError, StateError, Store, SyncLock};
use crate::vocab::ErrorClass;
use crate::warehouse::Warehouse;

pub use events::EventRunHeader;
pub use segment::{Batch, RunHeader, SegmentJournal};

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
pub enum RunError {
    #[error(transparent)]
    Plan(#[from] SyncPlanError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Api(#[from] ApiError),
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
    #[error(
        "import {id} of big segment `{segment}` awaits approval in LaunchDarkly; nothing failed, and the checkpoint \
         did not move: once a reviewer approves it (or declines it), run `ldsync sync` again, which waits on that \
         same import and finishes the run"
    )]
    ImportAwaitsApproval { segment: String, id: String },
    #[error(
        "waited {waited} for {what} (LaunchDarkly says: {last}), as long as big_segment.wait allows; the checkpoint \
         did not move, and the run journal keeps any import already submitted, so the next `ldsync sync` waits on \
         that import rather than uploading it again (raise big_segment.wait to wait longer)"
    )]
    BulkWaitSpent {
        what: String,
        waited: String,
        last: String,
    },
    #[error(
        "batch {batch} of the run journal {path} was submitted as import {id} with other keys than the journal now \
         holds; move the journal aside and run `ldsync sync --full` to reconcile the segment"
    )]
    ImportChanged {
        id: String,
        batch: usize,
        path: String,
    },
}

impl RunError {
    /// Who must act on this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            RunError::Plan(e) => e.class(),
            RunError::State(e) => e.class(),
            RunError::Journal(e) => e.class(),
            RunError::Api(e) => e.class(),
            RunError::BigSegmentKind { .. } | RunError::NoFullEventsRun { .. } => {
                ErrorClass::Config
            }
            RunError::StandardSegmentFull { .. } => ErrorClass::Data,
            RunError::CreatedElsewhere { .. }
            | RunError::FailedPartway { .. }
            | RunError::Refused { .. }
            | RunError::ImportAwaitsApproval { .. }
            | RunError::BulkWaitSpent { .. } => ErrorClass::LaunchDarkly,
            RunError::JournalSettings { .. }
            | RunError::EventJournalSettings { .. }
            | RunError::ImportChanged { .. } => ErrorClass::StateStore,
            // A signal is not a failure; its exit code is 130 whatever the class says.
            RunError::StoppedBeforeSending | RunError::Stopped { .. } | RunError::StoppedAtOnce => {
                ErrorClass::Internal
            }
        }
    }

    /// The outcome a run that failed with this error records.
    fn outcome(&self) -> RunOutcome {
        match self {
            RunError::StoppedBeforeSending | RunError::Stopped { .. } | RunError::StoppedAtOnce => {
                RunOutcome::Interrupted
            }
            _ => RunOutcome::Failed,
        }
    }
}

/// What one sync run did, as the command prints it: the record it left in the run history, and what only this
/// invocation shows.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    #[serde(flatten)]
    pub run: RunRecord,
    pub gate_stops: Vec<String>,
    pub notes: Vec<String>,
    /// Who must act on the error, when the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
}

impl SyncReport {
    /// Logs how the run ended.
    pub fn log(&self) {
        let run = &self.run;
        match &run.error {
            None => tracing::info!(
                sync = %run.sync,
                outcome = run.outcome.as_str(),
                adds = run.adds,
                removes = run.removes,
                requests = run.calls.requests,
                seconds = run.duration_ms as f64 / 1000.0,
                "sync finished"
            ),
            Some(error) => {
                tracing::error!(sync = %run.sync, outcome = run.outcome.as_str(), "{error}")
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
    audience: Option<u64>,
    pub(crate) batches_planned: u64,
    pub(crate) batches_acknowledged: u64,
    excluded: KeySample,
    drift: Option<Drift>,
    gate_stops: Vec<GateStop>,
    pub(crate) notes: Vec<String>,
    /// An events sync's counts.
    pub(crate) events: Option<EventCounts>,
    /// Whether the run compared with the segment's real membership.
    full: bool,
}

impl Tally {
    /// What a run whose own plan has nothing to send did: `synced` when it finished an interrupted run's batches
    /// first, so that its record says it changed the segment.
    fn nothing_more_to_change(&self) -> RunOutcome {
        if self.batches_acknowledged > 0 {
            RunOutcome::Synced
        } else {
            RunOutcome::NothingToChange
        }
    }

    /// Takes what the run's plan says into the tally.
    fn planned(&mut self, plan: &SyncPlan) {
        self.adds = plan.adds.len() as u64;
        self.removes = plan.removes.len() as u64;
        self.audience = Some(plan.keys.distinct);
        self.excluded = KeySample::of(plan.excluded.iter().flatten());
        self.drift = plan.drift.clone().filter(|d| !d.is_empty());
        self.notes.extend(plan.notes.iter().cloned());
        if let Some(drift) = &self.drift {
            self.notes.push(drift.to_string());
        }
    }
}

/// When and as what a run started.
struct RunStart {
    started: Instant,
    started_at: chrono::DateTime<Utc>,
    run_id: String,
}

impl RunStart {
    /// Run `run_id` starts now: once it holds its sync's lock, so that its start never comes before the end of the
    /// run it waited for.
    fn now(run_id: String) -> Self {
        RunStart {
            started: Instant::now(),
            started_at: Utc::now(),
            run_id,
        }
    }
}

/// A new run's ID: time-ordered and unique, so a run's snapshot never shares a name with the committed one.
fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Runs syncs of one configuration.
pub struct Runner<'a> {
    pub(crate) config: &'a Config,
    planner: Planner<'a>,
    pub(crate) events: EventPlanner<'a>,
    pub(crate) store: &'a Store,
    pub(crate) client: Client,
    progress: bool,
    pub(crate) shutdown: Shutdown,
}

impl<'a> Runner<'a> {
    /// Syncs models of an open warehouse through `client`, keeping their state in `store`.
    pub fn new(
        config: &'a Config,
        warehouse: &'a Warehouse,
        store: &'a Store,
        client: Client,
    ) -> Self {
        Runner {
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

    /// Runs one sync, of either kind, and records the run in its history. A run of the sync under way elsewhere
    /// is waited for up to `state.lock_wait`, then the run fails naming it.
    pub async fn run(&self, sync: SyncEntry<'_>, options: SyncOptions) -> SyncReport {
        let run_id = new_run_id();
        let lock = self.lock(sync.name(), &run_id).await;
        self.run_holding(sync, options, RunStart::now(run_id), lock)
            .await
    }

    /// Runs one sync as [`Runner::run`] does, unless a run of it is under way elsewhere (another daemon sharing the
    /// state store): then `None`, and nothing is recorded. That run is this one's, not a failure of it.
    pub async fn run_unless_held(
        &self,
        sync: SyncEntry<'_>,
        options: SyncOptions,
    ) -> Option<SyncReport> {
        let run_id = new_run_id();
        let lock = match self.store.try_lock(sync.name(), &run_id) {
            Ok(None) => return None,
            Ok(Some(lock)) => Ok(lock),
            Err(e) => Err(e.into()),
        };
        Some(
            self.run_holding(sync, options, RunStart::now(run_id), lock)
                .await,
        )
    }

    /// Runs one sync holding its run lock (or failing with why the lock could not be taken), and records the run.
    async fn run_holding(
        &self,
        sync: SyncEntry<'_>,
        options: SyncOptions,
        RunStart {
            started,
            started_at,
            run_id,
        }: RunStart,
        lock: Result<SyncLock, RunError>,
    ) -> SyncReport {
        let calls_before = self.client.stats();
        let mut tally = Tally::default();
        // The lock is held until the run's record is written, so that runs of one sync never overlap in the history
        // either, whichever host runs them.
        let (lock, not_locked) = match lock {
            Ok(lock) => (Some(lock), None),
            Err(e) => (None, Some(e)),
        };
        // Dropping the run at an await point is safe: every write to the journal and the store happens between them.
        let inner = async {
            if let Some(e) = not_locked {
                return Err(e);
            }
            match sync {
                SyncEntry::Segment(sync) => {
                    self.run_segment(sync, &run_id, options, &mut tally).await
                }
                SyncEntry::Events(sync) => {
                    self.run_events(sync, &run_id, options, &mut tally).await
                }
            }
        };
        let result = tokio::select! {
            result = inner => result,
            () = self.shutdown.reached(Stage::StopNow) => Err(RunError::StoppedAtOnce),
        };
        let name = sync.name();
        let error_class = result.as_ref().err().map(RunError::class);
        let (outcome, error) = match result {
            Ok(outcome) => (outcome, None),
            Err(RunError::Plan(e)) => (RunOutcome::Failed, Some(e.to_string())),
            Err(e) => (e.outcome(), Some(format!("sync `{name}`: {e}"))),
        };
        let error = error.map(|e| self.client.token().scrub(&e));
        let record = RunRecord {
            sync: name.to_string(),
            run_id,
            started_at,
            finished_at: Utc::now(),
            duration_ms: started.elapsed().as_millis() as u64,
            outcome,
            resumed_run: tally.resumed_run,
            adds: tally.adds,
            removes: tally.removes,
            audience: tally.audience,
            batches_acknowledged: tally.batches_acknowledged,
            batches_planned: tally.batches_planned,
            excluded: tally.excluded,
            drift: tally.drift,
            events: tally.events,
            full: tally.full,
            calls: self.client.stats().since(&calls_before),
            error,
        };
        if let Err(e) = history::append(self.store, &record) {
            tracing::warn!(sync = %name, error = %e, "could not append to the run history");
        }
        drop(lock);
        SyncReport {
            run: record,
            gate_stops: tally.gate_stops.iter().map(ToString::to_string).collect(),
            notes: tally.notes,
            error_class,
        }
    }

    /// Takes the sync's run lock, waiting up to `state.lock_wait` for a run under way (without holding up other
    /// syncs of the same process, which share its thread), then stops naming the holder.
    pub(crate) async fn lock(&self, sync: &str, run_id: &str) -> Result<SyncLock, RunError> {
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
            tokio::time::sleep(LOCK_POLL.min(wait.saturating_sub(started.elapsed()))).await;
        }
    }
}
