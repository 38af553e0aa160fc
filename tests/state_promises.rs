//! What README promises of the state a run leaves, held to the real binary: a second run waits `state.lock_wait`
//! for the first and then stops naming it (in both stores); `copy-checkpoints` refuses a sync with an unfinished
//! run; a tampered snapshot stops `plan` and `sync` before anything is sent; a run killed after writing its
//! snapshot but before renaming its manifest leaves the old checkpoint, and the next run finishes it; and glob
//! characters in the project's and the state's directories are only names.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ldsync_emulator::{EmulatorConfig, Faults};

use crate::util::background::*;
use crate::util::emulated::*;
use crate::util::postgres::*;
use crate::util::*;

/// Starts `ldsync sync pro-users` and waits until LaunchDarkly holds its first request, answering nothing for ten
/// minutes: until the test kills it, it holds the sync's lock.
fn a_run_holding_the_lock(setup: &Setup) -> Background {
    setup.emulator.set_faults(Faults {
        latency: Duration::from_secs(600),
        ..Faults::default()
    });
    let first = Background::start(&setup.project, "day1", TOKEN, &["sync", "pro-users"]);
    first.wait_until(
        PATIENCE,
        "the first run's first request is in flight",
        || setup.emulator.requests().iter().any(|r| r.status == 0),
    );
    first
}

/// With `lock_wait: 1s`, a second run of pro-users while `first` holds the lock waits a second, then stops naming
/// the first run, having sent nothing.
fn assert_a_second_run_waits_then_stops(setup: &Setup, first: &Background) {
    setup
        .project
        .edit_config("state:\n  kind: ", "state:\n  lock_wait: 1s\n  kind: ");
    let seen = setup.emulator.requests().len();
    let started = Instant::now();
    let out = setup.sync("day1", &["pro-users"]);
    let waited = started.elapsed();
    let error = printed(&out);
    assert_eq!(out.status.code(), Some(1), "{error}");
    assert!(waited >= Duration::from_secs(1), "gave up after {waited:?}");
    let holder = format!("process {} on ", first.id());
    for part in [
        "another run of sync `pro-users` is under way (run ",
        holder.as_str(),
        "so this one stops without changing anything after waiting 1s (state.lock_wait)",
    ] {
        assert!(error.contains(part), "no {part:?} in:\n{error}");
    }
    assert_eq!(
        setup.emulator.requests().len(),
        seen,
        "the second run made no request"
    );
}

#[test]
fn lock_wait_expires_in_the_local_store_naming_the_run_under_way() {
    let setup = Setup::new();
    let first = a_run_holding_the_lock(&setup);
    assert_a_second_run_waits_then_stops(&setup, &first);
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn lock_wait_expires_in_the_postgres_store_naming_the_run_under_way() {
    let url = database_url();
    let schema = Schema::new(&url, "promise_lock_wait", "");
    let setup = Setup::new();
    shared_state(&setup.project, &schema);
    let first = a_run_holding_the_lock(&setup);
    assert_a_second_run_waits_then_stops(&setup, &first);
}

/// Kills `ldsync sync pro-users` (batches of 40) while LaunchDarkly holds its first batch: the run is unfinished, its
/// journal and snapshot written, its manifest not renamed.
fn kill_a_run_mid_send(setup: &Setup, day: &str) {
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(500),
        ..Faults::default()
    });
    let mut run = Background::start(&setup.project, day, TOKEN, &["sync", "pro-users"]);
    run.wait_until(PATIENCE, "a batch is in flight", || patch_in_flight(setup));
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    setup.emulator.set_faults(Faults::default());
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn copy_checkpoints_refuses_a_sync_with_an_unfinished_run() {
    let url = database_url();
    let schema = Schema::new(&url, "promise_copy_unfinished", "");
    let setup = Setup::new();
    small_batches(&setup, 40);
    kill_a_run_mid_send(&setup, "day1");
    let journal = setup.project.path(".ldsync/state/pro-users/journal.jsonl");
    assert!(journal.exists());

    shared_state(&setup.project, &schema);
    let out = setup.project.ldsync(
        "day1",
        &["copy-checkpoints", "pro-users", "--from", "local"],
    );
    let error = printed(&out);
    assert_eq!(out.status.code(), Some(1), "{error}");
    assert!(
        error.contains(
            "sync `pro-users` has an unfinished run in the local store; finish it there first"
        ),
        "{error}"
    );
    assert_eq!(
        schema.query(&format!(
            "SELECT count(*)::text FROM {}.checkpoints",
            schema.name
        )),
        [[Some("0".to_string())]],
        "nothing was copied"
    );
    assert!(journal.exists(), "the unfinished run is left to finish");
}

fn sync_dir(setup: &Setup) -> PathBuf {
    setup.project.path(".ldsync/state/pro-users")
}

/// The snapshot files in pro-users' state directory.
fn snapshots(setup: &Setup) -> BTreeSet<String> {
    std::fs::read_dir(sync_dir(setup))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snapshot-") && name.ends_with(".parquet"))
        .collect()
}

#[test]
fn a_tampered_snapshot_stops_plan_and_sync_naming_the_file_and_sends_nothing() {
    let setup = Setup::new();
    ok(&setup.sync("day1", &["pro-users"]));
    let snapshot = sync_dir(&setup).join(snapshots(&setup).pop_first().unwrap());
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&snapshot, bytes).unwrap();
    setup.emulator.clear_requests();

    let plan = setup.project.ldsync("day2", &["plan", "pro-users"]);
    let sync = setup.sync("day2", &["pro-users"]);
    let damaged = format!(
        "the checkpoint snapshot {} is damaged: ",
        snapshot.display()
    );
    for out in [plan, sync] {
        let error = printed(&out);
        assert_eq!(out.status.code(), Some(1), "{error}");
        assert!(error.contains(&damaged), "{error}");
    }
    assert!(only_reads(&setup), "{:?}", setup.emulator.requests());
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day1")
    );
}

