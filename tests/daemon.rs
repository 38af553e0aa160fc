//! `ldsync run`, `status` and `history` end to end: the real binary as a daemon against the in-repo LaunchDarkly
//! emulator, with schedules of a second or two. Each test reads back what an operator depends on: the run history
//! on disk (how often each sync ran, that runs never overlapped), the segment's members, the journal a signal left,
//! the exit code, and the metrics endpoint.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use ldsync::history::{self, RunOutcome, RunRecord};
use ldsync::launchdarkly::CallStats;
use ldsync::state::{LocalStore, Store};
use ldsync_emulator::Faults;

use crate::util::emulated::*;
use crate::util::*;

/// A daemon started in the background, its standard error going to a file the test can read while it runs.
pub(crate) struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(setup: &Setup, args: &[&str]) -> Daemon {
        let log = setup.project.path("daemon.log");
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let child = setup
            .project
            .command("day1", &all)
            .env("LD_ACCESS_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for the daemon to exit, at most `limit`; its exit code.
    pub(crate) fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if started.elapsed() > limit {
                self.child.kill().unwrap();
                panic!(
                    "the daemon did not exit within {limit:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local_store(setup: &Setup) -> Store {
    Store::Local(LocalStore::new(setup.project.path(".ldsync/state")))
}

pub(crate) fn runs(setup: &Setup, sync: &str) -> Vec<RunRecord> {
    history::read(&local_store(setup), sync).unwrap()
}

/// Polls `condition` every 20 ms until it holds; fails after `limit`, showing the daemon's log.
pub(crate) fn wait_until(
    daemon: &Daemon,
    limit: Duration,
    what: &str,
    condition: impl Fn() -> bool,
) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "timed out waiting until {what}; the daemon's log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn set_schedule(setup: &Setup, sync_line: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(setup.project.config_path()).unwrap();
    let start = text.find(sync_line).unwrap();
    let offset = text[start..].find(from).unwrap() + start;
    let edited = format!("{}{to}{}", &text[..offset], &text[offset + from.len()..]);
    std::fs::write(setup.project.config_path(), edited).unwrap();
}

/// Seconds between the starts of consecutive runs.
fn gaps(runs: &[RunRecord]) -> Vec<f64> {
    runs.windows(2)
        .map(|w| (w[1].started_at - w[0].started_at).num_milliseconds() as f64 / 1000.0)
        .collect()
}

fn assert_no_overlap(runs: &[RunRecord]) {
    for w in runs.windows(2) {
        assert!(
            w[1].started_at >= w[0].finished_at,
            "run {} started before run {} finished",
            w[1].run_id,
            w[0].run_id
        );
    }
}

fn past_run(sync: &str, started_at: DateTime<Utc>) -> RunRecord {
    RunRecord {
        sync: sync.into(),
        run_id: "earlier".into(),
        started_at,
        finished_at: started_at,
        duration_ms: 0,
        outcome: RunOutcome::NothingToChange,
        resumed_run: None,
        adds: 0,
        removes: 0,
        audience: None,
        batches_acknowledged: 0,
        batches_planned: 0,
        excluded: Default::default(),
        drift: None,
        events: None,
        calls: CallStats::default(),
        error: None,
    }
}

#[test]
fn each_sync_runs_on_its_schedule_catches_up_once_and_stops_cleanly_on_sigterm() {
    let setup = Setup::new();
    schedule_in_seconds_with_a_missed_tick(&setup);

    // The daemon runs until pro-users has run five times; SIGTERM stops it cleanly.
    let started = Instant::now();
    let mut daemon = Daemon::start(&setup, &[]);
    wait_until(
        &daemon,
        Duration::from_secs(30),
        "pro-users ran 5 times",
        || runs(&setup, "pro-users").len() >= 5,
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit_within(Duration::from_secs(10)), Some(0));
    let elapsed = started.elapsed().as_secs_f64();

    let pro = assert_interval_syncs_kept_their_schedules(&setup, elapsed);
    let beta = assert_the_missed_tick_ran_once_and_the_cron_sync_waits(&setup);
    assert_status_shows_each_last_and_next_run(&setup, &beta);

    // history: the last runs of one sync, oldest first.
    let out = setup.project.ldsync(
        "day1",
        &["history", "pro-users", "--limit", "2", "--format", "json"],
    );
    let listed: Vec<String> = json(&out)["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    let last_two: Vec<String> = pro[pro.len() - 2..]
        .iter()
        .map(|r| r.run_id.clone())
        .collect();
    assert_eq!(listed, last_two);
}

/// pro-users every second, enterprise-orgs every two, dormant-winback on January 1st in Berlin, and churned-beta
/// (hourly) last run two hours ago.
fn schedule_in_seconds_with_a_missed_tick(setup: &Setup) {
    set_schedule(setup, "name: pro-users", "schedule: 4h", "schedule: 1s");
    set_schedule(
        setup,
        "name: dormant-winback",
        "schedule: \"0 6 * * *\"",
        "schedule: {cron: \"0 6 1 1 *\", time_zone: Europe/Berlin}",
    );
    set_schedule(
        setup,
        "name: enterprise-orgs",
        "schedule: 1h",
        "schedule: 2s",
    );
    // churned-beta (1h) last ran two hours ago: ldsync was down for a tick, so it runs once at start, not twice.
    let two_hours_ago = Utc::now() - TimeDelta::hours(2);
    history::append(
        &local_store(setup),
        &past_run("churned-beta", two_hours_ago),
    )
    .unwrap();
}

/// pro-users (1s) and enterprise-orgs (2s) ran no more often than their schedules, never overlapping, and synced
/// their segments; pro-users' runs.
fn assert_interval_syncs_kept_their_schedules(setup: &Setup, elapsed: f64) -> Vec<RunRecord> {
    let pro = runs(setup, "pro-users");
    assert_eq!(pro[0].outcome, RunOutcome::Synced, "{:?}", pro[0]);
    assert!(
        pro[1..]
            .iter()
            .all(|r| r.outcome == RunOutcome::NothingToChange)
    );
    assert!(gaps(&pro).iter().all(|g| *g >= 0.99), "{:?}", gaps(&pro));
    assert!(
        pro.len() as f64 <= elapsed + 1.0,
        "{} runs in {elapsed:.1}s",
        pro.len()
    );
    assert_no_overlap(&pro);
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day1")
    );

    let orgs = runs(setup, "enterprise-orgs");
    assert!(!orgs.is_empty());
    assert!(gaps(&orgs).iter().all(|g| *g >= 1.99), "{:?}", gaps(&orgs));
    assert!(orgs.len() as f64 <= elapsed / 2.0 + 1.0);
    assert_eq!(
        setup.members("enterprise-orgs", "organization"),
        expected_enterprise_orgs("day1")
    );
    pro
}

/// churned-beta caught up on its missed tick with one run, and dormant-winback's cron tick never came; churned-beta's
/// runs.
fn assert_the_missed_tick_ran_once_and_the_cron_sync_waits(setup: &Setup) -> Vec<RunRecord> {
    let beta = runs(setup, "churned-beta");
    assert_eq!(
        beta.len(),
        2,
        "the earlier run and one catch-up run: {beta:?}"
    );
    assert!(beta[1].started_at - beta[0].started_at >= TimeDelta::hours(2) - TimeDelta::seconds(1));
    assert!(
        runs(setup, "dormant-winback").is_empty(),
        "its cron tick is on January 1st"
    );
    beta
}

/// status: the last run of each sync, and when each runs next (`beta`: churned-beta's runs).
fn assert_status_shows_each_last_and_next_run(setup: &Setup, beta: &[RunRecord]) {
    let status = json(
        &setup
            .project
            .ldsync("day1", &["status", "--format", "json"]),
    );
    let of = |sync: &str| {
        status["syncs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["sync"] == sync)
            .unwrap()
            .clone()
    };
    let dormant = of("dormant-winback");
    assert_eq!(dormant["last_run"], serde_json::Value::Null);
    assert_eq!(dormant["schedule"], "cron 0 6 1 1 * (Europe/Berlin)");
    let next: DateTime<Utc> = dormant["next_run"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        next.format("%m-%d %H:%M").to_string(),
        "01-01 05:00",
        "06:00 in Berlin in winter"
    );
    let beta_status = of("churned-beta");
    let next: DateTime<Utc> = beta_status["next_run"].as_str().unwrap().parse().unwrap();
    assert_eq!(next - beta[1].started_at, TimeDelta::hours(1));
    assert_eq!(beta_status["last_run"]["run_id"], beta[1].run_id.as_str());
    let pro_status = of("pro-users");
    assert_eq!(
        pro_status["checkpoint"]["key_count"],
        expected_pro_users("day1").len()
    );
    assert_eq!(pro_status["unfinished_run"], false);
    assert_eq!(pro_status["last_run"]["outcome"], "nothing_to_change");
}

#[test]
fn a_run_slower_than_its_interval_never_overlaps_and_is_followed_by_one_run() {
    let setup = Setup::new();
    small_batches(&setup, 200);
    set_schedule(&setup, "name: pro-users", "schedule: 4h", "schedule: 1s");
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(500),
        ..Faults::default()
    });
    let mut daemon = Daemon::start(&setup, &["pro-users"]);
    wait_until(
        &daemon,
        Duration::from_secs(60),
        "pro-users ran 3 times",
        || runs(&setup, "pro-users").len() >= 3,
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit_within(Duration::from_secs(10)), Some(0));
    let pro = runs(&setup, "pro-users");
    let first = &pro[0];
    assert_eq!(first.outcome, RunOutcome::Synced);
    assert!(
        first.duration_ms > 2000,
        "the first run outlasts the 1s interval: {first:?}"
    );
    assert_no_overlap(&pro);
    // The ticks missed during the long run give one run, right after it, then the interval resumes.
    let after_first = (pro[1].started_at - first.finished_at).num_milliseconds();
    assert!((0..500).contains(&after_first), "{after_first} ms");
    assert!(
        gaps(&pro[1..]).iter().all(|g| *g >= 0.99),
        "{:?}",
        gaps(&pro)
    );
    // LaunchDarkly never saw two requests of this sync at once: one GET, then the batches, one after another.
    let requests = setup.emulator.requests();
    assert_eq!(
        requests.iter().filter(|r| r.method == "PATCH").count() as u64,
        first.batches_acknowledged
    );
}

#[test]
fn a_failing_sync_backs_off_while_the_others_go_on() {
    let setup = Setup::new();
    set_schedule(&setup, "name: pro-users", "schedule: 4h", "schedule: 1s");
    set_schedule(
        &setup,
        "name: enterprise-orgs",
        "schedule: 1h",
        "schedule: 1s",
    );
    set_schedule(
        &setup,
        "name: enterprise-orgs",
        "segment: enterprise-orgs",
        "segment: missing-orgs",
    );
    set_schedule(
        &setup,
        "name: enterprise-orgs",
        "    create_segment: standard\n",
        "",
    );
    let mut daemon = Daemon::start(
        &setup,
        &["pro-users", "enterprise-orgs", "--failure-backoff", "300ms"],
    );
    wait_until(
        &daemon,
        Duration::from_secs(30),
        "4 failures and 4 pro-users runs",
        || runs(&setup, "enterprise-orgs").len() >= 4 && runs(&setup, "pro-users").len() >= 4,
    );
    daemon.signal(libc::SIGINT);
    assert_eq!(daemon.exit_within(Duration::from_secs(10)), Some(0));

    let mut failing = runs(&setup, "enterprise-orgs");
    // The signal may stop a run in flight: only the last run may be interrupted, never counted as a failure.
    if failing
        .last()
        .is_some_and(|r| r.outcome == RunOutcome::Interrupted)
    {
        failing.pop();
    }
    assert!(failing.len() >= 4, "{failing:?}");
    for run in &failing {
        assert_eq!(run.outcome, RunOutcome::Failed);
        let error = run.error.as_deref().unwrap();
        assert!(error.contains("missing-orgs"), "{error}");
    }
    // Each failure is tried again after 300 ms, 600 ms, 1.2 s… from its end, unless the 1 s schedule (from the
    // failed run's start) comes first, and only a tick after the failure counts: one the failed run outlasted
    // does not cut its backoff short. A run may start a little late, never early.
    for (failures, w) in failing.windows(2).enumerate() {
        let backoff = w[0].finished_at + chrono::TimeDelta::milliseconds(300 << failures);
        let scheduled = w[0].started_at + chrono::TimeDelta::seconds(1);
        let due = if scheduled > w[0].finished_at {
            backoff.min(scheduled)
        } else {
            backoff
        };
        let late = (w[1].started_at - due).num_milliseconds();
        assert!(
            (-5..400).contains(&late),
            "retry {failures}: due {due}, started {} ({late} ms late)",
            w[1].started_at
        );
    }
    let log = daemon.log();
    assert!(log.contains("trying again in 300ms at the latest"), "{log}");
    assert!(log.contains("trying again in 600ms at the latest"), "{log}");

    let pro = runs(&setup, "pro-users");
    assert!(pro.iter().all(|r| r.outcome.succeeded()), "{pro:?}");
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day1")
    );
}

