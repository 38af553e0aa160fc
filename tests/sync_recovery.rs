//! Syncs that never wedge: what a run does when LaunchDarkly holds keys as excluded, refuses a batch for good,
//! keeps its clock elsewhere, races ldsync to create a segment, or has been edited by hand; and what it does with a
//! wrong token when nothing changed. Each test runs the real binary against the emulator and checks the segment,
//! the requests LaunchDarkly saw, the journal and checkpoint on disk, and the message.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ldsync_emulator::{EmulatorConfig, Faults, RateLimit, SegmentSeed, ThrottleHeaders};
use serde_json::Value;

use crate::util::emulated::*;
use crate::util::*;

fn journal_path(setup: &Setup, sync: &str) -> std::path::PathBuf {
    setup
        .project
        .path(&format!(".ldsync/state/{sync}/journal.jsonl"))
}

fn last_run_record(setup: &Setup, sync: &str) -> Value {
    let history = std::fs::read_to_string(
        setup
            .project
            .path(&format!(".ldsync/state/{sync}/runs.jsonl")),
    )
    .unwrap();
    serde_json::from_str(history.lines().last().unwrap()).unwrap()
}

/// Every key any `addIncludedTargets` request carried.
fn keys_added(setup: &Setup) -> BTreeSet<String> {
    keys_sent(setup, "addIncludedTargets")
}

/// Every key the requests of `kind` (an instruction, or `included.add` / `included.remove`) carried.
fn keys_sent(setup: &Setup, kind: &str) -> BTreeSet<String> {
    described(&setup.emulator.requests())
        .into_iter()
        .filter(|(_, _, instruction, _)| instruction == kind)
        .flat_map(|(_, _, _, keys)| keys)
        .collect()
}

fn keys(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|k| k.to_string()).collect()
}

#[test]
fn keys_excluded_in_launchdarkly_are_planned_around_never_sent_and_named() {
    let setup = Setup::new();
    let pro1 = expected_pro_users("day1");
    let excluded: Vec<String> = pro1.iter().step_by(300).take(3).cloned().collect();
    setup.emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            excluded: vec![("user".into(), excluded.clone())],
            ..SegmentSeed::standard("pro-users", "user", &[])
        },
    );

    // plan --full reads the segment and shows what sync would leave out.
    let plan = setup
        .project
        .command("day1", &["plan", "pro-users", "--full", "--format", "json"])
        .env("LD_ACCESS_TOKEN", TOKEN)
        .output()
        .unwrap();
    ok(&plan);
    let planned = &json(&plan)["syncs"][0];
    assert_eq!(string_list(&planned["excluded"]), excluded);
    assert_eq!(
        strings(&planned["adds"]),
        difference(&pro1, &excluded.iter().cloned().collect())
    );

    let out = setup.sync("day1", &["pro-users", "--format", "json"]);
    ok(&out);
    let wanted = difference(&pro1, &excluded.iter().cloned().collect());
    assert_eq!(setup.members("pro-users", "user"), wanted);
    assert!(keys_added(&setup).is_disjoint(&excluded.iter().cloned().collect()));
    let report = &json(&out)["syncs"][0];
    let named = serde_json::json!({"count": 3, "examples": excluded});
    assert_eq!(report["excluded"], named);
    assert_eq!(last_run_record(&setup, "pro-users")["excluded"], named);
    let table = setup.sync("day1", &["pro-users"]);
    ok(&table);
    assert!(
        stdout(&table).contains(&format!(
            "3 model keys are excluded targets of segment `pro-users` in LaunchDarkly, which refuses to include \
             them: they are not added: 3 ({})",
            excluded.join(", ")
        )),
        "{}",
        stdout(&table)
    );
}

/// The example with pro-users sent in batches of 100 keys, and LaunchDarkly refusing `refused` for good.
fn refusing(refused: &str) -> Setup {
    let setup = Setup::new();
    small_batches(&setup, 100);
    setup.emulator.set_faults(Faults {
        refused_keys: keys(&[refused]),
        ..Faults::default()
    });
    setup
}

