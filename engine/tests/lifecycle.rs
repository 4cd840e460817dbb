//! Outbound connections, graceful shutdown, and how accepted connections
//! are spread over the loops.

mod common;

use common::*;
use elko_engine::{
    AcceptMode, CloseKind, CloseReason, ConnId, Ctx, Engine, EngineConfig, Handler, Limits,
    LoopStats,
};
use elko_protocol::{AppMessage, ErrorCode, Frame, Message, Welcome};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- outbound connections ------------------------------------------------------------------

/// What the dialing application saw.
#[derive(Debug, Default)]
struct DialLog {
    welcomes: Mutex<Vec<String>>,
    echoes: Mutex<Vec<Vec<u8>>>,
    closes: Mutex<Vec<CloseReason>>,
    errors: Mutex<Vec<String>>,
}

/// Dials `targets` on start (and any address mailed to it later), sends one
/// AppMessage per Welcome and records the echo. Connections it accepted
/// are echoed, so it can dial itself.
struct Dialer {
    targets: Vec<SocketAddr>,
    log: Arc<DialLog>,
}

impl Dialer {
    fn dial(&self, cx: &mut Ctx<SocketAddr>, addr: SocketAddr) {
        if let Err(e) = cx.connect(addr) {
            self.log
                .errors
                .lock()
                .expect("lock")
                .push(format!("connect {addr}: {e}"));
        }
    }
}

impl Handler for Dialer {
    type Mail = SocketAddr;

    fn on_start(&mut self, cx: &mut Ctx<SocketAddr>) {
        for a in self.targets.clone() {
            self.dial(cx, a);
        }
    }

    fn on_mail(&mut self, cx: &mut Ctx<SocketAddr>, addr: SocketAddr) {
        self.dial(cx, addr);
    }

    fn on_welcome(&mut self, cx: &mut Ctx<SocketAddr>, conn: ConnId, w: &Welcome) {
        self.log
            .welcomes
            .lock()
            .expect("lock")
            .push(w.server_id.clone());
        cx.send_msg(
            conn,
            &AppMessage {
                op: OP_ECHO,
                body: b"hello from the dialer".to_vec(),
            },
        );
    }

    fn on_frame(&mut self, cx: &mut Ctx<SocketAddr>, conn: ConnId, frame: Frame) {
        let m = match frame.decode() {
            Ok(Message::AppMessage(m)) => m,
            other => {
                self.log
                    .errors
                    .lock()
                    .expect("lock")
                    .push(format!("unexpected {other:?}"));
                return;
            }
        };
        if cx.listener_of(conn).is_some() {
            cx.send_msg(conn, &m); // the accepting side echoes
        } else {
            self.log.echoes.lock().expect("lock").push(m.body);
        }
    }

    fn on_close(&mut self, _cx: &mut Ctx<SocketAddr>, _conn: ConnId, reason: &CloseReason) {
        self.log.closes.lock().expect("lock").push(reason.clone());
    }
}

fn start_dialer(
    cfg: EngineConfig,
    listen: Option<SocketAddr>,
    targets: Vec<SocketAddr>,
) -> (Engine<SocketAddr>, Arc<DialLog>) {
    let log = Arc::new(DialLog::default());
    let l = log.clone();
    let engine = Engine::start(cfg, listen, move |_| Dialer {
        targets: targets.clone(),
        log: l.clone(),
    })
    .expect("dialer starts");
    (engine, log)
}

/// An address where nothing listens.
fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[test]
fn an_outbound_connection_handshakes_and_exchanges_messages() {
    let (server, server_addr, server_probe) = start(1, Limits::default());
    let dead = dead_port();
    let (dialer, log) = start_dialer(config(1, Limits::default()), None, vec![server_addr, dead]);
    wait_for(
        Duration::from_secs(5),
        "the echo back to the dialer",
        || !log.echoes.lock().expect("lock").is_empty(),
    );
    assert_eq!(*log.welcomes.lock().expect("lock"), ["engine-test"]);
    assert_eq!(
        *log.echoes.lock().expect("lock"),
        [b"hello from the dialer".to_vec()]
    );
    assert_eq!(server_probe.hellos.load(Ordering::SeqCst), 1);
    wait_for(Duration::from_secs(5), "the failed connect", || {
        !log.closes.lock().expect("lock").is_empty()
    });
    assert_eq!(
        *log.closes.lock().expect("lock"),
        [CloseReason::ConnectFailed(
            std::io::ErrorKind::ConnectionRefused
        )]
    );
    assert_eq!(closed(&dialer, CloseKind::ConnectFailed), 1);
    assert!(log.errors.lock().expect("lock").is_empty());

    // The dialer's shutdown tells the server why it goes.
    stop(dialer);
    wait_for(
        Duration::from_secs(5),
        "the server to see the close",
        || !server_probe.closes().is_empty(),
    );
    let closes = server_probe.closes();
    assert!(
        matches!(
            &closes[0].2,
            CloseReason::PeerError { code, .. } if *code == ErrorCode::SHUTTING_DOWN
        ),
        "{closes:?}"
    );
    stop(server);
}

