//! The context server's operator endpoint (`--admin-listen`).
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text: contexts and users per event loop; the disk threads' activations, checkpoints (written, failed, bytes, seconds) and queued jobs; each loop's engine counters (connections, traffic, writes, busy time, closes by reason); the process's CPU time, memory, descriptors and threads (the standard `process_*` names) |
//! | `GET /health` | `ok` |
//!
//! Everything it reports is in atomics the loops update as they go, so a
//! scrape never waits for, or interrupts, an event loop. Draining a context
//! server is a director command (`POST /drain?provider=ID` on the director's
//! endpoint), because the directors are the ones that must stop placing
//! contexts on it.

use crate::host::LoopGauge;
use crate::io::{DiskHandle, DiskStats};
use elko_cluster::admin::{Method, Request, Response};
use elko_engine::{write_metric_family, LoopStats};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

const ENDPOINTS: &str = "GET /metrics, GET /health";

/// The request handler for [`elko_cluster::admin::AdminServer`].
pub fn handler(
    provider_id: String,
    gauges: Arc<Vec<LoopGauge>>,
    disk: DiskHandle,
    loops: Vec<Arc<LoopStats>>,
) -> impl FnMut(&Request) -> Response + Send + 'static {
    move |req| match (req.method, req.path.as_str()) {
        (Method::Get, "/metrics") => {
            let mut out = render_metrics(&provider_id, &gauges);
            render_disk(&mut out, disk.stats(), &disk.queued());
            elko_engine::write_prometheus(&mut out, "elko_contextd", &loops);
            elko_engine::write_process_metrics(&mut out);
            Response::prometheus(out)
        }
        (Method::Get, "/health") => Response::text(200, "ok"),
        (_, "/metrics" | "/health") => Response::wrong_method(req, "GET"),
        _ => Response::not_found(req, ENDPOINTS),
    }
}

/// Contexts and users per loop, and the server's identity.
pub fn render_metrics(provider_id: &str, gauges: &[LoopGauge]) -> String {
    let mut out = String::new();
    let id = elko_cluster::admin::label_value(provider_id);
    let info = format!(
        "{{provider=\"{id}\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    write_metric_family(
        &mut out,
        "elko_contextd_info",
        "gauge",
        "The context server's provider id and version.",
        [(info, 1)],
    );
    for (name, help, get) in [
        (
            "elko_contextd_contexts",
            "Contexts active (or loading) on the loop.",
            (|g: &LoopGauge| g.contexts.load(Relaxed)) as fn(&LoopGauge) -> u64,
        ),
        (
            "elko_contextd_users",
            "Users present in the loop's contexts.",
            |g: &LoopGauge| g.users.load(Relaxed),
        ),
    ] {
        let samples = gauges
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("{{loop=\"{i}\"}}"), get(g)));
        write_metric_family(&mut out, name, "gauge", help, samples);
    }
    out
}

/// The disk threads' counters, and the jobs waiting per disk thread.
pub fn render_disk(out: &mut String, d: &DiskStats, queued: &[usize]) {
    let g = DiskStats::get;
    let counters: [(&str, &str, f64); 7] = [
        (
            "activations_total",
            "Activations that took the context's lock.",
            g(&d.activations) as f64,
        ),
        (
            "activations_held_elsewhere_total",
            "Activations refused: another context server holds the context.",
            g(&d.activations_held_elsewhere) as f64,
        ),
        (
            "activation_errors_total",
            "Activations that failed reading the lock or the checkpoint.",
            g(&d.activation_errors) as f64,
        ),
        (
            "checkpoints_total",
            "Checkpoints written (periodic and final).",
            g(&d.checkpoints) as f64,
        ),
        (
            "checkpoint_errors_total",
            "Checkpoints that could not be written.",
            g(&d.checkpoint_errors) as f64,
        ),
        (
            "checkpoint_bytes_total",
            "Payload bytes of the checkpoints written.",
            g(&d.checkpoint_bytes) as f64,
        ),
        (
            "checkpoint_seconds_total",
            "Time spent writing checkpoints, fsyncs included.",
            g(&d.checkpoint_ns) as f64 / 1e9,
        ),
    ];
    for (name, help, v) in counters {
        let name = format!("elko_contextd_{name}");
        write_metric_family(out, &name, "counter", help, [("", v)]);
    }
    let queues = queued
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{{thread=\"{i}\"}}"), n));
    write_metric_family(
        out,
        "elko_contextd_disk_queue_jobs",
        "gauge",
        "Jobs waiting for a disk thread.",
        queues,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_contexts_and_users_per_loop() {
        let gauges = vec![LoopGauge::default(), LoopGauge::default()];
        gauges[1].contexts.store(3, Relaxed);
        gauges[1].users.store(120, Relaxed);
        let text = render_metrics("cd-1", &gauges);
        for line in [
            "elko_contextd_contexts{loop=\"0\"} 0",
            "elko_contextd_contexts{loop=\"1\"} 3",
            "elko_contextd_users{loop=\"1\"} 120",
            "# TYPE elko_contextd_users gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            text.contains("elko_contextd_info{provider=\"cd-1\""),
            "{text}"
        );
    }

    #[test]
    fn disk_metrics_have_counters_and_queues() {
        let d = DiskStats::default();
        d.checkpoints.store(4, Relaxed);
        d.checkpoint_ns.store(2_500_000_000, Relaxed);
        let mut text = String::new();
        render_disk(&mut text, &d, &[0, 3]);
        for line in [
            "elko_contextd_checkpoints_total 4",
            "elko_contextd_checkpoint_seconds_total 2.5",
            "elko_contextd_checkpoint_errors_total 0",
            "elko_contextd_disk_queue_jobs{thread=\"1\"} 3",
            "# TYPE elko_contextd_activations_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
