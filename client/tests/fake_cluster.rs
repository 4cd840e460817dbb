//! The client library against a fake director and a fake context server
//! scripted in each test (see `fake/mod.rs`): the whole client flow, the
//! heartbeats, re-entry, and how every refusal surfaces.

mod fake;

use elko_client::{Client, ClientError, ClientOptions, CloseReason, Event, ReEnterReason};
use elko_protocol::{AppMessage, Denied, ErrorCode, Joined, Left, Message, Ping, ReEnter};
use fake::*;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);

fn opts() -> ClientOptions {
    ClientOptions {
        client_name: "elko-client-test".into(),
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(2),
        max_reentries: 3,
        reentry_backoff: Duration::from_millis(5),
    }
}

/// A director sending every request to `contextd`.
fn director_to(contextd: &Fake) -> Fake {
    let to = contextd.addr;
    director(move |n, req| Some(redirect(n, req, to)))
}

/// The next event, which must come within [`STEP`].
fn next(s: &mut elko_client::Session) -> Event {
    s.next_event(Some(STEP))
        .expect("next_event")
        .expect("an event within the step")
}

#[test]
fn enters_through_the_director_and_talks() {
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
            p.send(Left {
                user: "carol".into(),
            });
            p.serve(&e.user);
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let mut s = client.enter("alice", "room/1").expect("enter");
        dir.expect("c0 EnterContext 1 alice room/1");
        contextd.expect("c0 Enter room/1 alice tok-1");
        assert_eq!(s.context(), "room/1");
        assert_eq!(s.user(), "alice");
        assert_eq!(s.server_addr(), contextd.addr);
        assert_eq!(s.snapshot().members, ["bob", "alice"]);
        assert_eq!(s.snapshot().history[0].from, "bob");
        assert_eq!(s.snapshot().history[0].text, "earlier");
        assert_eq!(next(&mut s), Event::Joined("carol".into()));
        assert_eq!(next(&mut s), Event::Left("carol".into()));

        assert_eq!(s.say("hello").expect("say"), 1);
        assert_eq!(s.say("world").expect("say"), 2);
        for (seq, text) in [(1, "hello"), (2, "world")] {
            match next(&mut s) {
                Event::Said(said) => {
                    assert_eq!(said.from, "alice");
                    assert_eq!(said.client_seq, seq);
                    assert_eq!(said.text, text);
                    assert!(said.sent_at_us > 0);
                }
                other => panic!("expected Said, got {other:?}"),
            }
        }
        s.send_app(1, b"topic").expect("send_app");
        assert_eq!(
            next(&mut s),
            Event::App {
                op: 1,
                body: b"topic".to_vec()
            }
        );
        assert_eq!(
            s.next_event(Some(Duration::from_millis(50)))
                .expect("quiet"),
            None
        );
        s.exit().expect("exit");
        contextd.expect("c0 Exit");
    });
}

#[test]
fn answers_the_servers_pings_and_pings_a_quiet_server() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            // Heartbeat 100 ms: the client must ping when it has been quiet that long.
            let Some(e) = p.accept_enter(limits(100, 5_000)) else {
                return;
            };
            p.send(snapshot(&e.context, &[&e.user], &[]));
            p.send(Ping { nonce: 42 });
            p.serve(&e.user);
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let mut s = client.enter("alice", "room/hb").expect("enter");
        // Nothing to receive: next_event just waits, heartbeating inside.
        let end = Instant::now() + Duration::from_millis(400);
        while Instant::now() < end {
            assert_eq!(
                s.next_event(Some(Duration::from_millis(50))).expect("ok"),
                None
            );
        }
        contextd.expect("c0 Pong 42");
        contextd.expect("c0 Ping");
        s.exit().expect("exit");
    });
}