fn acknowledged_count(setup: &Setup) -> usize {
    acknowledged_in_journal(&setup.project).len()
}

#[test]
fn sigterm_mid_run_leaves_a_journal_that_the_next_start_finishes() {
    let setup = Setup::new();
    small_batches(&setup, 40);
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let mut daemon = Daemon::start(&setup, &["pro-users"]);
    wait_until(
        &daemon,
        Duration::from_secs(30),
        "two batches were acknowledged",
        || acknowledged_count(&setup) >= 2,
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit_within(Duration::from_secs(10)), Some(0));

    let journal = setup.project.path(".ldsync/state/pro-users/journal.jsonl");
    assert!(journal.exists(), "the journal stays for the next run");
    let acknowledged = acknowledged_in_journal(&setup.project);
    let requests = setup.emulator.requests();
    let applied = requests
        .iter()
        .filter(|r| r.method == "PATCH" && r.applied)
        .count();
    assert_eq!(
        applied,
        acknowledged.len(),
        "the request in flight finished and was recorded; no other was started"
    );
    let interrupted = runs(&setup, "pro-users");
    let last = interrupted.last().unwrap();
    assert_eq!(last.outcome, RunOutcome::Interrupted);
    let error = last.error.as_deref().unwrap();
    assert!(
        error.contains("stopped by a shutdown signal after"),
        "{error}"
    );
    assert!(
        setup.checkpoint("pro-users").is_none(),
        "the checkpoint did not move"
    );

    setup.emulator.set_faults(Faults::default());
    let seen = requests.len();
    let mut daemon = Daemon::start(&setup, &["pro-users"]);
    wait_until(
        &daemon,
        Duration::from_secs(30),
        "the next start finished the run",
        || runs(&setup, "pro-users").len() >= 2,
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit_within(Duration::from_secs(10)), Some(0));
    let finished = &runs(&setup, "pro-users")[1];
    assert_eq!(finished.resumed_run.as_deref(), Some(last.run_id.as_str()));
    assert!(!journal.exists());
    let pro = expected_pro_users("day1");
    assert_eq!(setup.members("pro-users", "user"), pro);
    assert_eq!(setup.checkpoint("pro-users").unwrap(), pro);
    assert_not_resent(&setup.emulator.requests()[seen..], &acknowledged);
}

