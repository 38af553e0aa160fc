//! The diff: which keys entered the model and which left it since the checkpoint.
//!
//! Both sides are sorted by byte order, so one merge pass finds the difference. The model's key set is in
//! memory; the checkpoint's keys stream in batches, and the diff checks as it goes that they really are sorted
//! and distinct, so a damaged snapshot is an error rather than a wrong answer.

use arrow::array::{Array, LargeStringArray, StringArray, StringBuilder};

/// Keys that entered and left the model since the checkpoint, each sorted by byte order.
#[derive(Debug, Clone)]
pub struct KeyDiff {
    pub entered: StringArray,
    pub left: StringArray,
}

/// The checkpoint's keys were not in strictly increasing order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the checkpoint's keys are out of order at {position}: {previous:?} then {next:?}; the snapshot is damaged"
)]
pub struct UnsortedCheckpoint {
    pub position: u64,
    pub previous: String,
    pub next: String,
}

/// Merges the sorted, distinct `model` keys against the sorted `previous` keys, given as a stream of batches.
pub fn diff_sorted<E: From<UnsortedCheckpoint>>(
    model: &LargeStringArray,
    previous: impl IntoIterator<Item = Result<StringArray, E>>,
) -> Result<KeyDiff, E> {
    let mut entered = StringBuilder::new();
    let mut left = StringBuilder::new();
    let mut next_model = 0;
    // The last checkpoint key seen, kept in one reused buffer; `position` counts keys seen.
    let mut last = String::new();
    let mut position = 0u64;
    for batch in previous {
        let batch = batch?;
        for key in batch.iter().flatten() {
            if position > 0 && last.as_str() >= key {
                return Err(UnsortedCheckpoint {
                    position,
                    previous: last,
                    next: key.to_string(),
                }
                .into());
            }
            while next_model < model.len() && model.value(next_model) < key {
                entered.append_value(model.value(next_model));
                next_model += 1;
            }
            if next_model < model.len() && model.value(next_model) == key {
                next_model += 1;
            } else {
                left.append_value(key);
            }
            last.clear();
            last.push_str(key);
            position += 1;
        }
    }
    for i in next_model..model.len() {
        entered.append_value(model.value(i));
    }
    Ok(KeyDiff {
        entered: entered.finish(),
        left: left.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn model_of(keys: &BTreeSet<String>) -> LargeStringArray {
        keys.iter().map(|k| Some(k.as_str())).collect()
    }

    /// The checkpoint as batches of at most `batch` keys, as the store streams them.
    fn batches_of(
        keys: &BTreeSet<String>,
        batch: usize,
    ) -> Vec<Result<StringArray, UnsortedCheckpoint>> {
        let keys: Vec<&String> = keys.iter().collect();
        keys.chunks(batch.max(1))
            .map(|chunk| Ok(chunk.iter().map(|k| Some(k.as_str())).collect()))
            .collect()
    }

    fn strings(array: &StringArray) -> Vec<String> {
        array.iter().map(|k| k.unwrap().to_string()).collect()
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c]{0,3}",      // short keys that collide often
            "user-[0-9]{1,4}", // realistic keys
            "\\PC{1,6}",       // any printable unicode
        ]
    }

    proptest! {
        #[test]
        fn diff_equals_set_difference(
            model in proptest::collection::btree_set(key_strategy(), 0..200),
            previous in proptest::collection::btree_set(key_strategy(), 0..200),
            batch in 1usize..50,
        ) {
            let diff = diff_sorted(&model_of(&model), batches_of(&previous, batch)).unwrap();
            let entered: Vec<String> = model.difference(&previous).cloned().collect();
            let left: Vec<String> = previous.difference(&model).cloned().collect();
            prop_assert_eq!(strings(&diff.entered), entered);
            prop_assert_eq!(strings(&diff.left), left);
        }

        #[test]
        fn identical_sets_have_no_difference(keys in proptest::collection::btree_set(key_strategy(), 0..200)) {
            let diff = diff_sorted(&model_of(&keys), batches_of(&keys, 7)).unwrap();
            prop_assert_eq!(diff.entered.len(), 0);
            prop_assert_eq!(diff.left.len(), 0);
        }
    }

    #[test]
    fn one_side_empty() {
        let keys: BTreeSet<String> = ["a", "b", "ü"].iter().map(|s| s.to_string()).collect();
        let none = BTreeSet::new();
        let first_run = diff_sorted(&model_of(&keys), batches_of(&none, 1)).unwrap();
        assert_eq!(strings(&first_run.entered), ["a", "b", "ü"]);
        assert_eq!(first_run.left.len(), 0);
        let emptied = diff_sorted(&model_of(&none), batches_of(&keys, 2)).unwrap();
        assert_eq!(emptied.entered.len(), 0);
        assert_eq!(strings(&emptied.left), ["a", "b", "ü"]);
    }

    #[test]
    fn unsorted_or_repeated_checkpoint_keys_are_errors() {
        let model = model_of(&BTreeSet::new());
        let out_of_order: Vec<Result<StringArray, UnsortedCheckpoint>> = vec![
            Ok(StringArray::from(vec!["a", "c"])),
            Ok(StringArray::from(vec!["b"])),
        ];
        let err = diff_sorted(&model, out_of_order).unwrap_err();
        assert_eq!(
            err,
            UnsortedCheckpoint {
                position: 2,
                previous: "c".into(),
                next: "b".into()
            }
        );
        let repeated: Vec<Result<StringArray, UnsortedCheckpoint>> =
            vec![Ok(StringArray::from(vec!["a", "a"]))];
        assert_eq!(diff_sorted(&model, repeated).unwrap_err().position, 1);
    }
}
