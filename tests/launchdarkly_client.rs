//! The LaunchDarkly client against the emulator: how it waits out each shape of 429, how far it retries server
//! errors, and that it never retries what retrying cannot fix.

use std::collections::BTreeSet;
use std::time::Duration;

use ldsync::config::{LaunchDarklyConfig, TokenSource};
use ldsync::launchdarkly::pacing::{MAX_RETRIES, RetryWaits};
use ldsync::launchdarkly::token::AccessToken;
use ldsync::launchdarkly::{ApiError, Client};
use ldsync::vocab::Action;
use ldsync::vocab::SegmentKind;
use ldsync_emulator::{Emulator, EmulatorConfig, Faults, RateLimit, SegmentSeed, ThrottleHeaders};

fn connect(emulator: &Emulator, token: &str, environment: &str) -> Client {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), token).unwrap();
    let token = AccessToken::read(&TokenSource::File("token".into()), dir.path()).unwrap();
    let config = LaunchDarklyConfig {
        base_url: emulator.base_url(),
        events_base_url: emulator.base_url(),
        token: TokenSource::File("token".into()),
        project: "default".into(),
        environment: environment.into(),
    };
    Client::new(&config, token, Duration::from_secs(10))
        .unwrap()
        .with_retry_waits(RetryWaits {
            failure: Duration::from_millis(20),
            silent_rate_limit: Duration::from_millis(300),
        })
}

fn emulator_with_segment() -> Emulator {
    let emulator = Emulator::start(EmulatorConfig::default()).unwrap();
    emulator.seed_segment(
        "default",
        "production",
        SegmentSeed::standard("beta", "user", &[]),
    );
    emulator
}

async fn add_to_beta(client: &Client, keys: &[String], comment: &str) -> Result<(), ApiError> {
    client
        .change_targets(
            "beta",
            SegmentKind::Standard,
            "user",
            Action::Add,
            keys,
            comment,
        )
        .await
}

