//! `Ctx`: what a handler may do to its loop.

use crate::close::CloseReason;
use crate::config::{EngineConfig, Limits};
use crate::conn::{Conn, ConnId, Phase};
use crate::mailbox::{PostError, Shared};
use crate::stats::LoopStats;
use crate::timer::{TimerId, TimerKind, Timers};
use bytes::{Bytes, BytesMut};
use elko_protocol::codec::{encode_frame, Body, EncodeError};
use elko_protocol::{
    ErrorFrame, FrameDecoder, Hello, Message, MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most listening addresses one engine may have.
pub const MAX_LISTENERS: usize = 8;
/// Token of listener 0; listener `i` has `FIRST_LISTENER_TOKEN + i`.
pub(crate) const FIRST_LISTENER_TOKEN: usize = 2;
/// Tokens below this are the loop's own (waker, timer, listeners).
pub(crate) const FIRST_CONN_TOKEN: usize = FIRST_LISTENER_TOKEN + MAX_LISTENERS;

/// Size of the chunks the frame arena allocates.
const ARENA_CHUNK: usize = 64 * 1024;

/// The handler's view of its loop: connections, timers, mailboxes. Passed to
/// every [`crate::Handler`] callback.
#[derive(Debug)]
pub struct Ctx<M> {
    pub(crate) idx: usize,
    pub(crate) conns: Slab<Conn>,
    next_gen: u32,
    pub(crate) registry: Registry,
    pub(crate) timers: Timers,
    pub(crate) dirty: Vec<usize>,
    pub(crate) closing: Vec<usize>,
    pub(crate) read_again: Vec<usize>,
    pub(crate) handoffs: Vec<(usize, usize, M)>,
    pub(crate) shared: Arc<Shared<M>>,
    pub(crate) cfg: Arc<EngineConfig>,
    pub(crate) stats: Arc<LoopStats>,
    pub(crate) now: Instant,
    /// When the bytes that completed the frame being dispatched reached the
    /// socket (with [`EngineConfig::rx_timestamps`]).
    pub(crate) rx_stamp: Option<Instant>,
    arena: BytesMut,
    pub(crate) shutting_down: bool,
}

impl<M: Send + 'static> Ctx<M> {
    pub(crate) fn new(
        idx: usize,
        registry: Registry,
        timers: Timers,
        shared: Arc<Shared<M>>,
        cfg: Arc<EngineConfig>,
    ) -> Ctx<M> {
        let stats = shared.stats[idx].clone();
        Ctx {
            idx,
            conns: Slab::new(),
            next_gen: 0,
            registry,
            timers,
            dirty: Vec::new(),
            closing: Vec::new(),
            read_again: Vec::new(),
            handoffs: Vec::new(),
            shared,
            cfg,
            stats,
            now: Instant::now(),
            rx_stamp: None,
            arena: BytesMut::new(),
            shutting_down: false,
        }
    }

    /// The time at the start of this pass (cheap; refreshed before timers run).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// In `on_frame`, when the kernel received the bytes that completed this
    /// frame, with [`EngineConfig::rx_timestamps`] on (the stamp of the
    /// read that completed it; several frames in one read share it). `None`
    /// without stamps, or for a frame completed in an earlier pass (left
    /// buffered by the frame budget). Meaningful only in `on_frame`.
    pub fn rx_stamp(&self) -> Option<Instant> {
        self.rx_stamp
    }

    /// This loop's index, `0..loop_count()`.
    pub fn loop_index(&self) -> usize {
        self.idx
    }

    /// Number of loops in the engine.
    pub fn loop_count(&self) -> usize {
        self.shared.mailboxes.len()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    /// The engine configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// This loop's counters.
    pub fn stats(&self) -> &LoopStats {
        &self.stats
    }

    /// Every loop's counters (for load reports).
    pub fn all_stats(&self) -> &[Arc<LoopStats>] {
        &self.shared.stats
    }

    /// Graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Timers set on this loop and not yet fired or cancelled.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// Connections currently on this loop.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Connections open in this process (every loop), and the most its
    /// descriptor budget allows now (see `fd_budget`): past it, newcomers
    /// are refused SERVER_FULL.
    pub fn connection_budget(&self) -> (u64, u64) {
        self.shared.connection_budget()
    }

    pub(crate) fn slot_of(&self, id: ConnId) -> Option<usize> {
        let slot = id.slot as usize;
        match self.conns.get(slot) {
            Some(c) if c.id == id => Some(slot),
            _ => None,
        }
    }

    /// The connection exists on this loop and is not being closed or moved.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.slot_of(id).is_some_and(|s| self.conns[s].is_live())
    }

    /// The peer's address.
    pub fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.slot_of(id).map(|s| self.conns[s].peer)
    }

    /// Which listener (index into the addresses given to
    /// [`crate::Engine::start_multi`]) accepted the connection; `None` for an
    /// outbound one.
    pub fn listener_of(&self, id: ConnId) -> Option<usize> {
        self.slot_of(id)
            .and_then(|s| self.conns[s].listener.map(usize::from))
    }

    /// The 16-byte challenge this engine sent in the connection's Welcome
    /// (`None` for an outbound connection or before the handshake). A
    /// director checks a context server's Register proof against it.
    pub fn challenge(&self, id: ConnId) -> Option<[u8; 16]> {
        self.slot_of(id)
            .and_then(|s| self.conns[s].challenge.as_deref().copied())
    }

    /// Bytes queued to the connection and not yet written.
    pub fn queued_bytes(&self, id: ConnId) -> Option<usize> {
        self.slot_of(id).map(|s| self.conns[s].out.len())
    }

    /// Encode a message into a frame. Frames are cut from a per-loop arena
    /// (one allocation per 64 KiB of frames), so encoding is allocation-free
    /// on average. Send the result to one or many connections; do not keep it
    /// for long (it pins its arena chunk).
    pub fn encode<B: Body + ?Sized>(&mut self, body: &B) -> Result<Bytes, EncodeError> {
        if self.arena.capacity() - self.arena.len() < 1024 {
            self.arena.reserve(ARENA_CHUNK);
        }
        encode_frame(body, &mut self.arena)?;
        Ok(self.arena.split().freeze())
    }

    /// Queue a frame (already encoded, possibly shared) to a connection. It is
    /// written at the end of this pass. Returns false if the connection is
    /// gone or closing. Passing the hard outbound limit closes the connection
    /// as a slow consumer.
    pub fn send(&mut self, id: ConnId, frame: Bytes) -> bool {
        let Some(slot) = self.slot_of(id) else {
            return false;
        };
        self.send_slot(slot, frame)
    }

    pub(crate) fn send_slot(&mut self, slot: usize, frame: Bytes) -> bool {
        if !self.queue_slot(slot, frame) {
            return false;
        }
        let conn = &mut self.conns[slot];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(slot);
        }
        true
    }

    /// Queue `frame` on `slot` without flushing it this pass: it leaves with
    /// the next frame sent there (in the same segment), or when the loop
    /// marks the connection dirty. False if the connection is closing or
    /// the frame would cross the hard limit (then it is closed).
    pub(crate) fn queue_slot(&mut self, slot: usize, frame: Bytes) -> bool {
        let hard = self.cfg.limits.out_hard;
        let conn = &mut self.conns[slot];
        if conn.closing.is_some() {
            return false;
        }
        if conn.out.len() + frame.len() > hard {
            let queued = conn.out.len() + frame.len();
            self.close_slot(slot, CloseReason::SlowConsumer { queued });
            return false;
        }
        conn.out.push(frame);
        LoopStats::add(&self.stats.frames_out, 1);
        true
    }

    /// Encode and queue a message.
    pub fn send_msg<B: Body + ?Sized>(&mut self, id: ConnId, body: &B) -> bool {
        if self.slot_of(id).is_none() {
            return false;
        }
        match self.encode(body) {
            Ok(frame) => self.send(id, frame),
            Err(e) => {
                tracing::error!(conn = ?id, error = %e, "message did not encode; not sent");
                false
            }
        }
    }

    /// Encode and queue any message given as the [`Message`] enum.
    pub fn send_message(&mut self, id: ConnId, msg: &Message) -> bool {
        if self.slot_of(id).is_none() {
            return false;
        }
        if self.arena.capacity() - self.arena.len() < 1024 {
            self.arena.reserve(ARENA_CHUNK);
        }
        match msg.encode(&mut self.arena) {
            Ok(_) => {
                let frame = self.arena.split().freeze();
                self.send(id, frame)
            }
            Err(e) => {
                tracing::error!(conn = ?id, error = %e, "message did not encode; not sent");
                false
            }
        }
    }

    /// Mark a connection for closing at the end of the pass. If the reason
    /// has a wire code, an ErrorFrame carrying it is queued first (and
    /// flushed, best effort, before the socket is closed).
    pub fn close(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(slot) = self.slot_of(id) {
            self.close_slot(slot, reason);
        }
    }

    pub(crate) fn close_slot(&mut self, slot: usize, reason: CloseReason) {
        let conn = &mut self.conns[slot];
        if conn.closing.is_some() {
            return;
        }
        if let Some(code) = reason.wire_code() {
            if conn.phase != Phase::Connecting
                && !matches!(reason, CloseReason::SlowConsumer { .. })
            {
                let frame = ErrorFrame {
                    code,
                    message: reason.to_string(),
                };
                if let Ok(bytes) = self.encode(&frame) {
                    self.conns[slot].out.push(bytes);
                }
            }
        }
        let conn = &mut self.conns[slot];
        tracing::debug!(conn = ?conn.id, peer = %conn.peer, %reason, "closing connection");
        conn.closing = Some(Box::new(reason));
        self.closing.push(slot);
    }

    /// Set a timer firing `after` from now; `data` comes back in `on_timer`.
    pub fn set_timer(&mut self, after: Duration, data: u64) -> TimerId {
        let at = Instant::now() + after;
        self.timers.add(at, TimerKind::App(data))
    }

    /// Set a timer firing at `at`.
    pub fn set_timer_at(&mut self, at: Instant, data: u64) -> TimerId {
        self.timers.add(at, TimerKind::App(data))
    }

    /// Cancel a timer; a no-op if it already fired.
    pub fn cancel_timer(&mut self, id: TimerId) {
        self.timers.cancel(id);
    }

    /// Send mail to loop `to` (possibly this one). Fails, handing the mail
    /// back, if that loop's mailbox is full or the loop has stopped.
    pub fn post(&self, to: usize, mail: M) -> Result<(), PostError<M>> {
        self.shared.post(to, mail)
    }

    /// Move a connection to loop `to` at the end of this pass. No further
    /// frames of it are dispatched here; bytes already read and frames
    /// already queued travel with it, in order. The target loop's handler
    /// gets it in `on_adopt` with `mail`. If the target's mailbox is full the
    /// connection is closed ([`CloseReason::MailboxFull`]).
    pub fn handoff(&mut self, id: ConnId, to: usize, mail: M) -> Result<(), M> {
        let Some(slot) = self.slot_of(id) else {
            return Err(mail);
        };
        if to >= self.loop_count() || !self.conns[slot].is_live() {
            return Err(mail);
        }
        self.conns[slot].moving = true;
        self.handoffs.push((slot, to, mail));
        Ok(())
    }

    /// Open an outbound connection. The engine sends Hello once connected and
    /// calls `on_welcome` when the peer answers.
    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId> {
        self.connect_from(addr, None)
    }

    /// Open an outbound connection from a chosen local address (to spread
    /// many client connections over several 127.0.0.x source addresses).
    pub fn connect_from(
        &mut self,
        addr: SocketAddr,
        local_ip: Option<IpAddr>,
    ) -> io::Result<ConnId> {
        let stream = connect_stream(addr, local_ip)?;
        let hello = Hello {
            magic: MAGIC,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client_name: self.cfg.client_name.clone(),
        };
        let hello = self.encode(&hello).map_err(io::Error::other)?;
        let id = self.insert(
            stream,
            addr,
            Phase::Connecting,
            Interest::READABLE | Interest::WRITABLE,
            None,
        )?;
        let slot = id.slot as usize;
        self.conns[slot].writable_interest = true;
        self.conns[slot].out.push(hello);
        Ok(id)
    }

    /// Register a stream and give it a slot.
    pub(crate) fn insert(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        phase: Phase,
        interest: Interest,
        listener: Option<u8>,
    ) -> io::Result<ConnId> {
        let _ = stream.set_nodelay(true);
        if self.cfg.rx_timestamps {
            crate::rx_stamp::enable(stream.as_fd())?;
        }
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        self.registry
            .register(&mut stream, Token(slot + FIRST_CONN_TOKEN), interest)?;
        self.next_gen = self.next_gen.wrapping_add(1);
        let id = ConnId {
            loop_idx: self.idx as u16,
            slot: slot as u32,
            gen: self.next_gen,
        };
        let max_frame = match phase {
            Phase::Established => self.cfg.limits.max_frame,
            _ => self.cfg.limits.max_frame_preauth,
        };
        let now = self.now;
        entry.insert(Conn {
            stream,
            id,
            listener,
            phase,
            decoder: FrameDecoder::new(max_frame),
            out: Default::default(),
            peer,
            opened_at: now,
            last_rx: now,
            last_ping: now,
            over_soft_since: None,
            writable_interest: interest.is_writable(),
            dirty: false,
            read_again: false,
            closing: None,
            moving: false,
            eof: false,
            challenge: None,
        });
        LoopStats::add(&self.stats.connections, 1);
        Ok(id)
    }

    pub(crate) fn mark_read_again(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if !c.read_again {
            c.read_again = true;
            self.read_again.push(slot);
        }
    }

    pub(crate) fn mark_dirty(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }
}

/// Start a non-blocking TCP connect to `addr`, from `local_ip` if given.
///
/// With a local address the socket is bound with `IP_BIND_ADDRESS_NO_PORT`,
/// so connect() chooses the port (unique per 4-tuple): binding port 0 scans
/// every bound port, which takes milliseconds per socket past a few thousand.
pub fn connect_stream(addr: SocketAddr, local_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(ip) = local_ip else {
        return TcpStream::connect(addr);
    };
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on our own socket with a c_int value.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}
