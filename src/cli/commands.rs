//! The commands: each opens what it needs (the warehouse, the state store, the LaunchDarkly client), does its
//! work, prints or writes its report, and says its exit code.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;

use super::{client, exit, runtime};
use crate::config::{Config, SegmentSyncConfig, SyncEntry, TokenSource};
use crate::history::RunOutcome;
use crate::plan::EventPlanner;
use crate::plan::SyncPlanError;
use crate::plan::{PlanOutcome, Planner};
use crate::report::{
    EventPlanResult, Format, PlanResult, PlanResults, SyncFormat, overall_outcome,
    write_plan_report, write_sync_report,
};
use crate::run::{Runner, SyncOptions, SyncReport};
use crate::shutdown;
use crate::state::Store;
use crate::state::copy::{Copied, Copier, StoreKind};
use crate::status::{self, StatusFormat};
use crate::status_page::{Site, StatusPages};
use crate::warehouse::Warehouse;

pub(super) fn sync(
    config: &Config,
    names: &[String],
    options: SyncOptions,
    format: SyncFormat,
    progress: bool,
) -> anyhow::Result<Vec<SyncReport>> {
    let syncs = config.select_syncs(names)?;
    let client = client(config)?;
    let warehouse = Warehouse::for_project(config)?;
    let store = Store::open(config)?;
    let shutdown = shutdown::listen().context("cannot listen for signals")?;
    let runner = Runner::new(config, &warehouse, &store, client)
        .with_progress(progress)
        .with_shutdown(shutdown.clone());
    let runtime = runtime()?;
    let reports: Vec<SyncReport> = runtime.block_on(async {
        let mut reports = Vec::new();
        for sync in syncs {
            if shutdown.requested() {
                tracing::warn!(sync = %sync.name(), "not started: ldsync is stopping");
                continue;
            }
            let report = runner.run(sync, options).await;
            report.log();
            reports.push(report);
        }
        reports
    });
    let mut out = BufWriter::new(std::io::stdout());
    write_sync_report(&reports, format, &mut out)?;
    out.flush()?;
    Ok(reports)
}

pub(super) fn sync_exit_code(reports: &[SyncReport], detailed: bool) -> u8 {
    let any = |outcome| reports.iter().any(|r| r.run.outcome == outcome);
    if any(RunOutcome::Failed) {
        exit::for_failures(reports.iter().filter_map(|r| r.error_class))
    } else if any(RunOutcome::Interrupted) {
        exit::INTERRUPTED
    } else if any(RunOutcome::GateStopped) {
        exit::GATE_STOPPED
    } else if detailed && any(RunOutcome::Synced) {
        exit::CHANGES
    } else {
        exit::OK
    }
}

pub(super) fn status(
    config: &Config,
    names: &[String],
    format: StatusFormat,
    output: Option<&Path>,
) -> anyhow::Result<u8> {
    let now = chrono::Utc::now();
    let syncs = config.select_syncs(names)?;
    let store = Store::open(config)?;
    let format = match format {
        StatusFormat::Table => SyncFormat::Table,
        StatusFormat::Json => SyncFormat::Json,
        StatusFormat::Html => {
            let page = StatusPages::new(config, &store, &syncs).overview(Site::File, now);
            write_output(output, &mut |out| Ok(out.write_all(page.as_bytes())?))?;
            return Ok(exit::OK);
        }
    };
    let statuses = syncs
        .into_iter()
        .map(|sync| status::status_of(config, &store, sync, now))
        .collect::<Result<Vec<_>, _>>()?;
    write_output(output, &mut |out| {
        Ok(status::write_status(&statuses, now, format, out)?)
    })?;
    Ok(exit::OK)
}

/// Writes with `write` to the file `output`, or to standard output.
fn write_output(
    output: Option<&Path>,
    write: &mut dyn FnMut(&mut (dyn Write + Send)) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = BufWriter::new(file);
            write(&mut out)?;
            out.flush()
                .with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            let mut out = BufWriter::new(std::io::stdout());
            write(&mut out)?;
            Ok(out.flush()?)
        }
    }
}

pub(super) fn history(
    config: &Config,
    names: &[String],
    limit: usize,
    format: SyncFormat,
) -> anyhow::Result<u8> {
    let syncs = config.select_syncs(names)?;
    let runs = status::history_of(&Store::open(config)?, &syncs, limit)?;
    let mut out = BufWriter::new(std::io::stdout());
    status::write_history(&runs, format, &mut out)?;
    out.flush()?;
    Ok(exit::OK)
}

