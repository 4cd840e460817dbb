//! Hex test vectors in `protocol/testdata/`, for clients in other languages.
//!
//! Each vector is a pair of files named after the frame's type byte and
//! message name: `NN_Name.hex` holds one whole frame (header included) as
//! lowercase hex, whitespace ignored, and `NN_Name.txt` holds the decoded
//! message as Rust's `{:#?}` Debug output. Extra vectors for edge cases are
//! named `NN_Name-what.hex`.
//!
//! The vectors are generated from [`samples`] by an ignored test:
//!
//! ```text
//! ELKO_WRITE_TESTDATA=1 cargo test -p elko-protocol --test vectors -- --ignored write_testdata
//! ```
//!
//! and checked by the other tests here: every message type has a vector, each
//! decodes to exactly one frame whose Debug form matches its `.txt`, and
//! re-encodes to identical bytes. Changing a sample or the encoding without
//! regenerating fails the tests, which is the point: the files are the
//! contract with non-Rust clients.

use elko_protocol::*;
use std::path::{Path, PathBuf};

/// The challenge of the Welcome vector.
const CHALLENGE: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// The Register proof for the Register vector:
/// HMAC-SHA256(b"elko-test-secret", "elko-register-v1" || CHALLENGE ||
/// u16 LE len("contextd-1") || "contextd-1" || u64 LE 1_732_000_000_000),
/// as `elko_cluster::auth::register_proof` computes it (checked against it
/// when the vector was made; this crate has no HMAC dependency).
/// `docs/examples/elko_client.py --selftest` recomputes it.
const REGISTER_AUTH: [u8; 32] = [
    0x9a, 0x0d, 0xf8, 0x1c, 0x38, 0x04, 0x29, 0x98, 0x71, 0x0f, 0x4c, 0xaa, 0x8a, 0x3d, 0x2e, 0x81,
    0x7f, 0xb6, 0x39, 0x76, 0x29, 0x52, 0xe5, 0x48, 0x5a, 0x35, 0xec, 0x4f, 0x68, 0x7e, 0xb7, 0xac,
];

/// An opaque reservation token as a director might issue it.
fn token() -> Vec<u8> {
    (0u8..24)
        .map(|i| i.wrapping_mul(37).wrapping_add(0xa5))
        .collect()
}

