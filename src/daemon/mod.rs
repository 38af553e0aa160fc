//! `ldsync run`: runs every scheduled sync on its schedule until a shutdown signal.
//!
//! Each sync has a loop of its own: wait until it is due, run it, work out when it is next due from the start of
//! that run. A sync never overlaps itself (its loop runs one run at a time, and the state store's lock keeps other
//! processes out), and ticks missed while a run went on or while ldsync was down give one run, not one per tick.
//! A failed run is tried again after a backoff that doubles with each failure, never later than the next scheduled
//! time, and the other syncs go on. The loops share one thread and one warehouse connection: a model query holds
//! the thread while it runs, and the LaunchDarkly calls and waits of different syncs interleave.
//!
//! Several daemons may share one state store in PostgreSQL (replicas, for availability). A sync that another
//! daemon is running when it falls due here is skipped quietly: that run counts as this tick's, nothing is recorded
//! as failed, and the daemons spread the syncs between them.

mod health;
mod http;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};

use crate::config::{Config, SyncEntry};
use crate::history::RunOutcome;
use crate::launchdarkly::Client;
use crate::launchdarkly::token::AccessToken;
use crate::run::{Runner, SyncOptions};
use crate::schedule::Schedule;
use crate::shutdown::{Shutdown, Stage};
use crate::state::Store;
use crate::status::{last_success, runs_of};
use crate::status_page::StatusPages;
use crate::warehouse::Warehouse;
use health::Health;
use metrics::Metrics;

/// The longest wait between tries of a failing sync (its schedule may bring the next try sooner).
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(3600);

/// How `ldsync run` runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The wait after a sync's first failure; it doubles with each failure in a row, up to an hour.
    pub failure_backoff: Duration,
    /// Where to serve Prometheus metrics and the health endpoints, if anywhere.
    pub http_addr: Option<SocketAddr>,
    /// How long one LaunchDarkly request may take.
    pub request_timeout: Duration,
}

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// After the first signal: runs in flight finished their current request.
    Cleanly,
    /// After the second signal: runs in flight were dropped at once (their journals are intact).
    AtOnce,
}

/// Runs `syncs` on their schedules until `shutdown`. Syncs without a schedule are left out, with a warning.
pub fn run(
    config: &Config,
    syncs: &[SyncEntry<'_>],
    options: &DaemonOptions,
    shutdown: Shutdown,
) -> anyhow::Result<Stopped> {
    let scheduled = scheduled_syncs(syncs)?;
    let token = AccessToken::read(&config.launchdarkly.token, &config.project_dir)?;
    let warehouse = Warehouse::for_project(config)?;
    let store = Store::open(config)?;
    let metrics = Arc::new(Metrics::new(scheduled.iter().map(|(s, _)| s.name())));
    let mut loops = Vec::new();
    for &(sync, schedule) in &scheduled {
        let runs = runs_of(&store, sync.name())?;
        if let Some(at) = last_success(&runs) {
            metrics.succeeded_at(sync.name(), at);
        }
        if let Some(interval) = schedule.interval_at(Utc::now()) {
            metrics.schedule_interval(sync.name(), interval);
        }
        let client = Client::new(&config.launchdarkly, token.clone(), options.request_timeout)
            .context("cannot set up the HTTP client")?;
        let runner =
            Runner::new(config, &warehouse, &store, client).with_shutdown(shutdown.clone());
        let scheduler = SyncLoop {
            sync,
            schedule,
            runner,
            metrics: &metrics,
            shutdown: &shutdown,
            failure_backoff: options.failure_backoff,
        };
        let unfinished = store.journal_exists(sync.name());
        loops.push(scheduler.run(runs.last().map(|r| r.started_at), unfinished));
    }
    if let Some(addr) = options.http_addr {
        let health = Arc::new(Health::new(scheduled.len(), shutdown.clone()));
        health
            .watch_store(store.clone())
            .context("cannot start the state store's health check")?;
        let endpoints = http::Endpoints {
            metrics: metrics.clone(),
            health,
            pages: StatusPages::new(config, &store, syncs),
        };
        let bound =
            http::serve(addr, endpoints).with_context(|| format!("cannot serve HTTP on {addr}"))?;
        tracing::info!(
            "serving Prometheus metrics on http://{bound}/metrics, health on /livez and /readyz"
        );
    }
    // Daemons sharing a state store take syncs that fall due together in orders of their own, so that they
    // spread the syncs between them rather than race for the same one.
    fastrand::shuffle(&mut loops);
    tracing::info!(syncs = scheduled.len(), "ldsync run started");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(futures_util::future::join_all(loops));
    Ok(match shutdown.stage() {
        Stage::StopNow => Stopped::AtOnce,
        _ => Stopped::Cleanly,
    })
}

/// The syncs that have a schedule; an error if none has.
fn scheduled_syncs<'c>(
    syncs: &[SyncEntry<'c>],
) -> anyhow::Result<Vec<(SyncEntry<'c>, &'c Schedule)>> {
    let mut scheduled = Vec::new();
    for sync in syncs {
        match sync.schedule() {
            Some(schedule) => scheduled.push((*sync, schedule)),
            None => tracing::warn!(
                sync = %sync.name(),
                "the sync has no schedule, so ldsync run leaves it out (run it with ldsync sync, or give it a schedule)"
            ),
        }
    }
    if scheduled.is_empty() {
        anyhow::bail!(
            "none of the selected syncs has a schedule: give them one in connector.yaml (schedule: 4h, or a cron \
             expression), or run them once with ldsync sync"
        );
    }
    Ok(scheduled)
}

/// The wait before trying a sync again after `failures` failures in a row.
fn backoff_after(first: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    first
        .saturating_mul(1 << doublings)
        .min(MAX_FAILURE_BACKOFF)
}

/// One sync's schedule, run after run.
struct SyncLoop<'a> {
    sync: SyncEntry<'a>,
    schedule: &'a Schedule,
    runner: Runner<'a>,
    metrics: &'a Metrics,
    shutdown: &'a Shutdown,
    failure_backoff: Duration,
}

