//! The client library and `elko-chat` against real `elko-director` and
//! `elko-contextd` processes on 127.0.0.1 (built on first use). The fake
//! servers of `fake_cluster.rs` check the client's side of each rule; these
//! check that it agrees with the real servers.

#[path = "../../contextd/tests/support/mod.rs"]
mod support;

use elko_client::{Client, ClientError, ClientOptions, Event};
use elko_protocol::ErrorCode;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn client(d: &Director) -> Client {
    wait_for(Duration::from_secs(10), "director", || {
        Client::connect(d.clients, ClientOptions::default()).ok()
    })
}

fn enter(d: &Director, user: &str, context: &str) -> elko_client::Session {
    wait_for(
        Duration::from_secs(10),
        "a registered context server",
        || client(d).enter(user, context).ok(),
    )
}

fn next_said(s: &mut elko_client::Session) -> (String, String) {
    loop {
        match s.next_event(Some(Duration::from_secs(10))).expect("event") {
            Some(Event::Said(x)) => return (x.from, x.text),
            Some(_) => {}
            None => panic!("no utterance within 10 s"),
        }
    }
}

#[test]
fn the_library_enters_talks_follows_users_and_reports_denials() {
    let dir = TempDir::new("client-lib");
    let d = start_director(100);
    let _c = start_contextd(&[&d], &dir.0, "cd-lib", &[]);
    let mut alice = enter(&d, "alice", "room/lib");
    assert_eq!(alice.snapshot().members, vec!["alice".to_string()]);
    let mut bob = client(&d).enter("bob", "room/lib").expect("bob enters");
    assert_eq!(
        alice
            .next_event(Some(Duration::from_secs(5)))
            .expect("event"),
        Some(Event::Joined("bob".into()))
    );
    bob.say("hello").expect("say");
    assert_eq!(next_said(&mut alice), ("bob".into(), "hello".into()));
    assert_eq!(next_said(&mut bob), ("bob".into(), "hello".into()));
    let carol = wait_for(
        Duration::from_secs(5),
        "the director to learn where alice is",
        || client(&d).enter_where("carol", "alice").ok(),
    );
    assert_eq!(carol.context(), "room/lib");
    bob.exit().expect("exit");
    loop {
        match alice
            .next_event(Some(Duration::from_secs(5)))
            .expect("event")
        {
            Some(Event::Left(u)) if u == "bob" => break,
            Some(_) => {}
            None => panic!("no Left for bob"),
        }
    }
    match client(&d).enter_where("dave", "nobody-here") {
        Err(ClientError::Denied { code, .. }) => assert_eq!(code, ErrorCode::NO_SUCH_USER),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert!(matches!(
        client(&d).enter("", "room/lib"),
        Err(ClientError::InvalidId { .. })
    ));
}

#[test]
fn a_shutdown_sends_the_client_back_through_the_director_to_another_server() {
    let dir = TempDir::new("client-reenter");
    let d = start_director(100);
    let a = start_contextd(&[&d], &dir.0, "cd-x", &[]);
    let b = start_contextd(&[&d], &dir.0, "cd-y", &[]);
    let mut s = enter(&d, "ann", "room/move");
    s.say("before").expect("say");
    next_said(&mut s);
    let mut procs = vec![a, b];
    let victim = procs
        .iter()
        .position(|p| p.addr == s.server_addr())
        .expect("the session's server is ours");
    let pid = procs[victim].proc.child.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _stopped = procs.remove(victim);
    // Ann is sent back (ReEnter SHUTDOWN), asks the director again and
    // lands on the other server, where the context resumes from the
    // checkpoint written at shutdown.
    let survivor = procs[0].addr;
    match s
        .next_event(Some(Duration::from_secs(10)))
        .expect("session survives")
    {
        Some(Event::ReEntered { snapshot, .. }) => {
            let h: Vec<&str> = snapshot.history.iter().map(|h| h.text.as_str()).collect();
            assert_eq!(h, vec!["before"], "history survives the move");
        }
        other => panic!("expected ReEntered, got {other:?}"),
    }
    assert_eq!(s.server_addr(), survivor);
    s.say("after").expect("say");
    assert_eq!(next_said(&mut s), ("ann".into(), "after".into()));
}

#[test]
fn elko_chat_pipes_lines_in_and_events_out() {
    let dir = TempDir::new("client-chat");
    let d = start_director(100);
    let _c = start_contextd(&[&d], &dir.0, "cd-chat", &[]);
    let mut bob = enter(&d, "bob", "room/pipe");
    let mut child = Command::new(bin("elko-chat"))
        .args([
            "--director",
            &d.clients.to_string(),
            "--user",
            "carol",
            "--context",
            "room/pipe",
            "--linger",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn elko-chat");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"hello\nworld\n").expect("write");
    }
    assert_eq!(next_said(&mut bob), ("carol".into(), "hello".into()));
    bob.say("hi carol").expect("say");
    let out = child.wait_with_output().expect("elko-chat finishes");
    assert!(out.status.success(), "exit status {:?}", out.status);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "entered room/pipe as carol (2 members)", "{text}");
    for want in [
        "said carol: hello",
        "said carol: world",
        "said bob: hi carol",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{text}");
    }
    loop {
        match bob.next_event(Some(Duration::from_secs(5))).expect("event") {
            Some(Event::Left(u)) if u == "carol" => break,
            Some(_) => {}
            None => panic!("carol never left"),
        }
    }
}

#[test]
fn elko_chat_reports_a_refusal_with_status_1() {
    let dir = TempDir::new("client-refused");
    let d = start_director(100);
    let _c = start_contextd(&[&d], &dir.0, "cd-ref", &[]);
    let out = Command::new(bin("elko-chat"))
        .args([
            "--director",
            &d.clients.to_string(),
            "--user",
            "x",
            "--where-user",
            "nobody-here",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("NO_SUCH_USER"));
}
