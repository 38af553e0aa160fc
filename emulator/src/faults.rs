//! The ways the emulator can be told to misbehave like LaunchDarkly does: a rate limit per 10-second window with
//! each shape of 429, server errors at a rate, slow answers, changes applied whose answer never arrives, writes
//! lost to a concurrent change (409), a clock that disagrees with the client's, keys refused for good, and big-segment
//! imports that stop or wait for approval and exports whose file is not CSV.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to get wrong, and how often.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub rate_limit: Option<RateLimit>,
    /// The share of requests answered 503 before anything is done.
    pub error_rate: f64,
    /// How long every answer is held back.
    pub latency: Duration,
    /// The share of successful writes (segment creation, semantic patch, `POST …/contexts`) that are applied and
    /// then have their connection closed without an answer: a lost acknowledgement.
    pub drop_ack_rate: f64,
    /// The share of writes answered 409 `optimistic_locking_error` without being applied, as when another writer
    /// changed the segment at the same moment.
    pub conflict_rate: f64,
    /// How far the emulator's clock is from the real one, in milliseconds (negative: behind). Its `Date` header
    /// and `X-Ratelimit-Reset` both follow it, as a LaunchDarkly whose clock disagrees with the client's would.
    pub clock_skew_ms: i64,
    /// Target keys refused with 400 whenever a write would include them, as LaunchDarkly refuses a key that a
    /// concurrent edit has just excluded; a metric import whose events have one of them as a context key is refused
    /// the same way.
    pub refused_keys: BTreeSet<String>,
    /// Big-segment imports that end `stopped` instead of `complete`, leaving the segment as it was.
    pub stop_imports: Option<StopImports>,
    /// Big-segment imports begun while this is set wait in `pending_approval` until
    /// [`crate::Emulator::approve_imports`], whatever their `waitOnApprovals`.
    pub imports_need_approval: bool,
    /// Big-segment exports begun while this is set serve a JSON array of the keys (`application/json`) instead of CSV.
    pub malformed_exports: bool,
    /// Seeds the choices, so that a fault sequence is reproducible.
    pub seed: u64,
}

/// Which big-segment imports end `stopped`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopImports {
    /// The Nth import begun since the faults were set (1: the first).
    Nth(u32),
    Every,
}

/// A limit of requests per window, counted over all requests (global) and per route, like LaunchDarkly's.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub requests_per_window: u32,
    /// LaunchDarkly's windows last 10 seconds.
    pub window: Duration,
    pub headers: ThrottleHeaders,
}

/// Which rate-limit headers the answers carry; LaunchDarkly has been seen sending each of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleHeaders {
    /// Every answer carries `X-Ratelimit-Global-Remaining`, `X-Ratelimit-Route-Remaining` and `X-Ratelimit-Reset`
    /// (epoch ms); a 429 also `Retry-After` (seconds, rounded up).
    Full,
    /// Only a 429 carries anything: `Retry-After`.
    RetryAfterOnly,
    /// Only a 429 carries anything: `X-Ratelimit-Reset`.
    ResetOnly,
    /// No rate-limit header at all; a 429 is bare.
    None,
}

/// The counts of the current window.
#[derive(Debug)]
pub struct Window {
    started: Instant,
    started_epoch_ms: u64,
    index: u64,
    global: u32,
    per_route: HashMap<String, u32>,
}

/// What the rate limit says of one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Let through; the headers to add to its answer.
    Admitted(Vec<(&'static str, String)>),
    /// Refused with 429 and these headers.
    Limited(Vec<(&'static str, String)>),
}

impl Window {
    pub fn new() -> Self {
        Window {
            started: Instant::now(),
            started_epoch_ms: epoch_ms(),
            index: 0,
            global: 0,
            per_route: HashMap::new(),
        }
    }

    /// Counts a request on `route` against `limit`.
    pub fn admit(&mut self, limit: &RateLimit, route: &str) -> Admission {
        let window_ms = limit.window.as_millis().max(1) as u64;
        let index = self.started.elapsed().as_millis() as u64 / window_ms;
        if index != self.index {
            self.index = index;
            self.global = 0;
            self.per_route.clear();
        }
        let reset_ms = self.started_epoch_ms + (index + 1) * window_ms;
        let route_used = self.per_route.entry(route.to_string()).or_default();
        let max = limit.requests_per_window;
        if self.global >= max || *route_used >= max {
            let retry_after = reset_ms.saturating_sub(epoch_ms()).div_ceil(1000).max(1);
            let headers = match limit.headers {
                ThrottleHeaders::Full => vec![
                    ("retry-after", retry_after.to_string()),
                    (
                        "x-ratelimit-global-remaining",
                        (max - self.global.min(max)).to_string(),
                    ),
                    (
                        "x-ratelimit-route-remaining",
                        (max - (*route_used).min(max)).to_string(),
                    ),
                    ("x-ratelimit-reset", reset_ms.to_string()),
                ],
                ThrottleHeaders::RetryAfterOnly => vec![("retry-after", retry_after.to_string())],
                ThrottleHeaders::ResetOnly => vec![("x-ratelimit-reset", reset_ms.to_string())],
                ThrottleHeaders::None => vec![],
            };
            return Admission::Limited(headers);
        }
        *route_used += 1;
        self.global += 1;
        let headers = match limit.headers {
            ThrottleHeaders::Full => vec![
                (
                    "x-ratelimit-global-remaining",
                    (max - self.global).to_string(),
                ),
                (
                    "x-ratelimit-route-remaining",
                    (max - *route_used).to_string(),
                ),
                ("x-ratelimit-reset", reset_ms.to_string()),
            ],
            _ => vec![],
        };
        Admission::Admitted(headers)
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(headers: ThrottleHeaders) -> RateLimit {
        RateLimit {
            requests_per_window: 2,
            window: Duration::from_secs(10),
            headers,
        }
    }

    fn names(headers: &[(&'static str, String)]) -> Vec<&'static str> {
        headers.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn exactly_the_limit_passes_per_window_with_the_configured_headers() {
        let mut window = Window::new();
        let full = limit(ThrottleHeaders::Full);
        let Admission::Admitted(first) = window.admit(&full, "GET /a") else {
            panic!()
        };
        assert_eq!(first[0], ("x-ratelimit-global-remaining", "1".to_string()));
        assert!(matches!(
            window.admit(&full, "PATCH /b"),
            Admission::Admitted(_)
        ));
        let Admission::Limited(limited) = window.admit(&full, "PATCH /b") else {
            panic!()
        };
        assert_eq!(
            names(&limited),
            [
                "retry-after",
                "x-ratelimit-global-remaining",
                "x-ratelimit-route-remaining",
                "x-ratelimit-reset"
            ]
        );
        for (headers, expected) in [
            (ThrottleHeaders::RetryAfterOnly, vec!["retry-after"]),
            (ThrottleHeaders::ResetOnly, vec!["x-ratelimit-reset"]),
            (ThrottleHeaders::None, vec![]),
        ] {
            let Admission::Limited(limited) = window.admit(&limit(headers), "GET /a") else {
                panic!()
            };
            assert_eq!(names(&limited), expected);
        }
    }

    #[test]
    fn a_new_window_refills_the_budget() {
        let mut window = Window::new();
        let short = RateLimit {
            requests_per_window: 1,
            window: Duration::from_millis(50),
            headers: ThrottleHeaders::None,
        };
        assert!(matches!(window.admit(&short, "r"), Admission::Admitted(_)));
        assert!(matches!(window.admit(&short, "r"), Admission::Limited(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(window.admit(&short, "r"), Admission::Admitted(_)));
    }
}
