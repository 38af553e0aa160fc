//! The HTTP side: each connection served by hyper with a kill switch (for lost acknowledgements), each request
//! recorded, put through the configured faults, authenticated, version-checked and routed to the segment store.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use std::time::{Duration, UNIX_EPOCH};

use hyper::header::{CONTENT_TYPE, DATE, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::faults::{Admission, epoch_ms};
use crate::segments::{ApiFailure, Segment};
use crate::transfers::{Upload, not_big, read_form};
use crate::{RecordedRequest, Shared};

const API: &str = "/api/v2/";
/// LaunchDarkly's metric import API lives on the events host, outside `/api/v2`.
const EVENTS: &str = "/v2/event-data-import/";
const VERSIONS: [&str; 3] = ["20240415", "20220603", "beta"];
/// The pattern of a path no route matches: a 404, whatever the method.
const UNKNOWN_ROUTE: &str = "(unknown)";

/// Serves `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shared: Shared, shutdown: impl Future<Output = ()>) {
    accept_each(listener, shutdown, |stream| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let service = {
                let kill = kill.clone();
                service_fn(move |request| handle(shared.clone(), kill.clone(), request))
            };
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            // Dropping the connection closes the socket with no answer written.
            tokio::select! {
                _ = connection => {}
                () = kill.notified() => {}
            }
        });
    })
    .await;
}

/// Hands each connection `listener` accepts to `serve`, until `shutdown` resolves.
pub async fn accept_each(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut serve: impl FnMut(TcpStream),
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                serve(stream);
            },
            () = &mut shutdown => return,
        }
    }
}

/// What a request asked for, once read.
struct ApiRequest {
    method: Method,
    parts: Vec<String>,
    query: Option<String>,
    headers: HeaderMap,
    body: Option<Value>,
    raw_body: Bytes,
    /// A big-segment import's form, checked; taken by the route.
    upload: Cell<Option<Result<Upload, ApiFailure>>>,
}

/// What the handler decided.
struct Answer {
    status: StatusCode,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    /// Whether stored state changed.
    applied: bool,
    /// A write whose answer may be lost.
    write: bool,
}

impl Answer {
    fn json(status: StatusCode, body: Value) -> Answer {
        Answer {
            status,
            body: Some(body),
            headers: vec![],
            applied: false,
            write: false,
        }
    }

    fn failure(failure: ApiFailure) -> Answer {
        let status =
            StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Answer::json(status, error_body(failure.code, &failure.message))
    }
}

async fn handle(
    shared: Shared,
    kill: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, body) = request.into_parts();
    let raw_body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = head.uri.path().to_string();
    shared.with(crate::State::advance);
    if path == "/_emulator/state" {
        return Ok(respond(Answer::json(StatusCode::OK, shared.snapshot()), 0));
    }
    let request = ApiRequest {
        method: head.method.clone(),
        parts: match path.strip_prefix(EVENTS) {
            Some(rest) => std::iter::once("event-data-import")
                .chain(rest.split('/'))
                .collect(),
            None => path
                .strip_prefix(API)
                .unwrap_or("")
                .split('/')
                .collect::<Vec<_>>(),
        }
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect(),
        query: head.uri.query().map(str::to_string),
        body: serde_json::from_slice(&raw_body).ok(),
        headers: head.headers,
        raw_body,
        upload: Cell::new(None),
    };
    let route = route_pattern(&request.method, &request.parts);
    let mut body = request.body.clone();
    if route.starts_with("POST ") && route.ends_with("/imports") {
        let content_type = header(&request.headers, "content-type");
        let form = read_form(content_type.as_deref(), request.raw_body.clone()).await;
        let limits = shared.with(|s| s.import_limits);
        let upload = form
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|f| f.upload(limits));
        if let Ok(form) = &form {
            body = Some(form.summary(upload.as_ref().ok().map(|u| u.keys.len())));
        }
        request.upload.set(Some(upload));
    }
    let index = shared.record(RecordedRequest {
        method: request.method.to_string(),
        path: path.clone(),
        query: request.query.clone(),
        route: route.clone(),
        status: 0,
        body,
        applied: false,
        content_type: header(&request.headers, "content-type"),
        api_version: header(&request.headers, "ld-api-version"),
        user_agent: header(&request.headers, "user-agent"),
        authorization: header(&request.headers, "authorization"),
        payload_id: header(&request.headers, "x-launchdarkly-payload-id"),
        location: None,
    });
    let latency = shared.with(|s| s.faults.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = if !path.starts_with(API) && !path.starts_with(EVENTS) {
        Answer::failure(ApiFailure::new(
            404,
            "not_found",
            format!("no such resource `{path}`"),
        ))
    } else {
        answer(&shared, &request, &route)
    };
    let dropped =
        answer.write && answer.applied && shared.with(|s| s.rng.f64() < s.faults.drop_ack_rate);
    let location = answer
        .headers
        .iter()
        .find(|(name, _)| *name == "location")
        .map(|(_, value)| value.clone());
    shared.finish(
        index,
        if dropped { 0 } else { answer.status.as_u16() },
        answer.applied,
        location,
    );
    if dropped {
        kill.notify_one();
        std::future::pending::<()>().await;
    }
    let skew_ms = shared.with(|s| s.faults.clock_skew_ms);
    Ok(respond(answer, skew_ms))
}

