//! The checked values that several sections share: sync and model names, LaunchDarkly keys, column names, context
//! kinds, environment variable names and durations. Each is checked as it is read, so that a mistake names its
//! field, line and column. No I/O.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::interpolate::Interpolated;
use super::visit::from_str;

/// The duration given for `field` (`examples` shows what one looks like), or `default` when it is left out.
pub(super) fn duration(
    field: &str,
    examples: &str,
    given: Option<Interpolated>,
    default: Duration,
) -> Result<Duration, String> {
    let Some(text) = given else {
        return Ok(default);
    };
    humantime::parse_duration(&text.0).map_err(|e| {
        format!(
            "`{field}` takes a duration such as {examples}, got `{}`: {e}",
            text.0
        )
    })
}

/// Checks a string against a character rule, naming what it is when it fails.
fn checked<'de, D: Deserializer<'de>>(
    deserializer: D,
    what: &str,
    allowed: fn(char) -> bool,
    rule: &str,
) -> Result<String, D::Error> {
    from_str(deserializer, "a string", |value| {
        if value.is_empty() {
            return Err(format!("{what} must not be empty"));
        }
        if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
            return Err(format!(
                "{what} `{value}` has the character {bad:?}; {rule}"
            ));
        }
        Ok(value.to_string())
    })
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

pub(super) fn sync_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked(
        deserializer,
        "a sync name",
        is_key_char,
        "use letters, digits, `.`, `_` and `-`",
    )
}

/// Checks a model named by its file under `sql/`.
pub(super) fn model_file_name(name: &str) -> Result<String, String> {
    const RULE: &str = "name a model by its file under sql/ without `.sql`, for example `pro_users` for \
                        sql/pro_users.sql, or a dbt model as ref('pro_users')";
    let allowed = |c: char| is_key_char(c) || c == '/';
    if name.is_empty()
        || !name.chars().all(allowed)
        || name.ends_with(".sql")
        || name.split('/').any(|part| part.is_empty() || part == "..")
    {
        return Err(format!("model `{name}`: {RULE}"));
    }
    Ok(name.to_string())
}

pub(super) fn resource_key<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked(
        deserializer,
        "a LaunchDarkly key",
        is_key_char,
        "LaunchDarkly keys use letters, digits, `.`, `_` and `-`",
    )
}

pub(super) fn column_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked(
        deserializer,
        "a column name",
        |c| c.is_alphanumeric() || c == '_',
        "name a column of the model's result (letters, digits and `_`)",
    )
}

pub(super) fn context_kind<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    from_str(deserializer, "a context kind", |kind| {
        if kind == "kind" || kind == "multi" {
            return Err(format!(
                "`{kind}` is reserved by LaunchDarkly and cannot be a context kind"
            ));
        }
        if kind.is_empty() || !kind.chars().all(is_key_char) {
            return Err(format!(
                "context kind `{kind}`: context kinds use letters, digits, `.`, `_` and `-`"
            ));
        }
        Ok(kind.to_string())
    })
}

/// A context kind, checked.
pub(super) struct ContextKind(pub(super) String);

impl<'de> Deserialize<'de> for ContextKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        context_kind(deserializer).map(ContextKind)
    }
}

/// A column name, checked.
pub(super) struct ColumnName(pub(super) String);

impl<'de> Deserialize<'de> for ColumnName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        column_name(deserializer).map(ColumnName)
    }
}

/// A LaunchDarkly project or environment key.
pub(super) struct ResourceKey(pub(super) String);

impl<'de> Deserialize<'de> for ResourceKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        resource_key(deserializer).map(ResourceKey)
    }
}

/// The name of an environment variable.
pub(super) struct EnvVarName(pub(super) String);

impl<'de> Deserialize<'de> for EnvVarName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(
            deserializer,
            "an environment variable name",
            |c| c.is_ascii_alphanumeric() || c == '_',
            "name the variable (letters, digits and `_`), not its value",
        )
        .map(EnvVarName)
    }
}
