//! `launchdarkly:`, which account, project and environment the syncs write to and where the access token comes
//! from, checked and resolved from its raw mapping: an instance's hosts, or base URLs of one's own. No I/O.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::raw::RawLaunchDarkly;
use super::visit::from_map;

/// Which LaunchDarkly account, project and environment the syncs write to, and where the token comes from.
#[derive(Debug, Clone)]
pub struct LaunchDarklyConfig {
    /// Root of the REST API, without `/api/v2`.
    pub base_url: String,
    /// Root of the events host (the metric import API): the instance's, or `events_base_url`, or `base_url`.
    pub events_base_url: String,
    pub token: TokenSource,
    pub project: String,
    pub environment: String,
}

/// Where the LaunchDarkly access token is read from. The token itself never appears in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The name of an environment variable.
    Env(String),
    /// A file holding the token (trailing white space is ignored).
    File(PathBuf),
}

/// LaunchDarkly's hosted instances.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Instance {
    Us,
    Eu,
    Federal,
}

impl Instance {
    fn base_url(self) -> &'static str {
        match self {
            Instance::Us => "https://app.launchdarkly.com",
            Instance::Eu => "https://app.eu.launchdarkly.com",
            Instance::Federal => "https://app.launchdarkly.us",
        }
    }

    /// The instance's events host, where the metric import API lives.
    fn events_base_url(self) -> &'static str {
        match self {
            Instance::Us => "https://events.launchdarkly.com",
            Instance::Eu => "https://events.eu.launchdarkly.com",
            Instance::Federal => "https://events.launchdarkly.us",
        }
    }
}

/// The environment variable read for the token when the configuration names none.
pub const DEFAULT_TOKEN_ENV: &str = "LD_ACCESS_TOKEN";

impl<'de> Deserialize<'de> for LaunchDarklyConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_map(deserializer, LaunchDarklyConfig::from_raw)
    }
}

impl LaunchDarklyConfig {
    fn from_raw(raw: RawLaunchDarkly) -> Result<Self, String> {
        if raw.token.is_some() {
            return Err("the access token never goes in connector.yaml: put it in an environment \
                        variable named by `token_env` (default LD_ACCESS_TOKEN) or a file named by `token_file`"
                .into());
        }
        let (base_url, instance_events) = match (raw.instance, raw.base_url) {
            (Some(_), Some(_)) => {
                return Err(
                    "give either `instance` (us, eu, federal) or `base_url`, not both".into(),
                );
            }
            (Some(instance), None) => (
                instance.base_url().to_string(),
                Some(instance.events_base_url()),
            ),
            (None, Some(url)) => (parse_base_url("base_url", &url.0)?, None),
            (None, None) => (
                Instance::Us.base_url().to_string(),
                Some(Instance::Us.events_base_url()),
            ),
        };
        let events_base_url = match (raw.events_base_url, instance_events) {
            (Some(url), _) => parse_base_url("events_base_url", &url.0)?,
            // A base URL of one's own (the emulator, a proxy) serves the import API too unless told otherwise.
            (None, None) => base_url.clone(),
            (None, Some(events)) => events.to_string(),
        };
        let token = match (raw.token_env, raw.token_file) {
            (Some(_), Some(_)) => {
                return Err("give either `token_env` or `token_file`, not both".into());
            }
            (Some(var), None) => TokenSource::Env(var.0),
            (None, Some(file)) => TokenSource::File(PathBuf::from(file.0)),
            (None, None) => TokenSource::Env(DEFAULT_TOKEN_ENV.to_string()),
        };
        Ok(LaunchDarklyConfig {
            base_url,
            events_base_url,
            token,
            project: raw.project.0,
            environment: raw.environment.0,
        })
    }
}

/// Checks the URL given for `field` (`base_url`, `events_base_url`): the root of an instance, https unless the host
/// is this machine.
fn parse_base_url(field: &str, url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let (secure, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = trimmed.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!(
            "`{field}` must start with https:// or http://, got `{url}`"
        ));
    };
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!("`{field}` `{url}` has no host"));
    }
    if !secure && !is_loopback(rest) {
        return Err(format!(
            "`{field}` `{url}` would send the access token in clear text; use https://, since http:// is \
             accepted only for a loopback host such as the emulator on 127.0.0.1"
        ));
    }
    if trimmed.ends_with("/api/v2") {
        return Err(format!(
            "`{field}` is the root of the instance; drop the trailing /api/v2 from `{url}`"
        ));
    }
    Ok(trimmed.to_string())
}

/// Whether the host of `authority_and_path` (`host[:port][/path]`) is this machine: `localhost`, 127.0.0.0/8 or
/// `[::1]`.
fn is_loopback(authority_and_path: &str) -> bool {
    let authority = authority_and_path.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_instance_roots() {
        assert_eq!(
            parse_base_url("base_url", "http://127.0.0.1:8765/").unwrap(),
            "http://127.0.0.1:8765"
        );
        assert!(parse_base_url("base_url", "app.launchdarkly.com").is_err());
        for loopback in [
            "http://localhost:8765",
            "http://127.0.0.2",
            "http://[::1]:8765/",
        ] {
            assert!(parse_base_url("base_url", loopback).is_ok(), "{loopback}");
        }
        for remote in [
            "http://app.launchdarkly.com",
            "http://10.0.0.7:8765",
            "http://127.0.0.1.example.com",
        ] {
            assert!(
                parse_base_url("base_url", remote)
                    .unwrap_err()
                    .contains("would send the access token in clear text"),
                "{remote}"
            );
        }
        assert_eq!(
            parse_base_url("base_url", "https://ld.internal.example.com/").unwrap(),
            "https://ld.internal.example.com"
        );
        assert!(
            parse_base_url("base_url", "https://app.launchdarkly.com/api/v2")
                .unwrap_err()
                .contains("drop the trailing")
        );
    }
}
