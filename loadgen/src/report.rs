//! The report: a human summary beside the 2002 figures, JSON, CSV, SVG.

use crate::scenario::Scenario;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One server process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcReport {
    pub name: String,
    pub pid: u32,
    pub cpu_percent_of_core: f64,
    pub rss_bytes: u64,
}

/// All server processes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerReport {
    pub cpu_percent_of_core: f64,
    pub rss_bytes: u64,
    pub processes: Vec<ProcReport>,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineRow {
    pub t_s: f64,
    pub phase: &'static str,
    pub connected: u64,
    pub utterances_per_s: f64,
    pub deliveries_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub server_cpu_percent: f64,
    pub loadgen_cpu_percent: f64,
}

/// One step of the `max` preset.
#[derive(Debug, Clone, Serialize)]
pub struct MaxStep {
    pub utterances_per_s_target: f64,
    pub deliveries_per_s: f64,
    pub p99_us: u64,
    /// Deliveries of the step's utterances not yet received when the step
    /// ended (in flight, not lost: losses are counted for the whole run).
    pub in_flight_at_step_end: u64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub target: String,
    pub clients_connected: u64,
    pub rooms: usize,
    pub duration_s: f64,
    pub utterances_sent: u64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub latency_us: Percentiles,
    pub latency_uncorrected_us: Percentiles,
    pub server: ServerReport,
    pub loadgen_cpu_percent_of_core: f64,
    pub errors: BTreeMap<String, u64>,
    pub git_sha: String,
    pub target_utterances_per_s: f64,
    pub target_deliveries_per_s: f64,
    pub achieved_utterances_per_s: f64,
    pub achieved_deliveries_per_s: f64,
    pub server_cpu_us_per_delivery: f64,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub max_steps: Vec<MaxStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sustained_deliveries_per_s: Option<f64>,
    #[serde(skip)]
    pub timeline: Vec<TimelineRow>,
    #[serde(skip)]
    pub distribution: Vec<(f64, u64)>,
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} ms", us as f64 / 1e3)
    }
}

