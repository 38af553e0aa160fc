//! Pacing and retries for LaunchDarkly calls. LaunchDarkly publishes no rate limits: each answer says what is
//! left of the account's and the route's 10-second budget (`X-Ratelimit-Global-Remaining`,
//! `X-Ratelimit-Route-Remaining`) and when the window resets (`X-Ratelimit-Reset`, epoch milliseconds). The
//! [`Pacer`] waits for the reset once the budget is spent, so a lone sync meets no 429 at all; the
//! [`RetrySchedule`] says how long to wait before trying a failed request again, and when to give up.
//!
//! A reset is an instant on LaunchDarkly's clock, so it is read against the answer's `Date` header (the server's
//! own "now") whenever there is one: a local clock that runs an hour fast or slow would otherwise wait an hour, or
//! not at all, and burn its retries.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::header::HeaderMap;

/// The longest a pacer or a `X-Ratelimit-Reset` header may make ldsync wait: a reset further away than a couple of
/// windows is not a window reset, whatever the clocks say.
const MAX_RESET_WAIT: Duration = Duration::from_secs(20);
/// The shortest wait after a 429 that names a reset: the header's millisecond is read against a `Date` of whole
/// seconds, and a reset that has already passed must not turn into a burst of retries.
const MIN_RESET_WAIT: Duration = Duration::from_millis(500);
/// The longest ldsync honours a `Retry-After`: beyond it, a run is better off failing and trying again on its next
/// schedule than sleeping for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// What LaunchDarkly's windows last, and the wait for a 429 that says nothing.
const WINDOW: Duration = Duration::from_secs(10);

/// What the last answer said of the rate-limit budget.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Budget {
    /// The smaller of the global and the route budget, when the answer carried either.
    remaining: Option<u64>,
    reset_at: Option<SystemTime>,
}

/// Keeps a client inside the budget the server advertises.
#[derive(Debug, Default)]
pub struct Pacer {
    budget: Mutex<Budget>,
}

impl Pacer {
    /// Reads the rate-limit headers of an answer received at `received` (local clock).
    pub fn observe(&self, headers: &HeaderMap, received: SystemTime) {
        let global = header_u64(headers, "x-ratelimit-global-remaining");
        let route = header_u64(headers, "x-ratelimit-route-remaining");
        let remaining = match (global, route) {
            (Some(g), Some(r)) => Some(g.min(r)),
            (g, r) => g.or(r),
        };
        let reset_at = local_reset(headers, received);
        *self.budget.lock().expect("pacer lock") = Budget {
            remaining,
            reset_at,
        };
    }

    /// How long to wait before the next request: until the window resets once the budget is spent.
    pub fn wait_before_next(&self, now: SystemTime) -> Option<Duration> {
        let budget = *self.budget.lock().expect("pacer lock");
        if budget.remaining != Some(0) {
            return None;
        }
        let wait = match budget.reset_at {
            Some(reset_at) => reset_at
                .duration_since(now)
                .unwrap_or_default()
                .min(MAX_RESET_WAIT),
            // Spent, with no word on when it refills: one window.
            None => WINDOW,
        };
        Some(wait + small_jitter())
    }

    /// Forgets the budget once its window has been waited out.
    pub fn waited(&self) {
        self.budget.lock().expect("pacer lock").remaining = None;
    }
}

/// How many times a request is tried again after a retryable failure before ldsync gives up on it.
pub const MAX_RETRIES: usize = 8;

/// The waits before retries of one request: exponential with jitter for server errors, conflicts and lost
/// connections; what the server asked for on a 429.
pub struct RetrySchedule {
    failures: ExponentialBackoff,
    silent_rate_limits: ExponentialBackoff,
    rate_limited: usize,
}

/// The first waits of a [`RetrySchedule`]; each later wait doubles, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryWaits {
    /// After a 5xx, a 409 or a lost connection.
    pub failure: Duration,
    /// After a 429 that says neither `Retry-After` nor `X-Ratelimit-Reset`.
    pub silent_rate_limit: Duration,
}

impl Default for RetryWaits {
    fn default() -> Self {
        RetryWaits {
            failure: Duration::from_millis(250),
            silent_rate_limit: WINDOW,
        }
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::new(RetryWaits::default())
    }
}

