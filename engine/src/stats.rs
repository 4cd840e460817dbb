//! Per-loop counters, readable from any thread.

use crate::close::CloseKind;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Counters of one event loop. Written only by the loop's thread (relaxed
/// atomics cost a plain store there), read by anyone holding the handle.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Connections currently open on this loop.
    pub connections: AtomicU64,
    /// Connections accepted (and adopted) since start.
    pub accepted: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Frames queued for sending.
    pub frames_out: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// `send`/`sendmsg` calls.
    pub writes: AtomicU64,
    /// Nanoseconds spent working (not waiting in `epoll_wait`).
    pub busy_ns: AtomicU64,
    /// Loop passes.
    pub passes: AtomicU64,
    /// Mailbox messages handled.
    pub mail: AtomicU64,
    /// Accepts refused because the process ran out of descriptors.
    pub fd_exhausted: AtomicU64,
    /// Pings sent to quiet peers.
    pub pings: AtomicU64,
    /// Of those, Pings that found no frame to travel with and went in a
    /// write of their own.
    pub pings_alone: AtomicU64,
    closed: [AtomicU64; CloseKind::COUNT],
}

impl LoopStats {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub(crate) fn count_close(&self, kind: CloseKind) {
        Self::add(&self.closed[kind as usize], 1);
    }

    /// Connections closed for reason `kind` since start.
    pub fn closed(&self, kind: CloseKind) -> u64 {
        self.closed[kind as usize].load(Relaxed)
    }

    /// Read a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> LoopStatsSnapshot {
        LoopStatsSnapshot {
            connections: self.connections.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            writes: self.writes.load(Relaxed),
            busy_ns: self.busy_ns.load(Relaxed),
            passes: self.passes.load(Relaxed),
            mail: self.mail.load(Relaxed),
            fd_exhausted: self.fd_exhausted.load(Relaxed),
            pings: self.pings.load(Relaxed),
            pings_alone: self.pings_alone.load(Relaxed),
            closed: std::array::from_fn(|i| self.closed[i].load(Relaxed)),
        }
    }
}

/// A copy of [`LoopStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStatsSnapshot {
    pub connections: u64,
    pub accepted: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub writes: u64,
    pub busy_ns: u64,
    pub passes: u64,
    pub mail: u64,
    pub fd_exhausted: u64,
    pub pings: u64,
    pub pings_alone: u64,
    /// Indexed by `CloseKind as usize`.
    pub closed: [u64; CloseKind::COUNT],
}

/// One metric family of [`write_prometheus`]: name suffix, type, help, value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&LoopStatsSnapshot) -> u64,
);

const FAMILIES: [Family; 13] = [
    (
        "connections",
        "gauge",
        "Connections open on the loop.",
        |s| s.connections,
    ),
    (
        "accepted_total",
        "counter",
        "Connections accepted (or adopted) by the loop.",
        |s| s.accepted,
    ),
    ("frames_in_total", "counter", "Frames received.", |s| {
        s.frames_in
    }),
    ("bytes_in_total", "counter", "Bytes received.", |s| {
        s.bytes_in
    }),
    (
        "frames_out_total",
        "counter",
        "Frames queued for sending.",
        |s| s.frames_out,
    ),
    (
        "bytes_out_total",
        "counter",
        "Bytes written to sockets.",
        |s| s.bytes_out,
    ),
    ("writes_total", "counter", "send/sendmsg calls.", |s| {
        s.writes
    }),
    (
        "busy_seconds_total",
        "counter",
        "Time spent working, not waiting in epoll_wait (nanosecond counter, exported in seconds).",
        |s| s.busy_ns,
    ),
    ("passes_total", "counter", "Event-loop passes.", |s| {
        s.passes
    }),
    ("mail_total", "counter", "Mailbox messages handled.", |s| {
        s.mail
    }),
    (
        "fd_exhausted_total",
        "counter",
        "Accepts that found the process out of file descriptors.",
        |s| s.fd_exhausted,
    ),
    (
        "pings_total",
        "counter",
        "Pings sent to peers quiet for the heartbeat.",
        |s| s.pings,
    ),
    (
        "pings_alone_total",
        "counter",
        "Pings that found no frame to share a write with and went alone.",
        |s| s.pings_alone,
    ),
];

