//! ldsync: a reverse-ETL connector from warehouse SQL models to LaunchDarkly segments and experiments.
//!
//! The crate is layered; each module imports only from the layers below it (checked by `layers.rs` in `cargo test`):
//!
//! - [`cli`] parses the command line, runs one command, and turns its outcome or error into an exit code;
//!   [`daemon`] runs the scheduled syncs until a [`shutdown`] signal, serving metrics.
//! - [`status`] and [`validate`] read what runs did and check a project, and [`status_page`] shows it as HTML;
//!   [`report`] renders plans and runs.
//! - [`run`] executes a plan: lock, settle the journal, plan, send, commit, record, for segment and events syncs.
//! - [`history`] is the record each run leaves.
//! - [`plan`] turns a model and a baseline into one plan value: the requests, the gates, the events to send.
//! - [`set_engine`] does the set work in embedded DuckDB; [`events`] is the events model and its batching.
//! - [`state`] keeps checkpoints, journals, history and locks (in files or PostgreSQL); [`warehouse`] runs models;
//!   [`launchdarkly`] is the API client.
//! - [`pg`], [`keys`], [`progress`]: PostgreSQL connections, what a model's keys held, progress bars; [`dbt`]: a
//!   model's SQL from its file or, through dbt's manifest, from the dbt model `ref()` names.
//! - [`config`] reads `connector.yaml`; [`schedule`] and [`vocab`] are the words every layer shares.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dbt;
pub mod events;
pub mod history;
pub mod keys;
pub mod launchdarkly;
pub mod pg;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
pub mod set_engine;
pub mod shutdown;
pub mod state;
pub mod status;
pub mod status_page;
pub mod validate;
pub mod vocab;
pub mod warehouse;

#[cfg(test)]
mod layers;
