//! A blocking Elko client over `std::net`, for client authors.
//!
//! ```no_run
//! use elko_client::{Client, ClientOptions, Event};
//! let mut client = Client::connect("127.0.0.1:7700", ClientOptions::default())?;
//! let mut session = client.enter("alice", "room/1")?;
//! println!("members: {:?}", session.snapshot().members);
//! session.say("hello")?;
//! while let Some(event) = session.next_event(Some(std::time::Duration::from_secs(1)))? {
//!     if let Event::Said(s) = event { println!("{}: {}", s.from, s.text); }
//! }
//! session.exit()?;
//! # Ok::<(), elko_client::ClientError>(())
//! ```
//!
//! The flow is the protocol's (`docs/protocol.md`): ask the director, follow
//! its redirect to a context server with the reservation token, enter, then
//! talk. Heartbeats are answered and sent inside the library. A `ReEnter`
//! from the server (drain, shutdown, move) is followed automatically through
//! the director, at most [`ClientOptions::max_reentries`] times in a row.

use bytes::BytesMut;
use elko_protocol::{
    encode_frame, AppMessage, Body, Enter, EnterContext, EnterWhereUser, ErrorCode, Exit,
    FrameDecoder, Hello, Message, Ping, Pong, Said, Say, Snapshot, Welcome, MAGIC,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Settings of a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Sent in Hello, for the servers' logs.
    pub client_name: String,
    pub connect_timeout: Duration,
    /// How long to wait for an answer (Welcome, Redirect, Snapshot).
    pub io_timeout: Duration,
    /// Automatic re-entries in a row after `ReEnter` before giving up.
    pub max_reentries: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_name: concat!("elko-client/", env!("CARGO_PKG_VERSION")).into(),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            max_reentries: 3,
        }
    }
}

/// What went wrong, one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {0:?}: give host:port")]
    Resolve(String),
    #[error("I/O error talking to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{addr} sent bytes that are not valid protocol: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
    #[error("{addr} closed the connection with {code}: {message}")]
    Server {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    #[error("the director refused: {code}: {message}")]
    Denied { code: ErrorCode, message: String },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} closed the connection")]
    Closed { addr: SocketAddr },
    #[error("{addr} sent {got} where {expected} was expected")]
    Unexpected {
        addr: SocketAddr,
        expected: &'static str,
        got: String,
    },
    #[error("sent back to the director {0} times in a row; giving up")]
    TooManyReEntries(u32),
}

/// One framed connection.
#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    dec: FrameDecoder,
    welcome: Welcome,
    last_tx: Instant,
}

impl Conn {
    fn open(addr: SocketAddr, opts: &ClientOptions) -> Result<Conn, ClientError> {
        let io = |source| ClientError::Io { addr, source };
        let stream = TcpStream::connect_timeout(&addr, opts.connect_timeout).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let placeholder = Welcome {
            version: 0,
            server_id: String::new(),
            limits: elko_protocol::Limits {
                max_frame: elko_protocol::DEFAULT_MAX_FRAME,
                max_id_len: elko_protocol::DEFAULT_MAX_ID_LEN,
                max_text_len: 16 * 1024,
                heartbeat_ms: 15_000,
                idle_timeout_ms: 60_000,
            },
            challenge: [0; 16],
        };
        let mut c = Conn {
            addr,
            stream,
            dec: FrameDecoder::new(elko_protocol::MAX_FRAME_CEILING),
            welcome: placeholder,
            last_tx: Instant::now(),
        };
        c.send(&Hello {
            magic: MAGIC,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client_name: opts.client_name.clone(),
        })?;
        match c.expect(opts.io_timeout)? {
            Message::Welcome(w) => {
                c.welcome = w;
                Ok(c)
            }
            other => Err(c.unexpected("Welcome", &other)),
        }
    }

    fn send<B: Body>(&mut self, b: &B) -> Result<(), ClientError> {
        let mut buf = BytesMut::new();
        encode_frame(b, &mut buf).map_err(|e| ClientError::Protocol {
            addr: self.addr,
            detail: e.to_string(),
        })?;
        self.stream
            .write_all(&buf)
            .map_err(|source| ClientError::Io {
                addr: self.addr,
                source,
            })?;
        self.last_tx = Instant::now();
        Ok(())
    }

    fn unexpected(&self, expected: &'static str, got: &Message) -> ClientError {
        ClientError::Unexpected {
            addr: self.addr,
            expected,
            got: got.message_type().name().to_string(),
        }
    }

