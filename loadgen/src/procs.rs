//! Processes: starting a local cluster (or a peer server), and reading CPU
//! time, memory and sockets from `/proc`.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::generator::TargetKind;
use elko_engine::{clock_ticks, ProcStat};

/// CPU time (user + system) and resident memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

/// Sample `/proc/<pid>` (`None` for this process: `/proc/self`).
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    ProcStat::read(pid).map(|s| ProcSample {
        cpu_s: s.cpu_s,
        rss_bytes: s.rss_bytes,
    })
}

/// A server process's metrics endpoint (`--server-metrics`): its standard
/// `process_*` metrics give CPU time and memory where `/proc` cannot reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsUrl {
    pub addr: SocketAddr,
    pub path: String,
}

impl std::str::FromStr for MetricsUrl {
    type Err = String;

    /// `HOST:PORT`, `http://HOST:PORT` or `http://HOST:PORT/PATH` (default path `/metrics`).
    fn from_str(s: &str) -> Result<MetricsUrl, String> {
        let rest = s.strip_prefix("http://").unwrap_or(s);
        if rest.contains("://") {
            return Err(format!("{s}: only http:// is supported"));
        }
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
            .map_err(|e| format!("{s}: {e}"))?
            .next()
            .ok_or_else(|| format!("{s}: no address"))?;
        Ok(MetricsUrl {
            addr,
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for MetricsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

/// How long one scrape may take before its second counts as missing.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// Scrape `url` for `process_cpu_seconds_total` and
/// `process_resident_memory_bytes`; `None` if it cannot be reached or says
/// neither.
pub fn scrape(url: &MetricsUrl) -> Option<ProcSample> {
    let (status, body) =
        elko_cluster::admin::http_request_within(url.addr, "GET", &url.path, SCRAPE_TIMEOUT)
            .ok()?;
    if status != 200 {
        return None;
    }
    parse_process_metrics(&body)
}

/// The `process_*` CPU and memory samples of a Prometheus text exposition.
pub fn parse_process_metrics(text: &str) -> Option<ProcSample> {
    let value = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    let cpu_s = value("process_cpu_seconds_total")?;
    Some(ProcSample {
        cpu_s,
        rss_bytes: value("process_resident_memory_bytes").unwrap_or(0.0) as u64,
    })
}

/// The whole machine's CPU seconds (all cores, from `/proc/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineTimes {
    /// Busy: user, nice, system, irq, softirq, steal.
    pub busy_s: f64,
    /// Steal: time the hypervisor gave this VM's CPUs to someone else while
    /// they had work. Part of `busy_s`; nobody on this machine used it.
    pub steal_s: f64,
}

/// What the run ran on, for the report (a figure means little without it).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Machine {
    /// CPUs this process may run on.
    pub cpus: usize,
    /// The first processor's model name (`/proc/cpuinfo`).
    pub cpu_model: String,
    pub memory_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
    /// The kernel's default TCP congestion control
    /// (`net.ipv4.tcp_congestion_control`), which every socket of the run
    /// uses: it is part of each segment's cost (on this project's VM,
    /// sun2002 costs the context server ~7 % less CPU with `cubic` than
    /// with `bbr`, and Redis about as much).
    pub tcp_congestion_control: String,
    /// The `cpuidle` driver (`none`: an idle CPU halts, and waking it is
    /// part of every low-rate latency figure; see loadgen/RESULTS.md).
    pub cpuidle_driver: String,
}

impl Machine {
    /// This machine, as far as `/proc` tells.
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: proc_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            memory_bytes: meminfo_bytes("MemTotal").unwrap_or(0),
            kernel: first_line("/proc/sys/kernel/osrelease"),
            tcp_congestion_control: first_line("/proc/sys/net/ipv4/tcp_congestion_control"),
            cpuidle_driver: first_line("/sys/devices/system/cpu/cpuidle/current_driver"),
        }
    }

    /// "2 CPUs (Intel(R) Xeon(R) Processor), 24.0 GiB, Linux 6.18.44, TCP bbr,
    /// cpuidle none".
    pub fn describe(&self) -> String {
        format!(
            "{} CPU{} ({}), {:.1} GiB, Linux {}, TCP {}, cpuidle {}",
            self.cpus,
            if self.cpus == 1 { "" } else { "s" },
            self.cpu_model,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.kernel,
            self.tcp_congestion_control,
            self.cpuidle_driver
        )
    }
}

