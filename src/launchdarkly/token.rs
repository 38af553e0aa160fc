//! The LaunchDarkly access token: read from where connector.yaml says, kept out of every `Debug`, log line,
//! error and report, and scrubbed from any text that comes back from the server.

use std::fmt;
use std::path::PathBuf;

use reqwest::header::HeaderValue;

use crate::config::TokenSource;
use crate::vocab::ErrorClass;

/// Why the access token could not be read. The messages name where it was looked for, never its value.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the access token variable {var} is not set: export it with a LaunchDarkly personal or service access token \
         (`ldsync plan` works without one)"
    )]
    MissingEnv { var: String },
    #[error("the access token variable {var} is empty")]
    EmptyEnv { var: String },
    #[error("cannot read the access token file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the access token file {path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("the access token from {origin} holds characters that cannot go in an HTTP header")]
    NotAHeader { origin: String },
    #[error(
        "the access token from {origin} is too short to be a LaunchDarkly access token ({chars} character{}; a \
         token is `api-` and 36 more): check that it holds the whole token",
        if *chars == 1 { "" } else { "s" }
    )]
    TooShort { origin: String, chars: usize },
}

/// The fewest characters an access token may have. LaunchDarkly's are 40 (`api-` and a UUID); a value much
/// shorter is a mistake, and one of a character or two could not be scrubbed from text without mangling it.
const MIN_TOKEN_CHARS: usize = 8;

impl TokenError {
    /// The token comes from the environment or a file connector.yaml names.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
}

/// A secret that only the HTTP layer ever sees.
#[derive(Clone)]
pub struct AccessToken {
    value: String,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

impl AccessToken {
    /// Reads the token from an environment variable or a file (relative paths resolve from `base_dir`).
    pub fn read(source: &TokenSource, base_dir: &std::path::Path) -> Result<Self, TokenError> {
        let (value, origin) = match source {
            TokenSource::Env(var) => {
                let value =
                    std::env::var(var).map_err(|_| TokenError::MissingEnv { var: var.clone() })?;
                if value.trim().is_empty() {
                    return Err(TokenError::EmptyEnv { var: var.clone() });
                }
                (value.trim().to_string(), format!("${var}"))
            }
            TokenSource::File(path) => {
                let path = base_dir.join(path);
                let text = std::fs::read_to_string(&path).map_err(|source| TokenError::File {
                    path: path.clone(),
                    source,
                })?;
                if text.trim().is_empty() {
                    return Err(TokenError::EmptyFile { path });
                }
                (text.trim().to_string(), path.display().to_string())
            }
        };
        if HeaderValue::from_str(&value).is_err() {
            return Err(TokenError::NotAHeader { origin });
        }
        let chars = value.chars().count();
        if chars < MIN_TOKEN_CHARS {
            return Err(TokenError::TooShort { origin, chars });
        }
        Ok(AccessToken { value })
    }

    /// The `Authorization` header: the bare token, marked sensitive so HTTP debug output hides it.
    pub fn header(&self) -> HeaderValue {
        let mut header =
            HeaderValue::from_str(&self.value).expect("checked when the token was read");
        header.set_sensitive(true);
        header
    }

    /// `text` with every occurrence of the token replaced, for anything that may echo a request back.
    pub fn scrub(&self, text: &str) -> String {
        text.replace(&self.value, "<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug_or_scrubbed_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "api-canary-1234\n").unwrap();
        let token = AccessToken::read(&TokenSource::File("token".into()), dir.path()).unwrap();
        assert_eq!(format!("{token:?}"), "AccessToken(<redacted>)");
        assert_eq!(token.scrub("echo api-canary-1234!"), "echo <redacted>!");
        assert!(token.header().is_sensitive());
        assert_eq!(token.header().to_str().unwrap(), "api-canary-1234");
    }

    #[test]
    fn a_token_too_short_to_be_real_is_refused_naming_its_length_not_its_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "a\n").unwrap();
        let error = AccessToken::read(&TokenSource::File("token".into()), dir.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the access token from {} is too short to be a LaunchDarkly access token (1 character; a token \
                 is `api-` and 36 more): check that it holds the whole token",
                dir.path().join("token").display()
            )
        );
        std::fs::write(dir.path().join("token"), "api-1234\n").unwrap();
        let token = AccessToken::read(&TokenSource::File("token".into()), dir.path()).unwrap();
        assert_eq!(token.scrub("a api-1234 b"), "a <redacted> b");
    }

    #[test]
    fn missing_and_empty_sources_name_where_they_looked() {
        let dir = tempfile::tempdir().unwrap();
        let missing = AccessToken::read(
            &TokenSource::Env("LDSYNC_TEST_UNSET_TOKEN_VAR".into()),
            dir.path(),
        );
        assert_eq!(
            missing.unwrap_err().to_string(),
            "the access token variable LDSYNC_TEST_UNSET_TOKEN_VAR is not set: export it with a LaunchDarkly \
             personal or service access token (`ldsync plan` works without one)"
        );
        std::fs::write(dir.path().join("empty"), " \n").unwrap();
        let empty = AccessToken::read(&TokenSource::File("empty".into()), dir.path()).unwrap_err();
        assert!(empty.to_string().ends_with("empty is empty"), "{empty}");
    }
}
