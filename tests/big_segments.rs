//! Big segments through LaunchDarkly's bulk APIs, against the emulator: large adds go as CSV imports (what `plan`
//! says, what is uploaded, how a run waits), a run killed mid-import resumes by polling that import, a stopped import
//! is planned afresh, an import awaiting approval is finished by a later run; and a big segment's members are read
//! through an export (a first mirror run, `--full`, `full_every`), whose file never receives the access token.

use std::collections::BTreeSet;
use std::time::Duration;

use ldsync_emulator::{EmulatorConfig, Faults, SegmentSeed, StopImports};

use crate::util::background::{Background, PATIENCE};
use crate::util::emulated::*;
use crate::util::*;

/// The example's enterprise-orgs mirror sync on a new big segment `enterprise-big`: adds of more than 10 keys go as
/// imports of at most 20 keys a file (batches of 5 otherwise).
fn big_imports(setup: &Setup) {
    setup.project.edit_config(
        "    segment: enterprise-orgs\n",
        "    segment: enterprise-big\n",
    );
    setup.project.edit_config(
        "    batch_size: 500\n    create_segment: standard\n",
        "    batch_size: 5\n    create_segment: big\n    big_segment: {import_above: 10, keys_per_file: 20}\n",
    );
}

const BIG: &str = "enterprise-big";

fn imports_path() -> String {
    format!("{SEGMENTS}/{BIG}/imports")
}