/// The value of `key` in a `key: value` text (`/proc/cpuinfo`, `/proc/meminfo`).
fn proc_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find(|l| l.split(':').next().map(str::trim) == Some(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// A `/proc/meminfo` figure in bytes (`MemTotal`, `MemAvailable`).
fn meminfo_bytes(key: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    proc_field(&meminfo, key)?
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// Memory the kernel could give new work without swapping (`MemAvailable`).
pub fn memory_available() -> Option<u64> {
    meminfo_bytes("MemAvailable")
}

/// A `/proc` or `/sys` file's first line, or "unknown".
fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The whole machine's CPU seconds so far.
pub fn machine_times() -> Option<MachineTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(MachineTimes {
        busy_s: busy / clock_ticks(),
        steal_s: v.get(7)? / clock_ticks(),
    })
}

/// A process's command name (`/proc/<pid>/comm`), or `pid <pid>`.
pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| format!("pid {pid}"))
}

/// The kernel's `ksoftirqd/N` threads: network work the kernel defers to
/// them is charged to neither the servers nor the generator.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// Sockets a process holds open (its connections and listeners).
pub fn socket_count(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l.to_string_lossy().starts_with("socket:"))
                    .unwrap_or(false)
            })
            .count() as u64,
    )
}

/// How long a started server gets to stop after SIGTERM (a contextd writes
/// every context's checkpoint first), in steps.
const STOP_WAIT_STEP: Duration = Duration::from_millis(50);
const STOP_WAIT_STEPS: u32 = 100;

/// A started server process, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub child: Child,
    pub line: String,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its operator endpoint, if it was started with one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        field(&self.line, "admin")
    }

    /// SIGTERM and wait (bounded), then SIGKILL, saying so: a server that
    /// does not stop gracefully within the bound has a bug worth seeing.
    /// True if it stopped by itself.
    pub fn stop(&mut self) -> bool {
        // Stopped already (its pid may belong to someone else by now).
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        // SAFETY: kill with a pid we spawned and a valid signal number.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..STOP_WAIT_STEPS {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(STOP_WAIT_STEP);
        }
        eprintln!(
            "elko-loadgen: WARNING: {} (pid {}) did not exit within {} s of SIGTERM; killed",
            self.name,
            self.child.id(),
            (STOP_WAIT_STEP * STOP_WAIT_STEPS).as_secs()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Why the cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path} not found: build it first (`cargo build --release`) or point --bin-dir at the directory holding it")]
    Missing { path: PathBuf },
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} did not report its address within 20 s (it printed {line:?})")]
    NoAddress { name: String, line: String },
    #[error("{name} is not installed (looked in $PATH, /usr/sbin, /usr/bin); install it (apt-get install {package}) or give --target-addr")]
    NotInstalled { name: String, package: String },
    #[error("{name} did not accept connections on {addr} within 20 s")]
    NotListening { name: String, addr: SocketAddr },
    #[error("no free port: {0}")]
    Port(std::io::Error),
}

/// Make a child die with the generator: it gets SIGTERM when the thread
/// that started it (the controller's) ends, however the generator ends. It
/// gets its own process group, so a Ctrl-C reaches only the controller,
/// which then stops the run in order and still reports.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        })
    }
}

fn spawn(bin: &Path, args: &[String], name: &str, prefix: &str) -> Result<Server, ClusterError> {
    if !bin.exists() {
        return Err(ClusterError::Missing {
            path: bin.to_path_buf(),
        });
    }
    let mut child = die_with_parent(&mut Command::new(bin))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("ELKO_CLUSTER_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| ClusterError::Spawn {
            name: name.into(),
            source,
        })?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(out) = stdout else { return };
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let server = Server {
        name: name.into(),
        child,
        line,
    };
    if !server.line.starts_with(prefix) {
        return Err(ClusterError::NoAddress {
            name: name.into(),
            line: server.line.clone(),
        });
    }
    Ok(server)
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

/// A director and N context servers on 127.0.0.1, ports chosen by the kernel.
#[derive(Debug)]
pub struct Cluster {
    pub director: Server,
    pub contextds: Vec<Server>,
    /// Event loops of each context server (`None`: left to the server,
    /// one per core).
    pub contextd_loops: Option<usize>,
    pub client_addr: SocketAddr,
    dir: PathBuf,
}

