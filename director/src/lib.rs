//! Elko director: knows which context server hosts each context and sends
//! clients there.
//!
//! - [`directory`]: the routing state as a pure state machine (no sockets,
//!   no clocks): provider registration and reports, placement of new
//!   contexts, enter requests, dead-provider detection.
//! - [`server`]: the `elko-engine` handler that drives the directory from
//!   one event loop.
//! - [`config`]: command line, environment and TOML file, merged.

pub mod admin;
pub mod config;
pub mod directory;
pub mod server;
