//! The status page: where each sync stands and how its last runs went, as HTML for people, served by `ldsync run`
//! (`/`, and `/syncs/<name>` with a sync's run history) and written by `ldsync status --format html`. It is built
//! from what `ldsync status` reads, the state store only, so it costs no warehouse or LaunchDarkly call. It is
//! read-only and shows counts, never context keys or event rows: the error texts it shows have the keys they name
//! elided. Server-rendered by maud (escaping by default), with inline CSS and SVG charts drawn by plotters; no
//! JavaScript and nothing fetched from elsewhere.

mod chart;
mod elide;

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::config::{Config, SyncEntry};
use crate::history::{RunOutcome, RunRecord};
use crate::report::{RUN_COLUMNS, added_or_sent, run_cells, time};
use crate::state::Store;
use crate::status::{self, SyncStatus};
use chart::Run;
use elide::elide_keys;

/// How many of a sync's last runs its charts draw.
const CHART_RUNS: usize = 30;
/// How many of a sync's last runs its history table lists.
const TABLE_RUNS: usize = 200;

const CSS: &str = include_str!("page.css");

/// Where the page is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Served by `ldsync run`: each sync links to its own page, which holds its run history.
    Served,
    /// Written to a file: each sync's run history is on the one page.
    File,
}

/// The pages of a project's syncs, read afresh from the state store each time one is rendered.
pub struct StatusPages {
    config: Config,
    store: Store,
    /// The syncs the pages show, by name (all of them when empty).
    syncs: Vec<String>,
}

/// One sync as the pages show it.
struct View {
    name: String,
    /// Where it stands, or why its history could not be read.
    status: Result<SyncStatus, String>,
    /// Its last runs, oldest first.
    runs: Vec<RunRecord>,
}

impl StatusPages {
    /// The pages of `syncs` of `config`, read from `store`.
    pub fn new(config: &Config, store: &Store, syncs: &[SyncEntry<'_>]) -> Self {
        StatusPages {
            config: config.clone(),
            store: store.clone(),
            syncs: syncs.iter().map(|s| s.name().to_string()).collect(),
        }
    }

    /// Every sync on one page, as of `now`.
    pub fn overview(&self, site: Site, now: DateTime<Utc>) -> String {
        let views: Vec<View> = self
            .entries()
            .into_iter()
            .map(|sync| self.view(sync, now))
            .collect();
        document("ldsync status", overview(&views, site, now)).into_string()
    }

    /// The page of the sync named `name`, with its run history; `None` when the pages show no such sync.
    pub fn sync_page(&self, name: &str, now: DateTime<Utc>) -> Option<String> {
        let sync = self.entries().into_iter().find(|s| s.name() == name)?;
        let view = self.view(sync, now);
        let body = html! {
            nav { a href="../" { "← all syncs" } }
            (section(&view, None, true, now))
        };
        Some(document(&format!("{name} · ldsync status"), body).into_string())
    }

    fn entries(&self) -> Vec<SyncEntry<'_>> {
        // The names were taken from this configuration's syncs, so each of them is found.
        self.config.select_syncs(&self.syncs).unwrap_or_default()
    }

    fn view(&self, sync: SyncEntry<'_>, now: DateTime<Utc>) -> View {
        let name = sync.name().to_string();
        match status::runs_of(&self.store, &name) {
            Ok(mut runs) => {
                let status = status::status_with_runs(&self.config, &self.store, sync, &runs, now);
                runs.drain(..runs.len().saturating_sub(TABLE_RUNS));
                View {
                    name,
                    status: Ok(status),
                    runs,
                }
            }
            Err(e) => View {
                name,
                status: Err(e.to_string()),
                runs: Vec::new(),
            },
        }
    }
}

fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { (title) }
                    p.read-only {
                        "Read-only: this page shows what ldsync's state store records and changes nothing. It shows \
                         counts, never context keys or event rows; keys that errors name are elided."
                    }
                }
                main { (body) }
            }
        }
    }
}

fn overview(views: &[View], site: Site, now: DateTime<Utc>) -> Markup {
    html! {
        p.as-of { (views.len()) " syncs, as of " (time(&now)) }
        @for view in views {
            @let link = (site == Site::Served).then(|| format!("syncs/{}", view.name));
            (section(view, link, site == Site::File, now))
        }
    }
}

/// One sync: its facts, what needs a person, its charts, and (`history`) its run table.
fn section(view: &View, link: Option<String>, history: bool, now: DateTime<Utc>) -> Markup {
    let last = view.runs.last();
    html! {
        section.sync id=(view.name) data-sync=(view.name) {
            h2 {
                @match link {
                    Some(href) => { a href=(href) { (view.name) } },
                    None => { (view.name) },
                }
                " " (outcome_badge(last.map(|r| r.outcome)))
            }
            @match &view.status {
                Err(error) => { p.error { (elide_keys(error)) } },
                Ok(status) => {
                    (facts(status, now))
                    (attention(status))
                    (charts(status, &view.runs))
                }
            }
            @if history {
                (history_table(&view.runs))
            }
        }
    }
}