/// Leaves `key` out of the pro_users model, as a user would once the refusal named it.
fn correct_model(setup: &Setup, key: &str) {
    let sql = std::fs::read_to_string(setup.project.path("sql/pro_users.sql")).unwrap();
    setup.project.write(
        "sql/pro_users.sql",
        &format!("{sql}\n  AND user_id <> '{key}'\n"),
    );
}

#[test]
fn a_refused_batch_ends_the_run_and_the_next_run_plans_afresh_instead_of_replaying_it() {
    let pro1 = expected_pro_users("day1");
    let sorted: Vec<String> = pro1.iter().cloned().collect();
    let refused = sorted[150].clone();
    for full in [false, true] {
        let setup = refusing(&refused);
        let out = setup.sync("day1", &["pro-users"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let total = pro1.len().div_ceil(100);
        for expected in [
            format!("LaunchDarkly refused batch 2 of {total} of run "),
            format!("(add 100 ({}", sorted[100]),
            format!("context key `{refused}` cannot be included"),
            "1 batches were acknowledged and the checkpoint did not move".to_string(),
            "the next `ldsync sync` will not send this run again: it plans afresh from the checkpoint and the \
             segment's real state"
                .to_string(),
        ] {
            assert!(stderr(&out).contains(&expected), "{expected:?} in {}", stderr(&out));
        }
        let journal = std::fs::read_to_string(journal_path(&setup, "pro-users")).unwrap();
        let refusal: Value = serde_json::from_str(journal.lines().last().unwrap()).unwrap();
        assert_eq!(
            (refusal["record"].as_str(), refusal["index"].as_u64()),
            (Some("refused"), Some(1))
        );
        assert_eq!(setup.manifest_bytes("pro-users"), None, "no checkpoint yet");
        let first_batch: BTreeSet<String> = sorted[..100].iter().cloned().collect();
        assert_eq!(setup.members("pro-users", "user"), first_batch);

        // The model is corrected; LaunchDarkly still refuses the key. The refused run is not replayed.
        correct_model(&setup, &refused);
        setup.emulator.clear_requests();
        let args: &[&str] = if full {
            &["pro-users", "--full", "--format", "json"]
        } else {
            &["pro-users", "--format", "json"]
        };
        let out = setup.sync("day1", args);
        ok(&out);
        let wanted = difference(&pro1, &keys(&[&refused]));
        assert_eq!(setup.members("pro-users", "user"), wanted);
        assert_eq!(setup.checkpoint("pro-users").unwrap(), wanted);
        assert!(!journal_path(&setup, "pro-users").exists());
        assert_eq!(
            keys_added(&setup),
            difference(&wanted, &first_batch),
            "planned against the segment's real state: the acknowledged batch is not sent again"
        );
        let notes = json(&out)["syncs"][0]["notes"].to_string();
        let expected = if full {
            "--full compares with the segment's real membership instead"
        } else {
            "was refused by LaunchDarkly"
        };
        assert!(notes.contains(expected), "{notes}");
    }
}

#[test]
fn full_abandons_an_unfinished_run_whose_settings_changed() {
    let setup = Setup::with_reader(EmulatorConfig::default());
    // Refused by the role: a journal stays, to be finished once the role is fixed.
    let out = setup.sync_with_token("day1", READER, &["pro-users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(journal_path(&setup, "pro-users").exists());
    setup
        .project
        .edit_config("    segment: pro-users\n", "    segment: paid-users\n");
    let out = setup.sync("day1", &["pro-users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "was started with other settings (segment: pro-users → paid-users); restore them so that it can \
             finish, or run `ldsync sync --full` to abandon it"
        ),
        "{}",
        stderr(&out)
    );
    ok(&setup.sync("day1", &["pro-users", "--full"]));
    assert!(!journal_path(&setup, "pro-users").exists());
    assert_eq!(
        setup.members("paid-users", "user"),
        expected_pro_users("day1")
    );
}

/// Syncs pro-users in batches of 100 against a LaunchDarkly whose clock is `skew_ms` off, which allows two
/// requests per 2-second window and says only when the window resets.
fn sync_against_a_skewed_clock(skew_ms: i64) -> (std::process::Output, Duration, usize) {
    let setup = Setup::new();
    small_batches(&setup, 300);
    setup.emulator.set_faults(Faults {
        rate_limit: Some(RateLimit {
            requests_per_window: 2,
            window: Duration::from_secs(2),
            headers: ThrottleHeaders::ResetOnly,
        }),
        clock_skew_ms: skew_ms,
        ..Faults::default()
    });
    let started = Instant::now();
    let out = setup.sync("day1", &["pro-users", "--format", "json"]);
    let took = started.elapsed();
    ok(&out);
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day1")
    );
    (out, took, answered(&setup, 429))
}

#[test]
fn rate_limit_resets_are_read_on_launchdarklys_clock_however_far_ours_is() {
    let hour = 3_600_000;
    for skew_ms in [-hour, hour] {
        let (out, took, limited) = sync_against_a_skewed_clock(skew_ms);
        let requests = json(&out)["syncs"][0]["calls"]["requests"]
            .as_u64()
            .unwrap();
        // A GET and the batches, two a window: the run needs a few windows, and each 429 costs at most one
        // reset's wait, not an hour (ahead) nor a burst of retries (behind).
        assert!(
            took < Duration::from_secs(30),
            "skew {skew_ms} ms: {requests} requests took {took:?}"
        );
        assert!(
            limited as u64 <= requests / 2 + 1,
            "skew {skew_ms} ms: {limited} 429s for {requests} requests"
        );
    }
}

#[test]
fn a_wrong_token_fails_even_a_run_with_nothing_to_change() {
    let setup = Setup::new();
    ok(&setup.sync("day1", &["dormant-winback"]));
    setup.emulator.clear_requests();
    for (token, message) in [
        (
            "api-revoked",
            "LaunchDarkly refused the access token while reading segment `winback-experiment` (401",
        ),
        ("Bearer api-emulator-token", "without `Bearer`"),
        (
            "sdk-0a1b2c3d-aaaa-bbbb-cccc-0123456789ab",
            "SDK keys, mobile keys and client-side IDs cannot call",
        ),
    ] {
        let out = setup.sync_with_token("day1", token, &["dormant-winback"]);
        assert_eq!(out.status.code(), Some(1), "{token}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{token}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("use a personal or service access token"),
            "{}",
            stderr(&out)
        );
    }
    assert!(
        setup
            .emulator
            .requests()
            .iter()
            .all(|r| r.method == "GET" && r.status == 401)
    );
}

/// A big segment `enterprise-orgs` that already holds one organization ldsync never saw.
fn big_segment_with_a_member(setup: &Setup) {
    setup.emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            key: "enterprise-orgs".into(),
            name: "enterprise-orgs".into(),
            unbounded: true,
            context_kind: "organization".into(),
            included: vec![("organization".into(), vec!["acct_someone".into()])],
            excluded: vec![],
        },
    );
}

#[test]
fn first_add_and_remove_runs_proceed_against_a_big_segment_that_has_members() {
    let orgs1 = expected_enterprise_orgs("day1");
    for (mode, expected) in [
        (
            "add",
            orgs1.union(&keys(&["acct_someone"])).cloned().collect(),
        ),
        ("remove", keys(&["acct_someone"])),
    ] {
        let setup = Setup::new();
        big_segment_with_a_member(&setup);
        setup.project.edit_config(
            "    context_kind: organization\n    mode: mirror\n",
            &format!("    context_kind: organization\n    mode: {mode}\n"),
        );
        if mode == "remove" {
            // Every model key is a member to take out: seed them, so the removal is visible.
            let mut members: Vec<String> = orgs1.iter().cloned().collect();
            members.push("acct_someone".into());
            setup.emulator.seed_segment(
                "default",
                "production",
                SegmentSeed {
                    key: "enterprise-orgs".into(),
                    name: "enterprise-orgs".into(),
                    unbounded: true,
                    context_kind: "organization".into(),
                    included: vec![("organization".into(), members)],
                    excluded: vec![],
                },
            );
        }
        // Emptying the segment of the model's keys is over the default max_remove_percent.
        let out = setup.sync("day1", &["enterprise-orgs", "--override-gates"]);
        ok(&out);
        assert_eq!(
            setup.members("enterprise-orgs", "organization"),
            expected,
            "{mode}"
        );
        assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), orgs1);
    }
    // Mirror reads the members it would have to remove through an export: removing the stranger is all of the
    // segment's members, which the percent gate stops; let through, the stranger goes.
    let setup = Setup::new();
    big_segment_with_a_member(&setup);
    let out = setup.sync("day1", &["enterprise-orgs"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("it would remove 1 of 1 members (100.0%)"),
        "{}",
        stdout(&out)
    );
    ok(&setup.sync("day1", &["enterprise-orgs", "--override-gates"]));
    assert_eq!(setup.members("enterprise-orgs", "organization"), orgs1);
    assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), orgs1);
}

