//! The emulator is strict where LaunchDarkly is: these send it the requests ldsync never sends, and check each is
//! refused the way LaunchDarkly refuses it, with nothing applied.

use ldsync_emulator::{Emulator, EmulatorConfig, SegmentSeed};
use reqwest::Method;
use serde_json::{Value, json};

const SEMANTIC_PATCH: &str = "application/json; domain-model=launchdarkly.semanticpatch";
const SEGMENT: &str = "/api/v2/segments/default/production/beta";

fn emulator() -> Emulator {
    let emulator = Emulator::start(EmulatorConfig::default()).unwrap();
    emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            excluded: vec![("user".into(), vec!["x1".into()])],
            ..SegmentSeed::standard("beta", "user", &["u1"])
        },
    );
    emulator
}

/// Sends a request with the given headers (None leaves one out) and returns the status and JSON body.
async fn send(
    emulator: &Emulator,
    method: Method,
    path: &str,
    token: Option<&str>,
    version: Option<&str>,
    content_type: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method, format!("{}{path}", emulator.base_url()));
    for (name, value) in [
        ("authorization", token),
        ("ld-api-version", version),
        ("content-type", content_type),
    ] {
        if let Some(value) = value {
            request = request.header(name, value);
        }
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A semantic patch of the `beta` segment with the default token and version.
async fn patch_beta(emulator: &Emulator, body: Value) -> (u16, Value) {
    let token = Some("api-emulator-token");
    send(
        emulator,
        Method::PATCH,
        SEGMENT,
        token,
        Some("20240415"),
        Some(SEMANTIC_PATCH),
        Some(body),
    )
    .await
}

/// A GET with the default token under API `version`.
async fn get(emulator: &Emulator, path: &str, version: Option<&str>) -> (u16, Value) {
    let token = Some("api-emulator-token");
    send(emulator, Method::GET, path, token, version, None, None).await
}

fn patch(instructions: Value) -> Value {
    json!({"environmentKey": "production", "instructions": instructions})
}

fn add(values: Value) -> Value {
    json!([{"kind": "addIncludedTargets", "contextKind": "user", "values": values}])
}

/// Token, API version, content type, body; then the status and a part of the message expected.
type Case<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Value,
    u16,
    &'a str,
);

/// Method, path, content type, body; then the status and a part of the message expected.
type RouteCase<'a> = (Method, String, Option<&'a str>, Value, u16, &'a str);

/// Checks that case `i` was answered `status` with LaunchDarkly's error body, its message holding `message`.
fn assert_refused(i: usize, (got, answer): (u16, &Value), status: u16, message: &str) {
    assert_eq!(got, status, "case {i}: {answer}");
    let text = answer["message"].as_str().unwrap_or_default();
    assert!(
        text.contains(message),
        "case {i}: {message:?} not in {text:?}"
    );
    assert!(
        answer["code"].is_string() && answer["id"].is_string(),
        "case {i}: {answer}"
    );
}

/// Semantic patches of `beta` that LaunchDarkly refuses: a missing, malformed or wrong token, then a missing version,
/// the wrong content type, a malformed body, and instructions it cannot apply.
fn refused_patches() -> Vec<Case<'static>> {
    let mut cases = refused_tokens();
    cases.extend(refused_headers_and_bodies());
    cases
}

/// A good patch of `beta` sent without a token, with `Bearer`, with an SDK key and with a client-side ID.
fn refused_tokens() -> Vec<Case<'static>> {
    let version = Some("20240415");
    vec![
        (
            None,
            version,
            Some(SEMANTIC_PATCH),
            patch(add(json!(["u2"]))),
            401,
            "no Authorization header",
        ),
        (
            Some("Bearer api-emulator-token"),
            version,
            Some(SEMANTIC_PATCH),
            patch(add(json!(["u2"]))),
            401,
            "without `Bearer`",
        ),
        (
            Some("sdk-12345678-aaaa"),
            version,
            Some(SEMANTIC_PATCH),
            patch(add(json!(["u2"]))),
            401,
            "SDK keys",
        ),
        (
            Some("0123456789abcdef01234567"),
            version,
            Some(SEMANTIC_PATCH),
            patch(add(json!(["u2"]))),
            401,
            "client-side IDs",
        ),
    ]
}

