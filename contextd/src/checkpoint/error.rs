//! Why a checkpoint operation failed.
//!
//! A corrupt *file* is not an error here: `load` skips it and falls back to an older generation
//! (see [`CorruptReason`](super::CorruptReason)). These variants are the failures the caller has to
//! act on: a bad argument, or a filesystem that refused an operation.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// What to do about `e`: `usual` (a permissions or disk problem), unless the
/// process ran out of descriptors, which no permission fixes.
fn hint(e: &io::Error, usual: &'static str) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            "this process is out of file descriptors; raise its RLIMIT_NOFILE \
             (or serve fewer connections per process)"
        }
        Some(libc::ENFILE) => "the system is out of file descriptors (fs.file-max)",
        _ => usual,
    }
}

/// A failed checkpoint operation. Each variant names the path or value involved.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The context id is empty.
    #[error("context id is empty; give the context a non-empty id")]
    EmptyContextId,

    /// The context id is longer than the format allows.
    #[error("context id is {len} bytes, the limit is {max}; use a shorter context id")]
    ContextIdTooLong { len: usize, max: usize },

    /// A checkpoint directory could not be created.
    #[error(
        "cannot create checkpoint directory {path}: {source}; {}",
        hint(.source, "check that its parent exists and is writable")
    )]
    CreateDir { path: PathBuf, source: io::Error },

    /// A checkpoint directory could not be listed.
    #[error(
        "cannot list checkpoint directory {path}: {source}; {}",
        hint(.source, "check its permissions")
    )]
    ListDir { path: PathBuf, source: io::Error },

    /// Writing the temp file for a new generation failed.
    #[error(
        "cannot write checkpoint temp file {path}: {source}; {}",
        hint(.source, "check free space and permissions in the checkpoint directory")
    )]
    WriteTemp { path: PathBuf, source: io::Error },

    /// Publishing the temp file under its generation name failed for a reason other than the
    /// name being taken.
    #[error(
        "cannot publish checkpoint {from} as {to}: {source}; the filesystem must support \
         hard links (link(2)); check permissions and free space"
    )]
    Publish {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },

    /// fsync of a checkpoint directory failed; the new generation may not survive a power loss.
    #[error(
        "cannot fsync checkpoint directory {path}: {source}; the checkpoint may not be durable, \
         check the disk and save again"
    )]
    SyncDir { path: PathBuf, source: io::Error },

    /// A generation file exists but could not be opened or mapped (not a corruption: an I/O or
    /// permission problem, so the store refuses to silently fall back to an older generation).
    #[error(
        "cannot read checkpoint {path}: {source}; {}",
        hint(.source, "fix the file's permissions or the disk, then load again")
    )]
    Read { path: PathBuf, source: io::Error },

    /// Removing a context's checkpoints failed.
    #[error(
        "cannot remove checkpoints in {path}: {source}; {}",
        hint(.source, "check its permissions")
    )]
    Remove { path: PathBuf, source: io::Error },

    /// Other writers kept taking the generation numbers this save picked.
    #[error(
        "gave up publishing a checkpoint in {dir} after {attempts} attempts: other processes \
         kept taking the next generation; make sure only one process has the context active"
    )]
    GenerationRace { dir: PathBuf, attempts: u32 },

    /// The newest generation on disk is `u64::MAX`, so there is no next one.
    #[error(
        "checkpoint directory {dir} already holds generation {newest}, there is no next one; \
         remove the context's checkpoints"
    )]
    GenerationOverflow { dir: PathBuf, newest: u64 },

    /// Generations kept disappearing while `load` was reading them (another process pruning).
    #[error(
        "checkpoints in {dir} kept being pruned while loading ({attempts} attempts); \
         make sure only one process has the context active, then load again"
    )]
    ListingChurn { dir: PathBuf, attempts: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_not_called_a_permissions_problem() {
        let e = |source| CheckpointError::ListDir {
            path: "/ck/x".into(),
            source,
        };
        let emfile = e(io::Error::from_raw_os_error(libc::EMFILE)).to_string();
        assert!(
            emfile.contains("out of file descriptors; raise its RLIMIT_NOFILE"),
            "{emfile}"
        );
        assert!(!emfile.contains("permissions"), "{emfile}");
        let denied = e(io::Error::from_raw_os_error(libc::EACCES)).to_string();
        assert!(denied.ends_with("; check its permissions"), "{denied}");
    }
}
