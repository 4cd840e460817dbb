//! Bad peers: each gets the ErrorFrame naming what it did wrong, then a clean
//! close, and no other connection notices.

mod common;

use common::*;
use elko_engine::{CloseKind, CloseReason, Limits};
use elko_protocol::{ErrorCode, ErrorFrame, Hello, MessageType, Ping, Say, Welcome};
use std::net::SocketAddr;
use std::time::Duration;

/// What the offender must see.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This ErrorFrame, then EOF.
    Error(ErrorCode),
    /// EOF without an ErrorFrame.
    SilentClose,
}

/// One way to misbehave.
struct Case {
    name: &'static str,
    /// Complete the handshake before sending `bytes`.
    established: bool,
    bytes: fn() -> Vec<u8>,
    expect: Expect,
    /// The engine's close counter this case must bump.
    kind: CloseKind,
}

fn welcome() -> Welcome {
    Welcome {
        version: 1,
        server_id: "client?".into(),
        limits: elko_protocol::Limits {
            max_frame: 1,
            max_id_len: 1,
            max_text_len: 1,
            heartbeat_ms: 1,
            idle_timeout_ms: 1,
        },
        challenge: [0; 16],
    }
}

const CASES: &[Case] = &[
    Case {
        name: "bad magic",
        established: false,
        bytes: || {
            frame_bytes(&Hello {
                magic: 0x1234_5678,
                ..hello()
            })
        },
        expect: Expect::Error(ErrorCode::BAD_MAGIC),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "versions above ours",
        established: false,
        bytes: || {
            frame_bytes(&Hello {
                min_version: 7,
                max_version: 9,
                ..hello()
            })
        },
        expect: Expect::Error(ErrorCode::UNSUPPORTED_VERSION),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "versions below ours",
        established: false,
        bytes: || {
            frame_bytes(&Hello {
                min_version: 0,
                max_version: 0,
                ..hello()
            })
        },
        expect: Expect::Error(ErrorCode::UNSUPPORTED_VERSION),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "empty version range",
        established: false,
        bytes: || {
            frame_bytes(&Hello {
                min_version: 1,
                max_version: 0,
                ..hello()
            })
        },
        expect: Expect::Error(ErrorCode::UNSUPPORTED_VERSION),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "AppMessage before Hello",
        established: false,
        bytes: || app_frame(OP_ECHO, b"hi"),
        expect: Expect::Error(ErrorCode::UNEXPECTED_MESSAGE),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "Ping before Hello",
        established: false,
        bytes: || frame_bytes(&Ping { nonce: 1 }),
        expect: Expect::Error(ErrorCode::UNEXPECTED_MESSAGE),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "Welcome from the connecting side",
        established: false,
        bytes: || frame_bytes(&welcome()),
        expect: Expect::Error(ErrorCode::UNEXPECTED_MESSAGE),
        kind: CloseKind::Protocol,
    },
    Case {
        // An unknown type byte first means "not speaking Elko at all".
        name: "unknown type before Hello",
        established: false,
        bytes: || raw_frame(0xEE, b"hello?"),
        expect: Expect::Error(ErrorCode::BAD_MAGIC),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "Hello over the 4 KiB pre-handshake limit",
        established: false,
        bytes: || {
            frame_bytes(&Hello {
                client_name: "x".repeat(5000),
                ..hello()
            })
        },
        expect: Expect::Error(ErrorCode::FRAME_TOO_LARGE),
        kind: CloseKind::Frame,
    },
    Case {
        name: "AppMessage over the 4 KiB pre-handshake limit",
        established: false,
        bytes: || app_frame(OP_ECHO, &[0; 5000]),
        expect: Expect::Error(ErrorCode::FRAME_TOO_LARGE),
        kind: CloseKind::Frame,
    },
    Case {
        // "GET " read as a little-endian length is 542 MB.
        name: "an HTTP request",
        established: false,
        bytes: || b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n".to_vec(),
        expect: Expect::Error(ErrorCode::FRAME_TOO_LARGE),
        kind: CloseKind::Frame,
    },
    Case {
        name: "a TLS ClientHello",
        established: false,
        bytes: || {
            let mut v = vec![
                0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
            ];
            v.extend([0xAB; 64]);
            v
        },
        expect: Expect::Error(ErrorCode::FRAME_TOO_LARGE),
        kind: CloseKind::Frame,
    },
    Case {
        name: "a zero-length frame",
        established: false,
        bytes: || vec![0, 0, 0, 0, 1, 2, 3],
        expect: Expect::Error(ErrorCode::MALFORMED),
        kind: CloseKind::Frame,
    },
    Case {
        name: "a Hello body that does not decode",
        established: false,
        bytes: || raw_frame(MessageType::Hello as u8, &[0xff, 0xff, 0xff]),
        expect: Expect::Error(ErrorCode::MALFORMED),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "a Hello with trailing bytes",
        established: false,
        bytes: || {
            let mut f = frame_bytes(&hello());
            f.push(0);
            let len = u32::from_le_bytes([f[0], f[1], f[2], f[3]]) + 1;
            f[..4].copy_from_slice(&len.to_le_bytes());
            f
        },
        expect: Expect::Error(ErrorCode::MALFORMED),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "an ErrorFrame instead of Hello",
        established: false,
        bytes: || {
            frame_bytes(&ErrorFrame {
                code: ErrorCode::INTERNAL,
                message: "goodbye".into(),
            })
        },
        expect: Expect::SilentClose,
        kind: CloseKind::PeerError,
    },
    Case {
        name: "a frame over 64 KiB after the handshake",
        established: true,
        bytes: || app_frame(OP_ECHO, &[0; 70_000]),
        expect: Expect::Error(ErrorCode::FRAME_TOO_LARGE),
        kind: CloseKind::Frame,
    },
    Case {
        name: "an unknown type byte after the handshake",
        established: true,
        bytes: || raw_frame(0x7f, &[]),
        expect: Expect::Error(ErrorCode::UNKNOWN_MESSAGE_TYPE),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "an AppMessage body that does not decode",
        established: true,
        bytes: || raw_frame(MessageType::AppMessage as u8, &[1, 0xfd]),
        expect: Expect::Error(ErrorCode::MALFORMED),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "a second Hello",
        established: true,
        bytes: || frame_bytes(&hello()),
        expect: Expect::Error(ErrorCode::UNEXPECTED_MESSAGE),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "a Welcome after the handshake",
        established: true,
        bytes: || frame_bytes(&welcome()),
        expect: Expect::Error(ErrorCode::UNEXPECTED_MESSAGE),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "a message of another link (Say)",
        established: true,
        bytes: || {
            frame_bytes(&Say {
                client_seq: 1,
                sent_at_us: 0,
                text: "hi".into(),
            })
        },
        expect: Expect::Error(ErrorCode::UNEXPECTED_MESSAGE),
        kind: CloseKind::Protocol,
    },
    Case {
        name: "a zero-length frame after the handshake",
        established: true,
        bytes: || vec![0, 0, 0, 0],
        expect: Expect::Error(ErrorCode::MALFORMED),
        kind: CloseKind::Frame,
    },
];