/// Patches of `beta` with the right token that LaunchDarkly refuses for their headers or their body.
fn refused_headers_and_bodies() -> Vec<Case<'static>> {
    let token = Some("api-emulator-token");
    let version = Some("20240415");
    vec![
        (
            token,
            None,
            Some(SEMANTIC_PATCH),
            patch(add(json!(["u2"]))),
            400,
            "LD-API-Version",
        ),
        (
            token,
            version,
            Some("application/json"),
            patch(add(json!(["u2"]))),
            400,
            "read as a JSON patch",
        ),
        (
            token,
            version,
            Some(SEMANTIC_PATCH),
            json!({"instructions": add(json!(["u2"]))}),
            400,
            "needs `environmentKey`",
        ),
        (
            token,
            version,
            Some(SEMANTIC_PATCH),
            patch(json!([{"kind": "addIncludedFoo", "values": ["u2"]}])),
            400,
            "unknown instruction kind `addIncludedFoo`",
        ),
        (
            token,
            version,
            Some(SEMANTIC_PATCH),
            patch(add(json!(["x1"]))),
            400,
            "both included and excluded",
        ),
        (
            token,
            version,
            Some(SEMANTIC_PATCH),
            patch(add(json!(
                (0..1501).map(|i| format!("u{i}")).collect::<Vec<_>>()
            ))),
            400,
            "batch limit of 1500",
        ),
        // A valid instruction and an invalid one: neither applies.
        (
            token,
            version,
            Some(SEMANTIC_PATCH),
            patch(
                json!([add(json!(["u2"]))[0], {"kind": "removeIncludedTargets", "contextKind": "user"}]),
            ),
            400,
            "needs a non-empty `values`",
        ),
    ]
}

#[tokio::test(flavor = "current_thread")]
async fn strict_refusals_name_the_problem_and_change_nothing() {
    let emulator = emulator();
    for (i, (auth, version, content_type, body, status, message)) in
        refused_patches().into_iter().enumerate()
    {
        let (got, answer) = send(
            &emulator,
            Method::PATCH,
            SEGMENT,
            auth,
            version,
            content_type,
            Some(body),
        )
        .await;
        assert_refused(i, (got, &answer), status, message);
    }
    let segment = emulator.segment("default", "production", "beta").unwrap();
    assert_eq!(
        (segment["version"].clone(), segment["included"].clone()),
        (json!(1), json!(["u1"]))
    );
    assert!(emulator.requests().iter().all(|r| !r.applied));
}

