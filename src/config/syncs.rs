//! `syncs:` and `events:`, what each sync does: segment syncs with their modes, gates and batch sizes, events
//! syncs with their columns and lateness, and [`SyncEntry`], one sync of either kind. Every field is checked as
//! it is read; the lists check that names are unique and that no two segment syncs fight over a segment. No I/O.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::big_segment::BigSegmentSettings;
use super::dbt::Model;
use super::fields::{ColumnName, ContextKind, column_name, context_kind, resource_key, sync_name};
use super::visit::{from_number, from_str};
use crate::schedule::Schedule;
use crate::vocab::SegmentKind;

/// LaunchDarkly accepts at most this many target operations in one semantic-patch request.
pub const MAX_BATCH_SIZE: usize = 1_500;

/// The longest context key ldsync accepts, in characters.
pub const MAX_KEY_CHARS: usize = 256;

/// What a sync does with the keys that entered or left its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Keys that entered the model are added to the segment; keys that left are left alone.
    Add,
    /// Keys that entered the model are removed from the segment.
    Remove,
    /// The segment's targets of the sync's context kind equal the model.
    Mirror,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Add => "add",
            Mode::Remove => "remove",
            Mode::Mirror => "mirror",
        })
    }
}

/// What happens to a row whose key is null, blank or too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InvalidKeys {
    /// The sync stops with an error naming the row (the default: a bad key usually means a bad model).
    #[default]
    Fail,
    /// The row is left out, counted, and reported with examples.
    Skip,
}

/// Limits on what one run may remove; a run over any of them stops before its first call.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemovalGates {
    /// The largest share of the segment's known members, in percent, that one run may remove.
    #[serde(default = "default_max_remove_percent", deserialize_with = "percent")]
    pub max_remove_percent: Option<f64>,
    /// The largest number of members one run may remove.
    #[serde(default)]
    pub max_remove_count: Option<u64>,
    /// Whether a mirror model that returns no valid keys may go ahead and empty its segment.
    #[serde(default)]
    pub allow_empty_model: bool,
}

/// By default one run may remove at most a tenth of a segment.
pub const DEFAULT_MAX_REMOVE_PERCENT: f64 = 10.0;

fn default_max_remove_percent() -> Option<f64> {
    Some(DEFAULT_MAX_REMOVE_PERCENT)
}

fn percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    from_number(deserializer, "a percentage from 0 to 100", |p| {
        if (0.0..=100.0).contains(&p) {
            Ok(Some(p))
        } else {
            Err(format!("a percentage from 0 to 100, got {p}"))
        }
    })
}

impl Default for RemovalGates {
    fn default() -> Self {
        RemovalGates {
            max_remove_percent: default_max_remove_percent(),
            max_remove_count: None,
            allow_empty_model: false,
        }
    }
}

/// One sync: a model, the segment it feeds, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSyncConfig {
    /// Unique within the file; names the sync's state directory and appears in every message about it.
    #[serde(deserialize_with = "sync_name")]
    pub name: String,
    /// The model: `sql/<model>.sql` beside connector.yaml, or a dbt model (`ref('name')`).
    pub model: Model,
    /// The LaunchDarkly segment key.
    #[serde(deserialize_with = "resource_key")]
    pub segment: String,
    #[serde(default = "default_context_kind", deserialize_with = "context_kind")]
    pub context_kind: String,
    pub mode: Mode,
    /// The model's column that holds the context key.
    #[serde(default = "default_key_column", deserialize_with = "column_name")]
    pub key_column: String,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Target operations per request, at most 1,500.
    #[serde(default = "default_batch_size", deserialize_with = "batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub invalid_keys: InvalidKeys,
    #[serde(default)]
    pub gates: RemovalGates,
    /// Create the segment, of this type, when it does not exist yet; without it a missing segment is an error.
    #[serde(default)]
    pub create_segment: Option<SegmentKind>,
    /// How a big segment's large changes go: CSV imports above a threshold (see [`BigSegmentSettings`]).
    #[serde(default)]
    pub big_segment: BigSegmentSettings,
    /// Compare with the segment's real membership (as `--full` does) when the last run that did is older than
    /// this: what finds and repairs hand edits on a big segment, which is otherwise compared with the checkpoint.
    #[serde(default, deserialize_with = "full_every")]
    pub full_every: Option<Duration>,
}