/// The vectors: `(file stem, message)`. One per message type (stem
/// `NN_Name`), plus edge cases (`NN_Name-what`). Values sit on varint
/// boundaries (250/251, 2^16, 2^32, u64::MAX), use multi-byte UTF-8, empty and
/// non-empty vectors, `None` and `Some`, and codes this version does not know.
fn samples() -> Vec<(String, Message)> {
    let ctx = || "room/42".to_string();
    let plain: Vec<Message> = vec![
        Hello {
            magic: MAGIC,
            min_version: 1,
            max_version: 250,
            client_name: "elko-py/0.1 café".into(),
        }
        .into(),
        Welcome {
            version: 1,
            server_id: "director-1".into(),
            limits: Limits {
                max_frame: DEFAULT_MAX_FRAME,
                max_id_len: DEFAULT_MAX_ID_LEN,
                max_text_len: 16 * 1024,
                heartbeat_ms: 15_000,
                idle_timeout_ms: 60_000,
            },
            challenge: CHALLENGE,
        }
        .into(),
        ErrorFrame {
            code: ErrorCode::SERVER_FULL,
            message: "server full: 10000 connections".into(),
        }
        .into(),
        Ping { nonce: 1 << 32 }.into(),
        Pong {
            nonce: u64::from(u32::MAX),
        }
        .into(),
        EnterContext {
            request_id: 7,
            user: "alice".into(),
            context: ctx(),
        }
        .into(),
        EnterWhereUser {
            request_id: 65_535,
            user: "bob".into(),
            target_user: "alice".into(),
        }
        .into(),
        Redirect {
            request_id: 7,
            context: ctx(),
            contextd_addr: "127.0.0.1:9001".into(),
            token: token(),
            expires_in_ms: 30_000,
        }
        .into(),
        Denied {
            request_id: 65_536,
            code: ErrorCode::NO_CAPACITY,
            message: "no context server is available".into(),
        }
        .into(),
        Enter {
            context: ctx(),
            user: "alice".into(),
            token: token(),
        }
        .into(),
        Snapshot {
            context: ctx(),
            app: "chat".into(),
            members: vec!["bob".into(), "日本語".into(), "alice".into()],
            history: vec![
                HistoryEntry {
                    context_seq: 250,
                    from: "bob".into(),
                    text: "hi".into(),
                    at_ms: 1_732_000_000_000,
                },
                HistoryEntry {
                    context_seq: 251,
                    from: "日本語".into(),
                    text: "héllo 🎉".into(),
                    at_ms: 1_732_000_001_500,
                },
            ],
            state: Vec::new(),
        }
        .into(),
        Say {
            client_seq: 1,
            sent_at_us: 1_732_000_002_000_123,
            text: "hello, world ☃".into(),
        }
        .into(),
        Said {
            context_seq: 252,
            from: "alice".into(),
            client_seq: 1,
            sent_at_us: 1_732_000_002_000_123,
            text: "hello, world ☃".into(),
        }
        .into(),
        Joined {
            user: "carol".into(),
        }
        .into(),
        Left { user: "bob".into() }.into(),
        Exit {}.into(),
        ReEnter {
            reason: ReEnterReason::DRAIN,
            message: "draining for maintenance".into(),
        }
        .into(),
        AppMessage {
            op: 251,
            body: vec![0, 1, 250, 251, 255],
        }
        .into(),
        Register {
            provider_id: "contextd-1".into(),
            epoch: 1_732_000_000_000,
            client_addr: "10.0.0.5:9001".into(),
            workers: 2,
            capacity: 0,
            auth: REGISTER_AUTH,
        }
        .into(),
        Registered {
            director_id: "director-1".into(),
        }
        .into(),
        LoadReport {
            seq: 300,
            loops: vec![
                LoopLoad {
                    connections: 10_000,
                    contexts: 250,
                    users: 251,
                    busy_permille: 1000,
                },
                LoopLoad {
                    connections: 0,
                    contexts: 0,
                    users: 0,
                    busy_permille: 0,
                },
            ],
        }
        .into(),
        Activate { context: ctx() }.into(),
        ContextOpened { context: ctx() }.into(),
        ActivateFailed {
            context: ctx(),
            code: ErrorCode::ALREADY_ACTIVE,
            holder: Some("contextd-2".into()),
        }
        .into(),
        ContextClosed { context: ctx() }.into(),
        UserEntered {
            context: ctx(),
            user: "alice".into(),
        }
        .into(),
        UserExited {
            context: ctx(),
            user: "alice".into(),
        }
        .into(),
        ExpectClient {
            context: ctx(),
            user: "alice".into(),
            token_id: u64::MAX,
            expires_at_ms: 1_732_000_030_000,
        }
        .into(),
        Drain {}.into(),
        ShuttingDown {}.into(),
    ];
    let mut out: Vec<(String, Message)> = plain.into_iter().map(|m| (stem(&m, ""), m)).collect();
    let edge: Vec<(&str, Message)> = vec![
        (
            "-unknown-code",
            ErrorFrame {
                code: ErrorCode(60_000),
                message: String::new(),
            }
            .into(),
        ),
        (
            "-unknown-reason",
            ReEnter {
                reason: ReEnterReason(999),
                message: "a reason from a newer server".into(),
            }
            .into(),
        ),
        (
            "-none",
            ActivateFailed {
                context: ctx(),
                code: ErrorCode::CHECKPOINT_FAILED,
                holder: None,
            }
            .into(),
        ),
        (
            "-topic",
            Snapshot {
                context: "lobby".into(),
                app: "chat".into(),
                members: vec!["alice".into()],
                history: Vec::new(),
                state: "Topic: ☕ & Rust".as_bytes().to_vec(),
            }
            .into(),
        ),
    ];
    out.extend(edge.into_iter().map(|(what, m)| (stem(&m, what), m)));
    out
}

fn stem(m: &Message, suffix: &str) -> String {
    let t = m.message_type();
    format!("{:02x}_{}{suffix}", t as u8, t.name())
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The whole frame as lowercase hex: the 5-byte header (length, type) on the
/// first line, then the body 32 bytes per line.
fn to_hex_lines(frame: &[u8]) -> String {
    let (head, body) = frame.split_at(FRAME_HEADER_LEN + 1);
    let mut s = hex::encode(head);
    s.push('\n');
    for chunk in body.chunks(32) {
        s.push_str(&hex::encode(chunk));
        s.push('\n');
    }
    s
}

fn parse_hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(digits).expect("vector file holds hex digits")
}

fn debug_text(m: &Message) -> String {
    format!("{m:#?}\n")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with ELKO_WRITE_TESTDATA=1",
            path.display()
        )
    })
}

/// Decode a vector's bytes as exactly one frame, under the pre-handshake
/// limit (every vector is small enough to be sent before the handshake).
fn decode_one(bytes: &[u8]) -> Message {
    let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_PREAUTH);
    d.extend(bytes);
    let frame = d
        .next_frame()
        .expect("valid frame")
        .expect("one complete frame");
    assert_eq!(d.buffered(), 0, "bytes after the frame");
    frame.decode().expect("body decodes")
}

