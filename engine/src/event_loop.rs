//! One event loop: a thread owning a `mio::Poll`, its connections and timers.
//!
//! Each pass runs in a fixed order (Redis `beforeSleep`, NATS `flushClients`):
//!
//! 1. `poll` (no timeout unless work is left over; the timerfd wakes us for
//!    deadlines);
//! 2. read every readable connection until `WouldBlock` or its budget, and
//!    dispatch each complete frame to the handler as it is decoded;
//! 3. drain the mailbox (mail, adopted connections, shutdown);
//! 4. fire due timers;
//! 5. flush every connection made dirty in this pass, once, with `send` (one frame) or `sendmsg` (several);
//!    ask for WRITABLE only after a short write;
//! 6. reap connections marked for closing and hand off those marked for moving.
//!
//! Timers run before the flush so that what they send leaves in the same pass.

use crate::close::{CloseKind, CloseReason};
use crate::config::AcceptMode;
use crate::conn::{Conn, Phase, Transfer};
use crate::ctx::{Ctx, FIRST_CONN_TOKEN, FIRST_LISTENER_TOKEN, MAX_LISTENERS};
use crate::handler::Handler;
use crate::mailbox::{Mail, PostError};
use crate::out_queue::SocketSink;
use crate::stats::LoopStats;
use crate::timer::TimerKind;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use elko_protocol::{
    negotiate_version, ErrorCode, ErrorFrame, Frame, Hello, MessageType, Ping, Pong, Welcome,
    MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

pub(crate) const WAKER_TOKEN: Token = Token(0);
pub(crate) const TIMER_TOKEN: Token = Token(1);

/// Most mailbox messages handled per pass (the rest wait for the next pass).
const MAIL_BUDGET: usize = 4096;
/// How long to wait before retrying accept after running out of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Most one warning of a kind per this long (the rest are counted).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning that may repeat thousands of times a second (a full server
/// refusing a crowd): say it once per [`WARN_EVERY`], with how many times
/// it was held back since.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// `Some(times held back)` if the warning is due now.
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < WARN_EVERY => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

pub(crate) struct EventLoop<H: Handler> {
    pub(crate) handler: H,
    pub(crate) cx: Ctx<H::Mail>,
    pub(crate) poll: Poll,
    pub(crate) mail_rx: Receiver<Mail<H::Mail>>,
    /// This loop's listeners, indexed like the engine's listen addresses.
    pub(crate) listeners: Vec<Option<TcpListener>>,
    scratch: Vec<u8>,
    /// Received bytes of whole frames, shared by this loop's decoders (see
    /// `FrameDecoder::extend_shared`): no allocation per read.
    rx_block: BytesMut,
    reserve_fd: Option<File>,
    /// Per listener: paused after running out of descriptors.
    accept_paused: Vec<bool>,
    /// Warnings about running out of descriptors, and about refusing at
    /// the descriptor budget: one per [`WARN_EVERY`] each.
    fd_warn: Throttle,
    budget_warn: Throttle,
    shutdown_deadline: Option<Instant>,
    accept_rr: usize,
    server_full_frame: Bytes,
}

impl<H: Handler> Drop for EventLoop<H> {
    /// Whether the loop returned or its handler panicked, senders learn at
    /// once that this loop reads no more mail (a disk thread then stops
    /// retrying a report instead of waiting out its retry budget).
    fn drop(&mut self) {
        self.cx.shared.mailboxes[self.cx.idx].mark_stopped();
    }
}

impl<H: Handler> EventLoop<H> {
    pub(crate) fn new(
        handler: H,
        cx: Ctx<H::Mail>,
        poll: Poll,
        mail_rx: Receiver<Mail<H::Mail>>,
        listeners: Vec<Option<TcpListener>>,
    ) -> Self {
        let server_full_frame = elko_protocol::encode_frame_to_bytes(&ErrorFrame {
            code: ErrorCode::SERVER_FULL,
            message: "server full: connection limit reached; retry later".into(),
        })
        .unwrap_or_default();
        EventLoop {
            handler,
            cx,
            poll,
            mail_rx,
            accept_paused: vec![false; listeners.len()],
            listeners,
            fd_warn: Throttle::default(),
            budget_warn: Throttle::default(),
            scratch: vec![0; 64 * 1024],
            rx_block: BytesMut::with_capacity(64 * 1024),
            reserve_fd: File::open("/dev/null").ok(),
            shutdown_deadline: None,
            accept_rr: 0,
            server_full_frame,
        }
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let sweep = self.cx.cfg.sweep_interval;
        self.cx.timers.add(Instant::now() + sweep, TimerKind::Sweep);
        self.handler.on_start(&mut self.cx);
        loop {
            let leftover = !self.cx.read_again.is_empty()
                || !self.cx.dirty.is_empty()
                || !self.cx.closing.is_empty()
                || !self.cx.handoffs.is_empty();
            if let Err(e) = self.cx.timers.arm(Instant::now()) {
                tracing::error!(error = %e, "timerfd_settime failed; timers may fire late");
            }
            let timeout = leftover.then_some(Duration::ZERO);
            let busy_until = Instant::now();
            LoopStats::add(
                &self.cx.stats.busy_ns,
                busy_until.duration_since(self.cx.now).as_nanos() as u64,
            );
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed; stopping loop");
                    break;
                }
            }
            self.cx.now = Instant::now();
            LoopStats::add(&self.cx.stats.passes, 1);

            // Connections left over from the previous pass (budget exhausted).
            let again = std::mem::take(&mut self.cx.read_again);
            for slot in again {
                if let Some(c) = self.cx.conns.get_mut(slot) {
                    c.read_again = false;
                    self.read_conn(slot, false);
                }
            }

            let mut mail_ready = false;
            for ev in events.iter() {
                match ev.token() {
                    WAKER_TOKEN => mail_ready = true,
                    TIMER_TOKEN => self.cx.timers.acknowledge(),
                    Token(t)
                        if (FIRST_LISTENER_TOKEN..FIRST_LISTENER_TOKEN + MAX_LISTENERS)
                            .contains(&t) =>
                    {
                        self.accept_ready(t - FIRST_LISTENER_TOKEN)
                    }
                    Token(t) => {
                        let slot = t - FIRST_CONN_TOKEN;
                        let Some(conn) = self.cx.conns.get(slot) else {
                            continue;
                        };
                        if ev.is_writable() {
                            if conn.phase == Phase::Connecting {
                                self.finish_connect(slot);
                            }
                            if self.cx.conns.contains(slot) {
                                self.cx.mark_dirty(slot);
                            }
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // With the peer's FIN already reported, a short
                            // read is not the end: the EOF read must follow.
                            let fin_seen = ev.is_read_closed() || ev.is_error();
                            self.read_conn(slot, !fin_seen);
                        }
                    }
                }
            }

            if mail_ready || !self.mail_rx.is_empty() {
                self.drain_mail();
            }
            self.fire_timers();
            self.flush_dirty();
            self.reap();

            if let Some(deadline) = self.shutdown_deadline {
                let drained = self.cx.conns.iter().all(|(_, c)| c.out.is_empty());
                if drained || Instant::now() >= deadline {
                    self.close_all();
                    break;
                }
            }
        }
        tracing::debug!(loop_idx = self.cx.idx, "event loop stopped");
    }

    // ---- reading and dispatch -------------------------------------------------

    /// Read and dispatch. `short_read_drains`: a short read may be taken as
    /// "socket empty" (true only for a fresh readiness event without FIN).
    fn read_conn(&mut self, slot: usize, short_read_drains: bool) {
        let limits = &self.cx.cfg.limits;
        let mut frames_left = limits.frame_budget;
        let mut bytes_left = limits.read_budget;
        // A read that returns less than asked has emptied the socket buffer:
        // with edge-triggered epoll any later data raises a new event, so
        // the usual extra read that only returns EAGAIN is skipped (one
        // syscall saved per readable connection per pass). Not so when the
        // event already carried the FIN (data and FIN arrived together: no
        // new event will come for the FIN), nor on a pass that resumes a
        // connection whose event was consumed earlier.
        let mut drained = false;
        // Frames already buffered were completed by an earlier pass's read.
        self.cx.rx_stamp = None;
        loop {
            // Dispatch what is buffered first.
            loop {
                let conn = &mut self.cx.conns[slot];
                if !conn.is_live() {
                    return;
                }
                if frames_left == 0 {
                    self.cx.mark_read_again(slot);
                    return;
                }
                match conn.decoder.next_frame() {
                    Ok(Some(frame)) => {
                        frames_left -= 1;
                        LoopStats::add(&self.cx.stats.frames_in, 1);
                        self.on_frame(slot, frame);
                        if !self.cx.conns.contains(slot) {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.cx.close_slot(slot, CloseReason::Frame(e));
                        return;
                    }
                }
            }
            let conn = &mut self.cx.conns[slot];
            if conn.eof {
                self.cx.close_slot(slot, CloseReason::PeerClosed);
                return;
            }
            if drained {
                conn.decoder.shrink_if_idle();
                return;
            }
            if bytes_left == 0 {
                self.cx.mark_read_again(slot);
                return;
            }
            let want = bytes_left.min(self.scratch.len());
            let stamped = self.cx.cfg.rx_timestamps;
            match crate::rx_stamp::read(&mut conn.stream, &mut self.scratch[..want], stamped) {
                Ok((0, _)) => conn.eof = true,
                Ok((n, stamp)) => {
                    self.cx.rx_stamp = stamp;
                    drained = short_read_drains && n < want;
                    bytes_left -= n;
                    conn.last_rx = self.cx.now;
                    conn.decoder
                        .extend_shared(&self.scratch[..n], &mut self.rx_block);
                    LoopStats::add(&self.cx.stats.bytes_in, n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.decoder.shrink_if_idle();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = if conn.phase == Phase::Connecting {
                        CloseReason::ConnectFailed(e.kind())
                    } else {
                        CloseReason::Io(e.kind())
                    };
                    self.cx.close_slot(slot, reason);
                    return;
                }
            }
        }
    }

    /// Engine-level handling of one frame: handshake, heartbeats, peer
    /// errors; everything else goes to the handler.
    fn on_frame(&mut self, slot: usize, frame: Frame) {
        let conn = &self.cx.conns[slot];
        let id = conn.id;
        let phase = conn.phase;
        let ty = MessageType::from_u8(frame.ty);
        if ty == Some(MessageType::ErrorFrame) {
            let reason = match frame.decode_owned::<ErrorFrame>(MessageType::ErrorFrame) {
                Ok(e) => CloseReason::PeerError {
                    code: e.code,
                    message: e.message,
                },
                Err(e) => CloseReason::from_decode(&e),
            };
            self.cx.close_slot(slot, reason);
            return;
        }
        match phase {
            Phase::AwaitHello => {
                if ty != Some(MessageType::Hello) {
                    let reason = match ty {
                        None => CloseReason::Protocol {
                            code: ErrorCode::BAD_MAGIC,
                            detail: format!(
                                "first frame has type 0x{:02x}; it must be Hello (0x01)",
                                frame.ty
                            ),
                        },
                        Some(t) => CloseReason::unexpected(format!(
                            "first frame is {t:?}; it must be Hello"
                        )),
                    };
                    self.cx.close_slot(slot, reason);
                    return;
                }
                let hello: Hello = match frame.decode_owned(MessageType::Hello) {
                    Ok(h) => h,
                    Err(e) => {
                        self.cx.close_slot(slot, CloseReason::from_decode(&e));
                        return;
                    }
                };
                if hello.magic != MAGIC {
                    let detail = format!(
                        "Hello magic 0x{:08x}, expected 0x{MAGIC:08x} (\"ELKO\")",
                        hello.magic
                    );
                    self.cx.close_slot(
                        slot,
                        CloseReason::Protocol {
                            code: ErrorCode::BAD_MAGIC,
                            detail,
                        },
                    );
                    return;
                }
                let Some(version) = negotiate_version(hello.min_version, hello.max_version) else {
                    let detail = format!(
                        "client speaks versions {}..={}, this server {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
                        hello.min_version, hello.max_version
                    );
                    self.cx.close_slot(
                        slot,
                        CloseReason::Protocol {
                            code: ErrorCode::UNSUPPORTED_VERSION,
                            detail,
                        },
                    );
                    return;
                };
                let limits = &self.cx.cfg.limits;
                let welcome = Welcome {
                    version,
                    server_id: self.cx.cfg.server_id.clone(),
                    limits: elko_protocol::Limits {
                        max_frame: limits.max_frame,
                        max_id_len: limits.max_id_len,
                        max_text_len: limits.max_text_len,
                        heartbeat_ms: limits.heartbeat.as_millis() as u32,
                        idle_timeout_ms: limits.idle_timeout.as_millis() as u32,
                    },
                    challenge: rand_challenge(),
                };
                let max_frame = limits.max_frame;
                let conn = &mut self.cx.conns[slot];
                conn.phase = Phase::Established;
                conn.decoder.set_max_frame(max_frame);
                conn.challenge = Some(Box::new(welcome.challenge));
                self.cx.send_msg(id, &welcome);
                self.handler.on_hello(&mut self.cx, id, &hello);
            }
            Phase::AwaitWelcome | Phase::Connecting => {
                let welcome: Welcome = match frame.decode_owned(MessageType::Welcome) {
                    Ok(w) => w,
                    Err(e) => {
                        self.cx.close_slot(slot, CloseReason::from_decode(&e));
                        return;
                    }
                };
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&welcome.version) {
                    let detail = format!(
                        "server chose version {} which this client does not speak",
                        welcome.version
                    );
                    self.cx.close_slot(
                        slot,
                        CloseReason::Protocol {
                            code: ErrorCode::UNSUPPORTED_VERSION,
                            detail,
                        },
                    );
                    return;
                }
                let max_frame = self.cx.cfg.limits.max_frame;
                let conn = &mut self.cx.conns[slot];
                conn.phase = Phase::Established;
                conn.decoder.set_max_frame(max_frame);
                self.handler.on_welcome(&mut self.cx, id, &welcome);
            }
            Phase::Established => match ty {
                Some(MessageType::Ping) => match frame.decode_owned::<Ping>(MessageType::Ping) {
                    Ok(p) => {
                        self.cx.send_msg(id, &Pong { nonce: p.nonce });
                    }
                    Err(e) => self.cx.close_slot(slot, CloseReason::from_decode(&e)),
                },
                Some(MessageType::Pong) => {
                    if let Err(e) = frame.decode_owned::<Pong>(MessageType::Pong) {
                        self.cx.close_slot(slot, CloseReason::from_decode(&e));
                    }
                }
                Some(MessageType::Hello) | Some(MessageType::Welcome) => {
                    self.cx.close_slot(
                        slot,
                        CloseReason::unexpected("handshake message after the handshake"),
                    );
                }
                // A type this build does not know is refused here, once,
                // rather than by every handler.
                None => {
                    let e = elko_protocol::codec::DecodeError::UnknownType(frame.ty);
                    self.cx.close_slot(slot, CloseReason::from_decode(&e));
                }
                _ => self.handler.on_frame(&mut self.cx, id, frame),
            },
        }
    }

    fn finish_connect(&mut self, slot: usize) {
        let conn = &mut self.cx.conns[slot];
        match conn.stream.take_error() {
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => conn.phase = Phase::AwaitWelcome,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => self
                    .cx
                    .close_slot(slot, CloseReason::ConnectFailed(e.kind())),
            },
            Ok(Some(e)) | Err(e) => self
                .cx
                .close_slot(slot, CloseReason::ConnectFailed(e.kind())),
        }
    }

    // ---- accepting --------------------------------------------------------------

    fn accept_ready(&mut self, li: usize) {
        // Paused after running out of descriptors: the retry timer resumes.
        if self.accept_paused.get(li).copied().unwrap_or(false) {
            return;
        }
        loop {
            let Some(Some(listener)) = self.listeners.get(li) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.place_accepted(stream, peer, li as u8),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    LoopStats::add(&self.cx.stats.fd_exhausted, 1);
                    // Free the reserve descriptor, accept the waiting peer,
                    // tell it the server is full, and take the reserve back.
                    // Without this, an edge-triggered listener would leave
                    // the peer hanging in the backlog.
                    if self.reserve_fd.take().is_none() {
                        return self.pause_accept(li, "out of file descriptors");
                    }
                    // More peers may wait after one refused, or after one
                    // that gave up before it was accepted.
                    let more = match listener.accept() {
                        Ok((stream, peer)) => {
                            let now = Instant::now();
                            if let Some(n) = self.fd_warn.due(now) {
                                tracing::warn!(%peer, held_back = n, "out of file descriptors; refusing connections as SERVER_FULL");
                            }
                            self.refuse_full(stream);
                            true
                        }
                        Err(e) => matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                        ),
                    };
                    // Another loop may have taken the freed descriptor: then
                    // pause, and take the reserve back at the retry.
                    self.reserve_fd = File::open("/dev/null").ok();
                    if self.reserve_fd.is_none() {
                        return self.pause_accept(li, "out of file descriptors");
                    }
                    // The kernel reports EMFILE before it looks at the
                    // backlog: with nobody waiting, the next accept fails
                    // the same way again, so stop here unless more may wait.
                    if !more {
                        return;
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => return self.pause_accept(li, &format!("accept failed: {e}")),
            }
        }
    }

    /// Stop accepting on listener `li` for [`ACCEPT_RETRY`]: readiness is
    /// ignored until the retry timer, so a full process does not spin on an
    /// edge-triggered listener that every new peer wakes. One warning per
    /// [`WARN_EVERY`], with how many were held back.
    fn pause_accept(&mut self, li: usize, why: &str) {
        if let Some(p) = self.accept_paused.get_mut(li) {
            *p = true;
        }
        if let Some(n) = self.fd_warn.due(Instant::now()) {
            tracing::warn!(held_back = n, "{why}; not accepting for {ACCEPT_RETRY:?}");
        }
        self.cx
            .timers
            .add(Instant::now() + ACCEPT_RETRY, TimerKind::AcceptRetry(li));
    }

    /// The retry timer after [`pause_accept`](Self::pause_accept).
    fn resume_accept(&mut self, li: usize) {
        if let Some(p) = self.accept_paused.get_mut(li) {
            *p = false;
        }
        if self.reserve_fd.is_none() {
            self.reserve_fd = File::open("/dev/null").ok();
        }
        self.accept_ready(li);
    }

    fn place_accepted(&mut self, stream: TcpStream, peer: SocketAddr, li: u8) {
        let loops = self.cx.loop_count();
        if self.cx.cfg.accept_mode == AcceptMode::Single && loops > 1 {
            // Round-robin: even by construction, and needs no shared counts
            // (which lag behind a burst of accepts).
            self.accept_rr = (self.accept_rr + 1) % loops;
            let target = self.accept_rr;
            if target != self.cx.idx {
                if let Err(e) =
                    self.cx.shared.mailboxes[target].send(Mail::Accepted(stream, peer, li))
                {
                    if let Mail::Accepted(stream, _, _) = e.into_inner() {
                        self.refuse_full(stream);
                    }
                }
                return;
            }
        }
        self.adopt_new(stream, peer, li);
    }

    fn adopt_new(&mut self, stream: TcpStream, peer: SocketAddr, li: u8) {
        if self.cx.conns.len() >= self.cx.cfg.limits.max_connections_per_loop
            || self.cx.shutting_down
        {
            self.refuse_full(stream);
            return;
        }
        if self.cx.shared.at_fd_budget() {
            if let Some(n) = self.budget_warn.due(Instant::now()) {
                tracing::warn!(
                    %peer,
                    held_back = n,
                    limit = self.cx.shared.fd_limit,
                    held = crate::held_fds(),
                    headroom = crate::FD_HEADROOM,
                    "refusing connections as SERVER_FULL: at the descriptor budget \
                     (connections + held descriptors + headroom = RLIMIT_NOFILE); \
                     raise the limit or add servers"
                );
            }
            self.refuse_full(stream);
            return;
        }
        match self.cx.insert(
            stream,
            peer,
            Phase::AwaitHello,
            Interest::READABLE,
            Some(li),
        ) {
            Ok(id) => {
                LoopStats::add(&self.cx.stats.accepted, 1);
                self.handler.on_accept(&mut self.cx, id, peer);
            }
            Err(e) => tracing::warn!(%peer, error = %e, "could not register accepted connection"),
        }
    }

    /// Answer SERVER_FULL without registering the connection.
    fn refuse_full(&mut self, stream: TcpStream) {
        let _ = (&stream).write(&self.server_full_frame);
        let _ = stream.shutdown(Shutdown::Write);
        self.cx.stats.count_close(CloseKind::ServerFull);
    }

    // ---- mailbox and timers ---------------------------------------------------

    fn drain_mail(&mut self) {
        self.cx.shared.mailboxes[self.cx.idx].clear_wake();
        for _ in 0..MAIL_BUDGET {
            let Ok(mail) = self.mail_rx.try_recv() else {
                return;
            };
            LoopStats::add(&self.cx.stats.mail, 1);
            match mail {
                Mail::App(m) => self.handler.on_mail(&mut self.cx, m),
                Mail::Adopt(t, m) => self.adopt_transfer(*t, m),
                Mail::Accepted(stream, peer, li) => self.adopt_new(stream, peer, li),
                Mail::Shutdown(deadline) => self.begin_shutdown(deadline),
            }
        }
        // Budget spent with mail left: make sure the next pass comes soon.
        self.cx.shared.mailboxes[self.cx.idx].wake();
    }

    fn adopt_transfer(&mut self, t: Transfer, mail: H::Mail) {
        let interest = if t.out.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let peer = t.peer;
        match self
            .cx
            .insert(t.stream, peer, t.phase, interest, t.listener)
        {
            Ok(id) => {
                let slot = id.slot as usize;
                let c = &mut self.cx.conns[slot];
                c.decoder = t.decoder;
                c.out = t.out;
                c.opened_at = t.opened_at;
                c.last_rx = t.last_rx;
                c.eof = t.eof;
                c.challenge = t.challenge;
                LoopStats::add(&self.cx.stats.accepted, 1);
                self.handler.on_adopt(&mut self.cx, id, mail);
                if self.cx.conns.contains(slot) {
                    // Buffered frames (and bytes that arrived during the move) are read next pass.
                    self.cx.mark_read_again(slot);
                    if !self.cx.conns[slot].out.is_empty() {
                        self.cx.mark_dirty(slot);
                    }
                }
            }
            Err(e) => tracing::warn!(%peer, error = %e, "could not register handed-off connection"),
        }
    }

    fn fire_timers(&mut self) {
        self.cx.now = Instant::now();
        while let Some((id, kind)) = self.cx.timers.pop_due(self.cx.now) {
            match kind {
                TimerKind::App(data) => self.handler.on_timer(&mut self.cx, id, data),
                TimerKind::Sweep => {
                    self.sweep();
                    let next = self.cx.now + self.cx.cfg.sweep_interval;
                    self.cx.timers.add(next, TimerKind::Sweep);
                }
                TimerKind::AcceptRetry(li) => self.resume_accept(li),
                TimerKind::ShutdownDeadline => {}
            }
        }
    }

    /// Timeouts, heartbeats and the outbound soft limit, for every connection.
    fn sweep(&mut self) {
        let now = self.cx.now;
        let l = &self.cx.cfg.limits;
        let hold = l.ping_hold();
        let mut to_close = Vec::new();
        let mut to_ping = Vec::new();
        let mut to_flush = Vec::new();
        for (slot, c) in self.cx.conns.iter_mut() {
            if !c.is_live() {
                continue;
            }
            // A held Ping (queued below) with no frame to travel with goes
            // alone once its hold is over.
            if c.has_held_ping() && now.duration_since(c.last_ping) >= hold {
                to_flush.push(slot);
            }
            if let Some(since) = c.over_soft_since {
                if now.duration_since(since) >= l.out_soft_grace {
                    to_close.push((
                        slot,
                        CloseReason::SlowConsumer {
                            queued: c.out.len(),
                        },
                    ));
                    continue;
                }
            }
            let idle = now.duration_since(c.last_rx);
            match c.phase {
                Phase::Established => {
                    if idle >= l.idle_timeout {
                        to_close.push((slot, CloseReason::IdleTimeout));
                    } else if idle >= l.heartbeat && now.duration_since(c.last_ping) >= l.heartbeat
                    {
                        c.last_ping = now;
                        to_ping.push(slot);
                    }
                }
                _ => {
                    if now.duration_since(c.opened_at) >= l.handshake_timeout {
                        to_close.push((slot, CloseReason::HandshakeTimeout));
                    }
                }
            }
        }
        for (slot, reason) in to_close {
            self.cx.close_slot(slot, reason);
        }
        LoopStats::add(&self.cx.stats.pings_alone, to_flush.len() as u64);
        for slot in to_flush {
            self.cx.mark_dirty(slot);
        }
        if !to_ping.is_empty() {
            let nonce = LoopStats::get(&self.cx.stats.passes);
            if let Ok(ping) = self.cx.encode(&Ping { nonce }) {
                for slot in to_ping {
                    let queued = if self.cx.shutting_down {
                        self.cx.send_slot(slot, ping.clone())
                    } else {
                        // Held, to share a segment with the next frame sent
                        // there (a listener's next delivery, usually).
                        self.cx.queue_slot(slot, ping.clone())
                    };
                    LoopStats::add(&self.cx.stats.pings, u64::from(queued));
                }
            }
        }
    }

    // ---- writing ----------------------------------------------------------------

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.cx.dirty);
        let mut again = Vec::new();
        for &slot in &dirty {
            let Some(conn) = self.cx.conns.get_mut(slot) else {
                continue;
            };
            conn.dirty = false;
            if conn.phase == Phase::Connecting {
                continue; // flushed once connected (the WRITABLE event marks it dirty)
            }
            if self.flush_slot(slot) {
                again.push(slot);
            }
        }
        // Connections that hit the write budget go again next pass.
        for slot in again {
            self.cx.mark_dirty(slot);
        }
        // Reuse the allocation.
        let mut dirty = dirty;
        dirty.clear();
        if self.cx.dirty.is_empty() {
            self.cx.dirty = dirty;
        }
    }

    /// Write what is queued. Returns true if the write budget ran out with
    /// data left and the socket still writable.
    fn flush_slot(&mut self, slot: usize) -> bool {
        let l = &self.cx.cfg.limits;
        let (budget, soft) = (l.write_budget, l.out_soft);
        let conn = &mut self.cx.conns[slot];
        if conn.out.is_empty() {
            return false;
        }
        let res = conn
            .out
            .write_to(&mut SocketSink::new(&conn.stream), budget);
        match res {
            Ok(o) => {
                LoopStats::add(&self.cx.stats.bytes_out, o.written as u64);
                LoopStats::add(&self.cx.stats.writes, 1);
                let want_writable = o.would_block;
                if want_writable != conn.writable_interest {
                    let interest = if want_writable {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    let token = Token(slot + FIRST_CONN_TOKEN);
                    if let Err(e) = self
                        .cx
                        .registry
                        .reregister(&mut conn.stream, token, interest)
                    {
                        self.cx.close_slot(slot, CloseReason::Io(e.kind()));
                        return false;
                    }
                    conn.writable_interest = want_writable;
                }
                if conn.out.len() > soft {
                    conn.over_soft_since.get_or_insert(self.cx.now);
                } else {
                    conn.over_soft_since = None;
                }
                !o.would_block && !conn.out.is_empty()
            }
            Err(e) => {
                self.cx.close_slot(slot, CloseReason::Io(e.kind()));
                false
            }
        }
    }

    // ---- closing and moving -------------------------------------------------------

    fn reap(&mut self) {
        while !self.cx.closing.is_empty() || !self.cx.handoffs.is_empty() {
            for (slot, to, mail) in std::mem::take(&mut self.cx.handoffs) {
                self.move_out(slot, to, mail);
            }
            for slot in std::mem::take(&mut self.cx.closing) {
                let Some(conn) = self.cx.conns.try_remove(slot) else {
                    continue;
                };
                self.finish_close(conn);
            }
        }
    }

    fn finish_close(&mut self, mut conn: Conn) {
        let reason = conn.closing.take().map_or(CloseReason::Shutdown, |r| *r);
        // One last best-effort write (an ErrorFrame is usually queued), then
        // discard unread input so the kernel sends FIN rather than RST and
        // the peer gets to read that frame.
        if conn.phase != Phase::Connecting && !conn.out.is_empty() {
            let _ = conn.out.write_to(
                &mut SocketSink::new(&conn.stream),
                self.cx.cfg.limits.write_budget,
            );
        }
        let _ = self.cx.registry.deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(Shutdown::Write);
        let _ = conn.stream.read(&mut self.scratch);
        LoopStats::add(&self.cx.stats.connections, u64::MAX); // -1
        self.cx.stats.count_close(reason.kind());
        self.handler.on_close(&mut self.cx, conn.id, &reason);
    }

    fn move_out(&mut self, slot: usize, to: usize, mail: H::Mail) {
        let Some(c) = self.cx.conns.get(slot) else {
            return;
        };
        if c.closing.is_some() {
            return; // closing wins; reaped below
        }
        let Some(mut conn) = self.cx.conns.try_remove(slot) else {
            return;
        };
        let _ = self.cx.registry.deregister(&mut conn.stream);
        LoopStats::add(&self.cx.stats.connections, u64::MAX);
        let t = Transfer {
            stream: conn.stream,
            listener: conn.listener,
            phase: conn.phase,
            decoder: conn.decoder,
            out: conn.out,
            peer: conn.peer,
            opened_at: conn.opened_at,
            last_rx: conn.last_rx,
            eof: conn.eof,
            challenge: conn.challenge,
        };
        if let Err(e) = self.cx.shared.mailboxes[to].send(Mail::Adopt(Box::new(t), mail)) {
            // The stream goes with the mail; its peer sees the close.
            let reason = match e {
                PostError::Full(_) => CloseReason::MailboxFull,
                PostError::Stopped(_) => CloseReason::Shutdown, // the target loop has ended
            };
            self.cx.stats.count_close(reason.kind());
            self.handler.on_close(&mut self.cx, conn.id, &reason);
        }
    }

    // ---- shutdown ---------------------------------------------------------------

    fn begin_shutdown(&mut self, deadline: Instant) {
        if self.cx.shutting_down {
            return;
        }
        self.cx.shutting_down = true;
        self.shutdown_deadline = Some(deadline);
        for mut l in self.listeners.drain(..).flatten() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.cx.timers.add(deadline, TimerKind::ShutdownDeadline);
        // Held Pings go now (and the sweep holds no more): the drain ends
        // when every queue is empty, not when a hold is over.
        let held: Vec<usize> = self
            .cx
            .conns
            .iter()
            .filter(|(_, c)| c.has_held_ping())
            .map(|(slot, _)| slot)
            .collect();
        for slot in held {
            self.cx.mark_dirty(slot);
        }
        self.handler.on_shutdown(&mut self.cx);
    }

    fn close_all(&mut self) {
        let slots: Vec<usize> = self.cx.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.cx.close_slot(slot, CloseReason::Shutdown);
        }
        self.flush_dirty();
        self.reap();
    }
}

fn rand_challenge() -> [u8; 16] {
    let mut c = [0u8; 16];
    if getrandom::fill(&mut c).is_err() {
        // Fall back to a time-derived value; a director refuses to run
        // without a real secret anyway, and the challenge only adds freshness.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        c.copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_said_once_per_period_with_the_count_held_back() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.due(t0), Some(0), "the first is said");
        for i in 1..=1000 {
            assert_eq!(t.due(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(
            t.due(t0 + WARN_EVERY),
            Some(1000),
            "then once more, with the count"
        );
        assert_eq!(t.due(t0 + WARN_EVERY + Duration::from_millis(1)), None);
    }
}
