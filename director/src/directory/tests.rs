//! Deterministic tests of the directory: integer connection ids, a fake clock.

use super::*;
use elko_cluster::auth::register_proof;
use elko_cluster::TokenVerifier;
use elko_protocol::{ContextOpened, LoopLoad, Say, UserEntered};

const WALL0: u64 = 1_700_000_000_000;

struct Harness {
    dir: Directory<u32>,
    t0: Instant,
    ms: u64,
    secret: ClusterSecret,
}

fn challenge(conn: u32) -> [u8; 16] {
    [conn as u8; 16]
}

impl Harness {
    fn new() -> Self {
        let secret = ClusterSecret::from_bytes(vec![7; 32], "test").expect("secret");
        let mut dir = Directory::new(DirectoryConfig::new("dir-test"), secret.clone());
        dir.handle_client_open(CLIENT);
        Harness {
            dir,
            t0: Instant::now(),
            ms: 0,
            secret,
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + Duration::from_millis(self.ms),
            wall_ms: WALL0 + self.ms,
        }
    }

    fn advance(&mut self, ms: u64) {
        self.ms += ms;
    }

    /// Provider on `conn` answers an Activate of `context` with ActivateFailed.
    fn activate_failed(&mut self, conn: u32, context: &str, code: ErrorCode, holder: Option<&str>) {
        let now = self.now();
        let m = ActivateFailed {
            context: context.into(),
            code,
            holder: holder.map(str::to_owned),
        };
        self.dir.handle_activate_failed(conn, m, now);
    }

    fn outputs(&mut self) -> Vec<Output<u32>> {
        std::iter::from_fn(|| self.dir.poll_output()).collect()
    }

    fn register_msg(&self, conn: u32, id: &str, epoch: u64, capacity: u32) -> Register {
        Register {
            provider_id: id.into(),
            epoch,
            client_addr: format!("10.0.0.{conn}:7800"),
            workers: 2,
            capacity,
            auth: register_proof(&self.secret, &challenge(conn), id, epoch),
        }
    }

    /// Open a provider link and register it; returns the outputs.
    fn register(&mut self, conn: u32, id: &str, epoch: u64, capacity: u32) -> Vec<Output<u32>> {
        self.dir.handle_provider_open(conn, challenge(conn));
        let m = self.register_msg(conn, id, epoch, capacity);
        let now = self.now();
        self.dir.handle_register(conn, m, now);
        self.outputs()
    }

    fn report(&mut self, conn: u32, seq: u64, contexts: u32, users: u32) {
        let m = LoadReport {
            seq,
            loops: vec![LoopLoad {
                connections: users,
                contexts,
                users,
                busy_permille: 10,
            }],
        };
        let now = self.now();
        self.dir.handle_load_report(conn, m, now);
    }

    fn enter(
        &mut self,
        client: u32,
        request_id: u32,
        user: &str,
        context: &str,
    ) -> Vec<Output<u32>> {
        let m = EnterContext {
            request_id,
            user: user.into(),
            context: context.into(),
        };
        let now = self.now();
        self.dir.handle_enter(client, m, now);
        self.outputs()
    }

    fn opened(&mut self, conn: u32, context: &str) {
        let now = self.now();
        self.dir.handle_context_opened(conn, context, now);
    }
}

fn sent_to(outs: &[Output<u32>], to: u32) -> Vec<&Message> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { conn, msg } if *conn == to => Some(msg),
            _ => None,
        })
        .collect()
}

fn closes(outs: &[Output<u32>]) -> Vec<(u32, ErrorCode)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Close { conn, code, .. } => Some((*conn, *code)),
            _ => None,
        })
        .collect()
}

fn redirect(outs: &[Output<u32>], client: u32) -> Redirect {
    match sent_to(outs, client).as_slice() {
        [Message::Redirect(r)] => r.clone(),
        other => panic!("expected one Redirect to {client}, got {other:?}"),
    }
}

fn denied(outs: &[Output<u32>], client: u32) -> Denied {
    match sent_to(outs, client).as_slice() {
        [Message::Denied(d)] => d.clone(),
        other => panic!("expected one Denied to {client}, got {other:?}"),
    }
}

/// Activations sent to `provider`, in order.
fn activations(outs: &[Output<u32>], provider: u32) -> Vec<String> {
    sent_to(outs, provider)
        .into_iter()
        .filter_map(|m| match m {
            Message::Activate(a) => Some(a.context.clone()),
            _ => None,
        })
        .collect()
}

