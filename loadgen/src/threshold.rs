//! `--threshold 'p99<5ms'`: limits that make the exit status non-zero.
//!
//! `METRIC OP LIMIT`, with `OP` one of `<`, `<=`, `>`, `>=`. Metrics:
//!
//! | metric | what | limit units |
//! |---|---|---|
//! | `p50 p90 p99 p999 max` | corrected latency | `us`, `ms`, `s` |
//! | `socket_p50` ... `socket_max` | corrected latency to the client's socket (kernel receive stamp) | `us`, `ms`, `s` |
//! | `loss` | deliveries lost | a count, or `%` of those expected |
//! | `dup`, `ooo` | duplicated, out-of-order deliveries | a count |
//! | `cpu`, `gencpu` | server, generator CPU | % of one core (`%` optional) |
//! | `cpu_per_delivery` | server CPU per delivery | `ns`, `us`, `ms` |
//! | `rate` | deliveries/s (for `max`, its figure: the sustained hold's rate, else the best step's) | a number, `k` or `M` |
//! | `mem_per_client` | server memory per connected client | `B`, `KiB`, `MiB` |
//!
//! A limit written as a signed percentage, `p99<+10%` or `rate>=-5%`, is
//! relative to the same figure in a baseline (`--baseline FILE`, the JSON of
//! an earlier run): at most 10 % above it, at least 5 % below it. A baseline
//! of several rounds (`--repeat`) contributes its median.
//!
//! A limit written as a factor and a target, `cpu_per_delivery<1.2xminimal`
//! or `p99<=0.9xredis`, is relative to the same figure of that target
//! measured in the same round (`--compare minimal`): a gate that holds on
//! any machine, since both figures come from the same machine at the same
//! hour.
//!
//! Figures are read from the report's JSON form, so the baseline and the run
//! are measured by the same code.

use serde_json::Value;

/// One parsed limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub text: String,
    metric: Metric,
    op: Op,
    limit: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    /// A percentile (`p`) of the latency object `of` in the JSON.
    Latency {
        of: &'static str,
        p: &'static str,
    },
    LossCount,
    LossPercent,
    Duplicates,
    OutOfOrder,
    Cpu,
    GenCpu,
    CpuPerDelivery,
    Rate,
    MemPerClient,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Limit {
    /// In the metric's base unit (µs, count, %, deliveries/s, bytes).
    Absolute(f64),
    /// Percent above (+) or below (-) the baseline's figure.
    Relative(f64),
    /// This many times the figure of target `of` in the same round.
    Times { factor: f64, of: String },
}

/// Targets a `Times` limit may name (`TargetKind::name`).
const TARGETS: [&str; 4] = ["elko", "minimal", "redis", "nats"];