/// A sync waiting to be tried again: since when (its failed run ended, or the start of a run that finishes an
/// interrupted one) and until when.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
}

/// When a sync is next due: its `scheduled` time, or, while it backs off after a failure, the end of the backoff,
/// sooner only for a scheduled tick that comes after the failure. A tick the failed run itself outlasted does not
/// cut the backoff short (it would run the failing sync again at once, time after time).
fn due(scheduled: DateTime<Utc>, backoff: Option<Backoff>) -> DateTime<Utc> {
    match backoff {
        None => scheduled,
        Some(backoff) if scheduled > backoff.since => backoff.until.min(scheduled),
        Some(backoff) => backoff.until,
    }
}

impl SyncLoop<'_> {
    /// Runs the sync on its schedule; `unfinished` (a journal an interrupted run left) makes the first run due at
    /// once, so that the interrupted run is finished without waiting for the next tick.
    async fn run(self, mut last_start: Option<DateTime<Utc>>, unfinished: bool) {
        let mut failures = 0;
        let mut backoff: Option<Backoff> = None;
        if unfinished {
            tracing::info!(sync = %self.sync.name(), "an interrupted run is waiting in the journal: finishing it now");
            let now = Utc::now();
            backoff = Some(Backoff {
                since: now,
                until: now,
            });
        }
        loop {
            let now = Utc::now();
            let due = due(self.schedule.next_due(last_start, now), backoff);
            if due > now {
                tracing::info!(sync = %self.sync.name(), next_run = %due.to_rfc3339(), "waiting for the next run");
            }
            let wait = (due - now).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.reached(Stage::Stopping) => return,
            }
            if self.shutdown.requested() {
                return;
            }
            let tick = Utc::now();
            let Some(report) = self
                .runner
                .run_unless_held(self.sync, SyncOptions::default())
                .await
            else {
                // Another daemon sharing the state store runs it: that run is this tick's.
                tracing::debug!(sync = %self.sync.name(), "run by another process sharing the state store");
                self.metrics.held_elsewhere(self.sync.name());
                last_start = Some(tick);
                failures = 0;
                backoff = None;
                continue;
            };
            report.log();
            self.metrics.record(&report);
            last_start = Some(report.run.started_at);
            match report.run.outcome {
                RunOutcome::Interrupted => return,
                RunOutcome::Failed => {
                    failures += 1;
                    let wait = backoff_after(self.failure_backoff, failures);
                    let since = report.run.finished_at;
                    let until = TimeDelta::from_std(wait)
                        .ok()
                        .and_then(|wait| since.checked_add_signed(wait))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    backoff = Some(Backoff { since, until });
                    tracing::warn!(
                        sync = %self.sync.name(),
                        failures,
                        "the run failed; trying again in {} at the latest",
                        humantime::format_duration(wait)
                    );
                }
                _ => {
                    failures = 0;
                    backoff = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_backs_off_even_when_it_outlasted_its_scheduled_tick() {
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        // Hourly in Berlin on the fall-back night; the run that started at 01:00 UTC failed at 02:10, after the 02:00
        // tick had passed, and backs off for a minute.
        let schedule =
            crate::schedule::parse_schedule("0 * * * *", "Europe/Berlin".parse().unwrap()).unwrap();
        let scheduled =
            schedule.next_due(Some(at("2026-10-25T01:00:00Z")), at("2026-10-25T02:10:00Z"));
        assert_eq!(scheduled, at("2026-10-25T02:00:00Z"));
        let backoff = Backoff {
            since: at("2026-10-25T02:10:00Z"),
            until: at("2026-10-25T02:11:00Z"),
        };
        assert_eq!(due(scheduled, Some(backoff)), at("2026-10-25T02:11:00Z"));
        // A tick that comes after the failure still comes first when it is sooner than the backoff's end.
        let long = Backoff {
            until: at("2026-10-25T04:10:00Z"),
            ..backoff
        };
        let next_tick =
            schedule.next_due(Some(at("2026-10-25T02:10:00Z")), at("2026-10-25T02:10:00Z"));
        assert_eq!(due(next_tick, Some(long)), at("2026-10-25T03:00:00Z"));
        assert_eq!(due(scheduled, None), scheduled);
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let first = Duration::from_secs(30);
        assert_eq!(backoff_after(first, 1), Duration::from_secs(30));
        assert_eq!(backoff_after(first, 2), Duration::from_secs(60));
        assert_eq!(backoff_after(first, 4), Duration::from_secs(240));
        assert_eq!(backoff_after(first, 9), MAX_FAILURE_BACKOFF);
        assert_eq!(backoff_after(first, 1000), MAX_FAILURE_BACKOFF);
    }
}
