//! dbt models as sources: `model: ref('…')` resolved through hand-written manifests (each error a user can meet,
//! and what `validate` and `plan` show), then the example dbt project in fixtures/dbt built with real dbt-duckdb and
//! with real dbt-postgres (into a schema of the test's own), planned and synced by `ref()` against the emulator, and
//! the exposures `ldsync dbt exposures` prints loaded by `dbt parse`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ldsync::config::{Config, Model};
use ldsync::dbt::{DbtModel, ModelError, ModelSql, model_sql};
use serde_json::{Value, json};

use crate::util::emulated::{Setup, difference, ok};
use crate::util::postgres::{Schema, database_url};
use crate::util::*;

const GENERATED_AT: &str = "2024-11-30T08:00:00.000000Z";

/// A model node as dbt 1.10 writes it (the fields ldsync reads, and a few it does not).
fn node(package: &str, name: &str, materialized: &str) -> Value {
    let relation = (materialized != "ephemeral").then(|| format!("\"memory\".\"main\".\"{name}\""));
    json!({
        "resource_type": "model",
        "unique_id": format!("model.{package}.{name}"),
        "package_name": package,
        "name": name,
        "relation_name": relation,
        "original_file_path": format!("models/{name}.sql"),
        "fqn": [package, name],
        "config": {"materialized": materialized, "enabled": true, "tags": []},
    })
}

fn manifest(adapter: &str, nodes: &[Value], disabled: &[Value]) -> Value {
    let by_id = |list: &[Value]| -> serde_json::Map<String, Value> {
        list.iter()
            .map(|n| (n["unique_id"].as_str().unwrap().to_string(), n.clone()))
            .collect()
    };
    let disabled: serde_json::Map<String, Value> = by_id(disabled)
        .into_iter()
        .map(|(id, n)| (id, json!([n])))
        .collect();
    json!({
        "metadata": {
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/manifest/v12.json",
            "dbt_version": "1.10.23",
            "generated_at": GENERATED_AT,
            "adapter_type": adapter,
            "project_name": "shop",
        },
        "nodes": by_id(nodes),
        "sources": {},
        "disabled": disabled,
    })
}

/// The usual project: `pro_users` and `dormant_users` tables and an ephemeral `churned` compiled from them.
fn shop_manifest() -> Value {
    let mut churned = node("shop", "churned", "ephemeral");
    churned["compiled_code"] = json!("select context_key from \"memory\".\"main\".\"pro_users\"");
    manifest(
        "duckdb",
        &[
            node("shop", "pro_users", "table"),
            node("shop", "dormant_users", "view"),
            churned,
            json!({"resource_type": "test", "unique_id": "test.shop.not_null", "package_name": "shop",
                   "name": "not_null", "config": {"enabled": true}}),
        ],
        &[],
    )
}

/// A connector.yaml whose one sync reads `ref('pro_users')` through the manifest of the dbt project in `analytics/`,
/// over an in-memory DuckDB that holds the table the manifest names.
struct DbtProject {
    dir: tempfile::TempDir,
}

impl DbtProject {
    fn new(manifest: &Value) -> DbtProject {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("connector.yaml"),
            "version: 1\n\
             warehouse:\n  kind: duckdb\n  startup_sql:\n    - \"CREATE TABLE pro_users AS SELECT * FROM \
             (VALUES ('u1'), ('u2'), ('u3')) t(context_key)\"\n\
             dbt:\n  project_dir: analytics\n\
             launchdarkly:\n  project: default\n  environment: production\n\
             state:\n  kind: local\n\
             syncs:\n  - name: pro\n    model: ref('pro_users')\n    segment: pro-users\n    mode: mirror\n",
        )
        .unwrap();
        let project = DbtProject { dir };
        project.write_manifest(manifest);
        project
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("analytics/target/manifest.json")
    }

    fn write_manifest(&self, manifest: &Value) {
        let path = self.manifest_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    }

    fn config(&self) -> Config {
        Config::load(&self.dir.path().join("connector.yaml")).unwrap()
    }

    fn resolve(&self, model: &str) -> Result<ModelSql, ModelError> {
        let model: Model = serde_yaml_ng::from_str(model).unwrap();
        model_sql(&self.config(), "pro", &model)
    }

    /// The error resolving `model` gives, which must name the manifest.
    fn error(&self, model: &str) -> String {
        let message = self.resolve(model).unwrap_err().to_string();
        assert!(
            message.contains(&self.manifest_path().display().to_string()),
            "the error names no manifest: {message}"
        );
        message
    }

    fn ldsync(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ldsync"))
            .arg("--config")
            .arg(self.dir.path().join("connector.yaml"))
            .args(args)
            .env_remove("LDSYNC_CONFIG")
            .env_remove("LDSYNC_LOG")
            .output()
            .unwrap()
    }
}

