//! What a run does: clients, rooms, rates, durations. Presets and knobs.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A named starting point; every knob can still be overridden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The 2002 test: 8000 clients, 200 rooms of 40, each speaking every 30 s on average.
    Sun2002,
    /// The same at one utterance per client per second (320k deliveries/s).
    Frantic,
    /// As many clients as this machine holds (several generator and context
    /// server processes), at the 2002 rate.
    Scale,
    /// Raise the rate step by step until p99 passes 100 ms, then bisect to 5 %; report the best sustained rate.
    Max,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Sun2002 => "sun2002",
            Preset::Frantic => "frantic",
            Preset::Scale => "scale",
            Preset::Max => "max",
        }
    }
}

/// Every knob of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub preset: Preset,
    pub clients: usize,
    pub rooms: usize,
    /// Mean time between one client's utterances (Poisson arrivals).
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub interval: Duration,
    /// Steady-state length (measured).
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub duration: Duration,
    /// Time over which clients connect (excluded from the figures).
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub ramp: Duration,
    pub message_size: usize,
    pub seed: u64,
    /// Event loops per generator process.
    pub gen_loops: usize,
    /// Generator processes (rooms are dealt to them whole).
    pub gen_procs: usize,
    /// Event loops of each started contextd (0 until planned: then the
    /// cores the generator leaves, see `workers_beside_generator`).
    pub workers: usize,
    /// Context servers to start.
    pub contextds: usize,
    /// For `max`: length of each rate step.
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub step: Duration,
    /// Stop (SIGTERM) one started context server this long into the steady
    /// state: its clients re-enter through the director on the others (one
    /// step of a rolling restart). Seconds, or null.
    #[serde(
        default,
        serialize_with = "opt_secs",
        deserialize_with = "from_opt_secs"
    )]
    pub stop_contextd_at: Option<Duration>,
    /// Have the kernel stamp what arrives at each client socket, to time
    /// every delivery to the socket as well as to the generator's read
    /// (`latency_at_socket_us`). Off (`--no-socket-stamps`) saves the
    /// generator a few percent of a core when it is the bottleneck.
    #[serde(default = "yes")]
    pub socket_stamps: bool,
    /// Run the generator's loops under `SCHED_BATCH`, so that a delivery's
    /// wake-up never preempts the server in the middle of its fanout (the
    /// generator still gets its fair share of the CPU). Off
    /// (`--no-batch-sched`): the generator's wake-ups preempt like any
    /// client's on the same machine.
    #[serde(default = "yes")]
    pub batch_sched: bool,
}

fn yes() -> bool {
    true
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn from_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = f64::deserialize(d)?;
    Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn from_opt_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<f64>::deserialize(d)?
        .map(|v| Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom))
        .transpose()
}

/// Descriptors a generator process needs for `clients` clients: one socket
/// each, a few briefly two (the director's, while entering), and its own.
pub fn gen_fds_needed(clients: usize) -> u64 {
    let c = clients as u64;
    c + c / 20 + 64
}

/// Descriptors a context server needs to hold `clients` connections in
/// `rooms` active rooms: one per connection, one lock file per room, and the
/// engine's headroom (below it, the server refuses newcomers SERVER_FULL;
/// see `elko_engine::FD_HEADROOM`), plus its director links.
pub fn contextd_fds_needed(clients: usize, rooms: usize) -> u64 {
    (clients + rooms + elko_engine::FD_HEADROOM + 16) as u64
}

/// The descriptor limit this program and the servers it starts run with:
/// the soft `RLIMIT_NOFILE`, raised to the hard limit (children inherit it).
pub fn fd_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| elko_engine::raise_fd_limit(1 << 20).unwrap_or(1024))
}

/// This machine's cores (what the servers started here and the generator
/// share).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Client connections per source address before ports run short (the
/// ephemeral range is about 28,000 ports).
pub const CLIENTS_PER_SOURCE_IP: usize = 25_000;

