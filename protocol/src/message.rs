//! The message catalog of all three links.
//!
//! Each message is a struct whose fields are encoded in declaration order
//! (see [`crate::codec`]). Its frame type byte is fixed by the table in the
//! `messages!` invocation below; the ranges group the links:
//!
//! | range       | link                                      |
//! |-------------|-------------------------------------------|
//! | 0x01..=0x0F | every link: handshake, errors, heartbeats  |
//! | 0x10..=0x1F | client <-> director                        |
//! | 0x20..=0x3F | client <-> context server                  |
//! | 0x40..=0x5F | context server <-> director                |
//!
//! Hot messages have borrowed twins (`SayRef`, `SaidRef`) that encode to the
//! same bytes and decode without allocating.

use crate::codec::{decode_body, Body, DecodeError};
use crate::codes::{ErrorCode, ReEnterReason};
use serde::{Deserialize, Serialize};

macro_rules! messages {
    ($( $(#[$doc:meta])* $name:ident = $tag:literal, $dir:literal; )*) => {
        /// The frame type byte of each message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum MessageType {
            $($(#[$doc])* $name = $tag,)*
        }

        impl MessageType {
            /// Every message type, in numeric order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name,)*];

            /// The type named by a frame's type byte, if this version knows it.
            pub fn from_u8(b: u8) -> Option<MessageType> {
                match b {
                    $($tag => Some(MessageType::$name),)*
                    _ => None,
                }
            }

            /// The message's name, as in `docs/protocol.md`.
            pub fn name(self) -> &'static str {
                match self { $(MessageType::$name => stringify!($name),)* }
            }

            /// Who sends it, as in `docs/protocol.md` (for example "client -> director").
            pub fn direction(self) -> &'static str {
                match self { $(MessageType::$name => $dir,)* }
            }
        }

        /// Any message, owned.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $($(#[$doc])* $name($name),)*
        }

        impl Message {
            /// This message's frame type.
            pub fn message_type(&self) -> MessageType {
                match self { $(Message::$name(_) => MessageType::$name,)* }
            }

            /// Decode a frame's body given its raw type byte.
            pub fn decode(ty: u8, body: &[u8]) -> Result<Message, DecodeError> {
                let t = MessageType::from_u8(ty).ok_or(DecodeError::UnknownType(ty))?;
                Ok(match t {
                    $(MessageType::$name => Message::$name(decode_body(t, body)?),)*
                })
            }

            /// Encode as one whole frame appended to `out`.
            pub fn encode(&self, out: &mut bytes::BytesMut) -> Result<usize, crate::codec::EncodeError> {
                match self { $(Message::$name(m) => crate::codec::encode_frame(m, out),)* }
            }

            /// Encode as one frame in its own shareable buffer.
            pub fn to_bytes(&self) -> Result<bytes::Bytes, crate::codec::EncodeError> {
                match self { $(Message::$name(m) => crate::codec::encode_frame_to_bytes(m),)* }
            }
        }

        $(
            impl Body for $name {
                const TYPE: MessageType = MessageType::$name;
            }
            impl From<$name> for Message {
                fn from(m: $name) -> Message { Message::$name(m) }
            }
        )*
    };
}

