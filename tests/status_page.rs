//! The status page in a real browser: `ldsync run` on the example against the emulator, pro-users run every two
//! seconds until it has run twice, then `/` and `/syncs/pro-users` loaded in headless Chromium. The rendered DOM
//! shows every sync with its outcome, a chart point for each run, and no key; a screenshot is taken. Outside CI the
//! test skips with a notice when Chromium is not installed; under CI=true it fails (`.ci/run` installs it).
//! `LDSYNC_UPDATE_SCREENSHOT=1` copies the screenshot to docs/status-page.png, the one README shows.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{http, metrics_address, start_daemon};
use crate::util::emulated::*;
use crate::util::*;

/// The example's syncs, all of which the page shows.
const SYNCS: [&str; 5] = [
    "pro-users",
    "dormant-winback",
    "enterprise-orgs",
    "churned-beta",
    "order-events",
];

/// Chromium's path, or `None` (with a notice) when it is not installed outside CI.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromium"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "Chromium is not installed (Debian package chromium): .ci/run installs it"
        );
        eprintln!(
            "skipping the status page's browser test: Chromium is not installed (Debian package chromium)"
        );
    }
    found
}

/// Headless Chromium with `args` and `url`, at most a minute; its standard output.
fn headless(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("Chromium did not finish loading {url} within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// The part of `dom` from the element with `attribute` to the end of the first `end` after it.
fn part<'d>(dom: &'d str, attribute: &str, end: &str) -> &'d str {
    let start = dom
        .find(attribute)
        .unwrap_or_else(|| panic!("no {attribute} in the page:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find(end).map_or(rest.len(), |at| at + end.len())]
}

/// The points of pro-users' audience chart in `dom`: the circles drawn, which the chart's `data-points` counts too.
fn audience_points(dom: &str) -> usize {
    let sync = part(dom, "data-sync=\"pro-users\"", "</section>");
    let chart = part(sync, "data-chart=\"audience\"", "</figure>");
    let circles = chart.matches("<circle").count();
    assert!(
        chart.contains(&format!("data-points=\"{circles}\"")),
        "{chart}"
    );
    circles
}

#[test]
fn the_status_page_shows_every_sync_with_a_chart_point_a_run_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let setup = Setup::new();
    setup.project.edit_config("schedule: 4h", "schedule: 2s");
    let daemon = start_daemon(&setup, &["--metrics-addr", "127.0.0.1:0"]);
    daemon.wait_until(
        Duration::from_secs(60),
        "pro-users ran twice and the other interval syncs once",
        || {
            runs(&setup, "pro-users").len() >= 2
                && ["enterprise-orgs", "churned-beta", "order-events"]
                    .iter()
                    .all(|s| !runs(&setup, s).is_empty())
        },
    );
    let addr = metrics_address(&daemon);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/");

    let overview = headless(&chromium, profile.path(), &["--dump-dom"], &url);
    assert!(overview.contains("Read-only"), "{overview}");
    for sync in SYNCS {
        assert!(
            overview.contains(&format!("data-sync=\"{sync}\"")),
            "no {sync} on the page:\n{overview}"
        );
    }
    let outcome = |sync: &str| {
        let section = part(&overview, &format!("data-sync=\"{sync}\""), "</section>");
        let badge = part(section, "data-outcome=\"", ">");
        badge["data-outcome=\"".len()..badge.len() - 2].to_string()
    };
    assert_eq!(outcome("enterprise-orgs"), "synced");
    assert_eq!(outcome("dormant-winback"), "never");
    assert!(
        ["synced", "nothing_to_change"].contains(&outcome("pro-users").as_str()),
        "{overview}"
    );
    let points = audience_points(&overview);
    assert!(points >= 2, "{overview}");
    assert!(points <= runs(&setup, "pro-users").len());
    // The example's user and account keys (usr_…, acct_…) appear nowhere.
    for prefix in ["usr_", "acct_"] {
        assert!(!overview.contains(prefix), "a key on the page:\n{overview}");
    }

    // A sync's page: its chart has a point for each run its history table lists (the same rendering of both).
    let page = headless(
        &chromium,
        profile.path(),
        &["--dump-dom"],
        &format!("{url}syncs/pro-users"),
    );
    let rows = part(&page, "<tbody>", "</tbody>").matches("<tr").count();
    assert!(rows >= 2, "{page}");
    assert_eq!(audience_points(&page), rows, "{page}");
    assert!(!page.contains("data-sync=\"enterprise-orgs\""));
    assert!(!page.contains("usr_"), "a key on the page:\n{page}");
    let (status, body) = http(&addr, "GET", "/syncs/nobody");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body.lines().count(), 1, "{body}");

    let shot = profile.path().join("status-page.png");
    headless(
        &chromium,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("Chromium wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 20_000, "a {} byte screenshot", png.len());
    if std::env::var_os("LDSYNC_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(repo().join("docs/status-page.png"), &png).unwrap();
    }
}
