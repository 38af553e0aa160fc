//! Context keys: checking each key a model returns, then turning them into a sorted, de-duplicated key set.
//!
//! A key is rejected when it is null, blank (empty or only white space) or longer than 256 characters. What a
//! rejection does is the sync's `invalid_keys` setting: stop with an error naming the row, or count it and keep a
//! few examples for the report.

use std::fmt;

use arrow::array::{Array, ArrayRef, AsArray, LargeStringArray, LargeStringBuilder};
use arrow::datatypes::DataType;
use serde::Serialize;

use crate::config::{InvalidKeys, MAX_KEY_CHARS};

/// How many rejected rows a report shows as examples.
const MAX_EXAMPLES: usize = 5;

/// Why a row's key was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    Null,
    Blank,
    TooLong,
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

    fn record(&mut self, row: RejectedRow) {
        match row.reason {
            Rejection::Null => self.null += 1,
            Rejection::Blank => self.blank += 1,
            Rejection::TooLong => self.too_long += 1,
        }
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(row);
        }
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

/// A sorted set of distinct, valid context keys and what it took to get them.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// Sorted by byte order, no duplicates, no nulls.
    pub keys: LargeStringArray,
    pub stats: KeyStats,
}

/// Collects the key column of a model batch by batch, checking each key.
pub struct KeyCollector {
    policy: InvalidKeys,
    rows: u64,
    valid: LargeStringBuilder,
    rejected: Rejections,
}

impl KeyCollector {
    pub fn new(policy: InvalidKeys) -> Self {
        KeyCollector {
            policy,
            rows: 0,
            valid: LargeStringBuilder::new(),
            rejected: Rejections::default(),
        }
    }

    /// Checks and keeps the keys of one batch.
    pub fn push(&mut self, array: &ArrayRef) -> Result<(), KeyError> {
        match array.data_type() {
            DataType::Utf8 => self.push_keys(array.as_string::<i32>().iter()),
            DataType::LargeUtf8 => self.push_keys(array.as_string::<i64>().iter()),
            DataType::Utf8View => self.push_keys(array.as_string_view().iter()),
            other => Err(KeyError::NotText(other.clone())),
        }
    }

    fn push_keys<'a>(
        &mut self,
        keys: impl Iterator<Item = Option<&'a str>>,
    ) -> Result<(), KeyError> {
        for key in keys {
            self.rows += 1;
            match check_key(key) {
                None => self.valid.append_value(key.unwrap_or_default()),
                Some(reason) => self.reject(RejectedRow {
                    row: self.rows,
                    reason,
                    value: key.map(shorten),
                })?,
            }
        }
        Ok(())
    }

    fn reject(&mut self, row: RejectedRow) -> Result<(), KeyError> {
        match self.policy {
            InvalidKeys::Fail => Err(KeyError::Invalid(row)),
            InvalidKeys::Skip => {
                self.rejected.record(row);
                Ok(())
            }
        }
    }

    /// Sorts and de-duplicates the keys collected so far.
    pub fn finish(mut self) -> KeySet {
        let all = self.valid.finish();
        let valid_rows = all.len() as u64;
        let keys = sort_distinct(all);
        KeySet {
            stats: KeyStats {
                rows: self.rows,
                distinct: keys.len() as u64,
                duplicates: valid_rows - keys.len() as u64,
                rejected: self.rejected,
            },
            keys,
        }
    }
}

/// Why `key` cannot be a context key, if it cannot.
fn check_key(key: Option<&str>) -> Option<Rejection> {
    match key {
        None => Some(Rejection::Null),
        Some(k) if k.trim().is_empty() => Some(Rejection::Blank),
        Some(k) if k.len() > MAX_KEY_CHARS && k.chars().count() > MAX_KEY_CHARS => {
            Some(Rejection::TooLong)
        }
        Some(_) => None,
    }
}

fn shorten(key: &str) -> String {
    const SHOWN: usize = 40;
    match key.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &key[..cut]),
        None => key.to_string(),
    }
}