#[test]
#[ignore = "writes protocol/testdata; run with ELKO_WRITE_TESTDATA=1"]
fn write_testdata() {
    if std::env::var_os("ELKO_WRITE_TESTDATA").is_none() {
        panic!("set ELKO_WRITE_TESTDATA=1 to (re)write protocol/testdata");
    }
    let dir = testdata();
    std::fs::create_dir_all(&dir).expect("create testdata");
    for (stem, m) in samples() {
        let bytes = m.to_bytes().expect("sample encodes");
        std::fs::write(dir.join(format!("{stem}.hex")), to_hex_lines(&bytes)).expect("write .hex");
        std::fs::write(dir.join(format!("{stem}.txt")), debug_text(&m)).expect("write .txt");
    }
}

#[test]
fn every_message_type_has_a_vector() {
    let dir = testdata();
    for &t in MessageType::ALL {
        let stem = format!("{:02x}_{}", t as u8, t.name());
        let hex_path = dir.join(format!("{stem}.hex"));
        let txt_path = dir.join(format!("{stem}.txt"));
        let bytes = parse_hex(&read(&hex_path));
        assert_eq!(bytes[4], t as u8, "{stem}: type byte");
        let m = decode_one(&bytes);
        assert_eq!(m.message_type(), t, "{stem}");
        assert_eq!(
            debug_text(&m),
            read(&txt_path),
            "{stem}: decoded form differs from .txt"
        );
        assert_eq!(
            m.to_bytes().expect("re-encodes")[..],
            bytes[..],
            "{stem}: re-encoding differs"
        );
    }
}

#[test]
fn every_vector_file_decodes_and_reencodes() {
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(testdata())
        .expect("protocol/testdata exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .collect();
    entries.sort();
    for hex_path in entries {
        let stem = hex_path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_string();
        let bytes = parse_hex(&read(&hex_path));
        let m = decode_one(&bytes);
        assert_eq!(
            stem[..2],
            format!("{:02x}", bytes[4]),
            "{stem}: file name vs type byte"
        );
        let name_part = stem[3..].split('-').next().expect("name");
        assert_eq!(
            name_part,
            m.message_type().name(),
            "{stem}: file name vs message"
        );
        let txt = read(&hex_path.with_extension("txt"));
        assert_eq!(
            debug_text(&m),
            txt,
            "{stem}: decoded form differs from .txt"
        );
        assert_eq!(
            m.to_bytes().expect("re-encodes")[..],
            bytes[..],
            "{stem}: re-encoding differs"
        );
        seen += 1;
    }
    assert_eq!(
        seen,
        samples().len(),
        "a vector file without a sample, or the reverse"
    );
}

#[test]
fn vectors_match_the_samples() {
    for (stem, m) in samples() {
        let bytes = parse_hex(&read(&testdata().join(format!("{stem}.hex"))));
        assert_eq!(
            bytes[..],
            m.to_bytes().expect("encodes")[..],
            "{stem}: sample changed or encoding changed; regenerate the vectors (see the module doc)"
        );
    }
}

#[test]
fn hex_files_are_lowercase() {
    for (stem, _) in samples() {
        let text = read(&testdata().join(format!("{stem}.hex")));
        assert!(
            text.chars()
                .all(|c| c.is_ascii_whitespace() || matches!(c, '0'..='9' | 'a'..='f')),
            "{stem}: not lowercase hex"
        );
    }
}

#[test]
fn samples_cover_every_type_once_plus_edges() {
    let stems: Vec<String> = samples().into_iter().map(|(s, _)| s).collect();
    for &t in MessageType::ALL {
        let plain = format!("{:02x}_{}", t as u8, t.name());
        assert_eq!(stems.iter().filter(|s| **s == plain).count(), 1, "{plain}");
    }
    let mut sorted = stems.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), stems.len(), "duplicate vector names");
}

/// The Python example client checks itself against these vectors (and runs
/// its client flow against a fake server on 127.0.0.1), so the example in the
/// docs cannot rot. Skipped when `python3` is not installed.
#[test]
fn python_example_client_selftest() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/elko_client.py");
    let out = match std::process::Command::new("python3")
        .arg(&script)
        .arg("--selftest")
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("python3 not found; skipping the Python client self-test");
            return;
        }
        Err(e) => panic!("cannot run python3: {e}"),
    };
    assert!(
        out.status.success(),
        "{} --selftest failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
