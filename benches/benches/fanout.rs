//! Engine fanout: every frame one client sends is broadcast to all N
//! loopback connections (N = 40 and 1000), with 1 and 2 server loops.
//! Reports deliveries per second and the server's CPU time and allocations
//! per delivery.
//!
//! A custom harness rather than criterion: this is a throughput run over a
//! few seconds, not a per-call latency.
//!
//! - **Server**: an [`Engine`] whose handler, on each AppMessage, encodes one
//!   frame with `Ctx::encode`, queues a clone of that `Bytes` to each of its
//!   own connections, and posts the same `Bytes` to every other loop, which
//!   queues it to its connections. Encode once, fan out by reference.
//! - **Clients**: a second engine, one loop, N connections. The first
//!   connection to get its Welcome is the sender. It keeps `window`
//!   broadcasts in flight: one more is sent each time one has reached all N
//!   connections. Window 1 is one message at a time (every delivery is its
//!   own `send`); window 8 lets the server batch.
//! - **Measured**, after a warm-up, over `FANOUT_SECS` (default 3) seconds:
//!   frames the clients received; CPU time of the server's loop threads
//!   (`/proc/self/task/*/schedstat`); allocations made on the server's
//!   threads (a counting global allocator); the server's `send`/`sendmsg` calls and
//!   passes; the machine-wide CPU split from `/proc/stat`.
//!
//! Client and server share the machine: with 2 cores, the client loop takes
//! most of one, so the server figures are what it does *while* a client of
//! about its own cost runs beside it.
//!
//! Run: `cargo bench -p elko-benches --bench fanout`. `FANOUT_SECS=N`
//! changes the run length; `FANOUT_SETUPS=1000/1/8,40/2/1` runs only the
//! given N/loops/window setups (for profiling one). Without `--bench` (as
//! `cargo test --benches` runs it) it does one short run as a smoke test.

use bytes::Bytes;
use elko_benches::{allocations, set_alloc_class, threads_cpu_seconds, CountingAlloc, MachineCpu};
use elko_engine::{
    CloseReason, ConnId, Ctx, Engine, EngineConfig, Handler, LoopStatsSnapshot, TimerId,
};
use elko_protocol::{AppMessage, Frame, Hello, MessageType, Welcome};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Allocation class of the server's loop threads.
const SERVER_CLASS: usize = 1;
/// Allocation class of the client loop thread.
const CLIENT_CLASS: usize = 2;
/// AppMessage body length (the frame is 107 bytes on the wire).
const PAYLOAD: usize = 100;

// ---- server -------------------------------------------------------------------

struct Server {
    conns: Vec<ConnId>,
}

impl Server {
    fn queue_to_all(&self, cx: &mut Ctx<Bytes>, frame: &Bytes) {
        for &c in &self.conns {
            cx.send(c, frame.clone());
        }
    }
}

impl Handler for Server {
    type Mail = Bytes;

    fn on_start(&mut self, _cx: &mut Ctx<Bytes>) {
        set_alloc_class(SERVER_CLASS);
    }

    fn on_hello(&mut self, _cx: &mut Ctx<Bytes>, conn: ConnId, _h: &Hello) {
        self.conns.push(conn);
    }

    fn on_frame(&mut self, cx: &mut Ctx<Bytes>, _conn: ConnId, frame: Frame) {
        let Ok(m) = frame.decode_owned::<AppMessage>(MessageType::AppMessage) else {
            return;
        };
        let Ok(out) = cx.encode(&m) else { return };
        self.queue_to_all(cx, &out);
        for l in (0..cx.loop_count()).filter(|&l| l != cx.loop_index()) {
            let _ = cx.post(l, out.clone());
        }
    }

    fn on_mail(&mut self, cx: &mut Ctx<Bytes>, frame: Bytes) {
        self.queue_to_all(cx, &frame);
    }

    fn on_close(&mut self, _cx: &mut Ctx<Bytes>, conn: ConnId, _r: &CloseReason) {
        self.conns.retain(|&c| c != conn);
    }
}

