//! One run: start (or reach) the cluster, drive the clients through ramp,
//! steady state and drain, sample everything once a second, report.

use crate::driver::{Control, Driver, DriverConfig};
use crate::metrics::Shared;
use crate::procs::{sample, Cluster, ClusterError, ProcSample};
use crate::report::{
    distribution, MaxStep, Percentiles, ProcReport, Report, ServerReport, TimelineRow,
};
use crate::scenario::{Preset, Scenario};
use elko_engine::{Engine, EngineConfig, Limits};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the servers are.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start a local cluster from these binaries.
    Local { bin_dir: PathBuf },
    /// Drive an existing director.
    Director(SocketAddr),
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "{clients} clients need about {need} file descriptors, but this process may open at most {limit} \
         (hard RLIMIT_NOFILE); run fewer clients per generator process"
    )]
    Descriptors {
        clients: usize,
        need: u64,
        limit: u64,
    },
    #[error("cannot start the generator's event loops: {0}")]
    Engine(std::io::Error),
}

struct Cpu {
    pids: Vec<(String, u32)>,
    last: Vec<ProcSample>,
    last_self: ProcSample,
}

impl Cpu {
    fn new(pids: Vec<(String, u32)>) -> Cpu {
        let last = pids
            .iter()
            .map(|(_, p)| sample(Some(*p)).unwrap_or_default())
            .collect();
        Cpu {
            pids,
            last,
            last_self: sample(None).unwrap_or_default(),
        }
    }

    /// CPU seconds used since the last call: (servers total, per server, generator).
    fn delta(&mut self) -> (f64, Vec<ProcSample>, f64) {
        let now: Vec<ProcSample> = self
            .pids
            .iter()
            .map(|(_, p)| sample(Some(*p)).unwrap_or_default())
            .collect();
        let per: Vec<ProcSample> = now
            .iter()
            .zip(&self.last)
            .map(|(n, l)| ProcSample {
                cpu_s: (n.cpu_s - l.cpu_s).max(0.0),
                rss_bytes: n.rss_bytes,
            })
            .collect();
        let me = sample(None).unwrap_or_default();
        let gen = (me.cpu_s - self.last_self.cpu_s).max(0.0);
        self.last = now;
        self.last_self = me;
        (per.iter().map(|p| p.cpu_s).sum(), per, gen)
    }
}

