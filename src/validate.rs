//! `ldsync validate`: every check that can be made without running a model in full or calling LaunchDarkly.

use crate::config::{Config, SyncConfig};
use crate::plan::{Planner, SyncError};

/// Checks one sync: its model file exists and prepares against the warehouse, its key column exists with a type
/// that can be a context key, and its checkpoint (if any) is readable and was made with its current settings.
/// Returns a one-line summary of what was checked.
pub fn check_sync(
    config: &Config,
    planner: &Planner,
    sync: &SyncConfig,
) -> Result<String, SyncError> {
    let model_path = config.model_path(sync);
    let (_, key) = planner.prepare_model(sync)?;
    let checkpoint_text = match planner.checkpoint(sync)? {
        Some(c) => format!(
            "checkpoint of run {} ({} keys)",
            c.manifest.run_id, c.manifest.key_count
        ),
        None => "no checkpoint yet".to_string(),
    };
    Ok(format!(
        "sync `{}`: model {}, key column `{}` ({}{}), {} mode into segment `{}` ({}), {}",
        sync.name,
        model_path.display(),
        key.name,
        key.sql_type,
        if key.cast_to_text {
            ", read as text"
        } else {
            ""
        },
        sync.mode,
        sync.segment,
        sync.context_kind,
        checkpoint_text
    ))
}
