//! The engine with real sockets on 127.0.0.1 (port 0). Every read has a
//! timeout and every wait a deadline, so a bug fails a test, never hangs it.

use bytes::{Bytes, BytesMut};
use elko_engine::{
    AcceptMode, CloseKind, CloseReason, ConnId, Ctx, Engine, EngineConfig, Handler, Limits,
};
use elko_protocol::{
    encode_frame, AppMessage, Body, ErrorCode, Frame, FrameDecoder, Hello, Message, MessageType,
    Pong, MAGIC, PROTOCOL_VERSION,
};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- a test application -------------------------------------------------------------

/// op 1: echo to the sender. op 2: broadcast to every connection of every
/// loop. With `handoff_every`, each connection is moved to the next loop
/// after that many echoes.
struct TestApp {
    conns: HashSet<ConnId>,
    handoff_every: Option<u64>,
    echoes: std::collections::HashMap<ConnId, u64>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    adopts: AtomicUsize,
    closes: Mutex<Vec<CloseReason>>,
    welcomes: AtomicUsize,
}

enum Mail {
    Broadcast(Bytes),
    Moved(u64),
}

impl TestApp {
    fn broadcast(&self, cx: &mut Ctx<Mail>, frame: &Bytes) {
        for &c in &self.conns {
            cx.send(c, frame.clone());
        }
    }
}

impl Handler for TestApp {
    type Mail = Mail;

    fn on_hello(&mut self, _cx: &mut Ctx<Mail>, conn: ConnId, _h: &Hello) {
        self.conns.insert(conn);
    }

    fn on_welcome(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, _w: &elko_protocol::Welcome) {
        self.shared.welcomes.fetch_add(1, Ordering::SeqCst);
        cx.send_msg(
            conn,
            &AppMessage {
                op: 1,
                body: b"from outbound".to_vec(),
            },
        );
    }

    fn on_frame(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, frame: Frame) {
        let msg = match frame.decode() {
            Ok(Message::AppMessage(m)) => m,
            Ok(other) => {
                return cx.close(
                    conn,
                    CloseReason::unexpected(format!("{:?}", other.message_type())),
                )
            }
            Err(e) => return cx.close(conn, CloseReason::from_decode(&e)),
        };
        match msg.op {
            1 => {
                cx.send_msg(conn, &msg);
                if let Some(k) = self.handoff_every {
                    let n = self.echoes.entry(conn).or_default();
                    *n += 1;
                    if *n % k == 0 {
                        let n = *n;
                        let to = (cx.loop_index() + 1) % cx.loop_count();
                        self.conns.remove(&conn);
                        self.echoes.remove(&conn);
                        assert!(cx.handoff(conn, to, Mail::Moved(n)).is_ok());
                    }
                }
            }
            2 => {
                let frame = cx.encode(&msg).expect("encodes");
                self.broadcast(cx, &frame);
                for l in (0..cx.loop_count()).filter(|&l| l != cx.loop_index()) {
                    assert!(cx.post(l, Mail::Broadcast(frame.clone())).is_ok());
                }
            }
            _ => cx.close(conn, CloseReason::unexpected("unknown op")),
        }
    }

    fn on_close(&mut self, _cx: &mut Ctx<Mail>, conn: ConnId, reason: &CloseReason) {
        self.conns.remove(&conn);
        self.shared
            .closes
            .lock()
            .expect("lock")
            .push(reason.clone());
    }

    fn on_mail(&mut self, cx: &mut Ctx<Mail>, mail: Mail) {
        if let Mail::Broadcast(f) = mail {
            self.broadcast(cx, &f);
        }
    }

    fn on_adopt(&mut self, _cx: &mut Ctx<Mail>, conn: ConnId, mail: Mail) {
        if let Mail::Moved(n) = mail {
            self.shared.adopts.fetch_add(1, Ordering::SeqCst);
            self.conns.insert(conn);
            self.echoes.insert(conn, n);
        }
    }
}

