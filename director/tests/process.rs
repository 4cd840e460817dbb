//! Start the real `elko-director` binary on 127.0.0.1 port 0 and talk to it
//! with a fake context server and a fake client built from `std::net` and
//! `elko-protocol`. Every wait is bounded; the child is killed if a test fails.

use elko_cluster::auth::register_proof;
use elko_cluster::{ClusterSecret, TokenVerifier};
use elko_protocol::{
    ContextOpened, EnterContext, ErrorCode, FrameDecoder, Hello, LoadReport, LoopLoad, Message,
    Register, Welcome, MAGIC, PROTOCOL_VERSION,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Environment variables the director reads; removed so the test's own
/// environment cannot change what is tested.
const ENV: &[&str] = &[
    "ELKO_CLIENT_LISTEN",
    "ELKO_PROVIDER_LISTEN",
    "ELKO_DIRECTOR_ID",
    "ELKO_SECRET_FILE",
    "ELKO_SECRET",
    "ELKO_TOKEN_TTL_MS",
    "ELKO_REPORT_INTERVAL_MS",
    "ELKO_DEAD_AFTER_REPORTS",
    "ELKO_CONFIG",
    "ELKO_ADMIN_LISTEN",
];

/// A running director; killed on drop unless it already exited.
struct Director {
    child: Child,
    clients: SocketAddr,
    providers: SocketAddr,
    /// The operator endpoint, when started with --admin-listen.
    admin: Option<SocketAddr>,
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elko-director"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for v in ENV {
        cmd.env_remove(v);
    }
    cmd
}

