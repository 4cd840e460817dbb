//! Simulated clients of the peer servers (Redis pub/sub, NATS core), on raw
//! byte streams: a small `mio` loop per generator core, shaped like the
//! engine's (poll, read and dispatch, fire timers, flush what this pass
//! wrote, arm the timerfd) but without Elko framing.
//!
//! The workload is the same as Elko's: each client has one connection,
//! subscribes to its room's channel and publishes its utterances there on
//! that same connection; every member (the speaker included) receives every
//! utterance. The utterance bytes and the Poisson schedule are the same as
//! Elko's ([`crate::payload`], [`crate::schedule`]). Peers carry no room
//! sequence number, so order is checked per sender (each utterance carries
//! its sender's number).

pub mod wire;

use crate::metrics::{Delivery, SeqCheck, Shared};
use crate::payload::{self, Stamp, Utterance};
use crate::schedule::Schedule;
use elko_engine::TimerFd;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wire::{Event, Wire};

/// Settings every peer loop shares.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub addr: SocketAddr,
    /// Clients in the whole run (for the ramp's spacing).
    pub clients_total: usize,
    pub rooms: usize,
    pub ramp: Duration,
    pub message_size: usize,
    pub seed: u64,
    pub source_ip: Option<IpAddr>,
    /// Read with the kernel's receive stamps ([`Scenario::socket_stamps`]).
    ///
    /// [`Scenario::socket_stamps`]: crate::scenario::Scenario::socket_stamps
    pub socket_stamps: bool,
    /// Run the loops under `SCHED_BATCH` ([`Scenario::batch_sched`]).
    ///
    /// [`Scenario::batch_sched`]: crate::scenario::Scenario::batch_sched
    pub batch_sched: bool,
}

const WAKER: Token = Token(0);
const TIMER: Token = Token(1);
const FIRST_CLIENT: usize = 2;
const READ_CHUNK: usize = 16 * 1024;
/// A client whose unsent bytes pass this is dropped (the server stopped reading).
const OUT_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Opening,
    Ready,
    Done,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

#[derive(Debug)]
struct Client {
    idx: usize,
    room: usize,
    phase: Phase,
    conn: Option<Conn>,
    seq: u64,
    next_intended_us: u64,
    retries: u32,
    schedule: Schedule,
    /// Order per sender of the room, indexed by the sender's place in it.
    senders: Vec<SeqCheck>,
    /// When the subscription was in place, µs since the epoch.
    entered_us: u64,
    /// When the current attempt to subscribe began (its first connect,
    /// retries included); `u64::MAX` between entries.
    enter_began_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Start,
    Speak,
}

/// Handle on the running peer loops of one generator process.
#[derive(Debug)]
pub struct PeerLoops {
    threads: Vec<JoinHandle<()>>,
    wakers: Vec<Arc<Waker>>,
    exit: Arc<AtomicBool>,
}