/// Faults, then authentication, the version header, and the route.
fn answer(shared: &Shared, request: &ApiRequest, route: &str) -> Answer {
    let admission = shared.with(|s| {
        s.faults
            .rate_limit
            .map(|limit| s.window.admit(&limit, route))
    });
    let rate_headers = match admission {
        Some(Admission::Limited(headers)) => {
            let mut answer = Answer::json(
                StatusCode::TOO_MANY_REQUESTS,
                error_body(
                    "rate_limited",
                    "You've exceeded the API rate limit. Try again later.",
                ),
            );
            answer.headers = headers;
            return answer;
        }
        Some(Admission::Admitted(headers)) => headers,
        None => vec![],
    };
    if shared.with(|s| s.rng.f64() < s.faults.error_rate) {
        return Answer::json(
            StatusCode::SERVICE_UNAVAILABLE,
            error_body(
                "service_unavailable",
                "The service is temporarily unavailable.",
            ),
        );
    }
    // Imports and exports are processes, not segment writes: another writer's change does not conflict with them.
    let writes = matches!(
        request.method,
        Method::PATCH | Method::POST | Method::DELETE
    ) && request.parts.first().is_some_and(|p| p == "segments")
        && request.parts.len() >= 4
        && !matches!(
            request.parts.get(4).map(String::as_str),
            Some("imports" | "exports")
        );
    if writes && shared.with(|s| s.rng.f64() < s.faults.conflict_rate) {
        return Answer::json(
            StatusCode::CONFLICT,
            error_body(
                "optimistic_locking_error",
                "The segment was changed by another request at the same time; try again.",
            ),
        );
    }
    let imports_events = request
        .parts
        .first()
        .is_some_and(|p| p == "event-data-import");
    let authorized = authorize(shared, request, !imports_events);
    let mut answer = match authorized.and_then(|actions| match imports_events {
        true => import_events(shared, request, actions),
        false => routed(shared, request, route, actions),
    }) {
        Ok(answer) => answer,
        Err(failure) => Answer::failure(failure),
    };
    answer.headers.extend(rate_headers);
    answer
}

/// The token's allowed actions (`None`: all), or why the request is refused. The REST API also needs
/// `LD-API-Version` (`rest`); the metric import API does not.
fn authorize(
    shared: &Shared,
    request: &ApiRequest,
    rest: bool,
) -> Result<Option<BTreeSet<String>>, ApiFailure> {
    let unauthorized = |message: &str| ApiFailure::new(401, "unauthorized", message);
    let token = header(&request.headers, "authorization")
        .ok_or_else(|| unauthorized("no Authorization header: send an access token"))?;
    if token.starts_with("Bearer ") || token.starts_with("bearer ") {
        return Err(unauthorized(
            "LaunchDarkly takes the bare access token in Authorization, without `Bearer`",
        ));
    }
    let client_side_id = token.len() == 24 && token.chars().all(|c| c.is_ascii_hexdigit());
    if token.starts_with("sdk-") || token.starts_with("mob-") || client_side_id {
        return Err(unauthorized(
            "SDK keys, mobile keys and client-side IDs cannot call the REST API; use an access token",
        ));
    }
    let grant = shared.with(|s| s.tokens.iter().find(|t| t.token == token).cloned());
    // LaunchDarkly's own message is terser; this one repeats the token, so that clients prove they scrub it.
    let grant = grant.ok_or_else(|| unauthorized(&format!("Invalid access token `{token}`")))?;
    let actions = grant.actions.map(|a| a.into_iter().collect());
    if !rest {
        return Ok(actions);
    }
    let version = header(&request.headers, "ld-api-version").ok_or_else(|| {
        ApiFailure::invalid(
            "send the LD-API-Version header (this emulator is strict): LD-API-Version: 20240415",
        )
    })?;
    if !VERSIONS.contains(&version.as_str()) {
        return Err(ApiFailure::invalid(format!(
            "unknown LD-API-Version `{version}`"
        )));
    }
    Ok(actions)
}