/// Run one offender against the engine at `addr`.
fn offend(addr: SocketAddr, case: &Case) {
    let mut c = if case.established {
        Client::connect(addr)
    } else {
        Client::raw(addr)
    };
    c.write_raw(&(case.bytes)());
    match case.expect {
        Expect::Error(code) => {
            let e = c.expect_error(code);
            assert!(
                !e.message.is_empty(),
                "{}: the ErrorFrame explains",
                case.name
            );
            c.expect_eof();
        }
        Expect::SilentClose => c.expect_eof(),
    }
}

/// One engine, two good clients; the offender is closed with its code, the
/// close is counted, and the good clients are still served afterwards.
fn check(name: &str) {
    let case = CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name:?}"));
    let (engine, addr, probe) = start(1, Limits::default());
    let mut good: Vec<Client> = (0..2).map(|_| Client::connect(addr)).collect();
    offend(addr, case);
    wait_for(Duration::from_secs(2), "the close to be counted", || {
        closed(&engine, case.kind) == 1 && probe.closes().len() == 1
    });
    for (i, g) in good.iter_mut().enumerate() {
        g.ping_echo(&format!("{} / good client {i}", case.name));
    }
    assert_eq!(open_connections(&engine), 2, "only the offender was closed");
    if case.established {
        let closes = probe.closes();
        assert_eq!(closes.len(), 1, "{closes:?}");
        if let Expect::Error(code) = case.expect {
            assert_eq!(closes[0].2.wire_code(), Some(code), "{closes:?}");
        }
    }
    stop(engine);
}

