//! `--hlog FILE`: the per-second latency histograms in HdrHistogram's
//! interval log format (the one `HistogramLogWriter` writes in the Java
//! reference implementation and `HistogramLogProcessor`,
//! HistogramLogAnalyzer and the other HdrHistogram ports read), so a run can
//! be re-cut, merged with others or plotted by standard tools without losing
//! a single recorded value.
//!
//! One interval per second per target, tagged with the target's name
//! (`Tag=elko`, `Tag=redis`, `Tag=nats`); values are microseconds from the
//! intended send time (corrected for coordinated omission). Each target's
//! interval timestamps count from the start of its own run.

use crate::report::Report;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use std::time::{Duration, SystemTime};

/// One run's intervals, encoded as they are recorded (an encoded histogram
/// is a few hundred bytes; the histogram itself is ~190 KiB).
#[derive(Clone, Default)]
pub struct IntervalLog {
    lines: Vec<u8>,
    /// Wall-clock time of the run's start, to which the intervals are relative.
    started: Option<SystemTime>,
}

impl std::fmt::Debug for IntervalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalLog")
            .field("bytes", &self.lines.len())
            .finish()
    }
}

impl IntervalLog {
    /// An empty log for a run that started at `started`.
    pub fn new(started: SystemTime) -> IntervalLog {
        IntervalLog {
            lines: Vec::new(),
            started: Some(started),
        }
    }

    /// Append the histogram of the interval `[start, start + length)`,
    /// counted from the run's start.
    pub fn record(&mut self, tag: &str, start: Duration, length: Duration, h: &Histogram<u64>) {
        // A log begun without headers writes nothing until the histogram.
        let mut serializer = V2DeflateSerializer::new();
        let written = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.lines, &mut serializer)
            .map_err(|e| e.to_string())
            .and_then(|mut w| {
                w.write_histogram(h, start, length, Tag::new(tag))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            // Writing to memory fails only if the histogram cannot be encoded.
            tracing::warn!(error = %e, "interval histogram not logged");
        }
    }

    /// The encoded interval lines.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }
}

/// The whole file: headers, then every report's intervals. The file's
/// StartTime is the first run's start.
pub fn file(reports: &[&Report]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment(&format!(
            "elko-loadgen chat, preset {}, build {}",
            reports.first().map_or("?", |r| r.scenario.preset.name()),
            env!("ELKO_GIT_SHA")
        ))
        .add_comment(
            "Latency in microseconds from the intended send time (corrected for coordinated \
             omission), one histogram per second per target (Tag); each target's timestamps \
             count from the start of its own run. HistogramLogProcessor: -outputValueUnitRatio 1000 \
             gives milliseconds.",
        );
    for r in reports {
        builder.add_comment(&format!(
            "Tag={}: steady state from {:.3} s to {:.3} s",
            r.target,
            r.steady_from_s,
            r.steady_from_s + r.duration_s
        ));
    }
    if let Some(started) = reports.first().and_then(|r| r.interval_log.started) {
        builder.with_start_time(started).with_base_time(started);
    }
    if let Err(e) = builder.begin_log_with(&mut out, &mut serializer) {
        tracing::warn!(error = %e, "interval log header not written");
    }
    out.extend_from_slice(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    );
    for r in reports {
        out.extend_from_slice(r.interval_log.lines());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::new_histogram;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn the_file_reads_back_with_every_value_and_tag() {
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut elko = crate::report::tests::sample_report("elko", 500, 5.0);
        let mut redis = crate::report::tests::sample_report("redis", 900, 7.0);
        for (r, base) in [(&mut elko, 100u64), (&mut redis, 1000)] {
            r.interval_log = IntervalLog::new(started);
            for s in 0..3u64 {
                let mut h = new_histogram();
                for v in 0..=s {
                    h.record(base + v).expect("in range");
                }
                r.interval_log.record(
                    &r.target.clone(),
                    Duration::from_secs(s),
                    Duration::from_secs(1),
                    &h,
                );
            }
        }
        let text = file(&[&elko, &redis]);
        let mut seen = Vec::new();
        let mut start_times = 0;
        for entry in IntervalLogIterator::new(&text) {
            match entry.expect("the file parses") {
                LogEntry::StartTime(t) => {
                    start_times += 1;
                    assert_eq!(t, Duration::from_secs(1_800_000_000));
                }
                LogEntry::BaseTime(_) => {}
                LogEntry::Interval(i) => {
                    let bytes = base64::Engine::decode(
                        &base64::engine::general_purpose::STANDARD,
                        i.encoded_histogram(),
                    )
                    .expect("base64");
                    let h: Histogram<u64> = Deserializer::new()
                        .deserialize(&mut bytes.as_slice())
                        .expect("a V2 histogram");
                    seen.push((
                        i.tag().map(|t| t.as_str().to_string()),
                        i.start_timestamp().as_secs(),
                        h.len(),
                        h.max(),
                    ));
                }
            }
        }
        assert_eq!(start_times, 1);
        assert_eq!(
            seen,
            vec![
                (Some("elko".into()), 0, 1, 100),
                (Some("elko".into()), 1, 2, 101),
                (Some("elko".into()), 2, 3, 102),
                (Some("redis".into()), 0, 1, 1000),
                (Some("redis".into()), 1, 2, 1001),
                (Some("redis".into()), 2, 3, 1002),
            ]
        );
        let text = String::from_utf8(text).expect("text");
        assert!(text.contains("#Tag=elko: steady state from"), "{text}");
    }
}
