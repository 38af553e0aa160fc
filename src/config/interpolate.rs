//! `${VAR}` and `${VAR:-default}` in the configuration's strings (URLs, paths, start-up SQL), replaced from the
//! environment. [`Interpolated`] does it while the value is read, so that a variable that is not set is reported at
//! its field, line and column; [`interpolate`] is the replacement itself, over any lookup. No I/O besides reading
//! the environment.

use serde::{Deserialize, Deserializer};

use super::visit::from_str;

/// A string with `${VAR}` and `${VAR:-default}` replaced from the environment as it is read.
pub(super) struct Interpolated(pub(super) String);

impl<'de> Deserialize<'de> for Interpolated {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str(deserializer, "a string", |raw| {
            interpolate(raw, |name| std::env::var(name).ok()).map(Interpolated)
        })
    }
}

/// A statement read from connector.yaml: the text ldsync runs, `${VAR}` replaced, and the text as written. Values
/// from the environment may be secrets (a password in an `ATTACH`, a signed URL), so messages and `Debug` show
/// the statement as written, and [`Statement::scrub`] takes the values out of any message about it.
#[derive(Clone)]
pub struct Statement {
    written: String,
    run: String,
    /// Each variable the environment gave a value, and that value.
    values: Vec<(String, String)>,
}

impl Statement {
    /// The text to run.
    pub fn text(&self) -> &str {
        &self.run
    }

    /// The text as connector.yaml has it, `${VAR}` and all.
    pub fn written(&self) -> &str {
        &self.written
    }

    /// `message` (an error about this statement) with every value the environment gave put back as `${VAR}`.
    pub fn scrub(&self, message: &str) -> String {
        let mut scrubbed = message.replace(&self.run, &self.written);
        for (name, value) in self.values.iter().filter(|(_, value)| !value.is_empty()) {
            scrubbed = scrubbed.replace(value.as_str(), &format!("${{{name}}}"));
        }
        scrubbed
    }
}

/// A statement with nothing to interpolate (built in code, not read from connector.yaml).
impl From<&str> for Statement {
    fn from(text: &str) -> Self {
        Statement {
            written: text.to_string(),
            run: text.to_string(),
            values: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.written, f)
    }
}

impl<'de> Deserialize<'de> for Statement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str(deserializer, "a string", |written| {
            let (run, values) = interpolate_tracking(written, |name| std::env::var(name).ok())?;
            Ok(Statement {
                written: written.to_string(),
                run,
                values,
            })
        })
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with values from `lookup`.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    interpolate_tracking(text, lookup).map(|(out, _)| out)
}

/// [`interpolate`], also saying which variables `lookup` gave a value, and which.
fn interpolate_tracking(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, Vec<(String, String)>), String> {
    let mut values = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in `{text}`"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{expr}}}` is not a variable reference; write ${{NAME}} or ${{NAME:-default}}"
            ));
        }
        match (lookup(name), default) {
            (Some(value), _) => {
                out.push_str(&value);
                values.push((name.to_string(), value));
            }
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "the environment variable {name} is not set (or write ${{{name}:-default}})"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "DAY").then(|| "day2".to_string())
    }

    #[test]
    fn a_statement_shows_itself_as_written_and_scrubs_what_the_environment_gave() {
        let (run, values) =
            interpolate_tracking("ATTACH '${DSN}' AS w (TYPE ${KIND:-postgres})", |name| {
                (name == "DSN").then(|| "host=db password=hunter2".to_string())
            })
            .unwrap();
        let statement = Statement {
            written: "ATTACH '${DSN}' AS w (TYPE ${KIND:-postgres})".into(),
            run,
            values,
        };
        assert_eq!(
            statement.text(),
            "ATTACH 'host=db password=hunter2' AS w (TYPE postgres)"
        );
        assert_eq!(
            format!("{statement:?}"),
            "\"ATTACH '${DSN}' AS w (TYPE ${KIND:-postgres})\""
        );
        let message = "IO Error: cannot connect with \"host=db password=hunter2\"";
        assert_eq!(
            statement.scrub(message),
            "IO Error: cannot connect with \"${DSN}\""
        );
    }

    #[test]
    fn interpolation_replaces_set_variables_and_defaults() {
        assert_eq!(
            interpolate("fixtures/${DAY}/users.csv", lookup).unwrap(),
            "fixtures/day2/users.csv"
        );
        assert_eq!(
            interpolate("${MISSING:-day1}/${DAY}", lookup).unwrap(),
            "day1/day2"
        );
        assert_eq!(interpolate("no variables", lookup).unwrap(), "no variables");
    }

    #[test]
    fn interpolation_errors_name_the_variable() {
        let err = interpolate("x${MISSING}y", lookup).unwrap_err();
        assert!(err.contains("MISSING is not set"), "{err}");
        let err = interpolate("${unterminated", lookup).unwrap_err();
        assert!(err.contains("without a closing"), "{err}");
        let err = interpolate("${a b}", lookup).unwrap_err();
        assert!(err.contains("not a variable reference"), "{err}");
    }
}
