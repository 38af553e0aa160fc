//! `engine:`, the settings of the embedded DuckDB that does ldsync's set work, checked from its raw mapping, and
//! [`parse_size`] for the sizes it takes. No I/O.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::raw::RawEngine;
use super::visit::from_map;

/// The embedded DuckDB that does ldsync's set work: it holds a model's keys, finds those that entered or left, and
/// writes checkpoints, spilling to disk past its memory limit. With a duckdb warehouse it is the warehouse's own
/// connection, so these settings apply to the models too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetEngineConfig {
    /// DuckDB's `memory_limit`, such as `256MB` or `2GB`.
    pub memory_limit: String,
    /// How many threads DuckDB uses; all cores when absent.
    pub threads: Option<u32>,
    /// Where DuckDB spills past its memory limit, relative to the project directory; absent: in the state
    /// directory.
    pub temp_directory: Option<PathBuf>,
}

/// The set engine's memory limit when the configuration does not say: enough for tens of millions of keys
/// without spilling much, small enough for a shared host.
pub const DEFAULT_ENGINE_MEMORY: &str = "256MB";

impl Default for SetEngineConfig {
    fn default() -> Self {
        SetEngineConfig {
            memory_limit: DEFAULT_ENGINE_MEMORY.to_string(),
            threads: None,
            temp_directory: None,
        }
    }
}

/// The set engine's settings as the warehouse applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetEngineSettings {
    pub memory_limit: String,
    pub threads: Option<u32>,
    /// Absent: DuckDB's own default.
    pub temp_directory: Option<PathBuf>,
}

/// The defaults, spilling where DuckDB spills by default.
impl Default for SetEngineSettings {
    fn default() -> Self {
        SetEngineSettings {
            memory_limit: DEFAULT_ENGINE_MEMORY.to_string(),
            threads: None,
            temp_directory: None,
        }
    }
}

impl<'de> Deserialize<'de> for SetEngineConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_map(deserializer, SetEngineConfig::from_raw)
    }
}

impl SetEngineConfig {
    fn from_raw(raw: RawEngine) -> Result<Self, String> {
        let memory_limit = raw
            .memory_limit
            .map_or_else(|| DEFAULT_ENGINE_MEMORY.to_string(), |m| m.0);
        match parse_size(&memory_limit) {
            Some(bytes) if bytes >= MIN_ENGINE_MEMORY => {}
            Some(_) => {
                return Err(format!(
                    "`memory_limit` must be at least 64MB (DuckDB does not spill reliably below it), got \
                     `{memory_limit}`"
                ));
            }
            None => {
                return Err(format!(
                    "`memory_limit` takes a size such as 256MB or 2GB, got `{memory_limit}`"
                ));
            }
        }
        if raw.threads == Some(0) {
            return Err("`threads` must be at least 1".into());
        }
        Ok(SetEngineConfig {
            memory_limit,
            threads: raw.threads,
            temp_directory: raw.temp_directory.map(|d| PathBuf::from(d.0)),
        })
    }
}

/// The smallest `engine.memory_limit`: below it DuckDB runs out of memory now and then instead of spilling.
const MIN_ENGINE_MEMORY: u64 = 64_000_000;

/// The bytes of a size such as `256MB`, `1.5GB` or `244.1 MiB` (DuckDB's units: KB, MB, GB, TB of 1000 and KiB,
/// MiB, GiB, TiB of 1024); `None` when it is not one.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let unit_start = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_start);
    let scale: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let number: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    Some((number * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_settings_take_sizes_and_default_to_a_bounded_engine() {
        let engine: SetEngineConfig =
            serde_yaml_ng::from_str("memory_limit: 1.5GB\nthreads: 2\ntemp_directory: spill\n")
                .unwrap();
        assert_eq!(
            engine,
            SetEngineConfig {
                memory_limit: "1.5GB".into(),
                threads: Some(2),
                temp_directory: Some(PathBuf::from("spill")),
            }
        );
        let defaults: SetEngineConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(defaults, SetEngineConfig::default());
        assert_eq!(defaults.memory_limit, "256MB");
        let err = serde_yaml_ng::from_str::<SetEngineConfig>("memory_limit: 32MB")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`memory_limit` must be at least 64MB"),
            "{err}"
        );
        for wrong in [
            "memory_limit: lots",
            "memory_limit: 12",
            "memory_limit: -1GB",
        ] {
            let err = serde_yaml_ng::from_str::<SetEngineConfig>(wrong)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`memory_limit` takes a size such as 256MB or 2GB"),
                "{err}"
            );
        }
        let err = serde_yaml_ng::from_str::<SetEngineConfig>("threads: 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`threads` must be at least 1"), "{err}");
        let err = serde_yaml_ng::from_str::<SetEngineConfig>("memroy_limit: 1GB")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `memroy_limit`"), "{err}");
    }
}
