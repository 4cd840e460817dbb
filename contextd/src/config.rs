//! Configuration: flags > environment (`ELKO_*`) > TOML file (`--config`) > defaults.
//!
//! One struct serves both clap and the file: every field is optional, clap
//! fills what the command line or the environment gives, the file fills what
//! is still missing, and [`Config::resolve`] applies the defaults.

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// elko-contextd: hosts active Elko contexts in memory, one event loop per core.
///
/// Every flag is also a key of the TOML file given with --config (same name,
/// kebab-case, e.g. `checkpoint-dir = "/var/lib/elko"`), and an environment
/// variable (shown in brackets). Precedence: flag, environment, file, default.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(name = "elko-contextd", version)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Args {
    /// TOML file with any of the settings below.
    #[arg(long, env = "ELKO_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:7710].
    #[arg(long, env = "ELKO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address announced to directors for clients (default: the bound listen address).
    #[arg(long, env = "ELKO_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directors' provider addresses, comma-separated [default: 127.0.0.1:7701].
    #[arg(long, env = "ELKO_DIRECTOR", value_delimiter = ',')]
    pub director: Option<Vec<SocketAddr>>,
    /// Event loops serving contexts: a number or `auto` (one per core) [default: auto].
    #[arg(long, env = "ELKO_WORKERS")]
    pub workers: Option<String>,
    /// Pin loop i to core i.
    #[arg(long, env = "ELKO_PIN_CPUS")]
    pub pin_cpus: Option<bool>,
    /// Where checkpoints live; share it between context servers [default: ./elko-data].
    #[arg(long, env = "ELKO_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// This server's unique name [default: contextd-<pid>].
    #[arg(long, env = "ELKO_PROVIDER_ID")]
    pub provider_id: Option<String>,
    /// File holding the cluster secret (or set ELKO_SECRET). Without one, a
    /// development secret is used and only loopback addresses are allowed.
    #[arg(long, env = "ELKO_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Most contexts to host at once, announced to directors; 0 = no limit [default: 0].
    #[arg(long, env = "ELKO_CAPACITY")]
    pub capacity: Option<u32>,
    /// Utterances a chat context remembers [default: 50].
    #[arg(long, env = "ELKO_HISTORY")]
    pub history: Option<usize>,
    /// Keep an empty context this long before unloading it, ms [default: 0].
    #[arg(long, env = "ELKO_LINGER_MS")]
    pub linger_ms: Option<u64>,
    /// Checkpoint changed contexts this often, ms [default: 30000].
    #[arg(long, env = "ELKO_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Send load reports this often, ms [default: 1000].
    #[arg(long, env = "ELKO_REPORT_INTERVAL_MS")]
    pub report_interval_ms: Option<u64>,
    /// How long an arriving client may wait for its context to load, ms [default: 10000].
    #[arg(long, env = "ELKO_ENTRY_WAIT_MS")]
    pub entry_wait_ms: Option<u64>,
    /// Threads doing checkpoint reads and writes [default: 2].
    #[arg(long, env = "ELKO_DISK_THREADS")]
    pub disk_threads: Option<usize>,
    /// Most connections per event loop [default: 100000].
    #[arg(long, env = "ELKO_MAX_CONNECTIONS_PER_LOOP")]
    pub max_connections_per_loop: Option<usize>,
    /// Ping a client after this long without hearing from it, ms (announced in Welcome)
    /// [default: 15000].
    #[arg(long, env = "ELKO_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Close a connection after this long without hearing from it, ms (announced in
    /// Welcome; more than the heartbeat) [default: 60000].
    #[arg(long, env = "ELKO_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Graceful shutdown: how long to flush before closing, ms [default: 2000].
    #[arg(long, env = "ELKO_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Address of the operator's HTTP endpoint: GET /metrics (Prometheus), GET /health
    /// [default: off; port 0 picks one].
    #[arg(long, env = "ELKO_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("--workers {0:?}: give a number of loops (1 or more) or `auto`")]
    Workers(String),
    #[error("--heartbeat-ms / --idle-timeout-ms: {0}")]
    Heartbeat(String),
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub directors: Vec<SocketAddr>,
    /// 0 = one per core.
    pub workers: usize,
    pub pin_cpus: bool,
    pub checkpoint_dir: PathBuf,
    pub provider_id: String,
    pub secret_file: Option<PathBuf>,
    pub capacity: u32,
    pub history: usize,
    pub linger: Duration,
    pub checkpoint_interval: Duration,
    pub report_interval: Duration,
    pub entry_wait: Duration,
    pub disk_threads: usize,
    pub max_connections_per_loop: usize,
    /// Ping after this long without hearing from the peer.
    pub heartbeat: Duration,
    /// Close after this long without hearing from the peer.
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The operator endpoint's address, if it is on.
    pub admin_listen: Option<SocketAddr>,
}

macro_rules! fill {
    ($cli:ident, $file:ident, $($f:ident),*) => { $( if $cli.$f.is_none() { $cli.$f = $file.$f.take(); } )* };
}

