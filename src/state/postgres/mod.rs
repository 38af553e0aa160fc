//! The state store in PostgreSQL (`state.kind: postgres`): what the local store keeps in files, in tables that every
//! host running the syncs shares, created by the migrations in `sql/migrations/` in the schema `state.schema`
//! names. This file connects, migrates and holds the helpers every concern's file runs its statements through:
//! [`checkpoint`] (snapshot tables and the commit), [`journal`] (a run's batches and acknowledgements),
//! [`history`] (run records), [`events`] (events checkpoints), [`lock`] (advisory run locks) and [`session`] (a
//! connection of ldsync's own for a whole job).

mod checkpoint;
mod events;
mod history;
mod journal;
mod lock;
mod session;

pub(crate) use journal::JournalAt;
pub(crate) use session::Session;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::AsArray;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};

use super::snapshot::write_parquet_arrays_to;
use super::{LocalStore, StateError};
use crate::config::PostgresState;
use crate::pg::{ConnectError, Fed, PgWorker};

/// How long [`PgStore::check`] waits for an answer.
const CHECK_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// ldsync's migrations, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("sql/migrations");

/// A state store in PostgreSQL. Cloning it shares its connections.
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

struct Shared {
    worker: PgWorker,
    schema: String,
    /// The Parquet copies of snapshots that the set engine reads, one directory per sync.
    copies: LocalStore,
    /// The runs of this process that hold a sync's run lock, by sync: the run each write is fenced by.
    holding: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.location())
    }
}

impl PgStore {
    /// Connects, creates the schema if needed and applies the migrations this build has that the database lacks.
    pub fn open(state: &PostgresState, copies: PathBuf) -> Result<PgStore, StateError> {
        let worker = PgWorker::connect(&state.url, 2, Vec::new()).map_err(|e| match e {
            ConnectError::Url(message) => StateError::PostgresUrl(message),
            ConnectError::Refused { target, message } => {
                StateError::PostgresConnect { target, message }
            }
        })?;
        let store = PgStore {
            shared: Arc::new(Shared {
                worker,
                schema: state.schema.clone(),
                copies: LocalStore::new(copies),
                holding: Default::default(),
            }),
        };
        let schema = store.shared.schema.clone();
        store.call("apply its migrations", move |pool| async move {
            migrate(&pool, &schema).await
        })?;
        Ok(store)
    }

    /// Whether the store answers a query within a few seconds.
    pub fn check(&self) -> Result<(), StateError> {
        self.call("answer a query", |pool| async move {
            let answered =
                tokio::time::timeout(CHECK_WITHIN, sqlx::query("SELECT 1").execute(&pool));
            match answered.await {
                Ok(answer) => answer.map(drop).map_err(StoreCallError::from),
                Err(_) => Err(StoreCallError::NoAnswer(CHECK_WITHIN)),
            }
        })
    }

    /// `user@host:port/database, schema <schema>`: where the state is, for messages.
    pub fn location(&self) -> String {
        format!(
            "{}, schema {}",
            self.shared.worker.target(),
            self.shared.schema
        )
    }

    /// Where the sync's snapshot copies are kept on this host.
    pub fn host_dir(&self, sync: &str) -> PathBuf {
        self.shared.copies.sync_dir(sync)
    }