impl Scenario {
    /// The preset's values.
    pub fn preset(p: Preset) -> Scenario {
        let base = Scenario {
            preset: p,
            clients: 8000,
            rooms: 200,
            interval: Duration::from_secs(30),
            duration: Duration::from_secs(60),
            ramp: Duration::from_secs(10),
            message_size: 64,
            seed: 2002,
            gen_loops: 1,
            gen_procs: 1,
            workers: 0,
            contextds: 1,
            step: Duration::from_secs(10),
            stop_contextd_at: None,
            socket_stamps: true,
            batch_sched: true,
        };
        match p {
            Preset::Sun2002 => base,
            Preset::Frantic => Scenario {
                interval: Duration::from_secs(1),
                ..base
            },
            Preset::Scale => Scenario {
                clients: 50_000,
                rooms: 1250,
                ramp: Duration::from_secs(40),
                gen_procs: 3,
                contextds: 3,
                // Three context servers on a small machine: one loop each.
                workers: 1,
                ..base
            },
            Preset::Max => Scenario {
                // 40k deliveries/s at first, then 1/0.7 times more each step
                // until the knee, then bisection, then the best rate held
                // and lowered until it holds (loadgen/src/stepper.rs): 24
                // steps of 10 s reach 2M deliveries/s, bisect to 5 % and
                // leave time for a hold or two.
                interval: Duration::from_secs(8),
                duration: Duration::from_secs(240),
                ..base
            },
        }
    }

    /// `scale` sized for a machine with `cores` CPUs and `mem_available`
    /// bytes free: 25 000 clients a core at the 2002 rate (on this project's
    /// 2-core VM, 50 000 kept p99 under 3 ms with the machine 40 % busy, and
    /// 100 000 saturated it), at most what half the free memory holds
    /// ([`crate::plan::BYTES_PER_CLIENT`] each), in rooms of 40, over one
    /// context server and one generator process per core plus one (each
    /// server one loop). The plan adds processes if descriptors need more.
    pub fn scale_for(cores: usize, mem_available: Option<u64>) -> Scenario {
        let by_cores = 25_000 * cores.max(1);
        let by_memory = mem_available.map_or(usize::MAX, |m| {
            usize::try_from(m / 2 / crate::plan::BYTES_PER_CLIENT).unwrap_or(usize::MAX)
        });
        let clients = by_cores.min(by_memory).max(40);
        Scenario {
            clients,
            rooms: clients.div_ceil(40),
            gen_procs: cores.max(1) + 1,
            contextds: cores.max(1) + 1,
            ..Scenario::preset(Preset::Scale)
        }
    }

    /// The generator processes this run needs: as asked, and at least enough
    /// for each to fit the descriptor limit ([`fd_limit`]).
    pub fn processes(&self) -> usize {
        self.processes_within(fd_limit())
    }

    /// [`processes`](Self::processes) under descriptor limit `limit`. Never
    /// more than one per room (rooms are dealt whole); if even that does not
    /// fit, the generator says so when it starts.
    pub fn processes_within(&self, limit: u64) -> usize {
        let first = self.gen_procs.max(1).min(self.rooms.max(1));
        (first..self.rooms.max(1))
            .find(|&k| gen_fds_needed(self.share_bound(k).0) <= limit)
            .unwrap_or(self.rooms.max(1))
    }

    /// The context servers to start: as asked, and at least enough for each
    /// to hold its share of the clients within descriptor limit `limit`
    /// (directors spread rooms evenly over them). `Err` says which limit
    /// stops the run when no number of servers does.
    pub fn contextds_within(&self, limit: u64) -> Result<usize, String> {
        let first = self.contextds.max(1).min(self.rooms.max(1));
        let fits = |k: usize| {
            let (clients, rooms) = self.share_bound(k);
            contextd_fds_needed(clients, rooms) <= limit
        };
        (first..=self.rooms.max(1))
            .find(|&k| fits(k))
            .ok_or_else(|| {
                format!(
                    "a room of {} clients does not fit one context server: a room lives on one \
                 server, which may hold {} connections with its descriptor limit of {limit} \
                 (hard RLIMIT_NOFILE); use smaller rooms (--rooms, --fanout)",
                    self.clients.div_ceil(self.rooms.max(1)),
                    limit.saturating_sub(contextd_fds_needed(0, 1)),
                )
            })
    }

    /// Event loops for each started context server when none were asked
    /// for: the cores the generator's loops leave, shared by the context
    /// servers, at least one each. They share this machine, and loops
    /// beyond its cores only take turns with each other and with the
    /// generator: at sun2002 on 2 cores, a context server with 2 loops
    /// beside the generator's 1 had a fanout spread p99 of 0.65 ms, with
    /// 1 loop 0.40 ms, for the same CPU per delivery.
    pub fn workers_beside_generator(&self, cores: usize) -> usize {
        let generator = self.gen_procs.max(1) * self.gen_loops.max(1);
        (cores.saturating_sub(generator) / self.contextds.max(1)).max(1)
    }