impl Args {
    /// Fill what flags and environment left unset from `file`.
    pub fn fill_from(mut self, mut file: Args) -> Args {
        fill!(
            self,
            file,
            listen,
            advertise,
            director,
            workers,
            pin_cpus,
            checkpoint_dir,
            provider_id,
            secret_file,
            capacity,
            history,
            linger_ms,
            checkpoint_interval_ms,
            report_interval_ms,
            entry_wait_ms,
            disk_threads,
            max_connections_per_loop,
            heartbeat_ms,
            idle_timeout_ms,
            shutdown_grace_ms,
            admin_listen
        );
        self
    }

    /// Read a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Args, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }
}

impl Config {
    /// Layer flags/env over the file (if any) over the defaults.
    pub fn resolve(args: Args) -> Result<Config, ConfigError> {
        let a = match &args.config {
            Some(p) => {
                let file = Args::from_file(p)?;
                args.fill_from(file)
            }
            None => args,
        };
        let workers = match a.workers.as_deref() {
            None | Some("auto") => 0,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => return Err(ConfigError::Workers(s.to_string())),
            },
        };
        let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d));
        let mut limits = elko_engine::Limits::default();
        limits
            .set_heartbeat(a.heartbeat_ms, a.idle_timeout_ms)
            .map_err(ConfigError::Heartbeat)?;
        Ok(Config {
            listen: a
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7710))),
            advertise: a.advertise,
            directors: a
                .director
                .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], 7701))]),
            workers,
            pin_cpus: a.pin_cpus.unwrap_or(false),
            checkpoint_dir: a
                .checkpoint_dir
                .unwrap_or_else(|| PathBuf::from("./elko-data")),
            provider_id: a
                .provider_id
                .unwrap_or_else(|| format!("contextd-{}", std::process::id())),
            secret_file: a.secret_file,
            capacity: a.capacity.unwrap_or(0),
            history: a.history.unwrap_or(50),
            linger: ms(a.linger_ms, 0),
            checkpoint_interval: ms(a.checkpoint_interval_ms, 30_000),
            report_interval: ms(a.report_interval_ms, 1_000),
            entry_wait: ms(a.entry_wait_ms, 10_000),
            disk_threads: a.disk_threads.unwrap_or(2).max(1),
            max_connections_per_loop: a.max_connections_per_loop.unwrap_or(100_000),
            heartbeat: limits.heartbeat,
            idle_timeout: limits.idle_timeout,
            shutdown_grace: ms(a.shutdown_grace_ms, 2_000),
            admin_listen: a.admin_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("elko-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "history = 7\nlinger-ms = 250\nlisten = \"127.0.0.1:9000\"\n",
        )
        .expect("write");
        let args = Args::try_parse_from([
            "elko-contextd",
            "--config",
            file.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:9100",
            "--director",
            "127.0.0.1:1,127.0.0.1:2",
        ])
        .expect("parses");
        let c = Config::resolve(args).expect("resolves");
        assert_eq!(
            c.listen,
            "127.0.0.1:9100".parse().expect("addr"),
            "flag beats file"
        );
        assert_eq!(c.history, 7, "file beats default");
        assert_eq!(c.linger, Duration::from_millis(250));
        assert_eq!(c.directors.len(), 2);
        assert_eq!(c.checkpoint_interval, Duration::from_secs(30), "default");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let dir = std::env::temp_dir().join(format!("elko-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("c.toml");
        std::fs::write(&file, "histroy = 7\n").expect("write");
        let err = Args::from_file(&file).expect_err("unknown key");
        assert!(err.to_string().contains("histroy"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn workers_must_be_a_number_or_auto() {
        let a = Args {
            workers: Some("zero".into()),
            ..Default::default()
        };
        assert!(matches!(Config::resolve(a), Err(ConfigError::Workers(_))));
        let a = Args {
            workers: Some("auto".into()),
            ..Default::default()
        };
        assert_eq!(Config::resolve(a).expect("auto").workers, 0);
    }

    #[test]
    fn heartbeat_and_idle_timeout_reach_the_config_or_are_refused() {
        let a = Args {
            heartbeat_ms: Some(5_000),
            idle_timeout_ms: Some(20_000),
            ..Default::default()
        };
        let c = Config::resolve(a).expect("a working pair");
        assert_eq!(
            (c.heartbeat, c.idle_timeout),
            (Duration::from_secs(5), Duration::from_secs(20))
        );
        let c = Config::resolve(Args::default()).expect("defaults");
        assert_eq!(
            (c.heartbeat, c.idle_timeout),
            (Duration::from_secs(15), Duration::from_secs(60))
        );
        let a = Args {
            heartbeat_ms: Some(90_000),
            ..Default::default()
        };
        let e = Config::resolve(a).expect_err("idle timeout under the heartbeat");
        assert!(e.to_string().contains("more than the heartbeat"), "{e}");
    }
}