/// pro-users pointed at a new segment `pro-users-v2` that someone else creates, as `racer`, just before ldsync's
/// create arrives, which LaunchDarkly answers with `duplicate_status`.
fn racing(duplicate_status: u16, racer: SegmentSeed) -> Setup {
    let setup = Setup::with(EmulatorConfig {
        duplicate_status,
        ..EmulatorConfig::default()
    });
    setup
        .project
        .edit_config("    segment: pro-users\n", "    segment: pro-users-v2\n");
    setup
        .emulator
        .create_before_next_create("default", "production", racer);
    setup
}

#[test]
fn a_segment_created_by_someone_else_first_is_read_back_and_checked() {
    for duplicate_status in [409, 400] {
        // The racer made what the sync would make: the run carries on into it.
        let setup = racing(
            duplicate_status,
            SegmentSeed::standard("pro-users-v2", "user", &["usr_racer"]),
        );
        ok(&setup.sync("day1", &["pro-users"]));
        let mut expected = expected_pro_users("day1");
        expected.insert("usr_racer".into());
        assert_eq!(
            setup.members("pro-users-v2", "user"),
            expected,
            "{duplicate_status}: a first run's plan was made before the racer's member existed"
        );
        let creates: Vec<u16> = setup
            .emulator
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.status)
            .collect();
        assert_eq!(creates, [duplicate_status]);

        // The racer made a big segment: the run stops, naming both.
        let setup = racing(
            duplicate_status,
            SegmentSeed {
                unbounded: true,
                context_kind: "device".into(),
                ..SegmentSeed::standard("pro-users-v2", "device", &[])
            },
        );
        let out = setup.sync("day1", &["pro-users"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains(
                "segment `pro-users-v2` was created by someone else while this run was creating it, as a big \
                 segment of context kind `device`, but this sync creates a standard segment; nothing was sent"
            ),
            "{duplicate_status}: {}",
            stderr(&out)
        );
        assert!(
            setup
                .emulator
                .requests()
                .iter()
                .all(|r| r.method != "PATCH")
        );
        assert_eq!(setup.manifest_bytes("pro-users"), None);
    }
}

