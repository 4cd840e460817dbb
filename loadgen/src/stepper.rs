//! The `max` preset's search for the highest sustained rate: in the steady
//! state, every `step` seconds judge the step just ended by its p99; while
//! that is within [`KNEE_P99_US`], make every client speak [`SPEED_UP`]
//! times as often; at the first step past it, stop raising the rate (the run
//! goes on to the end of its steady state, so the report shows the knee).

use crate::metrics::{new_histogram, Counters};
use crate::report::MaxStep;
use hdrhistogram::Histogram;
use std::time::Duration;

/// A step whose p99 is above this is past the knee.
pub const KNEE_P99_US: u64 = 100_000;
/// Each step's mean time between one client's utterances is the previous
/// step's times this (the rate rises by 1/0.7, about 43 %).
pub const SPEED_UP: f64 = 0.7;

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
    stopped: bool,
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
            steps: Vec::new(),
        }
    }

    /// The second ending at `t` (from the run's start): counters so far and
    /// that second's latencies. Returns the new mean interval (µs) when the
    /// clients must speak faster.
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
        if self.stopped || elapsed < self.step {
            return None;
        }
        let p99 = if self.hist.is_empty() {
            u64::MAX
        } else {
            self.hist.value_at_quantile(0.99)
        };
        let from = self.at_start;
        self.steps.push(MaxStep {
            utterances_per_s_target: self.clients as f64 * 1e6 / self.mean_us as f64,
            deliveries_per_s: (c.received_total - from.received_total) as f64
                / elapsed.as_secs_f64(),
            p99_us: p99,
            in_flight_at_step_end: (c.expected_window - from.expected_window)
                .saturating_sub(c.received_window - from.received_window),
        });
        let faster = if p99 > KNEE_P99_US {
            self.stopped = true;
            None
        } else {
            self.mean_us = ((self.mean_us as f64 * SPEED_UP).round() as u64).max(1);
            Some(self.mean_us)
        };
        self.restart(t, c);
        faster
    }

    fn restart(&mut self, t: Duration, c: Counters) {
        self.started = t;
        self.at_start = c;
        self.hist.reset();
    }

    /// The highest deliveries/s of a step within the knee (0 if none was).
    pub fn best(&self) -> f64 {
        self.steps
            .iter()
            .filter(|m| m.p99_us <= KNEE_P99_US)
            .map(|m| m.deliveries_per_s)
            .fold(0.0, f64::max)
    }

    /// Every judged step, in order.
    pub fn into_steps(self) -> Vec<MaxStep> {
        self.steps
    }
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
    fn the_rate_rises_until_a_step_passes_the_knee_then_holds() {
        // 8000 clients, one utterance per 8 s each; 10 s steps.
        let mut st = Stepper::new(Duration::from_secs(10), 8000, 8_000_000);
        let mut c = Counters::default();
        let mut speed_ups = Vec::new();
        let mut run =
            |st: &mut Stepper, from: u64, to: u64, steady: bool, p99_us: u64, rate: u64| {
                for s in from..to {
                    c.received_total += rate;
                    c.expected_window += rate;
                    c.received_window += rate;
                    let t = Duration::from_secs(s + 1);
                    if let Some(us) = st.second(t, steady, c, &second(p99_us, rate)) {
                        speed_ups.push((s + 1, us));
                    }
                }
            };
        // A ramp with slow replies is not judged.
        run(&mut st, 0, 5, false, 900_000, 1000);
        // Two fine steps, then one past the knee, then more seconds.
        run(&mut st, 5, 15, true, 2_000, 40_000);
        run(&mut st, 15, 25, true, 50_000, 57_000);
        run(&mut st, 25, 35, true, 150_000, 60_000);
        run(&mut st, 35, 60, true, 900_000, 30_000);
        assert_eq!(speed_ups, vec![(15, 5_600_000), (25, 3_920_000)]);
        assert_eq!(st.best(), 57_000.0);
        let steps = st.into_steps();
        assert_eq!(steps.len(), 3, "no step is judged after the knee");
        assert_eq!(steps[0].deliveries_per_s, 40_000.0);
        assert_eq!(steps[0].utterances_per_s_target, 1000.0);
        assert!((steps[1].utterances_per_s_target - 8000.0 / 5.6).abs() < 1e-6);
        assert!(steps[0].p99_us <= 2_002 && steps[1].p99_us <= 50_050);
        assert!(steps[2].p99_us > KNEE_P99_US);
        assert_eq!(steps[2].in_flight_at_step_end, 0);
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