pub(super) fn copy_checkpoints(
    config: &Config,
    names: &[String],
    from: StoreKind,
    replace: bool,
) -> anyhow::Result<u8> {
    let syncs = config.select_syncs(names)?;
    let copier = Copier::open(config, from)?;
    let (from, to) = copier.direction();
    let mut failures = Vec::new();
    for sync in syncs {
        let name = sync.name();
        match copier.copy(sync, replace) {
            Ok(Copied::Checkpoint { run_id, key_count }) => {
                println!(
                    "✓ {name}: checkpoint of run {run_id} ({key_count} keys) copied from {from} to {to}"
                )
            }
            Ok(Copied::Events { run_id }) => {
                println!("✓ {name}: events checkpoint of run {run_id} copied from {from} to {to}")
            }
            Ok(Copied::Nothing) => println!("- {name}: no checkpoint in the {from} store"),
            Err(e) => {
                failures.push(e.class());
                println!("✗ {e}");
            }
        }
    }
    Ok(if failures.is_empty() {
        exit::OK
    } else {
        exit::for_failures(failures)
    })
}

/// How `ldsync plan` was asked to run.
pub(super) struct PlanOptions<'a> {
    pub(super) format: Format,
    pub(super) output: Option<&'a Path>,
    pub(super) show: usize,
    pub(super) detailed_exitcode: bool,
    pub(super) full: bool,
    pub(super) progress: bool,
}

pub(super) fn plan(
    config: &Config,
    names: &[String],
    options: PlanOptions<'_>,
) -> anyhow::Result<u8> {
    let PlanOptions {
        format,
        output,
        show,
        detailed_exitcode,
        full,
        progress,
    } = options;
    if format == Format::Parquet && output.is_none() {
        anyhow::bail!("--format parquet writes a binary file: give it --output PATH");
    }
    let syncs = config.select_syncs(names)?;
    let warehouse = Warehouse::for_project(config)?;
    let store = Store::open(config)?;
    let segment_syncs: Vec<&SegmentSyncConfig> = syncs.iter().filter_map(|s| s.segment()).collect();
    let plan_one: Box<dyn Fn(&SegmentSyncConfig) -> PlanResult + '_> =
        if full && !segment_syncs.is_empty() {
            let runner =
                Runner::new(config, &warehouse, &store, client(config)?).with_progress(progress);
            let runtime = runtime()?;
            Box::new(move |sync| runtime.block_on(runner.plan_full(sync)))
        } else {
            let planner = Planner::new(config, &warehouse, &store).with_progress(progress);
            Box::new(move |sync| planner.plan(sync))
        };
    let events = EventPlanner::new(config, &warehouse, &store).with_progress(progress);
    let event_results: Vec<EventPlanResult> = syncs
        .iter()
        .filter_map(|s| s.events())
        .map(|sync| {
            let result = events.plan(sync);
            match &result {
                Ok(p) => tracing::info!(sync = %p.sync, rows = p.rows, events = p.events, bad_rows = p.bad_rows.count, "planned"),
                Err(e) => tracing::error!(sync = %e.sync, "{e}"),
            }
            result
        })
        .collect();
    let results: Vec<PlanResult> = segment_syncs
        .iter()
        .map(|sync| {
            let started = std::time::Instant::now();
            let result = plan_one(sync);
            match &result {
                Ok(p) => tracing::info!(
                    sync = %p.sync,
                    rows = p.keys.rows,
                    keys = p.keys.distinct,
                    adds = p.adds.len(),
                    removes = p.removes.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "planned"
                ),
                Err(e) => tracing::error!(sync = %e.sync, "{e}"),
            }
            result
        })
        .collect();
    let results = PlanResults {
        segments: results,
        events: event_results,
    };
    write_report(&results, format, output, show)?;
    Ok(match overall_outcome(&results) {
        None => exit::for_failures(results.failures().map(SyncPlanError::class)),
        Some(_) if !detailed_exitcode => exit::OK,
        Some(PlanOutcome::NoChanges) => exit::OK,
        Some(PlanOutcome::Changes) => exit::CHANGES,
        Some(PlanOutcome::GateStopped) => exit::GATE_STOPPED,
    })
}

fn write_report(
    results: &PlanResults,
    format: Format,
    output: Option<&Path>,
    show: usize,
) -> anyhow::Result<()> {
    write_output(output, &mut |out| {
        Ok(write_plan_report(results, format, show, out)?)
    })
}

pub(super) fn validate(config: &Config, names: &[String]) -> anyhow::Result<u8> {
    let syncs = config.select_syncs(names)?;
    let warehouse = Warehouse::for_project(config)?;
    let store = Store::open(config)?;
    let planner = Planner::new(config, &warehouse, &store);
    let events = EventPlanner::new(config, &warehouse, &store);
    let mut failures = Vec::new();
    for sync in syncs {
        let checked = match sync {
            SyncEntry::Segment(sync) => crate::validate::check_sync(config, &planner, sync),
            SyncEntry::Events(sync) => crate::validate::check_events_sync(config, &events, sync),
        };
        match checked {
            Ok(summary) => println!("✓ {summary}"),
            Err(e) => {
                failures.push(e.class());
                println!("✗ {e}");
            }
        }
    }
    if let TokenSource::Env(var) = &config.launchdarkly.token
        && std::env::var_os(var).is_none()
    {
        println!(
            "! the access token variable {var} is not set: plan works without it, sync will need it"
        );
    }
    Ok(if failures.is_empty() {
        exit::OK
    } else {
        exit::for_failures(failures)
    })
}
