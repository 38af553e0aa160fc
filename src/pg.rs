//! PostgreSQL for ldsync's blocking code, shared by the warehouse and the state store.
//!
//! sqlx is async, and ldsync's planner and state store are not; so a connection pool lives on a worker thread with
//! its own tokio runtime, and each call sends it a job and waits for the answer. That also lets them be called
//! from inside the sync engine's runtime, where blocking on another runtime would not be allowed.
//!
//! Rows travel in `COPY`'s text format both ways: [`CopyRows`] turns `COPY … TO STDOUT` into Arrow string arrays
//! of [`BATCH_ROWS`] rows, and [`copy_text`] writes a value for `COPY … FROM STDIN`.

use std::future::Future;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow::array::{ArrayRef, StringBuilder};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Executor, PgPool};

/// Rows per Arrow array read out of `COPY`.
pub const BATCH_ROWS: usize = 65_536;

/// Something for the worker to do with its pool.
type Job = Box<dyn FnOnce(PgPool) -> BoxFuture<'static, ()> + Send>;

/// Why the worker could not connect.
#[derive(Debug)]
pub enum ConnectError {
    /// The URL does not parse (the message never holds the URL, which may carry a password).
    Url(String),
    /// The server did not accept the connection: `target` is `user@host:port/database`.
    Refused { target: String, message: String },
}

/// The worker thread is gone (it panicked, or its runtime could not run the job).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the PostgreSQL connection worker stopped")]
pub struct WorkerStopped;

/// `COPY` data that does not read as ldsync wrote or expects it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CopyTextError(pub String);

/// What a job run by [`PgWorker::feed`] reads.
pub struct Fed<I> {
    items: Receiver<Option<I>>,
    ended: bool,
}

/// The items fed to a job stopped before their end.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the data fed to PostgreSQL stopped before its end")]
pub struct FeedAborted;

impl<I> Fed<I> {
    /// The next item, `None` after the last, or an error if the feeder stopped before its end. It blocks the
    /// worker's thread while it waits, which is fine: the worker runs one job at a time.
    pub fn take(&mut self) -> Result<Option<I>, FeedAborted> {
        if self.ended {
            return Ok(None);
        }
        let item = self.items.recv().map_err(|_| FeedAborted)?;
        self.ended = item.is_none();
        Ok(item)
    }
}

/// Why rows could not be copied out of PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum CopyOutError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Data(#[from] CopyTextError),
}

/// A pool of connections to one PostgreSQL database, served by a worker thread.
pub struct PgWorker {
    jobs: Option<SyncSender<Job>>,
    worker: Option<JoinHandle<()>>,
    target: String,
}

