//! `elko-loadgen`: see `elko-loadgen chat --help`.

use clap::{CommandFactory, Parser, Subcommand};
use elko_loadgen::generator::{worker_main, TargetKind};
use elko_loadgen::plan::{plan, Machine, Servers};
use elko_loadgen::procs::{default_bin_dir, memory_available, MetricsUrl};
use elko_loadgen::repeat::summarize;
use elko_loadgen::report::{comparison, ratios, svg, Report};
use elko_loadgen::run::{run, ServerProc, Target};
use elko_loadgen::scenario::{
    cores, fd_limit, parse_count, parse_interval, parse_message_size, parse_period, parse_ramp,
    parse_rate, Preset, Scenario,
};
use elko_loadgen::threshold::{median_of, reports_of, Threshold};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    Chat(Box<ChatArgs>),
    /// (internal) One generator process of a run split over several.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

#[derive(Debug, clap::Args)]
struct ChatArgs {
    /// Starting point: sun2002 (the 2002 test), frantic (1 utterance/s each), scale (the 2002
    /// rate for as many clients as this machine holds: 25 000 a core, within half its free
    /// memory, over several processes), max (raise the rate until p99 passes 100 ms).
    #[arg(long, value_enum, default_value = "sun2002")]
    preset: Preset,
    /// Simulated clients.
    #[arg(long, value_parser = parse_count)]
    clients: Option<usize>,
    /// Rooms (contexts); clients are spread evenly.
    #[arg(long, conflicts_with = "fanout", value_parser = parse_count)]
    rooms: Option<usize>,
    /// Clients per room (instead of --rooms).
    #[arg(long, value_parser = parse_count)]
    fanout: Option<usize>,
    /// Mean seconds between one client's utterances (Poisson; at least 0.001).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_interval)]
    interval: Option<Duration>,
    /// Deliveries per second to ask for, instead of --interval: '160k', '2.5M'. The mean
    /// interval is set from the clients and rooms.
    #[arg(long, conflicts_with = "interval", allow_negative_numbers = true, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Steady-state seconds (measured; at least 1).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_period)]
    duration: Option<Duration>,
    /// Seconds over which clients connect (not measured).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_ramp)]
    ramp: Option<Duration>,
    /// Utterance size in bytes (at least 56, the header receivers read).
    #[arg(long, value_parser = parse_message_size)]
    message_size: Option<usize>,
    /// Random seed (utterance schedule).
    #[arg(long)]
    seed: Option<u64>,
    /// Event loops of each started contextd [default: the cores the generator's loops leave,
    /// shared by the context servers, at least 1; here the servers and the generator share the
    /// machine, and loops beyond its cores only take turns (see loadgen/RESULTS.md)].
    #[arg(long, value_parser = parse_count)]
    workers: Option<usize>,
    /// Context servers to start [default: 1, and as many more as the descriptor limit needs for
    /// the clients: a room lives on one server].
    #[arg(long, value_parser = parse_count)]
    contextds: Option<usize>,
    /// Stop (SIGTERM) one of the context servers this run starts, this many seconds into the
    /// steady state: its clients re-enter on the others (one step of a rolling restart; at
    /// least two context servers are started). The report names the stop and how long the
    /// server took to exit.
    #[arg(long, value_name = "SECONDS", value_parser = parse_period)]
    stop_contextd_at: Option<Duration>,
    /// Read with plain read() instead of recvmsg() with the kernel's receive stamps: no latency
    /// to the client's socket (nor the generator's read lag) in the report, for a generator a
    /// few percent of a core cheaper (about 5 % of a core at --preset frantic here).
    #[arg(long)]
    no_socket_stamps: bool,
    /// Run the generator's loops as ordinary threads instead of SCHED_BATCH: each delivery's
    /// wake-up may then preempt the server in the middle of a fanout, as a client program on
    /// the server's machine would (here, at the sun2002 rate: about five preemptions of the
    /// context server per utterance instead of none, and a generator a point of a core dearer).
    #[arg(long)]
    no_batch_sched: bool,
    /// Event loops per generator process.
    #[arg(long, value_parser = parse_count)]
    gen_loops: Option<usize>,
    /// Generator processes (default: as few as the descriptor limit allows).
    #[arg(long, value_parser = parse_count)]
    gen_procs: Option<usize>,
    /// What to drive: Elko, or a peer on the same workload (Redis pub/sub, NATS core, or
    /// `minimal`: elko-minimal-fanout, a server that does nothing but the fanout, to show
    /// what this machine's kernel costs any server).
    #[arg(long, value_enum, default_value = "elko")]
    target: TargetKind,
    /// A running peer server (default: start redis-server / nats-server / elko-minimal-fanout locally).
    #[arg(long)]
    target_addr: Option<SocketAddr>,
    /// Also run these peers on the same scenario and print them side by side:
    /// 'redis,nats', 'minimal,redis,nats'.
    #[arg(long, value_delimiter = ',', value_enum)]
    compare: Vec<TargetKind>,
    /// For --preset max: seconds per rate step (at least 1).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_period)]
    step: Option<Duration>,
    /// Drive an existing cluster through this director instead of starting one.
    #[arg(long)]
    director: Option<SocketAddr>,
    /// With --director or --target-addr: measure this running process as (part of) the
    /// server: CPU, RSS, sockets, CPU per delivery. Repeatable (director, each contextd).
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
    /// Like --server-pid, for a server on any machine: its metrics endpoint
    /// (`--admin-listen` of elko-director / elko-contextd), read each second for
    /// process_cpu_seconds_total and process_resident_memory_bytes. HOST:PORT or
    /// http://HOST:PORT[/PATH]. Repeatable.
    #[arg(long = "server-metrics", value_name = "URL")]
    server_metrics: Vec<MetricsUrl>,
    /// Where elko-director, elko-contextd and elko-minimal-fanout are (default: beside this
    /// executable).
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
    /// Write the per-second latency histograms as an HdrHistogram interval log (µs; one
    /// Tag per target), for HistogramLogProcessor, HistogramLogAnalyzer and the like.
    #[arg(long)]
    hlog: Option<PathBuf>,
    /// A limit; a breach makes the exit status 1. Repeatable: 'p99<5ms' (latency to the
    /// generator's read; 'socket_p99<5ms' to the client's socket), 'loss<=0', 'cpu<5',
    /// 'dup<=0', 'ooo<=0', 'cpu_per_delivery<10us', 'rate>=300k', 'mem_per_client<2KiB';
    /// relative to --baseline: 'p99<+10%', 'rate>=-5%'; relative to a target compared in the same
    /// round: 'cpu_per_delivery<1.2x minimal', 'p99<=0.9x redis' (with --compare minimal,redis).
    /// With --repeat, every round is judged.
    #[arg(long)]
    threshold: Vec<Threshold>,
    /// An earlier run's --json, for relative thresholds ('p99<+10%': at most 10 % above its
    /// p99; the median when it holds several rounds).
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Run the whole scenario (every target, in turn) this many times and report the median
    /// and range of each figure and ratio. JSON then holds every round; CSV and the plot the
    /// first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
}

