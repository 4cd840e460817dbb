//! The report: a human summary beside the 2002 figures, JSON, CSV, SVG.

use crate::metrics::Counters;
use crate::procs::ProcSample;
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
    /// "p50 … p90 … p99 … p99.9 … max …", for the summary.
    fn five(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        )
    }

    /// "p50 / p99", compact, for the side-by-side table.
    fn p50_p99(&self) -> String {
        format!("{} / {}", ms_short(self.p50), ms_short(self.p99))
    }

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
    /// `None` for a process measured through its metrics endpoint
    /// (`--server-metrics`), which may be on another machine.
    pub pid: Option<u32>,
    pub cpu_percent_of_core: f64,
    /// Resident memory, highest in the steady state.
    pub rss_bytes: u64,
    /// Resident memory before the clients connected.
    pub rss_before_clients_bytes: u64,
    /// Sockets held (connections and listeners), counted in the steady state.
    pub sockets: Option<u64>,
    /// Event loops, for a context server this run started (`None`: not
    /// chosen by the run).
    pub event_loops: Option<usize>,
}

/// All server processes. The figures are `None` (JSON `null`) when no
/// server process was measured: a cluster driven with `--director` or a peer
/// with `--target-addr`, without `--server-pid` / `--server-metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerReport {
    pub cpu_percent_of_core: Option<f64>,
    pub rss_bytes: u64,
    /// Memory the clients added, per connected client.
    pub rss_per_client_bytes: Option<f64>,
    /// Sockets of every server process.
    pub connections: u64,
    pub processes: Vec<ProcReport>,
}

impl ServerReport {
    /// CPU of the server processes read from this machine's `/proc` (the
    /// others, measured through metrics endpoints, may run elsewhere).
    pub fn local_cpu_percent_of_core(&self) -> f64 {
        self.processes
            .iter()
            .filter(|p| p.pid.is_some())
            .map(|p| p.cpu_percent_of_core)
            .sum()
    }
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
    /// None when no server process is measured (an empty CSV cell).
    pub server_cpu_percent: Option<f64>,
    pub loadgen_cpu_percent: f64,
}

impl TimelineRow {
    /// The second ending at `t` (from the run's start): rates from the
    /// counters' change since `last`, latencies from the second's histogram,
    /// CPU from the second's samples of the servers and the generator.
    pub fn second(
        t: std::time::Duration,
        phase: &'static str,
        c: &Counters,
        last: &Counters,
        latencies: &Histogram<u64>,
        servers: &[ProcSample],
        gen_cpu_s: f64,
    ) -> TimelineRow {
        let p = Percentiles::of(latencies);
        let server_cpu_s: f64 = servers.iter().map(|p| p.cpu_s).sum();
        TimelineRow {
            t_s: t.as_secs_f64(),
            phase,
            connected: c.connected.max(0) as u64,
            utterances_per_s: c.sent_total.saturating_sub(last.sent_total) as f64,
            deliveries_per_s: c.received_total.saturating_sub(last.received_total) as f64,
            p50_us: p.p50,
            p99_us: p.p99,
            max_us: p.max,
            server_cpu_percent: (!servers.is_empty()).then_some(100.0 * server_cpu_s),
            loadgen_cpu_percent: 100.0 * gen_cpu_s,
        }
    }
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
    /// After the search: the best rate held, to see that it is sustained.
    pub hold: bool,
}

