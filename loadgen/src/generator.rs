//! A generator: the simulated clients of one process, driven by the
//! controller.
//!
//! One process holds at most about 19,900 sockets on these machines, so a
//! big run is split over several generator processes (`elko-loadgen worker`,
//! started by the controller). Each gets whole rooms, so it knows every
//! utterance's expected fanout locally, and all of them share one time zero
//! (see [`crate::clock`]). A worker prints one JSON line a second (counters
//! and the second's latency histogram) and a final line with its whole-run
//! histograms; it takes commands on stdin (`interval US`, `stop`, `exit`).
//! The controller sees in-process loops and workers alike, as [`Generator`]s.

use crate::driver::{Control, Driver, DriverConfig};
use crate::metrics::{
    histogram_from_hex, histogram_to_hex, new_histogram, Counters, Shared, Window, WindowHists,
};
use crate::peer::wire::{Nats, Resp3};
use crate::peer::{PeerConfig, PeerLoops};
use crate::scenario::Scenario;
use elko_engine::{Engine, EngineConfig, Limits};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which server the clients speak to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// An Elko cluster: director and context servers.
    Elko,
    /// Redis pub/sub (RESP3).
    Redis,
    /// NATS core.
    Nats,
    /// `elko-minimal-fanout`: the least a server can do for this workload
    /// (one loop, one write per member per pass, nothing else), speaking
    /// Redis's pub/sub: what this machine's kernel costs any server.
    Minimal,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Elko => "elko",
            TargetKind::Redis => "redis",
            TargetKind::Nats => "nats",
            TargetKind::Minimal => "minimal",
        }
    }
}

/// Everything one generator (process share) needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenSpec {
    pub scenario: Scenario,
    pub kind: TargetKind,
    /// The director (Elko) or the peer server.
    pub addr: SocketAddr,
    pub share: usize,
    pub shares: usize,
    /// The run's time zero, a `CLOCK_MONOTONIC` reading.
    pub epoch_mono_ns: u64,
    pub window: Window,
    pub source_ip: Option<IpAddr>,
}

/// What a generator has measured when it finishes.
#[derive(Debug)]
pub struct Final {
    pub counters: Counters,
    pub hists: WindowHists,
    pub errors: BTreeMap<String, u64>,
}

/// One generator, seen from the controller.
pub trait Generator: Send {
    /// Counters so far, and the latency histogram since the last call.
    fn sample(&mut self) -> (Counters, Histogram<u64>);
    /// Errors so far, by kind.
    fn errors(&self) -> BTreeMap<String, u64>;
    /// Change the mean time between one client's utterances.
    fn set_mean_interval_us(&mut self, us: u64);
    /// No more utterances.
    fn stop_sending(&mut self);
    /// Leave every room, close, and hand back the whole-run figures.
    fn finish(self: Box<Self>) -> Final;
    /// Child processes whose CPU counts as the generator's.
    fn child_pid(&self) -> Option<u32>;
}

enum Runner {
    Elko(Engine<Control>),
    Peer(PeerLoops),
}

/// Generator loops in this process.
pub struct LocalGen {
    shared: Arc<Shared>,
    runner: Runner,
}

impl std::fmt::Debug for LocalGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGen")
            .field("loops", &self.shared.loops.len())
            .finish()
    }
}

/// Why a generator could not start.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error(
        "{clients} clients need about {need} file descriptors, but this process may open at most {limit} \
         (hard RLIMIT_NOFILE); use more generator processes (--gen-procs)"
    )]
    Descriptors {
        clients: usize,
        need: u64,
        limit: u64,
    },
    #[error("cannot start the generator's event loops: {0}")]
    Loops(std::io::Error),
    #[error("cannot start generator process {share}: {source}")]
    Spawn {
        share: usize,
        source: std::io::Error,
    },
    #[error("generator process {share} failed: {why}")]
    Worker { share: usize, why: String },
}

