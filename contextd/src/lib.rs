//! Elko context server (`contextd`): hosts active contexts in memory, one
//! event loop per core, checkpoints them crash-safely, and reports to every
//! director.
//!
//! - [`host`]: the per-loop handler — contexts, sessions, director links.
//! - [`app`]: what a context does (chat, auction) behind the [`app::App`] trait.
//! - [`checkpoint`]: the crash-safe checkpoint store.
//! - [`lock`]: single activation across context servers.
//! - [`io`]: disk threads, so no loop ever waits for the disk.
//! - [`config`], [`server`]: configuration and wiring.

pub mod admin;
pub mod app;
pub mod checkpoint;
pub mod config;
pub mod host;
pub mod io;
pub mod lock;
pub mod server;