#[test]
fn a_second_signal_stops_at_once_and_the_journal_stays_whole() {
    let setup = Setup::new();
    small_batches(&setup, 40);
    setup.emulator.set_faults(Faults {
        latency: Duration::from_secs(4),
        ..Faults::default()
    });
    let mut daemon = Daemon::start(&setup, &["pro-users"]);
    let journal = setup.project.path(".ldsync/state/pro-users/journal.jsonl");
    wait_until(
        &daemon,
        Duration::from_secs(30),
        "the journal was written",
        || journal.exists(),
    );
    std::thread::sleep(Duration::from_millis(300)); // the first batch is in flight, held back 4 s
    let signalled = Instant::now();
    daemon.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    daemon.signal(libc::SIGINT);
    assert_eq!(daemon.exit_within(Duration::from_secs(10)), Some(130));
    assert!(
        signalled.elapsed() < Duration::from_millis(2500),
        "stopped without waiting for the slow answer: {:?}",
        signalled.elapsed()
    );
    let last = runs(&setup, "pro-users").pop().unwrap();
    assert_eq!(last.outcome, RunOutcome::Interrupted);
    assert!(
        last.error
            .as_deref()
            .unwrap()
            .contains("second shutdown signal")
    );

    setup.emulator.set_faults(Faults::default());
    let out = setup
        .project
        .command("day1", &["sync", "pro-users"])
        .env("LD_ACCESS_TOKEN", TOKEN)
        .output()
        .unwrap();
    ok(&out);
    assert!(!journal.exists());
    let pro = expected_pro_users("day1");
    assert_eq!(setup.members("pro-users", "user"), pro);
    assert_eq!(setup.checkpoint("pro-users").unwrap(), pro);
}