    /// The next message (Pings answered, ErrorFrames turned into errors),
    /// or `None` if `deadline` passes first.
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>, ClientError> {
        let addr = self.addr;
        loop {
            if let Some(f) = self.dec.next_frame().map_err(|e| ClientError::Protocol {
                addr,
                detail: e.to_string(),
            })? {
                let m = f.decode().map_err(|e| ClientError::Protocol {
                    addr,
                    detail: e.to_string(),
                })?;
                match m {
                    Message::Ping(p) => self.send(&Pong { nonce: p.nonce })?,
                    Message::Pong(_) => {}
                    Message::ErrorFrame(e) => {
                        return Err(ClientError::Server {
                            addr,
                            code: e.code,
                            message: e.message,
                        });
                    }
                    other => return Ok(Some(other)),
                }
                continue;
            }
            // Keep the server from timing us out while we wait.
            let heartbeat =
                Duration::from_millis(u64::from(self.welcome.limits.heartbeat_ms.max(100)));
            if self.last_tx.elapsed() >= heartbeat {
                self.send(&Ping { nonce: 0 })?;
            }
            let now = Instant::now();
            let mut wait = heartbeat
                .saturating_sub(self.last_tx.elapsed())
                .max(Duration::from_millis(1));
            if let Some(d) = deadline {
                if now >= d {
                    return Ok(None);
                }
                wait = wait.min(d - now);
            }
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(|source| ClientError::Io { addr, source })?;
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed { addr }),
                Ok(n) => self.dec.extend(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Err(ClientError::Closed { addr })
                }
                Err(source) => return Err(ClientError::Io { addr, source }),
            }
        }
    }

    fn expect(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        self.recv(Some(Instant::now() + timeout))?
            .ok_or(ClientError::Timeout {
                addr: self.addr,
                timeout,
            })
    }
}

/// What to enter: a context, or wherever a user is.
#[derive(Debug, Clone)]
enum Target {
    Context(String),
    WhereUser(String),
}

/// A connection to a director.
#[derive(Debug)]
pub struct Client {
    director: SocketAddr,
    opts: ClientOptions,
    conn: Option<Conn>,
    next_request: u32,
}

impl Client {
    /// Connect to a director's client port.
    pub fn connect(
        director: impl ToSocketAddrs,
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        let addr = resolve(director)?;
        let conn = Conn::open(addr, &opts)?;
        Ok(Client {
            director: addr,
            opts,
            conn: Some(conn),
            next_request: 1,
        })
    }

    /// Enter context `context` as `user`.
    pub fn enter(&mut self, user: &str, context: &str) -> Result<Session, ClientError> {
        self.enter_target(user, Target::Context(context.to_string()))
    }

    /// Enter the context where `target_user` is, as `user`.
    pub fn enter_where(&mut self, user: &str, target_user: &str) -> Result<Session, ClientError> {
        self.enter_target(user, Target::WhereUser(target_user.to_string()))
    }

    fn enter_target(&mut self, user: &str, target: Target) -> Result<Session, ClientError> {
        let (conn, snapshot) = self.route_and_enter(user, &target)?;
        Ok(Session {
            client: self.clone_settings(),
            user: user.to_string(),
            target,
            conn,
            snapshot,
            seq: 0,
            reentries: 0,
        })
    }

    fn clone_settings(&self) -> Client {
        Client {
            director: self.director,
            opts: self.opts.clone(),
            conn: None,
            next_request: self.next_request + 1000,
        }
    }

    /// Ask the director (reconnecting if needed), then enter at the context server.
    fn route_and_enter(
        &mut self,
        user: &str,
        target: &Target,
    ) -> Result<(Conn, Snapshot), ClientError> {
        let request_id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        let redirect = match self.ask(user, target, request_id) {
            Err(ClientError::Closed { .. }) | Err(ClientError::Io { .. }) => {
                // The director connection went stale: reconnect once.
                self.conn = None;
                self.ask(user, target, request_id)?
            }
            other => other?,
        };
        let addr = resolve(redirect.contextd_addr.as_str())?;
        let mut c = Conn::open(addr, &self.opts)?;
        c.send(&Enter {
            context: redirect.context.clone(),
            user: user.to_string(),
            token: redirect.token,
        })?;
        match c.expect(self.opts.io_timeout)? {
            Message::Snapshot(s) => Ok((c, s)),
            other => Err(c.unexpected("Snapshot", &other)),
        }
    }