impl Report {
    /// The human summary, set beside the 2002 run.
    pub fn summary(&self) -> String {
        let s = &self.scenario;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\nelko-loadgen chat — preset {:?}, target {}, build {}",
            s.preset, self.target, self.git_sha
        );
        let _ = writeln!(
            o,
            "{:<28} {:>22} {:>26}",
            "", "2002 (2x400 MHz SPARC)", "this run"
        );
        let row = |o: &mut String, k: &str, a: &str, b: String| {
            let _ = writeln!(o, "{k:<28} {a:>22} {b:>26}");
        };
        row(
            &mut o,
            "connections",
            "8000",
            format!("{} of {}", self.clients_connected, s.clients),
        );
        row(&mut o, "rooms", "~200", format!("{}", self.rooms));
        row(
            &mut o,
            "fanout (users per room)",
            "~40",
            format!("{:.1}", s.fanout()),
        );
        row(
            &mut o,
            "utterance interval/client",
            "~30 s",
            format!("{:.2} s (Poisson)", s.interval.as_secs_f64()),
        );
        row(
            &mut o,
            "utterances/s",
            "~267",
            format!(
                "{:.0} (target {:.0})",
                self.achieved_utterances_per_s, self.target_utterances_per_s
            ),
        );
        row(
            &mut o,
            "deliveries/s",
            "~10 700",
            format!(
                "{:.0} (target {:.0})",
                self.achieved_deliveries_per_s, self.target_deliveries_per_s
            ),
        );
        row(
            &mut o,
            "server CPU",
            "~20% of 2 CPUs",
            format!("{:.1}% of one core", self.server.cpu_percent_of_core),
        );
        row(
            &mut o,
            "lag",
            "none visible",
            format!(
                "p99 {}, max {}",
                ms(self.latency_us.p99),
                ms(self.latency_us.max)
            ),
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "steady state {:.0} s: {} utterances, {} deliveries expected, {} received, {} lost, {} duplicated, {} out of order",
            self.duration_s, self.utterances_sent, self.deliveries_expected, self.deliveries_received, self.lost, self.duplicates, self.out_of_order
        );
        let l = &self.latency_us;
        let u = &self.latency_uncorrected_us;
        let _ = writeln!(
            o,
            "latency from intended send (corrected): p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
        let _ = writeln!(
            o,
            "latency from actual send:               p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(u.p50),
            ms(u.p90),
            ms(u.p99),
            ms(u.p999),
            ms(u.max)
        );
        let _ = writeln!(
            o,
            "server CPU per delivery: {:.2} µs",
            self.server_cpu_us_per_delivery
        );
        for p in &self.server.processes {
            let _ = writeln!(
                o,
                "  {:<20} pid {:<8} CPU {:>6.1}% of a core   RSS {:>7.1} MiB",
                p.name,
                p.pid,
                p.cpu_percent_of_core,
                p.rss_bytes as f64 / 1048576.0
            );
        }
        let _ = writeln!(
            o,
            "  {:<20} {:<12} CPU {:>6.1}% of a core",
            "elko-loadgen", "(this)", self.loadgen_cpu_percent_of_core
        );
        if let Some(best) = self.max_sustained_deliveries_per_s {
            let _ = writeln!(
                o,
                "\nmax: highest sustained rate with p99 <= 100 ms: {best:.0} deliveries/s"
            );
            for st in &self.max_steps {
                let _ = writeln!(
                    o,
                    "  target {:>9.0} utt/s  -> {:>10.0} deliveries/s  p99 {:>10}  in flight at step end {}",
                    st.utterances_per_s_target,
                    st.deliveries_per_s,
                    ms(st.p99_us),
                    st.in_flight_at_step_end
                );
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(o, "errors: {:?}", self.errors);
        }
        for w in &self.warnings {
            let _ = writeln!(o, "WARNING: {w}");
        }
        o
    }

    /// The per-second timeline as CSV.
    pub fn csv(&self) -> String {
        let mut o = String::from("t_s,phase,connected,utterances_per_s,deliveries_per_s,p50_us,p99_us,max_us,server_cpu_percent,loadgen_cpu_percent\n");
        for r in &self.timeline {
            let _ = writeln!(
                o,
                "{:.1},{},{},{:.1},{:.1},{},{},{},{:.1},{:.1}",
                r.t_s,
                r.phase,
                r.connected,
                r.utterances_per_s,
                r.deliveries_per_s,
                r.p50_us,
                r.p99_us,
                r.max_us,
                r.server_cpu_percent,
                r.loadgen_cpu_percent
            );
        }
        o
    }

    /// Two panels: latency over time (p50, p99, max per second, log scale),
    /// and the percentile distribution of the steady state.
    pub fn svg(&self) -> String {
        let (w, h) = (960.0, 720.0);
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let title = format!(
            "elko-loadgen {:?}: {} clients, {} rooms, {:.0} deliveries/s, server CPU {:.1}% of a core",
            self.scenario.preset, self.clients_connected, self.rooms, self.achieved_deliveries_per_s, self.server.cpu_percent_of_core
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            w / 2.0,
            title
        );
        // Log-scale latency axis shared by both panels: 10 µs .. max.
        let top = self
            .timeline
            .iter()
            .map(|r| r.max_us)
            .chain(self.distribution.iter().map(|d| d.1))
            .max()
            .unwrap_or(1000)
            .max(1000);
        let ymax = 10f64.powf((top as f64).log10().ceil());
        let ymin = 10.0;
        let panel = |o: &mut String, x0: f64, y0: f64, pw: f64, ph: f64, xlabel: &str| {
            let _ = writeln!(
                o,
                r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
            );
            let mut d = ymin;
            while d <= ymax {
                let y = y0 + ph - ph * ((d / ymin).log10() / (ymax / ymin).log10());
                let _ = writeln!(
                    o,
                    r##"<line x1="{x0}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                    x0 + pw
                );
                let label = if d >= 1e6 {
                    format!("{} s", d / 1e6)
                } else if d >= 1e3 {
                    format!("{} ms", d / 1e3)
                } else {
                    format!("{d} µs")
                };
                let _ = writeln!(
                    o,
                    r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#,
                    x0 - 6.0,
                    y + 4.0
                );
                d *= 10.0;
            }
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>"#,
                x0 + pw / 2.0,
                y0 + ph + 32.0
            );
        };
        let yof = |v: u64, y0: f64, ph: f64| {
            let v = (v as f64).clamp(ymin, ymax);
            y0 + ph - ph * ((v / ymin).log10() / (ymax / ymin).log10())
        };
        // Panel 1: over time.
        let (x0, y0, pw, ph) = (80.0, 50.0, 840.0, 270.0);
        panel(
            &mut o,
            x0,
            y0,
            pw,
            ph,
            "time (s) — per-second latency from intended send time",
        );
        let tmax = self.timeline.last().map(|r| r.t_s).unwrap_or(1.0).max(1.0);
        for (series, color, pick) in [
            ("max", "#d62728", 2usize),
            ("p99", "#ff7f0e", 1),
            ("p50", "#1f77b4", 0),
        ] {
            let pts: Vec<String> = self
                .timeline
                .iter()
                .filter(|r| r.max_us > 0)
                .map(|r| {
                    let v = [r.p50_us, r.p99_us, r.max_us][pick];
                    format!("{:.1},{:.1}", x0 + pw * r.t_s / tmax, yof(v, y0, ph))
                })
                .collect();
            if !pts.is_empty() {
                let _ = writeln!(
                    o,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                    pts.join(" ")
                );
            }
            let ly = y0 + 14.0 + 16.0 * pick as f64;
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{ly}" fill="{color}">{series}</text>"#,
                x0 + pw - 40.0
            );
        }
        let mut t = 0.0;
        let step = (tmax / 10.0).max(1.0).ceil();
        while t <= tmax {
            let x = x0 + pw * t / tmax;
            let _ = writeln!(
                o,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#,
                y0 + ph + 16.0
            );
            t += step;
        }
        // Panel 2: percentile distribution, x = log10(1 / (1 - q)).
        let (x0, y0, pw, ph) = (80.0, 400.0, 840.0, 260.0);
        panel(
            &mut o,
            x0,
            y0,
            pw,
            ph,
            "percentile — steady state, from intended send time (corrected)",
        );
        let xmax = 5.0; // 99.999%
        let xof = |q: f64| x0 + pw * ((1.0 / (1.0 - q).max(1e-5)).log10() / xmax).min(1.0);
        for (q, label) in [
            (0.0, "0%"),
            (0.9, "90%"),
            (0.99, "99%"),
            (0.999, "99.9%"),
            (0.9999, "99.99%"),
            (0.99999, "99.999%"),
        ] {
            let x = xof(q);
            let _ = writeln!(
                o,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{}" stroke="#ddd"/>"##,
                y0 + ph
            );
            let _ = writeln!(
                o,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#,
                y0 + ph + 16.0
            );
        }
        let pts: Vec<String> = self
            .distribution
            .iter()
            .map(|&(q, v)| format!("{:.1},{:.1}", xof(q), yof(v, y0, ph)))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                o,
                r##"<polyline fill="none" stroke="#2ca02c" stroke-width="2" points="{}"/>"##,
                pts.join(" ")
            );
        }
        let l = &self.latency_us;
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}">p50 {}  p99 {}  p99.9 {}  max {}</text>"#,
            x0 + 10.0,
            y0 + 18.0,
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
        let _ = writeln!(o, "</svg>");
        o
    }
}

/// Points of a histogram's percentile curve, for the plot.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut v = Vec::new();
    let mut x = 0.0f64;
    while x <= 5.0 {
        let q = 1.0 - 10f64.powf(-x);
        v.push((q, h.value_at_quantile(q)));
        x += 0.05;
    }
    v
}