/// The `max` preset's best rate, held after the search (and lowered while
/// it breaches the knee): the last hold, what it delivered, its p99 over
/// every held second, and whether that makes it a sustained rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MaxHeld {
    pub seconds: f64,
    pub deliveries_per_s: f64,
    pub p99_us: u64,
    pub sustained: bool,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub target: String,
    pub clients_connected: u64,
    pub rooms: usize,
    pub duration_s: f64,
    /// When the steady state began, in seconds from the start of the run.
    pub steady_from_s: f64,
    pub utterances_sent: u64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub latency_us: Percentiles,
    pub latency_uncorrected_us: Percentiles,
    /// Per utterance all of whose copies arrived in the window: intended
    /// send time to its first copy (how soon the server answers at all).
    pub first_copy_latency_us: Percentiles,
    /// Per such utterance: first copy to last (how long the server takes to
    /// hand one utterance to the whole room).
    pub fanout_spread_us: Percentiles,
    /// Utterances those two cover.
    pub fanouts_complete: u64,
    /// Every delivery, from the intended send time to when its bytes reached
    /// the client's socket (the kernel's receive stamp): what a client on
    /// its own machine would see, without the generator's wake-up and the
    /// reads of the other clients it serves before this one. `None` (null)
    /// when no read carried a stamp (`--no-socket-stamps`).
    pub latency_at_socket_us: Option<Percentiles>,
    /// The same deliveries, from that stamp to the generator's read: the
    /// generator's own share of `latency_us` (when it grows, the generator
    /// is the bottleneck).
    pub generator_read_lag_us: Option<Percentiles>,
    /// Deliveries those two cover (every one whose read carried a stamp).
    pub deliveries_stamped: u64,
    /// Per entry into a room (the ramp and any re-entry, not only the
    /// steady state): from the first connect of the attempt to being in the
    /// room. Elko: director, redirect, context server handshake, Enter,
    /// Snapshot (with the context's activation when it is the first member);
    /// a peer: connect and subscribe, confirmed.
    pub enter_latency_us: Percentiles,
    /// Entries that latency covers.
    pub entries: u64,
    pub server: ServerReport,
    pub loadgen_cpu_percent_of_core: f64,
    pub loadgen_processes: usize,
    /// The whole machine's busy CPU in the steady state (servers, generator,
    /// kernel work not charged to a process, and anything else running).
    pub machine_cpu_percent_of_core: f64,
    /// The kernel's ksoftirqd threads (deferred network work).
    pub kernel_softirq_threads_cpu_percent_of_core: f64,
    /// CPU time the hypervisor gave to other guests while this VM's CPUs
    /// had work (`steal` in `/proc/stat`), over the steady state; part of
    /// `machine_cpu_percent_of_core`.
    pub host_steal_percent_of_core: f64,
    /// The same in the steady state's worst second.
    pub host_steal_worst_second_percent_of_core: f64,
    pub errors: BTreeMap<String, u64>,
    pub git_sha: String,
    /// What the run ran on.
    pub machine: crate::procs::Machine,
    pub target_utterances_per_s: f64,
    pub target_deliveries_per_s: f64,
    pub achieved_utterances_per_s: f64,
    /// Deliveries received during the steady state's seconds, per second:
    /// what arrives late, in the drain, is delivered but not throughput.
    pub achieved_deliveries_per_s: f64,
    /// Server CPU over the steady state per achieved delivery.
    /// `None` when no server process was measured (see [`ServerReport`]).
    pub server_cpu_us_per_delivery: Option<f64>,
    pub warnings: Vec<String>,
    /// What the run did to the servers on the way (`--stop-contextd-at`).
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub max_steps: Vec<MaxStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sustained_deliveries_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_held: Option<MaxHeld>,
    #[serde(skip)]
    pub timeline: Vec<TimelineRow>,
    #[serde(skip)]
    pub distribution: Vec<(f64, u64)>,
    /// The same for the first copy and the fanout spread (the plot of a single run).
    #[serde(skip)]
    pub first_copy_distribution: Vec<(f64, u64)>,
    #[serde(skip)]
    pub fanout_spread_distribution: Vec<(f64, u64)>,
    #[serde(skip)]
    pub at_socket_distribution: Vec<(f64, u64)>,
    /// The per-second histograms for `--hlog`.
    #[serde(skip)]
    pub interval_log: crate::hlog::IntervalLog,
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} ms", us as f64 / 1e3)
    }
}

/// Milliseconds without the unit, for table cells.
fn ms_short(us: u64) -> String {
    let t = ms(us);
    t.trim_end_matches(" ms").to_string()
}

