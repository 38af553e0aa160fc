//! LaunchDarkly's answers, as the client reads them: the rate-limit headers of every answer (`X-Ratelimit-*`,
//! `Date`, and `Retry-After` on a 429) through the pacer and the retry schedule; a success's body as segment JSON
//! for a context kind; a refusal's body as LaunchDarkly's error JSON (or text), the token scrubbed from it.
//!
//! The input is written like an HTTP answer, so that seeds read as one: a first line `<status> <context kind>
//! <seconds since the epoch when it arrived>`, header lines `<name>: <value>`, an empty line, the body.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ldsync::config::TokenSource;
use ldsync::launchdarkly::pacing::{Pacer, RetrySchedule};
use ldsync::launchdarkly::token::AccessToken;
use ldsync::launchdarkly::{ErrorAnswer, parse_segment};
use ldsync_fuzz::scratch_store;
use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// The token the answers may echo (some seeds do).
const TOKEN: &str = "api-fuzz-token-0123";

fn token() -> &'static AccessToken {
    static TOKEN_VALUE: OnceLock<AccessToken> = OnceLock::new();
    TOKEN_VALUE.get_or_init(|| {
        let (_, dir) = scratch_store();
        std::fs::write(dir.join("token"), TOKEN).expect("the token file");
        AccessToken::read(&TokenSource::File("token".into()), dir).expect("the fuzz token reads")
    })
}

struct Answer<'a> {
    status: StatusCode,
    context_kind: &'a str,
    received: SystemTime,
    headers: HeaderMap,
    body: &'a [u8],
}

fn split_answer(data: &[u8]) -> Option<Answer<'_>> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = std::str::from_utf8(lines.next()?).ok()?;
    let mut words = first.split(' ');
    let status = StatusCode::from_u16(words.next()?.parse().ok()?).ok()?;
    let context_kind = words.next().unwrap_or("user");
    let seconds: u32 = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1_764_000_000);
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    Some(Answer {
        status,
        context_kind,
        received: UNIX_EPOCH + Duration::from_secs(u64::from(seconds)),
        headers,
        body,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(answer) = split_answer(data) else {
        return;
    };
    let pacer = Pacer::default();
    pacer.observe(&answer.headers, answer.received);
    if let Some(wait) = pacer.wait_before_next(answer.received) {
        assert!(wait <= Duration::from_secs(21), "paced for {wait:?}");
    }
    // reqwest reads a body as text, replacing what is not UTF-8.
    let body = String::from_utf8_lossy(answer.body);
    if answer.status.is_success() {
        let _ = parse_segment(&body, answer.context_kind);
        return;
    }
    let error = ErrorAnswer::read(&body, token());
    assert!(!error.message.contains(TOKEN), "the token leaks: {error:?}");
    if answer.status == StatusCode::TOO_MANY_REQUESTS {
        let mut retries = RetrySchedule::default();
        if let Some(wait) = retries.after_rate_limit(&answer.headers, answer.received) {
            assert!(wait <= Duration::from_secs(121), "retried after {wait:?}");
        }
    }
});