#[test]
fn a_run_killed_between_its_snapshot_and_its_manifest_leaves_the_old_checkpoint() {
    let setup = Setup::new();
    small_batches(&setup, 1);
    ok(&setup.sync("day1", &["pro-users"]));
    let manifest = setup.manifest_bytes("pro-users").unwrap();
    let committed = snapshots(&setup);

    // Day two's run writes its snapshot before it sends anything and renames the manifest after its last answer:
    // killed while LaunchDarkly holds its first batch, it has done the one and not the other.
    kill_a_run_mid_send(&setup, "day2");
    let written: BTreeSet<String> = snapshots(&setup).difference(&committed).cloned().collect();
    assert_eq!(written.len(), 1, "the killed run's snapshot: {written:?}");
    assert_eq!(
        setup.manifest_bytes("pro-users").unwrap(),
        manifest,
        "the manifest still names the old snapshot"
    );
    let day1 = expected_pro_users("day1");
    assert_eq!(setup.checkpoint("pro-users").unwrap(), day1);
    let plan = json(
        &setup
            .project
            .ldsync("day2", &["plan", "pro-users", "--format", "json"]),
    );
    let day2 = expected_pro_users("day2");
    assert_eq!(strings(&plan["syncs"][0]["adds"]), difference(&day2, &day1));

    ok(&setup.sync("day2", &["pro-users"]));
    assert_eq!(setup.checkpoint("pro-users").unwrap(), day2);
    assert_eq!(setup.members("pro-users", "user"), day2);
    assert_eq!(
        snapshots(&setup),
        written,
        "the old snapshot went with its manifest"
    );
}

/// The project's and the state's directory names: `*`, `?` and `[` in each, which, read as a glob, match the name
/// itself (`[[]` is a `[`) and others beside it.
const GLOB_PROJECT: &str = "proj [[]*?";
const GLOB_STATE: &str = "st [[]*?";
/// A directory beside the state directory whose name the state directory's, read as a glob, matches.
const DECOY_STATE: &str = "st [decoy";

fn setup_among_glob_characters() -> Setup {
    let setup = Setup::for_project(
        Project::example_named(GLOB_PROJECT),
        EmulatorConfig::default(),
    );
    setup.project.edit_config(
        "  directory: .ldsync/state\n",
        &format!("  directory: \"{GLOB_STATE}\"\n"),
    );
    setup
}

/// Puts a snapshot of `keys` at the same place as every Parquet checkpoint of `sync` under the state directory,
/// but under [`DECOY_STATE`]: a reader that globs the checkpoint's path reads it too.
fn plant_decoys(setup: &Setup, sync: &str, keys: &BTreeSet<String>) {
    let state = setup.project.path(GLOB_STATE);
    let checkpoints = files_below(&state).into_iter().filter(|path| {
        path.extension().is_some_and(|e| e == "parquet") && path.parent().unwrap().ends_with(sync)
    });
    for checkpoint in checkpoints {
        let decoy = setup
            .project
            .path(DECOY_STATE)
            .join(checkpoint.strip_prefix(&state).unwrap());
        std::fs::create_dir_all(decoy.parent().unwrap()).unwrap();
        let file = std::fs::File::create(&decoy).unwrap();
        ldsync::state::write_parquet_keys(file, keys.iter().map(String::as_str)).unwrap();
    }
}

/// Syncs every sync on day one and on day two (whose plans read day one's Parquet checkpoints, with decoys beside
/// them that say dormant-winback already holds all of day two's keys), then finds nothing left to change.
fn assert_two_days_sync(setup: &Setup) {
    ok(&setup.sync("day1", &[]));
    let day2 = expected_dormant_users("day2");
    plant_decoys(setup, "dormant-winback", &day2);
    ok(&setup.sync("day2", &[]));
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day2")
    );
    // An add sync plans against its checkpoint: day two added what day one had not.
    let dormant: BTreeSet<String> = expected_dormant_users("day1")
        .union(&day2)
        .cloned()
        .collect();
    assert_eq!(setup.members("winback-experiment", "user"), dormant);
    let out = setup.sync("day2", &["--format", "json"]);
    ok(&out);
    for sync in json(&out)["syncs"].as_array().unwrap() {
        assert_eq!(sync["outcome"], "nothing_to_change", "{sync}");
    }
}

#[test]
fn glob_characters_in_the_project_and_state_directories_are_only_names() {
    let setup = setup_among_glob_characters();
    assert_two_days_sync(&setup);
    assert!(
        setup
            .project
            .path(&format!("{GLOB_STATE}/pro-users/manifest.json"))
            .exists()
    );
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn glob_characters_in_the_directory_of_the_postgres_stores_copies_are_only_names() {
    let url = database_url();
    let schema = Schema::new(&url, "promise_glob", "");
    let setup = setup_among_glob_characters();
    shared_state(&setup.project, &schema);
    assert_two_days_sync(&setup);
    let copies = setup.project.path(&format!(
        "{GLOB_STATE}/postgres@{}/dormant-winback",
        schema.name
    ));
    assert!(copies.is_dir(), "{copies:?}");
}
