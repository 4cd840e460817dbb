//! This process's resource use, as Prometheus's standard `process_*`
//! metrics (the names every process collector exports, so existing
//! dashboards and alerts apply), read from `/proc` at scrape time.
//!
//! [`ProcStat::read`] is also how tools read another process's CPU time and
//! memory (the load generator measures the servers it starts with it).

use crate::stats::write_metric_family;
use std::path::PathBuf;

/// What `/proc/<pid>/stat` says about a process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStat {
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Virtual memory, bytes.
    pub vsize_bytes: u64,
    pub threads: u64,
    /// When the process started, seconds since boot.
    pub start_s: f64,
}

/// Clock ticks per second (`/proc` times are in ticks).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(1) as u64
}

fn proc_dir(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}")),
        None => PathBuf::from("/proc/self"),
    }
}

impl ProcStat {
    /// Read process `pid` (`None`: this process). `None` if it does not
    /// exist (or `/proc` cannot show it).
    pub fn read(pid: Option<u32>) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(proc_dir(pid).join("stat")).ok()?;
        ProcStat::parse(&stat, clock_ticks(), page_size())
    }

    /// Parse the text of a `stat` file. The command name (field 2) may hold
    /// spaces and parentheses, so fields are counted after its last `)`.
    pub fn parse(stat: &str, ticks_per_s: f64, page: u64) -> Option<ProcStat> {
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // f[0] is field 3 (state): field n is f[n - 3].
        let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        Some(ProcStat {
            cpu_s: (num(14)? + num(15)?) as f64 / ticks_per_s,
            threads: num(20)?,
            start_s: num(22)? as f64 / ticks_per_s,
            vsize_bytes: num(23)?,
            rss_bytes: num(24)? * page,
        })
    }
}

/// Descriptors process `pid` (`None`: this one) holds open.
pub fn open_fds(pid: Option<u32>) -> Option<u64> {
    Some(std::fs::read_dir(proc_dir(pid).join("fd")).ok()?.count() as u64)
}

/// The machine's boot time, seconds since the Unix epoch (`btime` in `/proc/stat`).
fn boot_time_s() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open descriptors.
pub(crate) fn max_fds() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r.rlim_cur)
}

/// Log through `tracing` to stderr, filtered by `RUST_LOG` (else by
/// `default`, e.g. `"info"`), coloured only when stderr is a terminal: a log
/// file, a pipe or journald gets plain text, not escape codes. For the
/// servers' and tools' `main`; once per process.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Put the calling thread under `SCHED_BATCH`: the same share of the CPU
/// as an ordinary thread, but the scheduler takes it for CPU-bound, so its
/// wake-ups never preempt the task running where it wakes; it runs when that
/// task sleeps, on another idle CPU, or at the next tick.
///
/// For a load generator sharing the machine with the server it measures:
/// otherwise every arriving delivery's wake-up may preempt the server in
/// the middle of a fanout (a sync wake-up lands the reader on the writer's
/// CPU), charging the server two context switches and lengthening the rest
/// of the fanout. Fails only where the kernel has no `SCHED_BATCH`.
pub fn batch_scheduling() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; the kernel reads `param`.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// [`batch_scheduling`] for the thread of event loop `loop_idx` (the
/// engine's, or a tool's own loops), warning rather than failing if the
/// kernel refuses: the loop runs either way.
pub fn batch_scheduling_for_loop(loop_idx: usize) {
    if let Err(e) = batch_scheduling() {
        tracing::warn!(loop_idx, "could not run the loop as SCHED_BATCH: {e}");
    }
}

/// Append this process's `process_*` metrics (CPU seconds, resident and
/// virtual memory, open and maximum descriptors, threads, start time).
/// Whatever `/proc` cannot tell is left out rather than reported as 0.
pub fn write_process_metrics(out: &mut String) {
    let stat = ProcStat::read(None);
    let families: [(&str, &str, &str, Option<String>); 7] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stat.map(|s| format!("{:.2}", s.cpu_s)),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            stat.map(|s| s.rss_bytes.to_string()),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stat.map(|s| s.vsize_bytes.to_string()),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open_fds(None).map(|n| n.to_string()),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds().map(|n| n.to_string()),
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            stat.map(|s| s.threads.to_string()),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            stat.zip(boot_time_s())
                .map(|(s, boot)| format!("{:.2}", boot as f64 + s.start_s)),
        ),
    ];
    for (name, kind, help, value) in families {
        if let Some(v) = value {
            write_metric_family(out, name, kind, help, [("", v)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's descriptor table size (`FDSize` in /proc/self/status).
    fn fd_table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize")
    }

    #[test]
    fn the_descriptor_table_is_reserved_up_front_and_no_descriptor_is_left_open() {
        let limit = crate::raise_fd_limit(1 << 20).expect("rlimit");
        let want = limit.min(8192);
        crate::reserve_fd_table(want).expect("reserve");
        assert!(
            fd_table_size() >= want,
            "FDSize {} < {want}",
            fd_table_size()
        );
        let probe = format!("/proc/self/fd/{}", want - 1);
        assert!(
            !std::path::Path::new(&probe).exists(),
            "the probe is closed"
        );
        // Asking past the soft limit reserves up to it and does not fail.
        crate::reserve_fd_table(u64::MAX).expect("clamped to the limit");
        crate::reserve_fd_table(0).expect("nothing to do");
    }

    #[test]
    fn a_stat_line_parses_even_with_a_hostile_command_name() {
        // Fields 3.. of a real line, after a command name with ") (" in it.
        let line = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 150 0 0 20 0 \
                    7 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = ProcStat::parse(line, 100.0, 4096).expect("parses");
        assert_eq!(s.cpu_s, 4.0, "utime 250 + stime 150 ticks at 100/s");
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_s, 123.45);
        assert_eq!(s.vsize_bytes, 104_857_600);
        assert_eq!(s.rss_bytes, 2560 * 4096);
        assert_eq!(ProcStat::parse("4242 (torn", 100.0, 4096), None);
        assert_eq!(ProcStat::parse("4242 (x) S 1 2", 100.0, 4096), None);
    }

    #[test]
    fn a_thread_can_put_itself_under_batch_scheduling_and_only_itself() {
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let inside = std::thread::spawn(move || {
            batch_scheduling().expect("SCHED_BATCH");
            policy()
        })
        .join()
        .expect("thread");
        assert_eq!(inside, libc::SCHED_BATCH);
        assert_eq!(policy(), before, "the spawning thread is left as it was");
    }

    #[test]
    fn this_process_reports_itself() {
        let s = ProcStat::read(None).expect("/proc/self/stat");
        assert!(s.rss_bytes > 0 && s.threads >= 1, "{s:?}");
        assert!(open_fds(None).expect("/proc/self/fd") >= 3);
        assert_eq!(ProcStat::read(Some(u32::MAX)), None, "no such process");
        let mut out = String::new();
        write_process_metrics(&mut out);
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            let sample = out
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{family} ")))
                .unwrap_or_else(|| panic!("no {family} in {out}"));
            let v: f64 = sample.parse().expect("a number");
            assert!(v >= 0.0, "{family} {v}");
        }
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
    }
}
