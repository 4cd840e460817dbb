//! Encode once, fan out by reference: one frame to a thousand connections
//! spread over two loops, every round to every client exactly once, in order.

mod common;

use common::*;
use elko_engine::{AcceptMode, CloseKind, EngineConfig, Limits, LoopStats};
use std::time::Duration;

const CLIENTS: usize = 1000;
const ROUNDS: u64 = 6;

#[test]
fn one_frame_fanned_out_to_a_thousand_connections_on_two_loops() {
    let fds = elko_engine::raise_fd_limit(4096).expect("raise RLIMIT_NOFILE");
    assert!(fds >= 2 * CLIENTS as u64 + 100, "only {fds} descriptors");
    // Single accept: loop 0 deals connections round-robin, so both loops
    // hold 500 and every broadcast crosses the mailbox.
    let cfg = EngineConfig {
        accept_mode: AcceptMode::Single,
        ..config(2, Limits::default())
    };
    let (engine, addr, probe) = start_app(cfg, AppOptions::default());
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::connect(addr)).collect();
    assert_eq!(open_connections(&engine), CLIENTS as u64);
    let per_loop: Vec<u64> = engine
        .stats()
        .iter()
        .map(|s| LoopStats::get(&s.connections))
        .collect();
    assert_eq!(per_loop, [500, 500]);

    for round in 0..ROUNDS {
        // Senders on both loops, small and large bodies.
        let from = (round as usize * 367) % CLIENTS;
        let pad = if round % 2 == 0 { 64 } else { 16 * 1024 };
        let frame = app_frame(OP_BROADCAST, &seq_body(round, pad));
        clients[from].write_raw(&frame);
        for (i, c) in clients.iter_mut().enumerate() {
            c.expect_wire(
                &frame,
                &format!("client {i}, round {round} (sent by {from})"),
            );
        }
    }
    // Exactly once: nothing more is waiting anywhere, and the engine queued
    // one Welcome plus one frame per round per client, no more.
    std::thread::sleep(Duration::from_millis(100));
    for c in clients.iter_mut() {
        c.expect_nothing_pending();
    }
    let frames_out = total(&engine, |s| LoopStats::get(&s.frames_out));
    assert_eq!(frames_out, CLIENTS as u64 * (1 + ROUNDS));
    assert_eq!(closed(&engine, CloseKind::SlowConsumer), 0);
    probe.assert_no_violations();
    drop(clients);
    wait_for(Duration::from_secs(5), "every close reaped", || {
        open_connections(&engine) == 0
    });
    assert_eq!(closed(&engine, CloseKind::PeerClosed), CLIENTS as u64);
    stop(engine);
}
