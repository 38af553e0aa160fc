//! Durable files: written whole to a temporary file, fsynced, renamed into place, and the directory fsynced, so a
//! crash leaves the old file or the new one, never a torn one. Used by the local store for manifests, journals
//! and events checkpoints.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::StateError;

/// How many random letters and digits end the name of an atomic write's temporary file (tempfile's default, set
/// here so that the name is known: see [`is_temporary_of`]).
const TEMPORARY_RANDOM_CHARS: usize = 6;

/// Whether `file_name` is the temporary file of an atomic write of `name`: `.<name>.` and six random letters or
/// digits. A process killed before its rename leaves one behind.
pub(crate) fn is_temporary_of(file_name: &str, name: &str) -> bool {
    file_name
        .strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(name))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|random| {
            random.len() == TEMPORARY_RANDOM_CHARS
                && random.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Writes `name` in `dir` through a temporary file that is fsynced and renamed into place.
fn write_atomically(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let target = dir.join(name);
    let io = |action, source| StateError::Io {
        action,
        path: target.clone(),
        source,
    };
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .rand_bytes(TEMPORARY_RANDOM_CHARS)
        .tempfile_in(dir)
        .map_err(|e| io("cannot create a temporary file for", e))?;
    write(temp.as_file_mut())?;
    temp.as_file()
        .sync_all()
        .map_err(|e| io("cannot flush", e))?;
    temp.persist(&target)
        .map_err(|e| io("cannot rename into place", e.error))?;
    Ok(())
}

/// The file's bytes, or `None` when it does not exist.
pub(crate) fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `bytes` as `name` in `dir` atomically and makes the rename durable.
pub(crate) fn write_file_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), StateError> {
    write_file_atomically_with(dir, name, |out| out.write_all(bytes))
}

/// Writes `dir/name` through `write` (buffered), atomically: a temporary file, fsynced, renamed into place, and the
/// directory fsynced.
pub(crate) fn write_file_atomically_with(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), StateError> {
    write_atomically(dir, name, |file| {
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)
            .and_then(|()| out.flush())
            .map_err(|source| StateError::Io {
                action: "cannot write",
                path: dir.join(name),
                source,
            })
    })?;
    sync_directory(dir)
}

/// Cuts a torn last line (one without its newline, left by a crash in the middle of an append) off `file`, opened
/// for reading and writing, durably, so that what is appended next starts on a line of its own; returns how many
/// bytes were cut. Only the file's end is read, however long the file.
pub(crate) fn cut_torn_last_line(file: &mut File) -> std::io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let length = file.metadata()?.len();
    if length == 0 {
        return Ok(0);
    }
    let mut end = length;
    let mut chunk = Vec::new();
    let kept = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(CHUNK);
        chunk.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        if end == length && chunk.last() == Some(&b'\n') {
            return Ok(0);
        }
        if let Some(at) = chunk.iter().rposition(|&b| b == b'\n') {
            break start + at as u64 + 1;
        }
        end = start;
    };
    file.set_len(kept)?;
    file.sync_all()?;
    Ok(length - kept)
}

pub(crate) fn sync_directory(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::Io {
            action: "cannot flush",
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` written to a file, then its torn last line cut: what is left, and how many bytes went.
    fn cut(text: &[u8]) -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines");
        std::fs::write(&path, text).unwrap();
        let mut file = File::options().read(true).append(true).open(&path).unwrap();
        let cut = cut_torn_last_line(&mut file).unwrap();
        (std::fs::read(&path).unwrap(), cut)
    }

    #[test]
    fn an_atomic_writes_temporary_file_is_named_as_is_temporary_of_expects() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        write_file_atomically_with(dir.path(), "manifest.json", |_| {
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                seen.push(entry.unwrap().file_name().into_string().unwrap());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(is_temporary_of(&seen[0], "manifest.json"), "{seen:?}");
        assert!(!is_temporary_of(&seen[0], "journal.jsonl"), "{seen:?}");
        for other in [
            "manifest.json",
            ".manifest.json",
            ".manifest.json.",
            ".manifest.json.bak",
            ".manifest.json.ab-12c",
            ".manifest.json.Ab3xYz.keep",
            "manifest.json.Ab3xYz",
            "..manifest.json.Ab3xYz",
        ] {
            assert!(!is_temporary_of(other, "manifest.json"), "{other}");
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_back_to_the_last_newline() {
        assert_eq!(cut(b"a\nb\n"), (b"a\nb\n".to_vec(), 0));
        assert_eq!(cut(b""), (Vec::new(), 0));
        assert_eq!(cut(b"a\nb\n{\"torn"), (b"a\nb\n".to_vec(), 6));
        assert_eq!(cut(b"{\"torn"), (Vec::new(), 6));
        // A torn line longer than one read from the end.
        let long = [b"a\n".to_vec(), vec![b'x'; 200_000]].concat();
        assert_eq!(cut(&long), (b"a\n".to_vec(), 200_000));
        let no_newline = vec![b'x'; 200_000];
        assert_eq!(cut(&no_newline), (Vec::new(), 200_000));
    }
}
