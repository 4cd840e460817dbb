//! Wiring: engine, disk threads, signals.

use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::host::{Host, HostConfig, LoopGauge};
use crate::io::DiskPool;
use elko_cluster::admin::AdminServer;
use elko_cluster::ClusterSecret;
use elko_engine::{Engine, EngineConfig, Limits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running context server.
#[derive(Debug)]
pub struct Server {
    engine: Engine<crate::host::Mail>,
    disk: DiskPool,
    grace: Duration,
    /// The bound client address.
    pub local_addr: SocketAddr,
    /// This server's provider id.
    pub provider_id: String,
    /// The operator endpoint, when `--admin-listen` is on.
    admin: Option<AdminServer>,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Secret(#[from] elko_cluster::SecretError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot listen on admin={addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Server {
    /// Start serving.
    pub fn start(cfg: Config) -> Result<Server, StartError> {
        let secret = ClusterSecret::resolve(
            cfg.secret_file.as_deref(),
            std::env::var("ELKO_SECRET").ok().as_deref(),
        )?;
        secret.check_bind(cfg.listen)?;
        if let Some(addr) = cfg.admin_listen {
            secret.check_bind(addr)?;
        }
        if secret.is_development() {
            tracing::warn!(
                "using the development cluster secret: only loopback addresses are allowed"
            );
        }
        // Before any thread starts, so reserving the descriptor table costs
        // no RCU wait.
        let _ = elko_engine::raise_fd_limit(1 << 20);
        let store = Arc::new(CheckpointStore::open(&cfg.checkpoint_dir)?);
        let ecfg = EngineConfig {
            loops: cfg.workers,
            pin_cpus: cfg.pin_cpus,
            server_id: cfg.provider_id.clone(),
            client_name: format!(
                "elko-contextd/{} {}",
                env!("CARGO_PKG_VERSION"),
                cfg.provider_id
            ),
            limits: Limits {
                max_connections_per_loop: cfg.max_connections_per_loop,
                heartbeat: cfg.heartbeat,
                idle_timeout: cfg.idle_timeout,
                ..Limits::default()
            },
            ..EngineConfig::default()
        };
        let loops = ecfg.loop_count();
        // Hold the port here so the address announced to directors carries
        // the real port (port 0 is allowed); the engine's listeners join it
        // through SO_REUSEPORT before the reservation is dropped. Both refuse
        // a port another server already listens on.
        let probe =
            elko_engine::ReservedPort::new(cfg.listen).map_err(|source| StartError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let bound = probe.addr();
        let (disk_handle, receivers) = DiskPool::channels(cfg.disk_threads);
        let gauges: Arc<Vec<LoopGauge>> =
            Arc::new((0..loops).map(|_| LoopGauge::default()).collect());
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let hc = Arc::new(HostConfig {
            provider_id: cfg.provider_id.clone(),
            client_addr: cfg.advertise.clone().unwrap_or_else(|| bound.to_string()),
            directors: cfg.directors.clone(),
            secret,
            epoch,
            capacity: cfg.capacity,
            history_len: cfg.history,
            linger: cfg.linger,
            empty_grace: Duration::from_secs(30),
            entry_wait: cfg.entry_wait,
            checkpoint_interval: cfg.checkpoint_interval,
            report_interval: cfg.report_interval,
            max_id_len: ecfg.limits.max_id_len,
            max_text_len: ecfg.limits.max_text_len,
            max_frame: ecfg.limits.max_frame,
        });
        let (dh, g) = (disk_handle.clone(), gauges.clone());
        let engine = Engine::start(ecfg, Some(bound), move |i| {
            Host::new(i, loops, hc.clone(), dh.clone(), g.clone())
        })
        .map_err(|source| StartError::Listen {
            addr: bound,
            source,
        })?;
        drop(probe);
        let disk = DiskPool::start(
            &disk_handle,
            receivers,
            store,
            cfg.checkpoint_dir.clone(),
            cfg.provider_id.clone(),
            engine.poster(),
        )
        .map_err(StartError::Threads)?;
        let admin = match cfg.admin_listen {
            Some(addr) => {
                let handler = crate::admin::handler(
                    cfg.provider_id.clone(),
                    gauges,
                    disk_handle,
                    engine.stats().to_vec(),
                );
                match AdminServer::start(addr, "contextd-admin", handler) {
                    Ok(a) => Some(a),
                    Err(source) => {
                        engine.shutdown(Duration::ZERO);
                        disk.finish();
                        return Err(StartError::Admin { addr, source });
                    }
                }
            }
            None => None,
        };
        Ok(Server {
            local_addr: bound,
            provider_id: cfg.provider_id,
            engine,
            disk,
            grace: cfg.shutdown_grace,
            admin,
        })
    }

    /// The operator endpoint's address, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Graceful stop: clients are sent back to the director, every context
    /// is checkpointed, directors are told; returns when all is on disk.
    pub fn shutdown(self) {
        drop(self.admin);
        self.engine.shutdown(self.grace);
        self.disk.finish();
    }
}