impl SegmentSyncConfig {
    /// Whether the two syncs would fight over one segment's targets: same segment and context kind, and one of them
    /// removes keys (mirror or remove mode). Two add syncs only ever add, so they can share a segment.
    pub fn conflicts_with(&self, other: &SegmentSyncConfig) -> bool {
        self.segment == other.segment
            && self.context_kind == other.context_kind
            && (self.mode != Mode::Add || other.mode != Mode::Add)
    }
}

/// One events sync: a model of metric events (orders, upgrades, revenue) sent to LaunchDarkly's metric import API
/// for experiments, incrementally: each run sends only the rows past the checkpoint's watermark.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSyncConfig {
    /// Unique among all syncs; names the sync's state directory and appears in every message about it.
    #[serde(deserialize_with = "sync_name")]
    pub name: String,
    /// The model: `sql/<model>.sql` beside connector.yaml, or a dbt model (`ref('name')`).
    pub model: Model,
    /// The column holding each event's key: the metric's event key in LaunchDarkly.
    #[serde(default = "default_event_key_column", deserialize_with = "column_name")]
    pub event_key_column: String,
    /// Which column holds the key of each context kind (at least one; a row needs a key of at least one kind).
    #[serde(
        default = "default_event_contexts",
        deserialize_with = "event_contexts"
    )]
    pub contexts: Vec<EventContext>,
    /// The column holding when the event happened: a timestamp, or an integer of Unix milliseconds.
    #[serde(default = "default_timestamp_column", deserialize_with = "column_name")]
    pub timestamp_column: String,
    /// The column holding a numeric metric's value; leave it out for conversion metrics.
    #[serde(default, deserialize_with = "optional_column_name")]
    pub value_column: Option<String>,
    /// The column holding a stable, unique id of each row, so that no event is sent twice.
    #[serde(default = "default_row_id_column", deserialize_with = "column_name")]
    pub row_id_column: String,
    /// How late a row may arrive in the warehouse and still be sent: each run reads back this far behind the
    /// watermark, and sends the rows there that no earlier run sent.
    #[serde(default = "default_lateness", deserialize_with = "lateness")]
    pub lateness: Duration,
    /// How far after a run's start an event may be dated: a later row (a `9999-12-31` placeholder, microseconds
    /// read as milliseconds) is a bad row, so that one such row never carries the watermark past every real event.
    #[serde(default = "default_max_future", deserialize_with = "max_future")]
    pub max_future: Duration,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Events per request (each request also stays under [`MAX_EVENT_BATCH_BYTES`]).
    #[serde(
        default = "default_events_per_batch",
        deserialize_with = "events_per_batch"
    )]
    pub batch_size: usize,
    /// What happens to a row without an event key, a context key or a timestamp, or with a value that is not a
    /// number: by default it is left out, counted and reported with its row id.
    #[serde(default = "skip_invalid_rows")]
    pub invalid_rows: InvalidKeys,
}

impl EventSyncConfig {
    /// `lateness` in milliseconds, as event times are.
    pub fn lateness_ms(&self) -> i64 {
        i64::try_from(self.lateness.as_millis()).unwrap_or(i64::MAX)
    }

