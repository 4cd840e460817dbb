//! Shared pieces of the engine's integration tests: a blocking test client
//! built on `std::net::TcpStream` and `elko_protocol`, a test application
//! (`TestApp`) and helpers that bound every wait.
//!
//! Every socket read has a timeout and every wait a deadline, so a bug fails
//! a test with a message instead of hanging the suite.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use elko_engine::{
    AcceptMode, CloseKind, CloseReason, ConnId, Ctx, Engine, EngineConfig, Handler, Limits,
    LoopStats,
};
use elko_protocol::{
    encode_frame, AppMessage, Body, ErrorCode, ErrorFrame, Frame, FrameDecoder, Hello, Message,
    Pong, Welcome, MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client read may block before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Echo the message to its sender.
pub const OP_ECHO: u16 = 1;
/// Broadcast the message to every connection of every loop.
pub const OP_BROADCAST: u16 = 2;
/// The body starts with a `u64` LE sequence number, 0, 1, 2... per
/// connection: the handler checks the order, echoes it, and (if configured)
/// hands the connection to the next loop every `handoff_every` messages.
pub const OP_SEQ: u16 = 3;

// ---- frames ---------------------------------------------------------------------------

/// One message encoded as a whole frame.
pub fn frame_bytes<B: Body>(b: &B) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(b, &mut buf).expect("test messages encode");
    buf.to_vec()
}

/// An AppMessage frame.
pub fn app_frame(op: u16, body: &[u8]) -> Vec<u8> {
    frame_bytes(&AppMessage {
        op,
        body: body.to_vec(),
    })
}

/// A frame put back on the wire (header, type byte, body).
pub fn wire(f: &Frame) -> Vec<u8> {
    let mut v = Vec::with_capacity(f.wire_len());
    v.extend_from_slice(&(f.body.len() as u32 + 1).to_le_bytes());
    v.push(f.ty);
    v.extend_from_slice(&f.body);
    v
}

/// A frame with a raw type byte and body (for types and bodies no message makes).
pub fn raw_frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + body.len());
    v.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
    v.push(ty);
    v.extend_from_slice(body);
    v
}

/// A valid Hello.
pub fn hello() -> Hello {
    Hello {
        magic: MAGIC,
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client_name: "engine-test".into(),
    }
}

/// A body of `len` bytes whose content depends on `seed` and the position,
/// so a reordered, truncated or mixed-up body does not compare equal.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// An OP_SEQ body: the sequence number, then `pad` pattern bytes.
pub fn seq_body(seq: u64, pad: usize) -> Vec<u8> {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend(pattern(seq, pad));
    b
}

// ---- the blocking client ----------------------------------------------------------------

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `read` returned 0: the peer closed with FIN.
    Eof,
    /// `read` failed with ECONNRESET: the peer closed with RST.
    Reset,
}

/// A blocking client speaking the Elko framing over one TCP connection.
#[derive(Debug)]
pub struct Client {
    pub s: TcpStream,
    dec: FrameDecoder,
    buf: Vec<u8>,
    /// Pings received (and answered, if `answer_pings`).
    pub pings: usize,
    /// Answer Pings with Pongs in [`Client::recv`].
    pub answer_pings: bool,
}

impl Client {
    /// A TCP connection, no handshake.
    pub fn raw(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Client::from_stream(s)
    }

    pub fn from_stream(s: TcpStream) -> Client {
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        s.set_nodelay(true).expect("nodelay");
        Client {
            s,
            dec: FrameDecoder::new(elko_protocol::MAX_FRAME_CEILING),
            buf: vec![0; 64 * 1024],
            pings: 0,
            answer_pings: true,
        }
    }

