//! The durable part of the write path: temp file, fsync, no-replace publish, directory fsync.
//!
//! Publishing uses `link(2)` followed by unlinking the temp name rather than `rename(2)`: `link`
//! fails with `EEXIST` if the generation name is taken, on every POSIX filesystem including NFS,
//! so two processes can never replace each other's generation. (Linux `renameat2` with
//! `RENAME_NOREPLACE` would do the same, but not on every filesystem.) A crash between the link
//! and the unlink leaves a temp name pointing at a published file; it is removed later like any
//! stale temp file and the published name is unaffected.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::CheckpointError;

/// Outcome of [`publish_no_replace`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Publish {
    Published,
    /// Another writer already published this generation; the temp file is still there.
    NameTaken,
}

/// Writes `parts` to a new temp file `dir/name`, makes it read-only and fsyncs it.
/// On failure the temp file is removed (best effort).
pub(crate) fn write_synced_temp(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
) -> Result<PathBuf, CheckpointError> {
    let path = dir.join(name);
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        for part in parts {
            file.write_all(part)?;
        }
        // A published generation is never written again; read-only says so to other tools and
        // is part of why mapping it read-only is sound (see the store's load path).
        let mut permissions = file.metadata()?.permissions();
        permissions.set_readonly(true);
        file.set_permissions(permissions)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(path),
        Err(source) => {
            let _ = fs::remove_file(&path);
            Err(CheckpointError::WriteTemp { path, source })
        }
    }
}

/// Gives the synced temp file its final name, unless that name already exists.
/// On success the temp name is gone; the caller must still [`sync_dir`].
pub(crate) fn publish_no_replace(temp: &Path, dest: &Path) -> Result<Publish, CheckpointError> {
    match fs::hard_link(temp, dest) {
        Ok(()) => {
            // The data is reachable under `dest` now; a leftover temp name is only clutter.
            if let Err(e) = fs::remove_file(temp) {
                tracing::warn!(
                    temp = %temp.display(),
                    error = %e,
                    "published checkpoint but could not remove its temp name"
                );
            }
            Ok(Publish::Published)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Publish::NameTaken),
        Err(source) => Err(CheckpointError::Publish {
            from: temp.to_owned(),
            to: dest.to_owned(),
            source,
        }),
    }
}

/// fsyncs a directory so that names created or removed in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CheckpointError::SyncDir {
            path: dir.to_owned(),
            source,
        })
}

/// Creates `dir` if missing; when it was created, fsyncs its parent so the new entry is durable.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), CheckpointError> {
    let create_error = |source| CheckpointError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        // The parent is missing too: create the whole chain.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(create_error)?;
        }
        Err(source) => return Err(create_error(source)),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}
