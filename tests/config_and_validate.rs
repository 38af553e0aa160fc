//! connector.yaml mistakes are errors naming the field and its line, and `ldsync validate` checks models and
//! checkpoints without changing anything.

use std::time::Duration;

use ldsync::config::{Config, Mode, TokenSource, WarehouseConfig};
use ldsync::schedule::Schedule;

use crate::util::*;

const GOOD: &str = "\
version: 1
warehouse:
  kind: duckdb
launchdarkly:
  project: default
  environment: production
state:
  kind: local
syncs:
  - name: pro-users
    model: pro_users
    segment: pro-users
    mode: mirror
";

fn load(text: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connector.yaml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).map_err(|e| e.to_string())
}

fn error_of(text: &str) -> String {
    load(text).expect_err("the configuration should be refused")
}

#[test]
fn defaults_fill_what_is_left_out() {
    let config = load(GOOD).unwrap();
    assert_eq!(config.launchdarkly.base_url, "https://app.launchdarkly.com");
    assert_eq!(
        config.launchdarkly.token,
        TokenSource::Env("LD_ACCESS_TOKEN".into())
    );
    let sync = &config.syncs[0];
    assert_eq!(
        (
            sync.context_kind.as_str(),
            sync.key_column.as_str(),
            sync.batch_size
        ),
        ("user", "context_key", 1500)
    );
    assert_eq!(sync.mode, Mode::Mirror);
    assert_eq!(sync.gates.max_remove_percent, Some(10.0));
    assert!(!sync.gates.allow_empty_model);
    assert!(sync.schedule.is_none());
}

#[test]
fn the_shipped_example_loads() {
    let config = Config::load(&repo().join("connector.yaml")).unwrap();
    assert_eq!(config.syncs.len(), 4);
    assert!(matches!(
        config.syncs[1].schedule,
        Some(Schedule::Cron { .. })
    ));
    assert!(
        config
            .syncs
            .iter()
            .any(|s| s.context_kind == "organization")
    );
}

#[test]
fn unknown_keys_name_the_field_and_line() {
    let err = error_of(&GOOD.replace(
        "    mode: mirror\n",
        "    mode: mirror\n    batchsize: 10\n",
    ));
    assert!(err.contains("syncs[0]: unknown field `batchsize`"), "{err}");
    assert!(err.contains("line 14"), "{err}");
}

#[test]
fn missing_keys_name_the_field() {
    let err = error_of(&GOOD.replace("    segment: pro-users\n", ""));
    assert!(err.contains("syncs[0]: missing field `segment`"), "{err}");
    assert!(err.contains("line 10"), "{err}");
}

#[test]
fn wrong_types_and_bad_values_name_field_and_line() {
    let err = error_of(&GOOD.replace(
        "    mode: mirror\n",
        "    mode: mirror\n    batch_size: 2000\n",
    ));
    assert!(
        err.contains("syncs[0].batch_size: a batch holds 1 to 1500 target operations"),
        "{err}"
    );
    assert!(err.contains("line 14 column 17"), "{err}");

    let err = error_of(&GOOD.replace("mode: mirror", "mode: replace"));
    assert!(
        err.contains(
            "syncs[0].mode: unknown variant `replace`, expected one of `add`, `remove`, `mirror`"
        ),
        "{err}"
    );
    assert!(err.contains("line 13"), "{err}");

    let err = error_of(&GOOD.replace(
        "    mode: mirror\n",
        "    mode: mirror\n    gates:\n      max_remove_percent: 150\n",
    ));
    assert!(
        err.contains("syncs[0].gates.max_remove_percent: a percentage from 0 to 100, got 150"),
        "{err}"
    );
    assert!(err.contains("line 15"), "{err}");

    let err = error_of(&GOOD.replace(
        "    mode: mirror\n",
        "    mode: mirror\n    schedule: every tuesday\n",
    ));
    assert!(
        err.contains("syncs[0].schedule: cron expression `every tuesday` is invalid"),
        "{err}"
    );

    let err = error_of(&GOOD.replace(
        "    mode: mirror\n",
        "    mode: mirror\n    context_kind: multi\n",
    ));
    assert!(err.contains("`multi` is reserved"), "{err}");

    let err = error_of(&GOOD.replace(
        "    mode: mirror\n",
        "    mode: mirror\n    batch_size: lots\n",
    ));
    assert!(
        err.contains("syncs[0].batch_size: invalid type: string \"lots\""),
        "{err}"
    );

    let err = error_of(&GOOD.replace("version: 1", "version: 2"));
    assert!(
        err.contains("version: this ldsync reads configuration version 1, the file says 2"),
        "{err}"
    );
}

