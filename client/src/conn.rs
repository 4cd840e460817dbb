//! One framed, blocking connection: handshake, frames in and out, heartbeats.
//!
//! Director and context-server connections are the same thing up to the
//! messages they carry, so both are a [`Conn`]. It owns one
//! [`FrameDecoder`] (4096-byte limit until the Welcome, then the server's
//! `max_frame`) and one [`Heartbeat`]. Pings are answered and sent inside
//! [`Conn::recv`], transparently; an `ErrorFrame` becomes
//! [`ClientError::Server`] and a close [`ClientError::Closed`], so callers
//! see only the messages of their link.
//!
//! Reads block with a timeout computed from the caller's deadline and the
//! next heartbeat deadline; nothing happens on a connection while nobody is
//! inside [`Conn::recv`] or [`Conn::send`].

use crate::error::{ClientError, ProtocolError};
use crate::heartbeat::Heartbeat;
use crate::ClientOptions;
use bytes::BytesMut;
use elko_protocol::{
    encode_frame, Body, FrameDecoder, Hello, Limits, Message, Pong, Welcome,
    DEFAULT_MAX_FRAME_PREAUTH, FRAME_HEADER_LEN, MAGIC, MAX_FRAME_CEILING, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Bytes read from the socket per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// A connection past its handshake.
#[derive(Debug)]
pub(crate) struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    dec: FrameDecoder,
    /// Largest frame length we may send (the server's `max_frame`).
    send_limit: u32,
    out: BytesMut,
    heartbeat: Heartbeat,
    welcome: Option<Welcome>,
    io_timeout: Duration,
}

