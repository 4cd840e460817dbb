//! A small scenario through the full path (director, redirect, token,
//! contextd) with the real server binaries: zero loss and the JSON keys.
//! Then the same workload split over two generator processes and two
//! context servers, against the minimal fanout server, and against Redis and NATS
//! when they are installed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_elko-loadgen"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

/// `cargo test -p elko-loadgen` alone does not build the servers: build them.
fn ensure_servers(dir: &Path) {
    if dir.join("elko-director").exists() && dir.join("elko-contextd").exists() {
        return;
    }
    let target = dir.parent().expect("target dir");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "--bins",
        "-p",
        "elko-director",
        "-p",
        "elko-contextd",
    ])
    .env("CARGO_TARGET_DIR", target);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("cargo build").success(),
        "building the servers failed"
    );
}

#[test]
fn two_hundred_clients_ten_rooms_lose_nothing() {
    let dir = bin_dir();
    ensure_servers(&dir);
    let json = std::env::temp_dir().join(format!("elko-loadgen-test-{}.json", std::process::id()));
    let csv = json.with_extension("csv");
    let svg = json.with_extension("svg");
    let hlog = json.with_extension("hlog");
    let out = Command::new(env!("CARGO_BIN_EXE_elko-loadgen"))
        .args([
            "chat",
            "--clients",
            "200",
            "--rooms",
            "10",
            "--interval",
            "0.5",
            "--duration",
            "5",
            "--ramp",
            "2",
        ])
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .arg("--hlog")
        .arg(&hlog)
        .args(["--threshold", "loss<=0"])
        .output()
        .expect("run elko-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    for key in [
        "scenario",
        "target",
        "clients_connected",
        "rooms",
        "duration_s",
        "utterances_sent",
        "deliveries_expected",
        "deliveries_received",
        "lost",
        "duplicates",
        "out_of_order",
        "latency_us",
        "latency_uncorrected_us",
        "server",
        "loadgen_cpu_percent_of_core",
        "errors",
        "git_sha",
        "machine",
    ] {
        assert!(v.get(key).is_some(), "JSON lacks {key}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_us"][p].as_u64().is_some(), "latency_us.{p}");
        assert!(
            v["latency_uncorrected_us"][p].as_u64().is_some(),
            "latency_uncorrected_us.{p}"
        );
    }
    assert!(v["server"]["cpu_percent_of_core"].as_f64().is_some());
    assert_eq!(
        v["server"]["processes"].as_array().map(Vec::len),
        Some(2),
        "director + contextd"
    );
    assert!(
        v["server"]["processes"][1]["sockets"].as_u64() >= Some(200),
        "the contextd holds every client's connection: {}",
        v["server"]["processes"][1]
    );
    // The context server runs the loops the plan gave it (the cores the
    // generator leaves, at least one), and the report says so.
    let loops = &v["server"]["processes"][1]["event_loops"];
    assert!(loops.as_u64() >= Some(1), "{}", v["server"]);
    assert_eq!(loops, &v["scenario"]["workers"], "{v}");
    assert!(
        v["server"]["processes"][0]["event_loops"].is_null(),
        "director"
    );
    assert!(stdout.contains(&format!("event loops {loops}")), "{stdout}");
    // By default the generator's loops are SCHED_BATCH, and its line says so.
    assert_eq!(v["scenario"]["batch_sched"], true, "{v}");
    assert!(stdout.contains(", SCHED_BATCH)"), "{stdout}");
    assert_eq!(v["clients_connected"], 200);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["out_of_order"], 0);
    let expected = v["deliveries_expected"].as_u64().expect("number");
    // 200 clients at 2 utterances/s for 5 s, each heard by its 20 room members.
    assert!(expected > 30_000, "expected deliveries {expected}");
    assert_eq!(v["deliveries_received"].as_u64(), Some(expected));
    let csv = std::fs::read_to_string(&csv).expect("csv written");
    assert!(csv.starts_with("target,t_s,phase,connected,"), "{csv}");
    assert!(csv.lines().count() >= 8, "one row per second");
    let svg = std::fs::read_to_string(&svg).expect("svg written");
    assert!(svg.starts_with("<svg") && svg.contains("<path"));
    assert_interval_log(&std::fs::read(&hlog).expect("hlog written"), expected);
    assert!(
        stdout.contains("2002 (2x400 MHz SPARC)"),
        "summary beside 2002:\n{stdout}"
    );
    for f in [
        json.clone(),
        json.with_extension("csv"),
        json.with_extension("svg"),
        json.with_extension("hlog"),
    ] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn a_breached_threshold_fails_the_run_and_a_bad_one_is_refused() {
    let dir = bin_dir();
    ensure_servers(&dir);
    let base = std::env::temp_dir().join(format!("elko-loadgen-base-{}.json", std::process::id()));
    let tiny = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_elko-loadgen"))
            .args([
                "chat",
                "--clients",
                "20",
                "--rooms",
                "2",
                "--interval",
                "0.2",
            ])
            .args(["--duration", "1", "--ramp", "0.5", "--bin-dir"])
            .arg(&dir)
            .args(extra)
            .output()
            .expect("run")
    };
    let out = tiny(
        &["--threshold", "p50<1us", "--threshold", "dup<=0", "--json"]
            .iter()
            .copied()
            .chain([base.to_str().expect("utf-8")])
            .collect::<Vec<_>>(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("p50<1us") && stdout.contains("BREACHED"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("dup<=0") && l.ends_with("ok")),
        "{stdout}"
    );

    // Relative to that run: the same rate within +/-50 % holds; 50 % more
    // than it does not; latency is judged against the baseline's own.
    let out = tiny(&[
        "--baseline",
        base.to_str().expect("utf-8"),
        "--threshold",
        "rate>=-50%",
        "--threshold",
        "rate>=+50%",
        "--threshold",
        "p99<+100000%",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let verdict = |t: &str| verdict_in(&stdout, t);
    assert!(verdict("rate>=-50%").ends_with("ok"), "{stdout}");
    assert!(verdict("rate>=+50%").ends_with("BREACHED"), "{stdout}");
    assert!(verdict("p99<+100000%").contains("baseline"), "{stdout}");
    assert!(verdict("p99<+100000%").ends_with("ok"), "{stdout}");

    // Relative to a target run beside it in the same round: elko delivers
    // as many as the minimal server, and not a hundred times as many.
    let out = tiny(&[
        "--compare",
        "minimal",
        "--threshold",
        "rate>=0.5xminimal",
        "--threshold",
        "rate>=100xminimal",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        verdict_in(&stdout, "rate>=0.5xminimal").ends_with("ok"),
        "{stdout}"
    );
    let far = verdict_in(&stdout, "rate>=100xminimal");
    assert!(
        far.contains("(elko; minimal ") && far.ends_with("BREACHED"),
        "{stdout}"
    );

    // Refused before anything runs: a bad limit, a relative one with no
    // baseline, a baseline without the judged target.
    let (code, _) = loadgen_fails(&["chat", "--threshold", "p99>5"]);
    assert_eq!(code, Some(2), "clap usage error");
    let (code, stderr) = loadgen_fails(&["chat", "--threshold", "p99<+10%"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("needs --baseline"), "{stderr}");
    let b = base.to_str().expect("utf-8");
    let (code, stderr) = loadgen_fails(&["chat", "--target", "redis", "--baseline", b]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no redis report"), "{stderr}");
    let (code, stderr) = loadgen_fails(&["chat", "--threshold", "p99<1.1xredis"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("add --compare redis"), "{stderr}");
    let _ = std::fs::remove_file(&base);
}

/// The verdict line of threshold `t` in elko-loadgen's output.
fn verdict_in(stdout: &str, t: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("threshold {t} ")))
        .unwrap_or_else(|| panic!("no line for {t}: {stdout}"))
        .to_string()
}

/// Runs elko-loadgen with `args`; returns its exit code and stderr.
fn loadgen_fails(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_elko-loadgen"))
        .args(args)
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_cluster_nobody_can_reach_fails_the_run_at_once_with_the_reason() {
    // A port nothing listens on: refused before any client is started.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let director = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let (code, stderr) = loadgen_fails(&["chat", "--ramp", "5", "--director", &director]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to the director at {director}")),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "refused at once, not at the end of the ramp"
    );
}

#[test]
fn utterances_over_the_servers_limit_fail_the_run_with_the_reason() {
    // The server announces max_text_len 16384 (the default) in its Welcome:
    // no client enters, and the run says why instead of losing every Say.
    let dir = bin_dir();
    ensure_servers(&dir);
    let dir = dir.to_str().expect("utf-8 path");
    let (code, stderr) = loadgen_fails(&[
        "chat",
        "--clients",
        "10",
        "--rooms",
        "2",
        "--duration",
        "30",
        "--ramp",
        "0.5",
        "--message-size",
        "20000",
        "--bin-dir",
        dir,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("none of the 10 clients got into its room")
            && stderr
                .contains("message_size_over_server_limit: 20000 bytes > max_text_len 16384 x10")
            && !stderr.contains("answering at"),
        "{stderr}"
    );
}

#[test]
fn knobs_that_make_no_run_are_refused_before_anything_starts() {
    for (args, why) in [
        (&["--clients", "0"][..], "must be at least 1"),
        (&["--interval", "0"], "at least 0.001 s"),
        (&["--interval", "-2"], "not negative"),
        (&["--duration", "inf"], "a week"),
        (&["--message-size", "8"], "at least 56 bytes"),
        (&["--workers", "0"], "must be at least 1"),
        (
            &["--clients", "10", "--rooms", "20"],
            "20 rooms (--rooms) need",
        ),
        (&["--clients", "10"], "200 rooms (the preset's) need"),
        (
            &["--clients", "10", "--fanout", "40"],
            "--fanout 40 is more than the 10 clients",
        ),
        // What this machine cannot hold, with the limit that stops it.
        (
            &["--clients", "100000000", "--rooms", "2500000"],
            "available (MemAvailable): run fewer clients",
        ),
        (
            &["--clients", "20000", "--rooms", "500", "--target", "redis"],
            "one redis process takes here",
        ),
        (
            &["--clients", "30000", "--rooms", "1"],
            "a room of 30000 clients does not fit one",
        ),
        (
            &["--stop-contextd-at", "60"],
            "--stop-contextd-at 60 s is not within the 60 s steady state",
        ),
        (
            &["--stop-contextd-at", "5", "--director", "127.0.0.1:1"],
            "stop one yourself",
        ),
    ] {
        let mut all = vec!["chat"];
        all.extend_from_slice(args);
        let (code, stderr) = loadgen_fails(&all);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

#[test]
fn an_interrupted_run_reports_the_seconds_it_ran_and_loses_nothing() {
    let dir = bin_dir();
    ensure_servers(&dir);
    let json = std::env::temp_dir().join(format!("elko-loadgen-int-{}.json", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_elko-loadgen"))
        // SMALL's clients, rooms and rate, for 60 s.
        .args(&SMALL[..7])
        .args(["--duration", "60", "--ramp", "1", "--bin-dir"])
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run elko-loadgen");
    // Ramp 1 s, settle 2 s, then a few seconds of the 60 s steady state.
    std::thread::sleep(std::time::Duration::from_secs(7));
    // SAFETY: kill(2) on the child we started and have not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}", out.status);
    assert!(stdout.contains("WARNING: INTERRUPTED"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    let _ = std::fs::remove_file(json);
    let ran = v["duration_s"].as_f64().expect("duration_s");
    assert!((2.0..10.0).contains(&ran), "steady seconds run: {ran}");
    // Rates over the seconds run, not the 60 asked for: 120 clients at 2 utterances/s.
    let rate = v["achieved_utterances_per_s"].as_f64().expect("rate");
    assert!(rate > 150.0, "{rate} utterances/s");
    assert_eq!(v["lost"], 0, "what was sent had time to arrive: {v}");
    assert!(v["deliveries_received"].as_u64().expect("received") > 0);
}

#[test]
fn a_context_server_stopped_mid_run_hands_its_clients_to_the_other() {
    // SMALL over two context servers; one is stopped 1 s into its 3 s
    // steady state.
    let v = small_run(&["--stop-contextd-at", "1", "--contextds", "2"], "stop");
    assert_eq!(v["scenario"]["stop_contextd_at"], 1.0, "{v}");
    let events = v["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{v}");
    let event = events[0].as_str().expect("text");
    assert!(
        event.contains("elko-contextd-0 stopped (SIGTERM) 1.0 s into the steady state; it exited"),
        "{event}"
    );
    // Its clients were sent back through the director, and all came back.
    let reentered = v["errors"]["reenter: SHUTDOWN(2)"].as_u64().unwrap_or(0);
    assert!(reentered > 0, "nobody was sent back: {}", v["errors"]);
    // Each entry is timed, the second ones too.
    assert_eq!(v["entries"], 120 + reentered, "{v}");
    // An utterance sent in the instant the server stopped reading may be
    // lost; nothing more.
    let expected = v["deliveries_expected"].as_u64().expect("expected");
    let lost = v["lost"].as_u64().expect("lost");
    assert!(lost * 100 <= expected, "{lost} of {expected} lost");
}

/// The interval log parses with HdrHistogram's own reader, every interval is
/// tagged `elko`, and together they hold at least the steady state's deliveries.
fn assert_interval_log(log: &[u8], steady_deliveries: u64) {
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let (mut intervals, mut values) = (0, 0);
    for entry in IntervalLogIterator::new(log) {
        if let LogEntry::Interval(i) = entry.expect("a valid interval log") {
            assert_eq!(i.tag().map(|t| t.as_str()), Some("elko"));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(i.encoded_histogram())
                .expect("base64");
            let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .expect("a V2 histogram");
            intervals += 1;
            values += h.len();
        }
    }
    assert!(intervals >= 8, "one interval per second: {intervals}");
    assert!(
        values >= steady_deliveries,
        "{values} latencies logged, {steady_deliveries} deliveries in the steady state"
    );
}

/// `--preset max` raises the rate step by step; every step must run at its
/// own rate from its first second (the clients' pending utterances are
/// drawn again at each change), not drift towards it while utterances
/// scheduled at the old rate drain.
#[test]
fn every_max_step_runs_at_its_target_rate() {
    let v = run_json(
        &[
            "chat",
            "--preset",
            "max",
            "--clients",
            "2000",
            "--rooms",
            "100",
            "--step",
            "3",
            "--duration",
            "12",
            "--ramp",
            "2",
        ],
        "max",
    );
    let steps = v["max_steps"].as_array().expect("max_steps");
    assert!(steps.len() >= 3, "{steps:?}");
    for (i, st) in steps.iter().enumerate() {
        let target = st["utterances_per_s_target"].as_f64().expect("target") * 20.0;
        let got = st["deliveries_per_s"].as_f64().expect("deliveries");
        // Each step holds ~750+ utterances: Poisson noise is under 4 %.
        assert!(
            (got / target - 1.0).abs() < 0.15,
            "step {i}: {got:.0} deliveries/s for a target of {target:.0}"
        );
    }
}

/// Run a short chat scenario with extra arguments; returns the JSON report.
/// The small scenario: 120 clients in 6 rooms, one utterance each per 0.5 s, 3 s measured.
const SMALL: [&str; 11] = [
    "chat",
    "--clients",
    "120",
    "--rooms",
    "6",
    "--interval",
    "0.5",
    "--duration",
    "3",
    "--ramp",
    "1",
];

fn small_run(extra: &[&str], tag: &str) -> serde_json::Value {
    let mut args = SMALL.to_vec();
    args.extend_from_slice(extra);
    run_json(&args, tag)
}

/// Run elko-loadgen with these arguments against servers of this build;
/// returns the JSON report (the run must succeed).
fn run_json(args: &[&str], tag: &str) -> serde_json::Value {
    let dir = bin_dir();
    ensure_servers(&dir);
    let json = std::env::temp_dir().join(format!("elko-loadgen-{tag}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_elko-loadgen"))
        .args(args)
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run elko-loadgen");
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    let _ = std::fs::remove_file(json);
    v
}

fn assert_all_delivered(v: &serde_json::Value, clients: u64) {
    assert_eq!(v["clients_connected"], clients, "{v}");
    let expected = v["deliveries_expected"].as_u64().expect("number");
    assert!(expected > 5_000, "expected deliveries {expected}");
    assert_eq!(v["deliveries_received"].as_u64(), Some(expected));
    assert_eq!(
        (
            v["lost"].as_u64(),
            v["duplicates"].as_u64(),
            v["out_of_order"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert!(v["latency_us"]["p50"].as_u64() > Some(0));
    // With nothing lost, every utterance's fanout completes: the split of
    // its latency into first copy and spread covers them all, and the last
    // copy is never sooner than the first.
    assert_eq!(v["fanouts_complete"], v["utterances_sent"], "{v}");
    let (first, spread) = (&v["first_copy_latency_us"], &v["fanout_spread_us"]);
    assert!(first["p50"].as_u64() > Some(0));
    assert!(first["p50"].as_u64() <= v["latency_us"]["p50"].as_u64());
    assert!(spread["max"].as_u64() <= v["latency_us"]["max"].as_u64());
    // Each copy's kernel receive stamp is taken before the generator reads
    // it, so the latency to the socket is never above the latency to the
    // read, nor the generator's share above the whole.
    let (stamped, received) = (
        v["deliveries_stamped"].as_u64().expect("a count"),
        v["deliveries_received"].as_u64().expect("a count"),
    );
    if v["scenario"]["socket_stamps"] == false {
        assert_eq!(stamped, 0, "stamps off, yet {stamped} stamped");
    } else {
        assert!(
            stamped * 100 >= received * 99,
            "{stamped} of {received} deliveries stamped"
        );
        let (socket, lag) = (&v["latency_at_socket_us"], &v["generator_read_lag_us"]);
        for p in ["p50", "p99", "max"] {
            assert!(socket[p].as_u64() > Some(0), "{socket}");
            assert!(
                socket[p].as_u64() <= v["latency_us"][p].as_u64(),
                "{p}: {v}"
            );
            assert!(lag[p].as_u64() <= v["latency_us"][p].as_u64(), "{p}: {v}");
        }
    }
    // Every client entered once, and each entry was timed (across generator
    // processes too).
    assert_eq!(v["entries"], clients, "{v}");
    let enter = &v["enter_latency_us"];
    assert!(enter["p50"].as_u64() > Some(0), "{enter}");
    assert!(enter["p50"].as_u64() <= enter["max"].as_u64(), "{enter}");
}

#[test]
fn two_generator_processes_and_two_context_servers_lose_nothing() {
    // Also the generator's plain reads, without receive stamps, on ordinarily
    // scheduled loops.
    let v = small_run(
        &[
            "--gen-procs",
            "2",
            "--contextds",
            "2",
            "--no-socket-stamps",
            "--no-batch-sched",
        ],
        "split",
    );
    assert_eq!(v["scenario"]["socket_stamps"], false, "{v}");
    assert_eq!(v["scenario"]["batch_sched"], false, "{v}");
    assert_all_delivered(&v, 120);
    assert_eq!(v["loadgen_processes"], 2);
    assert_eq!(
        v["server"]["processes"].as_array().map(Vec::len),
        Some(3),
        "director + 2 contextds"
    );
}

fn peer_installed(program: &str) -> bool {
    let found = elko_loadgen::procs::find_program(program).is_some();
    if !found {
        eprintln!("SKIPPED: {program} is not installed (apt-get install {program}); the peer adapter is not tested");
    }
    found
}

#[test]
fn the_redis_adapter_delivers_everything() {
    if !peer_installed("redis-server") {
        return;
    }
    let v = small_run(&["--target", "redis"], "redis");
    assert_eq!(v["target"], "redis");
    assert_all_delivered(&v, 120);
}

#[test]
fn the_nats_adapter_delivers_everything() {
    if !peer_installed("nats-server") {
        return;
    }
    let v = small_run(&["--target", "nats"], "nats");
    assert_eq!(v["target"], "nats");
    assert_all_delivered(&v, 120);
}

#[test]
fn the_minimal_fanout_server_delivers_everything_and_drops_only_a_bad_client() {
    let v = small_run(&["--target", "minimal"], "minimal");
    assert_eq!(v["target"], "minimal");
    assert_all_delivered(&v, 120);
    let procs = v["server"]["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 1, "{v}");
    assert_eq!(procs[0]["name"], "elko-minimal-fanout", "{v}");
    assert!(v["server_cpu_us_per_delivery"].as_f64() > Some(0.0), "{v}");

    // Garbage closes that one connection; a subscriber beside it still hears
    // what is published.
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_elko-minimal-fanout"))
        .arg(&addr)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start elko-minimal-fanout");
    let connect = || {
        for _ in 0..200 {
            if let Ok(c) = TcpStream::connect(&addr) {
                c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .expect("timeout");
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("elko-minimal-fanout is not listening on {addr}");
    };
    let read_until = |c: &mut TcpStream, want: &[u8]| {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.windows(want.len()).any(|w| w == want) {
            let n = c.read(&mut buf).expect("read");
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    let mut sub = connect();
    sub.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nroom\r\n")
        .expect("subscribe");
    read_until(&mut sub, b"subscribe");
    let mut bad = connect();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("garbage");
    let mut rest = Vec::new();
    match bad.read_to_end(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!(
            "garbage got {other:?} {:?}, not a close",
            String::from_utf8_lossy(&rest)
        ),
    }
    let mut publisher = connect();
    publisher
        .write_all(b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$2\r\nhi\r\n")
        .expect("publish");
    read_until(&mut publisher, b":1\r\n");
    read_until(&mut sub, b"$2\r\nhi\r\n");
    server.kill().expect("kill");
    let mut err = String::new();
    server
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let _ = server.wait();
    assert!(
        err.contains("expected an array"),
        "the reason is logged: {err}"
    );
}

#[test]
fn repeated_rounds_are_all_kept_and_summarised() {
    let v = small_run(&["--repeat", "2"], "repeat");
    let rounds = v["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{v}");
    for r in rounds {
        assert_all_delivered(r, 120);
    }
    assert_eq!(v["summary"]["rounds"], 2);
    let elko = &v["summary"]["targets"][0];
    assert_eq!(elko["name"], "elko");
    let p99 = &elko["figures"]["latency_p99_ms"];
    let (lo, med, hi) = (
        p99["min"].as_f64().expect("min"),
        p99["median"].as_f64().expect("median"),
        p99["max"].as_f64().expect("max"),
    );
    assert!(lo > 0.0 && lo <= med && med <= hi, "{p99}");
}

#[test]
fn a_running_cluster_is_measured_through_its_pids_or_metrics_endpoints() {
    let dir = bin_dir();
    ensure_servers(&dir);
    let cluster = elko_loadgen::procs::Cluster::start(&dir, 1, 1, true).expect("cluster");
    let director = cluster.client_addr.to_string();
    // The director through /proc, the context server through its /metrics.
    let director_pid = cluster.director.pid().to_string();
    let metrics = format!(
        "http://{}/metrics",
        cluster.contextds[0].admin_addr().expect("admin endpoint")
    );
    let mut args = SMALL.to_vec();
    args.extend(["--director", &director, "--server-pid", &director_pid]);
    args.extend(["--server-metrics", &metrics]);
    let v = run_json(&args, "existing");
    // Unnamed, the servers are not measured: their figures are null, not 0
    // (a limit on them is refused rather than passed for nothing).
    let mut unnamed = SMALL.to_vec();
    unnamed.extend(["--director", &director]);
    let u = run_json(&unnamed, "unmeasured");
    let (code, stderr) = loadgen_fails(&["chat", "--director", &director, "--threshold", "cpu<5"]);
    cluster.stop();
    assert_all_delivered(&u, 120);
    assert_eq!(u["server"]["processes"], serde_json::json!([]), "{u}");
    for k in ["cpu_percent_of_core", "rss_per_client_bytes"] {
        assert!(u["server"][k].is_null(), "server.{k} unmeasured: {u}");
    }
    assert!(u["server_cpu_us_per_delivery"].is_null(), "{u}");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "threshold 'cpu<5' judges the server's CPU or memory, which this run does not measure"
        ),
        "{stderr}"
    );
    assert_all_delivered(&v, 120);
    let procs = v["server"]["processes"].as_array().expect("processes");
    let names: Vec<&str> = procs.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["elko-director", metrics.as_str()], "{v}");
    assert!(
        procs[0]["pid"].as_u64().is_some() && procs[1]["pid"].is_null(),
        "{v}"
    );
    assert!(procs[0]["sockets"].as_u64() >= Some(2), "{v}");
    assert!(
        procs[1]["sockets"].is_null(),
        "not known through metrics: {v}"
    );
    assert!(procs[1]["cpu_percent_of_core"].as_f64() > Some(0.0), "{v}");
    assert!(procs[1]["rss_bytes"].as_u64() > Some(1 << 20), "{v}");
    assert!(v["server_cpu_us_per_delivery"].as_f64() > Some(0.0));

    // A process that does not exist, or an address with no metrics, is
    // refused before anything runs.
    for (flag, value, says) in [
        (
            "--server-pid",
            "4294967295",
            "--server-pid 4294967295: no such process",
        ),
        (
            "--server-metrics",
            director.as_str(),
            "no process_cpu_seconds_total there",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_elko-loadgen"))
            .args(["chat", "--director", &director, flag, value])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{stderr}");
    }
}