/// Why a threshold did not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("bad threshold {text:?}: {why} (examples: 'p99<5ms', 'loss<=0', 'loss<0.1%', 'cpu<5', 'cpu_per_delivery<10us', 'rate>=300k', 'mem_per_client<2KiB', 'p99<+10%' with --baseline, 'cpu_per_delivery<1.2x minimal' with --compare minimal)")]
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
        let at = t
            .find(['<', '>'])
            .ok_or_else(|| err("use <, <=, > or >="))?;
        let (name, rest) = t.split_at(at);
        let (op, value) = match (rest.as_bytes()[0], rest.as_bytes().get(1)) {
            (b'<', Some(b'=')) => (Op::Le, &rest[2..]),
            (b'<', _) => (Op::Lt, &rest[1..]),
            (b'>', Some(b'=')) => (Op::Ge, &rest[2..]),
            _ => (Op::Gt, &rest[1..]),
        };
        if let Some(pct) = value
            .strip_suffix('%')
            .filter(|v| v.starts_with(['+', '-']))
        {
            let p: f64 = pct
                .parse()
                .map_err(|_| err("a relative limit is a signed percentage: +10%, -5%"))?;
            let metric = metric_named(name, "").map_err(err)?;
            return Ok(Threshold {
                text: text.to_string(),
                metric,
                op,
                limit: Limit::Relative(p),
            });
        }
        let num_end = value
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(value.len());
        let (num, unit) = value.split_at(num_end);
        if let Some(of) = unit.strip_prefix('x') {
            let factor: f64 = num
                .parse()
                .map_err(|_| err("a factor is a number before x: 1.2x minimal"))?;
            if !TARGETS.contains(&of) {
                return Err(err(
                    "x is followed by a target: elko, minimal, redis or nats",
                ));
            }
            let metric = metric_named(name, "").map_err(err)?;
            return Ok(Threshold {
                text: text.to_string(),
                metric,
                op,
                limit: Limit::Times {
                    factor,
                    of: of.to_string(),
                },
            });
        }
        let n: f64 = num.parse().map_err(|_| err("the limit is not a number"))?;
        let metric = metric_named(name, unit).map_err(err)?;
        let scale = match metric {
            Metric::Latency { .. } | Metric::CpuPerDelivery => match unit {
                "ns" => 1e-3,
                "us" | "µs" => 1.0,
                "ms" => 1e3,
                "s" if matches!(metric, Metric::Latency { .. }) => 1e6,
                _ => return Err(err(
                    "a time needs a unit: us or ms (latency: also s; cpu_per_delivery: also ns)",
                )),
            },
            Metric::Rate => crate::scenario::rate_scale(unit)
                .ok_or_else(|| err("a rate is a number of deliveries/s, or with k or M"))?,
            Metric::MemPerClient => match unit {
                "" | "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                _ => return Err(err("memory is in B, KiB or MiB")),
            },
            Metric::Cpu | Metric::GenCpu if unit.is_empty() || unit == "%" => 1.0,
            Metric::LossCount | Metric::Duplicates | Metric::OutOfOrder if unit.is_empty() => 1.0,
            Metric::LossPercent => 1.0,
            _ => return Err(err("cpu is in % of one core; loss, dup and ooo are counts")),
        };
        Ok(Threshold {
            text: text.to_string(),
            metric,
            op,
            limit: Limit::Absolute(n * scale),
        })
    }
}

/// The metric called `name` (`unit` tells loss's count from its percentage).
fn metric_named(name: &str, unit: &str) -> Result<Metric, &'static str> {
    let (of, percentile) = match name.strip_prefix("socket_") {
        Some(p) => ("latency_at_socket_us", p),
        None => ("latency_us", name),
    };
    if let Some(p) = ["p50", "p90", "p99", "p999", "max"]
        .into_iter()
        .find(|&p| p == percentile)
    {
        return Ok(Metric::Latency { of, p });
    }
    Ok(match name {
        "loss" if unit == "%" => Metric::LossPercent,
        "loss" => Metric::LossCount,
        "dup" => Metric::Duplicates,
        "ooo" => Metric::OutOfOrder,
        "cpu" => Metric::Cpu,
        "gencpu" => Metric::GenCpu,
        "cpu_per_delivery" => Metric::CpuPerDelivery,
        "rate" => Metric::Rate,
        "mem_per_client" => Metric::MemPerClient,
        _ => return Err("unknown metric"),
    })
}

