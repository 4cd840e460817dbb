//! The descriptor budget: a server refuses new peers with SERVER_FULL while
//! it still has descriptors to spare (connections + held descriptors +
//! `FD_HEADROOM` reach the soft RLIMIT_NOFILE found at start), so it never
//! runs out: no EMFILE, no peer left hanging in the backlog, and a file it
//! opens at that moment (a checkpoint, say) still opens.
//!
//! Alone in its own test binary: it lowers this process's RLIMIT_NOFILE
//! before starting the engine.

mod common;

use common::*;
use elko_engine::{CloseKind, HeldFd, Limits, FD_HEADROOM};
use elko_protocol::ErrorCode;
use std::time::Duration;

#[test]
fn at_the_descriptor_budget_new_peers_are_refused_before_descriptors_run_out() {
    // Room for three connections beyond the headroom.
    set_nofile(&libc::rlimit {
        rlim_cur: (FD_HEADROOM + 3) as libc::rlim_t,
        ..nofile()
    });
    let (engine, addr, _probe) = start(2, Limits::default());
    let mut members: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    wait_for(Duration::from_secs(2), "three connections", || {
        open_connections(&engine) == 3
    });

    // The fourth is told, and nobody else notices.
    let mut late = Client::raw(addr);
    late.expect_error_then_eof(ErrorCode::SERVER_FULL);
    for (i, m) in members.iter_mut().enumerate() {
        m.ping_echo(&format!("member {i} while full"));
    }
    // Descriptors were to spare all along: the server never hit EMFILE,
    // and this process can still open files.
    let exhausted = total(&engine, |s| s.snapshot().fd_exhausted);
    assert_eq!(exhausted, 0, "the budget refused before the table filled");
    let _file = std::fs::File::open("/dev/null").expect("a file still opens at the budget");

    // One leaves: a newcomer fits again.
    drop(members.pop());
    wait_for(Duration::from_secs(2), "the leaver reaped", || {
        open_connections(&engine) == 2
    });
    let mut next = Client::connect(addr);
    next.ping_echo("newcomer");

    // A descriptor the application holds for long (a context's lock file)
    // takes a connection's place in the budget.
    drop(next);
    wait_for(Duration::from_secs(2), "the newcomer reaped", || {
        open_connections(&engine) == 2
    });
    let held = HeldFd::new();
    let mut refused = Client::raw(addr);
    refused.expect_error_then_eof(ErrorCode::SERVER_FULL);
    drop(held);
    let mut fits = Client::connect(addr);
    fits.ping_echo("after the held descriptor was closed");

    assert_eq!(closed(&engine, CloseKind::ServerFull), 2);
    stop(engine);
}
