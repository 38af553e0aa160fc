//! `ldsync sync` end to end: the real binary against the in-repo LaunchDarkly emulator, over the example's two
//! fixture days. Every test checks what a user depends on: the segment's final membership, the exact requests
//! LaunchDarkly saw, the checkpoint left on disk, and the error text.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use ldsync_emulator::{
    EmulatorConfig, Faults, RateLimit, RecordedRequest, SegmentSeed, ThrottleHeaders, TokenGrant,
};
use serde_json::Value;

use crate::util::emulated::*;
use crate::util::*;

#[test]
fn every_mode_syncs_two_days_exactly() {
    let setup = Setup::new();
    let seeded = seed_before_day_one(&setup);

    // Day 1: every segment is brought to its model, in the fewest requests.
    let out = setup.sync("day1", &[]);
    ok(&out);
    let day1 = assert_day_one_synced(&setup, &seeded);
    assert_every_patch_is_a_semantic_patch_from_ldsync(&setup);
    // Each checkpoint is the model's key set; for mirror syncs that is the segment itself.
    assert_eq!(
        setup.checkpoint("pro-users").unwrap(),
        setup.members("pro-users", "user")
    );
    assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), day1.orgs);
    assert_eq!(setup.checkpoint("churned-beta").unwrap(), day1.churned);

    // Day 2: only what changed since day 1 is sent; add mode never removes, remove mode never adds.
    setup.emulator.clear_requests();
    let out = setup.sync("day2", &[]);
    ok(&out);
    assert_day_two_synced(&setup, &day1);
}

/// What the example's segments hold before day 1 of `every_mode_syncs_two_days_exactly`.
struct Seeded {
    /// pro-users' members: part of day 1's audience, and `stale`.
    pro_users: BTreeSet<String>,
    /// Three keys in pro-users that no model returns.
    stale: BTreeSet<String>,
    /// beta-testers' members: every user who opted into the beta on day 1.
    beta_testers: BTreeSet<String>,
}

fn seed_before_day_one(setup: &Setup) -> Seeded {
    // pro-users (mirror) starts with part of day 1's audience and three keys that do not belong.
    let pro1 = expected_pro_users("day1");
    let stale = ["usr_stale_1", "usr_stale_2", "usr_stale_3"];
    let seeded: Vec<&str> = pro1
        .iter()
        .take(200)
        .map(String::as_str)
        .chain(stale)
        .collect();
    setup.seed("pro-users", &seeded);
    // beta-testers (remove) holds every user who opted into the beta on day 1.
    let churned1 = expected_churned_beta_users("day1");
    let beta_testers: BTreeSet<String> = read_fixture("day1", "users")
        .iter()
        .filter(|u| u.get("beta_opt_in") == "true" && !u.get("user_id").trim().is_empty())
        .map(|u| u.get("user_id").to_string())
        .collect();
    assert!(beta_testers.len() > 100 && churned1.is_subset(&beta_testers));
    setup.seed(
        "beta-testers",
        &beta_testers.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    Seeded {
        pro_users: seeded.iter().map(|s| s.to_string()).collect(),
        stale: stale.iter().map(|s| s.to_string()).collect(),
        beta_testers,
    }
}

/// The example's audiences on day 1, and the beta testers left after its removals.
struct DayOne {
    pro: BTreeSet<String>,
    orgs: BTreeSet<String>,
    dormant: BTreeSet<String>,
    churned: BTreeSet<String>,
    stayers: BTreeSet<String>,
    orders: BTreeMap<String, u64>,
}

/// Checks the segments, the requests and the events after day 1's sync from `seeded`.
fn assert_day_one_synced(setup: &Setup, seeded: &Seeded) -> DayOne {
    let pro1 = expected_pro_users("day1");
    let churned1 = expected_churned_beta_users("day1");
    let orgs1 = expected_enterprise_orgs("day1");
    let dormant1 = expected_dormant_users("day1");
    assert_eq!(setup.members("pro-users", "user"), pro1);
    assert_eq!(setup.members("winback-experiment", "user"), dormant1);
    assert_eq!(setup.members("enterprise-orgs", "organization"), orgs1);
    let stayers = difference(&seeded.beta_testers, &churned1);
    assert_eq!(setup.members("beta-testers", "user"), stayers);

    let none = BTreeSet::new();
    let mut expected = expected_requests(
        "pro-users",
        &difference(&pro1, &seeded.pro_users),
        &seeded.stale,
        1500,
    );
    expected.extend(expected_requests(
        "winback-experiment",
        &dormant1,
        &none,
        1500,
    ));
    expected.extend(expected_requests("enterprise-orgs", &orgs1, &none, 500));
    expected.extend(expected_requests("beta-testers", &none, &churned1, 1500));
    assert_eq!(described(&setup.segment_requests()), expected);
    let orders1 = expected_order_events("day1", None);
    assert_eq!(setup.events_by_key(), orders1);
    DayOne {
        pro: pro1,
        orgs: orgs1,
        dormant: dormant1,
        churned: churned1,
        stayers,
        orders: orders1,
    }
}

/// Every PATCH is a semantic patch of the pinned API version, from ldsync, saying which sync sent it.
fn assert_every_patch_is_a_semantic_patch_from_ldsync(setup: &Setup) {
    for request in setup
        .emulator
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
    {
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/json; domain-model=launchdarkly.semanticpatch")
        );
        assert_eq!(request.api_version.as_deref(), Some("20240415"));
        assert!(
            request
                .user_agent
                .as_deref()
                .unwrap()
                .starts_with("ldsync/")
        );
        let body = request.body.as_ref().unwrap();
        assert_eq!(body["environmentKey"], "production");
        assert!(
            body["comment"]
                .as_str()
                .unwrap()
                .starts_with("ldsync sync `"),
            "{body}"
        );
    }
}

