//! `CheckpointStore`: save a new generation, load the newest one that verifies.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use memmap2::Mmap;

use super::format::{self, checksum, context_id_len, encode_header, MIN_FILE_LEN};
use super::layout::{context_dir_name, generation_file_name, scan, temp_file_name};
use super::publish::{ensure_dir, publish_no_replace, sync_dir, write_synced_temp, Publish};
use super::{CheckpointError, CorruptReason};

/// Verified generations kept per context after a save.
pub const DEFAULT_KEEP: usize = 2;
/// How many times a save retries (after a random pause of up to `attempt + 1` ms) when other
/// writers take its generation number.
const PUBLISH_ATTEMPTS: u32 = 16;
/// How many times a load re-lists a directory whose files vanish under it.
const LOAD_ATTEMPTS: u32 = 8;
/// Temp files older than this are a crashed writer's leftovers.
const STALE_TEMP: Duration = Duration::from_secs(60);

/// A generation number: one more than the newest on disk at the time of the save.
pub type Generation = u64;

/// A loaded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its generation.
    pub generation: Generation,
    /// The payload as saved.
    pub payload: Vec<u8>,
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Generations written.
    pub saved: AtomicU64,
    /// Checkpoints loaded.
    pub loaded: AtomicU64,
    /// Torn or corrupt generations found and skipped by `load`.
    pub corrupt_skipped: AtomicU64,
    /// Old generations deleted by pruning.
    pub pruned: AtomicU64,
    /// Temp files of crashed writers deleted.
    pub stale_temps_removed: AtomicU64,
}

/// Checkpoints of many contexts under one directory, shareable between processes.
#[derive(Debug)]
pub struct CheckpointStore {
    root: PathBuf,
    keep: usize,
    stats: CheckpointStats,
}

