//! Per-loop timers with sub-millisecond resolution.
//!
//! `epoll_wait` takes its timeout in whole milliseconds, too coarse for a load
//! generator measuring sub-millisecond latencies. Each loop therefore owns a
//! `timerfd` registered with its `mio::Poll` and armed (relative, nanosecond
//! resolution) for the earliest deadline. Deadlines sit in a binary heap;
//! cancelled timers are dropped lazily when they reach the top.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Identifies a timer; returned by `set_timer`, passed to `on_timer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    /// The engine's own sweep.
    Sweep,
    /// Retry accepting after running out of descriptors.
    AcceptRetry(usize),
    /// Wakes the loop when the shutdown grace period ends.
    ShutdownDeadline,
    /// An application timer with its user data.
    App(u64),
}

#[derive(Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, TimerKind)>>,
    /// Ids in the heap that are still wanted.
    live: HashSet<u64>,
    /// Ids in the heap that were cancelled (skipped when they surface).
    cancelled: HashSet<u64>,
    next_id: u64,
    fd: OwnedFd,
    armed_for: Option<Instant>,
}

impl Timers {
    pub(crate) fn new() -> io::Result<Timers> {
        // SAFETY: timerfd_create takes no pointers; we check the result and
        // take ownership of the new descriptor exactly once.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Timers {
            heap: BinaryHeap::new(),
            live: HashSet::new(),
            cancelled: HashSet::new(),
            next_id: 1,
            fd,
            armed_for: None,
        })
    }

    pub(crate) fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    pub(crate) fn add(&mut self, at: Instant, kind: TimerKind) -> TimerId {
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((at, id, kind)));
        self.live.insert(id);
        TimerId(id)
    }

    pub(crate) fn cancel(&mut self, id: TimerId) {
        if self.live.remove(&id.0) {
            self.cancelled.insert(id.0);
        }
    }

    /// Pop the next timer due at `now`, skipping cancelled ones.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(TimerId, TimerKind)> {
        while let Some(Reverse((at, id, kind))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if !self.cancelled.remove(&id) {
                self.live.remove(&id);
                return Some((TimerId(id), kind));
            }
        }
        None
    }

    /// Drain the timerfd's expiry counter after it fired.
    pub(crate) fn acknowledge(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte stack buffer from our own fd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        self.armed_for = None;
    }

    /// Arm the timerfd for the earliest live deadline, if it changed.
    pub(crate) fn arm(&mut self, now: Instant) -> io::Result<()> {
        while let Some(Reverse((_, id, _))) = self.heap.peek() {
            if self.cancelled.remove(id) {
                self.heap.pop();
            } else {
                break;
            }
        }
        let next = self.heap.peek().map(|Reverse((at, _, _))| *at);
        if next == self.armed_for {
            return Ok(());
        }
        let Some(at) = next else {
            return Ok(()); // a stale arming only causes one spurious wakeup
        };
        // A zero it_value would disarm: wait at least one nanosecond.
        let d = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec on our stack; old value not requested.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_for = Some(at);
        Ok(())
    }

    /// Timers set and neither fired nor cancelled.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}