// ---- clients ------------------------------------------------------------------

/// Counters the client loop shares with the bench's main thread.
#[derive(Debug, Default)]
struct Progress {
    /// Frames received, over all connections.
    delivered: AtomicU64,
    /// Broadcasts that reached every connection.
    completed: AtomicU64,
    /// Set by the main thread: send no more.
    stop: AtomicBool,
}

struct Clients {
    target: SocketAddr,
    n: usize,
    window: usize,
    ready: usize,
    sender: Option<ConnId>,
    next_seq: u64,
    /// Deliveries so far of each broadcast in flight.
    in_flight: HashMap<u64, usize>,
    progress: Arc<Progress>,
}

impl Clients {
    fn send_next(&mut self, cx: &mut Ctx<()>) {
        if self.progress.stop.load(Relaxed) {
            return;
        }
        let Some(s) = self.sender else { return };
        let mut body = vec![0; PAYLOAD];
        body[..8].copy_from_slice(&self.next_seq.to_le_bytes());
        cx.send_msg(s, &AppMessage { op: 2, body });
        self.in_flight.insert(self.next_seq, 0);
        self.next_seq += 1;
    }
}

impl Handler for Clients {
    type Mail = ();

    fn on_start(&mut self, cx: &mut Ctx<()>) {
        set_alloc_class(CLIENT_CLASS);
        for _ in 0..self.n {
            if let Err(e) = cx.connect(self.target) {
                eprintln!("connect to {}: {e}", self.target);
            }
        }
    }

    fn on_welcome(&mut self, cx: &mut Ctx<()>, conn: ConnId, _w: &Welcome) {
        self.sender.get_or_insert(conn);
        self.ready += 1;
        if self.ready == self.n {
            // The server registers a connection when it reads its Hello,
            // before it writes Welcome; a short pause covers the loops that
            // are slower to get there.
            cx.set_timer(Duration::from_millis(200), 0);
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<()>, _t: TimerId, _d: u64) {
        for _ in 0..self.window {
            self.send_next(cx);
        }
    }

    fn on_frame(&mut self, cx: &mut Ctx<()>, _conn: ConnId, frame: Frame) {
        // AppMessage body: op (varint, 1 byte), length (varint, 1 byte), then
        // the payload, whose first 8 bytes are the sequence number.
        let seq = frame
            .body
            .get(2..10)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        self.progress.delivered.fetch_add(1, Relaxed);
        let Some(seq) = seq else { return };
        let Some(count) = self.in_flight.get_mut(&seq) else {
            return;
        };
        *count += 1;
        if *count == self.n {
            self.in_flight.remove(&seq);
            self.progress.completed.fetch_add(1, Relaxed);
            self.send_next(cx);
        }
    }
}

// ---- one run ------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Setup {
    n: usize,
    server_loops: usize,
    window: usize,
}

/// Everything sampled at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    delivered: u64,
    completed: u64,
    server_cpu: f64,
    client_cpu: f64,
    server_allocs: u64,
    client_allocs: u64,
    server: LoopStatsSnapshot,
    machine: MachineCpu,
}

/// The counters this bench uses, summed over the server's loops.
fn sum(stats: &[Arc<elko_engine::LoopStats>]) -> LoopStatsSnapshot {
    stats
        .iter()
        .map(|s| s.snapshot())
        .fold(LoopStatsSnapshot::default(), |mut a, s| {
            a.frames_out += s.frames_out;
            a.writes += s.writes;
            a.passes += s.passes;
            for (x, y) in a.closed.iter_mut().zip(s.closed) {
                *x += y;
            }
            a
        })
}

fn sample(progress: &Progress, server: &Engine<Bytes>) -> Sample {
    Sample {
        at: Instant::now(),
        delivered: progress.delivered.load(Relaxed),
        completed: progress.completed.load(Relaxed),
        server_cpu: threads_cpu_seconds("srv-loop"),
        client_cpu: threads_cpu_seconds("cli-loop"),
        server_allocs: allocations(SERVER_CLASS),
        client_allocs: allocations(CLIENT_CLASS),
        server: sum(server.stats()),
        machine: MachineCpu::read(),
    }
}