impl PeerLoops {
    /// Start one loop per entry of `deal` (the global client indices of each loop).
    pub fn start<W: Wire>(
        cfg: Arc<PeerConfig>,
        shared: Arc<Shared>,
        deal: Vec<Vec<usize>>,
    ) -> io::Result<PeerLoops> {
        let exit = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut wakers = Vec::new();
        for (i, clients) in deal.into_iter().enumerate() {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let mut lp =
                PeerLoop::<W>::new(i, poll, &clients, cfg.clone(), shared.clone(), exit.clone())?;
            wakers.push(waker);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{}-gen-{i}", W::NAME))
                    .spawn(move || {
                        if lp.cfg.batch_sched {
                            elko_engine::batch_scheduling_for_loop(i);
                        }
                        if let Err(e) = lp.run() {
                            lp.shared
                                .error(&format!("{}_loop: {:?}", W::NAME, e.kind()));
                        }
                    })?,
            );
        }
        Ok(PeerLoops {
            threads,
            wakers,
            exit,
        })
    }

    /// Close every client and stop the loops (bounded wait).
    pub fn shutdown(self, grace: Duration) {
        self.exit.store(true, Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        let deadline = Instant::now() + grace;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

struct PeerLoop<W: Wire> {
    idx: usize,
    poll: Poll,
    timerfd: TimerFd,
    timers: BinaryHeap<Reverse<(u64, u32, TimerKind)>>,
    clients: Vec<Client>,
    channels: Vec<Vec<u8>>,
    dirty: Vec<usize>,
    cfg: Arc<PeerConfig>,
    shared: Arc<Shared>,
    exit: Arc<AtomicBool>,
    utterance: Utterance,
    chunk: Vec<u8>,
    /// The rate generation this loop's schedules follow ([`Shared::rate`]).
    rate_gen: u64,
    /// The receive stamp of the read being dispatched.
    rx_stamp: Option<Instant>,
    _wire: PhantomData<W>,
}

impl<W: Wire> PeerLoop<W> {
    fn new(
        idx: usize,
        poll: Poll,
        clients: &[usize],
        cfg: Arc<PeerConfig>,
        shared: Arc<Shared>,
        exit: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let timerfd = TimerFd::new()?;
        timerfd.register(poll.registry(), TIMER)?;
        let rooms = cfg.rooms.max(1);
        Ok(PeerLoop {
            idx,
            poll,
            timerfd,
            timers: BinaryHeap::with_capacity(clients.len() * 2),
            clients: clients
                .iter()
                .map(|&i| Client {
                    idx: i,
                    room: i % rooms,
                    phase: Phase::Idle,
                    conn: None,
                    seq: 0,
                    next_intended_us: 0,
                    retries: 0,
                    schedule: Schedule::new(cfg.seed, i),
                    senders: Vec::new(),
                    entered_us: u64::MAX,
                    enter_began_us: u64::MAX,
                })
                .collect(),
            channels: (0..rooms).map(W::channel).collect(),
            dirty: Vec::new(),
            utterance: Utterance::new(cfg.message_size),
            chunk: vec![0; READ_CHUNK],
            cfg,
            shared,
            exit,
            rate_gen: 0,
            rx_stamp: None,
            _wire: PhantomData,
        })
    }

    fn at(&self, us: u64) -> Instant {
        self.shared.epoch + Duration::from_micros(us)
    }

    fn run(&mut self) -> io::Result<()> {
        let n = self.cfg.clients_total.max(1) as u64;
        let ramp = self.cfg.ramp.as_micros() as u64;
        for (local, c) in self.clients.iter().enumerate() {
            let at = ramp * c.idx as u64 / n;
            self.timers
                .push(Reverse((at, local as u32, TimerKind::Start)));
        }
        let mut events = Events::with_capacity(1024);
        loop {
            if let Some(Reverse((at, _, _))) = self.timers.peek() {
                let at = self.at(*at);
                self.timerfd.arm(at, Instant::now())?;
            }
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if self.exit.load(Relaxed) {
                self.close_all();
                return Ok(());
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    TIMER => self.timerfd.acknowledge(),
                    Token(t) => {
                        let local = t - FIRST_CLIENT;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(local);
                        }
                        if ev.is_writable() {
                            self.mark_dirty(local);
                        }
                    }
                }
            }
            self.fire_timers();
            self.flush();
        }
    }

    /// The rate changed: every ready client's next utterance is drawn
    /// again, from now, with the new mean (see `Shared::set_mean_interval_us`).
    fn reschedule(&mut self, mean: u64) {
        let now = self.shared.now_us();
        for (local, c) in self.clients.iter_mut().enumerate() {
            if c.phase == Phase::Ready {
                c.next_intended_us = now.saturating_add(c.schedule.gap_us(mean));
                self.timers.push(Reverse((
                    c.next_intended_us,
                    local as u32,
                    TimerKind::Speak,
                )));
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.shared.now_us();
        while let Some(&Reverse((at, local, kind))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let local = local as usize;
            match kind {
                TimerKind::Start if self.clients[local].phase == Phase::Idle => self.connect(local),
                TimerKind::Speak => self.speak(local),
                TimerKind::Start => {}
            }
        }
    }

    fn mark_dirty(&mut self, local: usize) {
        self.dirty.push(local);
    }

    fn connect(&mut self, local: usize) {
        self.shared
            .entry_attempt(&mut self.clients[local].enter_began_us);
        let stream = match open_stream(self.cfg.addr, self.cfg.source_ip, self.cfg.socket_stamps) {
            Ok(s) => s,
            Err(e) => {
                self.shared
                    .error(&format!("connect_{}: {:?}", W::NAME, e.kind()));
                return self.retry(local);
            }
        };
        let mut conn = Conn {
            stream,
            inbuf: Vec::with_capacity(512),
            out: Vec::with_capacity(256),
        };
        let token = Token(local + FIRST_CLIENT);
        if let Err(e) = self.poll.registry().register(
            &mut conn.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.shared.error(&format!("register: {:?}", e.kind()));
            return self.retry(local);
        }
        let c = &mut self.clients[local];
        W::open(&mut conn.out, &self.channels[c.room]);
        c.conn = Some(conn);
        c.phase = Phase::Opening;
        self.mark_dirty(local);
    }

    fn retry(&mut self, local: usize) {
        let c = &mut self.clients[local];
        c.phase = Phase::Idle;
        match self.shared.retry_at(c.idx, &mut c.retries) {
            Some(at) => self
                .timers
                .push(Reverse((at, local as u32, TimerKind::Start))),
            None => c.phase = Phase::Done,
        }
    }

    fn drop_conn(&mut self, local: usize, why: &str) {
        let c = &mut self.clients[local];
        if let Some(mut conn) = c.conn.take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        if c.phase == Phase::Ready {
            self.shared.loops[self.idx].connected_add(-1);
            self.shared.room_members[c.room].fetch_sub(1, Relaxed);
        }
        if c.phase == Phase::Done {
            return;
        }
        self.shared.error(&format!("{}_{why}", W::NAME));
        if self.shared.stop_sending.load(Relaxed) {
            self.clients[local].phase = Phase::Done;
        } else {
            self.retry(local);
        }
    }

    fn ready(&mut self, local: usize) {
        let now = self.shared.now_us();
        let (mean, _) = self.shared.rate();
        let c = &mut self.clients[local];
        c.phase = Phase::Ready;
        c.retries = 0;
        c.entered_us = now;
        self.shared.entered(self.idx, &mut c.enter_began_us, now);
        self.shared.loops[self.idx].connected_add(1);
        self.shared.room_members[c.room].fetch_add(1, Relaxed);
        let start = self.shared.window.speak_start_us.max(now);
        c.next_intended_us = start.saturating_add(c.schedule.gap_us(mean));
        self.timers.push(Reverse((
            c.next_intended_us,
            local as u32,
            TimerKind::Speak,
        )));
    }

    fn speak(&mut self, local: usize) {
        let (mean, changed) = self.shared.rate_since(&mut self.rate_gen);
        if changed {
            self.reschedule(mean);
        }
        let now = self.shared.now_us();
        let c = &mut self.clients[local];
        if c.phase != Phase::Ready {
            return;
        }
        let intended = c.next_intended_us;
        // An entry due later than now was replaced by a rescheduling.
        if intended > now || !self.shared.may_send(intended) {
            return;
        }
        let Some(conn) = c.conn.as_mut() else {
            return;
        };
        c.seq += 1;
        let text = self.utterance.stamp(Stamp {
            late_us: now.saturating_sub(intended),
            intended_us: intended,
            sender: c.idx as u32,
            seq: c.seq,
        });
        W::publish(&mut conn.out, &self.channels[c.room], text);
        c.next_intended_us = intended.saturating_add(c.schedule.gap_us(mean));
        let (room, next) = (c.room, c.next_intended_us);
        self.timers
            .push(Reverse((next, local as u32, TimerKind::Speak)));
        self.shared.sending(self.idx, room, intended);
        self.mark_dirty(local);
    }

    fn read(&mut self, local: usize) {
        loop {
            let Some(conn) = self.clients[local].conn.as_mut() else {
                return;
            };
            let stamped = self.cfg.socket_stamps;
            let n = match elko_engine::rx_stamp::read(&mut conn.stream, &mut self.chunk, stamped) {
                Ok((0, _)) => return self.drop_conn(local, "closed"),
                Ok((n, stamp)) => {
                    self.rx_stamp = stamp;
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.drop_conn(local, &format!("read: {:?}", e.kind())),
            };
            // Parse straight from the chunk when nothing is left over from
            // before (the usual case); otherwise append and parse the buffer.
            let mut inbuf = std::mem::take(&mut conn.inbuf);
            let consumed = if inbuf.is_empty() {
                let chunk = std::mem::take(&mut self.chunk);
                let r = self.dispatch(local, &chunk[..n]);
                if let Ok(used) = r {
                    inbuf.extend_from_slice(&chunk[used..n]);
                }
                self.chunk = chunk;
                r.map(|_| 0)
            } else {
                inbuf.extend_from_slice(&self.chunk[..n]);
                self.dispatch(local, &inbuf)
            };
            match consumed {
                Ok(used) => {
                    inbuf.drain(..used);
                    if let Some(conn) = self.clients[local].conn.as_mut() {
                        conn.inbuf = inbuf;
                    }
                }
                Err(e) => {
                    self.shared.error(&format!("{}_protocol", W::NAME));
                    tracing::warn!(client = self.clients[local].idx, error = %e, "peer protocol error");
                    return self.drop_conn(local, "protocol_error");
                }
            }
            if n < self.chunk.len() {
                return; // the socket is drained; edge-triggered epoll says when more comes
            }
        }
    }

    /// Handle every complete item of `buf`; returns the bytes used.
    fn dispatch(&mut self, local: usize, buf: &[u8]) -> Result<usize, wire::WireError> {
        let mut pos = 0;
        while let Some((n, ev)) = W::parse(&buf[pos..])? {
            pos += n;
            match ev {
                Event::Message(m) => self.message(local, m),
                Event::Ready if self.clients[local].phase == Phase::Opening => self.ready(local),
                Event::Ping => {
                    if let Some(conn) = self.clients[local].conn.as_mut() {
                        W::pong(&mut conn.out);
                        self.dirty.push(local);
                    }
                }
                Event::Ready | Event::Ignore => {}
            }
        }
        Ok(pos)
    }

    fn message(&mut self, local: usize, m: &[u8]) {
        let now = self.shared.now_us();
        let rooms = self.cfg.rooms.max(1);
        let c = &mut self.clients[local];
        let Some(p) = payload::parse(m) else {
            return self.shared.error("foreign_message");
        };
        if p.sender as usize % rooms != c.room {
            return self.shared.error("message_from_another_room");
        }
        let place = p.sender as usize / rooms;
        if c.senders.len() <= place {
            c.senders.resize(place + 1, SeqCheck::default());
        }
        let order = c.senders[place].check(p.seq);
        let d = Delivery {
            room: c.room,
            // Unique within the room: its sender and the sender's number.
            utterance: u64::from(p.sender) << 40 | (p.seq & ((1 << 40) - 1)),
            intended_us: p.intended_us,
            late_us: p.late_us,
            now_us: now,
            arrived_us: self.rx_stamp.map(|t| self.shared.us_at(t)),
            member_since_us: c.entered_us,
        };
        self.shared.delivered(self.idx, order, d);
    }

    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &local in &dirty {
            let Some(conn) = self.clients[local].conn.as_mut() else {
                continue;
            };
            let mut written = 0;
            let mut failed = None;
            while written < conn.out.len() {
                match conn.stream.write(&conn.out[written..]) {
                    Ok(0) => break,
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(e.kind());
                        break;
                    }
                }
            }
            conn.out.drain(..written);
            // A connect still in progress reports NotConnected: wait for WRITABLE.
            match failed {
                Some(io::ErrorKind::NotConnected) | None => {}
                Some(k) => self.drop_conn(local, &format!("write: {k:?}")),
            }
            if let Some(conn) = self.clients[local].conn.as_ref() {
                if conn.out.len() > OUT_LIMIT {
                    self.drop_conn(local, "server_not_reading");
                }
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    fn close_all(&mut self) {
        for local in 0..self.clients.len() {
            let c = &mut self.clients[local];
            if let Some(mut conn) = c.conn.take() {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
            if c.phase == Phase::Ready {
                self.shared.loops[self.idx].connected_add(-1);
                self.shared.room_members[c.room].fetch_sub(1, Relaxed);
            }
            c.phase = Phase::Done;
        }
    }
}

fn open_stream(addr: SocketAddr, source: Option<IpAddr>, stamps: bool) -> io::Result<TcpStream> {
    let stream = elko_engine::connect_stream(addr, source)?;
    stream.set_nodelay(true)?;
    if stamps {
        elko_engine::rx_stamp::enable(stream.as_fd())?;
    }
    Ok(stream)
}