/// Run `s` against `target`. Progress goes to stderr once a second.
pub fn run(s: &Scenario, target: Target) -> Result<Report, RunError> {
    let limit = elko_engine::raise_fd_limit(1 << 20).unwrap_or(1024);
    let need = s.clients as u64 + (s.clients as u64 / 20) + 64;
    if need > limit {
        return Err(RunError::Descriptors {
            clients: s.clients,
            need,
            limit,
        });
    }
    let (cluster, director) = match target {
        Target::Local { bin_dir } => {
            let c = Cluster::start(&bin_dir, s.contextds, s.workers)?;
            let addr = c.client_addr;
            (Some(c), addr)
        }
        Target::Director(a) => (None, a),
    };
    let pids: Vec<(String, u32)> = cluster
        .iter()
        .flat_map(|c| c.servers().map(|p| (p.name.clone(), p.pid())))
        .collect();

    let interval_us = s.interval.as_micros() as u64;
    let shared = Arc::new(Shared::new(s.rooms, s.gen_loops, interval_us));
    let settle = Duration::from_secs(2);
    let window_start = s.ramp + settle;
    let window = s.duration;
    let window_end = window_start + window;
    shared
        .window_start_us
        .store(window_start.as_micros() as u64, Relaxed);
    shared
        .window_end_us
        .store(window_end.as_micros() as u64, Relaxed);
    let warm = s.interval.min(Duration::from_secs(2));
    shared
        .speak_start_us
        .store((window_start - warm).as_micros() as u64, Relaxed);

    let dcfg = Arc::new(DriverConfig {
        director,
        clients: s.clients,
        rooms: s.rooms,
        ramp: s.ramp,
        message_size: s.message_size,
        seed: s.seed,
    });
    let ecfg = EngineConfig {
        loops: s.gen_loops.max(1),
        server_id: "elko-loadgen".into(),
        client_name: concat!("elko-loadgen/", env!("CARGO_PKG_VERSION")).into(),
        limits: Limits {
            max_connections_per_loop: usize::MAX,
            ..Limits::default()
        },
        ..EngineConfig::default()
    };
    let loops = ecfg.loop_count();
    let (sh, dc) = (shared.clone(), dcfg.clone());
    let engine = Engine::start(ecfg, None, move |i| {
        Driver::new(i, loops, dc.clone(), sh.clone())
    })
    .map_err(RunError::Engine)?;

    let mut cpu = Cpu::new(pids.clone());
    let mut timeline = Vec::new();
    let tty = std::io::stderr().is_terminal();
    let (mut last_sent, mut last_recv) = (0u64, 0u64);
    let mut steady_cpu = (0.0f64, vec![ProcSample::default(); pids.len()], 0.0f64);
    let mut max_steps: Vec<MaxStep> = Vec::new();
    let mut step_start = (Instant::now(), 0u64, 0u64, 0u64);
    let mut step_hist = crate::metrics::new_histogram();
    let mut stepping_stopped = false;
    let hard_stop = window_end + Duration::from_secs(30);
    let mut drain_started: Option<Instant> = None;
    let mut tick = shared.epoch + Duration::from_secs(1);
    loop {
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        tick += Duration::from_secs(1);
        let t = shared.epoch.elapsed();
        let (srv, per, gen) = cpu.delta();
        let sent = shared.sent_total.load(Relaxed);
        let recv = shared.received_total.load(Relaxed);
        let ih = shared.take_interval();
        let steady = t > window_start && t <= window_end + Duration::from_millis(999);
        let phase = if t <= window_start {
            "ramp"
        } else if t <= window_end {
            "steady"
        } else {
            "drain"
        };
        if steady {
            steady_cpu.0 += srv;
            for (a, b) in steady_cpu.1.iter_mut().zip(&per) {
                a.cpu_s += b.cpu_s;
                a.rss_bytes = b.rss_bytes;
            }
            steady_cpu.2 += gen;
        }
        let row = TimelineRow {
            t_s: t.as_secs_f64(),
            phase,
            connected: shared.connected.load(Relaxed),
            utterances_per_s: (sent - last_sent) as f64,
            deliveries_per_s: (recv - last_recv) as f64,
            p50_us: if ih.is_empty() {
                0
            } else {
                ih.value_at_quantile(0.5)
            },
            p99_us: if ih.is_empty() {
                0
            } else {
                ih.value_at_quantile(0.99)
            },
            max_us: if ih.is_empty() { 0 } else { ih.max() },
            server_cpu_percent: 100.0 * srv,
            loadgen_cpu_percent: 100.0 * gen,
        };
        let _ = step_hist.add(&ih);
        (last_sent, last_recv) = (sent, recv);
        let line = format!(
            "[{:>4.0}s] {:<6} connected {:>6}/{:<6} utt/s {:>8.0}  deliv/s {:>9.0}  p99 {:>8.2} ms  max {:>8.2} ms  server CPU {:>5.1}%  gen CPU {:>5.1}%",
            row.t_s, row.phase, row.connected, s.clients, row.utterances_per_s, row.deliveries_per_s,
            row.p99_us as f64 / 1e3, row.max_us as f64 / 1e3, row.server_cpu_percent, row.loadgen_cpu_percent
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        timeline.push(row);

        // The `max` preset: every step, judge it and speed up, or stop.
        if s.preset == Preset::Max
            && steady
            && !stepping_stopped
            && step_start.0.elapsed() >= s.step
        {
            let secs = step_start.0.elapsed().as_secs_f64();
            let exp = shared.expected_window.load(Relaxed);
            let got = shared.received_window.load(Relaxed);
            let deliveries = (recv - step_start.1) as f64 / secs;
            let in_flight = (exp - step_start.2).saturating_sub(got - step_start.3);
            let p99 = if step_hist.is_empty() {
                u64::MAX
            } else {
                step_hist.value_at_quantile(0.99)
            };
            let mean = shared.mean_interval_us.load(Relaxed);
            max_steps.push(MaxStep {
                utterances_per_s_target: s.clients as f64 * 1e6 / mean as f64,
                deliveries_per_s: deliveries,
                p99_us: p99,
                in_flight_at_step_end: in_flight,
            });
            if p99 > 100_000 {
                stepping_stopped = true;
            } else {
                shared
                    .mean_interval_us
                    .store((mean as f64 * 0.7) as u64, Relaxed);
            }
            step_start = (Instant::now(), recv, exp, got);
            step_hist.reset();
        } else if s.preset == Preset::Max && !steady {
            step_start = (
                Instant::now(),
                recv,
                shared.expected_window.load(Relaxed),
                shared.received_window.load(Relaxed),
            );
            step_hist.reset();
        }

        if t > window_end {
            shared.stop_sending.store(true, Relaxed);
            let since = *drain_started.get_or_insert_with(Instant::now);
            let done = shared.received_window.load(Relaxed) >= shared.expected_window.load(Relaxed);
            if done || since.elapsed() >= Duration::from_secs(5) || t > hard_stop {
                break;
            }
        }
    }
    if tty {
        eprintln!();
    }
    for l in 0..engine.loop_count() {
        let _ = engine.post(l, Control::ExitAll);
    }
    std::thread::sleep(Duration::from_millis(300));
    engine.shutdown(Duration::from_secs(1));

    let (corr, uncorr) = shared.totals();
    let steady_s = window.as_secs_f64();
    let expected = shared.expected_window.load(Relaxed);
    let received = shared.received_window.load(Relaxed);
    let mut errors = shared.errors.lock().clone();
    errors.retain(|_, v| *v > 0);
    let processes: Vec<ProcReport> = pids
        .iter()
        .zip(&steady_cpu.1)
        .map(|((name, pid), p)| ProcReport {
            name: name.clone(),
            pid: *pid,
            cpu_percent_of_core: 100.0 * p.cpu_s / steady_s,
            rss_bytes: p.rss_bytes,
        })
        .collect();
    let server = ServerReport {
        cpu_percent_of_core: 100.0 * steady_cpu.0 / steady_s,
        rss_bytes: processes.iter().map(|p| p.rss_bytes).sum(),
        processes,
    };
    let connected_peak = timeline.iter().map(|r| r.connected).max().unwrap_or(0);
    let mut report = Report {
        scenario: s.clone(),
        target: "elko".into(),
        clients_connected: connected_peak,
        rooms: s.rooms,
        duration_s: steady_s,
        utterances_sent: shared.utterances_window.load(Relaxed),
        deliveries_expected: expected,
        deliveries_received: received,
        lost: expected.saturating_sub(received),
        duplicates: shared.duplicates.load(Relaxed),
        out_of_order: shared.out_of_order.load(Relaxed),
        latency_us: Percentiles::of(&corr),
        latency_uncorrected_us: Percentiles::of(&uncorr),
        loadgen_cpu_percent_of_core: 100.0 * steady_cpu.2 / steady_s,
        errors,
        git_sha: env!("ELKO_GIT_SHA").into(),
        target_utterances_per_s: s.target_utterances_per_s(),
        target_deliveries_per_s: s.target_deliveries_per_s(),
        achieved_utterances_per_s: shared.utterances_window.load(Relaxed) as f64 / steady_s,
        achieved_deliveries_per_s: received as f64 / steady_s,
        server_cpu_us_per_delivery: if received > 0 {
            1e6 * steady_cpu.0 / received as f64
        } else {
            0.0
        },
        server,
        warnings: Vec::new(),
        max_sustained_deliveries_per_s: (s.preset == Preset::Max).then(|| {
            max_steps
                .iter()
                .filter(|m| m.p99_us <= 100_000)
                .map(|m| m.deliveries_per_s)
                .fold(0.0, f64::max)
        }),
        max_steps,
        distribution: distribution(&corr),
        timeline,
    };
    if report.clients_connected < s.clients as u64 {
        report.warnings.push(format!(
            "only {} of {} clients got into their rooms (see errors)",
            report.clients_connected, s.clients
        ));
    }
    if s.preset != Preset::Max
        && report.achieved_utterances_per_s < 0.95 * report.target_utterances_per_s
    {
        report.warnings.push(format!(
            "achieved {:.0} utterances/s, below the target {:.0}: the generator could not keep up or clients were missing",
            report.achieved_utterances_per_s, report.target_utterances_per_s
        ));
    }
    if report.loadgen_cpu_percent_of_core > 90.0 * loops as f64 {
        report.warnings.push(format!(
            "the generator used {:.0}% of a core with {loops} loop(s): it is saturated, so latency figures include generator delay (try --gen-loops)",
            report.loadgen_cpu_percent_of_core
        ));
    }
    if report.lost > 0 {
        report
            .warnings
            .push(format!("{} deliveries lost", report.lost));
    }
    if let Some(c) = cluster {
        c.stop();
    }
    let _ = std::io::stderr().flush();
    Ok(report)
}