#[test]
fn an_engine_can_dial_its_own_listener() {
    let (engine, log) = start_dialer(config(1, Limits::default()), Some(localhost()), vec![]);
    let addr = engine.local_addr().expect("listening");
    for _ in 0..3 {
        engine.post(0, addr).expect("mail");
    }
    wait_for(Duration::from_secs(5), "three echoes", || {
        log.echoes.lock().expect("lock").len() == 3
    });
    assert_eq!(log.welcomes.lock().expect("lock").len(), 3);
    // Three outbound plus three accepted connections on the one loop.
    assert_eq!(open_connections(&engine), 6);
    assert!(log.errors.lock().expect("lock").is_empty());
    stop(engine);
}

#[test]
fn an_outbound_connection_without_welcome_times_out() {
    // A TCP listener that accepts and never answers.
    let mute = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mute_addr = mute.local_addr().expect("addr");
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let t = Instant::now();
    let (dialer, log) = start_dialer(config(1, limits), None, vec![mute_addr]);
    let (_held, _) = mute.accept().expect("accept");
    wait_for(Duration::from_secs(5), "the handshake timeout", || {
        !log.closes.lock().expect("lock").is_empty()
    });
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        *log.closes.lock().expect("lock"),
        [CloseReason::HandshakeTimeout]
    );
    stop(dialer);
}

// ---- graceful shutdown ---------------------------------------------------------------------

/// Queue `n` echoes of `len` bytes to a client that does not read yet;
/// returns the client and the frames it must receive.
fn queue_echoes(addr: SocketAddr, n: u64, len: usize) -> (Client, Vec<Vec<u8>>) {
    let mut c = Client::connect(addr);
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| app_frame(OP_ECHO, &pattern(i, len)))
        .collect();
    for f in &frames {
        c.write_raw(f);
    }
    (c, frames)
}

fn big_queues() -> Limits {
    Limits {
        out_soft: 64 << 20,
        out_hard: 128 << 20,
        ..Limits::default()
    }
}

#[test]
fn graceful_shutdown_flushes_everything_queued_then_closes() {
    let (engine, addr, probe) = start(1, big_queues());
    // 15 MB of echoes: a few MB fit in the kernel, the rest waits in the engine.
    let n = 256;
    let (mut c, frames) = queue_echoes(addr, n, 60_000);
    wait_for(Duration::from_secs(10), "every frame read", || {
        LoopStats::get(&engine.stats()[0].frames_in) == n + 1
    });
    let queued = probe.max_queued.load(Ordering::SeqCst);
    assert!(queued > 4 << 20, "only {queued} bytes were queued");
    let stopper = std::thread::spawn(move || {
        stop_with(engine, Duration::from_secs(2), Duration::from_secs(10))
    });
    for (i, f) in frames.iter().enumerate() {
        c.expect_wire(f, &format!("echo {i}"));
    }
    c.expect_error_then_eof(ErrorCode::SHUTTING_DOWN);
    join_within(stopper, Duration::from_secs(10), "shutdown");
}

#[test]
fn the_grace_period_bounds_a_shutdown_stuck_on_a_client_that_does_not_read() {
    let (engine, addr, probe) = start(1, big_queues());
    let n = 256;
    let (mut c, _) = queue_echoes(addr, n, 60_000);
    wait_for(Duration::from_secs(10), "every frame read", || {
        LoopStats::get(&engine.stats()[0].frames_in) == n + 1
    });
    let t = Instant::now();
    stop_with(engine, Duration::from_millis(300), Duration::from_secs(5));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "stopped before the grace: {took:?}"
    );
    // The client, reading at last, finds part of it and then the end.
    let mut got = 0;
    let end = loop {
        match c.recv_frame() {
            Ok(_) => got += 1,
            Err(end) => break end,
        }
    };
    assert!(
        got < n,
        "all {got} echoes arrived though the client never read in time"
    );
    eprintln!("shutdown took {took:?}; the client then read {got} of {n} echoes and {end:?}");
    assert!(probe
        .closes()
        .iter()
        .all(|(_, _, r)| *r == CloseReason::Shutdown));
}