fn start(
    loops: usize,
    limits: Limits,
    handoff_every: Option<u64>,
) -> (Engine<Mail>, SocketAddr, Arc<Shared>) {
    start_mode(loops, limits, handoff_every, AcceptMode::ReusePort)
}

fn start_mode(
    loops: usize,
    limits: Limits,
    handoff_every: Option<u64>,
    accept_mode: AcceptMode,
) -> (Engine<Mail>, SocketAddr, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let cfg = EngineConfig {
        loops,
        limits,
        accept_mode,
        sweep_interval: Duration::from_millis(50),
        server_id: "test".into(),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, Some("127.0.0.1:0".parse().expect("addr")), move |_| {
        TestApp {
            conns: HashSet::new(),
            handoff_every,
            echoes: Default::default(),
            shared: s.clone(),
        }
    })
    .expect("engine starts");
    let addr = engine.local_addr().expect("listening");
    (engine, addr, shared)
}

// ---- a blocking test client --------------------------------------------------------

struct Client {
    s: TcpStream,
    dec: FrameDecoder,
}

fn frame_bytes<B: Body>(b: &B) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(b, &mut buf).expect("encode");
    buf.to_vec()
}

fn hello() -> Hello {
    Hello {
        magic: MAGIC,
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        client_name: "test".into(),
    }
}

impl Client {
    fn raw(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Client {
            s,
            dec: FrameDecoder::new(64 * 1024 * 1024),
        }
    }

    fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::raw(addr);
        c.send(&hello());
        match c.recv() {
            Some(Message::Welcome(_)) => c,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    fn send<B: Body>(&mut self, b: &B) {
        self.s.write_all(&frame_bytes(b)).expect("write");
    }

    fn app(&mut self, op: u16, body: Vec<u8>) {
        self.send(&AppMessage { op, body });
    }

    /// Next non-Ping message (Pings are answered), None at EOF.
    fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(f) = self.dec.next_frame().expect("framing") {
                let m = f.decode().expect("decodes");
                if let Message::Ping(p) = m {
                    self.send(&Pong { nonce: p.nonce });
                    continue;
                }
                return Some(m);
            }
            let mut buf = [0u8; 65536];
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.extend(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Next frame, Pings included (for the idle test).
    fn recv_raw(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.next_frame().expect("framing") {
                return Some(f);
            }
            let mut buf = [0u8; 65536];
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.extend(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn expect_app(&mut self) -> AppMessage {
        match self.recv() {
            Some(Message::AppMessage(m)) => m,
            other => panic!("expected AppMessage, got {other:?}"),
        }
    }

    fn expect_error(&mut self, code: ErrorCode) {
        match self.recv() {
            Some(Message::ErrorFrame(e)) => assert_eq!(e.code, code, "{e:?}"),
            other => panic!("expected ErrorFrame {code:?}, got {other:?}"),
        }
        assert!(self.recv().is_none(), "closed after the error frame");
    }
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- tests ----------------------------------------------------------------------------

#[test]
fn echo_in_order_and_intact_with_two_loops() {
    let (engine, addr, _) = start(2, Limits::default(), None);
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let sizes = [1usize, 100, 4096, 60_000];
        for (k, &n) in sizes.iter().enumerate() {
            c.app(1, vec![(i * 10 + k) as u8; n]);
        }
        for (k, &n) in sizes.iter().enumerate() {
            let m = c.expect_app();
            assert_eq!(m.body, vec![(i * 10 + k) as u8; n]);
        }
    }
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn handshake_errors_close_only_the_offender() {
    let (engine, addr, _) = start(1, Limits::default(), None);
    let mut good = Client::connect(addr);

    let mut c = Client::raw(addr);
    c.send(&Hello {
        magic: 0x1234_5678,
        ..hello()
    });
    c.expect_error(ErrorCode::BAD_MAGIC);

    let mut c = Client::raw(addr);
    c.send(&Hello {
        min_version: 7,
        max_version: 9,
        ..hello()
    });
    c.expect_error(ErrorCode::UNSUPPORTED_VERSION);

    let mut c = Client::raw(addr);
    c.send(&AppMessage {
        op: 1,
        body: vec![],
    });
    c.expect_error(ErrorCode::UNEXPECTED_MESSAGE);

    let mut c = Client::raw(addr);
    c.send(&AppMessage {
        op: 1,
        body: vec![0; 5000],
    }); // over the 4 KiB pre-handshake limit
    c.expect_error(ErrorCode::FRAME_TOO_LARGE);

    let mut c = Client::raw(addr);
    c.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    c.expect_error(ErrorCode::FRAME_TOO_LARGE); // "GET " read as a length

    // After the handshake: oversize frame, unknown type, garbage body.
    let mut c = Client::connect(addr);
    c.app(1, vec![0; 70_000]);
    c.expect_error(ErrorCode::FRAME_TOO_LARGE);
    let mut c = Client::connect(addr);
    c.s.write_all(&[1, 0, 0, 0, 0x7f]).expect("write");
    c.expect_error(ErrorCode::UNKNOWN_MESSAGE_TYPE);
    let mut c = Client::connect(addr);
    c.s.write_all(&[3, 0, 0, 0, MessageType::AppMessage as u8, 1, 0xfd])
        .expect("write");
    c.expect_error(ErrorCode::MALFORMED);

    // The good connection never noticed.
    good.app(1, b"still here".to_vec());
    assert_eq!(good.expect_app().body, b"still here");
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn one_frame_fanned_out_to_a_thousand_connections() {
    elko_engine::raise_fd_limit(8192).expect("rlimit");
    let (engine, addr, _) = start(2, Limits::default(), None);
    let mut clients: Vec<Client> = (0..1000).map(|_| Client::connect(addr)).collect();
    wait_for(Duration::from_secs(5), "all registered", || {
        engine
            .stats()
            .iter()
            .map(|s| elko_engine::LoopStats::get(&s.connections))
            .sum::<u64>()
            == 1000
    });
    for round in 0..3u8 {
        clients[round as usize].app(2, vec![round; 64]);
        for (i, c) in clients.iter_mut().enumerate() {
            let m = c.expect_app();
            assert_eq!(m.body, vec![round; 64], "client {i} round {round}");
        }
    }
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn byte_at_a_time_and_large_bursts_with_a_slow_reader() {
    let limits = Limits {
        out_hard: 64 << 20,
        out_soft: 32 << 20,
        ..Limits::default()
    };
    let (engine, addr, _) = start(1, limits, None);
    let mut c = Client::connect(addr);
    let wire = frame_bytes(&AppMessage {
        op: 1,
        body: b"dribble".to_vec(),
    });
    for b in &wire {
        c.s.write_all(&[*b]).expect("write");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(c.expect_app().body, b"dribble");

    // 8 MiB of echoes in flight, read slowly in small chunks.
    let n = 128;
    for i in 0..n {
        c.app(1, vec![(i % 251) as u8; 64 * 1024 - 16]);
    }
    let mut got = 0;
    while got < n {
        // Small reads: the server sees short writes and waits for WRITABLE.
        let mut buf = [0u8; 1500];
        let k = c.s.read(&mut buf).expect("read");
        assert!(k > 0, "EOF in the middle of the burst");
        c.dec.extend(&buf[..k]);
        while let Some(f) = c.dec.next_frame().expect("framing") {
            match f.decode().expect("decodes") {
                Message::AppMessage(m) => {
                    assert_eq!(
                        m.body,
                        vec![(got % 251) as u8; 64 * 1024 - 16],
                        "frame {got}"
                    );
                    got += 1;
                }
                Message::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn a_reader_that_never_reads_is_closed_while_the_others_get_everything() {
    let limits = Limits {
        out_soft: 64 * 1024,
        out_soft_grace: Duration::from_millis(200),
        out_hard: 1 << 20,
        ..Limits::default()
    };
    let (engine, addr, shared) = start(1, limits, None);
    let _stuck = Client::connect(addr);
    let mut readers: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    let mut sender = Client::connect(addr);
    let rounds = 200;
    let body = vec![7u8; 30_000];
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for mut r in readers.drain(..) {
        let tx = tx.clone();
        let body = body.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..rounds {
                let m = r.expect_app();
                assert_eq!(m.body.len(), body.len(), "reader round {i}");
            }
            tx.send(()).expect("send");
            r
        }));
    }
    // The sender itself receives its broadcasts too: read them in a thread.
    let sink = std::thread::spawn(move || {
        for _ in 0..rounds {
            sender.app(2, body.clone());
        }
        for _ in 0..rounds {
            sender.expect_app();
        }
    });
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("every reader got every round");
    }
    sink.join().expect("sender");
    wait_for(
        Duration::from_secs(5),
        "the slow consumer to be closed",
        || engine.stats()[0].closed(CloseKind::SlowConsumer) == 1,
    );
    assert!(shared
        .closes
        .lock()
        .expect("lock")
        .iter()
        .any(|r| matches!(r, CloseReason::SlowConsumer { .. })));
    for h in handles {
        h.join().expect("reader");
    }
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn connections_move_between_loops_under_traffic_without_loss_or_reordering() {
    let (engine, addr, shared) = start(2, Limits::default(), Some(50));
    let mut c = Client::connect(addr);
    let mut reader = Client {
        s: c.s.try_clone().expect("clone"),
        dec: FrameDecoder::new(1 << 20),
    };
    let n: u32 = 5000;
    let check = std::thread::spawn(move || {
        for i in 0..n {
            let m = reader.expect_app();
            assert_eq!(m.body, i.to_le_bytes(), "echo {i} out of order or lost");
        }
    });
    // Pipeline everything without waiting for echoes.
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend(frame_bytes(&AppMessage {
            op: 1,
            body: i.to_le_bytes().to_vec(),
        }));
        if batch.len() > 16 * 1024 {
            c.s.write_all(&batch).expect("write");
            batch.clear();
        }
    }
    c.s.write_all(&batch).expect("write");
    check.join().expect("all echoes in order");
    assert!(
        shared.adopts.load(Ordering::SeqCst) >= 90,
        "moved {} times",
        shared.adopts.load(Ordering::SeqCst)
    );
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn handshake_and_idle_timeouts() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        heartbeat: Duration::from_millis(150),
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (engine, addr, _) = start(1, limits, None);
    let mut silent = Client::raw(addr);
    let t = Instant::now();
    silent.expect_error(ErrorCode::HANDSHAKE_TIMEOUT);
    assert!(t.elapsed() < Duration::from_secs(3));

    let mut idle = Client::connect(addr);
    // Do not answer Pings: the engine pings, then gives up.
    let mut pings = 0;
    loop {
        let f = idle.recv_raw().expect("a frame before EOF");
        match f.decode().expect("decodes") {
            Message::Ping(_) => pings += 1,
            Message::ErrorFrame(e) => {
                assert_eq!(e.code, ErrorCode::IDLE_TIMEOUT);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 1, "pinged before closing");
    assert!(idle.recv_raw().is_none());
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn a_full_loop_answers_server_full_promptly() {
    let limits = Limits {
        max_connections_per_loop: 2,
        ..Limits::default()
    };
    let (engine, addr, _) = start(1, limits, None);
    let _a = Client::connect(addr);
    let _b = Client::connect(addr);
    let mut c = Client::raw(addr);
    let t = Instant::now();
    c.expect_error(ErrorCode::SERVER_FULL);
    assert!(t.elapsed() < Duration::from_secs(2));
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn outbound_connections_handshake_and_failed_connects_are_reported() {
    // Server A; engine B connects out to A in on_start via mail.
    let (a, a_addr, a_shared) = start(1, Limits::default(), None);
    struct Dialer {
        target: SocketAddr,
        dead: SocketAddr,
        shared: Arc<Shared>,
    }
    impl Handler for Dialer {
        type Mail = ();
        fn on_start(&mut self, cx: &mut Ctx<()>) {
            cx.connect(self.target).expect("connect");
            cx.connect(self.dead).expect("connect starts");
        }
        fn on_welcome(&mut self, cx: &mut Ctx<()>, conn: ConnId, _w: &elko_protocol::Welcome) {
            self.shared.welcomes.fetch_add(1, Ordering::SeqCst);
            cx.send_msg(
                conn,
                &AppMessage {
                    op: 1,
                    body: b"ping".to_vec(),
                },
            );
        }
        fn on_frame(&mut self, _cx: &mut Ctx<()>, _conn: ConnId, frame: Frame) {
            if let Ok(Message::AppMessage(m)) = frame.decode() {
                assert_eq!(m.body, b"ping");
                self.shared.adopts.fetch_add(1, Ordering::SeqCst); // "echo received"
            }
        }
        fn on_close(&mut self, _cx: &mut Ctx<()>, _conn: ConnId, reason: &CloseReason) {
            self.shared
                .closes
                .lock()
                .expect("lock")
                .push(reason.clone());
        }
    }
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let b = Engine::start(
        EngineConfig {
            loops: 1,
            ..EngineConfig::default()
        },
        None,
        move |_| Dialer {
            target: a_addr,
            dead,
            shared: s.clone(),
        },
    )
    .expect("dialer starts");
    wait_for(Duration::from_secs(5), "welcome and echo", || {
        shared.adopts.load(Ordering::SeqCst) == 1
    });
    assert_eq!(shared.welcomes.load(Ordering::SeqCst), 1);
    wait_for(Duration::from_secs(5), "the failed connect", || {
        shared
            .closes
            .lock()
            .expect("lock")
            .iter()
            .any(|r| matches!(r, CloseReason::ConnectFailed(_)))
    });
    let _ = a_shared;
    b.shutdown(Duration::from_secs(1));
    a.shutdown(Duration::from_secs(1));
}

#[test]
fn graceful_shutdown_flushes_what_is_queued() {
    let limits = Limits {
        out_hard: 64 << 20,
        out_soft: 32 << 20,
        ..Limits::default()
    };
    let (engine, addr, _) = start(1, limits, None);
    let mut c = Client::connect(addr);
    let n = 64;
    for i in 0..n {
        c.app(1, vec![i as u8; 60_000]);
    }
    // Wait until the server has read everything (its echoes are queued or sent).
    wait_for(Duration::from_secs(5), "all frames read", || {
        elko_engine::LoopStats::get(&engine.stats()[0].frames_in) >= n as u64 + 1
    });
    let stopper = std::thread::spawn(move || engine.shutdown(Duration::from_secs(5)));
    for i in 0..n {
        assert_eq!(c.expect_app().body, vec![i as u8; 60_000], "echo {i}");
    }
    match c.recv() {
        None => {}
        Some(Message::ErrorFrame(e)) => {
            assert_eq!(e.code, ErrorCode::SHUTTING_DOWN);
            assert!(c.recv().is_none());
        }
        other => panic!("expected EOF, got {other:?}"),
    }
    stopper.join().expect("shutdown");
}

#[test]
fn both_accept_modes_serve_everyone_and_single_spreads_evenly() {
    for mode in [AcceptMode::ReusePort, AcceptMode::Single] {
        let (engine, addr, _) = start_mode(2, Limits::default(), None, mode);
        let mut clients: Vec<Client> = (0..200).map(|_| Client::connect(addr)).collect();
        for c in clients.iter_mut() {
            c.app(1, b"x".to_vec());
            assert_eq!(c.expect_app().body, b"x");
        }
        let per_loop: Vec<u64> = engine
            .stats()
            .iter()
            .map(|s| elko_engine::LoopStats::get(&s.accepted))
            .collect();
        assert_eq!(per_loop.iter().sum::<u64>(), 200, "{mode:?}: {per_loop:?}");
        if mode == AcceptMode::Single {
            assert!(
                per_loop[0].abs_diff(per_loop[1]) <= 1,
                "round-robin: {per_loop:?}"
            );
        }
        eprintln!("{mode:?}: accepted per loop {per_loop:?}");
        engine.shutdown(Duration::from_secs(1));
    }
}