#[test]
fn follows_a_reenter_back_through_the_director() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            let Some(e) = p.accept_enter(quiet_limits()) else {
                return;
            };
            if p.index == 0 {
                p.send(snapshot(&e.context, &[&e.user], &[]));
                p.send(ReEnter {
                    reason: ReEnterReason::MOVED,
                    message: "moved to another server".into(),
                });
                // Like a real server: read until the client closes, so a
                // Say crossing the ReEnter does not reset the connection.
                while p.recv_within(Duration::from_secs(2)).is_some() {}
            } else {
                p.send(snapshot(&e.context, &[&e.user], &[("alice", "before")]));
                p.serve(&e.user);
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let mut s = client.enter("alice", "room/move").expect("enter");
        s.say("lost or not")
            .expect("say before the ReEnter is read");
        match next(&mut s) {
            Event::ReEntered { snapshot, reason } => {
                assert_eq!(reason, ReEnterReason::MOVED);
                assert_eq!(snapshot.history[0].text, "before");
            }
            other => panic!("expected ReEntered, got {other:?}"),
        }
        assert_eq!(s.snapshot().history.len(), 1);
        // Same director connection, a fresh request and token.
        dir.expect("c0 EnterContext 1 alice room/move");
        dir.expect("c0 EnterContext 2 alice room/move");
        contextd.expect("c1 Enter room/move alice tok-2");
        // client_seq keeps counting across the re-entry.
        assert_eq!(s.say("after").expect("say"), 2);
        match next(&mut s) {
            Event::Said(said) => assert_eq!((said.client_seq, said.text.as_str()), (2, "after")),
            other => panic!("expected Said, got {other:?}"),
        }
        s.exit().expect("exit");
        contextd.expect("c1 Exit");
    });
}

#[test]
fn reenters_the_context_it_found_after_enter_where() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            let Some(e) = p.accept_enter(quiet_limits()) else {
                return;
            };
            p.send(snapshot(&e.context, &["alice", &e.user], &[]));
            if p.index == 0 {
                p.send(ReEnter {
                    reason: ReEnterReason::DRAIN,
                    message: "draining".into(),
                });
            } else {
                p.serve(&e.user);
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let mut s = client.enter_where("carol", "alice").expect("enter where");
        assert_eq!(s.context(), "home/alice");
        dir.expect("c0 EnterWhereUser 1 carol alice");
        assert!(matches!(next(&mut s), Event::ReEntered { .. }));
        // Back to the context by id, not to wherever alice is now.
        dir.expect("c0 EnterContext 2 carol home/alice");
        s.exit().expect("exit");
    });
}

#[test]
fn gives_up_after_three_reenters_in_a_row() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            if p.accept_enter(quiet_limits()).is_some() {
                p.send(ReEnter {
                    reason: ReEnterReason::DRAIN,
                    message: "draining".into(),
                });
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        match client.enter("alice", "room/drain") {
            Err(ClientError::TooManyReEntries {
                attempts, reason, ..
            }) => {
                assert_eq!(attempts, 3);
                assert_eq!(reason, ReEnterReason::DRAIN);
            }
            other => panic!("expected TooManyReEntries, got {other:?}"),
        }
        // One first try and three re-entries, no more.
        let asked = dir
            .seen(Duration::from_millis(100))
            .into_iter()
            .filter(|l| l.contains("EnterContext"))
            .count();
        assert_eq!(asked, 4);
    });
}

#[test]
fn an_expired_token_is_renewed_through_the_director() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            let Some(e) = p.accept_enter(quiet_limits()) else {
                return;
            };
            if p.index == 0 {
                p.error(ErrorCode::TOKEN_EXPIRED, "token expired 3 ms ago");
            } else {
                p.send(snapshot(&e.context, &[&e.user], &[]));
                p.serve(&e.user);
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let s = client
            .enter("alice", "room/slow")
            .expect("enter on the second try");
        contextd.expect("c0 Enter room/slow alice tok-1");
        contextd.expect("c1 Enter room/slow alice tok-2");
        s.exit().expect("exit");
    });
}

#[test]
fn a_refused_token_surfaces_as_a_server_error_with_its_code() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            if p.accept_enter(quiet_limits()).is_some() {
                p.error(ErrorCode::TOKEN_INVALID, "bad signature");
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        match client.enter("alice", "room/1") {
            Err(e @ ClientError::Server { .. }) => {
                assert_eq!(e.code(), Some(ErrorCode::TOKEN_INVALID));
                assert!(!e.is_transient(), "a forged token is not fixed by retrying");
                let text = e.to_string();
                assert!(
                    text.contains("TOKEN_INVALID") && text.contains("bad signature"),
                    "{text}"
                );
            }
            other => panic!("expected a server error, got {other:?}"),
        }
        // Not retried.
        let seen = dir.seen(Duration::from_millis(100));
        assert_eq!(seen, ["c0 EnterContext 1 alice room/1"]);
    });
}