#[test]
fn run_ids_are_time_ordered_uuid_v7() {
    let setup = Setup::new();
    for day in ["day1", "day1", "day2"] {
        ok(&setup.sync(day, &["pro-users"]));
    }
    let history =
        std::fs::read_to_string(setup.project.path(".ldsync/state/pro-users/runs.jsonl")).unwrap();
    let ids: Vec<String> = history
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(parts[2].starts_with('7'), "version 7: {id}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "unique, and sorted as the runs happened");
}

/// Gates of each kind, in plan and in sync, for the mirror sync (pro-users) and the remove sync (churned-beta).
#[test]
fn removal_gates_fire_in_plan_and_sync_in_mirror_and_remove_mode() {
    let setup = Setup::new();
    // beta-testers holds every beta tester, so churned testers really are members to remove.
    let testers: BTreeSet<String> = read_fixture("day2", "users")
        .iter()
        .filter(|u| u.get("beta_opt_in") == "true" && !u.get("user_id").trim().is_empty())
        .map(|u| u.get("user_id").to_string())
        .collect();
    setup.seed(
        "beta-testers",
        &testers.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    ok(&setup.sync("day1", &["pro-users"]));
    let pro_removed = difference(&expected_pro_users("day1"), &expected_pro_users("day2")).len();
    let churned = expected_churned_beta_users("day2").len();
    assert!(pro_removed > 1 && churned > 1, "{pro_removed} {churned}");

    // Gates tighter than day 2's removals: a percent gate on pro-users, a count gate on churned-beta.
    setup.project.edit_config(
        "    gates:\n      max_remove_percent: 5\n      max_remove_count: 500\n",
        "    gates:\n      max_remove_percent: 0.01\n",
    );
    setup.project.edit_config(
        "    mode: remove\n",
        "    mode: remove\n    gates:\n      max_remove_count: 1\n",
    );
    let cases = [
        (
            "pro-users",
            "day2",
            format!("it would remove {pro_removed} of "),
        ),
        (
            "churned-beta",
            "day2",
            format!("it would remove {churned} members, over gates.max_remove_count 1"),
        ),
    ];
    for (sync, day, message) in &cases {
        assert_plan_and_sync_stop_at_the_gate(&setup, sync, day, message);
    }

    // The remove sync's percent gate is a share of the segment's members, which only sync can read.
    setup.project.edit_config(
        "    gates:\n      max_remove_count: 1\n",
        "    gates:\n      max_remove_percent: 0.1\n",
    );
    let out = setup.sync("day2", &["churned-beta"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "it would remove {churned} of {} members",
            testers.len()
        )),
        "{}",
        stdout(&out)
    );
    ok(&setup.sync("day2", &["churned-beta", "--override-gates"]));
    assert_eq!(
        setup.members("beta-testers", "user"),
        difference(&testers, &expected_churned_beta_users("day2"))
    );
}

/// Both `plan` and `sync` of `sync` on `day` stop at a gate with exit code 4 and `message`; the sync only reads and
/// leaves the checkpoint alone.
fn assert_plan_and_sync_stop_at_the_gate(setup: &Setup, sync: &str, day: &str, message: &str) {
    let plan = setup
        .project
        .ldsync(day, &["plan", sync, "--detailed-exitcode"]);
    assert_eq!(
        plan.status.code(),
        Some(4),
        "plan {sync}: {}",
        stdout(&plan)
    );
    assert!(
        stdout(&plan).contains(message),
        "plan {sync}: {}",
        stdout(&plan)
    );
    let manifest = setup.manifest_bytes(sync);
    setup.emulator.clear_requests();
    let out = setup.sync(day, &[sync]);
    assert_eq!(out.status.code(), Some(4), "sync {sync}: {}", stderr(&out));
    assert!(
        stdout(&out).contains(message),
        "sync {sync}: {}",
        stdout(&out)
    );
    assert!(only_reads(setup));
    assert_eq!(setup.manifest_bytes(sync), manifest);
}

#[test]
fn optimistic_locking_conflicts_are_retried_until_the_segment_is_exact() {
    let setup = Setup::new();
    small_batches(&setup, 100);
    setup.emulator.set_faults(Faults {
        conflict_rate: 0.3,
        seed: 11,
        ..Faults::default()
    });
    let out = setup.sync("day1", &["pro-users", "--format", "json"]);
    ok(&out);
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day1")
    );
    let conflicts = answered(&setup, 409) as u64;
    assert!(conflicts > 0);
    assert_eq!(
        json(&out)["syncs"][0]["calls"]["server_errors"].as_u64(),
        Some(conflicts)
    );
}