/// The uploads the emulator took in (POST …/imports answered 204), each as (mode, keys in the file).
fn uploads(setup: &Setup) -> Vec<(String, u64)> {
    setup
        .emulator
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == imports_path() && r.status == 204)
        .map(|r| {
            let body = r.body.as_ref().unwrap();
            (
                body["mode"].as_str().unwrap().to_string(),
                body["file"]["keys"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Sizes of files of `total` keys cut `per_file` at a time.
fn files(total: usize, per_file: usize) -> Vec<(String, u64)> {
    (0..total.div_ceil(per_file))
        .map(|i| {
            (
                "merge".to_string(),
                per_file.min(total - i * per_file) as u64,
            )
        })
        .collect()
}

fn members(setup: &Setup) -> BTreeSet<String> {
    setup.members(BIG, "organization")
}

#[test]
fn a_large_first_load_into_a_big_segment_goes_as_csv_imports_and_plan_says_so() {
    let setup = Setup::new();
    big_imports(&setup);
    let orgs = expected_enterprise_orgs("day1");
    assert!(
        orgs.len() > 40,
        "the example has {} enterprise organizations",
        orgs.len()
    );

    let plan = setup.project.ldsync("day1", &["plan", "enterprise-orgs"]);
    let expected_files = orgs.len().div_ceil(20);
    assert!(
        stdout(&plan).contains(&format!(
            "requests: {expected_files} CSV imports: add {} × 20 + {} keys by CSV import",
            expected_files - 1,
            orgs.len() - 20 * (expected_files - 1)
        )),
        "{}",
        stdout(&plan)
    );

    ok(&setup.sync("day1", &["enterprise-orgs"]));
    assert_eq!(members(&setup), orgs);
    assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), orgs);
    assert_eq!(uploads(&setup), files(orgs.len(), 20));
    // No key went as a batch of targets.
    assert!(
        !setup
            .emulator
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/contexts")),
        "{:?}",
        described(&setup.emulator.requests())
    );

    // Day 2: three accounts churn, fewer than import_above: batches through …/contexts, no upload.
    setup.emulator.clear_requests();
    ok(&setup.sync("day2", &["enterprise-orgs"]));
    let orgs2 = expected_enterprise_orgs("day2");
    assert_eq!(members(&setup), orgs2);
    assert!(uploads(&setup).is_empty());
    let removes: BTreeSet<String> = described(&setup.emulator.requests())
        .into_iter()
        .filter(|(_, _, kind, _)| kind == "included.remove")
        .flat_map(|(_, _, _, keys)| keys)
        .collect();
    assert_eq!(removes, difference(&orgs, &orgs2));
}

/// Kills a run once its first import's ID is in the journal, while LaunchDarkly processes it (each import takes two
/// seconds); `journal_holds_the_import` checks that the killed run left it there. Then runs again: the next run waits
/// on that import rather than uploading it again, and ends exact.
fn kill_mid_import_then_resume(setup: &Setup, journal_holds_the_import: impl Fn() -> bool) {
    big_imports(setup);
    let orgs = expected_enterprise_orgs("day1");
    let mut run = Background::start(&setup.project, "day1", TOKEN, &["sync", "enterprise-orgs"]);
    run.wait_for_log("uploaded an import");
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    assert_eq!(
        uploads(setup).len(),
        1,
        "killed while the first import runs"
    );
    assert!(journal_holds_the_import());

    let out = setup.sync("day1", &["enterprise-orgs"]);
    ok(&out);
    assert!(
        stderr(&out).contains("waiting on the import an earlier run submitted"),
        "{}",
        stderr(&out)
    );
    // Every file was uploaded once: the first by the killed run, the rest by the one that resumed it.
    assert_eq!(uploads(setup), files(orgs.len(), 20));
    assert_eq!(members(setup), orgs);
}

/// An emulator whose imports take two seconds each: preparing, then in progress.
fn slow_imports() -> EmulatorConfig {
    EmulatorConfig {
        import_step: Duration::from_secs(1),
        ..EmulatorConfig::default()
    }
}

#[test]
fn a_run_killed_while_its_import_is_processed_resumes_by_polling_that_import() {
    let setup = Setup::with(slow_imports());
    let journal = setup
        .project
        .path(".ldsync/state/enterprise-orgs/journal.jsonl");
    kill_mid_import_then_resume(&setup, || {
        std::fs::read_to_string(&journal)
            .is_ok_and(|text| text.contains("\"record\":\"submitted\""))
    });
    let orgs = expected_enterprise_orgs("day1");
    assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), orgs);
    assert!(!journal.exists());
    let resumed = runs(&setup, "enterprise-orgs").pop().unwrap();
    assert!(resumed.resumed_run.is_some());
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn a_run_killed_while_its_import_is_processed_resumes_by_polling_that_import_on_postgres() {
    let url = crate::util::postgres::database_url();
    let schema = crate::util::postgres::Schema::new(&url, "big_import_kill", "");
    let setup = Setup::with(slow_imports());
    setup.project.edit_config(
        "  kind: local\n",
        &format!(
            "  kind: postgres\n  url: {url}\n  schema: {}\n",
            schema.name
        ),
    );
    let submitted = format!(
        "SELECT count(*)::text FROM {}.journal_batches WHERE submission IS NOT NULL",
        schema.name
    );
    kill_mid_import_then_resume(&setup, || {
        schema.query(&submitted) == [[Some("1".to_string())]]
    });
    let batches = format!("SELECT count(*)::text FROM {}.journal_batches", schema.name);
    assert_eq!(schema.query(&batches), [[Some("0".to_string())]]);
}

#[test]
fn a_run_killed_while_uploading_leaves_the_segment_and_checkpoint_exact_after_the_next_run() {
    let setup = Setup::new();
    big_imports(&setup);
    let orgs = expected_enterprise_orgs("day1");
    setup.emulator.set_faults(Faults {
        latency: Duration::from_secs(2),
        ..Faults::default()
    });
    let mut run = Background::start(&setup.project, "day1", TOKEN, &["sync", "enterprise-orgs"]);
    run.wait_until(PATIENCE, "an upload is in flight", || {
        setup
            .emulator
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.path == imports_path())
    });
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    assert!(setup.checkpoint("enterprise-orgs").is_none());

    setup.emulator.set_faults(Faults::default());
    ok(&setup.sync("day1", &["enterprise-orgs"]));
    assert_eq!(members(&setup), orgs);
    assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), orgs);
}

#[test]
fn an_import_launchdarkly_stops_is_refused_and_the_next_run_plans_afresh() {
    let setup = Setup::new();
    big_imports(&setup);
    let orgs = expected_enterprise_orgs("day1");
    setup.emulator.set_faults(Faults {
        stop_imports: Some(StopImports::Nth(2)),
        ..Faults::default()
    });
    let out = setup.sync("day1", &["enterprise-orgs"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("LaunchDarkly refused batch 2 of")
            && stderr(&out).contains("LaunchDarkly stopped import"),
        "{}",
        stderr(&out)
    );
    assert!(setup.checkpoint("enterprise-orgs").is_none());

    setup.emulator.set_faults(Faults::default());
    setup.emulator.clear_requests();
    let out = setup.sync("day1", &["enterprise-orgs"]);
    ok(&out);
    assert!(
        stderr(&out).contains("was refused by LaunchDarkly"),
        "{}",
        stderr(&out)
    );
    assert_eq!(members(&setup), orgs);
    assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), orgs);
    // The first file was acknowledged and kept in the checkpoint: only the rest is uploaded again.
    assert_eq!(
        uploads(&setup).iter().map(|(_, keys)| keys).sum::<u64>(),
        orgs.len() as u64 - 20
    );
}

