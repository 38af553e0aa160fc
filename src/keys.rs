//! What a model's key column held, as reports show it: rows, distinct keys, repeats, and the rows whose key was
//! rejected (null, blank, or longer than 256 characters), with examples. The checking itself is SQL, in
//! [`crate::set_engine`].

use std::fmt;

use arrow::datatypes::DataType;
use serde::Serialize;

/// Why a row's key was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    Null,
    Blank,
    TooLong,
}

impl Rejection {
    /// The code the set engine gives a row rejected for this reason (0 is a valid key).
    pub fn code(self) -> u8 {
        match self {
            Rejection::Null => 1,
            Rejection::Blank => 2,
            Rejection::TooLong => 3,
        }
    }

    /// The reason of a set engine's code; `None` for a valid key.
    pub fn from_code(code: u8) -> Option<Rejection> {
        [Rejection::Null, Rejection::Blank, Rejection::TooLong]
            .into_iter()
            .find(|r| r.code() == code)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::Null => "null key",
            Rejection::Blank => "blank key",
            Rejection::TooLong => "key longer than 256 characters",
        })
    }
}

/// One rejected row, kept as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRow {
    /// 1-based row number in the model's result.
    pub row: u64,
    pub reason: Rejection,
    /// The key as the model returned it (shortened), absent for nulls.
    pub value: Option<String>,
}

/// Rejected rows: counts by reason and the first few examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rejections {
    pub null: u64,
    pub blank: u64,
    pub too_long: u64,
    pub examples: Vec<RejectedRow>,
}

impl Rejections {
    pub fn total(&self) -> u64 {
        self.null + self.blank + self.too_long
    }
}

/// What a model's key column held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyStats {
    /// Rows the model returned.
    pub rows: u64,
    /// Distinct valid keys.
    pub distinct: u64,
    /// Valid rows whose key repeats an earlier row's.
    pub duplicates: u64,
    pub rejected: Rejections,
}

/// Why a model's keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("row {} of the model has a {}{}; fix the model or set invalid_keys: skip to leave such rows out", .0.row, .0.reason, shown(.0.value.as_deref()))]
    Invalid(RejectedRow),
    #[error("the key column arrived as Arrow type {0}, which is not text")]
    NotText(DataType),
}

fn shown(value: Option<&str>) -> String {
    value.map(|v| format!(" ({v:?})")).unwrap_or_default()
}
