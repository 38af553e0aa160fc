//! Snapshots as files: the Parquet layout of a checkpoint's keys (one non-null `context_key` column, sorted by
//! byte order, ZSTD), the streaming reader that checks them, and the BLAKE3 hashes a manifest vouches with.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::StateError;

const KEY_COLUMN: &str = "context_key";
const READ_BATCH_ROWS: usize = 64 * 1024;

/// The keys of a snapshot, batch by batch, checked against the manifest's count and hash at the end.
pub struct SnapshotKeys {
    reader: ParquetRecordBatchReader,
    path: PathBuf,
    expected_count: u64,
    /// The hash of the keys a manifest of format 1 gives.
    expected_hash: Option<String>,
    hash: ContentHasher,
    done: bool,
}

impl SnapshotKeys {
    /// The keys of the snapshot at `path`, to be checked at the end against `expected_count` and, for a snapshot
    /// of format 1, `expected_hash`.
    pub(crate) fn open(
        path: &Path,
        expected_count: u64,
        expected_hash: Option<String>,
    ) -> Result<SnapshotKeys, StateError> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(open(path)?)
            .and_then(|b| b.with_batch_size(READ_BATCH_ROWS).build())
            .map_err(|source| StateError::Parquet {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SnapshotKeys {
            reader,
            path: path.to_path_buf(),
            expected_count,
            expected_hash,
            hash: ContentHasher::default(),
            done: false,
        })
    }

    fn damaged(&self, problem: String) -> StateError {
        StateError::DamagedSnapshot {
            path: self.path.clone(),
            problem,
        }
    }

    fn next_batch(&mut self) -> Option<Result<StringArray, StateError>> {
        match self.reader.next() {
            Some(Ok(batch)) => Some(self.keys_of(&batch)),
            Some(Err(source)) => Some(Err(StateError::Parquet {
                path: self.path.clone(),
                source: source.into(),
            })),
            None => self.verify_end().err().map(Err),
        }
    }

    fn keys_of(&mut self, batch: &RecordBatch) -> Result<StringArray, StateError> {
        let column = batch.column(0);
        if batch.num_columns() != 1
            || column.data_type() != &DataType::Utf8
            || column.null_count() > 0
        {
            return Err(self.damaged(format!(
                "expected one non-null text column, found {}",
                batch.schema()
            )));
        }
        let keys = column.as_string::<i32>().clone();
        keys.iter().flatten().for_each(|k| self.hash.add(k));
        Ok(keys)
    }

    fn verify_end(&mut self) -> Result<(), StateError> {
        let count = self.hash.count;
        let hash = std::mem::take(&mut self.hash).finish();
        if count != self.expected_count {
            return Err(self.damaged(format!(
                "it holds {count} keys, its manifest says {}",
                self.expected_count
            )));
        }
        if self
            .expected_hash
            .as_ref()
            .is_some_and(|expected| hash != *expected)
        {
            return Err(self.damaged("its content hash does not match its manifest".into()));
        }
        Ok(())
    }
}

impl Iterator for SnapshotKeys {
    type Item = Result<StringArray, StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_batch();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Hashes keys in order, each preceded by its length, in large chunks.
#[derive(Default)]
pub(crate) struct ContentHasher {
    hasher: blake3::Hasher,
    buffer: Vec<u8>,
    count: u64,
}

impl ContentHasher {
    const CHUNK: usize = 64 * 1024;

    pub(crate) fn add(&mut self, key: &str) {
        self.buffer
            .extend_from_slice(&(key.len() as u64).to_le_bytes());
        self.buffer.extend_from_slice(key.as_bytes());
        self.count += 1;
        if self.buffer.len() >= Self::CHUNK {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
        }
    }