/// The preset with the knobs given over it. Each knob was checked as it was
/// parsed; what is left is how they fit together.
fn scenario(a: &ChatArgs) -> Result<Scenario, String> {
    let mut s = match a.preset {
        Preset::Scale => Scenario::scale_for(cores(), memory_available()),
        p => Scenario::preset(p),
    };
    let set = |slot: &mut usize, v: Option<usize>| *slot = v.unwrap_or(*slot);
    set(&mut s.clients, a.clients);
    set(&mut s.message_size, a.message_size);
    set(&mut s.workers, a.workers);
    set(&mut s.contextds, a.contextds);
    set(&mut s.gen_loops, a.gen_loops);
    set(&mut s.gen_procs, a.gen_procs);
    set(&mut s.rooms, a.rooms);
    if let Some(f) = a.fanout {
        if f > s.clients {
            return Err(format!(
                "--fanout {f} is more than the {} clients",
                s.clients
            ));
        }
        s.rooms = s.clients.div_ceil(f);
    }
    if s.rooms > s.clients {
        let whose = if a.rooms.is_some() {
            "--rooms"
        } else {
            "the preset's"
        };
        return Err(format!(
            "{} rooms ({whose}) need at least as many clients, one each, and there are {} (set --clients, --rooms or --fanout)",
            s.rooms, s.clients
        ));
    }
    s.interval = a.interval.unwrap_or(s.interval);
    if let Some(r) = a.rate {
        s.set_rate(r)?;
    }
    s.duration = a.duration.unwrap_or(s.duration);
    s.ramp = a.ramp.unwrap_or(s.ramp);
    s.step = a.step.unwrap_or(s.step);
    s.seed = a.seed.unwrap_or(s.seed);
    s.stop_contextd_at = a.stop_contextd_at;
    s.socket_stamps = !a.no_socket_stamps;
    s.batch_sched = !a.no_batch_sched;
    Ok(s)
}