/// Figures of one run.
#[derive(Debug)]
struct Outcome {
    setup: Setup,
    per_loop: Vec<u64>,
    secs: f64,
    deliveries: f64,
    broadcasts: f64,
    server_cpu: f64,
    client_cpu: f64,
    server_allocs: f64,
    client_allocs: f64,
    writes: f64,
    passes: f64,
    frames_out: f64,
    closed: u64,
    machine: MachineCpu,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.deliveries / self.secs
    }
    fn per_delivery(&self, x: f64) -> f64 {
        x / self.deliveries.max(1.0)
    }
    /// CPU the machine spent on anything but the two engines, as a share
    /// of one core: other processes disturbing the run.
    fn other_load(&self) -> f64 {
        ((self.machine.busy() - self.server_cpu - self.client_cpu) / self.secs).max(0.0)
    }
}

fn run(setup: Setup, secs: f64) -> Outcome {
    let Setup {
        n,
        server_loops,
        window,
    } = setup;
    let server = Engine::start(
        EngineConfig {
            loops: server_loops,
            server_id: "srv".into(),
            ..EngineConfig::default()
        },
        Some("127.0.0.1:0".parse().expect("literal address")),
        |_| Server { conns: Vec::new() },
    )
    .expect("start the server engine");
    let target = server.local_addr().expect("server listens");
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let client = Engine::start(
        EngineConfig {
            loops: 1,
            server_id: "cli".into(),
            ..EngineConfig::default()
        },
        None,
        move |_| Clients {
            target,
            n,
            window,
            ready: 0,
            sender: None,
            next_seq: 0,
            in_flight: HashMap::new(),
            progress: p.clone(),
        },
    )
    .expect("start the client engine");

    let t0 = Instant::now();
    while progress.delivered.load(Relaxed) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no delivery within 30 s: setup failed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500)); // warm-up
    let a = sample(&progress, &server);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b = sample(&progress, &server);
    progress.stop.store(true, Relaxed);

    let per_loop = server
        .stats()
        .iter()
        .map(|s| s.snapshot().connections)
        .collect();
    client.shutdown(Duration::from_millis(200));
    server.shutdown(Duration::from_millis(200));

    let closed = b
        .server
        .closed
        .iter()
        .zip(a.server.closed)
        .map(|(x, y)| x - y)
        .sum();
    Outcome {
        setup,
        per_loop,
        secs: b.at.duration_since(a.at).as_secs_f64(),
        deliveries: (b.delivered - a.delivered) as f64,
        broadcasts: (b.completed - a.completed) as f64,
        server_cpu: b.server_cpu - a.server_cpu,
        client_cpu: b.client_cpu - a.client_cpu,
        server_allocs: (b.server_allocs - a.server_allocs) as f64,
        client_allocs: (b.client_allocs - a.client_allocs) as f64,
        writes: (b.server.writes - a.server.writes) as f64,
        passes: (b.server.passes - a.server.passes) as f64,
        frames_out: (b.server.frames_out - a.server.frames_out) as f64,
        closed,
        machine: b.machine.since(&a.machine),
    }
}

