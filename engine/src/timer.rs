//! Per-loop timers with sub-millisecond resolution.
//!
//! `epoll_wait` takes its timeout in whole milliseconds, too coarse for a load
//! generator measuring sub-millisecond latencies. Each loop therefore owns a
//! `timerfd` registered with its `mio::Poll` and armed (relative, nanosecond
//! resolution) for the earliest deadline. Deadlines sit in a binary heap;
//! cancelled timers are dropped lazily when they reach the top.

use crate::timerfd::TimerFd;
use mio::{Registry, Token};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::io;
use std::time::Instant;

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
    fd: TimerFd,
}

impl Timers {
    pub(crate) fn new() -> io::Result<Timers> {
        Ok(Timers {
            heap: BinaryHeap::new(),
            live: HashSet::new(),
            cancelled: HashSet::new(),
            next_id: 1,
            fd: TimerFd::new()?,
        })
    }

    pub(crate) fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        self.fd.register(registry, token)
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
        self.fd.acknowledge();
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
        match self.heap.peek() {
            Some(Reverse((at, _, _))) => self.fd.arm(*at, now),
            None => Ok(()), // a stale arming only causes one spurious wakeup
        }
    }

    /// Timers set and neither fired nor cancelled.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}