    fn ask(
        &mut self,
        user: &str,
        target: &Target,
        request_id: u32,
    ) -> Result<elko_protocol::Redirect, ClientError> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(self.director, &self.opts)?);
        }
        let timeout = self.opts.io_timeout;
        let Some(c) = self.conn.as_mut() else {
            return Err(ClientError::Closed {
                addr: self.director,
            });
        };
        match target {
            Target::Context(context) => c.send(&EnterContext {
                request_id,
                user: user.to_string(),
                context: context.clone(),
            })?,
            Target::WhereUser(t) => c.send(&EnterWhereUser {
                request_id,
                user: user.to_string(),
                target_user: t.clone(),
            })?,
        }
        loop {
            match c.expect(timeout)? {
                Message::Redirect(r) if r.request_id == request_id => return Ok(r),
                Message::Denied(d) if d.request_id == request_id => {
                    return Err(ClientError::Denied {
                        code: d.code,
                        message: d.message,
                    })
                }
                Message::Redirect(_) | Message::Denied(_) => {} // an answer to an older request
                other => return Err(c.unexpected("Redirect or Denied", &other)),
            }
        }
    }
}

fn resolve(a: impl ToSocketAddrs) -> Result<SocketAddr, ClientError> {
    let mut it = a
        .to_socket_addrs()
        .map_err(|e| ClientError::Resolve(e.to_string()))?;
    it.next()
        .ok_or_else(|| ClientError::Resolve("no address".into()))
}

/// Something that happened in the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An utterance (the receiver's own included).
    Said(Said),
    Joined(String),
    Left(String),
    /// An application message.
    App {
        op: u16,
        body: Vec<u8>,
    },
    /// The server sent us back to the director and we entered again.
    ReEntered(Snapshot),
}

/// Being in a context.
#[derive(Debug)]
pub struct Session {
    client: Client,
    user: String,
    target: Target,
    conn: Conn,
    snapshot: Snapshot,
    seq: u64,
    /// ReEnters followed in a row (reset by any other event).
    reentries: u32,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Session {
    /// The context as found on (the latest) entry.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The context entered.
    pub fn context(&self) -> &str {
        &self.snapshot.context
    }

    /// The context server this session talks to.
    pub fn server_addr(&self) -> SocketAddr {
        self.conn.addr
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Say something; returns its client sequence number.
    pub fn say(&mut self, text: &str) -> Result<u64, ClientError> {
        self.seq += 1;
        self.conn.send(&Say {
            client_seq: self.seq,
            sent_at_us: now_us(),
            text: text.to_string(),
        })?;
        Ok(self.seq)
    }

    /// Send an application message.
    pub fn send_app(&mut self, op: u16, body: Vec<u8>) -> Result<(), ClientError> {
        self.conn.send(&AppMessage { op, body })
    }

    /// The next event, or `None` when `timeout` passes first (`None`
    /// timeout: wait as long as it takes).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let Some(m) = self.conn.recv(deadline)? else {
            return Ok(None);
        };
        let event = match m {
            Message::Said(s) => Event::Said(s),
            Message::Joined(j) => Event::Joined(j.user),
            Message::Left(l) => Event::Left(l.user),
            Message::AppMessage(a) => Event::App {
                op: a.op,
                body: a.body,
            },
            Message::ReEnter(r) => {
                self.reentries += 1;
                if self.reentries > self.client.opts.max_reentries {
                    return Err(ClientError::TooManyReEntries(self.reentries - 1));
                }
                tracing::info!(reason = ?r.reason, message = %r.message, "sent back to the director; entering again");
                // The director may not have heard yet that the old server is
                // going away: retry a few times, backing off.
                let mut last = None;
                for attempt in 1..=self.client.opts.max_reentries.max(1) {
                    std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                    match self.client.route_and_enter(&self.user, &self.target) {
                        Ok((conn, snapshot)) => {
                            self.conn = conn;
                            self.snapshot = snapshot.clone();
                            return Ok(Some(Event::ReEntered(snapshot)));
                        }
                        Err(e @ ClientError::Denied { .. }) => return Err(e),
                        Err(e) => {
                            tracing::info!(attempt, error = %e, "re-entry failed; retrying");
                            last = Some(e);
                        }
                    }
                }
                return Err(last.unwrap_or(ClientError::TooManyReEntries(self.reentries)));
            }
            other => return Err(self.conn.unexpected("an event", &other)),
        };
        self.reentries = 0;
        Ok(Some(event))
    }

    /// Leave the context.
    pub fn exit(mut self) -> Result<(), ClientError> {
        self.conn.send(&Exit {})?;
        // The server closes after Exit; wait briefly so the Exit is not lost
        // to a reset.
        let _ = self
            .conn
            .recv(Some(Instant::now() + Duration::from_millis(500)));
        Ok(())
    }
}