const CLIENT: u32 = 100;

// ---- registration ---------------------------------------------------------------

#[test]
fn register_with_good_proof_is_answered_registered() {
    let mut h = Harness::new();
    let outs = h.register(1, "cd-a", 1, 0);
    assert_eq!(
        outs,
        vec![Output::Send {
            conn: 1,
            msg: Registered {
                director_id: "dir-test".into()
            }
            .into()
        }]
    );
    assert_eq!(h.dir.provider_ids().collect::<Vec<_>>(), ["cd-a"]);
}

#[test]
fn register_with_bad_proof_is_closed_auth_failed() {
    let mut h = Harness::new();
    h.dir.handle_provider_open(1, challenge(1));
    let mut m = h.register_msg(1, "cd-a", 1, 0);
    m.auth[0] ^= 1;
    let now = h.now();
    h.dir.handle_register(1, m, now);
    let outs = h.outputs();
    assert_eq!(closes(&outs), [(1, ErrorCode::AUTH_FAILED)]);
    assert!(sent_to(&outs, 1).is_empty());
    assert_eq!(h.dir.provider_ids().count(), 0);

    // A proof over another connection's challenge (a replay) fails too.
    h.dir.handle_provider_open(2, challenge(2));
    let replayed = h.register_msg(1, "cd-a", 1, 0);
    h.dir.handle_register(2, replayed, now);
    assert_eq!(closes(&h.outputs()), [(2, ErrorCode::AUTH_FAILED)]);
}

#[test]
fn anything_before_register_is_unexpected() {
    let mut h = Harness::new();
    h.dir.handle_provider_open(1, challenge(1));
    h.report(1, 1, 0, 0);
    assert_eq!(closes(&h.outputs()), [(1, ErrorCode::UNEXPECTED_MESSAGE)]);
    // The link is gone: the engine's later close notice changes nothing.
    h.dir.handle_closed(1);
    assert!(h.outputs().is_empty());
}

#[test]
fn second_register_on_a_registered_link_is_unexpected() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    let m = h.register_msg(1, "cd-a", 1, 0);
    let now = h.now();
    h.dir.handle_register(1, m, now);
    assert_eq!(closes(&h.outputs()), [(1, ErrorCode::UNEXPECTED_MESSAGE)]);
    assert_eq!(
        h.dir.provider_ids().count(),
        0,
        "closing a registered link forgets it"
    );
}

#[test]
fn newer_epoch_replaces_the_old_connection_and_forgets_its_contexts() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.enter(CLIENT, 1, "alice", "room");
    h.opened(1, "room");
    let now = h.now();
    h.dir.handle_user_entered(1, "room", "alice", now);
    h.outputs();

    let outs = h.register(2, "cd-a", 2, 0);
    assert_eq!(closes(&outs), [(1, ErrorCode::UNEXPECTED_MESSAGE)]);
    assert!(matches!(
        sent_to(&outs, 2).as_slice(),
        [Message::Registered(_)]
    ));
    assert_eq!(h.dir.placement("room"), None);
    assert_eq!(h.dir.user_location("alice"), None);

    // The old connection's close notice does not touch the new registration.
    h.dir.handle_closed(1);
    assert_eq!(h.dir.provider_ids().collect::<Vec<_>>(), ["cd-a"]);

    // An older epoch is refused while the newer one is registered.
    let outs = h.register(3, "cd-a", 1, 0);
    assert_eq!(closes(&outs), [(3, ErrorCode::UNEXPECTED_MESSAGE)]);
    let outs = h.enter(CLIENT, 2, "bob", "room");
    assert_eq!(activations(&outs, 2), ["room"]);
}

#[test]
fn same_epoch_reconnect_keeps_confirmed_records_and_sweeps_the_rest() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 7, 0);
    h.opened(1, "kept");
    h.opened(1, "gone");
    let now = h.now();
    h.dir.handle_user_entered(1, "kept", "alice", now);
    h.dir.handle_user_entered(1, "gone", "bob", now);
    h.outputs();

    let outs = h.register(2, "cd-a", 7, 0);
    assert_eq!(closes(&outs), [(1, ErrorCode::UNEXPECTED_MESSAGE)]);
    // Until the resync completes, entries still route to the provider, on
    // its new connection.
    let outs = h.enter(CLIENT, 1, "carol", "gone");
    assert!(activations(&outs, 2).is_empty());
    assert!(matches!(
        sent_to(&outs, 2).as_slice(),
        [Message::ExpectClient(_)]
    ));

    // Resync re-announces only "kept" and alice; the first report ends it.
    h.opened(2, "kept");
    h.dir.handle_user_entered(2, "kept", "alice", now);
    h.report(2, 1, 1, 1);
    assert_eq!(h.dir.placement("kept"), Some(("cd-a", true)));
    assert_eq!(h.dir.placement("gone"), None);
    assert_eq!(h.dir.user_location("alice"), Some(("kept", "cd-a")));
    assert_eq!(h.dir.user_location("bob"), None);
}