fn target_of(a: &ChatArgs, kind: TargetKind) -> Target {
    let bin_dir = || a.bin_dir.clone().unwrap_or_else(default_bin_dir);
    match kind {
        TargetKind::Elko => match a.director {
            Some(d) => Target::Director(d, existing_servers(a)),
            None => Target::LocalElko { bin_dir: bin_dir() },
        },
        k => match a.target_addr {
            Some(addr) if a.compare.is_empty() => Target::Peer(k, addr, existing_servers(a)),
            _ => Target::LocalPeer(k, bin_dir()),
        },
    }
}

/// The running servers' processes the user named, to measure.
fn existing_servers(a: &ChatArgs) -> Vec<ServerProc> {
    let pids = a.server_pids.iter().map(|&p| ServerProc::Pid(p));
    let urls = a.server_metrics.iter().cloned().map(ServerProc::Metrics);
    pids.chain(urls).collect()
}

fn write_file(path: &PathBuf, what: &str, body: impl AsRef<[u8]>) {
    if let Err(e) = std::fs::write(path, body) {
        eprintln!(
            "elko-loadgen: cannot write {what} to {}: {e}",
            path.display()
        );
        std::process::exit(2);
    }
}

fn main() {
    elko_engine::init_logging("warn");
    let args = match Cli::parse().cmd {
        Cmd::Worker { spec } => std::process::exit(worker_main(&spec)),
        Cmd::Chat(args) => *args,
    };
    let s = scenario(&args).unwrap_or_else(|e| usage_error(e));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("elko-loadgen: cannot find this executable: {e}");
            std::process::exit(2);
        }
    };
    // The first run is the one thresholds judge: Elko when comparing.
    let mut kinds = vec![if args.compare.is_empty() {
        args.target
    } else {
        TargetKind::Elko
    }];
    for k in &args.compare {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    // Named server processes are measured only for targets already running.
    let existing = kinds
        .iter()
        .any(|&k| matches!(target_of(&args, k), Target::Director(..) | Target::Peer(..)));
    if !existing_servers(&args).is_empty() && !existing {
        eprintln!(
            "elko-loadgen: --server-pid and --server-metrics name a running server's process: use them with --director, or with --target-addr and --target redis|nats|minimal (servers the generator starts are measured anyway)"
        );
        std::process::exit(2);
    }
    // A limit on figures nobody measures would pass or fail for nothing.
    let unmeasured = matches!(target_of(&args, kinds[0]), Target::Director(_, ref s) | Target::Peer(_, _, ref s) if s.is_empty());
    if let Some(t) = args
        .threshold
        .iter()
        .find(|t| t.is_on_server())
        .filter(|_| unmeasured)
    {
        usage_error(format!(
            "threshold '{}' judges the server's CPU or memory, which this run does not measure: the generator did not start the servers; name their processes with --server-pid PID or --server-metrics HOST:PORT",
            t.text
        ));
    }
    // A limit relative to another target needs that target in every round.
    if let Some((t, of)) = args
        .threshold
        .iter()
        .find_map(|t| Some((t, t.compared_with()?)))
        .filter(|(_, of)| !kinds[1..].iter().any(|k| k.name() == *of))
    {
        usage_error(format!(
            "threshold '{}' compares {} with {of}, which this run does not measure beside it: add --compare {of}",
            t.text,
            kinds[0].name()
        ));
    }
    // What the run needs from this machine, and what it will start.
    let servers: Vec<Servers> = kinds
        .iter()
        .map(|&k| match target_of(&args, k) {
            Target::LocalElko { .. } => Servers::Started(TargetKind::Elko),
            Target::LocalPeer(k, _) => Servers::Started(k),
            Target::Director(..) | Target::Peer(..) => Servers::Existing,
        })
        .collect();
    let mut s = s;
    let machine = Machine {
        fd_limit: fd_limit(),
        mem_available: memory_available(),
        cores: cores(),
    };
    if let Err(why) = plan(&mut s, &servers, machine) {
        eprintln!("elko-loadgen: this run cannot be done here: {why}");
        std::process::exit(2);
    }
    let baseline = load_baseline(&args, kinds[0]);
    eprintln!(
        "elko-loadgen: {} clients in {} rooms, one utterance per {} each (target {:.0} deliveries/s), ramp {:.0} s, steady {:.0} s, {} generator process(es){}; target {}",
        s.clients,
        s.rooms,
        if s.interval < Duration::from_secs(1) {
            format!("{:.2} ms", s.interval.as_secs_f64() * 1e3)
        } else {
            format!("{:.2} s", s.interval.as_secs_f64())
        },
        s.target_deliveries_per_s(),
        s.ramp.as_secs_f64(),
        s.duration.as_secs_f64(),
        s.gen_procs,
        if servers.contains(&Servers::Started(TargetKind::Elko)) {
            format!(", {} context server(s)", s.contextds)
        } else {
            String::new()
        },
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", then ")
    );
    let (rounds, failed) = run_rounds(&args, &s, &kinds, &exe);
    write_outputs(&args, &kinds, &rounds);
    let breached = judge(&args.threshold, baseline.as_ref(), &rounds, kinds[0]);
    if failed > 0 {
        eprintln!(
            "elko-loadgen: {failed} of {} runs failed",
            kinds.len() * args.repeat as usize
        );
        std::process::exit(2);
    }
    if breached {
        std::process::exit(1);
    }
}

