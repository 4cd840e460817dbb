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
            },
            rx,
        )
    }

    pub(crate) fn send(&self, mail: Mail<M>) -> Result<(), Mail<M>> {
        if self.tx.len() >= self.capacity {
            return Err(mail);
        }
        match self.tx.send(mail) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(crossbeam_channel::SendError(m)) => Err(m),
        }
    }

    /// Wake the loop (if it is not already due to look at its mailbox).
    pub(crate) fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
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
}

impl<M> Shared<M> {
    /// Application mail to loop `to`; hands it back if the mailbox is full,
    /// the loop has stopped or `to` is out of range.
    pub(crate) fn post(&self, to: usize, mail: M) -> Result<(), M> {
        let Some(mb) = self.mailboxes.get(to) else {
            return Err(mail);
        };
        mb.send(Mail::App(mail)).map_err(|m| match m {
            Mail::App(m) => m,
            _ => unreachable!("send returns the mail it was given"),
        })
    }
}
