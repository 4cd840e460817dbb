//! Per-loop counters, readable from any thread.

use crate::close::CloseKind;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one event loop. Written only by the loop's thread (relaxed
/// atomics cost a plain store there), read by anyone holding the handle.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Connections currently open on this loop.
    pub connections: AtomicU64,
    /// Connections accepted (and adopted) since start.
    pub accepted: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Frames queued for sending.
    pub frames_out: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// `send`/`sendmsg` calls.
    pub writes: AtomicU64,
    /// Nanoseconds spent working (not waiting in `epoll_wait`).
    pub busy_ns: AtomicU64,
    /// Loop passes.
    pub passes: AtomicU64,
    /// Mailbox messages handled.
    pub mail: AtomicU64,
    /// Accepts refused because the process ran out of descriptors.
    pub fd_exhausted: AtomicU64,
    closed: [AtomicU64; CloseKind::COUNT],
}

impl LoopStats {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub(crate) fn count_close(&self, kind: CloseKind) {
        Self::add(&self.closed[kind as usize], 1);
    }

    /// Connections closed for reason `kind` since start.
    pub fn closed(&self, kind: CloseKind) -> u64 {
        self.closed[kind as usize].load(Relaxed)
    }

    /// Read a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> LoopStatsSnapshot {
        LoopStatsSnapshot {
            connections: self.connections.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            writes: self.writes.load(Relaxed),
            busy_ns: self.busy_ns.load(Relaxed),
            passes: self.passes.load(Relaxed),
            mail: self.mail.load(Relaxed),
            fd_exhausted: self.fd_exhausted.load(Relaxed),
            closed: std::array::from_fn(|i| self.closed[i].load(Relaxed)),
        }
    }
}

/// A copy of [`LoopStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStatsSnapshot {
    pub connections: u64,
    pub accepted: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub writes: u64,
    pub busy_ns: u64,
    pub passes: u64,
    pub mail: u64,
    pub fd_exhausted: u64,
    /// Indexed by `CloseKind as usize`.
    pub closed: [u64; CloseKind::COUNT],
}