fn report(o: &Outcome) {
    let Setup {
        n,
        server_loops,
        window,
    } = o.setup;
    let m = &o.machine;
    let wall = o.secs;
    println!(
        "n={n:<5} loops={server_loops} window={window}: {:>9.0} deliveries/s ({:.0} broadcasts/s), \
         server {:.0}% of a core = {:.3} µs/delivery, {:.1} frames/send, {:.1} passes/broadcast, \
         {:.4} allocs/delivery ({:.2}/broadcast); client {:.0}% = {:.3} µs/delivery, {:.3} allocs/delivery; \
         machine user {:.0}% sys {:.0}% irq {:.0}% idle {:.0}% (of 2 cores = 200%); connections per loop {:?}",
        o.rate(),
        o.broadcasts / wall,
        100.0 * o.server_cpu / wall,
        1e6 * o.per_delivery(o.server_cpu),
        o.frames_out / o.writes.max(1.0),
        o.passes / o.broadcasts.max(1.0),
        o.per_delivery(o.server_allocs),
        o.server_allocs / o.broadcasts.max(1.0),
        100.0 * o.client_cpu / wall,
        1e6 * o.per_delivery(o.client_cpu),
        o.per_delivery(o.client_allocs),
        100.0 * m.user / wall,
        100.0 * m.system / wall,
        100.0 * m.irq / wall,
        100.0 * m.idle / wall,
        o.per_loop,
    );
    // Sanity: the server queued (about) what the clients counted, and
    // every broadcast reached everybody.
    let queued_vs_counted = o.frames_out / o.deliveries.max(1.0);
    let complete = o.broadcasts * n as f64 / o.deliveries.max(1.0);
    if !(0.98..1.02).contains(&queued_vs_counted) || !(0.98..1.02).contains(&complete) {
        println!(
            "  WARNING: server queued {:.0} frames, clients counted {:.0}, completed broadcasts x N = {:.0}",
            o.frames_out,
            o.deliveries,
            o.broadcasts * n as f64
        );
    }
    if o.other_load() > 0.1 {
        println!(
            "  WARNING: other processes used {:.0}% of a core during the run: figures disturbed",
            100.0 * o.other_load()
        );
    }
    if o.closed > 0 {
        println!(
            "  WARNING: {} server connections closed during the run",
            o.closed
        );
    }
}

fn table(outcomes: &[Outcome]) {
    println!();
    println!("| N | server loops | window | deliveries/s | server CPU (% of a core) | server CPU per delivery | frames per send | server allocs per delivery | client CPU (% of a core) | other processes (% of a core) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let wall = o.secs;
        println!(
            "| {} | {} | {} | {:.0} | {:.0} % | {:.3} µs | {:.1} | {:.4} | {:.0} % | {:.0} % |",
            o.setup.n,
            o.setup.server_loops,
            o.setup.window,
            o.rate(),
            100.0 * o.server_cpu / wall,
            1e6 * o.per_delivery(o.server_cpu),
            o.frames_out / o.writes.max(1.0),
            o.per_delivery(o.server_allocs),
            100.0 * o.client_cpu / wall,
            100.0 * o.other_load(),
        );
    }
}

/// `"1000/1/8,40/2/1"`: N / server loops / window, comma-separated.
fn parse_setups(v: &str) -> Vec<Setup> {
    v.split(',')
        .map(|one| {
            let f: Vec<usize> = one
                .split('/')
                .map(|x| x.trim().parse().expect("FANOUT_SETUPS: N/loops/window,..."))
                .collect();
            assert!(f.len() == 3, "FANOUT_SETUPS: N/loops/window, got {one:?}");
            Setup {
                n: f[0],
                server_loops: f[1],
                window: f[2],
            }
        })
        .collect()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("FANOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench { 3.0 } else { 0.3 });
    if let Err(e) = elko_engine::raise_fd_limit(8192) {
        eprintln!("could not raise the descriptor limit: {e}");
    }
    let chosen = std::env::var("FANOUT_SETUPS")
        .ok()
        .map(|v| parse_setups(&v));
    let setups: Vec<Setup> = if let Some(chosen) = chosen {
        chosen
    } else if bench {
        [40, 1000]
            .into_iter()
            .flat_map(|n| [1, 2].map(|server_loops| (n, server_loops)))
            .flat_map(|(n, server_loops)| {
                [1, 8].map(|window| Setup {
                    n,
                    server_loops,
                    window,
                })
            })
            .collect()
    } else {
        vec![Setup {
            n: 40,
            server_loops: 2,
            window: 8,
        }]
    };
    let mut outcomes = Vec::new();
    for s in setups {
        let o = run(s, secs);
        report(&o);
        outcomes.push(o);
    }
    table(&outcomes);
}
