//! Events syncs end to end: the real binary sends an orders table's events to the emulator's metric import API,
//! run after run, with late rows, lost acknowledgements, bad rows, rows dated far ahead, timestamps of every kind,
//! a batch LaunchDarkly refuses, a kill in the middle of a run, and a commit that fails half way on PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeZone, Utc};
use ldsync_emulator::{Emulator, EmulatorConfig, Faults};
use serde_json::{Value, json};

use crate::util::emulated::{TOKEN, ok};
use crate::util::postgres::{Schema, database_url};
use crate::util::{json, stderr, stdout};

const IMPORT_ROUTE: &str = "POST /v2/event-data-import/{projectKey}/{environmentKey}";

/// One row of the orders table.
#[derive(Clone)]
struct Order {
    id: String,
    event: &'static str,
    user: &'static str,
    org: &'static str,
    at: &'static str,
    amount: &'static str,
}

fn order(
    id: &str,
    event: &'static str,
    user: &'static str,
    org: &'static str,
    at: &'static str,
    amount: &'static str,
) -> Order {
    Order {
        id: id.to_string(),
        event,
        user,
        org,
        at,
        amount,
    }
}

fn millis(at: &str) -> u64 {
    let time = NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S").unwrap();
    Utc.from_utc_datetime(&time).timestamp_millis() as u64
}

/// The event LaunchDarkly should receive for `order`.
fn expected(order: &Order) -> Value {
    let mut contexts = serde_json::Map::new();
    if !order.user.is_empty() {
        contexts.insert("user".into(), json!(order.user));
    }
    if !order.org.is_empty() {
        contexts.insert("organization".into(), json!(order.org));
    }
    let mut event = json!({
        "kind": "custom",
        "key": order.event,
        "creationDate": millis(order.at),
        "contextKeys": contexts,
    });
    if !order.amount.is_empty() {
        event["metricValue"] = json!(order.amount.parse::<f64>().unwrap());
    }
    event
}

/// A project whose one events sync reads `orders.csv` (rewritten by each test as rows arrive).
struct EventsProject {
    dir: tempfile::TempDir,
    emulator: Emulator,
}

