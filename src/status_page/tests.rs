use chrono::TimeDelta;

use super::*;
use crate::history::{self, EventCounts};
use crate::launchdarkly::CallStats;
use crate::plan::{Drift, KeySample};
use crate::state::LocalStore;

const CONFIG: &str = "\
version: 1
warehouse:
  kind: duckdb
launchdarkly:
  token_env: LD_ACCESS_TOKEN
  project: default
  environment: production
state:
  kind: local
  directory: state
syncs:
  - name: pro-users
    model: pro_users
    segment: pro-users
    mode: mirror
    schedule: 4h
  - name: churned-beta
    model: churned_beta_users
    segment: beta-testers
    mode: remove
events:
  - name: order-events
    model: order_events
    contexts:
      user: user_id
    timestamp_column: placed_at
    row_id_column: order_id
    schedule: 15m
";

/// A project with the syncs above, its state in a temporary directory.
struct Project {
    _dir: tempfile::TempDir,
    config: Config,
    store: Store,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("connector.yaml"), CONFIG).unwrap();
        let config = Config::load(&dir.path().join("connector.yaml")).unwrap();
        let store = Store::Local(LocalStore::new(dir.path().join("state")));
        Project {
            _dir: dir,
            config,
            store,
        }
    }

    fn record(&self, run: RunRecord) {
        history::append(&self.store, &run).unwrap();
    }

    fn pages(&self) -> StatusPages {
        StatusPages::new(
            &self.config,
            &self.store,
            &self.config.select_syncs(&[]).unwrap(),
        )
    }

    fn overview(&self, site: Site) -> String {
        self.pages().overview(site, now())
    }
}

fn now() -> DateTime<Utc> {
    "2026-11-24T12:00:00Z".parse().unwrap()
}

fn run(sync: &str, minutes_ago: i64, outcome: RunOutcome) -> RunRecord {
    let at = now() - TimeDelta::minutes(minutes_ago);
    RunRecord {
        sync: sync.into(),
        run_id: format!("run-{minutes_ago}"),
        started_at: at,
        finished_at: at,
        duration_ms: 1500,
        outcome,
        resumed_run: None,
        adds: 3,
        removes: 1,
        audience: Some(40 + minutes_ago as u64),
        batches_acknowledged: 1,
        batches_planned: 1,
        excluded: KeySample::default(),
        drift: None,
        events: None,
        full: false,
        calls: CallStats::default(),
        error: None,
    }
}

/// The markup of the chart `name` of the section of `sync`.
fn chart<'p>(page: &'p str, sync: &str, name: &str) -> &'p str {
    let section = &page[page.find(&format!("data-sync=\"{sync}\"")).unwrap()..];
    let start = section
        .find(&format!("data-chart=\"{name}\""))
        .unwrap_or_else(|| panic!("no {name} chart for {sync} in {page}"));
    let chart = &section[start..];
    &chart[..chart.find("</figure>").unwrap()]
}

#[test]
fn the_audience_chart_has_one_point_a_run() {
    let project = Project::new();
    for minutes_ago in [300, 200, 100] {
        project.record(run("pro-users", minutes_ago, RunOutcome::Synced));
    }
    let mut before_planning = run("pro-users", 50, RunOutcome::Failed);
    before_planning.audience = None;
    project.record(before_planning);
    let page = project.overview(Site::Served);

    let audience = chart(&page, "pro-users", "audience");
    assert!(audience.contains("data-points=\"3\""), "{audience}");
    assert_eq!(audience.matches("<circle").count(), 3, "{audience}");
    let changes = chart(&page, "pro-users", "changes");
    assert!(changes.contains("data-runs=\"4\""), "{changes}");
}