impl PgWorker {
    /// Connects (checking the URL, the credentials and the database at once); every connection of the pool runs
    /// `session_sql` when it opens.
    pub fn connect(
        url: &str,
        pool_size: u32,
        session_sql: Vec<String>,
    ) -> Result<PgWorker, ConnectError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| ConnectError::Url(e.to_string().replace(url, "<the url>")))?;
        // sqlx would log every statement, and warn of each that takes over a second (a model's, most): ldsync
        // says what it runs and how long it took in its own terms.
        let options = with_keepalives(options.disable_statement_logging());
        let target = describe_target(&options);
        let refused = |message: String| ConnectError::Refused {
            target: target.clone(),
            message,
        };
        let (jobs, incoming) = sync_channel::<Job>(1);
        let (ready, connected) = sync_channel(1);
        let worker = std::thread::Builder::new()
            .name("ldsync-postgres".into())
            .spawn(move || serve(options, pool_size, session_sql, incoming, ready))
            .map_err(|e| refused(e.to_string()))?;
        let pg = PgWorker {
            jobs: Some(jobs),
            worker: Some(worker),
            target: target.clone(),
        };
        match connected.recv() {
            Ok(Ok(())) => Ok(pg),
            Ok(Err(message)) => Err(refused(message)),
            Err(_) => Err(refused(WorkerStopped.to_string())),
        }
    }

    /// `user@host:port/database`: where the pool connects, for messages (never the password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `job` on the worker and waits for its answer.
    pub fn call<T, Fut>(
        &self,
        job: impl FnOnce(PgPool) -> Fut + Send + 'static,
    ) -> Result<T, WorkerStopped>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (reply, answer) = sync_channel(1);
        self.send(Box::new(move |pool| {
            Box::pin(async move {
                let _ = reply.send(job(pool).await);
            })
        }))?;
        answer.recv().map_err(|_| WorkerStopped)
    }

    /// Runs `job` on the worker, which sends what it produces through the channel it is given (of two places):
    /// the caller reads them as they come, and when the caller stops reading the job's sends fail.
    pub fn stream<T, Fut>(
        &self,
        job: impl FnOnce(PgPool, SyncSender<T>) -> Fut + Send + 'static,
    ) -> Result<Receiver<T>, WorkerStopped>
    where
        T: Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = sync_channel(2);
        self.send(Box::new(move |pool| Box::pin(job(pool, sender))))?;
        Ok(receiver)
    }

    /// Runs `job` on the worker while this thread hands it `items` one by one, then waits for its answer. The job
    /// reads them with [`Fed::take`]; if `items` yields an error, the job's next read fails with [`FeedAborted`]
    /// (so it can roll back what it wrote), and that error is returned as `Ok(Err(..))`.
    pub fn feed<I, T, E, Fut>(
        &self,
        job: impl FnOnce(PgPool, Fed<I>) -> Fut + Send + 'static,
        items: impl IntoIterator<Item = Result<I, E>>,
    ) -> Result<Result<T, E>, WorkerStopped>
    where
        I: Send + 'static,
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (sender, receiver) = sync_channel(2);
        let answer = self.stream(move |pool, reply| async move {
            let fed = Fed {
                items: receiver,
                ended: false,
            };
            let _ = reply.send(job(pool, fed).await);
        })?;
        let mut failure = None;
        for item in items {
            match item {
                // A send fails when the job has stopped reading (it failed): its answer says why.
                Ok(item) => {
                    if sender.send(Some(item)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            let _ = sender.send(None);
        }
        drop(sender);
        let answer = answer.recv().map_err(|_| WorkerStopped)?;
        Ok(match failure {
            Some(e) => Err(e),
            None => Ok(answer),
        })
    }

    /// Runs `statement` (a `COPY … TO STDOUT`) and reads its rows as they arrive: [`BATCH_ROWS`] at a time, each
    /// column an Arrow array of text. When the reader stops reading, the copy stops; an error is the last item.
    pub fn copy_out<E: From<CopyOutError> + Send + 'static>(
        &self,
        statement: String,
    ) -> Result<Receiver<Result<Vec<ArrayRef>, E>>, WorkerStopped> {
        self.stream(move |pool, reply| async move {
            let copied = match pool.acquire().await {
                Ok(mut conn) => copy_rows(&mut conn, &statement, &reply).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = copied {
                let _ = reply.send(Err(e.into()));
            }
        })
    }

    fn send(&self, job: Job) -> Result<(), WorkerStopped> {
        self.jobs
            .as_ref()
            .ok_or(WorkerStopped)?
            .send(job)
            .map_err(|_| WorkerStopped)
    }
}

impl Drop for PgWorker {
    fn drop(&mut self) {
        // Closing the job channel ends the worker's loop; it closes the pool on its way out.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Sends the rows `statement` copies out on `conn` to `reply`, a batch at a time.
pub async fn copy_rows<E>(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    reply: &SyncSender<Result<Vec<ArrayRef>, E>>,
) -> Result<(), CopyOutError> {
    let mut stream = conn.copy_out_raw(statement).await?;
    let mut rows = CopyRows::default();
    while let Some(chunk) = stream.next().await {
        for batch in rows.push(&chunk?)? {
            // The reader stopped reading (it failed): stop copying.
            if reply.send(Ok(batch)).is_err() {
                return Ok(());
            }
        }
    }
    if let Some(batch) = rows.finish()? {
        let _ = reply.send(Ok(batch));
    }
    Ok(())
}

/// The worker: connects, says whether that worked, then runs jobs until the job channel closes.
fn serve(
    options: PgConnectOptions,
    pool_size: u32,
    session_sql: Vec<String>,
    jobs: Receiver<Job>,
    ready: SyncSender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    runtime.block_on(async move {
        let session_sql = std::sync::Arc::new(session_sql);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .after_connect(move |conn, _| {
                let session_sql = session_sql.clone();
                Box::pin(async move {
                    for statement in session_sql.iter() {
                        conn.execute(AssertSqlSafe(statement.clone())).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await;
        let pool = match pool {
            Ok(pool) => {
                let _ = ready.send(Ok(()));
                pool
            }
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        // Blocking here is fine: between jobs this runtime has nothing else to do.
        while let Ok(job) = jobs.recv() {
            job(pool.clone()).await;
        }
        pool.close().await;
    });
}

/// `user@host:port/database`, for messages: never the password.
/// The server's TCP keepalives on every connection ldsync opens (the state store's, its run locks', the
/// warehouse's): PostgreSQL gives up a connection whose host died after 30 s of silence and 3 unanswered probes 10 s
/// apart, about a minute, instead of the kernel's default of over two hours; the host's sessions end with it, and
/// with them the run locks it held. A setting the URL's own `options` names is left as the URL has it.
pub const KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "30"),
    ("tcp_keepalives_interval", "10"),
    ("tcp_keepalives_count", "3"),
];

fn with_keepalives(options: PgConnectOptions) -> PgConnectOptions {
    let named = options.get_options().unwrap_or("").to_string();
    let missing = KEEPALIVES
        .into_iter()
        .filter(|(setting, _)| !named.contains(setting));
    options.options(missing)
}

fn describe_target(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// Appends `value` to `out` as one field of `COPY … FROM STDIN`'s text format.
pub fn copy_text(out: &mut Vec<u8>, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            other => out.push(other),
        }
    }
}

/// Lines of `COPY … TO STDOUT` text format, decoded into Arrow arrays (one a column).
#[derive(Default)]
pub struct CopyRows {
    /// The start of a line that the last chunk cut.
    partial: Vec<u8>,
    /// One builder a column, made when the first line says how many columns there are.
    builders: Vec<StringBuilder>,
    rows: usize,
}

impl CopyRows {
    /// Takes a chunk of COPY data; returns the batches of arrays that filled up.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<ArrayRef>>, CopyTextError> {
        let mut full = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = if self.partial.is_empty() {
                &rest[..end]
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                &self.partial[..]
            };
            append_row(&mut self.builders, line)?;
            self.partial.clear();
            self.rows += 1;
            if self.rows == BATCH_ROWS {
                full.push(self.take());
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(full)
    }

    /// The last, partly filled array; an error if the data ended in the middle of a line.
    pub fn finish(mut self) -> Result<Option<Vec<ArrayRef>>, CopyTextError> {
        if !self.partial.is_empty() {
            return Err(CopyTextError(
                "the data ended in the middle of a row".into(),
            ));
        }
        Ok((self.rows > 0).then(|| self.take()))
    }

    fn take(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.builders
            .iter_mut()
            .map(|b| std::sync::Arc::new(b.finish()) as ArrayRef)
            .collect()
    }
}

/// Appends one line of COPY text (fields separated by tabs; a tab inside a value is escaped) to `builders`.
fn append_row(builders: &mut Vec<StringBuilder>, line: &[u8]) -> Result<(), CopyTextError> {
    let fields = line.split(|&b| b == b'\t');
    if builders.is_empty() {
        builders.resize_with(fields.clone().count(), StringBuilder::new);
    }
    let mut count = 0;
    for (builder, field) in builders.iter_mut().zip(fields.clone()) {
        builder.append_option(decode_copy_text(field)?.as_deref());
        count += 1;
    }
    if count != builders.len() || fields.count() != builders.len() {
        return Err(CopyTextError(format!(
            "a row has a different number of columns than the first ({})",
            builders.len()
        )));
    }
    Ok(())
}

/// One value of COPY's text format: `\N` is NULL; backslash escapes stand for control characters, octal and hex
/// bytes and the backslash itself.
fn decode_copy_text(line: &[u8]) -> Result<Option<String>, CopyTextError> {
    if line == b"\\N" {
        return Ok(None);
    }
    if !line.contains(&b'\\') {
        return String::from_utf8(line.to_vec()).map(Some).map_err(not_utf8);
    }
    let mut bytes = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        i += 1;
        if b != b'\\' || i == line.len() {
            bytes.push(b);
            continue;
        }
        let escape = line[i];
        i += 1;
        match escape {
            b'b' => bytes.push(0x08),
            b'f' => bytes.push(0x0c),
            b'n' => bytes.push(b'\n'),
            b'r' => bytes.push(b'\r'),
            b't' => bytes.push(b'\t'),
            b'v' => bytes.push(0x0b),
            b'0'..=b'7' => {
                let digits = line[i - 1..]
                    .iter()
                    .take(3)
                    .take_while(|d| (b'0'..=b'7').contains(*d));
                let count = digits.clone().count();
                bytes.push(digits.fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += count - 1;
            }
            b'x' => {
                let digits: Vec<u8> = line[i..]
                    .iter()
                    .take(2)
                    .take_while(|d| d.is_ascii_hexdigit())
                    .copied()
                    .collect();
                let text = std::str::from_utf8(&digits).unwrap_or_default();
                bytes.push(u8::from_str_radix(text, 16).unwrap_or(b'x'));
                i += digits.len();
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).map(Some).map_err(not_utf8)
}

fn not_utf8(e: std::string::FromUtf8Error) -> CopyTextError {
    CopyTextError(format!("a value is not valid UTF-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_values_decode_escapes_and_nulls() {
        assert_eq!(decode_copy_text(b"\\N").unwrap(), None);
        assert_eq!(decode_copy_text(b"plain").unwrap().unwrap(), "plain");
        assert_eq!(
            decode_copy_text(b"a\\tb\\\\c\\nd\\101\\x42")
                .unwrap()
                .unwrap(),
            "a\tb\\c\ndAB"
        );
        assert_eq!(decode_copy_text(b"").unwrap().unwrap(), "");
    }

    #[test]
    fn rows_cut_across_chunks_come_out_whole_in_full_batches() {
        let mut rows = CopyRows::default();
        let mut batches = rows.push(b"k1\nk").unwrap();
        batches.extend(rows.push(b"2\n\\N\nk4").unwrap());
        assert!(batches.is_empty());
        batches.extend(rows.push(b"\n").unwrap());
        let last = rows.finish().unwrap().unwrap();
        let values: Vec<Option<&str>> = arrow::array::AsArray::as_string::<i32>(&*last[0])
            .iter()
            .collect();
        assert_eq!(values, [Some("k1"), Some("k2"), None, Some("k4")]);
        let mut wide = CopyRows::default();
        wide.push(b"a\t1\tx\\ty\n\\N\t2\t\n").unwrap();
        let columns = wide.finish().unwrap().unwrap();
        let column = |i: usize| -> Vec<Option<String>> {
            arrow::array::AsArray::as_string::<i32>(&*columns[i])
                .iter()
                .map(|v| v.map(str::to_string))
                .collect()
        };
        assert_eq!(column(0), [Some("a".into()), None]);
        assert_eq!(column(1), [Some("1".into()), Some("2".into())]);
        assert_eq!(column(2), [Some("x\ty".into()), Some(String::new())]);
        let mut ragged = CopyRows::default();
        assert!(ragged.push(b"a\tb\nc\n").is_err());
        let mut torn = CopyRows::default();
        torn.push(b"k1\nk2").unwrap();
        assert!(torn.finish().is_err());
    }

    #[test]
    fn values_written_for_copy_from_read_back_as_they_were() {
        let values = [
            "plain",
            "tab\there",
            "line\nbreak",
            "back\\slash\\N",
            "\r",
            "",
        ];
        let mut data = Vec::new();
        for value in values {
            copy_text(&mut data, value);
            data.push(b'\n');
        }
        let mut rows = CopyRows::default();
        assert!(rows.push(&data).unwrap().is_empty());
        let columns = rows.finish().unwrap().unwrap();
        let read: Vec<Option<&str>> = arrow::array::AsArray::as_string::<i32>(&*columns[0])
            .iter()
            .collect();
        assert_eq!(read, values.map(Some));
    }
}