impl Director {
    fn start(extra: &[&str]) -> Director {
        let mut args = vec![
            "--client-listen",
            "127.0.0.1:0",
            "--provider-listen",
            "127.0.0.1:0",
            "--director-id",
            "test-director",
        ];
        args.extend_from_slice(extra);
        let mut child = command(&args)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn elko-director");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep the pipe drained
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                panic!("no start-up line from elko-director: {e}");
            }
        };
        let mut guard = Director {
            child,
            clients: "0.0.0.0:0".parse().expect("addr"),
            providers: "0.0.0.0:0".parse().expect("addr"),
            admin: None,
        };
        let rest = line
            .strip_prefix("elko-director listening ")
            .unwrap_or_else(|| panic!("unexpected start-up line {line:?}"));
        for part in rest.split_whitespace() {
            match part.split_once('=') {
                Some(("clients", a)) => guard.clients = a.parse().expect("client addr"),
                Some(("providers", a)) => guard.providers = a.parse().expect("provider addr"),
                Some(("admin", a)) => guard.admin = Some(a.parse().expect("admin addr")),
                _ => panic!("unexpected start-up line {line:?}"),
            }
        }
        assert_ne!(guard.clients.port(), 0, "{line}");
        assert_ne!(guard.providers.port(), 0, "{line}");
        guard
    }

    fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) takes no pointers; the pid is our own child, which
        // has not been reaped yet (Director owns it until drop).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child)
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("elko-director did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One connection speaking the Elko framing.
struct Peer {
    stream: TcpStream,
    dec: FrameDecoder,
}

impl Peer {
    /// Connect, send Hello, read Welcome.
    fn connect(addr: SocketAddr, name: &str) -> (Peer, Welcome) {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut p = Peer {
            stream,
            dec: FrameDecoder::new(elko_protocol::MAX_FRAME_CEILING),
        };
        p.send(
            Hello {
                magic: MAGIC,
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                client_name: name.into(),
            }
            .into(),
        );
        match p.recv() {
            Message::Welcome(w) => (p, w),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    fn send(&mut self, msg: Message) {
        let bytes = msg.to_bytes().expect("encode");
        self.stream.write_all(&bytes).expect("write");
    }

    /// The next message, or `None` if the peer closed the connection.
    fn try_recv(&mut self) -> Option<Message> {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.dec.next_frame().expect("framing") {
                return Some(f.decode().expect("decode"));
            }
            assert!(Instant::now() < deadline, "no message within {WAIT:?}");
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.extend(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn recv(&mut self) -> Message {
        self.try_recv().expect("connection closed")
    }

    /// Expect an ErrorFrame with `code`, then the end of the stream.
    fn expect_error_and_close(&mut self, code: ErrorCode) {
        match self.recv() {
            Message::ErrorFrame(e) => assert_eq!(e.code, code, "{}", e.message),
            other => panic!("expected ErrorFrame {code:?}, got {other:?}"),
        }
        assert_eq!(self.try_recv(), None, "connection should be closed");
    }
}

const PROVIDER_CLIENT_ADDR: &str = "127.0.0.1:7999";

fn register(d: &Director, id: &str, good_proof: bool) -> Peer {
    let (mut p, welcome) = Peer::connect(d.providers, "fake-contextd");
    let auth = if good_proof {
        register_proof(&ClusterSecret::development(), &welcome.challenge, id, 1)
    } else {
        [0; 32]
    };
    p.send(
        Register {
            provider_id: id.into(),
            epoch: 1,
            client_addr: PROVIDER_CLIENT_ADDR.into(),
            workers: 1,
            capacity: 0,
            auth,
        }
        .into(),
    );
    p
}

fn enter(client: &mut Peer, request_id: u32, user: &str, context: &str) -> Message {
    client.send(
        EnterContext {
            request_id,
            user: user.into(),
            context: context.into(),
        }
        .into(),
    );
    client.recv()
}

#[test]
fn provider_registers_and_a_client_is_redirected_to_it() {
    let d = Director::start(&["--report-interval-ms", "5000"]);
    let mut provider = register(&d, "cd-1", true);
    match provider.recv() {
        Message::Registered(r) => assert_eq!(r.director_id, "test-director"),
        other => panic!("expected Registered, got {other:?}"),
    }
    provider.send(
        LoadReport {
            seq: 1,
            loops: vec![LoopLoad {
                connections: 0,
                contexts: 0,
                users: 0,
                busy_permille: 0,
            }],
        }
        .into(),
    );

    let (mut client, _) = Peer::connect(d.clients, "fake-client");
    let redirect = match enter(&mut client, 7, "alice", "room/1") {
        Message::Redirect(r) => r,
        other => panic!("expected Redirect, got {other:?}"),
    };
    assert_eq!(redirect.request_id, 7);
    assert_eq!(redirect.context, "room/1");
    assert_eq!(redirect.contextd_addr, PROVIDER_CLIENT_ADDR);

    match provider.recv() {
        Message::Activate(a) => assert_eq!(a.context, "room/1"),
        other => panic!("expected Activate, got {other:?}"),
    }
    let expect = match provider.recv() {
        Message::ExpectClient(x) => x,
        other => panic!("expected ExpectClient, got {other:?}"),
    };
    assert_eq!(
        (expect.context.as_str(), expect.user.as_str()),
        ("room/1", "alice")
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let claims = TokenVerifier::new(ClusterSecret::development(), 0)
        .verify(&redirect.token, "room/1", "alice", now_ms)
        .expect("token verifies");
    assert_eq!(claims.nonce, expect.token_id);

    // Once open, a second entry is routed without a new Activate.
    provider.send(
        ContextOpened {
            context: "room/1".into(),
        }
        .into(),
    );
    match enter(&mut client, 8, "bob", "room/1") {
        Message::Redirect(r) => assert_eq!(r.request_id, 8),
        other => panic!("expected Redirect, got {other:?}"),
    }
    match provider.recv() {
        Message::ExpectClient(x) => assert_eq!(x.user, "bob"),
        other => panic!("expected only ExpectClient, got {other:?}"),
    }

    // A bad id is denied on the same connection, which stays usable.
    match enter(&mut client, 9, "", "room/1") {
        Message::Denied(d) => assert_eq!(d.code, ErrorCode::INVALID_ID),
        other => panic!("expected Denied, got {other:?}"),
    }
}

#[test]
fn the_admin_endpoint_reports_metrics_and_drains_a_provider() {
    use elko_cluster::admin::http_request;
    let d = Director::start(&[
        "--report-interval-ms",
        "5000",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = d.admin.expect("admin= in the start-up line");
    let get = |target: &str| http_request(admin, "GET", target).expect(target);
    let post = |target: &str| http_request(admin, "POST", target).expect(target);

    assert_eq!(get("/health"), (200, "ok\n".to_string()));
    let (status, metrics) = get("/metrics");
    assert_eq!(status, 200);
    for line in [
        "elko_director_providers 0",
        "elko_director_enters_total 0",
        "elko_director_loop_connections{loop=\"0\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }

    let mut provider = register(&d, "cd-1", true);
    assert!(matches!(provider.recv(), Message::Registered(_)));
    let (status, json) = get("/providers");
    assert_eq!(status, 200);
    assert!(
        json.contains("\"id\":\"cd-1\"") && json.contains("\"draining\":false"),
        "{json}"
    );

    // Commands: arguments checked, unknown providers named, wrong methods refused.
    assert_eq!(post("/drain").0, 400);
    let (status, body) = post("/drain?provider=cd-9");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("cd-9"), "{body}");
    assert_eq!(get("/drain?provider=cd-1").0, 405);
    assert_eq!(get("/nothing").0, 404);

    let (status, body) = post("/drain?provider=cd-1");
    assert_eq!(status, 200, "{body}");
    match provider.recv() {
        Message::Drain(_) => {}
        other => panic!("expected Drain, got {other:?}"),
    }
    let (_, json) = get("/providers");
    assert!(json.contains("\"draining\":true"), "{json}");
    let (_, metrics) = get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "elko_director_provider_draining{provider=\"cd-1\"} 1"),
        "{metrics}"
    );
    // Nothing new is placed on a draining server.
    let (mut client, _) = Peer::connect(d.clients, "fake-client");
    match enter(&mut client, 1, "alice", "room/1") {
        Message::Denied(x) => assert_eq!(x.code, ErrorCode::NO_CAPACITY),
        other => panic!("expected Denied NO_CAPACITY, got {other:?}"),
    }
    let (_, metrics) = get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "elko_director_denied_total{code=\"NO_CAPACITY\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_bad_register_proof_is_refused_auth_failed() {
    let d = Director::start(&[]);
    let mut provider = register(&d, "cd-evil", false);
    provider.expect_error_and_close(ErrorCode::AUTH_FAILED);
    // With no provider registered, entries are denied NO_CAPACITY.
    let (mut client, _) = Peer::connect(d.clients, "fake-client");
    match enter(&mut client, 1, "alice", "room") {
        Message::Denied(d) => assert_eq!(d.code, ErrorCode::NO_CAPACITY),
        other => panic!("expected Denied, got {other:?}"),
    }
}

#[test]
fn a_client_sending_a_provider_message_is_closed() {
    let d = Director::start(&[]);
    let (mut client, _) = Peer::connect(d.clients, "fake-client");
    client.send(
        ContextOpened {
            context: "x".into(),
        }
        .into(),
    );
    client.expect_error_and_close(ErrorCode::UNEXPECTED_MESSAGE);
}

#[test]
fn sigterm_shuts_down_gracefully_with_status_zero() {
    let mut d = Director::start(&[]);
    let (mut client, _) = Peer::connect(d.clients, "fake-client");
    d.signal(libc::SIGTERM);
    client.expect_error_and_close(ErrorCode::SHUTTING_DOWN);
    let st = d.wait_exit();
    assert_eq!(st.code(), Some(0), "{st:?}");
}

#[test]
fn development_secret_refuses_a_non_loopback_address() {
    let mut child = command(&[
        "--client-listen",
        "0.0.0.0:0",
        "--provider-listen",
        "127.0.0.1:0",
    ])
    .spawn()
    .expect("spawn");
    let st = wait_exit(&mut child);
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("development cluster secret"), "{err}");
}

#[test]
fn an_unknown_config_key_is_refused_by_name() {
    let path = std::env::temp_dir().join(format!("elko-director-test-{}.toml", std::process::id()));
    std::fs::write(&path, "client-listen = \"127.0.0.1:0\"\nbogus-key = 1\n").expect("write");
    let mut child = command(&["--config", path.to_str().expect("utf-8 path")])
        .spawn()
        .expect("spawn");
    let st = wait_exit(&mut child);
    let _ = std::fs::remove_file(&path);
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("bogus-key"), "{err}");
}
