//! The service files in packaging/: the systemd unit passes `systemd-analyze verify` (with this build's binary in
//! place of /usr/local/bin/ldsync, which verify checks exists) and keeps its exposure level low; the Grafana
//! dashboard is JSON over metrics the daemon serves. Skipped, with a notice, where systemd is not installed.

use std::process::Command;

use crate::util::repo;

/// The unit, with this build's binary where the unit installs it, in a directory of its own.
fn unit_for_this_build() -> (tempfile::TempDir, std::path::PathBuf) {
    let unit = std::fs::read_to_string(repo().join("packaging/systemd/ldsync.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ldsync.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/ldsync", env!("CARGO_BIN_EXE_ldsync")),
    )
    .unwrap();
    (dir, path)
}

fn systemd_analyze() -> Option<Command> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        eprintln!("systemd-analyze is not installed: skipping the systemd unit's checks");
    }
    found.then(|| Command::new("systemd-analyze"))
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Some(mut verify) = systemd_analyze() else {
        return;
    };
    let (_dir, unit) = unit_for_this_build();
    let out = verify.arg("verify").arg(&unit).output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    let out = systemd_analyze()
        .unwrap()
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .split("Overall exposure level for ldsync.service: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|level| level.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
}

#[test]
fn the_grafana_dashboard_charts_metrics_the_daemon_serves() {
    let text = std::fs::read_to_string(repo().join("packaging/grafana/ldsync.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    let served = [
        "ldsync_runs_total",
        "ldsync_keys_added_total",
        "ldsync_keys_removed_total",
        "ldsync_rate_limited_total",
        "ldsync_seconds_since_last_success",
        "ldsync_schedule_interval_seconds",
    ];
    for metric in served {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel charts {metric}"
        );
    }
    let source = std::fs::read_to_string(repo().join("src/daemon/metrics.rs")).unwrap();
    for expr in &exprs {
        for name in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if let Some(metric) = name.strip_prefix("ldsync_") {
                let registered = metric.trim_end_matches("_total");
                assert!(
                    source.contains(&format!("\"{registered}\"")),
                    "the dashboard charts {name}, which the daemon does not serve"
                );
            }
        }
    }
}
