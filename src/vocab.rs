//! The words every layer of ldsync shares: what a request does to a segment ([`Action`]), how it carries its keys
//! ([`Delivery`]), which kind of segment it is ([`SegmentKind`]), which way a key moved between a baseline and the model ([`Direction`]), and who must act
//! on an error ([`ErrorClass`]). Plain data; nothing here does I/O or knows about the warehouse, the state store
//! or LaunchDarkly.

use serde::{Deserialize, Serialize};

/// Whether a request adds or removes targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// How a request carries its keys to LaunchDarkly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// A batch of target changes (a semantic patch, or `POST …/contexts` on a big segment).
    #[default]
    Batch,
    /// A CSV file uploaded as a big segment's import (merge mode), then waited on until LaunchDarkly completes it.
    Import,
}

impl Delivery {
    pub fn is_batch(&self) -> bool {
        *self == Delivery::Batch
    }
}

/// A standard segment (at most 15,000 targets) or a big one (unbounded, one context kind, Enterprise plans).
/// LaunchDarkly never changes a segment's type after it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentKind {
    Standard,
    Big,
}

/// Which way a key moved between a baseline (checkpoint or membership) and the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// In the model, not in the baseline.
    Entered,
    /// In the baseline, no longer in the model.
    Left,
}

/// Who must act on an error, which decides the process's exit code (`cli::exit`) and is named in logs and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// connector.yaml, the environment it reads (`${VAR}`, the access token), or the syncs named on the command
    /// line: running again cannot help until it is fixed.
    Config,
    /// The model: its SQL, its keys or its rows.
    Data,
    /// LaunchDarkly refused a request, or could not be reached.
    LaunchDarkly,
    /// The warehouse could not be opened or reached, or failed outside the model.
    Warehouse,
    /// The state store: a checkpoint or journal that is damaged or made for other settings, a run lock another run
    /// holds, the PostgreSQL store unreachable.
    StateStore,
    /// Something ldsync itself got wrong, or the machine it runs on (a full disk, the async runtime).
    Internal,
}

impl ErrorClass {
    /// The class as logs and JSON reports spell it (`state_store`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Config => "config",
            ErrorClass::Data => "data",
            ErrorClass::LaunchDarkly => "launchdarkly",
            ErrorClass::Warehouse => "warehouse",
            ErrorClass::StateStore => "state_store",
            ErrorClass::Internal => "internal",
        }
    }
}
