//! The plan of one sync: run its model, diff the keys against its checkpoint, and say exactly what a sync would
//! send to LaunchDarkly and which removal gates would stop it. Planning reads; it never writes anything.

mod baseline;
mod events;
mod sync_plan;

use arrow::array::{Array, StringArray};

use crate::config::{Config, MAX_FILE_BYTES, Mode, SegmentSyncConfig};
use crate::dbt::{DbtModel, ModelError, ModelSql, model_sql};
use crate::launchdarkly::{ExportFile, ExportFileError, Segment};
use crate::progress;
use crate::set_engine::{
    Delta, Fold, KeyList, KeyRead, KeySource, KeyTable, Listing, ModelKeys, SetEngineError, held_by,
};
use crate::state::{Checkpoint, CheckpointSettings, PgStore, StateError, Store};
use crate::vocab::Direction;
use crate::vocab::ErrorClass;
use crate::vocab::SegmentKind;
use crate::warehouse::{KeyColumn, Warehouse, WarehouseError};

use baseline::choose_baseline;
pub use baseline::{Baseline, Members};
pub use events::{EventPlan, EventPlanner};
pub use sync_plan::{
    CheckpointInfo, Drift, GateStop, KeySample, PlanOutcome, PlannedRequest,
    STANDARD_SEGMENT_MAX_TARGETS, SyncPlan, requests,
};
use sync_plan::{gate_stops, notes, remove_mode_percent_gate, sorted_contains};

/// Keys read from an export file at a time, into the set engine.
const EXPORT_CHUNK: usize = 65_536;

/// Why one sync could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    SetEngine(#[from] SetEngineError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    EventModel(#[from] crate::events::model::EventModelError),
    #[error(transparent)]
    EventCheckpoint(#[from] crate::state::events::EventCheckpointError),
    #[error("cannot spool the run's event batches in the state directory: {0}")]
    Spool(std::io::Error),
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
        "segment `{segment}` does not exist in {project}/{environment}, so the keys this remove sync would remove \
         from it, {keys}, cannot be removed; a remove sync never creates its segment: create it in LaunchDarkly, or \
         correct the sync's segment key. Nothing was sent and the checkpoint did not move"
    )]
    RemoveFromMissingSegment {
        segment: String,
        project: String,
        environment: String,
        keys: KeySample,
    },
    #[error(transparent)]
    ExportFile(#[from] ExportFileError),
    /// Reading the segment for a plan against its real membership (`plan --full`) failed.
    #[error("{0}")]
    LaunchDarkly(String),
}

impl PlanError {
    pub fn class(&self) -> ErrorClass {
        match self {
            PlanError::Model(e) => e.class(),
            PlanError::Warehouse(e) => e.class(),
            PlanError::SetEngine(e) => e.class(),
            PlanError::State(e) => e.class(),
            PlanError::EventModel(e) => e.class(),
            PlanError::EventCheckpoint(e) => e.class(),
            PlanError::Spool(_) => ErrorClass::Internal,
            PlanError::SegmentDeleted { .. }
            | PlanError::BigSegmentMembersUnknown { .. }
            | PlanError::RemoveFromMissingSegment { .. }
            | PlanError::ExportFile(_)
            | PlanError::LaunchDarkly(_) => ErrorClass::LaunchDarkly,
        }
    }
}

/// A planning error with the sync and model it concerns.
#[derive(Debug, thiserror::Error)]
#[error("sync `{sync}` (model {model}): {source}")]
pub struct SyncPlanError {
    pub sync: String,
    pub model: String,
    pub source: Box<PlanError>,
}

impl SyncPlanError {
    pub fn class(&self) -> ErrorClass {
        self.source.class()
    }
}

