//! The `sync` benchmark: how close `ldsync sync` comes to the throughput a LaunchDarkly rate limit allows.
//!
//! Run: `cargo bench --bench sync` (options after `--`: `--rate R` requests per 10-second window, default 20;
//! `--windows W`, default 5; `--dir PATH` for the generated project, default `$TMPDIR/ldsync-bench-sync`).
//!
//! The emulator runs in this process with a limit of R requests per 10-second window and the rate-limit headers
//! LaunchDarkly sends. A first, unlimited run fills a big segment; the measured run is a mirror run whose model
//! lost part of those keys and gained new ones, sized so that its requests (one read of the segment, then the
//! batches of 1,500) fill W windows exactly. It reports keys per second against the ceiling R × 1,500 / 10 s, both
//! raw (keys over the run's wall time, start-up included) and window-aligned (keys over the whole windows the run
//! occupied, which is what the limit really grants), the 429s met per window, the write requests against
//! ceil(adds / 1,500) + ceil(removes / 1,500), and the run's peak resident memory.
//!
//! `cargo bench --bench sync -- --first-sync N` measures something else: a first sync of an N-key model into a new
//! big segment of the emulator, with no rate limit, both ways: in batches of 1,500 targets and as CSV imports (the
//! time, requests and peak memory of ldsync itself; the target at 10M keys is at most 12 write requests and 1 GiB
//! with imports). Add `--state postgres` to keep its checkpoint and journal in the PostgreSQL state store of
//! `DATABASE_URL` (schema `ldsync_bench_sync`) instead of the local one.
//!
//! `cargo bench --bench sync -- --full-export N` measures `sync --full` of an N-key model onto a big segment that
//! differs from it by 1% of hand edits, its members read through an export.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cores, memory_total, option, pass, run_and_measure};
use ldsync_emulator::{Emulator, EmulatorConfig, Faults, RateLimit, SegmentSeed, ThrottleHeaders};

const WINDOW: Duration = Duration::from_secs(10);
const BATCH: u64 = 1_500;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rate: u64 =
        option(&args, "--rate").map_or(20, |r| r.parse().expect("--rate takes a number"));
    let windows: u64 =
        option(&args, "--windows").map_or(5, |w| w.parse().expect("--windows takes a number"));
    let dir = option(&args, "--dir").map_or_else(
        || std::env::temp_dir().join("ldsync-bench-sync"),
        PathBuf::from,
    );
    if let Some(keys) = option(&args, "--full-export") {
        full_export(
            &dir,
            keys.parse().expect("--full-export takes a number of keys"),
        );
        return;
    }
    if let Some(keys) = option(&args, "--first-sync") {
        let state = match option(&args, "--state").as_deref() {
            None | Some("local") => State::Local,
            Some("postgres") => State::Postgres(std::env::var("DATABASE_URL").expect(
                "--state postgres needs DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/test",
            )),
            Some(other) => panic!("--state takes local or postgres, not {other}"),
        };
        first_sync(
            &dir,
            keys.parse().expect("--first-sync takes a number of keys"),
            &state,
        );
        return;
    }

    // The measured run: one GET, then `adds` and `removes` in full batches, R × W requests in all.
    let writes = rate * windows - 1;
    let (add_batches, remove_batches) = (writes.div_ceil(2), writes / 2);
    let (adds, removes, stay) = (add_batches * BATCH, remove_batches * BATCH, 10_000);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    write_project(&dir, &State::Local, "");
    // Day 1: `removes` keys that will leave and `stay` keys that stay; day 2: the stayers and `adds` newcomers.
    write_keys(
        &dir.join("day1.csv"),
        (0..removes + stay).map(|i| format!("usr_old_{i:09}")),
    );
    write_keys(
        &dir.join("day2.csv"),
        (removes..removes + stay)
            .map(|i| format!("usr_old_{i:09}"))
            .chain((0..adds).map(|i| format!("usr_new_{i:09}"))),
    );

    let emulator = Emulator::start(EmulatorConfig::default()).unwrap();
    let (ok, _) = run_and_measure(sync_command(&dir, &emulator, "day1.csv", None));
    assert!(ok, "the unlimited first run failed");
    emulator.clear_requests();
    emulator.set_faults(Faults {
        rate_limit: Some(RateLimit {
            requests_per_window: rate as u32,
            window: WINDOW,
            headers: ThrottleHeaders::Full,
        }),
        ..Faults::default()
    });
    let report = dir.join("report.json");
    let started = Instant::now();
    let (ok, peak_kib) = run_and_measure(sync_command(&dir, &emulator, "day2.csv", Some(&report)));
    let elapsed = started.elapsed();
    assert!(ok, "the measured run failed; see {}", report.display());

    let requests = emulator.requests();
    let limited = requests.iter().filter(|r| r.status == 429).count() as u64;
    let written = requests
        .iter()
        .filter(|r| r.method == "POST" && r.status == 204)
        .count() as u64;
    let expected_writes = adds.div_ceil(BATCH) + removes.div_ceil(BATCH);
    let keys = (adds + removes) as f64;
    let ceiling = (rate * BATCH) as f64 / WINDOW.as_secs_f64();
    let raw = keys / elapsed.as_secs_f64();
    let windows_used = (elapsed.as_secs_f64() / WINDOW.as_secs_f64()).ceil();
    let aligned = keys / (windows_used * WINDOW.as_secs_f64());

    println!("machine: {} cores, {}", cores(), memory_total());
    println!("limit: {rate} requests per 10-second window; ceiling {ceiling:.0} keys/s");
    println!(
        "run: {adds} adds, {removes} removes, {:.1} s over {windows_used} windows",
        elapsed.as_secs_f64()
    );
    println!(
        "keys/s raw:            {raw:>8.0} ({:.1}% of the ceiling)",
        raw * 100.0 / ceiling
    );
    println!(
        "keys/s window-aligned: {aligned:>8.0} ({:.1}% of the ceiling)",
        aligned * 100.0 / ceiling
    );
    println!(
        "429s: {limited} ({:.2} per window)",
        limited as f64 / windows_used
    );
    println!(
        "write requests: {written}, expected ceil(adds/1500) + ceil(removes/1500) = {expected_writes}"
    );
    println!("peak RSS: {:.1} MiB", peak_kib as f64 / 1024.0);
    println!();
    println!(
        "throughput ≥ 90% of the ceiling: {}; ≤ 1 429 per window: {}; exact request count: {}",
        pass(aligned >= 0.9 * ceiling),
        pass(limited as f64 <= windows_used),
        pass(written == expected_writes)
    );
}

