//! CPU time: of named threads of this process, and of the whole machine.
//!
//! A bench that runs server and clients in one process must charge CPU to the
//! server alone, so it reads per-thread figures: `/proc/self/task/*/schedstat`
//! (time on CPU in nanoseconds), falling back to `stat`'s utime + stime in
//! clock ticks (10 ms, too coarse for short runs) where the kernel has no
//! schedstat. Engine threads are named `"<server_id>-loop<i>"`, so a prefix
//! selects one engine's loops.
//!
//! Kernel work done in a thread's context counts as that thread's time: on
//! loopback, a `send` also runs the receive path into the peer's socket
//! (softirq), so a sender is charged for part of its receiver's work. (With
//! `CONFIG_IRQ_TIME_ACCOUNTING` on, softirq time is accounted apart instead.)
//! [`MachineCpu`] reads the machine-wide split from `/proc/stat`, so a report
//! can check that the threads it names account for the busy time.

use std::fs;
use std::path::Path;

/// CPU time, in seconds, of this process's threads whose name starts with
/// `prefix`.
pub fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
        .map(|t| thread_cpu_seconds(&t.path()))
        .sum()
}

/// CPU time, in seconds, of this whole process: every thread, including
/// threads that have exited (whose time `/proc/self/task` no longer lists).
pub fn process_cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: initialized by getrusage (or zeroed, which is a valid rusage).
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// CPU time of one thread, given its `/proc/self/task/<tid>` directory.
fn thread_cpu_seconds(task: &Path) -> f64 {
    // schedstat: "<ns on cpu> <ns waiting> <timeslices>".
    if let Some(ns) = fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
    {
        return ns as f64 * 1e-9;
    }
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = fs::read_to_string(task.join("stat")).unwrap_or_default();
    // After the ")" that ends the command name, state is field 3; utime and
    // stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) as f64 / ticks
}

/// Machine-wide CPU time by kind, in seconds summed over all cores (the
/// first line of `/proc/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineCpu {
    /// User time (nice included).
    pub user: f64,
    /// System time outside interrupts.
    pub system: f64,
    /// Hard and soft interrupt time.
    pub irq: f64,
    /// Idle and I/O wait.
    pub idle: f64,
    /// Time taken by the hypervisor from this guest.
    pub steal: f64,
}

impl MachineCpu {
    /// Read the counters now (zeros if `/proc/stat` is unreadable).
    pub fn read() -> MachineCpu {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return MachineCpu::default();
        };
        // cpu user nice system idle iowait irq softirq steal ...
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse::<u64>().unwrap_or(0) as f64 / ticks)
            .collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0.0);
        MachineCpu {
            user: g(0) + g(1),
            system: g(2),
            irq: g(5) + g(6),
            idle: g(3) + g(4),
            steal: g(7),
        }
    }

    /// The time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &MachineCpu) -> MachineCpu {
        MachineCpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            irq: self.irq - earlier.irq,
            idle: self.idle - earlier.idle,
            steal: self.steal - earlier.steal,
        }
    }

    /// Busy time: everything but idle.
    pub fn busy(&self) -> f64 {
        self.user + self.system + self.irq + self.steal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn cpu_time_of_a_busy_named_thread_is_seen() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (spun_tx, spun_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("cpu-probe".into())
            .spawn(move || {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                let _ = spun_tx.send(());
                let _ = done_rx.recv();
            })
            .expect("spawn");
        spun_rx.recv().expect("spun");
        let cpu = threads_cpu_seconds("cpu-probe");
        // At least 100 ms of the 300 ms even on a loaded machine; never more
        // than the wall time it had.
        assert!(
            (0.1..2.0).contains(&cpu),
            "a thread that spun 300 ms shows {cpu} s of CPU"
        );
        assert_eq!(threads_cpu_seconds("no-such-thread"), 0.0);
        drop(done_tx);
        t.join().expect("join");
    }

    #[test]
    fn machine_cpu_moves_forward() {
        let a = MachineCpu::read();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        let d = MachineCpu::read().since(&a);
        assert!(d.busy() + d.idle > 0.0, "no time passed: {d:?}");
        assert!(d.busy() >= 0.0 && d.idle >= 0.0);
    }
}
