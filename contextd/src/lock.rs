//! Single activation: an exclusive lock file per context.
//!
//! Two directors may order two context servers to activate the same context
//! at the same moment; each director's view is only as fresh as its reports.
//! The arbiter is therefore the one thing every context server sharing a
//! checkpoint directory also shares: that directory. Activating a context
//! takes `flock(LOCK_EX | LOCK_NB)` on `<dir>/<context hash>/holder.lock`
//! and holds it while the context is active; the loser learns the holder's
//! provider id from the file and answers `ActivateFailed{ALREADY_ACTIVE,
//! holder}`. The kernel drops the lock when its holder dies, even by
//! SIGKILL, so a crashed server's contexts can be activated elsewhere at
//! once, from their last checkpoint.

use crate::checkpoint::context_dir_name;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Holds a context's activation lock until dropped.
#[derive(Debug)]
pub struct ContextLock {
    file: File,
    path: PathBuf,
    /// The lock file's descriptor stays open while the context is active:
    /// counted against the connection budget (see `elko_engine::HeldFd`).
    _counted: elko_engine::HeldFd,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("context is active on {holder:?}")]
    Held { holder: Option<String> },
    #[error("cannot open lock file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ContextLock {
    /// Try to take the lock for `context` under checkpoint directory `dir`,
    /// recording `holder` (this server's provider id) in it.
    pub fn try_acquire(dir: &Path, context: &str, holder: &str) -> Result<ContextLock, LockError> {
        let cdir = dir.join(context_dir_name(context));
        let path = cdir.join("holder.lock");
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&cdir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        // SAFETY: flock on a descriptor we own; no pointers involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut s = String::new();
                let holder = file
                    .read_to_string(&mut s)
                    .ok()
                    .map(|_| s.trim().to_string())
                    .filter(|s| !s.is_empty());
                return Err(LockError::Held { holder });
            }
            return Err(io_err(err));
        }
        // Record who holds it (for the loser's ActivateFailed). Informational:
        // the flock, not the content, is what excludes.
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        file.write_all(holder.as_bytes()).map_err(io_err)?;
        Ok(ContextLock {
            file,
            path,
            _counted: elko_engine::HeldFd::new(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ContextLock {
    fn drop(&mut self) {
        // Clear the holder name, then unlock (closing the file would too).
        let _ = self.file.set_len(0);
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_learns_the_first() {
        let dir = std::env::temp_dir().join(format!("elko-lock-{}", std::process::id()));
        let a = ContextLock::try_acquire(&dir, "room/1", "cd-a").expect("first");
        match ContextLock::try_acquire(&dir, "room/1", "cd-b") {
            Err(LockError::Held { holder }) => assert_eq!(holder.as_deref(), Some("cd-a")),
            other => panic!("expected Held, got {other:?}"),
        }
        // Another context is independent.
        let _c = ContextLock::try_acquire(&dir, "room/2", "cd-b").expect("other context");
        drop(a);
        let _b = ContextLock::try_acquire(&dir, "room/1", "cd-b").expect("after release");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
