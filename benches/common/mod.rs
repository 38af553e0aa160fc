//! What the benchmarks share: command-line options, the machine they ran on, and running a child process so that
//! its peak resident memory is measured on its own.

#![allow(dead_code)] // each benchmark uses its own subset

use std::process::Command;

pub fn pass(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

pub fn option(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Spawns `command`, waits for it with `wait4`, and returns whether it succeeded and its peak RSS in KiB.
#[expect(
    clippy::zombie_processes,
    reason = "wait4 reaps the child, which std's wait cannot do while also returning its rusage"
)]
pub fn run_and_measure(mut command: Command) -> (bool, i64) {
    let child = command.spawn().expect("spawn a benchmark child");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, usage.ru_maxrss)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn memory_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(
            || "unknown memory".into(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        )
}
