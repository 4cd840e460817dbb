//! End to end: real `elko-director` and `elko-contextd` processes on
//! 127.0.0.1, ports chosen by the kernel, every wait bounded.

mod support;

use elko_cluster::{ClusterSecret, TokenClaims, TokenIssuer};
use elko_protocol::{AppMessage, ErrorCode, Exit, Message, ReEnterReason};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn dev_issuer() -> TokenIssuer {
    TokenIssuer::new(ClusterSecret::development(), 30_000)
}

/// Context directories in a checkpoint dir (one per context ever activated).
fn context_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .count()
        })
        .unwrap_or(0)
}

/// Generation files of the only/each context, newest last.
fn generations(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(dir).expect("dir").filter_map(Result::ok) {
        if d.path().is_dir() {
            for f in std::fs::read_dir(d.path())
                .expect("ctx dir")
                .filter_map(Result::ok)
            {
                if f.path().extension().is_some_and(|e| e == "ckpt") {
                    v.push(f.path());
                }
            }
        }
    }
    v.sort();
    v
}

#[test]
fn enter_say_join_leave_and_history_through_director_and_contextd() {
    let dir = TempDir::new("flow");
    let d = start_director(100);
    let _c = start_contextd(&[&d], &dir.0, "cd-flow", &[]);
    let mut alice = wait_for(Duration::from_secs(10), "a registered contextd", || {
        let (addr, tok) = match std::panic::catch_unwind(|| ask(d.clients, "alice", "room/1")) {
            Ok(v) => v,
            Err(_) => return None,
        };
        Member::enter_at(addr, "alice", "room/1", tok).ok()
    });
    assert_eq!(alice.snapshot.members, vec!["alice".to_string()]);
    assert_eq!(alice.snapshot.app, "chat");
    let mut bob = Member::enter(d.clients, "bob", "room/1");
    let mut members = bob.snapshot.members.clone();
    members.sort();
    assert_eq!(members, vec!["alice".to_string(), "bob".to_string()]);
    match alice.next() {
        Message::Joined(j) => assert_eq!(j.user, "bob"),
        other => panic!("expected Joined, got {other:?}"),
    }
    bob.say("hi");
    alice.say("yo");
    let a = alice.said(2);
    let b = bob.said(2);
    assert_eq!(a, b, "every member sees every utterance in the same order");
    assert_eq!(a[0].0 + 1, a[1].0, "context_seq increases by one");
    bob.conn.send(&Exit {});
    assert!(bob.conn.recv().is_none(), "server closes after Exit");
    match alice.next() {
        Message::Left(l) => assert_eq!(l.user, "bob"),
        other => panic!("expected Left, got {other:?}"),
    }
    let carol = Member::enter(d.clients, "carol", "room/1");
    let texts: Vec<&str> = carol
        .snapshot
        .history
        .iter()
        .map(|h| h.text.as_str())
        .collect();
    assert_eq!(
        texts,
        a.iter().map(|x| x.2.as_str()).collect::<Vec<_>>(),
        "history in the snapshot"
    );

    // Enter where a user is (the director learns of carol asynchronously).
    let r = wait_for(
        Duration::from_secs(5),
        "the director to learn where carol is",
        || match ask_where(d.clients, "dave", "carol") {
            Message::Redirect(r) => Some(r),
            Message::Denied(x) if x.code == ErrorCode::NO_SUCH_USER => None,
            other => panic!("expected Redirect, got {other:?}"),
        },
    );
    assert_eq!(r.context, "room/1");
    match ask_where(d.clients, "dave", "nobody") {
        Message::Denied(x) => assert_eq!(x.code, ErrorCode::NO_SUCH_USER),
        other => panic!("expected Denied, got {other:?}"),
    }
}

