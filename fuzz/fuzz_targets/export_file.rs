//! A big segment's export file, downloaded from LaunchDarkly (its format is undocumented), to `ExportFile`'s
//! reader, in chunks of 1 to 8 keys (first byte): it either yields keys (never an empty one, never a header row's
//! first field as the first key) or stops with an error naming the segment; it never panics.
#![no_main]

use std::io::Write;

use ldsync::launchdarkly::ExportFile;
use libfuzzer_sys::fuzz_target;

const HEADERS: &[&str] = &["key", "context_key", "contextkey", "userkey", "user_key", "id"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, content)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 8) + 1;
    let mut file = ExportFile::create("fuzzed", &std::env::temp_dir()).expect("a temporary file");
    file.writer().write_all(content).expect("the download writes");
    let chunks = match file.key_chunks(chunk) {
        Ok(chunks) => chunks,
        Err(e) => {
            assert!(e.to_string().contains("big segment `fuzzed`"), "{e}");
            return;
        }
    };
    let mut first_key = true;
    for keys in chunks {
        match keys {
            Ok(keys) => {
                assert!(!keys.is_empty() && keys.len() <= chunk, "{keys:?}");
                for key in &keys {
                    assert!(!key.is_empty());
                    if first_key {
                        assert!(!HEADERS.contains(&key.trim().to_ascii_lowercase().as_str()));
                        first_key = false;
                    }
                }
            }
            Err(e) => {
                assert!(e.to_string().contains("big segment `fuzzed`"), "{e}");
                return;
            }
        }
    }
});