#[tokio::test(flavor = "current_thread")]
async fn semantic_patches_are_idempotent_and_a_standard_segment_stops_at_15000() {
    let emulator = emulator();
    let (status, first) = patch_beta(&emulator, patch(add(json!(["u2"])))).await;
    assert_eq!((status, first["version"].clone()), (200, json!(2)));
    let (status, again) = patch_beta(&emulator, patch(add(json!(["u2"])))).await;
    assert_eq!(
        (status, again["version"].clone()),
        (200, json!(2)),
        "adding a present key changes nothing"
    );
    for chunk in 0..10 {
        let keys: Vec<String> = (0..1500).map(|i| format!("bulk-{chunk}-{i}")).collect();
        let (status, answer) = patch_beta(&emulator, patch(add(json!(keys)))).await;
        if chunk < 9 {
            assert_eq!(status, 200, "{answer}");
        } else {
            assert_eq!(status, 400);
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("at most 15000, use a big segment"),
                "{answer}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn lists_paginate_under_the_current_version_only() {
    let emulator = emulator();
    for i in 0..25 {
        let key = format!("s{i:02}");
        emulator.seed_segment(
            "default",
            "production",
            SegmentSeed::standard(&key, "user", &[]),
        );
    }
    let path = "/api/v2/segments/default/production";
    let (_, page) = get(&emulator, path, Some("20240415")).await;
    assert_eq!(
        (
            page["items"].as_array().unwrap().len(),
            page["totalCount"].clone()
        ),
        (20, json!(26))
    );
    assert_eq!(
        page["_links"]["next"]["href"],
        "/api/v2/segments/default/production?limit=20&offset=20"
    );
    let (_, whole) = get(&emulator, path, Some("20220603")).await;
    assert_eq!(whole["items"].as_array().unwrap().len(), 26);
    let (status, missing) = get(
        &emulator,
        "/api/v2/segments/default/staging/beta",
        Some("20240415"),
    )
    .await;
    assert_eq!(
        (status, missing["message"].clone()),
        (404, json!("Unknown environment `staging`"))
    );
}

/// Requests of each route that LaunchDarkly refuses for their content type, an unknown context kind, or a segment of
/// the wrong type (`big` is a big segment, `beta` a standard one).
fn refused_route_requests() -> Vec<RouteCase<'static>> {
    let segments = "/api/v2/segments/default/production";
    let new_segment = json!({"key": "fresh", "name": "fresh"});
    let members = json!({"included": {"add": ["o1"]}});
    vec![
        (
            Method::POST,
            segments.to_string(),
            None,
            new_segment.clone(),
            400,
            "Content-Type: application/json",
        ),
        (
            Method::POST,
            segments.to_string(),
            Some("text/plain"),
            new_segment.clone(),
            400,
            "not `text/plain`",
        ),
        (
            Method::POST,
            segments.to_string(),
            Some("application/json"),
            json!({"key": "b2", "name": "b2", "unbounded": true, "unboundedContextKind": "planet"}),
            400,
            "unknown context kind `planet`",
        ),
        (
            Method::POST,
            format!("{segments}/big/contexts"),
            None,
            members.clone(),
            400,
            "Content-Type: application/json",
        ),
        (
            Method::POST,
            format!("{SEGMENT}/contexts"),
            Some("application/json"),
            members.clone(),
            400,
            "is not a big segment",
        ),
        (
            Method::PATCH,
            format!("{segments}/big"),
            Some(SEMANTIC_PATCH),
            patch(add(json!(["u2"]))),
            400,
            "does not apply to big segment `big`",
        ),
        (
            Method::PATCH,
            SEGMENT.to_string(),
            Some(SEMANTIC_PATCH),
            patch(
                json!([{"kind": "addIncludedTargets", "contextKind": "planet", "values": ["p1"]}]),
            ),
            400,
            "unknown context kind `planet`",
        ),
    ]
}

#[tokio::test(flavor = "current_thread")]
async fn every_route_checks_its_content_type_context_kinds_and_segment_type() {
    let emulator = emulator();
    emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            unbounded: true,
            context_kind: "organization".into(),
            ..SegmentSeed::standard("big", "organization", &[])
        },
    );
    let token = Some("api-emulator-token");
    let version = Some("20240415");
    for (i, (method, path, content_type, body, status, message)) in
        refused_route_requests().into_iter().enumerate()
    {
        let (got, answer) = send(
            &emulator,
            method,
            &path,
            token,
            version,
            content_type,
            Some(body),
        )
        .await;
        assert_refused(i, (got, &answer), status, message);
    }
    assert!(emulator.requests().iter().all(|r| !r.applied));
    assert!(emulator.segment("default", "production", "fresh").is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn an_unknown_token_is_echoed_so_clients_must_scrub_it() {
    let emulator = emulator();
    let (status, answer) = send(
        &emulator,
        Method::GET,
        SEGMENT,
        Some("api-not-a-real-token"),
        Some("20240415"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        answer["message"],
        "Invalid access token `api-not-a-real-token`"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn role_denials_and_duplicate_creates_answer_with_the_configured_status() {
    for (denial, duplicate) in [(403, 409), (401, 400)] {
        let mut config = EmulatorConfig {
            role_denial_status: denial,
            duplicate_status: duplicate,
            ..EmulatorConfig::default()
        };
        config.tokens.push(ldsync_emulator::TokenGrant {
            token: "api-reader".into(),
            actions: Some(vec![]),
        });
        let emulator = ldsync_emulator::Emulator::start(config).unwrap();
        emulator.seed_segment(
            "default",
            "production",
            SegmentSeed::standard("beta", "user", &[]),
        );
        for (token, status, message) in [
            ("api-reader", denial, "does not allow `createSegment`"),
            (
                "api-emulator-token",
                duplicate,
                "segment with key `beta` already exists",
            ),
        ] {
            let (got, answer) = send(
                &emulator,
                Method::POST,
                "/api/v2/segments/default/production",
                Some(token),
                Some("20240415"),
                Some("application/json"),
                Some(json!({"key": "beta", "name": "beta"})),
            )
            .await;
            assert_eq!(got, status, "{token}: {answer}");
            assert!(
                answer["message"].as_str().unwrap().contains(message),
                "{token}: {answer}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_metric_import_api_checks_its_headers_and_events() {
    let emulator = emulator();
    let path = "/v2/event-data-import/default/production";
    let event = json!([{"kind": "custom", "key": "order", "creationDate": 1_700_000_000_000u64,
                        "contextKeys": {"user": "u1"}}]);
    let import = |schema: Option<&'static str>, body: Value| {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", emulator.base_url()))
            .header("authorization", "api-emulator-token")
            .header("content-type", "application/json")
            .header("user-agent", "MetricImport-test-int/1")
            .body(body.to_string());
        if let Some(schema) = schema {
            request = request.header("x-launchdarkly-event-schema", schema);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let (status, answer) = import(None, event.clone()).await;
    assert_refused(0, (status, &answer), 400, "X-LaunchDarkly-Event-Schema: 4");
    let (status, answer) = import(Some("4"), json!([{"kind": "custom", "key": "order"}])).await;
    assert_refused(1, (status, &answer), 400, "events[0]: `creationDate`");
    assert!(emulator.events("default", "production").is_empty());
    let (status, _) = import(Some("4"), event.clone()).await;
    assert_eq!(status, 202);
    assert_eq!(
        emulator.events("default", "production"),
        event.as_array().unwrap().clone()
    );
}