/// How a first sync sends its adds to the big segment.
#[derive(Clone, Copy)]
enum Way {
    Batches,
    Imports,
}

/// A first sync of `n` keys into a new big segment, unlimited, both ways: in batches of 1,500 through
/// `POST …/contexts`, and as CSV imports of up to 1,000,000 keys: wall time, requests and peak resident memory.
fn first_sync(dir: &Path, n: u64, state: &State) {
    println!(
        "machine: {} cores, {}; state: {}",
        cores(),
        memory_total(),
        match state {
            State::Local => "local",
            State::Postgres(_) => "PostgreSQL",
        }
    );
    let mut imports_ok = true;
    for way in [Way::Batches, Way::Imports] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("sql")).unwrap();
        let big_segment = match way {
            Way::Batches => "    big_segment: {import_above: 1000000000000}\n",
            Way::Imports => "",
        };
        write_project(dir, state, big_segment);
        write_keys(
            &dir.join("first.csv"),
            (0..n).map(|i| format!("usr_{i:012}")),
        );
        let emulator = Emulator::start(EmulatorConfig::default()).unwrap();
        let report = dir.join("report.json");
        let started = Instant::now();
        let (ok, peak_kib) =
            run_and_measure(sync_command(dir, &emulator, "first.csv", Some(&report)));
        let elapsed = started.elapsed().as_secs_f64();
        assert!(ok, "the first sync failed; see {}", report.display());
        let members = emulator
            .included("default", "production", "audience", "user")
            .len() as u64;
        assert_eq!(members, n, "the big segment holds every model key");
        let requests = emulator.requests();
        let writes = requests.iter().filter(|r| r.method == "POST").count();
        let peak_mib = peak_kib as f64 / 1024.0;
        let name = match way {
            Way::Batches => "batches",
            Way::Imports => "imports",
        };
        println!(
            "first sync of {n} keys, {name:>7}: {elapsed:>6.1} s ({:>7.0} keys/s), {writes:>5} write requests, \
             {:>5} requests in all, peak RSS {peak_mib:.1} MiB",
            n as f64 / elapsed,
            requests.len()
        );
        if let Way::Imports = way {
            imports_ok = writes as u64 <= n.div_ceil(1_000_000) + 2 && peak_mib <= 1024.0;
        }
    }
    if n >= 10_000_000 {
        println!(
            "imports: at most 12 write requests and 1 GiB at 10M keys: {}",
            pass(imports_ok)
        );
    }
}