#[test]
fn a_denial_surfaces_with_its_code_and_the_link_stays_usable() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            if let Some(e) = p.accept_enter(quiet_limits()) {
                p.send(snapshot(&e.context, &[&e.user], &[]));
                p.serve(&e.user);
            }
        });
        let to = contextd.addr;
        let dir = director(move |n, req| {
            Some(if n == 1 {
                Message::Denied(Denied {
                    request_id: request_id(req),
                    code: ErrorCode::NO_CAPACITY,
                    message: "no context server".into(),
                })
            } else {
                redirect(n, req, to)
            })
        });
        let client = Client::connect(dir.addr, opts()).expect("connect");
        match client.enter("alice", "room/full") {
            Err(ClientError::Denied { code, message }) => {
                assert_eq!(code, ErrorCode::NO_CAPACITY);
                assert_eq!(message, "no context server");
            }
            other => panic!("expected Denied, got {other:?}"),
        }
        let s = client.enter("alice", "room/full").expect("second try");
        dir.expect("c0 EnterContext 1 alice room/full");
        dir.expect("c0 EnterContext 2 alice room/full");
        s.exit().expect("exit");
    });
}

#[test]
fn an_error_frame_in_a_session_is_a_close_event_with_its_code() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            if let Some(e) = p.accept_enter(quiet_limits()) {
                p.send(snapshot(&e.context, &[&e.user], &[]));
                p.error(ErrorCode::SLOW_CONSUMER, "outbound queue overflow");
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let mut s = client.enter("alice", "room/1").expect("enter");
        match next(&mut s) {
            Event::Closed {
                reason: reason @ CloseReason::Server { .. },
            } => {
                assert_eq!(
                    reason,
                    CloseReason::Server {
                        code: ErrorCode::SLOW_CONSUMER,
                        message: "outbound queue overflow".into()
                    }
                );
                assert!(reason.is_transient());
            }
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(!s.is_open());
        assert!(matches!(s.next_event(None), Err(ClientError::SessionEnded)));
        assert!(matches!(s.say("hello"), Err(ClientError::SessionEnded)));
        s.exit().expect("exit after the end is a no-op");
    });
}

#[test]
fn a_silent_close_is_a_connection_lost_event() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            if let Some(e) = p.accept_enter(quiet_limits()) {
                p.send(snapshot(&e.context, &[&e.user], &[]));
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let mut s = client.enter("alice", "room/1").expect("enter");
        assert_eq!(
            next(&mut s),
            Event::Closed {
                reason: CloseReason::ConnectionLost
            }
        );
    });
}

#[test]
fn a_server_that_stops_answering_is_detected_by_the_heartbeat() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            if let Some(e) = p.accept_enter(limits(50, 200)) {
                p.send(snapshot(&e.context, &[&e.user], &[]));
                // Read (so the client's pings are delivered) but never answer.
                while p.recv_within(Duration::from_secs(3)).is_some() {}
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let mut s = client.enter("alice", "room/1").expect("enter");
        // The fake closes after 3 s of holding on; a Silent close proves
        // the heartbeat gave up first.
        match next(&mut s) {
            Event::Closed {
                reason: CloseReason::Silent { silent_for },
            } => assert!(silent_for >= Duration::from_millis(200), "{silent_for:?}"),
            other => panic!("expected Closed(Silent), got {other:?}"),
        }
    });
}

#[test]
fn a_handshake_refusal_surfaces_with_its_code() {
    within(LIMIT, || {
        let dir = Fake::start(|p| {
            p.error(ErrorCode::SERVER_FULL, "at the connection limit");
        });
        match Client::connect(dir.addr, opts()) {
            Err(ClientError::Server { code, addr, .. }) => {
                assert_eq!(code, ErrorCode::SERVER_FULL);
                assert_eq!(addr, dir.addr);
            }
            other => panic!("expected a server error, got {other:?}"),
        }
    });
}

