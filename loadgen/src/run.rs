//! One run: start (or reach) the servers, start the generators, drive them
//! through ramp, steady state and drain, sample everything once a second,
//! report.

use crate::clock::mono_now_ns;
use crate::generator::{ChildGen, GenError, GenSpec, Generator, LocalGen, TargetKind};
use crate::hlog::IntervalLog;
use crate::metrics::{new_histogram, Counters, Window, WindowHists};
use crate::procs::{
    ksoftirqd_pids, machine_times, process_name, sample, scrape, socket_count, Cluster,
    ClusterError, Machine, MachineTimes, MetricsUrl, PeerServer, ProcSample, Server,
};
use crate::report::{distribution, Percentiles, ProcReport, Report, ServerReport, TimelineRow};
use crate::scenario::{Preset, Scenario, CLIENTS_PER_SOURCE_IP};
use crate::stepper::Stepper;
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
    /// Drive an existing Elko cluster through its director; measure these
    /// processes as its servers.
    Director(SocketAddr, Vec<ServerProc>),
    /// Start a local peer server (`redis-server`, `nats-server` from
    /// `$PATH`; `elko-minimal-fanout` from this directory).
    LocalPeer(TargetKind, PathBuf),
    /// Drive an existing peer server; measure these processes as the server.
    Peer(TargetKind, SocketAddr, Vec<ServerProc>),
}

/// Where a server process's CPU time and memory are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProc {
    /// A process on this machine: `/proc/<pid>`.
    Pid(u32),
    /// A process's metrics endpoint (`process_*` metrics), on this machine
    /// or another.
    Metrics(MetricsUrl),
}

impl ServerProc {
    fn sample(&self) -> Option<ProcSample> {
        match self {
            ServerProc::Pid(p) => sample(Some(*p)),
            ServerProc::Metrics(u) => scrape(u),
        }
    }

    /// Sockets it holds (unknown through a metrics endpoint).
    fn sockets(&self) -> Option<u64> {
        match self {
            ServerProc::Pid(p) => socket_count(*p),
            ServerProc::Metrics(_) => None,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            ServerProc::Pid(p) => Some(*p),
            ServerProc::Metrics(_) => None,
        }
    }

    /// What to call it in the report.
    fn name(&self) -> String {
        match self {
            ServerProc::Pid(p) => process_name(*p),
            ServerProc::Metrics(u) => u.to_string(),
        }
    }
}

