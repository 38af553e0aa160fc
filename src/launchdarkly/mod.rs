//! The LaunchDarkly REST client that syncs need: read a segment and its targets of one context kind, create a
//! segment, and change its included targets (semantic patch for standard segments, `POST …/contexts` for big
//! ones). Every call carries the bare token, `LD-API-Version` and a `User-Agent`; it is paced by [`pacing::Pacer`]
//! and retried by [`pacing::RetrySchedule`] where retrying is safe (429, 5xx, 409, timeouts, lost connections),
//! and every refusal becomes an [`ApiError`] that says what to fix.

pub mod big_segment;
mod error;
mod export_file;
pub mod pacing;
mod segment;
pub mod token;

pub use big_segment::{BulkStatus, Export, ImportStart, import_file};
pub use error::{ApiError, ErrorAnswer};
pub use export_file::{ExportFile, ExportFileError};
pub use segment::{Segment, parse_segment, semantic_patch};

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::LaunchDarklyConfig;
use crate::vocab::Action;
use pacing::{Pacer, RetrySchedule, RetryWaits};
use token::AccessToken;

/// The API version ldsync is written against.
pub const API_VERSION: &str = "20240415";
/// The content type that makes a PATCH body a semantic patch.
pub const SEMANTIC_PATCH: &str = "application/json; domain-model=launchdarkly.semanticpatch";

use crate::vocab::SegmentKind;

impl CallStats {
    /// What was done since `before` was taken.
    pub fn since(&self, before: &CallStats) -> CallStats {
        CallStats {
            requests: self.requests - before.requests,
            retries: self.retries - before.retries,
            rate_limited: self.rate_limited - before.rate_limited,
            server_errors: self.server_errors - before.server_errors,
            transport_errors: self.transport_errors - before.transport_errors,
            paced_ms: self.paced_ms - before.paced_ms,
        }
    }
}

/// Counts of what the client did, for run records and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallStats {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    pub retries: u64,
    /// 429 answers met.
    pub rate_limited: u64,
    /// 5xx and 409 answers met.
    pub server_errors: u64,
    /// Timeouts and dropped connections.
    pub transport_errors: u64,
    /// Time spent waiting for the rate-limit window to reset before sending.
    pub paced_ms: u64,
}