#[test]
fn the_director_link_is_reopened_after_the_director_closed_it() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            if let Some(e) = p.accept_enter(quiet_limits()) {
                p.send(snapshot(&e.context, &[&e.user], &[]));
                p.serve(&e.user);
            }
        });
        let to = contextd.addr;
        // Each director connection answers one request, then times the
        // link out with an ErrorFrame and closes it.
        let dir = Fake::start(move |p| {
            if !p.handshake(quiet_limits()) {
                return;
            }
            if let Some(req) = p.recv() {
                p.note(format!("request {}", request_id(&req)));
                let n = request_id(&req);
                p.send(redirect(n, &req, to));
                p.error(ErrorCode::IDLE_TIMEOUT, "idle");
            }
        });
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let a = client.enter("alice", "room/1").expect("first enter");
        dir.expect("c0 request 1");
        // Let the ErrorFrame and the close arrive before the next request.
        std::thread::sleep(Duration::from_millis(100));
        let b = client
            .enter("bob", "room/1")
            .expect("second enter, new link");
        dir.expect("c1 request 2");
        a.exit().expect("exit");
        b.exit().expect("exit");
    });
}

#[test]
fn a_silent_director_times_out() {
    within(LIMIT, || {
        let dir = Fake::start(|p| {
            if p.handshake(quiet_limits()) {
                while p.recv_within(Duration::from_secs(5)).is_some() {}
            }
        });
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let start = Instant::now();
        match client.enter("alice", "room/1") {
            Err(e @ ClientError::Timeout { .. }) => assert!(e.is_transient()),
            other => panic!("expected a timeout, got {other:?}"),
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(4),
            "{took:?}"
        );
    });
}

#[test]
fn limits_are_checked_before_anything_is_sent() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            let mut l = quiet_limits();
            l.max_text_len = 8;
            if let Some(e) = p.accept_enter(l) {
                p.send(snapshot(&e.context, &[&e.user], &[]));
                p.serve(&e.user);
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        assert!(matches!(
            client.enter("", "room/1"),
            Err(ClientError::InvalidId {
                what: "user name",
                ..
            })
        ));
        assert!(matches!(
            client.enter("alice", "room\n1"),
            Err(ClientError::InvalidId {
                what: "context id",
                ..
            })
        ));
        let mut s = client.enter("alice", "room/1").expect("enter");
        match s.say("nine bytes") {
            Err(ClientError::TooLarge { len, max, .. }) => assert_eq!((len, max), (10, 8)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            s.send_app(1, &[0; 9]),
            Err(ClientError::TooLarge { .. })
        ));
        // Nothing was sent: the session still works.
        assert_eq!(s.say("short").expect("say"), 1);
        assert!(matches!(next(&mut s), Event::Said(_)));
        s.exit().expect("exit");
        // The first request the director saw is the valid one.
        dir.expect("c0 EnterContext 1 alice room/1");
    });
}

#[test]
fn a_connection_refused_is_a_connect_error() {
    within(LIMIT, || {
        // A port that was just free.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        match Client::connect(addr, opts()) {
            Err(e @ ClientError::Connect { .. }) => assert!(e.is_transient()),
            other => panic!("expected a connect error, got {other:?}"),
        }
        assert!(matches!(
            Client::connect("no port here", opts()),
            Err(ClientError::Resolve { .. })
        ));
    });
}

#[test]
fn an_app_message_from_the_server_is_an_event() {
    within(LIMIT, || {
        let contextd = Fake::start(|p| {
            if let Some(e) = p.accept_enter(quiet_limits()) {
                p.send(snapshot(&e.context, &[&e.user], &[]));
                p.send(AppMessage {
                    op: 4,
                    body: vec![0xde, 0xad],
                });
                p.serve(&e.user);
            }
        });
        let dir = director_to(&contextd);
        let client = Client::connect(dir.addr, opts()).expect("connect");
        let mut s = client.enter("alice", "auction/1").expect("enter");
        assert_eq!(
            next(&mut s),
            Event::App {
                op: 4,
                body: vec![0xde, 0xad]
            }
        );
        s.exit().expect("exit");
    });
}
