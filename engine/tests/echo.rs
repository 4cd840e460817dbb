//! Echo through real sockets: sizes, order, several loops and clients,
//! partial reads and writes, half-close.

mod common;

use common::*;
use elko_engine::{CloseKind, Limits};
use elko_protocol::{ErrorCode, DEFAULT_MAX_FRAME};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Body sizes for `n` messages: the varint edges, then seeded random sizes
/// from 1 byte to 60 KiB.
fn sizes(seed: u64, n: usize) -> Vec<usize> {
    let mut v = vec![0, 1, 2, 250, 251, 252, 4095, 4096, 65_535 - 16, 60 * 1024];
    let mut rng = StdRng::seed_from_u64(seed);
    while v.len() < n {
        // Mostly small, some large: like real traffic, and quick in debug builds.
        let len = if rng.gen_bool(0.8) {
            rng.gen_range(1..=512)
        } else {
            rng.gen_range(1..=60 * 1024)
        };
        v.push(len);
    }
    v
}

/// Pipeline `sizes.len()` echoes from one thread and check them, in order and
/// byte for byte, on another.
fn echo_session(addr: std::net::SocketAddr, seed: u64, sizes: &[usize]) {
    let mut c = Client::connect(addr);
    let mut reader = c.reader();
    let expected: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| app_frame(OP_ECHO, &pattern(seed * 1000 + i as u64, n)))
        .collect();
    let frames = expected.clone();
    let writer = std::thread::spawn(move || {
        for f in &frames {
            c.write_raw(f);
        }
        c
    });
    for (i, f) in expected.iter().enumerate() {
        reader.expect_wire(f, &format!("client {seed} echo {i} ({} bytes)", f.len()));
    }
    let c = join_within(writer, Duration::from_secs(10), "writer");
    drop(c);
}

#[test]
fn echo_returns_every_size_in_order_and_intact() {
    let (engine, addr, probe) = start(1, Limits::default());
    echo_session(addr, 1, &sizes(1, 200));
    probe.assert_no_violations();
    stop(engine);
}

#[test]
fn echo_with_two_loops_and_concurrent_clients() {
    let (engine, addr, probe) = start(2, Limits::default());
    let clients: Vec<_> = (0..8u64)
        .map(|seed| std::thread::spawn(move || echo_session(addr, seed + 10, &sizes(seed, 60))))
        .collect();
    for (i, t) in clients.into_iter().enumerate() {
        join_within(t, Duration::from_secs(20), &format!("client {i}"));
    }
    let per_loop: Vec<u64> = engine
        .stats()
        .iter()
        .map(|s| elko_engine::LoopStats::get(&s.accepted))
        .collect();
    assert_eq!(
        per_loop.iter().sum::<u64>(),
        8,
        "accepted per loop {per_loop:?}"
    );
    probe.assert_no_violations();
    stop(engine);
}

/// The largest AppMessage body whose frame length (type byte + body) is
/// exactly `max_frame`.
fn body_len_for_frame(max_frame: usize) -> usize {
    let mut n = max_frame;
    while app_frame(OP_ECHO, &vec![0; n]).len() - 4 > max_frame {
        n -= 1;
    }
    assert_eq!(app_frame(OP_ECHO, &vec![0; n]).len() - 4, max_frame);
    n
}

#[test]
fn a_frame_of_exactly_max_frame_passes_and_one_byte_more_does_not() {
    let (engine, addr, _) = start(1, Limits::default());
    let n = body_len_for_frame(DEFAULT_MAX_FRAME as usize);
    let mut c = Client::connect(addr);
    let body = pattern(7, n);
    c.app(OP_ECHO, &body);
    assert_eq!(c.expect_app().body, body);

    let mut c = Client::connect(addr);
    c.app(OP_ECHO, &pattern(8, n + 1));
    c.expect_error_then_eof(ErrorCode::FRAME_TOO_LARGE);
    wait_for(Duration::from_secs(2), "the close counted", || {
        closed(&engine, CloseKind::Frame) == 1
    });
    stop(engine);
}

#[test]
fn frames_written_one_byte_at_a_time_are_reassembled() {
    let (engine, addr, _) = start(1, Limits::default());
    let mut c = Client::raw(addr);
    let mut stream = frame_bytes(&hello());
    let bodies: Vec<Vec<u8>> = [0usize, 1, 300, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(i as u64, n))
        .collect();
    for b in &bodies {
        stream.extend(app_frame(OP_ECHO, b));
    }
    // Hello and four frames, one byte per write and per segment (NODELAY),
    // with pauses so the engine sees each byte in its own read.
    for b in &stream {
        c.s.write_all(std::slice::from_ref(b)).expect("write");
        c.s.flush().expect("flush");
        std::thread::sleep(Duration::from_micros(300));
    }
    match c.recv() {
        Ok(elko_protocol::Message::Welcome(_)) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    for b in &bodies {
        assert_eq!(&c.expect_app().body, b);
    }
    stop(engine);
}

#[test]
fn frames_split_at_random_points_are_reassembled() {
    let (engine, addr, _) = start(1, Limits::default());
    let mut c = Client::connect(addr);
    let mut reader = c.reader();
    let mut rng = StdRng::seed_from_u64(42);
    let frames: Vec<Vec<u8>> = (0..300u64)
        .map(|i| app_frame(OP_ECHO, &pattern(i, rng.gen_range(0..3000))))
        .collect();
    let stream: Vec<u8> = frames.concat();
    let writer = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(43);
        let mut at = 0;
        while at < stream.len() {
            let n = rng.gen_range(1..=700).min(stream.len() - at);
            c.write_raw(&stream[at..at + n]);
            at += n;
            if rng.gen_bool(0.05) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        c
    });
    for (i, f) in frames.iter().enumerate() {
        reader.expect_wire(f, &format!("echo {i}"));
    }
    join_within(writer, Duration::from_secs(10), "writer");
    stop(engine);
}