/// `GET /metrics` over a plain socket.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

fn metric(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    line[series.len()..].trim().parse().unwrap()
}

#[test]
fn the_metrics_endpoint_serves_what_the_runs_did() {
    let setup = Setup::new();
    let mut daemon = Daemon::start(&setup, &["--metrics-addr", "127.0.0.1:0"]);
    // Every interval sync runs once at start (the cron one waits for 06:00 UTC); then an hour passes.
    let interval_syncs = [
        "pro-users",
        "enterprise-orgs",
        "churned-beta",
        "order-events",
    ];
    wait_until(
        &daemon,
        Duration::from_secs(30),
        "every interval sync ran once",
        || interval_syncs.iter().all(|s| runs(&setup, s).len() == 1),
    );
    let addr = metrics_address(&daemon);
    // The history is written just before the metrics count the run: scrape until they have.
    wait_until(
        &daemon,
        Duration::from_secs(10),
        "the metrics counted every run",
        || {
            let text = scrape(&addr);
            interval_syncs.iter().all(|s| runs_counted(&text, s) == 1.0)
        },
    );
    let text = scrape(&addr);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit_within(Duration::from_secs(10)), Some(0));

    for sync in interval_syncs {
        assert_metrics_count_the_run(&text, sync, &runs(&setup, sync)[0]);
    }
    let orders: u64 = expected_order_events("day1", None).values().sum();
    assert_eq!(
        metric(&text, "ldsync_events_sent_total{sync=\"order-events\"}"),
        orders as f64
    );
    assert_eq!(
        runs(&setup, "order-events")[0]
            .events
            .as_ref()
            .unwrap()
            .sent,
        orders
    );
    let pro = &runs(&setup, "pro-users")[0];
    assert_eq!(pro.outcome, RunOutcome::Synced);
    assert_eq!(pro.adds as usize, expected_pro_users("day1").len());
    assert_eq!(
        metric(
            &text,
            "ldsync_runs_total{sync=\"dormant-winback\",outcome=\"synced\"}"
        ),
        0.0
    );
}