impl Cluster {
    /// Start from binaries in `bin_dir`; with `admin`, each server also
    /// serves its operator endpoint on a port of its own
    /// ([`Server::admin_addr`]).
    pub fn start(
        bin_dir: &Path,
        contextds: usize,
        workers: usize,
        admin: bool,
    ) -> Result<Cluster, ClusterError> {
        let admin_args: &[&str] = if admin {
            &["--admin-listen", "127.0.0.1:0"]
        } else {
            &[]
        };
        let args = |v: &[&str]| {
            v.iter()
                .chain(admin_args)
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        let director = spawn(
            &bin_dir.join("elko-director"),
            &args(&[
                "--client-listen",
                "127.0.0.1:0",
                "--provider-listen",
                "127.0.0.1:0",
            ]),
            "elko-director",
            "elko-director listening",
        )?;
        let line = director.line.clone();
        let (Some(client_addr), Some(provider_addr)) =
            (field(&line, "clients"), field(&line, "providers"))
        else {
            return Err(ClusterError::NoAddress {
                name: "elko-director".into(),
                line,
            });
        };
        let dir = std::env::temp_dir().join(format!("elko-loadgen-{}", std::process::id()));
        let mut servers = Vec::new();
        for i in 0..contextds.max(1) {
            let workers = if workers == 0 {
                "auto".to_string()
            } else {
                workers.to_string()
            };
            let mut a = vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--director".into(),
                provider_addr.to_string(),
                "--checkpoint-dir".into(),
                dir.display().to_string(),
                "--workers".into(),
                workers,
                "--provider-id".into(),
                format!("loadgen-contextd-{i}"),
            ];
            a.extend(admin_args.iter().map(|s| s.to_string()));
            servers.push(spawn(
                &bin_dir.join("elko-contextd"),
                &a,
                &format!("elko-contextd-{i}"),
                "elko-contextd listening",
            )?);
        }
        Ok(Cluster {
            director,
            contextds: servers,
            contextd_loops: (workers > 0).then_some(workers),
            client_addr,
            dir,
        })
    }

    /// Stop context server `i` (SIGTERM, then SIGKILL after 5 s) while the
    /// rest run on: its name, whether it exited by itself, and how long it
    /// took. `None` if there is no such server.
    pub fn stop_contextd(&mut self, i: usize) -> Option<(String, bool, Duration)> {
        let c = self.contextds.get_mut(i)?;
        let t = std::time::Instant::now();
        let clean = c.stop();
        Some((c.name.clone(), clean, t.elapsed()))
    }

