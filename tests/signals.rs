//! `ldsync sync` stopped by SIGINT or SIGTERM in the middle of a run: the request in flight is finished and its
//! acknowledgement recorded, nothing more is sent, the process exits 130 with the checkpoint where it was, and the
//! next `sync` finishes the journal without sending an acknowledged batch again. The emulator holds every answer
//! back, so the signal lands while a batch is in flight, however busy the machine.

use std::time::Duration;

use ldsync::history::RunOutcome;
use ldsync_emulator::Faults;

use crate::util::background::*;
use crate::util::emulated::*;
use crate::util::*;

#[test]
fn sync_stopped_by_sigint_finishes_the_request_in_flight_and_the_next_sync_finishes_the_run() {
    sync_stopped_by(libc::SIGINT);
}

#[test]
fn sync_stopped_by_sigterm_finishes_the_request_in_flight_and_the_next_sync_finishes_the_run() {
    sync_stopped_by(libc::SIGTERM);
}

fn sync_stopped_by(signal: i32) {
    let setup = Setup::new();
    small_batches(&setup, 40);
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(1500),
        ..Faults::default()
    });
    let mut sync = Background::start(&setup.project, "day1", TOKEN, &["sync", "pro-users"]);
    sync.wait_until(PATIENCE, "the first batch is in flight", || {
        patch_in_flight(&setup)
    });
    sync.signal(signal);
    assert_eq!(sync.exit_within(PATIENCE), Some(130), "{}", sync.log());

    // The batch in flight was answered and acknowledged in the journal; no other was started.
    let patches: Vec<_> = setup
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(
        patches[0].applied && patches[0].status == 200,
        "{patches:?}"
    );
    let acknowledged = acknowledged_in_journal(&setup.project);
    assert_eq!(acknowledged.len(), 1, "{acknowledged:?}");
    let interrupted = runs(&setup, "pro-users").pop().unwrap();
    assert_interrupted_leaving_the_checkpoint(&setup, &interrupted);
    assert_eq!(interrupted.batches_acknowledged, 1);

    setup.emulator.set_faults(Faults::default());
    let seen = setup.emulator.requests().len();
    ok(&setup.sync("day1", &["pro-users"]));
    let finished = runs(&setup, "pro-users").pop().unwrap();
    assert_eq!(
        finished.resumed_run.as_deref(),
        Some(interrupted.run_id.as_str())
    );
    // Its own plan had nothing more to send, but it sent the interrupted run's batches: it synced.
    assert_eq!(finished.outcome, RunOutcome::Synced);
    assert!(
        !setup
            .project
            .path(".ldsync/state/pro-users/journal.jsonl")
            .exists()
    );
    assert_not_resent(&setup.emulator.requests()[seen..], &acknowledged);
    let pro = expected_pro_users("day1");
    assert_eq!(setup.members("pro-users", "user"), pro);
    assert_eq!(setup.checkpoint("pro-users").unwrap(), pro);
}
