//! What the benchmarks share: command-line options, the machine they ran on, and running a child process so that
//! its peak resident memory is measured on its own.

#![allow(dead_code)] // each benchmark uses its own subset

use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub fn pass(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

pub fn option(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `--sizes` (numbers separated by commas), or `default`.
pub fn sizes(args: &[String], default: &str) -> Vec<u64> {
    option(args, "--sizes")
        .unwrap_or_else(|| default.into())
        .split(',')
        .map(|s| s.trim().parse().expect("--sizes takes numbers"))
        .collect()
}

/// `--repeat`: how many times each measurement runs (default 3).
pub fn repeat(args: &[String]) -> usize {
    option(args, "--repeat").map_or(3, |r| r.parse().expect("--repeat takes a number"))
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

/// The wall time of a command's runs, and the largest peak resident memory among them.
pub struct Measurement {
    pub median: f64,
    pub min: f64,
    pub peak_kib: i64,
}

/// Runs the command `repeat` times; wall time of each, and the largest peak resident memory seen.
pub fn measure(repeat: usize, command: impl Fn() -> Command) -> Measurement {
    let mut times = Vec::new();
    let mut peak_kib = 0;
    for _ in 0..repeat {
        let started = Instant::now();
        let (ok, peak) = run_and_measure(command());
        times.push(started.elapsed().as_secs_f64());
        assert!(ok, "a benchmark child process failed");
        peak_kib = peak_kib.max(peak);
    }
    times.sort_by(f64::total_cmp);
    Measurement {
        median: times[times.len() / 2],
        min: times[0],
        peak_kib,
    }
}

/// This benchmark's own binary running phase `phase` on the data in `dir`, in a child process.
pub fn phase_command(phase: &str, dir: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--phase", phase, "--dir"]).arg(dir);
    command
}

/// `ldsync plan --format json` of the configuration `config`, its report thrown away.
pub fn ldsync_plan(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ldsync"));
    command.arg("--config").arg(config).args([
        "--log-level",
        "warn",
        "plan",
        "--format",
        "json",
        "--output",
        "/dev/null",
    ]);
    command
}