#[test]
fn each_sync_shows_its_kind_mode_segment_schedule_outcome_and_next_run() {
    let project = Project::new();
    project.record(run("pro-users", 60, RunOutcome::NothingToChange));
    let mut events = run("order-events", 5, RunOutcome::Synced);
    events.audience = None;
    events.events = Some(EventCounts {
        sent: 12,
        ..EventCounts::default()
    });
    project.record(events);
    let page = project.overview(Site::Served);

    let pro = &page[page.find("data-sync=\"pro-users\"").unwrap()..];
    let pro = &pro[..pro.find("</section>").unwrap()];
    for shown in [
        "<a href=\"syncs/pro-users\">pro-users</a>",
        "<dd>segment</dd>",
        "<dd>mirror</dd>",
        "<code>pro-users</code>",
        "<dd>every 4h</dd>",
        "data-outcome=\"nothing_to_change\"",
        "nothing to change",
        // An interval counts from the last run's start.
        "<dd>2026-11-24T15:00:00Z</dd>",
    ] {
        assert!(pro.contains(shown), "no {shown} in {pro}");
    }
    let churned = &page[page.find("data-sync=\"churned-beta\"").unwrap()..];
    assert!(churned.contains("never run") && churned.contains("when asked"));
    assert!(churned.contains("No runs yet."));
    let orders = &page[page.find("data-sync=\"order-events\"").unwrap()..];
    assert!(orders.contains("<dd>events</dd>"));
    assert!(!orders.contains("data-chart=\"audience\""));
    assert!(chart(&page, "order-events", "changes").contains("Events sent"));
    assert!(page.contains("Read-only"));
}

#[test]
fn what_the_page_shows_is_escaped() {
    let project = Project::new();
    let mut failed = run("pro-users", 10, RunOutcome::Failed);
    failed.error = Some("the model failed: <script>alert(1)</script> & more".into());
    project.record(failed);
    let page = project.overview(Site::Served);
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
}

#[test]
fn keys_never_reach_the_page() {
    let project = Project::new();
    let mut refused = run("pro-users", 10, RunOutcome::Failed);
    refused.error = Some(
        "sync `pro-users`: LaunchDarkly refused batch 1 of 1 of run r (add 3 (user-17, user-18, user-19)): \
         LaunchDarkly rejected the change (400 invalid): context \"user-18\" is not valid"
            .into(),
    );
    refused.excluded = KeySample::of(["user-20"]);
    refused.drift = Some(Drift {
        added_by_hand: KeySample::of(["user-21"]),
        removed_by_hand: KeySample::of(["user-22"]),
    });
    project.record(refused);
    for page in [
        project.overview(Site::Served),
        project.overview(Site::File),
        project.pages().sync_page("pro-users", now()).unwrap(),
    ] {
        assert!(!page.contains("user-"), "a key on the page:\n{page}");
        assert!(
            page.contains(
                "(add 3 keys): LaunchDarkly rejected the change (400 invalid): context &quot;…&quot; is not valid"
            ),
            "{page}"
        );
    }
}

#[test]
fn a_gate_stop_waits_for_a_person_and_names_the_command_that_lets_it_through() {
    let project = Project::new();
    project.record(run("pro-users", 100, RunOutcome::Synced));
    let mut stopped = run("pro-users", 10, RunOutcome::GateStopped);
    stopped.removes = 40;
    project.record(stopped);
    let page = project.overview(Site::Served);
    let section = &page[page.find("data-sync=\"pro-users\"").unwrap()..];
    assert!(section.contains("<strong>Waiting for a person.</strong>"));
    assert!(section.contains("it would have removed 40 keys and added 3"));
    assert!(
        section
            .contains("<code class=\"let-through\">ldsync sync pro-users --override-gates</code>")
    );
    assert!(
        !page[page.find("data-sync=\"churned-beta\"").unwrap()..].contains("Waiting for a person")
    );
}

#[test]
fn a_sync_page_lists_its_runs_and_an_unknown_sync_has_none() {
    let project = Project::new();
    for minutes_ago in [30, 20, 10] {
        project.record(run("pro-users", minutes_ago, RunOutcome::Synced));
    }
    let pages = project.pages();
    let page = pages.sync_page("pro-users", now()).unwrap();
    assert_eq!(page.matches("<tr data-outcome=\"synced\">").count(), 3);
    assert!(page.contains("<a href=\"../\">"));
    assert!(!page.contains("data-sync=\"churned-beta\""));
    assert!(pages.sync_page("nobody", now()).is_none());

    // The file holds every sync's history; the served overview links to it instead.
    let file = project.overview(Site::File);
    assert_eq!(file.matches("<tr data-outcome=\"synced\">").count(), 3);
    assert!(!file.contains("href=\"syncs/"));
    assert!(!project.overview(Site::Served).contains("<tr data-outcome"));
}