#[test]
fn a_role_denial_answered_401_names_the_role_action_too() {
    let setup = Setup::with_reader(EmulatorConfig {
        role_denial_status: 401,
        ..EmulatorConfig::default()
    });
    let out = setup.sync_with_token("day1", READER, &["pro-users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "LaunchDarkly refused the access token while adding targets to segment `pro-users` (401"
        ) && stderr(&out).contains("or its role may not `updateIncluded`"),
        "{}",
        stderr(&out)
    );
    assert!(
        journal_path(&setup, "pro-users").exists(),
        "kept, to finish once the role is fixed"
    );
}

#[test]
fn runs_of_one_sync_never_overlap_a_second_stops_naming_the_first_or_waits_for_it() {
    let setup = Setup::new();
    small_batches(&setup, 200);
    setup.emulator.set_faults(Faults {
        latency: Duration::from_millis(250),
        ..Faults::default()
    });
    let first = setup
        .project
        .command("day1", &["sync", "pro-users", "--format", "json"])
        .env("LD_ACCESS_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = setup.project.path(".ldsync/state/pro-users/lock");
    let started = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|holder| holder.starts_with("run ")) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first run took its lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let holder = format!("process {} on ", first.id());

    // No wait configured: the second run stops at once, naming the first, and sends nothing.
    let out = setup.sync("day1", &["pro-users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another run of sync `pro-users` is under way (run ")
            && stderr(&out).contains(&holder)
            && stderr(&out).contains("set state.lock_wait to wait for it instead"),
        "{}",
        stderr(&out)
    );
    assert_eq!(last_run_record(&setup, "pro-users")["calls"]["requests"], 0);

    // With state.lock_wait, the next one waits for the first to finish, then finds nothing left to do.
    setup.project.edit_config(
        "  directory: .ldsync/state\n",
        "  directory: .ldsync/state\n  lock_wait: 60s\n",
    );
    let out = setup.sync("day1", &["pro-users", "--format", "json"]);
    let first = first.wait_with_output().unwrap();
    ok(&first);
    ok(&out);
    assert_eq!(json(&first)["syncs"][0]["outcome"], "synced");
    assert_eq!(json(&out)["syncs"][0]["outcome"], "nothing_to_change");
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day1")
    );
}