messages! {
    /// First frame of every connection, from the connecting side.
    Hello = 0x01, "connecting side -> accepting side";
    /// The accepting side's answer to a valid Hello.
    Welcome = 0x02, "accepting side -> connecting side";
    /// A fatal error; the sender closes the connection after it. Its layout is
    /// the same in every protocol version.
    ErrorFrame = 0x03, "either side";
    /// Heartbeat request.
    Ping = 0x04, "either side";
    /// Heartbeat answer, echoing the Ping's nonce.
    Pong = 0x05, "either side";

    /// Ask to enter a context by its id.
    EnterContext = 0x10, "client -> director";
    /// Ask to enter the context where another user is.
    EnterWhereUser = 0x11, "client -> director";
    /// Where to go: a context server address and a reservation token.
    Redirect = 0x12, "director -> client";
    /// The director refused an enter request.
    Denied = 0x13, "director -> client";

    /// Enter a context on a context server with a reservation token.
    Enter = 0x20, "client -> context server";
    /// The context as the client finds it on entry.
    Snapshot = 0x21, "context server -> client";
    /// Say something in the context.
    Say = 0x22, "client -> context server";
    /// Someone (possibly the receiver) said something.
    Said = 0x23, "context server -> client";
    /// A member joined the context.
    Joined = 0x24, "context server -> client";
    /// A member left the context.
    Left = 0x25, "context server -> client";
    /// Leave the context; the server closes the connection after it.
    Exit = 0x26, "client -> context server";
    /// Go back to the director and enter again (drain, shutdown, move).
    ReEnter = 0x27, "context server -> client";
    /// An application-defined message; meaning set by the context's application.
    AppMessage = 0x28, "client <-> context server";

    /// A context server joins a director's pool.
    Register = 0x40, "context server -> director";
    /// The director accepted the registration.
    Registered = 0x41, "director -> context server";
    /// Periodic load figures per event loop.
    LoadReport = 0x42, "context server -> director";
    /// Activate (load) a context.
    Activate = 0x43, "director -> context server";
    /// A context is now active on this context server.
    ContextOpened = 0x44, "context server -> director";
    /// A context could not be activated.
    ActivateFailed = 0x45, "context server -> director";
    /// A context was checkpointed and unloaded.
    ContextClosed = 0x46, "context server -> director";
    /// A user entered a context.
    UserEntered = 0x47, "context server -> director";
    /// A user left a context.
    UserExited = 0x48, "context server -> director";
    /// A client holding a reservation token is on its way.
    ExpectClient = 0x49, "director -> context server";
    /// Take no new activations; send clients back to the director.
    Drain = 0x4A, "director -> context server";
    /// The context server is shutting down.
    ShuttingDown = 0x4B, "context server -> director";
}

// ---- every link ------------------------------------------------------------

/// First frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`crate::MAGIC`].
    pub magic: u32,
    /// Oldest protocol version the sender speaks.
    pub min_version: u16,
    /// Newest protocol version the sender speaks.
    pub max_version: u16,
    /// Free-form name and version of the client software, for logs.
    pub client_name: String,
}

/// The limits the accepting side enforces, announced in [`Welcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame length (type byte + body) accepted after the handshake.
    pub max_frame: u32,
    /// Largest context id or user name, in bytes.
    pub max_id_len: u16,
    /// Largest utterance text or application message body, in bytes.
    pub max_text_len: u32,
    /// Send a Ping when nothing was received for this long (milliseconds).
    pub heartbeat_ms: u32,
    /// The connection is closed when nothing was received for this long (milliseconds).
    pub idle_timeout_ms: u32,
}

/// Answer to a valid [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version chosen for this connection.
    pub version: u16,
    /// Identifies the server process (for logs and for clients choosing a route).
    pub server_id: String,
    /// The limits the server enforces.
    pub limits: Limits,
    /// 16 random bytes, fresh per connection: the challenge a context server
    /// answers in [`Register`]. Clients ignore it.
    pub challenge: [u8; 16],
}

/// A fatal error. The sender closes the connection after sending it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail, for logs.
    pub message: String,
}

/// Heartbeat request; the receiver answers with a [`Pong`] carrying the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

/// Heartbeat answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub nonce: u64,
}

// ---- client <-> director -----------------------------------------------------

/// Ask to enter context `context` as user `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnterContext {
    /// Chosen by the client, echoed in the answer.
    pub request_id: u32,
    pub user: String,
    pub context: String,
}

/// Ask to enter the context where `target_user` currently is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnterWhereUser {
    pub request_id: u32,
    pub user: String,
    pub target_user: String,
}

/// Go to `contextd_addr` and present `token` in an [`Enter`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    pub request_id: u32,
    /// The context to enter (useful after [`EnterWhereUser`]).
    pub context: String,
    /// `host:port` of the context server's client listener.
    pub contextd_addr: String,
    /// Opaque reservation token, bound to (context, user), single use.
    #[serde(with = "crate::codec::byte_vec")]
    pub token: Vec<u8>,
    /// The token expires this many milliseconds after it was issued.
    pub expires_in_ms: u32,
}

/// The director refused an enter request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denied {
    pub request_id: u32,
    pub code: ErrorCode,
    pub message: String,
}

// ---- client <-> context server -------------------------------------------------

/// Enter `context` as `user`, presenting the director's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enter {
    pub context: String,
    pub user: String,
    #[serde(with = "crate::codec::byte_vec")]
    pub token: Vec<u8>,
}

