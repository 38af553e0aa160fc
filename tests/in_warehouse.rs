//! The in-warehouse diff on the real PostgreSQL: when the warehouse and the state store are the same database, the
//! keys that entered and left are found by PostgreSQL, and they are exactly what the set engine finds from the same
//! model and checkpoint (a property test on random sets, rejected keys and repeats included); a sync planned that
//! way sends exactly the change and commits a snapshot that never left PostgreSQL.
//!
//! They need `DATABASE_URL` (see tests/postgres_warehouse.rs); under `CI` they must run.

use std::collections::BTreeSet;

use arrow::array::StringArray;
use indicatif::ProgressBar;
use ldsync::config::{InvalidKeys, Mode, PostgresState};
use ldsync::set_engine::{Delta, KeySource, ModelKeys};
use ldsync::state::{CheckpointSettings, PgStore, Store};
use ldsync_emulator::SegmentSeed;
use proptest::prelude::*;

use crate::util::emulated::*;
use crate::util::postgres::*;
use crate::util::*;

fn settings() -> CheckpointSettings {
    CheckpointSettings {
        project: "default".into(),
        environment: "production".into(),
        segment: "seg".into(),
        context_kind: "user".into(),
        mode: Mode::Mirror,
    }
}

/// `key` as a PostgreSQL literal.
fn literal(key: &Option<String>) -> String {
    match key {
        Some(key) => format!("'{}'", key.replace('\'', "''")),
        None => "NULL".into(),
    }
}

/// Model keys: short keys that repeat often, with nulls, blanks (Unicode White_Space too) and keys too long.
fn model_key() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => "[a-e]{1,2}".prop_map(Some),
        1 => Just(None),
        1 => prop_oneof![Just(""), Just("  "), Just("\u{3000}\u{a0}"), Just(" x ")].prop_map(|k| Some(k.to_string())),
        1 => Just(Some("ü".repeat(257))),
        1 => Just(Some("ü".repeat(256))),
    ]
}

