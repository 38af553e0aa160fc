//! The command line: what each command takes, what it prints, and the exit codes a scheduler can branch on.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, SyncConfig, SyncEntry, TokenSource};
use crate::daemon::{self, DaemonOptions, Stopped};
use crate::events::EventPlanner;
use crate::history::RunOutcome;
use crate::launchdarkly::Client;
use crate::launchdarkly::token::AccessToken;
use crate::plan::{PlanOutcome, Planner};
use crate::report::{
    EventPlanResult, Format, PlanResult, PlanResults, SyncFormat, overall_outcome,
    write_plan_report, write_sync_report,
};
use crate::shutdown;
use crate::state::Store;
use crate::state::copy::{Copied, Copier, StoreKind};
use crate::status;
use crate::sync::{Engine, SyncOptions, SyncReport};
use crate::warehouse::Warehouse;

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    /// Success: the command did what it was asked (with plan --detailed-exitcode: nothing to change).
    pub const OK: u8 = 0;
    /// Something failed: the configuration, a model, the warehouse, a checkpoint, or writing the report.
    pub const ERROR: u8 = 1;
    /// The command line itself was wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// --detailed-exitcode: plan: at least one sync has changes to make, and no gate would stop it;
    /// sync: at least one sync sent changes, and none failed or was stopped by a gate.
    pub const CHANGES: u8 = 3;
    /// plan --detailed-exitcode: a removal gate would stop at least one sync before its first call;
    /// sync: a removal gate stopped at least one sync before its first call (and none failed).
    pub const GATE_STOPPED: u8 = 4;
    /// sync: a signal stopped a run, whose journal the next run finishes; run: a second signal stopped it at once.
    pub const INTERRUPTED: u8 = 130;
}

const AFTER_HELP: &str = "\
Exit codes:
  0    success (with --detailed-exitcode: nothing to change); run: stopped cleanly by SIGINT or SIGTERM
  1    error: configuration, model SQL, keys, warehouse, checkpoint or LaunchDarkly
  2    the command line was wrong
  3    --detailed-exitcode: plan: changes to make; sync: changes were sent
  4    plan --detailed-exitcode: a removal gate would stop a sync before any call;
       sync: a removal gate stopped a sync before any call (--override-gates lets it through)
  130  sync: a signal stopped a run (the next run finishes it); run: a second signal stopped it at once

Logs go to standard error; reports go to standard output or --output.";

