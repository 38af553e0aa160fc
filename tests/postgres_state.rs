//! The state store in the real PostgreSQL (`state.kind: postgres`): syncs keep their checkpoint, journal and run
//! history in its tables; a run killed mid-way is finished from the journal's rows without sending an acknowledged
//! batch again; two runs of one sync from two hosts never overlap; checkpoints move between the local store and
//! PostgreSQL without a resync. Each test works in a schema of its own, so the tests run in parallel.
//!
//! They need `DATABASE_URL` (see tests/postgres_warehouse.rs); under `CI` they must run.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ldsync::state::{CheckpointSettings, PgStore, Store};
use ldsync_emulator::{EmulatorConfig, Faults, TokenGrant};

use crate::util::emulated::*;
use crate::util::postgres::*;
use crate::util::*;

/// The run and keys of `sync`'s committed checkpoint, read from the store's tables.
fn checkpoint_in(schema: &Schema, sync: &str) -> Option<(String, BTreeSet<String>)> {
    let rows = schema.query(&format!(
        "SELECT run_id, snapshot_id::text FROM {}.checkpoints WHERE sync = '{sync}'",
        schema.name
    ));
    let row = rows.first()?;
    let keys = schema
        .query(&format!(
            "SELECT key FROM {}.snapshot_{}",
            schema.name,
            row[1].as_deref().unwrap()
        ))
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    Some((row[0].clone().unwrap(), keys))
}