/// Checks the segments, the requests, the events and the checkpoints after day 2's sync, which followed `day1`'s.
fn assert_day_two_synced(setup: &Setup, day1: &DayOne) {
    let (pro2, orgs2) = (expected_pro_users("day2"), expected_enterprise_orgs("day2"));
    let (dormant2, churned2) = (
        expected_dormant_users("day2"),
        expected_churned_beta_users("day2"),
    );
    assert_eq!(setup.members("pro-users", "user"), pro2);
    assert_eq!(setup.members("enterprise-orgs", "organization"), orgs2);
    assert_eq!(
        setup.members("winback-experiment", "user"),
        day1.dormant.union(&dormant2).cloned().collect(),
        "add mode never removes"
    );
    assert_eq!(
        setup.members("beta-testers", "user"),
        difference(&day1.stayers, &churned2),
        "remove mode removes newly churned testers"
    );
    let none = BTreeSet::new();
    let mut expected = expected_requests(
        "pro-users",
        &difference(&pro2, &day1.pro),
        &difference(&day1.pro, &pro2),
        1500,
    );
    // Every run reads its segment, even one with nothing to send.
    expected.extend(expected_requests(
        "winback-experiment",
        &difference(&dormant2, &day1.dormant),
        &none,
        1500,
    ));
    expected.extend(expected_requests(
        "enterprise-orgs",
        &difference(&orgs2, &day1.orgs),
        &difference(&day1.orgs, &orgs2),
        500,
    ));
    let churned_new = difference(&churned2, &day1.churned);
    assert!(!churned_new.is_empty(), "testers churn on day 2");
    expected.extend(expected_requests("beta-testers", &none, &churned_new, 1500));
    assert_eq!(described(&setup.segment_requests()), expected);
    // The day's new orders and the one that arrived late but inside the lateness window; nothing twice.
    let mut orders = day1.orders.clone();
    for (key, count) in expected_order_events("day2", Some("day1")) {
        *orders.entry(key).or_default() += count;
    }
    assert_eq!(setup.events_by_key(), orders);
    assert_eq!(setup.checkpoint("pro-users").unwrap(), pro2);
    assert_eq!(setup.checkpoint("dormant-winback").unwrap(), dormant2);
}

#[test]
fn a_run_with_nothing_to_change_reads_each_segment_once_and_writes_nothing() {
    let setup = Setup::new();
    ok(&setup.sync("day1", &[]));
    let manifest = setup.manifest_bytes("pro-users").unwrap();
    setup.emulator.clear_requests();
    let out = setup.sync("day1", &["--format", "json"]);
    ok(&out);
    let none = BTreeSet::new();
    let reads: Vec<_> = [
        "pro-users",
        "winback-experiment",
        "enterprise-orgs",
        "beta-testers",
    ]
    .into_iter()
    .flat_map(|segment| expected_requests(segment, &none, &none, 1500))
    .collect();
    assert_eq!(described(&setup.emulator.requests()), reads);
    let report = json(&out);
    for sync in report["syncs"].as_array().unwrap() {
        assert_eq!(sync["outcome"], "nothing_to_change", "{sync}");
        // A segment sync reads its segment; the events sync has nothing to send and calls nothing.
        let reads = u64::from(sync["events"].is_null());
        assert_eq!(sync["calls"]["requests"], reads, "{sync}");
    }
    assert_eq!(report["syncs"].as_array().unwrap().len(), 5);
    assert_eq!(
        setup.manifest_bytes("pro-users").unwrap(),
        manifest,
        "an unchanged model leaves the checkpoint alone"
    );
}

