//! What a segment sync's model is compared with, decided before the model runs: the checkpoint, the segment's
//! real membership, or nothing. Pure; the segment and the checkpoint are read by the caller.

use std::sync::LazyLock;

use arrow::array::{Array, StringArray};
use duckdb::Connection;

use super::PlanError;
use crate::config::{Mode, SegmentSyncConfig};
use crate::launchdarkly::Segment;
use crate::set_engine::{KeyTable, SetEngineError};
use crate::state::Checkpoint;

/// What a sync's model keys are compared with.
#[derive(Clone, Copy)]
pub enum Baseline<'a> {
    /// The last committed checkpoint; `None` on a first run, which compares with nothing.
    Checkpoint(Option<&'a Checkpoint>),
    /// The segment's real membership of the sync's context kind, distinct (first runs and `--full`).
    Membership(Members<'a>),
    /// Nothing, because the segment does not exist yet: an add or mirror sync's first run, which creates it (or
    /// stops, without `create_segment`).
    Absent,
}

/// The members of a segment that has none.
static NO_KEYS: LazyLock<StringArray> = LazyLock::new(|| StringArray::from(Vec::<&str>::new()));

/// A segment's real membership of the sync's context kind.
#[derive(Clone, Copy)]
pub enum Members<'a> {
    /// As the segment's JSON lists them (a standard segment), distinct.
    Listed(&'a StringArray),
    /// A big segment's, read from its export into the set engine.
    Exported(&'a KeyTable<'a>),
}

impl<'a> Members<'a> {
    /// How many members there are.
    pub fn count(&self) -> u64 {
        match self {
            Members::Listed(keys) => keys.len() as u64,
            Members::Exported(table) => table.count,
        }
    }

    /// The members as a table of the set engine: listed ones are loaded into `slot`.
    pub fn table<'s, 'e>(
        &self,
        engine: &'e Connection,
        slot: &'s mut Option<KeyTable<'e>>,
    ) -> Result<&'s KeyTable<'e>, SetEngineError>
    where
        'a: 's + 'e,
    {
        match *self {
            Members::Listed(keys) => Ok(slot.insert(KeyTable::load(engine, keys)?)),
            Members::Exported(table) => Ok(table),
        }
    }
}

impl Baseline<'_> {
    /// Whether this is the checkpoint (or nothing before the first): only then may the in-warehouse diff compare.
    pub fn is_checkpoint(&self) -> bool {
        matches!(self, Baseline::Checkpoint(_))
    }
}

/// What a run compares the model with:
/// - a standard segment's real membership in mirror mode (every run, so hand edits are repaired), and on a first
///   run or `--full` in any mode;
/// - the checkpoint otherwise;
/// - nothing on a first add- or remove-mode run against a big segment that has members: LaunchDarkly cannot list
///   them cheaply, and adding a member or removing a non-member changes nothing, so every model key is sent.
///
/// Only a mirror run needs a big segment's members; without a checkpoint it stops rather than guess them.
///
/// A segment that does not exist has no members: an add or mirror sync compares with nothing (`Absent`) on its
/// first run, and stops if its checkpoint says the segment held targets; a remove sync compares with its checkpoint,
/// which says which keys it would remove, and the planner decides what that means (see `Planner::plan_for_segment`).
pub fn choose_baseline<'p>(
    sync: &SegmentSyncConfig,
    segment: Option<&Segment>,
    checkpoint: Option<&'p Checkpoint>,
    members: Option<Members<'p>>,
) -> Result<Baseline<'p>, PlanError> {
    let Some(segment) = segment else {
        return match checkpoint {
            _ if sync.mode == Mode::Remove => Ok(Baseline::Checkpoint(checkpoint)),
            Some(checkpoint) => Err(PlanError::SegmentDeleted {
                segment: sync.segment.clone(),
                run_id: checkpoint.manifest.run_id.clone(),
                keys: checkpoint.manifest.key_count,
            }),
            None => Ok(Baseline::Absent),
        };
    };
    Ok(match (checkpoint, members) {
        (_, Some(members)) if sync.mode == Mode::Mirror => Baseline::Membership(members),
        (Some(checkpoint), _) => Baseline::Checkpoint(Some(checkpoint)),
        (None, Some(members)) => Baseline::Membership(members),
        (None, None) if segment.member_count == Some(0) => {
            Baseline::Membership(Members::Listed(&NO_KEYS))
        }
        (None, None) if sync.mode != Mode::Mirror => Baseline::Checkpoint(None),
        (None, None) => {
            return Err(PlanError::BigSegmentMembersUnknown {
                segment: sync.segment.clone(),
                count: segment.member_count.unwrap_or_default(),
            });
        }
    })
}