/// ldsync syncs warehouse SQL models to LaunchDarkly segments and experiments.
///
/// Each sync runs a model (sql/<model>.sql) in the warehouse, works out which context keys entered or left it since
/// the last committed checkpoint, and turns that into segment changes in add, remove or mirror mode. An events sync
/// sends the model's new rows to LaunchDarkly's metric import API as custom events, each exactly once.
#[derive(Debug, Parser)]
#[command(name = "ldsync", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// The configuration file; models and relative paths resolve from its directory.
    #[arg(
        long,
        short,
        global = true,
        env = "LDSYNC_CONFIG",
        default_value = "connector.yaml"
    )]
    pub config: PathBuf,

    /// How log lines on standard error look.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Which log lines to show: error, warn, info, debug or trace (or a tracing filter such as ldsync=debug).
    #[arg(long, global = true, env = "LDSYNC_LOG", default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration, that every model exists and prepares against the warehouse with a usable key
    /// column, and that every checkpoint is readable and matches its sync's settings. Changes nothing.
    Validate {
        /// Syncs to check (default: all).
        syncs: Vec<String>,
    },
    /// Dry run: run the models, diff them against their checkpoints, and report exactly which keys a sync would
    /// add and remove, the requests that would carry them, and the removal gates that would stop it; for an events
    /// sync, the events it would send (by event key, their time range, the requests) and the rows it would leave
    /// out. Writes nothing but the report.
    Plan {
        /// Syncs to plan (default: all).
        syncs: Vec<String>,
        /// Report format; json, csv and parquet carry every key (csv and parquet: of the segment syncs).
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write the report to this file instead of standard output (required for parquet).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// How many keys of each list the table shows.
        #[arg(long, default_value_t = 5)]
        show: usize,
        /// Exit 0 when nothing would change, 3 when changes are planned, 4 when a removal gate would stop a
        /// sync (1 stays error), so a scheduler can branch on the plan.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan what `sync --full` would do: read each segment from LaunchDarkly (needs the access token) and
        /// compare the model with its real membership instead of the checkpoint, showing hand edits (drift) and
        /// the model keys the segment holds as excluded targets. Still writes nothing. Events syncs plan from their
        /// checkpoint either way.
        #[arg(long)]
        full: bool,
    },
    /// Apply each sync's plan to its LaunchDarkly segment: adds before removes, in batches of at most batch_size,
    /// written to the sync's journal before they are sent. The checkpoint moves only when LaunchDarkly has
    /// acknowledged every batch; a run that was interrupted is finished by the next one, without sending an
    /// acknowledged batch again. A first run (no checkpoint) compares with the segment's real membership. Needs the
    /// access token (launchdarkly.token_env or token_file). An events sync sends the rows past its watermark to
    /// the metric import API the same way: journaled, each batch under a payload ID of its own, the watermark moved
    /// only when every batch is acknowledged.
    Sync {
        /// Syncs to run (default: all, one after another).
        syncs: Vec<String>,
        /// Compare with the segment's real membership instead of the checkpoint, and repair the segment: for
        /// backfills, after changing a sync's settings, or when someone edited the segment by hand. Events syncs
        /// refuse it (sending their history again would count it twice).
        #[arg(long)]
        full: bool,
        /// Let this run remove what a removal gate would stop (gates.max_remove_percent, max_remove_count,
        /// allow_empty_model).
        #[arg(long)]
        override_gates: bool,
        /// How the summary on standard output looks.
        #[arg(long, short, value_enum, default_value_t = SyncFormat::Table)]
        format: SyncFormat,
        /// Exit 0 when there was nothing to change, 3 when changes were sent, 4 when a removal gate stopped a
        /// sync (1 stays failure), so a scheduler can tell a quiet run from a busy one.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Run every scheduled sync on its schedule (an interval such as 15m, or a cron expression in a time zone)
    /// until SIGINT or SIGTERM. A sync never overlaps itself, and ticks missed during a long run or downtime give
    /// one run, not one per tick; a failing sync is tried again with backoff while the others go on. The first
    /// signal lets each run finish its request in flight and leaves its journal for the next start (exit 0); a
    /// second stops at once (exit 130).
    Run {
        /// Syncs to run (default: every sync with a schedule).
        syncs: Vec<String>,
        /// Serve Prometheus metrics on this address (for example 127.0.0.1:9464), at GET /metrics.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// The wait before trying a failed sync again; it doubles with each failure in a row, up to an hour, and
        /// the sync's next scheduled time comes first if it is sooner.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        failure_backoff: Duration,
    },
    /// Show each sync's last run (outcome, counts, requests, 429s, duration), its checkpoint, any unfinished run,
    /// and when ldsync run runs it next. Reads the state store only.
    Status {
        /// Syncs to show (default: all).
        syncs: Vec<String>,
        #[arg(long, short, value_enum, default_value_t = SyncFormat::Table)]
        format: SyncFormat,
    },
    /// Copy syncs' checkpoints between the local store (the files in state.directory) and the PostgreSQL store
    /// (state.kind: postgres, state.url), to move a team to shared state, or back, without a full resync. Each
    /// checkpoint is copied as it is (its keys, run and settings; an events sync's watermark) under both stores'
    /// run locks. A sync with an unfinished run in either store is refused: finish that run first. Sends nothing
    /// to LaunchDarkly.
    CopyCheckpoints {
        /// Syncs whose checkpoints to copy (default: all).
        syncs: Vec<String>,
        /// The store to copy from; the other one is written.
        #[arg(long, value_enum)]
        from: StoreKind,
        /// Overwrite a checkpoint the other store already has for a sync (by default that sync is refused).
        #[arg(long)]
        replace: bool,
    },
    /// Show past runs, oldest first, from the state store.
    History {
        /// Syncs whose runs to show (default: all).
        syncs: Vec<String>,
        /// Show at most this many runs, the most recent.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, short, value_enum, default_value_t = SyncFormat::Table)]
        format: SyncFormat,
    },
}

/// Runs the parsed command line and returns the process's exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log_format, &cli.log_level);
    let code = match execute(&cli) {
        Ok(code) => code,
        Err(e) => {
            match cli.log_format {
                LogFormat::Text => eprintln!("error: {e:#}"),
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "ldsync failed"),
            }
            exit::ERROR
        }
    };
    ExitCode::from(code)
}

fn execute(cli: &Cli) -> anyhow::Result<u8> {
    let config = Config::load(&cli.config).with_context(|| {
        format!(
            "loading the configuration (pass --config PATH if it is not {})",
            cli.config.display()
        )
    })?;
    match &cli.command {
        Command::Validate { syncs } => validate(&config, syncs),
        Command::Plan {
            syncs,
            format,
            output,
            show,
            detailed_exitcode,
            full,
        } => plan(
            &config,
            syncs,
            PlanOptions {
                format: *format,
                output: output.as_deref(),
                show: *show,
                detailed_exitcode: *detailed_exitcode,
                full: *full,
                progress: show_progress(cli),
            },
        ),
        Command::Sync {
            syncs,
            full,
            override_gates,
            format,
            detailed_exitcode,
        } => {
            let options = SyncOptions {
                full: *full,
                override_gates: *override_gates,
            };
            let reports = sync(&config, syncs, options, *format, show_progress(cli))?;
            Ok(sync_exit_code(&reports, *detailed_exitcode))
        }
        Command::Run {
            syncs,
            metrics_addr,
            failure_backoff,
        } => {
            let options = DaemonOptions {
                failure_backoff: *failure_backoff,
                metrics_addr: *metrics_addr,
                request_timeout: REQUEST_TIMEOUT,
            };
            let syncs = config.select_syncs(syncs)?;
            let shutdown = shutdown::listen().context("cannot listen for signals")?;
            Ok(match daemon::run(&config, &syncs, &options, shutdown)? {
                Stopped::Cleanly => exit::OK,
                Stopped::AtOnce => exit::INTERRUPTED,
            })
        }
        Command::Status { syncs, format } => status(&config, syncs, *format),
        Command::History {
            syncs,
            limit,
            format,
        } => history(&config, syncs, *limit, *format),
        Command::CopyCheckpoints {
            syncs,
            from,
            replace,
        } => copy_checkpoints(&config, syncs, *from, *replace),
    }
}