fn routed(
    shared: &Shared,
    request: &ApiRequest,
    route: &str,
    actions: Option<BTreeSet<String>>,
) -> Result<Answer, ApiFailure> {
    let parts: Vec<&str> = request.parts.iter().map(String::as_str).collect();
    let method = &request.method;
    let allow = |needed: &BTreeSet<&'static str>| allow(shared, actions.as_ref(), needed);
    // An import is a multipart form (checked as it is read); an export has no body.
    let transfer = matches!(parts.get(4), Some(&("imports" | "exports")));
    if matches!(method, &Method::POST | &Method::PUT) && !transfer {
        json_body(request)?;
    }
    match (method, parts.as_slice()) {
        (&Method::GET, ["versions"]) => Ok(Answer::json(
            StatusCode::OK,
            json!({"currentVersion": 20240415, "latestVersion": 20240415,
                   "validVersions": [20160426, 20191212, 20210729, 20220603, 20240415], "beta": false}),
        )),
        (&Method::GET, ["projects", p]) => {
            shared.environments(p)?;
            Ok(Answer::json(
                StatusCode::OK,
                json!({"_id": format!("project-{p}"), "key": p, "name": p, "tags": []}),
            ))
        }
        (&Method::GET, ["projects", p, "environments", e]) => {
            shared.check_environment(p, e)?;
            Ok(Answer::json(
                StatusCode::OK,
                json!({"_id": format!("env-{e}"), "key": e, "name": e, "tags": []}),
            ))
        }
        (&Method::GET, ["segments", p, e]) => {
            shared.check_environment(p, e)?;
            Ok(Answer::json(StatusCode::OK, list(shared, request, p, e)))
        }
        (&Method::POST, ["segments", p, e]) => {
            shared.check_environment(p, e)?;
            allow(&BTreeSet::from(["createSegment"]))?;
            let segment = new_segment(request.body.as_ref())?;
            if segment.unbounded {
                shared.check_context_kind(&segment.unbounded_context_kind)?;
            }
            let rep = segment.representation(p, e);
            shared.insert_new(p, e, segment)?;
            Ok(Answer {
                applied: true,
                write: true,
                ..Answer::json(StatusCode::CREATED, rep)
            })
        }
        (&Method::GET, ["segments", p, e, k]) => {
            let rep = shared.view(p, e, k, |s, segment| s.representation(p, e, segment))?;
            Ok(Answer::json(StatusCode::OK, rep))
        }
        (&Method::DELETE, ["segments", p, e, k]) => {
            shared.view(p, e, k, |_, _| ())?;
            allow(&BTreeSet::from(["deleteSegment"]))?;
            shared.with(|s| {
                s.segments
                    .remove(&(p.to_string(), e.to_string(), k.to_string()))
            });
            Ok(Answer {
                status: StatusCode::NO_CONTENT,
                body: None,
                headers: vec![],
                applied: true,
                write: true,
            })
        }
        (&Method::PATCH, ["segments", p, e, k]) => {
            let segment = shared.segment(p, e, k)?;
            let instructions = semantic_patch(request, e)?;
            for kind in instructions
                .iter()
                .filter_map(|i| i["contextKind"].as_str())
            {
                shared.check_context_kind(kind)?;
            }
            let adds = instructions.iter().filter(|i| {
                i["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("addIncluded"))
            });
            refuse_keys(shared, adds.map(|i| &i["values"]))?;
            let (next, needed) = segment.patched(instructions)?;
            allow(&needed)?;
            let dry_run = request
                .query
                .as_deref()
                .is_some_and(|q| q.split('&').any(|p| p == "dryRun=true"));
            let saved = if dry_run {
                segment.clone()
            } else {
                shared.save(p, e, &segment, next)
            };
            let applied = saved.differs_from(&segment) || saved.version != segment.version;
            let rep = shared.with(|s| s.representation(p, e, &saved));
            Ok(Answer {
                applied,
                write: !dry_run,
                ..Answer::json(StatusCode::OK, rep)
            })
        }
        (&Method::POST, ["segments", p, e, k, "contexts" | "users"]) => {
            let body = request
                .body
                .as_ref()
                .ok_or_else(|| ApiFailure::invalid("the body must be JSON"))?;
            shared.check_environment(p, e)?;
            refuse_keys(shared, [&body["included"]["add"]])?;
            allow(&Segment::member_actions(body))?;
            let applied = shared.change_members(p, e, k, body)?;
            Ok(Answer {
                status: StatusCode::NO_CONTENT,
                body: None,
                headers: vec![],
                applied,
                write: true,
            })
        }
        (&Method::GET, ["segments", p, e, k, "contexts" | "users", context]) => {
            let has = |t: &crate::segments::Targets| t.values().any(|keys| keys.contains(*context));
            let (included, excluded) = shared.view(p, e, k, |_, segment| {
                (has(&segment.included), has(&segment.excluded))
            })?;
            Ok(Answer::json(
                StatusCode::OK,
                json!({"userKey": context, "included": included, "excluded": excluded}),
            ))
        }
        (&Method::POST, ["segments", p, e, k, "imports"]) => {
            if !shared.view(p, e, k, |_, segment| segment.unbounded)? {
                return Err(not_big(k, "imports"));
            }
            allow(&BTreeSet::from(["updateIncluded"]))?;
            let upload = request
                .upload
                .take()
                .unwrap_or_else(|| Err(ApiFailure::invalid("an import needs a multipart form")))?;
            refuse_included(shared, upload.keys.iter().map(String::as_str))?;
            let location = shared.with(|s| s.begin_import(p, e, k, upload))?;
            Ok(Answer {
                status: StatusCode::NO_CONTENT,
                body: None,
                headers: vec![("location", location)],
                applied: true,
                write: true,
            })
        }
        (&Method::GET, ["segments", p, e, k, "imports", id]) => {
            shared.view(p, e, k, |_, _| ())?;
            let rep = shared.with(|s| s.import_representation(p, e, k, id))?;
            Ok(Answer::json(StatusCode::OK, rep))
        }
        (&Method::POST, ["segments", p, e, k, "exports"]) => {
            shared.check_environment(p, e)?;
            let location = shared.with(|s| s.begin_export(p, e, k))?;
            Ok(Answer {
                status: StatusCode::OK,
                body: None,
                headers: vec![("location", location)],
                applied: true,
                write: false,
            })
        }
        (&Method::GET, ["segments", p, e, k, "exports", id]) => {
            shared.view(p, e, k, |_, _| ())?;
            let rep = shared.with(|s| s.export_representation(p, e, k, id))?;
            Ok(Answer::json(StatusCode::OK, rep))
        }
        _ if route.ends_with(UNKNOWN_ROUTE) => {
            Err(ApiFailure::new(404, "not_found", "no such resource"))
        }
        _ => Err(ApiFailure::new(
            405,
            "method_not_allowed",
            format!("{method} is not allowed here"),
        )),
    }
}

/// Refuses a call whose token's role (`allowed`, `None`: every action) lacks one of the `needed` actions, with
/// the configured status.
fn allow(
    shared: &Shared,
    allowed: Option<&BTreeSet<String>>,
    needed: &BTreeSet<&'static str>,
) -> Result<(), ApiFailure> {
    let Some(missing) = allowed.and_then(|allowed| needed.iter().find(|a| !allowed.contains(**a)))
    else {
        return Ok(());
    };
    let status = shared.with(|s| s.role_denial_status);
    Err(ApiFailure::new(
        status,
        if status == 401 {
            "unauthorized"
        } else {
            "forbidden"
        },
        format!("the access token's role does not allow `{missing}`"),
    ))
}

/// `POST /v2/event-data-import/{project}/{environment}`: checks the headers and every event the way the metric
/// import API does, and stores the batch once per `X-LaunchDarkly-Payload-ID`.
fn import_events(
    shared: &Shared,
    request: &ApiRequest,
    actions: Option<BTreeSet<String>>,
) -> Result<Answer, ApiFailure> {
    let ["event-data-import", project, environment] =
        request.parts.iter().map(String::as_str).collect::<Vec<_>>()[..]
    else {
        return Err(ApiFailure::new(404, "not_found", "no such resource"));
    };
    if request.method != Method::POST {
        return Err(ApiFailure::new(
            405,
            "method_not_allowed",
            "POST events here",
        ));
    }
    shared.check_environment(project, environment)?;
    allow(
        shared,
        actions.as_ref(),
        &BTreeSet::from(["importEventData"]),
    )?;
    if header(&request.headers, "x-launchdarkly-event-schema").as_deref() != Some("4") {
        return Err(ApiFailure::invalid("send X-LaunchDarkly-Event-Schema: 4"));
    }
    if header(&request.headers, "user-agent").is_none_or(|agent| agent.is_empty()) {
        return Err(ApiFailure::invalid(
            "send a User-Agent naming the integration",
        ));
    }
    json_body(request)?;
    let events = crate::events::parse_batch(
        &request.raw_body,
        header(&request.headers, "content-encoding"),
    )?;
    refuse_event_contexts(shared, &events)?;
    let payload = header(&request.headers, "x-launchdarkly-payload-id");
    let applied = shared.import(project, environment, payload, events);
    Ok(Answer {
        status: StatusCode::ACCEPTED,
        body: None,
        headers: vec![],
        applied,
        write: true,
    })
}

/// Refuses, with 400, a batch of events any of which has a context key among the faults' refused keys.
fn refuse_event_contexts(shared: &Shared, events: &[Value]) -> Result<(), ApiFailure> {
    let keys = events
        .iter()
        .filter_map(|event| event["contextKeys"].as_object())
        .flat_map(|keys| keys.values())
        .filter_map(Value::as_str);
    match refused_key(shared, keys) {
        Some(key) => Err(ApiFailure::invalid(format!(
            "context key `{key}` is refused"
        ))),
        None => Ok(()),
    }
}

/// The instructions of a semantic patch, after LaunchDarkly's checks of its content type and environment.
fn semantic_patch<'a>(
    request: &'a ApiRequest,
    environment: &str,
) -> Result<&'a [Value], ApiFailure> {
    let content_type = header(&request.headers, "content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let semantic = content_type
        .split(';')
        .skip(1)
        .any(|param| param.trim().replace(' ', "") == "domain-model=launchdarkly.semanticpatch");
    let body = request.body.as_ref().ok_or_else(|| {
        ApiFailure::invalid(format!(
            "the body is not JSON ({} bytes)",
            request.raw_body.len()
        ))
    })?;
    if !semantic {
        return Err(ApiFailure::invalid(
            "the body was read as a JSON patch and is not one; a semantic patch needs Content-Type: \
             application/json; domain-model=launchdarkly.semanticpatch",
        ));
    }
    match body["environmentKey"].as_str() {
        None => {
            return Err(ApiFailure::invalid(
                "a segment's semantic patch needs `environmentKey` in the body",
            ));
        }
        Some(key) if key != environment => {
            return Err(ApiFailure::invalid(format!(
                "`environmentKey` `{key}` is not the environment of the path, `{environment}`"
            )));
        }
        Some(_) => {}
    }
    body["instructions"]
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| ApiFailure::invalid("a semantic patch needs an `instructions` list"))
}