impl Report {
    /// The human summary, set beside the 2002 run.
    pub fn summary(&self) -> String {
        let s = &self.scenario;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\nelko-loadgen chat — preset {}, target {}, build {}\nmachine: {}",
            s.preset.name(),
            self.target,
            self.git_sha,
            self.machine.describe()
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
            self.server
                .cpu_percent_of_core
                .map_or(NOT_MEASURED.to_string(), |c| format!("{c:.1}% of one core")),
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
        let _ = writeln!(
            o,
            "latency from intended send (corrected): {}",
            self.latency_us.five()
        );
        let _ = writeln!(
            o,
            "latency from actual send:               {}",
            self.latency_uncorrected_us.five()
        );
        let _ = writeln!(
            o,
            "first copy of each utterance:           {}",
            self.first_copy_latency_us.five()
        );
        let _ = writeln!(
            o,
            "fanout spread (first copy to last):     {}   ({} of {} utterances)",
            self.fanout_spread_us.five(),
            self.fanouts_complete,
            self.utterances_sent
        );
        match (&self.latency_at_socket_us, &self.generator_read_lag_us) {
            (Some(socket), Some(lag)) => {
                let _ = writeln!(
                    o,
                    "at the client's socket (kernel stamp):  {}   ({} of {} deliveries stamped)",
                    socket.five(),
                    self.deliveries_stamped,
                    self.deliveries_received
                );
                let _ = writeln!(o, "generator's read lag (stamp to read):   {}", lag.five());
            }
            _ => {
                let _ = writeln!(
                    o,
                    "at the client's socket:                 not measured (no receive stamps)"
                );
            }
        }
        let label = if self.target == "elko" {
            "entering (director to Snapshot):"
        } else {
            "entering (connect to subscribed):"
        };
        let _ = writeln!(
            o,
            "{label:<40}{}   ({} entries, ramp included)",
            self.enter_latency_us.five(),
            self.entries
        );
        match self.server_cpu_us_per_delivery {
            Some(us) => {
                let _ = writeln!(o, "server CPU per delivery: {us:.2} µs");
            }
            None if self.server.processes.is_empty() => {
                let _ = writeln!(
                    o,
                    "server CPU and memory: not measured (the generator did not start the servers: name their processes with --server-pid PID or --server-metrics HOST:PORT)"
                );
            }
            None => {
                let _ = writeln!(o, "server CPU per delivery: none (nothing delivered)");
            }
        }
        for p in &self.server.processes {
            let loops = p
                .event_loops
                .map_or(String::new(), |n| format!("   event loops {n}"));
            let _ = writeln!(
                o,
                "  {:<20} pid {:<8} CPU {:>6.1}% of a core   RSS {:>7.1} MiB (before clients {:.1} MiB)   sockets {}{loops}",
                p.name,
                p.pid.map_or("-".to_string(), |p| p.to_string()),
                p.cpu_percent_of_core,
                p.rss_bytes as f64 / 1048576.0,
                p.rss_before_clients_bytes as f64 / 1048576.0,
                p.sockets.map_or("?".to_string(), |n| n.to_string())
            );
        }
        if let Some(b) = self.server.rss_per_client_bytes.filter(|&b| b > 0.0) {
            let _ = writeln!(
                o,
                "  server memory added per connected client: {:.2} KiB",
                b / 1024.0
            );
        }
        let _ = writeln!(
            o,
            "  {:<20} {:<12} CPU {:>6.1}% of a core ({} process{}{})",
            "elko-loadgen",
            "(generator)",
            self.loadgen_cpu_percent_of_core,
            self.loadgen_processes,
            if self.loadgen_processes == 1 {
                ""
            } else {
                "es"
            },
            if self.scenario.batch_sched {
                ", SCHED_BATCH"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "  {:<20} {:<12} CPU {:>6.1}% of a core (everything, in the steady state)",
            "whole machine", "", self.machine_cpu_percent_of_core
        );
        if self.host_steal_percent_of_core >= 0.1
            || self.host_steal_worst_second_percent_of_core >= 1.0
        {
            let _ = writeln!(
                o,
                "  {:<20} {:<12} CPU {:>6.1}% of a core (given to other guests; worst second {:.0}%)",
                "host steal",
                "(hypervisor)",
                self.host_steal_percent_of_core,
                self.host_steal_worst_second_percent_of_core
            );
        }
        if self.kernel_softirq_threads_cpu_percent_of_core >= 0.5 {
            let _ = writeln!(
                o,
                "  {:<20} {:<12} CPU {:>6.1}% of a core (deferred network work)",
                "ksoftirqd", "(kernel)", self.kernel_softirq_threads_cpu_percent_of_core
            );
        }
        if let Some(best) = self.max_sustained_deliveries_per_s {
            let how = match self.max_held {
                Some(h) if h.sustained => "held",
                _ => "best single step, not confirmed by a hold",
            };
            let _ = writeln!(
                o,
                "\nmax: highest sustained rate with p99 <= 100 ms: {best:.0} deliveries/s ({how})"
            );
            for st in &self.max_steps {
                let _ = writeln!(
                    o,
                    "  target {:>9.0} utt/s  -> {:>10.0} deliveries/s  p99 {:>10}  in flight at step end {}{}",
                    st.utterances_per_s_target,
                    st.deliveries_per_s,
                    ms(st.p99_us),
                    st.in_flight_at_step_end,
                    if st.hold { "  (held)" } else { "" }
                );
            }
            if let Some(h) = self.max_held {
                let _ = writeln!(
                    o,
                    "  last hold: {:.0} s at {:.0} deliveries/s, p99 {}: {}",
                    h.seconds,
                    h.deliveries_per_s,
                    ms(h.p99_us),
                    if h.sustained {
                        "sustained"
                    } else {
                        "NOT sustained (see the warning)"
                    }
                );
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(o, "errors: {:?}", self.errors);
        }
        for e in &self.events {
            let _ = writeln!(o, "event: {e}");
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
                "{:.1},{},{},{:.1},{:.1},{},{},{},{},{:.1}",
                r.t_s,
                r.phase,
                r.connected,
                r.utterances_per_s,
                r.deliveries_per_s,
                r.p50_us,
                r.p99_us,
                r.max_us,
                r.server_cpu_percent
                    .map_or(String::new(), |c| format!("{c:.1}")),
                r.loadgen_cpu_percent
            );
        }
        o
    }

    /// The plot of this run alone (see [`svg`]).
    pub fn svg(&self) -> String {
        svg(&[self])
    }
}

/// How a server figure shows when no server process was measured.
const NOT_MEASURED: &str = "not measured";

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Two panels: latency over time (per second, log scale) and the
/// percentile distribution of the steady state. One run shows its p50, p99
/// and max; several runs (a comparison) show each run's p99 and distribution.
pub fn svg(reports: &[&Report]) -> String {
    let (w, h) = (1000.0, 790.0);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let Some(first) = reports.first() else {
        let _ = writeln!(o, "</svg>");
        return o;
    };
    let title = if reports.len() == 1 {
        format!(
            "elko-loadgen {} — {}: {} clients, {} rooms, {:.0} deliveries/s, server CPU {}",
            first.scenario.preset.name(),
            first.target,
            first.clients_connected,
            first.rooms,
            first.achieved_deliveries_per_s,
            first
                .server
                .cpu_percent_of_core
                .map_or(NOT_MEASURED.to_string(), |c| format!("{c:.1}% of a core"))
        )
    } else {
        format!(
            "elko-loadgen {}: {} clients, {} rooms, {:.0} deliveries/s target — {}",
            first.scenario.preset.name(),
            first.scenario.clients,
            first.rooms,
            first.target_deliveries_per_s,
            reports
                .iter()
                .map(|r| r.target.as_str())
                .collect::<Vec<_>>()
                .join(" vs ")
        )
    };
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        w / 2.0,
        esc(&title)
    );
    // One log-scale latency axis for both panels: 10 µs .. the highest value.
    let top = reports
        .iter()
        .flat_map(|r| {
            r.timeline
                .iter()
                .map(|x| x.max_us)
                .chain(r.distribution.iter().map(|d| d.1))
        })
        .max()
        .unwrap_or(1000)
        .max(1000);
    let ymax = 10f64.powf((top as f64).log10().ceil());
    let ymin = 10.0;
    let yof = |v: u64, y0: f64, ph: f64| {
        let v = (v as f64).clamp(ymin, ymax);
        y0 + ph - ph * ((v / ymin).log10() / (ymax / ymin).log10())
    };
    let frame = |o: &mut String, x0: f64, y0: f64, pw: f64, ph: f64, title: &str, xlabel: &str| {
        let _ = writeln!(
            o,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            o,
            r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#,
            y0 - 28.0,
            esc(title)
        );
        let mut d = ymin;
        while d <= ymax {
            let y = yof(d as u64, y0, ph);
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
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + pw / 2.0,
            y0 + ph + 36.0,
            esc(xlabel)
        );
    };
    let polyline = |o: &mut String, pts: &[String], color: &str, width: f64, dash: bool| {
        if pts.is_empty() {
            return;
        }
        // A path rather than a polyline: some renderers close polylines.
        let _ = writeln!(
            o,
            r#"<path fill="none" stroke="{color}" stroke-width="{width}"{} d="M{}"/>"#,
            if dash {
                r#" stroke-dasharray="5,3""#
            } else {
                ""
            },
            pts.join(" L")
        );
    };
    // Items one under the other, or in a row ending at `right` (widths
    // estimated from the label lengths).
    let legend = |o: &mut String,
                  x: f64,
                  y: f64,
                  right: Option<f64>,
                  items: &[(String, &str, bool)]| {
        let width = |l: &str| 30.0 + 7.5 * l.chars().count() as f64 + 16.0;
        let mut lx = match right {
            Some(r) => r - items.iter().map(|i| width(&i.0)).sum::<f64>(),
            None => x,
        };
        for (i, (label, color, dash)) in items.iter().enumerate() {
            let ly = if right.is_some() {
                y
            } else {
                y + 18.0 * i as f64
            };
            let _ = writeln!(
                o,
                r#"<line x1="{lx:.1}" x2="{:.1}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2.5"{}/>"#,
                lx + 24.0,
                if *dash {
                    r#" stroke-dasharray="5,3""#
                } else {
                    ""
                }
            );
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{}">{}</text>"#,
                lx + 30.0,
                ly + 4.0,
                esc(label)
            );
            if right.is_some() {
                lx += width(label);
            }
        }
    };

    // Panel 1: latency per second over time.
    let (x0, y0, pw, ph) = (90.0, 80.0, 860.0, 280.0);
    frame(
        &mut o,
        x0,
        y0,
        pw,
        ph,
        "Latency per second (from intended send)",
        "time since start (s) — shaded: ramp-up, not measured",
    );
    let tmax = reports
        .iter()
        .filter_map(|r| r.timeline.last().map(|x| x.t_s))
        .fold(1.0, f64::max);
    let xt = |t: f64| x0 + pw * t / tmax;
    let ramp_end = first.scenario.ramp.as_secs_f64() + 2.0;
    let _ = writeln!(
        o,
        r##"<rect x="{x0}" y="{y0}" width="{:.1}" height="{ph}" fill="#f2f2f2"/>"##,
        (xt(ramp_end.min(tmax)) - x0).max(0.0)
    );
    // A context server stopped on purpose (`--stop-contextd-at`), in elko's run.
    if let Some(at) = first
        .scenario
        .stop_contextd_at
        .filter(|_| first.target == "elko")
    {
        let x = xt((first.steady_from_s + at.as_secs_f64()).min(tmax));
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{}" stroke="#555" stroke-dasharray="3,3"/>"##,
            y0 + ph
        );
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{}" fill="#555">{}</text>"##,
            x + 4.0,
            y0 + 14.0,
            esc(if reports.len() == 1 {
                "a context server stopped"
            } else {
                "elko: a context server stopped"
            })
        );
    }
    let mut items = Vec::new();
    if reports.len() == 1 {
        for (name, color, pick, dash) in [
            ("max", "#d62728", 2usize, false),
            ("p99", "#ff7f0e", 1, false),
            ("p50", "#1f77b4", 0, false),
        ] {
            let pts: Vec<String> = first
                .timeline
                .iter()
                .filter(|r| r.max_us > 0)
                .map(|r| {
                    let v = [r.p50_us, r.p99_us, r.max_us][pick];
                    format!("{:.1},{:.1}", xt(r.t_s), yof(v, y0, ph))
                })
                .collect();
            polyline(&mut o, &pts, color, 1.8, dash);
            items.push((name.to_string(), color, dash));
        }
    } else {
        for (i, r) in reports.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            for (pick, dash) in [(1usize, false), (0, true)] {
                let pts: Vec<String> = r
                    .timeline
                    .iter()
                    .filter(|x| x.max_us > 0)
                    .map(|x| {
                        let v = [x.p50_us, x.p99_us][pick];
                        format!("{:.1},{:.1}", xt(x.t_s), yof(v, y0, ph))
                    })
                    .collect();
                polyline(&mut o, &pts, color, 1.8, dash);
            }
            items.push((format!("{} p99", r.target), color, false));
            items.push((format!("{} p50", r.target), color, true));
        }
    }
    legend(&mut o, 0.0, y0 - 10.0, Some(x0 + pw), &items);
    let step = (tmax / 10.0).max(1.0).ceil();
    let mut t = 0.0;
    while t <= tmax {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#,
            xt(t),
            y0 + ph + 18.0
        );
        t += step;
    }

    // Panel 2: the percentile distribution, x = log10(1 / (1 - q)).
    let (x0, y0, pw, ph) = (90.0, 460.0, 860.0, 260.0);
    frame(
        &mut o,
        x0,
        y0,
        pw,
        ph,
        if reports.len() == 1 {
            "Latency distribution in the steady state (from the intended send time; the spread from the first copy)"
        } else {
            "Latency distribution in the steady state (from the intended send time)"
        },
        "percentile",
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
            y0 + ph + 18.0
        );
    }
    let (mut items, mut split_items) = (Vec::new(), Vec::new());
    if let [r] = reports {
        // One run: where its latency goes, behind the whole.
        for (name, color, dist, p) in [
            (
                "first copy",
                "#1f77b4",
                &r.first_copy_distribution,
                Some(&r.first_copy_latency_us),
            ),
            (
                "fanout spread",
                "#9467bd",
                &r.fanout_spread_distribution,
                Some(&r.fanout_spread_us),
            ),
            (
                "at the client's socket",
                "#8c564b",
                &r.at_socket_distribution,
                r.latency_at_socket_us.as_ref(),
            ),
        ] {
            let Some(p) = p.filter(|_| !dist.is_empty()) else {
                continue;
            };
            let pts: Vec<String> = dist
                .iter()
                .map(|&(q, v)| format!("{:.1},{:.1}", xof(q), yof(v, y0, ph)))
                .collect();
            polyline(&mut o, &pts, color, 1.6, true);
            split_items.push((
                format!("{name}: p50 {}  p99 {}", ms(p.p50), ms(p.p99)),
                color,
                true,
            ));
        }
    }
    for (i, r) in reports.iter().enumerate() {
        let color = if reports.len() == 1 {
            "#2ca02c"
        } else {
            COLORS[i % COLORS.len()]
        };
        let pts: Vec<String> = r
            .distribution
            .iter()
            .map(|&(q, v)| format!("{:.1},{:.1}", xof(q), yof(v, y0, ph)))
            .collect();
        polyline(&mut o, &pts, color, 2.2, false);
        let l = &r.latency_us;
        items.push((
            format!(
                "{}: p50 {}  p99 {}  p99.9 {}  max {}",
                r.target,
                ms(l.p50),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            ),
            color,
            false,
        ));
    }
    items.append(&mut split_items);
    // Bottom right: below the curves, which rise to the right.
    legend(
        &mut o,
        x0 + pw - 440.0,
        y0 + ph - 14.0 - 18.0 * (items.len() as f64 - 1.0),
        None,
        &items,
    );
    let _ = writeln!(o, "</svg>");
    o
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