    /// Most clients and rooms one of `k` processes gets when rooms are dealt
    /// whole and evenly (round-robin, the larger rooms first).
    pub(crate) fn share_bound(&self, k: usize) -> (usize, usize) {
        let rooms = self.rooms.max(1);
        let per_process = rooms.div_ceil(k.max(1));
        (per_process * self.clients.div_ceil(rooms), per_process)
    }

    /// The clients of generator process `share` of `shares`, dealt to `loops`
    /// loops. A room lives wholly in one process (its expected fanout is then
    /// known locally); within a process clients are dealt round-robin.
    pub fn deal(&self, share: usize, shares: usize, loops: usize) -> Vec<Vec<usize>> {
        let rooms = self.rooms.max(1);
        let mut out = vec![Vec::new(); loops.max(1)];
        let mine = (0..self.clients).filter(|i| (i % rooms) % shares.max(1) == share);
        for (n, i) in mine.enumerate() {
            out[n % loops.max(1)].push(i);
        }
        out
    }

    /// Members per room (rounded down; the first `clients % rooms` rooms get one more).
    pub fn fanout(&self) -> f64 {
        self.clients as f64 / self.rooms.max(1) as f64
    }

    /// Utterances per second the scenario asks for.
    pub fn target_utterances_per_s(&self) -> f64 {
        self.clients as f64 / self.interval.as_secs_f64()
    }

    /// Deliveries per second the scenario asks for (every member hears every utterance).
    pub fn target_deliveries_per_s(&self) -> f64 {
        self.deliveries_per_round() / self.interval.as_secs_f64()
    }

    /// Deliveries when every client speaks once: the sum over rooms of
    /// n_r^2, with rooms as even as they get.
    fn deliveries_per_round(&self) -> f64 {
        let (q, r) = (
            self.clients / self.rooms.max(1),
            self.clients % self.rooms.max(1),
        );
        (r * (q + 1) * (q + 1) + (self.rooms - r) * q * q) as f64
    }

    /// Set the mean interval so that the scenario asks for `rate`
    /// deliveries per second; refused when that needs an interval under
    /// 1 ms or over [`MAX_PHASE`].
    pub fn set_rate(&mut self, rate: f64) -> Result<(), String> {
        let secs = self.deliveries_per_round() / rate;
        let d = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        if d < Duration::from_millis(1) {
            return Err(format!(
                "--rate {rate}: each of the {} clients would speak more than 1000 times a second; add clients or rooms' members",
                self.clients
            ));
        }
        if d > MAX_PHASE {
            return Err(format!(
                "--rate {rate}: each client would speak less than once a week"
            ));
        }
        self.interval = d;
        Ok(())
    }
}

/// The longest any phase of a run may be (a week): every run ends by itself.
pub const MAX_PHASE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The largest utterance the generator will send: the protocol's frame
/// ceiling. An Elko server's own limit (`Welcome.limits.max_text_len`) is
/// checked when each client connects.
pub const MAX_MESSAGE_SIZE: usize = elko_protocol::MAX_FRAME_CEILING as usize;

// Command-line values, checked as they are parsed so that a bad knob is
// refused with a reason instead of being clamped into a different run.

/// A count (`--clients`, `--rooms`, `--workers`, ...): a whole number, at least 1.
pub fn parse_count(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number ({e})")),
    }
}

/// Seconds (fractions allowed) from `min` up to [`MAX_PHASE`].
fn parse_secs(v: &str, min: Duration) -> Result<Duration, String> {
    let x: f64 = v
        .trim()
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    if x.is_nan() || x < 0.0 {
        return Err("must be a number of seconds, not negative".into());
    }
    let max = MAX_PHASE.as_secs_f64();
    if x > max {
        return Err(format!(
            "at most {max} s (a week): every run ends by itself"
        ));
    }
    let d = Duration::from_secs_f64(x);
    if d < min {
        return Err(format!("at least {} s", min.as_secs_f64()));
    }
    Ok(d)
}

/// `--interval`: at least 1 ms.
pub fn parse_interval(v: &str) -> Result<Duration, String> {
    parse_secs(v, Duration::from_millis(1))
}

/// `--duration` and `--step`: at least 1 s (figures are taken per second).
pub fn parse_period(v: &str) -> Result<Duration, String> {
    parse_secs(v, Duration::from_secs(1))
}

