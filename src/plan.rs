//! The plan of one sync: run its model, diff the keys against its checkpoint, and say exactly what a sync would
//! send to LaunchDarkly and which removal gates would stop it. Planning reads; it never writes anything.

use std::path::PathBuf;

use arrow::array::{Array, StringArray};
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use crate::audience::{
    AudienceError, Delta, KeyList, KeySource, KeyTable, Listing, ModelKeys, held_by,
};
use crate::config::{Config, Mode, SyncConfig};
use crate::keys::KeyStats;
use crate::launchdarkly::Segment;
use crate::progress;
use crate::state::{Checkpoint, CheckpointSettings, Manifest, PgStore, StateError, Store};
use crate::warehouse::{KeyColumn, Warehouse, WarehouseError};

/// A standard LaunchDarkly segment holds at most this many individual targets.
pub const STANDARD_SEGMENT_MAX_TARGETS: u64 = 15_000;

/// Why one sync could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read the model {path}: {source}")]
    ModelFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Audience(#[from] AudienceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    EventModel(#[from] crate::events::model::EventModelError),
    #[error(transparent)]
    EventCheckpoint(#[from] crate::events::checkpoint::EventCheckpointError),
    #[error("cannot spool the run's event batches in the state directory: {0}")]
    Spool(std::io::Error),
    /// Reading the segment for a plan against its real membership (`plan --full`) failed.
    #[error("{0}")]
    LaunchDarkly(String),
}

/// A planning error with the sync and model it concerns.
#[derive(Debug, thiserror::Error)]
#[error("sync `{sync}` (model {model}): {source}")]
pub struct SyncError {
    pub sync: String,
    pub model: String,
    pub source: Box<PlanError>,
}

/// The last committed checkpoint a plan was made against.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    pub run_id: String,
    pub committed_at: DateTime<Utc>,
    pub key_count: u64,
}

impl CheckpointInfo {
    pub fn of(manifest: &Manifest) -> Self {
        CheckpointInfo {
            run_id: manifest.run_id.clone(),
            committed_at: manifest.committed_at,
            key_count: manifest.key_count,
        }
    }
}

/// Whether a request adds or removes targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Add,
    Remove,
}

impl Action {
    /// `add` or `remove`, as reports, comments and LaunchDarkly's big-segment bodies spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
        }
    }
}

/// One API request a sync would make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedRequest {
    pub action: Action,
    pub keys: usize,
}

/// A removal gate that would stop the sync before its first call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "gate", rename_all = "snake_case")]
pub enum GateStop {
    /// A mirror model returned no valid keys: the run would empty the segment.
    EmptyModel,
    RemoveCount {
        removes: u64,
        max_remove_count: u64,
    },
    RemovePercent {
        removes: u64,
        members: u64,
        percent: f64,
        max_remove_percent: f64,
    },
}

impl std::fmt::Display for GateStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateStop::EmptyModel => write!(
                f,
                "the model returned no valid keys, so a mirror run would empty the segment (set gates.allow_empty_model to let it through)"
            ),
            GateStop::RemoveCount {
                removes,
                max_remove_count,
            } => write!(
                f,
                "it would remove {removes} members, over gates.max_remove_count {max_remove_count}"
            ),
            GateStop::RemovePercent {
                removes,
                members,
                percent,
                max_remove_percent,
            } => write!(
                f,
                "it would remove {removes} of {members} members ({percent:.1}%), over gates.max_remove_percent {max_remove_percent}%"
            ),
        }
    }
}

/// How many keys, with the first few of them for messages and run records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeySample {
    pub count: u64,
    pub examples: Vec<String>,
}

/// How many keys a run record or message names by value.
const EXAMPLES: usize = 10;

impl KeySample {
    pub fn of<'k>(keys: impl IntoIterator<Item = &'k str>) -> KeySample {
        let mut sample = KeySample::default();
        for key in keys {
            if sample.examples.len() < EXAMPLES {
                sample.examples.push(key.to_string());
            }
            sample.count += 1;
        }
        sample
    }
}

/// `3 (a, b, c)`, or `12 (a, b, … and 2 more)`.
impl std::fmt::Display for KeySample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let more = self.count - self.examples.len() as u64;
        write!(f, "{} ({}", self.count, self.examples.join(", "))?;
        if more > 0 {
            write!(f, " … and {more} more")?;
        }
        f.write_str(")")
    }
}