    /// Stop everything (contextds first, so their checkpoints are written).
    pub fn stop(mut self) {
        for c in &mut self.contextds {
            c.stop();
        }
        self.director.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A peer server (Redis, NATS or `elko-minimal-fanout`) started on a free loopback port.
#[derive(Debug)]
pub struct PeerServer {
    pub server: Server,
    pub addr: SocketAddr,
}

/// Find an executable on `$PATH` or in the usual system directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl PeerServer {
    /// Start `redis-server` or `nats-server` (found on `$PATH`), or
    /// `elko-minimal-fanout` (from `bin_dir`, built with the generator).
    pub fn start(kind: TargetKind, bin_dir: &Path) -> Result<PeerServer, ClusterError> {
        let (prog, bin) = match kind {
            TargetKind::Minimal => {
                let bin = bin_dir.join("elko-minimal-fanout");
                if !bin.is_file() {
                    return Err(ClusterError::Missing { path: bin });
                }
                ("elko-minimal-fanout", bin)
            }
            _ => {
                let prog = if kind == TargetKind::Nats {
                    "nats-server"
                } else {
                    "redis-server"
                };
                let bin = find_program(prog).ok_or_else(|| ClusterError::NotInstalled {
                    name: prog.into(),
                    package: prog.into(),
                })?;
                (prog, bin)
            }
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(ClusterError::Port)?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let p = port.to_string();
        let listen_addr = addr.to_string();
        let max_clients = crate::plan::PEER_MAX_CLIENTS.to_string();
        let args: Vec<&str> = match kind {
            TargetKind::Minimal => vec![&listen_addr],
            // No persistence, loopback only, as many clients as descriptors allow.
            TargetKind::Redis => vec![
                "--port",
                &p,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--maxclients",
                &max_clients,
                "--loglevel",
                "warning",
                "--daemonize",
                "no",
            ],
            _ => vec!["-a", "127.0.0.1", "-p", &p],
        };
        let child = die_with_parent(&mut Command::new(&bin))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ClusterError::Spawn {
                name: prog.into(),
                source,
            })?;
        let server = Server {
            name: prog.into(),
            child,
            line: String::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(ClusterError::NotListening {
                    name: prog.into(),
                    addr,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(PeerServer { server, addr })
    }
}

/// Where the server binaries are: `--bin-dir`, or beside this executable.
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_urls_parse_with_or_without_scheme_and_path() {
        let u: MetricsUrl = "127.0.0.1:7702".parse().expect("host:port");
        assert_eq!(u.to_string(), "http://127.0.0.1:7702/metrics");
        let u: MetricsUrl = "http://127.0.0.1:9/x/metrics".parse().expect("url");
        assert_eq!((u.addr.port(), u.path.as_str()), (9, "/x/metrics"));
        assert!("https://127.0.0.1:1".parse::<MetricsUrl>().is_err());
        assert!("127.0.0.1".parse::<MetricsUrl>().is_err(), "no port");
    }

    #[test]
    fn process_metrics_are_read_from_an_exposition() {
        let text = "# HELP process_cpu_seconds_total Total user and system CPU time.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total_extra 99\n\
                    process_cpu_seconds_total 12.5\n\
                    process_resident_memory_bytes 1.048576e+07\n";
        assert_eq!(
            parse_process_metrics(text),
            Some(ProcSample {
                cpu_s: 12.5,
                rss_bytes: 10_485_760
            })
        );
        assert_eq!(parse_process_metrics("up 1\n"), None, "no CPU time");
        // What the servers serve parses.
        let mut ours = String::new();
        elko_engine::write_process_metrics(&mut ours);
        let s = parse_process_metrics(&ours).expect("ours");
        assert!(s.rss_bytes > 0);
    }

    #[test]
    fn a_server_that_ignores_sigterm_is_killed_after_the_bound() {
        // Each says "ready" once its signal disposition is set (an ignored
        // signal stays ignored across exec).
        let server = |script: &str| {
            let mut child = Command::new("sh")
                .args(["-c", &format!("{script} echo ready; exec sleep 20")])
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("ready");
            Server {
                name: "test-server".into(),
                child,
                line,
            }
        };
        let mut polite = server("");
        assert!(polite.stop(), "stops on SIGTERM");
        let mut stubborn = server("trap '' TERM;");
        let started = std::time::Instant::now();
        assert!(!stubborn.stop(), "needed SIGKILL");
        assert!(started.elapsed() >= STOP_WAIT_STEP * STOP_WAIT_STEPS);
        assert!(stubborn.child.try_wait().expect("wait").is_some(), "dead");
    }

    #[test]
    fn the_machine_is_described_from_proc() {
        let m = Machine::this();
        assert!(m.cpus >= 1);
        assert!(m.memory_bytes > 1 << 20, "{m:?}");
        assert!(!m.kernel.is_empty() && m.kernel != "unknown", "{m:?}");
        let d = m.describe();
        assert!(d.contains(&format!("Linux {}", m.kernel)), "{d}");
        assert!(d.contains(" GiB"), "{d}");
        assert!(
            d.contains(&format!("TCP {}", m.tcp_congestion_control)),
            "{d}"
        );
        assert_ne!(
            m.tcp_congestion_control, "unknown",
            "a Linux with TCP has one: {m:?}"
        );
    }

    #[test]
    fn this_process_has_cpu_and_memory() {
        let s = sample(None).expect("/proc/self");
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_s >= 0.0);
        assert!(sample(Some(u32::MAX)).is_none());
        let m = machine_times().expect("/proc/stat");
        assert!(m.busy_s >= s.cpu_s);
        assert!(m.steal_s >= 0.0 && m.steal_s <= m.busy_s);
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let n = socket_count(std::process::id()).expect("own fds");
        assert!(n >= 1);
        drop(l);
    }
}
