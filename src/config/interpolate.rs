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

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with values from `lookup`.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
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
            (Some(value), _) => out.push_str(&value),
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "DAY").then(|| "day2".to_string())
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