#[test]
fn the_token_never_goes_in_the_file() {
    let err = error_of(&GOOD.replace(
        "  project: default\n",
        "  project: default\n  token: api-123\n",
    ));
    assert!(
        err.contains("launchdarkly: the access token never goes in connector.yaml"),
        "{err}"
    );
    assert!(
        !err.contains("api-123"),
        "the error must not repeat the token: {err}"
    );
}

#[test]
fn duplicate_sync_names_are_refused() {
    let twice =
        format!("{GOOD}  - name: pro-users\n    model: other\n    segment: other\n    mode: add\n");
    let err = error_of(&twice);
    assert!(
        err.contains("the sync name `pro-users` is used by syncs[0] and syncs[1]"),
        "{err}"
    );
}

#[test]
fn syncs_that_would_fight_over_a_segment_are_refused_naming_both() {
    let second = |mode: &str, kind: &str| {
        format!(
            "{GOOD}  - name: vip-users\n    model: vip_users\n    segment: pro-users\n    context_kind: {kind}\n    \
             mode: {mode}\n"
        )
    };
    for mode in ["mirror", "remove", "add"] {
        let err = error_of(&second(mode, "user"));
        assert!(
            err.contains(&format!(
                "syncs `pro-users` (mirror) and `vip-users` ({mode}) both write the `user` targets of segment \
                 `pro-users`, and a mirror sync removes what the other adds"
            )),
            "{err}"
        );
        assert!(err.contains("syncs: syncs `pro-users`"), "{err}");
    }
    // Another context kind of the same segment is another set of targets.
    load(&second("mirror", "organization")).unwrap();
    // Two add syncs only ever add.
    let adds = GOOD.replace("mode: mirror", "mode: add");
    let both_add = format!(
        "{adds}  - name: vip-users\n    model: vip_users\n    segment: pro-users\n    mode: add\n"
    );
    assert_eq!(load(&both_add).unwrap().syncs.len(), 2);
}

#[test]
fn a_token_never_travels_in_clear_text_beyond_this_machine() {
    let with_url = |url: &str| {
        GOOD.replace(
            "  project: default\n",
            &format!("  base_url: {url}\n  project: default\n"),
        )
    };
    let err = error_of(&with_url("http://ld.example.com"));
    assert!(
        err.contains(
            "launchdarkly: `base_url` `http://ld.example.com` would send the access token in clear text; use \
             https://"
        ),
        "{err}"
    );
    for loopback in ["http://localhost:8765", "http://[::1]:8765"] {
        load(&with_url(loopback)).unwrap();
    }
    load(&with_url("https://ld.example.com")).unwrap();
}

