//! A segment sync's `big_segment:` settings: when a big segment's adds go as CSV imports rather than batches of
//! targets, how many keys one import file holds, and how long a run waits on LaunchDarkly's processing of an import
//! or an export. No I/O.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::visit::{from_number, from_str};

/// Above this many keys to add, a big segment's adds go as CSV imports. 50,000 keys are 34 requests of 1,500
/// targets, about as long at LaunchDarkly's pace as one import takes to process; an import also waits for every
/// other import of the environment, so below this batches are the quicker and more predictable way.
pub const DEFAULT_IMPORT_ABOVE: u64 = 50_000;
/// LaunchDarkly's limit on the keys of one import file.
pub const MAX_KEYS_PER_FILE: u64 = 1_000_000;
/// LaunchDarkly's limit on one import file's size, taken as decimal megabytes to stay clear of either reading.
pub const MAX_FILE_BYTES: u64 = 40_000_000;
/// How long a run waits on one import or export by default.
pub const DEFAULT_BULK_WAIT: Duration = Duration::from_secs(3600);

/// How a sync treats a big segment's large changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigSegmentSettings {
    /// A run with more keys than this to add to a big segment uploads them as CSV imports (merge mode).
    #[serde(default = "default_import_above", deserialize_with = "key_count")]
    pub import_above: u64,
    /// The most keys one import file holds (LaunchDarkly's limit is 1,000,000; files also stay under 40 MB).
    #[serde(default = "default_keys_per_file", deserialize_with = "keys_per_file")]
    pub keys_per_file: u64,
    /// How long a run waits on LaunchDarkly for one import (while another import of the environment runs, then
    /// while it is processed) or one export, before it stops and leaves the rest to the next run.
    #[serde(default = "default_wait", deserialize_with = "wait")]
    pub wait: Duration,
}

impl Default for BigSegmentSettings {
    fn default() -> Self {
        BigSegmentSettings {
            import_above: DEFAULT_IMPORT_ABOVE,
            keys_per_file: MAX_KEYS_PER_FILE,
            wait: DEFAULT_BULK_WAIT,
        }
    }
}

fn default_import_above() -> u64 {
    DEFAULT_IMPORT_ABOVE
}

fn default_keys_per_file() -> u64 {
    MAX_KEYS_PER_FILE
}

fn default_wait() -> Duration {
    DEFAULT_BULK_WAIT
}

fn key_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    from_number(deserializer, "a whole number of keys", |count| {
        if count.fract() != 0.0 || count < 0.0 {
            return Err(format!(
                "`import_above` takes a whole number of keys (0: every add goes by import), got {count}"
            ));
        }
        Ok(count as u64)
    })
}

fn keys_per_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    from_number(deserializer, "a whole number of keys", |count| {
        if count.fract() != 0.0 || !(1.0..=MAX_KEYS_PER_FILE as f64).contains(&count) {
            return Err(format!(
                "an import file holds 1 to {MAX_KEYS_PER_FILE} keys (LaunchDarkly's limit), got {count}"
            ));
        }
        Ok(count as u64)
    })
}

fn wait<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    from_str(deserializer, "a duration", |text| {
        let wait = humantime::parse_duration(text)
            .map_err(|e| format!("`wait` takes a duration such as 10m or 1h, got `{text}`: {e}"))?;
        if wait.is_zero() {
            return Err(
                "`wait` must be longer than 0s: an import takes LaunchDarkly some time".into(),
            );
        }
        Ok(wait)
    })
}
