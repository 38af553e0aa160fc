//! Reports of plans and sync runs: a table for people at a terminal, and JSON, CSV or Parquet carrying every key
//! (or every count) for tools.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use parquet::arrow::ArrowWriter;
use serde::Serialize;

use crate::dbt::DbtModel;
use crate::history::{EventCounts, RunRecord};
use crate::plan::EventPlan;
use crate::plan::{PlanOutcome, SyncPlan, SyncPlanError};
use crate::run::SyncReport;
use crate::set_engine::KeyList;
use crate::vocab::{Action, Delivery};

/// The result of planning one segment sync.
pub type PlanResult = Result<SyncPlan, SyncPlanError>;
/// The result of planning one events sync.
pub type EventPlanResult = Result<EventPlan, SyncPlanError>;

/// What `ldsync plan` found, for every selected sync.
#[derive(Debug, Default)]
pub struct PlanResults {
    pub segments: Vec<PlanResult>,
    pub events: Vec<EventPlanResult>,
}

impl PlanResults {
    /// The syncs that could not be planned.
    pub fn failures(&self) -> impl Iterator<Item = &SyncPlanError> {
        let segments = self.segments.iter().filter_map(|r| r.as_ref().err());
        segments.chain(self.events.iter().filter_map(|r| r.as_ref().err()))
    }
}

/// How a report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A summary table and the first keys of each sync, for people.
    Table,
    /// Everything, with every key.
    Json,
    /// One row per key change of the segment syncs: sync, action, context_kind, key.
    Csv,
    /// The same rows as CSV, as a Parquet file.
    Parquet,
}

/// How a sync summary is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncFormat {
    /// A line per sync, then errors, gate stops and notes.
    Table,
    /// `{"syncs": [...]}` with every count.
    Json,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the report: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write the report: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("cannot write the report: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Writes `results` in `format` to `out`. `show` is how many keys of each list a table prints.
pub fn write_plan_report(
    all: &PlanResults,
    format: Format,
    show: usize,
    out: &mut (dyn Write + Send),
) -> Result<(), ReportError> {
    let results = &all.segments[..];
    match format {
        Format::Table => {
            if !results.is_empty() {
                write_table(results, show, out)?;
            }
            if !all.events.is_empty() {
                write_events_table(&all.events, out)?;
            }
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &json_report(all))
                .map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for plan in results.iter().flatten() {
                writer.write(&changes_batch(plan)?)?;
            }
        }
        Format::Parquet => {
            let mut writer = ArrowWriter::try_new(out, changes_schema(), None)?;
            for plan in results.iter().flatten() {
                writer.write(&changes_batch(plan)?)?;
            }
            writer.close()?;
        }
    }
    Ok(())
}

/// The outcome of a whole plan run: the worst of its syncs', or `None` when one of them failed.
pub fn overall_outcome(all: &PlanResults) -> Option<PlanOutcome> {
    let segments = all
        .segments
        .iter()
        .map(|r| r.as_ref().ok().map(SyncPlan::outcome));
    let events = all
        .events
        .iter()
        .map(|r| r.as_ref().ok().map(event_outcome));
    segments
        .chain(events)
        .try_fold(PlanOutcome::NoChanges, |worst, o| o.map(|o| worst.max(o)))
}

fn event_outcome(plan: &EventPlan) -> PlanOutcome {
    if plan.has_changes() {
        PlanOutcome::Changes
    } else {
        PlanOutcome::NoChanges
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    outcome: &'static str,
    syncs: Vec<JsonSync<'a, SyncPlan>>,
    events: Vec<JsonSync<'a, EventPlan>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonSync<'a, P> {
    Planned {
        outcome: PlanOutcome,
        #[serde(flatten)]
        plan: &'a P,
    },
    Failed {
        sync: &'a str,
        outcome: &'static str,
        error: String,
    },
}

fn json_report(all: &PlanResults) -> JsonReport<'_> {
    JsonReport {
        outcome: outcome_name(overall_outcome(all)),
        syncs: json_syncs(&all.segments, SyncPlan::outcome),
        events: json_syncs(&all.events, event_outcome),
    }
}

fn json_syncs<P>(
    results: &[Result<P, SyncPlanError>],
    outcome: fn(&P) -> PlanOutcome,
) -> Vec<JsonSync<'_, P>> {
    results
        .iter()
        .map(|r| match r {
            Ok(plan) => JsonSync::Planned {
                outcome: outcome(plan),
                plan,
            },
            Err(e) => JsonSync::Failed {
                sync: &e.sync,
                outcome: "error",
                error: e.to_string(),
            },
        })
        .collect()
}