#[test]
fn temporary_files_left_by_a_killed_run_are_removed_by_the_next_run_and_nothing_else() {
    let setup = Setup::new();
    ok(&setup.sync("day1", &["pro-users", "order-events"]));
    let dir = |sync: &str| setup.project.path(&format!(".ldsync/state/{sync}"));
    let names = |sync: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir(sync))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let committed = (names("pro-users"), names("order-events"));

    // What a run killed in the middle of writing leaves: the temporary files of atomic writes (a dot, the file's
    // name, a dot and six random letters or digits) and a half-written snapshot.
    let left_by_a_kill = [
        ("pro-users", ".manifest.json.Ab3xYz"),
        ("pro-users", ".journal.jsonl.q7W2e9"),
        (
            "pro-users",
            ".snapshot-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.parquet.partial",
        ),
        ("order-events", ".events-checkpoint.json.Zx98Cv"),
        ("order-events", ".journal.jsonl.000000"),
    ];
    // Files of the same directories that are not ldsync's temporary files.
    let someone_elses = [
        ("pro-users", "notes.txt"),
        ("pro-users", ".manifest.json.bak"),
        ("pro-users", ".manifest.json.Ab3xYz.keep"),
        ("order-events", ".events-checkpoint.json"),
    ];
    for (sync, name) in left_by_a_kill.iter().chain(&someone_elses) {
        std::fs::write(dir(sync).join(name), b"half written").unwrap();
    }

    let out = setup.sync("day2", &["pro-users", "order-events", "--format", "json"]);
    ok(&out);
    for (sync, name) in left_by_a_kill {
        assert!(!dir(sync).join(name).exists(), "{sync}/{name} is removed");
    }
    for (sync, name) in someone_elses {
        assert_eq!(
            std::fs::read(dir(sync).join(name)).unwrap(),
            b"half written",
            "{sync}/{name} is left alone"
        );
    }

    // The run itself is what it would have been without them.
    let report = json(&out);
    let pro = report["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sync"] == "pro-users")
        .unwrap();
    assert_eq!(pro["outcome"], "synced", "{pro}");
    let (day1, day2) = (expected_pro_users("day1"), expected_pro_users("day2"));
    assert_eq!(
        pro["adds"].as_u64().unwrap(),
        difference(&day2, &day1).len() as u64
    );
    assert_eq!(
        pro["removes"].as_u64().unwrap(),
        difference(&day1, &day2).len() as u64
    );
    assert_eq!(setup.members("pro-users", "user"), day2);
    assert_eq!(setup.checkpoint("pro-users").unwrap(), day2);
    let mut sent = expected_order_events("day1", None);
    for (key, count) in expected_order_events("day2", Some("day1")) {
        *sent.entry(key).or_default() += count;
    }
    assert_eq!(setup.events_by_key(), sent);

    // Only the checkpoint's files changed: a new manifest, snapshot and run record, no temporary file.
    let someone_elses_names = |sync: &str| {
        someone_elses
            .iter()
            .filter(|(s, _)| *s == sync)
            .map(|(_, name)| name.to_string())
            .collect::<BTreeSet<String>>()
    };
    let left = names("pro-users");
    let snapshots =
        |names: &BTreeSet<String>| names.iter().filter(|n| n.starts_with("snapshot-")).count();
    assert_eq!(snapshots(&left), 1, "{left:?}");
    assert_eq!(
        left.iter()
            .filter(|n| !n.starts_with("snapshot-"))
            .cloned()
            .collect::<BTreeSet<String>>(),
        committed
            .0
            .iter()
            .filter(|n| !n.starts_with("snapshot-"))
            .cloned()
            .chain(someone_elses_names("pro-users"))
            .collect()
    );
    assert_eq!(
        names("order-events"),
        committed
            .1
            .iter()
            .cloned()
            .chain(someone_elses_names("order-events"))
            .collect()
    );
}