// ---- entering -----------------------------------------------------------------

#[test]
fn entering_an_inactive_context_activates_it_and_redirects_with_a_bound_token() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    let outs = h.enter(CLIENT, 42, "alice", "room/1");

    let to_p = sent_to(&outs, 1);
    let [Message::Activate(a), Message::ExpectClient(x)] = to_p.as_slice() else {
        panic!("expected Activate then ExpectClient, got {to_p:?}");
    };
    assert_eq!(a.context, "room/1");
    assert_eq!((x.context.as_str(), x.user.as_str()), ("room/1", "alice"));

    let r = redirect(&outs, CLIENT);
    assert_eq!(r.request_id, 42);
    assert_eq!(r.context, "room/1");
    assert_eq!(r.contextd_addr, "10.0.0.1:7800");
    assert_eq!(r.expires_in_ms, 30_000);

    let v = TokenVerifier::new(h.secret.clone(), 0);
    let claims = v
        .verify(&r.token, "room/1", "alice", WALL0 + 1)
        .expect("token verifies");
    assert_eq!(claims.nonce, x.token_id);
    assert_eq!(claims.expires_at_ms, x.expires_at_ms);
    assert_eq!(x.expires_at_ms, WALL0 + 30_000);
    assert!(v.verify(&r.token, "room/2", "alice", WALL0).is_err());
    assert!(v.verify(&r.token, "room/1", "bob", WALL0).is_err());

    assert_eq!(h.dir.placement("room/1"), Some(("cd-a", false)));
    h.opened(1, "room/1");
    assert_eq!(h.dir.placement("room/1"), Some(("cd-a", true)));
}

#[test]
fn entering_an_active_or_activating_context_does_not_activate_again() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    let outs = h.enter(CLIENT, 1, "alice", "room");
    assert_eq!(activations(&outs, 1), ["room"]);
    // Still activating: routed to the same provider, no second Activate.
    let outs = h.enter(CLIENT, 2, "bob", "room");
    assert!(activations(&outs, 1).is_empty() && activations(&outs, 2).is_empty());
    assert_eq!(redirect(&outs, CLIENT).contextd_addr, "10.0.0.1:7800");
    h.opened(1, "room");
    let outs = h.enter(CLIENT, 3, "carol", "room");
    assert!(activations(&outs, 1).is_empty());
    assert!(matches!(
        sent_to(&outs, 1).as_slice(),
        [Message::ExpectClient(_)]
    ));
    assert_eq!(redirect(&outs, CLIENT).request_id, 3);
}

#[test]
fn a_burst_of_new_contexts_spreads_evenly_thanks_to_the_provisional_bump() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.report(1, 1, 0, 0);
    h.report(2, 1, 0, 0);
    let (mut a, mut b) = (0, 0);
    for i in 0..10 {
        let outs = h.enter(CLIENT, i, "u", &format!("room/{i}"));
        a += activations(&outs, 1).len();
        b += activations(&outs, 2).len();
    }
    assert_eq!((a, b), (5, 5));
}

#[test]
fn provisional_bump_expires_after_its_ttl() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    // cd-a was ordered an activation that is never confirmed.
    assert_eq!(activations(&h.enter(CLIENT, 1, "u", "x"), 1), ["x"]);
    h.report(2, 1, 1, 0);
    // cd-b reports one context; cd-a counts 1 (provisional): tie on load and
    // users, so the smaller id wins.
    assert_eq!(activations(&h.enter(CLIENT, 2, "u", "y"), 1), ["y"]);
    h.advance(5_001);
    h.report(1, 1, 0, 0);
    h.report(2, 2, 1, 0);
    // Both of cd-a's activations are older than 5 s: it counts 0 again.
    assert_eq!(activations(&h.enter(CLIENT, 3, "u", "z"), 1), ["z"]);
}

