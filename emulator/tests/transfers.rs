//! Big-segment imports and exports as a client sees them over HTTP: the multipart import, its `Location`, its status
//! over time and the members it leaves; the one-import-per-environment 409; LaunchDarkly's limits and the form's
//! checks; the faults (stopped, pending approval, rate limits, lost acknowledgements); exports' files on the file
//! host, which refuses any `Authorization` header and records every request.

use std::time::{Duration, Instant};

use ldsync_emulator::{
    DEFAULT_TOKEN, Emulator, EmulatorConfig, Faults, ImportLimits, ImportMode, RateLimit,
    SegmentSeed, StopImports, ThrottleHeaders, TokenGrant, TransferStatus,
};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const SEGMENTS: &str = "/api/v2/segments/default";

fn big(key: &str, members: &[&str]) -> SegmentSeed {
    SegmentSeed {
        unbounded: true,
        ..SegmentSeed::standard(key, "user", members)
    }
}

/// An emulator whose steps last `step`, with big segments `big` and `big2` in production, `big` in test, and the
/// standard segment `small` in production.
fn emulator(step: Duration, config: EmulatorConfig) -> Emulator {
    let emulator = Emulator::start(EmulatorConfig {
        import_step: step,
        export_step: step,
        ..config
    })
    .unwrap();
    emulator.seed_segment("default", "production", big("big", &["a"]));
    emulator.seed_segment("default", "production", big("big2", &[]));
    emulator.seed_segment("default", "test", big("big", &[]));
    emulator.seed_segment(
        "default",
        "production",
        SegmentSeed::standard("small", "user", &["s1"]),
    );
    emulator
}

fn file_part(csv: &str) -> Part {
    Part::bytes(csv.as_bytes().to_vec())
        .file_name("keys.csv")
        .mime_str("text/csv")
        .unwrap()
}