#[test]
fn hand_edits_to_a_mirrored_standard_segment_are_repaired_by_the_next_run_and_reported_as_drift() {
    let setup = Setup::new();
    ok(&setup.sync("day1", &["pro-users"]));
    let pro1 = expected_pro_users("day1");
    let manifest = setup.manifest_bytes("pro-users").unwrap();
    // Someone edits the segment by hand: one member removed, one stranger added.
    let mut edited: Vec<String> = pro1.iter().skip(1).cloned().collect();
    edited.push("usr_added_by_hand".into());
    setup.seed(
        "pro-users",
        &edited.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    setup.emulator.clear_requests();
    let out = setup.sync("day1", &["pro-users", "--format", "json"]);
    ok(&out);
    assert_eq!(setup.members("pro-users", "user"), pro1);
    let first: BTreeSet<String> = pro1.iter().take(1).cloned().collect();
    let stranger: BTreeSet<String> = ["usr_added_by_hand".to_string()].into();
    assert_eq!(
        described(&setup.emulator.requests()),
        expected_requests("pro-users", &first, &stranger, 1500)
    );
    let report = &json(&out)["syncs"][0];
    assert_eq!(report["outcome"], "synced");
    assert_eq!(
        report["drift"],
        serde_json::json!({
            "added_by_hand": {"count": 1, "examples": ["usr_added_by_hand"]},
            "removed_by_hand": {"count": 1, "examples": [pro1.iter().next().unwrap()]},
        })
    );
    let history =
        std::fs::read_to_string(setup.project.path(".ldsync/state/pro-users/runs.jsonl")).unwrap();
    let last: Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(last["drift"], report["drift"]);
    assert_ne!(setup.manifest_bytes("pro-users").unwrap(), manifest);
    assert_eq!(
        setup.checkpoint("pro-users").unwrap(),
        pro1,
        "the run's checkpoint holds the same model keys"
    );
    // In step again: the next run reads the segment and finds nothing to do.
    setup.emulator.clear_requests();
    ok(&setup.sync("day1", &["pro-users"]));
    let none = BTreeSet::new();
    assert_eq!(
        described(&setup.emulator.requests()),
        expected_requests("pro-users", &none, &none, 1500)
    );
}

#[test]
fn hand_edits_are_repaired_within_the_removal_gates() {
    let setup = Setup::new();
    ok(&setup.sync("day1", &["pro-users"]));
    let pro1 = expected_pro_users("day1");
    // 600 strangers added by hand: removing them all is over gates.max_remove_count 500.
    let strangers: Vec<String> = (0..600).map(|i| format!("usr_hand_{i:03}")).collect();
    let edited: Vec<&str> = pro1.iter().chain(&strangers).map(String::as_str).collect();
    setup.seed("pro-users", &edited);
    setup.emulator.clear_requests();
    let out = setup.sync("day1", &["pro-users"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("it would remove 600 members, over gates.max_remove_count 500"),
        "{}",
        stdout(&out)
    );
    assert!(only_reads(&setup));
    ok(&setup.sync("day1", &["pro-users", "--override-gates"]));
    assert_eq!(setup.members("pro-users", "user"), pro1);
}

#[test]
fn removal_gates_stop_before_any_call_unless_overridden() {
    let setup = Setup::new();
    ok(&setup.sync("day1", &["enterprise-orgs"]));
    setup.project.edit_config(
        "    batch_size: 500\n",
        "    batch_size: 500\n    gates:\n      max_remove_count: 2\n",
    );
    let manifest = setup.manifest_bytes("enterprise-orgs").unwrap();
    setup.emulator.clear_requests();
    let out = setup.sync("day2", &["enterprise-orgs"]);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "stopped before any change: it would remove 3 members, over gates.max_remove_count 2"
        ),
        "{}",
        stdout(&out)
    );
    assert!(only_reads(&setup), "only the segment was read");
    assert_eq!(setup.manifest_bytes("enterprise-orgs").unwrap(), manifest);
    ok(&setup.sync("day2", &["enterprise-orgs", "--override-gates"]));
    assert_eq!(
        setup.members("enterprise-orgs", "organization"),
        expected_enterprise_orgs("day2")
    );
}