/// A POST or PUT must say it carries JSON, as LaunchDarkly's API requires.
fn json_body(request: &ApiRequest) -> Result<(), ApiFailure> {
    let content_type = header(&request.headers, "content-type").unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiFailure::invalid(format!(
        "the body must be sent as Content-Type: application/json, not `{content_type}`"
    )))
}

/// Refuses a write whose lists of keys would include one of the keys the faults say LaunchDarkly refuses.
fn refuse_keys<'a>(
    shared: &Shared,
    lists: impl IntoIterator<Item = &'a Value>,
) -> Result<(), ApiFailure> {
    let keys = lists
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str);
    refuse_included(shared, keys)
}

/// Refuses a write that would include one of the keys the faults say LaunchDarkly refuses.
fn refuse_included<'a>(
    shared: &Shared,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), ApiFailure> {
    match refused_key(shared, keys) {
        Some(key) => Err(ApiFailure::invalid(format!(
            "context key `{key}` cannot be included: it was excluded from the segment by another change"
        ))),
        None => Ok(()),
    }
}

/// The first of `keys` that the faults say LaunchDarkly refuses.
fn refused_key<'a>(shared: &Shared, keys: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let refused = shared.with(|s| s.faults.refused_keys.clone());
    if refused.is_empty() {
        return None;
    }
    keys.into_iter()
        .find(|key| refused.contains(*key))
        .map(str::to_string)
}