/// `--ramp`: zero (everyone at once) or more.
pub fn parse_ramp(v: &str) -> Result<Duration, String> {
    parse_secs(v, Duration::ZERO)
}

/// The factor of a rate's suffix: none, `k` or `M` (None: another).
pub fn rate_scale(unit: &str) -> Option<f64> {
    match unit {
        "" => Some(1.0),
        "k" => Some(1e3),
        "M" => Some(1e6),
        _ => None,
    }
}

/// `--rate`: deliveries per second, a positive number, with `k` or `M` for
/// thousands and millions (`160k`, `2.5M`).
pub fn parse_rate(v: &str) -> Result<f64, String> {
    let v = v.trim();
    let num_end = v.trim_end_matches(['k', 'M']).len();
    let (num, unit) = v.split_at(num_end);
    match (num.parse::<f64>(), rate_scale(unit)) {
        (Ok(x), Some(scale)) if x.is_finite() && x > 0.0 => Ok(x * scale),
        _ => Err("deliveries per second: a positive number, or with k or M (160k, 2.5M)".into()),
    }
}

/// `--message-size`: from the payload header's length to [`MAX_MESSAGE_SIZE`].
pub fn parse_message_size(v: &str) -> Result<usize, String> {
    let n = parse_count(v)?;
    let min = crate::payload::HEADER_LEN;
    if n < min {
        return Err(format!(
            "at least {min} bytes (the header receivers read the send time from)"
        ));
    }
    if n > MAX_MESSAGE_SIZE {
        return Err(format!(
            "at most {MAX_MESSAGE_SIZE} bytes (the protocol's frame ceiling)"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sun2002_is_the_2002_test() {
        let s = Scenario::preset(Preset::Sun2002);
        assert_eq!((s.clients, s.rooms), (8000, 200));
        assert_eq!(s.fanout(), 40.0);
        assert!((s.target_utterances_per_s() - 266.67).abs() < 0.01);
        assert!((s.target_deliveries_per_s() - 10_666.7).abs() < 0.1);
        let f = Scenario::preset(Preset::Frantic);
        assert_eq!(f.target_deliveries_per_s(), 320_000.0);
    }

    #[test]
    fn dealing_keeps_rooms_whole_and_loses_nobody() {
        let s = Scenario {
            clients: 1000,
            rooms: 30,
            ..Scenario::preset(Preset::Sun2002)
        };
        let mut seen = vec![0; 1000];
        for share in 0..4 {
            let loops = s.deal(share, 4, 2);
            assert_eq!(loops.len(), 2);
            assert!(loops[0].len().abs_diff(loops[1].len()) <= 1);
            for &i in loops.iter().flatten() {
                seen[i] += 1;
                assert_eq!((i % 30) % 4, share, "client {i}'s room is in share {share}");
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn big_runs_take_several_processes() {
        let mut s = Scenario::preset(Preset::Sun2002);
        assert_eq!(s.processes_within(20_000), 1);
        s.clients = 19_000;
        s.rooms = 475;
        // 19 000 + 950 + 64 descriptors do not fit 20 000.
        assert_eq!(s.processes_within(20_000), 2);
        assert_eq!(s.processes_within(30_000), 1);
        s.clients = 40_000;
        s.rooms = 1000;
        assert_eq!(s.processes_within(20_000), 3);
        s.rooms = 2;
        assert_eq!(
            s.processes_within(20_000),
            2,
            "no more processes than rooms"
        );
        let scale = Scenario::preset(Preset::Scale);
        assert_eq!(scale.processes_within(20_000), 3);
    }

    #[test]
    fn scale_is_sized_for_the_machine() {
        const GIB: u64 = 1 << 30;
        let here = Scenario::scale_for(2, Some(23 * GIB));
        let preset = Scenario::preset(Preset::Scale);
        assert_eq!(
            (here.clients, here.rooms, here.gen_procs, here.contextds),
            (
                preset.clients,
                preset.rooms,
                preset.gen_procs,
                preset.contextds
            ),
            "this project's machine: the measured preset"
        );
        let big = Scenario::scale_for(64, Some(512 * GIB));
        assert_eq!(
            (big.clients, big.rooms, big.contextds),
            (1_600_000, 40_000, 65)
        );
        // Memory-bound: half of 8 GiB at 12 KiB a client.
        let small = Scenario::scale_for(64, Some(8 * GIB));
        assert_eq!(small.clients, 349_525);
        assert_eq!(small.workers, 1);
    }

    #[test]
    fn context_servers_are_added_until_each_holds_its_share() {
        let mut s = Scenario::preset(Preset::Sun2002);
        assert_eq!(s.contextds_within(20_000), Ok(1));
        s.contextds = 2;
        assert_eq!(s.contextds_within(20_000), Ok(2), "as asked when it fits");
        s.contextds = 1;
        s.clients = 30_000;
        s.rooms = 750;
        assert_eq!(s.contextds_within(20_000), Ok(2));
        assert_eq!(s.contextds_within(4096), Ok(9));
        let scale = Scenario::preset(Preset::Scale);
        assert_eq!(scale.contextds_within(20_000), Ok(3));
        // One room cannot be split.
        s.rooms = 1;
        let why = s.contextds_within(20_000).expect_err("a room of 30 000");
        assert!(
            why.contains("a room of 30000 clients does not fit one context server"),
            "{why}"
        );
        assert!(why.contains("limit of 20000"), "{why}");
    }

    #[test]
    fn the_scenario_round_trips_through_json() {
        let s = Scenario::preset(Preset::Scale);
        let back: Scenario =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
        assert_eq!(
            (back.clients, back.interval, back.ramp),
            (s.clients, s.interval, s.ramp)
        );
        assert_eq!(back.stop_contextd_at, None);
        let stop = Scenario {
            stop_contextd_at: Some(Duration::from_millis(2500)),
            ..s
        };
        let back: Scenario =
            serde_json::from_str(&serde_json::to_string(&stop).expect("json")).expect("parse");
        assert_eq!(back.stop_contextd_at, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn a_rate_sets_the_interval() {
        let mut s = Scenario::preset(Preset::Sun2002);
        s.set_rate(160_000.0).expect("160k");
        assert_eq!(s.interval, Duration::from_secs(2));
        assert!((s.target_deliveries_per_s() - 160_000.0).abs() < 1e-6);
        let e = s.set_rate(1e9).expect_err("too fast");
        assert!(e.contains("more than 1000 times a second"), "{e}");
        assert!(s
            .set_rate(1e-9)
            .expect_err("too slow")
            .contains("once a week"));
        assert_eq!(s.interval, Duration::from_secs(2), "unchanged when refused");
    }

    #[test]
    fn uneven_rooms_count_exactly() {
        let s = Scenario {
            clients: 10,
            rooms: 3,
            interval: Duration::from_secs(1),
            ..Scenario::preset(Preset::Sun2002)
        };
        // rooms of 4, 3, 3: 16 + 9 + 9
        assert_eq!(s.target_deliveries_per_s(), 34.0);
    }

    /// The reason a value was refused.
    fn refused<T: std::fmt::Debug>(r: Result<T, String>) -> String {
        match r {
            Err(why) => why,
            Ok(v) => panic!("accepted as {v:?}"),
        }
    }

    #[test]
    fn bad_knobs_are_refused_with_a_reason() {
        assert_eq!(parse_count("40"), Ok(40));
        assert_eq!(parse_count("0"), Err("must be at least 1".into()));
        assert!(refused(parse_count("-3")).contains("whole number"));
        assert!(refused(parse_count("4.5")).contains("whole number"));

        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_interval("0"), Err("at least 0.001 s".into()));
        for bad in ["-1", "nan", "NaN"] {
            assert!(
                refused(parse_interval(bad)).contains("not negative"),
                "{bad}"
            );
        }
        for big in ["inf", "1e300", "604801"] {
            assert!(refused(parse_period(big)).contains("a week"), "{big}");
        }
        assert!(refused(parse_period("1e")).contains("not a number"));
        assert_eq!(parse_period("0.5"), Err("at least 1 s".into()));
        assert_eq!(parse_period("604800"), Ok(MAX_PHASE));
        assert_eq!(parse_ramp("0"), Ok(Duration::ZERO));

        assert_eq!(parse_rate("160k"), Ok(160_000.0));
        assert_eq!(parse_rate("2.5M"), Ok(2_500_000.0));
        assert_eq!(parse_rate("10667"), Ok(10_667.0));
        for bad in ["0", "-5k", "inf", "fast", "5G", "1kM"] {
            assert!(
                refused(parse_rate(bad)).contains("positive number"),
                "{bad}"
            );
        }

        assert_eq!(parse_message_size("64"), Ok(64));
        assert!(refused(parse_message_size("16")).contains("at least 56"));
        assert!(refused(parse_message_size("100000000")).contains("frame ceiling"));
    }
}