/// The value of one sample line (`name{labels} value`) summed over every
/// series whose name and labels start with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn operators_read_metrics_of_both_servers_and_drain_a_contextd_through_the_director() {
    use elko_cluster::admin::http_request;
    let dir = TempDir::new("admin");
    let d = start_director_with(100, &["--admin-listen", "127.0.0.1:0"]);
    let c = start_contextd(
        &[&d],
        &dir.0,
        "cd-admin",
        &["--admin-listen", "127.0.0.1:0"],
    );
    let (d_admin, c_admin) = (
        d.admin.expect("director admin="),
        c.admin.expect("contextd admin="),
    );
    let get = |addr, target: &str| {
        let (status, body) = http_request(addr, "GET", target).expect(target);
        assert_eq!(status, 200, "{target}: {body}");
        body
    };
    assert_eq!(get(c_admin, "/health"), "ok\n");

    let mut alice = wait_for(Duration::from_secs(10), "a registered contextd", || {
        let (addr, tok) = match std::panic::catch_unwind(|| ask(d.clients, "alice", "room/1")) {
            Ok(v) => v,
            Err(_) => return None,
        };
        Member::enter_at(addr, "alice", "room/1", tok).ok()
    });
    alice.say("hello");
    assert_eq!(alice.said(1)[0].2, "hello");

    // The context server counts what it hosts, per loop.
    wait_for(
        Duration::from_secs(5),
        "contextd metrics with alice",
        || {
            let m = get(c_admin, "/metrics");
            (metric_sum(&m, "elko_contextd_contexts{") == 1.0
                && metric_sum(&m, "elko_contextd_users{") == 1.0
                && metric_sum(&m, "elko_contextd_loop_frames_in_total{") >= 2.0
                && metric_sum(&m, "elko_contextd_activations_total ") == 1.0
                && metric_sum(&m, "elko_contextd_checkpoint_errors_total ") == 0.0)
                .then_some(())
        },
    );
    // The director sees it through the load reports.
    wait_for(
        Duration::from_secs(5),
        "director metrics with alice",
        || {
            let m = get(d_admin, "/metrics");
            (metric_sum(&m, "elko_director_contexts_active ") == 1.0
                && metric_sum(&m, "elko_director_provider_users{provider=\"cd-admin\"}") == 1.0
                && metric_sum(&m, "elko_director_redirects_total ") >= 1.0)
                .then_some(())
        },
    );

    // Drain: the client is sent back through the director, and nothing new
    // is placed on the drained server.
    let (status, body) =
        http_request(d_admin, "POST", "/drain?provider=cd-admin").expect("POST /drain");
    assert_eq!(status, 200, "{body}");
    match alice.next() {
        Message::ReEnter(r) => assert_eq!(r.reason, ReEnterReason::DRAIN),
        other => panic!("expected ReEnter DRAIN, got {other:?}"),
    }
    assert!(get(d_admin, "/providers").contains("\"draining\":true"));
    let mut client = Conn::connect(d.clients);
    client.send(&elko_protocol::EnterContext {
        request_id: 5,
        user: "bob".into(),
        context: "room/2".into(),
    });
    match client.recv() {
        Some(Message::Denied(x)) => assert_eq!(x.code, ErrorCode::NO_CAPACITY),
        other => panic!("expected Denied NO_CAPACITY, got {other:?}"),
    }
}

/// Wait until `context` is unloaded: its lock file is released (empty).
fn wait_unloaded(dir: &Path) {
    wait_for(Duration::from_secs(10), "unload (lock released)", || {
        let mut any = false;
        for d in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
            let lock = d.path().join("holder.lock");
            if lock.exists() {
                any = true;
                if std::fs::metadata(&lock).ok()?.len() != 0 {
                    return None;
                }
            }
        }
        any.then_some(())
    });
}

