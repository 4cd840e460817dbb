//! Disk work off the event loops.
//!
//! Taking a context's lock, reading its checkpoint and writing one (with its
//! fsyncs) can take milliseconds, or far longer on a busy disk. An event loop
//! must never wait for that, so loops hand the work to a small pool of disk
//! threads and get the result back as mail. While a context is loading, the
//! clients that arrive for it are held by its loop (that is the race the
//! director's early redirect creates), and admitted when the result arrives.
//!
//! Jobs for one context always go to the same disk thread (by hash), so its
//! saves, its final save-and-release and its next activation happen in the
//! order they were asked for.

use crate::checkpoint::CheckpointStore;
use crate::host::Mail;
use crate::lock::{ContextLock, LockError};
use crossbeam_channel::{Receiver, Sender};
use elko_engine::{PostError, Poster};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// What the disk threads did, for the operator's metrics.
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Activations that took the lock (with or without a checkpoint).
    pub activations: AtomicU64,
    /// Activations refused because another server holds the context.
    pub activations_held_elsewhere: AtomicU64,
    /// Activations that failed on the lock or the checkpoint read.
    pub activation_errors: AtomicU64,
    /// Checkpoints written (periodic and final).
    pub checkpoints: AtomicU64,
    /// Checkpoints that failed to be written.
    pub checkpoint_errors: AtomicU64,
    /// Payload bytes of the checkpoints written.
    pub checkpoint_bytes: AtomicU64,
    /// Time spent writing checkpoints (with their fsyncs), nanoseconds.
    pub checkpoint_ns: AtomicU64,
}

impl DiskStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Read a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    /// Write one checkpoint, counting it.
    fn save(&self, store: &CheckpointStore, context: &str, payload: &[u8]) -> bool {
        let t = Instant::now();
        let r = store.save(context, payload);
        Self::add(&self.checkpoint_ns, t.elapsed().as_nanos() as u64);
        match r {
            Ok(_) => {
                Self::add(&self.checkpoints, 1);
                Self::add(&self.checkpoint_bytes, payload.len() as u64);
                true
            }
            Err(e) => {
                Self::add(&self.checkpoint_errors, 1);
                tracing::error!(%context, error = %e, "checkpoint failed");
                false
            }
        }
    }
}

/// Work for a disk thread.
#[derive(Debug)]
pub enum IoJob {
    /// Take the lock and read the newest good checkpoint; reply `Mail::Activated` to `home`.
    Activate { context: String, home: usize },
    /// Write a checkpoint (the context stays active).
    Save { context: String, payload: Vec<u8> },
    /// Write the final checkpoint, then release the lock; reply `Mail::Released` to `home`.
    Release {
        context: String,
        payload: Vec<u8>,
        lock: ContextLock,
        home: usize,
    },
}

/// Why an activation failed.
#[derive(Debug)]
pub enum ActivateError {
    /// Another context server holds the context.
    AlreadyActive { holder: Option<String> },
    /// The lock or the checkpoint could not be read.
    Io(String),
}

/// What an activation yields: the lock and the newest good checkpoint, if any.
#[derive(Debug)]
pub struct Activated {
    pub lock: ContextLock,
    pub checkpoint: Option<Vec<u8>>,
    pub generation: Option<u64>,
}

/// The pool of disk threads.
#[derive(Debug)]
pub struct DiskPool {
    senders: Vec<Sender<IoJob>>,
    threads: Vec<JoinHandle<()>>,
}

/// A cloneable handle for submitting jobs.
#[derive(Debug, Clone)]
pub struct DiskHandle {
    senders: Vec<Sender<IoJob>>,
    stats: Arc<DiskStats>,
}

fn shard(context: &str, n: usize) -> usize {
    crc32c::crc32c(context.as_bytes()) as usize % n
}

impl DiskHandle {
    /// Submit a job (unbounded queue: jobs are few and small, and dropping a
    /// checkpoint is never acceptable).
    pub fn submit(&self, job: IoJob) {
        let context = match &job {
            IoJob::Activate { context, .. }
            | IoJob::Save { context, .. }
            | IoJob::Release { context, .. } => context,
        };
        let i = shard(context, self.senders.len());
        if let Err(e) = self.senders[i].send(job) {
            tracing::error!(job = ?e.0, "disk thread is gone; job dropped");
        }
    }

    /// Jobs waiting for a disk thread, per thread.
    pub fn queued(&self) -> Vec<usize> {
        self.senders.iter().map(Sender::len).collect()
    }

