//! `ldsync run`'s health, as its HTTP listener reports it to a supervisor: `/livez` (the process is up and its
//! listener answers: a long model query or a sync backing off is no reason to restart it) and `/readyz` (ready once
//! the configuration is loaded and the state store answered its last check; not ready while the state store does
//! not answer, or while the daemon drains after a shutdown signal). Each answer is one line that says why.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;
use crate::state::Store;

/// How often the state store is checked, and how long a check may take.
const STORE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the daemon's health endpoints answer from.
pub struct Health {
    started: Instant,
    syncs: usize,
    shutdown: Shutdown,
    /// The last check of the state store: when it was made, and what went wrong if it did not answer.
    store_check: Mutex<(Instant, Option<String>)>,
}

/// A health endpoint's answer: whether the check passed, and the line that says why.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    pub reason: String,
}

impl Health {
    /// The health of a daemon running `syncs` syncs, whose state store answered when it was opened.
    pub fn new(syncs: usize, shutdown: Shutdown) -> Self {
        let now = Instant::now();
        Health {
            started: now,
            syncs,
            shutdown,
            store_check: Mutex::new((now, None)),
        }
    }

    /// Checks `store` now, then every few seconds on a thread of its own, for as long as the process runs.
    pub fn watch_store(self: &Arc<Self>, store: Store) -> std::io::Result<()> {
        let health = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("ldsync-health".into())
            .spawn(move || {
                while let Some(health) = health.upgrade() {
                    let answered = store.check().map_err(|e| e.to_string());
                    health.store_checked(answered.err());
                    drop(health);
                    std::thread::sleep(STORE_CHECK_EVERY);
                }
            })
            .map(drop)
    }

    fn store_checked(&self, failure: Option<String>) {
        *self
            .store_check
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (Instant::now(), failure);
    }

    /// `/livez`: alive while the process serves.
    pub fn live(&self) -> Verdict {
        Verdict {
            healthy: true,
            reason: format!(
                "alive: ldsync run has served {} sync(s) for {}",
                self.syncs,
                humantime::format_duration(round_to_seconds(self.started.elapsed()))
            ),
        }
    }

    /// `/readyz`: ready unless draining after a shutdown signal or the state store did not answer its last check.
    pub fn ready(&self) -> Verdict {
        if self.shutdown.requested() {
            return Verdict {
                healthy: false,
                reason: "draining: a shutdown signal arrived; runs under way finish their request in flight and stop"
                    .into(),
            };
        }
        let (checked, failure) = &*self
            .store_check
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ago = humantime::format_duration(round_to_seconds(checked.elapsed()));
        match failure {
            None => Verdict {
                healthy: true,
                reason: format!("ready: configuration loaded, the state store answered {ago} ago"),
            },
            Some(failure) => Verdict {
                healthy: false,
                reason: format!("not ready: the state store did not answer {ago} ago: {failure}"),
            },
        }
    }
}

fn round_to_seconds(elapsed: Duration) -> Duration {
    Duration::from_secs(elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_the_store_fails_its_check_and_live_all_along() {
        let health = Health::new(3, Shutdown::never());
        assert!(health.live().healthy);
        assert!(
            health
                .live()
                .reason
                .starts_with("alive: ldsync run has served 3 sync(s) for ")
        );
        let ready = health.ready();
        assert!(ready.healthy, "{}", ready.reason);
        assert_eq!(
            ready.reason,
            "ready: configuration loaded, the state store answered 0s ago"
        );

        health.store_checked(Some("connection refused".into()));
        let ready = health.ready();
        assert!(!ready.healthy);
        assert_eq!(
            ready.reason,
            "not ready: the state store did not answer 0s ago: connection refused"
        );
        assert!(
            health.live().healthy,
            "a store that does not answer is no reason to restart"
        );

        health.store_checked(None);
        assert!(health.ready().healthy);
    }
}
