//! Exit codes, documented in `--help` and README.md, and the one place where an error becomes a code: by its
//! class ([`ErrorClass`]), so a scheduler can tell a failure that running again may cure (LaunchDarkly, the
//! warehouse or the state store failed; exit 1) from one a person must fix first (the configuration, exit 5; the
//! model's data, exit 6).

use crate::config::{ConfigError, UnknownSync};
use crate::dbt::ExposureError;
use crate::launchdarkly::ApiError;
use crate::launchdarkly::token::TokenError;
use crate::plan::{PlanError, SyncPlanError};
use crate::report::ReportError;
use crate::run::RunError;
use crate::set_engine::SetEngineError;
use crate::state::copy::CopyCheckpointError;
use crate::state::events::EventCheckpointError;
use crate::state::{JournalError, StateError};
use crate::vocab::ErrorClass;
use crate::warehouse::WarehouseError;

/// Success: the command did what it was asked (with plan --detailed-exitcode: nothing to change).
pub const OK: u8 = 0;
/// Something outside ldsync failed (LaunchDarkly, the warehouse, the state store) or ldsync itself did: running
/// again later may succeed, and `ldsync run` does so on its own.
pub const ERROR: u8 = 1;
/// The command line itself was wrong (clap's own code).
pub const USAGE: u8 = 2;
/// --detailed-exitcode: plan: at least one sync has changes to make, and no gate would stop it;
/// sync: at least one sync sent changes, and none failed or was stopped by a gate.
pub const CHANGES: u8 = 3;
/// plan --detailed-exitcode: a removal gate would stop at least one sync before its first call;
/// sync: a removal gate stopped at least one sync before its first call (and none failed).
pub const GATE_STOPPED: u8 = 4;
/// The configuration is wrong (connector.yaml, the environment it reads, the token, a sync name on the command
/// line): running again cannot help until a person fixes it.
pub const CONFIG: u8 = 5;
/// A model's data is wrong (its SQL, its keys, its rows): running again cannot help until its owner fixes it.
pub const DATA: u8 = 6;
/// sync: a signal stopped a run, whose journal the next run finishes; run: a second signal stopped it at once.
pub const INTERRUPTED: u8 = 130;

/// The code for a failure of `class`.
pub fn for_class(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Config => CONFIG,
        ErrorClass::Data => DATA,
        ErrorClass::LaunchDarkly
        | ErrorClass::Warehouse
        | ErrorClass::StateStore
        | ErrorClass::Internal => ERROR,
    }
}

/// The code for several syncs' failures: the one a person must act on first (configuration, then data), else 1.
pub fn for_failures(classes: impl IntoIterator<Item = ErrorClass>) -> u8 {
    let codes: Vec<u8> = classes.into_iter().map(for_class).collect();
    [CONFIG, DATA, ERROR]
        .into_iter()
        .find(|code| codes.contains(code))
        .unwrap_or(ERROR)
}

/// The class of an error that reached the command line: that of the outermost error in its chain that knows its
/// class; anything else (the async runtime, a signal handler) is ldsync's own.
pub fn class_of(error: &anyhow::Error) -> ErrorClass {
    error
        .chain()
        .find_map(classify)
        .unwrap_or(ErrorClass::Internal)
}

fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
    if error.is::<ConfigError>() || error.is::<UnknownSync>() {
        return Some(ErrorClass::Config);
    }
    if error.is::<ReportError>() {
        return Some(ErrorClass::Internal);
    }
    macro_rules! class_of_any {
        ($($kind:ty),+) => {
            $(if let Some(e) = error.downcast_ref::<$kind>() {
                return Some(e.class());
            })+
        };
    }
    class_of_any!(
        TokenError,
        WarehouseError,
        StateError,
        SetEngineError,
        JournalError,
        EventCheckpointError,
        ApiError,
        PlanError,
        SyncPlanError,
        RunError,
        CopyCheckpointError,
        ExposureError
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_classed_by_the_outermost_error_that_knows_its_class() {
        let error = anyhow::Error::new(StateError::SettingsChanged {
            changes: "segment".into(),
        })
        .context("loading sync `pro-users`");
        assert_eq!(class_of(&error), ErrorClass::StateStore);
        let error = anyhow::Error::new(StateError::PostgresUrl("nope".into()));
        assert_eq!(for_class(class_of(&error)), CONFIG);
        let unknown = anyhow::Error::new(UnknownSync {
            name: "x".into(),
            known: vec!["y".into()],
        });
        assert_eq!(for_class(class_of(&unknown)), CONFIG);
        assert_eq!(
            class_of(&anyhow::anyhow!("the runtime stopped")),
            ErrorClass::Internal
        );
    }

    #[test]
    fn several_failures_exit_with_the_one_a_person_must_fix_first() {
        use ErrorClass::*;
        assert_eq!(for_failures([LaunchDarkly, Data, Warehouse]), DATA);
        assert_eq!(for_failures([Data, Config]), CONFIG);
        assert_eq!(for_failures([StateStore, Internal]), ERROR);
        assert_eq!(for_failures([]), ERROR);
    }
}