/// A segment sync's plan with what executing it needs: the model's keys (written as the run's snapshot) and the
/// delta its key lists are read from (a big segment's keys stay in the set engine until the journal is written),
/// and the segment as it was read. Dropping it frees the set engine's tables.
pub struct ExecutablePlan<'e> {
    pub plan: SyncPlan,
    pub model: ModelKeys<'e>,
    /// Keeps the plan's `KeyList::InEngine` lists readable.
    delta: Delta<'e>,
    /// The segment as read before planning; `None` when it does not exist yet.
    pub segment: Option<Segment>,
    /// Model keys the run's snapshot leaves out, because LaunchDarkly is never asked to hold them: the keys the
    /// segment holds as excluded targets (add and mirror syncs). A lifted exclusion then shows as an entered key.
    pub left_out: StringArray,
    /// Whether a run with nothing to send leaves the checkpoint be: it already holds what this run would commit,
    /// or the segment does not exist (LaunchDarkly was asked nothing, and a checkpoint would claim a membership).
    pub keep_checkpoint: bool,
}

impl ExecutablePlan<'_> {
    /// Reads one of the plan's key lists (its adds or removes), in order, from the set engine where it is held.
    pub fn read<'k>(&'k self, keys: &'k KeyList) -> Result<KeyRead<'k>, SetEngineError> {
        KeyRead::prepare(self.delta.engine(), keys)
    }

    /// How many keys one of the plan's key lists holds, with the first few, wherever it is held.
    fn sample(&self, keys: &KeyList) -> Result<KeySample, SetEngineError> {
        let mut read = self.read(keys)?;
        let examples: Vec<String> = read
            .keys()
            .take(KeySample::EXAMPLES)
            .collect::<Result<_, _>>()?;
        Ok(KeySample {
            count: keys.len() as u64,
            examples,
        })
    }
}

/// Plans syncs of one configuration against its warehouse and checkpoint store.
pub struct Planner<'a> {
    config: &'a Config,
    warehouse: &'a Warehouse,
    store: &'a Store,
    progress: bool,
}

impl<'a> Planner<'a> {
    /// Plans against an open warehouse and the checkpoints in `store`.
    pub fn new(config: &'a Config, warehouse: &'a Warehouse, store: &'a Store) -> Self {
        Planner {
            config,
            warehouse,
            store,
            progress: false,
        }
    }

    /// Shows the rows fetched so far on standard error while a model runs.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// Plans one sync against its committed checkpoint: what `ldsync plan` shows.
    pub fn plan(&self, sync: &SegmentSyncConfig) -> Result<SyncPlan, SyncPlanError> {
        let checkpoint = self.checkpoint(sync)?;
        let baseline = Baseline::Checkpoint(checkpoint.as_ref());
        let (model, dbt) = self.model_keys(sync, baseline)?;
        let mut planned = self.plan_against(sync, model, dbt, baseline, Listing::Listed)?;
        if sync.create_segment == Some(SegmentKind::Big) {
            self.choose_delivery(sync, &mut planned)?;
        } else if planned.plan.adds.len() as u64 > sync.big_segment.import_above {
            planned.plan.notes.push(format!(
                "if segment `{}` is a big segment, the {} keys to add go as CSV imports (more than \
                 big_segment.import_above: {}); this offline plan does not read the segment's type",
                sync.segment,
                planned.plan.adds.len(),
                sync.big_segment.import_above
            ));
        }
        let mut plan = planned.plan;
        if plan.mode == Mode::Remove && !plan.removes.is_empty() {
            plan.notes.push(
                "gates.max_remove_percent is a share of the segment's members, which `ldsync sync` reads before \
                 any change; this offline plan does not check it"
                    .to_string(),
            );
        }
        Ok(plan)
    }

