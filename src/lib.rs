//! ldsync: a reverse-ETL connector from warehouse SQL models to LaunchDarkly segments.
//!
//! The pipeline of one sync, module by module: [`config`] reads `connector.yaml`; [`warehouse`] runs the model and
//! streams its key column as Arrow arrays; [`keys`] checks, sorts and de-duplicates them; [`state`] keeps the
//! committed checkpoint; [`diff`] merges the two sorted sets; [`plan`] turns the difference into requests and
//! checks the removal gates; [`report`] shows the result. [`sync`] applies a plan through the [`launchdarkly`]
//! client, writing each run's batches to its [`journal`] first and its outcome to the run [`history`]; [`cli`] is the
//! command line over all of it.

pub mod cli;
pub mod config;
pub mod diff;
pub mod history;
pub mod journal;
pub mod keys;
pub mod launchdarkly;
pub mod plan;
pub mod report;
pub mod state;
pub mod sync;
pub mod validate;
pub mod warehouse;
