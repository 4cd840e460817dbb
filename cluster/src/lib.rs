//! What an Elko director and its context servers share.
//!
//! - [`secret`]: the cluster secret, and the rule that a cluster running on
//!   the built-in development secret may only bind loopback addresses.
//! - [`token`]: reservation tokens — issued by a director, checked by a
//!   context server with no round trip (HMAC under the cluster secret),
//!   bound to (context, user), expiring and single use.
//! - [`auth`]: the proof a context server gives when it registers with a
//!   director.
//! - [`admin`]: the operator's HTTP endpoint (metrics, state, commands) that
//!   both servers run on a thread of its own.
//!
//! The first three are pure code: no sockets and no clocks (times are passed
//! in), so every rule is tested with a fake clock.

pub mod admin;
pub mod auth;
pub mod secret;
pub mod token;

pub use secret::{ClusterSecret, SecretError};
pub use token::{ReplayGuard, TokenClaims, TokenError, TokenIssuer, TokenVerifier};