#[test]
fn shutdown_closes_the_listener_and_tells_idle_clients() {
    let (engine, addr, _) = start(2, Limits::default());
    let mut idle: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    engine.begin_shutdown(Duration::from_secs(1));
    for c in idle.iter_mut() {
        c.expect_error_then_eof(ErrorCode::SHUTTING_DOWN);
    }
    wait_for(Duration::from_secs(5), "every loop to stop", || {
        engine.is_finished()
    });
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the listener is closed"
    );
    assert_eq!(closed(&engine, CloseKind::Shutdown), 4);
    engine.join();
}

#[test]
fn a_held_ping_does_not_hold_up_a_shutdown() {
    // Heartbeat 4 s: a due Ping may wait 1 s for company. Shut down while
    // one waits: the drain sends it at once and ends well before the hold.
    let limits = heartbeat_limits(Duration::from_secs(4), Duration::from_secs(60));
    let (engine, addr, _) = start(1, limits);
    let mut quiet = Client::connect(addr);
    // Let the Welcome's write be counted first.
    std::thread::sleep(Duration::from_millis(200));
    let stats = engine.stats()[0].clone();
    let frames = LoopStats::get(&stats.frames_out);
    let writes = LoopStats::get(&stats.writes);
    wait_for(Duration::from_secs(8), "a Ping queued", || {
        LoopStats::get(&stats.frames_out) > frames
    });
    assert_eq!(
        LoopStats::get(&stats.writes),
        writes,
        "the Ping is held, not written"
    );
    let t = Instant::now();
    engine.begin_shutdown(Duration::from_secs(10));
    quiet.expect_error_then_eof(ErrorCode::SHUTTING_DOWN);
    assert_eq!(quiet.pings, 1, "the held Ping came first");
    wait_for(Duration::from_secs(10), "the loop to stop", || {
        engine.is_finished()
    });
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "the drain waited {:?}, as if for the held Ping's hold (1 s)",
        t.elapsed()
    );
    engine.join();
}

// ---- accept modes ----------------------------------------------------------------------------

#[test]
fn both_accept_modes_serve_everyone_and_single_deals_evenly() {
    for mode in [AcceptMode::ReusePort, AcceptMode::Single] {
        let cfg = EngineConfig {
            accept_mode: mode,
            ..config(2, Limits::default())
        };
        let (engine, addr, _) = start_app(cfg, AppOptions::default());
        let mut clients: Vec<Client> = (0..200).map(|_| Client::connect(addr)).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.ping_echo(&format!("{mode:?} client {i}"));
        }
        let per_loop: Vec<u64> = engine
            .stats()
            .iter()
            .map(|s| LoopStats::get(&s.accepted))
            .collect();
        eprintln!("{mode:?}: accepted per loop {per_loop:?}");
        assert_eq!(per_loop.iter().sum::<u64>(), 200, "{mode:?}: {per_loop:?}");
        if mode == AcceptMode::Single {
            assert!(
                per_loop[0].abs_diff(per_loop[1]) <= 1,
                "round-robin deal: {per_loop:?}"
            );
        }
        stop(engine);
    }
}

// ---- scheduling ------------------------------------------------------------------------------

/// The scheduling policy of this process's threads whose name starts with `prefix`.
fn policies_of_threads_named(prefix: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let t = t.expect("task entry");
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if let (true, Ok(tid)) = (
            comm.starts_with(prefix),
            t.file_name().to_string_lossy().parse::<libc::pid_t>(),
        ) {
            // SAFETY: sched_getscheduler only reads the thread's policy.
            out.push(unsafe { libc::sched_getscheduler(tid) });
        }
    }
    out
}

#[test]
fn loops_run_as_sched_batch_only_when_asked() {
    let cfg = |id: &str, batch_sched| EngineConfig {
        server_id: id.into(),
        batch_sched,
        ..config(2, Limits::default())
    };
    let (batch, _) = start_dialer(cfg("batchsched", true), None, vec![]);
    let (plain, _) = start_dialer(cfg("plainsched", false), None, vec![]);
    // A thread takes its name when it starts running: wait for all four.
    wait_for(
        Duration::from_secs(5),
        "the loops to start and set their policy",
        || {
            policies_of_threads_named("batchsched-loop") == [libc::SCHED_BATCH; 2]
                && policies_of_threads_named("plainsched-loop").len() == 2
        },
    );
    assert_eq!(
        policies_of_threads_named("plainsched-loop"),
        [libc::SCHED_OTHER; 2]
    );
    stop(batch);
    stop(plain);
}