/// The events syncs' table, then what each would send.
fn write_events_table(results: &[EventPlanResult], out: &mut dyn Write) -> std::io::Result<()> {
    let mut table = table(vec![
        "events sync",
        "rows",
        "already sent",
        "bad rows",
        "events",
        "first event",
        "last event",
        "requests",
        "outcome",
    ]);
    let maybe_time = |at: Option<DateTime<Utc>>| at.as_ref().map_or("-".into(), time);
    for result in results {
        let row = match result {
            Ok(plan) => vec![
                plan.sync.clone(),
                plan.rows.to_string(),
                plan.already_sent.to_string(),
                plan.bad_rows.count.to_string(),
                plan.events.to_string(),
                maybe_time(plan.first_event_at),
                maybe_time(plan.last_event_at),
                plan.batch_events.len().to_string(),
                outcome_name(Some(event_outcome(plan))).replace('_', " "),
            ],
            Err(e) => {
                let mut row = vec![e.sync.clone()];
                row.resize(8, String::new());
                row.push("error".to_string());
                row
            }
        };
        table.add_row(row);
    }
    writeln!(out, "{table}")?;
    for result in results {
        writeln!(out)?;
        let plan = match result {
            Ok(plan) => plan,
            Err(e) => {
                writeln!(out, "✗ {e}")?;
                continue;
            }
        };
        let window = plan
            .window_start
            .map_or("every row of the model".into(), |at| {
                format!("rows from {} on (the watermark minus lateness)", time(&at))
            });
        writeln!(out, "{} (model {}): read {window}", plan.sync, plan.model)?;
        if !plan.by_event_key.is_empty() {
            let keys: Vec<String> = plan
                .by_event_key
                .iter()
                .map(|(key, count)| format!("{key} {count}"))
                .collect();
            writeln!(
                out,
                "  {} events by event key: {}; {} import request{}",
                plan.events,
                keys.join(", "),
                plan.batch_events.len(),
                if plan.batch_events.len() == 1 {
                    ""
                } else {
                    "s"
                }
            )?;
        }
        if plan.bad_rows.count > 0 {
            writeln!(out, "  ✗ {}", plan.bad_rows)?;
        }
    }
    Ok(())
}

fn outcome_name(outcome: Option<PlanOutcome>) -> &'static str {
    match outcome {
        None => "error",
        Some(PlanOutcome::NoChanges) => "no_changes",
        Some(PlanOutcome::Changes) => "changes",
        Some(PlanOutcome::GateStopped) => "gate_stopped",
    }
}

fn changes_schema() -> Arc<Schema> {
    let text = |name| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("sync"),
        text("action"),
        text("context_kind"),
        text("key"),
    ]))
}

/// One row per key a sync would add or remove, adds first.
fn changes_batch(plan: &SyncPlan) -> Result<RecordBatch, arrow::error::ArrowError> {
    let rows = plan.adds.len() + plan.removes.len();
    let repeat = |value: &str| {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            value, rows,
        )))
    };
    let actions = std::iter::repeat_n(Action::Add.as_str(), plan.adds.len()).chain(
        std::iter::repeat_n(Action::Remove.as_str(), plan.removes.len()),
    );
    let keys = plan.adds.iter().chain(plan.removes.iter()).flatten();
    RecordBatch::try_new(
        changes_schema(),
        vec![
            repeat(&plan.sync),
            Arc::new(StringArray::from_iter_values(actions)),
            repeat(&plan.context_kind),
            Arc::new(StringArray::from_iter_values(keys)),
        ],
    )
}

