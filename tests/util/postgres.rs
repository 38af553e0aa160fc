//! The real PostgreSQL for the tests that need it: its URL, the example's state kept in it, and a schema of each
//! test's own, so that tests run in parallel, in this process and beside another run of them.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ldsync::config::{SetEngineSettings, WarehouseConfig};
use ldsync::warehouse::Warehouse;
use sqlx::{AssertSqlSafe, Executor};

use super::Project;

/// The database the PostgreSQL tests use. Each of them is marked
/// `#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set DATABASE_URL")]`: build.rs sets `postgres_tests`
/// when `DATABASE_URL` or `CI` (to anything) is set, so without a database `cargo test` reports them as ignored,
/// never as passed, and under CI they run, failing here if no database was given.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "the PostgreSQL tests need DATABASE_URL (for example postgres://postgres@127.0.0.1:5432/test); \
             without it and without CI, cargo test builds them ignored"
        )
    })
}

/// Points the project's state at `schema` in PostgreSQL (`state.kind: postgres`).
pub fn shared_state(project: &Project, schema: &Schema) {
    project.edit_config(
        "state:\n  kind: local\n",
        &format!(
            "state:\n  kind: postgres\n  url: {}\n  schema: {}\n",
            schema.url, schema.name
        ),
    );
}

/// A schema of the test's own, dropped when the test ends.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    /// `test` names the schema within this process (the process ID names it among others): no two tests may share
    /// it, or one would drop the other's tables.
    pub fn new(url: &str, test: &str, setup_sql: &str) -> Schema {
        static TAKEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        assert!(
            TAKEN.lock().unwrap().insert(test.to_string()),
            "two tests use the schema name {test:?}"
        );
        let name = format!("ldsync_{test}_{}", std::process::id());
        let schema = Schema {
            url: url.to_string(),
            name,
        };
        schema.execute(&format!(
            "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}; SET search_path TO {0}; {setup_sql}",
            schema.name
        ));
        schema
    }

    pub fn execute(&self, sql: &str) {
        self.with_pool(async |pool| {
            pool.execute(sqlx::raw_sql(AssertSqlSafe(sql.to_string())))
                .await
                .unwrap();
        });
    }

    /// The rows `sql` returns, each as its columns read as text (cast them in the query).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.with_pool(async |pool| {
            let rows = sqlx::query(AssertSqlSafe(sql.to_string()))
                .fetch_all(pool)
                .await
                .unwrap();
            rows.iter()
                .map(|row| {
                    (0..sqlx::Row::len(row))
                        .map(|i| sqlx::Row::try_get::<Option<String>, _>(row, i).unwrap())
                        .collect()
                })
                .collect()
        })
    }

    /// Runs `work` with a pool of its own, closed after.
    fn with_pool<T>(&self, work: impl AsyncFnOnce(&sqlx::PgPool) -> T) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            let result = work(&pool).await;
            pool.close().await;
            result
        })
    }

    pub fn warehouse(&self) -> Warehouse {
        let config = WarehouseConfig::Postgres {
            url: self.url.clone(),
            statement_timeout: Duration::from_secs(60),
            pool_size: 2,
        };
        Warehouse::open(&config, &SetEngineSettings::default(), Path::new(".")).unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        self.execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}
