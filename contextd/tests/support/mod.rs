//! A local cluster of real processes for end-to-end tests, and a small
//! blocking client that speaks the protocol with nothing but std::net.
//!
//! Everything is bounded: every read has a timeout, every wait a deadline,
//! and children are killed when the test ends (pass or fail).

#![allow(dead_code)]

use bytes::BytesMut;
use elko_protocol::{
    encode_frame, Body, Enter, EnterContext, EnterWhereUser, ErrorCode, ErrorFrame, Frame,
    FrameDecoder, Hello, Message, Pong, Say, Snapshot, MAGIC, PROTOCOL_VERSION,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries (beside this test's deps/ dir).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("target profile dir").to_path_buf()
}

/// A workspace binary; built on first use if this test run has not built it
/// (`cargo test -p one-package` builds only that package's binaries).
pub fn bin(name: &str) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let p = bin_dir().join(name);
    if !p.exists() {
        BUILD.call_once(|| {
            let dir = bin_dir();
            let release = dir.file_name().is_some_and(|n| n == "release");
            let target = dir.parent().expect("target dir").to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--bins",
                "-p",
                "elko-director",
                "-p",
                "elko-contextd",
                "-p",
                "elko-client",
            ]);
            cmd.env("CARGO_TARGET_DIR", &target);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "building the workspace binaries failed");
        });
    }
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace`",
        p.display()
    );
    p
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub line: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_with_line(mut cmd: Command, prefix: &str) -> Proc {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("child printed its listening line");
    assert!(line.starts_with(prefix), "unexpected first line {line:?}");
    Proc { child, line }
}

fn try_field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

fn field(line: &str, key: &str) -> String {
    try_field(line, key).unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

pub struct Director {
    pub proc: Proc,
    pub clients: SocketAddr,
    pub providers: SocketAddr,
    /// The operator endpoint, when started with `--admin-listen`.
    pub admin: Option<SocketAddr>,
}

pub fn start_director(report_ms: u64) -> Director {
    start_director_with(report_ms, &[])
}

/// A director with extra flags (for example `--admin-listen 127.0.0.1:0`).
pub fn start_director_with(report_ms: u64, extra: &[&str]) -> Director {
    start_director_at("127.0.0.1:0", "127.0.0.1:0", report_ms, extra)
}

/// A director on given addresses (for example those of one that died).
pub fn start_director_at(
    clients: &str,
    providers: &str,
    report_ms: u64,
    extra: &[&str],
) -> Director {
    let mut cmd = Command::new(bin("elko-director"));
    cmd.args(["--client-listen", clients, "--provider-listen", providers])
        .args(["--report-interval-ms", &report_ms.to_string()])
        .args(extra)
        .env("RUST_LOG", "error");
    let proc = spawn_with_line(cmd, "elko-director listening");
    let clients = field(&proc.line, "clients").parse().expect("addr");
    let providers = field(&proc.line, "providers").parse().expect("addr");
    let admin = try_field(&proc.line, "admin").map(|a| a.parse().expect("admin addr"));
    Director {
        proc,
        clients,
        providers,
        admin,
    }
}

pub struct Contextd {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub id: String,
    /// The operator endpoint, when started with `--admin-listen`.
    pub admin: Option<SocketAddr>,
}

pub fn start_contextd(directors: &[&Director], dir: &Path, id: &str, extra: &[&str]) -> Contextd {
    spawn_contextd(contextd_command(directors, dir, id, extra), id)
}

/// The command that starts a context server (see [`start_contextd`]).
pub fn contextd_command(directors: &[&Director], dir: &Path, id: &str, extra: &[&str]) -> Command {
    let list: Vec<String> = directors.iter().map(|d| d.providers.to_string()).collect();
    let mut cmd = Command::new(bin("elko-contextd"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--provider-id",
        id,
    ])
    .args(["--director", &list.join(",")])
    .arg("--checkpoint-dir")
    .arg(dir)
    .args(["--report-interval-ms", "100"])
    .args(extra)
    .env("RUST_LOG", "error");
    cmd
}

/// Start `cmd` (from [`contextd_command`]) and wait for its listening line.
pub fn spawn_contextd(cmd: Command, id: &str) -> Contextd {
    let proc = spawn_with_line(cmd, "elko-contextd listening");
    let addr = field(&proc.line, "clients").parse().expect("addr");
    let admin = try_field(&proc.line, "admin").map(|a| a.parse().expect("admin addr"));
    Contextd {
        proc,
        addr,
        id: id.to_string(),
        admin,
    }
}

/// A fresh temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "elko-e2e-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_u64()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u128 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u64::from_le_bytes(b) as u128
}

/// Poll `f` until it returns Some, or panic after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking protocol connection.
pub struct Conn {
    pub stream: TcpStream,
    dec: FrameDecoder,
}

impl Conn {
    /// A TCP connection, no handshake yet.
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            dec: FrameDecoder::new(16 * 1024 * 1024),
        }
    }

    /// Connect and complete the handshake.
    pub fn connect(addr: SocketAddr) -> Conn {
        let mut c = Conn::open(addr);
        c.send(&Hello {
            magic: MAGIC,
            min_version: 1,
            max_version: PROTOCOL_VERSION,
            client_name: "e2e".into(),
        });
        match c.recv() {
            Some(Message::Welcome(_)) => c,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub fn send<B: Body>(&mut self, b: &B) {
        let mut buf = BytesMut::new();
        encode_frame(b, &mut buf).expect("encode");
        self.stream.write_all(&buf).expect("write");
    }

    /// Next message other than Ping (answered), or None at EOF.
    pub fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(f) = self.dec.next_frame().expect("framing") {
                let m = Frame::decode(&f).expect("decodes");
                if let Message::Ping(p) = m {
                    self.send(&Pong { nonce: p.nonce });
                    continue;
                }
                return Some(m);
            }
            let mut buf = [0u8; 65536];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.extend(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Expect an ErrorFrame with `code`, then EOF.
    pub fn expect_error(&mut self, code: ErrorCode) -> ErrorFrame {
        match self.recv() {
            Some(Message::ErrorFrame(e)) => {
                assert_eq!(e.code, code, "error frame {e:?}");
                assert!(self.recv().is_none(), "connection closed after the error");
                e
            }
            other => panic!("expected ErrorFrame {code:?}, got {other:?}"),
        }
    }
}

/// Ask a director to enter; returns (contextd addr, token).
pub fn ask(director: SocketAddr, user: &str, context: &str) -> (SocketAddr, Vec<u8>) {
    let mut d = Conn::connect(director);
    d.send(&EnterContext {
        request_id: 1,
        user: user.into(),
        context: context.into(),
    });
    match d.recv() {
        Some(Message::Redirect(r)) => (r.contextd_addr.parse().expect("addr"), r.token),
        other => panic!("expected Redirect, got {other:?}"),
    }
}

pub fn ask_where(director: SocketAddr, user: &str, target: &str) -> Message {
    let mut d = Conn::connect(director);
    d.send(&EnterWhereUser {
        request_id: 2,
        user: user.into(),
        target_user: target.into(),
    });
    d.recv().expect("answer")
}

/// A client inside a context.
pub struct Member {
    pub conn: Conn,
    pub snapshot: Snapshot,
    pub user: String,
    seq: u64,
}

impl Member {
    /// Enter through the director, following the redirect.
    pub fn enter(director: SocketAddr, user: &str, context: &str) -> Member {
        let (addr, token) = ask(director, user, context);
        Self::enter_at(addr, user, context, token)
            .unwrap_or_else(|m| panic!("enter refused: {m:?}"))
    }

    /// Enter at a context server with a token; Err carries the refusal.
    pub fn enter_at(
        addr: SocketAddr,
        user: &str,
        context: &str,
        token: Vec<u8>,
    ) -> Result<Member, Option<Message>> {
        let mut conn = Conn::connect(addr);
        conn.send(&Enter {
            context: context.into(),
            user: user.into(),
            token,
        });
        match conn.recv() {
            Some(Message::Snapshot(snapshot)) => Ok(Member {
                conn,
                snapshot,
                user: user.into(),
                seq: 0,
            }),
            other => Err(other),
        }
    }

    pub fn say(&mut self, text: &str) {
        self.seq += 1;
        let s = Say {
            client_seq: self.seq,
            sent_at_us: 0,
            text: text.into(),
        };
        self.conn.send(&s);
    }

    /// Next message that is not in `skip` (by type).
    pub fn next(&mut self) -> Message {
        self.conn.recv().expect("message before EOF")
    }

    /// Collect `n` Said texts (skipping Joined/Left).
    pub fn said(&mut self, n: usize) -> Vec<(u64, String, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next() {
                Message::Said(s) => out.push((s.context_seq, s.from, s.text)),
                Message::Joined(_) | Message::Left(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }
}