#[test]
fn bad_magic() {
    check("bad magic");
}

#[test]
fn unsupported_versions() {
    check("versions above ours");
    check("versions below ours");
    check("empty version range");
}

#[test]
fn first_frame_not_hello() {
    check("AppMessage before Hello");
    check("Ping before Hello");
    check("Welcome from the connecting side");
    check("unknown type before Hello");
}

#[test]
fn pre_handshake_frames_over_4_kib() {
    check("Hello over the 4 KiB pre-handshake limit");
    check("AppMessage over the 4 KiB pre-handshake limit");
}

#[test]
fn garbage_bytes() {
    check("an HTTP request");
    check("a TLS ClientHello");
    check("a zero-length frame");
    check("a Hello body that does not decode");
    check("a Hello with trailing bytes");
}

#[test]
fn a_peer_error_frame_closes_without_an_answer() {
    check("an ErrorFrame instead of Hello");
}

#[test]
fn oversize_frame_after_the_handshake() {
    check("a frame over 64 KiB after the handshake");
}

#[test]
fn unknown_type_after_the_handshake() {
    check("an unknown type byte after the handshake");
}

#[test]
fn bad_frames_after_the_handshake() {
    check("an AppMessage body that does not decode");
    check("a second Hello");
    check("a Welcome after the handshake");
    check("a message of another link (Say)");
    check("a zero-length frame after the handshake");
}

#[test]
fn a_hello_of_exactly_4_kib_is_accepted() {
    let (engine, addr, _) = start(1, Limits::default());
    let mut name_len = 4096;
    let frame = loop {
        let f = frame_bytes(&Hello {
            client_name: "n".repeat(name_len),
            ..hello()
        });
        if f.len() - 4 <= 4096 {
            break f;
        }
        name_len -= 1;
    };
    assert_eq!(frame.len() - 4, 4096, "the Hello is exactly at the limit");
    let mut c = Client::raw(addr);
    c.write_raw(&frame);
    match c.recv() {
        Ok(elko_protocol::Message::Welcome(w)) => assert_eq!(w.version, 1),
        other => panic!("expected Welcome, got {other:?}"),
    }
    c.ping_echo("at the limit");
    stop(engine);
}

#[test]
fn every_offender_at_once_leaves_the_good_clients_untouched() {
    // Two loops, good clients on both, every offender three times from
    // concurrent threads while the good clients keep echoing.
    let (engine, addr, probe) = start(2, Limits::default());
    let mut good: Vec<Client> = (0..6).map(|_| Client::connect(addr)).collect();
    let offenders: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                for case in CASES {
                    offend(addr, case);
                }
            })
        })
        .collect();
    for round in 0..20 {
        for (i, g) in good.iter_mut().enumerate() {
            g.ping_echo(&format!("round {round} client {i}"));
        }
    }
    for t in offenders {
        join_within(t, Duration::from_secs(20), "offenders");
    }
    let n = 3 * CASES.len() as u64;
    wait_for(Duration::from_secs(2), "every offender closed", || {
        open_connections(&engine) == good.len() as u64
    });
    let counted: u64 = [CloseKind::Protocol, CloseKind::Frame, CloseKind::PeerError]
        .iter()
        .map(|&k| closed(&engine, k))
        .sum();
    assert_eq!(counted, n, "every offender's close counted once");
    for (i, g) in good.iter_mut().enumerate() {
        g.ping_echo(&format!("after all offenders, client {i}"));
    }
    assert!(probe
        .closes()
        .iter()
        .all(|(_, _, r)| !matches!(r, CloseReason::PeerClosed | CloseReason::Io(_))));
    stop(engine);
}