    /// Connect, send Hello, wait for Welcome.
    pub fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::raw(addr);
        c.handshake();
        c
    }

    pub fn handshake(&mut self) -> Welcome {
        self.send(&hello());
        match self.recv() {
            Ok(Message::Welcome(w)) => w,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// A second handle on the same socket with its own decoder (one thread
    /// writes while another reads).
    pub fn reader(&self) -> Client {
        Client::from_stream(self.s.try_clone().expect("clone socket"))
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.s.set_read_timeout(Some(t)).expect("read timeout");
    }

    pub fn send<B: Body>(&mut self, b: &B) {
        self.write_raw(&frame_bytes(b));
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to the engine");
    }

    pub fn app(&mut self, op: u16, body: &[u8]) {
        self.write_raw(&app_frame(op, body));
    }

    /// Read more bytes into the decoder: Ok(n>0), or how the stream ended.
    /// A read timeout fails the test.
    fn fill(&mut self, max: usize) -> Result<usize, End> {
        let max = max.min(self.buf.len());
        loop {
            match self.s.read(&mut self.buf[..max]) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => {
                    self.dec.extend(&self.buf[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(End::Reset),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("read timed out: the engine sent nothing and did not close")
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next frame of any type, Pings included; reading at most `chunk`
    /// bytes per `read` call.
    pub fn recv_frame_chunked(&mut self, chunk: usize) -> Result<Frame, End> {
        loop {
            if let Some(f) = self
                .dec
                .next_frame()
                .expect("the engine's framing is valid")
            {
                return Ok(f);
            }
            self.fill(chunk)?;
        }
    }

    /// The next frame of any type, Pings included.
    pub fn recv_frame(&mut self) -> Result<Frame, End> {
        self.recv_frame_chunked(usize::MAX)
    }

    /// The next frame that is not a Ping (Pings are counted and, if
    /// `answer_pings`, answered).
    pub fn recv_data_frame(&mut self) -> Result<Frame, End> {
        loop {
            let f = self.recv_frame()?;
            if f.ty == elko_protocol::MessageType::Ping as u8 {
                self.pings += 1;
                if self.answer_pings {
                    if let Ok(Message::Ping(p)) = f.decode() {
                        self.send(&Pong { nonce: p.nonce });
                    }
                }
                continue;
            }
            return Ok(f);
        }
    }

    /// The next message that is not a Ping.
    pub fn recv(&mut self) -> Result<Message, End> {
        let f = self.recv_data_frame()?;
        Ok(f.decode().expect("the engine's messages decode"))
    }

    pub fn expect_app(&mut self) -> AppMessage {
        match self.recv() {
            Ok(Message::AppMessage(m)) => m,
            other => panic!("expected AppMessage, got {other:?}"),
        }
    }

    /// The next frame must be exactly `expected` (compared on the wire, no
    /// decoding: cheap for large bodies).
    pub fn expect_wire(&mut self, expected: &[u8], what: &str) {
        match self.recv_data_frame() {
            Ok(f) => {
                if wire(&f) != expected {
                    panic!(
                        "{what}: got type 0x{:02x} with {} body bytes, expected {} wire bytes (first differing byte at {:?})",
                        f.ty,
                        f.body.len(),
                        expected.len(),
                        wire(&f).iter().zip(expected).position(|(a, b)| a != b)
                    );
                }
            }
            Err(end) => panic!("{what}: stream ended ({end:?})"),
        }
    }

    /// The next message must be an ErrorFrame with `code`.
    pub fn expect_error(&mut self, code: ErrorCode) -> ErrorFrame {
        match self.recv() {
            Ok(Message::ErrorFrame(e)) => {
                assert_eq!(e.code, code, "wrong error code: {e:?}");
                e
            }
            other => panic!("expected ErrorFrame {code:?}, got {other:?}"),
        }
    }

    /// The peer closed cleanly (FIN, not RST) with nothing more to read.
    pub fn expect_eof(&mut self) {
        match self.recv_frame() {
            Err(End::Eof) => {}
            Err(End::Reset) => panic!("the engine reset the connection instead of closing it"),
            Ok(f) => panic!("expected EOF, got a frame {:?}", f.decode()),
        }
    }

    /// An ErrorFrame with `code`, then a clean EOF.
    pub fn expect_error_then_eof(&mut self, code: ErrorCode) -> ErrorFrame {
        let e = self.expect_error(code);
        self.expect_eof();
        e
    }

    /// Nothing is waiting to be read right now (checked without blocking).
    pub fn expect_nothing_pending(&mut self) {
        assert_eq!(self.dec.buffered(), 0, "bytes left over in the decoder");
        self.s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 256];
        let r = self.s.read(&mut b);
        self.s.set_nonblocking(false).expect("blocking");
        match r {
            Ok(0) => panic!("unexpected EOF"),
            Ok(n) => panic!("unexpected {n} bytes: {:?}", &b[..n.min(32)]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Half-close: no more bytes from this side.
    pub fn shutdown_write(&self) {
        self.s.shutdown(Shutdown::Write).expect("shutdown(Write)");
    }

    /// A round trip through the echo handler: the connection is alive and served.
    pub fn ping_echo(&mut self, tag: &str) {
        self.app(OP_ECHO, tag.as_bytes());
        let m = self.expect_app();
        assert_eq!(m.body, tag.as_bytes(), "echo of {tag:?}");
    }
}

// ---- the test application --------------------------------------------------------------

/// What the test application reports to the test thread.
#[derive(Debug, Default)]
pub struct Probe {
    /// Connections adopted after a hand-off, per loop.
    pub adopts: [AtomicUsize; 4],
    /// Handshakes completed (on_hello).
    pub hellos: AtomicUsize,
    /// Every close the handler saw, with the loop it happened on.
    pub closes: Mutex<Vec<(usize, ConnId, CloseReason)>>,
    /// Invariants the handler found broken (the handler never panics: a
    /// panic would silently stop its loop).
    pub violations: Mutex<Vec<String>>,
    /// Largest `queued_bytes` seen right after queueing an echo.
    pub max_queued: AtomicUsize,
}

impl Probe {
    pub fn adopts_total(&self) -> usize {
        self.adopts.iter().map(|a| a.load(Ordering::SeqCst)).sum()
    }

    pub fn closes(&self) -> Vec<(usize, ConnId, CloseReason)> {
        self.closes.lock().expect("probe lock").clone()
    }

    pub fn violate(&self, what: String) {
        self.violations.lock().expect("probe lock").push(what);
    }

    pub fn assert_no_violations(&self) {
        let v = self.violations.lock().expect("probe lock");
        assert!(v.is_empty(), "the handler saw broken invariants: {v:?}");
    }
}

/// Mail between the test application's loops.
#[derive(Debug)]
pub enum Mail {
    /// Send this frame to every connection of the receiving loop.
    Broadcast(Bytes),
    /// A handed-off connection: the next sequence number it must send.
    Moved { next_seq: u64 },
}

/// Options of [`TestApp`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AppOptions {
    /// Hand an OP_SEQ connection to the next loop after every this many messages.
    pub handoff_every: Option<u64>,
}

/// The test application: echo, broadcast, sequence-checked echo with
/// hand-offs. Anything else is a protocol error and closes the connection.
#[derive(Debug)]
pub struct TestApp {
    /// Established connections of this loop, in handshake order.
    conns: Vec<ConnId>,
    /// Next expected sequence number per OP_SEQ connection.
    next_seq: HashMap<ConnId, u64>,
    opts: AppOptions,
    probe: Arc<Probe>,
}

impl TestApp {
    pub fn new(opts: AppOptions, probe: Arc<Probe>) -> TestApp {
        TestApp {
            conns: Vec::new(),
            next_seq: HashMap::new(),
            opts,
            probe,
        }
    }

    fn forget(&mut self, conn: ConnId) {
        self.conns.retain(|&c| c != conn);
        self.next_seq.remove(&conn);
    }

    fn broadcast_local(&self, cx: &mut Ctx<Mail>, frame: &Bytes) {
        for &c in &self.conns {
            cx.send(c, frame.clone());
        }
    }

    fn note_queue(&self, cx: &Ctx<Mail>, conn: ConnId) {
        let q = cx.queued_bytes(conn).unwrap_or(0);
        self.probe.max_queued.fetch_max(q, Ordering::SeqCst);
    }

    fn on_seq(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, msg: &AppMessage) {
        let Some(seq) = msg
            .body
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        else {
            return cx.close(conn, CloseReason::unexpected("OP_SEQ body under 8 bytes"));
        };
        let expected = self.next_seq.entry(conn).or_insert(0);
        if seq != *expected {
            let what = format!(
                "{conn:?} on loop {}: sequence {seq}, expected {expected}",
                cx.loop_index()
            );
            self.probe.violate(what.clone());
            return cx.close(conn, CloseReason::unexpected(what));
        }
        *expected += 1;
        let next = *expected;
        cx.send_msg(conn, msg);
        self.note_queue(cx, conn);
        if let Some(k) = self.opts.handoff_every {
            if next % k == 0 && cx.loop_count() > 1 {
                let to = (cx.loop_index() + 1) % cx.loop_count();
                self.forget(conn);
                if cx
                    .handoff(conn, to, Mail::Moved { next_seq: next })
                    .is_err()
                {
                    self.probe.violate(format!("handoff of {conn:?} refused"));
                }
            }
        }
    }
}

impl Handler for TestApp {
    type Mail = Mail;

    fn on_hello(&mut self, _cx: &mut Ctx<Mail>, conn: ConnId, _hello: &Hello) {
        self.probe.hellos.fetch_add(1, Ordering::SeqCst);
        self.conns.push(conn);
    }

    fn on_frame(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, frame: Frame) {
        // The engine passes every non-handshake, non-heartbeat frame here,
        // unknown types included: reject those with their own code.
        let msg = match frame.decode() {
            Ok(Message::AppMessage(m)) => m,
            Ok(other) => {
                return cx.close(
                    conn,
                    CloseReason::unexpected(format!(
                        "{} is not for this server",
                        other.message_type().name()
                    )),
                )
            }
            Err(e) => return cx.close(conn, CloseReason::from_decode(&e)),
        };
        match msg.op {
            OP_ECHO => {
                cx.send_msg(conn, &msg);
                self.note_queue(cx, conn);
            }
            OP_BROADCAST => {
                let frame = match cx.encode(&msg) {
                    Ok(f) => f,
                    Err(e) => return self.probe.violate(format!("encode: {e}")),
                };
                self.broadcast_local(cx, &frame);
                for to in (0..cx.loop_count()).filter(|&l| l != cx.loop_index()) {
                    if cx.post(to, Mail::Broadcast(frame.clone())).is_err() {
                        self.probe.violate(format!("mailbox of loop {to} full"));
                    }
                }
            }
            OP_SEQ => self.on_seq(cx, conn, &msg),
            op => cx.close(conn, CloseReason::unexpected(format!("unknown op {op}"))),
        }
    }

    fn on_close(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, reason: &CloseReason) {
        self.forget(conn);
        self.probe
            .closes
            .lock()
            .expect("probe lock")
            .push((cx.loop_index(), conn, reason.clone()));
    }

    fn on_mail(&mut self, cx: &mut Ctx<Mail>, mail: Mail) {
        match mail {
            Mail::Broadcast(f) => self.broadcast_local(cx, &f),
            Mail::Moved { .. } => self.probe.violate("Moved arrived as plain mail".into()),
        }
    }

    fn on_adopt(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, mail: Mail) {
        match mail {
            Mail::Moved { next_seq } => {
                self.probe.adopts[cx.loop_index()].fetch_add(1, Ordering::SeqCst);
                if conn.loop_index() != cx.loop_index() {
                    self.probe.violate(format!(
                        "adopted {conn:?} carries loop {} on loop {}",
                        conn.loop_index(),
                        cx.loop_index()
                    ));
                }
                self.conns.push(conn);
                self.next_seq.insert(conn, next_seq);
            }
            other => {
                self.probe.violate(format!("adopt with {other:?}"));
                cx.close(conn, CloseReason::unexpected("adopt without Moved"));
            }
        }
    }
}

// ---- starting and stopping ----------------------------------------------------------------

/// A test configuration: `loops` loops, fast sweeps, the given limits.
/// Default limits but for the heartbeat and the idle timeout.
pub fn heartbeat_limits(heartbeat: Duration, idle_timeout: Duration) -> Limits {
    Limits {
        heartbeat,
        idle_timeout,
        ..Limits::default()
    }
}

pub fn config(loops: usize, limits: Limits) -> EngineConfig {
    EngineConfig {
        loops,
        limits,
        accept_mode: AcceptMode::ReusePort,
        sweep_interval: Duration::from_millis(50),
        server_id: "engine-test".into(),
        ..EngineConfig::default()
    }
}

/// Start the test application on 127.0.0.1, port 0.
pub fn start_app(cfg: EngineConfig, opts: AppOptions) -> (Engine<Mail>, SocketAddr, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let p = probe.clone();
    let engine = Engine::start(cfg, Some(localhost()), move |_| {
        TestApp::new(opts, p.clone())
    })
    .expect("engine starts");
    let addr = engine.local_addr().expect("engine listens");
    (engine, addr, probe)
}

/// `start_app` with `loops` loops and the given limits.
pub fn start(loops: usize, limits: Limits) -> (Engine<Mail>, SocketAddr, Arc<Probe>) {
    start_app(config(loops, limits), AppOptions::default())
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Graceful shutdown with a 1 s grace, failing the test if it takes over 10 s.
pub fn stop<M: Send + 'static>(engine: Engine<M>) {
    stop_with(engine, Duration::from_secs(1), Duration::from_secs(10));
}

/// Graceful shutdown with `grace`, failing the test if it takes over `limit`.
pub fn stop_with<M: Send + 'static>(engine: Engine<M>, grace: Duration, limit: Duration) {
    let t = std::thread::spawn(move || engine.shutdown(grace));
    join_within(t, limit, "engine shutdown");
}

/// Join a thread, failing the test if it runs past `limit`; a panic in the
/// thread is re-raised here with its own message.
pub fn join_within<T>(t: JoinHandle<T>, limit: Duration, what: &str) -> T {
    let end = Instant::now() + limit;
    while !t.is_finished() {
        assert!(
            Instant::now() < end,
            "{what} did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    match t.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Wait until `f` holds, failing the test after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sum of one counter over every loop.
pub fn total(engine: &Engine<impl Send + 'static>, f: impl Fn(&LoopStats) -> u64) -> u64 {
    engine.stats().iter().map(|s| f(s)).sum()
}

/// Closes of `kind` over every loop.
pub fn closed(engine: &Engine<impl Send + 'static>, kind: CloseKind) -> u64 {
    total(engine, |s| s.closed(kind))
}

/// Connections open over every loop.
pub fn open_connections(engine: &Engine<impl Send + 'static>) -> u64 {
    total(engine, |s| LoopStats::get(&s.connections))
}

/// This process's descriptor limits (`RLIMIT_NOFILE`).
pub fn nofile() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) },
        0,
        "getrlimit"
    );
    lim
}

/// Set this process's descriptor limits (`RLIMIT_NOFILE`).
pub fn set_nofile(lim: &libc::rlimit) {
    // SAFETY: setrlimit reads the rlimit struct we own.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) },
        0,
        "setrlimit"
    );
}
