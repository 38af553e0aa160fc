//! What the fuzz targets share: a local state store in a scratch directory (on tmpfs when there is one), where a
//! target writes the file it feeds to ldsync's reader, and the example project's configuration, whose syncs the
//! readers are asked about.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ldsync::config::Config;
use ldsync::state::{LocalStore, Store};

/// The example project's connector.yaml, as shipped.
pub const EXAMPLE_CONFIG: &str = include_str!("../../connector.yaml");

/// The example project's configuration, read once.
pub fn example_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::parse(Path::new("connector.yaml"), EXAMPLE_CONFIG)
            .expect("the example configuration is valid")
    })
}

/// A local store in a directory of this process's own, kept for the process's life.
pub fn scratch_store() -> &'static (Store, PathBuf) {
    static STORE: OnceLock<(Store, PathBuf)> = OnceLock::new();
    STORE.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("ldsync-fuzz-")
            .tempdir_in(base)
            .expect("a scratch directory")
            .keep();
        (Store::Local(LocalStore::new(&dir)), dir)
    })
}

/// Replaces `sync`'s `file` in the scratch store with `bytes`, and returns the store.
pub fn store_with_file(sync: &str, file: &str, bytes: &[u8]) -> &'static Store {
    let (store, root) = scratch_store();
    let dir = root.join(sync);
    std::fs::create_dir_all(&dir).expect("the sync's directory");
    std::fs::write(dir.join(file), bytes).expect("the file under test");
    store
}