/// Sorts `keys` by byte order and drops repeats.
///
/// Comparing strings through their offsets misses the cache at every step of a comparison sort, which dominated
/// planning at millions of keys. So the sort works on fixed-size records instead: the 8 bytes of each key that
/// follow the prefix all keys share (big-endian, so that integer order is byte order) and the key's position.
/// Keys whose 8 bytes tie are then ordered by their full bytes, run by run; such runs are short unless the keys
/// differ only far in.
pub fn sort_distinct(keys: LargeStringArray) -> LargeStringArray {
    let shared = shared_prefix_len(&keys);
    let mut order: Vec<(u64, usize)> = (0..keys.len())
        .map(|i| (sort_prefix(keys.value(i).as_bytes(), shared), i))
        .collect();
    order.sort_unstable_by_key(|&(prefix, _)| prefix);
    for run in order.chunk_by_mut(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            run.sort_unstable_by(|a, b| keys.value(a.1).cmp(keys.value(b.1)));
        }
    }
    let mut distinct = LargeStringBuilder::with_capacity(keys.len(), keys.value_data().len());
    let mut previous: Option<&str> = None;
    for &(_, i) in &order {
        let key = keys.value(i);
        if previous != Some(key) {
            distinct.append_value(key);
            previous = Some(key);
        }
    }
    distinct.finish()
}

/// How many leading bytes every key shares.
fn shared_prefix_len(keys: &LargeStringArray) -> usize {
    let Some(first) = keys.iter().flatten().next().map(str::as_bytes) else {
        return 0;
    };
    keys.iter().flatten().fold(first.len(), |shared, key| {
        let key = key.as_bytes();
        shared.min(first.iter().zip(key).take_while(|(a, b)| a == b).count())
    })
}

/// The 8 bytes of `key` after `skip`, zero-padded, as a big-endian integer.
fn sort_prefix(key: &[u8], skip: usize) -> u64 {
    let mut prefix = [0u8; 8];
    let rest = &key[skip.min(key.len())..];
    let n = rest.len().min(8);
    prefix[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use std::sync::Arc;

    fn batch(keys: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(keys.to_vec()))
    }

    #[test]
    fn keys_are_sorted_deduplicated_and_counted() {
        let mut collector = KeyCollector::new(InvalidKeys::Skip);
        collector
            .push(&batch(&[Some("b"), Some("a"), Some("b")]))
            .unwrap();
        collector
            .push(&batch(&[Some("c"), Some("a"), Some("é")]))
            .unwrap();
        let set = collector.finish();
        let keys: Vec<&str> = set.keys.iter().map(Option::unwrap).collect();
        assert_eq!(keys, ["a", "b", "c", "é"]);
        assert_eq!(set.stats.rows, 6);
        assert_eq!(set.stats.distinct, 4);
        assert_eq!(set.stats.duplicates, 2);
        assert_eq!(set.stats.rejected.total(), 0);
    }

    #[test]
    fn skipped_rows_are_counted_with_examples() {
        let long = "x".repeat(257);
        let exactly = "y".repeat(256);
        let mut collector = KeyCollector::new(InvalidKeys::Skip);
        collector
            .push(&batch(&[
                Some("ok"),
                None,
                Some("  "),
                Some(&long),
                Some(""),
                Some(&exactly),
            ]))
            .unwrap();
        let set = collector.finish();
        assert_eq!(set.stats.rows, 6);
        assert_eq!(set.stats.distinct, 2);
        let r = &set.stats.rejected;
        assert_eq!((r.null, r.blank, r.too_long), (1, 2, 1));
        assert_eq!(
            r.examples[0],
            RejectedRow {
                row: 2,
                reason: Rejection::Null,
                value: None
            }
        );
        assert_eq!(
            r.examples[2].value.as_deref(),
            Some(&*format!("{}…", "x".repeat(40)))
        );
    }

    #[test]
    fn a_failing_policy_names_the_row() {
        let mut collector = KeyCollector::new(InvalidKeys::Fail);
        collector.push(&batch(&[Some("a"), Some("b")])).unwrap();
        let err = collector.push(&batch(&[Some("c"), Some(" ")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 4 of the model has a blank key (\" \"); fix the model or set invalid_keys: skip to leave such rows out"
        );
    }

    proptest::proptest! {
        #[test]
        fn sorting_matches_a_btree_set(
            keys in proptest::collection::vec(
                proptest::prop_oneof![
                    "usr_[0-9a-f]{0,12}",
                    "usr_0000000[0-9a-f]{0,3}",
                    "[a\\x00é]{0,4}",
                    "\\PC{0,6}",
                ],
                0..200,
            )
        ) {
            let array: LargeStringArray = keys.iter().map(|k| Some(k.as_str())).collect();
            let sorted: Vec<String> = sort_distinct(array).iter().map(|k| k.unwrap().to_string()).collect();
            let expected: Vec<String> = keys.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            proptest::prop_assert_eq!(sorted, expected);
        }
    }

    #[test]
    fn multibyte_keys_count_characters_not_bytes() {
        let key = "é".repeat(200); // 400 bytes, 200 characters
        assert_eq!(check_key(Some(&key)), None);
    }
}
