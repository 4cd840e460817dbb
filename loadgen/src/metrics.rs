//! What the generator's loops count, shared with the reporting thread.
//!
//! Each loop has its own cache-line-aligned counters (written by that loop
//! only, so nothing bounces between cores) and its own latency histograms
//! behind an uncontended mutex (the reporter takes it once a second). The
//! hot path allocates nothing and contends with nobody.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::fanout::{Fanout, RoomFanouts};

/// Failed attempts to enter a room after which a simulated client gives up.
pub const MAX_RETRIES: u32 = 50;

/// Utterances in flight a room's list holds before it grows (it grows
/// only when a room has more at once: saturation, or lost copies).
const FANOUTS_PREALLOCATED: usize = 8;

/// Highest latency recorded, µs (a minute); higher values are clamped.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_LATENCY_US, 3) {
        Ok(h) => h,
        Err(_) => unreachable!("bounds 1..60e6 with 3 digits are valid"),
    }
}

/// A histogram as hex text (HdrHistogram V2 encoding), to cross processes.
pub fn histogram_to_hex(h: &Histogram<u64>) -> String {
    let mut v = Vec::new();
    match V2Serializer::new().serialize(h, &mut v) {
        Ok(_) => hex::encode(v),
        Err(_) => String::new(),
    }
}

/// The inverse of [`histogram_to_hex`]; an empty histogram if it does not decode.
pub fn histogram_from_hex(s: &str) -> Histogram<u64> {
    let mut out = new_histogram();
    if let Ok(bytes) = hex::decode(s) {
        if let Ok(h) = Deserializer::new().deserialize::<u64, _>(&mut bytes.as_slice()) {
            let _ = out.add(&h);
        }
    }
    out
}

/// Serde for a histogram field as hex text ([`histogram_to_hex`]).
mod hex_histogram {
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::histogram_to_hex(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        Ok(super::histogram_from_hex(&String::deserialize(d)?))
    }
}

/// The measured window's latency histograms, µs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowHists {
    /// Every delivery, from the intended send time (corrected for
    /// coordinated omission).
    #[serde(with = "hex_histogram")]
    pub corrected: Histogram<u64>,
    /// Every delivery, from the actual send time.
    #[serde(with = "hex_histogram")]
    pub uncorrected: Histogram<u64>,
    /// Per utterance whose every copy arrived: intended send time to its
    /// first copy (see [`crate::fanout`]).
    #[serde(with = "hex_histogram")]
    pub first_copy: Histogram<u64>,
    /// Per such utterance: first copy to last.
    #[serde(with = "hex_histogram")]
    pub fanout_spread: Histogram<u64>,
    /// Every delivery whose read carried the kernel's receive stamp, from
    /// the intended send time to that stamp: when the copy reached the
    /// client's socket, without the generator's own wake-up and reads.
    #[serde(with = "hex_histogram", default = "new_histogram")]
    pub at_socket: Histogram<u64>,
    /// The same deliveries, from that stamp to the generator's read: the
    /// generator's own share of `corrected`.
    #[serde(with = "hex_histogram", default = "new_histogram")]
    pub read_lag: Histogram<u64>,
    /// Per entry into a room, ramp and re-entries included: from the first
    /// connect of the attempt (for Elko, to the director) to being in the
    /// room (Elko: the Snapshot; a peer: its subscription confirmed).
    #[serde(with = "hex_histogram")]
    pub enter: Histogram<u64>,
}

impl Default for WindowHists {
    fn default() -> Self {
        WindowHists {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
            first_copy: new_histogram(),
            fanout_spread: new_histogram(),
            at_socket: new_histogram(),
            read_lag: new_histogram(),
            enter: new_histogram(),
        }
    }
}

impl WindowHists {
    /// Merge `o` into these.
    pub fn add(&mut self, o: &WindowHists) {
        let _ = self.corrected.add(&o.corrected);
        let _ = self.uncorrected.add(&o.uncorrected);
        let _ = self.first_copy.add(&o.first_copy);
        let _ = self.fanout_spread.add(&o.fanout_spread);
        let _ = self.at_socket.add(&o.at_socket);
        let _ = self.read_lag.add(&o.read_lag);
        let _ = self.enter.add(&o.enter);
    }
}

/// Record `us` into `h`, clamped into its range (so recording cannot fail).
#[inline]
fn record_clamped(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_LATENCY_US));
}

/// One loop's latency histograms.
#[derive(Debug)]
pub struct LoopHists {
    pub window: WindowHists,
    /// Corrected, since the reporter last took it (for the timeline).
    pub interval: Histogram<u64>,
}

