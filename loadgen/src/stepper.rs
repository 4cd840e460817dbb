//! The `max` preset's search for the highest sustained rate: in the steady
//! state, every `step` seconds judge the step just ended by its p99. While
//! every step is within [`KNEE_P99_US`], make every client speak 1/[`SPEED_UP`]
//! times as often. Once a step has passed it, bisect (geometrically) between
//! the fastest step within the knee and the slowest past it, until the two
//! rates are within [`RESOLUTION`] of each other; then hold the fastest rate
//! found within the knee, still judging steps ("held"): near the knee p99
//! moves from step to step, and one lucky step is not a sustained rate. Once
//! [`HOLD_STEPS`] held steps have a p99 (over all of them) past the knee, the
//! held rate is lowered by [`RESOLUTION`] and the hold starts again. The
//! figure reported is the rate of a hold that stayed within the knee for at
//! least [`HOLD_STEPS`] steps, or else the best single step, flagged.

use crate::metrics::{new_histogram, Counters};
use crate::report::{MaxHeld, MaxStep};
use hdrhistogram::Histogram;
use std::time::Duration;

/// A step whose p99 is above this is past the knee.
pub const KNEE_P99_US: u64 = 100_000;
/// Each step's mean time between one client's utterances is the previous
/// step's times this (the rate rises by 1/0.7, about 43 %).
pub const SPEED_UP: f64 = 0.7;
/// The search ends when the slowest rate past the knee is at most this
/// times the fastest within it.
pub const RESOLUTION: f64 = 1.05;
/// Held steps judged together before a hold counts (sustained or not).
pub const HOLD_STEPS: u32 = 3;

/// The rate search's state, fed one sample a second.
#[derive(Debug)]
pub struct Stepper {
    step: Duration,
    clients: usize,
    mean_us: u64,
    /// When the current step began (from the run's start) and the counters then.
    started: Duration,
    at_start: Counters,
    hist: Histogram<u64>,
    /// The search is over; steps now hold the best rate.
    stopped: bool,
    /// Over every step of the current hold: latencies, seconds, deliveries, steps.
    held_hist: Histogram<u64>,
    held_s: f64,
    held_deliveries: u64,
    held_steps: u32,
    /// The hold before the last lowering (shown if the run ends before the
    /// next hold has a step).
    last_hold: Option<MaxHeld>,
    /// Mean interval of the fastest step within the knee so far, and of the
    /// slowest past it.
    good: Option<u64>,
    bad: Option<u64>,
    steps: Vec<MaxStep>,
}

impl Stepper {
    /// `mean_us`: the scenario's mean time between one client's utterances.
    pub fn new(step: Duration, clients: usize, mean_us: u64) -> Stepper {
        Stepper {
            step,
            clients,
            mean_us,
            started: Duration::ZERO,
            at_start: Counters::default(),
            hist: new_histogram(),
            stopped: false,
            held_hist: new_histogram(),
            held_s: 0.0,
            held_deliveries: 0,
            held_steps: 0,
            last_hold: None,
            good: None,
            bad: None,
            steps: Vec::new(),
        }
    }

    /// The second ending at `t` (from the run's start): counters so far and
    /// that second's latencies. Returns the new mean interval (µs) when the
    /// clients must change their rate.
    pub fn second(
        &mut self,
        t: Duration,
        steady: bool,
        c: Counters,
        latencies: &Histogram<u64>,
    ) -> Option<u64> {
        let _ = self.hist.add(latencies);
        if !steady {
            self.restart(t, c);
            return None;
        }
        let elapsed = t.saturating_sub(self.started);
        if elapsed < self.step {
            return None;
        }
        if self.stopped && self.good.is_none() {
            // Not even the first step was within the knee: nothing to hold.
            self.restart(t, c);
            return None;
        }
        let p99 = p99_or_max(&self.hist);
        let from = self.at_start;
        let delivered = c.received_total - from.received_total;
        self.steps.push(MaxStep {
            utterances_per_s_target: self.clients as f64 * 1e6 / self.mean_us as f64,
            deliveries_per_s: delivered as f64 / elapsed.as_secs_f64(),
            p99_us: p99,
            in_flight_at_step_end: (c.expected_window - from.expected_window)
                .saturating_sub(c.received_window - from.received_window),
            hold: self.stopped,
        });
        if self.stopped {
            let lowered = self.held_step(elapsed, delivered);
            self.restart(t, c);
            return lowered;
        }
        if p99 > KNEE_P99_US {
            self.bad = Some(self.mean_us);
        } else {
            self.good = Some(self.mean_us);
        }
        let next = match (self.good, self.bad) {
            (_, None) => Some(scaled(self.mean_us, SPEED_UP)),
            (Some(g), Some(b)) if g as f64 > b as f64 * RESOLUTION => {
                Some(scaled(g, (b as f64 / g as f64).sqrt()))
            }
            (good, Some(_)) => {
                // Found (or the very first step was past the knee): hold.
                self.stopped = true;
                good
            }
        };
        self.restart(t, c);
        let change = next.filter(|&m| m != self.mean_us);
        if let Some(m) = change {
            self.mean_us = m;
        }
        change
    }