#[test]
fn an_import_awaiting_approval_is_reported_and_a_later_run_finishes_it_without_uploading_again() {
    let setup = Setup::new();
    big_imports(&setup);
    let orgs = expected_enterprise_orgs("day1");
    setup.emulator.set_faults(Faults {
        imports_need_approval: true,
        ..Faults::default()
    });
    let out = setup.sync("day1", &["enterprise-orgs"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("awaits approval in LaunchDarkly; nothing failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(uploads(&setup).len(), 1);

    setup.emulator.set_faults(Faults::default());
    setup.emulator.approve_imports();
    ok(&setup.sync("day1", &["enterprise-orgs"]));
    assert_eq!(uploads(&setup), files(orgs.len(), 20));
    assert_eq!(members(&setup), orgs);
    assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), orgs);
}

/// Uploads a one-key import into the big segment `elsewhere` of the same environment, as another tool would.
fn import_elsewhere(setup: &Setup) {
    setup.emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            key: "elsewhere".into(),
            name: "elsewhere".into(),
            unbounded: true,
            context_kind: "user".into(),
            included: vec![],
            excluded: vec![],
        },
    );
    let url = format!("{}{SEGMENTS}/elsewhere/imports", setup.emulator.base_url());
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let file = reqwest::multipart::Part::bytes(b"u-1\n".to_vec()).file_name("other.csv");
        let form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("mode", "merge");
        reqwest::Client::new()
            .post(url)
            .header("Authorization", TOKEN)
            .header("LD-API-Version", "20240415")
            .multipart(form)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 204);
}

#[test]
fn an_upload_while_another_import_of_the_environment_runs_waits_for_it_naming_it() {
    let setup = Setup::new();
    big_imports(&setup);
    // Another tool's import of the environment awaits approval: LaunchDarkly answers 409 until it ends.
    setup.emulator.set_faults(Faults {
        imports_need_approval: true,
        ..Faults::default()
    });
    import_elsewhere(&setup);
    setup.emulator.set_faults(Faults::default());
    let mut run = Background::start(&setup.project, "day1", TOKEN, &["sync", "enterprise-orgs"]);
    run.wait_for_log("another import of the environment is running; waiting for it to finish");
    let conflicts = || {
        setup
            .emulator
            .requests()
            .iter()
            .filter(|r| r.path == imports_path() && r.status == 409)
            .count()
    };
    assert!(conflicts() >= 1);
    assert_eq!(setup.emulator.approve_imports(), 1);
    assert_eq!(run.exit_within(PATIENCE), Some(0), "{}", run.log());
    assert_eq!(members(&setup), expected_enterprise_orgs("day1"));
    assert_eq!(
        uploads(&setup),
        files(expected_enterprise_orgs("day1").len(), 20)
    );
}

/// A big segment `enterprise-big` that holds, by hand, `included`.
fn seed_big(setup: &Setup, included: Vec<String>) {
    setup.emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            key: BIG.into(),
            name: BIG.into(),
            unbounded: true,
            context_kind: "organization".into(),
            included: vec![("organization".into(), included)],
            excluded: vec![],
        },
    );
}

/// The export file's requests carried no `Authorization` header, and there was at least one.
fn assert_exports_without_the_token(setup: &Setup) {
    let downloads = setup.emulator.file_requests();
    assert!(!downloads.is_empty(), "the export file was downloaded");
    for download in downloads {
        assert_eq!(download.authorization, None, "{download:?}");
        assert_eq!(download.status, 200, "{download:?}");
    }
}