impl LoopHists {
    fn new() -> Self {
        LoopHists {
            window: WindowHists::default(),
            interval: new_histogram(),
        }
    }

    /// Record one delivery's latencies; `stamped`: from the intended send
    /// time to the copy's kernel receive stamp, and from there to its read.
    pub fn record(&mut self, corrected_us: u64, uncorrected_us: u64, stamped: Option<(u64, u64)>) {
        record_clamped(&mut self.window.corrected, corrected_us);
        record_clamped(&mut self.window.uncorrected, uncorrected_us);
        record_clamped(&mut self.interval, corrected_us);
        if let Some((at_socket_us, read_lag_us)) = stamped {
            record_clamped(&mut self.window.at_socket, at_socket_us);
            // A lag under 1 µs is recorded as 1 µs, like every value.
            record_clamped(&mut self.window.read_lag, read_lag_us);
        }
    }

    /// Record one utterance's complete fanout.
    pub fn record_fanout(&mut self, f: Fanout) {
        record_clamped(&mut self.window.first_copy, f.first_copy_us);
        // A spread of 0 (a room of one) is recorded as 1 µs, like every value.
        record_clamped(&mut self.window.fanout_spread, f.spread_us);
    }
}

/// One received copy of an utterance, as [`Shared::delivered`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// The receiver's room.
    pub room: usize,
    /// The utterance, unique within the room.
    pub utterance: u64,
    /// When the utterance was meant to be sent, µs since the epoch.
    pub intended_us: u64,
    /// How late its sender sent it, µs.
    pub late_us: u64,
    /// When it was read.
    pub now_us: u64,
    /// When the kernel queued it on the receiver's socket (the read's
    /// receive stamp), if the read carried one.
    pub arrived_us: Option<u64>,
    /// When the receiver entered its room (an utterance sent before that was
    /// not expected to reach it, so it does not count as a delivery either).
    pub member_since_us: u64,
}

/// A snapshot of the counters, summed over loops (and over processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Clients inside their room now.
    pub connected: i64,
    /// Every utterance sent / every delivery received, window or not (for rates).
    pub sent_total: u64,
    pub received_total: u64,
    /// Utterances intended inside the window, and the deliveries they should and did make.
    pub utterances_window: u64,
    pub expected_window: u64,
    pub received_window: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Counters) {
        self.connected += o.connected;
        self.sent_total += o.sent_total;
        self.received_total += o.received_total;
        self.utterances_window += o.utterances_window;
        self.expected_window += o.expected_window;
        self.received_window += o.received_window;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
    }
}

/// One loop's counters: written by that loop only.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct LoopCounters {
    pub connected: AtomicI64,
    pub sent_total: AtomicU64,
    pub received_total: AtomicU64,
    pub utterances_window: AtomicU64,
    pub expected_window: AtomicU64,
    pub received_window: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
}

/// Add to a counter only its own loop writes (no read-modify-write bus lock).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl LoopCounters {
    fn snapshot(&self) -> Counters {
        Counters {
            connected: self.connected.load(Relaxed),
            sent_total: self.sent_total.load(Relaxed),
            received_total: self.received_total.load(Relaxed),
            utterances_window: self.utterances_window.load(Relaxed),
            expected_window: self.expected_window.load(Relaxed),
            received_window: self.received_window.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            out_of_order: self.out_of_order.load(Relaxed),
        }
    }

    /// A client entered (`+1`) or left (`-1`) its room.
    pub fn connected_add(&self, d: i64) {
        self.connected
            .store(self.connected.load(Relaxed) + d, Relaxed);
    }
}

/// When a run measures, in µs since its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Clients start speaking here (a little before the window, to be in steady state).
    pub speak_start_us: u64,
    /// Utterances intended in `[start_us, end_us)` are the measured ones; none
    /// are sent after `end_us`.
    pub start_us: u64,
    pub end_us: u64,
}

/// Bits of [`Shared::rate`] holding the mean interval (µs): up to 8 years.
pub const RATE_MEAN_BITS: u32 = 48;
const RATE_MEAN_MASK: u64 = (1 << RATE_MEAN_BITS) - 1;