    /// Count a held step (the current step's latencies, its length and
    /// deliveries). Returns the lowered mean interval when the hold, after
    /// [`HOLD_STEPS`] steps, is past the knee.
    fn held_step(&mut self, elapsed: Duration, delivered: u64) -> Option<u64> {
        let _ = self.held_hist.add(&self.hist);
        self.held_s += elapsed.as_secs_f64();
        self.held_deliveries += delivered;
        self.held_steps += 1;
        if self.held_steps < HOLD_STEPS || p99_or_max(&self.held_hist) <= KNEE_P99_US {
            return None;
        }
        // Not sustained: a little slower, and hold again.
        self.last_hold = self.held();
        self.mean_us = scaled(self.mean_us, RESOLUTION);
        self.held_hist.reset();
        (self.held_s, self.held_deliveries, self.held_steps) = (0.0, 0, 0);
        Some(self.mean_us)
    }

    fn restart(&mut self, t: Duration, c: Counters) {
        self.started = t;
        self.at_start = c;
        self.hist.reset();
    }

    /// The figure to report: the deliveries/s of the current hold if it has
    /// stayed within the knee for [`HOLD_STEPS`] steps, else the highest
    /// of a single step within the knee (0 if none was).
    pub fn best(&self) -> f64 {
        match self.held() {
            Some(h) if h.sustained => h.deliveries_per_s,
            _ => self
                .steps
                .iter()
                .filter(|m| !m.hold && m.p99_us <= KNEE_P99_US)
                .map(|m| m.deliveries_per_s)
                .fold(0.0, f64::max),
        }
    }

    /// The current hold (since the search ended or the last lowering), or
    /// the one before if the current has not had a step yet.
    pub fn held(&self) -> Option<MaxHeld> {
        if self.held_s == 0.0 {
            return self.last_hold;
        }
        let p99_us = p99_or_max(&self.held_hist);
        Some(MaxHeld {
            seconds: self.held_s,
            deliveries_per_s: self.held_deliveries as f64 / self.held_s,
            p99_us,
            sustained: self.held_steps >= HOLD_STEPS && p99_us <= KNEE_P99_US,
        })
    }

    /// Every judged step, in order.
    pub fn into_steps(self) -> Vec<MaxStep> {
        self.steps
    }
}

/// A histogram's p99; with no delivery at all, past any knee.
fn p99_or_max(h: &Histogram<u64>) -> u64 {
    if h.is_empty() {
        u64::MAX
    } else {
        h.value_at_quantile(0.99)
    }
}