#[test]
fn big_segments_are_created_with_their_context_kind_and_fed_through_contexts() {
    let emulator_config = EmulatorConfig::default();
    let setup = Setup::with(emulator_config);
    setup.project.edit_config(
        "    segment: enterprise-orgs\n",
        "    segment: enterprise-big\n",
    );
    setup.project.edit_config(
        "    batch_size: 500\n    create_segment: standard\n",
        "    batch_size: 500\n    create_segment: big\n",
    );
    let out = setup.sync("day1", &["enterprise-orgs"]);
    ok(&out);
    let orgs1 = expected_enterprise_orgs("day1");
    let segment = setup
        .emulator
        .segment("default", "production", "enterprise-big")
        .unwrap();
    assert_eq!(segment["unbounded"], true);
    assert_eq!(segment["unboundedContextKind"], "organization");
    assert_eq!(setup.members("enterprise-big", "organization"), orgs1);
    let requests = described(&setup.emulator.requests());
    let mut expected = vec![
        (
            "GET".to_string(),
            format!("{SEGMENTS}/enterprise-big"),
            String::new(),
            vec![],
        ),
        (
            "GET".to_string(),
            "/api/v2/projects/default".to_string(),
            String::new(),
            vec![],
        ),
        (
            "GET".to_string(),
            "/api/v2/projects/default/environments/production".to_string(),
            String::new(),
            vec![],
        ),
        (
            "POST".to_string(),
            SEGMENTS.to_string(),
            "enterprise-big".to_string(),
            vec![],
        ),
    ];
    let keys: Vec<String> = orgs1.iter().cloned().collect();
    for chunk in keys.chunks(500) {
        expected.push((
            "POST".into(),
            format!("{SEGMENTS}/enterprise-big/contexts"),
            "included.add".into(),
            chunk.to_vec(),
        ));
    }
    assert_eq!(requests, expected);

    setup.emulator.clear_requests();
    ok(&setup.sync("day2", &["enterprise-orgs"]));
    let orgs2 = expected_enterprise_orgs("day2");
    assert_eq!(setup.members("enterprise-big", "organization"), orgs2);
    let removed: Vec<String> = difference(&orgs1, &orgs2).into_iter().collect();
    assert!(described(&setup.emulator.requests()).contains(&(
        "POST".into(),
        format!("{SEGMENTS}/enterprise-big/contexts"),
        "included.remove".into(),
        removed
    )));
}

/// Runs a sync that must fail with exit code `code`, and checks its message, that no write reached LaunchDarkly,
/// and that the checkpoint did not move.
fn assert_fails_cleanly(setup: &Setup, token: &str, args: &[&str], code: i32, message: &str) {
    let manifest = setup.manifest_bytes("pro-users");
    let before = setup.members("pro-users", "user");
    setup.emulator.clear_requests();
    let out = setup.sync_with_token("day2", token, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(message),
        "expected {message:?} in:\n{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains(message),
        "the summary repeats the error:\n{}",
        stdout(&out)
    );
    assert_eq!(
        setup.manifest_bytes("pro-users"),
        manifest,
        "the checkpoint did not move"
    );
    assert_eq!(setup.members("pro-users", "user"), before);
    assert!(
        setup.emulator.requests().iter().all(|r| !r.applied),
        "nothing was applied: {:?}",
        described(&setup.emulator.requests())
    );
}