fn outcome_badge(outcome: Option<RunOutcome>) -> Markup {
    let class = outcome.map_or("never", RunOutcome::as_str);
    html! {
        span class={ "outcome " (class) } data-outcome=(class) {
            (outcome.map_or("never run".to_string(), |o| o.as_str().replace('_', " ")))
        }
    }
}

fn facts(status: &SyncStatus, now: DateTime<Utc>) -> Markup {
    let last = status.last_run.as_ref();
    html! {
        dl.facts {
            dt { "kind" } dd { (status.kind) }
            @if let Some(mode) = status.mode {
                dt { "mode" } dd { (mode) }
            }
            @if let Some(segment) = &status.segment {
                dt { "segment" } dd { code { (segment) } }
            }
            dt { "schedule" }
            dd { (status.schedule.as_ref().map_or("when asked".to_string(), ToString::to_string)) }
            dt { "last run" } dd { (last.map_or("never".to_string(), |r| time(&r.started_at))) }
            dt { "last outcome" } dd.last-outcome { (outcome_badge(last.map(|r| r.outcome))) }
            dt { "last success" } dd { (status.last_success.as_ref().map_or("never".to_string(), time)) }
            dt { "next run" } dd { (status::next_run_cell(status, now)) }
            dt { "checkpoint" } dd.checkpoint { (status::checkpoint_cell(status)) }
        }
    }
}

/// What a person should know or do: a gate stop waiting for them, an unfinished run, errors.
fn attention(status: &SyncStatus) -> Markup {
    let last = status.last_run.as_ref();
    let gate_stop = last.filter(|r| r.outcome == RunOutcome::GateStopped);
    html! {
        @if let Some(run) = gate_stop {
            div.waiting {
                p {
                    strong { "Waiting for a person." }
                    " A removal gate stopped the last run before it sent anything: it would have removed "
                    (run.removes) " keys and added " (run.adds) ". Each scheduled run stops at the gate again until \
                    someone who has checked the model lets one run through:"
                }
                pre { code.let-through { "ldsync sync " (status.sync) " --override-gates" } }
            }
        }
        @if status.unfinished_run {
            p.note { "An interrupted run is waiting in its journal; the next run finishes it first." }
        }
        @if let Some(error) = &status.checkpoint_error {
            p.error { "The checkpoint could not be read: " (elide_keys(error)) }
        }
        @if let Some(error) = last.and_then(|r| r.error.as_ref()) {
            div.last-error {
                h3 { "Last error" }
                pre.error { (elide_keys(error)) }
            }
        }
    }
}

/// The audience over the last runs (segment syncs), and what each run added or sent and removed.
fn charts(status: &SyncStatus, runs: &[RunRecord]) -> Markup {
    let recent = &runs[runs.len().saturating_sub(CHART_RUNS)..];
    if recent.is_empty() {
        return html! { p.note { "No runs yet." } };
    }
    let audience: Vec<Run> = recent
        .iter()
        .filter_map(|r| r.audience.map(|a| chart_run(r, a, 0)))
        .collect();
    let changes: Vec<Run> = recent
        .iter()
        .map(|r| chart_run(r, added_or_sent(r.adds, r.events.as_ref()), r.removes))
        .collect();
    let events = status.kind == "events";
    html! {
        div.charts {
            @if !events {
                figure.chart data-chart="audience" data-points=(audience.len()) {
                    figcaption { "Audience (the model's keys) at each of the last " (audience.len()) " runs" }
                    @if audience.is_empty() {
                        p.note { "No run recorded its audience yet." }
                    } @else {
                        (PreEscaped(chart::line(&audience)))
                    }
                }
            }
            figure.chart data-chart="changes" data-runs=(changes.len()) {
                figcaption {
                    @if events {
                        "Events sent by each of the last " (changes.len()) " runs"
                    } @else {
                        span.added { "added" } " and " span.removed { "removed" }
                        " keys, each of the last " (changes.len()) " runs"
                    }
                }
                (PreEscaped(chart::bars(&changes)))
            }
        }
    }
}

fn chart_run(run: &RunRecord, up: u64, down: u64) -> Run {
    Run {
        label: run.started_at.format("%m-%d %H:%M").to_string(),
        up,
        down,
    }
}

/// The runs, newest first: what each did, its audience and its error (keys elided).
fn history_table(runs: &[RunRecord]) -> Markup {
    html! {
        h3 { "Run history" }
        table.runs {
            thead {
                tr {
                    th { "started" }
                    @for column in RUN_COLUMNS { th { (column) } }
                    th { "audience" }
                    th { "error" }
                }
            }
            tbody {
                @for run in runs.iter().rev() {
                    tr data-outcome=(run.outcome.as_str()) {
                        td { (time(&run.started_at)) }
                        @for cell in run_cells(run) { td { (cell) } }
                        td { (run.audience.map_or("-".to_string(), |a| a.to_string())) }
                        td.error { (run.error.as_deref().map(elide_keys).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