/// Elko's figures over a peer's (below 1: Elko needs less / is faster).
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub peer: String,
    pub server_cpu_per_delivery: f64,
    pub p99: f64,
    pub p999: f64,
    pub memory_per_client: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// [`ratio`] of two figures that may not have been measured.
fn ratio_of(a: Option<f64>, b: Option<f64>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => f64::NAN,
    }
}

/// Elko (the first report) against each other report.
pub fn ratios(reports: &[Report]) -> Vec<Ratios> {
    let Some(e) = reports.first() else {
        return Vec::new();
    };
    reports[1..]
        .iter()
        .map(|p| Ratios {
            peer: p.target.clone(),
            server_cpu_per_delivery: ratio_of(
                e.server_cpu_us_per_delivery,
                p.server_cpu_us_per_delivery,
            ),
            p99: ratio(e.latency_us.p99 as f64, p.latency_us.p99 as f64),
            p999: ratio(e.latency_us.p999 as f64, p.latency_us.p999 as f64),
            memory_per_client: ratio_of(
                e.server.rss_per_client_bytes,
                p.server.rss_per_client_bytes,
            ),
        })
        .collect()
}

/// Several runs of one scenario side by side, with Elko's ratios to each peer.
pub fn comparison(reports: &[Report]) -> String {
    let mut o = String::new();
    let Some(first) = reports.first() else {
        return o;
    };
    let s = &first.scenario;
    let _ = writeln!(
        o,
        "\nside by side — preset {}: {} clients, {} rooms, one utterance per {:.2} s each, {} B, steady {:.0} s\nmachine: {}",
        s.preset.name(),
        s.clients,
        s.rooms,
        s.interval.as_secs_f64(),
        s.message_size,
        s.duration.as_secs_f64(),
        first.machine.describe()
    );
    let _ = write!(o, "{:<34}", "");
    for r in reports {
        let _ = write!(o, "{:>16}", r.target);
    }
    let _ = writeln!(o);
    let line = |o: &mut String, k: &str, f: &dyn Fn(&Report) -> String| {
        let _ = write!(o, "{k:<34}");
        for r in reports {
            let _ = write!(o, "{:>16}", f(r));
        }
        let _ = writeln!(o);
    };
    line(&mut o, "clients connected", &|r| {
        r.clients_connected.to_string()
    });
    line(&mut o, "deliveries/s", &|r| {
        format!("{:.0}", r.achieved_deliveries_per_s)
    });
    line(&mut o, "lost / duplicated / out of order", &|r| {
        format!("{}/{}/{}", r.lost, r.duplicates, r.out_of_order)
    });
    line(&mut o, "latency p50", &|r| ms(r.latency_us.p50));
    line(&mut o, "latency p99", &|r| ms(r.latency_us.p99));
    line(&mut o, "latency p99.9", &|r| ms(r.latency_us.p999));
    line(&mut o, "latency max", &|r| ms(r.latency_us.max));
    line(&mut o, "first copy p50 / p99", &|r| {
        r.first_copy_latency_us.p50_p99()
    });
    line(&mut o, "fanout spread p50 / p99", &|r| {
        r.fanout_spread_us.p50_p99()
    });
    line(&mut o, "at the socket p50 / p99", &|r| {
        r.latency_at_socket_us
            .as_ref()
            .map_or("-".into(), Percentiles::p50_p99)
    });
    line(&mut o, "generator read lag p50 / p99", &|r| {
        r.generator_read_lag_us
            .as_ref()
            .map_or("-".into(), Percentiles::p50_p99)
    });
    line(&mut o, "entering p50 / p99", &|r| {
        r.enter_latency_us.p50_p99()
    });
    let measured = |x: Option<f64>, scale: f64, decimals: usize| {
        x.map_or("-".to_string(), |x| format!("{:.*}", decimals, x / scale))
    };
    line(&mut o, "server CPU, % of a core", &|r| {
        measured(r.server.cpu_percent_of_core, 1.0, 1)
    });
    line(&mut o, "server CPU per delivery, µs", &|r| {
        measured(r.server_cpu_us_per_delivery, 1.0, 2)
    });
    line(&mut o, "server RSS, MiB", &|r| {
        format!("{:.1}", r.server.rss_bytes as f64 / 1048576.0)
    });
    line(&mut o, "server memory per client, KiB", &|r| {
        measured(r.server.rss_per_client_bytes, 1024.0, 2)
    });
    line(&mut o, "generator CPU, % of a core", &|r| {
        format!("{:.1}", r.loadgen_cpu_percent_of_core)
    });
    line(&mut o, "host steal, % of a core (worst s)", &|r| {
        format!(
            "{:.1} ({:.0})",
            r.host_steal_percent_of_core, r.host_steal_worst_second_percent_of_core
        )
    });
    let _ = writeln!(o, "\nelko / peer (below 1: elko uses less or is faster)");
    for q in ratios(reports) {
        let _ = writeln!(
            o,
            "  vs {:<6} server CPU per delivery {:>6.2}x   p99 {:>6.2}x   p99.9 {:>6.2}x   memory per client {:>6.2}x",
            q.peer, q.server_cpu_per_delivery, q.p99, q.p999, q.memory_per_client
        );
    }
    for r in reports {
        for w in &r.warnings {
            let _ = writeln!(o, "WARNING ({}): {w}", r.target);
        }
    }
    o
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::new_histogram;
    use crate::scenario::{Preset, Scenario};

    pub(crate) fn sample_report(target: &str, p99: u64, cpu_us: f64) -> Report {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            let _ = h.record(v * p99 / 990);
        }
        Report {
            scenario: Scenario::preset(Preset::Sun2002),
            target: target.into(),
            clients_connected: 8000,
            rooms: 200,
            duration_s: 60.0,
            utterances_sent: 16_000,
            deliveries_expected: 640_000,
            deliveries_received: 640_000,
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            latency_us: Percentiles::of(&h),
            latency_uncorrected_us: Percentiles::of(&h),
            first_copy_latency_us: Percentiles::of(&h),
            fanout_spread_us: Percentiles::of(&h),
            fanouts_complete: 16_000,
            latency_at_socket_us: Some(Percentiles::of(&h)),
            generator_read_lag_us: Some(Percentiles::of(&h)),
            deliveries_stamped: 640_000,
            enter_latency_us: Percentiles::of(&h),
            entries: 8000,
            server: ServerReport {
                cpu_percent_of_core: Some(5.0),
                rss_bytes: 30 << 20,
                rss_per_client_bytes: Some(1000.0),
                connections: 8002,
                processes: vec![ProcReport {
                    name: "elko-contextd-0".into(),
                    pid: Some(1),
                    cpu_percent_of_core: 5.0,
                    rss_bytes: 30 << 20,
                    rss_before_clients_bytes: 20 << 20,
                    sockets: Some(8001),
                    event_loops: Some(1),
                }],
            },
            loadgen_cpu_percent_of_core: 6.0,
            loadgen_processes: 1,
            machine_cpu_percent_of_core: 12.0,
            kernel_softirq_threads_cpu_percent_of_core: 0.0,
            host_steal_percent_of_core: 0.0,
            host_steal_worst_second_percent_of_core: 0.0,
            errors: BTreeMap::new(),
            git_sha: "abc".into(),
            target_utterances_per_s: 266.7,
            target_deliveries_per_s: 10_666.7,
            achieved_utterances_per_s: 266.7,
            achieved_deliveries_per_s: 10_666.7,
            server_cpu_us_per_delivery: Some(cpu_us),
            warnings: vec![],
            events: vec![],
            max_steps: vec![],
            max_sustained_deliveries_per_s: None,
            max_held: None,
            timeline: vec![TimelineRow {
                t_s: 1.0,
                phase: "steady",
                connected: 8000,
                utterances_per_s: 266.0,
                deliveries_per_s: 10_640.0,
                p50_us: 300,
                p99_us: p99,
                max_us: p99 * 2,
                server_cpu_percent: Some(5.0),
                loadgen_cpu_percent: 6.0,
            }],
            distribution: distribution(&h),
            first_copy_distribution: distribution(&h),
            fanout_spread_distribution: distribution(&h),
            at_socket_distribution: distribution(&h),
            steady_from_s: 11.0,
            interval_log: Default::default(),
            machine: crate::procs::Machine {
                cpus: 2,
                cpu_model: "Test CPU".into(),
                memory_bytes: 4 << 30,
                kernel: "6.1.0".into(),
                tcp_congestion_control: "cubic".into(),
                cpuidle_driver: "haltpoll".into(),
            },
        }
    }

    #[test]
    fn percentiles_of_a_known_histogram() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            let _ = h.record(v);
        }
        let p = Percentiles::of(&h);
        // Three significant digits: within 0.1%.
        for (got, want) in [
            (p.p50, 5000),
            (p.p90, 9000),
            (p.p99, 9900),
            (p.p999, 9990),
            (p.max, 10_000),
        ] {
            assert!(got.abs_diff(want) <= want / 1000 + 1, "{got} vs {want}");
        }
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
        let d = distribution(&h);
        assert!(
            d.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "monotonic"
        );
    }

    #[test]
    fn json_has_the_documented_keys() {
        let v = serde_json::to_value(sample_report("elko", 400, 4.0)).expect("json");
        for key in [
            "scenario",
            "target",
            "clients_connected",
            "rooms",
            "duration_s",
            "utterances_sent",
            "deliveries_expected",
            "deliveries_received",
            "lost",
            "duplicates",
            "out_of_order",
            "latency_us",
            "latency_uncorrected_us",
            "server",
            "loadgen_cpu_percent_of_core",
            "errors",
            "git_sha",
            "machine",
            "fanouts_complete",
            "enter_latency_us",
            "entries",
        ] {
            assert!(v.get(key).is_some(), "no {key}");
        }
        for p in ["p50", "p90", "p99", "p999", "max"] {
            for k in [
                "latency_us",
                "latency_uncorrected_us",
                "first_copy_latency_us",
                "fanout_spread_us",
                "latency_at_socket_us",
                "generator_read_lag_us",
            ] {
                assert!(v[k][p].is_u64(), "no {k}.{p}");
            }
        }
        for k in ["cpu_percent_of_core", "rss_bytes", "processes"] {
            assert!(v["server"].get(k).is_some(), "no server.{k}");
        }
        for k in [
            "preset",
            "clients",
            "rooms",
            "interval",
            "duration",
            "ramp",
            "message_size",
            "seed",
        ] {
            assert!(v["scenario"].get(k).is_some(), "no scenario.{k}");
        }
        assert_eq!(v["scenario"]["preset"], "sun2002");
        assert!(v.get("timeline").is_none(), "the timeline goes to the CSV");
    }

    #[test]
    fn csv_has_one_row_per_second() {
        let r = sample_report("elko", 400, 4.0);
        let csv = r.csv();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("t_s,phase,connected,utterances_per_s,deliveries_per_s,p50_us,p99_us,max_us,server_cpu_percent,loadgen_cpu_percent")
        );
        assert_eq!(
            lines.next(),
            Some("1.0,steady,8000,266.0,10640.0,300,400,800,5.0,6.0")
        );
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn comparison_gives_ratios_and_a_shared_plot() {
        let runs = vec![
            sample_report("elko", 300, 3.0),
            sample_report("redis", 600, 4.0),
        ];
        let q = ratios(&runs);
        assert_eq!(q.len(), 1);
        assert!((q[0].server_cpu_per_delivery - 0.75).abs() < 1e-9);
        assert!((q[0].p99 - 0.5).abs() < 0.01, "{}", q[0].p99);
        let text = comparison(&runs);
        assert!(text.contains("redis") && text.contains("0.75x"), "{text}");
        let plot = svg(&runs.iter().collect::<Vec<_>>());
        assert!(plot.contains("elko p99") && plot.contains("redis p99"));
        assert_eq!(plot.matches("<path").count(), 6);
        assert!(
            !plot.contains("first copy"),
            "the split is drawn for one run only"
        );
    }

    #[test]
    fn one_run_plots_its_first_copy_spread_and_socket_latency() {
        let plot = sample_report("elko", 300, 3.0).svg();
        assert!(plot.contains("first copy: p50") && plot.contains("fanout spread: p50"));
        assert!(plot.contains("at the client's socket: p50"), "{plot}");
        // p50, p99, max over time; the distribution, its first copy, spread
        // and latency to the socket.
        assert_eq!(plot.matches("<path").count(), 7, "{plot}");
        assert!(!plot.contains("a context server stopped"));
    }

    #[test]
    fn a_context_server_stopped_on_purpose_is_marked_on_the_plot() {
        let mut r = sample_report("elko", 300, 3.0);
        r.scenario.stop_contextd_at = Some(std::time::Duration::from_secs(4));
        let plot = r.svg();
        assert!(plot.contains(">a context server stopped</text>"), "{plot}");
        assert!(plot.contains(r#"stroke-dasharray="3,3""#), "{plot}");
    }
}
