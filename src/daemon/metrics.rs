//! Prometheus metrics for `ldsync run --http-addr`: what the runs of each sync did (runs by outcome, keys added
//! and removed, events sent, requests, 429 answers, retries), how long ago each sync last succeeded and how long its
//! schedule's interval is, rendered as text for `GET /metrics` (see [`super::http`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::history::RunOutcome;
use crate::run::SyncReport;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabel {
    sync: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    sync: String,
    outcome: String,
}

/// The metrics of every sync a daemon runs.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    keys_added: Family<SyncLabel, Counter>,
    keys_removed: Family<SyncLabel, Counter>,
    events_sent: Family<SyncLabel, Counter>,
    requests: Family<SyncLabel, Counter>,
    rate_limited: Family<SyncLabel, Counter>,
    retries: Family<SyncLabel, Counter>,
    seconds_since_success: Family<SyncLabel, Gauge<f64, AtomicU64>>,
    schedule_interval: Family<SyncLabel, Gauge<f64, AtomicU64>>,
    held_elsewhere: Family<SyncLabel, Counter>,
    last_success: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Metrics {
    /// Metrics for `syncs`, every counter at zero.
    pub fn new<'s>(syncs: impl IntoIterator<Item = &'s str>) -> Self {
        let mut registry = Registry::with_prefix("ldsync");
        let metrics = Metrics {
            runs: Family::default(),
            keys_added: Family::default(),
            keys_removed: Family::default(),
            events_sent: Family::default(),
            requests: Family::default(),
            rate_limited: Family::default(),
            retries: Family::default(),
            seconds_since_success: Family::default(),
            schedule_interval: Family::default(),
            held_elsewhere: Family::default(),
            last_success: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register("runs", "Sync runs, by outcome", metrics.runs.clone());
        let per_sync = [
            ("keys_added", "Keys added to segments", &metrics.keys_added),
            (
                "keys_removed",
                "Keys removed from segments",
                &metrics.keys_removed,
            ),
            (
                "events_sent",
                "Metric events acknowledged by the import API (events syncs)",
                &metrics.events_sent,
            ),
            (
                "requests",
                "LaunchDarkly API requests, retries included",
                &metrics.requests,
            ),
            (
                "rate_limited",
                "LaunchDarkly answers with status 429",
                &metrics.rate_limited,
            ),
            (
                "retries",
                "LaunchDarkly requests sent again",
                &metrics.retries,
            ),
            (
                "held_elsewhere",
                "Times the sync fell due while another process sharing the state store was running it",
                &metrics.held_elsewhere,
            ),
        ];
        for (name, help, family) in per_sync {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "seconds_since_last_success",
            "Seconds since the sync's last successful run (synced or nothing to change)",
            metrics.seconds_since_success.clone(),
        );
        registry.register(
            "schedule_interval_seconds",
            "Seconds between the sync's scheduled runs (for a cron schedule, between its next two times)",
            metrics.schedule_interval.clone(),
        );
        // Every series exists from the start, at zero, so that rates and alerts work before the first run.
        for sync in syncs {
            for outcome in RunOutcome::ALL {
                drop(metrics.runs.get_or_create(&run_labels(sync, outcome)));
            }
            for (_, _, family) in per_sync {
                drop(family.get_or_create(&label(sync)));
            }
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Records that `sync` last succeeded at `at` (read from its history when the daemon starts).
    pub fn succeeded_at(&self, sync: &str, at: DateTime<Utc>) {
        self.last_success
            .lock()
            .expect("metrics lock")
            .insert(sync.to_string(), at);
    }

    /// Records the time between `sync`'s scheduled runs, as its schedule says now.
    pub fn schedule_interval(&self, sync: &str, interval: std::time::Duration) {
        self.schedule_interval
            .get_or_create(&label(sync))
            .set(interval.as_secs_f64());
    }

    /// Counts a time `sync` fell due while another process was running it.
    pub fn held_elsewhere(&self, sync: &str) {
        self.held_elsewhere.get_or_create(&label(sync)).inc();
    }

    /// Counts what one run did.
    pub fn record(&self, report: &SyncReport) {
        let sync = report.run.sync.as_str();
        self.runs
            .get_or_create(&run_labels(sync, report.run.outcome))
            .inc();
        let label = label(sync);
        self.keys_added
            .get_or_create(&label)
            .inc_by(report_count(report, report.run.adds));
        self.keys_removed
            .get_or_create(&label)
            .inc_by(report_count(report, report.run.removes));
        self.events_sent
            .get_or_create(&label)
            .inc_by(report.run.events.as_ref().map_or(0, |e| e.sent));
        self.requests
            .get_or_create(&label)
            .inc_by(report.run.calls.requests);
        self.rate_limited
            .get_or_create(&label)
            .inc_by(report.run.calls.rate_limited);
        self.retries
            .get_or_create(&label)
            .inc_by(report.run.calls.retries);
        if report.run.outcome.succeeded() {
            self.succeeded_at(sync, report.run.finished_at);
        }
    }

    /// The metrics in Prometheus' text format, as of `now`.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        for (sync, at) in self.last_success.lock().expect("metrics lock").iter() {
            let seconds = (now - *at).num_milliseconds() as f64 / 1000.0;
            self.seconds_since_success
                .get_or_create(&label(sync))
                .set(seconds.max(0.0));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Keys count as added or removed only when the run sent them.
fn report_count(report: &SyncReport, keys: u64) -> u64 {
    if report.run.outcome == RunOutcome::Synced {
        keys
    } else {
        0
    }
}

fn label(sync: &str) -> SyncLabel {
    SyncLabel {
        sync: sync.to_string(),
    }
}

fn run_labels(sync: &str, outcome: RunOutcome) -> RunLabels {
    RunLabels {
        sync: sync.to_string(),
        outcome: outcome.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::RunRecord;
    use crate::launchdarkly::CallStats;

    fn report(sync: &str, outcome: RunOutcome, finished_at: DateTime<Utc>) -> SyncReport {
        SyncReport {
            run: RunRecord {
                sync: sync.into(),
                run_id: "r".into(),
                outcome,
                started_at: finished_at,
                finished_at,
                resumed_run: None,
                adds: 7,
                removes: 2,
                audience: Some(40),
                batches_planned: 2,
                batches_acknowledged: 2,
                calls: CallStats {
                    requests: 4,
                    retries: 1,
                    rate_limited: 1,
                    ..CallStats::default()
                },
                duration_ms: 10,
                excluded: Default::default(),
                drift: None,
                events: None,
                full: false,
                error: None,
            },
            gate_stops: Vec::new(),
            notes: Vec::new(),
            error_class: None,
        }
    }

    #[test]
    fn runs_are_counted_per_sync_and_outcome() {
        let metrics = Metrics::new(["a", "b"]);
        let t0: DateTime<Utc> = "2026-11-24T10:00:00Z".parse().unwrap();
        metrics.record(&report("a", RunOutcome::Synced, t0));
        metrics.record(&report("a", RunOutcome::Failed, t0));
        let text = metrics.render(t0 + chrono::TimeDelta::seconds(90));
        for line in [
            "ldsync_runs_total{sync=\"a\",outcome=\"synced\"} 1",
            "ldsync_runs_total{sync=\"a\",outcome=\"failed\"} 1",
            "ldsync_runs_total{sync=\"b\",outcome=\"synced\"} 0",
            // Only the synced run sent its keys.
            "ldsync_keys_added_total{sync=\"a\"} 7",
            "ldsync_keys_removed_total{sync=\"a\"} 2",
            "ldsync_requests_total{sync=\"a\"} 8",
            "ldsync_rate_limited_total{sync=\"a\"} 2",
            "ldsync_retries_total{sync=\"a\"} 2",
            "ldsync_keys_added_total{sync=\"b\"} 0",
            "ldsync_seconds_since_last_success{sync=\"a\"} 90.0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("ldsync_seconds_since_last_success{sync=\"b\"}"),
            "a sync that never succeeded has no age:\n{text}"
        );
    }
}