#[test]
fn every_refusal_has_its_message_and_leaves_the_checkpoint_alone() {
    let setup = Setup::with_reader(EmulatorConfig::default());
    ok(&setup.sync("day1", &["pro-users"]));

    // A token LaunchDarkly does not know, and a key of the wrong kind.
    assert_fails_cleanly(
        &setup,
        "api-wrong",
        &["pro-users"],
        1,
        "LaunchDarkly refused the access token while reading segment `pro-users` (401",
    );
    assert_fails_cleanly(
        &setup,
        "sdk-0a1b2c3d-aaaa-bbbb-cccc-0123456789ab",
        &["pro-users"],
        1,
        "it is wrong or revoked, or it is an SDK key, mobile key or client-side ID",
    );
    refusals_of_what_does_not_exist(&setup);
    refusal_past_the_standard_segment_limit(&setup);
    refusal_by_the_role_then_finished_by_the_next_run(&setup);

    // No token at all.
    let out = setup.project.ldsync("day2", &["sync", "pro-users"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("the access token variable LD_ACCESS_TOKEN is not set"),
        "{}",
        stderr(&out)
    );
}

/// An environment, a project and a segment that do not exist, each restored after its refusal.
fn refusals_of_what_does_not_exist(setup: &Setup) {
    setup
        .project
        .edit_config("environment: production", "environment: staging");
    assert_fails_cleanly(
        setup,
        TOKEN,
        &["pro-users", "--full"],
        5,
        "environment `staging` does not exist in project `default` (404)",
    );
    setup
        .project
        .edit_config("environment: staging", "environment: production");
    setup
        .project
        .edit_config("project: default", "project: nope");
    assert_fails_cleanly(
        setup,
        TOKEN,
        &["pro-users", "--full"],
        5,
        "project `nope` does not exist in this LaunchDarkly account (404)",
    );
    setup
        .project
        .edit_config("project: nope", "project: default");

    setup
        .project
        .edit_config("    segment: pro-users\n", "    segment: pro-users-v2\n");
    setup.project.edit_config(
        "    create_segment: standard   #",
        "    # create_segment: standard   #",
    );
    assert_fails_cleanly(
        setup,
        TOKEN,
        &["pro-users", "--full"],
        1,
        "segment `pro-users-v2` does not exist in default/production; create it in LaunchDarkly, or set the sync's create_segment",
    );
    setup
        .project
        .edit_config("    segment: pro-users-v2\n", "    segment: pro-users\n");
    setup.project.edit_config(
        "    # create_segment: standard   #",
        "    create_segment: standard   #",
    );
}

/// A standard segment that the run would push past 15,000 targets (of every kind): stopped before any write.
fn refusal_past_the_standard_segment_limit(setup: &Setup) {
    let crowd: Vec<String> = (0..14_990).map(|i| format!("dev_crowd_{i:05}")).collect();
    let members: Vec<String> = expected_pro_users("day1").into_iter().collect();
    setup.emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            included: vec![("user".into(), members), ("device".into(), crowd)],
            ..SegmentSeed::standard("pro-users", "user", &[])
        },
    );
    assert_fails_cleanly(
        setup,
        TOKEN,
        &["pro-users"],
        6,
        "is a standard segment, which holds at most 15000 targets",
    );
}

/// Refused at the first write: the journal stays, so the next run finishes this one once the role is fixed.
fn refusal_by_the_role_then_finished_by_the_next_run(setup: &Setup) {
    setup.seed(
        "pro-users",
        &expected_pro_users("day1")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_fails_cleanly(
        setup,
        READER,
        &["pro-users"],
        1,
        "the access token's role may not updateIncluded",
    );
    assert!(
        setup
            .project
            .path(".ldsync/state/pro-users/journal.jsonl")
            .exists()
    );
    ok(&setup.sync("day2", &["pro-users"]));
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day2")
    );
}

#[test]
fn the_access_token_never_appears_in_output_logs_reports_or_state() {
    const CANARY: &str = "api-canary-7f3e9c2a-never-print-me";
    let mut config = EmulatorConfig::default();
    config.tokens.push(TokenGrant {
        token: CANARY.into(),
        actions: None,
    });
    let setup = Setup::with(config);
    let mut outputs = vec![
        setup.sync_with_token("day1", CANARY, &["--log-level", "trace"]),
        setup.sync_with_token(
            "day2",
            CANARY,
            &[
                "--log-format",
                "json",
                "--log-level",
                "trace",
                "--format",
                "json",
            ],
        ),
    ];
    // The same canary, refused: the error path must not echo it either.
    outputs.push(setup.sync_with_token(
        "day2",
        &format!("{CANARY}-revoked"),
        &["--log-level", "trace", "--full"],
    ));
    for args in [&["plan"][..], &["validate"][..]] {
        let mut command = setup.project.command("day2", args);
        outputs.push(command.env("LD_ACCESS_TOKEN", CANARY).output().unwrap());
    }
    ok(&outputs[0]);
    ok(&outputs[1]);
    assert_eq!(
        outputs[2].status.code(),
        Some(5),
        "{}\n{}",
        stdout(&outputs[2]),
        stderr(&outputs[2])
    );
    for out in &outputs {
        assert!(
            !stdout(out).contains("canary"),
            "stdout shows the token:\n{}",
            stdout(out)
        );
        assert!(
            !stderr(out).contains("canary"),
            "stderr shows the token:\n{}",
            stderr(out)
        );
    }
    let files = files_below(setup.project.dir.path());
    assert!(files.iter().any(|f| f.ends_with("runs.jsonl")));
    for file in files.iter().filter(|f| f.is_file()) {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"canary"),
            "{} holds the token",
            file.display()
        );
    }
}