    /// `max_future` in milliseconds, as event times are.
    pub fn max_future_ms(&self) -> i64 {
        i64::try_from(self.max_future.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A context kind of an events sync and the model column that holds its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    pub kind: String,
    pub column: String,
}

/// The most events one import request carries by default.
pub const DEFAULT_EVENTS_PER_BATCH: usize = 1_000;
/// The most events one import request may carry.
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;
/// The most bytes of JSON (before gzip) one import request carries; LaunchDarkly's limit is unpublished and
/// integrations assume 10 MB.
pub const MAX_EVENT_BATCH_BYTES: usize = 1024 * 1024;
/// How late a row may arrive by default.
pub const DEFAULT_LATENESS: Duration = Duration::from_secs(3600);
/// How far after a run's start an event may be dated by default.
pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(24 * 3600);

fn default_event_key_column() -> String {
    "event_key".to_string()
}

fn default_event_contexts() -> Vec<EventContext> {
    vec![EventContext {
        kind: default_context_kind(),
        column: default_key_column(),
    }]
}

fn default_timestamp_column() -> String {
    "occurred_at".to_string()
}

fn default_row_id_column() -> String {
    "row_id".to_string()
}

fn default_lateness() -> Duration {
    DEFAULT_LATENESS
}

fn default_max_future() -> Duration {
    DEFAULT_MAX_FUTURE
}

fn default_events_per_batch() -> usize {
    DEFAULT_EVENTS_PER_BATCH
}

fn skip_invalid_rows() -> InvalidKeys {
    InvalidKeys::Skip
}

fn optional_column_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    column_name(deserializer).map(Some)
}

fn lateness<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration_field(deserializer, "lateness", "0s, 30m or 2h")
}

fn full_every<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let every = duration_field(deserializer, "full_every", "7d or 24h")?;
    if every.is_zero() {
        return Err(de::Error::custom(
            "`full_every` must be longer than 0s; leave it out to compare with the checkpoint only",
        ));
    }
    Ok(Some(every))
}

fn max_future<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    duration_field(deserializer, "max_future", "1h, 1d or 0s")
}

/// A duration for `field`, such as `examples`.
fn duration_field<'de, D: Deserializer<'de>>(
    deserializer: D,
    field: &str,
    examples: &str,
) -> Result<Duration, D::Error> {
    from_str(deserializer, "a duration", |text| {
        humantime::parse_duration(text).map_err(|e| {
            format!("`{field}` takes a duration such as {examples}, got `{text}`: {e}")
        })
    })
}

fn events_per_batch<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    from_number(deserializer, "a whole number of events", |size| {
        if size.fract() != 0.0 || !(1.0..=MAX_EVENTS_PER_BATCH as f64).contains(&size) {
            return Err(format!(
                "an import request holds 1 to {MAX_EVENTS_PER_BATCH} events, got {size}"
            ));
        }
        Ok(size as usize)
    })
}

/// Reads `contexts:`, a mapping of context kind to column, such as `{user: user_id, organization: org_id}`.
fn event_contexts<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<EventContext>, D::Error> {
    struct ContextsVisitor;
    impl<'de> Visitor<'de> for ContextsVisitor {
        type Value = Vec<EventContext>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of context kind to column, such as {user: user_id}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut contexts: Vec<EventContext> = Vec::new();
            while let Some(ContextKind(kind)) = map.next_key()? {
                let ColumnName(column) = map.next_value()?;
                if contexts.iter().any(|c| c.kind == kind) {
                    return Err(de::Error::custom(format!(
                        "context kind `{kind}` is given twice"
                    )));
                }
                contexts.push(EventContext { kind, column });
            }
            if contexts.is_empty() {
                return Err(de::Error::custom(
                    "give at least one context kind and its column, such as {user: user_id}",
                ));
            }
            Ok(contexts)
        }
    }
    deserializer.deserialize_map(ContextsVisitor)
}