#[test]
fn a_first_mirror_run_onto_a_big_segment_with_members_reads_them_through_an_export_and_converges() {
    let setup = Setup::new();
    big_imports(&setup);
    let orgs: Vec<String> = expected_enterprise_orgs("day1").into_iter().collect();
    // Half the model is there already, with two strangers.
    let mut present: Vec<String> = orgs[..orgs.len() / 2].to_vec();
    present.extend(["acct_stranger_1".to_string(), "acct_stranger_2".to_string()]);
    seed_big(&setup, present);

    let plan = setup
        .project
        .command("day1", &["plan", "enterprise-orgs", "--full"])
        .env("LD_ACCESS_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        stdout(&plan).contains(&format!(
            "compared with the segment's real membership ({} organization targets, read through an export)",
            orgs.len() / 2 + 2
        )),
        "{}\n{}",
        stdout(&plan),
        stderr(&plan)
    );
    let out = setup.sync("day1", &["enterprise-orgs", "--override-gates"]);
    ok(&out);
    let orgs: BTreeSet<String> = orgs.into_iter().collect();
    assert_eq!(members(&setup), orgs);
    assert_eq!(setup.checkpoint("enterprise-orgs").unwrap(), orgs);
    assert_exports_without_the_token(&setup);
}

#[test]
fn sync_full_repairs_hand_edits_on_a_big_segment_and_full_every_makes_runs_do_so() {
    let setup = Setup::with(EmulatorConfig {
        export_header: true,
        ..EmulatorConfig::default()
    });
    big_imports(&setup);
    setup.project.edit_config(
        "    big_segment: {import_above: 10, keys_per_file: 20}\n",
        "    big_segment: {import_above: 10, keys_per_file: 20}\n    full_every: 1h\n",
    );
    let orgs = expected_enterprise_orgs("day1");
    ok(&setup.sync("day1", &["enterprise-orgs"]));
    assert_eq!(members(&setup), orgs);
    let first = runs(&setup, "enterprise-orgs").pop().unwrap();
    assert!(
        first.full,
        "no run compared with the membership yet: full_every is due"
    );

    // By hand: one organization removed, one stranger added.
    let removed = orgs.iter().next().unwrap().clone();
    let mut edited: Vec<String> = orgs.iter().filter(|k| **k != removed).cloned().collect();
    edited.push("acct_by_hand".into());
    seed_big(&setup, edited.clone());

    // Within full_every, a run compares with the checkpoint and sees nothing.
    ok(&setup.sync("day1", &["enterprise-orgs"]));
    assert_eq!(members(&setup), edited.iter().cloned().collect());
    assert!(!runs(&setup, "enterprise-orgs").pop().unwrap().full);
    assert!(setup.emulator.file_requests().is_empty());

    // --full reads the members through an export and repairs both edits.
    let out = setup.sync("day1", &["enterprise-orgs", "--full", "--format", "json"]);
    ok(&out);
    assert_eq!(members(&setup), orgs);
    let record = runs(&setup, "enterprise-orgs").pop().unwrap();
    assert!(record.full);
    assert_eq!((record.adds, record.removes), (1, 1));
    assert_exports_without_the_token(&setup);

    // full_every: once it has passed, a plain run does the same.
    seed_big(&setup, edited);
    setup
        .project
        .edit_config("    full_every: 1h\n", "    full_every: 1s\n");
    std::thread::sleep(Duration::from_millis(1100));
    ok(&setup.sync("day1", &["enterprise-orgs"]));
    assert_eq!(members(&setup), orgs);
    assert!(runs(&setup, "enterprise-orgs").pop().unwrap().full);
}

#[test]
fn an_export_file_that_is_not_a_csv_of_keys_is_a_clear_error_and_nothing_changes() {
    let setup = Setup::new();
    big_imports(&setup);
    seed_big(&setup, vec!["acct_stranger".into()]);
    setup.emulator.set_faults(Faults {
        malformed_exports: true,
        ..Faults::default()
    });
    let out = setup.sync("day1", &["enterprise-orgs"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("the export file of big segment `enterprise-big` is not a CSV of keys"),
        "{}",
        stderr(&out)
    );
    assert_eq!(members(&setup), ["acct_stranger".to_string()].into());
    assert!(setup.checkpoint("enterprise-orgs").is_none());
    assert!(
        !setup
            .emulator
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.status == 204),
        "nothing was changed"
    );
}