impl CheckpointStore {
    /// Open (creating if needed) the store rooted at `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let root = dir.as_ref().to_path_buf();
        ensure_dir(&root)?;
        Ok(CheckpointStore {
            root,
            keep: DEFAULT_KEEP,
            stats: CheckpointStats::default(),
        })
    }

    /// Keep `keep` (at least 1) verified generations per context.
    pub fn with_keep(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Counters.
    pub fn stats(&self) -> &CheckpointStats {
        &self.stats
    }

    /// Where `context_id`'s generations live.
    pub fn context_dir(&self, context_id: &str) -> PathBuf {
        self.root.join(context_dir_name(context_id))
    }

    /// Write `payload` as `context_id`'s next generation: temp file, fsync,
    /// no-replace publish, directory fsync, then prune. Returns the generation.
    pub fn save(&self, context_id: &str, payload: &[u8]) -> Result<Generation, CheckpointError> {
        context_id_len(context_id)?;
        let dir = self.context_dir(context_id);
        ensure_dir(&dir)?;
        for attempt in 0..PUBLISH_ATTEMPTS {
            let listing = scan(&dir).map_err(|source| CheckpointError::ListDir {
                path: dir.clone(),
                source,
            })?;
            let next = match listing.newest() {
                None => 1,
                Some(u64::MAX) => {
                    return Err(CheckpointError::GenerationOverflow {
                        dir,
                        newest: u64::MAX,
                    });
                }
                Some(n) => n + 1,
            };
            let header = encode_header(next, context_id, payload.len() as u64)?;
            let trailer = checksum(&header, payload);
            let temp = write_synced_temp(&dir, &temp_file_name(), &[&header, payload, &trailer])?;
            match publish_no_replace(&temp, &dir.join(generation_file_name(next)))? {
                Publish::Published => {
                    sync_dir(&dir)?;
                    self.stats.saved.fetch_add(1, Relaxed);
                    self.prune(&dir, context_id);
                    return Ok(next);
                }
                Publish::NameTaken => {
                    let _ = std::fs::remove_file(&temp);
                    // Writers saving in lockstep would keep picking the same next number;
                    // a random pause desynchronizes them so one of them gets ahead.
                    let pause_us = rand::random::<u64>() % (1_000 * (u64::from(attempt) + 1));
                    std::thread::sleep(Duration::from_micros(pause_us));
                }
            }
        }
        Err(CheckpointError::GenerationRace {
            dir,
            attempts: PUBLISH_ATTEMPTS,
        })
    }

    /// The newest generation of `context_id` that verifies, or `None` if it
    /// has none. Torn and corrupt generations are skipped, counted and logged.
    pub fn load(&self, context_id: &str) -> Result<Option<Loaded>, CheckpointError> {
        context_id_len(context_id)?;
        let dir = self.context_dir(context_id);
        'relist: for _ in 0..LOAD_ATTEMPTS {
            let listing = scan(&dir).map_err(|source| CheckpointError::ListDir {
                path: dir.clone(),
                source,
            })?;
            for generation in listing.generations {
                let path = dir.join(generation_file_name(generation));
                match read_generation(&path, context_id, generation) {
                    Ok(Ok(payload)) => {
                        self.stats.loaded.fetch_add(1, Relaxed);
                        return Ok(Some(Loaded {
                            generation,
                            payload,
                        }));
                    }
                    Ok(Err(reason)) => {
                        self.stats.corrupt_skipped.fetch_add(1, Relaxed);
                        tracing::warn!(
                            context = context_id,
                            file = %path.display(),
                            %reason,
                            "skipping torn or corrupt checkpoint generation"
                        );
                    }
                    // Pruned by another process between the listing and the open.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue 'relist,
                    Err(source) => return Err(CheckpointError::Read { path, source }),
                }
            }
            return Ok(None);
        }
        Err(CheckpointError::ListingChurn {
            dir,
            attempts: LOAD_ATTEMPTS,
        })
    }

    /// Generations on disk for `context_id`, newest first (verified or not).
    pub fn list_generations(&self, context_id: &str) -> Result<Vec<Generation>, CheckpointError> {
        context_id_len(context_id)?;
        let dir = self.context_dir(context_id);
        scan(&dir)
            .map(|s| s.generations)
            .map_err(|source| CheckpointError::ListDir { path: dir, source })
    }

    /// Delete every checkpoint of `context_id` (none is not an error). Do not race it with a
    /// `save` of the same context: the save may recreate the directory.
    pub fn remove(&self, context_id: &str) -> Result<(), CheckpointError> {
        context_id_len(context_id)?;
        let dir = self.context_dir(context_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CheckpointError::Remove { path: dir, source }),
        }
    }

    /// Keep the newest `keep` verified generations and anything newer than
    /// them; delete the rest and stale temp files. Best effort: a failure
    /// leaves extra files, never too few.
    fn prune(&self, dir: &Path, context_id: &str) {
        let Ok(listing) = scan(dir) else { return };
        let mut verified = 0;
        for generation in listing.generations {
            let path = dir.join(generation_file_name(generation));
            if verified >= self.keep {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        self.stats.pruned.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(file = %path.display(), error = %e, "could not prune old generation");
                    }
                }
                continue;
            }
            if matches!(read_generation(&path, context_id, generation), Ok(Ok(_))) {
                verified += 1;
            }
        }
        for temp in listing.temps {
            let stale = std::fs::metadata(&temp)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TEMP);
            if stale && std::fs::remove_file(&temp).is_ok() {
                self.stats.stale_temps_removed.fetch_add(1, Relaxed);
                tracing::info!(file = %temp.display(), "removed a crashed checkpoint writer's temp file");
            }
        }
    }
}

/// Read and verify one generation file. The outer error is I/O (the file
/// could not be read); the inner one says why its contents were refused.
fn read_generation(
    path: &Path,
    context_id: &str,
    generation: u64,
) -> io::Result<Result<Vec<u8>, CorruptReason>> {
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        // Not something a writer made; refuse to guess rather than fall back past it.
        return Err(io::Error::other("not a regular file"));
    }
    let len = metadata.len();
    if len < MIN_FILE_LEN as u64 {
        // Too short to map usefully (and an empty file cannot be mapped).
        return Ok(Err(CorruptReason::TooShort {
            len,
            needed: MIN_FILE_LEN as u64,
        }));
    }
    // SAFETY: published generation files are written once, through a temp
    // name, made read-only and never modified afterwards (a new generation is
    // a new file). The map is read-only and lives only for this function; the
    // payload is copied out after its checksum verifies, so even a file
    // truncated under us by an outside tool can at worst fail verification or
    // raise SIGBUS for this read, never hand out unverified bytes.
    let map = unsafe { Mmap::map(&file)? };
    Ok(format::verify(&map, context_id, generation).map(<[u8]>::to_vec))
}
