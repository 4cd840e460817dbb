//! Elko's event-loop engine: one `mio` loop per core.
//!
//! The engine owns sockets, frames, timers and the mailboxes between loops;
//! it knows nothing about chat, contexts or directors. An application
//! implements [`Handler`] and gets, per loop, a [`Ctx`] to send frames, close
//! connections, set timers, post mail to other loops and hand connections to
//! them.
//!
//! Why it is shaped this way:
//! - **One loop per core, nothing shared on the hot path.** A loop owns a slab
//!   of connections and its handler; no lock is taken to read, dispatch or
//!   write. Loops talk only through bounded mailboxes plus a `mio::Waker`
//!   (glommio's thread-per-core, Redis `ae.c`).
//! - **A fixed order per pass** (see [`event_loop`](crate) docs in
//!   `event_loop.rs`): read and dispatch, mail, timers, one `send`/`sendmsg`
//!   flush per dirty connection, then reap. Output produced anywhere in a pass leaves in
//!   one syscall per connection.
//! - **Limits with numbers** ([`Limits`]): frame sizes, outbound soft/hard
//!   limits, read/write budgets per pass, handshake and idle timeouts,
//!   connections per loop. Crossing one closes only that connection, with a
//!   [`CloseReason`]; closes are deferred to the end of the pass and counted.
//! - **Encode once, fan out by reference**: frames are `Bytes`; a broadcast
//!   queues clones of one encoding.

mod close;
mod config;
mod conn;
mod ctx;
mod engine;
mod event_loop;
mod fd_budget;
mod handler;
mod listen;
mod mailbox;
mod out_queue;
mod process;
pub mod rx_stamp;
mod stats;
mod timer;
mod timerfd;

pub use close::{CloseKind, CloseReason};
pub use config::{AcceptMode, EngineConfig, Limits};
pub use conn::ConnId;
pub use ctx::{connect_stream, Ctx, MAX_LISTENERS};
pub use engine::{Engine, Poster};
pub use fd_budget::{connection_budget, held_fds, HeldFd, FD_HEADROOM};
pub use handler::Handler;
pub use listen::{bind_listener, ReservedPort};
pub use mailbox::PostError;
pub use out_queue::{OutQueue, WriteOutcome};
pub use process::{
    batch_scheduling, batch_scheduling_for_loop, clock_ticks, init_logging, open_fds,
    write_process_metrics, ProcStat,
};
pub use stats::{write_metric_family, write_prometheus, LoopStats, LoopStatsSnapshot};
pub use timer::TimerId;
pub use timerfd::TimerFd;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (or `want`, if lower),
/// and reserve the descriptor table up to it (at most [`FD_TABLE_RESERVE`]
/// slots; see [`reserve_fd_table`]). Returns the soft limit now in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
pub fn raise_fd_limit(want: u64) -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let target = want.min(lim.rlim_max as u64);
    if (lim.rlim_cur as u64) < target {
        lim.rlim_cur = target as libc::rlim_t;
        // SAFETY: setrlimit reads the rlimit struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let limit = lim.rlim_cur as u64;
    // Best effort: without it, growing the table later only costs time.
    let _ = reserve_fd_table(limit.min(FD_TABLE_RESERVE));
    Ok(limit)
}

/// The descriptor table [`raise_fd_limit`] reserves: 65 536 slots, 512 KiB
/// of kernel memory.
pub const FD_TABLE_RESERVE: u64 = 1 << 16;

/// Grow this process's descriptor table now, to hold descriptors below `n`
/// (at most the soft `RLIMIT_NOFILE`), so that accepting and connecting do
/// not grow it later.
///
/// The kernel grows the table by doubling when a new descriptor does not fit,
/// and in a multi-threaded process each growth first waits for an RCU grace
/// period (`expand_fdtable`): on this project's VM, 10-30 ms during which the
/// `accept` or `socket` call that crossed 256, 512, ... 8192 descriptors
/// blocks its whole event loop (every client entering at that moment waited
/// as long). Call it before starting threads (servers do, through
/// [`raise_fd_limit`]); the table never shrinks.
pub fn reserve_fd_table(n: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let limit = process::max_fds().unwrap_or(n);
    let Some(highest) = n.min(limit).checked_sub(1) else {
        return Ok(());
    };
    let highest = libc::c_int::try_from(highest).unwrap_or(libc::c_int::MAX);
    let any = std::fs::File::open("/dev/null")?;
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own onto the lowest
    // free number >= `highest`; the copy is closed at once.
    let fd = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the descriptor fcntl just made for us.
    unsafe { libc::close(fd) };
    Ok(())
}
