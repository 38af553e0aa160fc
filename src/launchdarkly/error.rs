//! Why a LaunchDarkly call failed, as a user needs to read it: the call, the status, LaunchDarkly's own message,
//! and the role action a refusal needs.

use serde::Deserialize;

use super::token::AccessToken;
use crate::vocab::ErrorClass;

/// What a refused answer says, as ldsync reports it: LaunchDarkly's error code (`error` when it names none) and its
/// message (the whole body when the body is not LaunchDarkly's JSON error), the token scrubbed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub code: String,
    pub message: String,
}

/// LaunchDarkly's error body.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl ErrorAnswer {
    /// Reads the body of a refused answer.
    pub fn read(body: &str, token: &AccessToken) -> ErrorAnswer {
        let error: ErrorBody = serde_json::from_str(body).unwrap_or_default();
        let message = token.scrub(if error.message.is_empty() {
            body
        } else {
            &error.message
        });
        let code = if error.code.is_empty() {
            "error".into()
        } else {
            error.code
        };
        ErrorAnswer { code, message }
    }
}

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
    #[error(
        "LaunchDarkly stopped import {id} of big segment `{segment}`, so its keys were not added; the next run plans \
         afresh from the checkpoint and the segment's real state"
    )]
    ImportStopped { segment: String, id: String },
    #[error(
        "LaunchDarkly stopped export {id} of big segment `{segment}`, so its members could not be read; nothing was \
         changed, and the next run exports again"
    )]
    ExportStopped { segment: String, id: String },
    #[error(
        "cannot download the export of big segment `{segment}` from {host}: {problem}; the next run exports again"
    )]
    Download {
        segment: String,
        host: String,
        problem: String,
    },
}

impl ApiError {
    /// Whether LaunchDarkly refused a change for good, so that sending the same batch again would fail the same
    /// way: a request it rejected (400, 405, 422), or a segment that is gone. A wrong token or a missing role
    /// action is not: once fixed, the same batch goes through.
    pub fn is_final_for_batch(&self) -> bool {
        matches!(
            self,
            ApiError::Rejected { .. }
                | ApiError::UnknownSegment { .. }
                | ApiError::ImportStopped { .. }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenSource;

    #[test]
    fn a_refusal_reads_launchdarklys_error_or_the_body_itself_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "api-canary-1234").unwrap();
        let token = AccessToken::read(&TokenSource::File("token".into()), dir.path()).unwrap();
        let json = r#"{"code":"unauthorized","message":"Invalid access token `api-canary-1234`"}"#;
        assert_eq!(
            ErrorAnswer::read(json, &token),
            ErrorAnswer {
                code: "unauthorized".into(),
                message: "Invalid access token `<redacted>`".into()
            }
        );
        assert_eq!(
            ErrorAnswer::read("<html>bad gateway api-canary-1234</html>", &token),
            ErrorAnswer {
                code: "error".into(),
                message: "<html>bad gateway <redacted></html>".into()
            }
        );
    }
}