#[test]
fn a_table_or_view_runs_as_a_select_from_its_relation() {
    let project = DbtProject::new(&shop_manifest());
    let resolved = project.resolve("ref('pro_users')").unwrap();
    assert_eq!(
        resolved.sql,
        "SELECT * FROM \"memory\".\"main\".\"pro_users\""
    );
    assert_eq!(
        resolved.dbt,
        Some(DbtModel {
            unique_id: "model.shop.pro_users".into(),
            relation: Some("\"memory\".\"main\".\"pro_users\"".into()),
            materialized: "table".into(),
            generated_at: GENERATED_AT.into(),
            manifest: project.manifest_path().display().to_string(),
        })
    );
    let view = project.resolve("ref('shop', 'dormant_users')").unwrap();
    assert_eq!(
        view.sql,
        "SELECT * FROM \"memory\".\"main\".\"dormant_users\""
    );
}

#[test]
fn an_ephemeral_model_runs_its_compiled_sql_and_without_it_asks_for_dbt_compile() {
    let project = DbtProject::new(&shop_manifest());
    let resolved = project.resolve("ref('churned')").unwrap();
    assert_eq!(
        resolved.sql,
        "select context_key from \"memory\".\"main\".\"pro_users\""
    );
    assert_eq!(resolved.dbt.unwrap().relation, None);

    // What `dbt parse` leaves: the node without compiled code.
    project.write_manifest(&manifest(
        "duckdb",
        &[node("shop", "churned", "ephemeral")],
        &[],
    ));
    let message = project.error("ref('churned')");
    assert!(
        message.contains("ref('churned') is the ephemeral model model.shop.churned")
            && message.contains("holds no compiled SQL for it: run `dbt compile` (or `dbt build`)"),
        "{message}"
    );
}

#[test]
fn a_wrong_name_lists_the_closest_models() {
    let project = DbtProject::new(&shop_manifest());
    let message = project.error("ref('pro_user')");
    assert!(
        message.starts_with("ref('pro_user'): the dbt manifest ")
            && message.ends_with(
                "has no model, seed or snapshot of that name; the closest are: pro_users, churned, dormant_users"
            ),
        "{message}"
    );
    // A package that does not have it.
    let message = project.error("ref('other', 'pro_users')");
    assert!(message.contains("the closest are: pro_users"), "{message}");
}

#[test]
fn a_name_in_two_packages_prefers_the_root_project_and_is_ambiguous_between_two_others() {
    let project = DbtProject::new(&manifest(
        "duckdb",
        &[
            node("shop", "users", "table"),
            node("vendor_a", "users", "table"),
            node("vendor_a", "accounts", "table"),
            node("vendor_b", "accounts", "table"),
        ],
        &[],
    ));
    let root = project.resolve("ref('users')").unwrap();
    assert_eq!(root.dbt.unwrap().unique_id, "model.shop.users");
    let vendor = project.resolve("ref('vendor_a', 'users')").unwrap();
    assert_eq!(vendor.dbt.unwrap().unique_id, "model.vendor_a.users");
    let message = project.error("ref('accounts')");
    assert!(
        message.contains(
            "ref('accounts') is ambiguous in the dbt manifest {}: it names model.vendor_a.accounts and \
             model.vendor_b.accounts; say which with ref('package', 'name')"
                .replace("{}", &project.manifest_path().display().to_string())
                .as_str()
        ),
        "{message}"
    );
}