/// What an answer carried: status, `Location`, JSON body (null when empty or not JSON).
struct Answer {
    status: u16,
    location: Option<String>,
    body: Value,
    text: String,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    Answer {
        status,
        location,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn api(emulator: &Emulator, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    api_as(DEFAULT_TOKEN, emulator, method, path)
}

fn api_as(
    token: &str,
    emulator: &Emulator,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{}{path}", emulator.base_url()))
        .header("authorization", token)
        .header("ld-api-version", "20240415")
}

/// Sends `form` as an import into `segment` (`environment/key`).
async fn send_form(emulator: &Emulator, segment: &str, form: Form) -> Answer {
    let path = format!("{SEGMENTS}/{segment}/imports");
    answer(
        api(emulator, reqwest::Method::POST, &path)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Imports `csv` into `segment` (`environment/key`) with `mode`.
async fn import(emulator: &Emulator, segment: &str, mode: &str, csv: &str) -> Answer {
    let form = Form::new()
        .text("mode", mode.to_string())
        .text("waitOnApprovals", "false")
        .part("file", file_part(csv));
    send_form(emulator, segment, form).await
}

async fn get(emulator: &Emulator, path: &str) -> Answer {
    answer(
        api(emulator, reqwest::Method::GET, path)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Polls `location` until its status is `wanted`; returns the statuses seen, in order, each once.
async fn poll_until(emulator: &Emulator, location: &str, wanted: &str) -> (Vec<String>, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Vec<String> = vec![];
    loop {
        let got = get(emulator, location).await;
        assert_eq!(got.status, 200, "{}", got.text);
        let status = got.body["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == wanted {
            return (seen, got.body);
        }
        assert!(Instant::now() < deadline, "still {seen:?} at {location}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn members(emulator: &Emulator, environment: &str, key: &str) -> Vec<String> {
    emulator
        .included("default", environment, key, "user")
        .into_iter()
        .collect()
}

/// Whether `seen` goes forward through `order`, skipping none it should not skip: a subsequence ending at the end.
fn in_order(seen: &[String], order: &[&str]) {
    let mut rest = order.iter();
    for status in seen {
        assert!(
            rest.any(|s| s == status),
            "{seen:?} is not in the order {order:?}"
        );
    }
    assert_eq!(seen.last().map(String::as_str), order.last().copied());
}

#[tokio::test(flavor = "current_thread")]
async fn a_merge_then_a_replace_change_the_members_when_each_completes() {
    let emulator = emulator(Duration::from_millis(200), EmulatorConfig::default());
    let merged = import(&emulator, "production/big", "merge", "b\nc,extra\n\nb\n").await;
    assert_eq!((merged.status, merged.text.as_str()), (204, ""));
    let location = merged.location.unwrap();
    let id = location
        .strip_prefix("/api/v2/segments/default/production/big/imports/")
        .unwrap();
    assert_eq!(id.len(), 36, "{id}");
    let first = get(&emulator, &location).await.body;
    assert_eq!(first["status"], "preparing");
    assert_eq!(members(&emulator, "production", "big"), ["a"]);
    let segment = get(&emulator, &format!("{SEGMENTS}/production/big")).await;
    assert_eq!(segment.body["_importInProgress"], true);
    let (seen, done) = poll_until(&emulator, &location, "complete").await;
    in_order(&seen, &["preparing", "in_progress", "complete"]);
    assert_eq!(
        done,
        json!({"id": id, "segmentKey": "big", "creationTime": done["creationTime"], "mode": "merge",
               "status": "complete", "files": [{"filename": "keys.csv", "status": "complete"}],
               "_links": {"self": {"href": location, "type": "application/json"}}})
    );
    assert_eq!(members(&emulator, "production", "big"), ["a", "b", "c"]);
    let segment = get(&emulator, &format!("{SEGMENTS}/production/big")).await;
    assert_eq!(segment.body["_importInProgress"], false);
    assert_eq!(segment.body["version"], 2);
    assert_eq!(segment.body["_unboundedMetadata"]["includedCount"], 3);

    // Nobody polls the replace: it applies all the same once its time has come.
    let replaced = import(&emulator, "production/big", "replace", "c\nd\n").await;
    assert_eq!(replaced.status, 204);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(members(&emulator, "production", "big"), ["c", "d"]);

    let imports = emulator.imports();
    assert_eq!(
        imports
            .iter()
            .map(|i| (i.mode, i.status, i.keys, i.bytes, i.filename.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                ImportMode::Merge,
                TransferStatus::Complete,
                3,
                13,
                "keys.csv"
            ),
            (
                ImportMode::Replace,
                TransferStatus::Complete,
                2,
                4,
                "keys.csv"
            )
        ]
    );
    let posts: Vec<_> = emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(
        posts[0].route,
        "POST /api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/imports"
    );
    assert_eq!(
        posts[0].body,
        Some(json!({"mode": "merge", "waitOnApprovals": false,
                    "file": {"filename": "keys.csv", "contentType": "text/csv", "bytes": 13, "keys": 3}}))
    );
    assert_eq!(posts[0].location.as_deref(), Some(location.as_str()));
    assert!(
        posts[0]
            .content_type
            .as_deref()
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );
    assert!(emulator.route_counts().contains_key(
        "GET /api/v2/segments/{projectKey}/{environmentKey}/{segmentKey}/imports/{importID}"
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn one_import_at_a_time_in_an_environment() {
    let emulator = emulator(Duration::from_millis(300), EmulatorConfig::default());
    let first = import(&emulator, "production/big", "merge", "b\n").await;
    assert_eq!(first.status, 204);
    let second = import(&emulator, "production/big2", "merge", "x\n").await;
    assert_eq!(second.status, 409, "{}", second.text);
    assert_eq!(second.body["code"], "conflict");
    let message = second.body["message"].as_str().unwrap();
    assert!(
        message.starts_with("Conflicting process: import ") && message.contains("of segment `big`"),
        "{message}"
    );
    assert_eq!(second.location, None);
    let elsewhere = import(&emulator, "test/big", "merge", "t\n").await;
    assert_eq!(
        elsewhere.status, 204,
        "another environment: {}",
        elsewhere.text
    );
    poll_until(&emulator, &first.location.unwrap(), "complete").await;
    let again = import(&emulator, "production/big2", "merge", "x\n").await;
    assert_eq!(again.status, 204, "{}", again.text);
    assert_eq!(
        members(&emulator, "production", "big2"),
        Vec::<String>::new()
    );
    assert_eq!(emulator.imports().len(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn the_form_the_file_and_the_segment_are_checked() {
    let limits = ImportLimits {
        max_bytes: 20,
        max_keys: 3,
    };
    let emulator = emulator(
        Duration::from_millis(20),
        EmulatorConfig {
            import_limits: limits,
            tokens: vec![
                TokenGrant {
                    token: DEFAULT_TOKEN.into(),
                    actions: None,
                },
                TokenGrant {
                    token: "api-reader".into(),
                    actions: Some(vec!["updateExcluded".into()]),
                },
            ],
            ..EmulatorConfig::default()
        },
    );
    emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            excluded: vec![("user".into(), vec!["x".into()])],
            ..big("fenced", &[])
        },
    );
    let merge = || Form::new().text("mode", "merge");
    let cases: Vec<(&str, Form, u16, &str)> = vec![
        (
            "production/big",
            merge().part("file", file_part("a\nb\nc\nd\n")),
            400,
            "the file holds more than 3 keys; import at most 3 a file, in several merge imports",
        ),
        (
            "production/big",
            merge().part("file", file_part("aaaaaaaaaa\nbbbbbbbbbb\n")),
            400,
            "the file is 22 bytes; an import's file holds at most 20 bytes",
        ),
        (
            "production/big",
            merge(),
            400,
            "the form field `file` is required: a CSV file of keys",
        ),
        (
            "production/big",
            Form::new().part("file", file_part("a\n")),
            400,
            "the form field `mode` is required: `merge` or `replace`",
        ),
        (
            "production/big",
            Form::new()
                .text("mode", "upsert")
                .part("file", file_part("a\n")),
            400,
            "`mode` must be `merge` or `replace`, not `upsert`",
        ),
        (
            "production/big",
            merge()
                .text("waitOnApprovals", "yes")
                .part("file", file_part("a\n")),
            400,
            "`waitOnApprovals` must be `true` or `false`, not `yes`",
        ),
        (
            "production/big",
            merge().text("file", "a\n"),
            400,
            "the form field `file` must be a file part, with a filename",
        ),
        (
            "production/big",
            merge()
                .part("file", file_part("a\n"))
                .text("segmentKey", "big"),
            400,
            "unknown form field `segmentKey`: an import takes `file`, `mode` and `waitOnApprovals`",
        ),
        (
            "production/big",
            merge()
                .part("file", file_part("a\n"))
                .part("file", file_part("b\n")),
            400,
            "the form field `file` is sent twice",
        ),
        (
            "production/big",
            merge().part("file", file_part("a\n,b\n")),
            400,
            "line 2 of the file has an empty key",
        ),
        (
            "production/big",
            merge().part("file", file_part("\n")),
            400,
            "the file holds no keys",
        ),
        (
            "production/small",
            merge().part("file", file_part("a\n")),
            400,
            "segment `small` is not a big segment: imports are for big segments only",
        ),
        (
            "production/nothing",
            merge().part("file", file_part("a\n")),
            404,
            "Unknown segment `nothing`",
        ),
        (
            "production/fenced",
            merge().part("file", file_part("a\nx\n")),
            400,
            "`x` (user) would be both included and excluded in segment `fenced`",
        ),
    ];
    for (i, (segment, form, status, message)) in cases.into_iter().enumerate() {
        let got = send_form(&emulator, segment, form).await;
        assert_eq!(
            (i, got.status, got.body["message"].as_str()),
            (i, status, Some(message))
        );
    }

    let json = api(
        &emulator,
        reqwest::Method::POST,
        &format!("{SEGMENTS}/production/big/imports"),
    )
    .header("content-type", "application/json")
    .body(r#"{"mode":"merge"}"#)
    .send()
    .await
    .unwrap();
    let json = answer(json).await;
    assert_eq!(
        (json.status, json.body["message"].as_str()),
        (
            400,
            Some(
                "an import must be sent as Content-Type: multipart/form-data with a boundary, not `application/json`"
            )
        )
    );
    let reader = api_as(
        "api-reader",
        &emulator,
        reqwest::Method::POST,
        &format!("{SEGMENTS}/production/big/imports"),
    )
    .multipart(merge().part("file", file_part("a\n")))
    .send()
    .await
    .unwrap();
    let reader = answer(reader).await;
    assert_eq!(
        (reader.status, reader.body["message"].as_str()),
        (
            403,
            Some("the access token's role does not allow `updateIncluded`")
        )
    );

    emulator.set_faults(Faults {
        refused_keys: ["b".to_string()].into(),
        ..Faults::default()
    });
    let refused = import(&emulator, "production/big", "merge", "a\nb\n").await;
    assert_eq!(
        (refused.status, refused.body["message"].as_str()),
        (
            400,
            Some(
                "context key `b` cannot be included: it was excluded from the segment by another change"
            )
        )
    );
    assert!(emulator.imports().is_empty());
    assert_eq!(members(&emulator, "production", "big"), ["a"]);
    let limited = emulator
        .requests()
        .into_iter()
        .find(|r| r.status == 400)
        .unwrap();
    assert_eq!(
        limited.body.unwrap()["file"],
        json!({"filename": "keys.csv", "contentType": "text/csv", "bytes": 8, "keys": null})
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_default_limits_are_a_million_keys_and_forty_megabytes() {
    let emulator = emulator(Duration::from_millis(1), EmulatorConfig::default());
    let keys = |n: usize| {
        let mut csv = String::with_capacity(n * 16);
        for i in 0..n {
            csv.push_str(&format!("user-{i:010}\n"));
        }
        csv
    };
    let over = import(&emulator, "production/big", "merge", &keys(1_000_001)).await;
    assert_eq!(over.status, 400, "{}", over.text);
    let started = Instant::now();
    let full = import(&emulator, "production/big", "replace", &keys(1_000_000)).await;
    assert_eq!(full.status, 204, "{}", full.text);
    let accepted = started.elapsed();
    poll_until(&emulator, &full.location.unwrap(), "complete").await;
    eprintln!(
        "a 1,000,000-key import (16 MB): accepted in {accepted:?}, complete and applied in {:?}",
        started.elapsed()
    );
    let segment = emulator.segment("default", "production", "big").unwrap();
    assert_eq!(segment["_unboundedMetadata"]["includedCount"], 1_000_000);
    let big_file = "k\n".repeat(20_000_001);
    let too_big = import(&emulator, "production/big2", "merge", &big_file).await;
    assert_eq!(
        too_big.body["message"],
        "the file is 40000002 bytes; an import's file holds at most 40000000 bytes"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_stopped_import_leaves_the_members_as_they_were() {
    let emulator = emulator(Duration::from_millis(10), EmulatorConfig::default());
    emulator.set_faults(Faults {
        stop_imports: Some(StopImports::Nth(2)),
        ..Faults::default()
    });
    for (csv, ends) in [("b\n", "complete"), ("c\n", "stopped"), ("d\n", "complete")] {
        let begun = import(&emulator, "production/big", "merge", csv).await;
        let (seen, body) = poll_until(&emulator, &begun.location.unwrap(), ends).await;
        in_order(&seen, &["preparing", "in_progress", ends]);
        assert_eq!(body["files"][0]["status"], ends);
    }
    assert_eq!(members(&emulator, "production", "big"), ["a", "b", "d"]);
    emulator.set_faults(Faults {
        stop_imports: Some(StopImports::Every),
        ..Faults::default()
    });
    let begun = import(&emulator, "production/big", "replace", "z\n").await;
    poll_until(&emulator, &begun.location.unwrap(), "stopped").await;
    assert_eq!(members(&emulator, "production", "big"), ["a", "b", "d"]);
}

#[tokio::test(flavor = "current_thread")]
async fn an_import_needing_approval_waits_until_approved() {
    let emulator = emulator(Duration::from_millis(10), EmulatorConfig::default());
    emulator.set_faults(Faults {
        imports_need_approval: true,
        ..Faults::default()
    });
    let begun = import(&emulator, "production/big", "merge", "b\n").await;
    let location = begun.location.unwrap();
    let (seen, _) = poll_until(&emulator, &location, "pending_approval").await;
    in_order(&seen, &["preparing", "pending_approval"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(&emulator, &location).await.body["status"],
        "pending_approval"
    );
    assert_eq!(
        import(&emulator, "production/big2", "merge", "x\n")
            .await
            .status,
        409
    );
    assert_eq!(members(&emulator, "production", "big"), ["a"]);
    assert_eq!(emulator.approve_imports(), 1);
    let (seen, _) = poll_until(&emulator, &location, "complete").await;
    in_order(&seen, &["pending_approval", "in_progress", "complete"]);
    assert_eq!(members(&emulator, "production", "big"), ["a", "b"]);
    assert_eq!(emulator.approve_imports(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn rate_limits_errors_and_lost_acknowledgements_reach_imports() {
    let emulator = emulator(Duration::from_millis(500), EmulatorConfig::default());
    emulator.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        import(&emulator, "production/big", "merge", "b\n")
            .await
            .status,
        503
    );
    emulator.set_faults(Faults {
        rate_limit: Some(RateLimit {
            requests_per_window: 1,
            window: Duration::from_secs(60),
            headers: ThrottleHeaders::RetryAfterOnly,
        }),
        ..Faults::default()
    });
    let begun = import(&emulator, "production/big", "merge", "b\n").await;
    assert_eq!(begun.status, 204);
    let limited = get(&emulator, &begun.location.unwrap()).await;
    assert_eq!(
        (limited.status, &limited.body["code"]),
        (429, &json!("rate_limited"))
    );

    // An import whose answer is lost has begun all the same: sent again, it meets itself (409).
    emulator.set_faults(Faults {
        drop_ack_rate: 1.0,
        ..Faults::default()
    });
    let lost = api(
        &emulator,
        reqwest::Method::POST,
        &format!("{SEGMENTS}/test/big/imports"),
    )
    .multipart(
        Form::new()
            .text("mode", "merge")
            .part("file", file_part("t\n")),
    )
    .send()
    .await;
    assert!(lost.is_err(), "{lost:?}");
    emulator.set_faults(Faults::default());
    assert_eq!(
        import(&emulator, "test/big", "merge", "t\n").await.status,
        409
    );
    let recorded = emulator.requests();
    let lost = recorded.iter().find(|r| r.status == 0).unwrap();
    assert!(lost.applied && lost.location.is_some());
}

/// Begins an export of `segment` and returns its location once complete, with the statuses seen and the body.
async fn export(emulator: &Emulator, segment: &str) -> (String, Vec<String>, Value) {
    let path = format!("{SEGMENTS}/{segment}/exports");
    let begun = answer(
        api(emulator, reqwest::Method::POST, &path)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((begun.status, begun.text.as_str()), (200, ""));
    let location = begun.location.unwrap();
    let (seen, body) = poll_until(emulator, &location, "complete").await;
    (location, seen, body)
}

async fn fetch(url: &str, authorization: Option<&str>) -> (u16, Option<String>, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn an_export_snapshots_the_members_and_its_file_is_served_on_another_origin() {
    let emulator = emulator(Duration::from_millis(100), EmulatorConfig::default());
    emulator.seed_segment("default", "production", big("big", &["b", "a", "c,d"]));
    let path = format!("{SEGMENTS}/production/big/exports");
    let begun = answer(
        api(&emulator, reqwest::Method::POST, &path)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((begun.status, begun.text.as_str()), (200, ""));
    let location = begun.location.unwrap();
    let id = location
        .strip_prefix("/api/v2/segments/default/production/big/exports/")
        .unwrap()
        .to_string();
    let preparing = get(&emulator, &location).await.body;
    assert_eq!(
        preparing,
        json!({"id": id, "segmentKey": "big", "creationTime": preparing["creationTime"], "status": "preparing",
               "sizeBytes": 0, "size": "0 B",
               "initiator": {"name": "ldsync emulator", "email": "emulator@ldsync.invalid"},
               "_links": {"self": {"href": location, "type": "application/json"}}})
    );
    // Later changes are not in the snapshot.
    emulator.seed_segment("default", "production", big("big", &["z"]));
    let (seen, done) = poll_until(&emulator, &location, "complete").await;
    in_order(&seen, &["preparing", "in_progress", "complete"]);
    let file = &done["_links"]["file"];
    assert_eq!(file["type"], "text/csv");
    let url = file["href"].as_str().unwrap();
    let prefix = format!("{}/exports/{id}.csv?", emulator.file_base_url());
    assert!(
        url.starts_with(&prefix) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    assert!(!url.starts_with(&emulator.base_url()));
    let content = "a\nb\n\"c,d\"\n";
    assert_eq!(
        (done["sizeBytes"].as_u64(), done["size"].as_str()),
        (Some(content.len() as u64), Some("10 B"))
    );
    assert_eq!(
        fetch(url, None).await,
        (200, Some("text/csv".into()), content.into())
    );

    let (status, content_type, text) = fetch(url, Some(DEFAULT_TOKEN)).await;
    assert_eq!(
        (status, content_type.as_deref()),
        (400, Some("application/xml"))
    );
    assert!(
        text.contains("<Code>InvalidArgument</Code><Message>Only one auth mechanism allowed"),
        "{text}"
    );
    let unsigned = url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    assert_eq!(fetch(&unsigned, None).await.0, 403);
    let unknown = url.replace(&id, "00000000-0000-4000-8000-000000000000");
    assert_eq!(fetch(&unknown, None).await.0, 404);
    let posted = reqwest::Client::new().post(url).send().await.unwrap();
    assert_eq!(posted.status().as_u16(), 405);
    let seen: Vec<_> = emulator
        .file_requests()
        .into_iter()
        .map(|r| {
            (
                r.method,
                r.path.replace(&id, "ID"),
                r.authorization,
                r.status,
            )
        })
        .collect();
    let path = "/exports/ID.csv".to_string();
    assert_eq!(
        seen,
        [
            ("GET".to_string(), path.clone(), None, 200),
            (
                "GET".into(),
                path.clone(),
                Some(DEFAULT_TOKEN.to_string()),
                400
            ),
            ("GET".into(), path.clone(), None, 403),
            (
                "GET".into(),
                "/exports/00000000-0000-4000-8000-000000000000.csv".into(),
                None,
                404
            ),
            ("POST".into(), path, None, 405),
        ]
    );
    let query = emulator.file_requests()[0].query.clone().unwrap();
    assert_eq!(Some(query.as_str()), url.split_once('?').map(|(_, q)| q));
    let exports = emulator.exports();
    assert_eq!(
        (
            exports[0].status,
            exports[0].keys,
            exports[0].size_bytes,
            exports[0].file_url.as_deref()
        ),
        (TransferStatus::Complete, 3, content.len(), Some(url))
    );
    assert!(
        emulator
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/exports/")),
        "the file host's requests are not the API's"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_export_file_has_a_header_row_or_is_malformed_when_configured() {
    let emulator = emulator(
        Duration::from_millis(5),
        EmulatorConfig {
            export_header: true,
            ..EmulatorConfig::default()
        },
    );
    let (_, _, done) = export(&emulator, "production/big").await;
    let url = done["_links"]["file"]["href"].as_str().unwrap();
    assert_eq!(fetch(url, None).await.2, "key\na\n");
    let (_, _, empty) = export(&emulator, "production/big2").await;
    let url = empty["_links"]["file"]["href"].as_str().unwrap();
    assert_eq!(fetch(url, None).await.2, "key\n");
    emulator.set_faults(Faults {
        malformed_exports: true,
        ..Faults::default()
    });
    let (_, _, malformed) = export(&emulator, "production/big").await;
    let url = malformed["_links"]["file"]["href"].as_str().unwrap();
    assert_eq!(
        fetch(url, None).await,
        (200, Some("application/json".into()), r#"["a"]"#.into())
    );
    let small = answer(
        api(
            &emulator,
            reqwest::Method::POST,
            &format!("{SEGMENTS}/production/small/exports"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (small.status, small.body["message"].as_str()),
        (
            400,
            Some("segment `small` is not a big segment: exports are for big segments only")
        )
    );
    let unknown = get(
        &emulator,
        &format!("{SEGMENTS}/production/big/exports/nope"),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.body["message"].as_str()),
        (404, Some("Unknown export `nope`"))
    );
}