impl LocalGen {
    /// Start this process's share of the clients.
    pub fn start(spec: &GenSpec) -> Result<LocalGen, GenError> {
        let s = &spec.scenario;
        let deal = s.deal(spec.share, spec.shares, s.gen_loops.max(1));
        let mine: usize = deal.iter().map(Vec::len).sum();
        // Also reserves the descriptor table: connecting thousands of clients
        // then never waits for it to grow.
        let limit = elko_engine::raise_fd_limit(1 << 20).unwrap_or(1024);
        let need = crate::scenario::gen_fds_needed(mine);
        if need > limit {
            return Err(GenError::Descriptors {
                clients: mine,
                need,
                limit,
            });
        }
        let epoch = crate::clock::instant_at_mono(spec.epoch_mono_ns);
        let shared = Arc::new(Shared::new(
            epoch,
            spec.window,
            s.rooms,
            deal.len(),
            s.interval.as_micros() as u64,
        ));
        let runner = match spec.kind {
            TargetKind::Elko => {
                let dcfg = Arc::new(DriverConfig {
                    director: spec.addr,
                    clients_total: s.clients,
                    rooms: s.rooms,
                    ramp: s.ramp,
                    message_size: s.message_size,
                    seed: s.seed,
                    source_ip: spec.source_ip,
                });
                let ecfg = EngineConfig {
                    loops: deal.len(),
                    server_id: "elko-loadgen".into(),
                    client_name: concat!("elko-loadgen/", env!("CARGO_PKG_VERSION")).into(),
                    limits: Limits {
                        max_connections_per_loop: usize::MAX,
                        ..Limits::default()
                    },
                    rx_timestamps: s.socket_stamps,
                    batch_sched: s.batch_sched,
                    ..EngineConfig::default()
                };
                let sh = shared.clone();
                let deal = Arc::new(deal);
                let engine = Engine::start(ecfg, None, move |i| {
                    Driver::new(i, &deal[i], dcfg.clone(), sh.clone())
                })
                .map_err(GenError::Loops)?;
                Runner::Elko(engine)
            }
            TargetKind::Redis | TargetKind::Nats | TargetKind::Minimal => {
                let pcfg = Arc::new(PeerConfig {
                    addr: spec.addr,
                    clients_total: s.clients,
                    rooms: s.rooms,
                    ramp: s.ramp,
                    message_size: s.message_size,
                    seed: s.seed,
                    source_ip: spec.source_ip,
                    socket_stamps: s.socket_stamps,
                    batch_sched: s.batch_sched,
                });
                let loops = if spec.kind == TargetKind::Nats {
                    PeerLoops::start::<Nats>(pcfg, shared.clone(), deal)
                } else {
                    PeerLoops::start::<Resp3>(pcfg, shared.clone(), deal)
                };
                Runner::Peer(loops.map_err(GenError::Loops)?)
            }
        };
        Ok(LocalGen { shared, runner })
    }
}

impl Generator for LocalGen {
    fn sample(&mut self) -> (Counters, Histogram<u64>) {
        (self.shared.counters(), self.shared.take_interval())
    }

    fn errors(&self) -> BTreeMap<String, u64> {
        self.shared.errors()
    }

    fn set_mean_interval_us(&mut self, us: u64) {
        self.shared.set_mean_interval_us(us);
    }

    fn stop_sending(&mut self) {
        self.shared.stop_sending.store(true, Relaxed);
    }

    fn finish(self: Box<Self>) -> Final {
        self.shared.stop_sending.store(true, Relaxed);
        match self.runner {
            Runner::Elko(engine) => {
                for l in 0..engine.loop_count() {
                    let _ = engine.post(l, Control::ExitAll);
                }
                std::thread::sleep(Duration::from_millis(300));
                engine.shutdown(Duration::from_secs(1));
            }
            Runner::Peer(loops) => loops.shutdown(Duration::from_secs(2)),
        }
        Final {
            counters: self.shared.counters(),
            hists: self.shared.totals(),
            errors: self.shared.errors(),
        }
    }

    fn child_pid(&self) -> Option<u32> {
        None
    }
}

/// What a worker prints on stdout, one JSON object a line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum WorkerLine {
    Tick {
        counters: Counters,
        interval_hist: String,
        errors: BTreeMap<String, u64>,
    },
    Final {
        counters: Counters,
        hists: Box<WindowHists>,
        errors: BTreeMap<String, u64>,
    },
    Failed {
        error: String,
    },
}

