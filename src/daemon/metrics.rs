//! Prometheus metrics for `ldsync run --metrics-addr`: what the runs of each sync did (runs by outcome, keys added
//! and removed, events sent, requests, 429 answers, retries) and how long ago each sync last succeeded, served as text on
//! `GET /metrics` from a thread of its own, so that a scrape is answered even while a model query runs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::history::RunOutcome;
use crate::run::SyncReport;
use crate::status_page::{Site, StatusPages};

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
        ];
        for (name, help, family) in per_sync {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "seconds_since_last_success",
            "Seconds since the sync's last successful run (synced or nothing to change)",
            metrics.seconds_since_success.clone(),
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

/// Serves `metrics` and the status `pages` on `addr` from a thread of its own; returns the address it listens on
/// (useful with port 0).
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    pages: Arc<StatusPages>,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ldsync-metrics".into())
        .spawn(move || runtime.block_on(accept(listener, metrics, pages)))?;
    Ok(local)
}

async fn accept(listener: std::net::TcpListener, metrics: Arc<Metrics>, pages: Arc<StatusPages>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => return tracing::error!(error = %e, "the metrics endpoint cannot listen"),
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "the metrics endpoint could not accept a connection");
                continue;
            }
        };
        let (metrics, pages) = (metrics.clone(), pages.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (metrics, pages) = (metrics.clone(), pages.clone());
                async move {
                    let response = match page(&request, pages).await {
                        Some(page) => page,
                        None => answer(&request, &metrics),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
        });
    }
}

/// The status page on `GET /` and a sync's page on `GET /syncs/<name>`, rendered on a blocking thread so that a slow
/// state store never holds up `/metrics`; `None` for any other request.
async fn page(
    request: &Request<Incoming>,
    pages: Arc<StatusPages>,
) -> Option<Response<Full<Bytes>>> {
    if !matches!(request.method().as_str(), "GET" | "HEAD") {
        return None;
    }
    let sync = match request.uri().path() {
        "/" => None,
        path => Some(path.strip_prefix("/syncs/")?.to_string()),
    };
    let wanted = sync.clone();
    let rendered = tokio::task::spawn_blocking(move || match &wanted {
        None => Some(pages.overview(Site::Served, Utc::now())),
        Some(name) => pages.sync_page(name, Utc::now()),
    })
    .await;
    let (status, content_type, body) = match rendered {
        Ok(Some(html)) => (StatusCode::OK, "text/html; charset=utf-8", html),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!(
                "no sync named `{}` on this page\n",
                sync.unwrap_or_default()
            ),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("the page could not be rendered: {e}\n"),
        ),
    };
    Some(
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response"),
    )
}

fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method().as_str(), request.uri().path()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(Utc::now()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "ldsync serves its metrics on GET /metrics\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
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
