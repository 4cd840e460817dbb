//! Elko engine.