impl RetrySchedule {
    pub fn new(waits: RetryWaits) -> Self {
        RetrySchedule {
            failures: doubling(waits.failure, Duration::from_secs(30)),
            silent_rate_limits: doubling(waits.silent_rate_limit, Duration::from_secs(60)),
            rate_limited: 0,
        }
    }

    /// The wait after a 5xx, a 409 or a dropped connection; `None` when the retries are used up.
    pub fn after_failure(&mut self) -> Option<Duration> {
        self.failures.next()
    }

    /// The wait after a 429: `Retry-After` seconds if given, else until `X-Ratelimit-Reset`, else 10 s growing
    /// exponentially, each with jitter; `None` when the retries are used up.
    /// `now` is when the 429 arrived, on the local clock; a reset is read against the answer's `Date`.
    pub fn after_rate_limit(&mut self, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
        self.rate_limited += 1;
        if self.rate_limited > MAX_RETRIES {
            return None;
        }
        if let Some(seconds) = header_u64(headers, "retry-after") {
            let asked = Duration::from_secs(seconds);
            if asked > MAX_RETRY_AFTER {
                tracing::warn!(
                    retry_after_s = seconds,
                    waiting_s = MAX_RETRY_AFTER.as_secs(),
                    "LaunchDarkly asked for a longer wait than ldsync honours; waiting the cap instead"
                );
            } else {
                tracing::info!(
                    retry_after_s = seconds,
                    "rate limited; waiting as LaunchDarkly asked"
                );
            }
            return Some(asked.min(MAX_RETRY_AFTER) + small_jitter());
        }
        if let Some(reset_at) = local_reset(headers, now) {
            let wait = reset_at
                .duration_since(now)
                .unwrap_or_default()
                .clamp(MIN_RESET_WAIT, MAX_RESET_WAIT);
            return Some(wait + small_jitter());
        }
        self.silent_rate_limits.next()
    }
}

/// Waits from `first` doubling up to `max`, with jitter, `MAX_RETRIES` of them.
fn doubling(first: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_max_times(MAX_RETRIES)
        .with_jitter()
        .build()
}

/// Up to a quarter second, so that clients waiting for the same reset do not all arrive at once.
fn small_jitter() -> Duration {
    Duration::from_millis(fastrand::u64(10..250))
}

/// When the window resets, on the local clock, for an answer received at `received`: `X-Ratelimit-Reset` is read
/// against the answer's `Date` when it has one, and taken as it is (same clocks) when it does not.
fn local_reset(headers: &HeaderMap, received: SystemTime) -> Option<SystemTime> {
    let reset = epoch_ms(header_u64(headers, "x-ratelimit-reset")?);
    let Some(server_now) = server_date(headers) else {
        return Some(reset);
    };
    Some(received + reset.duration_since(server_now).unwrap_or_default())
}

