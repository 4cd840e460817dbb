//! Why a connection was closed.
//!
//! Closing is deferred: a connection is *marked* with a reason during the pass
//! and reaped at the end of it, so a handler never sees a connection vanish in
//! the middle of its own callback. Every reap is counted by [`CloseKind`].

use elko_protocol::codec::DecodeError;
use elko_protocol::{ErrorCode, FrameError};
use std::fmt;
use std::io;

/// Why a connection was (or is being) closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (read returned 0).
    PeerClosed,
    /// A read or write failed.
    Io(io::ErrorKind),
    /// An outbound connection could not be established.
    ConnectFailed(io::ErrorKind),
    /// The byte stream did not split into frames (oversize or empty frame).
    Frame(FrameError),
    /// A frame did not decode, or arrived in a state where it is not allowed.
    Protocol { code: ErrorCode, detail: String },
    /// The peer sent an ErrorFrame.
    PeerError { code: ErrorCode, message: String },
    /// The outbound queue passed the hard limit, or stayed above the soft
    /// limit for longer than the grace period.
    SlowConsumer { queued: usize },
    /// No Hello (or Welcome) arrived in time.
    HandshakeTimeout,
    /// Nothing was received for longer than the idle timeout.
    IdleTimeout,
    /// The loop was at its connection limit when the connection arrived.
    ServerFull,
    /// The application closed it, with a code it sent to the peer (or
    /// `None` for a normal close such as a client's Exit).
    Application(Option<ErrorCode>),
    /// The engine is shutting down.
    Shutdown,
    /// A hand-off to another loop failed because that loop's mailbox was full.
    MailboxFull,
}

/// The fieldless kind of a [`CloseReason`], for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum CloseKind {
    PeerClosed,
    Io,
    ConnectFailed,
    Frame,
    Protocol,
    PeerError,
    SlowConsumer,
    HandshakeTimeout,
    IdleTimeout,
    ServerFull,
    Application,
    Shutdown,
    MailboxFull,
}

impl CloseKind {
    /// Number of kinds (size of a counter array).
    pub const COUNT: usize = 13;
    /// Every kind, in counter order.
    pub const ALL: [CloseKind; Self::COUNT] = [
        CloseKind::PeerClosed,
        CloseKind::Io,
        CloseKind::ConnectFailed,
        CloseKind::Frame,
        CloseKind::Protocol,
        CloseKind::PeerError,
        CloseKind::SlowConsumer,
        CloseKind::HandshakeTimeout,
        CloseKind::IdleTimeout,
        CloseKind::ServerFull,
        CloseKind::Application,
        CloseKind::Shutdown,
        CloseKind::MailboxFull,
    ];

    /// Stable snake_case name, for metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseKind::PeerClosed => "peer_closed",
            CloseKind::Io => "io_error",
            CloseKind::ConnectFailed => "connect_failed",
            CloseKind::Frame => "frame_error",
            CloseKind::Protocol => "protocol_error",
            CloseKind::PeerError => "peer_error",
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::HandshakeTimeout => "handshake_timeout",
            CloseKind::IdleTimeout => "idle_timeout",
            CloseKind::ServerFull => "server_full",
            CloseKind::Application => "application",
            CloseKind::Shutdown => "shutdown",
            CloseKind::MailboxFull => "mailbox_full",
        }
    }
}

impl CloseReason {
    /// This reason's counter kind.
    pub fn kind(&self) -> CloseKind {
        match self {
            CloseReason::PeerClosed => CloseKind::PeerClosed,
            CloseReason::Io(_) => CloseKind::Io,
            CloseReason::ConnectFailed(_) => CloseKind::ConnectFailed,
            CloseReason::Frame(_) => CloseKind::Frame,
            CloseReason::Protocol { .. } => CloseKind::Protocol,
            CloseReason::PeerError { .. } => CloseKind::PeerError,
            CloseReason::SlowConsumer { .. } => CloseKind::SlowConsumer,
            CloseReason::HandshakeTimeout => CloseKind::HandshakeTimeout,
            CloseReason::IdleTimeout => CloseKind::IdleTimeout,
            CloseReason::ServerFull => CloseKind::ServerFull,
            CloseReason::Application(_) => CloseKind::Application,
            CloseReason::Shutdown => CloseKind::Shutdown,
            CloseReason::MailboxFull => CloseKind::MailboxFull,
        }
    }

    /// The error code to send the peer before closing, if any.
    pub fn wire_code(&self) -> Option<ErrorCode> {
        match self {
            CloseReason::Frame(FrameError::TooLarge { .. }) => Some(ErrorCode::FRAME_TOO_LARGE),
            CloseReason::Frame(FrameError::Empty) => Some(ErrorCode::MALFORMED),
            CloseReason::Protocol { code, .. } => Some(*code),
            CloseReason::SlowConsumer { .. } => Some(ErrorCode::SLOW_CONSUMER),
            CloseReason::HandshakeTimeout => Some(ErrorCode::HANDSHAKE_TIMEOUT),
            CloseReason::IdleTimeout => Some(ErrorCode::IDLE_TIMEOUT),
            CloseReason::ServerFull => Some(ErrorCode::SERVER_FULL),
            CloseReason::Application(code) => *code,
            CloseReason::Shutdown => Some(ErrorCode::SHUTTING_DOWN),
            _ => None,
        }
    }

    /// A protocol error for a body that did not decode.
    pub fn from_decode(e: &DecodeError) -> CloseReason {
        let code = match e {
            DecodeError::UnknownType(_) => ErrorCode::UNKNOWN_MESSAGE_TYPE,
            DecodeError::WrongType { .. } => ErrorCode::UNEXPECTED_MESSAGE,
            _ => ErrorCode::MALFORMED,
        };
        CloseReason::Protocol {
            code,
            detail: e.to_string(),
        }
    }

    /// A protocol error for a valid message in the wrong state.
    pub fn unexpected(detail: impl Into<String>) -> CloseReason {
        CloseReason::Protocol {
            code: ErrorCode::UNEXPECTED_MESSAGE,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => write!(f, "peer closed the connection"),
            CloseReason::Io(k) => write!(f, "I/O error: {k}"),
            CloseReason::ConnectFailed(k) => write!(f, "connect failed: {k}"),
            CloseReason::Frame(e) => write!(f, "framing error: {e}"),
            CloseReason::Protocol { code, detail } => write!(f, "protocol error {code}: {detail}"),
            CloseReason::PeerError { code, message } => {
                write!(f, "peer sent error {code}: {message}")
            }
            CloseReason::SlowConsumer { queued } => {
                write!(f, "slow consumer: {queued} bytes queued and not read")
            }
            CloseReason::HandshakeTimeout => write!(f, "handshake timeout"),
            CloseReason::IdleTimeout => write!(f, "idle timeout"),
            CloseReason::ServerFull => write!(f, "server full"),
            CloseReason::Application(Some(c)) => write!(f, "closed by application: {c}"),
            CloseReason::Application(None) => write!(f, "closed by application"),
            CloseReason::Shutdown => write!(f, "engine shutdown"),
            CloseReason::MailboxFull => write!(f, "target loop's mailbox full during hand-off"),
        }
    }
}
