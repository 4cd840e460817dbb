//! Limits with numbers: slow consumers, handshake and idle timeouts,
//! heartbeats, connections per loop.

mod common;

use common::*;
use elko_engine::{AcceptMode, CloseKind, CloseReason, Limits, LoopStats};
use elko_protocol::{ErrorCode, Message, MessageType, Pong};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- slow consumers ---------------------------------------------------------------------

#[test]
fn a_client_that_never_reads_is_closed_and_the_others_get_everything() {
    let limits = Limits {
        out_soft: 64 * 1024,
        out_soft_grace: Duration::from_millis(200),
        out_hard: 1 << 20,
        ..Limits::default()
    };
    let cfg = elko_engine::EngineConfig {
        accept_mode: AcceptMode::Single, // readers on both loops for sure
        ..config(2, limits)
    };
    let (engine, addr, probe) = start_app(cfg, AppOptions::default());
    const ROUNDS: u64 = 256;
    const PAD: usize = 32 * 1024;
    const WINDOW: u64 = 2;
    // 8 MiB per member: far more than the kernel buffers of the one that
    // never reads, so its queue passes the soft limit, then the hard one.
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..ROUNDS)
            .map(|r| app_frame(OP_BROADCAST, &seq_body(r, PAD)))
            .collect(),
    );
    let stuck = Client::connect(addr);
    // Rounds each reader has checked: the sender stays at most WINDOW
    // rounds ahead of the slowest, so a reader is never slow, however the
    // threads are scheduled; only the one that never reads falls behind.
    let progress: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let mut c = Client::connect(addr);
            let frames = frames.clone();
            let progress = progress.clone();
            move || {
                for (r, f) in frames.iter().enumerate() {
                    c.expect_wire(f, &format!("reader {i} round {r}"));
                    progress[i].store(r as u64 + 1, Ordering::SeqCst);
                }
                c
            }
        })
        .collect();
    let readers: Vec<_> = readers.into_iter().map(std::thread::spawn).collect();
    // The sender is a member too and reads its own copies.
    let mut sender = Client::connect(addr);
    for r in 0..ROUNDS {
        wait_for(Duration::from_secs(10), "the readers to keep up", || {
            progress
                .iter()
                .all(|p| p.load(Ordering::SeqCst) + WINDOW >= r)
        });
        sender.write_raw(&frames[r as usize]);
        if r >= WINDOW {
            let back = (r - WINDOW) as usize;
            sender.expect_wire(&frames[back], &format!("sender's own copy {back}"));
        }
    }
    for back in ROUNDS - WINDOW..ROUNDS {
        sender.expect_wire(&frames[back as usize], &format!("sender's own copy {back}"));
    }
    let mut readers: Vec<Client> = readers
        .into_iter()
        .enumerate()
        .map(|(i, t)| join_within(t, Duration::from_secs(20), &format!("reader {i}")))
        .collect();

    wait_for(Duration::from_secs(2), "the slow consumer's close", || {
        closed(&engine, CloseKind::SlowConsumer) == 1 && !probe.closes().is_empty()
    });
    let closes = probe.closes();
    assert_eq!(
        closes.len(),
        1,
        "only the non-reader was closed: {closes:?}"
    );
    assert!(
        matches!(closes[0].2, CloseReason::SlowConsumer { queued } if queued > 64 * 1024),
        "{closes:?}"
    );
    // The readers and the sender are still served.
    for (i, c) in readers.iter_mut().enumerate() {
        c.ping_echo(&format!("reader {i} after"));
    }
    sender.ping_echo("sender after");
    // The non-reader finds what the kernel held, then the end, well short
    // of everything that was sent.
    let mut stuck = stuck;
    let mut got = 0;
    let end = loop {
        match stuck.recv_frame() {
            Ok(_) => got += 1,
            Err(end) => break end,
        }
    };
    assert!(got < ROUNDS, "the non-reader got all {got} rounds");
    eprintln!("the non-reader found {got} of {ROUNDS} rounds, then {end:?}");
    probe.assert_no_violations();
    stop(engine);
}

// ---- timeouts -------------------------------------------------------------------------------

fn timeout_limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_millis(300),
        heartbeat: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    }
}

#[test]
fn a_silent_connection_gets_handshake_timeout() {
    let (engine, addr, _) = start(1, timeout_limits());
    let mut silent = Client::raw(addr);
    // A partial Hello does not count as a handshake either.
    let mut partial = Client::raw(addr);
    partial.write_raw(&frame_bytes(&hello())[..3]);
    // An established connection is not subject to the handshake timeout.
    let mut good = Client::connect(addr);
    let t = Instant::now();
    silent.expect_error_then_eof(ErrorCode::HANDSHAKE_TIMEOUT);
    partial.expect_error_then_eof(ErrorCode::HANDSHAKE_TIMEOUT);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed early, after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed late, after {waited:?}"
    );
    good.ping_echo("still here");
    wait_for(Duration::from_secs(2), "both closes counted", || {
        closed(&engine, CloseKind::HandshakeTimeout) == 2
    });
    stop(engine);
}

