//! Start the real `elko-contextd` binary and look at what it writes: an
//! operator's log file or journald gets plain text lines, not terminal colour
//! codes. Every wait is bounded; the child is killed if the test fails.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
    });
    let started = rx.recv_timeout(WAIT);
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) takes no pointers; the pid is our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("elko-contextd did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
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