fn new_segment(body: Option<&Value>) -> Result<Segment, ApiFailure> {
    let body = body.ok_or_else(|| ApiFailure::invalid("the body must be JSON"))?;
    let text = |field: &str| body[field].as_str().filter(|v| !v.is_empty());
    let key = text("key").ok_or_else(|| ApiFailure::invalid("`key` is required"))?;
    let name = text("name").ok_or_else(|| ApiFailure::invalid("`name` is required"))?;
    let unbounded = body["unbounded"].as_bool().unwrap_or(false);
    let mut segment = Segment::new(
        key,
        name,
        unbounded,
        text("unboundedContextKind").unwrap_or("user"),
        epoch_ms(),
    );
    segment.description = text("description").map(str::to_string);
    segment.tags = crate::segments::string_list(&body["tags"])
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(segment)
}

/// The segment list, paginated (limit 20 by default) under API version 20240415, whole under older ones.
fn list(shared: &Shared, request: &ApiRequest, project: &str, environment: &str) -> Value {
    let items: Vec<Value> = shared.with(|s| {
        s.segments
            .iter()
            .filter(|((p, e, _), _)| p == project && e == environment)
            .map(|(_, segment)| s.representation(project, environment, segment))
            .collect()
    });
    let total = items.len();
    let paginated = header(&request.headers, "ld-api-version").as_deref() != Some("20220603");
    if !paginated {
        return json!({"items": items, "totalCount": total, "_links": {}});
    }
    let param = |name: &str| {
        request
            .query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .find_map(|p| {
                p.strip_prefix(name)?
                    .strip_prefix('=')?
                    .parse::<usize>()
                    .ok()
            })
    };
    let (limit, offset) = (
        param("limit").unwrap_or(20).max(1),
        param("offset").unwrap_or(0),
    );
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let base = format!("/api/v2/segments/{project}/{environment}");
    let mut links = json!({"self": {"href": format!("{base}?limit={limit}&offset={offset}")}});
    if offset + limit < total {
        links["next"] = json!({"href": format!("{base}?limit={limit}&offset={}", offset + limit)});
    }
    json!({"items": page, "totalCount": total, "_links": links})
}

