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

/// Spawns `command`, waits for it, and returns whether it succeeded and its peak RSS in KiB: the largest `VmHWM`
/// (the high-water mark of its own memory since it started) read from `/proc/<pid>/status` every 10 ms until it
/// exits. Not `wait4`'s `ru_maxrss`: Linux folds the spawning process's high-water mark into the child's at exec,
/// so a benchmark that holds the emulator's millions of members would be measured instead of ldsync.
pub fn run_and_measure(mut command: Command) -> (bool, i64) {
    let mut child = command.spawn().expect("spawn a benchmark child");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    loop {
        if let Some(kib) = high_water_kib(&status_file) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait for a benchmark child") {
            return (status.success(), peak_kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `VmHWM` of a process's status file, in KiB; `None` once it has exited.
fn high_water_kib(status_file: &str) -> Option<i64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
    try_measure(repeat, command).expect("a benchmark child process failed")
}

/// [`measure`], or `None` as soon as a run of the command fails (what it printed on standard error says why).
pub fn try_measure(repeat: usize, command: impl Fn() -> Command) -> Option<Measurement> {
    let mut times = Vec::new();
    let mut peak_kib = 0;
    for _ in 0..repeat {
        let started = Instant::now();
        let (ok, peak) = run_and_measure(command());
        if !ok {
            return None;
        }
        times.push(started.elapsed().as_secs_f64());
        peak_kib = peak_kib.max(peak);
    }
    times.sort_by(f64::total_cmp);
    Some(Measurement {
        median: times[times.len() / 2],
        min: times[0],
        peak_kib,
    })
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
