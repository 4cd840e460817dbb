//! `elko-director`: start the engine with the director's handler, print the
//! bound addresses, and shut down on SIGTERM/SIGINT.
//!
//! Exit status: 0 after a graceful shutdown, 2 for a configuration or secret
//! error (including the development secret on a non-loopback address), 1 if
//! the listeners cannot be bound or the loop stops on its own, 130 when a
//! second signal interrupts the graceful shutdown.

use clap::Parser;
use elko_cluster::admin::AdminServer;
use elko_cluster::ClusterSecret;
use elko_director::config::{Cli, SecretSource, Settings};
use elko_director::directory::{Directory, DirectoryConfig};
use elko_director::server::DirectorHandler;
use elko_engine::{AcceptMode, Engine, EngineConfig, Limits};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// Time allowed for queued output to leave after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    elko_engine::init_logging("info");
    let cli = Cli::parse();
    let settings = match Settings::load(cli) {
        Ok(s) => s,
        Err(e) => return fail(2, &e),
    };
    let secret = match settings.secret_source(std::env::var("ELKO_SECRET").ok()) {
        SecretSource::File(path) => ClusterSecret::resolve(Some(&path), None),
        SecretSource::Env(value) => ClusterSecret::resolve(None, Some(&value)),
        SecretSource::Development => Ok(ClusterSecret::development()),
    };
    let secret = match secret {
        Ok(s) => s,
        Err(e) => return fail(2, &e),
    };
    for addr in [settings.client_listen, settings.provider_listen]
        .into_iter()
        .chain(settings.admin_listen)
    {
        if let Err(e) = secret.check_bind(addr) {
            return fail(2, &e);
        }
    }
    if secret.is_development() {
        tracing::warn!("using the built-in development cluster secret: loopback addresses only");
    }

    // Every client holds a descriptor while it asks; a crowd arriving at once
    // (a restart, a drained server's clients) must not wait for the table to
    // grow. Before any thread starts, so growing it costs no RCU wait.
    let _ = elko_engine::raise_fd_limit(1 << 20);

    // Signals first, so one arriving during start-up is not fatal.
    let (sig_tx, sig_rx) = mpsc::channel();
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => return fail(1, &format!("cannot install signal handlers: {e}")),
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig_tx.send(sig).is_err() {
                break;
            }
        }
    });

    let dir_cfg = DirectoryConfig {
        token_ttl_ms: settings.token_ttl_ms,
        report_interval: settings.report_interval,
        dead_after_reports: settings.dead_after_reports,
        ..DirectoryConfig::new(settings.director_id.clone())
    };
    let engine_cfg = EngineConfig {
        // One loop owns the directory: see the `server` module docs.
        loops: 1,
        // One loop needs no SO_REUSEPORT group: a plain listener, which no
        // other socket can join at all (the engine's groups refuse a taken
        // port at start, but a later SO_REUSEPORT socket could still join).
        accept_mode: AcceptMode::Single,
        server_id: settings.director_id.clone(),
        limits: Limits {
            heartbeat: settings.heartbeat,
            idle_timeout: settings.idle_timeout,
            ..Limits::default()
        },
        ..EngineConfig::default()
    };
    let max_id_len = engine_cfg.limits.max_id_len;
    let tick = DirectorHandler::tick_for(settings.report_interval);
    let engine = Engine::start_multi(
        engine_cfg,
        &[settings.client_listen, settings.provider_listen],
        move |_| {
            let cfg = DirectoryConfig {
                max_id_len,
                ..dir_cfg.clone()
            };
            DirectorHandler::new(Directory::new(cfg, secret.clone()), tick)
        },
    );
    let engine = match engine {
        Ok(e) => e,
        Err(e) => {
            return fail(
                1,
                &format!(
                    "cannot listen on clients={} providers={}: {e}",
                    settings.client_listen, settings.provider_listen
                ),
            )
        }
    };
    let admin = match settings.admin_listen {
        Some(addr) => {
            let handler = elko_director::admin::handler(engine.poster(), engine.stats().to_vec());
            match AdminServer::start(addr, "director-admin", handler) {
                Ok(a) => Some(a),
                Err(e) => {
                    engine.shutdown(Duration::ZERO);
                    return fail(1, &format!("cannot listen on admin={addr}: {e}"));
                }
            }
        }
        None => None,
    };
    let admin_field = admin
        .as_ref()
        .map(|a| format!(" admin={}", a.local_addr()))
        .unwrap_or_default();
    let addrs = engine.local_addrs();
    tracing::info!(
        director_id = %settings.director_id,
        clients = %addrs[0],
        providers = %addrs[1],
        admin = ?admin.as_ref().map(AdminServer::local_addr),
        "director started"
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "elko-director listening clients={} providers={}{admin_field}",
        addrs[0], addrs[1]
    );
    let _ = out.flush();
    drop(out);

    let mut stopping = false;
    loop {
        match sig_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(sig) if stopping => {
                tracing::warn!(signal = sig, "second signal: exiting at once");
                return ExitCode::from(130);
            }
            Ok(sig) => {
                tracing::info!(signal = sig, "signal: graceful shutdown");
                engine.begin_shutdown(SHUTDOWN_GRACE);
                stopping = true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // No more signals can arrive; keep waiting for the engine.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100))
            }
        }
        if engine.is_finished() {
            break;
        }
    }
    engine.join();
    if stopping {
        tracing::info!("stopped");
        ExitCode::SUCCESS
    } else {
        fail(1, &"the event loop stopped unexpectedly")
    }
}

fn fail(status: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("elko-director: {e}");
    ExitCode::from(status)
}