fn write_table(results: &[PlanResult], show: usize, out: &mut dyn Write) -> std::io::Result<()> {
    let mut table = table(vec![
        "sync", "mode", "segment", "kind", "rows", "keys", "rejected", "entered", "left", "add",
        "remove", "requests", "outcome",
    ]);
    for result in results {
        match result {
            Ok(plan) => {
                let n = |v: u64| v.to_string();
                table.add_row(vec![
                    plan.sync.clone(),
                    plan.mode.to_string(),
                    plan.segment.clone(),
                    plan.context_kind.clone(),
                    n(plan.keys.rows),
                    n(plan.keys.distinct),
                    n(plan.keys.rejected.total()),
                    n(plan.entered),
                    n(plan.left),
                    plan.adds.len().to_string(),
                    plan.removes.len().to_string(),
                    plan.requests.len().to_string(),
                    outcome_name(Some(plan.outcome())).replace('_', " "),
                ]);
            }
            Err(e) => {
                let mut row = vec![e.sync.clone()];
                row.resize(12, String::new());
                row.push("error".to_string());
                table.add_row(row);
            }
        }
    }
    writeln!(out, "{table}")?;
    for result in results {
        writeln!(out)?;
        match result {
            Ok(plan) => write_sync_detail(plan, show, out)?,
            Err(e) => writeln!(out, "✗ {e}")?,
        }
    }
    Ok(())
}

fn write_sync_detail(plan: &SyncPlan, show: usize, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "▸ {} ({} → segment {}, context kind {}), model {}",
        plan.sync, plan.mode, plan.segment, plan.context_kind, plan.model
    )?;
    if let Some(dbt) = &plan.dbt {
        writeln!(out, "  dbt: {}", dbt_model_text(dbt))?;
    }
    let k = &plan.keys;
    writeln!(
        out,
        "  model: {} rows, {} distinct keys, {} duplicates, {} rejected",
        k.rows,
        k.distinct,
        k.duplicates,
        k.rejected.total()
    )?;
    if k.rejected.total() > 0 {
        writeln!(
            out,
            "  rejected: {} null, {} blank, {} too long; for example {}",
            k.rejected.null,
            k.rejected.blank,
            k.rejected.too_long,
            k.rejected
                .examples
                .iter()
                .map(|r| match &r.value {
                    Some(v) => format!("row {} {:?} ({})", r.row, v, r.reason),
                    None => format!("row {} ({})", r.row, r.reason),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    match &plan.checkpoint {
        Some(c) => writeln!(
            out,
            "  checkpoint: run {} committed {}, {} keys",
            c.run_id,
            c.committed_at.format("%Y-%m-%d %H:%M:%S UTC"),
            c.key_count
        )?,
        None => writeln!(out, "  checkpoint: none")?,
    }
    writeln!(out, "  entered {}, left {}", plan.entered, plan.left)?;
    if let Some(drift) = plan.drift.as_ref().filter(|d| !d.is_empty()) {
        writeln!(
            out,
            "  drift: members added by hand in LaunchDarkly: {}; removed: {}",
            drift.added_by_hand, drift.removed_by_hand
        )?;
    }
    write_keys(out, "add", &plan.adds, show)?;
    write_keys(out, "remove", &plan.removes, show)?;
    if !plan.excluded.is_empty() {
        write_keys(
            out,
            "excluded in LaunchDarkly, not added",
            &plan.excluded,
            show,
        )?;
    }
    writeln!(out, "  requests: {}", describe_requests(plan))?;
    for stop in &plan.gate_stops {
        writeln!(out, "  STOP: a sync would stop before any call: {stop}")?;
    }
    for note in &plan.notes {
        writeln!(out, "  note: {note}")?;
    }
    Ok(())
}

fn write_keys(
    out: &mut dyn Write,
    label: &str,
    keys: &KeyList,
    show: usize,
) -> std::io::Result<()> {
    if keys.is_empty() {
        return writeln!(out, "  {label}: none");
    }
    let shown: Vec<&str> = keys.iter().flatten().take(show).collect();
    let more = keys.len() - shown.len();
    let tail = if more > 0 {
        format!(" … and {more} more")
    } else {
        String::new()
    };
    writeln!(out, "  {label} {}: {}{tail}", keys.len(), shown.join(", "))
}

fn describe_requests(plan: &SyncPlan) -> String {
    let count = plan.requests.len();
    if count == 0 {
        return "none".to_string();
    }
    let part = |action: Action, delivery: Delivery| {
        let sizes: Vec<usize> = plan
            .requests
            .iter()
            .filter(|r| r.action == action && r.delivery == delivery)
            .map(|r| r.keys)
            .collect();
        let (first, last) = (*sizes.first()?, *sizes.last()?);
        let sizes = match sizes.len() {
            n if n <= 3 => sizes
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" + "),
            n if first == last => format!("{n} × {first}"),
            n => format!("{} × {first} + {last}", n - 1),
        };
        let how = match delivery {
            Delivery::Batch => "",
            Delivery::Import => " by CSV import",
        };
        Some(format!("{} {sizes} keys{how}", action.as_str()))
    };
    let parts: Vec<String> = [
        part(Action::Add, Delivery::Import),
        part(Action::Add, Delivery::Batch),
        part(Action::Remove, Delivery::Batch),
    ]
    .into_iter()
    .flatten()
    .collect();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let imports = plan.imports();
    let requests = match (imports, count - imports) {
        (0, batches) => format!("{batches} semantic-patch request{}", plural(batches)),
        (imports, 0) => format!("{imports} CSV import{}", plural(imports)),
        (imports, batches) => format!(
            "{imports} CSV import{} and {batches} batch request{}",
            plural(imports),
            plural(batches)
        ),
    };
    format!("{requests}: {}", parts.join(", then "))
}

/// A table in the style of every ldsync report, with `header`.
pub fn table(header: Vec<&str>) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    table
}

/// Writes `{"<name>": items}` as pretty JSON, with a final newline.
pub fn write_json_document(
    out: &mut dyn Write,
    name: &str,
    items: &impl Serialize,
) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ name: items }))?;
    writeln!(out)
}