/// One kind of call, for messages and for the role action a 403 is about.
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    GetSegment(&'a str),
    CreateSegment(&'a str),
    ChangeTargets(&'a str, Action),
    GetProject,
    GetEnvironment,
    ImportEvents,
    StartImport(&'a str),
    GetImport(&'a str),
    StartExport(&'a str),
    GetExport(&'a str),
}

impl Call<'_> {
    fn describe(&self) -> String {
        match self {
            Call::GetSegment(key) => format!("reading segment `{key}`"),
            Call::CreateSegment(key) => format!("creating segment `{key}`"),
            Call::ChangeTargets(key, Action::Add) => format!("adding targets to segment `{key}`"),
            Call::ChangeTargets(key, Action::Remove) => {
                format!("removing targets from segment `{key}`")
            }
            Call::GetProject => "reading the project".to_string(),
            Call::GetEnvironment => "reading the environment".to_string(),
            Call::ImportEvents => "importing metric events".to_string(),
            Call::StartImport(key) => format!("uploading a CSV import into big segment `{key}`"),
            Call::GetImport(key) => format!("reading an import of big segment `{key}`"),
            Call::StartExport(key) => format!("starting an export of big segment `{key}`"),
            Call::GetExport(key) => format!("reading an export of big segment `{key}`"),
        }
    }

    /// The custom-role action LaunchDarkly checks for this call.
    fn role_action(&self) -> &'static str {
        match self {
            Call::CreateSegment(_) => "createSegment",
            Call::ChangeTargets(..) | Call::StartImport(_) => "updateIncluded",
            Call::ImportEvents => "importEventData",
            Call::GetSegment(_)
            | Call::GetProject
            | Call::GetEnvironment
            | Call::GetImport(_)
            | Call::StartExport(_)
            | Call::GetExport(_) => "viewProject",
        }
    }
}

/// The body of a successful answer.
struct Answer {
    body: String,
    /// The `Location` header, where a bulk call names what it started.
    location: Option<String>,
}

/// A client for one project and environment.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    /// For export files: no overall deadline (they can be large), only one between reads.
    download: reqwest::Client,
    base_url: String,
    events_base_url: String,
    token: AccessToken,
    project: String,
    environment: String,
    pacer: Pacer,
    stats: Mutex<CallStats>,
    retry_waits: RetryWaits,
}

impl Client {
    /// A client for the configured instance, project and environment.
    pub fn new(
        config: &LaunchDarklyConfig,
        token: AccessToken,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("ldsync/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(timeout.min(Duration::from_secs(10)))
        };
        let http = builder().timeout(timeout).build()?;
        let download = builder().read_timeout(timeout).build()?;
        Ok(Client {
            http,
            download,
            base_url: config.base_url.clone(),
            events_base_url: config.events_base_url.clone(),
            token,
            project: config.project.clone(),
            environment: config.environment.clone(),
            pacer: Pacer::default(),
            stats: Mutex::new(CallStats::default()),
            retry_waits: RetryWaits::default(),
        })
    }

    /// Sets the first waits before retries (tests and benchmarks shorten them).
    pub fn with_retry_waits(mut self, waits: RetryWaits) -> Self {
        self.retry_waits = waits;
        self
    }

    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    /// What the client has done so far.
    pub fn stats(&self) -> CallStats {
        *self.stats.lock().expect("stats lock")
    }

    fn segments_url(&self) -> String {
        format!(
            "{}/api/v2/segments/{}/{}",
            self.base_url, self.project, self.environment
        )
    }

    /// The segment with its targets of `context_kind`, or `None` when the project and environment exist but the
    /// segment does not.
    pub async fn get_segment(
        &self,
        key: &str,
        context_kind: &str,
    ) -> Result<Option<Segment>, ApiError> {
        let call = Call::GetSegment(key);
        let url = format!("{}/{key}", self.segments_url());
        match self.send(call, || self.request(Method::GET, &url)).await? {
            Ok(answer) => parse_segment(&answer.body, context_kind)
                .map(Some)
                .map_err(|problem| bad_answer(call, problem)),
            Err(_) => {
                self.check_project_and_environment().await?;
                Ok(None)
            }
        }
    }

    /// Creates the segment and returns it as LaunchDarkly holds it. When the key is already taken (someone else
    /// created it first, or an earlier attempt whose answer was lost did) the segment is read back instead, so the
    /// caller checks what really exists, whatever its type and context kind.
    pub async fn create_segment(
        &self,
        key: &str,
        kind: SegmentKind,
        context_kind: &str,
        description: &str,
    ) -> Result<Segment, ApiError> {
        let mut body =
            json!({"key": key, "name": key, "description": description, "tags": ["ldsync"]});
        if kind == SegmentKind::Big {
            body["unbounded"] = json!(true);
            body["unboundedContextKind"] = json!(context_kind);
        }
        let url = self.segments_url();
        let call = Call::CreateSegment(key);
        match self
            .send(call, || self.request(Method::POST, &url).json(&body))
            .await?
        {
            Ok(answer) => parse_segment(&answer.body, context_kind)
                .map_err(|problem| bad_answer(call, problem)),
            Err(NotDone::AlreadyExists) => {
                tracing::info!(segment = %key, "the segment already exists; reading it back");
                self.get_segment(key, context_kind)
                    .await?
                    .ok_or_else(|| self.unknown_segment(key))
            }
            Err(NotDone::Missing | NotDone::Busy(_)) => {
                self.check_project_and_environment().await?;
                Err(self.unknown_segment(key))
            }
        }
    }

    /// Adds or removes included targets of one context kind, in one request.
    pub async fn change_targets(
        &self,
        segment: &str,
        kind: SegmentKind,
        context_kind: &str,
        action: Action,
        keys: &[String],
        comment: &str,
    ) -> Result<(), ApiError> {
        let call = Call::ChangeTargets(segment, action);
        let url = format!("{}/{segment}", self.segments_url());
        let result = match kind {
            SegmentKind::Standard => {
                let body = semantic_patch(&self.environment, context_kind, action, keys, comment);
                self.send(call, || {
                    self.request(Method::PATCH, &url)
                        .header(CONTENT_TYPE, SEMANTIC_PATCH)
                        .body(body.clone())
                })
                .await
            }
            SegmentKind::Big => {
                let body = json!({"included": {action.as_str(): keys}}).to_string();
                let url = format!("{url}/contexts");
                self.send(call, || {
                    self.request(Method::POST, &url)
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone())
                })
                .await
            }
        }?;
        self.found(segment, result).await.map(|_| ())
    }

    /// Sends one batch of custom events (`events`: their JSON array) to the metric import API, gzipped, under
    /// `payload_id`: a batch sent again after a lost answer carries the same ID, so LaunchDarkly recognises it and
    /// does not count its events twice. Retried like every call.
    pub async fn import_events(&self, events: &[u8], payload_id: &str) -> Result<(), ApiError> {
        let call = Call::ImportEvents;
        let url = format!(
            "{}/v2/event-data-import/{}/{}",
            self.events_base_url, self.project, self.environment
        );
        let body =
            gzip(events).map_err(|e| bad_answer(call, format!("cannot gzip the batch: {e}")))?;
        let answer = self
            .send(call, || {
                self.http
                    .post(&url)
                    .header(AUTHORIZATION, self.token.header())
                    .header(CONTENT_TYPE, "application/json")
                    .header(CONTENT_ENCODING, "gzip")
                    .header(USER_AGENT, IMPORT_USER_AGENT)
                    .header("X-LaunchDarkly-Event-Schema", "4")
                    .header("X-LaunchDarkly-Payload-ID", payload_id)
                    .body(body.clone())
            })
            .await?;
        match answer {
            Ok(_) => Ok(()),
            Err(_) => {
                self.check_project_and_environment().await?;
                Err(bad_answer(
                    call,
                    "the events host has no import API at this address (404)".into(),
                ))
            }
        }
    }

    /// Turns a 404 about `segment` into the error that names what is missing.
    async fn found(
        &self,
        segment: &str,
        result: Result<Answer, NotDone>,
    ) -> Result<Answer, ApiError> {
        match result {
            Ok(answer) => Ok(answer),
            Err(_) => {
                self.check_project_and_environment().await?;
                Err(self.unknown_segment(segment))
            }
        }
    }

    /// The error for a segment that does not exist in this project and environment.
    pub fn unknown_segment(&self, segment: &str) -> ApiError {
        ApiError::UnknownSegment {
            segment: segment.to_string(),
            project: self.project.clone(),
            environment: self.environment.clone(),
        }
    }

    /// Says which of the project and environment does not exist, if either.
    async fn check_project_and_environment(&self) -> Result<(), ApiError> {
        let project_url = format!("{}/api/v2/projects/{}", self.base_url, self.project);
        if self
            .send(Call::GetProject, || self.request(Method::GET, &project_url))
            .await?
            .is_err()
        {
            return Err(ApiError::UnknownProject {
                project: self.project.clone(),
            });
        }
        let environment_url = format!("{project_url}/environments/{}", self.environment);
        if self
            .send(Call::GetEnvironment, || {
                self.request(Method::GET, &environment_url)
            })
            .await?
            .is_err()
        {
            return Err(ApiError::UnknownEnvironment {
                project: self.project.clone(),
                environment: self.environment.clone(),
            });
        }
        Ok(())
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header(AUTHORIZATION, self.token.header())
            .header("LD-API-Version", API_VERSION)
    }

    /// Sends until an answer is final: a success, a 404 or an existing segment (`Err(NotDone)`), or an error that
    /// retrying cannot fix.
    async fn send(
        &self,
        call: Call<'_>,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Result<Answer, NotDone>, ApiError> {
        let mut schedule = RetrySchedule::new(self.retry_waits);
        let mut attempts = 0;
        loop {
            self.pace().await;
            attempts += 1;
            self.count(|s| s.requests += 1);
            let (failure, wait) = match build().send().await {
                Ok(response) => {
                    self.pacer.observe(response.headers(), SystemTime::now());
                    let status = response.status();
                    let headers = response.headers().clone();
                    match response.text().await {
                        Ok(body) => {
                            match self.judge(call, status, &headers, body, &mut schedule)? {
                                Verdict::Final(result) => return Ok(result),
                                Verdict::Retry { failure, wait } => (failure, wait),
                            }
                        }
                        Err(e) => {
                            self.count(|s| s.transport_errors += 1);
                            (
                                format!("a broken answer ({})", self.token.scrub(&e.to_string())),
                                schedule.after_failure(),
                            )
                        }
                    }
                }
                Err(e) => {
                    self.count(|s| s.transport_errors += 1);
                    let what = if e.is_timeout() {
                        "a timeout"
                    } else {
                        "a lost connection"
                    };
                    (
                        format!("{what} ({})", self.token.scrub(&error_chain(&e))),
                        schedule.after_failure(),
                    )
                }
            };
            let Some(wait) = wait else {
                return Err(ApiError::GaveUp {
                    what: call.describe(),
                    attempts,
                    last: failure,
                });
            };
            tracing::debug!(call = %call.describe(), %failure, wait_ms = wait.as_millis() as u64, "retrying");
            self.count(|s| s.retries += 1);
            tokio::time::sleep(wait).await;
        }
    }

    /// Decides what an answer means.
    fn judge(
        &self,
        call: Call<'_>,
        status: StatusCode,
        headers: &HeaderMap,
        body: String,
        schedule: &mut RetrySchedule,
    ) -> Result<Verdict, ApiError> {
        if status.is_success() {
            let location = headers
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            return Ok(Verdict::Final(Ok(Answer { body, location })));
        }
        let ErrorAnswer { code, message } = ErrorAnswer::read(&body, &self.token);
        if matches!(call, Call::CreateSegment(_)) && is_duplicate(status, &message) {
            return Ok(Verdict::Final(Err(NotDone::AlreadyExists)));
        }
        if matches!(call, Call::StartImport(_)) && status == StatusCode::CONFLICT {
            return Ok(Verdict::Final(Err(NotDone::Busy(message))));
        }
        let failure = format!("{} {}", status.as_u16(), message.trim());
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                self.count(|s| s.rate_limited += 1);
                let wait = schedule.after_rate_limit(headers, SystemTime::now());
                Ok(Verdict::Retry { failure, wait })
            }
            StatusCode::CONFLICT => {
                self.count(|s| s.server_errors += 1);
                Ok(Verdict::Retry {
                    failure,
                    wait: schedule.after_failure(),
                })
            }
            s if s.is_server_error() => {
                self.count(|s| s.server_errors += 1);
                Ok(Verdict::Retry {
                    failure,
                    wait: schedule.after_failure(),
                })
            }
            StatusCode::NOT_FOUND => Ok(Verdict::Final(Err(NotDone::Missing))),
            StatusCode::UNAUTHORIZED => Err(ApiError::Unauthorized {
                what: call.describe(),
                action: call.role_action(),
                message,
            }),
            StatusCode::FORBIDDEN => Err(ApiError::Forbidden {
                action: call.role_action(),
                target: format!("{}/{}", self.project, self.environment),
                message,
            }),
            _ => Err(ApiError::Rejected {
                what: call.describe(),
                status: status.as_u16(),
                code,
                message,
            }),
        }
    }

    async fn pace(&self) {
        if let Some(wait) = self.pacer.wait_before_next(SystemTime::now()) {
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "rate-limit budget spent; waiting for the window to reset"
            );
            self.count(|s| s.paced_ms += wait.as_millis() as u64);
            tokio::time::sleep(wait).await;
            self.pacer.waited();
        }
    }

    fn count(&self, update: impl FnOnce(&mut CallStats)) {
        update(&mut self.stats.lock().expect("stats lock"));
    }
}