/// For each batch of each run (`run id`, `batch number`), the statuses LaunchDarkly answered, in order.
fn answers_per_batch(requests: &[RecordedRequest]) -> BTreeMap<(String, String), Vec<u16>> {
    let mut answers: BTreeMap<(String, String), Vec<u16>> = BTreeMap::new();
    for request in requests.iter().filter(|r| r.method == "PATCH") {
        let comment = request.body.as_ref().unwrap()["comment"]
            .as_str()
            .unwrap()
            .to_string();
        let (run, batch) = comment.split_once(": ").unwrap();
        answers
            .entry((run.to_string(), batch.to_string()))
            .or_default()
            .push(request.status);
    }
    answers
}

#[test]
fn runs_converge_through_server_errors_slow_answers_and_lost_acknowledgements() {
    let setup = Setup::new();
    small_batches(&setup, 100);
    setup.emulator.set_faults(Faults {
        error_rate: 0.2,
        latency: Duration::from_millis(40),
        drop_ack_rate: 0.2,
        seed: 7,
        ..Faults::default()
    });
    let out = setup.sync("day1", &["pro-users", "--format", "json"]);
    ok(&out);
    let pro1 = expected_pro_users("day1");
    assert_eq!(setup.members("pro-users", "user"), pro1);
    assert_eq!(setup.checkpoint("pro-users").unwrap(), pro1);
    let requests = setup.emulator.requests();
    let answers = answers_per_batch(&requests);
    assert_eq!(answers.len(), pro1.len().div_ceil(100));
    for (batch, statuses) in &answers {
        // Retried only while no answer arrived (0: dropped after applying) or LaunchDarkly failed (503); once
        // acknowledged, never sent again.
        let (last, before) = statuses.split_last().unwrap();
        assert_eq!(*last, 200, "{batch:?}: {statuses:?}");
        assert!(
            before.iter().all(|s| *s == 0 || *s == 503),
            "{batch:?}: {statuses:?}"
        );
    }
    let dropped = requests.iter().filter(|r| r.status == 0).count();
    let failed = requests.iter().filter(|r| r.status == 503).count();
    assert!(
        dropped > 0 && failed > 0,
        "both faults were exercised ({dropped} dropped, {failed} failed)"
    );
    let faults = dropped + failed;
    let report = json(&out);
    assert_eq!(
        report["syncs"][0]["calls"]["retries"].as_u64().unwrap() as usize,
        faults
    );
}

#[test]
fn rate_limits_are_met_with_pacing_and_waits_of_every_header_shape() {
    for headers in [
        ThrottleHeaders::Full,
        ThrottleHeaders::RetryAfterOnly,
        ThrottleHeaders::ResetOnly,
    ] {
        let setup = Setup::new();
        small_batches(&setup, 300);
        setup.emulator.set_faults(Faults {
            rate_limit: Some(RateLimit {
                requests_per_window: 3,
                window: Duration::from_secs(1),
                headers,
            }),
            ..Faults::default()
        });
        let out = setup.sync("day1", &["pro-users", "--format", "json"]);
        ok(&out);
        let pro1 = expected_pro_users("day1");
        assert_eq!(setup.members("pro-users", "user"), pro1, "{headers:?}");
        let requests = setup.emulator.requests();
        let limited = requests.iter().filter(|r| r.status == 429).count();
        let report = json(&out);
        assert_eq!(
            report["syncs"][0]["calls"]["rate_limited"]
                .as_u64()
                .unwrap() as usize,
            limited
        );
        if headers == ThrottleHeaders::Full {
            assert_eq!(
                limited, 0,
                "with the budget in every answer, ldsync paces itself and meets no 429"
            );
        } else {
            assert!(limited > 0, "{headers:?}: the limit was met");
        }
        for (batch, statuses) in answers_per_batch(&requests) {
            let (last, before) = statuses.split_last().unwrap();
            assert_eq!(*last, 200, "{batch:?}");
            assert!(before.iter().all(|s| *s == 429), "{batch:?}: {statuses:?}");
        }
    }
}

