//! A big segment's export file, downloaded from LaunchDarkly (its format is undocumented), to `ExportFile`'s
//! reader, in chunks of 1 to 8 keys (first byte): it either yields keys (never an empty one, never more than a
//! chunk at a time) or stops with an error naming the segment, the same whichever chunk size reads it; it never
//! panics.
#![no_main]

use std::io::Write;

use ldsync::launchdarkly::ExportFile;
use libfuzzer_sys::fuzz_target;

/// The keys of `file`, read from its start `chunk` at a time, or the error's text.
fn read_all(file: &mut ExportFile, chunk: usize) -> Result<Vec<String>, String> {
    let mut all = Vec::new();
    for keys in file.key_chunks(chunk).map_err(|e| e.to_string())? {
        let keys = keys.map_err(|e| e.to_string())?;
        assert!(!keys.is_empty() && keys.len() <= chunk, "{keys:?}");
        assert!(keys.iter().all(|key| !key.is_empty()), "{keys:?}");
        all.extend(keys);
    }
    Ok(all)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, content)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 8) + 1;
    let mut file =
        ExportFile::create("fuzzed", &std::env::temp_dir()).expect("a temporary file");
    file.writer().write_all(content).expect("the download writes");
    let read = read_all(&mut file, chunk);
    if let Err(error) = &read {
        assert!(error.contains("big segment `fuzzed`"), "{error}");
    }
    // Read again, in other chunks: the same keys (the planner may read a file once; it must not depend on how).
    assert_eq!(read_all(&mut file, 9 - chunk), read);
});
