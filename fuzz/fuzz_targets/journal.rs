//! A run journal left by an earlier run (`<sync>/journal.jsonl`, local store): opened as a segment sync's or an
//! events sync's, each pending batch read back from its line, and, when it opens, one acknowledgement appended and
//! the journal opened again, which must then count that acknowledgement. The input's first byte picks the kind
//! (`e`: events, anything else: segment), the rest is the file.
#![no_main]

use ldsync::events::EventBatch;
use ldsync::run::{Batch, EventRunHeader, RunHeader};
use ldsync::state::{Journal, JournalBatch, JournalHeader};
use ldsync_fuzz::store_with_file;
use libfuzzer_sys::fuzz_target;

const SYNC: &str = "pro-users";

fn exercise<H: JournalHeader, B: JournalBatch>(bytes: &[u8]) {
    let store = store_with_file(SYNC, "journal.jsonl", bytes);
    let mut journal = match Journal::<H, B>::open(store, SYNC) {
        Ok(journal) => journal.expect("the journal was just written"),
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let pending: Vec<usize> = journal.pending().collect();
    let _ = journal.pending_units();
    for &index in &pending {
        let _ = journal.batch(index).map(|batch| batch.units());
    }
    let _ = journal.refusal();
    let Some(&first) = pending.first() else {
        return;
    };
    let acknowledged = journal.acknowledged_count();
    journal
        .acknowledge(first)
        .expect("an acknowledgement is appended");
    let reopened = Journal::<H, B>::open(store, SYNC)
        .expect("a journal that opened opens again after an acknowledgement")
        .expect("the journal is still there");
    assert_eq!(reopened.acknowledged_count(), acknowledged + 1);
    assert!(reopened.pending().all(|index| index != first));
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    if kind != b'e' {
        exercise::<RunHeader, Batch>(bytes);
    } else {
        exercise::<EventRunHeader, EventBatch>(bytes);
    }
});
