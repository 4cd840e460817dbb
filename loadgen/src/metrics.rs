//! What the generator's loops count, shared with the reporting thread.
//!
//! Counters are relaxed atomics; latency histograms are per loop behind an
//! uncontended mutex (the reporter takes it once a second), so the hot path
//! allocates nothing and contends with nobody.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Highest latency recorded, µs (a minute); higher values are clamped.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_LATENCY_US, 3) {
        Ok(h) => h,
        Err(_) => unreachable!("bounds 1..60e6 with 3 digits are valid"),
    }
}

/// One loop's latency histograms.
#[derive(Debug)]
pub struct LoopHists {
    /// From the intended send time (corrected for coordinated omission), whole window.
    pub corrected: Histogram<u64>,
    /// From the actual send time, whole window.
    pub uncorrected: Histogram<u64>,
    /// Corrected, since the reporter last took it (for the timeline).
    pub interval: Histogram<u64>,
}

impl LoopHists {
    fn new() -> Self {
        LoopHists {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
            interval: new_histogram(),
        }
    }

    /// Record one delivery's latencies.
    pub fn record(&mut self, corrected_us: u64, uncorrected_us: u64) {
        let c = corrected_us.clamp(1, MAX_LATENCY_US);
        let u = uncorrected_us.clamp(1, MAX_LATENCY_US);
        // Values are clamped into the histogram's range: recording cannot fail.
        let _ = self.corrected.record(c);
        let _ = self.uncorrected.record(u);
        let _ = self.interval.record(c);
    }
}

/// Everything the loops and the reporter share.
#[derive(Debug)]
pub struct Shared {
    /// Time zero of every `*_us` value in this run (intended and actual send times).
    pub epoch: Instant,
    /// Utterances intended in `[window_start_us, window_end_us)` are the measured ones.
    pub window_start_us: AtomicU64,
    pub window_end_us: AtomicU64,
    /// Clients start speaking here (a little before the window, to be in steady state).
    pub speak_start_us: AtomicU64,
    /// Mean time between one client's utterances, µs (the `max` preset lowers it step by step).
    pub mean_interval_us: AtomicU64,
    pub stop_sending: AtomicBool,
    /// Clients inside their context.
    pub connected: AtomicU64,
    /// Every utterance sent / every delivery received, window or not (for rates).
    pub sent_total: AtomicU64,
    pub received_total: AtomicU64,
    /// Utterances intended inside the window, and the deliveries they should and did make.
    pub utterances_window: AtomicU64,
    pub expected_window: AtomicU64,
    pub received_window: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    /// Members currently entered, per room (the expected fanout of an utterance).
    pub room_members: Vec<AtomicU32>,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub hists: Vec<Mutex<LoopHists>>,
}

impl Shared {
    /// Shared state for `rooms` rooms and `loops` generator loops.
    pub fn new(rooms: usize, loops: usize, mean_interval_us: u64) -> Shared {
        Shared {
            epoch: Instant::now(),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            speak_start_us: AtomicU64::new(u64::MAX),
            mean_interval_us: AtomicU64::new(mean_interval_us),
            stop_sending: AtomicBool::new(false),
            connected: AtomicU64::new(0),
            sent_total: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
            utterances_window: AtomicU64::new(0),
            expected_window: AtomicU64::new(0),
            received_window: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            room_members: (0..rooms).map(|_| AtomicU32::new(0)).collect(),
            errors: Mutex::new(BTreeMap::new()),
            hists: (0..loops).map(|_| Mutex::new(LoopHists::new())).collect(),
        }
    }

    /// Microseconds since the epoch.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Whether an utterance intended at `t_us` is measured.
    pub fn in_window(&self, t_us: u64) -> bool {
        t_us >= self.window_start_us.load(Relaxed) && t_us < self.window_end_us.load(Relaxed)
    }

    /// Count an error of `kind`.
    pub fn error(&self, kind: &str) {
        *self.errors.lock().entry(kind.to_string()).or_default() += 1;
    }

    /// Take every loop's interval histogram (merged), leaving them empty.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for l in &self.hists {
            let mut l = l.lock();
            let _ = h.add(&l.interval);
            l.interval.reset();
        }
        h
    }

    /// Every loop's whole-window histograms, merged: (corrected, uncorrected).
    pub fn totals(&self) -> (Histogram<u64>, Histogram<u64>) {
        let (mut c, mut u) = (new_histogram(), new_histogram());
        for l in &self.hists {
            let l = l.lock();
            let _ = c.add(&l.corrected);
            let _ = u.add(&l.uncorrected);
        }
        (c, u)
    }
}

/// Delivery order checking for one receiver: every room's utterances carry
/// a context sequence number increasing by one.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqCheck {
    last: Option<u64>,
}

/// What one received sequence number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    InOrder,
    /// Numbers were skipped (they may still arrive late, as out of order).
    Gap(u64),
    Duplicate,
    OutOfOrder,
}

impl SeqCheck {
    /// Judge `seq` and remember it.
    pub fn check(&mut self, seq: u64) -> SeqVerdict {
        let v = match self.last {
            None => SeqVerdict::InOrder,
            Some(last) if seq == last + 1 => SeqVerdict::InOrder,
            Some(last) if seq == last => SeqVerdict::Duplicate,
            Some(last) if seq < last => SeqVerdict::OutOfOrder,
            Some(last) => SeqVerdict::Gap(seq - last - 1),
        };
        if self.last.is_none_or(|l| seq > l) {
            self.last = Some(seq);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_verdicts() {
        let mut c = SeqCheck::default();
        assert_eq!(c.check(10), SeqVerdict::InOrder);
        assert_eq!(c.check(11), SeqVerdict::InOrder);
        assert_eq!(c.check(11), SeqVerdict::Duplicate);
        assert_eq!(c.check(14), SeqVerdict::Gap(2));
        assert_eq!(c.check(12), SeqVerdict::OutOfOrder);
        assert_eq!(c.check(15), SeqVerdict::InOrder);
    }

    #[test]
    fn histograms_merge_across_loops_and_clamp() {
        let s = Shared::new(1, 2, 1);
        s.hists[0].lock().record(100, 90);
        s.hists[1].lock().record(u64::MAX, 0);
        let (c, u) = s.totals();
        assert_eq!(c.len(), 2);
        assert!(c.max() >= MAX_LATENCY_US - MAX_LATENCY_US / 1000);
        assert_eq!(u.min(), 1);
        assert_eq!(s.take_interval().len(), 2);
        assert_eq!(s.take_interval().len(), 0, "taking resets");
    }
}