#[test]
fn unload_and_reactivation_keep_history_and_corrupt_generations_are_refused() {
    let dir = TempDir::new("unload");
    let d = start_director(100);
    let c = start_contextd(&[&d], &dir.0, "cd-unload", &[]);
    let enter = |user: &str| {
        wait_for(Duration::from_secs(10), "entry", || {
            let (addr, tok) = std::panic::catch_unwind(|| ask(d.clients, user, "room/h")).ok()?;
            Member::enter_at(addr, user, "room/h", tok).ok()
        })
    };
    let mut a = enter("ann");
    a.say("one");
    a.said(1);
    a.conn.send(&Exit {});
    assert!(a.conn.recv().is_none());
    wait_unloaded(&dir.0);
    let gens_after_one = generations(&dir.0);
    assert!(
        !gens_after_one.is_empty(),
        "a checkpoint was written on unload"
    );

    let mut a = enter("ann");
    assert_eq!(
        a.snapshot
            .history
            .iter()
            .map(|h| h.text.clone())
            .collect::<Vec<_>>(),
        vec!["one"]
    );
    a.say("two");
    a.said(1);
    a.conn.send(&Exit {});
    assert!(a.conn.recv().is_none());
    wait_unloaded(&dir.0);
    // Now generation 1 holds ["one"] and generation 2 ["one", "two"].

    // Stop the server, damage the newest generation, start again: the older
    // generation loads, the damaged one is never used.
    drop(c);
    let gens = generations(&dir.0);
    let newest = gens.last().expect("generations").clone();
    let mut bytes = std::fs::read(&newest).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&newest, &bytes).expect("flip a bit");
    let _c2 = start_contextd(&[&d], &dir.0, "cd-unload-2", &[]);
    let a = enter("ann");
    let h: Vec<String> = a.snapshot.history.iter().map(|h| h.text.clone()).collect();
    assert_eq!(
        h,
        vec!["one"],
        "the bit-flipped newest generation must not load; the older one does"
    );
    drop(a);
    wait_unloaded(&dir.0);

    // Torn: the newest generation cut short.
    let gens = generations(&dir.0);
    let newest = gens.last().expect("generations").clone();
    let len = std::fs::metadata(&newest).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    let a = enter("ann");
    let h: Vec<String> = a.snapshot.history.iter().map(|h| h.text.clone()).collect();
    assert_eq!(h, vec!["one"], "the torn newest generation must not load");
}

#[test]
fn token_attacks_are_refused_with_their_codes_and_activate_nothing() {
    let dir = TempDir::new("tokens");
    let d = start_director(100);
    let c = start_contextd(&[&d], &dir.0, "cd-tokens", &[]);
    let issuer = dev_issuer();

    // Forged: signed with another secret.
    let other = TokenIssuer::new(
        ClusterSecret::from_bytes(vec![9; 32], "test").expect("secret"),
        30_000,
    );
    let (forged, _) = other.issue("room/forged", "eve", now_ms());
    let mut conn = Member::enter_at(c.addr, "eve", "room/forged", forged)
        .err()
        .flatten();
    assert!(
        matches!(conn.take(), Some(Message::ErrorFrame(e)) if e.code == ErrorCode::TOKEN_INVALID)
    );

    // Expired.
    let claims = TokenClaims {
        nonce: 7,
        issued_at_ms: now_ms() - 120_000,
        expires_at_ms: now_ms() - 60_000,
        context: "room/expired".into(),
        user: "eve".into(),
    };
    let r = Member::enter_at(c.addr, "eve", "room/expired", issuer.encode(&claims))
        .err()
        .flatten();
    assert!(matches!(r, Some(Message::ErrorFrame(e)) if e.code == ErrorCode::TOKEN_EXPIRED));

    // Wrong context.
    let (tok, _) = issuer.issue("room/a", "eve", now_ms());
    let r = Member::enter_at(c.addr, "eve", "room/b", tok)
        .err()
        .flatten();
    assert!(matches!(r, Some(Message::ErrorFrame(e)) if e.code == ErrorCode::TOKEN_WRONG_CONTEXT));

    // Wrong user.
    let (tok, _) = issuer.issue("room/a", "eve", now_ms());
    let r = Member::enter_at(c.addr, "mallory", "room/a", tok)
        .err()
        .flatten();
    assert!(matches!(r, Some(Message::ErrorFrame(e)) if e.code == ErrorCode::TOKEN_WRONG_CONTEXT));

    // Garbage.
    let r = Member::enter_at(c.addr, "eve", "room/a", vec![1, 2, 3])
        .err()
        .flatten();
    assert!(matches!(r, Some(Message::ErrorFrame(e)) if e.code == ErrorCode::TOKEN_INVALID));

    assert_eq!(
        context_dirs(&dir.0),
        0,
        "no refused token activated anything"
    );

    // A valid token the director never saw: the context server activates
    // the context itself and admits the client (the early-arrival race).
    let (tok, _) = issuer.issue("room/direct", "eve", now_ms());
    let m =
        Member::enter_at(c.addr, "eve", "room/direct", tok.clone()).expect("valid token admitted");
    assert_eq!(m.snapshot.members, vec!["eve".to_string()]);
    // Replayed.
    let r = Member::enter_at(c.addr, "eve", "room/direct", tok)
        .err()
        .flatten();
    assert!(matches!(r, Some(Message::ErrorFrame(e)) if e.code == ErrorCode::TOKEN_REPLAYED));
    assert_eq!(context_dirs(&dir.0), 1);
}