/// `sync --full` of an `n`-key model onto a big segment whose members, seeded in the emulator, differ from it
/// by 1% (hand edits: 0.5% removed, 0.5% added), read through an export: wall time, requests, peak memory.
fn full_export(dir: &Path, n: u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    write_project(dir, &State::Local, "");
    let model = |i: u64| format!("usr_{i:012}");
    write_keys(&dir.join("model.csv"), (0..n).map(model));
    let drift = n / 200;
    let members: Vec<String> = (drift..n)
        .map(model)
        .chain((0..drift).map(|i| format!("usr_by_hand_{i:09}")))
        .collect();
    let emulator = Emulator::start(EmulatorConfig::default()).unwrap();
    emulator.seed_segment(
        "default",
        "production",
        SegmentSeed {
            key: "audience".into(),
            name: "audience".into(),
            unbounded: true,
            context_kind: "user".into(),
            included: vec![("user".into(), members)],
            excluded: vec![],
        },
    );
    let report = dir.join("report.json");
    let mut command = sync_command(dir, &emulator, "model.csv", Some(&report));
    command.arg("--full");
    let started = Instant::now();
    let (ok, peak_kib) = run_and_measure(command);
    let elapsed = started.elapsed().as_secs_f64();
    assert!(ok, "the --full sync failed; see {}", report.display());
    let members = emulator.included("default", "production", "audience", "user");
    assert_eq!(members.len() as u64, n, "the segment holds the model");
    assert!(members.iter().all(|k| !k.starts_with("usr_by_hand_")));
    let requests = emulator.requests();
    println!("machine: {} cores, {}", cores(), memory_total());
    println!(
        "sync --full of {n} keys through an export ({drift} added and {drift} removed by hand): {elapsed:.1} s, \
         {} requests ({} file download), peak RSS {:.1} MiB",
        requests.len(),
        emulator.file_requests().len(),
        peak_kib as f64 / 1024.0
    );
}

fn write_keys(path: &Path, keys: impl Iterator<Item = String>) {
    let mut text = String::from("user_id\n");
    for key in keys {
        text.push_str(&key);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Where a benchmark's sync keeps its state.
enum State {
    Local,
    /// The PostgreSQL store at this URL, in the schema `ldsync_bench_sync`, emptied first.
    Postgres(String),
}

/// The benchmark's project: one mirror sync `audience` of a big segment, with `settings` (lines of YAML) added to it.
fn write_project(dir: &Path, state: &State, settings: &str) {
    let state = match state {
        State::Local => "  kind: local\n  directory: state\n".to_string(),
        State::Postgres(url) => {
            let dropped = Command::new("psql")
                .args([
                    url,
                    "-q",
                    "-c",
                    "DROP SCHEMA IF EXISTS ldsync_bench_sync CASCADE",
                ])
                .status()
                .expect("psql runs");
            assert!(
                dropped.success(),
                "emptying the benchmark's state schema failed"
            );
            format!(
                "  kind: postgres\n  url: {url}\n  schema: ldsync_bench_sync\n  directory: state\n"
            )
        }
    };
    std::fs::write(
        dir.join("sql/audience.sql"),
        "SELECT user_id AS context_key FROM audience\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("connector.yaml"),
        format!(
            "version: 1
warehouse:
  kind: duckdb
  startup_sql:
    - >-
      CREATE VIEW audience AS SELECT * FROM read_csv('${{BENCH_DAY}}', header = true, types = {{'user_id': 'VARCHAR'}})
launchdarkly:
  base_url: ${{BENCH_EMULATOR}}
  project: default
  environment: production
state:
{state}syncs:
  - name: audience
    model: audience
    segment: audience
    mode: mirror
    create_segment: big
{settings}    gates:
      max_remove_percent: 100
"
        ),
    )
    .unwrap();
}

fn sync_command(dir: &Path, emulator: &Emulator, day: &str, report: Option<&Path>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ldsync"));
    command
        .arg("--config")
        .arg(dir.join("connector.yaml"))
        .args(["--log-level", "warn", "sync", "--format", "json"])
        .env("BENCH_DAY", day)
        .env("BENCH_EMULATOR", emulator.base_url())
        .env("LD_ACCESS_TOKEN", "api-emulator-token");
    match report {
        Some(path) => command.stdout(std::fs::File::create(path).unwrap()),
        None => command.stdout(std::process::Stdio::null()),
    };
    command
}
