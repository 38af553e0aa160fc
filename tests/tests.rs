//! ldsync's integration tests, in one test binary (as ripgrep keeps its own): linking a test binary means linking
//! DuckDB, so one binary costs one link where a file per area cost eleven. Each area is a module; `util` holds
//! what they share. Cargo.toml sets `autotests = false` and names this file as the only integration test, so a
//! new area is a file beside this one and a `mod` line below, never a binary of its own.
//!
//! The tests of every area run concurrently in this one process: none changes the process's environment or
//! working directory, each works in a temporary directory, an emulator on a port of its own and a PostgreSQL schema
//! of its own (see `util`), and each ldsync it runs is a child process.

mod util;

mod big_segments;
mod config_and_validate;
mod daemon;
mod dbt;
mod emulator;
mod events;
mod in_warehouse;
mod launchdarkly_client;
mod packaging;
mod plan;
mod postgres_state;
mod postgres_warehouse;
mod signals;
mod state_promises;
mod status_page;
mod sync;
mod sync_recovery;
mod warehouse_promises;