#[test]
fn a_killed_contextd_s_contexts_reactivate_elsewhere_from_their_checkpoint() {
    let dir = TempDir::new("kill");
    let d = start_director(100);
    let fast = ["--checkpoint-interval-ms", "100"];
    let a = start_contextd(&[&d], &dir.0, "cd-a", &fast);
    let b = start_contextd(&[&d], &dir.0, "cd-b", &fast);
    let mut procs = vec![a, b];
    let mut m = wait_for(Duration::from_secs(10), "entry", || {
        let (addr, tok) = std::panic::catch_unwind(|| ask(d.clients, "kim", "room/k")).ok()?;
        Member::enter_at(addr, "kim", "room/k", tok).ok()
    });
    let host = m.conn.stream.peer_addr().expect("peer");
    for t in ["a", "b", "c"] {
        m.say(t);
    }
    m.said(3);
    // Let the periodic checkpoint run.
    std::thread::sleep(Duration::from_millis(600));
    let victim = procs
        .iter()
        .position(|p| p.addr == host)
        .expect("host is one of ours");
    let mut killed = procs.remove(victim);
    killed.proc.child.kill().expect("SIGKILL");
    let _ = killed.proc.child.wait();
    assert!(
        m.conn.recv().is_none(),
        "the member's connection died with its server"
    );
    let survivor = procs[0].addr;
    let m2 = wait_for(
        Duration::from_secs(10),
        "reactivation on the survivor",
        || {
            let (addr, tok) = std::panic::catch_unwind(|| ask(d.clients, "kim", "room/k")).ok()?;
            if addr != survivor {
                return None; // the director has not declared the dead one yet
            }
            Member::enter_at(addr, "kim", "room/k", tok).ok()
        },
    );
    let h: Vec<String> = m2.snapshot.history.iter().map(|h| h.text.clone()).collect();
    assert_eq!(h, vec!["a", "b", "c"], "resumed from the last checkpoint");
}

