//! The visitors that every check of a value runs inside. No I/O.
//!
//! serde_yaml_ng marks an error with the path and line of the value being visited only when the error is raised
//! inside the visitor. These helpers run each check inside one, so every message points at its own line: a check
//! returns `Err(String)` and the helper turns it into the deserializer's error.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// Reads a string and converts it with `convert`.
pub(super) fn from_str<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    convert: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct StrVisitor<F> {
        expecting: &'static str,
        convert: F,
    }
    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for StrVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.convert)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(StrVisitor { expecting, convert })
}

/// Reads a number (integer or not) and converts it with `convert`.
pub(super) fn from_number<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    convert: impl FnOnce(f64) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct NumberVisitor<F> {
        expecting: &'static str,
        convert: F,
    }
    impl<'de, T, F: FnOnce(f64) -> Result<T, String>> Visitor<'de> for NumberVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            (self.convert)(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            self.visit_f64(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            self.visit_f64(v as f64)
        }
    }
    deserializer.deserialize_any(NumberVisitor { expecting, convert })
}

/// Reads a mapping as `R`, then checks and converts it with `convert`.
pub(super) fn from_map<'de, D, R, T>(
    deserializer: D,
    convert: fn(R) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
{
    struct MapVisitor<R, T> {
        convert: fn(R) -> Result<T, String>,
    }
    impl<'de, R: Deserialize<'de>, T> Visitor<'de> for MapVisitor<R, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.convert)(raw).map_err(de::Error::custom)
        }
    }
    deserializer.deserialize_map(MapVisitor { convert })
}