/// Changes made by hand in LaunchDarkly since the checkpoint, found by comparing the checkpoint with the segment's
/// real membership (mirror syncs of standard segments, on every run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Drift {
    /// Members the segment holds that the checkpoint does not.
    pub added_by_hand: KeySample,
    /// Checkpoint keys the segment no longer holds (keys LaunchDarkly holds as excluded aside).
    pub removed_by_hand: KeySample,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.added_by_hand.count == 0 && self.removed_by_hand.count == 0
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the segment was edited by hand in LaunchDarkly since the checkpoint (members added: {}; members \
             removed: {}); this run puts it back in step with the model",
            self.added_by_hand, self.removed_by_hand
        )
    }
}

/// What a sync would do, and why.
#[derive(Debug, Clone, Serialize)]
pub struct SyncPlan {
    pub sync: String,
    pub mode: Mode,
    pub segment: String,
    pub context_kind: String,
    pub model: String,
    pub keys: KeyStats,
    /// `None` on a first run.
    pub checkpoint: Option<CheckpointInfo>,
    pub entered: u64,
    pub left: u64,
    /// Listed, except in a sync of a big segment (see [`Listing`]); a plan report always lists them.
    #[serde(serialize_with = "key_list")]
    pub adds: KeyList,
    #[serde(serialize_with = "key_list")]
    pub removes: KeyList,
    /// Model keys the segment holds as excluded targets: LaunchDarkly refuses to include them, so they are left
    /// out of the adds.
    #[serde(serialize_with = "key_list")]
    pub excluded: KeyList,
    /// Hand edits found in the segment since the checkpoint, when the plan compared with its real membership.
    pub drift: Option<Drift>,
    /// Adds first, then removes, each at most the sync's batch size.
    pub requests: Vec<PlannedRequest>,
    pub gate_stops: Vec<GateStop>,
    /// Things the operator should know that are not errors.
    pub notes: Vec<String>,
}

/// What a plan amounts to, for exit codes and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanOutcome {
    NoChanges,
    Changes,
    GateStopped,
}

impl SyncPlan {
    /// Leaves out of the adds the keys the segment holds as `excluded` (sorted) targets, and says so. The adds must
    /// be listed for that: a segment with excluded targets is planned with its keys listed.
    pub fn leave_out_excluded(&mut self, excluded: &[String], batch_size: usize) {
        if excluded.is_empty() {
            return;
        }
        let (left_out, kept): (Vec<&str>, Vec<&str>) = self
            .adds
            .iter()
            .flatten()
            .partition(|key| sorted_contains(excluded, key));
        if left_out.is_empty() {
            return;
        }
        let note = format!(
            "{} model keys are excluded targets of segment `{}` in LaunchDarkly, which refuses to include them: \
             they are not added: {}",
            left_out.len(),
            self.segment,
            KeySample::of(left_out.iter().copied())
        );
        let (left_out, kept) = (
            StringArray::from_iter_values(left_out),
            StringArray::from_iter_values(kept),
        );
        self.notes.push(note);
        self.excluded = KeyList::Listed(left_out);
        self.adds = KeyList::Listed(kept);
        self.requests = requests(self.adds.len(), self.removes.len(), batch_size);
    }

    /// How many targets a standard segment would hold once this plan is applied: its targets now, plus the adds
    /// it does not hold, less the removes it does.
    pub fn targets_after(&self, segment: &Segment) -> u64 {
        let members = segment.members.as_deref().unwrap_or_default();
        let added = self.adds.len() as u64 - held(&self.adds, members);
        let removed = held(&self.removes, members);
        (segment.total_targets + added).saturating_sub(removed)
    }

    pub fn outcome(&self) -> PlanOutcome {
        if !self.gate_stops.is_empty() {
            PlanOutcome::GateStopped
        } else if self.adds.is_empty() && self.removes.is_empty() {
            PlanOutcome::NoChanges
        } else {
            PlanOutcome::Changes
        }
    }
}