/// A mean interval times `factor` (at least 1 µs).
fn scaled(mean_us: u64, factor: f64) -> u64 {
    ((mean_us as f64 * factor).round() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One second of deliveries, all with latency `us`.
    fn second(us: u64, n: u64) -> Histogram<u64> {
        let mut h = new_histogram();
        h.record_n(us, n).expect("in range");
        h
    }

    #[test]
    fn the_rate_rises_past_the_knee_then_bisects_and_holds_the_best() {
        // 8000 clients, one utterance per 8 s each (1000 utt/s); 10 s steps.
        // The system keeps p99 within the knee up to 3000 utterances/s.
        let (clients, knee_rate) = (8000u64, 3000.0);
        let mut st = Stepper::new(Duration::from_secs(10), clients as usize, 8_000_000);
        let mut c = Counters::default();
        let mut mean_us = 8_000_000u64;
        let mut changes = Vec::new();
        for s in 0..200u64 {
            let rate = clients as f64 * 1e6 / mean_us as f64;
            let p99 = if rate <= knee_rate { 50_000 } else { 150_000 };
            let delivered = (rate * 40.0) as u64;
            c.received_total += delivered;
            let t = Duration::from_secs(s + 1);
            if let Some(m) = st.second(t, s >= 5, c, &second(p99, 1000)) {
                changes.push((s + 1, m));
                mean_us = m;
            }
        }
        let held = st.held().expect("the best rate was held");
        let best = st.best();
        let all = st.into_steps();
        let (holds, steps): (Vec<_>, Vec<_>) = all.into_iter().partition(|m| m.hold);
        let rates: Vec<f64> = steps.iter().map(|m| m.utterances_per_s_target).collect();
        // Rising by 1/0.7: 1000, 1429, 2041, 2915, then 4165 is past the knee.
        assert!(
            (rates[3] - 2915.5).abs() < 1.0 && rates[4] > knee_rate,
            "{rates:?}"
        );
        // Then bisecting, never beyond the step past the knee.
        assert!(
            rates[5..].iter().all(|&r| r > rates[3] && r < rates[4]),
            "{rates:?}"
        );
        let best_within = steps
            .iter()
            .filter(|m| m.p99_us <= KNEE_P99_US)
            .map(|m| m.utterances_per_s_target)
            .fold(0.0, f64::max);
        let worst_past = steps
            .iter()
            .filter(|m| m.p99_us > KNEE_P99_US)
            .map(|m| m.utterances_per_s_target)
            .fold(f64::MAX, f64::min);
        assert!(worst_past / best_within <= RESOLUTION, "{rates:?}");
        assert!(best_within <= knee_rate && best_within > knee_rate / RESOLUTION);
        // Done: the last change holds the best rate, and every later step is
        // judged as held at that rate.
        assert!(steps.len() <= 10, "{rates:?}");
        let held_rate = clients as f64 * 1e6 / changes.last().expect("changes").1 as f64;
        assert!(
            (held_rate - best_within).abs() < 1.0,
            "held {held_rate}, best {best_within}"
        );
        assert!(holds.len() >= 5, "{} held steps", holds.len());
        assert!(holds
            .iter()
            .all(|m| (m.utterances_per_s_target - best_within).abs() < 1.0));
        assert!(
            held.p99_us.abs_diff(50_000) < 100 && held.sustained,
            "{held:?}"
        );
        assert_eq!(best, held.deliveries_per_s, "the held rate is the figure");
        assert!((held.deliveries_per_s - best_within * 40.0).abs() < 1.0);
        assert_eq!(held.seconds, 10.0 * holds.len() as f64);
    }

    #[test]
    fn a_lucky_best_step_is_lowered_until_a_rate_holds() {
        // Within the knee up to 1000 utterances/s, but the step at 1429 is
        // lucky once: the search ends there, the hold shows it is not
        // sustained, and the held rate comes down until one holds.
        let (clients, knee_rate) = (8000u64, 1000.0);
        let mut st = Stepper::new(Duration::from_secs(1), clients as usize, 8_000_000);
        let mut c = Counters::default();
        let mut mean_us = 8_000_000u64;
        let mut lucky = true;
        for s in 1..=80u64 {
            let rate = clients as f64 * 1e6 / mean_us as f64;
            let within = rate <= knee_rate + 0.5 || (lucky && rate < 1500.0 && rate > 1400.0);
            if rate > 1400.0 && rate < 1500.0 {
                lucky = false;
            }
            c.received_total += (rate * 40.0) as u64;
            let p99 = if within { 90_000 } else { 150_000 };
            if let Some(m) = st.second(Duration::from_secs(s), true, c, &second(p99, 100)) {
                mean_us = m;
            }
        }
        let held = st.held().expect("held");
        let held_rate = clients as f64 * 1e6 / mean_us as f64;
        assert!(held.sustained, "{held:?}");
        assert!(
            held_rate <= knee_rate && held_rate > knee_rate / RESOLUTION,
            "{held_rate}"
        );
        assert!((st.best() - held.deliveries_per_s).abs() < 1e-6);
        assert!((held.deliveries_per_s - held_rate * 40.0).abs() < 1.0);
        let steps = st.into_steps();
        let lucky_step = steps
            .iter()
            .filter(|m| !m.hold && m.p99_us <= KNEE_P99_US)
            .map(|m| m.utterances_per_s_target)
            .fold(0.0, f64::max);
        assert!(lucky_step > 1400.0, "the search ended on the lucky step");
        assert!(steps.iter().filter(|m| m.hold).count() >= 3 * 8);
    }

    #[test]
    fn a_lowered_hold_stays_in_the_report_until_the_next_has_a_step() {
        // Within the knee once at the first rate, then never: search, hold,
        // and after 3 breaching held steps, lower the rate.
        let mut st = Stepper::new(Duration::from_secs(1), 8000, 8_000_000);
        let c = Counters::default();
        let mut lowered = None;
        for s in 1..=40u64 {
            let p99 = if s == 1 { 90_000 } else { 150_000 };
            if let Some(m) = st.second(Duration::from_secs(s), true, c, &second(p99, 10)) {
                if m > 8_000_000 {
                    lowered = Some(s);
                    break;
                }
            }
        }
        assert!(lowered.is_some(), "the hold was lowered");
        let h = st.held().expect("the lowered hold is still reported");
        assert_eq!(h.seconds, 3.0);
        assert!(!h.sustained && h.p99_us > KNEE_P99_US, "{h:?}");
    }

    #[test]
    fn a_first_step_past_the_knee_ends_the_search() {
        let mut st = Stepper::new(Duration::from_secs(1), 10, 1_000_000);
        let c = Counters::default();
        assert_eq!(
            st.second(Duration::from_secs(1), true, c, &second(200_000, 5)),
            None
        );
        assert_eq!(
            st.second(Duration::from_secs(2), true, c, &second(1, 5)),
            None
        );
        assert_eq!(st.held(), None, "nothing within the knee to hold");
        assert_eq!(st.into_steps().len(), 1);
    }

    #[test]
    fn a_step_with_no_delivery_is_past_the_knee() {
        let mut st = Stepper::new(Duration::from_secs(2), 10, 1_000_000);
        let empty = new_histogram();
        let c = Counters::default();
        assert_eq!(st.second(Duration::from_secs(1), true, c, &empty), None);
        assert_eq!(st.second(Duration::from_secs(2), true, c, &empty), None);
        assert_eq!(st.best(), 0.0);
        assert_eq!(st.into_steps()[0].p99_us, u64::MAX);
    }
}