fn number(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

impl Threshold {
    /// Whether the limit is relative to a baseline.
    pub fn is_relative(&self) -> bool {
        matches!(self.limit, Limit::Relative(_))
    }

    /// The target whose figure in the same round the limit is a multiple of.
    pub fn compared_with(&self) -> Option<&str> {
        match &self.limit {
            Limit::Times { of, .. } => Some(of),
            _ => None,
        }
    }

    /// Whether the limit is on the server's CPU or memory, which a run
    /// measures only for servers it started or was told of.
    pub fn is_on_server(&self) -> bool {
        matches!(
            self.metric,
            Metric::Cpu | Metric::CpuPerDelivery | Metric::MemPerClient
        )
    }

    /// The figure this limit looks at, in its base unit, from a report's
    /// JSON form (None: the report does not have it, or it was not measured).
    pub fn measure(&self, report: &Value) -> Option<f64> {
        let r = report;
        match self.metric {
            Metric::Latency { of, p } => number(r, &format!("/{of}/{p}")),
            Metric::LossCount => number(r, "/lost"),
            Metric::LossPercent => {
                Some(100.0 * number(r, "/lost")? / number(r, "/deliveries_expected")?.max(1.0))
            }
            Metric::Duplicates => number(r, "/duplicates"),
            Metric::OutOfOrder => number(r, "/out_of_order"),
            Metric::Cpu => number(r, "/server/cpu_percent_of_core"),
            Metric::GenCpu => number(r, "/loadgen_cpu_percent_of_core"),
            Metric::CpuPerDelivery => number(r, "/server_cpu_us_per_delivery"),
            Metric::Rate => number(r, "/max_sustained_deliveries_per_s")
                .or_else(|| number(r, "/achieved_deliveries_per_s")),
            Metric::MemPerClient => number(r, "/server/rss_per_client_bytes"),
        }
    }

    /// The limit in the metric's base unit, given the figure it is relative
    /// to: the baseline's, or the compared target's (None: relative, and no
    /// such figure).
    pub fn limit(&self, reference: Option<f64>) -> Option<f64> {
        match self.limit {
            Limit::Absolute(l) => Some(l),
            Limit::Relative(p) => reference.map(|b| b * (1.0 + p / 100.0)),
            Limit::Times { factor, .. } => reference.map(|b| b * factor),
        }
    }

    /// The base unit of [`Threshold::measure`] and [`Threshold::limit`], for display.
    pub fn unit(&self) -> &'static str {
        match self.metric {
            Metric::Latency { .. } | Metric::CpuPerDelivery => " µs",
            Metric::LossPercent | Metric::Cpu | Metric::GenCpu => " %",
            Metric::Rate => " deliveries/s",
            Metric::MemPerClient => " B",
            Metric::LossCount | Metric::Duplicates | Metric::OutOfOrder => "",
        }
    }

    /// Whether `value` respects a limit of `limit`.
    pub fn holds(&self, value: f64, limit: f64) -> bool {
        match self.op {
            Op::Lt => value < limit,
            Op::Le => value <= limit,
            Op::Gt => value > limit,
            Op::Ge => value >= limit,
        }
    }
}

/// The reports of `target` in a JSON file written by `--json`: a single
/// report, a `--compare` run (`compare`: one per target) or `--repeat`
/// rounds (`rounds`: each either of those).
pub fn reports_of<'a>(json: &'a Value, target: &str) -> Vec<&'a Value> {
    if let Some(rounds) = json.get("rounds").and_then(Value::as_array) {
        return rounds.iter().flat_map(|r| reports_of(r, target)).collect();
    }
    if let Some(runs) = json.get("compare").and_then(Value::as_array) {
        return runs.iter().flat_map(|r| reports_of(r, target)).collect();
    }
    if json.get("target").and_then(Value::as_str) == Some(target) {
        return vec![json];
    }
    Vec::new()
}