fn key_list<S: Serializer>(keys: &KeyList, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(keys.iter().flatten())
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
    pub fn plan(&self, sync: &SyncConfig) -> Result<SyncPlan, SyncError> {
        let checkpoint = self.checkpoint(sync)?;
        let model = self.model_keys(sync, Against::Checkpoint)?;
        let (mut plan, _delta) = self.plan_against(
            sync,
            &model,
            Baseline::Checkpoint(checkpoint.as_ref()),
            Listing::Listed,
        )?;
        if plan.mode == Mode::Remove && !plan.removes.is_empty() {
            plan.notes.push(
                "gates.max_remove_percent is a share of the segment's members, which `ldsync sync` reads before \
                 any change; this offline plan does not check it"
                    .to_string(),
            );
        }
        Ok(plan)
    }

    /// The sync's committed checkpoint, checked against its settings and its manifest; `None` before its first
    /// commit.
    pub fn checkpoint(&self, sync: &SyncConfig) -> Result<Option<Checkpoint>, SyncError> {
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

    /// Runs the sync's model and checks its keys: into the set engine, or, compared `against` the checkpoint when
    /// the warehouse and the state store are the same PostgreSQL database, into a table of the store (the
    /// in-warehouse diff).
    pub fn model_keys(
        &self,
        sync: &SyncConfig,
        against: Against,
    ) -> Result<ModelKeys<'a>, SyncError> {
        self.read_model_keys(sync, against)
            .map_err(|e| self.error(sync, e))
    }

    /// The PostgreSQL state store, when it is in the (PostgreSQL) warehouse's own database, as the same user.
    fn store_in_warehouse(&self) -> Option<&'a PgStore> {
        match (self.warehouse, self.store) {
            (Warehouse::Postgres { source, .. }, Store::Postgres(store))
                if source.target() == store.target() =>
            {
                Some(store)
            }
            _ => None,
        }
    }

    /// Plans one sync's model keys against a baseline. The delta comes with it: keys left in the engine are read
    /// from it.
    pub fn plan_against<'e>(
        &self,
        sync: &SyncConfig,
        model: &ModelKeys<'e>,
        baseline: Baseline<'_>,
        listing: Listing,
    ) -> Result<(SyncPlan, Delta<'e>), SyncError> {
        let model_path = self.config.model_path(sync);
        let comparing = progress::step_spinner(&sync.name, "comparing keys", self.progress);
        let planned = plan_keys(sync, &model_path, model, baseline, listing);
        comparing.finish_and_clear();
        planned.map_err(|e| self.error(sync, e))
    }

    /// Whether the model's valid keys are exactly the checkpoint's.
    pub fn matches_checkpoint(
        &self,
        sync: &SyncConfig,
        model: &ModelKeys<'_>,
        checkpoint: &Checkpoint,
    ) -> Result<bool, SyncError> {
        let delta = Delta::between(
            model.engine(),
            KeySource::Model(model),
            KeySource::Snapshot(
                checkpoint
                    .snapshot_path()
                    .map_err(|e| self.error(sync, e))?,
            ),
        )
        .map_err(|e| self.error(sync, e))?;
        Ok(delta.entered == 0 && delta.left == 0)
    }

    /// Fits a plan to the segment as LaunchDarkly holds it: leaves out the keys it holds as excluded targets, finds
    /// what was changed by hand since the checkpoint (when the plan compared with its real membership), and checks
    /// a remove-mode plan's percent gate against the segment's real size.
    pub fn fit_to_segment(
        &self,
        sync: &SyncConfig,
        plan: &mut SyncPlan,
        segment: &Segment,
        baseline: Baseline<'_>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), SyncError> {
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
        sync: &SyncConfig,
        checkpoint: &Checkpoint,
        members: &StringArray,
        excluded: &[String],
    ) -> Result<Drift, SyncError> {
        self.find_drift(checkpoint, members, excluded)
            .map_err(|e| self.error(sync, e))
    }

    fn find_drift(
        &self,
        checkpoint: &Checkpoint,
        members: &StringArray,
        excluded: &[String],
    ) -> Result<Drift, AudienceError> {
        let engine = self.warehouse.engine()?;
        let members = KeyTable::load(engine, members)?;
        let delta = Delta::between(
            engine,
            KeySource::Table(&members),
            KeySource::Snapshot(checkpoint.snapshot_path()?),
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
    pub(crate) fn error(&self, sync: &SyncConfig, source: impl Into<PlanError>) -> SyncError {
        SyncError {
            sync: sync.name.clone(),
            model: self.config.model_path(sync).display().to_string(),
            source: Box::new(source.into()),
        }
    }

    /// The model's SQL and its key column, as the warehouse describes it.
    pub fn prepare_model(&self, sync: &SyncConfig) -> Result<(String, KeyColumn), SyncError> {
        self.read_model(sync).map_err(|e| self.error(sync, e))
    }

    fn read_model(&self, sync: &SyncConfig) -> Result<(String, KeyColumn), PlanError> {
        let model_path = self.config.model_path(sync);
        let sql = std::fs::read_to_string(&model_path).map_err(|source| PlanError::ModelFile {
            path: model_path,
            source,
        })?;
        let key = self.warehouse.key_column(&sql, &sync.key_column)?;
        Ok((sql, key))
    }

    fn read_model_keys(
        &self,
        sync: &SyncConfig,
        against: Against,
    ) -> Result<ModelKeys<'a>, PlanError> {
        let (sql, key) = self.read_model(sync)?;
        let in_store = match against {
            Against::Checkpoint => self.store_in_warehouse(),
            Against::Membership => None,
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
        Ok(model)
    }
}

/// What a sync's model keys are to be compared with, before the baseline itself is at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Against {
    /// The checkpoint (or nothing, before the first).
    Checkpoint,
    /// The segment's real membership.
    Membership,
}