/// A final answer that did not do what was asked, and that the caller knows how to read.
#[derive(Debug)]
enum NotDone {
    /// 404: the caller knows what was being looked for.
    Missing,
    /// A create answered 409, or 400 saying the key is taken: someone else created the segment first (or an
    /// earlier attempt did, whose answer was lost).
    AlreadyExists,
    /// An import answered 409: another import of the environment is running (LaunchDarkly's message).
    Busy(String),
}

/// Whether a refused create says the key is already taken. LaunchDarkly's status for that is unconfirmed: 409, or
/// 400 with a message saying so.
fn is_duplicate(status: StatusCode, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    status == StatusCode::CONFLICT
        || (status == StatusCode::BAD_REQUEST
            && (message.contains("already exist") || message.contains("already in use")))
}

enum Verdict {
    Final(Result<Answer, NotDone>),
    Retry {
        failure: String,
        wait: Option<Duration>,
    },
}

fn bad_answer(call: Call<'_>, problem: String) -> ApiError {
    ApiError::BadAnswer {
        what: call.describe(),
        problem,
    }
}

/// The error and its causes, which is where reqwest says what actually happened to the connection.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the metric import API asks integrations to send as `User-Agent`: `MetricImport-<company>-int/<version>`.
const IMPORT_USER_AGENT: &str = concat!("MetricImport-ldsync-int/", env!("CARGO_PKG_VERSION"));

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}
