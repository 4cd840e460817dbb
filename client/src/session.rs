//! Being in a context: speaking, and the events that arrive.
//!
//! A [`Session`] owns the context-server connection. Its end is an event,
//! not an error: when the server closes the connection (with an
//! `ErrorFrame`, or without a word, or falls silent) [`Session::next_event`]
//! yields [`Event::Closed`] once, with the reason, and every later call
//! fails with [`ClientError::SessionEnded`]. Errors are for what the caller
//! cannot just observe: a server breaking the protocol, a failed automatic
//! re-entry, a local limit.
//!
//! A `ReEnter` from the server is followed inside [`Session::next_event`]:
//! back to the director, into the same context (by id, also after
//! [`crate::Client::enter_where`]), and [`Event::ReEntered`] carries the new
//! snapshot. Utterances sent between the server's `ReEnter` and the new
//! entry are lost; `client_seq` keeps counting across re-entries.

use crate::client::{Client, Entered, Retry, Target};
use crate::conn::Conn;
use crate::error::{code_is_transient, ClientError};
use elko_protocol::{
    AppMessage, ErrorCode, Exit, Limits, Message, ReEnter, ReEnterReason, Said, SayRef, Snapshot,
};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// After this long in a context, earlier re-entries no longer count as "in a row".
const SETTLED: Duration = Duration::from_secs(10);

/// How long [`Session::exit`] waits for the server to close the connection.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Something that happened in the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An utterance; the receiver's own come back too, with their `client_seq`.
    Said(Said),
    /// A user joined (their first connection to the context).
    Joined(String),
    /// A user left (their last connection to the context).
    Left(String),
    /// An application message (meaning defined by [`Snapshot::app`]).
    App { op: u16, body: Vec<u8> },
    /// The server sent us back to the director and we entered again;
    /// [`Session::snapshot`] now returns this snapshot.
    ReEntered {
        snapshot: Snapshot,
        reason: ReEnterReason,
    },
    /// The session is over; the next call fails with
    /// [`ClientError::SessionEnded`].
    Closed { reason: CloseReason },
}

/// Why the server side ended a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server sent an `ErrorFrame` and closed.
    Server { code: ErrorCode, message: String },
    /// The connection closed without an `ErrorFrame` (server stopped or
    /// crashed, network failure, or an `ErrorFrame` that could not be sent).
    ConnectionLost,
    /// Nothing arrived for the server's idle timeout although we pinged it.
    Silent { silent_for: Duration },
}

impl CloseReason {
    /// Whether entering again through a director (with backoff) makes sense.
    pub fn is_transient(&self) -> bool {
        match self {
            CloseReason::Server { code, .. } => code_is_transient(*code),
            CloseReason::ConnectionLost | CloseReason::Silent { .. } => true,
        }
    }

    /// The close reason an error stands for, or the error back if it is
    /// not a close.
    fn from_error(e: ClientError) -> Result<CloseReason, ClientError> {
        match e {
            ClientError::Server { code, message, .. } => Ok(CloseReason::Server { code, message }),
            ClientError::Closed { .. } => Ok(CloseReason::ConnectionLost),
            ClientError::ServerSilent { silent_for, .. } => Ok(CloseReason::Silent { silent_for }),
            other => Err(other),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Server { code, message } => write!(f, "{code}: {message}"),
            CloseReason::ConnectionLost => f.write_str("connection lost"),
            CloseReason::Silent { silent_for } => write!(f, "server silent for {silent_for:?}"),
        }
    }
}

/// One user in one context.
///
/// Heartbeats run only while the caller is inside [`Session::next_event`]
/// or sending: call `next_event` regularly (a server disconnects a client
/// that stops reading, `SLOW_CONSUMER`, and one it does not hear from,
/// `IDLE_TIMEOUT`).
#[derive(Debug)]
pub struct Session {
    client: Client,
    user: String,
    /// `None` once the session has ended.
    conn: Option<Conn>,
    snapshot: Snapshot,
    server: SocketAddr,
    server_id: String,
    limits: Limits,
    last_seq: u64,
    reentries_in_row: u32,
    entered_at: Instant,
}

impl Session {
    pub(crate) fn new(client: Client, user: String, entered: Entered, in_row: u32) -> Session {
        let Entered { conn, snapshot } = entered;
        Session {
            client,
            user,
            server: conn.addr(),
            server_id: conn.server_id().to_string(),
            limits: conn.limits(),
            conn: Some(conn),
            snapshot,
            last_seq: 0,
            reentries_in_row: in_row,
            entered_at: Instant::now(),
        }
    }

