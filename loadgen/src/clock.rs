//! One time zero for every generator process of a run.
//!
//! Intended send times travel in the utterances as microseconds since the
//! run's epoch. Generator processes on one machine share `CLOCK_MONOTONIC`
//! (the clock behind `Instant` on Linux), so the controller names the epoch
//! as a raw monotonic reading and each process turns it into its own
//! `Instant`.

use std::time::{Duration, Instant};

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `Instant` matching the monotonic reading `ns` (in the past or future).
pub fn instant_at_mono(ns: u64) -> Instant {
    let (now_i, now_ns) = (Instant::now(), mono_now_ns());
    if ns <= now_ns {
        now_i
            .checked_sub(Duration::from_nanos(now_ns - ns))
            .unwrap_or(now_i)
    } else {
        now_i + Duration::from_nanos(ns - now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_readings_map_to_instants() {
        let ns = mono_now_ns();
        let i = instant_at_mono(ns);
        assert!(i.elapsed() < Duration::from_millis(50));
        let later = instant_at_mono(ns + 1_000_000_000);
        let d = later.duration_since(i);
        assert!(d > Duration::from_millis(999) && d < Duration::from_millis(1001));
    }
}