#[test]
fn a_disabled_model_says_so() {
    let mut disabled = node("shop", "legacy_users", "table");
    disabled["config"]["enabled"] = json!(false);
    let project = DbtProject::new(&manifest(
        "duckdb",
        &[node("shop", "pro_users", "table")],
        &[disabled],
    ));
    let message = project.error("ref('legacy_users')");
    assert!(
        message.starts_with(
            "ref('legacy_users') is model.shop.legacy_users, which is disabled in the dbt project"
        ),
        "{message}"
    );
}

#[test]
fn a_manifest_built_for_another_adapter_is_refused() {
    let project = DbtProject::new(&manifest(
        "snowflake",
        &[node("shop", "pro_users", "table")],
        &[],
    ));
    let message = project.error("ref('pro_users')");
    assert!(
        message.contains("was built for the `snowflake` adapter, but warehouse.kind is duckdb"),
        "{message}"
    );
}

#[test]
fn a_missing_manifest_says_to_run_dbt_and_where_it_looked() {
    let project = DbtProject::new(&shop_manifest());
    std::fs::remove_file(project.manifest_path()).unwrap();
    let message = project.error("ref('pro_users')");
    assert_eq!(
        message,
        format!(
            "no dbt manifest at {}: run `dbt compile` or `dbt build` in the dbt project first, so that ref() has a \
             manifest to resolve against (or point dbt.manifest at it)",
            project.manifest_path().display()
        )
    );
    // Through the command line: a configuration error (exit 5) naming the sync.
    let out = project.ldsync(&["validate"]);
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("✗ sync `pro` (model ref('pro_users')): no dbt manifest at"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_manifest_of_another_schema_version_is_refused() {
    let mut old = shop_manifest();
    old["metadata"]["dbt_schema_version"] =
        json!("https://schemas.getdbt.com/dbt/manifest/v9.json");
    let project = DbtProject::new(&old);
    let message = project.error("ref('pro_users')");
    assert!(
        message.contains(
            "is a dbt manifest of schema https://schemas.getdbt.com/dbt/manifest/v9.json; ldsync reads \
             https://schemas.getdbt.com/dbt/manifest/v12.json (dbt 1.8 to 1.11)"
        ),
        "{message}"
    );
}

#[test]
fn ref_needs_a_dbt_section_and_is_written_as_dbt_writes_it() {
    let project = DbtProject::new(&shop_manifest());
    let path = project.dir.path().join("connector.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let write = |text: &str| std::fs::write(&path, text).unwrap();
    write(&text.replace("dbt:\n  project_dir: analytics\n", ""));
    let message = Config::load(&path).unwrap_err().to_string();
    assert!(
        message.ends_with(
            "syncs[0].model: sync `pro` names the dbt model ref('pro_users'), but there is no `dbt:` section to \
             resolve it through; add `dbt: {project_dir: <the dbt project's directory>}`"
        ),
        "{message}"
    );
    write(&text.replace("ref('pro_users')", "ref(pro_users)"));
    let message = Config::load(&path).unwrap_err().to_string();
    assert!(
        message.contains(
            "syncs[0].model: model `ref(pro_users)`: name a dbt model as ref('name') or ref('package', 'name') at line"
        ),
        "{message}"
    );
    write(&text.replace("ref('pro_users')", "\"ref('shop', \\\"pro_users\\\")\""));
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.syncs[0].model.to_string(),
        "ref('shop', 'pro_users')"
    );
    write(&text.replace("ref('pro_users')", "pro_users"));
    assert_eq!(
        Config::load(&path).unwrap().syncs[0].model,
        Model::File("pro_users".into())
    );
}

#[test]
fn validate_and_plan_show_the_dbt_model_its_relation_and_the_manifest_time() {
    let project = DbtProject::new(&shop_manifest());
    let out = project.ldsync(&["validate"]);
    ok(&out);
    assert!(
        stdout(&out).contains(&format!(
            "sync `pro`: model ref('pro_users') (model.shop.pro_users, relation \"memory\".\"main\".\"pro_users\", \
             manifest generated at {GENERATED_AT}), key column `context_key`"
        )),
        "{}",
        stdout(&out)
    );
    let out = project.ldsync(&["plan"]);
    ok(&out);
    assert!(
        stdout(&out).contains(&format!(
            "  dbt: model.shop.pro_users, relation \"memory\".\"main\".\"pro_users\", manifest generated at \
             {GENERATED_AT}\n"
        )),
        "{}",
        stdout(&out)
    );
    let report = json(&project.ldsync(&["plan", "--format", "json"]));
    let sync = &report["syncs"][0];
    assert_eq!(sync["model"], "ref('pro_users')");
    assert_eq!(
        sync["dbt"],
        json!({
            "unique_id": "model.shop.pro_users",
            "relation": "\"memory\".\"main\".\"pro_users\"",
            "materialized": "table",
            "generated_at": GENERATED_AT,
            "manifest": project.manifest_path().display().to_string(),
        })
    );
    assert_eq!(
        strings(&sync["adds"]),
        ["u1", "u2", "u3"].map(String::from).into()
    );
}

#[test]
fn a_manifest_older_than_its_model_file_or_than_the_age_allowed_is_a_warning_naming_both_times() {
    let project = DbtProject::new(&shop_manifest());
    std::fs::create_dir_all(project.dir.path().join("analytics/models")).unwrap();
    std::fs::write(
        project.dir.path().join("analytics/models/pro_users.sql"),
        "select 1",
    )
    .unwrap();
    let out = project.ldsync(&["validate"]);
    ok(&out);
    let model_file = project.dir.path().join("analytics/models/pro_users.sql");
    assert!(
        stderr(&out).contains(&format!(
            "the dbt manifest {} was generated at {GENERATED_AT}, before {} was changed at ",
            project.manifest_path().display(),
            model_file.display()
        )),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&model_file).unwrap();
    let path = project.dir.path().join("connector.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "project_dir: analytics\n",
            "project_dir: analytics\n  max_manifest_age: 1d\n",
        ),
    )
    .unwrap();
    let out = project.ldsync(&["validate"]);
    ok(&out);
    assert!(
        stderr(&out).contains(&format!("was generated at {GENERATED_AT}, "))
            && stderr(&out).contains("longer than dbt.max_manifest_age (1day)"),
        "{}",
        stderr(&out)
    );
}

/// The dbt of the virtual environment `.ci/run` makes: `LDSYNC_DBT`, or `~/.cache/ldsync/dbt-venv/bin/dbt`. `None`
/// (skip) when there is none outside CI; under CI=true the dbt tests must run.
fn dbt() -> Option<PathBuf> {
    let found = std::env::var_os("LDSYNC_DBT")
        .map(PathBuf::from)
        .or_else(|| {
            let home = PathBuf::from(std::env::var_os("HOME")?);
            Some(home.join(".cache/ldsync/dbt-venv/bin/dbt")).filter(|p| p.exists())
        });
    match found {
        Some(dbt) => Some(dbt),
        None if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!(
                "CI=true: the dbt tests must run; set LDSYNC_DBT to a dbt with dbt-duckdb and dbt-postgres \
                 (.ci/run makes one)"
            )
        }
        None => {
            eprintln!("no dbt (LDSYNC_DBT, ~/.cache/ldsync/dbt-venv): skipping the dbt tests");
            None
        }
    }
}