/// How `plan` and `validate` show the dbt model a `ref()` resolved to: `model.pkg.name, relation
/// "db"."schema"."name", manifest generated at …`.
pub fn dbt_model_text(model: &DbtModel) -> String {
    let reads = match &model.relation {
        Some(relation) => format!("relation {relation}"),
        None => format!("{}, its compiled SQL", model.materialized),
    };
    format!(
        "{}, {reads}, manifest generated at {}",
        model.unique_id, model.generated_at
    )
}

/// A time as reports show it: RFC 3339 in UTC, to the second.
pub fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What a run added (segment syncs) or sent (events syncs, which carry `events`).
pub fn added_or_sent(adds: u64, events: Option<&EventCounts>) -> u64 {
    events.map_or(adds, |events| events.sent)
}

/// The columns of a table of runs that say what each run did.
pub const RUN_COLUMNS: [&str; 8] = [
    "outcome",
    "added / sent",
    "removed",
    "batches",
    "requests",
    "retries",
    "429s",
    "seconds",
];

/// The cells under [`RUN_COLUMNS`].
pub fn run_cells(run: &RunRecord) -> Vec<String> {
    vec![
        run.outcome.as_str().replace('_', " "),
        added_or_sent(run.adds, run.events.as_ref()).to_string(),
        run.removes.to_string(),
        format!("{}/{}", run.batches_acknowledged, run.batches_planned),
        run.calls.requests.to_string(),
        run.calls.retries.to_string(),
        run.calls.rate_limited.to_string(),
        format!("{:.1}", run.duration_ms as f64 / 1000.0),
    ]
}

/// Writes the summary of sync runs: a table with a line per sync and then what went wrong, or JSON.
pub fn write_sync_report(
    reports: &[SyncReport],
    format: SyncFormat,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if format == SyncFormat::Json {
        return write_json_document(out, "syncs", &reports);
    }
    let mut table = table(["sync"].into_iter().chain(RUN_COLUMNS).collect());
    for report in reports {
        let mut row = vec![report.run.sync.clone()];
        row.extend(run_cells(&report.run));
        table.add_row(row);
    }
    writeln!(out, "{table}")?;
    for report in reports {
        if let Some(run) = &report.run.resumed_run {
            writeln!(
                out,
                "• {}: finished interrupted run {run} first",
                report.run.sync
            )?;
        }
        for stop in &report.gate_stops {
            writeln!(
                out,
                "✗ {}: stopped before any change: {stop} (--override-gates lets this run through)",
                report.run.sync
            )?;
        }
        if let Some(error) = &report.run.error {
            writeln!(out, "✗ {error}")?;
        }
        for note in &report.notes {
            writeln!(out, "• {}: {note}", report.run.sync)?;
        }
    }
    Ok(())
}