#[test]
fn eight_mib_of_echoes_reach_a_slow_reader_complete_and_in_order() {
    let limits = Limits {
        out_soft: 32 << 20,
        out_hard: 64 << 20,
        ..Limits::default()
    };
    let (engine, addr, probe) = start(1, limits);
    let mut c = Client::connect(addr);
    let mut reader = c.reader();
    let n = 128u64;
    let body_len = 64 * 1024 - 16;
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| app_frame(OP_ECHO, &pattern(i, body_len)))
        .collect();
    let to_send = frames.clone();
    // The writer pipelines all 8 MiB; the engine reads it all and queues the
    // echoes, far more than the sockets hold.
    let writer = std::thread::spawn(move || {
        for f in &to_send {
            c.write_raw(f);
        }
        c
    });
    // The reader takes small bites with pauses: the engine meets short
    // writes and must wait for WRITABLE, again and again.
    let mut read = 0usize;
    for (i, f) in frames.iter().enumerate() {
        let got = reader
            .recv_frame_chunked(1500)
            .unwrap_or_else(|end| panic!("stream ended ({end:?}) before echo {i}"));
        assert!(wire(&got) == *f, "echo {i} differs");
        read += f.len();
        if read >= 32 * 1024 {
            read = 0;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    join_within(writer, Duration::from_secs(10), "writer");
    let max_queued = probe.max_queued.load(Ordering::SeqCst);
    eprintln!("largest outbound queue: {max_queued} bytes");
    assert!(
        max_queued > 1 << 20,
        "the echoes never backed up ({max_queued} bytes queued at most): the test did not exercise short writes"
    );
    stop(engine);
}

#[test]
fn a_half_close_right_after_the_last_frame_is_noticed() {
    // The peer sends a frame and closes its side at once: data and FIN
    // usually arrive together. The engine must answer and then close, not
    // sit on the connection until the idle timeout (60 s by default).
    let (engine, addr, _) = start(1, Limits::default());
    for i in 0..30u8 {
        let mut c = Client::connect(addr);
        c.set_read_timeout(Duration::from_secs(3));
        let mut bytes = app_frame(OP_ECHO, &[i; 3]);
        bytes.extend(app_frame(OP_ECHO, &[i; 40]));
        c.write_raw(&bytes);
        c.shutdown_write();
        assert_eq!(c.expect_app().body, [i; 3]);
        assert_eq!(c.expect_app().body, [i; 40]);
        c.expect_eof();
    }
    wait_for(Duration::from_secs(2), "every close reaped", || {
        closed(&engine, CloseKind::PeerClosed) == 30
    });
    stop(engine);
}

#[test]
fn a_peer_that_closes_right_after_hello_is_reaped() {
    // Hello followed at once by FIN: Welcome is sent, then the connection closed.
    let (engine, addr, _) = start(1, Limits::default());
    for _ in 0..30 {
        let mut c = Client::raw(addr);
        c.set_read_timeout(Duration::from_secs(3));
        c.send(&hello());
        c.shutdown_write();
        match c.recv() {
            Ok(elko_protocol::Message::Welcome(_)) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        c.expect_eof();
    }
    wait_for(Duration::from_secs(2), "every close reaped", || {
        open_connections(&engine) == 0
    });
    stop(engine);
}

#[test]
fn twenty_thousand_tiny_frames_in_one_write_pass_the_frame_budget() {
    // Far more frames per read than `frame_budget` (256): the engine must
    // come back for the rest on later passes, without new readiness events.
    let (engine, addr, _) = start(1, Limits::default());
    let mut c = Client::connect(addr);
    let mut reader = c.reader();
    let n = 20_000u64;
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| app_frame(OP_ECHO, &i.to_le_bytes()[..(i % 4) as usize]))
        .collect();
    let blob = frames.concat();
    let writer = std::thread::spawn(move || {
        c.write_raw(&blob);
        c
    });
    for (i, f) in frames.iter().enumerate() {
        reader.expect_wire(f, &format!("echo {i}"));
    }
    let mut c = join_within(writer, Duration::from_secs(10), "writer");
    c.expect_nothing_pending();
    stop(engine);
}