#[test]
fn least_loaded_provider_by_reports_is_chosen() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.register(3, "cd-c", 1, 0);
    h.report(1, 1, 10, 5);
    h.report(2, 1, 3, 50);
    h.report(3, 1, 3, 20);
    // cd-b and cd-c tie on contexts; cd-c has fewer users.
    let outs = h.enter(CLIENT, 1, "u", "new");
    assert_eq!(activations(&outs, 3), ["new"]);
    assert_eq!(redirect(&outs, CLIENT).contextd_addr, "10.0.0.3:7800");
}

#[test]
fn capacity_is_respected() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 2);
    h.report(1, 1, 1, 0);
    assert_eq!(activations(&h.enter(CLIENT, 1, "u", "r1"), 1), ["r1"]);
    // 1 reported + 1 provisional = 2 = capacity: full.
    let outs = h.enter(CLIENT, 2, "u", "r2");
    let d = denied(&outs, CLIENT);
    assert_eq!((d.request_id, d.code), (2, ErrorCode::NO_CAPACITY));
    assert!(sent_to(&outs, 1).is_empty());
    // Already-active contexts are still routed.
    let outs = h.enter(CLIENT, 3, "v", "r1");
    assert_eq!(redirect(&outs, CLIENT).request_id, 3);
    assert_eq!(
        h.dir.stats().denials.get(&ErrorCode::NO_CAPACITY.0),
        Some(&1)
    );
}

#[test]
fn no_provider_means_no_capacity() {
    let mut h = Harness::new();
    let d = denied(&h.enter(CLIENT, 9, "u", "room"), CLIENT);
    assert_eq!(d.code, ErrorCode::NO_CAPACITY);
}

#[test]
fn draining_provider_gets_no_new_contexts() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.report(2, 1, 100, 0);
    assert!(h.dir.drain_provider("cd-a"));
    assert!(matches!(
        sent_to(&h.outputs(), 1).as_slice(),
        [Message::Drain(_)]
    ));
    assert_eq!(activations(&h.enter(CLIENT, 1, "u", "r"), 2), ["r"]);
}

#[test]
fn invalid_ids_are_denied() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    for (user, context) in [("", "room"), ("alice", ""), ("a\nb", "room")] {
        let outs = h.enter(CLIENT, 5, user, context);
        assert_eq!(denied(&outs, CLIENT).code, ErrorCode::INVALID_ID);
        assert!(sent_to(&outs, 1).is_empty());
    }
    let long = "x".repeat(256);
    assert_eq!(
        denied(&h.enter(CLIENT, 6, "u", &long), CLIENT).code,
        ErrorCode::INVALID_ID
    );
}

#[test]
fn enter_where_user_routes_to_the_users_context() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.opened(2, "den");
    let now = h.now();
    h.dir.handle_message(
        2,
        UserEntered {
            context: "den".into(),
            user: "alice".into(),
        }
        .into(),
        now,
    );
    let ask = |target: &str, request_id| EnterWhereUser {
        request_id,
        user: "bob".into(),
        target_user: target.into(),
    };
    h.dir.handle_enter_where(CLIENT, ask("alice", 1), now);
    let outs = h.outputs();
    let r = redirect(&outs, CLIENT);
    assert_eq!(
        (r.context.as_str(), r.contextd_addr.as_str()),
        ("den", "10.0.0.2:7800")
    );
    let to_p = sent_to(&outs, 2);
    let [Message::ExpectClient(x)] = to_p.as_slice() else {
        panic!("expected ExpectClient, got {to_p:?}");
    };
    assert_eq!((x.context.as_str(), x.user.as_str()), ("den", "bob"));

    h.dir.handle_enter_where(CLIENT, ask("nobody", 2), now);
    assert_eq!(denied(&h.outputs(), CLIENT).code, ErrorCode::NO_SUCH_USER);

    h.dir.handle_user_exited(2, "den", "alice", now);
    h.dir.handle_enter_where(CLIENT, ask("alice", 3), now);
    assert_eq!(denied(&h.outputs(), CLIENT).code, ErrorCode::NO_SUCH_USER);
}

#[test]
fn activate_failed_already_active_reroutes_to_the_holder() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.report(2, 1, 50, 0);
    assert_eq!(activations(&h.enter(CLIENT, 1, "u", "room"), 1), ["room"]);
    h.activate_failed(1, "room", ErrorCode::ALREADY_ACTIVE, Some("cd-b"));
    assert_eq!(h.dir.placement("room"), Some(("cd-b", true)));
    let outs = h.enter(CLIENT, 2, "v", "room");
    assert!(activations(&outs, 1).is_empty() && activations(&outs, 2).is_empty());
    assert_eq!(redirect(&outs, CLIENT).contextd_addr, "10.0.0.2:7800");
}

