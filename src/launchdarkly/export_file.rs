//! A big segment's export file, as ldsync reads it: LaunchDarkly does not document its format, so ldsync takes a
//! CSV whose first column is the context key, with or without a header row, and stops with a clear error on
//! anything else (JSON, HTML, a file that is not text). Read as a stream, in chunks, so that millions of keys never
//! sit in memory at once.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The names a header row's first column may have; a first line whose first field is one of these is a header.
const HEADER_NAMES: &[&str] = &[
    "key",
    "keys",
    "context_key",
    "contextkey",
    "context key",
    "user_key",
    "userkey",
    "user key",
    "id",
];

/// Why an export file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportFileError {
    #[error(
        "the export file of big segment `{segment}` is not a CSV of keys ({problem}); ldsync reads a CSV whose first \
         column is the context key. Nothing was changed; report this file's format to ldsync's maintainers"
    )]
    NotCsv { segment: String, problem: String },
    #[error("the export file of big segment `{segment}` cannot be read back: {source}")]
    Io {
        segment: String,
        source: std::io::Error,
    },
}

/// An export file downloaded to a temporary file.
pub struct ExportFile {
    segment: String,
    file: File,
}

impl ExportFile {
    /// A new temporary file in `dir` (created if missing; the file is removed when this value drops) to download
    /// the export of `segment` into.
    pub fn create(segment: &str, dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(ExportFile {
            segment: segment.to_string(),
            file: tempfile::tempfile_in(dir)?,
        })
    }

    /// Where the download writes.
    pub fn writer(&mut self) -> &mut File {
        &mut self.file
    }

    /// The file's keys, `chunk` at a time, from its start; a header row is skipped.
    pub fn key_chunks(
        &mut self,
        chunk: usize,
    ) -> Result<impl Iterator<Item = Result<Vec<String>, ExportFileError>> + '_, ExportFileError>
    {
        let segment = self.segment.clone();
        let io = |source| ExportFileError::Io {
            segment: segment.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut head = [0u8; 1];
        let empty = self.file.read(&mut head).map_err(io)? == 0;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let not_csv = |problem: String| ExportFileError::NotCsv {
            segment: segment.clone(),
            problem,
        };
        if !empty && matches!(head[0], b'{' | b'[' | b'<') {
            return Err(not_csv(format!(
                "it starts with `{}`, like JSON, HTML or XML",
                head[0] as char
            )));
        }
        let records = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(BufReader::with_capacity(1 << 20, &self.file))
            .into_records();
        let mut keys = Keys {
            records,
            segment,
            line: 0,
        };
        Ok(std::iter::from_fn(move || keys.next_chunk(chunk))
            .filter(|c| !matches!(c, Ok(keys) if keys.is_empty())))
    }
}

struct Keys<R> {
    records: csv::StringRecordsIntoIter<R>,
    segment: String,
    line: u64,
}

impl<R: Read> Keys<R> {
    /// Up to `chunk` keys; `None` at the end of the file.
    fn next_chunk(&mut self, chunk: usize) -> Option<Result<Vec<String>, ExportFileError>> {
        let mut keys = Vec::with_capacity(chunk.min(1 << 16));
        while keys.len() < chunk {
            let Some(record) = self.records.next() else {
                return (!keys.is_empty()).then_some(Ok(keys));
            };
            self.line += 1;
            let record = match record {
                Ok(record) => record,
                Err(e) => return Some(Err(self.not_csv(format!("{e}")))),
            };
            let key = record.get(0).unwrap_or_default();
            if self.line == 1 && HEADER_NAMES.contains(&key.trim().to_ascii_lowercase().as_str()) {
                continue;
            }
            if key.is_empty() {
                if record.len() == 1 {
                    continue; // A blank line.
                }
                return Some(Err(self.not_csv(format!(
                    "line {} has no key in its first column",
                    self.line
                ))));
            }
            keys.push(key.to_string());
        }
        Some(Ok(keys))
    }

    fn not_csv(&self, problem: String) -> ExportFileError {
        ExportFileError::NotCsv {
            segment: self.segment.clone(),
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn keys_of(content: impl AsRef<[u8]>, chunk: usize) -> Result<Vec<Vec<String>>, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ExportFile::create("pro-users", dir.path()).unwrap();
        file.writer().write_all(content.as_ref()).unwrap();
        let chunks = file.key_chunks(chunk).map_err(|e| e.to_string())?;
        chunks.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    #[test]
    fn keys_come_from_the_first_column_with_or_without_a_header_in_chunks() {
        assert_eq!(
            keys_of("u-1\nu-2\nu-3\n", 2).unwrap(),
            vec![vec!["u-1", "u-2"], vec!["u-3"]]
        );
        assert_eq!(
            keys_of(
                "contextKey,included\nu-1,true\n\"a,b\",true\r\n\nu-2,true",
                10
            )
            .unwrap(),
            vec![vec!["u-1", "a,b", "u-2"]]
        );
        assert_eq!(keys_of("Key\n", 10).unwrap(), Vec::<Vec<String>>::new());
        assert_eq!(keys_of("", 10).unwrap(), Vec::<Vec<String>>::new());
    }

    #[test]
    fn anything_but_a_csv_of_keys_is_a_clear_error() {
        let json = keys_of("[{\"key\":\"u-1\"}]", 10).unwrap_err();
        assert!(
            json.contains("big segment `pro-users` is not a CSV of keys (it starts with `[`"),
            "{json}"
        );
        let no_key = keys_of("u-1\n,true\n", 10).unwrap_err();
        assert!(
            no_key.contains("line 2 has no key in its first column"),
            "{no_key}"
        );
        let binary = keys_of(b"u-1\n\xff\xfe\x00", 10).unwrap_err();
        assert!(binary.contains("is not a CSV of keys"), "{binary}");
    }
}
