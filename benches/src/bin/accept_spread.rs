//! How evenly `AcceptMode::ReusePort` and `AcceptMode::Single` spread
//! connections over 2 and 4 loops, and what accepting costs.
//!
//! For each mode and loop count, a fresh engine; one client thread opens N
//! connections (default 2000) with blocking connects, each sending a Hello.
//! Reported per configuration, over R repetitions (default 5):
//! - per-loop `accepted` counters (`Engine::stats`), their max − min and
//!   coefficient of variation (worst repetition);
//! - accepts per second, from the first connect until every connection is
//!   accepted (median), next to how long the client's connect loop took:
//!   when the two are close the figure is bounded by the client, not by the
//!   server;
//! - server CPU time per accepted connection (the loop threads'
//!   `schedstat`; median): accept, register, read Hello, write Welcome, and
//!   for `Single` the hand-over to another loop;
//! - CPU that other processes used meanwhile, over the row's repetitions
//!   (machine-wide busy time from `/proc/stat`, in 10 ms ticks, minus this
//!   process's threads; as a share of one core): above a few percent, the
//!   row was disturbed.
//!
//! Run: `cargo run --release -p elko-benches --bin accept_spread [N] [R]`.

use elko_benches::{process_cpu_seconds, threads_cpu_seconds, MachineCpu};
use elko_engine::{AcceptMode, ConnId, Ctx, Engine, EngineConfig, Handler, LoopStats};
use elko_protocol::{Frame, Hello, MAGIC, PROTOCOL_VERSION};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Nop;

impl Handler for Nop {
    type Mail = ();
    fn on_frame(&mut self, _cx: &mut Ctx<()>, _conn: ConnId, _frame: Frame) {}
}

/// One repetition's figures.
#[derive(Debug)]
struct Rep {
    per_loop: Vec<u64>,
    accepts_per_s: f64,
    connect_loop_s: f64,
    all_accepted_s: f64,
    cpu_us_per_accept: f64,
}

fn accepted(e: &Engine<()>) -> Vec<u64> {
    e.stats()
        .iter()
        .map(|s| LoopStats::get(&s.accepted))
        .collect()
}

fn one(mode: AcceptMode, loops: usize, n: usize, hello: &[u8]) -> Rep {
    let cfg = EngineConfig {
        loops,
        accept_mode: mode,
        server_id: "spread".into(),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, Some("127.0.0.1:0".parse().expect("literal")), |_| Nop)
        .expect("start engine");
    let addr = engine.local_addr().expect("listening");
    // Let the loop threads start before the clock does.
    std::thread::sleep(Duration::from_millis(50));
    let cpu0 = threads_cpu_seconds("spread-loop");
    let t = Instant::now();
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(hello).expect("send Hello");
        socks.push(s);
    }
    let connect_loop_s = t.elapsed().as_secs_f64();
    while accepted(&engine).iter().sum::<u64>() < n as u64 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "only {:?} of {n} connections accepted after 30 s",
            accepted(&engine)
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let all_accepted_s = t.elapsed().as_secs_f64();
    // Let the last Hellos be answered, so every connection's full cost is in.
    while engine
        .stats()
        .iter()
        .map(|s| LoopStats::get(&s.frames_out))
        .sum::<u64>()
        < n as u64
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_micros(200));
    }
    let cpu = threads_cpu_seconds("spread-loop") - cpu0;
    let per_loop = accepted(&engine);
    drop(socks);
    engine.shutdown(Duration::from_millis(200));
    Rep {
        per_loop,
        accepts_per_s: n as f64 / all_accepted_s,
        connect_loop_s,
        all_accepted_s,
        cpu_us_per_accept: 1e6 * cpu / n as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    if let Err(e) = elko_engine::raise_fd_limit(4 * n as u64 + 256) {
        eprintln!("could not raise the descriptor limit: {e}");
    }
    let hello = elko_protocol::encode_frame_to_bytes(&Hello {
        magic: MAGIC,
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        client_name: "spread".into(),
    })
    .expect("Hello encodes");
    println!(
        "{n} connections, {reps} repetitions per row; medians; spread columns: worst repetition\n"
    );
    println!("| mode | loops | accepts/s | client connect loop | all accepted | server CPU per accept | max − min | CV | other processes | per-loop accepted (each repetition) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for mode in [AcceptMode::ReusePort, AcceptMode::Single] {
        for loops in [2, 4] {
            // The whole process (engine and client threads come and go with
            // each repetition, so a sum over live threads would lose theirs).
            let (t0, process0, machine0) =
                (Instant::now(), process_cpu_seconds(), MachineCpu::read());
            let runs: Vec<Rep> = (0..reps).map(|_| one(mode, loops, n, &hello)).collect();
            let process = process_cpu_seconds() - process0;
            let other = (MachineCpu::read().since(&machine0).busy() - process).max(0.0)
                / t0.elapsed().as_secs_f64();
            let mean = n as f64 / loops as f64;
            let spread = runs
                .iter()
                .map(|r| {
                    r.per_loop.iter().max().unwrap_or(&0) - r.per_loop.iter().min().unwrap_or(&0)
                })
                .max()
                .unwrap_or(0);
            let cv = runs
                .iter()
                .map(|r| {
                    let var = r
                        .per_loop
                        .iter()
                        .map(|&x| (x as f64 - mean).powi(2))
                        .sum::<f64>()
                        / loops as f64;
                    100.0 * var.sqrt() / mean
                })
                .fold(0.0, f64::max);
            let per_loop: Vec<String> = runs.iter().map(|r| format!("{:?}", r.per_loop)).collect();
            println!(
                "| {mode:?} | {loops} | {:.0} | {:.0} ms | {:.0} ms | {:.1} µs | {spread} | {cv:.1} % | {:.0} % | {} |",
                median(runs.iter().map(|r| r.accepts_per_s).collect()),
                1e3 * median(runs.iter().map(|r| r.connect_loop_s).collect()),
                1e3 * median(runs.iter().map(|r| r.all_accepted_s).collect()),
                median(runs.iter().map(|r| r.cpu_us_per_accept).collect()),
                100.0 * other,
                per_loop.join(" "),
            );
        }
    }
}