/// What a sync's model keys are compared with.
#[derive(Clone, Copy)]
pub enum Baseline<'a> {
    /// The last committed checkpoint; `None` on a first run, which compares with nothing.
    Checkpoint(Option<&'a Checkpoint>),
    /// The segment's real membership of the sync's context kind, distinct (first runs and `--full`).
    Membership(&'a StringArray),
}

fn plan_keys<'e>(
    sync: &SyncConfig,
    model_path: &std::path::Path,
    model: &ModelKeys<'e>,
    baseline: Baseline<'_>,
    listing: Listing,
) -> Result<(SyncPlan, Delta<'e>), PlanError> {
    let engine = model.engine();
    let members_table;
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
                    KeySource::Snapshot(checkpoint.snapshot_path()?),
                    checkpoint.manifest.key_count,
                ),
                Baseline::Checkpoint(None) => (KeySource::Nothing, 0),
                Baseline::Membership(members) => {
                    members_table = KeyTable::load(engine, members)?;
                    (KeySource::Table(&members_table), members_table.count)
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
    let (entered, left) = (false, true);
    let (adds, removes) = match (sync.mode, baseline) {
        (Mode::Add, _) => (diff.list(entered, listing)?, KeyList::empty()),
        // Every model key is in the segment or not: remove those that are (the members are listed anyway).
        (Mode::Remove, Baseline::Membership(_)) => (
            KeyList::empty(),
            KeyList::Listed(held_by(engine, baseline_keys, KeySource::Model(model))?),
        ),
        // Keys that were in the model at the checkpoint were removed then.
        (Mode::Remove, Baseline::Checkpoint(_)) => (KeyList::empty(), diff.list(entered, listing)?),
        (Mode::Mirror, _) => (diff.list(entered, listing)?, diff.list(left, listing)?),
    };
    let members = match baseline {
        Baseline::Checkpoint(_) if sync.mode == Mode::Remove => None,
        Baseline::Checkpoint(checkpoint) => Some(checkpoint.map_or(0, |c| c.manifest.key_count)),
        Baseline::Membership(members) => Some(members.len() as u64),
    };
    let mut plan = SyncPlan {
        sync: sync.name.clone(),
        mode: sync.mode,
        segment: sync.segment.clone(),
        context_kind: sync.context_kind.clone(),
        model: model_path.display().to_string(),
        gate_stops: gate_stops(sync, &stats, members, removes.len() as u64),
        requests: requests(adds.len(), removes.len(), sync.batch_size),
        keys: stats,
        checkpoint: match baseline {
            Baseline::Checkpoint(checkpoint) => checkpoint.map(|c| CheckpointInfo::of(&c.manifest)),
            Baseline::Membership(_) => None,
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
    Ok((plan, diff))
}

/// The `max_remove_percent` gate of a remove-mode run planned against its checkpoint, which holds the keys removed,
/// not the segment's members: the segment's size comes from the read, and of a standard segment only the members
/// it really holds count as removed.
fn remove_mode_percent_gate(
    sync: &SyncConfig,
    segment: &Segment,
    plan: &SyncPlan,
) -> Option<GateStop> {
    let removing = match segment.members.as_deref() {
        Some(members) => held(&plan.removes, members),
        None => plan.removes.len() as u64,
    };
    percent_gate(sync, segment.member_count, removing)
}

/// How many of the listed `keys` the sorted `members` hold.
fn held(keys: &KeyList, members: &[String]) -> u64 {
    keys.iter()
        .flatten()
        .filter(|key| sorted_contains(members, key))
        .count() as u64
}

/// Whether the sorted `keys` hold `key`.
fn sorted_contains(keys: &[String], key: &str) -> bool {
    keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok()
}

/// The requests that carry `adds` then `removes`, in batches of at most `batch_size`.
pub fn requests(adds: usize, removes: usize, batch_size: usize) -> Vec<PlannedRequest> {
    let batches = |action, total: usize| {
        (0..total.div_ceil(batch_size)).map(move |i| PlannedRequest {
            action,
            keys: batch_size.min(total - i * batch_size),
        })
    };
    batches(Action::Add, adds)
        .chain(batches(Action::Remove, removes))
        .collect()
}

/// The removal gates the sync's settings say this run would trip.
/// `members` is the segment's size when it is known: in remove mode a checkpoint holds the keys removed, not the
/// segment's members, so `sync` checks the percent gate once it has read the segment.
fn gate_stops(
    sync: &SyncConfig,
    keys: &KeyStats,
    members: Option<u64>,
    removes: u64,
) -> Vec<GateStop> {
    let gates = &sync.gates;
    let mut stops = Vec::new();
    // Only a mirror run turns an empty model into removals; in add and remove mode it simply changes nothing.
    if sync.mode == Mode::Mirror && keys.distinct == 0 && !gates.allow_empty_model {
        stops.push(GateStop::EmptyModel);
    }
    if let Some(max) = gates.max_remove_count
        && removes > max
    {
        stops.push(GateStop::RemoveCount {
            removes,
            max_remove_count: max,
        });
    }
    if let Some(members) = members {
        stops.extend(percent_gate(sync, members, removes));
    }
    stops
}

/// The `max_remove_percent` gate: removing more than that share of the segment's `members` stops the run. An empty
/// segment has nothing to lose.
fn percent_gate(sync: &SyncConfig, members: u64, removes: u64) -> Option<GateStop> {
    let max = sync.gates.max_remove_percent?;
    if removes == 0 || members == 0 {
        return None;
    }
    let percent = removes as f64 * 100.0 / members as f64;
    (percent > max).then_some(GateStop::RemovePercent {
        removes,
        members,
        percent,
        max_remove_percent: max,
    })
}

fn notes(plan: &SyncPlan, baseline: Baseline<'_>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Baseline::Membership(members) = baseline {
        notes.push(format!(
            "compared with the segment's real membership ({} {} targets), not with a checkpoint",
            members.len(),
            plan.context_kind
        ));
    } else if plan.checkpoint.is_none() {
        notes
            .push("first run: no checkpoint yet, so every model key counts as entered".to_string());
        if plan.mode == Mode::Mirror {
            notes.push(
                "a first mirror run reads the segment's real membership from LaunchDarkly and also removes members \
                 that are not in the model; this offline plan cannot list those removals"
                    .to_string(),
            );
        }
    }
    let targets = match plan.mode {
        Mode::Mirror => plan.keys.distinct,
        Mode::Add => plan.adds.len() as u64,
        Mode::Remove => 0,
    };
    if targets > STANDARD_SEGMENT_MAX_TARGETS {
        notes.push(format!(
            "the segment would hold at least {targets} targets; a standard segment holds at most \
             {STANDARD_SEGMENT_MAX_TARGETS}, so `{}` must be a big segment",
            plan.segment
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_adds_then_removes_in_full_batches() {
        assert_eq!(requests(0, 0, 1500), vec![]);
        assert_eq!(
            requests(3001, 1500, 1500),
            vec![
                PlannedRequest {
                    action: Action::Add,
                    keys: 1500
                },
                PlannedRequest {
                    action: Action::Add,
                    keys: 1500
                },
                PlannedRequest {
                    action: Action::Add,
                    keys: 1
                },
                PlannedRequest {
                    action: Action::Remove,
                    keys: 1500
                },
            ]
        );
        assert_eq!(
            requests(5, 0, 2).iter().map(|r| r.keys).collect::<Vec<_>>(),
            [2, 2, 1]
        );
    }
}