#[test]
fn two_hundred_clients_through_two_directors_meet_in_one_instance() {
    let dir = TempDir::new("race");
    let d1 = start_director(100);
    let d2 = start_director(100);
    let _a = start_contextd(&[&d1, &d2], &dir.0, "cd-r1", &[]);
    let _b = start_contextd(&[&d1, &d2], &dir.0, "cd-r2", &[]);
    // Both contextds registered with both directors.
    std::thread::sleep(Duration::from_millis(500));
    let dirs = [d1.clients, d2.clients];
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let director = dirs[i % 2];
            std::thread::spawn(move || {
                let user = format!("u{i}");
                for _attempt in 0..10 {
                    let (addr, tok) = ask(director, &user, "room/race");
                    match Member::enter_at(addr, &user, "room/race", tok) {
                        Ok(m) => return m,
                        Err(Some(Message::ReEnter(r))) => {
                            assert_eq!(r.reason, ReEnterReason::MOVED);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(other) => panic!("{user}: entry refused: {other:?}"),
                    }
                }
                panic!("{user}: no entry after 10 attempts");
            })
        })
        .collect();
    let mut members: Vec<Member> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let hosts: std::collections::HashSet<_> = members
        .iter()
        .map(|m| m.conn.stream.peer_addr().expect("peer"))
        .collect();
    assert_eq!(
        hosts.len(),
        1,
        "one instance of the context in the whole cluster"
    );
    // Everybody hears one utterance: they share the instance.
    members[0].say("all here?");
    for m in members.iter_mut() {
        let got = m.said(1);
        assert_eq!(got[0].2, "all here?");
    }
    assert_eq!(context_dirs(&dir.0), 1);
}

#[test]
fn an_auction_closes_on_its_timer_with_nobody_present() {
    let dir = TempDir::new("auction");
    let d = start_director(100);
    let _c = start_contextd(&[&d], &dir.0, "cd-auction", &[]);
    let mut m = wait_for(Duration::from_secs(10), "entry", || {
        let (addr, tok) =
            std::panic::catch_unwind(|| ask(d.clients, "ann", "auction/vase")).ok()?;
        Member::enter_at(addr, "ann", "auction/vase", tok).ok()
    });
    assert_eq!(m.snapshot.app, "auction");
    m.conn.send(&AppMessage {
        op: 1,
        body: 400u64.to_le_bytes().to_vec(),
    }); // OPEN 400 ms
    m.conn.send(&AppMessage {
        op: 2,
        body: 25u64.to_le_bytes().to_vec(),
    }); // BID 25
    match m.next() {
        Message::AppMessage(a) => assert_eq!(a.op, 3, "HIGH_BID"),
        other => panic!("expected HIGH_BID, got {other:?}"),
    }
    m.conn.send(&Exit {});
    assert!(m.conn.recv().is_none());
    // Nobody is in the room when the timer fires; the context then unloads.
    std::thread::sleep(Duration::from_millis(600));
    wait_unloaded(&dir.0);
    let m = Member::enter(d.clients, "bob", "auction/vase");
    #[derive(serde::Deserialize, Debug)]
    struct State {
        _end_at_ms: u64,
        highest: Option<(String, u64)>,
        bids: u64,
        closed: bool,
    }
    let (s, _): (State, usize) =
        bincode::serde::decode_from_slice(&m.snapshot.state, elko_protocol::codec::CONFIG)
            .expect("state decodes");
    assert!(s.closed, "closed by its timer: {s:?}");
    assert_eq!(s.highest, Some(("ann".to_string(), 25)));
    assert_eq!(s.bids, 1);
}