#[test]
fn activate_failed_otherwise_forgets_the_context() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.enter(CLIENT, 1, "u", "room");
    for holder in [None, Some("unknown-provider".to_string())] {
        h.activate_failed(1, "room", ErrorCode::ALREADY_ACTIVE, holder.as_deref());
        assert_eq!(h.dir.placement("room"), None);
        assert_eq!(activations(&h.enter(CLIENT, 2, "u", "room"), 1), ["room"]);
    }
    h.activate_failed(1, "room", ErrorCode::CHECKPOINT_FAILED, None);
    assert_eq!(h.dir.placement("room"), None);
}

#[test]
fn a_provider_refusing_activations_is_skipped_for_a_few_report_intervals() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    // cd-b is busier, so cd-a (drained through another director, say) is chosen...
    h.report(2, 1, 50, 0);
    assert_eq!(activations(&h.enter(CLIENT, 1, "u", "room"), 1), ["room"]);
    h.activate_failed(1, "room", ErrorCode::NO_CAPACITY, None);
    assert_eq!(h.dir.placement("room"), None);
    let view = |h: &Harness, id: &str| {
        h.dir
            .provider_views(h.now().mono)
            .into_iter()
            .find(|p| p.id == id)
            .expect("registered")
    };
    assert!(view(&h, "cd-a").refusing);
    // ...and refuses: the client coming back is placed on cd-b instead.
    assert_eq!(activations(&h.enter(CLIENT, 2, "u", "room"), 2), ["room"]);
    // After the back-off cd-a is eligible again.
    h.advance(REFUSAL_BACKOFF_REPORTS as u64 * 1000 + 1);
    assert!(!view(&h, "cd-a").refusing);
    assert_eq!(activations(&h.enter(CLIENT, 3, "v", "hall"), 1), ["hall"]);
}

#[test]
fn context_closed_forgets_the_context_and_its_users_only_if_recorded_there() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.opened(1, "room");
    let now = h.now();
    h.dir.handle_user_entered(1, "room", "alice", now);
    // A late ContextClosed from another provider does not touch the record.
    h.dir.handle_context_closed(2, "room", now);
    assert_eq!(h.dir.placement("room"), Some(("cd-a", true)));
    h.dir.handle_context_closed(1, "room", now);
    assert_eq!(h.dir.placement("room"), None);
    assert_eq!(h.dir.user_location("alice"), None);
}

#[test]
fn a_providers_own_report_moves_a_stale_record() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.opened(1, "room");
    let now = h.now();
    h.dir.handle_message(
        2,
        ContextOpened {
            context: "room".into(),
        }
        .into(),
        now,
    );
    assert_eq!(h.dir.placement("room"), Some(("cd-b", true)));
    // cd-a's late close of its old copy does not erase cd-b's.
    h.dir.handle_context_closed(1, "room", now);
    assert_eq!(h.dir.placement("room"), Some(("cd-b", true)));
}

// ---- losing providers ------------------------------------------------------------

#[test]
fn a_provider_silent_for_three_intervals_is_dead_and_its_contexts_move() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.report(1, 1, 0, 0);
    h.report(2, 1, 5, 0);
    assert_eq!(activations(&h.enter(CLIENT, 1, "u", "room"), 1), ["room"]);
    h.opened(1, "room");
    let now = h.now();
    h.dir.handle_user_entered(1, "room", "alice", now);
    h.outputs();

    // cd-b keeps reporting; cd-a goes silent.
    for seq in 2..=4 {
        h.advance(1_000);
        h.report(2, seq, 5, 0);
        let now = h.now();
        h.dir.handle_tick(now);
        assert!(h.outputs().is_empty(), "alive at {} ms", h.ms);
    }
    h.advance(1);
    let now = h.now();
    h.dir.handle_tick(now);
    assert_eq!(closes(&h.outputs()), [(1, ErrorCode::IDLE_TIMEOUT)]);
    assert_eq!(h.dir.provider_ids().collect::<Vec<_>>(), ["cd-b"]);
    assert_eq!(h.dir.placement("room"), None);
    assert_eq!(h.dir.user_location("alice"), None);
    assert_eq!(h.dir.stats().providers_lost, 1);

    let outs = h.enter(CLIENT, 2, "u", "room");
    assert_eq!(activations(&outs, 2), ["room"]);
    assert!(sent_to(&outs, 1).is_empty());
}

