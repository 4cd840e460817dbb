//! Processes: starting a local cluster, and reading CPU time and memory
//! from `/proc`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// CPU time (user + system) and resident memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(1) as u64
}

/// Sample `/proc/<pid>` (`None` for this process: `/proc/self`).
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let base = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}")),
        None => PathBuf::from("/proc/self"),
    };
    let stat = std::fs::read_to_string(base.join("stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(3) ... utime(14) stime(15) ... rss(24).
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some(ProcSample {
        cpu_s: (ut + st) / clk_tck(),
        rss_bytes: rss_pages * page_size(),
    })
}

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

    /// SIGTERM and wait (bounded), then SIGKILL.
    pub fn stop(&mut self) {
        // SAFETY: kill with a pid we spawned and a valid signal number.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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
}

fn spawn(bin: &Path, args: &[String], name: &str, prefix: &str) -> Result<Server, ClusterError> {
    if !bin.exists() {
        return Err(ClusterError::Missing {
            path: bin.to_path_buf(),
        });
    }
    let mut child = Command::new(bin)
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
    pub client_addr: SocketAddr,
    dir: PathBuf,
}

impl Cluster {
    /// Start from binaries in `bin_dir`.
    pub fn start(
        bin_dir: &Path,
        contextds: usize,
        workers: usize,
    ) -> Result<Cluster, ClusterError> {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
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
            let a = vec![
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
            client_addr,
            dir,
        })
    }

    /// Every server process.
    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        std::iter::once(&self.director).chain(self.contextds.iter())
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
    fn this_process_has_cpu_and_memory() {
        let s = sample(None).expect("/proc/self");
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_s >= 0.0);
        assert!(sample(Some(u32::MAX)).is_none());
    }
}
