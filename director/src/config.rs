//! Command line, environment and configuration file, merged into [`Settings`].
//!
//! Every setting can come from four places; the first that has it wins:
//! a command-line flag, its environment variable (`ELKO_` + the flag in
//! SCREAMING_SNAKE_CASE), the TOML file named by `--config`, the default.
//! clap reads flags and environment into `Option`s ([`Cli`]), serde reads the
//! file into `Option`s ([`FileConfig`]), and [`Settings::merge`] takes the
//! first `Some` — so "was it given?" is never confused with "is it the
//! default?".

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_CLIENT_LISTEN: &str = "127.0.0.1:7700";
const DEFAULT_PROVIDER_LISTEN: &str = "127.0.0.1:7701";
const DEFAULT_TOKEN_TTL_MS: u64 = 30_000;
const DEFAULT_REPORT_INTERVAL_MS: u64 = 1_000;
const DEFAULT_DEAD_AFTER_REPORTS: u32 = 3;

const AFTER_HELP: &str = "\
Precedence: command-line flag > environment variable > --config file > default.

The --config file is TOML with the flags' names as keys (without the leading
dashes, kebab-case); unknown keys are refused. Example:

    client-listen = \"0.0.0.0:7700\"
    provider-listen = \"10.0.0.5:7701\"
    director-id = \"director-1\"
    secret-file = \"/etc/elko/secret\"
    token-ttl-ms = 30000
    report-interval-ms = 1000
    dead-after-reports = 3
    heartbeat-ms = 15000
    idle-timeout-ms = 60000
    admin-listen = \"127.0.0.1:7702\"

Cluster secret: --secret-file (or ELKO_SECRET_FILE), else the secret itself in
ELKO_SECRET, else `secret-file` from the --config file, else the built-in
development secret, with which the director refuses to listen on anything but
loopback addresses.

Logging: RUST_LOG (default `info`), to stderr. On start-up the director prints
one line to stdout: `elko-director listening clients=ADDR providers=ADDR`, with
` admin=ADDR` at the end when --admin-listen is on.
SIGTERM/SIGINT: graceful shutdown (exit 0); a second signal exits at once (130).";

/// Command line (each flag also read from its environment variable).
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "elko-director",
    version,
    about = "Elko director: tells clients which context server hosts a context, activating it if needed",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Address to accept clients on [default: 127.0.0.1:7700; port 0 picks one]
    #[arg(long, env = "ELKO_CLIENT_LISTEN", value_name = "ADDR")]
    pub client_listen: Option<SocketAddr>,

    /// Address to accept context servers on [default: 127.0.0.1:7701; port 0 picks one]
    #[arg(long, env = "ELKO_PROVIDER_LISTEN", value_name = "ADDR")]
    pub provider_listen: Option<SocketAddr>,

    /// Name of this director, sent to context servers in Registered [default: director-PID]
    #[arg(long, env = "ELKO_DIRECTOR_ID", value_name = "NAME")]
    pub director_id: Option<String>,

    /// File holding the cluster secret (at least 16 bytes; surrounding whitespace ignored)
    #[arg(long, env = "ELKO_SECRET_FILE", value_name = "PATH")]
    pub secret_file: Option<PathBuf>,

    /// Lifetime of the reservation tokens given to clients, in milliseconds [default: 30000]
    #[arg(long, env = "ELKO_TOKEN_TTL_MS", value_name = "MS")]
    pub token_ttl_ms: Option<u64>,

    /// Interval at which context servers send load reports, in milliseconds [default: 1000]
    #[arg(long, env = "ELKO_REPORT_INTERVAL_MS", value_name = "MS")]
    pub report_interval_ms: Option<u64>,

    /// Declare a context server dead after this many missed load reports [default: 3]
    #[arg(long, env = "ELKO_DEAD_AFTER_REPORTS", value_name = "N")]
    pub dead_after_reports: Option<u32>,

    /// Ping a connection after this long without hearing from it, in milliseconds
    /// (announced in Welcome) [default: 15000]
    #[arg(long, env = "ELKO_HEARTBEAT_MS", value_name = "MS")]
    pub heartbeat_ms: Option<u64>,

    /// Close a connection after this long without hearing from it, in milliseconds
    /// (announced in Welcome; more than the heartbeat) [default: 60000]
    #[arg(long, env = "ELKO_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,

    /// Address of the operator's HTTP endpoint: GET /metrics (Prometheus), GET /providers,
    /// POST /drain?provider=ID (from loopback only), GET /health [default: off; port 0 picks one]
    #[arg(long, env = "ELKO_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// TOML file with any of the settings above (keys as the flags, kebab-case)
    #[arg(long, env = "ELKO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The `--config` file. Same keys as the flags; unknown keys are an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub client_listen: Option<SocketAddr>,
    pub provider_listen: Option<SocketAddr>,
    pub director_id: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub token_ttl_ms: Option<u64>,
    pub report_interval_ms: Option<u64>,
    pub dead_after_reports: Option<u32>,
    pub heartbeat_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub admin_listen: Option<SocketAddr>,
}

