//! Crash-safe checkpoints of context state.
//!
//! A context's long-term state is an opaque byte payload. [`CheckpointStore::save`] writes it as a
//! new *generation*; [`CheckpointStore::load`] returns the newest generation that verifies. Several
//! context-server processes may share one checkpoint directory, and any of them may later activate
//! the context, so the store keeps no state of its own that the disk does not also hold.
//!
//! # Why the write path is shaped this way
//!
//! Each step defends against a specific crash or race (the same sequence as Redis `rdb.c`:
//! write, fsync, rename, fsync the directory):
//!
//! 1. **Write a temp file, never the final name.** A crash in the middle of a write leaves only a
//!    `.tmp-<pid>-<random>` file, which `load` never reads. Writing `<gen>.ckpt` directly would
//!    leave a torn file under a name that looks published.
//! 2. **fsync the file before publishing it.** Without it the filesystem may make the new name
//!    durable before the data: after a power loss the name exists but the contents are zeros or
//!    short (the classic ext4 delayed-allocation zero-length file).
//! 3. **Publish with a no-replace link.** `link(tmp, <gen>.ckpt)` fails if the name exists, so two
//!    processes that pick the same next generation can never clobber each other; the loser re-reads
//!    the directory and retries with a higher generation (bounded). A plain `rename` would silently
//!    replace the other writer's checkpoint.
//! 4. **fsync the directory.** The new name is a directory entry; until the directory is synced a
//!    power loss can make the checkpoint vanish after `save` already reported success.
//! 5. **Prune only after publishing, and only behind K verified generations.** A crash during
//!    pruning leaves extra old files, never too few. Keeping K >= 2 means that if the newest file
//!    later rots, the one before it still loads.
//!
//! And on the read side: a published file is never modified again, every length in it is checked
//! against the real file size before slicing, and a CRC32C over the header *and* the payload
//! rejects anything torn or flipped by the disk. A generation that fails is counted, logged with
//! its reason and skipped; the next older one is tried.
//!
//! # Layout on disk
//!
//! ```text
//! <dir>/<first 32 hex chars of SHA-256(context id)>/<generation, 20 digits>.ckpt
//! ```
//!
//! Context ids are arbitrary UTF-8 of up to 255 bytes, so they cannot be file names themselves
//! (`/`, `..`, and 510 hex characters would exceed the 255-byte name limit). The directory name is
//! a hash; the full id is stored in every file and compared on load, so a hash collision can never
//! load another context's state. The byte layout of a file is in [`format`].

pub mod format;

mod error;
mod layout;

pub(crate) use layout::context_dir_name;
mod publish;
mod store;

pub use error::CheckpointError;
pub use format::CorruptReason;
pub use store::{CheckpointStats, CheckpointStore, Generation, Loaded, DEFAULT_KEEP};

#[cfg(test)]
mod tests;