#[test]
fn a_stopped_contextd_checkpoints_every_context_and_exits_promptly() {
    // SIGTERM with contexts active: each is checkpointed and released, the
    // members are sent back to the director, and the process exits. (The disk
    // threads used to retry their reports to the stopped loops for 10 s per
    // context, so a graceful stop took minutes.)
    const ROOMS: usize = 8;
    let dir = TempDir::new("stop");
    let d = start_director(100);
    let mut a = start_contextd(&[&d], &dir.0, "cd-stop", &[]);
    // Through the director, once the server has registered there.
    let enter = |i: usize| {
        let (user, room) = (format!("u{i}"), format!("room/stop{i}"));
        wait_for(Duration::from_secs(10), "entry", || {
            let (addr, tok) = std::panic::catch_unwind(|| ask(d.clients, &user, &room)).ok()?;
            Member::enter_at(addr, &user, &room, tok).ok()
        })
    };
    let mut members: Vec<Member> = (0..ROOMS)
        .map(|i| {
            let mut m = enter(i);
            m.say(&format!("before the stop {i}"));
            m.said(1);
            m
        })
        .collect();
    let pid = a.proc.child.id() as libc::pid_t;
    let stopped_at = std::time::Instant::now();
    // SAFETY: kill takes no pointers; the pid is our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM");
    let status = wait_for(Duration::from_secs(20), "contextd to exit", || {
        a.proc.child.try_wait().expect("try_wait")
    });
    let took = stopped_at.elapsed();
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    assert!(took < Duration::from_secs(5), "graceful stop took {took:?}");
    for m in &mut members {
        match m.conn.recv() {
            Some(Message::ReEnter(r)) => assert_eq!(r.reason, ReEnterReason::SHUTDOWN),
            other => panic!("expected ReEnter SHUTDOWN, got {other:?}"),
        }
    }
    // Every context was checkpointed and released: another server resumes
    // each from its last utterance.
    let _b = start_contextd(&[&d], &dir.0, "cd-after", &[]);
    for i in 0..ROOMS {
        let m = enter(i);
        let h: Vec<&str> = m.snapshot.history.iter().map(|h| h.text.as_str()).collect();
        assert_eq!(h, vec![format!("before the stop {i}")], "room {i}");
    }
}

#[test]
fn a_restarted_director_routes_to_the_contexts_already_active() {
    // A director keeps no state of its own: one that restarts learns from
    // the context servers (which reconnect and report what they hold) where
    // each active context lives, so a newcomer joins the members already
    // there instead of a second instance being activated elsewhere.
    const ROOMS: usize = 6;
    let dir = TempDir::new("restart");
    // A secret of this test's own: the dead director's ports are free until
    // the new one binds them, and another test's director that got one of
    // them must not take these context servers' registrations (nor the new
    // director theirs).
    let keys = TempDir::new("restart-secret");
    let secret = keys.0.join("secret");
    let key = format!(
        "restart-test-{}-{:?}",
        std::process::id(),
        SystemTime::now()
    );
    std::fs::write(&secret, key).expect("secret file");
    let flags = ["--secret-file", secret.to_str().expect("utf-8 path")];
    let mut d = start_director_with(100, &flags);
    let _a = start_contextd(&[&d], &dir.0, "cd-a", &flags);
    let _b = start_contextd(&[&d], &dir.0, "cd-b", &flags);
    let enter = |d: &Director, user: &str, room: &str| {
        wait_for(Duration::from_secs(10), "entry", || {
            let (addr, tok) = std::panic::catch_unwind(|| ask(d.clients, user, room)).ok()?;
            Member::enter_at(addr, user, room, tok).ok()
        })
    };
    let mut first: Vec<Member> = (0..ROOMS)
        .map(|i| enter(&d, &format!("first{i}"), &format!("room/r{i}")))
        .collect();
    let hosts: Vec<_> = first
        .iter()
        .map(|m| m.conn.stream.peer_addr().expect("host"))
        .collect();
    assert!(
        hosts.iter().any(|h| *h != hosts[0]),
        "the rooms are spread over both servers: {hosts:?}"
    );
    let (clients, providers) = (d.clients.to_string(), d.providers.to_string());
    d.proc.child.kill().expect("SIGKILL the director");
    let _ = d.proc.child.wait();
    let d2 = start_director_at(&clients, &providers, 100, &flags);
    for (i, m) in first.iter_mut().enumerate() {
        let room = format!("room/r{i}");
        let late = enter(&d2, &format!("late{i}"), &room);
        assert_eq!(
            late.conn.stream.peer_addr().expect("host"),
            hosts[i],
            "{room} is still active where it was"
        );
        assert!(
            late.snapshot.members.contains(&format!("first{i}")),
            "{room}: the newcomer meets the member already there: {:?}",
            late.snapshot.members
        );
        match m.next() {
            Message::Joined(j) => assert_eq!(j.user, format!("late{i}")),
            other => panic!("expected Joined, got {other:?}"),
        }
    }
}