#[test]
fn interpolation_reads_the_environment_with_defaults() {
    let text = GOOD.replace(
        "  kind: local\n",
        "  kind: local\n  directory: ${LDSYNC_TEST_UNSET_VARIABLE:-state/here}\n",
    );
    let config = load(&text).unwrap();
    assert!(config.state_dir().ends_with("state/here"));
    let err = error_of(&GOOD.replace(
        "  kind: duckdb\n",
        "  kind: duckdb\n  database: ${LDSYNC_TEST_UNSET_VARIABLE}/db.duckdb\n",
    ));
    assert!(
        err.contains(
            "warehouse.database: the environment variable LDSYNC_TEST_UNSET_VARIABLE is not set"
        ),
        "{err}"
    );
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn instances_and_base_urls() {
    let eu = load(&GOOD.replace(
        "  project: default\n",
        "  instance: eu\n  project: default\n",
    ))
    .unwrap();
    assert_eq!(eu.launchdarkly.base_url, "https://app.eu.launchdarkly.com");
    let fed = load(&GOOD.replace(
        "  project: default\n",
        "  instance: federal\n  project: default\n",
    ))
    .unwrap();
    assert_eq!(fed.launchdarkly.base_url, "https://app.launchdarkly.us");
    assert_eq!(
        (
            eu.launchdarkly.events_base_url.as_str(),
            fed.launchdarkly.events_base_url.as_str(),
            load(GOOD).unwrap().launchdarkly.events_base_url.as_str()
        ),
        (
            "https://events.eu.launchdarkly.com",
            "https://events.launchdarkly.us",
            "https://events.launchdarkly.com"
        ),
        "the metric import API follows the instance"
    );
    let proxied = load(&GOOD.replace(
        "  project: default\n",
        "  base_url: https://ld.example.com\n  events_base_url: https://events.example.com/\n  project: default\n",
    ))
    .unwrap();
    assert_eq!(
        proxied.launchdarkly.events_base_url,
        "https://events.example.com"
    );
    let local = load(&GOOD.replace(
        "  project: default\n",
        "  base_url: http://127.0.0.1:8765/\n  project: default\n",
    ))
    .unwrap();
    assert_eq!(local.launchdarkly.base_url, "http://127.0.0.1:8765");
    assert_eq!(
        local.launchdarkly.events_base_url, "http://127.0.0.1:8765",
        "a base URL of one's own serves the import API too"
    );
    let err = error_of(&GOOD.replace(
        "  project: default\n",
        "  instance: eu\n  base_url: http://x\n  project: default\n",
    ));
    assert!(
        err.contains("either `instance` (us, eu, federal) or `base_url`, not both"),
        "{err}"
    );
}

#[test]
fn a_run_waits_for_another_of_its_sync_only_as_long_as_configured() {
    assert_eq!(load(GOOD).unwrap().lock_wait(), Duration::ZERO);
    let waiting =
        load(&GOOD.replace("  kind: local\n", "  kind: local\n  lock_wait: 5m\n")).unwrap();
    assert_eq!(waiting.lock_wait(), Duration::from_secs(300));
    let err = error_of(&GOOD.replace("  kind: local\n", "  kind: local\n  lock_wait: a while\n"));
    assert!(
        err.contains("state: `lock_wait` takes a duration such as 0s or 5m, got `a while`"),
        "{err}"
    );
}

#[test]
fn postgres_warehouses_need_a_url() {
    let err = error_of(&GOOD.replace("  kind: duckdb\n", "  kind: postgres\n"));
    assert!(
        err.contains("warehouse: a postgres warehouse needs `url`"),
        "{err}"
    );
    let config = load(&GOOD.replace(
        "  kind: duckdb\n",
        "  kind: postgres\n  url: postgres://u:secret@h/db\n",
    ))
    .unwrap();
    assert!(
        !format!("{config:?}").contains("secret"),
        "the URL's password never reaches Debug output"
    );
    match config.warehouse {
        WarehouseConfig::Postgres {
            statement_timeout,
            pool_size,
            ..
        } => assert_eq!(
            (statement_timeout, pool_size),
            (Duration::from_secs(1800), 2),
            "the defaults"
        ),
        other => panic!("{other:?}"),
    }
    let tuned = load(&GOOD.replace(
        "  kind: duckdb\n",
        "  kind: postgres\n  url: postgres://h/db\n  statement_timeout: 90s\n  pool_size: 4\n",
    ))
    .unwrap();
    assert!(matches!(
        tuned.warehouse,
        WarehouseConfig::Postgres { statement_timeout, pool_size: 4, .. }
            if statement_timeout == Duration::from_secs(90)
    ));
    let err = error_of(&GOOD.replace(
        "  kind: duckdb\n",
        "  kind: postgres\n  url: postgres://h/db\n  statement_timeout: soon\n",
    ));
    assert!(
        err.contains(
            "warehouse: `statement_timeout` takes a duration such as 30s or 10m, got `soon`"
        ),
        "{err}"
    );
}

#[test]
fn validate_passes_on_the_example() {
    let project = Project::example();
    let out = project.ldsync("day1", &["validate"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert_eq!(
        text.lines().filter(|l| l.starts_with('✓')).count(),
        5,
        "{text}"
    );
    assert!(
        text.contains("✓ events sync `order-events`: model")
            && text.contains("contexts user from `user_id`, timestamp `placed_at`, row id `order_id`, value `amount`, lateness 2h"),
        "{text}"
    );
    assert!(
        text.contains("sync `enterprise-orgs`: model")
            && text.contains("key column `context_key` (VARCHAR)"),
        "{text}"
    );
    assert!(text.contains("lateness 2h, max_future 1day,"), "{text}");

    // A big segment's settings and full_every are said when a sync has them.
    project.edit_config(
        "    batch_size: 500\n    create_segment: standard\n",
        "    batch_size: 500\n    create_segment: big\n    full_every: 7d\n",
    );
    let text = stdout(&project.ldsync("day1", &["validate"]));
    assert!(
        text.contains(
            "mirror mode into segment `enterprise-orgs` (organization), on a big segment adds over 50000 keys go \
             as CSV imports of at most 1000000 keys (waiting up to 1h), compared with the segment's real \
             membership every 7days, no checkpoint yet"
        ),
        "{text}"
    );
}

#[test]
fn validate_reports_each_broken_sync() {
    let project = Project::example();
    std::fs::remove_file(project.path("sql/dormant_users.sql")).unwrap();
    project.write(
        "sql/enterprise_accounts.sql",
        "SELECT seats * 1.5 AS context_key FROM accounts",
    );
    project.write(
        "sql/churned_beta_users.sql",
        "SELECT account_id FROM accounts",
    );
    let out = project.ldsync("day1", &["validate"]);
    assert_eq!(out.status.code(), Some(5));
    let text = stdout(&out);
    assert!(text.contains("✓ sync `pro-users`"), "{text}");
    assert!(
        text.contains("✗ sync `dormant-winback` (model ") && text.contains("cannot read the model"),
        "{text}"
    );
    assert!(
        text.contains("the key column `context_key` is DECIMAL"),
        "{text}"
    );
    assert!(
        text.contains("has no column `context_key` (its columns are: account_id)"),
        "{text}"
    );
}

#[test]
fn a_failing_startup_statement_never_shows_what_the_environment_gave_it() {
    const SECRET: &str = "s3cr3t-bucket-token-4417";
    let project = Project::example();
    project.edit_config(
        "fixtures/${LDSYNC_EXAMPLE_DAY:-day1}/accounts.csv",
        "fixtures/${LDSYNC_ACCOUNTS_TOKEN}/accounts.csv",
    );
    let out = project
        .command("day1", &["validate"])
        .env("LDSYNC_ACCOUNTS_TOKEN", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let (err, text) = (stderr(&out), stdout(&out));
    assert!(
        err.contains("warehouse.startup_sql[1] failed")
            && err.contains("read_csv('fixtures/${LDSYNC_ACCOUNTS_TOKEN}/accounts.csv'"),
        "the statement is shown as written: {err}"
    );
    assert!(
        !err.contains(SECRET) && !text.contains(SECRET),
        "{err}\n{text}"
    );
    // DuckDB's own message named the file it could not find: the value is put back as its variable.
    assert!(
        err.contains("${LDSYNC_ACCOUNTS_TOKEN}/accounts.csv"),
        "{err}"
    );
}

#[test]
fn broken_startup_sql_names_the_statement() {
    let project = Project::example();
    project.edit_config(
        "fixtures/${LDSYNC_EXAMPLE_DAY:-day1}/accounts.csv",
        "fixtures/missing/accounts.csv",
    );
    let out = project.ldsync("day1", &["validate"]);
    assert_eq!(out.status.code(), Some(5));
    let err = stderr(&out);
    assert!(
        err.contains("warehouse.startup_sql[1] failed")
            && err.contains("fixtures/missing/accounts.csv"),
        "{err}"
    );
}

#[test]
fn config_errors_exit_five_and_say_which_file() {
    let project = Project::example();
    project.edit_config("mode: add", "mode: append");
    let out = project.ldsync("day1", &["plan"]);
    assert_eq!(out.status.code(), Some(5));
    let err = stderr(&out);
    assert!(
        err.contains("connector.yaml: syncs[1].mode: unknown variant `append`"),
        "{err}"
    );
}

#[test]
fn schedules_in_a_time_zone_are_checked_where_they_are_written() {
    let zoned = |schedule: &str| {
        GOOD.replace(
            "    mode: mirror\n",
            &format!("    mode: mirror\n    schedule: {schedule}\n"),
        )
    };
    let config = load(&zoned("{cron: \"0 6 * * 1-5\", time_zone: Europe/Berlin}")).unwrap();
    assert_eq!(
        config.syncs[0].schedule.as_ref().unwrap().to_string(),
        "cron 0 6 * * 1-5 (Europe/Berlin)"
    );
    let err = error_of(&zoned("{cron: \"0 6 * * *\", time_zone: Europe/Atlantis}"));
    assert!(
        err.contains(
            "syncs[0].schedule: time_zone `Europe/Atlantis` is not an IANA time zone name"
        ),
        "{err}"
    );
    assert!(err.contains("line 14"), "{err}");
    let err = error_of(&zoned("{cron: \"0 25 * * *\", time_zone: UTC}"));
    assert!(
        err.contains("cron expression `0 25 * * *` is invalid"),
        "{err}"
    );
    let err = error_of(&zoned("{every: 4h}"));
    assert!(err.contains("unknown field `every`"), "{err}");
}

#[test]
fn a_postgres_state_store_needs_a_url_and_a_plain_schema_and_never_shows_the_url() {
    let postgres =
        |rest: &str| GOOD.replace("  kind: local\n", &format!("  kind: postgres\n{rest}"));
    let err = error_of(&postgres(""));
    assert!(
        err.contains("a postgres state store needs `url`, for example url: ${LDSYNC_STATE_URL}"),
        "{err}"
    );
    let err = error_of(&postgres("  url: postgres://db/x\n  schema: Team-State\n"));
    assert!(
        err.contains("`schema` takes a PostgreSQL schema name of 1 to 63 lowercase letters, digits and underscores, got `Team-State`"),
        "{err}"
    );
    let err = error_of(&GOOD.replace("  kind: local\n", "  kind: local\n  schema: ldsync\n"));
    assert!(
        err.contains("`url` and `schema` are for a state store of kind postgres"),
        "{err}"
    );

    let config = load(&postgres(
        "  url: postgres://ldsync:hunter2@db:5432/state\n",
    ))
    .unwrap();
    let state = config.state.postgres.as_ref().unwrap();
    assert_eq!(state.schema, "ldsync");
    assert_eq!(state.url, "postgres://ldsync:hunter2@db:5432/state");
    assert!(!format!("{config:?}").contains("hunter2"));
}
