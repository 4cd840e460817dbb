//! `elko-contextd`: the context server.

use clap::Parser;
use elko_contextd::config::{Args, Config};
use elko_contextd::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() {
    elko_engine::init_logging("info");
    let cfg = match Config::resolve(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("elko-contextd: {e}");
            std::process::exit(2);
        }
    };
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("elko-contextd: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("elko-contextd: {e}");
            std::process::exit(2);
        }
    };
    let admin = server
        .admin_addr()
        .map(|a| format!(" admin={a}"))
        .unwrap_or_default();
    println!(
        "elko-contextd listening clients={} provider_id={}{admin}",
        server.local_addr, server.provider_id
    );
    // First signal: graceful stop. Second: exit at once.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            seen += 1;
            if seen == 1 {
                let _ = tx.send(sig);
            } else {
                eprintln!("elko-contextd: second signal, exiting now");
                std::process::exit(130);
            }
        }
    });
    if let Ok(sig) = rx.recv() {
        tracing::info!(
            signal = sig,
            "shutting down: checkpointing every context (signal again to exit at once)"
        );
        server.shutdown();
        tracing::info!("stopped");
    }
}
