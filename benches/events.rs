//! The `events` benchmark: what planning an events sync's first run (the backfill: every row of the model, none sent
//! yet) costs in time and memory as the model grows, at 1M and 5M event rows (20M on request), with the engine's
//! memory limit at 64MB, the least connector.yaml takes. Planning holds the row ids inside the lateness window, not
//! every row sent, and reads the rows in ranges of time that DuckDB sorts one at a time, so its peak memory should
//! stay flat as the rows grow.
//!
//! Run: `cargo bench --bench events` (options after `--`: `--sizes 1000000,5000000,20000000`, `--repeat 3`,
//! `--memory-limit 256MB` for `engine.memory_limit`, `--dir PATH` for the generated data, default
//! `$TMPDIR/ldsync-bench-events`).
//!
//! The data is a table of N events in a DuckDB database file, generated in SQL: one event a second (so an hour of
//! lateness holds 3,600 rows), three event keys, 100,000 users, a revenue value, stored in random order. Each
//! measurement runs in a fresh child process so that its peak resident memory (`VmHWM`) is its own:
//! - `sorted-once`: the anchor, the rows of the events query (every column cast to text, in time and row id order)
//!   read into Arrow batches in one query that DuckDB sorts whole within the engine's memory limit, as ldsync read
//!   them before it read in ranges of time (DuckDB may run out of memory: the table says so);
//! - `fetch`: the same rows as `plan` reads them: in ranges of time of about a million rows each, each sorted on its
//!   own (`events::model::ROWS_PER_READ`), the pass that cuts the ranges included: the warehouse's share;
//! - `plan`: the real `ldsync plan --format json` end to end (open, model, every row checked and turned into its
//!   event, batches counted, report).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ldsync::config::Config;
use ldsync::events::model::{EventQuery, ROWS_PER_READ};
use ldsync::warehouse::{Warehouse, WarehouseError};

mod common;

use common::{
    Measurement, cores, ldsync_plan, measure, memory_total, option, pass, phase_command, repeat,
    run_and_measure, sizes, try_measure,
};

/// The most the plan's peak may grow from the smallest size to the largest, in MiB, to count as flat.
const FLAT_MIB: f64 = 32.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(phase) = option(&args, "--phase") {
        let dir = PathBuf::from(option(&args, "--dir").expect("--dir"));
        match option(&args, "--rows") {
            Some(n) => prepare(&dir, n.parse().expect("--rows takes a number")),
            None => run_phase(&phase, &dir),
        }
        return;
    }
    let sizes = sizes(&args, "1000000,5000000");
    let repeat = repeat(&args);
    let memory_limit = option(&args, "--memory-limit").unwrap_or_else(|| "64MB".into());
    let root = option(&args, "--dir").map_or_else(
        || std::env::temp_dir().join("ldsync-bench-events"),
        PathBuf::from,
    );

    println!(
        "machine: {} cores, {}; engine.memory_limit: {memory_limit}",
        cores(),
        memory_total()
    );
    println!(
        "{:>10}  {:<11} {:>9} {:>9} {:>13} {:>12}",
        "rows", "phase", "median s", "min s", "rows/s", "peak RSS MiB"
    );
    let mut plan_peaks = Vec::new();
    for &n in &sizes {
        let dir = root.join(n.to_string());
        // In a child, so that this process stays small: a child's peak RSS counts its parent's at spawn.
        let mut generate = phase_command("prepare", &dir);
        generate.args(["--rows", &n.to_string()]);
        assert!(run_and_measure(generate).0, "generating the data failed");
        write_config(&dir, &memory_limit);
        let sorted_once = try_measure(repeat, || phase_command("sorted-once", &dir));
        let fetch = measure(repeat, || phase_command("fetch", &dir));
        let plan = measure(repeat, || ldsync_plan(&dir.join("connector.yaml")));
        for (name, m) in [
            ("sorted-once", sorted_once.as_ref()),
            ("fetch", Some(&fetch)),
            ("plan", Some(&plan)),
        ] {
            println!("{n:>10}  {name:<11} {}", row(n, m));
        }
        plan_peaks.push((n, plan.peak_kib as f64 / 1024.0));
    }
    println!();
    if let (Some((small, low)), Some((large, high))) = (plan_peaks.first(), plan_peaks.last())
        && small != large
    {
        println!(
            "plan peak {low:.0} MiB at {small} rows, {high:.0} MiB at {large} rows: {:+.0} MiB (target: flat, \
             within {FLAT_MIB:.0} MiB: {})",
            high - low,
            pass(high - low <= FLAT_MIB)
        );
    }
}