impl Target {
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::LocalElko { .. } | Target::Director(..) => TargetKind::Elko,
            Target::LocalPeer(k, _) | Target::Peer(k, ..) => *k,
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
    #[error("interrupted before measuring began (no second of steady state ran)")]
    Interrupted,
    #[error("--server-pid {0}: no such process (or /proc cannot show it)")]
    NoProcess(u32),
    #[error("--server-metrics {0}: no process_cpu_seconds_total there (is the server's --admin-listen at that address?)")]
    NoMetrics(MetricsUrl),
    #[error(
        "none of the {clients} clients got into its room by the end of the ramp, so there is nothing to measure{hint}; errors: {errors}"
    )]
    NobodyEntered {
        clients: usize,
        /// Where to look, when the errors do not say.
        hint: String,
        errors: String,
    },
    #[error(
        "every client had been dropped from its room {at_s} s into the run (at most {peak} of {clients} were in at once), so there is nothing more to measure; errors: {errors}"
    )]
    AllGone {
        peak: i64,
        clients: usize,
        at_s: u64,
        errors: String,
    },
    #[error("cannot connect to {what} at {addr}: {source}")]
    Unreachable {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
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
/// How long an interrupted run waits for what it sent.
const INTERRUPT_DRAIN: Duration = Duration::from_secs(1);
/// How long a running server has to accept a first connection.
const CONNECT_PROBE: Duration = Duration::from_secs(3);

/// The servers of a run: started by it (stopped in order when it ends), or
/// running already (measured if the user named their processes).
enum Servers {
    Existing(Vec<ServerProc>),
    Elko(Cluster),
    Peer(PeerServer),
}

impl Servers {
    /// Each server process to measure: its name, where its figures are
    /// read, and its event loops when this run chose them.
    fn processes(&self) -> Vec<MeasuredProc> {
        let started = |p: &Server, loops| MeasuredProc {
            name: p.name.clone(),
            source: ServerProc::Pid(p.pid()),
            event_loops: loops,
        };
        match self {
            Servers::Existing(procs) => procs
                .iter()
                .map(|p| MeasuredProc {
                    name: p.name(),
                    source: p.clone(),
                    event_loops: None,
                })
                .collect(),
            Servers::Elko(c) => std::iter::once(started(&c.director, None))
                .chain(c.contextds.iter().map(|s| started(s, c.contextd_loops)))
                .collect(),
            Servers::Peer(p) => vec![started(&p.server, None)],
        }
    }

    /// Stop the first context server of a cluster this run started, `into`
    /// the steady state (`--stop-contextd-at`); what to report of it.
    fn stop_contextd(&mut self, into: Duration) -> Option<String> {
        let Servers::Elko(cluster) = self else {
            return None;
        };
        let (name, clean, took) = cluster.stop_contextd(0)?;
        Some(format!(
            "{name} stopped (SIGTERM) {:.1} s into the steady state; {} in {:.2} s",
            into.as_secs_f64(),
            if clean {
                "it exited"
            } else {
                "it had to be killed (SIGKILL)"
            },
            took.as_secs_f64()
        ))
    }

    fn stop(self) {
        match self {
            Servers::Existing(_) => {}
            Servers::Elko(c) => c.stop(),
            Servers::Peer(mut p) => {
                p.server.stop();
            }
        }
    }
}

/// CPU time of the servers and of the generator's processes, per second.
struct Cpu {
    servers: Vec<ServerProc>,
    gens: Vec<Option<u32>>,
    softirq: Vec<u32>,
    last_softirq: f64,
    last_servers: Vec<ProcSample>,
    last_gens: Vec<ProcSample>,
    last_machine: MachineTimes,
}

impl Cpu {
    fn new(servers: Vec<ServerProc>, gens: Vec<Option<u32>>) -> Cpu {
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
        for (server, last) in self.servers.iter().zip(&mut self.last_servers) {
            let now = server.sample().unwrap_or(*last);
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
    let (mut servers, addr) = match target {
        Target::LocalElko { bin_dir } => {
            let c = Cluster::start(&bin_dir, s.contextds, s.workers, false)?;
            let a = c.client_addr;
            (Servers::Elko(c), a)
        }
        Target::Director(a, pids) => (existing("the director", a, pids)?, a),
        Target::LocalPeer(k, bin_dir) => {
            let p = PeerServer::start(k, &bin_dir)?;
            let a = p.addr;
            (Servers::Peer(p), a)
        }
        Target::Peer(k, a, pids) => (existing(k.name(), a, pids)?, a),
    };
    let result = drive(s, kind, addr, &mut servers, exe);
    servers.stop();
    result
}

/// A server process a run measures.
struct MeasuredProc {
    name: String,
    source: ServerProc,
    event_loops: Option<usize>,
}

/// Generator process `share`'s own source address when clients are spread
/// over several: 127.0.0.2, 127.0.0.3, ... (on into 127.0.1.x past 253).
fn source_ip(share: usize) -> IpAddr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    IpAddr::V4(Ipv4Addr::from(base + share as u32))
}

/// Servers already running at `addr` (`what` is there), with these
/// processes to measure: the address and each process must answer now, so
/// that a typo is a clear error and not a ramp of refused connections.
fn existing(
    what: &'static str,
    addr: SocketAddr,
    procs: Vec<ServerProc>,
) -> Result<Servers, RunError> {
    match procs.iter().find(|p| p.sample().is_none()) {
        Some(ServerProc::Pid(p)) => return Err(RunError::NoProcess(*p)),
        Some(ServerProc::Metrics(u)) => return Err(RunError::NoMetrics(u.clone())),
        None => {}
    }
    match std::net::TcpStream::connect_timeout(&addr, CONNECT_PROBE) {
        Ok(_) => Ok(Servers::Existing(procs)),
        Err(source) => Err(RunError::Unreachable { what, addr, source }),
    }
}

fn drive(
    s: &Scenario,
    kind: TargetKind,
    addr: SocketAddr,
    servers: &mut Servers,
    exe: &Path,
) -> Result<Report, RunError> {
    let server_procs = servers.processes();
    let baseline_rss: Vec<u64> = server_procs
        .iter()
        .map(|p| p.source.sample().map_or(0, |x| x.rss_bytes))
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
            source_ip: spread_sources.then(|| source_ip(share)),
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
    let mut cpu = Cpu::new(
        server_procs.iter().map(|p| p.source.clone()).collect(),
        gen_pids,
    );

    let mut timeline = Vec::new();
    let tty = std::io::stderr().is_terminal();
    let mut last = Counters::default();
    let mut totals = SteadyTotals::new(server_procs.len());
    let mut sockets: Vec<Option<u64>> = vec![None; server_procs.len()];
    let mut stepper = (s.preset == Preset::Max)
        .then(|| Stepper::new(s.step, s.clients, s.interval.as_micros() as u64));
    let window_start = Duration::from_micros(window.start_us);
    let window_end = Duration::from_micros(window.end_us);
    let mut drain_started: Option<Instant> = None;
    let mut was_interrupted = false;
    let mut stop_at = s.stop_contextd_at.map(|d| window_start + d);
    let mut events: Vec<String> = Vec::new();
    // Set when nobody is left in a room during the steady state: the most
    // that ever were, and when.
    let mut emptied: Option<(i64, Duration)> = None;
    let mut peak_connected = 0i64;
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
        // After an interrupt the run only drains what was sent.
        let steady = mid >= window_start && mid < window_end && !was_interrupted;
        let phase = if steady {
            "steady"
        } else if mid < window_start {
            "ramp"
        } else {
            "drain"
        };
        if steady {
            totals.add(&per, gen_cpu, machine_cpu, softirq_cpu);
            if sockets.iter().all(Option::is_none) {
                sockets = server_procs.iter().map(|p| p.source.sockets()).collect();
            }
        }
        let row = TimelineRow::second(t, phase, &c, &last, &ih, &per, gen_cpu);
        last = c;
        progress(
            &row,
            kind,
            s.clients,
            tty.then(|| t.as_secs_f64() / window_end.as_secs_f64()),
        );
        timeline.push(row);
        interval_log.record(kind.name(), last_t, t.saturating_sub(last_t), &ih);
        last_t = t;
        if let Some(mean_us) = stepper.as_mut().and_then(|st| st.second(t, steady, c, &ih)) {
            for g in &mut gens {
                g.set_mean_interval_us(mean_us);
            }
        }

        // One step of a rolling restart, once its time in the steady state comes.
        if let Some(at) = stop_at.take_if(|at| t >= *at) {
            events.extend(servers.stop_contextd(at - window_start));
        }
        if interrupted() && !was_interrupted {
            // Stop here, but let what was sent arrive (briefly) rather
            // than count it lost.
            was_interrupted = true;
            drain_started = Some(Instant::now());
            for g in &mut gens {
                g.stop_sending();
            }
        }
        if let Some(since) = drain_started.filter(|_| was_interrupted) {
            if c.received_window >= c.expected_window || since.elapsed() >= INTERRUPT_DRAIN {
                break;
            }
            continue;
        }
        peak_connected = peak_connected.max(c.connected);
        if steady && c.connected <= 0 {
            emptied = Some((peak_connected, t));
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

    if was_interrupted && totals.samples == 0 {
        for g in gens {
            g.finish();
        }
        return Err(RunError::Interrupted);
    }
    let mut counters = Counters::default();
    let mut hists = WindowHists::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for g in gens {
        let f = g.finish();
        counters += f.counters;
        hists.add(&f.hists);
        for (k, v) in f.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    errors.retain(|_, v| *v > 0);
    if let Some((peak, t)) = emptied {
        // Nothing came back, or nothing that speaks the target's protocol.
        let unexplained = errors.is_empty()
            || errors.keys().any(|k| {
                ["connect", "frame_error", "protocol"]
                    .iter()
                    .any(|w| k.contains(w))
            });
        let errors = if errors.is_empty() {
            "none counted".to_string()
        } else {
            errors
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(if peak <= 0 {
            RunError::NobodyEntered {
                clients: s.clients,
                hint: if unexplained {
                    format!(" (is {} answering at {addr}?)", kind.name())
                } else {
                    String::new()
                },
                errors,
            }
        } else {
            RunError::AllGone {
                peak,
                clients: s.clients,
                at_s: t.as_secs(),
                errors,
            }
        });
    }

    // Interrupted: the steady seconds that were run.
    let steady_s = if was_interrupted {
        f64::from(totals.samples).max(1.0)
    } else {
        s.duration.as_secs_f64()
    };
    let connected_peak = timeline.iter().map(|r| r.connected).max().unwrap_or(0);
    let processes: Vec<ProcReport> = server_procs
        .iter()
        .enumerate()
        .map(|(i, p)| ProcReport {
            name: p.name.clone(),
            pid: p.source.pid(),
            event_loops: p.event_loops,
            cpu_percent_of_core: totals.percent(totals.server_cpu_s[i]),
            rss_bytes: totals.server_rss[i],
            rss_before_clients_bytes: baseline_rss[i],
            sockets: sockets[i],
        })
        .collect();
    let rss: u64 = processes.iter().map(|p| p.rss_bytes).sum();
    let rss_base: u64 = processes.iter().map(|p| p.rss_before_clients_bytes).sum();
    // Nothing to say about the server when none of its processes was watched.
    let measured = !processes.is_empty();
    let server_cpu = measured.then(|| totals.percent(totals.server_cpu_s.iter().sum()));
    let server = ServerReport {
        cpu_percent_of_core: server_cpu,
        rss_bytes: rss,
        rss_per_client_bytes: (measured && connected_peak > 0)
            .then(|| rss.saturating_sub(rss_base) as f64 / connected_peak as f64),
        connections: sockets.iter().flatten().copied().sum(),
        processes,
    };
    let (expected, received) = (counters.expected_window, counters.received_window);
    let achieved =
        received_in_window(&timeline).map_or(received as f64 / steady_s, |(n, secs)| n / secs);
    let mut report = Report {
        scenario: s.clone(),
        target: kind.name().into(),
        clients_connected: connected_peak,
        rooms: s.rooms,
        duration_s: steady_s,
        utterances_sent: counters.utterances_window,
        deliveries_expected: expected,
        deliveries_received: received,
        lost: expected.saturating_sub(received),
        duplicates: counters.duplicates,
        out_of_order: counters.out_of_order,
        latency_us: Percentiles::of(&hists.corrected),
        latency_uncorrected_us: Percentiles::of(&hists.uncorrected),
        first_copy_latency_us: Percentiles::of(&hists.first_copy),
        fanout_spread_us: Percentiles::of(&hists.fanout_spread),
        fanouts_complete: hists.fanout_spread.len(),
        // Not measured, rather than zero, when no read was stamped.
        latency_at_socket_us: (!hists.at_socket.is_empty())
            .then(|| Percentiles::of(&hists.at_socket)),
        generator_read_lag_us: (!hists.read_lag.is_empty())
            .then(|| Percentiles::of(&hists.read_lag)),
        deliveries_stamped: hists.at_socket.len(),
        enter_latency_us: Percentiles::of(&hists.enter),
        entries: hists.enter.len(),
        loadgen_cpu_percent_of_core: totals.percent(totals.gen_cpu_s),
        loadgen_processes: shares,
        machine_cpu_percent_of_core: totals.percent(totals.machine.busy_s),
        kernel_softirq_threads_cpu_percent_of_core: totals.percent(totals.softirq_cpu_s),
        host_steal_percent_of_core: totals.percent(totals.machine.steal_s),
        host_steal_worst_second_percent_of_core: 100.0 * totals.worst_steal_second_s,
        errors,
        git_sha: env!("ELKO_GIT_SHA").into(),
        machine: Machine::this(),
        target_utterances_per_s: s.target_utterances_per_s(),
        target_deliveries_per_s: s.target_deliveries_per_s(),
        achieved_utterances_per_s: counters.utterances_window as f64 / steady_s,
        achieved_deliveries_per_s: achieved,
        // CPU per second over deliveries per second.
        server_cpu_us_per_delivery: server_cpu
            .filter(|_| achieved > 0.0)
            .map(|cpu| 1e4 * cpu / achieved),
        server,
        warnings: Vec::new(),
        events,
        max_sustained_deliveries_per_s: stepper.as_ref().map(Stepper::best),
        max_held: stepper.as_ref().and_then(Stepper::held),
        max_steps: stepper.map(Stepper::into_steps).unwrap_or_default(),
        distribution: distribution(&hists.corrected),
        first_copy_distribution: distribution(&hists.first_copy),
        at_socket_distribution: distribution(&hists.at_socket),
        fanout_spread_distribution: distribution(&hists.fanout_spread),
        steady_from_s: window_start.as_secs_f64(),
        interval_log,
        timeline,
    };
    report.warnings = warnings(&report, s.gen_loops * shares);
    if was_interrupted {
        report.warnings.insert(
            0,
            format!(
                "INTERRUPTED: the run was stopped early; figures cover the {} s of steady state that ran",
                totals.samples
            ),
        );
    }
    let _ = std::io::stderr().flush();
    Ok(report)
}

/// Deliveries received during the steady state's seconds, and how many
/// seconds those were: the throughput the run achieved. (Deliveries of the
/// window's utterances that arrive later, in the drain, count as delivered
/// but not towards the rate.) `None` without a steady second.
fn received_in_window(timeline: &[TimelineRow]) -> Option<(f64, f64)> {
    let steady = timeline.iter().filter(|r| r.phase == "steady");
    let (n, secs) = steady.fold((0.0, 0.0), |(n, secs), r| {
        (n + r.deliveries_per_s, secs + 1.0)
    });
    (secs > 0.0).then_some((n, secs))
}

/// Sums over the steady state's one-second samples.
struct SteadyTotals {
    samples: u32,
    /// CPU seconds of each server process.
    server_cpu_s: Vec<f64>,
    /// Highest resident memory of each server process.
    server_rss: Vec<u64>,
    gen_cpu_s: f64,
    machine: MachineTimes,
    worst_steal_second_s: f64,
    softirq_cpu_s: f64,
}

impl SteadyTotals {
    fn new(servers: usize) -> SteadyTotals {
        SteadyTotals {
            samples: 0,
            server_cpu_s: vec![0.0; servers],
            server_rss: vec![0; servers],
            gen_cpu_s: 0.0,
            machine: MachineTimes::default(),
            worst_steal_second_s: 0.0,
            softirq_cpu_s: 0.0,
        }
    }

    fn add(&mut self, per: &[ProcSample], gen_cpu_s: f64, machine: MachineTimes, softirq_s: f64) {
        self.samples += 1;
        for ((cpu, rss), p) in self
            .server_cpu_s
            .iter_mut()
            .zip(&mut self.server_rss)
            .zip(per)
        {
            *cpu += p.cpu_s;
            *rss = (*rss).max(p.rss_bytes);
        }
        self.gen_cpu_s += gen_cpu_s;
        self.machine.busy_s += machine.busy_s;
        self.machine.steal_s += machine.steal_s;
        self.worst_steal_second_s = self.worst_steal_second_s.max(machine.steal_s);
        self.softirq_cpu_s += softirq_s;
    }

    /// CPU seconds summed over the samples as % of one core (samples are a
    /// second apart).
    fn percent(&self, cpu_s: f64) -> f64 {
        100.0 * cpu_s / f64::from(self.samples.max(1))
    }
}

/// The one-line progress report of a second; `done` (a fraction of the
/// run) draws a bar on a terminal instead of a line per second.
fn progress(row: &TimelineRow, kind: TargetKind, clients: usize, done: Option<f64>) {
    let line = format!(
        "[{:>4.0}s] {:<6} {} connected {:>6}/{:<6} utt/s {:>8.0}  deliv/s {:>9.0}  p99 {:>8.2} ms  max {:>8.2} ms  server CPU {:>6}  gen CPU {:>5.1}%",
        row.t_s, row.phase, kind.name(), row.connected, clients, row.utterances_per_s, row.deliveries_per_s,
        row.p99_us as f64 / 1e3, row.max_us as f64 / 1e3,
        row.server_cpu_percent.map_or("-".to_string(), |c| format!("{c:.1}%")), row.loadgen_cpu_percent
    );
    match done {
        Some(done) => {
            let filled = (done.min(1.0) * 20.0) as usize;
            eprint!(
                "\r[{}{}] {line}\x1b[K",
                "#".repeat(filled),
                ".".repeat(20 - filled)
            );
        }
        None => eprintln!("{line}"),
    }
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
    // Deliveries owed by what was sent, against those that arrived in time.
    let owed = r.deliveries_expected as f64 / r.duration_s.max(1.0);
    let got = r.achieved_deliveries_per_s;
    if s.preset != Preset::Max && got < 0.95 * owed && got < owed - 3.0 * owed.sqrt() {
        w.push(format!(
            "DELIVERIES FELL BEHIND: {got:.0} deliveries/s arrived in the steady state of the \
             {owed:.0}/s its utterances owed; the rest came late, in the drain (see the latency)"
        ));
    }
    if r.loadgen_cpu_percent_of_core > 85.0 * gen_loops as f64 {
        w.push(format!(
            "GENERATOR SATURATED: it used {:.0}% of a core with {gen_loops} loop(s), so latency includes generator delay (try --gen-loops, or run the servers elsewhere)",
            r.loadgen_cpu_percent_of_core
        ));
    }
    // Servers measured through their metrics endpoints may run elsewhere:
    // only those read from this machine's /proc count against it.
    let local_servers = r.server.local_cpu_percent_of_core();
    let others = r.machine_cpu_percent_of_core
        - r.host_steal_percent_of_core
        - local_servers
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
    let busy = r.loadgen_cpu_percent_of_core + local_servers;
    if busy > 90.0 * cores {
        w.push(format!(
            "MACHINE SATURATED: server {local_servers:.0}% + generator {:.0}% of {cores:.0} cores",
            r.loadgen_cpu_percent_of_core
        ));
    }
    if s.preset == Preset::Max && !r.max_held.is_some_and(|h| h.sustained) {
        let last = r.max_held.map_or("none".to_string(), |h| {
            format!("{:.0} s at p99 {:.0} ms", h.seconds, h.p99_us as f64 / 1e3)
        });
        w.push(format!(
            "MAX NOT SUSTAINED: no rate held {} steps within p99 100 ms after the search (last \
             hold: {last}); the figure is the best single step (lengthen --duration for more holds)",
            crate::stepper::HOLD_STEPS
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
    fn each_generator_process_has_its_own_loopback_source() {
        assert_eq!(source_ip(0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(253), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 255)));
        assert_eq!(source_ip(254), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 0)));
    }

    #[test]
    fn host_steal_is_warned_and_not_taken_for_other_load() {
        let mut r = crate::report::tests::sample_report("elko", 500, 5.0);
        r.machine_cpu_percent_of_core =
            r.server.local_cpu_percent_of_core() + r.loadgen_cpu_percent_of_core + 30.0;
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

    /// Whether the report of a one-loop generator warns `what`.
    fn warned(r: &Report, what: &str) -> bool {
        warnings(r, 1).iter().any(|w| w.starts_with(what))
    }

    #[test]
    fn deliveries_that_arrive_only_in_the_drain_are_not_counted_as_throughput() {
        let behind = |r: &Report| warned(r, "DELIVERIES FELL BEHIND");
        let mut r = crate::report::tests::sample_report("elko", 500, 5.0);
        r.duration_s = 3.0;
        r.deliveries_expected = 24_000_000;
        r.deliveries_received = 24_000_000;
        r.achieved_deliveries_per_s = 8_000_000.0;
        assert!(!behind(&r), "everything arrived within the window");
        let row = |phase: &'static str, n: f64| TimelineRow {
            phase,
            deliveries_per_s: n,
            ..r.timeline[0].clone()
        };
        r.timeline = vec![
            row("ramp", 0.0),
            row("steady", 2_200_000.0),
            row("steady", 2_500_000.0),
            row("steady", 2_300_000.0),
            row("drain", 3_300_000.0),
        ];
        let (n, secs) = received_in_window(&r.timeline).expect("steady seconds");
        assert_eq!((n, secs), (7_000_000.0, 3.0));
        r.achieved_deliveries_per_s = n / secs;
        assert!(behind(&r), "{:?}", warnings(&r, 1));
        assert!(received_in_window(&r.timeline[..1]).is_none());
    }

    #[test]
    fn a_rate_shortfall_is_warned_only_beyond_poisson_noise() {
        let below = |r: &Report| warned(r, "ACHIEVED RATE BELOW TARGET");
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
