//! What a run does: clients, rooms, rates, durations. Presets and knobs.

use serde::Serialize;
use std::time::Duration;

/// A named starting point; every knob can still be overridden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The 2002 test: 8000 clients, 200 rooms of 40, each speaking every 30 s on average.
    Sun2002,
    /// The same at one utterance per client per second (320k deliveries/s).
    Frantic,
    /// As many clients as one generator process can hold, at the 2002 rate.
    Scale,
    /// Raise the rate step by step until p99 passes 100 ms; report the best sustained rate.
    Max,
}

/// Every knob of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub preset: Preset,
    pub clients: usize,
    pub rooms: usize,
    /// Mean time between one client's utterances (Poisson arrivals).
    #[serde(serialize_with = "secs")]
    pub interval: Duration,
    /// Steady-state length (measured).
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Time over which clients connect (excluded from the figures).
    #[serde(serialize_with = "secs")]
    pub ramp: Duration,
    pub message_size: usize,
    pub seed: u64,
    /// Event loops of the generator.
    pub gen_loops: usize,
    /// Event loops of the started contextd (0 = one per core).
    pub workers: usize,
    /// Context servers to start.
    pub contextds: usize,
    /// For `max`: length of each rate step.
    #[serde(serialize_with = "secs")]
    pub step: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Scenario {
    /// The preset's values.
    pub fn preset(p: Preset) -> Scenario {
        let base = Scenario {
            preset: p,
            clients: 8000,
            rooms: 200,
            interval: Duration::from_secs(30),
            duration: Duration::from_secs(60),
            ramp: Duration::from_secs(10),
            message_size: 64,
            seed: 2002,
            gen_loops: 1,
            workers: 0,
            contextds: 1,
            step: Duration::from_secs(10),
        };
        match p {
            Preset::Sun2002 => base,
            Preset::Frantic => Scenario {
                interval: Duration::from_secs(1),
                ..base
            },
            Preset::Scale => Scenario {
                clients: 18_000,
                rooms: 450,
                ramp: Duration::from_secs(20),
                ..base
            },
            Preset::Max => Scenario {
                interval: Duration::from_secs(2),
                duration: Duration::from_secs(120),
                ..base
            },
        }
    }

    /// Members per room (rounded down; the first `clients % rooms` rooms get one more).
    pub fn fanout(&self) -> f64 {
        self.clients as f64 / self.rooms.max(1) as f64
    }

    /// Utterances per second the scenario asks for.
    pub fn target_utterances_per_s(&self) -> f64 {
        self.clients as f64 / self.interval.as_secs_f64()
    }

    /// Deliveries per second the scenario asks for (every member hears every utterance).
    pub fn target_deliveries_per_s(&self) -> f64 {
        // Sum over rooms of n_r^2 / interval, with rooms as even as they get.
        let (q, r) = (
            self.clients / self.rooms.max(1),
            self.clients % self.rooms.max(1),
        );
        let sq = (r * (q + 1) * (q + 1) + (self.rooms - r) * q * q) as f64;
        sq / self.interval.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sun2002_is_the_2002_test() {
        let s = Scenario::preset(Preset::Sun2002);
        assert_eq!((s.clients, s.rooms), (8000, 200));
        assert_eq!(s.fanout(), 40.0);
        assert!((s.target_utterances_per_s() - 266.67).abs() < 0.01);
        assert!((s.target_deliveries_per_s() - 10_666.7).abs() < 0.1);
        let f = Scenario::preset(Preset::Frantic);
        assert_eq!(f.target_deliveries_per_s(), 320_000.0);
    }

    #[test]
    fn uneven_rooms_count_exactly() {
        let s = Scenario {
            clients: 10,
            rooms: 3,
            interval: Duration::from_secs(1),
            ..Scenario::preset(Preset::Sun2002)
        };
        // rooms of 4, 3, 3: 16 + 9 + 9
        assert_eq!(s.target_deliveries_per_s(), 34.0);
    }
}