/// Everything one generator process's loops and its reporter share.
#[derive(Debug)]
pub struct Shared {
    /// Time zero of every `*_us` value in this run (intended and actual send times).
    pub epoch: Instant,
    pub window: Window,
    /// Mean time between one client's utterances, µs (the `max` preset
    /// lowers it step by step), in the low [`RATE_MEAN_BITS`] bits; above
    /// them, a generation bumped by every change. See [`Shared::rate`].
    rate: AtomicU64,
    /// Set when the run ends early or drains: no more utterances.
    pub stop_sending: AtomicBool,
    /// Members currently entered, per room (the expected fanout of an utterance).
    /// A room lives in one generator process, so this count is complete.
    pub room_members: Vec<AtomicU32>,
    /// Per room, its utterances whose copies are still arriving.
    fanouts: Vec<Mutex<RoomFanouts>>,
    pub loops: Vec<LoopCounters>,
    pub hists: Vec<Mutex<LoopHists>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Shared state for `rooms` rooms and `loops` generator loops.
    pub fn new(
        epoch: Instant,
        window: Window,
        rooms: usize,
        loops: usize,
        mean_interval_us: u64,
    ) -> Shared {
        Shared {
            epoch,
            window,
            rate: AtomicU64::new(mean_interval_us.clamp(1, RATE_MEAN_MASK)),
            stop_sending: AtomicBool::new(false),
            room_members: (0..rooms).map(|_| AtomicU32::new(0)).collect(),
            fanouts: (0..rooms)
                .map(|_| Mutex::new(RoomFanouts::with_capacity(FANOUTS_PREALLOCATED)))
                .collect(),
            loops: (0..loops).map(|_| LoopCounters::default()).collect(),
            hists: (0..loops).map(|_| Mutex::new(LoopHists::new())).collect(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// The mean time between one client's utterances (µs) and its
    /// generation: a loop that sees a new generation reschedules its clients'
    /// next utterances ([`Shared::set_mean_interval_us`]).
    #[inline]
    pub fn rate(&self) -> (u64, u64) {
        let r = self.rate.load(Relaxed);
        (r & RATE_MEAN_MASK, r >> RATE_MEAN_BITS)
    }

    /// The mean interval (µs), and whether its generation moved since
    /// `seen` (updated): the caller's loop must then reschedule its clients.
    #[inline]
    pub fn rate_since(&self, seen: &mut u64) -> (u64, bool) {
        let (mean, gen) = self.rate();
        let changed = gen != *seen;
        *seen = gen;
        (mean, changed)
    }

    /// Change the mean time between one client's utterances. Arrivals are
    /// Poisson, so each loop may resample every pending next utterance from
    /// now with the new mean (the exponential wait is memoryless): the new
    /// rate holds from the change on, not only after every client's next
    /// utterance under the old one.
    pub fn set_mean_interval_us(&self, us: u64) {
        let mean = us.clamp(1, RATE_MEAN_MASK);
        let _ = self.rate.fetch_update(Relaxed, Relaxed, |r| {
            Some(((r >> RATE_MEAN_BITS) + 1) << RATE_MEAN_BITS | mean)
        });
    }

    /// Microseconds since the epoch.
    #[inline]
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// `t` in microseconds since the epoch (0 before it).
    #[inline]
    pub fn us_at(&self, t: std::time::Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Whether an utterance intended at `t_us` is measured.
    #[inline]
    pub fn in_window(&self, t_us: u64) -> bool {
        t_us >= self.window.start_us && t_us < self.window.end_us
    }

    /// Whether an utterance intended at `t_us` is still sent.
    #[inline]
    pub fn may_send(&self, t_us: u64) -> bool {
        t_us < self.window.end_us && !self.stop_sending.load(Relaxed)
    }

    /// Count an error of `kind`.
    pub fn error(&self, kind: &str) {
        let mut e = self.errors.lock();
        match e.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                e.insert(kind.to_string(), 1);
            }
        }
    }

    /// Errors counted so far, by kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }

    /// Every loop's counters, summed.
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for l in &self.loops {
            c += l.snapshot();
        }
        c
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

    /// Every loop's whole-window histograms, merged.
    pub fn totals(&self) -> WindowHists {
        let mut t = WindowHists::default();
        for l in &self.hists {
            t.add(&l.lock().window);
        }
        t
    }

    /// Account one received copy of an utterance on loop `lp`: `order` is
    /// the verdict of the receiver's sequence check.
    #[inline]
    pub fn delivered(&self, lp: usize, order: SeqVerdict, d: Delivery) {
        let c = &self.loops[lp];
        bump(&c.received_total, 1);
        match order {
            SeqVerdict::InOrder | SeqVerdict::Gap(_) => {}
            SeqVerdict::Duplicate => return bump(&c.duplicates, 1),
            SeqVerdict::OutOfOrder => bump(&c.out_of_order, 1),
        }
        let sent_us = d.intended_us.saturating_add(d.late_us);
        if !self.in_window(d.intended_us) || sent_us < d.member_since_us {
            return;
        }
        bump(&c.received_window, 1);
        let members = self.room_members[d.room].load(Relaxed);
        let fanout =
            self.fanouts[d.room]
                .lock()
                .arrived(d.utterance, d.intended_us, d.now_us, members);
        let mut h = self.hists[lp].lock();
        let stamped = d.arrived_us.map(|a| {
            let a = a.min(d.now_us);
            (a.saturating_sub(d.intended_us), d.now_us - a)
        });
        h.record(
            d.now_us.saturating_sub(d.intended_us),
            d.now_us.saturating_sub(sent_us),
            stamped,
        );
        if let Some(f) = fanout {
            h.record_fanout(f);
        }
    }

    /// When client `client` tries to enter again after a failed attempt
    /// (counted in `retries`): backing off ([`retry_delay_us`]), and `None`
    /// once it has failed [`MAX_RETRIES`] times (counted as the error
    /// `gave_up_entering`).
    ///
    /// [`retry_delay_us`]: crate::schedule::retry_delay_us
    pub fn retry_at(&self, client: usize, retries: &mut u32) -> Option<u64> {
        *retries += 1;
        if *retries > MAX_RETRIES {
            self.error("gave_up_entering");
            return None;
        }
        Some(self.now_us() + crate::schedule::retry_delay_us(client, *retries))
    }

    /// An attempt to enter a room starts now, unless one is under way
    /// (`began_us`: a client's entry start, `u64::MAX` between entries), so
    /// retries count from the first attempt.
    pub fn entry_attempt(&self, began_us: &mut u64) {
        if *began_us == u64::MAX {
            *began_us = self.now_us();
        }
    }

    /// Account one entry into a room on loop `lp`, at `now_us`, begun at
    /// `began_us` (reset to `u64::MAX`; if it was, not timed, so not recorded).
    pub fn entered(&self, lp: usize, began_us: &mut u64, now_us: u64) {
        let began = std::mem::replace(began_us, u64::MAX);
        if began != u64::MAX {
            record_clamped(
                &mut self.hists[lp].lock().window.enter,
                now_us.saturating_sub(began),
            );
        }
    }

    /// Account one utterance about to be sent on loop `lp` to room `room`.
    #[inline]
    pub fn sending(&self, lp: usize, room: usize, intended_us: u64) {
        let c = &self.loops[lp];
        bump(&c.sent_total, 1);
        if self.in_window(intended_us) {
            bump(&c.utterances_window, 1);
            let fanout = self.room_members[room].load(Relaxed);
            bump(&c.expected_window, u64::from(fanout));
        }
    }
}

/// Delivery order checking for one receiver and one sequence of numbers
/// increasing by one (a room's context sequence, or one sender's utterances).
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqCheck {
    last: u64,
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
    /// Judge `seq` and remember it. The first number seen is in order
    /// (a receiver joins a room mid-sequence); 0 is never a valid number.
    pub fn check(&mut self, seq: u64) -> SeqVerdict {
        let v = match self.last {
            0 => SeqVerdict::InOrder,
            last if seq == last + 1 => SeqVerdict::InOrder,
            last if seq == last => SeqVerdict::Duplicate,
            last if seq < last => SeqVerdict::OutOfOrder,
            last => SeqVerdict::Gap(seq - last - 1),
        };
        if seq > self.last {
            self.last = seq;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_change_is_seen_with_a_new_generation() {
        let s = shared(1);
        assert_eq!(s.rate(), (1, 0));
        s.set_mean_interval_us(5_600_000);
        assert_eq!(s.rate(), (5_600_000, 1));
        s.set_mean_interval_us(0);
        assert_eq!(s.rate(), (1, 2), "a mean of at least 1 µs");
    }

    fn shared(loops: usize) -> Shared {
        let w = Window {
            speak_start_us: 0,
            start_us: 100,
            end_us: 200,
        };
        Shared::new(Instant::now(), w, 2, loops, 1)
    }

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
    fn deliveries_are_accounted_in_the_window_only() {
        let s = shared(2);
        s.room_members[1].store(3, Relaxed);
        s.sending(0, 1, 50); // before the window: not expected
        s.sending(0, 1, 150);
        s.sending(1, 1, 250); // after: not expected
        let mut order = SeqCheck::default();
        // The in-window utterance reaches 3 members; one hears it twice, and
        // an older one arrives late.
        for (seq, t) in [(2, 150), (2, 150), (3, 150), (1, 50), (4, 150)] {
            s.delivered(0, order.check(seq), copy(9, t, t + 40, 0));
        }
        // A member that entered after the utterance was sent was not counted
        // in its fanout, so its copy is not a delivery either.
        s.delivered(1, SeqVerdict::InOrder, copy(9, 150, 190, 160));
        let c = s.counters();
        assert_eq!(c.sent_total, 3);
        assert_eq!((c.utterances_window, c.expected_window), (1, 3));
        assert_eq!(c.received_total, 6);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.out_of_order, 1);
        assert_eq!(c.received_window, 3, "the duplicate is not a delivery");
        let t = s.totals();
        assert_eq!((t.corrected.len(), t.corrected.max()), (3, 40));
        assert_eq!(t.uncorrected.max(), 35, "from the actual send, 5 µs late");
        assert_eq!(
            (
                t.first_copy.len(),
                t.first_copy.max(),
                t.fanout_spread.max()
            ),
            (1, 40, 1),
            "all three copies of utterance 9 arrived at once"
        );
    }

    /// A copy of utterance `utterance` to room 1, sent 5 µs late.
    fn copy(utterance: u64, intended_us: u64, now_us: u64, member_since_us: u64) -> Delivery {
        Delivery {
            room: 1,
            utterance,
            intended_us,
            late_us: 5,
            now_us,
            arrived_us: None,
            member_since_us,
        }
    }

    #[test]
    fn copies_on_several_loops_make_one_fanout() {
        let s = shared(2);
        s.room_members[1].store(3, Relaxed);
        s.delivered(0, SeqVerdict::InOrder, copy(4, 120, 160, 0));
        s.delivered(1, SeqVerdict::InOrder, copy(4, 120, 150, 0));
        assert!(s.totals().first_copy.is_empty(), "one copy still to come");
        s.delivered(1, SeqVerdict::InOrder, copy(4, 120, 190, 0));
        let t = s.totals();
        assert_eq!(t.first_copy.len(), 1);
        assert_eq!(t.first_copy.max(), 30, "the earliest copy, on loop 1");
        assert_eq!(t.fanout_spread.max(), 40);
    }

    #[test]
    fn sending_stops_at_the_window_end() {
        let s = shared(1);
        assert!(s.may_send(199));
        assert!(!s.may_send(200));
        s.stop_sending.store(true, Relaxed);
        assert!(!s.may_send(150));
    }

    #[test]
    fn histograms_merge_across_loops_clamp_and_cross_processes() {
        let s = shared(2);
        s.hists[0].lock().record(100, 90, Some((80, 20)));
        s.hists[1].lock().record(u64::MAX, 0, None);
        s.hists[1].lock().record_fanout(Fanout {
            first_copy_us: 70,
            spread_us: 0,
        });
        let t = s.totals();
        let c = &t.corrected;
        assert_eq!(c.len(), 2);
        assert!(c.max() >= MAX_LATENCY_US - MAX_LATENCY_US / 1000);
        assert_eq!(t.uncorrected.min(), 1);
        assert_eq!(t.fanout_spread.min(), 1);
        assert_eq!(s.take_interval().len(), 2);
        assert_eq!(s.take_interval().len(), 0, "taking resets");
        let back = histogram_from_hex(&histogram_to_hex(c));
        assert_eq!(&back, c);
        assert!(histogram_from_hex("zz").is_empty());
        let json = serde_json::to_string(&t).expect("json");
        let back: WindowHists = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, t, "all of them cross processes");
        assert_eq!(
            (t.at_socket.len(), t.read_lag.max()),
            (1, 20),
            "one stamped"
        );
    }

    #[test]
    fn a_stamped_copy_splits_its_latency_at_the_socket() {
        let s = shared(1);
        s.room_members[1].store(2, Relaxed);
        let stamped = |now_us, arrived_us| Delivery {
            arrived_us: Some(arrived_us),
            ..copy(6, 100, now_us, 0)
        };
        s.delivered(0, SeqVerdict::InOrder, stamped(180, 130));
        // A stamp after the read (a clock step) counts as read on arrival.
        s.delivered(0, SeqVerdict::InOrder, stamped(150, 170));
        s.delivered(0, SeqVerdict::InOrder, copy(7, 100, 190, 0));
        let t = s.totals();
        assert_eq!(t.corrected.len(), 3);
        assert_eq!((t.at_socket.len(), t.at_socket.min()), (2, 30));
        assert_eq!(t.at_socket.max(), 50);
        assert_eq!((t.read_lag.min(), t.read_lag.max()), (1, 50));
    }

    #[test]
    fn counters_add_up() {
        let mut a = Counters {
            connected: 2,
            ..Counters::default()
        };
        a += Counters {
            connected: -1,
            received_window: 4,
            ..Counters::default()
        };
        assert_eq!((a.connected, a.received_window), (1, 4));
    }
}
