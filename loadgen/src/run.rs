//! One run: start (or reach) the servers, start the generators, drive them
//! through ramp, steady state and drain, sample everything once a second,
//! report.

use crate::clock::mono_now_ns;
use crate::generator::{ChildGen, Final, GenError, GenSpec, Generator, LocalGen, TargetKind};
use crate::hlog::IntervalLog;
use crate::metrics::{new_histogram, Counters, Window};
use crate::procs::{
    ksoftirqd_pids, machine_times, sample, socket_count, Cluster, ClusterError, Machine,
    MachineTimes, PeerServer, ProcSample, Server,
};
use crate::report::{
    distribution, MaxStep, Percentiles, ProcReport, Report, ServerReport, TimelineRow,
};
use crate::scenario::{Preset, Scenario, CLIENTS_PER_SOURCE_IP};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Where the servers are.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start a local Elko cluster from the binaries in this directory.
    LocalElko { bin_dir: PathBuf },
    /// Drive an existing Elko cluster through its director.
    Director(SocketAddr),
    /// Start a local peer server (`redis-server`, `nats-server`).
    LocalPeer(TargetKind),
    /// Drive an existing peer server.
    Peer(TargetKind, SocketAddr),
}

impl Target {
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::LocalElko { .. } | Target::Director(_) => TargetKind::Elko,
            Target::LocalPeer(k) | Target::Peer(k, _) => *k,
        }
    }
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Generator(#[from] GenError),
    #[error("cannot find this executable to start generator processes: {0}")]
    Exe(std::io::Error),
    #[error("interrupted before the run started")]
    Interrupted,
    #[error(
        "none of the {clients} clients got into its room by the end of the ramp, so there is nothing to measure; is {kind} listening at {addr}? errors: {errors}"
    )]
    NobodyEntered {
        clients: usize,
        kind: &'static str,
        addr: SocketAddr,
        errors: String,
    },
}

/// Set by SIGINT/SIGTERM: end the run early, still stopping the servers
/// and reporting what was measured.
static INTERRUPTED: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// True once SIGINT or SIGTERM arrived (installs the handlers on first use).
pub fn interrupted() -> bool {
    INTERRUPTED
        .get_or_init(|| {
            let flag = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let _ = signal_hook::flag::register(sig, flag.clone());
            }
            flag
        })
        .load(Relaxed)
}

/// Time after the ramp before measuring starts (stragglers, first utterances).
const SETTLE: Duration = Duration::from_secs(2);
/// How long the drain waits for the last deliveries.
const DRAIN: Duration = Duration::from_secs(5);

/// The servers a run started, stopped in order when the run ends.
enum Servers {
    None,
    Elko(Cluster),
    Peer(PeerServer),
}

impl Servers {
    fn list(&self) -> Vec<&Server> {
        match self {
            Servers::None => Vec::new(),
            Servers::Elko(c) => c.servers().collect(),
            Servers::Peer(p) => vec![&p.server],
        }
    }

    fn stop(self) {
        match self {
            Servers::None => {}
            Servers::Elko(c) => c.stop(),
            Servers::Peer(mut p) => p.server.stop(),
        }
    }
}

/// CPU time of the servers and of the generator's processes, per second.
struct Cpu {
    servers: Vec<u32>,
    gens: Vec<Option<u32>>,
    softirq: Vec<u32>,
    last_softirq: f64,
    last_servers: Vec<ProcSample>,
    last_gens: Vec<ProcSample>,
    last_machine: MachineTimes,
}

impl Cpu {
    fn new(servers: Vec<u32>, gens: Vec<Option<u32>>) -> Cpu {
        let mut c = Cpu {
            last_servers: vec![ProcSample::default(); servers.len()],
            last_gens: vec![ProcSample::default(); gens.len()],
            last_machine: MachineTimes::default(),
            softirq: ksoftirqd_pids(),
            last_softirq: 0.0,
            servers,
            gens,
        };
        c.delta();
        c
    }

