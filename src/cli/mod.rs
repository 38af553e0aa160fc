//! The command line: what each command takes, what it prints, and the exit codes a scheduler can branch on.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::daemon::{self, DaemonOptions, Stopped};
use crate::launchdarkly::Client;
use crate::launchdarkly::token::AccessToken;
use crate::report::{Format, SyncFormat};
use crate::run::SyncOptions;
use crate::shutdown;
use crate::state::copy::StoreKind;
use crate::status::StatusFormat;

mod commands;
pub mod exit;

const AFTER_HELP: &str = "\
Exit codes:
  0    success (with --detailed-exitcode: nothing to change); run: stopped cleanly by SIGINT or SIGTERM
  1    LaunchDarkly, the warehouse or the state store failed (running again later may succeed)
  2    the command line was wrong
  3    --detailed-exitcode: plan: changes to make; sync: changes were sent
  4    plan --detailed-exitcode: a removal gate would stop a sync before any call;
       sync: a removal gate stopped a sync before any call (--override-gates lets it through)
  5    the configuration is wrong: connector.yaml, the environment it reads, the token, a sync name
  6    a model's data is wrong: its SQL, its keys or its rows
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
    /// Check connector.yaml, the models and the checkpoints; changes nothing.
    ///
    /// Check the configuration, that every model exists and prepares against the warehouse with a usable key
    /// column, and that every checkpoint is readable and matches its sync's settings. Changes nothing.
    Validate {
        /// Syncs to check (default: all).
        syncs: Vec<String>,
    },
    /// Dry run: report what each sync would change; writes nothing but the report.
    ///
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
        /// compare the model with its real membership instead of the checkpoint (a big segment's, read through an
        /// export), showing hand edits (drift) and the model keys the segment holds as excluded targets. Still
        /// changes nothing. Events syncs plan from their checkpoint either way.
        #[arg(long)]
        full: bool,
    },
    /// Apply each sync's plan to LaunchDarkly, journaled and crash-safe.
    ///
    /// Apply each sync's plan to its LaunchDarkly segment: adds before removes, in batches of at most batch_size
    /// (a big segment's adds above big_segment.import_above as CSV imports), written to the sync's journal before
    /// they are sent. The checkpoint moves only when LaunchDarkly has
    /// acknowledged every batch; a run that was interrupted is finished by the next one, without sending an
    /// acknowledged batch again. A first run (no checkpoint) compares with the segment's real membership. Needs the
    /// access token (launchdarkly.token_env or token_file). An events sync sends the rows past its watermark to
    /// the metric import API the same way: journaled, each batch under a payload ID of its own, the watermark moved
    /// only when every batch is acknowledged.
    Sync {
        /// Syncs to run (default: all, one after another).
        syncs: Vec<String>,
        /// Compare with the segment's real membership instead of the checkpoint (a big segment's, read through an
        /// export), and repair the segment: for backfills, after changing a sync's settings, or when someone
        /// edited the segment by hand. A sync's full_every does the same on its own schedule. Events syncs refuse
        /// it (sending their history again would count it twice).
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
    /// Run the scheduled syncs as a daemon until SIGINT or SIGTERM.
    ///
    /// Run every scheduled sync on its schedule (an interval such as 15m, or a cron expression in a time zone)
    /// until SIGINT or SIGTERM. A sync never overlaps itself, and ticks missed during a long run or downtime give
    /// one run, not one per tick; a failing sync is tried again with backoff while the others go on. The first
    /// signal lets each run finish its request in flight and leaves its journal for the next start (exit 0); a
    /// second stops at once (exit 130).
    Run {
        /// Syncs to run (default: every sync with a schedule).
        syncs: Vec<String>,
        /// Serve HTTP on this address (for example 127.0.0.1:9464): Prometheus metrics at GET /metrics, and
        /// health for a supervisor at GET /livez (the process is up) and GET /readyz (configuration loaded and
        /// the state store answering; 503 while draining after a shutdown signal). Read-only. `--metrics-addr`
        /// is the same flag under its earlier name.
        #[arg(long, alias = "metrics-addr")]
        http_addr: Option<std::net::SocketAddr>,
        /// The wait before trying a failed sync again; it doubles with each failure in a row, up to an hour, and
        /// the sync's next scheduled time comes first if it is sooner.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        failure_backoff: Duration,
    },
    /// Show each sync's last run, checkpoint, unfinished run and next time.
    ///
    /// Show each sync's last run (outcome, counts, requests, 429s, duration), its checkpoint, any unfinished run,
    /// and when ldsync run runs it next. Reads the state store only. `--format html` writes the status page that
    /// `ldsync run --metrics-addr` serves, with every sync's charts and run history on one page (read-only, counts
    /// only: no context keys), for people who do not run the daemon, as a CI artifact say.
    Status {
        /// Syncs to show (default: all).
        syncs: Vec<String>,
        #[arg(long, short, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Copy checkpoints between the local and the PostgreSQL state store.
    ///
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
    ///
    /// Each run's outcome, counts, requests, 429s and duration, as the run history of the state store (the local
    /// store's files or the PostgreSQL store) keeps them. Reads the state store only.
    History {
        /// Syncs whose runs to show (default: all).
        syncs: Vec<String>,
        /// Show at most this many runs, the most recent.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, short, value_enum, default_value_t = SyncFormat::Table)]
        format: SyncFormat,
    },
    /// Work with the dbt project whose models syncs name with ref().
    ///
    /// Commands for the dbt project named by connector.yaml's `dbt:` section, whose models syncs name with
    /// `model: ref('…')`.
    Dbt {
        #[command(subcommand)]
        command: DbtCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbtCommand {
    /// Print dbt exposures of the syncs that read dbt models, as YAML.
    ///
    /// Print a dbt properties file (version: 2) with one `type: application` exposure per segment sync whose
    /// model is a ref(): it depends on that model, links to the segment in LaunchDarkly, is owned by dbt.owner,
    /// and says under meta.ldsync what the sync does. Keep it in the dbt project (for example
    /// models/ldsync_exposures.yml) and check it for drift with `git diff --exit-code`. Reads connector.yaml only.
    Exposures,
}

/// Runs the parsed command line and returns the process's exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log_format, &cli.log_level);
    let code = match execute(&cli) {
        Ok(code) => code,
        Err(e) => {
            let class = exit::class_of(&e);
            match cli.log_format {
                LogFormat::Text => eprintln!("error: {e:#}"),
                LogFormat::Json => {
                    tracing::error!(error = %format!("{e:#}"), class = class.as_str(), "ldsync failed")
                }
            }
            exit::for_class(class)
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
        Command::Validate { syncs } => commands::validate(&config, syncs),
        Command::Plan {
            syncs,
            format,
            output,
            show,
            detailed_exitcode,
            full,
        } => commands::plan(
            &config,
            syncs,
            commands::PlanOptions {
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
            let reports = commands::sync(&config, syncs, options, *format, show_progress(cli))?;
            Ok(commands::sync_exit_code(&reports, *detailed_exitcode))
        }
        Command::Run {
            syncs,
            http_addr,
            failure_backoff,
        } => {
            let options = DaemonOptions {
                failure_backoff: *failure_backoff,
                http_addr: *http_addr,
                request_timeout: REQUEST_TIMEOUT,
            };
            let syncs = config.select_syncs(syncs)?;
            let shutdown = shutdown::listen().context("cannot listen for signals")?;
            Ok(match daemon::run(&config, &syncs, &options, shutdown)? {
                Stopped::Cleanly => exit::OK,
                Stopped::AtOnce => exit::INTERRUPTED,
            })
        }
        Command::Status {
            syncs,
            format,
            output,
        } => commands::status(&config, syncs, *format, output.as_deref()),
        Command::History {
            syncs,
            limit,
            format,
        } => commands::history(&config, syncs, *limit, *format),
        Command::CopyCheckpoints {
            syncs,
            from,
            replace,
        } => commands::copy_checkpoints(&config, syncs, *from, *replace),
        Command::Dbt {
            command: DbtCommand::Exposures,
        } => {
            print!("{}", crate::dbt::exposures(&config)?);
            Ok(exit::OK)
        }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn help_lists_each_command_in_one_line_and_explains_it_in_its_own_help() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        for command in cli.get_subcommands() {
            let name = command.get_name();
            let about = command
                .get_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                !about.is_empty() && !about.contains('\n') && about.len() <= 80,
                "`ldsync --help` shows {name} as {about:?}"
            );
            let long = command
                .get_long_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                long.len() > about.len() + 40,
                "`ldsync help {name}` explains no more than its summary: {long:?}"
            );
        }
    }
}
