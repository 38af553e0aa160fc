//! ldsync: a reverse-ETL connector from warehouse SQL models to LaunchDarkly segments.
//!
//! The pipeline of one sync, module by module: [`config`] reads `connector.yaml`; [`warehouse`] runs the model
//! and, with [`audience`], loads its keys into the set engine (embedded DuckDB), which checks them ([`keys`] says
//! what it found) and compares them with the committed checkpoint that [`state`] keeps; [`plan`] turns the
//! difference into requests and checks the removal gates; [`report`] shows the result. [`sync`] applies a plan
//! through the [`launchdarkly`]
//! client, writing each run's batches to its [`journal`] first and its outcome to the run [`history`]. [`daemon`] runs
//! syncs on their [`schedule`] until a [`shutdown`] signal, serving [`metrics`]; [`status`] reads what runs did;
//! [`cli`] is the command line over all of it. [`events`] syncs send metric events from a model to LaunchDarkly's
//! metric import API, incrementally, through the same journal, engine and history.

pub mod audience;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod events;
pub mod history;
pub mod journal;
pub mod keys;
pub mod launchdarkly;
pub mod metrics;
pub mod pg;
pub mod plan;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod shutdown;
pub mod state;
pub mod status;
pub mod sync;
pub mod validate;
pub mod warehouse;