    /// CPU seconds used since the last call: (per server, generator total,
    /// whole machine (busy, and of it stolen by the hypervisor), kernel
    /// softirq threads).
    fn delta(&mut self) -> (Vec<ProcSample>, f64, MachineTimes, f64) {
        let mut per = Vec::with_capacity(self.servers.len());
        for (pid, last) in self.servers.iter().zip(&mut self.last_servers) {
            let now = sample(Some(*pid)).unwrap_or(*last);
            per.push(ProcSample {
                cpu_s: (now.cpu_s - last.cpu_s).max(0.0),
                rss_bytes: now.rss_bytes,
            });
            *last = now;
        }
        let mut gen = 0.0;
        for (pid, last) in self.gens.iter().zip(&mut self.last_gens) {
            let now = sample(*pid).unwrap_or(*last);
            gen += (now.cpu_s - last.cpu_s).max(0.0);
            *last = now;
        }
        let m = machine_times().unwrap_or(self.last_machine);
        let machine = MachineTimes {
            busy_s: (m.busy_s - self.last_machine.busy_s).max(0.0),
            steal_s: (m.steal_s - self.last_machine.steal_s).max(0.0),
        };
        self.last_machine = m;
        let k: f64 = self
            .softirq
            .iter()
            .filter_map(|p| sample(Some(*p)))
            .map(|x| x.cpu_s)
            .sum();
        let softirq = (k - self.last_softirq).max(0.0);
        self.last_softirq = k;
        (per, gen, machine, softirq)
    }
}

/// Run `s` against `target`. `exe` is this program (generator processes
/// are started from it). Progress goes to stderr once a second.
pub fn run(s: &Scenario, target: Target, exe: &Path) -> Result<Report, RunError> {
    let kind = target.kind();
    if interrupted() {
        return Err(RunError::Interrupted);
    }
    let (servers, addr) = match target {
        Target::LocalElko { bin_dir } => {
            let c = Cluster::start(&bin_dir, s.contextds, s.workers)?;
            let a = c.client_addr;
            (Servers::Elko(c), a)
        }
        Target::Director(a) => (Servers::None, a),
        Target::LocalPeer(k) => {
            let p = PeerServer::start(k.name())?;
            let a = p.addr;
            (Servers::Peer(p), a)
        }
        Target::Peer(_, a) => (Servers::None, a),
    };
    let result = drive(s, kind, addr, &servers, exe);
    servers.stop();
    result
}