    /// The schema-qualified name of one of the store's tables.
    pub fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.shared.schema)
    }

    /// `user@host:port/database`: the database the store is in.
    pub fn target(&self) -> &str {
        self.shared.worker.target()
    }

    /// A connection of its own, for work that lives in one session (temporary tables); closed when dropped.
    pub(crate) fn session(&self) -> Result<Session, StateError> {
        let conn = self.call("open a session", move |pool| async move {
            own_connection(&pool).await
        })?;
        Ok(Session {
            store: self.clone(),
            conn: std::sync::Mutex::new(Some(conn)),
        })
    }

    /// Downloads snapshot `snapshot_id` of run `run_id` into its local Parquet copy.
    pub(super) fn download(
        &self,
        sync: &str,
        run_id: &str,
        snapshot_id: i64,
    ) -> Result<(), StateError> {
        let copy = format!("COPY {} (key) TO STDOUT", self.snapshot_table(snapshot_id));
        let batches = self
            .shared
            .worker
            .copy_out::<StoreCallError>(copy)
            .map_err(|e| self.failed("download the snapshot", e))?;
        self.shared.copies.prepare(sync, run_id, |path| {
            let arrays = batches.into_iter().map(|batch| {
                batch
                    .map(|columns| columns[0].as_string::<i32>().clone())
                    .map_err(|e| self.failed("download the snapshot", e))
            });
            write_parquet_arrays_to(path, arrays)
        })?;
        Ok(())
    }

    /// The rows `select` gives for `sync` (`$1`; `$2` is what `extra` holds).
    fn fetch<T>(
        &self,
        doing: &'static str,
        select: String,
        sync: &str,
        extra: Extra,
    ) -> Result<Vec<T>, StateError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static,
    {
        let sync_name = sync.to_string();
        self.call(doing, move |pool| async move {
            let query = sqlx::query_as(AssertSqlSafe(select)).bind(sync_name);
            let query = match extra {
                Extra::Nothing => query,
                Extra::Index(index) => query.bind(index),
                Extra::Text(text) => query.bind(text),
            };
            query.fetch_all(&pool).await
        })
    }

    /// The first row `select` gives for `sync`, if any (see [`PgStore::fetch`]).
    fn fetch_one<T>(
        &self,
        doing: &'static str,
        select: String,
        sync: &str,
        extra: Extra,
    ) -> Result<Option<T>, StateError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static,
    {
        Ok(self.fetch(doing, select, sync, extra)?.into_iter().next())
    }

    /// Runs `job` on the store's connections while this thread hands it `items` (see [`PgWorker::feed`]); an error
    /// from `items` is returned as it is.
    fn feed<I, E, Fut>(
        &self,
        doing: &'static str,
        job: impl FnOnce(PgPool, Fed<I>) -> Fut + Send + 'static,
        items: impl IntoIterator<Item = Result<I, E>>,
    ) -> Result<(), E>
    where
        I: Send + 'static,
        E: From<StateError>,
        Fut: std::future::Future<Output = Result<(), StoreCallError>> + Send + 'static,
    {
        match self.shared.worker.feed(job, items) {
            Ok(Ok(written)) => written.map_err(|e| self.call_failed(doing, e).into()),
            Ok(Err(feeder)) => Err(feeder),
            Err(stopped) => Err(self.failed(doing, stopped).into()),
        }
    }

    /// Runs `job` on the store's connections and waits for it.
    fn call<T, E, Fut>(
        &self,
        doing: &'static str,
        job: impl FnOnce(PgPool) -> Fut + Send + 'static,
    ) -> Result<T, StateError>
    where
        T: Send + 'static,
        E: Into<StoreCallError> + Send + 'static,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
    {
        match self.shared.worker.call(job) {
            Ok(result) => result.map_err(|e| self.call_failed(doing, e.into())),
            Err(stopped) => Err(self.failed(doing, stopped)),
        }
    }

    /// A job on the store's connections failed while doing what `doing` says: a run fenced out of its sync's
    /// state says so in its own words.
    fn call_failed(&self, doing: &'static str, e: StoreCallError) -> StateError {
        match e {
            StoreCallError::LostLock { sync, run } => StateError::LostLock {
                sync,
                run,
                location: self.location(),
            },
            StoreCallError::NotLocked { sync } => StateError::NotLocked {
                sync,
                location: self.location(),
            },
            e => self.failed(doing, e),
        }
    }

    /// The store could not do what `doing` says, because of `e`.
    fn failed(&self, doing: &'static str, e: impl std::fmt::Display) -> StateError {
        StateError::Postgres {
            location: self.location(),
            doing,
            message: e.to_string(),
        }
    }
}

/// The second parameter of a statement on a sync's rows.
enum Extra {
    Nothing,
    Index(i32),
    Text(String),
}

impl Extra {
    /// Binds what it holds, if anything, as the statement's next parameter.
    fn bind(
        self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            Extra::Nothing => query,
            Extra::Index(index) => query.bind(index),
            Extra::Text(text) => query.bind(text),
        }
    }
}

/// What went wrong in a job on the store's connections.
#[derive(Debug, thiserror::Error)]
pub(in crate::state) enum StoreCallError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    CopyOut(#[from] crate::pg::CopyOutError),
    #[error("the data to write stopped before its end")]
    Aborted(#[from] crate::pg::FeedAborted),
    #[error(
        "run {run}'s snapshot is the committed checkpoint already, and a committed snapshot never changes"
    )]
    Committed { run: String },
    #[error("{copied} keys were copied, the snapshot holds {key_count}")]
    Count { copied: u64, key_count: u64 },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    NoAnswer(std::time::Duration),
    #[error("run {run} no longer holds sync `{sync}`'s run lock")]
    LostLock { sync: String, run: String },
    #[error("this process does not hold sync `{sync}`'s run lock")]
    NotLocked { sync: String },
    #[error("the journal of sync `{sync}` is no longer run {run}'s: another run has settled it")]
    NotTheRunsJournal { sync: String, run: String },
}

/// A connection outside the pool, with the pool's settings: for a lock or a session that must outlive one job.
async fn own_connection(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let options: PgConnectOptions = (*pool.connect_options()).clone();
    PgConnection::connect_with(&options).await
}

/// Creates the store's schema if needed and applies the migrations, on a connection of their own whose
/// `search_path` is the schema.
async fn migrate(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    // Two hosts starting at once: the lock keeps them from racing to create the schema.
    conn.execute("SELECT pg_advisory_lock(hashtext('ldsync schema'))")
        .await?;
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    let result = async {
        // `IF NOT EXISTS` notices on every start are noise.
        conn.execute("SET client_min_messages TO warning").await?;
        conn.execute(AssertSqlSafe(create)).await?;
        conn.execute(AssertSqlSafe(format!("SET search_path TO \"{schema}\"")))
            .await?;
        MIGRATOR
            .run_direct(None, &mut conn, false)
            .await
            .map_err(sqlx::Error::from)
    }
    .await;
    let _ = conn.close().await;
    result
}
