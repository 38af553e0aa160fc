//! Durable files: written whole to a temporary file, fsynced, renamed into place, and the directory fsynced, so a
//! crash leaves the old file or the new one, never a torn one. Used by the local store for manifests, journals
//! and events checkpoints.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::StateError;

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

pub(crate) fn sync_directory(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::Io {
            action: "cannot flush",
            path: dir.to_path_buf(),
            source,
        })
}