fn drive(
    s: &Scenario,
    kind: TargetKind,
    addr: SocketAddr,
    servers: &Servers,
    exe: &Path,
) -> Result<Report, RunError> {
    let server_procs: Vec<(String, u32)> = servers
        .list()
        .iter()
        .map(|p| (p.name.clone(), p.pid()))
        .collect();
    let baseline_rss: Vec<u64> = server_procs
        .iter()
        .map(|(_, p)| sample(Some(*p)).map_or(0, |x| x.rss_bytes))
        .collect();

    let start_us = (s.ramp + SETTLE).as_micros() as u64;
    let window = Window {
        speak_start_us: start_us - s.interval.min(SETTLE).as_micros() as u64,
        start_us,
        end_us: start_us + s.duration.as_micros() as u64,
    };
    let epoch_mono_ns = mono_now_ns();
    let epoch = crate::clock::instant_at_mono(epoch_mono_ns);
    let shares = s.processes();
    let spread_sources = s.clients > CLIENTS_PER_SOURCE_IP;
    let mut gens: Vec<Box<dyn Generator>> = Vec::new();
    for share in 0..shares {
        let spec = GenSpec {
            scenario: s.clone(),
            kind,
            addr,
            share,
            shares,
            epoch_mono_ns,
            window,
            source_ip: spread_sources
                .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + share as u8))),
        };
        let g: Box<dyn Generator> = if shares == 1 {
            Box::new(LocalGen::start(&spec)?)
        } else {
            Box::new(ChildGen::start(exe, &spec)?)
        };
        gens.push(g);
    }
    let gen_pids: Vec<Option<u32>> = if shares == 1 {
        vec![None]
    } else {
        gens.iter().map(|g| g.child_pid()).collect()
    };
    let mut cpu = Cpu::new(server_procs.iter().map(|p| p.1).collect(), gen_pids);

    let mut timeline = Vec::new();
    let tty = std::io::stderr().is_terminal();
    let mut last = Counters::default();
    let mut steady_cpu = vec![0.0f64; server_procs.len()];
    let mut steady_gen_cpu = 0.0f64;
    let mut steady_samples = 0u32;
    let mut steady_machine_cpu = 0.0f64;
    let mut steady_steal = 0.0f64;
    let mut worst_steal_second = 0.0f64;
    let mut steady_softirq_cpu = 0.0f64;
    let mut steady_rss = vec![0u64; server_procs.len()];
    let mut sockets: Vec<Option<u64>> = vec![None; server_procs.len()];
    let mut max_steps: Vec<MaxStep> = Vec::new();
    let mut step = (Instant::now(), Counters::default());
    let mut step_hist = new_histogram();
    let mut stepping_stopped = false;
    let mut mean_us = s.interval.as_micros() as u64;
    let window_start = Duration::from_micros(window.start_us);
    let window_end = Duration::from_micros(window.end_us);
    let mut drain_started: Option<Instant> = None;
    let mut was_interrupted = false;
    let mut nobody_entered = false;
    let mut interval_log = IntervalLog::new(SystemTime::now() - epoch.elapsed());
    let mut tick = epoch + Duration::from_secs(1);
    let mut last_t = Duration::ZERO;
    loop {
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        tick += Duration::from_secs(1);
        let t = epoch.elapsed();
        let (per, gen_cpu, machine_cpu, softirq_cpu) = cpu.delta();
        let mut c = Counters::default();
        let mut ih = new_histogram();
        for g in &mut gens {
            let (gc, gh) = g.sample();
            c += gc;
            let _ = ih.add(&gh);
        }
        // This sample covers the second before `t`: it is steady if most of
        // that second lies in the window.
        let mid = t.saturating_sub(Duration::from_millis(500));
        let steady = mid >= window_start && mid < window_end;
        let phase = if steady {
            "steady"
        } else if mid < window_start {
            "ramp"
        } else {
            "drain"
        };
        if steady {
            steady_samples += 1;
            for (i, p) in per.iter().enumerate() {
                steady_cpu[i] += p.cpu_s;
                steady_rss[i] = steady_rss[i].max(p.rss_bytes);
            }
            steady_gen_cpu += gen_cpu;
            steady_machine_cpu += machine_cpu.busy_s;
            steady_steal += machine_cpu.steal_s;
            worst_steal_second = worst_steal_second.max(machine_cpu.steal_s);
            steady_softirq_cpu += softirq_cpu;
            if sockets.iter().all(Option::is_none) {
                sockets = server_procs.iter().map(|p| socket_count(p.1)).collect();
            }
        }
        let q = |h: &hdrhistogram::Histogram<u64>, v: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(v)
            }
        };
        let srv: f64 = per.iter().map(|p| p.cpu_s).sum();
        let row = TimelineRow {
            t_s: t.as_secs_f64(),
            phase,
            connected: c.connected.max(0) as u64,
            utterances_per_s: (c.sent_total - last.sent_total) as f64,
            deliveries_per_s: (c.received_total - last.received_total) as f64,
            p50_us: q(&ih, 0.5),
            p99_us: q(&ih, 0.99),
            max_us: if ih.is_empty() { 0 } else { ih.max() },
            // An empty f64 sum is -0.0: no servers of our own to watch.
            server_cpu_percent: 100.0 * srv + 0.0,
            loadgen_cpu_percent: 100.0 * gen_cpu,
        };
        let _ = step_hist.add(&ih);
        last = c;
        let line = format!(
            "[{:>4.0}s] {:<6} {} connected {:>6}/{:<6} utt/s {:>8.0}  deliv/s {:>9.0}  p99 {:>8.2} ms  max {:>8.2} ms  server CPU {:>5.1}%  gen CPU {:>5.1}%",
            row.t_s, row.phase, kind.name(), row.connected, s.clients, row.utterances_per_s, row.deliveries_per_s,
            row.p99_us as f64 / 1e3, row.max_us as f64 / 1e3, row.server_cpu_percent, row.loadgen_cpu_percent
        );
        if tty {
            let done = (t.as_secs_f64() / window_end.as_secs_f64()).min(1.0);
            let filled = (done * 20.0) as usize;
            eprint!(
                "\r[{}{}] {line}\x1b[K",
                "#".repeat(filled),
                ".".repeat(20 - filled)
            );
        } else {
            eprintln!("{line}");
        }
        timeline.push(row);
        let length = t.saturating_sub(last_t);
        interval_log.record(kind.name(), last_t, length, &ih);
        last_t = t;

        // The `max` preset: at the end of every step, judge it, then speed up or stop.
        if s.preset == Preset::Max {
            if !steady {
                step = (Instant::now(), c);
                step_hist.reset();
            } else if !stepping_stopped && step.0.elapsed() >= s.step {
                let secs = step.0.elapsed().as_secs_f64();
                let p99 = if step_hist.is_empty() {
                    u64::MAX
                } else {
                    step_hist.value_at_quantile(0.99)
                };
                let in_flight = (c.expected_window - step.1.expected_window)
                    .saturating_sub(c.received_window - step.1.received_window);
                max_steps.push(MaxStep {
                    utterances_per_s_target: s.clients as f64 * 1e6 / mean_us as f64,
                    deliveries_per_s: (c.received_total - step.1.received_total) as f64 / secs,
                    p99_us: p99,
                    in_flight_at_step_end: in_flight,
                });
                if p99 > 100_000 {
                    stepping_stopped = true;
                } else {
                    mean_us = (mean_us as f64 * 0.7) as u64;
                    for g in &mut gens {
                        g.set_mean_interval_us(mean_us);
                    }
                }
                step = (Instant::now(), c);
                step_hist.reset();
            }
        }

        if interrupted() {
            was_interrupted = true;
            break;
        }
        if steady && c.connected <= 0 {
            nobody_entered = true;
            break;
        }
        if mid >= window_end {
            let since = *drain_started.get_or_insert_with(|| {
                for g in &mut gens {
                    g.stop_sending();
                }
                Instant::now()
            });
            if c.received_window >= c.expected_window || since.elapsed() >= DRAIN {
                break;
            }
        }
    }
    if tty {
        eprintln!();
    }

    let mut totals = Counters::default();
    let (mut corr, mut uncorr) = (new_histogram(), new_histogram());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for g in gens {
        let Final {
            counters,
            corrected,
            uncorrected,
            errors: e,
        } = g.finish();
        totals += counters;
        let _ = corr.add(&corrected);
        let _ = uncorr.add(&uncorrected);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    errors.retain(|_, v| *v > 0);
    if nobody_entered {
        let errors = if errors.is_empty() {
            "none counted".to_string()
        } else {
            errors
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(RunError::NobodyEntered {
            clients: s.clients,
            kind: kind.name(),
            addr,
            errors,
        });
    }

    let steady_s = s.duration.as_secs_f64();
    // CPU is sampled once a second: divide by the seconds sampled.
    let cpu_s = f64::from(steady_samples.max(1));
    let connected_peak = timeline.iter().map(|r| r.connected).max().unwrap_or(0);
    let processes: Vec<ProcReport> = server_procs
        .iter()
        .enumerate()
        .map(|(i, (name, pid))| ProcReport {
            name: name.clone(),
            pid: *pid,
            cpu_percent_of_core: 100.0 * steady_cpu[i] / cpu_s,
            rss_bytes: steady_rss[i],
            rss_before_clients_bytes: baseline_rss[i],
            sockets: sockets[i],
        })
        .collect();
    let rss: u64 = processes.iter().map(|p| p.rss_bytes).sum();
    let rss_base: u64 = processes.iter().map(|p| p.rss_before_clients_bytes).sum();
    let server = ServerReport {
        cpu_percent_of_core: 100.0 * steady_cpu.iter().sum::<f64>() / cpu_s,
        rss_bytes: rss,
        rss_per_client_bytes: if connected_peak > 0 && !processes.is_empty() {
            rss.saturating_sub(rss_base) as f64 / connected_peak as f64
        } else {
            0.0
        },
        connections: sockets.iter().flatten().copied().sum(),
        processes,
    };
    let (expected, received) = (totals.expected_window, totals.received_window);
    let mut report = Report {
        scenario: s.clone(),
        target: kind.name().into(),
        clients_connected: connected_peak,
        rooms: s.rooms,
        duration_s: steady_s,
        utterances_sent: totals.utterances_window,
        deliveries_expected: expected,
        deliveries_received: received,
        lost: expected.saturating_sub(received),
        duplicates: totals.duplicates,
        out_of_order: totals.out_of_order,
        latency_us: Percentiles::of(&corr),
        latency_uncorrected_us: Percentiles::of(&uncorr),
        loadgen_cpu_percent_of_core: 100.0 * steady_gen_cpu / cpu_s,
        loadgen_processes: shares,
        machine_cpu_percent_of_core: 100.0 * steady_machine_cpu / cpu_s,
        kernel_softirq_threads_cpu_percent_of_core: 100.0 * steady_softirq_cpu / cpu_s,
        host_steal_percent_of_core: 100.0 * steady_steal / cpu_s,
        host_steal_worst_second_percent_of_core: 100.0 * worst_steal_second,
        errors,
        git_sha: env!("ELKO_GIT_SHA").into(),
        machine: Machine::this(),
        target_utterances_per_s: s.target_utterances_per_s(),
        target_deliveries_per_s: s.target_deliveries_per_s(),
        achieved_utterances_per_s: totals.utterances_window as f64 / steady_s,
        achieved_deliveries_per_s: received as f64 / steady_s,
        // CPU per second over deliveries per second.
        server_cpu_us_per_delivery: if received > 0 {
            1e6 * (steady_cpu.iter().sum::<f64>() / cpu_s) / (received as f64 / steady_s)
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
        steady_from_s: window_start.as_secs_f64(),
        interval_log,
        timeline,
    };
    report.warnings = warnings(&report, s.gen_loops * shares);
    if was_interrupted {
        report.warnings.insert(
            0,
            "INTERRUPTED: the run was stopped early; figures are partial".into(),
        );
    }
    let _ = std::io::stderr().flush();
    Ok(report)
}

/// What a reader must not miss.
fn warnings(r: &Report, gen_loops: usize) -> Vec<String> {
    let s = &r.scenario;
    let mut w = Vec::new();
    if r.clients_connected < s.clients as u64 {
        w.push(format!(
            "only {} of {} clients got into their rooms (see errors)",
            r.clients_connected, s.clients
        ));
    }
    let at_window_start = r
        .timeline
        .iter()
        .find(|row| row.phase == "steady")
        .map_or(0, |row| row.connected);
    if at_window_start < s.clients as u64 && r.clients_connected >= s.clients as u64 {
        w.push(format!(
            "only {at_window_start} of {} clients were in when measuring began: lengthen --ramp",
            s.clients
        ));
    }
    // Arrivals are Poisson: in a short or small run the count alone may
    // fall 5 % short; warn only past three standard deviations as well.
    let expected = r.target_utterances_per_s * r.duration_s;
    let sent = r.achieved_utterances_per_s * r.duration_s;
    if s.preset != Preset::Max && sent < 0.95 * expected && sent < expected - 3.0 * expected.sqrt()
    {
        let digits = if r.target_utterances_per_s < 10.0 {
            1
        } else {
            0
        };
        w.push(format!(
            "ACHIEVED RATE BELOW TARGET: {:.digits$} utterances/s of {:.digits$} (the generator could not keep up, or clients were missing)",
            r.achieved_utterances_per_s, r.target_utterances_per_s
        ));
    }
    if r.loadgen_cpu_percent_of_core > 85.0 * gen_loops as f64 {
        w.push(format!(
            "GENERATOR SATURATED: it used {:.0}% of a core with {gen_loops} loop(s), so latency includes generator delay (try --gen-loops, or run the servers elsewhere)",
            r.loadgen_cpu_percent_of_core
        ));
    }
    let others = r.machine_cpu_percent_of_core
        - r.host_steal_percent_of_core
        - r.server.cpu_percent_of_core
        - r.loadgen_cpu_percent_of_core
        - r.kernel_softirq_threads_cpu_percent_of_core;
    if others > 25.0 {
        w.push(format!(
            "OTHER LOAD: the machine was busy {others:.0}% of a core beyond the servers, the generator \
             and ksoftirqd (other processes, or interrupt time): figures may be disturbed"
        ));
    }
    if r.host_steal_percent_of_core > 2.0 || r.host_steal_worst_second_percent_of_core > 10.0 {
        w.push(format!(
            "HOST STEAL: the hypervisor gave this VM's CPUs to others for {:.1}% of a core over the steady \
             state ({:.0}% in the worst second): latency and CPU figures may be disturbed",
            r.host_steal_percent_of_core, r.host_steal_worst_second_percent_of_core
        ));
    }
    if r.kernel_softirq_threads_cpu_percent_of_core > 25.0 {
        w.push(format!(
            "KERNEL NETWORK BACKLOG: ksoftirqd used {:.0}% of a core (network work deferred by a saturated kernel)",
            r.kernel_softirq_threads_cpu_percent_of_core
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = r.loadgen_cpu_percent_of_core + r.server.cpu_percent_of_core;
    if busy > 90.0 * cores {
        w.push(format!(
            "MACHINE SATURATED: server {:.0}% + generator {:.0}% of {cores:.0} cores",
            r.server.cpu_percent_of_core, r.loadgen_cpu_percent_of_core
        ));
    }
    if r.lost > 0 {
        w.push(format!("{} deliveries lost", r.lost));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_steal_is_warned_and_not_taken_for_other_load() {
        let mut r = crate::report::tests::sample_report("elko", 500, 5.0);
        r.machine_cpu_percent_of_core =
            r.server.cpu_percent_of_core + r.loadgen_cpu_percent_of_core + 30.0;
        assert!(
            warnings(&r, 1).iter().any(|w| w.starts_with("OTHER LOAD")),
            "30% of a core unaccounted for is other load"
        );
        r.host_steal_percent_of_core = 30.0;
        r.host_steal_worst_second_percent_of_core = 60.0;
        let w = warnings(&r, 1);
        assert!(w.iter().any(|w| w.starts_with("HOST STEAL")), "{w:?}");
        assert!(!w.iter().any(|w| w.starts_with("OTHER LOAD")), "{w:?}");
    }

    #[test]
    fn a_rate_shortfall_is_warned_only_beyond_poisson_noise() {
        let below = |r: &Report| {
            warnings(r, 1)
                .iter()
                .any(|w| w.starts_with("ACHIEVED RATE BELOW TARGET"))
        };
        let mut r = crate::report::tests::sample_report("elko", 500, 5.0);
        assert!(!below(&r));
        // sun2002 for 60 s: 16 000 expected; 10 % short is no accident.
        r.achieved_utterances_per_s = 0.9 * r.target_utterances_per_s;
        assert!(below(&r));
        // 10 clients for 10 s: 3.3 expected, 2 sent is within the noise.
        r.target_utterances_per_s = 10.0 / 30.0;
        r.duration_s = 10.0;
        r.achieved_utterances_per_s = 0.2;
        assert!(!below(&r));
        r.achieved_utterances_per_s = 0.0;
        assert!(!below(&r), "3.3 expected: even none is within 3 sigma");
        // 200 clients for 10 s: 66.7 expected, 40 sent is not.
        r.target_utterances_per_s = 200.0 / 30.0;
        r.achieved_utterances_per_s = 4.0;
        assert!(below(&r));
        assert!(warnings(&r, 1)
            .iter()
            .any(|w| w.contains("4.0 utterances/s of 6.7")));
    }
}
