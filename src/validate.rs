//! `ldsync validate`: every check that can be made without running a model in full or calling LaunchDarkly.

use crate::config::{BigSegmentSettings, Config, EventSyncConfig, Mode, SegmentSyncConfig};
use crate::plan::EventPlanner;
use crate::plan::{Planner, SyncPlanError};
use crate::report::dbt_model_text;
use crate::vocab::SegmentKind;

/// Checks one sync: its model file exists and prepares against the warehouse, its key column exists with a type
/// that can be a context key, and its checkpoint (if any) is readable and was made with its current settings.
/// Returns a one-line summary of what was checked.
pub fn check_sync(
    config: &Config,
    planner: &Planner,
    sync: &SegmentSyncConfig,
) -> Result<String, SyncPlanError> {
    let (model, key) = planner.prepare_model(sync)?;
    let checkpoint_text = match planner.checkpoint(sync)? {
        Some(c) => format!(
            "checkpoint of run {} ({} keys)",
            c.manifest.run_id, c.manifest.key_count
        ),
        None => "no checkpoint yet".to_string(),
    };
    Ok(format!(
        "sync `{}`: model {}{}, key column `{}` ({}{}), {} mode into segment `{}` ({}){}, {}",
        sync.name,
        config.model_label(&sync.model),
        model
            .dbt
            .as_ref()
            .map_or(String::new(), |m| format!(" ({})", dbt_model_text(m))),
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
        membership_text(sync),
        checkpoint_text
    ))
}

/// What a segment sync does about a big segment's bulk APIs and its real membership, when it says anything.
fn membership_text(sync: &SegmentSyncConfig) -> String {
    let mut text = String::new();
    let big = &sync.big_segment;
    if sync.create_segment == Some(SegmentKind::Big) || *big != BigSegmentSettings::default() {
        text.push_str(&format!(
            ", on a big segment adds over {} keys go as CSV imports of at most {} keys (waiting up to {})",
            big.import_above,
            big.keys_per_file,
            humantime::format_duration(big.wait)
        ));
    }
    if sync.mode == Mode::Remove && sync.create_segment.is_some() {
        text.push_str(
            ", never creating the segment (create_segment does nothing for a remove sync)",
        );
    }
    if let Some(every) = sync.full_every {
        text.push_str(&format!(
            ", compared with the segment's real membership every {}",
            humantime::format_duration(every)
        ));
    }
    text
}

/// Checks one events sync: its model file exists and prepares against the warehouse with every configured column
/// (the timestamp of a usable type), and its checkpoint (if any) is readable and was made for the configured
/// project and environment. Returns a one-line summary.
pub fn check_events_sync(
    config: &Config,
    planner: &EventPlanner,
    sync: &EventSyncConfig,
) -> Result<String, SyncPlanError> {
    planner.prepare(sync)?;
    let checkpoint_text = match planner.checkpoint(sync)? {
        Some(c) => match c.progress.watermark {
            Some(watermark) => format!(
                "checkpoint of run {} (events sent up to {})",
                c.run_id,
                watermark.time().to_rfc3339()
            ),
            None => format!("checkpoint of run {} (no events yet)", c.run_id),
        },
        None => "no checkpoint yet".to_string(),
    };
    let kinds: Vec<String> = sync
        .contexts
        .iter()
        .map(|c| format!("{} from `{}`", c.kind, c.column))
        .collect();
    Ok(format!(
        "events sync `{}`: model {}, event key `{}`, contexts {}, timestamp `{}`, row id `{}`{}, lateness {}, \
         max_future {}, {}",
        sync.name,
        config.model_label(&sync.model),
        sync.event_key_column,
        kinds.join(", "),
        sync.timestamp_column,
        sync.row_id_column,
        sync.value_column
            .as_ref()
            .map_or(String::new(), |v| format!(", value `{v}`")),
        humantime::format_duration(sync.lateness),
        humantime::format_duration(sync.max_future),
        checkpoint_text
    ))
}
