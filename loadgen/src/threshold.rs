//! `--threshold 'p99<5ms'`: limits that make the exit status non-zero.
//!
//! Metrics: `p50 p90 p99 p999 max` (corrected latency; units `us`, `ms`,
//! `s`), `loss` (deliveries lost: a count, or with `%` a fraction of those
//! expected), `cpu` (server CPU, % of one core), `gencpu` (generator CPU).
//! Operators: `<` and `<=`.

use crate::report::Report;

/// One parsed limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub text: String,
    metric: Metric,
    inclusive: bool,
    limit: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Latency(&'static str),
    LossCount,
    LossPercent,
    Cpu,
    GenCpu,
}

/// Why a threshold did not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("bad threshold {text:?}: {why} (examples: 'p99<5ms', 'loss<=0', 'loss<0.1%', 'cpu<5')")]
pub struct ThresholdError {
    text: String,
    why: &'static str,
}

impl std::str::FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| ThresholdError {
            text: text.to_string(),
            why,
        };
        let t = text.replace(' ', "");
        let (name, inclusive, value) = if let Some((a, b)) = t.split_once("<=") {
            (a, true, b)
        } else if let Some((a, b)) = t.split_once('<') {
            (a, false, b)
        } else {
            return Err(err("use < or <="));
        };
        let num_end = value
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(value.len());
        let (num, unit) = value.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| err("the limit is not a number"))?;
        let (metric, limit) = match name {
            "p50" | "p90" | "p99" | "p999" | "max" => {
                let us = match unit {
                    "us" | "µs" => n,
                    "ms" => n * 1e3,
                    "s" => n * 1e6,
                    _ => return Err(err("latency needs a unit: us, ms or s")),
                };
                let m = match name {
                    "p50" => "p50",
                    "p90" => "p90",
                    "p99" => "p99",
                    "p999" => "p999",
                    _ => "max",
                };
                (Metric::Latency(m), us)
            }
            "loss" => match unit {
                "" => (Metric::LossCount, n),
                "%" => (Metric::LossPercent, n),
                _ => return Err(err("loss is a count or a percentage")),
            },
            "cpu" if unit.is_empty() || unit == "%" => (Metric::Cpu, n),
            "gencpu" if unit.is_empty() || unit == "%" => (Metric::GenCpu, n),
            _ => return Err(err("unknown metric")),
        };
        Ok(Threshold {
            text: text.to_string(),
            metric,
            inclusive,
            limit,
        })
    }
}

impl Threshold {
    /// The measured value this limit looks at, in its unit.
    pub fn measure(&self, r: &Report) -> f64 {
        match self.metric {
            Metric::Latency(p) => {
                let l = &r.latency_us;
                (match p {
                    "p50" => l.p50,
                    "p90" => l.p90,
                    "p99" => l.p99,
                    "p999" => l.p999,
                    _ => l.max,
                }) as f64
            }
            Metric::LossCount => r.lost as f64,
            Metric::LossPercent => 100.0 * r.lost as f64 / (r.deliveries_expected.max(1)) as f64,
            Metric::Cpu => r.server.cpu_percent_of_core,
            Metric::GenCpu => r.loadgen_cpu_percent_of_core,
        }
    }

    /// Whether `r` respects this limit.
    pub fn holds(&self, r: &Report) -> bool {
        let v = self.measure(r);
        if self.inclusive {
            v <= self.limit
        } else {
            v < self.limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_operators() {
        let t: Threshold = "p99<5ms".parse().expect("parses");
        assert_eq!(
            (t.metric, t.limit, t.inclusive),
            (Metric::Latency("p99"), 5000.0, false)
        );
        let t: Threshold = "p999 <= 1.5 ms".parse().expect("parses");
        assert_eq!((t.limit, t.inclusive), (1500.0, true));
        let t: Threshold = "loss<=0".parse().expect("parses");
        assert_eq!(t.metric, Metric::LossCount);
        let t: Threshold = "loss<0.1%".parse().expect("parses");
        assert_eq!(t.metric, Metric::LossPercent);
        assert_eq!(
            "cpu<5".parse::<Threshold>().expect("parses").metric,
            Metric::Cpu
        );
        assert!("p99>5ms".parse::<Threshold>().is_err());
        assert!("p99<5".parse::<Threshold>().is_err());
        assert!("speed<5".parse::<Threshold>().is_err());
    }
}