#[test]
fn an_idle_connection_is_pinged_then_closed() {
    let (engine, addr, _) = start(1, timeout_limits());
    let mut idle = Client::connect(addr);
    let t = Instant::now();
    let mut pings = 0;
    // Read everything, answering nothing.
    let e = loop {
        let f = idle
            .recv_frame()
            .unwrap_or_else(|end| panic!("ended ({end:?}) without IDLE_TIMEOUT"));
        match f.decode() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::ErrorFrame(e)) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    let waited = t.elapsed();
    assert_eq!(e.code, ErrorCode::IDLE_TIMEOUT, "{e:?}");
    idle.expect_eof();
    assert!(pings >= 2, "only {pings} Pings before the close");
    // With nothing else to send, each went alone.
    assert_eq!(
        total(&engine, |s| LoopStats::get(&s.pings_alone)),
        total(&engine, |s| LoopStats::get(&s.pings))
    );
    assert!(
        waited >= Duration::from_millis(450),
        "closed early, after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed late, after {waited:?}"
    );
    wait_for(Duration::from_secs(2), "the close counted", || {
        closed(&engine, CloseKind::IdleTimeout) == 1
    });
    stop(engine);
}

#[test]
fn answering_pings_keeps_a_quiet_connection_open() {
    let (engine, addr, _) = start(1, timeout_limits());
    let mut c = Client::connect(addr);
    c.set_read_timeout(Duration::from_secs(2));
    let t = Instant::now();
    let mut pings = 0;
    // Three idle timeouts of nothing but heartbeats.
    while t.elapsed() < Duration::from_millis(1500) {
        let f = c
            .recv_frame()
            .unwrap_or_else(|end| panic!("closed ({end:?}) although every Ping was answered"));
        assert_eq!(f.ty, MessageType::Ping as u8, "{:?}", f.decode());
        if let Ok(Message::Ping(p)) = f.decode() {
            c.send(&Pong { nonce: p.nonce });
            pings += 1;
        }
    }
    assert!(pings >= 5, "{pings} Pings in 1.5 s with a 100 ms heartbeat");
    c.ping_echo("alive");
    assert_eq!(closed(&engine, CloseKind::IdleTimeout), 0);
    stop(engine);
}

#[test]
fn a_listeners_ping_leaves_with_its_next_frame_not_in_a_write_of_its_own() {
    // Heartbeat 600 ms (a Ping may wait 150 ms for company) and a broadcast
    // every 20 ms or so: the silent listener is pinged about three times,
    // and every Ping shares a write with a broadcast copy.
    let limits = heartbeat_limits(Duration::from_millis(600), Duration::from_secs(5));
    let (engine, addr, _) = start(1, limits);
    let mut listener = Client::connect(addr);
    let mut talker = Client::connect(addr);
    std::thread::sleep(Duration::from_millis(50));
    let writes = || total(&engine, |s| LoopStats::get(&s.writes));
    let before = writes();
    let (rounds, mut pings) = (100u64, 0);
    for r in 0..rounds {
        let frame = app_frame(OP_BROADCAST, &seq_body(r, 8));
        talker.write_raw(&frame);
        talker.expect_wire(&frame, "the talker's own copy");
        loop {
            let f = listener.recv_frame().expect("the listener's copy");
            if f.ty == MessageType::Ping as u8 {
                pings += 1;
                continue;
            }
            assert_eq!(wire(&f), frame, "round {r}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let copies = 2 * rounds;
    let extra = writes() - before - copies;
    assert!(pings >= 2, "only {pings} Pings in {rounds} rounds");
    let sent = total(&engine, |s| LoopStats::get(&s.pings));
    let alone = total(&engine, |s| LoopStats::get(&s.pings_alone));
    assert!(
        sent >= pings as u64 && alone <= 1,
        "pings_total {sent}, pings_alone_total {alone}"
    );
    // The last Ping may have found no broadcast within its hold.
    assert!(
        extra <= 1,
        "{extra} writes besides the {copies} copies, for {pings} Pings"
    );
    stop(engine);
}

// ---- connections per loop ---------------------------------------------------------------------

#[test]
fn a_full_loop_answers_server_full_promptly() {
    let limits = Limits {
        max_connections_per_loop: 2,
        ..Limits::default()
    };
    let (engine, addr, _) = start(1, limits);
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);

    let t = Instant::now();
    let mut quiet = Client::raw(addr);
    quiet.expect_error_then_eof(ErrorCode::SERVER_FULL);
    // A real client sends Hello before it reads anything.
    let mut eager = Client::raw(addr);
    eager.send(&hello());
    eager.expect_error_then_eof(ErrorCode::SERVER_FULL);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    wait_for(Duration::from_secs(2), "both refusals counted", || {
        closed(&engine, CloseKind::ServerFull) == 2
    });

    a.ping_echo("a");
    b.ping_echo("b");
    // A freed place is taken again.
    drop(a);
    wait_for(
        Duration::from_secs(2),
        "the closed connection reaped",
        || open_connections(&engine) == 1,
    );
    let mut c = Client::connect(addr);
    c.ping_echo("c");
    b.ping_echo("b again");
    stop(engine);
}
