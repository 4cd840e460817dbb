//! Numeric codes carried on the wire.
//!
//! Codes are plain `u16` newtypes rather than Rust enums so that a client
//! built for an older version still parses a code it does not know: it keeps
//! the number and prints it, instead of failing the whole frame.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a request was refused or a connection is being closed. Carried in
/// [`crate::ErrorFrame`] and [`crate::Denied`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($($name:ident = $val:literal, $text:literal;)*) => {
        impl ErrorCode {
            $(#[doc = $text] pub const $name: ErrorCode = ErrorCode($val);)*
            /// Every code this version knows, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];
            /// Stable upper-case name, or `None` for a code this version does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($val => Some(stringify!($name)),)* _ => None }
            }
            /// One-line description of what the code means.
            pub fn description(self) -> &'static str {
                match self.0 { $($val => $text,)* _ => "unknown error code" }
            }
        }
    };
}

error_codes! {
    // 1..=19: framing and handshake.
    BAD_MAGIC = 1, "the first frame was not a Hello carrying the Elko magic";
    UNSUPPORTED_VERSION = 2, "no protocol version is supported by both peers";
    FRAME_TOO_LARGE = 3, "a frame's length exceeded the limit in force";
    UNKNOWN_MESSAGE_TYPE = 4, "a frame carried a message type this server does not know";
    MALFORMED = 5, "a frame's body did not decode (truncated, trailing bytes, bad UTF-8, bad value)";
    UNEXPECTED_MESSAGE = 6, "a valid message arrived in a state where it is not allowed";
    SERVER_FULL = 7, "the server is at its connection limit; retry later or elsewhere";
    HANDSHAKE_TIMEOUT = 8, "no Hello arrived in time";
    IDLE_TIMEOUT = 9, "nothing arrived for longer than the idle timeout";
    SLOW_CONSUMER = 10, "the peer did not read fast enough; its outbound queue overflowed";
    INVALID_ID = 11, "a context id or user name was empty, too long or had control characters";
    // 20..=39: reservations and entry.
    TOKEN_INVALID = 20, "the reservation token is forged or corrupt";
    TOKEN_EXPIRED = 21, "the reservation token has expired; ask the director again";
    TOKEN_REPLAYED = 22, "the reservation token was already used";
    TOKEN_WRONG_CONTEXT = 23, "the reservation token was issued for another context or user";
    CONTEXT_UNAVAILABLE = 24, "the context could not be loaded in time; ask the director again";
    NO_SUCH_USER = 25, "the user named in an enter-where-user request is not in any context";
    NO_CAPACITY = 26, "no context server is available to host the context";
    ALREADY_ACTIVE = 27, "the context is already active on another context server";
    NOT_ENTERED = 28, "the request needs an entered context";
    TEXT_TOO_LONG = 29, "an utterance or application message exceeded the limit";
    // 40..=59: cluster links.
    AUTH_FAILED = 40, "a context server failed cluster authentication";
    SHUTTING_DOWN = 41, "the server is shutting down";
    CHECKPOINT_FAILED = 42, "the context's checkpoint could not be read or written";
    INTERNAL = 50, "an internal server error; the server logged details";
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "ErrorCode({})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "error code {}", self.0),
        }
    }
}

/// Why a context server asks a client to go back to the director. Carried in
/// [`crate::ReEnter`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReEnterReason(pub u16);

impl ReEnterReason {
    /// The server is draining: it takes no new work; enter again through the director.
    pub const DRAIN: ReEnterReason = ReEnterReason(1);
    /// The server is shutting down; the context was checkpointed.
    pub const SHUTDOWN: ReEnterReason = ReEnterReason(2);
    /// The context moved to another server.
    pub const MOVED: ReEnterReason = ReEnterReason(3);
    /// The server is near its connection limit and takes no new contexts;
    /// enter again through the director, which places the context elsewhere.
    pub const FULL: ReEnterReason = ReEnterReason(4);

    /// Stable upper-case name, or `None` for a reason this version does not know.
    pub fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("DRAIN"),
            2 => Some("SHUTDOWN"),
            3 => Some("MOVED"),
            4 => Some("FULL"),
            _ => None,
        }
    }
}

impl fmt::Debug for ReEnterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "ReEnterReason({})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.0), "duplicate code {}", c.0);
            assert!(c.name().is_some());
        }
        assert_eq!(ErrorCode(999).name(), None);
        assert_eq!(format!("{}", ErrorCode(999)), "error code 999");
        assert_eq!(format!("{:?}", ErrorCode::SERVER_FULL), "SERVER_FULL(7)");
    }
}