/// The number the one-row, one-column `sql` gives.
fn count(schema: &Schema, sql: &str) -> i64 {
    schema.query(&format!("SELECT ({sql})::text"))[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// The batches of `sync`'s open journal recorded as acknowledged: (run id, batch index).
fn acknowledged_in(schema: &Schema, sync: &str) -> BTreeSet<(String, usize)> {
    schema
        .query(&format!(
            "SELECT j.run_id, b.batch_index::text FROM {0}.journals j JOIN {0}.journal_batches b USING (sync) \
             WHERE j.sync = '{sync}' AND b.acknowledged_at IS NOT NULL",
            schema.name
        ))
        .into_iter()
        .map(|row| {
            (
                row[0].clone().unwrap(),
                row[1].as_deref().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn syncs_keep_their_checkpoint_journal_and_history_in_postgres() {
    let url = database_url();
    let schema = Schema::new(&url, "state_sync", "");
    let setup = Setup::new();
    shared_state(&setup.project, &schema);

    // Day 1: the checkpoint and the run's history go to PostgreSQL, the journal goes with the commit, and nothing
    // goes to the local store.
    let out = setup.sync("day1", &["pro-users", "--format", "json"]);
    ok(&out);
    let run_id = json(&out)["syncs"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let day1 = expected_pro_users("day1");
    assert_eq!(setup.members("pro-users", "user"), day1);
    assert_day_one_is_kept_in_postgres_only(&setup, &schema, &run_id, &day1);

    // Day 2: planned from the checkpoint in PostgreSQL, it sends only what changed and replaces the snapshot.
    let requests_before = setup.segment_requests().len();
    ok(&setup.sync("day2", &["pro-users"]));
    let day2 = expected_pro_users("day2");
    assert_eq!(setup.members("pro-users", "user"), day2);
    assert_eq!(checkpoint_in(&schema, "pro-users").unwrap().1, day2);
    assert_day_two_sent_only_the_change(&setup, requests_before, &day1, &day2);
    assert_eq!(
        count(
            &schema,
            &format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{}' AND tablename LIKE 'snapshot\\_%'",
                schema.name
            )
        ),
        1,
        "the replaced snapshot's table was dropped"
    );

    // Another host: its own state directory, the same store. It sees the checkpoint and has nothing to do.
    assert_another_host_has_nothing_to_do(&setup, &schema, &day2);
}

fn assert_day_one_is_kept_in_postgres_only(
    setup: &Setup,
    schema: &Schema,
    run_id: &str,
    day1: &BTreeSet<String>,
) {
    assert_eq!(
        checkpoint_in(schema, "pro-users"),
        Some((run_id.to_string(), day1.clone()))
    );
    let table = |name: &str| format!("{}.{name}", schema.name);
    assert_eq!(
        count(
            schema,
            &format!("SELECT count(*) FROM {}", table("journals"))
        ),
        0
    );
    assert_eq!(
        schema.query(&format!(
            "SELECT record->>'outcome', record->>'run_id' FROM {} WHERE sync = 'pro-users'",
            table("runs")
        )),
        [[Some("synced".to_string()), Some(run_id.to_string())]]
    );
    assert!(
        !setup
            .project
            .path(".ldsync/state/pro-users/manifest.json")
            .exists(),
        "nothing went to the local store"
    );
}

/// The PATCHes since request `requests_before` added exactly the keys that entered between `day1` and `day2` and
/// removed exactly those that left.
fn assert_day_two_sent_only_the_change(
    setup: &Setup,
    requests_before: usize,
    day1: &BTreeSet<String>,
    day2: &BTreeSet<String>,
) {
    let sent: BTreeSet<(String, String)> = described(&setup.segment_requests()[requests_before..])
        .into_iter()
        .filter(|(method, ..)| method == "PATCH")
        .flat_map(|(_, _, kind, keys)| keys.into_iter().map(move |k| (kind.clone(), k)))
        .collect();
    let expected: BTreeSet<(String, String)> = difference(day2, day1)
        .into_iter()
        .map(|k| ("addIncludedTargets".to_string(), k))
        .chain(
            difference(day1, day2)
                .into_iter()
                .map(|k| ("removeIncludedTargets".to_string(), k)),
        )
        .collect();
    assert_eq!(
        sent, expected,
        "day 2 sent only what changed since the checkpoint"
    );
}

/// A second host with its own state directory and the same store plans nothing on day 2 and shows the checkpoint.
fn assert_another_host_has_nothing_to_do(setup: &Setup, schema: &Schema, day2: &BTreeSet<String>) {
    let other = Project::example();
    shared_state(&other, schema);
    other.edit_config(
        "  directory: .ldsync/state\n",
        "  directory: other-host-state\n",
    );
    other.edit_config(
        "instance: us ",
        &format!("base_url: {} ", setup.emulator.base_url()),
    );
    let plan = other.ldsync("day2", &["plan", "pro-users", "--format", "json"]);
    ok(&plan);
    let plan = &json(&plan)["syncs"][0];
    assert_eq!(plan["checkpoint"]["key_count"], day2.len());
    assert_eq!(plan["adds"].as_array().unwrap().len(), 0, "{plan}");
    assert_eq!(plan["removes"].as_array().unwrap().len(), 0, "{plan}");
    let status = other.ldsync("day2", &["status", "pro-users", "--format", "json"]);
    ok(&status);
    let status = &json(&status)["syncs"][0];
    assert_eq!(status["last_run"]["outcome"], "synced");
    assert_eq!(status["checkpoint"]["key_count"], day2.len());
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_run_killed_mid_sync_is_finished_from_the_journal_rows_without_resending() {
    let url = database_url();
    let schema = Schema::new(&url, "state_kill", "");
    let setup = Setup::new();
    shared_state(&setup.project, &schema);
    small_batches(&setup, 20);
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(15),
        ..Faults::default()
    });
    let mut child = setup
        .project
        .command("day1", &["sync", "pro-users"])
        .env("LD_ACCESS_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while applied_patches(&setup) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run sent batches"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run is still going"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let acknowledged = acknowledged_in(&schema, "pro-users");
    assert!(
        !acknowledged.is_empty(),
        "the journal recorded acknowledgements"
    );
    assert!(
        checkpoint_in(&schema, "pro-users").is_none(),
        "no checkpoint before every batch is acknowledged"
    );
    let requests_before = setup.emulator.requests().len();
    let out = setup.sync("day1", &["pro-users", "--format", "json"]);
    ok(&out);
    let resumed = json(&out)["syncs"][0]["resumed_run"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(acknowledged.iter().all(|(run, _)| *run == resumed));
    assert_not_resent(&setup.emulator.requests()[requests_before..], &acknowledged);
    let day1 = expected_pro_users("day1");
    assert_eq!(setup.members("pro-users", "user"), day1);
    assert_eq!(
        checkpoint_in(&schema, "pro-users").unwrap(),
        (resumed, day1)
    );
    assert_eq!(
        count(
            &schema,
            &format!("SELECT count(*) FROM {}.journal_batches", schema.name)
        ),
        0,
        "the journal went with the commit"
    );
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn runs_of_one_sync_on_two_hosts_never_overlap() {
    let url = database_url();
    let schema = Schema::new(&url, "state_lock", "");
    let setup = Setup::new();
    shared_state(&setup.project, &schema);
    small_batches(&setup, 200);
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(250),
        ..Faults::default()
    });
    // The store's tables, made by its migrations, for the lock's holder to be read from.
    ok(&setup.project.ldsync("day1", &["status"]));
    let (first, holder) = start_a_run_holding_the_lock(&setup, &schema);

    let second = second_host(&setup, &schema);
    let sync_second = || {
        second
            .command("day1", &["sync", "pro-users", "--format", "json"])
            .env("LD_ACCESS_TOKEN", TOKEN)
            .output()
            .unwrap()
    };

    // Without lock_wait it stops at once, naming the first run's holder, and makes no request.
    let out = sync_second();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another run of sync `pro-users` is under way (run ")
            && stderr(&out).contains(&holder),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        schema.query(&format!(
            "SELECT record->'calls'->>'requests' FROM {}.runs WHERE record->>'outcome' = 'failed'",
            schema.name
        )),
        [[Some("0".to_string())]],
        "the refused run made no request"
    );

    // With lock_wait it waits for the first run, then finds nothing to change.
    second.edit_config(
        "  directory: second-host\n",
        "  directory: second-host\n  lock_wait: 60s\n",
    );
    let out = sync_second();
    let first = first.wait_with_output().unwrap();
    ok(&first);
    ok(&out);
    assert_eq!(json(&first)["syncs"][0]["outcome"], "synced");
    assert_eq!(json(&out)["syncs"][0]["outcome"], "nothing_to_change");
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day1")
    );
}

/// A second host of the setup's: the same emulator and store, a state directory of its own.
fn second_host(setup: &Setup, schema: &Schema) -> Project {
    let second = Project::example();
    shared_state(&second, schema);
    second.edit_config(
        "instance: us ",
        &format!("base_url: {} ", setup.emulator.base_url()),
    );
    second.edit_config("  directory: .ldsync/state\n", "  directory: second-host\n");
    second
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_run_that_loses_its_lock_sends_nothing_more_and_the_next_host_ends_exact() {
    let url = database_url();
    let schema = Schema::new(&url, "state_fence", "");
    let mut config = EmulatorConfig::default();
    for token in [FIRST_HOST, SECOND_HOST] {
        config.tokens.push(TokenGrant {
            token: token.into(),
            actions: None,
        });
    }
    let setup = Setup::with(config);
    shared_state(&setup.project, &schema);
    small_batches(&setup, 200);
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(700),
        ..Faults::default()
    });
    ok(&setup.project.ldsync("day1", &["status"]));
    let first = setup
        .project
        .command("day1", &["sync", "pro-users", "--format", "json"])
        .env("LD_ACCESS_TOKEN", FIRST_HOST)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // With its second batch applied and its third on the wire, the first run's lock session is killed from outside.
    let sent_by = |token: &str| {
        setup
            .emulator
            .requests()
            .into_iter()
            .filter(|r| r.authorization.as_deref() == Some(token))
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    loop {
        let sent = sent_by(FIRST_HOST);
        let applied = sent.iter().filter(|r| r.applied).count();
        if applied >= 2 && sent.last().is_some_and(|r| r.status == 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first run sent batches"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let terminated = schema.query(&format!(
        "SELECT pg_terminate_backend(l.backend_pid)::text, j.run_id FROM {0}.run_locks l \
         JOIN {0}.journals j USING (sync) WHERE sync = 'pro-users'",
        schema.name
    ));
    assert_eq!(terminated[0][0].as_deref(), Some("true"));
    let first_run = terminated[0][1].clone().unwrap();
    let sent_before_losing_it = sent_by(FIRST_HOST).len();

    // Another host takes the sync over at once, and finishes the first run's journal.
    let second = second_host(&setup, &schema)
        .command("day1", &["sync", "pro-users", "--format", "json"])
        .env("LD_ACCESS_TOKEN", SECOND_HOST)
        .output()
        .unwrap();
    ok(&second);
    assert_eq!(json(&second)["syncs"][0]["resumed_run"], first_run.as_str());
    let first = first.wait_with_output().unwrap();

    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert!(
        stderr(&first).contains(&format!(
            "run {first_run} of sync `pro-users` lost its run lock in the state store in PostgreSQL"
        )) && stderr(&first).contains("It stopped without sending anything more"),
        "{}",
        stderr(&first)
    );
    assert_eq!(
        sent_by(FIRST_HOST).len(),
        sent_before_losing_it,
        "the first run sent nothing after losing its lock"
    );
    let day1 = expected_pro_users("day1");
    assert_eq!(setup.members("pro-users", "user"), day1);
    assert_eq!(checkpoint_in(&schema, "pro-users").unwrap().1, day1);
    for table in ["journals", "journal_batches"] {
        assert_eq!(
            count(
                &schema,
                &format!("SELECT count(*) FROM {}.{table}", schema.name)
            ),
            0,
            "{table} is empty: the journal went with the second host's commit"
        );
    }
}

/// The tokens of two hosts sharing one emulator, so that its requests say which host sent them.
const FIRST_HOST: &str = "api-first-host";
const SECOND_HOST: &str = "api-second-host";

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn every_connection_to_postgres_asks_the_server_for_keepalives_of_about_a_minute() {
    let url = database_url();
    let settings = |url: &str| {
        let worker = ldsync::pg::PgWorker::connect(url, 1, Vec::new()).unwrap();
        worker
            .call(|pool| async move {
                sqlx::query_as::<_, (String, String, String)>(
                    "SELECT current_setting('tcp_keepalives_idle'), \
                     current_setting('tcp_keepalives_interval'), current_setting('tcp_keepalives_count')",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
            })
            .unwrap()
    };
    assert_eq!(settings(&url), ("30".into(), "10".into(), "3".into()));
    // A setting the URL names itself is kept.
    let separator = if url.contains('?') { '&' } else { '?' };
    let own = format!("{url}{separator}options=-c%20tcp_keepalives_idle%3D7");
    assert_eq!(settings(&own), ("7".into(), "10".into(), "3".into()));
}

/// Starts `ldsync sync pro-users` and waits until the store's lock names it; the run, and the holder it is named by.
fn start_a_run_holding_the_lock(setup: &Setup, schema: &Schema) -> (std::process::Child, String) {
    let first = setup
        .project
        .command("day1", &["sync", "pro-users", "--format", "json"])
        .env("LD_ACCESS_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let holder = format!("process {} on ", first.id());
    let started = Instant::now();
    loop {
        let rows = schema.query(&format!(
            "SELECT holder FROM {}.run_locks WHERE sync = 'pro-users'",
            schema.name
        ));
        if rows
            .first()
            .is_some_and(|row| row[0].as_deref().unwrap().contains(&holder))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first run took its lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (first, holder)
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn checkpoints_move_between_the_local_store_and_postgres_without_a_resync() {
    let url = database_url();
    let schema = Schema::new(&url, "state_copy", "");
    let setup = Setup::new();
    // Day 1 on the local store.
    ok(&setup.sync("day1", &["pro-users", "order-events"]));
    let local_run = setup.checkpoint("pro-users").map(|_| ()).and_then(|()| {
        let manifest: serde_json::Value =
            serde_json::from_slice(&setup.manifest_bytes("pro-users")?).ok()?;
        Some(manifest["run_id"].as_str()?.to_string())
    });
    let local_run = local_run.expect("the local store has a checkpoint");

    // The checkpoints copied to PostgreSQL, which becomes the sync's store.
    shared_state(&setup.project, &schema);
    copy_every_checkpoint_to_postgres(&setup, &schema, &local_run);

    // Planned from the copied checkpoints: nothing to do on day 1, and no order sent twice.
    let plan = setup.project.ldsync(
        "day1",
        &["plan", "pro-users", "order-events", "--format", "json"],
    );
    ok(&plan);
    let plan = json(&plan);
    assert_eq!(plan["syncs"][0]["adds"].as_array().unwrap().len(), 0);
    assert_eq!(plan["syncs"][0]["removes"].as_array().unwrap().len(), 0);
    assert_eq!(plan["events"][0]["events"], 0, "{}", plan["events"][0]);

    // The copy again: the same run is there already, so nothing is refused.
    ok(&setup.project.ldsync(
        "day1",
        &["copy-checkpoints", "pro-users", "--from", "local"],
    ));

    // Day 2 on the shared store, then back to the local one: refused without --replace, then copied.
    ok(&setup.sync("day2", &["pro-users"]));
    copy_day_two_back_to_the_local_store(&setup, &schema, &local_run);
}

/// `copy-checkpoints --from local` copies pro-users' checkpoint of `local_run` and order-events', and says that
/// enterprise-orgs had none.
fn copy_every_checkpoint_to_postgres(setup: &Setup, schema: &Schema, local_run: &str) {
    let out = setup
        .project
        .ldsync("day1", &["copy-checkpoints", "--from", "local"]);
    ok(&out);
    assert!(
        stdout(&out).contains(&format!(
            "✓ pro-users: checkpoint of run {local_run} ({} keys) copied from local to postgres",
            expected_pro_users("day1").len()
        )),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("✓ order-events: events checkpoint of run "),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("- enterprise-orgs: no checkpoint in the local store"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        checkpoint_in(schema, "pro-users"),
        Some((local_run.to_string(), expected_pro_users("day1")))
    );
}

/// pro-users' day-2 checkpoint in PostgreSQL is refused over the local one of `local_run` without --replace, and
/// copied with it.
fn copy_day_two_back_to_the_local_store(setup: &Setup, schema: &Schema, local_run: &str) {
    let (shared_run, day2) = checkpoint_in(schema, "pro-users").unwrap();
    let back = setup.project.ldsync(
        "day2",
        &["copy-checkpoints", "pro-users", "--from", "postgres"],
    );
    assert_eq!(back.status.code(), Some(1));
    assert!(
        stdout(&back).contains(&format!(
            "✗ sync `pro-users` already has a checkpoint in the local store (run {local_run}); pass --replace"
        )),
        "{}",
        stdout(&back)
    );
    ok(&setup.project.ldsync(
        "day2",
        &[
            "copy-checkpoints",
            "pro-users",
            "--from",
            "postgres",
            "--replace",
        ],
    ));
    assert_eq!(setup.checkpoint("pro-users").unwrap(), day2);
    let manifest: serde_json::Value =
        serde_json::from_slice(&setup.manifest_bytes("pro-users").unwrap()).unwrap();
    assert_eq!(manifest["run_id"], shared_run.as_str());
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn the_store_is_created_by_its_migrations_once_and_a_bad_url_keeps_its_password() {
    let url = database_url();
    let schema = Schema::new(&url, "state_migrate", "");
    schema.execute(&format!("DROP SCHEMA {}", schema.name));
    let project = Project::example();
    shared_state(&project, &schema);
    for _ in 0..2 {
        ok(&project.ldsync("day1", &["status"]));
    }
    assert_eq!(
        schema.query(&format!(
            "SELECT version::text, success::text FROM {}._sqlx_migrations",
            schema.name
        )),
        [1, 2, 3].map(|version| [Some(version.to_string()), Some("true".to_string())])
    );
    let tables: BTreeSet<String> = schema
        .query(&format!(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = '{}'",
            schema.name
        ))
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    for table in [
        "checkpoints",
        "snapshots",
        "journals",
        "journal_batches",
        "runs",
        "event_checkpoints",
        "run_locks",
    ] {
        assert!(tables.contains(table), "{table} in {tables:?}");
    }

    project.edit_config(
        &format!("url: {}", schema.url),
        "url: postgres://ldsync:secret-password@127.0.0.1:1/nowhere",
    );
    let out = project.ldsync("day1", &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "cannot connect to the state store in PostgreSQL at ldsync@127.0.0.1:1/nowhere"
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("secret-password"),
        "{}",
        stderr(&out)
    );
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn an_events_sync_keeps_its_watermark_and_journal_in_postgres_and_sends_each_order_once() {
    let url = database_url();
    let schema = Schema::new(&url, "state_events", "");
    let setup = Setup::new();
    shared_state(&setup.project, &schema);
    ok(&setup.sync("day1", &["order-events"]));
    let mut orders = expected_order_events("day1", None);
    assert_eq!(setup.events_by_key(), orders);
    let watermark = |schema: &Schema| {
        schema.query(&format!(
            "SELECT checkpoint->>'sync', checkpoint->'watermark'->>'row_id' FROM {}.event_checkpoints",
            schema.name
        ))
    };
    let day1 = watermark(&schema);
    assert_eq!(day1.len(), 1);
    assert_eq!(day1[0][0].as_deref(), Some("order-events"));
    assert!(
        day1[0][1].is_some(),
        "the watermark names the last row sent"
    );

    ok(&setup.sync("day2", &["order-events"]));
    for (key, count) in expected_order_events("day2", Some("day1")) {
        *orders.entry(key).or_default() += count;
    }
    assert_eq!(setup.events_by_key(), orders, "the new orders, each once");
    assert_ne!(watermark(&schema), day1, "the watermark moved");
    assert_eq!(
        count(
            &schema,
            &format!("SELECT count(*) FROM {}.journals", schema.name)
        ),
        0
    );
    // Nothing more to send: a third run changes nothing.
    let out = setup.sync("day2", &["order-events", "--format", "json"]);
    ok(&out);
    assert_eq!(json(&out)["syncs"][0]["outcome"], "nothing_to_change");
    assert_eq!(setup.events_by_key(), orders);
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_committed_snapshot_is_never_replaced() {
    let url = database_url();
    let schema = Schema::new(&url, "state_immutable", "");
    let copies = tempfile::tempdir().unwrap();
    let state = ldsync::config::PostgresState {
        url: url.clone(),
        schema: schema.name.clone(),
    };
    let store = Store::Postgres(PgStore::open(&state, copies.path().to_path_buf()).unwrap());
    let settings = CheckpointSettings {
        project: "default".into(),
        environment: "production".into(),
        segment: "seg".into(),
        context_kind: "user".into(),
        mode: ldsync::config::Mode::Add,
    };
    store.commit("s", "run-1", &settings, ["a", "b"]).unwrap();
    let err = store
        .commit("s", "run-1", &settings, ["c"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run run-1's snapshot is the committed checkpoint already, and a committed snapshot never changes"),
        "{err}"
    );
    assert_eq!(
        checkpoint_in(&schema, "s"),
        Some(("run-1".to_string(), ["a", "b"].map(String::from).into()))
    );
}
