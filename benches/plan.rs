//! The `plan` benchmark: how `ldsync plan` compares with the bare fetch of the same keys and with DuckDB's own
//! `EXCEPT`, at 1M and 10M keys (100M on request) whose checkpoint differs by 1%.
//!
//! Run: `cargo bench --bench plan` (options after `--`: `--sizes 1000000,10000000` (add 100000000 with
//! `--repeat 1`: its data takes about 5 GB), `--repeat 3`,
//! `--dir PATH` for the generated data, default `$TMPDIR/ldsync-bench`, and `--warehouse postgres` to run the model
//! on the PostgreSQL of `DATABASE_URL` instead of embedded DuckDB).
//!
//! On PostgreSQL, `except` is PostgreSQL's own two-way `EXCEPT`, a `copy` phase adds the anchor for the fetch:
//! `psql -c "COPY (model) TO STDOUT"` into /dev/null, and an `in-wh` phase runs `ldsync plan` with the state store
//! in the same database (`state.kind: postgres`), so that the diff runs in PostgreSQL (the in-warehouse diff) and
//! only the delta reaches ldsync.
//!
//! Each measurement runs in a fresh child process so that its peak resident memory (`VmHWM`) is its own (the
//! data is generated in a child too: Linux counts the parent's resident memory at spawn in a child's peak):
//! - `fetch`: the model's key column read into Arrow batches through the same query `plan` runs, nothing more;
//! - `plan`: the real `ldsync plan --format json` end to end (open, model, keys, checkpoint, diff, report);
//! - `except`: DuckDB's `EXCEPT` in both directions over the model and the previous key set, results into Arrow,
//!   with DuckDB's default memory limit rather than ldsync's engine settings;
//! - `except≤` (DuckDB only): the same `EXCEPT` held to the engine's memory limit, as `plan` is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use arrow::array::{Array, ArrayRef};
use ldsync::config::Config;
use ldsync::state::{CheckpointSettings, LocalStore, StateError, Store};
use ldsync::warehouse::{Warehouse, WarehouseError};

mod common;

use common::{
    cores, ldsync_plan, measure, memory_total, option, pass, phase_command, repeat,
    run_and_measure, sizes,
};

const SYNC: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(phase) = option(&args, "--phase") {
        let dir = PathBuf::from(option(&args, "--dir").expect("--dir"));
        match option(&args, "--keys") {
            Some(n) => prepare(
                &dir,
                n.parse().expect("--keys takes a number"),
                option(&args, "--warehouse").is_some(),
            ),
            None => run_phase(&phase, &dir),
        }
        return;
    }
    let sizes = sizes(&args, "1000000,10000000");
    let repeat = repeat(&args);
    let postgres = match option(&args, "--warehouse").as_deref() {
        None | Some("duckdb") => false,
        Some("postgres") => true,
        Some(other) => panic!("--warehouse takes duckdb or postgres, not {other}"),
    };
    let root = option(&args, "--dir")
        .map_or_else(|| std::env::temp_dir().join("ldsync-bench"), PathBuf::from)
        .join(if postgres { "postgres" } else { "duckdb" });

    println!(
        "machine: {} cores, {}; warehouse: {}",
        cores(),
        memory_total(),
        if postgres { "PostgreSQL" } else { "DuckDB" }
    );
    println!(
        "{:>10}  {:<8} {:>9} {:>9} {:>9}  {:>12}",
        "keys", "phase", "median s", "min s", "vs fetch", "peak RSS MiB"
    );
    let mut verdicts = Vec::new();
    for n in sizes {
        let dir = root.join(n.to_string());
        // In a child, so that this process stays small: a child's peak RSS counts its parent's at spawn.
        let mut generate = phase_command("prepare", &dir);
        generate.args(["--keys", &n.to_string()]);
        if postgres {
            generate.args(["--warehouse", "postgres"]);
        }
        assert!(run_and_measure(generate).0, "generating the data failed");
        let fetch = measure(repeat, || phase_command("fetch", &dir));
        let plan = measure(repeat, || plan_command(&dir));
        let except = measure(repeat, || phase_command("except", &dir));
        // The same EXCEPT held to the memory `plan` is given (engine.memory_limit), for comparison at equal memory.
        let bounded =
            (!postgres).then(|| measure(repeat, || phase_command("except-bounded", &dir)));
        let mut phases = vec![("fetch", &fetch), ("plan", &plan), ("except", &except)];
        if let Some(bounded) = &bounded {
            phases.push(("except≤", bounded));
        }
        let in_warehouse = postgres.then(|| measure(repeat, || in_warehouse_plan_command(&dir)));
        if let Some(in_warehouse) = &in_warehouse {
            phases.push(("in-wh", in_warehouse));
            let peak_mib = in_warehouse.peak_kib as f64 / 1024.0;
            verdicts.push(format!(
                "{n} keys: in-warehouse plan {:.2}× the set engine's plan, peak {peak_mib:.0} MiB against {:.0} MiB",
                in_warehouse.median / plan.median,
                plan.peak_kib as f64 / 1024.0
            ));
        }
        let copy = postgres.then(|| measure(repeat, || copy_command(&dir)));
        if let Some(copy) = &copy {
            phases.push(("copy", copy));
            let ratio = fetch.median / copy.median;
            verdicts.push(format!(
                "{n} keys: fetch/copy = {ratio:.2}× (target ≤ 2.0×, i.e. at least half of COPY's throughput: {})",
                pass(ratio <= 2.0)
            ));
        }
        for (name, m) in phases {
            println!(
                "{n:>10}  {name:<8} {:>9.3} {:>9.3} {:>8.2}× {:>12.1}",
                m.median,
                m.min,
                m.median / fetch.median,
                m.peak_kib as f64 / 1024.0
            );
        }
        let ratio = plan.median / except.median;
        let peak_mib = plan.peak_kib as f64 / 1024.0;
        verdicts.push(format!(
            "{n} keys: plan/except = {ratio:.2}×{}, plan/fetch = {:.2}×, plan peak {peak_mib:.0} MiB{}",
            if n == 10_000_000 {
                format!(" (target ≤ 1.0×: {})", pass(ratio <= 1.0))
            } else {
                String::new()
            },
            plan.median / fetch.median,
            match n {
                10_000_000 => format!(" (target ≤ 512 MiB: {})", pass(peak_mib <= 512.0)),
                100_000_000 => format!(" (target ≤ 1024 MiB: {})", pass(peak_mib <= 1024.0)),
                _ => String::new(),
            }
        ));
    }
    println!();
    for verdict in verdicts {
        println!("{verdict}");
    }
}