    /// Plans one sync against the segment as LaunchDarkly holds it (`None`: it does not exist yet): compares the
    /// model with the segment's membership (mirror syncs of standard segments, first runs, `full`) or with the
    /// checkpoint, and leaves out keys the segment excludes. What `sync` executes and `plan --full` shows. With
    /// `Listing::InEngine`, the keys for a big segment (which has no excluded targets) stay in the set engine.
    pub fn plan_for_segment(
        &self,
        sync: &SegmentSyncConfig,
        segment: Option<Segment>,
        full: bool,
        listing: Listing,
        exported: Option<&mut ExportFile>,
    ) -> Result<ExecutablePlan<'a>, SyncPlanError> {
        let checkpoint = if full { None } else { self.checkpoint(sync)? };
        let listed = segment
            .as_ref()
            .and_then(|s| s.members.as_deref())
            .map(StringArray::from_iter_values);
        let exported = exported
            .map(|file| self.load_export(sync, file))
            .transpose()?;
        let members = match (&exported, &listed) {
            (Some(table), _) => Some(Members::Exported(table)),
            (None, Some(keys)) => Some(Members::Listed(keys)),
            (None, None) => None,
        };
        let baseline = choose_baseline(sync, segment.as_ref(), checkpoint.as_ref(), members)
            .map_err(|e| self.error(sync, e))?;
        let (model, dbt) = self.model_keys(sync, baseline)?;
        let into_big_segment = match &segment {
            Some(segment) => segment.kind == SegmentKind::Big,
            None => sync.create_segment == Some(SegmentKind::Big),
        };
        // A big segment's keys may stay in the set engine, unless it holds excluded targets to plan around.
        let in_engine = into_big_segment && segment.as_ref().is_none_or(|s| s.excluded.is_empty());
        let listing = if in_engine { listing } else { Listing::Listed };
        let mut planned = self.plan_against(sync, model, dbt, baseline, listing)?;
        match &segment {
            Some(segment) => {
                self.fit_to_segment(
                    sync,
                    &mut planned.plan,
                    segment,
                    baseline,
                    checkpoint.as_ref(),
                )?;
                if sync.mode != Mode::Remove {
                    planned.left_out = StringArray::from_iter_values(&segment.excluded);
                }
            }
            None if sync.mode == Mode::Remove => self.fit_to_missing_segment(sync, &mut planned)?,
            None => {}
        }
        if into_big_segment {
            self.choose_delivery(sync, &mut planned)?;
        }
        planned.keep_checkpoint = match (&segment, &checkpoint) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(checkpoint)) => {
                self.holds_snapshot(sync, &planned, baseline, checkpoint)?
            }
        };
        planned.segment = segment;
        Ok(planned)
    }

    /// Sends a big segment's adds as CSV imports when there are more than the sync's `big_segment.import_above`:
    /// files of at most `keys_per_file` keys, and fewer when the keys are long, so that no file passes
    /// LaunchDarkly's 40 MB.
    fn choose_delivery(
        &self,
        sync: &SegmentSyncConfig,
        planned: &mut ExecutablePlan<'_>,
    ) -> Result<(), SyncPlanError> {
        let settings = &sync.big_segment;
        let adds = planned.plan.adds.len() as u64;
        if adds <= settings.import_above {
            return Ok(());
        }
        let longest = planned
            .plan
            .adds
            .longest_csv_line(planned.delta.engine())
            .map_err(|e| self.error(sync, e))?;
        let keys_per_file = settings
            .keys_per_file
            .min(MAX_FILE_BYTES / longest.max(1))
            .max(1);
        planned.plan.import_adds(keys_per_file as usize);
        planned.plan.notes.push(format!(
            "the {adds} keys to add go as {} CSV import(s) of at most {keys_per_file} keys (more than \
             big_segment.import_above: {}); removes go in batches",
            planned.plan.imports(),
            settings.import_above
        ));
        Ok(())
    }

    /// Reads a big segment's export file into the set engine, chunk by chunk.
    fn load_export(
        &self,
        sync: &SegmentSyncConfig,
        file: &mut ExportFile,
    ) -> Result<KeyTable<'a>, SyncPlanError> {
        let mut load = || -> Result<KeyTable<'a>, PlanError> {
            let mut table = KeyTable::start(self.warehouse.engine()?)?;
            for keys in file.key_chunks(EXPORT_CHUNK)? {
                table.append(&StringArray::from(keys?))?;
            }
            Ok(table.finish()?)
        };
        let reading = progress::step_spinner(&sync.name, "reading the export", self.progress);
        let table = load();
        reading.finish_and_clear();
        table.map_err(|e| self.error(sync, e))
    }

    /// A remove sync whose segment does not exist has nothing to remove: a success that says so when the model has
    /// no keys to remove either, else an error that names them (the segment key is most likely wrong).
    fn fit_to_missing_segment(
        &self,
        sync: &SegmentSyncConfig,
        planned: &mut ExecutablePlan<'_>,
    ) -> Result<(), SyncPlanError> {
        let removes = planned
            .sample(&planned.plan.removes)
            .map_err(|e| self.error(sync, e))?;
        if removes.count > 0 {
            return Err(self.error(
                sync,
                PlanError::RemoveFromMissingSegment {
                    segment: sync.segment.clone(),
                    project: self.config.launchdarkly.project.clone(),
                    environment: self.config.launchdarkly.environment.clone(),
                    keys: removes,
                },
            ));
        }
        planned.plan.notes.push(format!(
            "segment `{}` does not exist in LaunchDarkly, so this remove sync has nothing to remove from it (nor \
             does the model name any key to remove); no checkpoint is committed until the segment exists",
            sync.segment
        ));
        Ok(())
    }

    /// Whether the checkpoint already holds what the run would commit: the model's keys less those it leaves out.
    fn holds_snapshot(
        &self,
        sync: &SegmentSyncConfig,
        planned: &ExecutablePlan<'_>,
        baseline: Baseline<'_>,
        checkpoint: &Checkpoint,
    ) -> Result<bool, SyncPlanError> {
        let plan = &planned.plan;
        match baseline {
            // Compared with the checkpoint: nothing moved but keys left out (the adds' excluded keys), and the
            // checkpoint holds none of the keys left out.
            Baseline::Checkpoint(_) => Ok(plan.left == 0
                && plan.entered == plan.excluded.len() as u64
                && !self.holds_any(sync, checkpoint, &planned.left_out)?),
            // Compared with the membership (a standard segment: small), a second comparison says it.
            Baseline::Membership(_) | Baseline::Absent => {
                self.matches_checkpoint(sync, &planned.model, checkpoint, &planned.left_out)
            }
        }
    }

    /// Whether the checkpoint holds any of `keys`.
    fn holds_any(
        &self,
        sync: &SegmentSyncConfig,
        checkpoint: &Checkpoint,
        keys: &StringArray,
    ) -> Result<bool, SyncPlanError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let found = || -> Result<bool, PlanError> {
            let engine = self.warehouse.engine()?;
            let keys = KeyTable::load(engine, keys)?;
            let held = held_by(
                engine,
                KeySource::Snapshot(checkpoint.fetch_snapshot()?),
                KeySource::Table(&keys),
            )?;
            Ok(!held.is_empty())
        };
        found().map_err(|e| self.error(sync, e))
    }

    /// Starts folding the changes LaunchDarkly acknowledged of a run that did not finish into a checkpoint's keys,
    /// in the set engine.
    pub fn fold(&self, sync: &SegmentSyncConfig) -> Result<Fold<'a>, SyncPlanError> {
        let fold = || -> Result<Fold<'a>, SetEngineError> { Fold::new(self.warehouse.engine()?) };
        fold().map_err(|e| self.error(sync, e))
    }

    /// The sync's committed checkpoint, checked against its settings and its manifest; `None` before its first
    /// commit.
    pub fn checkpoint(
        &self,
        sync: &SegmentSyncConfig,
    ) -> Result<Option<Checkpoint>, SyncPlanError> {
        let settings = CheckpointSettings::of(self.config, sync);
        let checkpoint = self
            .store
            .load(&sync.name)
            .map_err(|e| self.error(sync, e))?;
        if let Some(checkpoint) = &checkpoint {
            checkpoint
                .check_settings(&settings)
                .and_then(|()| checkpoint.verify())
                .map_err(|e| self.error(sync, e))?;
        }
        Ok(checkpoint)
    }

    /// Runs the sync's model and checks its keys: into the set engine, or, compared with the checkpoint when
    /// the warehouse and the state store are the same PostgreSQL database, into a table of the store (the
    /// in-warehouse diff).
    fn model_keys(
        &self,
        sync: &SegmentSyncConfig,
        baseline: Baseline<'_>,
    ) -> Result<(ModelKeys<'a>, Option<DbtModel>), SyncPlanError> {
        self.read_model_keys(sync, baseline)
            .map_err(|e| self.error(sync, e))
    }

    /// The PostgreSQL state store, when it is in the (PostgreSQL) warehouse's own database, as the same user.
    fn store_in_warehouse(&self) -> Option<&'a PgStore> {
        match self.warehouse {
            Warehouse::Postgres { source, .. } => self.store.in_database(source.target()),
            Warehouse::DuckDb(_) => None,
        }
    }

    /// Plans one sync's model keys against a baseline, keeping the model and the delta its key lists are read from.
    fn plan_against<'e>(
        &self,
        sync: &SegmentSyncConfig,
        model: ModelKeys<'e>,
        dbt: Option<DbtModel>,
        baseline: Baseline<'_>,
        listing: Listing,
    ) -> Result<ExecutablePlan<'e>, SyncPlanError> {
        let label = self.config.model_label(&sync.model);
        let comparing = progress::step_spinner(&sync.name, "comparing keys", self.progress);
        let planned = plan_keys(sync, &label, &model, baseline, listing);
        comparing.finish_and_clear();
        let (mut plan, delta) = planned.map_err(|e| self.error(sync, e))?;
        plan.dbt = dbt;
        Ok(ExecutablePlan {
            plan,
            model,
            delta,
            segment: None,
            left_out: StringArray::from_iter_values(std::iter::empty::<&str>()),
            keep_checkpoint: false,
        })
    }

    /// Whether the model's valid keys, less `left_out`, are exactly the checkpoint's.
    fn matches_checkpoint(
        &self,
        sync: &SegmentSyncConfig,
        model: &ModelKeys<'_>,
        checkpoint: &Checkpoint,
        left_out: &StringArray,
    ) -> Result<bool, SyncPlanError> {
        let matches = || -> Result<bool, PlanError> {
            let engine = model.engine();
            let left_out = KeyTable::load(engine, left_out)?;
            let model = KeySource::Model(model);
            let delta = Delta::between(
                engine,
                KeySource::Without(&model, &left_out),
                KeySource::Snapshot(checkpoint.fetch_snapshot()?),
            )?;
            Ok(delta.entered == 0 && delta.left == 0)
        };
        matches().map_err(|e| self.error(sync, e))
    }

    /// Fits a plan to the segment as LaunchDarkly holds it: leaves out the keys it holds as excluded targets, finds
    /// what was changed by hand since the checkpoint (when the plan compared with its real membership), and checks
    /// a remove-mode plan's percent gate against the segment's real size.
    fn fit_to_segment(
        &self,
        sync: &SegmentSyncConfig,
        plan: &mut SyncPlan,
        segment: &Segment,
        baseline: Baseline<'_>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), SyncPlanError> {
        plan.leave_out_excluded(&segment.excluded, sync.batch_size);
        if let (Baseline::Membership(members), Some(checkpoint)) = (baseline, checkpoint) {
            plan.drift = Some(self.drift(sync, checkpoint, members, &segment.excluded)?);
        }
        if sync.mode == Mode::Remove && matches!(baseline, Baseline::Checkpoint(_)) {
            plan.gate_stops
                .extend(remove_mode_percent_gate(sync, segment, plan));
        }
        Ok(())
    }

    /// What was changed by hand in the segment since the checkpoint: its real `members` against the
    /// checkpoint's keys, leaving aside keys it holds as `excluded` (sorted) targets (never added, so never missing).
    fn drift(
        &self,
        sync: &SegmentSyncConfig,
        checkpoint: &Checkpoint,
        members: Members<'_>,
        excluded: &[String],
    ) -> Result<Drift, SyncPlanError> {
        self.find_drift(checkpoint, members, excluded)
            .map_err(|e| self.error(sync, e))
    }

    fn find_drift(
        &self,
        checkpoint: &Checkpoint,
        members: Members<'_>,
        excluded: &[String],
    ) -> Result<Drift, SetEngineError> {
        let engine = self.warehouse.engine()?;
        let mut loaded = None;
        let members = members.table(engine, &mut loaded)?;
        let delta = Delta::between(
            engine,
            KeySource::Table(members),
            KeySource::Snapshot(checkpoint.fetch_snapshot()?),
        )?;
        let left = delta.left_keys()?;
        let removed = left
            .iter()
            .flatten()
            .filter(|key| !sorted_contains(excluded, key));
        Ok(Drift {
            added_by_hand: KeySample::of(delta.entered_keys()?.iter().flatten()),
            removed_by_hand: KeySample::of(removed),
        })
    }

    /// A planning error about `sync`, naming its model.
    pub(crate) fn error(
        &self,
        sync: &SegmentSyncConfig,
        source: impl Into<PlanError>,
    ) -> SyncPlanError {
        SyncPlanError {
            sync: sync.name.clone(),
            model: self.config.model_label(&sync.model),
            source: Box::new(source.into()),
        }
    }

    /// The model's SQL (and the dbt model it came from) and its key column, as the warehouse describes it.
    pub fn prepare_model(
        &self,
        sync: &SegmentSyncConfig,
    ) -> Result<(ModelSql, KeyColumn), SyncPlanError> {
        self.read_model(sync).map_err(|e| self.error(sync, e))
    }

    fn read_model(&self, sync: &SegmentSyncConfig) -> Result<(ModelSql, KeyColumn), PlanError> {
        let model = model_sql(self.config, &sync.name, &sync.model)?;
        let key = self.warehouse.key_column(&model.sql, &sync.key_column)?;
        Ok((model, key))
    }

    fn read_model_keys(
        &self,
        sync: &SegmentSyncConfig,
        baseline: Baseline<'_>,
    ) -> Result<(ModelKeys<'a>, Option<DbtModel>), PlanError> {
        let (ModelSql { sql, dbt }, key) = self.read_model(sync)?;
        let in_store = if baseline.is_checkpoint() {
            self.store_in_warehouse()
        } else {
            None
        };
        let progress = match self.warehouse {
            Warehouse::DuckDb(_) => {
                progress::step_spinner(&sync.name, "running the model", self.progress)
            }
            Warehouse::Postgres { .. } => progress::fetch_spinner(&sync.name, self.progress),
        };
        let model = ModelKeys::load(
            self.warehouse,
            &sql,
            &key,
            sync.invalid_keys,
            &progress,
            in_store,
        )?;
        progress.finish_and_clear();
        Ok((model, dbt))
    }
}