/// Append one metric family in the Prometheus text exposition format
/// (version 0.0.4): its `# HELP` and `# TYPE` lines, then one sample per
/// `(labels, value)`. `labels` is empty or `{name="value",...}` with the
/// values already escaped.
pub fn write_metric_family<L: Display, V: Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// Append every loop's counters in the Prometheus text exposition format
/// (version 0.0.4), one series per loop (`loop="N"`), closes by kind
/// (`reason="..."`, the names of [`CloseKind::name`]). Names start with
/// `prefix` (for example `elko_contextd`), so one scrape of several
/// processes on a host keeps them apart.
pub fn write_prometheus(out: &mut String, prefix: &str, stats: &[Arc<LoopStats>]) {
    let snaps: Vec<LoopStatsSnapshot> = stats.iter().map(|s| s.snapshot()).collect();
    for (name, kind, help, get) in FAMILIES {
        let samples = snaps.iter().enumerate().map(|(i, s)| {
            let v = get(s);
            let v = if name == "busy_seconds_total" {
                format!("{:.9}", v as f64 / 1e9)
            } else {
                v.to_string()
            };
            (format!("{{loop=\"{i}\"}}"), v)
        });
        write_metric_family(out, &format!("{prefix}_loop_{name}"), kind, help, samples);
    }
    let closed = snaps.iter().enumerate().flat_map(|(i, s)| {
        CloseKind::ALL.map(|kind| {
            (
                format!("{{loop=\"{i}\",reason=\"{}\"}}", kind.name()),
                s.closed[kind as usize],
            )
        })
    });
    write_metric_family(
        out,
        &format!("{prefix}_loop_closed_total"),
        "counter",
        "Connections closed, by reason.",
        closed,
    );
    let held = crate::held_fds();
    if let Some(limit) = crate::process::max_fds() {
        write_metric_family(
            out,
            &format!("{prefix}_connection_budget"),
            "gauge",
            "Most connections this process holds before answering SERVER_FULL: its descriptor \
             limit less 256 of headroom and the descriptors held for long.",
            [("", crate::connection_budget(limit, held))],
        );
    }
    write_metric_family(
        out,
        &format!("{prefix}_held_fds"),
        "gauge",
        "Descriptors held for long (a context server's lock files), counted against the \
         connection budget.",
        [("", held)],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_one_series_per_loop_and_close_reason() {
        let a = Arc::new(LoopStats::default());
        let b = Arc::new(LoopStats::default());
        LoopStats::add(&a.connections, 3);
        LoopStats::add(&b.busy_ns, 1_500_000_000);
        b.count_close(CloseKind::ServerFull);
        let mut out = String::new();
        write_prometheus(&mut out, "elko_test", &[a, b]);
        assert!(
            out.contains("# TYPE elko_test_loop_connections gauge\n"),
            "{out}"
        );
        assert!(
            out.contains("elko_test_loop_connections{loop=\"0\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("elko_test_loop_connections{loop=\"1\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("elko_test_loop_busy_seconds_total{loop=\"1\"} 1.500000000\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE elko_test_connection_budget gauge\nelko_test_connection_budget "),
            "{out}"
        );
        assert!(
            out.contains("# TYPE elko_test_held_fds gauge\nelko_test_held_fds "),
            "{out}"
        );
        assert!(
            out.contains("elko_test_loop_closed_total{loop=\"1\",reason=\"server_full\"} 1\n"),
            "{out}"
        );
        // Every sample line is `name{labels} value`, and every family is typed.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let family = series.split('{').next().expect("name");
            assert!(out.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }
}