    pub(crate) fn finish(mut self) -> String {
        self.hasher.update(&self.buffer);
        format!("blake3:{}", self.hasher.finalize().to_hex())
    }
}

/// Creates (or truncates) the file at `path` for a snapshot.
fn create(path: &Path) -> Result<File, StateError> {
    File::create(path).map_err(|source| StateError::Io {
        action: "cannot create",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `keys` as a new Parquet file at `path` with ldsync's own writer; returns how many.
pub(crate) fn write_parquet_keys_to<'a>(
    path: &Path,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<u64, StateError> {
    let file = create(path)?;
    let mut count = 0;
    write_parquet_keys(file, keys.into_iter().inspect(|_| count += 1)).map_err(|source| {
        StateError::Parquet {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(count)
}

/// Writes arrays of keys (none null) as a new Parquet file at `path`; returns how many keys.
pub(crate) fn write_parquet_arrays_to(
    path: &Path,
    arrays: impl Iterator<Item = Result<StringArray, StateError>>,
) -> Result<u64, StateError> {
    let file = create(path)?;
    let parquet_error = |source| StateError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let mut writer = KeyWriter::new(file).map_err(parquet_error)?;
    for array in arrays {
        writer.write(array?).map_err(parquet_error)?;
    }
    writer.close().map_err(parquet_error)
}

pub(crate) fn open(path: &Path) -> Result<File, StateError> {
    File::open(path).map_err(|source| StateError::Io {
        action: "cannot open",
        path: path.to_path_buf(),
        source,
    })
}

/// Flushes the file at `path` to disk and returns `blake3:` and the hash of its bytes.
pub(crate) fn flush_and_hash(path: &Path) -> Result<String, StateError> {
    open(path)?.sync_all().map_err(|source| StateError::Io {
        action: "cannot flush",
        path: path.to_path_buf(),
        source,
    })?;
    hash_file(path)
}

/// `blake3:` and the BLAKE3 hash of the file's bytes, computed on two threads: BLAKE3 is a tree, so the file's left
/// and right subtrees are hashed apart, each read at disk speed, and joined into the same hash as one pass would
/// give.
pub(crate) fn hash_file(path: &Path) -> Result<String, StateError> {
    use blake3::hazmat::{HasherExt, Mode, left_subtree_len, merge_subtrees_root};
    let io = |source| StateError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    };
    let len = open(path)?.metadata().map_err(io)?.len();
    if len <= blake3::CHUNK_LEN as u64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(open(path)?).map_err(io)?;
        return Ok(format!("blake3:{}", hasher.finalize().to_hex()));
    }
    let subtree = |offset: u64, length: u64| {
        let mut file = open(path)?;
        file.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(offset);
        hasher.update_reader(file.take(length)).map_err(io)?;
        Ok::<_, StateError>(hasher.finalize_non_root())
    };
    let left_len = left_subtree_len(len);
    let (left, right) = std::thread::scope(|scope| {
        let right = scope.spawn(|| subtree(left_len, len - left_len));
        let left = subtree(0, left_len);
        let right = right
            .join()
            .unwrap_or_else(|_| Err(io(std::io::Error::other("the hashing thread stopped"))));
        (left, right)
    });
    let hash = merge_subtrees_root(&left?, &right?, Mode::Hash);
    Ok(format!("blake3:{}", hash.to_hex()))
}

/// Writes keys as a Parquet file with one non-null `context_key` column.
pub fn write_parquet_keys<'a, W: Write + Send>(
    out: W,
    keys: impl Iterator<Item = &'a str>,
) -> Result<(), parquet::errors::ParquetError> {
    const WRITE_BATCH_ROWS: usize = 64 * 1024;
    let mut writer = KeyWriter::new(out)?;
    let mut keys = keys.peekable();
    while keys.peek().is_some() {
        writer.write(StringArray::from_iter_values(
            keys.by_ref().take(WRITE_BATCH_ROWS),
        ))?;
    }
    writer.close().map(drop)
}

/// Writes arrays of keys as Parquet with one non-null `context_key` column, counting them.
struct KeyWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: Arc<Schema>,
    count: u64,
}

impl<W: Write + Send> KeyWriter<W> {
    fn new(out: W) -> Result<Self, parquet::errors::ParquetError> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            KEY_COLUMN,
            DataType::Utf8,
            false,
        )]));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        Ok(KeyWriter {
            writer: ArrowWriter::try_new(out, schema.clone(), Some(props))?,
            schema,
            count: 0,
        })
    }

    fn write(&mut self, keys: StringArray) -> Result<(), parquet::errors::ParquetError> {
        self.count += keys.len() as u64;
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(keys)])?;
        self.writer.write(&batch)
    }

    fn close(self) -> Result<u64, parquet::errors::ParquetError> {
        self.writer.close()?;
        Ok(self.count)
    }
}

/// The file a snapshot is written to before it is renamed to `file`.
pub(crate) fn partial_snapshot(file: &str) -> String {
    format!(".{file}.partial")
}

/// Whether `file_name` is a snapshot a run was still writing (`.snapshot-<run>.parquet.partial`).
pub(crate) fn is_partial_snapshot(file_name: &str) -> bool {
    file_name
        .strip_suffix(".partial")
        .and_then(|file| file.strip_prefix('.'))
        .is_some_and(|file| file.starts_with("snapshot-") && file.ends_with(".parquet"))
}

/// Removes snapshots that no manifest names any more (left by earlier commits or by a crash before a commit), and
/// snapshots a crash left half written.
pub(crate) fn remove_stale_snapshots(dir: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = (name.starts_with("snapshot-") && name.ends_with(".parquet"))
            || is_partial_snapshot(&name);
        if stale
            && name != current
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "could not remove an old snapshot");
        }
    }
}