/// The address the daemon's log says it serves metrics on.
pub(crate) fn metrics_address(daemon: &Daemon) -> String {
    let log = daemon.log();
    log.split("serving Prometheus metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string()
}

/// The runs of `sync` that the metrics `text` counts, of every outcome.
fn runs_counted(text: &str, sync: &str) -> f64 {
    RunOutcome::ALL
        .iter()
        .map(|o| {
            metric(
                text,
                &format!(
                    "ldsync_runs_total{{sync=\"{sync}\",outcome=\"{}\"}}",
                    o.as_str()
                ),
            )
        })
        .sum()
}

/// The metrics `text` count `run`, the one run of `sync`: its outcome, keys, requests and the time since it.
fn assert_metrics_count_the_run(text: &str, sync: &str, run: &RunRecord) {
    let label = format!("{{sync=\"{sync}\"}}");
    let outcome = format!(
        "ldsync_runs_total{{sync=\"{sync}\",outcome=\"{}\"}}",
        run.outcome.as_str()
    );
    assert_eq!(metric(text, &outcome), 1.0);
    let sent = |keys| {
        if run.outcome == RunOutcome::Synced {
            keys as f64
        } else {
            0.0
        }
    };
    assert_eq!(
        metric(text, &format!("ldsync_keys_added_total{label}")),
        sent(run.adds)
    );
    assert_eq!(
        metric(text, &format!("ldsync_keys_removed_total{label}")),
        sent(run.removes)
    );
    assert_eq!(
        metric(text, &format!("ldsync_requests_total{label}")),
        run.calls.requests as f64
    );
    assert_eq!(
        metric(text, &format!("ldsync_rate_limited_total{label}")),
        0.0
    );
    let age = metric(text, &format!("ldsync_seconds_since_last_success{label}"));
    assert!((0.0..30.0).contains(&age), "{sync}: {age}");
}