/// The route a request counts against: its verb and URL pattern.
fn route_pattern(method: &Method, parts: &[String]) -> String {
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let pattern = match parts.as_slice() {
        ["versions"] => "/api/v2/versions",
        ["projects", _] => "/api/v2/projects/{projectKey}",
        ["projects", _, "environments", _] => {
            "/api/v2/projects/{projectKey}/environments/{environmentKey}"
        }
        ["segments", _, _] => "/api/v2/segments/{projectKey}/{environmentKey}",
        ["segments", _, _, _] => "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}",
        ["segments", _, _, _, "contexts"] => {
            "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/contexts"
        }
        ["segments", _, _, _, "users"] => {
            "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/users"
        }
        ["segments", _, _, _, "contexts", _] => {
            "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/contexts/{contextKey}"
        }
        ["segments", _, _, _, "users", _] => {
            "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/users/{userKey}"
        }
        ["segments", _, _, _, "imports"] => {
            "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/imports"
        }
        ["segments", _, _, _, "imports", _] => {
            "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/imports/{importID}"
        }
        ["segments", _, _, _, "exports"] => {
            "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/exports"
        }
        ["segments", _, _, _, "exports", _] => {
            "/api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/exports/{exportID}"
        }
        ["event-data-import", _, _] => "/v2/event-data-import/{projectKey}/{environmentKey}",
        _ => UNKNOWN_ROUTE,
    };
    format!("{method} {pattern}")
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn error_body(code: &str, message: &str) -> Value {
    json!({"code": code, "message": message, "id": format!("emulator-{:016x}", fastrand::u64(..))})
}

/// The HTTP response, its `Date` and `X-Ratelimit-Reset` on the emulator's clock, `skew_ms` off the real one.
fn respond(answer: Answer, skew_ms: i64) -> Response<Full<Bytes>> {
    let has_body = answer.body.is_some();
    let body = answer
        .body
        .map(|b| Bytes::from(b.to_string()))
        .unwrap_or_default();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = answer.status;
    if has_body {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let server_now = UNIX_EPOCH + Duration::from_millis(epoch_ms().saturating_add_signed(skew_ms));
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(server_now)) {
        response.headers_mut().insert(DATE, date);
    }
    for (name, value) in answer.headers {
        let value = match (name, value.parse::<u64>()) {
            ("x-ratelimit-reset", Ok(reset_ms)) => {
                reset_ms.saturating_add_signed(skew_ms).to_string()
            }
            _ => value,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