/// Where `dbt build` puts the example's audiences, and where ldsync reads them: the DuckDB file of the profile's `dev`
/// target, or a test's own schema in PostgreSQL through its `postgres` target (fixtures/dbt/profiles.yml).
#[derive(Clone, Copy)]
enum Target<'a> {
    DuckDb,
    Postgres(&'a Schema),
}

impl Target<'_> {
    /// The adapter dbt builds with, which the manifest records as `adapter_type`.
    fn adapter(self) -> &'static str {
        match self {
            Target::DuckDb => "duckdb",
            Target::Postgres(_) => "postgres",
        }
    }

    /// The relation dbt records for `model`: `"database"."schema"."model"`.
    fn relation(self, model: &str) -> String {
        match self {
            Target::DuckDb => format!("\"audiences\".\"main\".\"{model}\""),
            Target::Postgres(schema) => {
                let database = pg_options(schema).get_database().unwrap().to_string();
                format!("\"{database}\".\"{}\".\"{model}\"", schema.name)
            }
        }
    }

    /// Sends `dbt` to this target. The profile's `postgres` target reads where to build from `LDSYNC_DBT_PG_*`: the
    /// schema's host, port, user and database (its URL's password is not passed on: the tests' PostgreSQL trusts
    /// local connections).
    fn select(self, dbt: &mut Command) {
        if let Target::Postgres(schema) = self {
            let options = pg_options(schema);
            dbt.args(["--target", "postgres"])
                .env("LDSYNC_DBT_PG_HOST", options.get_host())
                .env("LDSYNC_DBT_PG_PORT", options.get_port().to_string())
                .env("LDSYNC_DBT_PG_USER", options.get_username())
                .env("LDSYNC_DBT_PG_DBNAME", options.get_database().unwrap())
                .env("LDSYNC_DBT_PG_SCHEMA", &schema.name);
        }
    }

    /// connector.dbt.yaml with its warehouse where dbt builds: unchanged for DuckDB, the schema's database for
    /// PostgreSQL.
    fn connector(self, text: &str) -> String {
        match self {
            Target::DuckDb => text.to_string(),
            Target::Postgres(schema) => {
                let start = text.find("warehouse:\n").unwrap();
                let end = text.find("\ndbt:\n").unwrap();
                let warehouse = format!("warehouse:\n  kind: postgres\n  url: {}\n", schema.url);
                format!("{}{warehouse}{}", &text[..start], &text[end..])
            }
        }
    }
}