/// Generates, once per size, the model's CSV (`n` keys in random order), the previous key set (0.5% of the keys
/// missing, 0.5% extra: a 1% difference) as CSV, a connector.yaml, and the checkpoint committed from that set.
/// With `postgres`, both CSVs are loaded into tables of a schema `ldsync_bench_<n>` and the model reads from there.
fn prepare(dir: &Path, n: u64, postgres: bool) {
    let done = dir.join("ready");
    if done.exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let started = Instant::now();
    let conn = duckdb::Connection::open_in_memory().unwrap();
    let key = |i: &str| format!("'usr_' || substr(md5(({i})::VARCHAR), 1, 16)");
    let extra = n / 200;
    conn.execute_batch(&format!(
        "COPY (SELECT {model} AS user_id, i % 7 AS plan_tier FROM range({n}) r(i)) TO '{dir}/model.csv' (HEADER);
         COPY (SELECT {model} AS user_id FROM range({n}) r(i) WHERE i % 200 <> 0
               UNION ALL SELECT {model} FROM range({n}, {n} + {extra}) r(i)) TO '{dir}/previous.csv' (HEADER);",
        model = key("i"),
        dir = dir.display(),
    ))
    .unwrap();
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    let schema = postgres.then(|| load_into_postgres(dir, n));
    let tables = schema.as_ref().map_or(String::new(), |s| format!("{s}."));
    std::fs::write(
        dir.join("sql/bench_model.sql"),
        format!("SELECT user_id AS context_key FROM {tables}model\n"),
    )
    .unwrap();
    let warehouse = if postgres {
        format!("  kind: postgres\n  url: {}\n", database_url())
    } else {
        "  kind: duckdb
  startup_sql:
    - >-
      CREATE VIEW model AS SELECT * FROM read_csv('model.csv', header = true, types = {'user_id': 'VARCHAR'})
    - >-
      CREATE VIEW previous AS SELECT * FROM read_csv('previous.csv', header = true, types = {'user_id': 'VARCHAR'})
"
        .to_string()
    };
    std::fs::write(dir.join("tables"), &tables).unwrap();
    std::fs::write(
        dir.join("connector.yaml"),
        format!(
            "version: 1
warehouse:
{warehouse}launchdarkly:
  project: bench
  environment: production
state:
  kind: local
  directory: state
syncs:
  - name: {SYNC}
    model: bench_model
    segment: bench
    mode: mirror
    gates:
      max_remove_percent: 100
"
        ),
    )
    .unwrap();
    let config = Config::load(&dir.join("connector.yaml")).unwrap();
    let settings = CheckpointSettings::of(&config, &config.syncs[0]);
    commit_previous(
        &Store::Local(LocalStore::new(dir.join("state"))),
        &settings,
        &conn,
        dir,
    );
    if let Some(schema) = &schema {
        share_state(dir, schema, &conn);
    }
    std::fs::write(&done, "").unwrap();
    eprintln!(
        "generated {n} keys in {} in {:.1}s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
}

fn plan_command(dir: &Path) -> Command {
    ldsync_plan(&dir.join("connector.yaml"))
}

fn database_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "--warehouse postgres needs DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/test",
    )
}

