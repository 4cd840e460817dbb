//! Hand-off between loops under traffic: a connection moves every K
//! messages while the client pipelines; nothing is lost, duplicated or
//! reordered, in either direction.

mod common;

use common::*;
use elko_engine::{CloseKind, Limits};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn start_moving(
    every: u64,
    limits: Limits,
) -> (elko_engine::Engine<Mail>, SocketAddr, std::sync::Arc<Probe>) {
    start_app(
        config(2, limits),
        AppOptions {
            handoff_every: Some(every),
        },
    )
}

/// Pipeline `n` OP_SEQ messages (written in chunks of random size, so
/// frames straddle reads and moves) while another thread checks every echo.
/// The reader waits `reader_delay` first, so echoes pile up in the engine
/// and travel with the connection.
fn pipelined_session(addr: SocketAddr, seed: u64, n: u64, pad: usize, reader_delay: Duration) {
    let mut c = Client::connect(addr);
    let mut reader = c.reader();
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| app_frame(OP_SEQ, &seq_body(i, pad)))
        .collect();
    let stream = frames.concat();
    let writer = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut at = 0;
        while at < stream.len() {
            let k = rng.gen_range(1..=8192).min(stream.len() - at);
            c.write_raw(&stream[at..at + k]);
            at += k;
        }
        c
    });
    std::thread::sleep(reader_delay);
    for (i, f) in frames.iter().enumerate() {
        reader.expect_wire(f, &format!("client {seed}: echo {i}"));
    }
    let mut c = join_within(writer, Duration::from_secs(20), "writer");
    // Exactly once: nothing after the last echo.
    c.expect_nothing_pending();
}

#[test]
fn a_connection_moved_every_50_messages_loses_and_reorders_nothing() {
    let (engine, addr, probe) = start_moving(50, Limits::default());
    let n = 5000;
    pipelined_session(addr, 1, n, 0, Duration::ZERO);
    // Every 50th message moved it: 100 moves, alternating between the loops.
    wait_for(Duration::from_secs(2), "the last adopt", || {
        probe.adopts_total() == 100
    });
    let per_loop: Vec<usize> = probe.adopts[..2]
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    assert_eq!(per_loop, [50, 50]);
    probe.assert_no_violations();
    assert_eq!(closed(&engine, CloseKind::MailboxFull), 0);
    stop(engine);
}

#[test]
fn several_clients_moving_with_echoes_queued_at_every_move() {
    let limits = Limits {
        out_soft: 32 << 20,
        out_hard: 64 << 20,
        ..Limits::default()
    };
    let (engine, addr, probe) = start_moving(37, limits);
    // 9 MB of echoes per client: more than the kernel buffers hold while
    // the reader sleeps, so the rest waits in the engine's queue.
    let n = 1500;
    let clients: Vec<_> = (0..4u64)
        .map(|seed| {
            std::thread::spawn(move || {
                pipelined_session(addr, seed, n, 6000, Duration::from_millis(300))
            })
        })
        .collect();
    for (i, t) in clients.into_iter().enumerate() {
        join_within(t, Duration::from_secs(25), &format!("client {i}"));
    }
    let moves = 4 * (n / 37) as usize;
    wait_for(Duration::from_secs(2), "every adopt", || {
        probe.adopts_total() == moves
    });
    let max_queued = probe.max_queued.load(Ordering::SeqCst);
    eprintln!("largest outbound queue: {max_queued} bytes");
    assert!(
        max_queued > 1 << 20,
        "echoes never piled up ({max_queued} bytes): no move carried a queue"
    );
    probe.assert_no_violations();
    stop(engine);
}

#[test]
fn a_connection_moved_after_every_message_with_byte_sized_writes() {
    // Every message moves it, and frames arrive a few bytes at a time: the
    // decoder's partial frame travels too.
    let (engine, addr, probe) = start_moving(1, Limits::default());
    let mut c = Client::connect(addr);
    let frames: Vec<Vec<u8>> = (0..200u64)
        .map(|i| app_frame(OP_SEQ, &seq_body(i, (i % 7) as usize)))
        .collect();
    let mut rng = StdRng::seed_from_u64(5);
    let stream = frames.concat();
    let mut at = 0;
    while at < stream.len() {
        let k = rng.gen_range(1..=5).min(stream.len() - at);
        c.write_raw(&stream[at..at + k]);
        at += k;
        if rng.gen_bool(0.1) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    for (i, f) in frames.iter().enumerate() {
        c.expect_wire(f, &format!("echo {i}"));
    }
    wait_for(Duration::from_secs(2), "every adopt", || {
        probe.adopts_total() == 200
    });
    probe.assert_no_violations();
    stop(engine);
}

#[test]
fn a_half_close_during_moves_is_not_lost() {
    // The FIN arrives while the connection is moving (or just moved): the
    // adopting loop must still see it, answer what was sent and close.
    let (engine, addr, probe) = start_moving(10, Limits::default());
    for round in 0..20u64 {
        let mut c = Client::connect(addr);
        c.set_read_timeout(Duration::from_secs(3));
        let frames: Vec<Vec<u8>> = (0..100u64)
            .map(|i| app_frame(OP_SEQ, &seq_body(i, round as usize)))
            .collect();
        c.write_raw(&frames.concat());
        c.shutdown_write();
        for (i, f) in frames.iter().enumerate() {
            c.expect_wire(f, &format!("round {round}: echo {i}"));
        }
        c.expect_eof();
    }
    wait_for(Duration::from_secs(2), "every close reaped", || {
        open_connections(&engine) == 0
    });
    probe.assert_no_violations();
    stop(engine);
}
