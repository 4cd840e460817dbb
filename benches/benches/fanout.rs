//! Engine fanout: one frame to 40 and to 1000 loopback connections, with 1
//! and 2 server loops. Reports deliveries per second and server CPU time per
//! delivery (user + system time of the server's loop threads).
//!
//! A custom harness (criterion measures per-call latency; this is a
//! throughput run): the client side is another engine with one loop and N
//! connections; connection 0 keeps `WINDOW` broadcasts in flight and sends
//! the next when one has reached every connection.
//!
//! Run: `cargo bench -p elko-benches --bench fanout` (`FANOUT_SECS=N` to change the 3 s runs).

use bytes::Bytes;
use elko_benches::threads_cpu_seconds;
use elko_engine::{ConnId, Ctx, Engine, EngineConfig, Handler, LoopStats};
use elko_protocol::{AppMessage, Frame, MessageType, Welcome};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WINDOW: u64 = 8;
const PAYLOAD: usize = 100;

struct Server {
    conns: Vec<ConnId>,
}

impl Handler for Server {
    type Mail = Bytes;
    fn on_hello(&mut self, _cx: &mut Ctx<Bytes>, conn: ConnId, _h: &elko_protocol::Hello) {
        self.conns.push(conn);
    }
    fn on_frame(&mut self, cx: &mut Ctx<Bytes>, _conn: ConnId, frame: Frame) {
        let Ok(m) = frame.decode_owned::<AppMessage>(MessageType::AppMessage) else {
            return;
        };
        let Ok(bytes) = cx.encode(&m) else { return };
        for &c in &self.conns {
            cx.send(c, bytes.clone());
        }
        for l in (0..cx.loop_count()).filter(|&l| l != cx.loop_index()) {
            let _ = cx.post(l, bytes.clone());
        }
    }
    fn on_mail(&mut self, cx: &mut Ctx<Bytes>, frame: Bytes) {
        for &c in &self.conns {
            cx.send(c, frame.clone());
        }
    }
    fn on_close(&mut self, _cx: &mut Ctx<Bytes>, conn: ConnId, _r: &elko_engine::CloseReason) {
        self.conns.retain(|&c| c != conn);
    }
}

struct Clients {
    target: SocketAddr,
    n: usize,
    ready: usize,
    sender: Option<ConnId>,
    next_seq: u64,
    counts: HashMap<u64, usize>,
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Clients {
    fn send_next(&mut self, cx: &mut Ctx<()>) {
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        let Some(s) = self.sender else { return };
        let mut body = self.next_seq.to_le_bytes().to_vec();
        body.resize(PAYLOAD, 0);
        cx.send_msg(s, &AppMessage { op: 2, body });
        self.counts.insert(self.next_seq, 0);
        self.next_seq += 1;
    }
}

impl Handler for Clients {
    type Mail = ();
    fn on_start(&mut self, cx: &mut Ctx<()>) {
        for _ in 0..self.n {
            cx.connect(self.target).expect("connect");
        }
    }
    fn on_welcome(&mut self, cx: &mut Ctx<()>, conn: ConnId, _w: &Welcome) {
        self.sender.get_or_insert(conn);
        self.ready += 1;
        if self.ready == self.n {
            // Let the server register the last connections before the first broadcast.
            cx.set_timer(Duration::from_millis(200), 0);
        }
    }
    fn on_timer(&mut self, cx: &mut Ctx<()>, _t: elko_engine::TimerId, _d: u64) {
        for _ in 0..WINDOW {
            self.send_next(cx);
        }
    }
    fn on_frame(&mut self, cx: &mut Ctx<()>, _conn: ConnId, frame: Frame) {
        let seq = u64::from_le_bytes(
            frame
                .body
                .get(2..10)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 8]),
        );
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let done = match self.counts.get_mut(&seq) {
            Some(c) => {
                *c += 1;
                *c == self.n
            }
            None => false,
        };
        if done {
            self.counts.remove(&seq);
            self.send_next(cx);
        }
    }
}

fn run(n: usize, server_loops: usize, secs: u64) {
    let server = Engine::start(
        EngineConfig {
            loops: server_loops,
            server_id: "srv".into(),
            ..EngineConfig::default()
        },
        Some("127.0.0.1:0".parse().expect("addr")),
        |_| Server { conns: Vec::new() },
    )
    .expect("server");
    let target = server.local_addr().expect("addr");
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (delivered.clone(), stop.clone());
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
            ready: 0,
            sender: None,
            next_seq: 0,
            counts: HashMap::new(),
            delivered: d.clone(),
            stop: s.clone(),
        },
    )
    .expect("clients");
    // Wait for the first deliveries (all connected), then measure.
    let t0 = Instant::now();
    while delivered.load(Ordering::Relaxed) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no deliveries: setup failed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300)); // warm-up
    let (d0, c0, cc0, t) = (
        delivered.load(Ordering::Relaxed),
        threads_cpu_seconds("srv-loop"),
        threads_cpu_seconds("cli-loop"),
        Instant::now(),
    );
    let writes0: u64 = server
        .stats()
        .iter()
        .map(|s| LoopStats::get(&s.writes))
        .sum();
    std::thread::sleep(Duration::from_secs(secs));
    let (d1, c1, cc1, el) = (
        delivered.load(Ordering::Relaxed),
        threads_cpu_seconds("srv-loop"),
        threads_cpu_seconds("cli-loop"),
        t.elapsed(),
    );
    let writes1: u64 = server
        .stats()
        .iter()
        .map(|s| LoopStats::get(&s.writes))
        .sum();
    stop.store(true, Ordering::Relaxed);
    let deliveries = (d1 - d0) as f64;
    let rate = deliveries / el.as_secs_f64();
    let cpu = c1 - c0;
    println!(
        "fanout n={n:<5} server_loops={server_loops}  {:>10.0} deliveries/s  server CPU {:>5.0}% of a core  {:>6.3} µs/delivery  {:>5.1} frames/writev  (client loop {:>4.0}%)",
        rate,
        100.0 * cpu / el.as_secs_f64(),
        1e6 * cpu / deliveries.max(1.0),
        deliveries / ((writes1 - writes0) as f64).max(1.0),
        100.0 * (cc1 - cc0) / el.as_secs_f64(),
    );
    client.shutdown(Duration::from_millis(200));
    server.shutdown(Duration::from_millis(200));
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("FANOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let _ = elko_engine::raise_fd_limit(8192);
    for (n, loops) in [(40, 1), (40, 2), (1000, 1), (1000, 2)] {
        run(n, loops, secs);
    }
}