impl EventsProject {
    fn new(faults: Faults, extra: &str) -> EventsProject {
        let emulator = Emulator::start(EmulatorConfig {
            faults,
            ..EmulatorConfig::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"version: 1
warehouse:
  kind: duckdb
  startup_sql:
    - >-
      CREATE VIEW orders AS SELECT * FROM read_csv('orders.csv', header = true,
      types = {{'order_id': 'VARCHAR', 'event': 'VARCHAR', 'user_id': 'VARCHAR', 'org_id': 'VARCHAR',
      'placed_at': 'TIMESTAMP', 'amount': 'VARCHAR'}})
launchdarkly:
  base_url: {}
  project: default
  environment: production
state:
  kind: local
events:
  - name: orders
    model: order_events
    contexts: {{user: user_id, organization: org_id}}
    timestamp_column: placed_at
    value_column: amount
    row_id_column: order_id
    lateness: 1h
    batch_size: 2
{extra}"#,
            emulator.base_url()
        );
        std::fs::write(dir.path().join("connector.yaml"), config).unwrap();
        std::fs::create_dir(dir.path().join("sql")).unwrap();
        std::fs::write(
            dir.path().join("sql/order_events.sql"),
            "SELECT order_id, event AS event_key, user_id, org_id, placed_at, amount FROM orders\n",
        )
        .unwrap();
        EventsProject { dir, emulator }
    }

    fn edit_config(&self, from: &str, to: &str) {
        let path = self.dir.path().join("connector.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from));
        std::fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    /// Replaces the model's SQL.
    fn write_model(&self, sql: &str) {
        std::fs::write(self.dir.path().join("sql/order_events.sql"), sql).unwrap();
    }

    fn write_orders(&self, orders: &[Order]) {
        let mut csv = String::from("order_id,event,user_id,org_id,placed_at,amount\n");
        for o in orders {
            csv.push_str(&format!(
                "{},{},{},{},{},{}\n",
                o.id, o.event, o.user, o.org, o.at, o.amount
            ));
        }
        std::fs::write(self.dir.path().join("orders.csv"), csv).unwrap();
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ldsync"));
        command
            .arg("--config")
            .arg(self.dir.path().join("connector.yaml"))
            .args(args)
            .env("LD_ACCESS_TOKEN", TOKEN)
            .env_remove("LDSYNC_CONFIG")
            .env_remove("LDSYNC_LOG")
            .current_dir(std::env::temp_dir());
        command
    }

    fn ldsync(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn received(&self) -> Vec<Value> {
        self.emulator.events("default", "production")
    }

    fn checkpoint(&self) -> Value {
        let path = self
            .dir
            .path()
            .join(".ldsync/state/orders/events-checkpoint.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn journal_exists(&self) -> bool {
        self.dir
            .path()
            .join(".ldsync/state/orders/journal.jsonl")
            .exists()
    }

    fn imports(&self) -> Vec<ldsync_emulator::RecordedRequest> {
        self.emulator
            .requests()
            .into_iter()
            .filter(|r| r.route == IMPORT_ROUTE)
            .collect()
    }
}

/// Events as a multiset, so that a duplicate shows.
fn counted(events: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events {
        *counts.entry(event.to_string()).or_default() += 1;
    }
    counts
}

/// `count` orders of one user at one time, alike in all but their row ids (`prefix` and a number).
fn alike(count: usize, prefix: &str, at: &'static str) -> Vec<Order> {
    (0..count)
        .map(|i| {
            order(
                &format!("{prefix}{i:03}"),
                "order-completed",
                "u1",
                "",
                at,
                "2",
            )
        })
        .collect()
}

fn day_one() -> Vec<Order> {
    vec![
        order(
            "o1",
            "order-completed",
            "u1",
            "",
            "2026-11-20 10:00:00",
            "12.5",
        ),
        order(
            "o2",
            "order-completed",
            "u2",
            "acme",
            "2026-11-20 10:01:00",
            "40",
        ),
        order("o3", "upgrade", "", "acme", "2026-11-20 10:02:00", ""),
        order(
            "o4",
            "order-completed",
            "u3",
            "",
            "2026-11-20 10:05:00",
            "7.25",
        ),
        order("o5", "upgrade", "u1", "", "2026-11-20 10:05:00", ""),
    ]
}

#[test]
fn incremental_runs_send_each_event_once_with_late_rows_inside_the_window() {
    let project = EventsProject::new(Faults::default(), "");
    let mut orders = day_one();
    project.write_orders(&orders);

    // Day one's plan says what a sync would send, and sends nothing.
    assert_day_one_planned_and_nothing_sent(&project);

    // Day one's sync sends each order once, in batches of 2, and keeps the latest as its watermark.
    ok(&project.ldsync(&["sync"]));
    assert_day_one_sent_in_three_batches(&project, &orders);

    // Nothing new: nothing sent.
    let quiet = project.ldsync(&["sync", "--detailed-exitcode"]);
    assert_eq!(quiet.status.code(), Some(0), "{}", stderr(&quiet));
    assert_eq!(project.imports().len(), 3);

    // New rows: one later, one at the watermark's very time, one late but inside the hour of lateness, one later
    // than that window allows (never sent: it arrived more than `lateness` behind the watermark).
    orders.extend(later_and_late_orders());
    project.write_orders(&orders);
    let busy = project.ldsync(&["sync", "--detailed-exitcode"]);
    assert_eq!(busy.status.code(), Some(3), "{}", stderr(&busy));
    let all: Vec<Value> = orders[..8].iter().map(expected).collect();
    assert_eq!(counted(&project.received()), counted(&all));
    assert_eq!(project.checkpoint()["watermark"]["row_id"], "o6");
    // The window now starts at 09:30: every row sent at or after it is remembered, o7 at its very start.
    let checkpoint = project.checkpoint();
    let recent: Vec<&str> = checkpoint["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row_id"].as_str().unwrap())
        .collect();
    assert_eq!(recent, ["o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7"]);

    // A run after that reads the window again and sends nothing twice.
    ok(&project.ldsync(&["sync"]));
    assert_eq!(counted(&project.received()), counted(&all));

    assert_history_and_status_count_every_event(&project);
}

fn assert_day_one_planned_and_nothing_sent(project: &EventsProject) {
    let plan = project.ldsync(&["plan", "--format", "json"]);
    ok(&plan);
    let planned = &json(&plan)["events"][0];
    assert_eq!(planned["events"], 5, "{planned}");
    assert_eq!(
        planned["by_event_key"],
        json!({"order-completed": 3, "upgrade": 2})
    );
    assert_eq!(planned["batch_events"], json!([2, 2, 1]));
    assert_eq!(planned["first_event_at"], "2026-11-20T10:00:00Z");
    assert_eq!(planned["last_event_at"], "2026-11-20T10:05:00Z");
    assert!(project.imports().is_empty(), "plan sends nothing");
}

fn assert_day_one_sent_in_three_batches(project: &EventsProject, orders: &[Order]) {
    let first: Vec<Value> = orders.iter().map(expected).collect();
    assert_eq!(counted(&project.received()), counted(&first));
    let imports = project.imports();
    assert_eq!(imports.len(), 3, "batches of 2 events");
    let ids: BTreeSet<_> = imports
        .iter()
        .map(|r| r.payload_id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "each batch has its own payload ID");
    let checkpoint = project.checkpoint();
    assert_eq!(
        checkpoint["watermark"],
        json!({"at_ms": millis("2026-11-20 10:05:00"), "row_id": "o5"})
    );
    assert_eq!(checkpoint["events_sent"], 5);
}

/// Orders after day one's: o6 later than its watermark, o0 at its very time, o7 late but inside the hour of
/// lateness, o8 later than that window allows.
fn later_and_late_orders() -> [Order; 4] {
    [
        order(
            "o6",
            "order-completed",
            "u4",
            "",
            "2026-11-20 10:30:00",
            "99",
        ),
        order("o0", "upgrade", "u5", "", "2026-11-20 10:05:00", ""),
        order(
            "o7",
            "order-completed",
            "u6",
            "",
            "2026-11-20 09:30:00",
            "5",
        ),
        order(
            "o8",
            "order-completed",
            "u7",
            "",
            "2026-11-20 08:00:00",
            "1",
        ),
    ]
}

/// history counts the events each of the four runs sent; status, the events sent in all and the watermark.
fn assert_history_and_status_count_every_event(project: &EventsProject) {
    let history = json(&project.ldsync(&["history", "--format", "json"]));
    let sent: Vec<u64> = history["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["events"]["sent"].as_u64().unwrap())
        .collect();
    assert_eq!(sent, [5, 0, 3, 0]);
    let status = json(&project.ldsync(&["status", "--format", "json"]));
    assert_eq!(status["syncs"][0]["kind"], "events");
    assert_eq!(status["syncs"][0]["events_checkpoint"]["events_sent"], 8);
    assert_eq!(
        status["syncs"][0]["events_checkpoint"]["watermark"],
        "2026-11-20T10:30:00Z"
    );
}

#[test]
fn lost_acknowledgements_are_resent_under_the_same_payload_id_and_counted_once() {
    let project = EventsProject::new(
        Faults {
            drop_ack_rate: 0.4,
            seed: 7,
            ..Faults::default()
        },
        "",
    );
    // Twenty orders alike in all but their row id: ten batches with the same bytes, which must still be ten
    // payloads, not one.
    let orders = alike(20, "r", "2026-11-21 12:00:00");
    project.write_orders(&orders);
    let out = project.ldsync(&["sync"]);
    ok(&out);
    let received = project.received();
    assert_eq!(
        received.len(),
        20,
        "every event once, however many times its batch was sent"
    );
    let imports = project.imports();
    let mut sends: BTreeMap<String, usize> = BTreeMap::new();
    for request in &imports {
        *sends
            .entry(request.payload_id.clone().unwrap())
            .or_default() += 1;
    }
    assert_eq!(sends.len(), 10, "ten batches");
    assert!(
        sends.values().any(|&n| n > 1),
        "some acknowledgement was lost and its batch sent again: {sends:?}"
    );
    // Each resend carried the same bytes as the first send.
    for id in sends.keys() {
        let bodies: BTreeSet<String> = imports
            .iter()
            .filter(|r| r.payload_id.as_deref() == Some(id))
            .map(|r| format!("{:?}", r.body))
            .collect();
        assert_eq!(bodies.len(), 1, "{id}");
    }
    assert!(!project.journal_exists());
}

#[test]
fn bad_rows_are_counted_and_reported_and_never_sent() {
    let project = EventsProject::new(Faults::default(), "");
    let mut orders = day_one();
    orders.extend([
        order("b1", "", "u1", "", "2026-11-20 10:03:00", "1"),
        order("b2", "upgrade", "", "", "2026-11-20 10:03:00", ""),
        order("b3", "order-completed", "u1", "", "", "3"),
        order(
            "b4",
            "order-completed",
            "u1",
            "",
            "2026-11-20 10:03:00",
            "lots",
        ),
    ]);
    project.write_orders(&orders);
    let plan = project.ldsync(&["plan"]);
    ok(&plan);
    let report = stdout(&plan);
    assert!(report.contains("4 rows left out"), "{report}");
    assert!(
        report.contains("b4: a value that is not a number"),
        "{report}"
    );

    let out = project.ldsync(&["sync"]);
    ok(&out);
    assert!(stdout(&out).contains("4 rows left out"), "{}", stdout(&out));
    let good: Vec<Value> = orders[..5].iter().map(expected).collect();
    assert_eq!(counted(&project.received()), counted(&good));
    let history = json(&project.ldsync(&["history", "--format", "json"]));
    let bad = &history["runs"][0]["events"]["bad_rows"];
    assert_eq!(bad["count"], 4);
    assert_eq!(
        bad["by_problem"],
        json!({"no_event_key": 1, "no_context_key": 1, "no_timestamp": 1, "value_not_a_number": 1})
    );

    // With invalid_rows: fail, a bad row stops the run before anything is sent.
    let strict = EventsProject::new(Faults::default(), "    invalid_rows: fail\n");
    strict.write_orders(&orders);
    let failed = strict.ldsync(&["sync"]);
    assert_eq!(failed.status.code(), Some(6));
    let message = stdout(&failed) + &stderr(&failed);
    assert!(
        message.contains("sync `orders`")
            && message.contains("row `b1` is not a valid event: no event key"),
        "{message}"
    );
    assert!(strict.imports().is_empty());
}

#[test]
fn a_run_killed_mid_send_is_finished_by_the_next_with_every_event_once() {
    let project = EventsProject::new(
        Faults {
            latency: Duration::from_millis(20),
            ..Faults::default()
        },
        "",
    );
    let orders = alike(60, "k", "2026-11-22 08:00:00");
    project.write_orders(&orders);
    let mut child = project
        .command(&["sync"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while project.imports().iter().filter(|r| r.applied).count() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the run never got going"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = project.received().len();
    assert!(
        (10..60).contains(&before),
        "killed part way: {before} events in"
    );
    assert!(
        project.journal_exists(),
        "the journal stays for the next run"
    );
    assert!(
        !project
            .dir
            .path()
            .join(".ldsync/state/orders/events-checkpoint.json")
            .exists(),
        "no checkpoint before every batch is acknowledged"
    );

    let out = project.ldsync(&["sync", "--format", "json"]);
    ok(&out);
    let report = json(&out);
    assert!(report["syncs"][0]["resumed_run"].is_string(), "{report}");
    let all: Vec<Value> = orders.iter().map(expected).collect();
    assert_eq!(counted(&project.received()), counted(&all));
    // 30 batches; at most the one in flight at the kill is sent twice.
    assert!(project.imports().len() <= 31, "{}", project.imports().len());
    assert!(!project.journal_exists());
    assert_eq!(project.checkpoint()["events_sent"], 60);
    // Batches are spooled to a temporary file while a run plans; the run removes its own, and the next run under
    // the lock removes one that a run killed while planning left.
    let state = project.dir.path().join(".ldsync/state/orders");
    std::fs::write(state.join(".events-spool.killed"), "[]\n").unwrap();
    ok(&project.ldsync(&["sync"]));
    let mut left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["events-checkpoint.json", "lock", "runs.jsonl"]);
}

#[test]
fn events_sync_settings_are_checked_with_their_field_and_line() {
    let project = EventsProject::new(Faults::default(), "");
    project.edit_config("lateness: 1h", "lateness: soon");
    let out = project.ldsync(&["validate"]);
    assert_eq!(out.status.code(), Some(5));
    let message = stderr(&out);
    assert!(
        message.contains("events[0].lateness") && message.contains("`lateness` takes a duration"),
        "{message}"
    );

    let project = EventsProject::new(Faults::default(), "");
    project.edit_config("timestamp_column: placed_at", "timestamp_column: amount");
    project.write_orders(&day_one());
    let out = project.ldsync(&["validate"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(
        stdout(&out).contains("the timestamp column `amount` is VARCHAR"),
        "{}",
        stdout(&out)
    );

    let project = EventsProject::new(Faults::default(), "");
    project.write_orders(&day_one());
    let out = project.ldsync(&["validate"]);
    ok(&out);
    assert!(
        stdout(&out).contains("events sync `orders`: model")
            && stdout(&out).contains("lateness 1h"),
        "{}",
        stdout(&out)
    );
    let full = project.ldsync(&["sync", "--full"]);
    assert_eq!(full.status.code(), Some(5));
    assert!(
        stdout(&full).contains("an events sync has no --full"),
        "{}",
        stdout(&full)
    );
}

/// Eight orders a second apart, `a0` to `a7`; the first order of the third batch of `batch_size` is user
/// `refused-user`'s.
fn eight_orders(batch_size: usize) -> Vec<Order> {
    const TIMES: [&str; 8] = [
        "2026-11-23 09:00:00",
        "2026-11-23 09:00:01",
        "2026-11-23 09:00:02",
        "2026-11-23 09:00:03",
        "2026-11-23 09:00:04",
        "2026-11-23 09:00:05",
        "2026-11-23 09:00:06",
        "2026-11-23 09:00:07",
    ];
    TIMES
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let user = if i == 2 * batch_size {
                "refused-user"
            } else {
                "u1"
            };
            order(&format!("a{i}"), "order-completed", user, "", at, "3")
        })
        .collect()
}

/// LaunchDarkly refuses the third batch of a run: the next run (its rows now in another order in the table) sends
/// the rest, and never the events the refused run's first two batches sent, which the emulator counts once each.
#[test]
fn a_refused_run_keeps_its_acknowledged_events_and_the_next_run_sends_only_the_rest() {
    for batch_size in [1, 2] {
        let project = EventsProject::new(
            Faults {
                refused_keys: BTreeSet::from(["refused-user".to_string()]),
                ..Faults::default()
            },
            "",
        );
        project.edit_config("batch_size: 2", &format!("batch_size: {batch_size}"));
        let mut orders = eight_orders(batch_size);
        project.write_orders(&orders);
        let refused = project.ldsync(&["sync"]);
        assert_ne!(refused.status.code(), Some(0), "{}", stdout(&refused));
        assert_eq!(
            project.imports().len(),
            3,
            "two batches, then the refused third"
        );
        let acknowledged: Vec<Value> = orders[..2 * batch_size].iter().map(expected).collect();
        assert_eq!(counted(&project.received()), counted(&acknowledged));

        project.emulator.set_faults(Faults::default());
        orders.reverse();
        project.write_orders(&orders);
        let next = project.ldsync(&["sync"]);
        ok(&next);
        let all: Vec<Value> = orders.iter().map(expected).collect();
        assert_eq!(
            counted(&project.received()),
            counted(&all),
            "batch size {batch_size}: every order counted once"
        );
        let rest = (8 - 2 * batch_size) / batch_size;
        assert_eq!(
            project.imports().len(),
            3 + rest,
            "batch size {batch_size}: the next run sends only the batches of the events not acknowledged"
        );
        assert!(
            stdout(&next).contains(&format!(
                "the {} events its acknowledged batches sent are in the checkpoint",
                2 * batch_size
            )),
            "{}",
            stdout(&next)
        );
        let checkpoint = project.checkpoint();
        assert_eq!(checkpoint["events_sent"], 8);
        assert_eq!(
            checkpoint["watermark"],
            json!({"at_ms": millis("2026-11-23 09:00:07"), "row_id": "a7"})
        );
        assert!(!project.journal_exists());
    }
}

/// A time `days` from now, as the orders table writes it.
fn days_from_now(days: i64) -> &'static str {
    let at = Utc::now() + chrono::Duration::days(days);
    String::leak(at.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// A row dated far ahead (a 2100 placeholder) or beyond `max_future` is a bad row: counted, named, never sent, and
/// the watermark stays with the real events, so the rows after them are still sent.
#[test]
fn a_row_dated_past_max_future_is_a_bad_row_and_never_stalls_the_sync() {
    let project = EventsProject::new(Faults::default(), "");
    let mut orders = day_one();
    let far = order("f1", "upgrade", "u8", "", "2100-01-01 00:00:00", "");
    let soon = order("f2", "upgrade", "u9", "", days_from_now(3), "");
    orders.extend([far, soon.clone()]);
    project.write_orders(&orders);
    let first = project.ldsync(&["sync"]);
    ok(&first);
    let report = stdout(&first);
    assert!(
        report.contains("2 rows left out")
            && report.contains("f1: a timestamp more than max_future after the run's start"),
        "{report}"
    );
    let mut sent: Vec<Value> = day_one().iter().map(expected).collect();
    assert_eq!(counted(&project.received()), counted(&sent));
    assert_eq!(
        project.checkpoint()["watermark"],
        json!({"at_ms": millis("2026-11-20 10:05:00"), "row_id": "o5"})
    );
    let history = json(&project.ldsync(&["history", "--format", "json"]));
    assert_eq!(
        history["runs"][0]["events"]["bad_rows"]["by_problem"],
        json!({"timestamp_in_future": 2})
    );

    // The next order is sent: the watermark did not run ahead of it.
    let [next, ..] = later_and_late_orders();
    sent.push(expected(&next));
    orders.push(next);
    project.write_orders(&orders);
    ok(&project.ldsync(&["sync"]));
    assert_eq!(counted(&project.received()), counted(&sent));

    // With four days allowed, the order dated in three days is sent; 2100 still is not, and the watermark stays
    // within the run's start plus max_future.
    project.edit_config("lateness: 1h", "lateness: 1h\n    max_future: 4d");
    let started = Utc::now();
    ok(&project.ldsync(&["sync"]));
    sent.push(expected(&soon));
    assert_eq!(counted(&project.received()), counted(&sent));
    let watermark = project.checkpoint()["watermark"].clone();
    assert_eq!(watermark["row_id"], "f2");
    assert!(
        watermark["at_ms"].as_i64().unwrap()
            <= (started + chrono::Duration::days(4)).timestamp_millis()
    );
}

#[test]
fn a_bad_max_future_is_named_with_its_sync_and_field() {
    let project = EventsProject::new(Faults::default(), "    max_future: tomorrow\n");
    let out = project.ldsync(&["validate"]);
    assert_eq!(out.status.code(), Some(5));
    let message = stderr(&out);
    assert!(
        message.contains("events[0].max_future")
            && message
                .contains("`max_future` takes a duration such as 1h, 1d or 0s, got `tomorrow`"),
        "{message}"
    );
}

/// The events LaunchDarkly received and the checkpoint's watermark when the model's timestamp column is `sql`
/// (over the orders table's `placed_at`) for day one's orders.
fn sent_with_timestamps(sql: &str) -> (Vec<Value>, Value) {
    let project = EventsProject::new(Faults::default(), "");
    project.write_model(&format!(
        "SELECT order_id, event AS event_key, user_id, org_id, {sql} AS placed_at, amount FROM orders\n"
    ));
    project.write_orders(&day_one());
    ok(&project.ldsync(&["sync"]));
    (
        project.received(),
        project.checkpoint()["watermark"].clone(),
    )
}

/// A DATE is the start of its day in UTC; an integer is Unix milliseconds, sent as they are.
#[test]
fn event_timestamps_may_be_dates_or_unix_milliseconds() {
    let orders = day_one();
    let (received, watermark) = sent_with_timestamps("CAST(placed_at AS DATE)");
    let midnight = millis("2026-11-20 00:00:00");
    let on_the_day: Vec<Value> = orders
        .iter()
        .map(|o| {
            let mut event = expected(o);
            event["creationDate"] = json!(midnight);
            event
        })
        .collect();
    assert_eq!(counted(&received), counted(&on_the_day));
    assert_eq!(watermark, json!({"at_ms": midnight, "row_id": "o5"}));

    let (received, watermark) = sent_with_timestamps("epoch_ms(placed_at)");
    let all: Vec<Value> = orders.iter().map(expected).collect();
    assert_eq!(counted(&received), counted(&all));
    assert_eq!(
        watermark,
        json!({"at_ms": millis("2026-11-20 10:05:00"), "row_id": "o5"})
    );
}

/// On PostgreSQL the commit of an events run and the deletion of its journal are one transaction: when the
/// deletion fails (a trigger refuses it), the old checkpoint stays whole (here: none) with the journal, and the
/// next run finishes the journal without sending anything again.
#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn an_events_commit_on_postgres_moves_the_checkpoint_and_ends_the_journal_together() {
    let url = database_url();
    let schema = Schema::new(&url, "events_commit", "");
    let project = EventsProject::new(Faults::default(), "");
    project.edit_config(
        "state:\n  kind: local\n",
        &format!(
            "state:\n  kind: postgres\n  url: {}\n  schema: {}\n",
            schema.url, schema.name
        ),
    );
    project.write_orders(&day_one());
    ok(&project.ldsync(&["plan"])); // creates the store's tables
    schema.execute(&format!(
        "CREATE FUNCTION {0}.refuse_delete() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the test refuses to delete a journal'; END $$;
         CREATE TRIGGER refuse_delete BEFORE DELETE ON {0}.journals
           FOR EACH ROW EXECUTE FUNCTION {0}.refuse_delete();",
        schema.name
    ));
    let failed = project.ldsync(&["sync"]);
    assert_ne!(failed.status.code(), Some(0), "{}", stdout(&failed));
    let all: Vec<Value> = day_one().iter().map(expected).collect();
    assert_eq!(counted(&project.received()), counted(&all));
    let rows = |table: &str| {
        schema.query(&format!(
            "SELECT count(*)::text FROM {}.{table}",
            schema.name
        ))[0][0]
            .clone()
            .unwrap()
    };
    assert_eq!(
        rows("event_checkpoints"),
        "0",
        "no checkpoint without the journal's end"
    );
    assert_eq!(rows("journals"), "1");

    schema.execute(&format!(
        "DROP TRIGGER refuse_delete ON {}.journals",
        schema.name
    ));
    let finished = project.ldsync(&["sync", "--format", "json"]);
    ok(&finished);
    assert!(json(&finished)["syncs"][0]["resumed_run"].is_string());
    assert_eq!(counted(&project.received()), counted(&all));
    assert_eq!(project.imports().len(), 3, "nothing sent twice");
    assert_eq!(rows("journals"), "0");
    let sent = schema.query(&format!(
        "SELECT checkpoint->>'events_sent' FROM {}.event_checkpoints",
        schema.name
    ));
    assert_eq!(sent, [[Some("5".to_string())]]);
}