#[test]
fn killed_runs_finish_exactly_and_never_resend_an_acknowledged_batch() {
    let setup = Setup::new();
    small_batches(&setup, 20);
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(15),
        ..Faults::default()
    });
    // A fixed seed: a failure replays with the same kill points.
    const SEED: u64 = 20261124;
    let mut rng = fastrand::Rng::with_seed(SEED);
    // (run id, batch index) acknowledged in a journal, and how many requests LaunchDarkly had seen by then.
    let mut acknowledged: Vec<(BTreeSet<(String, usize)>, usize)> = Vec::new();
    let mut kills = 0;
    // Kills that landed after at least one batch of the run was acknowledged: the interesting ones.
    let mut kills_mid_send = 0;
    // Sixteen runs, eight on each fixture day, each killed at a random moment unless it finished first.
    for round in 0..16 {
        let before = acknowledged_in_journal(&setup.project);
        let day = if round < 8 { "day1" } else { "day2" };
        let killed = sync_killed_at_random(&setup, day, &mut rng);
        if killed {
            kills += 1;
        }
        let after = acknowledged_in_journal(&setup.project);
        if killed && !after.is_subset(&before) {
            kills_mid_send += 1;
        }
        acknowledged.push((after, setup.emulator.requests().len()));
    }
    assert!(
        kills >= 8,
        "seed {SEED}: most runs were killed mid-way ({kills})"
    );
    assert!(
        kills_mid_send * 2 > kills,
        "seed {SEED}: most kills came after a batch was acknowledged ({kills_mid_send} of {kills})"
    );

    // A run left to finish brings the segment and the checkpoint to day 2 exactly.
    ok(&setup.sync("day2", &["pro-users"]));
    let pro2 = expected_pro_users("day2");
    assert_eq!(setup.members("pro-users", "user"), pro2);
    assert_eq!(
        setup.checkpoint("pro-users").unwrap(),
        pro2,
        "the checkpoint equals the segment"
    );
    assert!(
        !setup
            .project
            .path(".ldsync/state/pro-users/journal.jsonl")
            .exists()
    );
    // No batch recorded as acknowledged was sent again after that.
    let requests = setup.emulator.requests();
    for (acked, seen) in acknowledged {
        assert_not_resent(&requests[seen..], &acked);
    }
}