fn array_keys(keys: &StringArray) -> Vec<String> {
    keys.iter().flatten().map(str::to_string).collect()
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn the_in_warehouse_delta_is_exactly_the_set_engines() {
    let url = database_url();
    let schema = Schema::new(&url, "pushdown", "");
    let copies = tempfile::tempdir().unwrap();
    let state = PostgresState {
        url: url.clone(),
        schema: schema.name.clone(),
    };
    let pg = PgStore::open(&state, copies.path().to_path_buf()).unwrap();
    let store = Store::Postgres(pg.clone());
    let warehouse = schema.warehouse();
    let engine = warehouse.engine().unwrap();
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig::with_cases(40);
    proptest!(config, |(
        model in proptest::collection::vec(model_key(), 0..40),
        previous in proptest::collection::btree_set("[a-g]{1,2}", 0..20),
    )| {
        let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("{}.model_{case}", schema.name);
        let rows: Vec<String> = model.iter().map(|k| format!("({})", literal(k))).collect();
        schema.execute(&format!("CREATE TABLE {table} (user_key text)"));
        if !rows.is_empty() {
            schema.execute(&format!("INSERT INTO {table} VALUES {}", rows.join(", ")));
        }
        let sync = format!("sync-{case}");
        store.commit(&sync, "previous", &settings(), previous.iter().map(String::as_str)).unwrap();
        let checkpoint = store.load(&sync).unwrap().unwrap();
        let (_, snapshot_table) = checkpoint.stored_table().unwrap();
        let sql = format!("SELECT user_key FROM {table}");
        let key = warehouse.key_column(&sql, "user_key").unwrap();
        let load = |in_store| {
            ModelKeys::load(&warehouse, &sql, &key, InvalidKeys::Skip, &ProgressBar::hidden(), in_store).unwrap()
        };

        let in_warehouse = load(Some(&pg));
        prop_assert!(in_warehouse.in_warehouse());
        let pushed = Delta::in_warehouse(&in_warehouse, Some(&snapshot_table)).unwrap();
        let in_engine = load(None);
        let snapshot = KeySource::Snapshot(checkpoint.fetch_snapshot().unwrap());
        let compared = Delta::between(engine, KeySource::Model(&in_engine), snapshot).unwrap();

        prop_assert_eq!(array_keys(&pushed.entered_keys().unwrap()), array_keys(&compared.entered_keys().unwrap()));
        prop_assert_eq!(array_keys(&pushed.left_keys().unwrap()), array_keys(&compared.left_keys().unwrap()));
        let count = previous.len() as u64;
        prop_assert_eq!(in_warehouse.stats(&pushed, count), in_engine.stats(&compared, count));

        // And both are the sets themselves.
        let valid: BTreeSet<String> = model
            .iter()
            .flatten()
            .filter(|k| !k.trim().is_empty() && k.chars().count() <= 256)
            .cloned()
            .collect();
        let entered: Vec<String> = valid.difference(&previous).cloned().collect();
        let left: Vec<String> = previous.difference(&valid).cloned().collect();
        prop_assert_eq!(array_keys(&pushed.entered_keys().unwrap()), entered);
        prop_assert_eq!(array_keys(&pushed.left_keys().unwrap()), left);
        prop_assert_eq!(in_warehouse.stats(&pushed, count).rows, model.len() as u64);
    });
    let leftover = schema.query(&format!(
        "SELECT count(*)::text FROM pg_tables WHERE schemaname = '{}' AND tablename LIKE 'ldsync\\_model\\_rows%'",
        schema.name
    ));
    assert_eq!(
        leftover[0][0].as_deref(),
        Some("0"),
        "the model's rows are dropped with them"
    );
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_sync_planned_in_the_warehouse_sends_the_change_and_keeps_its_snapshot_there() {
    let url = database_url();
    let schema = Schema::new(
        &url,
        "pushdown_sync",
        "CREATE TABLE people (id int8, active bool);
         INSERT INTO people SELECT g, g % 4 <> 0 FROM generate_series(1, 3000) g;
         INSERT INTO people VALUES (NULL, true);",
    );
    let setup = Setup::new();
    sync_active_people_from_postgres(&setup, &url, &schema);
    let active = |ids: &mut dyn Iterator<Item = i64>| -> BTreeSet<String> {
        ids.filter(|i| i % 4 != 0).map(|i| i.to_string()).collect()
    };

    // The first run compares with the segment's members (in the set engine).
    ok(&setup.sync("day1", &["pg-people"]));
    let first = active(&mut (1..=3000));
    assert_eq!(setup.members("pg-people", "user"), first);

    // New people arrive: the next run compares with the checkpoint, in PostgreSQL.
    schema.execute(&format!(
        "INSERT INTO {}.people SELECT g, g % 4 <> 0 FROM generate_series(3001, 3500) g",
        schema.name
    ));
    let plan = setup.project.ldsync("day1", &["plan", "--format", "json"]);
    ok(&plan);
    let plan = &json(&plan)["syncs"][0];
    let arrived = active(&mut (3001..=3500));
    assert_eq!(strings(&plan["adds"]), arrived);
    assert_eq!(plan["keys"]["rows"], 3500 - 875 + 1);
    assert_eq!(plan["keys"]["rejected"]["null"], 1);

    // The sync sends only the new people, and commits a snapshot that stays in PostgreSQL.
    let requests_before = setup.segment_requests().len();
    let out = setup.sync("day1", &["pg-people", "--format", "json"]);
    ok(&out);
    let run_id = json(&out)["syncs"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sent: BTreeSet<String> = described(&setup.segment_requests()[requests_before..])
        .into_iter()
        .filter(|(method, ..)| method == "PATCH")
        .flat_map(|(_, _, _, keys)| keys)
        .collect();
    assert_eq!(sent, arrived, "only the new people were sent");
    let all = active(&mut (1..=3500));
    assert_eq!(setup.members("pg-people", "user"), all);
    assert_snapshot_committed_in_postgres_only(&setup, &schema, &run_id, all.len());
}

/// Points the setup at one add sync, pg-people, of the active people in `schema`, with the warehouse and the state
/// store both in PostgreSQL at `url`.
fn sync_active_people_from_postgres(setup: &Setup, url: &str, schema: &Schema) {
    setup.emulator.seed_segment(
        "default",
        "production",
        SegmentSeed::standard("pg-people", "user", &[]),
    );
    setup.project.write(
        "connector.yaml",
        &format!(
            "version: 1\nwarehouse:\n  kind: postgres\n  url: {url}\nlaunchdarkly:\n  base_url: {base}\n  \
             project: default\n  environment: production\nstate:\n  kind: postgres\n  url: {url}\n  schema: {schema}\n\
             syncs:\n  - name: pg-people\n    model: pg_people\n    segment: pg-people\n    mode: add\n    \
             invalid_keys: skip\n    batch_size: 1000\n",
            base = setup.emulator.base_url(),
            schema = schema.name,
        ),
    );
    setup.project.write(
        "sql/pg_people.sql",
        &format!(
            "SELECT id AS context_key FROM {}.people WHERE active",
            schema.name
        ),
    );
}

/// pg-people's checkpoint is `run_id`'s snapshot of `keys` keys, in PostgreSQL and not copied to the local disk.
fn assert_snapshot_committed_in_postgres_only(
    setup: &Setup,
    schema: &Schema,
    run_id: &str,
    keys: usize,
) {
    let committed = schema.query(&format!(
        "SELECT c.run_id, s.key_count::text FROM {0}.checkpoints c JOIN {0}.snapshots s ON s.id = c.snapshot_id",
        schema.name
    ));
    assert_eq!(
        committed,
        [[Some(run_id.to_string()), Some(keys.to_string())]]
    );
    let copy = setup.project.path(&format!(
        ".ldsync/state/postgres@{}/pg-people/snapshot-{run_id}.parquet",
        schema.name
    ));
    assert!(!copy.exists(), "the snapshot never left PostgreSQL");
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_plan_killed_in_the_warehouse_leaves_nothing_behind_and_the_next_one_runs() {
    let url = database_url();
    let schema = Schema::new(
        &url,
        "pushdown_kill",
        "CREATE TABLE people (id int8);
         INSERT INTO people SELECT g FROM generate_series(1, 4000) g;",
    );
    let project = Project::example();
    write_config_in_postgres(
        &project,
        &url,
        &schema.name,
        "slow-people",
        "slow_people",
        "add",
    );
    // A model that takes seconds: 4,000 rows of half a millisecond (or more) each.
    project.write(
        "sql/slow_people.sql",
        &format!(
            "SELECT id AS context_key, pg_sleep(0.0005) AS pause FROM {}.people",
            schema.name
        ),
    );
    let store = Store::open(&project.config()).unwrap();
    let settings = CheckpointSettings::of(&project.config(), &project.config().syncs[0]);
    store
        .commit("slow-people", "run-0", &settings, ["1", "2", "gone"])
        .unwrap();
    let model_tables = || {
        schema.query("SELECT count(*)::text FROM pg_class WHERE relname = 'ldsync_model_rows'")[0]
            [0]
        .clone()
        .unwrap()
    };

    let mut plan = project.command("day1", &["plan"]).spawn().unwrap();
    let started = std::time::Instant::now();
    while model_tables() == "0"
        && schema
            .query("SELECT count(*)::text FROM pg_stat_activity WHERE query LIKE 'CREATE TEMPORARY TABLE pg_temp.ldsync_model_rows%'")[0][0]
            .as_deref()
            == Some("0")
    {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the plan ran its model");
        assert!(plan.try_wait().unwrap().is_none(), "the plan is still running");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    plan.kill().unwrap(); // SIGKILL
    plan.wait().unwrap();

    // The next plan runs (a table of the same name may still be there in the killed session: it is not this
    // session's), and says exactly what changed.
    let out = project.ldsync("day1", &["plan", "--format", "json"]);
    ok(&out);
    let plan = &json(&out)["syncs"][0];
    assert_eq!(plan["adds"].as_array().unwrap().len(), 3998);
    assert_eq!(plan["entered"], 3998);
    assert_eq!(plan["left"], 1, "{plan}");

    // Once the killed session's query ends, PostgreSQL drops its table with it.
    let started = std::time::Instant::now();
    while model_tables() != "0" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the killed plan's table went with its session"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_model_whose_last_line_is_a_comment_is_diffed_in_the_warehouse() {
    let url = database_url();
    let schema = Schema::new(
        &url,
        "pushdown_comment",
        "CREATE TABLE people (id int8);
         INSERT INTO people SELECT g FROM generate_series(1, 50) g;",
    );
    let project = Project::example();
    write_config_in_postgres(&project, &url, &schema.name, "people", "people", "mirror");
    // No newline after the comment: the in-warehouse diff's query must not end inside it.
    project.write(
        "sql/people.sql",
        &format!(
            "SELECT id AS context_key FROM {}.people -- everyone",
            schema.name
        ),
    );
    let store = Store::open(&project.config()).unwrap();
    let settings = CheckpointSettings::of(&project.config(), &project.config().syncs[0]);
    store
        .commit("people", "run-0", &settings, ["1", "2", "gone"])
        .unwrap();

    let out = project.ldsync("day1", &["plan", "--format", "json"]);
    ok(&out);
    let plan = &json(&out)["syncs"][0];
    let entered: BTreeSet<String> = (3..=50).map(|i: i64| i.to_string()).collect();
    assert_eq!(strings(&plan["adds"]), entered);
    assert_eq!(
        strings(&plan["removes"]),
        BTreeSet::from(["gone".to_string()])
    );
    assert_eq!(plan["keys"]["rows"], 50);
}

/// connector.yaml for one sync whose warehouse and state store are the same PostgreSQL database (`schema` holds
/// the store), so that plans diff in the warehouse.
fn write_config_in_postgres(
    project: &Project,
    url: &str,
    schema: &str,
    sync: &str,
    model: &str,
    mode: &str,
) {
    project.write(
        "connector.yaml",
        &format!(
            "version: 1\nwarehouse:\n  kind: postgres\n  url: {url}\nlaunchdarkly:\n  project: default\n  \
             environment: production\nstate:\n  kind: postgres\n  url: {url}\n  schema: {schema}\n\
             syncs:\n  - name: {sync}\n    model: {model}\n    segment: {sync}\n    mode: {mode}\n",
        ),
    );
}
