//! Progress bars on standard error, for people watching a long run in a terminal: the model rows a fetch has
//! read so far, the time a long step has taken, and the keys a sync has sent. When standard error is not a terminal they stay hidden, and the log
//! lines say what happened instead.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A counter of the rows a model's query has returned so far.
pub fn fetch_spinner(sync: &str, shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix}: fetched {human_pos} rows, {per_sec}, {elapsed}",
        )
        .expect("a valid progress template"),
    );
    bar.set_prefix(sync.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner with the time spent so far on one step of a sync, such as comparing its keys with the checkpoint.
pub fn step_spinner(sync: &str, step: &str, shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{spinner} {prefix}: {msg}, {elapsed}")
        .expect("a valid progress template");
    let bar = ProgressBar::hidden()
        .with_style(style)
        .with_prefix(sync.to_string())
        .with_message(step.to_string());
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar of the keys a sync has sent out of `keys`.
pub fn send_bar(sync: &str, keys: u64, shown: bool) -> ProgressBar {
    if !shown || keys == 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(keys), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} keys, {per_sec}, eta {eta}")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(sync.to_string());
    bar
}
