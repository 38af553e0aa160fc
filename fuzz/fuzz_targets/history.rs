//! A sync's run history left by earlier runs (`<sync>/runs.jsonl`, local store): read as `ldsync status` and
//! `ldsync history` read it, then one run appended, which must read back whole as the last record (a torn last
//! line is cut before the append).
#![no_main]

use ldsync::history::{self, RunRecord};
use ldsync_fuzz::store_with_file;
use libfuzzer_sys::fuzz_target;

const SYNC: &str = "pro-users";

/// A run record as ldsync writes it.
const RECORD: &str = concat!(
    r#"{"sync":"pro-users","run_id":"fuzz-run","started_at":"2026-11-24T10:00:00Z","#,
    r#""finished_at":"2026-11-24T10:00:01Z","duration_ms":1000,"outcome":"synced","resumed_run":null,"#,
    r#""adds":2,"removes":1,"batches_acknowledged":2,"batches_planned":2,"calls":{"requests":3,"retries":0,"#,
    r#""rate_limited":0,"server_errors":0,"transport_errors":0,"paced_ms":0},"error":null}"#
);

fuzz_target!(|data: &[u8]| {
    let store = store_with_file(SYNC, "runs.jsonl", data);
    let _ = history::read(store, SYNC);
    let record = run_record();
    history::append(store, &record).expect("a run is appended");
    let runs = history::read(store, SYNC).expect("the history reads after an append");
    assert_eq!(
        runs.last(),
        Some(&record),
        "the appended run reads back last, whole"
    );
});

fn run_record() -> RunRecord {
    serde_json::from_str(RECORD).expect("the record is valid")
}
