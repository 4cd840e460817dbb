//! `--repeat N`: the same scenario run N times in rounds (each round runs
//! every target in turn, so a slow spell of a shared or virtual machine
//! falls on all of them), summarised as median and range.
//!
//! One run's figures move from run to run by more than the differences a
//! reader may care about (see loadgen/RESULTS.md, "Run to run"); ratios
//! taken within one round are steadier than absolute figures across rounds.

use crate::report::{ratios, Report};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Median, smallest and largest of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` when there are no (non-NaN) values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} [{:.d$}-{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// One target's (or one peer ratio's) figures over the rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// The target (`elko`, `redis`, `nats`), or for a ratio the peer.
    pub name: String,
    /// Figure name to its spread over the rounds.
    pub figures: BTreeMap<&'static str, Spread>,
}

/// Per target (in run order) and per peer ratio (Elko / peer, per round).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepeatSummary {
    pub rounds: usize,
    pub targets: Vec<Figures>,
    pub ratios: Vec<Figures>,
}

type RatioFigure = (&'static str, fn(&crate::report::Ratios) -> f64);

/// The ratios summarised, in the order shown.
const RATIOS: [RatioFigure; 4] = [
    ("server_cpu_per_delivery", |q| q.server_cpu_per_delivery),
    ("p99", |q| q.p99),
    ("p999", |q| q.p999),
    ("memory_per_client", |q| q.memory_per_client),
];

/// Name, decimals shown, value (NaN: not measured, left out of the spread).
type Metric = (&'static str, usize, fn(&Report) -> f64);

/// What is summarised for each target: name, decimals shown, value.
const METRICS: [Metric; 12] = [
    ("server_cpu_us_per_delivery", 2, |r| {
        r.server_cpu_us_per_delivery.unwrap_or(f64::NAN)
    }),
    ("server_cpu_percent_of_core", 1, |r| {
        r.server.cpu_percent_of_core.unwrap_or(f64::NAN)
    }),
    ("latency_p50_ms", 2, |r| r.latency_us.p50 as f64 / 1000.0),
    ("latency_p99_ms", 2, |r| r.latency_us.p99 as f64 / 1000.0),
    ("latency_p999_ms", 2, |r| r.latency_us.p999 as f64 / 1000.0),
    ("first_copy_p99_ms", 2, |r| {
        r.first_copy_latency_us.p99 as f64 / 1000.0
    }),
    ("fanout_spread_p99_ms", 2, |r| {
        r.fanout_spread_us.p99 as f64 / 1000.0
    }),
    ("at_socket_p99_ms", 2, |r| {
        r.latency_at_socket_us
            .map_or(f64::NAN, |p| p.p99 as f64 / 1000.0)
    }),
    ("generator_read_lag_p99_ms", 2, |r| {
        r.generator_read_lag_us
            .map_or(f64::NAN, |p| p.p99 as f64 / 1000.0)
    }),
    ("enter_p99_ms", 2, |r| {
        r.enter_latency_us.p99 as f64 / 1000.0
    }),
    ("loadgen_cpu_percent_of_core", 1, |r| {
        r.loadgen_cpu_percent_of_core
    }),
    ("host_steal_percent_of_core", 1, |r| {
        r.host_steal_percent_of_core
    }),
];

/// Summarise rounds (each: Elko first, then the peers, as `ratios` expects).
pub fn summarize(rounds: &[Vec<Report>]) -> RepeatSummary {
    let mut s = RepeatSummary {
        rounds: rounds.len(),
        ..RepeatSummary::default()
    };
    let Some(first) = rounds.first() else {
        return s;
    };
    for (i, r0) in first.iter().enumerate() {
        let runs: Vec<&Report> = rounds
            .iter()
            .filter_map(|round| round.get(i))
            .filter(|r| r.target == r0.target)
            .collect();
        let mut m = BTreeMap::new();
        for (name, _, get) in METRICS {
            if let Some(sp) = Spread::of(runs.iter().map(|r| get(r))) {
                m.insert(name, sp);
            }
        }
        s.targets.push(Figures {
            name: r0.target.clone(),
            figures: m,
        });
    }
    let per_round: Vec<_> = rounds.iter().map(|r| ratios(r)).collect();
    if let Some(peers) = per_round.first() {
        for (j, q0) in peers.iter().enumerate() {
            let qs: Vec<_> = per_round
                .iter()
                .filter_map(|round| round.get(j))
                .filter(|q| q.peer == q0.peer)
                .collect();
            let mut m = BTreeMap::new();
            for (name, get) in RATIOS {
                if let Some(sp) = Spread::of(qs.iter().map(|q| get(q))) {
                    m.insert(name, sp);
                }
            }
            s.ratios.push(Figures {
                name: q0.peer.clone(),
                figures: m,
            });
        }
    }
    s
}

impl RepeatSummary {
    /// The human table.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\nrepeated: {} rounds (each runs every target in turn); median [min-max]",
            self.rounds
        );
        let _ = write!(o, "{:<30}", "");
        for t in &self.targets {
            let _ = write!(o, " {:>27}", t.name);
        }
        let _ = writeln!(o);
        for (name, decimals, _) in METRICS {
            let _ = write!(o, "{name:<30}");
            for t in &self.targets {
                let cell = t
                    .figures
                    .get(name)
                    .map_or("-".into(), |sp| sp.show(decimals));
                let _ = write!(o, " {cell:>27}");
            }
            let _ = writeln!(o);
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(
                o,
                "elko / peer, per round (below 1: elko uses less or is faster)"
            );
            for q in &self.ratios {
                let _ = write!(o, "  vs {:<6}", q.name);
                for (name, _) in RATIOS {
                    if let Some(sp) = q.figures.get(name) {
                        let _ = write!(o, "  {name} {}x", sp.show(2));
                    }
                }
                let _ = writeln!(o);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn spread_is_median_min_max_and_skips_nan() {
        let s = Spread::of([3.0, 1.0, f64::NAN, 2.0]).expect("values");
        assert_eq!(
            s,
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        let s = Spread::of([4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert!(Spread::of([f64::NAN]).is_none());
    }

    #[test]
    fn rounds_summarise_per_target_and_per_ratio() {
        let rounds: Vec<Vec<Report>> = [(8.0, 10.0), (9.0, 12.0), (10.0, 11.0)]
            .iter()
            .map(|&(e, r)| {
                vec![
                    sample_report("elko", 800, e),
                    sample_report("redis", 1000, r),
                ]
            })
            .collect();
        let s = summarize(&rounds);
        assert_eq!(s.rounds, 3);
        assert_eq!(s.targets.len(), 2);
        let elko = &s.targets[0].figures["server_cpu_us_per_delivery"];
        assert_eq!((elko.median, elko.min, elko.max), (9.0, 8.0, 10.0));
        assert_eq!(s.ratios[0].name, "redis");
        let cpu = s.ratios[0].figures["server_cpu_per_delivery"];
        // Per round: 0.8, 0.75, 0.909...
        assert!((cpu.median - 0.8).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.min - 0.75).abs() < 1e-9, "{cpu:?}");
        let text = s.text();
        assert!(text.contains("repeated: 3 rounds"), "{text}");
        assert!(text.contains("vs redis"), "{text}");
    }
}
