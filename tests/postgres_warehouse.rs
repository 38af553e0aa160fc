//! Models on the real PostgreSQL: keys of every accepted type stream out as text, NULLs and odd characters intact,
//! across many batches; a broken model names the sync, the file, PostgreSQL's message and where in the model it
//! failed; a connection dropped mid-stream is an error, never a short result. Each test works in a schema of its
//! own, so the tests run in parallel.
//!
//! They need `DATABASE_URL` (for example `postgres://postgres@127.0.0.1:5432/test`); `.ci/run` sets it. Without it
//! `cargo test` reports them as ignored, except when `CI` is set (to anything), where they must run.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use ldsync::config::{SetEngineSettings, WarehouseConfig};
use ldsync::state::events::{
    EVENT_CHECKPOINT_FORMAT, EventCheckpoint, EventSettings, Progress, Watermark,
};
use ldsync::state::{LocalStore, Store};
use ldsync::warehouse::{Warehouse, WarehouseError};

use crate::util::postgres::*;
use crate::util::*;

/// The example project with its warehouse pointed at PostgreSQL and one sync whose model is `model_sql`.
fn project_on(url: &str, model_sql: &str) -> Project {
    let project = Project::example();
    project.write(
        "connector.yaml",
        &format!(
            "version: 1\nwarehouse:\n  kind: postgres\n  url: {url}\n  statement_timeout: 1m\nlaunchdarkly:\n  \
             project: default\n  environment: production\nstate:\n  kind: local\nsyncs:\n  - name: pg-users\n    \
             model: pg_users\n    segment: pg-users\n    mode: mirror\n    invalid_keys: skip\n"
        ),
    );
    project.write("sql/pg_users.sql", model_sql);
    project
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn keys_of_every_accepted_type_stream_as_text_with_nulls_counted() {
    let url = database_url();
    let schema = Schema::new(
        &url,
        "types",
        "CREATE TABLE people (t text, v varchar(40), u uuid, i int4, b int8);
         INSERT INTO people SELECT 'user-' || g, 'v-' || g, md5(g::text)::uuid, g, g * 10000000000
           FROM generate_series(1, 200000) g;
         INSERT INTO people VALUES (NULL, NULL, NULL, NULL, NULL),
           (E'tab\\there', E'back\\\\slash', NULL, -7, 0), (E'new\\nline', '', NULL, NULL, NULL);",
    );
    let warehouse = schema.warehouse();
    for (column, sql_type) in [
        ("t", "TEXT"),
        ("v", "VARCHAR"),
        ("u", "UUID"),
        ("i", "INT4"),
        ("b", "INT8"),
    ] {
        let model = format!("SELECT {column} FROM {}.people", schema.name);
        let key = warehouse.key_column(&model, column).unwrap();
        assert_eq!(key.sql_type, sql_type);
        let mut values = Vec::new();
        let mut batches = 0;
        warehouse
            .stream_keys::<WarehouseError>(&model, &key, |array| {
                batches += 1;
                values.extend(
                    array
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.map(str::to_string)),
                );
                Ok(())
            })
            .unwrap();
        assert_eq!(values.len(), 200_003, "{column}");
        assert!(batches >= 3, "{column}: 200,003 rows in batches of 65,536");
        let nulls = values.iter().filter(|v| v.is_none()).count();
        let expected_nulls = match column {
            "t" | "v" => 1,
            "i" | "b" => 2,
            _ => 3,
        };
        assert_eq!(nulls, expected_nulls, "{column}");
        match column {
            "t" => {
                let set: BTreeSet<&str> = values.iter().flatten().map(String::as_str).collect();
                assert!(
                    set.contains("user-200000")
                        && set.contains("tab\there")
                        && set.contains("new\nline")
                );
            }
            "v" => assert!(values.iter().flatten().any(|v| v == "back\\slash")),
            "u" => assert!(values.iter().flatten().all(|v| v.len() == 36)),
            "i" => assert!(values.iter().flatten().any(|v| v == "-7")),
            _ => assert!(values.iter().flatten().any(|v| v == "2000000000000000")),
        }
    }
    let err = warehouse
        .key_column(
            &format!("SELECT 1.5::float8 AS score FROM {}.people", schema.name),
            "score",
        )
        .unwrap_err();
    assert!(err.to_string().contains("is FLOAT8"), "{err}");
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn plan_runs_a_model_on_postgres_end_to_end() {
    let url = database_url();
    let schema = Schema::new(
        &url,
        "plan",
        "CREATE TABLE accounts (id int8, plan text);
         INSERT INTO accounts SELECT g, CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END FROM generate_series(1, 3000) g;
         INSERT INTO accounts VALUES (NULL, 'pro'), (3, 'pro');",
    );
    let project = project_on(
        &url,
        &format!(
            "-- paid accounts\nSELECT id AS context_key\nFROM {}.accounts\nWHERE plan = 'pro'\n",
            schema.name
        ),
    );
    let out = project.ldsync("day1", &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = &json(&out)["syncs"][0];
    let expected: BTreeSet<String> = (1..=3000)
        .filter(|i| i % 3 == 0)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(strings(&plan["adds"]), expected);
    assert_eq!(plan["keys"]["rows"], 1002);
    assert_eq!(plan["keys"]["duplicates"], 1);
    assert_eq!(plan["keys"]["rejected"]["null"], 1);
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_model_whose_last_line_is_a_comment_plans_on_postgres() {
    let url = database_url();
    let schema = Schema::new(
        &url,
        "trailing_comment",
        "CREATE TABLE accounts (id int8, plan text);
         INSERT INTO accounts SELECT g, CASE WHEN g % 3 = 0 THEN 'pro' ELSE 'free' END FROM generate_series(1, 300) g;",
    );
    // No newline after the comment: a query that wraps the model must not end inside it.
    let project = project_on(
        &url,
        &format!(
            "SELECT id AS context_key\nFROM {}.accounts\nWHERE plan = 'pro' -- paid accounts only",
            schema.name
        ),
    );
    let out = project.ldsync("day1", &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = &json(&out)["syncs"][0];
    let expected: BTreeSet<String> = (1..=300)
        .filter(|i| i % 3 == 0)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(strings(&plan["adds"]), expected);
    assert_eq!(plan["removes"].as_array().unwrap().len(), 0);
    assert_eq!(plan["keys"]["rows"], 100);
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_broken_model_names_the_sync_the_file_and_where_postgres_stopped() {
    let url = database_url();
    let schema = Schema::new(&url, "broken", "CREATE TABLE accounts (id int8);");
    let project = project_on(
        &url,
        &format!(
            "SELECT id AS context_key\nFROM {}.accounts\nWHERE nope > 1\n",
            schema.name
        ),
    );
    let out = project.ldsync("day1", &["plan"]);
    assert_eq!(out.status.code(), Some(6));
    let text = stdout(&out) + &stderr(&out);
    for expected in [
        "sync `pg-users`",
        "pg_users.sql",
        "the model's SQL failed in PostgreSQL: column \"nope\" does not exist (line 3, column 7 of the model)",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("postgres://"),
        "the URL stays out of messages:\n{text}"
    );
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_connection_dropped_mid_stream_is_an_error_not_a_short_result() {
    let url = database_url();
    let schema = Schema::new(&url, "dropped", "");
    let warehouse = schema.warehouse();
    let killer = schema.warehouse();
    let model = "SELECT 'ldsync_drop_test_' || g AS k FROM generate_series(1, 5000000) g";
    let key = warehouse.key_column(model, "k").unwrap();
    let mut rows = 0;
    let mut terminated = 0;
    let result = warehouse.stream_keys::<WarehouseError>(model, &key, |array| {
        if rows == 0 {
            let terminate = "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
                             WHERE query LIKE 'COPY (SELECT %ldsync_drop_test_%' AND pid <> pg_backend_pid()";
            killer
                .stream_column::<WarehouseError>(terminate, |killed| {
                    terminated += killed.len();
                    assert_eq!(killed.as_string::<i32>().value(0), "true");
                    Ok(())
                })
                .unwrap();
        }
        rows += array.len();
        Ok(())
    });
    assert_eq!(
        terminated, 1,
        "the streaming backend was found and terminated"
    );
    let err = result.expect_err("a dropped connection must fail the read");
    assert!(rows < 5_000_000, "the read was cut short ({rows} rows)");
    assert!(
        err.to_string()
            .starts_with("the connection to PostgreSQL was lost while the model ran")
            && err.to_string().ends_with("so running it again is safe"),
        "{err}"
    );
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_wrong_url_or_an_unreachable_server_is_a_clear_error() {
    let url = database_url();
    let wrong_database = format!("{}_missing_db", url.trim_end_matches('/'));
    let config = WarehouseConfig::Postgres {
        url: wrong_database,
        statement_timeout: Duration::from_secs(5),
        pool_size: 1,
    };
    let err = Warehouse::open(&config, &SetEngineSettings::default(), Path::new("."))
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("cannot connect to PostgreSQL at "), "{err}");
    assert!(err.contains("_missing_db"), "{err}");
}

/// An events model on PostgreSQL: several text columns come out of one COPY, a `timestamptz` and a `timestamp`
/// become the same Unix milliseconds, numeric values stay numbers, and the lateness window is a condition
/// PostgreSQL applies. Its 100,000 minutes of orders run into 2027, so `max_future` lets them all through.
#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn an_events_model_streams_every_column_and_filters_by_the_window_in_postgres() {
    let url = database_url();
    let schema = Schema::new(
        &url,
        "events",
        "CREATE TABLE orders (id bigint, event text, user_id text, placed_at timestamptz, local_at timestamp,
                              amount numeric(10, 2));
         INSERT INTO orders SELECT g, CASE WHEN g % 3 = 0 THEN 'upgrade' ELSE 'order-completed' END,
           'u' || g, TIMESTAMPTZ '2026-11-20 10:00:00+01' + g * INTERVAL '1 minute',
           TIMESTAMP '2026-11-20 09:00:00' + g * INTERVAL '1 minute', g * 1.25
           FROM generate_series(1, 100000) g;
         INSERT INTO orders VALUES (0, E'odd\\tkey', NULL, NULL, NULL, NULL);",
    );
    let project = Project::example();
    let config = |timestamp: &str| {
        format!(
            "version: 1\nwarehouse:\n  kind: postgres\n  url: {url}\nlaunchdarkly:\n  project: default\n  \
             environment: production\nstate:\n  kind: local\nevents:\n  - name: pg-orders\n    model: pg_orders\n    \
             timestamp_column: {timestamp}\n    value_column: amount\n    row_id_column: id\n    \
             max_future: 400d\n"
        )
    };
    project.write(
        "sql/pg_orders.sql",
        &format!(
            "SELECT id, event AS event_key, user_id AS context_key, placed_at, local_at, amount FROM {}.orders",
            schema.name
        ),
    );
    let mut plans = Vec::new();
    for timestamp in ["placed_at", "local_at"] {
        project.write("connector.yaml", &config(timestamp));
        let out = project.ldsync("day1", &["plan", "--format", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        plans.push(json(&out)["events"][0].clone());
    }
    for plan in &plans {
        assert_eq!(plan["rows"], 100_001);
        assert_eq!(plan["events"], 100_000);
        assert_eq!(plan["by_event_key"]["upgrade"], 33_333);
        assert_eq!(
            plan["bad_rows"]["by_problem"],
            serde_json::json!({"no_context_key": 1})
        );
        assert_eq!(plan["first_event_at"], "2026-11-20T09:01:00Z");
        assert_eq!(plan["batch_events"].as_array().unwrap().len(), 100);
    }
    assert_eq!(plans[0]["last_event_at"], plans[1]["last_event_at"]);

    // From a checkpoint whose watermark is row 50000, the default hour of lateness reads rows 49940 on, and the
    // row without a timestamp, which is reported again.
    let config = project.config();
    let base: chrono::DateTime<chrono::Utc> = "2026-11-20T09:00:00Z".parse().unwrap();
    let checkpoint = EventCheckpoint {
        format: EVENT_CHECKPOINT_FORMAT,
        sync: "pg-orders".into(),
        run_id: "r0".into(),
        committed_at: base,
        settings: EventSettings::of(&config),
        progress: Progress {
            watermark: Some(Watermark {
                at_ms: base.timestamp_millis() + 50_000 * 60_000,
                row_id: "50000".into(),
            }),
            recent: Vec::new(),
            events_sent: 50_000,
        },
    };
    let store = Store::Local(LocalStore::new(config.state_dir()));
    ldsync::state::events::commit(&store, &checkpoint).unwrap();
    let out = project.ldsync("day1", &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = &json(&out)["events"][0];
    assert_eq!(plan["rows"], 100_000 - 49_940 + 1 + 1, "{plan}");
    assert_eq!(plan["first_event_at"], "2026-12-25T01:20:00Z");
}