/// Starts `ldsync sync pro-users` on `day` and SIGKILLs it at a moment drawn from `rng`, unless it has finished by
/// then; whether it was killed.
fn sync_killed_at_random(setup: &Setup, day: &str, rng: &mut fastrand::Rng) -> bool {
    let mut child = setup
        .project
        .command(day, &["sync", "pro-users"])
        .env("LD_ACCESS_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A quarter of the kills land at a random moment of the first 300 ms (the model, the read, the journal
    // being written); the others once LaunchDarkly has applied 1 to 4 more batches, up to 15 ms later (before
    // or after the acknowledgement reached ldsync).
    let sent_before = applied_patches(setup);
    let target = if rng.u8(0..4) == 0 {
        Err(Duration::from_millis(rng.u64(0..300)))
    } else {
        Ok(rng.usize(1..=4))
    };
    let started = Instant::now();
    let killed = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        let due = match target {
            Err(moment) => started.elapsed() >= moment,
            Ok(batches) => applied_patches(setup) - sent_before >= batches,
        };
        if due {
            std::thread::sleep(Duration::from_millis(rng.u64(0..15)));
            break child.try_wait().unwrap().is_none();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if killed {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    killed
}

#[test]
fn detailed_exit_codes_tell_a_run_that_sent_changes_from_a_quiet_one() {
    let setup = Setup::new();
    let code = |out: &Output| out.status.code();
    let busy = setup.sync("day1", &["pro-users", "--detailed-exitcode"]);
    assert_eq!(code(&busy), Some(3), "{}", stderr(&busy));
    let quiet = setup.sync("day1", &["pro-users", "--detailed-exitcode"]);
    assert_eq!(code(&quiet), Some(0), "{}", stderr(&quiet));
    // Without the flag a run that sent changes is plain success.
    let busy = setup.sync("day2", &["pro-users"]);
    assert_eq!(code(&busy), Some(0), "{}", stderr(&busy));
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day2")
    );
}

/// The example pointed at an emulator that holds none of its segments.
fn setup_without_segments() -> Setup {
    let emulator = ldsync_emulator::Emulator::start(EmulatorConfig::default()).unwrap();
    let project = Project::example();
    project.edit_config(
        "instance: us ",
        &format!("base_url: {} ", emulator.base_url()),
    );
    Setup { project, emulator }
}

#[test]
fn a_remove_sync_on_a_missing_segment_has_nothing_to_remove_and_refuses_keys_to_remove() {
    let setup = setup_without_segments();
    // Day 1: no tester has churned; the segment does not exist. Nothing to remove: a success that says why.
    assert!(expected_churned_beta_users("day1").is_empty());
    let out = setup.sync("day1", &["churned-beta", "--format", "json"]);
    ok(&out);
    let report = &json(&out)["syncs"][0];
    assert_eq!(report["outcome"], "nothing_to_change");
    let notes = report["notes"].to_string();
    assert!(
        notes.contains(
            "segment `beta-testers` does not exist in LaunchDarkly, so this remove sync has nothing to remove \
             from it"
        ),
        "{notes}"
    );
    assert!(!notes.contains("real membership"), "{notes}");
    assert_eq!(
        setup.checkpoint("churned-beta"),
        None,
        "no checkpoint claims a membership"
    );
    assert!(only_reads(&setup));

    // Day 2: two testers churn. Removing them from a segment that does not exist is an error, and says so.
    let churned: Vec<String> = expected_churned_beta_users("day2").into_iter().collect();
    assert_eq!(churned.len(), 2);
    let out = setup.sync("day2", &["churned-beta"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let expected = format!(
        "segment `beta-testers` does not exist in default/production, so the keys this remove sync would remove \
         from it, 2 ({}), cannot be removed; a remove sync never creates its segment: create it in LaunchDarkly, or \
         correct the sync's segment key. Nothing was sent and the checkpoint did not move",
        churned.join(", ")
    );
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("no longer exists"),
        "{}",
        stderr(&out)
    );
    assert!(only_reads(&setup));
    assert_eq!(setup.checkpoint("churned-beta"), None);

    // Once the segment exists, the same day goes through (removing its only member is over the percent gate).
    setup.seed("beta-testers", &[&churned[0]]);
    ok(&setup.sync("day2", &["churned-beta", "--override-gates"]));
    assert!(setup.members("beta-testers", "user").is_empty());
    assert_eq!(
        setup.checkpoint("churned-beta").unwrap(),
        churned.into_iter().collect::<BTreeSet<String>>()
    );
}

/// The `sh` block of README's emulator walk-through.
fn readme_walk_through() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("### Trying it without an account: the emulator")
        .nth(1)
        .unwrap();
    let block = section.split("```sh\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_string()
}

#[test]
fn readme_emulator_walk_through_runs_clean_on_both_days() {
    // The emulator README starts by hand is this test's own, on a port of its own; the rest runs as written.
    let setup = setup_without_segments();
    let port = setup
        .emulator
        .base_url()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let script = readme_walk_through().replace("8765", &port);
    let edit = format!(
        "# in connector.yaml: launchdarkly: base_url: http://127.0.0.1:{port} (instead of instance: us)"
    );
    assert!(script.contains(&edit), "{script}");
    // That edit is `setup_without_segments`'s.
    let cargo = format!(
        r#"cargo() {{
  case "$*" in
    "run -p ldsync-emulator -- --port {port}") ;;
    "run -- "*) shift 2; "{ldsync}" "$@" ;;
    *) echo "README runs an unexpected cargo $*" >&2; return 99 ;;
  esac
}}
set -euo pipefail
"#,
        ldsync = env!("CARGO_BIN_EXE_ldsync")
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{cargo}{script}"))
        .current_dir(setup.project.dir.path())
        .env_remove("LDSYNC_CONFIG")
        .env_remove("LDSYNC_LOG")
        .env_remove("LD_ACCESS_TOKEN")
        .env_remove("LDSYNC_EXAMPLE_DAY")
        .output()
        .unwrap();
    ok(&out);
    let testers: BTreeSet<String> = read_fixture("day1", "users")
        .iter()
        .filter(|u| u.get("beta_opt_in") == "true" && !u.get("user_id").is_empty())
        .map(|u| u.get("user_id").to_string())
        .collect();
    assert_eq!(
        setup.members("beta-testers", "user"),
        difference(&testers, &expected_churned_beta_users("day2")),
        "day 2 removed the testers whose accounts churned"
    );
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day2")
    );
    assert_eq!(
        setup.members("enterprise-orgs", "organization"),
        expected_enterprise_orgs("day2")
    );
    let mut dormant = expected_dormant_users("day1");
    dormant.extend(expected_dormant_users("day2"));
    assert_eq!(setup.members("winback-experiment", "user"), dormant);
}