/// Progress bars go to standard error when a person is watching it.
fn show_progress(cli: &Cli) -> bool {
    cli.log_format == LogFormat::Text && std::io::stderr().is_terminal()
}

/// How long one LaunchDarkly request may take before it counts as lost and is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A LaunchDarkly client holding the configured token.
fn client(config: &Config) -> anyhow::Result<Client> {
    let token = AccessToken::read(&config.launchdarkly.token, &config.project_dir)?;
    Client::new(&config.launchdarkly, token, REQUEST_TIMEOUT)
        .context("cannot set up the HTTP client")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn sync(
    config: &Config,
    names: &[String],
    options: SyncOptions,
    format: SyncFormat,
    progress: bool,
) -> anyhow::Result<Vec<SyncReport>> {
    let syncs = config.select_syncs(names)?;
    let client = client(config)?;
    let warehouse = Warehouse::open(
        &config.warehouse,
        &config.engine_settings(),
        &config.project_dir,
    )?;
    let store = Store::open(config)?;
    let shutdown = shutdown::listen().context("cannot listen for signals")?;
    let engine = Engine::new(config, &warehouse, &store, client)
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
            let report = engine.run(sync, options).await;
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

fn sync_exit_code(reports: &[SyncReport], detailed: bool) -> u8 {
    let any = |outcome| reports.iter().any(|r| r.outcome == outcome);
    if any(RunOutcome::Failed) {
        exit::ERROR
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

fn status(config: &Config, names: &[String], format: SyncFormat) -> anyhow::Result<u8> {
    let now = chrono::Utc::now();
    let syncs = config.select_syncs(names)?;
    let store = Store::open(config)?;
    let statuses = syncs
        .into_iter()
        .map(|sync| status::status_of(config, &store, sync, now))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = BufWriter::new(std::io::stdout());
    status::write_status(&statuses, now, format, &mut out)?;
    out.flush()?;
    Ok(exit::OK)
}

fn history(
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

fn copy_checkpoints(
    config: &Config,
    names: &[String],
    from: StoreKind,
    replace: bool,
) -> anyhow::Result<u8> {
    let syncs = config.select_syncs(names)?;
    let copier = Copier::open(config, from)?;
    let (from, to) = copier.direction();
    let mut failures = 0;
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
                failures += 1;
                println!("✗ {e}");
            }
        }
    }
    Ok(if failures == 0 { exit::OK } else { exit::ERROR })
}

/// How `ldsync plan` was asked to run.
struct PlanOptions<'a> {
    format: Format,
    output: Option<&'a Path>,
    show: usize,
    detailed_exitcode: bool,
    full: bool,
    progress: bool,
}

fn plan(config: &Config, names: &[String], options: PlanOptions<'_>) -> anyhow::Result<u8> {
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
    let warehouse = Warehouse::open(
        &config.warehouse,
        &config.engine_settings(),
        &config.project_dir,
    )?;
    let store = Store::open(config)?;
    let segment_syncs: Vec<&SyncConfig> = syncs.iter().filter_map(|s| s.segment()).collect();
    let plan_one: Box<dyn Fn(&SyncConfig) -> PlanResult + '_> = if full && !segment_syncs.is_empty()
    {
        let engine =
            Engine::new(config, &warehouse, &store, client(config)?).with_progress(progress);
        let runtime = runtime()?;
        Box::new(move |sync| runtime.block_on(engine.plan_full(sync)))
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
        None => exit::ERROR,
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
    match output {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = BufWriter::new(file);
            write_plan_report(results, format, show, &mut out)?;
            out.flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let mut out = BufWriter::new(std::io::stdout());
            write_plan_report(results, format, show, &mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

fn validate(config: &Config, names: &[String]) -> anyhow::Result<u8> {
    let syncs = config.select_syncs(names)?;
    let warehouse = Warehouse::open(
        &config.warehouse,
        &config.engine_settings(),
        &config.project_dir,
    )?;
    let store = Store::open(config)?;
    let planner = Planner::new(config, &warehouse, &store);
    let events = EventPlanner::new(config, &warehouse, &store);
    let mut failures = 0;
    for sync in syncs {
        let checked = match sync {
            SyncEntry::Segment(sync) => crate::validate::check_sync(config, &planner, sync),
            SyncEntry::Events(sync) => crate::validate::check_events_sync(config, &events, sync),
        };
        match checked {
            Ok(summary) => println!("✓ {summary}"),
            Err(e) => {
                failures += 1;
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
    Ok(if failures == 0 { exit::OK } else { exit::ERROR })
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
