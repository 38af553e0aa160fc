//! Why a LaunchDarkly call failed, as a user needs to read it: the call, the status, LaunchDarkly's own message,
//! and the role action a refusal needs.

use crate::vocab::ErrorClass;

/// Why a LaunchDarkly call failed. The messages say what to change; none carries the token.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "LaunchDarkly refused the access token while {what} (401: {message}): it is wrong or revoked, or it is an \
         SDK key, mobile key or client-side ID, which cannot call the REST API (use a personal or service access \
         token), or its role may not `{action}`"
    )]
    Unauthorized {
        what: String,
        action: &'static str,
        message: String,
    },
    #[error(
        "the access token's role may not {action} on {target} (403: {message}); give the role the `{action}` action"
    )]
    Forbidden {
        action: &'static str,
        target: String,
        message: String,
    },
    #[error(
        "project `{project}` does not exist in this LaunchDarkly account (404); check launchdarkly.project in connector.yaml"
    )]
    UnknownProject { project: String },
    #[error(
        "environment `{environment}` does not exist in project `{project}` (404); check launchdarkly.environment in connector.yaml"
    )]
    UnknownEnvironment {
        project: String,
        environment: String,
    },
    #[error(
        "segment `{segment}` does not exist in {project}/{environment}; create it in LaunchDarkly, or set the sync's \
         create_segment to standard or big"
    )]
    UnknownSegment {
        segment: String,
        project: String,
        environment: String,
    },
    #[error("LaunchDarkly rejected {what} ({status} {code}): {message}")]
    Rejected {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{what}: gave up after {attempts} attempts; the last one failed with {last}")]
    GaveUp {
        what: String,
        attempts: u64,
        last: String,
    },
    #[error("{what}: LaunchDarkly's answer could not be read: {problem}")]
    BadAnswer { what: String, problem: String },
}

impl ApiError {
    /// Whether LaunchDarkly refused a change for good, so that sending the same batch again would fail the same
    /// way: a request it rejected (400, 405, 422), or a segment that is gone. A wrong token or a missing role
    /// action is not: once fixed, the same batch goes through.
    pub fn is_final_for_batch(&self) -> bool {
        matches!(
            self,
            ApiError::Rejected { .. } | ApiError::UnknownSegment { .. }
        )
    }
}

impl ApiError {
    /// A project or environment that does not exist is connector.yaml's; everything else is LaunchDarkly's.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::UnknownProject { .. } | ApiError::UnknownEnvironment { .. } => {
                ErrorClass::Config
            }
            _ => ErrorClass::LaunchDarkly,
        }
    }
}