/// `elko-loadgen worker --spec JSON`: run one share and talk to the controller.
pub fn worker_main(spec_json: &str) -> i32 {
    let out = std::io::stdout();
    let say = |l: &WorkerLine| {
        let mut o = out.lock();
        let _ = serde_json::to_writer(&mut o, l);
        let _ = o.write_all(b"\n");
        let _ = o.flush();
    };
    let spec: GenSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            say(&WorkerLine::Failed {
                error: format!("bad spec: {e}"),
            });
            return 2;
        }
    };
    let mut gen = match LocalGen::start(&spec) {
        Ok(g) => g,
        Err(e) => {
            say(&WorkerLine::Failed {
                error: e.to_string(),
            });
            return 2;
        }
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send("exit".into()); // the controller is gone
    });
    let mut tick = Instant::now() + Duration::from_secs(1);
    loop {
        match rx.recv_timeout(tick.saturating_duration_since(Instant::now())) {
            Ok(cmd) => {
                let mut w = cmd.split_whitespace();
                match (w.next(), w.next().and_then(|v| v.parse::<u64>().ok())) {
                    (Some("interval"), Some(us)) => gen.set_mean_interval_us(us),
                    (Some("stop"), _) => gen.stop_sending(),
                    (Some("exit"), _) => break,
                    _ => {}
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tick += Duration::from_secs(1);
                let (counters, h) = gen.sample();
                say(&WorkerLine::Tick {
                    counters,
                    interval_hist: histogram_to_hex(&h),
                    errors: gen.errors(),
                });
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let f = Box::new(gen).finish();
    say(&WorkerLine::Final {
        counters: f.counters,
        hists: Box::new(f.hists),
        errors: f.errors,
    });
    0
}

#[derive(Default)]
struct ChildState {
    counters: Counters,
    interval: Option<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    last: Option<Final>,
    failed: Option<String>,
}

/// A generator in a child process.
pub struct ChildGen {
    share: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    state: Arc<Mutex<ChildState>>,
}

impl std::fmt::Debug for ChildGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGen")
            .field("share", &self.share)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl ChildGen {
    /// Start `exe worker` for `spec`.
    pub fn start(exe: &Path, spec: &GenSpec) -> Result<ChildGen, GenError> {
        let share = spec.share;
        let json = serde_json::to_string(spec).map_err(|e| GenError::Worker {
            share,
            why: e.to_string(),
        })?;
        let mut child = crate::procs::die_with_parent(&mut Command::new(exe))
            .args(["worker", "--spec", &json])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| GenError::Spawn { share, source })?;
        let state = Arc::new(Mutex::new(ChildState::default()));
        let stdout = child.stdout.take();
        let st = state.clone();
        std::thread::spawn(move || {
            let Some(out) = stdout else { return };
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut s = st.lock();
                match serde_json::from_str::<WorkerLine>(&line) {
                    Ok(WorkerLine::Tick {
                        counters,
                        interval_hist,
                        errors,
                    }) => {
                        s.counters = counters;
                        let h = histogram_from_hex(&interval_hist);
                        match &mut s.interval {
                            Some(acc) => {
                                let _ = acc.add(&h);
                            }
                            None => s.interval = Some(h),
                        }
                        s.errors = errors;
                    }
                    Ok(WorkerLine::Final {
                        counters,
                        hists,
                        errors,
                    }) => {
                        s.last = Some(Final {
                            counters,
                            hists: *hists,
                            errors,
                        });
                    }
                    Ok(WorkerLine::Failed { error }) => s.failed = Some(error),
                    Err(e) => s.failed = Some(format!("unreadable line from worker: {e}")),
                }
            }
        });
        let stdin = child.stdin.take();
        let g = ChildGen {
            share,
            child,
            stdin,
            state,
        };
        // A worker that cannot start says so at once.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(why) = g.state.lock().failed.clone() {
            return Err(GenError::Worker { share, why });
        }
        Ok(g)
    }

    fn command(&mut self, c: &str) {
        if let Some(i) = self.stdin.as_mut() {
            let _ = writeln!(i, "{c}");
            let _ = i.flush();
        }
    }
}

impl Generator for ChildGen {
    fn sample(&mut self) -> (Counters, Histogram<u64>) {
        let mut s = self.state.lock();
        let h = s.interval.take().unwrap_or_else(new_histogram);
        (s.counters, h)
    }

    fn errors(&self) -> BTreeMap<String, u64> {
        let s = self.state.lock();
        let mut e = s.errors.clone();
        if let Some(f) = &s.failed {
            e.insert(format!("worker_{}: {f}", self.share), 1);
        }
        e
    }

    fn set_mean_interval_us(&mut self, us: u64) {
        self.command(&format!("interval {us}"));
    }

    fn stop_sending(&mut self) {
        self.command("stop");
    }

    fn finish(mut self: Box<Self>) -> Final {
        self.command("exit");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.state.lock().last.is_some() {
                break;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the reader finish
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(self.stdin.take());
        let mut s = self.state.lock();
        let f = s.last.take().unwrap_or_else(|| {
            let mut errors = s.errors.clone();
            errors.insert(format!("worker_{}_no_final_report", self.share), 1);
            Final {
                counters: s.counters,
                hists: WindowHists::default(),
                errors,
            }
        });
        drop(s);
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        f
    }

    fn child_pid(&self) -> Option<u32> {
        Some(self.child.id())
    }
}