    /// The context as found on the latest entry.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The context's id.
    pub fn context(&self) -> &str {
        &self.snapshot.context
    }

    /// Our user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The context server of the latest entry.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The context server's name, from its `Welcome`.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The limits the context server announced (text length, heartbeat...).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the session can still be used.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Say `text`; returns its `client_seq` (1, 2, 3, ...), which comes back
    /// in our own [`Event::Said`].
    pub fn say(&mut self, text: &str) -> Result<u64, ClientError> {
        self.check_len("text", text.len())?;
        let conn = self.conn.as_mut().ok_or(ClientError::SessionEnded)?;
        let client_seq = self.last_seq + 1;
        conn.send(&SayRef {
            client_seq,
            sent_at_us: now_us(),
            text,
        })?;
        self.last_seq = client_seq;
        Ok(client_seq)
    }

    /// Send an application message (op codes are defined per application,
    /// see `docs/protocol.md` section 13).
    pub fn send_app(&mut self, op: u16, body: &[u8]) -> Result<(), ClientError> {
        self.check_len("application message body", body.len())?;
        let conn = self.conn.as_mut().ok_or(ClientError::SessionEnded)?;
        conn.send(&AppMessage {
            op,
            body: body.to_vec(),
        })
    }

    /// The next event, or `Ok(None)` if `timeout` passes first (`None`:
    /// wait as long as it takes). Answers the server's Pings and pings a
    /// quiet server meanwhile. An automatic re-entry may take longer than
    /// `timeout` (it is bounded by the client's io timeout per step).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let conn = self.conn.as_mut().ok_or(ClientError::SessionEnded)?;
        let msg = match conn.recv(deadline) {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.conn = None;
                let reason = CloseReason::from_error(e)?;
                tracing::debug!(context = %self.snapshot.context, %reason, "session closed by the server");
                return Ok(Some(Event::Closed { reason }));
            }
        };
        let event = match msg {
            Message::Said(s) => Event::Said(s),
            Message::Joined(j) => Event::Joined(j.user),
            Message::Left(l) => Event::Left(l.user),
            Message::AppMessage(a) => Event::App {
                op: a.op,
                body: a.body,
            },
            Message::ReEnter(r) => return self.reenter(r).map(Some),
            other => {
                let e = conn.unexpected("an event", &other);
                self.conn = None;
                return Err(e);
            }
        };
        self.reentries_in_row = 0;
        Ok(Some(event))
    }

    /// Leave the context: send `Exit` and wait (briefly) for the server to
    /// close the connection, so the `Exit` is read before our close.
    pub fn exit(mut self) -> Result<(), ClientError> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        match conn.send(&Exit {}) {
            Ok(()) => {}
            Err(ClientError::Closed { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + EXIT_GRACE;
        // Frames still in flight are dropped; any end (close, timeout) will do.
        while let Ok(Some(_)) = conn.recv(Some(deadline)) {}
        Ok(())
    }

    fn check_len(&self, what: &'static str, len: usize) -> Result<(), ClientError> {
        let max = self.limits.max_text_len;
        if len > max as usize {
            return Err(ClientError::TooLarge { what, len, max });
        }
        Ok(())
    }

    fn reenter(&mut self, r: ReEnter) -> Result<Event, ClientError> {
        // The server closes after ReEnter.
        self.conn = None;
        if self.entered_at.elapsed() >= SETTLED {
            self.reentries_in_row = 0;
        }
        let reason = r.reason;
        tracing::info!(context = %self.snapshot.context, ?reason, message = %r.message, "sent back to the director");
        let context = self.snapshot.context.clone();
        let entered = self.client.establish(
            &self.user,
            Target::Context(&context),
            &mut self.reentries_in_row,
            Some(Retry::ReEnter(r)),
        )?;
        let Entered { conn, snapshot } = entered;
        self.server = conn.addr();
        self.server_id = conn.server_id().to_string();
        self.limits = conn.limits();
        self.conn = Some(conn);
        self.snapshot = snapshot.clone();
        self.entered_at = Instant::now();
        Ok(Event::ReEntered { snapshot, reason })
    }
}

/// Wall-clock microseconds, for `Say.sent_at_us`.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