impl Conn {
    /// Connect, send Hello and wait for the Welcome (or the ErrorFrame).
    pub(crate) fn open(addr: SocketAddr, opts: &ClientOptions) -> Result<Conn, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, opts.connect_timeout)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let io = |source| ClientError::Io { addr, source };
        stream.set_nodelay(true).map_err(io)?;
        stream
            .set_write_timeout(Some(opts.io_timeout))
            .map_err(io)?;
        let mut conn = Conn {
            addr,
            stream,
            dec: FrameDecoder::new(DEFAULT_MAX_FRAME_PREAUTH),
            send_limit: DEFAULT_MAX_FRAME_PREAUTH,
            out: BytesMut::with_capacity(256),
            heartbeat: Heartbeat::disabled(Instant::now()),
            welcome: None,
            io_timeout: opts.io_timeout,
        };
        conn.send(&Hello {
            magic: MAGIC,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client_name: opts.client_name.clone(),
        })?;
        let welcome = match conn.expect("Welcome")? {
            Message::Welcome(w) => w,
            other => return Err(conn.unexpected("Welcome", &other)),
        };
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&welcome.version) {
            return Err(ClientError::UnsupportedVersion {
                addr,
                version: welcome.version,
            });
        }
        let max_frame = welcome.limits.max_frame.min(MAX_FRAME_CEILING);
        conn.dec.set_max_frame(max_frame);
        conn.send_limit = max_frame;
        conn.heartbeat = Heartbeat::new(
            welcome.limits.heartbeat_ms,
            welcome.limits.idle_timeout_ms,
            Instant::now(),
        );
        tracing::debug!(%addr, server = %welcome.server_id, limits = ?welcome.limits, "connected");
        conn.welcome = Some(welcome);
        Ok(conn)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's limits (defaults before the Welcome, which `open` waits for).
    pub(crate) fn limits(&self) -> Limits {
        match &self.welcome {
            Some(w) => w.limits,
            None => Limits {
                max_frame: DEFAULT_MAX_FRAME_PREAUTH,
                max_id_len: elko_protocol::DEFAULT_MAX_ID_LEN,
                max_text_len: 0,
                heartbeat_ms: 0,
                idle_timeout_ms: 0,
            },
        }
    }

    /// Bound on each wait for an answer and each blocked write.
    pub(crate) fn io_timeout(&self) -> Duration {
        self.io_timeout
    }

    /// The server's name from its Welcome.
    pub(crate) fn server_id(&self) -> &str {
        self.welcome.as_ref().map_or("", |w| w.server_id.as_str())
    }

    /// Encode and write one message (blocking, bounded by the io timeout).
    pub(crate) fn send<B: Body + ?Sized>(&mut self, body: &B) -> Result<(), ClientError> {
        let addr = self.addr;
        self.out.clear();
        let total = encode_frame(body, &mut self.out).map_err(|e| ClientError::Protocol {
            addr,
            source: ProtocolError::Encode(e),
        })?;
        let len = total - FRAME_HEADER_LEN;
        if len > self.send_limit as usize {
            return Err(ClientError::TooLarge {
                what: "frame",
                len,
                max: self.send_limit,
            });
        }
        match self.stream.write_all(&self.out) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout {
                    addr,
                    waiting_for: "room to send (the server is not reading)",
                    timeout: self.io_timeout,
                })
            }
            Err(e) => return Err(io_error(addr, e)),
        }
        self.heartbeat.on_sent(Instant::now());
        Ok(())
    }

    /// The next message of this link, or `None` once `deadline` has passed
    /// (`None`: no deadline). Pings are answered, Pongs dropped, an
    /// ErrorFrame is returned as [`ClientError::Server`]. With a deadline
    /// already past it returns what has arrived without waiting.
    pub(crate) fn recv(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Message>, ClientError> {
        let addr = self.addr;
        let mut read_found_nothing = false;
        loop {
            while let Some(frame) = self.dec.next_frame().map_err(|e| ClientError::Protocol {
                addr,
                source: e.into(),
            })? {
                let msg = frame.decode().map_err(|e| ClientError::Protocol {
                    addr,
                    source: e.into(),
                })?;
                match msg {
                    Message::Ping(p) => self.send(&Pong { nonce: p.nonce })?,
                    Message::Pong(_) => {}
                    Message::ErrorFrame(e) => {
                        return Err(ClientError::Server {
                            addr,
                            code: e.code,
                            message: e.message,
                        })
                    }
                    other => return Ok(Some(other)),
                }
            }
            let now = Instant::now();
            if read_found_nothing {
                self.heartbeat
                    .check_silence(now)
                    .map_err(|silent_for| ClientError::ServerSilent { addr, silent_for })?;
            }
            if let Some(ping) = self.heartbeat.poll_ping(now) {
                self.send(&ping)?;
            }
            let wake = match (deadline, self.heartbeat.next_deadline()) {
                (Some(d), Some(h)) => Some(d.min(h)),
                (d, h) => d.or(h),
            };
            let wait = wake.map(|w| w.saturating_duration_since(now));
            let past_deadline = deadline.is_some_and(|d| now >= d);
            let got = self.read_some(if past_deadline {
                Some(Duration::ZERO)
            } else {
                wait
            })?;
            if past_deadline && !got {
                return Ok(None);
            }
            read_found_nothing = !got;
        }
    }

    /// [`Conn::recv`] with the io timeout, for an answer that must come.
    pub(crate) fn expect(&mut self, waiting_for: &'static str) -> Result<Message, ClientError> {
        let timeout = self.io_timeout;
        self.recv(Some(Instant::now() + timeout))?
            .ok_or(ClientError::Timeout {
                addr: self.addr,
                waiting_for,
                timeout,
            })
    }

    pub(crate) fn unexpected(&self, expected: &'static str, got: &Message) -> ClientError {
        ClientError::UnexpectedMessage {
            addr: self.addr,
            expected,
            got: got.message_type(),
        }
    }

    /// Read once, waiting at most `wait` (`Some(ZERO)`: do not wait; `None`:
    /// wait as long as it takes). `Ok(true)` if bytes arrived.
    fn read_some(&mut self, wait: Option<Duration>) -> Result<bool, ClientError> {
        let addr = self.addr;
        let io = |source| ClientError::Io { addr, source };
        let nonblocking = wait == Some(Duration::ZERO);
        if nonblocking {
            self.stream.set_nonblocking(true).map_err(io)?;
        } else {
            // A zero timeout is refused by set_read_timeout; 1 ms is the floor.
            let t = wait.map(|w| w.max(Duration::from_millis(1)));
            self.stream.set_read_timeout(t).map_err(io)?;
        }
        let mut buf = [0u8; READ_CHUNK];
        let res = self.stream.read(&mut buf);
        if nonblocking {
            self.stream.set_nonblocking(false).map_err(io)?;
        }
        match res {
            Ok(0) => Err(ClientError::Closed { addr }),
            Ok(n) => {
                self.dec.extend(&buf[..n]);
                self.heartbeat.on_received(Instant::now());
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            // Interrupted: try again at once, and do not count it as silence.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(io_error(addr, e)),
        }
    }
}

/// A connection reset or broken pipe is the peer closing, not an I/O fault.
fn io_error(addr: SocketAddr, e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => ClientError::Closed { addr },
        _ => ClientError::Io { addr, source: e },
    }
}

/// The first address `addr` resolves to.
pub(crate) fn resolve(
    addr: impl ToSocketAddrs + std::fmt::Debug,
) -> Result<SocketAddr, ClientError> {
    let shown = format!("{addr:?}");
    let mut it = addr.to_socket_addrs().map_err(|e| ClientError::Resolve {
        addr: shown.clone(),
        reason: e.to_string(),
    })?;
    it.next().ok_or(ClientError::Resolve {
        addr: shown,
        reason: "it resolves to no address".into(),
    })
}