    /// What the disk threads did so far.
    pub fn stats(&self) -> &DiskStats {
        &self.stats
    }
}

impl DiskPool {
    /// Start `n` disk threads over `store`, replying through `poster`.
    /// Returns the pool (to stop at exit) and a submit handle for the loops.
    pub fn channels(n: usize) -> (DiskHandle, Vec<Receiver<IoJob>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n.max(1))
            .map(|_| crossbeam_channel::unbounded())
            .unzip();
        let stats = Arc::new(DiskStats::default());
        (DiskHandle { senders, stats }, receivers)
    }

    /// Start the threads on the receivers made by [`DiskPool::channels`].
    pub fn start(
        handle: &DiskHandle,
        receivers: Vec<Receiver<IoJob>>,
        store: Arc<CheckpointStore>,
        dir: PathBuf,
        provider_id: String,
        poster: Poster<Mail>,
    ) -> std::io::Result<DiskPool> {
        let mut threads = Vec::new();
        for (i, rx) in receivers.into_iter().enumerate() {
            let (store, dir, provider_id, poster, stats) = (
                store.clone(),
                dir.clone(),
                provider_id.clone(),
                poster.clone(),
                handle.stats.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("elko-disk{i}"))
                    .spawn(move || run(rx, &store, &dir, &provider_id, &poster, &stats))?,
            );
        }
        Ok(DiskPool {
            senders: handle.senders.clone(),
            threads,
        })
    }

    /// Finish every queued job, then stop the threads.
    pub fn finish(self) {
        drop(self.senders);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn run(
    rx: Receiver<IoJob>,
    store: &CheckpointStore,
    dir: &std::path::Path,
    provider_id: &str,
    poster: &Poster<Mail>,
    stats: &DiskStats,
) {
    // Ends when every sender (the loops' handles and the pool) is dropped
    // and the queue is empty.
    for job in rx {
        match job {
            IoJob::Activate { context, home } => {
                let result = activate(store, dir, provider_id, &context);
                DiskStats::add(
                    match &result {
                        Ok(_) => &stats.activations,
                        Err(ActivateError::AlreadyActive { .. }) => {
                            &stats.activations_held_elsewhere
                        }
                        Err(ActivateError::Io(_)) => &stats.activation_errors,
                    },
                    1,
                );
                post(poster, home, Mail::Activated { context, result });
            }
            IoJob::Save { context, payload } => {
                // On failure the context stays dirty: the next interval retries.
                stats.save(store, &context, &payload);
            }
            IoJob::Release {
                context,
                payload,
                lock,
                home,
            } => {
                // On failure the previous generation remains.
                let ok = stats.save(store, &context, &payload);
                drop(lock);
                post(poster, home, Mail::Released { context, ok });
            }
        }
    }
}

fn activate(
    store: &CheckpointStore,
    dir: &std::path::Path,
    provider_id: &str,
    context: &str,
) -> Result<Activated, ActivateError> {
    let lock = ContextLock::try_acquire(dir, context, provider_id).map_err(|e| match e {
        LockError::Held { holder } => ActivateError::AlreadyActive { holder },
        LockError::Io { .. } => ActivateError::Io(e.to_string()),
    })?;
    match store.load(context) {
        Ok(Some(l)) => Ok(Activated {
            lock,
            generation: Some(l.generation),
            checkpoint: Some(l.payload.to_vec()),
        }),
        Ok(None) => Ok(Activated {
            lock,
            generation: None,
            checkpoint: None,
        }),
        Err(e) => Err(ActivateError::Io(e.to_string())),
    }
}

fn post(poster: &Poster<Mail>, to: usize, mut mail: Mail) {
    // The loops' mailboxes are large; a full one means the loop is far
    // behind. Retry briefly rather than lose a lock or a context.
    for _ in 0..10_000 {
        match poster.post(to, mail) {
            Ok(()) => return,
            Err(PostError::Full(m)) => {
                mail = m;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(PostError::Stopped(_)) => {
                // The loop stopped at shutdown before this job finished: the
                // checkpoint is on disk and dropping the mail drops any lock.
                // Nobody is left to tell (the directors heard ShuttingDown).
                tracing::debug!(loop_idx = to, "loop stopped; disk result not delivered");
                return;
            }
        }
    }
    tracing::error!(
        loop_idx = to,
        "loop mailbox stayed full for 10 s; disk result dropped"
    );
}
