//! connector.yaml: parsed and checked as `ldsync` reads it (`${VAR}` interpolation included), then resolved: every
//! sync's model (its file or its `ref()`), the dbt project and manifest, the state directory, the engine's settings, the sync selection and the events settings.
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
            let models = config.syncs.iter().map(|s| &s.model);
            for model in models.chain(config.events.iter().map(|s| &s.model)) {
                let _ = config.model_label(model);
            }
            let _ = (
                config.dbt_project_dir(),
                config.dbt_manifest(),
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
