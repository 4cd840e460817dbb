//! Start the real `elko-contextd` binary and look at what it writes: an
//! operator's log file or journald gets plain text lines, not terminal colour
//! codes. Every wait is bounded; the child is killed if the test fails.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = std::env::temp_dir().join(format!("elko-contextd-log-{}", std::process::id()));
    // A director address that refuses connections: the server logs its
    // attempts (warn) while it runs, and its shutdown (info) after SIGTERM.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let director = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elko-contextd"));
    cmd.args(["--listen", "127.0.0.1:0", "--director", &director])
        .arg("--checkpoint-dir")
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("ELKO_") || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("spawn elko-contextd");
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
    // Wait for the exit while reading stderr to its end, on a thread, so
    // that a full pipe cannot hold the child and the wait stays bounded.
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let Ok(out) = exited.recv_timeout(WAIT) else {
        // SAFETY: as above; the waiting thread reaps it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("elko-contextd did not exit within {WAIT:?} of SIGTERM");
    };
    let out = out.expect("wait for elko-contextd");
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
