//! Bounded mailboxes between loops, each paired with a `mio::Waker`.
//!
//! A sender wakes the receiving loop only when it is not already due to look
//! at its mailbox (`wake_pending`), so a burst of mail costs one `eventfd`
//! write, not one per message.
//!
//! The channel is crossbeam's unbounded (linked blocks of slots, allocated as
//! mail arrives) with the bound checked on send: a bounded array channel
//! allocates and stamps every slot up front, which for 65 536 slots of mail
//! was 10 MiB of resident memory per loop before the first connection.
//! Concurrent senders can overshoot the bound by at most one mail each.

use crate::conn::Transfer;
use crate::stats::LoopStats;
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::Waker;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Why mail was handed back instead of posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostError<M> {
    /// The loop's mailbox is at its capacity (the loop is far behind): a
    /// later attempt may succeed.
    Full(M),
    /// The loop has stopped, or there is no such loop: it will never read
    /// this mail, so retrying is pointless.
    Stopped(M),
}

impl<M> PostError<M> {
    /// The mail that was not posted.
    pub fn into_inner(self) -> M {
        match self {
            PostError::Full(m) | PostError::Stopped(m) => m,
        }
    }

    fn map<N>(self, f: impl FnOnce(M) -> N) -> PostError<N> {
        match self {
            PostError::Full(m) => PostError::Full(f(m)),
            PostError::Stopped(m) => PostError::Stopped(f(m)),
        }
    }
}

impl<M> std::fmt::Display for PostError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PostError::Full(_) => "the loop's mailbox is full",
            PostError::Stopped(_) => "the loop has stopped",
        })
    }
}

impl<M: std::fmt::Debug> std::error::Error for PostError<M> {}

#[derive(Debug)]
pub(crate) enum Mail<M> {
    App(M),
    Adopt(Box<Transfer>, M),
    Accepted(TcpStream, SocketAddr, u8),
    Shutdown(Instant),
}

#[derive(Debug)]
pub(crate) struct Mailbox<M> {
    tx: Sender<Mail<M>>,
    capacity: usize,
    waker: Arc<Waker>,
    wake_pending: AtomicBool,
    /// Set when the receiving loop ends (normally or by a panic): mail is
    /// then refused as `Stopped` even while the dead queue is at capacity.
    stopped: AtomicBool,
}

impl<M> Mailbox<M> {
    pub(crate) fn new(capacity: usize, waker: Arc<Waker>) -> (Mailbox<M>, Receiver<Mail<M>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Mailbox {
                tx,
                capacity: capacity.max(1),
                waker,
                wake_pending: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
            },
            rx,
        )
    }

    pub(crate) fn send(&self, mail: Mail<M>) -> Result<(), PostError<Mail<M>>> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PostError::Stopped(mail));
        }
        if self.tx.len() >= self.capacity {
            return Err(PostError::Full(mail));
        }
        match self.tx.send(mail) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            // The receiver is dropped with its loop.
            Err(crossbeam_channel::SendError(m)) => Err(PostError::Stopped(m)),
        }
    }

    /// Wake the loop (if it is not already due to look at its mailbox).
    pub(crate) fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Called by the receiving loop as it ends: no more mail is accepted.
    pub(crate) fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Called by the receiving loop before draining: later sends wake it again.
    pub(crate) fn clear_wake(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }
}

/// What all loops of one engine share.
#[derive(Debug)]
pub(crate) struct Shared<M> {
    pub(crate) mailboxes: Vec<Mailbox<M>>,
    pub(crate) stats: Vec<Arc<LoopStats>>,
    /// The soft `RLIMIT_NOFILE` when the engine started (see `fd_budget`).
    pub(crate) fd_limit: u64,
}

impl<M> Shared<M> {
    /// Whether this engine's connections (every loop's) have reached the
    /// descriptor budget: a new peer is then refused SERVER_FULL.
    pub(crate) fn at_fd_budget(&self) -> bool {
        let (open, budget) = self.connection_budget();
        open >= budget
    }

    /// Connections open over every loop, and the most the descriptor
    /// budget allows now.
    pub(crate) fn connection_budget(&self) -> (u64, u64) {
        let open = self
            .stats
            .iter()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum();
        let budget = crate::fd_budget::connection_budget(self.fd_limit, crate::held_fds());
        (open, budget as u64)
    }

    /// Application mail to loop `to`; hands it back if the mailbox is full,
    /// the loop has stopped or `to` is out of range.
    pub(crate) fn post(&self, to: usize, mail: M) -> Result<(), PostError<M>> {
        let Some(mb) = self.mailboxes.get(to) else {
            return Err(PostError::Stopped(mail));
        };
        mb.send(Mail::App(mail)).map_err(|e| {
            e.map(|m| match m {
                Mail::App(m) => m,
                _ => unreachable!("send returns the mail it was given"),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(capacity: usize) -> (mio::Poll, Mailbox<u32>, Receiver<Mail<u32>>) {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (mb, rx) = Mailbox::new(capacity, waker);
        (poll, mb, rx)
    }

    fn refused(r: Result<(), PostError<Mail<u32>>>) -> PostError<u32> {
        r.expect_err("refused").map(|m| match m {
            Mail::App(n) => n,
            other => panic!("got back {other:?}"),
        })
    }

    #[test]
    fn a_full_mailbox_says_full_and_a_stopped_loop_s_says_stopped() {
        let (_poll, mb, rx) = mailbox(1);
        mb.send(Mail::App(1)).expect("room for one");
        assert_eq!(refused(mb.send(Mail::App(2))), PostError::Full(2));
        // The loop ends with its queue still full: stopped, not full.
        mb.mark_stopped();
        assert_eq!(refused(mb.send(Mail::App(3))), PostError::Stopped(3));
        drop(rx);

        // A receiver dropped without the mark (any other way a loop's
        // channel goes away) is also told apart from a full one.
        let (_poll, mb, rx) = mailbox(4);
        drop(rx);
        let e = refused(mb.send(Mail::App(5)));
        assert_eq!(e.to_string(), "the loop has stopped");
        assert_eq!(e.into_inner(), 5);
    }
}