fn plan_keys<'e>(
    sync: &SegmentSyncConfig,
    model_label: &str,
    model: &ModelKeys<'e>,
    baseline: Baseline<'_>,
    listing: Listing,
) -> Result<(SyncPlan, Delta<'e>), PlanError> {
    let engine = model.engine();
    let mut members_table = None;
    let (diff, baseline_keys, baseline_count) = match baseline {
        Baseline::Checkpoint(checkpoint) if model.in_warehouse() => {
            let table = checkpoint
                .and_then(|c| c.stored_table())
                .map(|(_, table)| table);
            let count = checkpoint.map_or(0, |c| c.manifest.key_count);
            // The baseline's keys are read again only to remove what a segment's members hold (a comparison with
            // the membership, which never runs in the warehouse).
            let delta = Delta::in_warehouse(model, table.as_deref())?;
            (delta, KeySource::Nothing, count)
        }
        _ => {
            let (keys, count) = match baseline {
                Baseline::Checkpoint(Some(checkpoint)) => (
                    KeySource::Snapshot(checkpoint.fetch_snapshot()?),
                    checkpoint.manifest.key_count,
                ),
                Baseline::Checkpoint(None) | Baseline::Absent => (KeySource::Nothing, 0),
                Baseline::Membership(members) => {
                    let table = members.table(engine, &mut members_table)?;
                    (KeySource::Table(table), table.count)
                }
            };
            (
                Delta::between(engine, KeySource::Model(model), keys)?,
                keys,
                count,
            )
        }
    };
    let stats = model.stats(&diff, baseline_count);
    let (adds, removes) = key_changes(sync, model, &diff, baseline, baseline_keys, listing)?;
    let members = match baseline {
        Baseline::Checkpoint(_) if sync.mode == Mode::Remove => None,
        Baseline::Checkpoint(checkpoint) => Some(checkpoint.map_or(0, |c| c.manifest.key_count)),
        Baseline::Membership(members) => Some(members.count()),
        Baseline::Absent => Some(0),
    };
    let mut plan = SyncPlan {
        sync: sync.name.clone(),
        mode: sync.mode,
        segment: sync.segment.clone(),
        context_kind: sync.context_kind.clone(),
        model: model_label.to_string(),
        dbt: None,
        gate_stops: gate_stops(sync, &stats, members, removes.len() as u64),
        requests: requests(adds.len(), removes.len(), sync.batch_size),
        keys: stats,
        checkpoint: match baseline {
            Baseline::Checkpoint(checkpoint) => checkpoint.map(|c| CheckpointInfo::of(&c.manifest)),
            Baseline::Membership(_) | Baseline::Absent => None,
        },
        entered: diff.entered,
        left: diff.left,
        adds,
        removes,
        excluded: KeyList::empty(),
        drift: None,
        notes: Vec::new(),
    };
    plan.notes = notes(&plan, baseline);
    if sync.mode == Mode::Remove && sync.create_segment.is_some() {
        plan.notes.push(format!(
            "create_segment does nothing for a remove sync: it never creates segment `{}` (a segment that does not \
             exist has nothing to remove); leave it out, or keep it for when the sync's mode changes",
            sync.segment
        ));
    }
    Ok((plan, diff))
}

