//! The plan of one segment sync as a value: what it would send (keys to add and remove, the requests that carry
//! them), what it found (counts, drift, excluded keys), and what would stop it (removal gates). `plan` prints it;
//! `sync` executes it. Pure data and its rules; no I/O.

use arrow::array::StringArray;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use super::{Baseline, Members};
use crate::config::{Mode, SegmentSyncConfig};
use crate::dbt::DbtModel;
use crate::keys::KeyStats;
use crate::launchdarkly::Segment;
use crate::set_engine::KeyList;
use crate::state::Manifest;
use crate::vocab::{Action, Delivery};

/// A standard LaunchDarkly segment holds at most this many individual targets.
pub const STANDARD_SEGMENT_MAX_TARGETS: u64 = 15_000;

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

/// One API request a sync would make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedRequest {
    pub action: Action,
    pub keys: usize,
    pub delivery: Delivery,
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

impl KeySample {
    /// How many keys a run record or message names by value.
    pub const EXAMPLES: usize = 10;

    pub fn of<'k>(keys: impl IntoIterator<Item = &'k str>) -> KeySample {
        let mut sample = KeySample::default();
        for key in keys {
            if sample.examples.len() < Self::EXAMPLES {
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
    /// The dbt model a `model: ref('…')` resolved to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbt: Option<DbtModel>,
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

    /// Sends the adds as CSV imports of at most `keys_per_file` keys each, instead of batches.
    pub fn import_adds(&mut self, keys_per_file: usize) {
        let adds = self.adds.len();
        let removes = self.requests.iter().filter(|r| r.action == Action::Remove);
        self.requests = cut(Action::Add, adds, keys_per_file, Delivery::Import)
            .chain(removes.cloned())
            .collect();
    }

    /// How many of the plan's requests are CSV imports.
    pub fn imports(&self) -> usize {
        self.requests
            .iter()
            .filter(|r| r.delivery == Delivery::Import)
            .count()
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

/// The `max_remove_percent` gate of a remove-mode run planned against its checkpoint, which holds the keys removed,
/// not the segment's members: the segment's size comes from the read, and of a standard segment only the members
/// it really holds count as removed.
pub(super) fn remove_mode_percent_gate(
    sync: &SegmentSyncConfig,
    segment: &Segment,
    plan: &SyncPlan,
) -> Option<GateStop> {
    let removing = match segment.members.as_deref() {
        Some(members) => held(&plan.removes, members),
        None => plan.removes.len() as u64,
    };
    percent_gate(sync, segment.member_count.unwrap_or_default(), removing)
}

/// How many of the listed `keys` the sorted `members` hold.
pub(super) fn held(keys: &KeyList, members: &[String]) -> u64 {
    keys.iter()
        .flatten()
        .filter(|key| sorted_contains(members, key))
        .count() as u64
}

/// Whether the sorted `keys` hold `key`.
pub(super) fn sorted_contains(keys: &[String], key: &str) -> bool {
    keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok()
}

/// The requests that carry `adds` then `removes`, in batches of at most `batch_size`.
pub fn requests(adds: usize, removes: usize, batch_size: usize) -> Vec<PlannedRequest> {
    cut(Action::Add, adds, batch_size, Delivery::Batch)
        .chain(cut(Action::Remove, removes, batch_size, Delivery::Batch))
        .collect()
}

/// `total` keys cut into requests of at most `size` keys.
fn cut(
    action: Action,
    total: usize,
    size: usize,
    delivery: Delivery,
) -> impl Iterator<Item = PlannedRequest> {
    (0..total.div_ceil(size)).map(move |i| PlannedRequest {
        action,
        keys: size.min(total - i * size),
        delivery,
    })
}

/// The removal gates the sync's settings say this run would trip.
/// `members` is the segment's size when it is known: in remove mode a checkpoint holds the keys removed, not the
/// segment's members, so `sync` checks the percent gate once it has read the segment.
pub(super) fn gate_stops(
    sync: &SegmentSyncConfig,
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
pub(super) fn percent_gate(
    sync: &SegmentSyncConfig,
    members: u64,
    removes: u64,
) -> Option<GateStop> {
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

pub(super) fn notes(plan: &SyncPlan, baseline: Baseline<'_>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Baseline::Membership(members) = baseline {
        let source = match members {
            Members::Listed(_) => "",
            Members::Exported(_) => ", read through an export",
        };
        notes.push(format!(
            "compared with the segment's real membership ({} {} targets{source}), not with a checkpoint",
            members.count(),
            plan.context_kind
        ));
    } else if let Baseline::Absent = baseline {
        notes.push(format!(
            "segment `{}` does not exist in LaunchDarkly yet, so every model key is to be added",
            plan.segment
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