/// A context server whose descriptor limit (soft and hard) is `nofile`.
fn start_contextd_with_fd_limit(
    directors: &[&Director],
    dir: &Path,
    id: &str,
    nofile: u64,
) -> Contextd {
    use std::os::unix::process::CommandExt;
    let mut cmd = contextd_command(directors, dir, id, &[]);
    // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nofile as libc::rlim_t,
                rlim_max: nofile as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawn_contextd(cmd, id)
}

/// Ask a director for `context`; the redirect's address and token, or the
/// refusal's code.
fn try_ask(
    director: std::net::SocketAddr,
    user: &str,
    context: &str,
) -> Result<(std::net::SocketAddr, Vec<u8>), ErrorCode> {
    let mut d = Conn::connect(director);
    d.send(&elko_protocol::EnterContext {
        request_id: 1,
        user: user.into(),
        context: context.into(),
    });
    match d.recv() {
        Some(Message::Redirect(r)) => Ok((r.contextd_addr.parse().expect("addr"), r.token)),
        Some(Message::Denied(x)) => Err(x.code),
        other => panic!("expected Redirect or Denied, got {other:?}"),
    }
}

#[test]
fn a_contextd_near_its_descriptor_budget_keeps_its_rooms_and_turns_new_ones_away() {
    let dir = TempDir::new("budget");
    let d = start_director(100);
    // Budget: 6 descriptors past the headroom, less one for room/a's lock
    // file: 5 connections, the director link among them.
    let nofile = elko_engine::FD_HEADROOM as u64 + 6;
    let a = start_contextd_with_fd_limit(&[&d], &dir.0, "small", nofile);
    wait_for(
        Duration::from_secs(10),
        "the director knows the server",
        || try_ask(d.clients, "probe", "room/a").ok(),
    );
    let mut members: Vec<Member> = (1..=3)
        .map(|i| Member::enter(d.clients, &format!("u{i}"), "room/a"))
        .collect();

    // 4 of 5 open: the last connection is kept for room/a. A new room is
    // refused to the director and its first client sent back.
    let (addr, token) = try_ask(d.clients, "v1", "room/b").expect("placed on the only server");
    assert_eq!(addr, a.addr);
    match Member::enter_at(addr, "v1", "room/b", token) {
        Err(Some(Message::ReEnter(r))) => assert_eq!(r.reason, ReEnterReason::FULL, "{r:?}"),
        other => panic!("expected ReEnter FULL, got {:?}", other.map(|m| m.snapshot)),
    }
    // The director skips the server now: nowhere to place room/b.
    wait_for(
        Duration::from_secs(5),
        "the director skips the full server",
        || (try_ask(d.clients, "v1", "room/b") == Err(ErrorCode::NO_CAPACITY)).then_some(()),
    );

    // room/a still takes its last newcomer; past the budget, SERVER_FULL.
    members.push(Member::enter(d.clients, "u4", "room/a"));
    let (addr, _) = try_ask(d.clients, "u5", "room/a").expect("room/a is on the server");
    Conn::open(addr).expect_error(ErrorCode::SERVER_FULL);
    members[0].say("still here");
    for m in members.iter_mut() {
        let said = m.said(1);
        assert_eq!(said[0].2, "still here", "{}", m.user);
    }

    // A server with room joins: room/b goes there.
    let b = start_contextd(&[&d], &dir.0, "roomy", &[]);
    let (addr, token) = wait_for(
        Duration::from_secs(10),
        "room/b placed on the new server",
        || {
            try_ask(d.clients, "v1", "room/b")
                .ok()
                .filter(|(addr, _)| *addr == b.addr)
        },
    );
    let v1 = Member::enter_at(addr, "v1", "room/b", token).expect("entered room/b");
    assert_eq!(v1.snapshot.members, vec!["v1".to_string()]);
}
