//! Stopping cleanly on SIGINT and SIGTERM.
//!
//! The first signal asks every run to stop after the request in flight: its journal stays behind, and the next run
//! finishes it. A second signal stops at once; that is still safe, because every acknowledgement is on disk before
//! the next request starts. If the process is still busy (a model query cannot be cut short) a few seconds after
//! the second signal, it exits with code 130.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

/// How far a shutdown has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Running,
    /// Finish the request in flight, then stop.
    Stopping,
    /// Stop at once.
    StopNow,
}

/// How long the process may stay busy after the second signal before it exits anyway.
const GRACE_AFTER_SECOND_SIGNAL: Duration = Duration::from_secs(3);

/// The exit code of a process stopped by a second signal (128 + SIGINT, as shells report it).
pub const EXIT_STOPPED_AT_ONCE: i32 = 130;

/// A view of the shutdown's stage, cheap to clone into every run.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stage: watch::Receiver<Stage>,
}

impl Shutdown {
    /// A shutdown that never comes.
    pub fn never() -> Self {
        let (_, stage) = watch::channel(Stage::Running);
        Shutdown { stage }
    }

    /// How far the shutdown has gone.
    pub fn stage(&self) -> Stage {
        *self.stage.borrow()
    }

    /// Whether a shutdown signal has arrived.
    pub fn requested(&self) -> bool {
        self.stage() >= Stage::Stopping
    }

    /// Waits until the shutdown reaches `stage`; never returns if it does not.
    pub async fn reached(&self, stage: Stage) {
        let mut watcher = self.stage.clone();
        if watcher.wait_for(|now| *now >= stage).await.is_err() {
            // Nothing can signal any more, so the stage never changes.
            std::future::pending::<()>().await;
        }
    }
}

/// Starts listening for SIGINT and SIGTERM on a thread of its own, so that signals are seen even while a model
/// query blocks the thread that runs the syncs.
pub fn listen() -> std::io::Result<Shutdown> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registering here, before returning, means no signal can arrive unheard (and kill the process) in between.
    let signals = {
        let _context = runtime.enter();
        [
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ]
    };
    let (sender, stage) = watch::channel(Stage::Running);
    std::thread::Builder::new()
        .name("ldsync-signals".into())
        .spawn(move || runtime.block_on(escalate(signals, sender)))?;
    Ok(Shutdown { stage })
}

async fn escalate([mut interrupt, mut terminate]: [Signal; 2], stage: watch::Sender<Stage>) {
    let mut next_signal = async || {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    };
    let name = next_signal().await;
    tracing::warn!(
        signal = name,
        "stopping after the requests in flight; unfinished runs stay in their journals for the next run (signal again to stop at once)"
    );
    stage.send_replace(Stage::Stopping);
    let name = next_signal().await;
    tracing::warn!(signal = name, "stopping at once");
    stage.send_replace(Stage::StopNow);
    tokio::time::sleep(GRACE_AFTER_SECOND_SIGNAL).await;
    tracing::error!(
        "still busy {} after the second signal; exiting (journals are intact)",
        humantime::format_duration(GRACE_AFTER_SECOND_SIGNAL)
    );
    std::process::exit(EXIT_STOPPED_AT_ONCE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_are_seen_in_order_and_never_passes() {
        let (sender, stage) = watch::channel(Stage::Running);
        let shutdown = Shutdown { stage };
        assert!(!shutdown.requested());
        sender.send_replace(Stage::Stopping);
        assert!(shutdown.requested());
        shutdown.reached(Stage::Stopping).await;
        let later = shutdown.clone();
        let waiting = tokio::spawn(async move { later.reached(Stage::StopNow).await });
        sender.send_replace(Stage::StopNow);
        waiting.await.unwrap();

        let never = Shutdown::never();
        assert!(!never.requested());
        let waited =
            tokio::time::timeout(Duration::from_millis(50), never.reached(Stage::Stopping)).await;
        assert!(
            waited.is_err(),
            "a shutdown that never comes must not be reached"
        );
    }
}
