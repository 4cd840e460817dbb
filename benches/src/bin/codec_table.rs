//! Print the codec bench's results as Markdown tables, with throughput in
//! bytes *and* messages per second (criterion reports one kind per bench).
//!
//! Reads the estimates criterion saved (`<dir>/<group>/<bench>/<baseline>/*.json`),
//! where `<dir>` is `--dir DIR`, else `$CARGO_TARGET_DIR/criterion`, else
//! `target/criterion`, and `<baseline>` is `new` (the last run) unless
//! `--baseline NAME` names others. The time is criterion's own "typical"
//! estimate: the slope of the linear fit when there is one, else the mean.
//! With several baselines (runs saved with `--save-baseline NAME`), each
//! benchmark's fastest estimate is taken: on a shared machine, other work
//! only ever makes a run slower.
//!
//! Run after `cargo bench -p elko-benches --bench codec`:
//! `cargo run --release -p elko-benches --bin codec_table`, or after runs
//! saved as `-- --save-baseline r1` (`r2`, `r3`):
//! `cargo run --release -p elko-benches --bin codec_table -- --baseline r1 --baseline r2 --baseline r3`.

use elko_benches::{mixed_stream, sample_messages};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One benchmark's saved estimate.
#[derive(Debug)]
struct Estimate {
    /// Nanoseconds per iteration.
    ns: f64,
    /// `("Bytes" | "Elements", n)` per iteration, if the bench set one.
    throughput: Option<(String, u64)>,
}

/// The raw text after `"key":` in a JSON document.
fn after_key<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    json.find(&pat).map(|i| json[i + pat.len()..].trim_start())
}

/// The number at the start of `s`.
fn leading_number(s: &str) -> Option<f64> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(s.len());
    s[..end].parse().ok()
}

/// Criterion's typical estimate: `slope.point_estimate`, else `mean.point_estimate`.
fn typical_ns(estimates: &str) -> Option<f64> {
    let slope = after_key(estimates, "slope")?;
    let obj = if slope.starts_with("null") {
        after_key(estimates, "mean")?
    } else {
        slope
    };
    leading_number(after_key(obj, "point_estimate")?)
}

/// `("Bytes", 39)` from `"throughput":{"Bytes":39}`.
fn throughput(benchmark: &str) -> Option<(String, u64)> {
    let t = after_key(benchmark, "throughput")?.strip_prefix("{\"")?;
    let (kind, rest) = t.split_once("\":")?;
    Some((kind.to_string(), leading_number(rest.trim_start())? as u64))
}

/// `encode/Hello` from `"full_id":"encode/Hello"`.
fn full_id(benchmark: &str) -> Option<String> {
    let s = after_key(benchmark, "full_id")?.strip_prefix('"')?;
    Some(s[..s.find('"')?].to_string())
}

/// Every estimate saved under `dir` as `baseline`, by full id; where `out`
/// already has one, the faster is kept.
fn collect(dir: &Path, baseline: &str, out: &mut BTreeMap<String, Estimate>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let bench = fs::read_to_string(path.join(baseline).join("benchmark.json"));
        let est = fs::read_to_string(path.join(baseline).join("estimates.json"));
        if let (Ok(bench), Ok(est)) = (bench, est) {
            if let (Some(id), Some(ns)) = (full_id(&bench), typical_ns(&est)) {
                let e = Estimate {
                    ns,
                    throughput: throughput(&bench),
                };
                match out.get(&id) {
                    Some(old) if old.ns <= ns => {}
                    _ => {
                        out.insert(id, e);
                    }
                }
            }
        } else {
            collect(&path, baseline, out);
        }
    }
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

fn fmt_rate(per_s: f64, unit: &str) -> String {
    if per_s >= 1e9 {
        format!("{:.2} G{unit}/s", per_s / 1e9)
    } else {
        format!("{:.1} M{unit}/s", per_s / 1e6)
    }
}

fn main() -> ExitCode {
    let mut dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("criterion"))
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let mut baselines = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--dir", Some(d)) => dir = PathBuf::from(d),
            ("--baseline", Some(b)) => baselines.push(b),
            _ => {
                eprintln!("usage: codec_table [--dir CRITERION_DIR] [--baseline NAME]...");
                return ExitCode::FAILURE;
            }
        }
    }
    if baselines.is_empty() {
        baselines.push("new".to_string());
    }
    let mut est = BTreeMap::new();
    for b in &baselines {
        collect(&dir, b, &mut est);
    }
    if est.is_empty() {
        eprintln!(
            "no criterion estimates under {} for baselines {baselines:?}: run \
             `cargo bench -p elko-benches --bench codec` first, or pass --dir",
            dir.display()
        );
        return ExitCode::FAILURE;
    }

    if baselines.len() > 1 {
        println!(
            "Fastest of {} runs ({}) per benchmark.\n",
            baselines.len(),
            baselines.join(", ")
        );
    }
    println!("| message | frame bytes | encode | encode MB/s | encode Mmsg/s | decode | decode MB/s | decode Mmsg/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in sample_messages() {
        let name = m.message_type().name();
        let bytes = m.to_bytes().map(|b| b.len()).unwrap_or(0) as f64;
        let cell = |group: &str| match est.get(&format!("{group}/{name}")) {
            Some(e) => format!(
                "{} | {:.0} | {:.1}",
                fmt_time(e.ns),
                bytes / e.ns * 1e3,
                1e3 / e.ns
            ),
            None => "– | – | –".to_string(),
        };
        println!(
            "| {name} | {bytes:.0} | {} | {} |",
            cell("encode"),
            cell("decode")
        );
    }

    let stream_len = mixed_stream(1000).len() as f64;
    println!();
    println!("| benchmark | time | elements/s | bytes/s |");
    println!("|---|---:|---:|---:|");
    for (id, e) in est
        .iter()
        .filter(|(id, _)| !id.starts_with("encode/") && !id.starts_with("decode/"))
    {
        let elems = match &e.throughput {
            Some((kind, n)) if kind == "Elements" => *n as f64,
            _ => 1.0,
        };
        let bytes = if id.starts_with("frame_decoder/") {
            fmt_rate(stream_len / e.ns * 1e9, "B")
        } else {
            "–".to_string()
        };
        println!(
            "| {id} | {} | {} | {bytes} |",
            fmt_time(e.ns),
            fmt_rate(elems / e.ns * 1e9, "elem")
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_json() {
        let est = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.5,"standard_error":0.1},"slope":null}"#;
        assert_eq!(typical_ns(est), Some(2.5));
        let est = r#"{"mean":{"point_estimate":2.5},"slope":{"confidence_interval":{"lower_bound":1.0},"point_estimate":1.25e1,"standard_error":0.1}}"#;
        assert_eq!(typical_ns(est), Some(12.5));
        let bench = r#"{"group_id":"encode","function_id":null,"value_str":"Hello","throughput":{"Bytes":39},"full_id":"encode/Hello"}"#;
        assert_eq!(full_id(bench).as_deref(), Some("encode/Hello"));
        assert_eq!(throughput(bench), Some(("Bytes".into(), 39)));
        assert_eq!(throughput(r#"{"throughput":null}"#), None);
    }
}
