//! PostgreSQL's `COPY … TO STDOUT` text format, as the PostgreSQL warehouse and store decode it: the data cut into
//! chunks at the places the input picks, pushed, finished; and any text written with `copy_text` for
//! `COPY … FROM STDIN` must read back as it was. The input's first byte says into how many chunks (1 to 8) the rest
//! is cut.
#![no_main]

use arrow::array::AsArray;
use ldsync::pg::{CopyRows, copy_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, bytes)) = data.split_first() else {
        return;
    };
    decode_in_chunks(bytes, usize::from(cuts % 8) + 1);
    if let Ok(text) = std::str::from_utf8(bytes) {
        round_trip(text);
    }
});

/// Decodes `bytes` pushed in `pieces` chunks of equal size.
fn decode_in_chunks(bytes: &[u8], pieces: usize) {
    let mut rows = CopyRows::default();
    for chunk in bytes.chunks(bytes.len().div_ceil(pieces).max(1)) {
        if rows.push(chunk).is_err() {
            return;
        }
    }
    let _ = rows.finish();
}

fn round_trip(text: &str) {
    let mut data = Vec::new();
    copy_text(&mut data, text);
    data.push(b'\n');
    let mut rows = CopyRows::default();
    assert!(rows.push(&data).expect("written text decodes").is_empty());
    let columns = rows.finish().expect("one whole row").expect("one row");
    assert_eq!(columns.len(), 1, "one value is one column: {data:?}");
    let read: Vec<Option<&str>> = columns[0].as_string::<i32>().iter().collect();
    assert_eq!(read, [Some(text)]);
}
