//! Shared helpers for ldsync's integration tests: a copy of the shipped example in a temporary directory, the
//! real `ldsync` binary run against it, and an independent reading of the fixture CSVs to compare with.

pub mod background;
pub mod emulated;
pub mod postgres;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ldsync::config::Config;
use ldsync::state::{CheckpointSettings, LocalStore, Store};

/// The repository whose example the tests copy: where `cargo test` runs them from, read when they run (a test binary
/// built in another clone that shares the target directory, as `.ci/env.sh` arranges, would otherwise name that
/// clone), else where it was built.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// A copy of the example project (connector.yaml, sql/, fixtures/) that a test may change freely.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn example() -> Project {
        Project::example_in(tempfile::tempdir().unwrap())
    }

    /// A copy of the example in a directory whose name begins with `prefix`.
    pub fn example_named(prefix: &str) -> Project {
        Project::example_in(tempfile::Builder::new().prefix(prefix).tempdir().unwrap())
    }

    fn example_in(dir: tempfile::TempDir) -> Project {
        for item in ["connector.yaml", "sql", "fixtures"] {
            copy(&repo().join(item), &dir.path().join(item));
        }
        Project { dir }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("connector.yaml")
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path()).unwrap()
    }

    /// Replaces `from` with `to` in connector.yaml; `from` must occur.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        assert!(text.contains(from), "connector.yaml has no {from:?}");
        std::fs::write(self.config_path(), text.replacen(from, to, 1)).unwrap();
    }

    pub fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// `ldsync --config <this project> ARGS` on fixture day `day`, ready to run.
    pub fn command(&self, day: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ldsync"));
        command
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("LDSYNC_EXAMPLE_DAY", day)
            .env_remove("LDSYNC_CONFIG")
            .env_remove("LDSYNC_LOG")
            .env_remove("LD_ACCESS_TOKEN")
            .current_dir(std::env::temp_dir());
        command
    }

    /// Runs `ldsync --config <this project> ARGS` on fixture day `day`.
    pub fn ldsync(&self, day: &str, args: &[&str]) -> Output {
        self.command(day, args).output().unwrap()
    }

    /// Commits `keys` as the checkpoint of `sync`, with the sync's current settings.
    pub fn commit_checkpoint(&self, sync: &str, keys: &BTreeSet<String>) {
        let config = self.config();
        let sync_config = config.syncs.iter().find(|s| s.name == sync).unwrap();
        Store::Local(LocalStore::new(config.state_dir()))
            .commit(
                sync,
                "run-day1",
                &CheckpointSettings::of(&config, sync_config),
                keys.iter().map(String::as_str),
            )
            .unwrap();
    }
}

fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// One row of a fixture CSV, by column name. The fixtures quote only the blank key.
pub struct Row(Vec<(String, String)>);

impl Row {
    pub fn get(&self, column: &str) -> &str {
        &self.0.iter().find(|(c, _)| c == column).unwrap().1
    }
}

pub fn read_fixture(day: &str, table: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(repo().join(format!("fixtures/{day}/{table}.csv"))).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|line| {
            let values = line.split(',').map(|v| v.trim_matches('"').to_string());
            Row(header.iter().cloned().zip(values).collect())
        })
        .collect()
}

