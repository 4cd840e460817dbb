//! A blocking Elko client over `std::net`, for client authors.
//!
//! ```no_run
//! use elko_client::{Client, ClientOptions, Event};
//! use std::time::Duration;
//!
//! let client = Client::connect("127.0.0.1:7700", ClientOptions::default())?;
//! let mut session = client.enter("alice", "room/1")?;
//! println!("members: {:?}", session.snapshot().members);
//! session.say("hello")?;
//! while let Some(event) = session.next_event(Some(Duration::from_secs(1)))? {
//!     match event {
//!         Event::Said(s) => println!("{}: {}", s.from, s.text),
//!         Event::Closed { reason } => {
//!             println!("closed: {reason}");
//!             return Ok(());
//!         }
//!         _ => {}
//!     }
//! }
//! session.exit()?;
//! # Ok::<(), elko_client::ClientError>(())
//! ```
//!
//! The flow is the protocol's (`docs/protocol.md`): ask a director, follow
//! its `Redirect` to a context server with the reservation token, `Enter`,
//! then talk. [`Client`] holds the director connection (kept open and reused,
//! reopened if the director closed it); [`Session`] is one entered context.
//!
//! What the library does for you:
//! - the handshake on both connections, and the version check;
//! - heartbeats: the server's Pings are answered, and a quiet connection is
//!   pinged (`conn` and the clock-driven `heartbeat` state machine);
//! - `ReEnter` (drain, shutdown, move), expired tokens and contexts still
//!   loading: back to the director and in again, at most
//!   [`ClientOptions::max_reentries`] times in a row, with backoff;
//! - limits: ids and text longer than the server accepts are refused
//!   locally ([`ClientError::InvalidId`], [`ClientError::TooLarge`]) rather
//!   than getting the connection closed.
//!
//! What it does not do: it starts no threads and does no I/O while you are
//! not inside one of its calls (so call [`Session::next_event`] regularly),
//! it has no async API, and it does not re-enter after a crash or a close
//! ([`Event::Closed`] says whether trying again makes sense).

mod client;
mod conn;
mod error;
mod heartbeat;
mod session;

pub use client::{Client, ClientOptions};
pub use error::{ClientError, ProtocolError};
pub use session::{CloseReason, Event, Session};

/// Protocol types that appear in this crate's API.
pub use elko_protocol::{
    ErrorCode, HistoryEntry, Limits, MessageType, ReEnterReason, Said, Snapshot,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_can_move_between_threads() {
        assert_send_sync::<Client>();
        assert_send::<Session>();
        assert_send_sync::<ClientError>();
    }
}
