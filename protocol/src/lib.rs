//! The Elko wire protocol: bytes in, messages out.
//!
//! This crate defines the frames and messages spoken on Elko's three links
//! (client <-> director, client <-> context server, context server <-> director)
//! and converts between them and bytes. It is the single source of truth for
//! the wire format; `docs/protocol.md` describes the same bytes for authors of
//! clients in other languages, and `protocol/testdata/` holds hex test vectors
//! that this crate's tests check.
//!
//! What it does **not** do: it opens no sockets, reads no clocks, starts no
//! threads and keeps no session state. Timeouts, heartbeats, the handshake
//! state machine and backpressure live in `elko-engine` and the applications;
//! this crate only tells them which bytes make which message, and rejects bytes
//! that make none (truncated, trailing, oversize, unknown) *before* allocating
//! for them.
//!
//! Layout of a frame (all integers little-endian):
//!
//! ```text
//! +----------------+---------+---------------------------+
//! | length: u32 LE | type:u8 | body: length - 1 bytes    |
//! +----------------+---------+---------------------------+
//! ```
//!
//! `length` counts the type byte and the body. The body is the message's
//! fields in declaration order, encoded with bincode 2 under [`codec::CONFIG`]
//! (little-endian, variable-length integers). See `docs/protocol.md`.

pub mod codec;
pub mod codes;
pub mod frame;
pub mod message;

pub use codec::{decode_body, decode_body_borrowed, encode_frame, encode_frame_to_bytes, Body};
pub use codes::{ErrorCode, ReEnterReason};
pub use frame::{Frame, FrameDecoder, FrameError, FRAME_HEADER_LEN};
pub use message::*;

/// Magic number carried in [`Hello`]: the ASCII bytes `"ELKO"` read as a
/// little-endian `u32` (`0x4F4B4C45`), so it appears as `45 4C 4B 4F` on the wire.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ELKO");

/// The protocol version this build speaks. A peer announces the range it
/// supports in [`Hello`]; the server picks the highest version both support.
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Default maximum frame length (type byte + body) after the handshake.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;
/// Default maximum frame length before the handshake has completed.
pub const DEFAULT_MAX_FRAME_PREAUTH: u32 = 4 * 1024;
/// Largest frame length any configuration may allow (16 MiB). Also the bound
/// the body decoder enforces on any single length it reads.
pub const MAX_FRAME_CEILING: u32 = 16 * 1024 * 1024;
/// Default maximum length in bytes of a context id or user name.
pub const DEFAULT_MAX_ID_LEN: u16 = 255;

/// Pick the protocol version to use with a peer supporting `min..=max`, or
/// `None` if the ranges do not overlap.
pub fn negotiate_version(peer_min: u16, peer_max: u16) -> Option<u16> {
    let hi = peer_max.min(PROTOCOL_VERSION);
    let lo = peer_min.max(MIN_PROTOCOL_VERSION);
    (lo <= hi).then_some(hi)
}

/// Check that `id` is a valid context id or user name: non-empty, at most
/// `max_len` bytes, and free of control characters (so it prints safely in
/// logs and in the `elko-chat` line format).
pub fn validate_id(id: &str, max_len: u16) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > usize::from(max_len) {
        return Err(IdError::TooLong {
            len: id.len(),
            max: max_len,
        });
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(IdError::ControlChar(c));
    }
    Ok(())
}

/// Why a context id or user name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty: give a non-empty context id or user name")]
    Empty,
    #[error("id is {len} bytes long, the limit is {max}: use a shorter id")]
    TooLong { len: usize, max: u16 },
    #[error("id contains control character {0:?}: ids must be printable")]
    ControlChar(char),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_spell_elko() {
        assert_eq!(MAGIC.to_le_bytes(), *b"ELKO");
        assert_eq!(MAGIC, 0x4F4B_4C45);
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate_version(1, 1), Some(1));
        assert_eq!(negotiate_version(1, 9), Some(PROTOCOL_VERSION));
        assert_eq!(negotiate_version(2, 9), None);
        assert_eq!(negotiate_version(0, 0), None);
    }

    #[test]
    fn id_validation() {
        assert!(validate_id("room/42", 255).is_ok());
        assert_eq!(validate_id("", 255), Err(IdError::Empty));
        assert_eq!(
            validate_id("abc", 2),
            Err(IdError::TooLong { len: 3, max: 2 })
        );
        assert_eq!(validate_id("a\nb", 255), Err(IdError::ControlChar('\n')));
    }
}