/// The events the example's `order-events` sync should send on `day` after a run on `earlier` (if any), by event
/// key, computed from the CSV without DuckDB: valid rows (with a user) that are new since `earlier`, at or after
/// the earlier day's latest event minus the sync's two hours of lateness.
pub fn expected_order_events(day: &str, earlier: Option<&str>) -> BTreeMap<String, u64> {
    let valid = |day: &str| -> Vec<Row> {
        read_fixture(day, "orders")
            .into_iter()
            .filter(|r| is_valid_key(r.get("user_id")))
            .collect()
    };
    let (sent, window_start) = match earlier {
        None => (BTreeSet::new(), String::new()),
        Some(earlier) => {
            let rows = valid(earlier);
            let latest = rows.iter().map(|r| r.get("placed_at")).max().unwrap();
            let latest =
                chrono::NaiveDateTime::parse_from_str(latest, "%Y-%m-%d %H:%M:%S").unwrap();
            let start = (latest - chrono::TimeDelta::hours(2)).format("%Y-%m-%d %H:%M:%S");
            let ids = rows.iter().map(|r| r.get("order_id").to_string()).collect();
            (ids, start.to_string())
        }
    };
    let mut counts = BTreeMap::new();
    for row in valid(day) {
        if !sent.contains(row.get("order_id")) && row.get("placed_at") >= window_start.as_str() {
            *counts.entry(row.get("event").to_string()).or_default() += 1;
        }
    }
    counts
}

fn is_valid_key(key: &str) -> bool {
    !key.trim().is_empty()
}

/// The keys the `pro_users` model should return on `day`, computed from the CSV without DuckDB.
pub fn expected_pro_users(day: &str) -> BTreeSet<String> {
    read_fixture(day, "users")
        .iter()
        .filter(|u| matches!(u.get("plan"), "pro" | "enterprise") && is_valid_key(u.get("user_id")))
        .map(|u| u.get("user_id").to_string())
        .collect()
}

/// The keys the `enterprise_accounts` model should return on `day`.
pub fn expected_enterprise_orgs(day: &str) -> BTreeSet<String> {
    read_fixture(day, "accounts")
        .iter()
        .filter(|a| {
            a.get("plan") == "enterprise"
                && a.get("seats").parse::<u32>().unwrap() > 50
                && a.get("churned") == "false"
        })
        .map(|a| a.get("account_id").to_string())
        .collect()
}

/// The keys the `dormant_users` model should return on `day`: inactive for 30 days before the latest activity.
pub fn expected_dormant_users(day: &str) -> BTreeSet<String> {
    let users = read_fixture(day, "users");
    let date =
        |u: &Row| chrono::NaiveDate::parse_from_str(u.get("last_active_date"), "%Y-%m-%d").unwrap();
    let latest = users.iter().map(date).max().unwrap();
    users
        .iter()
        .filter(|u| is_valid_key(u.get("user_id")) && date(u) < latest - chrono::Days::new(30))
        .map(|u| u.get("user_id").to_string())
        .collect()
}

/// The users who opted into the beta on `day` (with a valid key): what a test seeds `beta-testers` with.
pub fn beta_testers(day: &str) -> BTreeSet<String> {
    read_fixture(day, "users")
        .iter()
        .filter(|u| u.get("beta_opt_in") == "true" && is_valid_key(u.get("user_id")))
        .map(|u| u.get("user_id").to_string())
        .collect()
}

/// The keys the `churned_beta_users` model should return on `day`: beta testers whose account churned.
pub fn expected_churned_beta_users(day: &str) -> BTreeSet<String> {
    let churned: BTreeSet<String> = read_fixture(day, "accounts")
        .iter()
        .filter(|a| a.get("churned") == "true")
        .map(|a| a.get("account_id").to_string())
        .collect();
    read_fixture(day, "users")
        .iter()
        .filter(|u| u.get("beta_opt_in") == "true" && churned.contains(u.get("account_id")))
        .filter(|u| is_valid_key(u.get("user_id")))
        .map(|u| u.get("user_id").to_string())
        .collect()
}

pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A JSON list of strings, in order.
pub fn string_list(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

pub fn strings(value: &serde_json::Value) -> BTreeSet<String> {
    string_list(value).into_iter().collect()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Everything a command printed: standard output, then standard error.
pub fn printed(output: &Output) -> String {
    stdout(output) + &stderr(output)
}

/// Every file below `dir`, for checking that a command wrote nothing.
pub fn files_below(dir: &Path) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            files.insert(path);
        }
    }
    files
}