/// One sync of either kind, as commands and the scheduler see it.
#[derive(Debug, Clone, Copy)]
pub enum SyncEntry<'a> {
    Segment(&'a SegmentSyncConfig),
    Events(&'a EventSyncConfig),
}

impl<'a> SyncEntry<'a> {
    pub fn name(&self) -> &'a str {
        match self {
            SyncEntry::Segment(sync) => &sync.name,
            SyncEntry::Events(sync) => &sync.name,
        }
    }

    /// The segment sync, if this is one.
    pub fn segment(self) -> Option<&'a SegmentSyncConfig> {
        match self {
            SyncEntry::Segment(sync) => Some(sync),
            SyncEntry::Events(_) => None,
        }
    }

    /// The events sync, if this is one.
    pub fn events(self) -> Option<&'a EventSyncConfig> {
        match self {
            SyncEntry::Events(sync) => Some(sync),
            SyncEntry::Segment(_) => None,
        }
    }

    pub fn schedule(&self) -> Option<&'a Schedule> {
        match self {
            SyncEntry::Segment(sync) => sync.schedule.as_ref(),
            SyncEntry::Events(sync) => sync.schedule.as_ref(),
        }
    }
}

fn default_context_kind() -> String {
    "user".to_string()
}

fn default_key_column() -> String {
    "context_key".to_string()
}

fn default_batch_size() -> usize {
    MAX_BATCH_SIZE
}

fn batch_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    from_number(
        deserializer,
        "a whole number of target operations",
        |size| {
            if size.fract() != 0.0 || !(1.0..=MAX_BATCH_SIZE as f64).contains(&size) {
                return Err(format!(
                    "a batch holds 1 to {MAX_BATCH_SIZE} target operations (LaunchDarkly's limit per request), got {size}"
                ));
            }
            Ok(size as usize)
        },
    )
}

/// The list of segment syncs, whose names must be unique.
#[derive(Default)]
pub(super) struct Syncs(pub(super) Vec<SegmentSyncConfig>);

impl<'de> Deserialize<'de> for Syncs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(SyncsVisitor)
    }
}

struct SyncsVisitor;

impl<'de> Visitor<'de> for SyncsVisitor {
    type Value = Syncs;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of syncs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Syncs, A::Error> {
        let mut syncs: Vec<SegmentSyncConfig> = Vec::new();
        while let Some(sync) = seq.next_element::<SegmentSyncConfig>()? {
            if let Some(j) = syncs.iter().position(|s| s.name == sync.name) {
                return Err(de::Error::custom(format!(
                    "the sync name `{}` is used by syncs[{j}] and syncs[{}]; names must be unique",
                    sync.name,
                    syncs.len()
                )));
            }
            if let Some(other) = syncs.iter().find(|s| s.conflicts_with(&sync)) {
                return Err(de::Error::custom(format!(
                    "syncs `{}` ({}) and `{}` ({}) both write the `{}` targets of segment `{}`, and a {} sync \
                     removes what the other adds; give each its own segment, or make both add syncs",
                    other.name,
                    other.mode,
                    sync.name,
                    sync.mode,
                    sync.context_kind,
                    sync.segment,
                    if other.mode == Mode::Add {
                        sync.mode
                    } else {
                        other.mode
                    },
                )));
            }
            syncs.push(sync);
        }
        Ok(Syncs(syncs))
    }
}

/// Checks that there is at least one sync and that names are unique across `syncs:` and `events:` (a name names
/// the sync's state directory).
pub(super) fn check_sync_names(
    syncs: &[SegmentSyncConfig],
    events: &[EventSyncConfig],
) -> Result<(), String> {
    if syncs.is_empty() && events.is_empty() {
        return Err(
            "no syncs defined: add at least one segment sync under `syncs:` or events sync under `events:`".into(),
        );
    }
    if let Some((i, event)) = events
        .iter()
        .enumerate()
        .find(|(i, e)| events[..*i].iter().any(|other| other.name == e.name))
    {
        return Err(format!(
            "events[{i}]: the sync name `{}` is used twice under `events:`; names must be unique",
            event.name
        ));
    }
    match events
        .iter()
        .enumerate()
        .find(|(_, e)| syncs.iter().any(|s| s.name == e.name))
    {
        Some((i, event)) => Err(format!(
            "events[{i}]: the sync name `{}` is also a segment sync's under `syncs:`; names must be unique, since \
             each names its sync's state",
            event.name
        )),
        None => Ok(()),
    }
}