/// The keys a sync's mode adds and removes, given what entered and left the model since `baseline`.
fn key_changes(
    sync: &SegmentSyncConfig,
    model: &ModelKeys<'_>,
    diff: &Delta<'_>,
    baseline: Baseline<'_>,
    baseline_keys: KeySource<'_>,
    listing: Listing,
) -> Result<(KeyList, KeyList), PlanError> {
    let engine = model.engine();
    Ok(match (sync.mode, baseline) {
        (Mode::Add, _) => (diff.list(Direction::Entered, listing)?, KeyList::empty()),
        // Every model key is in the segment or not: remove those that are (the members are listed anyway).
        (Mode::Remove, Baseline::Membership(_) | Baseline::Absent) => (
            KeyList::empty(),
            KeyList::Listed(held_by(engine, baseline_keys, KeySource::Model(model))?),
        ),
        // Keys that were in the model at the checkpoint were removed then.
        (Mode::Remove, Baseline::Checkpoint(_)) => {
            (KeyList::empty(), diff.list(Direction::Entered, listing)?)
        }
        (Mode::Mirror, _) => (
            diff.list(Direction::Entered, listing)?,
            diff.list(Direction::Left, listing)?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Action, Delivery};

    #[test]
    fn requests_carry_adds_then_removes_in_full_batches() {
        assert_eq!(requests(0, 0, 1500), vec![]);
        assert_eq!(
            requests(3001, 1500, 1500),
            vec![
                PlannedRequest {
                    action: Action::Add,
                    keys: 1500,
                    delivery: Delivery::Batch
                },
                PlannedRequest {
                    action: Action::Add,
                    keys: 1500,
                    delivery: Delivery::Batch
                },
                PlannedRequest {
                    action: Action::Add,
                    keys: 1,
                    delivery: Delivery::Batch
                },
                PlannedRequest {
                    action: Action::Remove,
                    keys: 1500,
                    delivery: Delivery::Batch
                },
            ]
        );
        assert_eq!(
            requests(5, 0, 2).iter().map(|r| r.keys).collect::<Vec<_>>(),
            [2, 2, 1]
        );
    }
}
