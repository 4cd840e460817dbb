//! One connection's engine-side state.

use crate::close::CloseReason;
use crate::out_queue::OutQueue;
use elko_protocol::FrameDecoder;
use mio::net::TcpStream;
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

/// Identifies a connection: its loop, its slot there, and a generation that
/// makes a stale id (of a closed connection whose slot was reused) miss.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) loop_idx: u16,
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// The loop that owns this connection.
    pub fn loop_index(self) -> usize {
        usize::from(self.loop_idx)
    }

    /// The connection's slot in its loop: small, dense, and reused after
    /// the connection closes (compare the whole `ConnId` to tell a reuse
    /// apart). Lets a handler keep per-connection state in a vector
    /// instead of a hash map.
    pub fn slot_index(self) -> usize {
        self.slot as usize
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn{}.{}.{}", self.loop_idx, self.slot, self.gen)
    }
}

/// Where a connection is in the engine-level handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Outbound, TCP connect in progress; Hello is queued.
    Connecting,
    /// Outbound, Hello sent, waiting for Welcome.
    AwaitWelcome,
    /// Accepted, waiting for Hello.
    AwaitHello,
    /// Handshake done: application frames flow.
    Established,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) id: ConnId,
    /// The listener that accepted it (None: outbound).
    pub(crate) listener: Option<u8>,
    pub(crate) phase: Phase,
    pub(crate) decoder: FrameDecoder,
    pub(crate) out: OutQueue,
    pub(crate) peer: SocketAddr,
    pub(crate) opened_at: Instant,
    pub(crate) last_rx: Instant,
    pub(crate) last_ping: Instant,
    pub(crate) over_soft_since: Option<Instant>,
    /// WRITABLE is registered (only after a short write).
    pub(crate) writable_interest: bool,
    /// In this pass's flush list.
    pub(crate) dirty: bool,
    /// In the list of connections to read again next pass.
    pub(crate) read_again: bool,
    /// Marked for closing at the end of the pass.
    /// Boxed: set once, at the end; keeps every live `Conn` 24 bytes smaller.
    pub(crate) closing: Option<Box<CloseReason>>,
    /// Marked for hand-off at the end of the pass.
    pub(crate) moving: bool,
    /// The peer closed its side; dispatch what is buffered, then close.
    pub(crate) eof: bool,
    /// The challenge sent in this (accepted) connection's Welcome.
    pub(crate) challenge: Option<Box<[u8; 16]>>,
}

impl Conn {
    /// Neither closing nor moving: frames may be dispatched and sent.
    pub(crate) fn is_live(&self) -> bool {
        self.closing.is_none() && !self.moving
    }

    /// Bytes queued but neither due this pass nor waiting for the socket:
    /// only a Ping the sweep queued without a flush, to leave with the
    /// next frame sent here.
    pub(crate) fn has_held_ping(&self) -> bool {
        !self.out.is_empty()
            && !self.dirty
            && !self.writable_interest
            && self.phase == Phase::Established
    }
}

/// A connection in transit between loops.
#[derive(Debug)]
pub(crate) struct Transfer {
    pub(crate) stream: TcpStream,
    pub(crate) listener: Option<u8>,
    pub(crate) phase: Phase,
    pub(crate) decoder: FrameDecoder,
    pub(crate) out: OutQueue,
    pub(crate) peer: SocketAddr,
    pub(crate) opened_at: Instant,
    pub(crate) last_rx: Instant,
    pub(crate) eof: bool,
    pub(crate) challenge: Option<Box<[u8; 16]>>,
}
#[cfg(test)]
mod tests {
    /// Every connection costs one slab entry of this size: a field added
    /// here is memory on every idle connection (the goal is under 1 KiB of
    /// user-space memory per idle connection, everything included).
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        // 248 in release; mio's streams carry a selector id with debug
        // assertions on.
        let limit = if cfg!(debug_assertions) { 264 } else { 248 };
        assert!(size <= limit, "Conn grew to {size} bytes");
    }
}
