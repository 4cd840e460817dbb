//! Start the real `elko-contextd` binary and look at what it does as a
//! process: an operator's log file or journald gets plain text lines, not
//! terminal colour codes; a port another server listens on is refused, not
//! shared. Every wait is bounded; the child is killed if the test fails.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// `elko-contextd` with `args`, a checkpoint directory of its own, logging at
/// info, stdout and stderr piped, none of the test's `ELKO_*` settings.
fn contextd(args: &[&str], dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elko-contextd"));
    cmd.args(args)
        .arg("--checkpoint-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("ELKO_") || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("elko-contextd-{name}-{}", std::process::id()))
}

/// Wait for `child` to exit while reading its stderr to the end, on a thread,
/// so that a full pipe cannot hold it; SIGKILL it after [`WAIT`].
fn wait_with_output(child: std::process::Child) -> Output {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let Ok(out) = exited.recv_timeout(WAIT) else {
        // SAFETY: kill(2) takes no pointers; the pid is our own child, which
        // the waiting thread reaps.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("elko-contextd did not exit within {WAIT:?}");
    };
    out.expect("wait for elko-contextd")
}

#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = temp_dir("log");
    // A director address that refuses connections: the server logs its
    // attempts (warn) while it runs, and its shutdown (info) after SIGTERM.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let director = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let mut child = contextd(&["--listen", "127.0.0.1:0", "--director", &director], &dir)
        .spawn()
        .expect("spawn elko-contextd");
    // The start-up line says the signal handlers are in place.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line).map(|_| tx.send(line));
    });
    let started = rx.recv_timeout(WAIT);
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) takes no pointers; the pid is our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = wait_with_output(child);
    let (status, err) = (out.status, String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    let started = started.unwrap_or_else(|e| panic!("no start-up line ({e}); stderr:\n{err}"));
    assert!(started.starts_with("elko-contextd listening "), "{started}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("shutting down"),
        "no shutdown log line:\n{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in a log written to a pipe:\n{err:?}"
    );
}

#[test]
fn a_port_another_server_listens_on_is_refused_not_shared() {
    // Another server's listener that would admit a SO_REUSEPORT newcomer
    // (same user, SO_REUSEPORT set): the kernel alone would let the context
    // server join it and split new connections between the two.
    let other = elko_engine::bind_listener("127.0.0.1:0".parse().expect("addr"), true)
        .expect("bind the other listener");
    let addr = other.local_addr().expect("addr").to_string();
    let dir = temp_dir("port");
    let child = contextd(&["--listen", &addr, "--director", "127.0.0.1:1"], &dir)
        .spawn()
        .expect("spawn elko-contextd");
    let out = wait_with_output(child);
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}: address in use")),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "it must not say it listens");
}