/// Every round of every target, printing each report as it ends; and how
/// many runs failed. Exits (status 2) if the very first run failed.
fn run_rounds(
    args: &ChatArgs,
    s: &Scenario,
    kinds: &[TargetKind],
    exe: &Path,
) -> (Vec<Vec<Report>>, usize) {
    let mut rounds: Vec<Vec<Report>> = Vec::new();
    let mut failed = 0usize;
    for round in 1..=args.repeat {
        if args.repeat > 1 {
            eprintln!("elko-loadgen: round {round} of {}", args.repeat);
        }
        let mut reports: Vec<Report> = Vec::new();
        for &k in kinds {
            match run(s, target_of(args, k), exe) {
                Ok(r) => {
                    println!("{}", r.summary());
                    reports.push(r);
                }
                Err(e) => {
                    eprintln!("elko-loadgen: {} run failed: {e}", k.name());
                    failed += 1;
                    if reports.is_empty() && rounds.is_empty() {
                        std::process::exit(2);
                    }
                }
            }
        }
        if reports.len() > 1 {
            println!("{}", comparison(&reports));
        }
        if !reports.is_empty() {
            rounds.push(reports);
        }
        if elko_loadgen::run::interrupted() {
            break;
        }
    }
    if rounds.is_empty() {
        eprintln!("elko-loadgen: no round completed");
        std::process::exit(2);
    }
    (rounds, failed)
}