#[test]
fn a_key_left_out_as_excluded_in_add_mode_is_added_once_its_exclusion_is_lifted() {
    let setup = Setup::new();
    let dormant = expected_dormant_users("day1");
    let excluded = dormant.iter().nth(7).unwrap().clone();
    let seed = |excluded: &[&str], included: &[&str]| {
        setup.emulator.seed_segment(
            "default",
            "production",
            SegmentSeed {
                excluded: vec![(
                    "user".into(),
                    excluded.iter().map(|k| k.to_string()).collect(),
                )],
                ..SegmentSeed::standard("winback-experiment", "user", included)
            },
        );
    };
    seed(&[&excluded], &[]);
    ok(&setup.sync("day1", &["dormant-winback"]));
    let sent = difference(&dormant, &keys(&[&excluded]));
    assert_eq!(setup.members("winback-experiment", "user"), sent);
    assert_eq!(
        setup.checkpoint("dormant-winback").unwrap(),
        sent,
        "the checkpoint holds what LaunchDarkly was asked to hold, not the key left out"
    );

    // Someone lifts the exclusion in LaunchDarkly: the next run adds the key, and only it.
    let held: Vec<&str> = sent.iter().map(String::as_str).collect();
    seed(&[], &held);
    setup.emulator.clear_requests();
    ok(&setup.sync("day1", &["dormant-winback"]));
    assert_eq!(
        described(&setup.emulator.requests()),
        expected_requests(
            "winback-experiment",
            &keys(&[&excluded]),
            &BTreeSet::new(),
            1500
        )
    );
    assert_eq!(setup.members("winback-experiment", "user"), dormant);
    assert_eq!(setup.checkpoint("dormant-winback").unwrap(), dormant);
}

/// The example's enterprise-orgs mirror sync on a big segment `enterprise-big`, in batches of 5.
fn big_mirror(setup: &Setup) {
    setup.project.edit_config(
        "    segment: enterprise-orgs\n",
        "    segment: enterprise-big\n",
    );
    setup.project.edit_config(
        "    batch_size: 500\n    create_segment: standard\n",
        "    batch_size: 5\n    create_segment: big\n",
    );
}

