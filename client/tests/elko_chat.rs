//! The `elko-chat` binary against the fake director and context server: its
//! output lines, its exit statuses, and what the servers receive.

mod fake;

use elko_client::ReEnterReason;
use elko_protocol::{AppMessage, Denied, ErrorCode, Joined, Message, ReEnter, Said};
use fake::*;
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// Run elko-chat with `args`, feed it `stdin`, and wait (bounded) for it.
fn elko_chat(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_elko-chat"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("ELKO_DIRECTOR_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn elko-chat");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        // It may have exited already (usage errors): a broken pipe is fine.
        let _ = pipe.write_all(stdin);
    }
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("elko-chat did not exit within 15 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn pipes_stdin_lines_in_and_prints_events_out() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            let Some(e) = p.accept_enter(quiet_limits()) else {
                return;
            };
            p.send(snapshot(
                &e.context,
                &["bob", "alice"],
                &[("bob", "earlier")],
            ));
            p.send(Joined {
                user: "carol".into(),
            });
            p.send(AppMessage {
                op: 1,
                body: b"hi".to_vec(),
            });
            p.serve(&e.user);
        });
        let to = contextd.addr;
        let dir = director(move |n, req| Some(redirect(n, req, to)));
        let out = elko_chat(
            &[
                "--director",
                &dir.addr.to_string(),
                "--user",
                "alice",
                "--context",
                "room/1",
                "--linger",
                "0.5",
            ],
            b"hello\n\nworld\nbell\x07\n",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "status {:?}, stderr {stderr}",
            out.status
        );
        assert_eq!(
            lines(&out.stdout),
            [
                "entered room/1 as alice (2 members)",
                "history bob: earlier",
                "joined carol",
                "app 1 6869",
                "said alice: hello",
                "said alice: world",
                "said alice: bell\\u{7}",
            ],
            "stderr: {stderr}"
        );
        // The empty line was skipped; the session ended with an Exit.
        contextd.expect("c0 Say 1 hello");
        contextd.expect("c0 Say 2 world");
        contextd.expect("c0 Exit");
    });
}

#[test]
fn follows_a_reenter_and_reports_the_close_with_status_1() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            let Some(e) = p.accept_enter(quiet_limits()) else {
                return;
            };
            p.send(snapshot(&e.context, &[&e.user, "alice"], &[]));
            if p.index == 0 {
                p.send(ReEnter {
                    reason: ReEnterReason::SHUTDOWN,
                    message: "stopping".into(),
                });
                while p.recv_within(Duration::from_secs(2)).is_some() {}
            } else {
                p.send(Said {
                    context_seq: 1,
                    from: "alice".into(),
                    client_seq: 9,
                    sent_at_us: 0,
                    text: "welcome back".into(),
                });
                p.error(ErrorCode::SHUTTING_DOWN, "bye");
            }
        });
        let to = contextd.addr;
        let dir = director(move |n, req| Some(redirect(n, req, to)));
        let out = elko_chat(
            &[
                "--director",
                &dir.addr.to_string(),
                "--user",
                "carol",
                "--where-user",
                "alice",
                "--linger",
                "5",
            ],
            b"",
        );
        assert_eq!(
            lines(&out.stdout),
            [
                "entered home/alice as carol (2 members)",
                "reentered home/alice",
                "said alice: welcome back",
                "closed SHUTTING_DOWN (41): bye",
            ]
        );
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("SHUTTING_DOWN"), "{stderr}");
        dir.expect("c0 EnterWhereUser 1 carol alice");
        dir.expect("c0 EnterContext 2 carol home/alice");
    });
}

#[test]
fn a_denial_exits_with_status_1() {
    within(LIMIT, || {
        let dir = director(|_, req| {
            Some(Message::Denied(Denied {
                request_id: request_id(req),
                code: ErrorCode::NO_SUCH_USER,
                message: "nobody-here is in no context".into(),
            }))
        });
        let out = elko_chat(
            &[
                "--director",
                &dir.addr.to_string(),
                "--user",
                "x",
                "--where-user",
                "nobody-here",
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("NO_SUCH_USER"), "{stderr}");
    });
}

#[test]
fn connection_problems_exit_with_status_3() {
    within(LIMIT, || {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let out = elko_chat(
            &[
                "--director",
                &addr.to_string(),
                "--user",
                "x",
                "--context",
                "room/1",
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot connect"), "{stderr}");
    });
}

#[test]
fn usage_errors_exit_with_status_2() {
    within(LIMIT, || {
        for args in [
            &["--context", "room/1"][..],
            &["--user", "x"],
            &["--user", "x", "--context", "r", "--where-user", "y"],
            &["--user", "x", "--context", "r", "--linger", "-1"],
        ] {
            let out = elko_chat(args, b"");
            assert_eq!(out.status.code(), Some(2), "{args:?}");
        }
    });
}
