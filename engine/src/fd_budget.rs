//! The descriptor budget: refuse connections before the process runs out of
//! descriptors, not after.
//!
//! Running out fails in the worst places: `accept` leaves the peer waiting in
//! the backlog until its handshake times out, and whatever else the process
//! opens at that moment (a checkpoint being written, a lock file, an operator's
//! metrics request) fails with it. So a loop answers a new peer SERVER_FULL
//! once the engine's connections, plus the descriptors the application holds
//! for long ([`HeldFd`]), plus [`FD_HEADROOM`] for everything short-lived, reach
//! the soft `RLIMIT_NOFILE` the engine found when it started. Running out
//! anyway (descriptors nobody counted) is still handled, by the reserve
//! descriptor and a paused listener (see `accept_ready` in `event_loop.rs`).
//!
//! The connections counted are one engine's (every loop of it): a server
//! runs one engine per process. Several engines in one process (tests) each
//! count only their own.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Descriptors kept free for what is neither a connection nor a [`HeldFd`]:
/// the loops' own (poll, waker, timer, listeners, the reserve), standard
/// streams, files opened and closed by worker threads, an operator endpoint's
/// connections. Generous, and small beside any limit a server runs with.
pub const FD_HEADROOM: usize = 256;

static HELD: AtomicUsize = AtomicUsize::new(0);

/// A descriptor the application keeps open for long (a context's lock file):
/// while this lives, the loops accept one connection fewer.
#[derive(Debug)]
pub struct HeldFd(());

impl HeldFd {
    /// Count one more long-lived descriptor.
    #[allow(clippy::new_without_default)] // each value is one counted descriptor
    pub fn new() -> HeldFd {
        HELD.fetch_add(1, Relaxed);
        HeldFd(())
    }
}

impl Drop for HeldFd {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Relaxed);
    }
}

/// Long-lived descriptors counted by live [`HeldFd`]s in this process.
pub fn held_fds() -> usize {
    HELD.load(Relaxed)
}

/// Most connections a process may hold with descriptor limit `limit` and
/// `held` long-lived descriptors.
pub fn connection_budget(limit: u64, held: usize) -> usize {
    usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_HEADROOM)
        .saturating_sub(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_the_headroom_and_the_held_descriptors() {
        assert_eq!(connection_budget(20_000, 0), 20_000 - FD_HEADROOM);
        assert_eq!(connection_budget(20_000, 44), 20_000 - FD_HEADROOM - 44);
        assert_eq!(connection_budget(100, 0), 0, "below the headroom: none");
        assert_eq!(connection_budget(u64::MAX, 7), usize::MAX - FD_HEADROOM - 7);
    }

    #[test]
    fn held_descriptors_are_counted_while_they_live() {
        // The only test of this crate that makes HeldFds.
        let before = held_fds();
        let a = HeldFd::new();
        let b = HeldFd::new();
        assert_eq!(held_fds(), before + 2);
        drop(a);
        assert_eq!(held_fds(), before + 1);
        drop(b);
        assert_eq!(held_fds(), before);
    }
}