/// Leaves `left_out` out of the enterprise_accounts model.
fn enterprise_model_without(setup: &Setup, left_out: &[String]) {
    let sql = std::fs::read_to_string(repo().join("sql/enterprise_accounts.sql")).unwrap();
    let list: Vec<String> = left_out.iter().map(|k| format!("'{k}'")).collect();
    let filter = if list.is_empty() {
        String::new()
    } else {
        format!("\n  AND account_id NOT IN ({})", list.join(", "))
    };
    setup
        .project
        .write("sql/enterprise_accounts.sql", &format!("{sql}{filter}\n"));
}

/// Keys that a refused run added in an acknowledged batch, then left the model, are removed from a big segment
/// (which LaunchDarkly cannot list) by the next run, on both state stores.
fn an_abandoned_runs_acknowledged_batches_are_not_forgotten(setup: &Setup) {
    big_mirror(setup);
    let orgs: Vec<String> = expected_enterprise_orgs("day1").into_iter().collect();
    // Day 1 without ten organizations, committed; then the ten enter: two batches of adds, the second refused.
    let ten: Vec<String> = orgs[..10].to_vec();
    enterprise_model_without(setup, &ten);
    ok(&setup.sync("day1", &["enterprise-orgs"]));
    enterprise_model_without(setup, &[]);
    setup.emulator.set_faults(Faults {
        refused_keys: keys(&[&ten[7]]),
        ..Faults::default()
    });
    let out = setup.sync("day1", &["enterprise-orgs"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("LaunchDarkly refused batch 2 of 2"),
        "{}",
        stderr(&out)
    );
    let members = || setup.members("enterprise-big", "organization");
    assert!(
        members().contains(&ten[0]),
        "the acknowledged batch added it"
    );

    // The first acknowledged key leaves the model (and so does the refused one): the next run removes it.
    setup.emulator.set_faults(Faults::default());
    setup.emulator.clear_requests();
    enterprise_model_without(setup, &[ten[0].clone(), ten[7].clone()]);
    let out = setup.sync("day1", &["enterprise-orgs", "--format", "json"]);
    ok(&out);
    let wanted = difference(&orgs.iter().cloned().collect(), &keys(&[&ten[0], &ten[7]]));
    assert_eq!(members(), wanted);
    let removes: Vec<(String, String, String, Vec<String>)> = described(&setup.emulator.requests())
        .into_iter()
        .filter(|(_, _, kind, _)| kind == "included.remove")
        .collect();
    assert_eq!(
        removes,
        [(
            "POST".to_string(),
            format!("{SEGMENTS}/enterprise-big/contexts"),
            "included.remove".to_string(),
            vec![ten[0].clone()]
        )]
    );
    // Nothing that was acknowledged is sent again.
    assert_eq!(
        keys_sent(setup, "included.add"),
        orgs[5..10]
            .iter()
            .filter(|k| **k != ten[7])
            .cloned()
            .collect::<BTreeSet<_>>()
    );
}

#[test]
fn a_refused_run_on_a_big_segment_leaves_its_acknowledged_changes_in_the_checkpoint() {
    let setup = Setup::new();
    an_abandoned_runs_acknowledged_batches_are_not_forgotten(&setup);
    let orgs = expected_enterprise_orgs("day1");
    let ten: Vec<String> = orgs.iter().take(10).cloned().collect();
    assert_eq!(
        setup.checkpoint("enterprise-orgs").unwrap(),
        difference(&orgs, &keys(&[&ten[0], &ten[7]]))
    );
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_refused_run_on_a_big_segment_leaves_its_acknowledged_changes_in_the_postgres_checkpoint() {
    let url = crate::util::postgres::database_url();
    let schema = crate::util::postgres::Schema::new(&url, "recovery_folded", "");
    let setup = Setup::new();
    setup.project.edit_config(
        "  kind: local\n",
        &format!(
            "  kind: postgres\n  url: {url}\n  schema: {}\n",
            schema.name
        ),
    );
    an_abandoned_runs_acknowledged_batches_are_not_forgotten(&setup);
}
