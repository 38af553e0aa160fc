//! `ldsync plan` against the shipped example: the exact keys, counts, requests, gates and exit codes, and that
//! planning writes nothing.

use std::collections::BTreeSet;

use crate::util::*;

fn sync<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sync"] == name)
        .unwrap_or_else(|| panic!("no sync {name} in the report"))
}

#[test]
fn first_run_plans_every_example_sync_with_exact_keys() {
    let project = Project::example();
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "changes planned; stderr: {}",
        stderr(&out)
    );
    let report = json(&out);
    assert_eq!(report["outcome"], "changes");
    assert_eq!(report["syncs"].as_array().unwrap().len(), 4);

    let pro = sync(&report, "pro-users");
    let expected = expected_pro_users("day1");
    assert_eq!(strings(&pro["adds"]), expected);
    assert_eq!(pro["removes"].as_array().unwrap().len(), 0);
    assert_eq!(pro["keys"]["distinct"], expected.len());
    assert_eq!(
        pro["keys"]["duplicates"], 2,
        "two users appear twice in the fixture"
    );
    assert_eq!(pro["keys"]["rejected"]["null"], 1);
    assert_eq!(pro["keys"]["rejected"]["blank"], 1);
    assert_eq!(pro["keys"]["rows"], expected.len() + 4);
    assert_eq!(pro["checkpoint"], serde_json::Value::Null);
    let requests = pro["requests"].as_array().unwrap();
    assert_eq!(requests.len(), expected.len().div_ceil(1500));
    assert!(
        requests
            .iter()
            .all(|r| r["action"] == "add" && r["keys"].as_u64().unwrap() <= 1500)
    );
    assert!(
        pro["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("first mirror run"))
    );

    let orgs = sync(&report, "enterprise-orgs");
    assert_eq!(orgs["context_kind"], "organization");
    let expected_orgs = expected_enterprise_orgs("day1");
    assert_eq!(strings(&orgs["adds"]), expected_orgs);
    let sizes: Vec<u64> = orgs["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["keys"].as_u64().unwrap())
        .collect();
    assert!(
        sizes.iter().all(|&s| s <= 500),
        "enterprise-orgs has batch_size 500: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<u64>(), expected_orgs.len() as u64);

    let churned = sync(&report, "churned-beta");
    assert_eq!(churned["mode"], "remove");
    assert_eq!(
        churned["adds"].as_array().unwrap().len(),
        0,
        "remove mode never adds"
    );
}

#[test]
fn create_segment_on_a_remove_sync_is_named_as_doing_nothing_by_plan_and_validate() {
    let project = Project::example();
    project.edit_config(
        "    segment: beta-testers\n    mode: remove\n",
        "    segment: beta-testers\n    mode: remove\n    create_segment: standard\n",
    );
    let out = project.ldsync("day1", &["plan", "churned-beta", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = json(&out);
    let notes = strings(&sync(&report, "churned-beta")["notes"]);
    assert!(
        notes.contains(
            "create_segment does nothing for a remove sync: it never creates segment `beta-testers` (a segment \
             that does not exist has nothing to remove); leave it out, or keep it for when the sync's mode changes"
        ),
        "{notes:?}"
    );
    let out = project.ldsync("day1", &["validate"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let churned = stdout(&out)
        .lines()
        .find(|line| line.contains("sync `churned-beta`"))
        .map(str::to_string);
    assert!(
        churned.as_deref().is_some_and(|line| line.contains(
            "never creating the segment (create_segment does nothing for a remove sync)"
        )),
        "{}",
        stdout(&out)
    );
}

#[test]
fn next_day_plan_diffs_against_the_checkpoint() {
    let project = Project::example();
    project.commit_checkpoint("pro-users", &expected_pro_users("day1"));
    project.commit_checkpoint("enterprise-orgs", &expected_enterprise_orgs("day1"));
    let out = project.ldsync(
        "day2",
        &[
            "plan",
            "--detailed-exitcode",
            "pro-users",
            "enterprise-orgs",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let report = json(&out);

    let (day1, day2) = (expected_pro_users("day1"), expected_pro_users("day2"));
    let pro = sync(&report, "pro-users");
    let entered: BTreeSet<String> = day2.difference(&day1).cloned().collect();
    let left: BTreeSet<String> = day1.difference(&day2).cloned().collect();
    assert!(
        !entered.is_empty() && !left.is_empty(),
        "the fixtures change between days"
    );
    assert_eq!(strings(&pro["adds"]), entered);
    assert_eq!(strings(&pro["removes"]), left);
    assert_eq!(pro["checkpoint"]["run_id"], "run-day1");
    assert_eq!(pro["checkpoint"]["key_count"], day1.len());
    let actions: Vec<&str> = pro["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["add", "remove"],
        "adds go before removes, one request each"
    );

    let (orgs1, orgs2) = (
        expected_enterprise_orgs("day1"),
        expected_enterprise_orgs("day2"),
    );
    let orgs = sync(&report, "enterprise-orgs");
    assert_eq!(
        strings(&orgs["adds"]),
        orgs2.difference(&orgs1).cloned().collect()
    );
    assert_eq!(
        strings(&orgs["removes"]),
        orgs1.difference(&orgs2).cloned().collect()
    );
    assert_eq!(
        orgs["removes"].as_array().unwrap().len(),
        3,
        "three enterprise accounts churn on day 2"
    );
}

#[test]
fn nothing_to_change_exits_zero_and_plans_no_request() {
    let project = Project::example();
    project.commit_checkpoint("pro-users", &expected_pro_users("day1"));
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode", "pro-users"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("requests: none"), "{text}");
    assert!(text.contains("no changes"), "{text}");
}

#[test]
fn removal_gates_stop_the_plan_with_their_own_exit_code() {
    let project = Project::example();
    project.edit_config("max_remove_count: 500", "max_remove_count: 3");
    project.commit_checkpoint("pro-users", &expected_pro_users("day1"));
    let out = project.ldsync(
        "day2",
        &[
            "plan",
            "--detailed-exitcode",
            "pro-users",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "stderr: {}", stderr(&out));
    let report = json(&out);
    let pro = sync(&report, "pro-users");
    assert_eq!(pro["outcome"], "gate_stopped");
    let removes = pro["removes"].as_array().unwrap().len() as u64;
    assert_eq!(
        pro["gate_stops"],
        serde_json::json!([{"gate": "remove_count", "removes": removes, "max_remove_count": 3}])
    );
    let table = stdout(&project.ldsync("day2", &["plan", "--detailed-exitcode", "pro-users"]));
    assert!(table.contains(&format!("STOP: a sync would stop before any call: it would remove {removes} members, over gates.max_remove_count 3")), "{table}");
}

#[test]
fn an_empty_model_trips_its_gate() {
    let project = Project::example();
    project.write(
        "sql/nobody.sql",
        "SELECT user_id AS context_key FROM users WHERE false",
    );
    project.edit_config("model: pro_users", "model: nobody");
    project.edit_config("model: dormant_users", "model: nobody");
    let out = project.ldsync(
        "day1",
        &[
            "plan",
            "--detailed-exitcode",
            "pro-users",
            "dormant-winback",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    let report = json(&out);
    assert_eq!(
        sync(&report, "pro-users")["gate_stops"],
        serde_json::json!([{"gate": "empty_model"}])
    );
    let add_mode = sync(&report, "dormant-winback");
    assert_eq!(
        add_mode["gate_stops"],
        serde_json::json!([]),
        "an empty add model changes nothing"
    );
    assert_eq!(add_mode["outcome"], "no_changes");
}

#[test]
fn table_report_shows_counts_samples_and_rejections() {
    let project = Project::example();
    let out = project.ldsync(
        "day1",
        &["plan", "--detailed-exitcode", "pro-users", "--show", "2"],
    );
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    let expected = expected_pro_users("day1");
    let first_two: Vec<&str> = expected.iter().take(2).map(String::as_str).collect();
    assert!(
        text.contains(&format!(
            "add {}: {} … and {} more",
            expected.len(),
            first_two.join(", "),
            expected.len() - 2
        )),
        "{text}"
    );
    assert!(
        text.contains("rejected: 1 null, 1 blank, 0 too long"),
        "{text}"
    );
    assert!(text.contains("checkpoint: none"), "{text}");
    assert!(
        text.contains(&format!(
            "requests: 2 semantic-patch requests: add 1500 + {} keys",
            expected.len() - 1500
        )),
        "{text}"
    );
}

#[test]
fn csv_and_parquet_reports_carry_every_key() {
    let project = Project::example();
    let csv_path = project.path("plan.csv");
    let out = project.ldsync(
        "day1",
        &[
            "plan",
            "--detailed-exitcode",
            "enterprise-orgs",
            "--format",
            "csv",
            "--output",
            csv_path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("sync,action,context_kind,key"));
    let keys: BTreeSet<String> = lines
        .map(|l| {
            l.strip_prefix("enterprise-orgs,add,organization,")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, expected_enterprise_orgs("day1"));

    let parquet_path = project.path("plan.parquet");
    let out = project.ldsync(
        "day1",
        &[
            "plan",
            "--detailed-exitcode",
            "--format",
            "parquet",
            "--output",
            parquet_path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let file = std::fs::File::open(&parquet_path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut pro_keys = BTreeSet::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = |i: usize| arrow::array::AsArray::as_string::<i32>(batch.column(i)).clone();
        let (syncs, actions, keys) = (col(0), col(1), col(3));
        for i in 0..batch.num_rows() {
            if syncs.value(i) == "pro-users" {
                assert_eq!(actions.value(i), "add");
                pro_keys.insert(keys.value(i).to_string());
            }
        }
    }
    assert_eq!(pro_keys, expected_pro_users("day1"));

    let out = project.ldsync(
        "day1",
        &["plan", "--detailed-exitcode", "--format", "parquet"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("give it --output PATH"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plan_writes_nothing() {
    let project = Project::example();
    let before = files_below(project.dir.path());
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(files_below(project.dir.path()), before);
    assert!(
        !project.path(".ldsync").exists(),
        "plan must not create the state directory"
    );
}

#[test]
fn invalid_keys_fail_by_default_naming_the_row() {
    let project = Project::example();
    project.edit_config("    invalid_keys: skip         # the fixtures hold a null and a blank user_id: count them, leave them out\n", "");
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode", "pro-users"]);
    assert_eq!(out.status.code(), Some(6));
    let text = stdout(&out);
    assert!(
        text.contains("sync `pro-users` (model ")
            && text
                .contains("of the model has a null key; fix the model or set invalid_keys: skip"),
        "{text}"
    );
}

#[test]
fn a_failing_sync_is_reported_and_the_others_still_planned() {
    let project = Project::example();
    project.write(
        "sql/dormant_users.sql",
        "SELECT no_such_column AS context_key FROM users",
    );
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "one failed sync makes the run fail with its class: the model's data"
    );
    let report = json(&out);
    assert_eq!(report["outcome"], "error");
    let failed = sync(&report, "dormant-winback");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("sync `dormant-winback` (model "),
        "{error}"
    );
    assert!(
        error.contains("dormant_users.sql") && error.contains("no_such_column"),
        "{error}"
    );
    assert_eq!(sync(&report, "pro-users")["outcome"], "changes");
}

#[test]
fn checkpoints_made_with_other_settings_are_refused() {
    let project = Project::example();
    project.commit_checkpoint("pro-users", &expected_pro_users("day1"));
    project.edit_config("segment: pro-users", "segment: paid-users");
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode", "pro-users"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("segment: pro-users → paid-users") && text.contains("ldsync sync --full"),
        "{text}"
    );
}

#[test]
fn damaged_checkpoints_are_errors_not_empty_sets() {
    let project = Project::example();
    project.commit_checkpoint("pro-users", &expected_pro_users("day1"));
    let manifest_path = project.path(".ldsync/state/pro-users/manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();

    // A count that disagrees with the snapshot.
    let count = expected_pro_users("day1").len();
    std::fs::write(
        &manifest_path,
        manifest.replace(&format!("\"key_count\": {count}"), "\"key_count\": 7"),
    )
    .unwrap();
    let text = stdout(&project.ldsync("day1", &["plan", "--detailed-exitcode", "pro-users"]));
    assert!(
        text.contains(&format!(
            "is damaged: it holds {count} keys, its manifest says 7"
        )),
        "{text}"
    );

    // A manifest that is not JSON.
    std::fs::write(&manifest_path, "{ not json").unwrap();
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode", "pro-users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("is unreadable"), "{}", stdout(&out));

    // A manifest moved from another sync.
    std::fs::write(
        &manifest_path,
        manifest.replace("\"sync\": \"pro-users\"", "\"sync\": \"enterprise-orgs\""),
    )
    .unwrap();
    assert!(
        stdout(&project.ldsync("day1", &["plan", "--detailed-exitcode", "pro-users"]))
            .contains("belongs to sync `enterprise-orgs`")
    );

    // A snapshot that is not Parquet.
    std::fs::write(&manifest_path, &manifest).unwrap();
    let snapshot = std::fs::read_dir(project.path(".ldsync/state/pro-users"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::write(&snapshot, b"not parquet at all").unwrap();
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode", "pro-users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("cannot read the checkpoint snapshot"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn unknown_sync_names_list_the_known_ones() {
    let project = Project::example();
    let out = project.ldsync("day1", &["plan", "--detailed-exitcode", "pro-userz"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("no sync named `pro-userz` in the configuration; its syncs are: pro-users, dormant-winback, enterprise-orgs, churned-beta"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let project = Project::example();
    let out = project.ldsync(
        "day1",
        &[
            "--log-format",
            "json",
            "plan",
            "--detailed-exitcode",
            "pro-users",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let logs = stderr(&out);
    let planned: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line = planned
        .iter()
        .find(|l| l["fields"]["message"] == "planned")
        .expect("a planned log line");
    assert_eq!(line["fields"]["sync"], "pro-users");
    assert_eq!(line["fields"]["keys"], expected_pro_users("day1").len());
}

#[test]
fn without_detailed_exitcode_a_plan_with_changes_exits_zero() {
    let project = Project::example();
    let out = project.ldsync("day1", &["plan"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("▸ pro-users (mirror → segment pro-users, context kind user)"));
}

/// A checkpoint written by an earlier ldsync (`fixtures/checkpoints/v1`, committed by a real `ldsync sync` of the
/// example's day 1) must always load: a new release may change how checkpoints are written, never strand old ones.
#[test]
fn a_checkpoint_written_by_an_earlier_release_still_loads_and_plans() {
    let project = Project::example();
    let state = project.path(".ldsync/state/pro-users");
    std::fs::create_dir_all(&state).unwrap();
    let fixture = project.path("fixtures/checkpoints/v1/pro-users");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), state.join(entry.file_name())).unwrap();
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("manifest.json")).unwrap()).unwrap();
    for (day, entered, left) in [
        ("day1", BTreeSet::new(), BTreeSet::new()),
        (
            "day2",
            expected_pro_users("day2")
                .difference(&expected_pro_users("day1"))
                .cloned()
                .collect(),
            expected_pro_users("day1")
                .difference(&expected_pro_users("day2"))
                .cloned()
                .collect(),
        ),
    ] {
        let out = project.ldsync(day, &["plan", "pro-users", "--format", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let plan = sync(&json(&out), "pro-users").clone();
        assert_eq!(plan["checkpoint"]["run_id"], manifest["run_id"], "{day}");
        assert_eq!(plan["checkpoint"]["key_count"], 2169);
        assert_eq!(strings(&plan["adds"]), entered, "{day}");
        assert_eq!(strings(&plan["removes"]), left, "{day}");
    }
}

/// An audience larger than one join of the engine's memory limit: with `engine.memory_limit: 64MB`, 3M keys are
/// compared in two partitions of their hash, DuckDB spilling (beside `engine.temp_directory`, whose parents nothing
/// has made), and the plan is still exact.
#[test]
fn an_audience_past_the_engine_memory_limit_is_planned_exactly_in_partitions() {
    let project = Project::example();
    project.write(
        "sql/pro_users.sql",
        "SELECT 'usr_' || lpad(CAST(i AS VARCHAR), 8, '0') AS context_key FROM range(3000000) r(i)",
    );
    project.edit_config(
        "state:\n",
        "engine:\n  memory_limit: 64MB\n  threads: 2\n  temp_directory: not/made/yet/spill\nstate:\n",
    );
    let key = |i: u32| format!("usr_{i:08}");
    // The checkpoint lacks every 100,000th key and holds 3 keys the model no longer returns.
    let previous: BTreeSet<String> = (0..3_000_000)
        .filter(|i| i % 100_000 != 7)
        .map(key)
        .chain(["usr_x1", "usr_x2", "usr_x3"].map(String::from))
        .collect();
    project.commit_checkpoint("pro-users", &previous);
    let out = project.ldsync("day1", &["plan", "pro-users", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = sync(&json(&out), "pro-users").clone();
    let entered: BTreeSet<String> = (0..30).map(|n| key(n * 100_000 + 7)).collect();
    assert_eq!(strings(&plan["adds"]), entered);
    assert_eq!(
        strings(&plan["removes"]),
        ["usr_x1", "usr_x2", "usr_x3"].map(String::from).into()
    );
    assert_eq!(plan["keys"]["rows"], 3_000_000);
    assert_eq!(plan["keys"]["distinct"], 3_000_000);
    assert_eq!(plan["keys"]["duplicates"], 0);
    assert!(
        !project.path("not").exists(),
        "the plan spilled beside the missing directories and made none of them"
    );
}

/// Rewrites `sql/<model>.sql` so that its last line is a `--` comment, with no newline after it.
fn end_model_with_a_comment(project: &Project, model: &str) {
    let path = format!("sql/{model}.sql");
    let sql = std::fs::read_to_string(project.path(&path)).unwrap();
    project.write(&path, &format!("{}\n-- trailing comment", sql.trim_end()));
}

#[test]
fn a_model_whose_last_line_is_a_comment_plans_its_exact_keys() {
    let project = Project::example();
    end_model_with_a_comment(&project, "pro_users");
    let out = project.ldsync("day1", &["plan", "pro-users", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    let pro = sync(&report, "pro-users");
    let expected = expected_pro_users("day1");
    assert_eq!(strings(&pro["adds"]), expected);
    assert_eq!(pro["removes"].as_array().unwrap().len(), 0);
    assert_eq!(pro["keys"]["rows"], expected.len() + 4);
}

#[test]
fn an_events_model_whose_last_line_is_a_comment_plans_every_event() {
    let project = Project::example();
    end_model_with_a_comment(&project, "order_events");
    let out = project.ldsync("day1", &["plan", "order-events", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    let events = &report["events"][0];
    assert_eq!(events["sync"], "order-events");
    let expected = expected_order_events("day1", None);
    let planned: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(events["by_event_key"].clone()).unwrap();
    assert_eq!(planned, expected);
    assert_eq!(events["events"], expected.values().sum::<u64>());
}