/// The connection options `schema`'s URL names.
fn pg_options(schema: &Schema) -> sqlx::postgres::PgConnectOptions {
    schema.url.parse().unwrap()
}

/// Runs `dbt ARGS` in the example's dbt project on fixture day `day`, building into `target`, which must succeed.
fn run_dbt(dbt: &Path, project: &Project, target: Target, day: &str, args: &[&str]) {
    let mut command = Command::new(dbt);
    command
        .args(args)
        .args(["--profiles-dir", "."])
        .current_dir(project.path("fixtures/dbt"))
        .env("LDSYNC_EXAMPLE_DAY", day)
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false");
    target.select(&mut command);
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "dbt {args:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
}

/// The example, its connector.yaml replaced by connector.dbt.yaml pointed at the emulator and at `target`'s
/// warehouse.
fn dbt_example(target: Target) -> Setup {
    let setup = Setup::new();
    let text = std::fs::read_to_string(repo().join("connector.dbt.yaml")).unwrap();
    let base_url = format!("base_url: {} ", setup.emulator.base_url());
    setup.project.write(
        "connector.yaml",
        &target.connector(&text.replacen("instance: us ", &base_url, 1)),
    );
    setup
}

/// Builds the example dbt project into `target` with real dbt, checks what `plan` resolves each `ref()` to (the
/// relations the manifest of `target`'s adapter records; the ephemeral model's compiled SQL), syncs, then builds and
/// syncs the next day: each segment holds exactly the keys its model returns from the day's CSVs.
fn build_plan_and_sync_by_ref(dbt: &Path, target: Target) {
    let setup = dbt_example(target);
    let project = &setup.project;
    run_dbt(dbt, project, target, "day1", &["build"]);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(project.path("fixtures/dbt/target/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["metadata"]["adapter_type"], target.adapter());
    // beta-testers (remove) holds every user who opted into the beta.
    let beta_testers = beta_testers("day1");
    setup.seed(
        "beta-testers",
        &beta_testers.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let report = json(&project.ldsync("day1", &["plan", "--format", "json"]));
    let syncs = report["syncs"].as_array().unwrap();
    let dbt_of = |i: usize| {
        (
            syncs[i]["model"].clone(),
            syncs[i]["dbt"]["unique_id"].clone(),
            syncs[i]["dbt"]["relation"].clone(),
        )
    };
    assert_eq!(
        dbt_of(0),
        (
            json!("ref('pro_users')"),
            json!("model.ldsync_example.pro_users"),
            json!(target.relation("pro_users"))
        )
    );
    assert_eq!(
        dbt_of(1),
        (
            json!("ref('ldsync_example', 'enterprise_orgs')"),
            json!("model.ldsync_example.enterprise_orgs"),
            json!(target.relation("enterprise_orgs"))
        )
    );
    assert_eq!(
        dbt_of(2),
        (
            json!("ref('churned_beta_users')"),
            json!("model.ldsync_example.churned_beta_users"),
            Value::Null
        )
    );
    assert_eq!(strings(&syncs[0]["adds"]), expected_pro_users("day1"));

    let out = setup.sync("day1", &[]);
    ok(&out);
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day1")
    );
    assert_eq!(
        setup.members("enterprise-orgs", "organization"),
        expected_enterprise_orgs("day1")
    );
    let stayers = difference(&beta_testers, &expected_churned_beta_users("day1"));
    assert_eq!(setup.members("beta-testers", "user"), stayers);

    // The next day: dbt builds again, and the mirror syncs follow it.
    run_dbt(dbt, project, target, "day2", &["build"]);
    ok(&setup.sync("day2", &[]));
    assert_eq!(
        setup.members("pro-users", "user"),
        expected_pro_users("day2")
    );
    assert_eq!(
        setup.members("enterprise-orgs", "organization"),
        expected_enterprise_orgs("day2")
    );
    let churned2 = expected_churned_beta_users("day2");
    assert_eq!(
        setup.members("beta-testers", "user"),
        difference(&stayers, &churned2)
    );
}

#[test]
fn the_dbt_example_builds_with_real_dbt_and_plans_and_syncs_by_ref() {
    let Some(dbt) = dbt() else { return };
    build_plan_and_sync_by_ref(&dbt, Target::DuckDb);
}

#[test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]
fn the_dbt_example_builds_on_postgres_with_dbt_postgres_and_plans_and_syncs_by_ref() {
    let Some(dbt) = dbt() else { return };
    let schema = Schema::new(&database_url(), "dbt_example", "");
    build_plan_and_sync_by_ref(&dbt, Target::Postgres(&schema));
}

#[test]
fn dbt_exposures_parse_in_the_example_dbt_project() {
    let Some(dbt) = dbt() else { return };
    let setup = dbt_example(Target::DuckDb);
    let project = &setup.project;
    let out = project.ldsync("day1", &["dbt", "exposures"]);
    ok(&out);
    let exposures = stdout(&out);
    let parsed: Value = serde_yaml_ng::from_str(&exposures).unwrap();
    let first = &parsed["exposures"][0];
    assert_eq!(first["name"], "ldsync_pro_users");
    assert_eq!(first["type"], "application");
    assert_eq!(first["depends_on"], json!(["ref('pro_users')"]));
    assert_eq!(
        first["url"],
        format!(
            "{}/projects/default/segments/pro-users/targeting?env=production&selected-env=production",
            setup.emulator.base_url()
        )
    );
    assert_eq!(
        first["meta"]["ldsync"],
        json!({"sync": "pro-users", "segment": "pro-users", "project": "default",
               "environment": "production", "mode": "mirror", "context_kind": "user"})
    );
    assert_eq!(
        first["owner"],
        json!({"name": "Growth engineering", "email": "growth@example.com"})
    );

    project.write("fixtures/dbt/models/ldsync_exposures.yml", &exposures);
    run_dbt(&dbt, project, Target::DuckDb, "day1", &["parse"]);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(project.path("fixtures/dbt/target/manifest.json")).unwrap(),
    )
    .unwrap();
    let depends = |name: &str| {
        manifest["exposures"][format!("exposure.ldsync_example.{name}")]["depends_on"]["nodes"]
            .clone()
    };
    assert_eq!(
        depends("ldsync_pro_users"),
        json!(["model.ldsync_example.pro_users"])
    );
    assert_eq!(
        depends("ldsync_enterprise_orgs"),
        json!(["model.ldsync_example.enterprise_orgs"])
    );
    assert_eq!(
        depends("ldsync_churned_beta"),
        json!(["model.ldsync_example.churned_beta_users"])
    );
}
