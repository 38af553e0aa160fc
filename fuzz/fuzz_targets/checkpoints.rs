//! Checkpoints left by earlier runs (local store): a segment sync's `manifest.json`, loaded and checked against the
//! sync's settings, and an events sync's `events-checkpoint.json`, loaded and checked against the example project's
//! `order-events` sync, its lateness window then computed. The input's first byte picks the file (`e`: the events
//! checkpoint, anything else: the manifest), the rest is the file.
#![no_main]

use ldsync::state::CheckpointSettings;
use ldsync::state::events::{self, EventSettings, millis_to_time};
use ldsync_fuzz::{example_config, store_with_file};
use libfuzzer_sys::fuzz_target;

fn manifest(bytes: &[u8]) {
    let config = example_config();
    let sync = &config.syncs[0];
    let store = store_with_file(&sync.name, "manifest.json", bytes);
    match store.load(&sync.name) {
        Ok(Some(checkpoint)) => {
            let _ = checkpoint.check_settings(&CheckpointSettings::of(config, sync));
            let _ = checkpoint.manifest.settings.fingerprint();
        }
        Ok(None) => unreachable!("the manifest was just written"),
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

fn events_checkpoint(bytes: &[u8]) {
    let config = example_config();
    let sync = &config.events[0];
    let store = store_with_file(&sync.name, "events-checkpoint.json", bytes);
    match events::load(store, sync, &EventSettings::of(config)) {
        Ok(Some(checkpoint)) => {
            let lateness = i64::try_from(sync.lateness.as_millis()).unwrap_or(i64::MAX);
            if let Some(start) = checkpoint.progress.window_start(lateness) {
                let _ = millis_to_time(start);
            }
            if let Some(watermark) = &checkpoint.progress.watermark {
                let _ = watermark.time();
            }
        }
        Ok(None) => unreachable!("the checkpoint was just written"),
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    if kind != b'e' {
        manifest(bytes);
    } else {
        events_checkpoint(bytes);
    }
});