/// One remembered utterance in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The context's sequence number of the utterance.
    pub context_seq: u64,
    pub from: String,
    pub text: String,
    /// Server wall-clock time of the utterance, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The context as the client finds it on entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub context: String,
    /// The application running the context (for example "chat", "auction").
    pub app: String,
    /// Members present, the entering user included.
    #[serde(deserialize_with = "crate::codec::bounded_vec::deserialize")]
    pub members: Vec<String>,
    /// The most recent utterances, oldest first.
    #[serde(deserialize_with = "crate::codec::bounded_vec::deserialize")]
    pub history: Vec<HistoryEntry>,
    /// Application-defined state (see `docs/protocol.md` for each application).
    #[serde(with = "crate::codec::byte_vec")]
    pub state: Vec<u8>,
}

/// Say `text` in the entered context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Say {
    /// Chosen by the client (normally 1, 2, 3, ...), echoed in [`Said`].
    pub client_seq: u64,
    /// The client's send timestamp in microseconds on the client's own clock,
    /// echoed untouched in [`Said`] so a client can measure latency.
    pub sent_at_us: u64,
    pub text: String,
}

/// Borrowed twin of [`Say`]: same bytes, decodes without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SayRef<'a> {
    pub client_seq: u64,
    pub sent_at_us: u64,
    pub text: &'a str,
}

/// Someone said something. Every member receives every utterance, the
/// speaker's own included, in the order the context received them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Said {
    /// The context's sequence number, increasing by one per utterance.
    pub context_seq: u64,
    pub from: String,
    /// The speaker's [`Say::client_seq`].
    pub client_seq: u64,
    /// The speaker's [`Say::sent_at_us`].
    pub sent_at_us: u64,
    pub text: String,
}

/// Borrowed twin of [`Said`]: same bytes, decodes without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaidRef<'a> {
    pub context_seq: u64,
    pub from: &'a str,
    pub client_seq: u64,
    pub sent_at_us: u64,
    pub text: &'a str,
}

impl Body for SayRef<'_> {
    const TYPE: MessageType = MessageType::Say;
}
impl Body for SaidRef<'_> {
    const TYPE: MessageType = MessageType::Said;
}

/// A member joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub user: String,
}

/// A member left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub user: String,
}

/// Leave the context. No fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {}

/// Go back to the director and enter again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReEnter {
    pub reason: ReEnterReason,
    pub message: String,
}

/// An application-defined message, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppMessage {
    /// Operation code, defined by the context's application.
    pub op: u16,
    #[serde(with = "crate::codec::byte_vec")]
    pub body: Vec<u8>,
}

// ---- context server <-> director -------------------------------------------------

/// A context server joins a director's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// Unique name of the context server process.
    pub provider_id: String,
    /// Increases each time the process starts, so a director can tell a
    /// restarted server from a stale connection of the old one.
    pub epoch: u64,
    /// `host:port` where clients reach this context server.
    pub client_addr: String,
    /// Number of event loops (cores) serving contexts.
    pub workers: u16,
    /// Most contexts this server will host at once (0 = no limit).
    pub capacity: u32,
    /// HMAC-SHA256 under the cluster secret over the Welcome's challenge,
    /// the provider id and the epoch (see `docs/protocol.md`).
    pub auth: [u8; 32],
}

/// The director accepted a [`Register`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub director_id: String,
}

/// Load of one event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopLoad {
    pub connections: u32,
    pub contexts: u32,
    pub users: u32,
    /// Fraction of the last interval spent working, in thousandths.
    pub busy_permille: u16,
}

/// Periodic load figures, one entry per event loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Increases by one per report.
    pub seq: u64,
    #[serde(deserialize_with = "crate::codec::bounded_vec::deserialize")]
    pub loops: Vec<LoopLoad>,
}

/// Activate context `context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activate {
    pub context: String,
}

/// Context `context` is active here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextOpened {
    pub context: String,
}

/// Context `context` could not be activated here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateFailed {
    pub context: String,
    pub code: ErrorCode,
    /// With [`ErrorCode::ALREADY_ACTIVE`]: the provider id that holds it, if known.
    pub holder: Option<String>,
}

/// Context `context` was checkpointed and unloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextClosed {
    pub context: String,
}

/// `user` entered `context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntered {
    pub context: String,
    pub user: String,
}

/// `user` left `context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserExited {
    pub context: String,
    pub user: String,
}

/// A client with a token for (`context`, `user`) is on its way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectClient {
    pub context: String,
    pub user: String,
    /// The token's unique id (its nonce).
    pub token_id: u64,
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Take no new activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {}

/// The context server is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuttingDown {}