/// Why the configuration cannot be used.
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
        source: Box<toml::de::Error>,
    },
    #[error("heartbeat-ms / idle-timeout-ms: {0}")]
    Heartbeat(String),
    #[error("{key} = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Where the cluster secret comes from, once precedence is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A secret file (flag, ELKO_SECRET_FILE, or the config file).
    File(PathBuf),
    /// The secret itself, from ELKO_SECRET.
    Env(String),
    /// Nothing given: the development secret.
    Development,
}

/// The merged settings the director runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub client_listen: SocketAddr,
    pub provider_listen: SocketAddr,
    pub director_id: String,
    /// From the flag or ELKO_SECRET_FILE (beats ELKO_SECRET).
    pub secret_file_arg: Option<PathBuf>,
    /// From the config file (loses to ELKO_SECRET).
    pub secret_file_config: Option<PathBuf>,
    pub token_ttl_ms: u64,
    pub report_interval: Duration,
    pub dead_after_reports: u32,
    /// Ping after this long without hearing from the peer.
    pub heartbeat: Duration,
    /// Close after this long without hearing from the peer.
    pub idle_timeout: Duration,
    /// The operator endpoint's address, if it is on.
    pub admin_listen: Option<SocketAddr>,
}

impl FileConfig {
    /// Parse TOML text; `path` is for error messages.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Read and parse a file.
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

impl Settings {
    /// Read the `--config` file if one was given and merge.
    pub fn load(cli: Cli) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(p) => FileConfig::read(p)?,
            None => FileConfig::default(),
        };
        Settings::merge(cli, file)
    }

    /// Flags and environment (already merged by clap in `cli`) over the file
    /// over the defaults; then check values.
    pub fn merge(cli: Cli, file: FileConfig) -> Result<Settings, ConfigError> {
        let default_addr = |s: &str| s.parse::<SocketAddr>().ok();
        let client_listen = cli
            .client_listen
            .or(file.client_listen)
            .or_else(|| default_addr(DEFAULT_CLIENT_LISTEN));
        let provider_listen = cli
            .provider_listen
            .or(file.provider_listen)
            .or_else(|| default_addr(DEFAULT_PROVIDER_LISTEN));
        let (Some(client_listen), Some(provider_listen)) = (client_listen, provider_listen) else {
            unreachable!("the default addresses parse");
        };
        let director_id = cli
            .director_id
            .or(file.director_id)
            .unwrap_or_else(|| format!("director-{}", std::process::id()));
        let mut limits = elko_engine::Limits::default();
        limits
            .set_heartbeat(
                cli.heartbeat_ms.or(file.heartbeat_ms),
                cli.idle_timeout_ms.or(file.idle_timeout_ms),
            )
            .map_err(ConfigError::Heartbeat)?;
        let s = Settings {
            client_listen,
            provider_listen,
            director_id,
            secret_file_arg: cli.secret_file,
            secret_file_config: file.secret_file,
            token_ttl_ms: cli
                .token_ttl_ms
                .or(file.token_ttl_ms)
                .unwrap_or(DEFAULT_TOKEN_TTL_MS),
            report_interval: Duration::from_millis(
                cli.report_interval_ms
                    .or(file.report_interval_ms)
                    .unwrap_or(DEFAULT_REPORT_INTERVAL_MS),
            ),
            dead_after_reports: cli
                .dead_after_reports
                .or(file.dead_after_reports)
                .unwrap_or(DEFAULT_DEAD_AFTER_REPORTS),
            heartbeat: limits.heartbeat,
            idle_timeout: limits.idle_timeout,
            admin_listen: cli.admin_listen.or(file.admin_listen),
        };
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if elko_protocol::validate_id(&self.director_id, 255).is_err() {
            return Err(ConfigError::Invalid {
                key: "director-id",
                value: format!("{:?}", self.director_id),
                reason: "must be 1..=255 bytes of printable characters",
            });
        }
        if self.token_ttl_ms == 0 || self.token_ttl_ms > u64::from(u32::MAX) {
            return Err(ConfigError::Invalid {
                key: "token-ttl-ms",
                value: self.token_ttl_ms.to_string(),
                reason: "must be between 1 and 4294967295 (Redirect carries it as a u32)",
            });
        }
        if self.report_interval < Duration::from_millis(10) {
            return Err(ConfigError::Invalid {
                key: "report-interval-ms",
                value: self.report_interval.as_millis().to_string(),
                reason: "must be at least 10",
            });
        }
        if self.dead_after_reports == 0 {
            return Err(ConfigError::Invalid {
                key: "dead-after-reports",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        Ok(())
    }

    /// Apply the secret's precedence: a secret file given by flag or
    /// ELKO_SECRET_FILE, else `env_secret` (ELKO_SECRET), else the config
    /// file's secret file, else the development secret.
    pub fn secret_source(&self, env_secret: Option<String>) -> SecretSource {
        let env_secret = env_secret.filter(|s| !s.is_empty());
        match (&self.secret_file_arg, env_secret, &self.secret_file_config) {
            (Some(f), _, _) => SecretSource::File(f.clone()),
            (None, Some(s), _) => SecretSource::Env(s),
            (None, None, Some(f)) => SecretSource::File(f.clone()),
            (None, None, None) => SecretSource::Development,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const ENV_VARS: &[&str] = &[
        "ELKO_CLIENT_LISTEN",
        "ELKO_PROVIDER_LISTEN",
        "ELKO_DIRECTOR_ID",
        "ELKO_SECRET_FILE",
        "ELKO_TOKEN_TTL_MS",
        "ELKO_REPORT_INTERVAL_MS",
        "ELKO_DEAD_AFTER_REPORTS",
        "ELKO_HEARTBEAT_MS",
        "ELKO_IDLE_TIMEOUT_MS",
        "ELKO_CONFIG",
    ];

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text, Path::new("test.toml")).expect("valid config")
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let s = Settings::merge(Cli::default(), FileConfig::default()).expect("defaults");
        assert_eq!(s.client_listen.to_string(), "127.0.0.1:7700");
        assert_eq!(s.provider_listen.to_string(), "127.0.0.1:7701");
        assert_eq!(s.director_id, format!("director-{}", std::process::id()));
        assert_eq!(s.token_ttl_ms, 30_000);
        assert_eq!(s.report_interval, Duration::from_secs(1));
        assert_eq!(s.dead_after_reports, 3);
        assert_eq!(
            (s.heartbeat, s.idle_timeout),
            (Duration::from_secs(15), Duration::from_secs(60))
        );
        assert_eq!(s.secret_source(None), SecretSource::Development);
    }

    #[test]
    fn file_keys_are_kebab_case_and_unknown_keys_are_named() {
        let f = file(
            "client-listen = \"127.0.0.1:1\"\nprovider-listen = \"127.0.0.1:2\"\n\
             director-id = \"d\"\nsecret-file = \"/s\"\ntoken-ttl-ms = 5\n\
             report-interval-ms = 100\ndead-after-reports = 4\n",
        );
        assert_eq!(f.dead_after_reports, Some(4));
        let s = Settings::merge(
            Cli::default(),
            file("heartbeat-ms = 4000\nidle-timeout-ms = 9000\n"),
        )
        .expect("a working pair");
        assert_eq!(
            (s.heartbeat, s.idle_timeout),
            (Duration::from_secs(4), Duration::from_secs(9))
        );
        let e = FileConfig::parse("token-ttl = 5\n", Path::new("x.toml"))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("token-ttl"), "{e}");
        assert!(e.contains("x.toml"), "{e}");
        let e = FileConfig::parse("client-listen = \"nowhere\"\n", Path::new("x.toml"))
            .expect_err("bad address");
        assert!(matches!(e, ConfigError::Parse { .. }));
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (text, key) in [
            ("token-ttl-ms = 0", "token-ttl-ms"),
            ("token-ttl-ms = 5000000000", "token-ttl-ms"),
            ("report-interval-ms = 1", "report-interval-ms"),
            ("dead-after-reports = 0", "dead-after-reports"),
            ("director-id = \"\"", "director-id"),
            ("heartbeat-ms = 100", "heartbeat-ms"),
            (
                "heartbeat-ms = 5000\nidle-timeout-ms = 5000",
                "heartbeat-ms",
            ),
        ] {
            let e = Settings::merge(Cli::default(), file(text)).expect_err(text);
            assert!(e.to_string().starts_with(key), "{e}");
        }
    }

    #[test]
    fn secret_precedence() {
        let s = |arg: Option<&str>, cfg: Option<&str>| Settings {
            secret_file_arg: arg.map(PathBuf::from),
            secret_file_config: cfg.map(PathBuf::from),
            ..Settings::merge(Cli::default(), FileConfig::default()).expect("defaults")
        };
        let env = || Some("0123456789abcdef".to_string());
        assert_eq!(
            s(Some("/arg"), Some("/cfg")).secret_source(env()),
            SecretSource::File("/arg".into())
        );
        assert_eq!(
            s(None, Some("/cfg")).secret_source(env()),
            SecretSource::Env("0123456789abcdef".into())
        );
        assert_eq!(
            s(None, Some("/cfg")).secret_source(Some(String::new())),
            SecretSource::File("/cfg".into())
        );
        assert_eq!(s(None, None).secret_source(None), SecretSource::Development);
    }

    /// Flags > environment > file > defaults. The only test in this binary
    /// that touches the process environment (tests run on threads).
    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        for v in ENV_VARS {
            std::env::remove_var(v);
        }
        let f = file(
            "client-listen = \"127.0.0.1:1001\"\nprovider-listen = \"127.0.0.1:1002\"\n\
             token-ttl-ms = 1003\n",
        );

        // File over defaults.
        let cli = Cli::try_parse_from(["elko-director"]).expect("parse");
        let s = Settings::merge(cli, f.clone()).expect("merge");
        assert_eq!(s.client_listen.port(), 1001);
        assert_eq!(s.provider_listen.port(), 1002);
        assert_eq!(s.token_ttl_ms, 1003);
        assert_eq!(s.dead_after_reports, 3);

        // Environment over file.
        std::env::set_var("ELKO_CLIENT_LISTEN", "127.0.0.1:2001");
        std::env::set_var("ELKO_TOKEN_TTL_MS", "2003");
        std::env::set_var("ELKO_DEAD_AFTER_REPORTS", "7");
        let cli = Cli::try_parse_from(["elko-director"]).expect("parse");
        let s = Settings::merge(cli, f.clone()).expect("merge");
        assert_eq!(s.client_listen.port(), 2001);
        assert_eq!(s.provider_listen.port(), 1002);
        assert_eq!(s.token_ttl_ms, 2003);
        assert_eq!(s.dead_after_reports, 7);

        // Flags over environment.
        let cli = Cli::try_parse_from([
            "elko-director",
            "--client-listen",
            "127.0.0.1:3001",
            "--dead-after-reports",
            "9",
        ])
        .expect("parse");
        let s = Settings::merge(cli, f.clone()).expect("merge");
        assert_eq!(s.client_listen.port(), 3001);
        assert_eq!(s.token_ttl_ms, 2003);
        assert_eq!(s.dead_after_reports, 9);

        // A bad environment value is an error naming the variable.
        std::env::set_var("ELKO_TOKEN_TTL_MS", "soon");
        let e = Cli::try_parse_from(["elko-director"]).expect_err("bad env value");
        assert!(e.to_string().contains("soon"), "{e}");

        for v in ENV_VARS {
            std::env::remove_var(v);
        }
    }
}