/// The summary over rounds (with --repeat) and the files asked for: JSON
/// (every round), CSV, plot and interval log (the first round).
fn write_outputs(args: &ChatArgs, kinds: &[TargetKind], rounds: &[Vec<Report>]) {
    let reports = &rounds[0];
    // Rounds with a failed run are reported but not summarised.
    let complete: Vec<Vec<Report>> = rounds
        .iter()
        .filter(|r| r.len() == kinds.len())
        .cloned()
        .collect();
    let summary = (args.repeat > 1).then(|| summarize(&complete));
    if let Some(sm) = &summary {
        println!("{}", sm.text());
    }
    if let Some(p) = &args.json {
        let one = |reports: &[Report]| {
            if args.compare.is_empty() {
                serde_json::to_value(&reports[0]).unwrap_or_default()
            } else {
                serde_json::json!({
                    "compare": reports,
                    "ratios": ratios(reports),
                })
            }
        };
        let body = match &summary {
            None => serde_json::to_string_pretty(&one(reports)),
            Some(sm) => serde_json::to_string_pretty(&serde_json::json!({
                "rounds": rounds.iter().map(|r| one(r)).collect::<Vec<_>>(),
                "summary": sm,
            })),
        };
        write_file(p, "JSON", body.unwrap_or_default());
    }
    if let Some(p) = &args.csv {
        let mut body = String::new();
        for r in reports {
            let csv = r.csv();
            let mut lines = csv.lines();
            let header = lines.next().unwrap_or_default();
            if body.is_empty() {
                body = format!("target,{header}\n");
            }
            for l in lines {
                body.push_str(&format!("{},{l}\n", r.target));
            }
        }
        write_file(p, "CSV", body);
    }
    let first: Vec<&Report> = reports.iter().collect();
    if let Some(p) = &args.plot {
        write_file(p, "SVG", svg(&first));
    }
    if let Some(p) = &args.hlog {
        write_file(p, "the interval log", elko_loadgen::hlog::file(&first));
    }
}

/// Judge every threshold on every round's first target; true if any is
/// breached (a figure the report lacks is a breach: the gate cannot pass).
fn judge(
    thresholds: &[Threshold],
    baseline: Option<&serde_json::Value>,
    rounds: &[Vec<Report>],
    first: TargetKind,
) -> bool {
    let baseline = baseline.map_or_else(Vec::new, |b| reports_of(b, first.name()));
    let mut breached = false;
    for (i, round) in rounds.iter().enumerate() {
        let r = &round[0];
        if r.target != first.name() {
            continue; // this round's first target failed
        }
        // Every target's figures in this round, as thresholds read them.
        let jsons: Vec<serde_json::Value> = round
            .iter()
            .map(|p| serde_json::to_value(p).unwrap_or_default())
            .collect();
        let json = &jsons[0];
        let which = if rounds.len() > 1 {
            format!("{}, round {}", r.target, i + 1)
        } else {
            r.target.clone()
        };
        for t in thresholds {
            let shown =
                |x: Option<f64>| x.map_or("none".to_string(), |x| format!("{x:.2}{}", t.unit()));
            // The figure a relative limit is taken from, and its name.
            let (base, from) = match t.compared_with() {
                Some(of) => {
                    let peer = jsons.iter().find(|p| p["target"] == of);
                    (peer.and_then(|p| t.measure(p)), Some(of))
                }
                None if t.is_relative() => (median_of(t, &baseline), Some("baseline")),
                None => (None, None),
            };
            let (value, limit) = (t.measure(json), t.limit(base));
            let ok = matches!((value, limit), (Some(v), Some(l)) if t.holds(v, l));
            let against = match from {
                Some(from) => format!("{from} {}, limit {}", shown(base), shown(limit)),
                None => format!("limit {}", shown(limit)),
            };
            println!(
                "threshold {:<24} measured {:>16} ({which}; {against})  {}",
                t.text,
                shown(value),
                if ok { "ok" } else { "BREACHED" }
            );
            breached |= !ok;
        }
    }
    breached
}

/// The `--baseline` file, read before anything runs (exits with the reason
/// when it holds no report of the judged target).
fn load_baseline(args: &ChatArgs, judged: TargetKind) -> Option<serde_json::Value> {
    let relative = args.threshold.iter().any(Threshold::is_relative);
    let Some(path) = &args.baseline else {
        if relative {
            usage_error("a relative threshold (+N% / -N%) needs --baseline FILE, the JSON of an earlier run".into());
        }
        return None;
    };
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| usage_error(format!("--baseline {}: {e}", path.display())));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        usage_error(format!(
            "--baseline {}: not a report (JSON: {e})",
            path.display()
        ))
    });
    if reports_of(&json, judged.name()).is_empty() {
        usage_error(format!(
            "--baseline {}: no {} report in it (written by --json of elko-loadgen chat?)",
            path.display(),
            judged.name()
        ));
    }
    if !relative {
        eprintln!("elko-loadgen: --baseline is used only by relative thresholds ('p99<+10%'); none was given");
    }
    Some(json)
}

/// Exit with a usage error (status 2) saying `why`.
fn usage_error(why: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, why)
        .exit()
}