/// Loads the model and previous CSVs into tables of a fresh schema; returns the schema's name.
fn load_into_postgres(dir: &Path, n: u64) -> String {
    let schema = format!("ldsync_bench_{n}");
    let dir = dir.canonicalize().unwrap();
    let sql = format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP SCHEMA IF EXISTS {schema}_state CASCADE;
         CREATE SCHEMA {schema};
         CREATE TABLE {schema}.model (user_id text, plan_tier int);
         CREATE TABLE {schema}.previous (user_id text);
         \\copy {schema}.model FROM '{dir}/model.csv' CSV HEADER
         \\copy {schema}.previous FROM '{dir}/previous.csv' CSV HEADER
         ANALYZE {schema}.model; ANALYZE {schema}.previous;",
        dir = dir.display()
    );
    let status = Command::new("psql")
        .args([&database_url(), "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut psql| {
            use std::io::Write;
            psql.stdin.take().unwrap().write_all(sql.as_bytes())?;
            psql.wait()
        })
        .expect("psql runs");
    assert!(status.success(), "loading the CSVs into PostgreSQL failed");
    schema
}

/// Writes `connector-shared.yaml`, the benchmark's configuration with its state in PostgreSQL (the schema
/// `<schema>_state`, in the warehouse's database), and commits the same checkpoint there.
fn share_state(dir: &Path, schema: &str, conn: &duckdb::Connection) {
    let local = std::fs::read_to_string(dir.join("connector.yaml")).unwrap();
    let shared = local.replace(
        "state:\n  kind: local\n",
        &format!(
            "state:\n  kind: postgres\n  url: {}\n  schema: {schema}_state\n",
            database_url()
        ),
    );
    std::fs::write(dir.join("connector-shared.yaml"), shared).unwrap();
    let config = Config::load(&dir.join("connector-shared.yaml")).unwrap();
    let settings = CheckpointSettings::of(&config, &config.syncs[0]);
    commit_previous(&Store::open(&config).unwrap(), &settings, conn, dir);
}

/// Commits the previous key set as the sync's checkpoint in `store`, as a sync writes it: sorted keys, ZSTD,
/// through the store's prepare-and-commit protocol.
fn commit_previous(
    store: &Store,
    settings: &CheckpointSettings,
    conn: &duckdb::Connection,
    dir: &Path,
) {
    let snapshot = store
        .prepare::<StateError>(SYNC, "bench-previous", |path| {
            let written = conn
                .execute(
                    &format!(
                        "COPY (SELECT user_id AS context_key FROM read_csv('{}/previous.csv', header = true, \
                         types = {{'user_id': 'VARCHAR'}}) ORDER BY context_key COLLATE c) TO '{}' \
                         (FORMAT parquet, COMPRESSION zstd)",
                        dir.display(),
                        path.display()
                    ),
                    [],
                )
                .unwrap();
            Ok(written as u64)
        })
        .unwrap();
    store
        .commit_prepared(SYNC, "bench-previous", settings, &snapshot)
        .unwrap();
}

/// `ldsync plan` with the state in the warehouse's database: the in-warehouse diff.
fn in_warehouse_plan_command(dir: &Path) -> Command {
    ldsync_plan(&dir.join("connector-shared.yaml"))
}

/// `psql` copying the model's key column to standard output, which goes to /dev/null: the fetch's anchor.
fn copy_command(dir: &Path) -> Command {
    let tables = std::fs::read_to_string(dir.join("tables")).unwrap();
    let mut command = Command::new("psql");
    command
        .args([
            &database_url(),
            "-q",
            "-c",
            &format!("COPY (SELECT user_id FROM {tables}model) TO STDOUT"),
        ])
        .stdout(std::process::Stdio::null());
    command
}

fn run_phase(phase: &str, dir: &Path) {
    let config = Config::load(&dir.join("connector.yaml")).unwrap();
    let warehouse = Warehouse::open(
        &config.warehouse,
        &config.engine_settings(),
        &config.project_dir,
    )
    .unwrap();
    let mut rows = 0usize;
    let mut count = |array: &ArrayRef| -> Result<(), WarehouseError> {
        rows += array.len();
        Ok(())
    };
    match phase {
        "fetch" => {
            let sql = std::fs::read_to_string(dir.join("sql/bench_model.sql")).unwrap();
            let key = warehouse.key_column(&sql, "context_key").unwrap();
            warehouse.stream_keys(&sql, &key, &mut count)
        }
        "except" | "except-bounded" => {
            if phase == "except" {
                // DuckDB's own defaults (memory up to 80% of the machine's), not ldsync's engine settings.
                warehouse
                    .engine()
                    .unwrap()
                    .execute_batch("RESET memory_limit; RESET temp_directory")
                    .unwrap();
            }
            let t = std::fs::read_to_string(dir.join("tables")).unwrap();
            warehouse.stream_column(
                &format!(
                    "SELECT user_id FROM (SELECT user_id FROM {t}model EXCEPT SELECT user_id FROM {t}previous) AS e
                     UNION ALL
                     SELECT user_id FROM (SELECT user_id FROM {t}previous EXCEPT SELECT user_id FROM {t}model) AS l"
                ),
                &mut count,
            )
        }
        other => panic!("unknown phase {other}"),
    }
    .unwrap();
    assert!(rows > 0, "the {phase} phase read no rows");
}
