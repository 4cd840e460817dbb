//! `elko-loadgen`: see `elko-loadgen chat --help`.

use clap::{Parser, Subcommand};
use elko_loadgen::procs::default_bin_dir;
use elko_loadgen::run::{run, Target};
use elko_loadgen::scenario::{Preset, Scenario};
use elko_loadgen::threshold::Threshold;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "elko-loadgen", version, about = "Elko's load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The chat benchmark. With no arguments: start a local cluster (director
    /// and contextd from beside this executable) and run preset sun2002.
    Chat(ChatArgs),
}

#[derive(Debug, clap::Args)]
struct ChatArgs {
    /// Starting point: sun2002 (the 2002 test), frantic (1 utterance/s each), scale, max.
    #[arg(long, value_enum, default_value = "sun2002")]
    preset: Preset,
    /// Simulated clients.
    #[arg(long)]
    clients: Option<usize>,
    /// Rooms (contexts); clients are spread evenly.
    #[arg(long, conflicts_with = "fanout")]
    rooms: Option<usize>,
    /// Clients per room (instead of --rooms).
    #[arg(long)]
    fanout: Option<usize>,
    /// Mean seconds between one client's utterances (Poisson).
    #[arg(long)]
    interval: Option<f64>,
    /// Steady-state seconds (measured).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds over which clients connect (not measured).
    #[arg(long)]
    ramp: Option<f64>,
    /// Utterance size in bytes (at least 16).
    #[arg(long)]
    message_size: Option<usize>,
    /// Random seed (utterance schedule).
    #[arg(long)]
    seed: Option<u64>,
    /// Event loops of the started contextd [default: one per core]. On a 2-core machine shared
    /// with the generator, `--workers 1` gives lower latency at high rates (see loadgen/RESULTS.md).
    #[arg(long)]
    workers: Option<usize>,
    /// Context servers to start.
    #[arg(long)]
    contextds: Option<usize>,
    /// Event loops of the generator.
    #[arg(long)]
    gen_loops: Option<usize>,
    /// For --preset max: seconds per rate step.
    #[arg(long)]
    step: Option<f64>,
    /// Drive an existing cluster through this director instead of starting one.
    #[arg(long)]
    director: Option<SocketAddr>,
    /// Where elko-director and elko-contextd are (default: beside this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the per-second timeline as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write latency plots as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A limit; a breach makes the exit status 1. Repeatable: 'p99<5ms', 'loss<=0', 'cpu<5'.
    #[arg(long)]
    threshold: Vec<Threshold>,
}

fn scenario(a: &ChatArgs) -> Scenario {
    let mut s = Scenario::preset(a.preset);
    let secs = |v: f64| Duration::from_secs_f64(v.max(0.0));
    if let Some(v) = a.clients {
        s.clients = v.max(1);
    }
    if let Some(v) = a.rooms {
        s.rooms = v.max(1);
    } else if let Some(f) = a.fanout {
        s.rooms = s.clients.div_ceil(f.max(1));
    }
    s.rooms = s.rooms.min(s.clients);
    if let Some(v) = a.interval {
        s.interval = secs(v).max(Duration::from_millis(1));
    }
    if let Some(v) = a.duration {
        s.duration = secs(v).max(Duration::from_secs(1));
    }
    if let Some(v) = a.ramp {
        s.ramp = secs(v);
    }
    if let Some(v) = a.message_size {
        s.message_size = v.max(16);
    }
    if let Some(v) = a.seed {
        s.seed = v;
    }
    if let Some(v) = a.workers {
        s.workers = v;
    }
    if let Some(v) = a.contextds {
        s.contextds = v.max(1);
    }
    if let Some(v) = a.gen_loops {
        s.gen_loops = v.max(1);
    }
    if let Some(v) = a.step {
        s.step = secs(v).max(Duration::from_secs(1));
    }
    s
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Chat(args) = Cli::parse().cmd;
    let s = scenario(&args);
    let target = match args.director {
        Some(d) => Target::Director(d),
        None => Target::Local {
            bin_dir: args.bin_dir.clone().unwrap_or_else(default_bin_dir),
        },
    };
    eprintln!(
        "elko-loadgen: {} clients in {} rooms, one utterance per {:.2} s each (target {:.0} deliveries/s), ramp {:.0} s, steady {:.0} s",
        s.clients,
        s.rooms,
        s.interval.as_secs_f64(),
        s.target_deliveries_per_s(),
        s.ramp.as_secs_f64(),
        s.duration.as_secs_f64()
    );
    let report = match run(&s, target) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("elko-loadgen: {e}");
            std::process::exit(2);
        }
    };
    println!("{}", report.summary());
    let write = |path: &PathBuf, what: &str, body: String| {
        if let Err(e) = std::fs::write(path, body) {
            eprintln!(
                "elko-loadgen: cannot write {what} to {}: {e}",
                path.display()
            );
            std::process::exit(2);
        }
    };
    if let Some(p) = &args.json {
        write(
            p,
            "JSON",
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        );
    }
    if let Some(p) = &args.csv {
        write(p, "CSV", report.csv());
    }
    if let Some(p) = &args.plot {
        write(p, "SVG", report.svg());
    }
    let mut breached = false;
    for t in &args.threshold {
        let ok = t.holds(&report);
        println!(
            "threshold {:<16} measured {:>12.2}  {}",
            t.text,
            t.measure(&report),
            if ok { "ok" } else { "BREACHED" }
        );
        breached |= !ok;
    }
    if breached {
        std::process::exit(1);
    }
}
