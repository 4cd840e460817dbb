//! How evenly the two accept modes spread connections over the loops, and
//! how fast they accept. `cargo run --release -p elko-benches --bin accept_spread`

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

fn main() {
    let _ = elko_engine::raise_fd_limit(16384);
    let n = 2000;
    let hello = elko_protocol::encode_frame_to_bytes(&Hello {
        magic: MAGIC,
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        client_name: "spread".into(),
    })
    .expect("encodes");
    println!(
        "{:<10} {:>5} {:>12} {:>10} {:>10}  per-loop accepted",
        "mode", "loops", "accepts/s", "max-min", "stddev%"
    );
    for mode in [AcceptMode::ReusePort, AcceptMode::Single] {
        for loops in [2, 4] {
            let cfg = EngineConfig {
                loops,
                accept_mode: mode,
                ..EngineConfig::default()
            };
            let engine = Engine::start(cfg, Some("127.0.0.1:0".parse().expect("addr")), |_| Nop)
                .expect("engine");
            let addr = engine.local_addr().expect("addr");
            let t = Instant::now();
            let mut socks = Vec::with_capacity(n);
            for _ in 0..n {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(&hello).expect("hello");
                socks.push(s);
            }
            let accepted = |e: &Engine<()>| {
                e.stats()
                    .iter()
                    .map(|s| LoopStats::get(&s.accepted))
                    .sum::<u64>()
            };
            while accepted(&engine) < n as u64 && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let rate = n as f64 / t.elapsed().as_secs_f64();
            let per: Vec<u64> = engine
                .stats()
                .iter()
                .map(|s| LoopStats::get(&s.accepted))
                .collect();
            let mean = n as f64 / loops as f64;
            let var = per.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / loops as f64;
            let spread = per.iter().max().unwrap_or(&0) - per.iter().min().unwrap_or(&0);
            println!(
                "{:<10} {:>5} {:>12.0} {:>10} {:>9.1}%  {:?}",
                format!("{mode:?}"),
                loops,
                rate,
                spread,
                100.0 * var.sqrt() / mean,
                per
            );
            drop(socks);
            engine.shutdown(Duration::from_millis(200));
        }
    }
}