/// The median of `t`'s figure over `reports` (None if none has it).
pub fn median_of(t: &Threshold, reports: &[&Value]) -> Option<f64> {
    let mut v: Vec<f64> = reports.iter().filter_map(|r| t.measure(r)).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Threshold {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_units_and_operators() {
        let p99 = t("p99<5ms");
        assert_eq!(
            (p99.metric, p99.limit, p99.op),
            (
                Metric::Latency {
                    of: "latency_us",
                    p: "p99"
                },
                Limit::Absolute(5000.0),
                Op::Lt
            )
        );
        let p = t("p999 <= 1.5 ms");
        assert_eq!((p.limit, p.op), (Limit::Absolute(1500.0), Op::Le));
        assert_eq!(
            t("socket_p99<500us").metric,
            Metric::Latency {
                of: "latency_at_socket_us",
                p: "p99"
            }
        );
        assert_eq!(t("loss<=0").metric, Metric::LossCount);
        assert_eq!(t("loss<0.1%").metric, Metric::LossPercent);
        assert_eq!(t("cpu<5").metric, Metric::Cpu);
        assert_eq!(t("dup<=0").metric, Metric::Duplicates);
        assert_eq!(t("ooo<=0").metric, Metric::OutOfOrder);
        let r = t("rate>=2.5M");
        assert_eq!(
            (r.metric, r.op, r.limit),
            (Metric::Rate, Op::Ge, Limit::Absolute(2.5e6))
        );
        assert_eq!(t("rate>300k").limit, Limit::Absolute(3e5));
        assert_eq!(t("cpu_per_delivery<800ns").limit, Limit::Absolute(0.8));
        assert_eq!(t("mem_per_client<1.5KiB").limit, Limit::Absolute(1536.0));
        let rel = t("p99<+10%");
        assert_eq!(
            (rel.limit.clone(), rel.is_relative()),
            (Limit::Relative(10.0), true)
        );
        assert_eq!(t("rate>=-5%").limit, Limit::Relative(-5.0));
        let times = t("cpu_per_delivery < 1.2x minimal");
        assert_eq!(
            (times.metric, times.compared_with(), times.is_relative()),
            (Metric::CpuPerDelivery, Some("minimal"), false)
        );
        assert_eq!(t("p99<=0.9xredis").compared_with(), Some("redis"));
        for bad in [
            "p99<1.2x",
            "p99<1.2xmemcached",
            "p99<x minimal",
            "speed<2xredis",
            "p99=5ms",
            "p99<5",
            "p99<5kg",
            "speed<5",
            "cpu_per_delivery<3s",
            "rate>5G",
            "cpu<5ms",
            "dup<1%",
            "p99<+x%",
            "p99<",
            "socket_p98<1ms",
            "socket_loss<1",
        ] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn limits_hold_or_breach_both_ways() {
        let lt = t("p99<5ms");
        assert!(lt.holds(4999.0, 5000.0) && !lt.holds(5000.0, 5000.0));
        let ge = t("rate>=100");
        assert!(ge.holds(100.0, 100.0) && !ge.holds(99.0, 100.0));
        let rel = t("p99<+10%");
        let l = rel.limit(Some(800.0)).expect("a limit");
        assert!((l - 880.0).abs() < 1e-9, "{l}");
        assert_eq!(rel.limit(None), None);
        assert_eq!(t("rate>=-5%").limit(Some(1000.0)), Some(950.0));
        let times = t("cpu_per_delivery<1.2xminimal");
        assert_eq!(times.limit(Some(10.0)), Some(12.0));
        assert_eq!(times.limit(None), None, "no such target in the round");
    }

    #[test]
    fn figures_come_from_any_shape_of_report_json() {
        let elko = |p99: u64| {
            json!({"target": "elko", "latency_us": {"p99": p99}, "lost": 2,
                   "latency_at_socket_us": {"p99": p99 / 2},
                   "deliveries_expected": 400, "achieved_deliveries_per_s": 10.0,
                   "max_sustained_deliveries_per_s": null,
                   "server": {"cpu_percent_of_core": 9.5, "rss_per_client_bytes": 1100.0}})
        };
        let redis = json!({"target": "redis", "latency_us": {"p99": 9}});
        let one = elko(700);
        assert_eq!(t("p99<1ms").measure(&one), Some(700.0));
        assert_eq!(t("socket_p99<1ms").measure(&one), Some(350.0));
        let mut unstamped = elko(700);
        unstamped["latency_at_socket_us"] = json!(null);
        assert_eq!(t("socket_p99<1ms").measure(&unstamped), None);
        assert_eq!(t("loss<1%").measure(&one), Some(0.5));
        assert_eq!(
            t("rate>1").measure(&one),
            Some(10.0),
            "null max figure: achieved rate"
        );
        assert_eq!(t("mem_per_client<1KiB").measure(&one), Some(1100.0));
        assert_eq!(t("dup<=0").measure(&one), None);

        let compare = json!({"compare": [elko(600), redis], "ratios": []});
        assert_eq!(reports_of(&compare, "redis").len(), 1);
        let rounds = json!({"rounds": [elko(600), elko(900), elko(700)], "summary": {}});
        let got = reports_of(&rounds, "elko");
        assert_eq!(got.len(), 3);
        assert_eq!(median_of(&t("p99<+10%"), &got), Some(700.0));
        assert!(reports_of(&rounds, "nats").is_empty());
        let two = json!({"rounds": [{"compare": [elko(600)]}, {"compare": [elko(900)]}]});
        assert_eq!(
            median_of(&t("p99<+1%"), &reports_of(&two, "elko")),
            Some(750.0)
        );
    }
}