#[test]
fn a_closed_provider_connection_forgets_the_provider() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.register(2, "cd-b", 1, 0);
    h.report(2, 1, 5, 0);
    h.enter(CLIENT, 1, "u", "room");
    h.opened(1, "room");
    h.dir.handle_closed(1);
    assert_eq!(h.dir.provider_ids().collect::<Vec<_>>(), ["cd-b"]);
    assert_eq!(h.dir.placement("room"), None);
    assert_eq!(activations(&h.enter(CLIENT, 2, "u", "room"), 2), ["room"]);
}

#[test]
fn shutting_down_forgets_the_provider_and_tolerates_its_last_reports() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.opened(1, "room");
    let now = h.now();
    h.dir.handle_shutting_down(1, now);
    assert_eq!(h.dir.provider_ids().count(), 0);
    assert_eq!(h.dir.placement("room"), None);
    h.dir.handle_context_closed(1, "room", now);
    h.report(1, 9, 0, 0);
    assert!(closes(&h.outputs()).is_empty());
    assert_eq!(
        denied(&h.enter(CLIENT, 1, "u", "room"), CLIENT).code,
        ErrorCode::NO_CAPACITY
    );
    // It may still not send client messages.
    let now = h.now();
    h.dir.handle_enter(
        1,
        EnterContext {
            request_id: 1,
            user: "u".into(),
            context: "c".into(),
        },
        now,
    );
    assert_eq!(closes(&h.outputs()), [(1, ErrorCode::UNEXPECTED_MESSAGE)]);
}

#[test]
fn an_unanswered_activation_is_forgotten_after_the_timeout() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.enter(CLIENT, 1, "u", "room");
    for _ in 0..10 {
        h.advance(1_000);
        h.report(1, h.ms, 0, 0);
        let now = h.now();
        h.dir.handle_tick(now);
    }
    assert_eq!(h.dir.placement("room"), Some(("cd-a", false)));
    h.advance(1);
    let now = h.now();
    h.dir.handle_tick(now);
    assert_eq!(h.dir.placement("room"), None);
    assert_eq!(h.dir.summary().contexts_activating, 0);
}

// ---- wrong messages ----------------------------------------------------------------

#[test]
fn a_message_of_the_wrong_link_closes_the_connection() {
    let mut h = Harness::new();
    let now = h.now();
    // A client sending a context-server message.
    let say = Say {
        client_seq: 1,
        sent_at_us: 0,
        text: "hi".into(),
    };
    h.dir.handle_message(CLIENT, say.into(), now);
    assert_eq!(
        closes(&h.outputs()),
        [(CLIENT, ErrorCode::UNEXPECTED_MESSAGE)]
    );
    // A client trying to register as a provider.
    h.dir.handle_client_open(CLIENT + 1);
    let m = h.register_msg(CLIENT + 1, "cd-x", 1, 0);
    h.dir.handle_register(CLIENT + 1, m, now);
    assert_eq!(
        closes(&h.outputs()),
        [(CLIENT + 1, ErrorCode::UNEXPECTED_MESSAGE)]
    );
    assert_eq!(h.dir.provider_ids().count(), 0);
    // A registered provider sending a client message is closed and forgotten.
    h.register(1, "cd-a", 1, 0);
    let outs = h.enter(1, 1, "u", "room");
    assert_eq!(closes(&outs), [(1, ErrorCode::UNEXPECTED_MESSAGE)]);
    assert!(sent_to(&outs, 1).is_empty());
    assert_eq!(h.dir.provider_ids().count(), 0);
}

#[test]
fn summary_counts_enters_redirects_and_denials() {
    let mut h = Harness::new();
    h.register(1, "cd-a", 1, 0);
    h.enter(CLIENT, 1, "u", "a");
    h.enter(CLIENT, 2, "u", "a");
    h.enter(CLIENT, 3, "", "a");
    let s = h.dir.summary();
    assert_eq!(
        (s.providers, s.contexts_activating, s.contexts_active),
        (1, 1, 0)
    );
    assert_eq!(
        (s.stats.enters, s.stats.redirects, s.stats.denied()),
        (3, 2, 1)
    );
    assert_eq!(s.stats.activations, 1);
    let v = h.dir.provider_views(h.now().mono);
    assert_eq!(v[0].load, 1);
    assert_eq!(v[0].activating, 1);
}
