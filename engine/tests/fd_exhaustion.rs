//! Out of file descriptors: a server whose process cannot open one more
//! descriptor refuses the waiting peer with SERVER_FULL (instead of leaving
//! it hanging in the listen backlog, or spinning on an edge-triggered
//! listener), keeps serving the connections it has, and accepts again once
//! descriptors are free.
//!
//! Alone in its own test binary: it lowers this process's RLIMIT_NOFILE and
//! fills the descriptor table, which would break any test running beside it.

mod common;

use common::*;
use elko_engine::{CloseKind, Limits};
use elko_protocol::ErrorCode;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::fs::File;
use std::net::TcpStream;
use std::time::Duration;

/// A TCP socket made now (while descriptors are free), connected later.
fn unconnected() -> Socket {
    Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket")
}

fn connect(s: Socket, addr: std::net::SocketAddr) -> Client {
    s.connect_timeout(&SockAddr::from(addr), Duration::from_secs(5))
        .expect("connect (the kernel completes it from the listen backlog)");
    Client::from_stream(TcpStream::from(s))
}

#[test]
fn out_of_descriptors_the_waiting_peer_is_refused_and_the_server_recovers() {
    let (engine, addr, _probe) = start(1, Limits::default());
    let mut a = Client::connect(addr);
    a.ping_echo("before");

    // Sockets for the peers that arrive while the table is full.
    let refused = unconnected();
    let later = unconnected();

    // Lower the soft limit to a little above what is open, then fill the
    // table: from here on, neither the server nor this test can open a
    // descriptor.
    let saved = nofile();
    let open = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count() as u64;
    set_nofile(&libc::rlimit {
        rlim_cur: (open + 64).min(saved.rlim_cur),
        rlim_max: saved.rlim_max,
    });
    let mut filler = Vec::new();
    let full = loop {
        match File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) => break e,
        }
        assert!(filler.len() < 10_000, "the descriptor table never filled");
    };
    assert_eq!(full.raw_os_error(), Some(libc::EMFILE), "{full}");

    // The peer completes its handshake in the kernel; the server cannot
    // accept it into a descriptor of its own, so it spends its reserve
    // descriptor to tell the peer it is full.
    let mut r = connect(refused, addr);
    r.expect_error_then_eof(ErrorCode::SERVER_FULL);
    wait_for(Duration::from_secs(2), "the refusal counted", || {
        closed(&engine, CloseKind::ServerFull) == 1
    });
    let exhausted: u64 = engine
        .stats()
        .iter()
        .map(|s| s.snapshot().fd_exhausted)
        .sum();
    assert!(exhausted >= 1, "fd_exhausted = {exhausted}");

    // The connection it had is untouched.
    a.ping_echo("while full");

    // Descriptors free again: the next peer is served as usual.
    drop(filler);
    set_nofile(&saved);
    let mut c = connect(later, addr);
    c.handshake();
    c.ping_echo("after");
    a.ping_echo("after, a");
    assert_eq!(
        closed(&engine, CloseKind::ServerFull),
        1,
        "only the peer that came while the table was full was refused"
    );
    stop(engine);
}
