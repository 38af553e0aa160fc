//! What README promises of the warehouse, held to the real binary: `warehouse.statement_timeout` stops a model
//! that runs too long on PostgreSQL, as an error naming the sync and its model, before anything is sent.

use std::time::{Duration, Instant};

use crate::util::emulated::*;
use crate::util::postgres::*;
use crate::util::*;

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn statement_timeout_stops_a_slow_model_on_postgres_before_anything_is_sent() {
    let url = database_url();
    let setup = Setup::new();
    setup.project.write(
        "connector.yaml",
        &format!(
            "version: 1\nwarehouse:\n  kind: postgres\n  url: {url}\n  statement_timeout: 1s\nlaunchdarkly:\n  \
             base_url: {}\n  project: default\n  environment: production\nstate:\n  kind: local\nsyncs:\n  \
             - name: slow-users\n    model: slow_users\n    segment: pro-users\n    mode: mirror\n",
            setup.emulator.base_url()
        ),
    );
    // Ten minutes of work, where one second is allowed.
    setup.project.write(
        "sql/slow_users.sql",
        "SELECT 'user-1'::text AS context_key FROM pg_sleep(600)\n",
    );
    let started = Instant::now();
    let out = setup.sync("day1", &[]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(300),
        "the model ran on: {took:?}"
    );
    let error = printed(&out);
    assert_eq!(out.status.code(), Some(6), "the model's to fix: {error}");
    for part in [
        "sync `slow-users` (model ",
        "sql/slow_users.sql): the model's SQL failed in PostgreSQL: canceling statement due to statement timeout",
    ] {
        assert!(error.contains(part), "no {part:?} in:\n{error}");
    }
    assert!(only_reads(&setup), "{:?}", setup.emulator.requests());
    assert!(setup.checkpoint("slow-users").is_none());
}