/// A measurement's columns of the table, or what the phase did instead.
fn row(n: u64, measured: Option<&Measurement>) -> String {
    match measured {
        Some(m) => format!(
            "{:>9.3} {:>9.3} {:>13.0} {:>12.1}",
            m.median,
            m.min,
            n as f64 / m.median,
            m.peak_kib as f64 / 1024.0
        ),
        None => "failed (its error is above: out of memory within the limit)".to_string(),
    }
}

/// Generates, once per size, the DuckDB database of `n` events and the model that reads it.
fn prepare(dir: &Path, n: u64) {
    let done = dir.join("ready");
    if done.exists() {
        return;
    }
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    let started = Instant::now();
    let conn = duckdb::Connection::open(dir.join("events.duckdb")).unwrap();
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TABLE events AS
         SELECT 'ord_' || i AS row_id,
                ['order-completed', 'upgrade', 'refund'][1 + i % 3] AS event_key,
                'usr_' || (hash(i) % 100000) AS user_id,
                TIMESTAMP '2020-01-01 00:00:00' + to_seconds(i) AS occurred_at,
                CASE WHEN i % 3 = 1 THEN NULL ELSE (hash(i) % 10000) / 100.0 END AS revenue
         FROM range({n}) r(i)
         ORDER BY hash(i + 1);
         CHECKPOINT;"
    ))
    .unwrap();
    drop(conn);
    std::fs::write(
        dir.join("sql/bench_events.sql"),
        "SELECT row_id, event_key, user_id, occurred_at, revenue FROM events\n",
    )
    .unwrap();
    std::fs::write(&done, "").unwrap();
    eprintln!(
        "generated {n} events in {} in {:.1}s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
}

/// A connector.yaml whose one events sync reads the generated events, with no checkpoint (a first run plans every
/// row), and the engine's memory limit at `memory_limit`.
fn write_config(dir: &Path, memory_limit: &str) {
    std::fs::write(
        dir.join("connector.yaml"),
        format!(
            "version: 1
warehouse:
  kind: duckdb
  database: events.duckdb
engine:
  memory_limit: {memory_limit}
launchdarkly:
  project: bench
  environment: production
state:
  kind: local
  directory: state
events:
  - name: bench-events
    model: bench_events
    contexts: {{user: user_id}}
    timestamp_column: occurred_at
    value_column: revenue
    row_id_column: row_id
    lateness: 1h
"
        ),
    )
    .unwrap();
}

fn run_phase(phase: &str, dir: &Path) {
    let rows_per_read = match phase {
        "fetch" => Some(ROWS_PER_READ),
        "sorted-once" => None,
        _ => panic!("unknown phase {phase}"),
    };
    let config = Config::load(&dir.join("connector.yaml")).unwrap();
    let warehouse = Warehouse::for_project(&config).unwrap();
    let sync = &config.events[0];
    let sql = ldsync::dbt::model_sql(&config, &sync.name, &sync.model)
        .unwrap()
        .sql;
    let query = EventQuery::prepare(&warehouse, sync, &sql).unwrap();
    let mut rows = 0usize;
    let read =
        query.stream_in_reads::<WarehouseError>(&warehouse, None, rows_per_read, |columns| {
            rows += query.rows(columns)?.len();
            Ok(())
        });
    if let Err(error) = read {
        eprintln!(
            "{phase}: {}",
            error.to_string().lines().next().unwrap_or_default()
        );
        std::process::exit(1);
    }
    assert!(rows > 0, "the {phase} phase read no rows");
}
