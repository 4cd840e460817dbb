//! What can go wrong, one variant per cause.
//!
//! Every variant carries the offending value (the address, the code, the
//! length) and its message says what to do. [`ClientError::is_transient`]
//! tells a caller whether trying again later through a director may succeed,
//! following the table "what a client sees when a connection ends" in
//! `docs/protocol.md` section 9.

use elko_protocol::codec::{DecodeError, EncodeError};
use elko_protocol::{ErrorCode, FrameError, IdError, MessageType, ReEnterReason};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a request, an entry or a session failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address given does not resolve.
    #[error("cannot resolve {addr}: {reason}; give host:port, for example 127.0.0.1:7700")]
    Resolve { addr: String, reason: String },

    /// TCP connect failed (refused, unreachable, timed out).
    #[error("cannot connect to {addr}: {source}; check that the server runs and listens there")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// Reading or writing an open connection failed.
    #[error("I/O error with {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// The server sent bytes that are not a valid frame or message, or a
    /// message could not be encoded.
    #[error("{addr} broke the protocol: {source}; is it an Elko server of a compatible version?")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: ProtocolError,
    },

    /// The server sent an `ErrorFrame` and closed the connection.
    #[error("{addr} refused with {code}: {message} ({})", code.description())]
    Server {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },

    /// The director answered an enter request with `Denied`.
    #[error("the director refused: {code}: {message} ({})", code.description())]
    Denied { code: ErrorCode, message: String },

    /// No answer within [`crate::ClientOptions::io_timeout`].
    #[error(
        "no {waiting_for} from {addr} within {timeout:?}; the server is stuck or overloaded, \
         try again later"
    )]
    Timeout {
        addr: SocketAddr,
        waiting_for: &'static str,
        timeout: Duration,
    },

    /// The server closed the connection without an `ErrorFrame`.
    #[error("{addr} closed the connection without saying why; it may have stopped or crashed")]
    Closed { addr: SocketAddr },

    /// Nothing arrived for the server's idle timeout although we pinged it.
    #[error(
        "{addr} has been silent for {silent_for:?} despite our pings; it is gone or the network is"
    )]
    ServerSilent {
        addr: SocketAddr,
        silent_for: Duration,
    },

    /// A valid message in a state where it is not allowed.
    #[error("{addr} sent {} where {expected} was expected; the server is not following the protocol", got.name())]
    UnexpectedMessage {
        addr: SocketAddr,
        expected: &'static str,
        got: MessageType,
    },

    /// The server's `Welcome` chose a protocol version this client does not speak.
    #[error(
        "{addr} chose protocol version {version}, outside the {min}..={max} this client speaks; \
         use a client matching the server",
        min = elko_protocol::MIN_PROTOCOL_VERSION,
        max = elko_protocol::PROTOCOL_VERSION
    )]
    UnsupportedVersion { addr: SocketAddr, version: u16 },

    /// A user name or context id the server would refuse (checked before sending).
    #[error("invalid {what} {value:?}: {source}")]
    InvalidId {
        what: &'static str,
        value: String,
        #[source]
        source: IdError,
    },

    /// Text, an application body or a whole frame above the server's limit
    /// (checked before sending: the server would close the connection).
    #[error("the {what} is {len} bytes, the server's limit is {max}: send less")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: u32,
    },

    /// The context servers kept sending us back to the director.
    #[error(
        "sent back to the director {attempts} times in a row (last: {reason:?}: {message}); \
         the cluster is moving or draining contexts, try again later"
    )]
    TooManyReEntries {
        attempts: u32,
        reason: ReEnterReason,
        message: String,
    },

    /// The session has ended (see [`crate::Event::Closed`] or the error that
    /// ended it); it cannot be used any more.
    #[error("the session has ended; enter again with Client::enter")]
    SessionEnded,
}

/// How the bytes on a connection broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl ClientError {
    /// Whether trying again later (through a director, with backoff) may
    /// succeed: overload, expiry, shutdown and lost connections are
    /// transient; protocol violations, bad ids and refusals by policy are not.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Timeout { .. }
            | ClientError::Closed { .. }
            | ClientError::ServerSilent { .. }
            | ClientError::TooManyReEntries { .. } => true,
            ClientError::Server { code, .. } | ClientError::Denied { code, .. } => {
                code_is_transient(*code)
            }
            ClientError::Resolve { .. }
            | ClientError::Protocol { .. }
            | ClientError::UnexpectedMessage { .. }
            | ClientError::UnsupportedVersion { .. }
            | ClientError::InvalidId { .. }
            | ClientError::TooLarge { .. }
            | ClientError::SessionEnded => false,
        }
    }

    /// The error code the server sent (`ErrorFrame` or `Denied`), if any.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } | ClientError::Denied { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Codes after which entering again through a director may work (the
/// "reconnect through a director, with backoff" row of `docs/protocol.md`
/// section 9, less the token codes a fresh token cannot fix: a forged token
/// or one bound to another context means a misconfigured cluster or a bug).
pub(crate) fn code_is_transient(code: ErrorCode) -> bool {
    [
        ErrorCode::SERVER_FULL,
        ErrorCode::IDLE_TIMEOUT,
        ErrorCode::SLOW_CONSUMER,
        ErrorCode::TOKEN_EXPIRED,
        ErrorCode::TOKEN_REPLAYED,
        ErrorCode::CONTEXT_UNAVAILABLE,
        ErrorCode::NO_CAPACITY,
        ErrorCode::SHUTTING_DOWN,
        ErrorCode::CHECKPOINT_FAILED,
    ]
    .contains(&code)
}