/// The answer's `Date` header: the server's clock, to the second.
fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    let text = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let date = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    Some(SystemTime::from(date))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn ms(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }

    #[test]
    fn the_pacer_waits_for_the_reset_only_once_the_smaller_budget_is_spent() {
        let now = SystemTime::now();
        let pacer = Pacer::default();
        let reset = ms(now + Duration::from_secs(4));
        pacer.observe(
            &headers(&[
                ("x-ratelimit-global-remaining", "7".into()),
                ("x-ratelimit-route-remaining", "1".into()),
                ("x-ratelimit-reset", reset.to_string()),
            ]),
            now,
        );
        assert_eq!(pacer.wait_before_next(now), None);
        pacer.observe(
            &headers(&[
                ("x-ratelimit-global-remaining", "6".into()),
                ("x-ratelimit-route-remaining", "0".into()),
                ("x-ratelimit-reset", reset.to_string()),
            ]),
            now,
        );
        let wait = pacer.wait_before_next(now).unwrap();
        assert!(
            wait >= Duration::from_millis(3_990) && wait < Duration::from_millis(4_300),
            "{wait:?}"
        );
        pacer.waited();
        assert_eq!(pacer.wait_before_next(now), None);
        // Answers without headers leave nothing to pace by.
        pacer.observe(&HeaderMap::new(), now);
        assert_eq!(pacer.wait_before_next(now), None);
    }

    #[test]
    fn a_reset_far_in_the_future_is_capped() {
        let now = SystemTime::now();
        let pacer = Pacer::default();
        pacer.observe(
            &headers(&[
                ("x-ratelimit-global-remaining", "0".into()),
                (
                    "x-ratelimit-reset",
                    ms(now + Duration::from_secs(3600)).to_string(),
                ),
            ]),
            now,
        );
        assert!(
            pacer.wait_before_next(now).unwrap() <= MAX_RESET_WAIT + Duration::from_millis(250)
        );
    }

    /// A server whose clock is `skew` ahead of ours, answering at our `now` with a window that resets in 3 s.
    fn skewed_reset(now: SystemTime, skew: Duration, ahead: bool) -> HeaderMap {
        let server_now = if ahead { now + skew } else { now - skew };
        headers(&[
            ("x-ratelimit-global-remaining", "0".into()),
            (
                "x-ratelimit-reset",
                ms(server_now + Duration::from_secs(3)).to_string(),
            ),
            ("date", httpdate(server_now)),
        ])
    }

    fn httpdate(t: SystemTime) -> String {
        chrono::DateTime::<chrono::Utc>::from(t)
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    }

    #[test]
    fn resets_are_read_against_the_servers_clock_whichever_way_it_is_skewed() {
        // Whole seconds, as an HTTP date carries them.
        let now = UNIX_EPOCH + Duration::from_secs(ms(SystemTime::now()) / 1000);
        let hour = Duration::from_secs(3600);
        for ahead in [true, false] {
            let answer = skewed_reset(now, hour, ahead);
            let pacer = Pacer::default();
            pacer.observe(&answer, now);
            let paced = pacer.wait_before_next(now).unwrap();
            let retried = RetrySchedule::default()
                .after_rate_limit(&answer, now)
                .unwrap();
            for wait in [paced, retried] {
                assert!(
                    wait >= Duration::from_secs(3) && wait < Duration::from_millis(3_300),
                    "server {} an hour: waited {wait:?}",
                    if ahead { "ahead" } else { "behind" }
                );
            }
        }
    }

    #[test]
    fn a_reset_already_past_waits_the_floor_and_a_long_retry_after_the_cap() {
        let now = SystemTime::now();
        let past = headers(&[(
            "x-ratelimit-reset",
            ms(now - Duration::from_secs(5)).to_string(),
        )]);
        let wait = RetrySchedule::default()
            .after_rate_limit(&past, now)
            .unwrap();
        assert!(wait >= MIN_RESET_WAIT && wait < MIN_RESET_WAIT + Duration::from_millis(250));
        let long = headers(&[("retry-after", "86400".into())]);
        let wait = RetrySchedule::default()
            .after_rate_limit(&long, now)
            .unwrap();
        assert!(wait >= MAX_RETRY_AFTER && wait < MAX_RETRY_AFTER + Duration::from_millis(250));
    }

    #[test]
    fn rate_limit_waits_follow_retry_after_then_reset_then_ten_seconds() {
        let now = SystemTime::now();
        let mut schedule = RetrySchedule::default();
        let retry_after = schedule
            .after_rate_limit(&headers(&[("retry-after", "3".into())]), now)
            .unwrap();
        assert!(
            retry_after >= Duration::from_secs(3) && retry_after < Duration::from_millis(3_250)
        );
        let reset = headers(&[(
            "x-ratelimit-reset",
            ms(now + Duration::from_secs(2)).to_string(),
        )]);
        let until_reset = schedule.after_rate_limit(&reset, now).unwrap();
        assert!(
            until_reset >= Duration::from_millis(1_990)
                && until_reset < Duration::from_millis(2_300)
        );
        let silent = schedule.after_rate_limit(&HeaderMap::new(), now).unwrap();
        assert!(silent >= WINDOW, "{silent:?}");
    }

    #[test]
    fn retries_are_bounded() {
        let mut schedule = RetrySchedule::new(RetryWaits {
            failure: Duration::from_millis(1),
            silent_rate_limit: Duration::from_millis(1),
        });
        assert_eq!(
            std::iter::from_fn(|| schedule.after_failure()).count(),
            MAX_RETRIES
        );
        let now = SystemTime::now();
        let limited = headers(&[("retry-after", "0".into())]);
        let allowed = std::iter::from_fn(|| schedule.after_rate_limit(&limited, now)).count();
        assert_eq!(allowed, MAX_RETRIES);
    }
}
