//! Elko context server (`contextd`).

pub mod checkpoint;