fn keys(batch: usize) -> Vec<String> {
    (0..2).map(|i| format!("usr_{batch}_{i}")).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn every_shape_of_429_is_waited_out_and_every_batch_lands_once() {
    for headers in [
        ThrottleHeaders::RetryAfterOnly,
        ThrottleHeaders::ResetOnly,
        ThrottleHeaders::None,
    ] {
        let emulator = emulator_with_segment();
        emulator.set_faults(Faults {
            rate_limit: Some(RateLimit {
                requests_per_window: 2,
                window: Duration::from_secs(1),
                headers,
            }),
            ..Faults::default()
        });
        let client = connect(&emulator, "api-emulator-token", "production");
        for batch in 0..6 {
            add_to_beta(&client, &keys(batch), &format!("batch {batch}"))
                .await
                .unwrap_or_else(|e| panic!("{headers:?}: {e}"));
        }
        let expected: BTreeSet<String> = (0..6).flat_map(keys).collect();
        assert_eq!(
            emulator.included("default", "production", "beta", "user"),
            expected,
            "{headers:?}"
        );
        let requests = emulator.requests();
        let limited = requests.iter().filter(|r| r.status == 429).count() as u64;
        assert!(limited > 0, "{headers:?}: the limit was met");
        assert_eq!(client.stats().rate_limited, limited);
        assert_eq!(
            requests.iter().filter(|r| r.status == 200).count(),
            6,
            "each batch acknowledged once"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let emulator = emulator_with_segment();
    emulator.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let client = connect(&emulator, "api-emulator-token", "production");
    let error = add_to_beta(&client, &keys(0), "c").await.unwrap_err();
    assert!(
        matches!(error, ApiError::GaveUp { attempts, .. } if attempts == MAX_RETRIES as u64 + 1),
        "{error}"
    );
    assert!(error.to_string().starts_with("adding targets to segment `beta`: gave up after 9 attempts; the last one failed with 503"), "{error}");
    assert_eq!(emulator.requests().len(), MAX_RETRIES + 1);
}

#[tokio::test(flavor = "current_thread")]
async fn refusals_are_never_retried() {
    let emulator = emulator_with_segment();
    let client = connect(&emulator, "api-emulator-token", "production");
    let too_many: Vec<String> = (0..1501).map(|i| format!("usr_{i}")).collect();
    let error = add_to_beta(&client, &too_many, "c").await.unwrap_err();
    assert!(
        matches!(error, ApiError::Rejected { status: 400, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("1500"), "{error}");
    assert_eq!(emulator.requests().len(), 1);

    let wrong = connect(&emulator, "api-not-a-token", "production");
    let error = wrong.get_segment("beta", "user").await.unwrap_err();
    assert!(matches!(error, ApiError::Unauthorized { .. }), "{error}");
    assert_eq!(emulator.requests().len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_missing_segment_is_none_and_a_missing_environment_is_named() {
    let emulator = emulator_with_segment();
    let client = connect(&emulator, "api-emulator-token", "production");
    assert_eq!(client.get_segment("nope", "user").await.unwrap(), None);
    let segment = client.get_segment("beta", "user").await.unwrap().unwrap();
    assert_eq!(
        (segment.kind, segment.member_count, segment.members),
        (SegmentKind::Standard, Some(0), Some(vec![]))
    );
    let staging = connect(&emulator, "api-emulator-token", "staging");
    let error = staging.get_segment("beta", "user").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "environment `staging` does not exist in project `default` (404); check launchdarkly.environment in connector.yaml"
    );
}

/// A batch of `n` custom events numbered from `first`, as the JSON array the import API takes.
fn events(first: u64, n: u64) -> Vec<u8> {
    let events: Vec<serde_json::Value> = (first..first + n)
        .map(|i| {
            serde_json::json!({"kind": "custom", "key": "order-completed", "creationDate": 1_764_000_000_000u64 + i,
                               "contextKeys": {"user": format!("usr_{i}")}, "metricValue": i as f64 / 2.0})
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn event_batches_are_imported_once_even_when_their_answer_is_lost() {
    let emulator = Emulator::start(EmulatorConfig::default()).unwrap();
    // Every other answer is lost after the batch was stored: the client sends it again, with the same payload ID.
    emulator.set_faults(Faults {
        drop_ack_rate: 0.5,
        seed: 3,
        ..Faults::default()
    });
    let client = connect(&emulator, "api-emulator-token", "production");
    let batches: Vec<Vec<u8>> = (0..6).map(|b| events(b * 100, 100)).collect();
    let ids: Vec<String> = (0..6)
        .map(|b| format!("0190b7a2-0000-8000-8000-{b:012}"))
        .collect();
    for (batch, id) in batches.iter().zip(&ids) {
        client.import_events(batch, id).await.unwrap();
    }
    let imported = emulator.events("default", "production");
    let sent: Vec<serde_json::Value> = batches
        .iter()
        .flat_map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(b).unwrap())
        .collect();
    assert_eq!(imported, sent, "every event once, in order");
    let requests = emulator.requests();
    let lost = requests.iter().filter(|r| r.status == 0).count();
    assert!(lost > 0, "answers were lost and batches sent again");
    assert_eq!(requests.len(), batches.len() + lost);
    let sent_ids: BTreeSet<&str> = requests
        .iter()
        .map(|r| r.payload_id.as_deref().unwrap())
        .collect();
    assert_eq!(sent_ids, ids.iter().map(String::as_str).collect());
    for request in &requests {
        assert_eq!(
            request.route,
            "POST /v2/event-data-import/{projectKey}/{environmentKey}"
        );
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
        assert!(
            request
                .user_agent
                .as_deref()
                .is_some_and(|agent| agent.starts_with("MetricImport-ldsync-int/")),
            "{:?}",
            request.user_agent
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_import_without_the_role_action_names_it() {
    let emulator = Emulator::start(EmulatorConfig {
        tokens: vec![ldsync_emulator::TokenGrant {
            token: "api-segments-only".into(),
            actions: Some(vec!["updateIncluded".into()]),
        }],
        ..EmulatorConfig::default()
    })
    .unwrap();
    let client = connect(&emulator, "api-segments-only", "production");
    let err = client
        .import_events(&events(0, 3), "0190b7a2-0000-8000-8000-000000000000")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the access token's role may not importEventData"),
        "{err}"
    );
    assert!(emulator.events("default", "production").is_empty());
}
