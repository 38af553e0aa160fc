//! connector.yaml: parsed and checked as `ldsync` reads it (`${VAR}` interpolation included), then resolved: every
//! sync's model path, the state directory, the engine's settings, the sync selection and the events settings.
#![no_main]

use std::path::Path;

use ldsync::config::Config;
use ldsync::state::events::EventSettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // ldsync reads the file as UTF-8 text; other bytes are an error before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("project/connector.yaml"), text) {
        Ok(config) => {
            let names: Vec<String> = config.all_syncs().map(|s| s.name().to_string()).collect();
            config
                .select_syncs(&names)
                .expect("every sync selects itself");
            for sync in &config.syncs {
                let _ = config.model_path(sync);
            }
            for sync in &config.events {
                let _ = config.model_file(&sync.model);
            }
            let _ = (
                config.state_dir(),
                config.engine_settings(),
                config.lock_wait(),
            );
            let _ = EventSettings::of(&config).to_string();
            let _ = format!("{config:?}");
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
