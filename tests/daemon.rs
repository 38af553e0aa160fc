//! `ldsync run`, `status` and `history` end to end: the real binary as a daemon against the in-repo LaunchDarkly
//! emulator, with schedules of a second or two. Each test reads back what an operator depends on: the run history
//! on disk (how often each sync ran, that runs never overlapped), the segment's members, the journal a signal left,
//! the exit code, and the metrics endpoint.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use ldsync::history::{self, RunOutcome, RunRecord};
use ldsync::launchdarkly::CallStats;
use ldsync_emulator::Faults;

use crate::util::background::*;
use crate::util::emulated::*;
use crate::util::*;

/// `ldsync run ARGS` started in the background on fixture day 1.
pub(crate) fn start_daemon(setup: &Setup, args: &[&str]) -> Background {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    Background::start(&setup.project, "day1", TOKEN, &all)
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
        full: false,
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
    let mut daemon = start_daemon(&setup, &[]);
    daemon.wait_until(Duration::from_secs(30), "pro-users ran 5 times", || {
        runs(&setup, "pro-users").len() >= 5
    });
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
    let mut daemon = start_daemon(&setup, &["pro-users"]);
    daemon.wait_until(Duration::from_secs(60), "pro-users ran 3 times", || {
        runs(&setup, "pro-users").len() >= 3
    });
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
    let mut daemon = start_daemon(
        &setup,
        &["pro-users", "enterprise-orgs", "--failure-backoff", "300ms"],
    );
    daemon.wait_until(
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
    // does not cut its backoff short. A run is never early; how late a busy machine starts it is not this test's
    // business (the log says which wait each failure chose, and src/daemon's tests pin `due` down exactly).
    for (failures, w) in failing.windows(2).enumerate() {
        let backoff = w[0].finished_at + chrono::TimeDelta::milliseconds(300 << failures);
        let scheduled = w[0].started_at + chrono::TimeDelta::seconds(1);
        let due = if scheduled > w[0].finished_at {
            backoff.min(scheduled)
        } else {
            backoff
        };
        assert!(
            w[1].started_at - due >= chrono::TimeDelta::milliseconds(-5),
            "retry {failures}: due {due}, started early at {}",
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

#[test]
fn a_removal_gate_waits_for_the_next_time_and_is_not_a_failure() {
    let setup = Setup::new();
    set_schedule(&setup, "name: pro-users", "schedule: 4h", "schedule: 2s");
    // 100 strangers added by hand: removing them is far more than pro-users' 5%, so the gate stops every run.
    let strangers: Vec<String> = (0..100).map(|i| format!("stranger-{i:03}")).collect();
    let strangers: Vec<&str> = strangers.iter().map(String::as_str).collect();
    setup.seed("pro-users", &strangers);
    let mut daemon = start_daemon(&setup, &["pro-users", "--failure-backoff", "100ms"]);
    daemon.wait_until(PATIENCE, "pro-users ran 3 times", || {
        runs(&setup, "pro-users").len() >= 3
    });
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit_within(PATIENCE), Some(0));

    let mut pro = runs(&setup, "pro-users");
    if pro
        .last()
        .is_some_and(|r| r.outcome == RunOutcome::Interrupted)
    {
        pro.pop();
    }
    assert!(
        pro.iter().all(|r| r.outcome == RunOutcome::GateStopped),
        "{pro:?}"
    );
    // A failure would be tried again after 100 ms; a gate waits for the 2 s schedule.
    assert!(gaps(&pro).iter().all(|g| *g >= 1.99), "{:?}", gaps(&pro));
    let log = daemon.log();
    assert!(!log.contains("the run failed"), "{log}");
    assert!(only_reads(&setup), "{:?}", setup.emulator.requests());
    assert_eq!(
        setup.members("pro-users", "user"),
        strangers
            .iter()
            .map(|k| k.to_string())
            .collect::<std::collections::BTreeSet<_>>()
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
    let mut daemon = start_daemon(&setup, &["pro-users"]);
    daemon.wait_until(
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
    assert_interrupted_leaving_the_checkpoint(&setup, last);

    setup.emulator.set_faults(Faults::default());
    let seen = requests.len();
    let mut daemon = start_daemon(&setup, &["pro-users"]);
    daemon.wait_until(
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
    // Every answer is held back 5 s: the run stops with its first batch still unanswered, or it did not stop at once.
    setup.emulator.set_faults(Faults {
        latency: Duration::from_secs(5),
        ..Faults::default()
    });
    let mut daemon = start_daemon(&setup, &["pro-users"]);
    daemon.wait_until(PATIENCE, "the first batch is in flight", || {
        patch_in_flight(&setup)
    });
    daemon.signal(libc::SIGINT);
    daemon.wait_for_log("stopping after the requests in flight");
    daemon.signal(libc::SIGINT);
    assert_eq!(daemon.exit_within(PATIENCE), Some(130));
    assert!(
        patch_in_flight(&setup),
        "stopped without waiting for the slow answer: {:?}",
        setup.emulator.requests()
    );
    // The run itself stopped and said why (the grace period's exit would have recorded nothing).
    let last = runs(&setup, "pro-users").pop().unwrap();
    assert_eq!(last.outcome, RunOutcome::Interrupted);
    assert!(
        last.error
            .as_deref()
            .unwrap()
            .contains("second shutdown signal")
    );
    let journal = setup.project.path(".ldsync/state/pro-users/journal.jsonl");
    assert!(journal.exists());

    setup.emulator.set_faults(Faults::default());
    ok(&setup.sync("day1", &["pro-users"]));
    assert!(!journal.exists());
    let pro = expected_pro_users("day1");
    assert_eq!(setup.members("pro-users", "user"), pro);
    assert_eq!(setup.checkpoint("pro-users").unwrap(), pro);
}

/// `GET /metrics` over a plain socket: the metrics text.
fn scrape(addr: &str) -> String {
    let (status, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body
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
    let mut daemon = start_daemon(&setup, &["--metrics-addr", "127.0.0.1:0"]);
    // Every interval sync runs once at start (the cron one waits for 06:00 UTC); then an hour passes.
    let interval_syncs = [
        "pro-users",
        "enterprise-orgs",
        "churned-beta",
        "order-events",
    ];
    daemon.wait_until(
        Duration::from_secs(30),
        "every interval sync ran once",
        || interval_syncs.iter().all(|s| runs(&setup, s).len() == 1),
    );
    let addr = metrics_address(&daemon);
    // The history is written just before the metrics count the run: scrape until they have.
    daemon.wait_until(
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
pub(crate) fn metrics_address(daemon: &Background) -> String {
    daemon.wait_for_log("serving Prometheus metrics on http://");
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

/// The CPU time `pid` has used so far (user and system, every thread), in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's name, which ends with the last ')': utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Lowers the open-file limit of the running process `pid` to `limit` descriptors.
fn limit_open_files(pid: u32, limit: u64) {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    let done = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlimit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn the_metrics_endpoint_rests_while_out_of_file_descriptors_and_answers_again_after() {
    let setup = Setup::new();
    // dormant-winback's cron tick is at 06:00 and it never ran: the daemon only waits, and serves metrics.
    let mut daemon = start_daemon(
        &setup,
        &["dormant-winback", "--metrics-addr", "127.0.0.1:0"],
    );
    daemon.wait_for_log("serving Prometheus metrics on http://");
    let addr = metrics_address(&daemon);
    scrape(&addr);
    // Room for four more descriptors, then fifty connections: accept fails with EMFILE while they wait.
    let open = std::fs::read_dir(format!("/proc/{}/fd", daemon.id()))
        .unwrap()
        .count() as u64;
    limit_open_files(daemon.id(), open + 4);
    let waiting: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    daemon.wait_for_log("Too many open files");

    let before = cpu_ticks(daemon.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(daemon.id()) - before;
    assert!(
        used < 40,
        "{used} ticks of CPU in 2 s while out of descriptors; the log has {} lines",
        daemon.log().lines().count()
    );

    drop(waiting);
    let text = scrape(&addr);
    assert!(text.contains("ldsync_runs_total"), "{text}");
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit_within(PATIENCE), Some(0));
}

/// `METHOD PATH` over a plain socket: the status code and the body.
pub(crate) fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_daemon_is_live_and_ready_and_turns_unready_within_a_second_of_sigterm() {
    let setup = Setup::new();
    // Slow answers keep the first runs under way when the signal comes.
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(1500),
        ..Faults::default()
    });
    let mut daemon = start_daemon(&setup, &["--http-addr", "127.0.0.1:0"]);
    let addr = metrics_address(&daemon);
    let (status, body) = http(&addr, "GET", "/livez");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("alive: ldsync run has served 5 sync(s) for "),
        "{body}"
    );
    let (status, body) = http(&addr, "GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready: configuration loaded, the state store answered "),
        "{body}"
    );
    assert_eq!(http(&addr, "HEAD", "/readyz"), (200, String::new()));
    // Nothing on the listener changes anything.
    let (status, body) = http(&addr, "POST", "/metrics");
    assert_eq!(status, 405, "{body}");
    assert_eq!(http(&addr, "GET", "/nothing").0, 404);

    daemon.wait_until(Duration::from_secs(30), "a request is in flight", || {
        setup.emulator.requests().iter().any(|r| r.status == 0)
    });
    daemon.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let (status, body) = loop {
        let (status, body) = http(&addr, "GET", "/readyz");
        if status != 200 || signalled.elapsed() > Duration::from_secs(1) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(signalled.elapsed() < Duration::from_secs(1), "{body}");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        "draining: a shutdown signal arrived; runs under way finish their request in flight and stop\n"
    );
    assert_eq!(http(&addr, "GET", "/livez").0, 200, "alive while it drains");
    assert_eq!(daemon.exit_within(Duration::from_secs(20)), Some(0));
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn the_daemon_is_not_ready_while_its_state_store_does_not_answer() {
    let url = crate::util::postgres::database_url();
    let schema = crate::util::postgres::Schema::new(&url, "daemon_readyz", "");
    // A role of the test's own, which the test can lock out of the server and let back in.
    let role = format!("ldsync_readyz_{}", std::process::id());
    schema.execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN SUPERUSER"
    ));
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let setup = Setup::new();
    setup.project.edit_config(
        "state:\n  kind: local\n",
        &format!(
            "state:\n  kind: postgres\n  url: {scheme}://{role}@{host}\n  schema: {}\n",
            schema.name
        ),
    );
    let mut daemon = start_daemon(&setup, &["--http-addr", "127.0.0.1:0"]);
    let addr = metrics_address(&daemon);
    let readyz_within = |status: u16, limit: Duration| {
        let started = Instant::now();
        loop {
            let (answered, body) = http(&addr, "GET", "/readyz");
            if answered == status {
                return body;
            }
            assert!(
                started.elapsed() < limit,
                "/readyz stayed {answered} ({body}); the daemon's log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    readyz_within(200, Duration::from_secs(5));

    schema.execute(&format!(
        "ALTER ROLE {role} NOLOGIN; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ));
    let body = readyz_within(503, Duration::from_secs(20));
    assert!(
        body.starts_with("not ready: the state store did not answer ") && body.contains(&role),
        "{body}"
    );
    assert_eq!(http(&addr, "GET", "/livez").0, 200, "alive all along");

    schema.execute(&format!("ALTER ROLE {role} LOGIN"));
    readyz_within(200, Duration::from_secs(20));
    daemon.signal(libc::SIGTERM);
    daemon.exit_within(Duration::from_secs(20));
    schema.execute(&format!(
        "REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}; DROP ROLE {role}"
    ));
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn three_daemons_on_one_postgres_state_share_the_syncs_and_record_no_failure() {
    let url = crate::util::postgres::database_url();
    let schema = crate::util::postgres::Schema::new(&url, "daemon_replicas", "");
    let setup = Setup::new();
    let every = 2;
    let hosts: Vec<Project> = (0..3).map(|_| Project::example()).collect();
    for host in &hosts {
        host.edit_config(
            "instance: us ",
            &format!("base_url: {} ", setup.emulator.base_url()),
        );
        crate::util::postgres::shared_state(host, &schema);
        let text = std::fs::read_to_string(host.config_path()).unwrap();
        let every_sync = text
            .lines()
            .map(|line| match line.split_once("schedule: ") {
                Some((indent, _)) => format!("{indent}schedule: {every}s"),
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(host.config_path(), every_sync).unwrap();
    }
    // The store's tables, made once, before the daemons start together.
    ok(&hosts[0].ldsync("day1", &["status"]));
    let started = Instant::now();
    let mut daemons: Vec<Background> = hosts
        .iter()
        .map(|h| Background::start(h, "day1", TOKEN, &["run"]))
        .collect();
    std::thread::sleep(Duration::from_secs(14));
    for daemon in &daemons {
        daemon.signal(libc::SIGTERM);
    }
    for daemon in &mut daemons {
        assert_eq!(daemon.exit_within(Duration::from_secs(30)), Some(0));
    }
    let elapsed = started.elapsed().as_secs_f64();

    let copies = tempfile::tempdir().unwrap();
    let state = ldsync::config::PostgresState {
        url: url.clone(),
        schema: schema.name.clone(),
    };
    let store = ldsync::state::Store::Postgres(
        ldsync::state::PgStore::open(&state, copies.path().into()).unwrap(),
    );
    let config = hosts[0].config();
    for sync in config.all_syncs().map(|s| s.name().to_string()) {
        let runs = history::read(&store, &sync).unwrap();
        let failed: Vec<_> = runs
            .iter()
            .filter(|r| r.outcome == RunOutcome::Failed)
            .map(|r| r.error.clone())
            .collect();
        assert!(
            failed.is_empty(),
            "{sync}: runs recorded as failed: {failed:?}"
        );
        assert_no_overlap(&runs);
        // On time: a run every tick, give or take the time a run takes on a loaded machine.
        let ticks = (elapsed / every as f64).floor() as usize;
        assert!(
            runs.len() + 2 >= ticks,
            "{sync}: {} runs in {elapsed:.1} s of {every} s ticks",
            runs.len()
        );
        let late = gaps(&runs)
            .into_iter()
            .filter(|gap| *gap > every as f64 + 3.0)
            .count();
        assert_eq!(late, 0, "{sync}: gaps between runs {:?}", gaps(&runs));
    }
}
