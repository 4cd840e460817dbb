//! A one-shot `timerfd`: armed (relative, nanosecond resolution) for one
//! deadline and registered with a `mio::Poll`, so a loop wakes with
//! sub-millisecond precision (`epoll_wait` alone counts whole milliseconds).
//! The engine's loops keep their timer heap on one; the load generator's
//! peer loops (Redis, NATS) use it directly.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A `timerfd` (CLOCK_MONOTONIC, non-blocking) and the deadline it is armed for.
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
    armed_for: Option<Instant>,
}

impl TimerFd {
    /// A new, disarmed timer.
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes no pointers; the result is checked and
        // owned exactly once.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(TimerFd {
            fd,
            armed_for: None,
        })
    }

    /// Register for readability (it becomes readable when it fires).
    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Clear the expiry count after the timer fired.
    pub fn acknowledge(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads 8 bytes into an 8-byte stack buffer from our own fd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        self.armed_for = None;
    }

    /// Fire at `at` (no-op if already armed for it).
    pub fn arm(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        if self.armed_for == Some(at) {
            return Ok(());
        }
        // A zero it_value would disarm: wait at least a nanosecond.
        let d = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec on our stack; no old value asked.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_for = Some(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    #[test]
    fn fires_once_at_its_deadline_and_rearms() {
        let mut poll = Poll::new().expect("poll");
        let mut t = TimerFd::new().expect("timerfd");
        t.register(poll.registry(), Token(7)).expect("register");
        let mut events = Events::with_capacity(4);
        for wait in [Duration::from_micros(1500), Duration::from_micros(300)] {
            let start = Instant::now();
            t.arm(start + wait, start).expect("arm");
            // Arming again for the same deadline changes nothing.
            t.arm(start + wait, Instant::now()).expect("arm again");
            poll.poll(&mut events, Some(Duration::from_secs(5)))
                .expect("poll");
            let fired = events.iter().any(|e| e.token() == Token(7));
            assert!(fired, "the timer fired within 5 s");
            let took = start.elapsed();
            assert!(
                took >= wait,
                "fired after {took:?}, before its {wait:?} deadline"
            );
            t.acknowledge();
        }
        // Acknowledged and not re-armed: nothing more arrives.
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .expect("poll");
        assert!(events.is_empty(), "a disarmed timer stays quiet");
    }
}
