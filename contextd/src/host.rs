//! The per-loop host: the contexts living on one event loop, their members,
//! and (on loop 0) the links to the directors.
//!
//! Every context has a *home loop*, `crc32c(id) % loops`, computed the same
//! way everywhere, so no table is shared between loops. A client connection
//! may be accepted by any loop; when its `Enter` checks out, the connection
//! is handed to the context's home loop, and from then on everything about
//! that context — fanout to its members included — happens on one thread with
//! no lock and no cross-core hop.
//!
//! A context's life on its home loop:
//!
//! ```text
//!  (none) --Enter/Activate/Expect--> Loading --disk: Activated--> Active
//!  Active --last member left (+linger)--> Unloading --disk: Released--> (none)
//!  Loading/Unloading hold arriving clients (bounded wait) and admit them when
//!  the context is Active again.
//! ```
//!
//! A client's session: `AwaitEnter --Enter--> Waiting --> Entered --Exit/close--> gone`.
//! A message in the wrong state closes the connection with UNEXPECTED_MESSAGE.

use crate::app::{self, App, AppCx, AppEffect};
use crate::io::{ActivateError, Activated, DiskHandle, IoJob};
use crate::lock::ContextLock;
use elko_cluster::{auth, ClusterSecret, ReplayGuard, TokenClaims, TokenVerifier};
use elko_engine::{CloseReason, ConnId, Ctx, Handler, TimerId};
use elko_protocol::{
    validate_id, ActivateFailed, AppMessage, ContextClosed, ContextOpened, Enter, ErrorCode,
    ExpectClient, Frame, Joined, Left, LoadReport, LoopLoad, Message, MessageType, ReEnter,
    ReEnterReason, Register, SaidRef, SayRef, ShuttingDown, Snapshot, UserEntered, UserExited,
    Welcome,
};
use serde::{Deserialize, Serialize};
use slab::Slab;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings every loop shares.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub provider_id: String,
    /// Address clients use to reach this server (sent in Register).
    pub client_addr: String,
    pub directors: Vec<SocketAddr>,
    pub secret: ClusterSecret,
    pub epoch: u64,
    pub capacity: u32,
    pub history_len: usize,
    /// Keep an empty context this long before unloading it.
    pub linger: Duration,
    /// Keep a context activated for clients that have not arrived yet this long.
    pub empty_grace: Duration,
    /// How long a client may wait for its context to load.
    pub entry_wait: Duration,
    pub checkpoint_interval: Duration,
    pub report_interval: Duration,
    pub max_id_len: u16,
    pub max_text_len: u32,
    /// Largest frame we may send (the limit announced in Welcome).
    pub max_frame: u32,
}

/// Per-loop figures for load reports, written by the loop, read by loop 0.
#[derive(Debug, Default)]
pub struct LoopGauge {
    pub contexts: AtomicU64,
    pub users: AtomicU64,
}

/// Mail between loops, and from the disk threads.
#[derive(Debug)]
pub enum Mail {
    /// A client connection handed to its context's home loop, with its checked Enter.
    Enter { enter: Enter, claims: TokenClaims },
    /// A director ordered an activation (routed to the home loop).
    Activate { context: String },
    /// A director announced a client (routed to the home loop).
    Expect { context: String, token_id: u64 },
    /// A director asked this server to drain.
    Drain,
    /// Loop 0 asks for this loop's contexts and users, for a director that just registered.
    Resync { link: ConnId },
    /// Disk: an activation finished.
    Activated {
        context: String,
        result: Result<Activated, ActivateError>,
    },
    /// Disk: a final checkpoint was written and the lock released.
    Released { context: String, ok: bool },
    /// To loop 0: send to every registered director.
    ToDirectors(Message),
    /// To loop 0: send to one director link.
    ToDirector { link: ConnId, msgs: Vec<Message> },
}

/// What is kept in a checkpoint: the host's part and the app's bytes.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    kind: String,
    context_seq: u64,
    app: Vec<u8>,
}

#[derive(Debug)]
enum Session {
    AwaitEnter,
    Waiting {
        context: String,
    },
    /// Shared strings: every frame of the session looks them up, and a
    /// clone must not allocate.
    Entered {
        context: Rc<str>,
        user: Rc<str>,
    },
}

/// Client sessions of this loop, indexed by the connection's slot (dense and
/// reused, see `ConnId::slot_index`). A hash map of the same sessions cost
/// about twice the memory per connection.
#[derive(Debug, Default)]
struct Sessions {
    slots: Vec<Option<(ConnId, Session)>>,
    len: usize,
}

impl Sessions {
    fn get(&self, conn: &ConnId) -> Option<&Session> {
        match self.slots.get(conn.slot_index()) {
            Some(Some((c, s))) if c == conn => Some(s),
            _ => None,
        }
    }

    fn insert(&mut self, conn: ConnId, session: Session) {
        let i = conn.slot_index();
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace((conn, session)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, conn: &ConnId) -> Option<Session> {
        let slot = self.slots.get_mut(conn.slot_index())?;
        if slot.as_ref().is_some_and(|(c, _)| c == conn) {
            self.len -= 1;
            slot.take().map(|(_, s)| s)
        } else {
            None
        }
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug)]
struct Waiter {
    conn: ConnId,
    user: String,
    timer: TimerId,
}

struct Member {
    conn: ConnId,
    /// Shared with the member's `Session::Entered`.
    user: Rc<str>,
}

struct Active {
    /// The context id, shared by every member's session.
    name: Rc<str>,
    app: Box<dyn App>,
    members: Vec<Member>,
    context_seq: u64,
    lock: ContextLock,
    dirty: bool,
    unload_timer: Option<TimerId>,
}

enum Slot {
    Loading {
        waiters: Vec<Waiter>,
    },
    Active(Box<Active>),
    Unloading {
        waiters: Vec<Waiter>,
        reactivate: bool,
    },
}

#[derive(Debug)]
enum TimerTarget {
    App { context: String, tag: u64 },
    EntryWait { conn: ConnId },
    Unload { context: String },
    CheckpointSweep,
    Report,
    Reconnect { link: usize },
}

/// One director link (loop 0 only).
#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    conn: Option<ConnId>,
    registered: bool,
    /// Loops whose resync for this link has not reached loop 0 yet. Load
    /// reports wait for it: a director takes the first report after a
    /// (re)registration as the end of the resync.
    resync_pending: usize,
    backoff: Duration,
}

/// The handler of one contextd loop.
pub struct Host {
    idx: usize,
    loops: usize,
    cfg: Arc<HostConfig>,
    verifier: TokenVerifier,
    replay: ReplayGuard,
    disk: DiskHandle,
    gauges: Arc<Vec<LoopGauge>>,
    sessions: Sessions,
    contexts: HashMap<String, Slot>,
    timers: Slab<TimerTarget>,
    draining: bool,
    links: Vec<Link>,
    report_seq: u64,
    /// Per loop: busy nanoseconds and time at the last measurement, and
    /// the share (per mille) measured then.
    last_busy: Vec<(u64, Instant, u16)>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("idx", &self.idx)
            .field("contexts", &self.contexts.len())
            .field("sessions", &self.sessions.len())
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

/// The loop that hosts `context`.
pub fn home_of(context: &str, loops: usize) -> usize {
    crc32c::crc32c(context.as_bytes()) as usize % loops.max(1)
}

/// Whether this process's connections, `(open, budget)`, leave too little
/// room for a new context: the last twentieth of the descriptor budget (at
/// least one connection) is kept for newcomers to the contexts already here
/// (a context cannot move to a server with room), so directors place new
/// ones elsewhere (they skip a server that answers NO_CAPACITY for a while).
fn near_connection_budget((open, budget): (u64, u64)) -> bool {
    open >= budget.saturating_sub((budget / 20).max(1))
}

/// Trim a snapshot until its frame fits `max_frame`: oldest history first,
/// then the member list (halving, so a huge room costs a few encodes). A
/// client never receives a frame larger than the limit announced to it.
fn fit_snapshot(mut snap: Snapshot, max_frame: usize) -> Snapshot {
    let fits = |s: &Snapshot| {
        elko_protocol::encode_frame_to_bytes(s).is_ok_and(|b| b.len() - 4 <= max_frame)
    };
    while !fits(&snap) {
        if !snap.history.is_empty() {
            let drop = snap.history.len().div_ceil(2);
            snap.history.drain(..drop);
        } else if snap.members.len() > 1 {
            snap.members.truncate(snap.members.len().div_ceil(2));
        } else {
            break; // the app state alone is too large: send it; the client reports it
        }
    }
    snap
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Host {
    /// The handler for loop `idx` of `loops`.
    pub fn new(
        idx: usize,
        loops: usize,
        cfg: Arc<HostConfig>,
        disk: DiskHandle,
        gauges: Arc<Vec<LoopGauge>>,
    ) -> Host {
        let links = if idx == 0 {
            cfg.directors
                .iter()
                .map(|&addr| Link {
                    addr,
                    conn: None,
                    registered: false,
                    resync_pending: 0,
                    backoff: Duration::from_millis(100),
                })
                .collect()
        } else {
            Vec::new()
        };
        Host {
            idx,
            loops,
            verifier: TokenVerifier::new(cfg.secret.clone(), 2_000),
            cfg,
            replay: ReplayGuard::default(),
            disk,
            gauges,
            sessions: Sessions::default(),
            contexts: HashMap::new(),
            timers: Slab::new(),
            draining: false,
            links,
            report_seq: 0,
            last_busy: Vec::new(),
        }
    }

    fn timer(&mut self, cx: &mut Ctx<Mail>, after: Duration, t: TimerTarget) -> TimerId {
        let key = self.timers.insert(t);
        cx.set_timer(after, key as u64)
    }

    fn gauge(&self) -> &LoopGauge {
        &self.gauges[self.idx]
    }

    fn to_directors(&self, cx: &mut Ctx<Mail>, msg: Message) {
        if self.idx == 0 {
            self.send_to_links(cx, &msg);
        } else if cx.post(0, Mail::ToDirectors(msg)).is_err() {
            tracing::warn!("loop 0 mailbox full; a director update was dropped (directors resync on reconnect)");
        }
    }

    // ---- client sessions ------------------------------------------------------------

    fn on_client_frame(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, frame: Frame) {
        let ty = match frame.message_type() {
            Ok(t) => t,
            Err(e) => return cx.close(conn, CloseReason::from_decode(&e)),
        };
        match self.sessions.get(&conn) {
            None => {}
            Some(Session::AwaitEnter) => match ty {
                MessageType::Enter => match frame.decode_owned::<Enter>(ty) {
                    Ok(enter) => self.check_enter(cx, conn, enter),
                    Err(e) => cx.close(conn, CloseReason::from_decode(&e)),
                },
                other => cx.close(
                    conn,
                    CloseReason::unexpected(format!("{other:?} before Enter")),
                ),
            },
            Some(Session::Waiting { .. }) => match ty {
                MessageType::Exit => cx.close(conn, CloseReason::Application(None)),
                other => cx.close(
                    conn,
                    CloseReason::unexpected(format!("{other:?} before the Snapshot")),
                ),
            },
            Some(Session::Entered { context, user }) => {
                let (context, user) = (context.clone(), user.clone());
                match ty {
                    MessageType::Say => self.say(cx, conn, &context, &user, &frame),
                    MessageType::AppMessage => match frame.decode_owned::<AppMessage>(ty) {
                        Ok(m) => self.app_message(cx, conn, &context, &user, m),
                        Err(e) => cx.close(conn, CloseReason::from_decode(&e)),
                    },
                    MessageType::Exit => {
                        self.sessions.remove(&conn);
                        self.leave(cx, conn, &context, &user);
                        cx.close(conn, CloseReason::Application(None));
                    }
                    other => cx.close(
                        conn,
                        CloseReason::unexpected(format!("{other:?} after Enter")),
                    ),
                }
            }
        }
    }

    /// Stateless checks (ids, token signature, binding, expiry) run on the
    /// accepting loop; then the connection goes to the context's home loop.
    fn check_enter(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, enter: Enter) {
        for id in [&enter.context, &enter.user] {
            if let Err(e) = validate_id(id, self.cfg.max_id_len) {
                let detail = e.to_string();
                return cx.close(
                    conn,
                    CloseReason::Protocol {
                        code: ErrorCode::INVALID_ID,
                        detail,
                    },
                );
            }
        }
        let claims = match self
            .verifier
            .verify(&enter.token, &enter.context, &enter.user, now_ms())
        {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(conn = ?conn, user = %enter.user, context = %enter.context, error = %e, "token refused");
                return cx.close(
                    conn,
                    CloseReason::Protocol {
                        code: e.code(),
                        detail: e.to_string(),
                    },
                );
            }
        };
        let home = home_of(&enter.context, self.loops);
        if home == self.idx {
            self.enter(cx, conn, enter, claims);
        } else {
            self.sessions.remove(&conn);
            if let Err(Mail::Enter { .. }) = cx.handoff(conn, home, Mail::Enter { enter, claims }) {
                cx.close(conn, CloseReason::MailboxFull);
            }
        }
    }

    /// On the home loop: single use, then admit, hold, or start loading.
    fn enter(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, enter: Enter, claims: TokenClaims) {
        if let Err(e) = self.replay.check_and_mark(&claims, now_ms()) {
            tracing::info!(conn = ?conn, user = %enter.user, error = %e, "token replay refused");
            return cx.close(
                conn,
                CloseReason::Protocol {
                    code: e.code(),
                    detail: e.to_string(),
                },
            );
        }
        if self.draining || cx.is_shutting_down() {
            return self.send_back(cx, conn, ReEnterReason::DRAIN, "this server is draining");
        }
        let Enter { context, user, .. } = enter;
        match self.contexts.get(&context) {
            Some(Slot::Active(_)) => self.admit(cx, conn, &context, user),
            Some(_) => self.hold(cx, conn, context, user),
            // A context new here, with the last of the descriptor budget
            // kept for the contexts already here: refuse it to the
            // directors (they place it elsewhere) and send the client back.
            None if near_connection_budget(cx.connection_budget()) => {
                self.refuse_activation(cx, context);
                self.send_back(
                    cx,
                    conn,
                    ReEnterReason::FULL,
                    "this server is near its connection limit; it takes no new contexts",
                );
            }
            None => {
                self.contexts.insert(
                    context.clone(),
                    Slot::Loading {
                        waiters: Vec::new(),
                    },
                );
                self.disk.submit(IoJob::Activate {
                    context: context.clone(),
                    home: self.idx,
                });
                self.hold(cx, conn, context, user);
            }
        }
    }

    fn hold(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, context: String, user: String) {
        let timer = self.timer(cx, self.cfg.entry_wait, TimerTarget::EntryWait { conn });
        let w = Waiter { conn, user, timer };
        match self.contexts.get_mut(&context) {
            Some(Slot::Loading { waiters }) | Some(Slot::Unloading { waiters, .. }) => {
                waiters.push(w)
            }
            _ => unreachable!("hold is called for a loading or unloading context"),
        }
        self.sessions.insert(conn, Session::Waiting { context });
    }

    fn send_back(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, reason: ReEnterReason, why: &str) {
        cx.send_msg(
            conn,
            &ReEnter {
                reason,
                message: why.to_string(),
            },
        );
        self.sessions.remove(&conn);
        cx.close(conn, CloseReason::Application(None));
    }

    fn admit(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, context: &str, user: String) {
        if !cx.is_open(conn) {
            return;
        }
        let Some(Slot::Active(a)) = self.contexts.get_mut(context) else {
            return;
        };
        if let Some(t) = a.unload_timer.take() {
            cx.cancel_timer(t);
        }
        let first_for_user = !a.members.iter().any(|m| *m.user == *user);
        let name = a.name.clone();
        let shared_user: Rc<str> = Rc::from(user.as_str());
        a.members.push(Member {
            conn,
            user: shared_user.clone(),
        });
        let mut acx = AppCx::new(now_ms());
        a.app.on_enter(&mut acx, &user);
        // The entering user first, so a trimmed list still names them.
        let mut members: Vec<String> = Vec::with_capacity(a.members.len());
        members.push(user.clone());
        let mut seen: std::collections::HashSet<&str> =
            std::collections::HashSet::with_capacity(a.members.len());
        seen.insert(&user);
        for m in &a.members {
            if seen.insert(&m.user) {
                members.push(m.user.to_string());
            }
        }
        let snap = Snapshot {
            context: context.to_string(),
            app: a.app.kind().to_string(),
            members,
            history: a.app.history(),
            state: a.app.snapshot_state(),
        };
        let snap = fit_snapshot(snap, self.cfg.max_frame as usize);
        cx.send_msg(conn, &snap);
        if first_for_user {
            if let Ok(joined) = cx.encode(&Joined { user: user.clone() }) {
                for m in a.members.iter().filter(|m| m.conn != conn) {
                    cx.send(m.conn, joined.clone());
                }
            }
        }
        self.sessions.insert(
            conn,
            Session::Entered {
                context: name,
                user: shared_user,
            },
        );
        self.apply(cx, context, acx);
        if first_for_user {
            self.gauge().users.fetch_add(1, Relaxed);
            self.to_directors(
                cx,
                Message::UserEntered(UserEntered {
                    context: context.to_string(),
                    user,
                }),
            );
        }
    }

    /// Close `conn` with TEXT_TOO_LONG if `len` is over the announced limit.
    fn within_text_limit(&self, cx: &mut Ctx<Mail>, conn: ConnId, what: &str, len: usize) -> bool {
        let max = self.cfg.max_text_len;
        if len <= max as usize {
            return true;
        }
        let detail = format!("{what} of {len} bytes; the limit is {max}");
        cx.close(
            conn,
            CloseReason::Protocol {
                code: ErrorCode::TEXT_TOO_LONG,
                detail,
            },
        );
        false
    }

    fn say(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, context: &str, user: &str, frame: &Frame) {
        let say: SayRef<'_> = match frame.decode_as(MessageType::Say) {
            Ok(s) => s,
            Err(e) => return cx.close(conn, CloseReason::from_decode(&e)),
        };
        if !self.within_text_limit(cx, conn, "utterance", say.text.len()) {
            return;
        }
        let Some(Slot::Active(a)) = self.contexts.get_mut(context) else {
            return;
        };
        a.context_seq += 1;
        let said = SaidRef {
            context_seq: a.context_seq,
            from: user,
            client_seq: say.client_seq,
            sent_at_us: say.sent_at_us,
            text: say.text,
        };
        // Encode once; every member's queue holds a reference to the same bytes.
        if let Ok(bytes) = cx.encode(&said) {
            for m in &a.members {
                cx.send(m.conn, bytes.clone());
            }
        }
        let mut acx = AppCx::new(now_ms());
        a.app.on_say(&mut acx, a.context_seq, user, say.text);
        self.apply(cx, context, acx);
    }

    fn app_message(
        &mut self,
        cx: &mut Ctx<Mail>,
        conn: ConnId,
        context: &str,
        user: &str,
        m: AppMessage,
    ) {
        if !self.within_text_limit(cx, conn, "application message", m.body.len()) {
            return;
        }
        let Some(Slot::Active(a)) = self.contexts.get_mut(context) else {
            return;
        };
        let mut acx = AppCx::new(now_ms());
        if let Err(code) = a.app.on_app_message(&mut acx, user, m.op, &m.body) {
            let detail = format!("{} refused application message op {}", a.app.kind(), m.op);
            cx.close(conn, CloseReason::Protocol { code, detail });
        }
        self.apply(cx, context, acx);
    }

    /// Carry out what an app asked for.
    fn apply(&mut self, cx: &mut Ctx<Mail>, context: &str, acx: AppCx) {
        let (effects, changed) = acx.finish();
        let Some(Slot::Active(a)) = self.contexts.get_mut(context) else {
            return;
        };
        a.dirty |= changed;
        let mut timers = Vec::new();
        for e in effects {
            match e {
                AppEffect::Broadcast { op, body } => {
                    if let Ok(b) = cx.encode(&AppMessage { op, body }) {
                        for m in &a.members {
                            cx.send(m.conn, b.clone());
                        }
                    }
                }
                AppEffect::SendTo { user, op, body } => {
                    if let Ok(b) = cx.encode(&AppMessage { op, body }) {
                        for m in a.members.iter().filter(|m| *m.user == *user) {
                            cx.send(m.conn, b.clone());
                        }
                    }
                }
                AppEffect::SetTimer { after, tag } => timers.push((after, tag)),
            }
        }
        for (after, tag) in timers {
            self.timer(
                cx,
                after,
                TimerTarget::App {
                    context: context.to_string(),
                    tag,
                },
            );
        }
    }

    /// A member's connection is gone (Exit or close).
    fn leave(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, context: &str, user: &str) {
        let Some(Slot::Active(a)) = self.contexts.get_mut(context) else {
            return;
        };
        let Some(pos) = a.members.iter().position(|m| m.conn == conn) else {
            return;
        };
        a.members.swap_remove(pos);
        let last_for_user = !a.members.iter().any(|m| &*m.user == user);
        let mut acx = AppCx::new(now_ms());
        a.app.on_exit(&mut acx, user);
        if last_for_user {
            if let Ok(left) = cx.encode(&Left {
                user: user.to_string(),
            }) {
                for m in &a.members {
                    cx.send(m.conn, left.clone());
                }
            }
        }
        let empty = a.members.is_empty();
        self.apply(cx, context, acx);
        if last_for_user {
            self.gauge().users.fetch_sub(1, Relaxed);
            let msg = UserExited {
                context: context.to_string(),
                user: user.to_string(),
            };
            self.to_directors(cx, Message::UserExited(msg));
        }
        if empty {
            self.schedule_unload(cx, context, self.cfg.linger);
        }
    }

    fn schedule_unload(&mut self, cx: &mut Ctx<Mail>, context: &str, after: Duration) {
        let Some(Slot::Active(a)) = self.contexts.get(context) else {
            return;
        };
        if !a.members.is_empty() || a.app.keep_active() || a.unload_timer.is_some() {
            return;
        }
        if after.is_zero() {
            return self.unload(cx, context);
        }
        let t = self.timer(
            cx,
            after,
            TimerTarget::Unload {
                context: context.to_string(),
            },
        );
        if let Some(Slot::Active(a)) = self.contexts.get_mut(context) {
            a.unload_timer = Some(t);
        }
    }

    fn envelope(context: &str, a: &Active) -> Vec<u8> {
        let env = Envelope {
            kind: a.app.kind().to_string(),
            context_seq: a.context_seq,
            app: a.app.checkpoint(),
        };
        match bincode::serde::encode_to_vec(&env, elko_protocol::codec::CONFIG) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(%context, error = %e, "checkpoint did not encode");
                Vec::new()
            }
        }
    }

    /// Checkpoint, release the lock, forget the context (via the disk thread).
    fn unload(&mut self, cx: &mut Ctx<Mail>, context: &str) {
        let Some(Slot::Active(a)) = self.contexts.remove(context) else {
            return;
        };
        if let Some(t) = a.unload_timer {
            cx.cancel_timer(t);
        }
        let payload = Self::envelope(context, &a);
        self.contexts.insert(
            context.to_string(),
            Slot::Unloading {
                waiters: Vec::new(),
                reactivate: false,
            },
        );
        self.gauge().contexts.fetch_sub(1, Relaxed);
        tracing::debug!(%context, seq = a.context_seq, "unloading");
        self.disk.submit(IoJob::Release {
            context: context.to_string(),
            payload,
            lock: a.lock,
            home: self.idx,
        });
    }

    fn on_released(&mut self, cx: &mut Ctx<Mail>, context: String, ok: bool) {
        let Some(Slot::Unloading {
            waiters,
            reactivate,
        }) = self.contexts.remove(&context)
        else {
            return;
        };
        if !ok {
            tracing::warn!(%context, "unloaded without its final checkpoint; the previous one remains");
        }
        self.to_directors(
            cx,
            Message::ContextClosed(ContextClosed {
                context: context.clone(),
            }),
        );
        if !waiters.is_empty() || reactivate {
            self.contexts
                .insert(context.clone(), Slot::Loading { waiters });
            self.disk.submit(IoJob::Activate {
                context,
                home: self.idx,
            });
        }
    }

    fn on_activated(
        &mut self,
        cx: &mut Ctx<Mail>,
        context: String,
        result: Result<Activated, ActivateError>,
    ) {
        let Some(Slot::Loading { waiters }) = self.contexts.remove(&context) else {
            // Nobody is waiting for this result (cannot happen: Loading is
            // only left through here). Dropping `result` releases any lock.
            return;
        };
        let failure = match result {
            Ok(act) => match self.restore(&context, act) {
                Ok(active) => {
                    self.contexts
                        .insert(context.clone(), Slot::Active(Box::new(active)));
                    self.gauge().contexts.fetch_add(1, Relaxed);
                    self.to_directors(
                        cx,
                        Message::ContextOpened(ContextOpened {
                            context: context.clone(),
                        }),
                    );
                    let mut acx = AppCx::new(now_ms());
                    if let Some(Slot::Active(a)) = self.contexts.get_mut(&context) {
                        a.app.on_activate(&mut acx);
                    }
                    self.apply(cx, &context, acx);
                    for w in waiters {
                        cx.cancel_timer(w.timer);
                        self.admit(cx, w.conn, &context, w.user);
                    }
                    // Activated for clients still on their way: give them time.
                    self.schedule_unload(cx, &context, self.cfg.empty_grace);
                    return;
                }
                Err(detail) => (ErrorCode::CHECKPOINT_FAILED, None, detail),
            },
            Err(ActivateError::AlreadyActive { holder }) => (
                ErrorCode::ALREADY_ACTIVE,
                holder,
                "context is active on another server".to_string(),
            ),
            Err(ActivateError::Io(detail)) => (ErrorCode::CHECKPOINT_FAILED, None, detail),
        };
        let (code, holder, detail) = failure;
        tracing::warn!(%context, ?holder, %detail, "activation failed");
        let msg = ActivateFailed {
            context: context.clone(),
            code,
            holder: holder.clone(),
        };
        self.to_directors(cx, Message::ActivateFailed(msg));
        for w in waiters {
            cx.cancel_timer(w.timer);
            if code == ErrorCode::ALREADY_ACTIVE {
                let why = format!(
                    "context {context} is active on {}",
                    holder.as_deref().unwrap_or("another server")
                );
                self.send_back(cx, w.conn, ReEnterReason::MOVED, &why);
            } else {
                self.sessions.remove(&w.conn);
                cx.close(
                    w.conn,
                    CloseReason::Protocol {
                        code,
                        detail: detail.clone(),
                    },
                );
            }
        }
    }

    fn restore(&self, context: &str, act: Activated) -> Result<Active, String> {
        let (seq, app) = match &act.checkpoint {
            None => (0, app::create(context, None, self.cfg.history_len)),
            Some(bytes) => {
                let (env, _): (Envelope, usize) =
                    bincode::serde::decode_from_slice(bytes, elko_protocol::codec::CONFIG)
                        .map_err(|e| {
                            format!(
                                "checkpoint generation {:?} does not decode: {e}",
                                act.generation
                            )
                        })?;
                (
                    env.context_seq,
                    app::create(context, Some(&env.app), self.cfg.history_len),
                )
            }
        };
        let app = app.map_err(|e| e.to_string())?;
        tracing::debug!(%context, generation = ?act.generation, seq, "activated");
        Ok(Active {
            name: Rc::from(context),
            app,
            members: Vec::new(),
            context_seq: seq,
            lock: act.lock,
            dirty: false,
            unload_timer: None,
        })
    }

    fn on_entry_wait_expired(&mut self, cx: &mut Ctx<Mail>, conn: ConnId) {
        let Some(Session::Waiting { context }) = self.sessions.get(&conn) else {
            return;
        };
        if let Some(Slot::Loading { waiters } | Slot::Unloading { waiters, .. }) =
            self.contexts.get_mut(context)
        {
            waiters.retain(|w| w.conn != conn);
        }
        self.sessions.remove(&conn);
        let detail = format!("context did not load within {:?}", self.cfg.entry_wait);
        cx.close(
            conn,
            CloseReason::Protocol {
                code: ErrorCode::CONTEXT_UNAVAILABLE,
                detail,
            },
        );
    }

    /// Tell the directors `context` will not be activated here
    /// (NO_CAPACITY: they place it elsewhere, and skip this server a while).
    fn refuse_activation(&self, cx: &mut Ctx<Mail>, context: String) {
        let msg = ActivateFailed {
            context,
            code: ErrorCode::NO_CAPACITY,
            holder: None,
        };
        self.to_directors(cx, Message::ActivateFailed(msg));
    }

    /// A director wants `context` active here (Activate, or ExpectClient for
    /// a context it believes is here).
    fn want_active(&mut self, cx: &mut Ctx<Mail>, context: String, confirm: bool) {
        let new = !self.contexts.contains_key(&context);
        if self.draining || (new && near_connection_budget(cx.connection_budget())) {
            return self.refuse_activation(cx, context);
        }
        match self.contexts.get_mut(&context) {
            None => {
                self.contexts.insert(
                    context.clone(),
                    Slot::Loading {
                        waiters: Vec::new(),
                    },
                );
                self.disk.submit(IoJob::Activate {
                    context,
                    home: self.idx,
                });
            }
            Some(Slot::Active(_)) if confirm => {
                self.to_directors(cx, Message::ContextOpened(ContextOpened { context }));
            }
            Some(Slot::Unloading { reactivate, .. }) => *reactivate = true,
            Some(_) => {}
        }
    }

    fn checkpoint_dirty(&mut self) {
        for (context, slot) in self.contexts.iter_mut() {
            if let Slot::Active(a) = slot {
                if a.dirty {
                    a.dirty = false;
                    let payload = Self::envelope(context, a);
                    self.disk.submit(IoJob::Save {
                        context: context.clone(),
                        payload,
                    });
                }
            }
        }
    }

    /// Send every member of every context back to the director.
    fn evacuate(&mut self, cx: &mut Ctx<Mail>, reason: ReEnterReason, why: &str) {
        let mut conns = Vec::new();
        for slot in self.contexts.values() {
            match slot {
                Slot::Active(a) => conns.extend(a.members.iter().map(|m| m.conn)),
                Slot::Loading { waiters } | Slot::Unloading { waiters, .. } => {
                    conns.extend(waiters.iter().map(|w| w.conn))
                }
            }
        }
        if let Ok(b) = cx.encode(&ReEnter {
            reason,
            message: why.to_string(),
        }) {
            for &c in &conns {
                cx.send(c, b.clone());
                cx.close(c, CloseReason::Application(None));
            }
        }
    }

    fn resync(&self, cx: &mut Ctx<Mail>, link: ConnId) {
        let mut msgs = Vec::new();
        for (context, slot) in &self.contexts {
            if let Slot::Active(a) = slot {
                msgs.push(Message::ContextOpened(ContextOpened {
                    context: context.clone(),
                }));
                let mut seen = std::collections::HashSet::new();
                for m in &a.members {
                    if seen.insert(&*m.user) {
                        msgs.push(Message::UserEntered(UserEntered {
                            context: context.clone(),
                            user: m.user.to_string(),
                        }));
                    }
                }
            }
        }
        if self.idx == 0 {
            for m in &msgs {
                cx.send_message(link, m);
            }
        } else if cx.post(0, Mail::ToDirector { link, msgs }).is_err() {
            // Loop 0 then never sees this loop's reply; the director's view
            // of this loop stays incomplete until the next reconnect.
            tracing::warn!("loop 0 mailbox full; resync incomplete");
        }
    }

    // ---- director links (loop 0) ----------------------------------------------------------

    fn link_of(&self, conn: ConnId) -> Option<usize> {
        self.links.iter().position(|l| l.conn == Some(conn))
    }

    fn connect_link(&mut self, cx: &mut Ctx<Mail>, i: usize) {
        let addr = self.links[i].addr;
        match cx.connect(addr) {
            Ok(conn) => self.links[i].conn = Some(conn),
            Err(e) => {
                tracing::warn!(director = %addr, error = %e, "cannot connect to director; retrying");
                self.retry_link(cx, i);
            }
        }
    }

    fn retry_link(&mut self, cx: &mut Ctx<Mail>, i: usize) {
        let l = &mut self.links[i];
        l.conn = None;
        l.registered = false;
        let after = l.backoff;
        l.backoff = (l.backoff * 2).min(Duration::from_secs(2));
        if !cx.is_shutting_down() {
            self.timer(cx, after, TimerTarget::Reconnect { link: i });
        }
    }

    fn send_to_links(&self, cx: &mut Ctx<Mail>, msg: &Message) {
        let Ok(bytes) = msg.to_bytes() else { return };
        for l in self.links.iter().filter(|l| l.registered) {
            if let Some(c) = l.conn {
                cx.send(c, bytes.clone());
            }
        }
    }

    fn on_link_frame(&mut self, cx: &mut Ctx<Mail>, i: usize, conn: ConnId, frame: Frame) {
        let msg = match frame.decode() {
            Ok(m) => m,
            Err(e) => return cx.close(conn, CloseReason::from_decode(&e)),
        };
        match msg {
            Message::Registered(r) => {
                tracing::info!(director = %self.links[i].addr, director_id = %r.director_id, "registered with director");
                self.links[i].registered = true;
                self.links[i].resync_pending = self.loops - 1;
                self.links[i].backoff = Duration::from_millis(100);
                for l in 0..self.loops {
                    if l == 0 {
                        self.resync(cx, conn);
                    } else if cx.post(l, Mail::Resync { link: conn }).is_err() {
                        tracing::warn!(loop_idx = l, "mailbox full; resync incomplete");
                    }
                }
            }
            Message::Activate(a) if self.links[i].registered => self.route(
                cx,
                &a.context,
                Mail::Activate {
                    context: a.context.clone(),
                },
            ),
            Message::ExpectClient(ExpectClient {
                context, token_id, ..
            }) if self.links[i].registered => self.route(
                cx,
                &context,
                Mail::Expect {
                    context: context.clone(),
                    token_id,
                },
            ),
            Message::Drain(_) if self.links[i].registered => {
                tracing::warn!(director = %self.links[i].addr, "director asked to drain");
                for l in 0..self.loops {
                    if l == 0 {
                        self.drain(cx);
                    } else if cx.post(l, Mail::Drain).is_err() {
                        tracing::warn!(loop_idx = l, "mailbox full; drain not delivered");
                    }
                }
            }
            other => cx.close(
                conn,
                CloseReason::unexpected(format!("{:?} on the director link", other.message_type())),
            ),
        }
    }

    fn route(&mut self, cx: &mut Ctx<Mail>, context: &str, mail: Mail) {
        let home = home_of(context, self.loops);
        if home == self.idx {
            self.on_mail(cx, mail);
        } else if cx.post(home, mail).is_err() {
            tracing::warn!(loop_idx = home, "mailbox full; director command dropped");
        }
    }

    fn drain(&mut self, cx: &mut Ctx<Mail>) {
        self.draining = true;
        self.evacuate(
            cx,
            ReEnterReason::DRAIN,
            "this server is draining; enter again through the director",
        );
    }

    fn report(&mut self, cx: &mut Ctx<Mail>) {
        let now = Instant::now();
        let stats = cx.all_stats().to_vec();
        if self.last_busy.len() != self.loops {
            // First report: the busy share is measured from here on (a
            // share over the few milliseconds since start-up would be mostly
            // start-up work, reported as a loop near 100% busy).
            self.last_busy = stats
                .iter()
                .map(|s| (elko_engine::LoopStats::get(&s.busy_ns), now, 0))
                .collect();
        }
        let mut loops = Vec::with_capacity(self.loops);
        for (i, s) in stats.iter().enumerate() {
            let busy = elko_engine::LoopStats::get(&s.busy_ns);
            let (prev_busy, prev_at, prev_permille) = self.last_busy[i];
            let span = now.duration_since(prev_at);
            // Reports also go out at once on registration; a share over a
            // span much shorter than the report interval is noise, so the
            // last one stands until a full enough span has passed.
            let permille = if span >= self.cfg.report_interval / 2 {
                let p = (busy.saturating_sub(prev_busy).saturating_mul(1000)
                    / (span.as_nanos().max(1) as u64))
                    .min(1000) as u16;
                self.last_busy[i] = (busy, now, p);
                p
            } else {
                prev_permille
            };
            loops.push(LoopLoad {
                connections: elko_engine::LoopStats::get(&s.connections) as u32,
                contexts: self.gauges[i].contexts.load(Relaxed) as u32,
                users: self.gauges[i].users.load(Relaxed) as u32,
                busy_permille: permille,
            });
        }
        self.report_seq += 1;
        let Ok(bytes) = Message::LoadReport(LoadReport {
            seq: self.report_seq,
            loops,
        })
        .to_bytes() else {
            return;
        };
        for l in self
            .links
            .iter()
            .filter(|l| l.registered && l.resync_pending == 0)
        {
            if let Some(c) = l.conn {
                cx.send(c, bytes.clone());
            }
        }
    }
}

impl Handler for Host {
    type Mail = Mail;

    fn on_start(&mut self, cx: &mut Ctx<Mail>) {
        self.timer(
            cx,
            self.cfg.checkpoint_interval,
            TimerTarget::CheckpointSweep,
        );
        if self.idx == 0 {
            for i in 0..self.links.len() {
                self.connect_link(cx, i);
            }
            self.timer(cx, self.cfg.report_interval, TimerTarget::Report);
        }
    }

    fn on_hello(&mut self, _cx: &mut Ctx<Mail>, conn: ConnId, _hello: &elko_protocol::Hello) {
        self.sessions.insert(conn, Session::AwaitEnter);
    }

    fn on_welcome(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, welcome: &Welcome) {
        if self.link_of(conn).is_none() {
            return;
        }
        let c = &self.cfg;
        let reg = Register {
            provider_id: c.provider_id.clone(),
            epoch: c.epoch,
            client_addr: c.client_addr.clone(),
            workers: self.loops as u16,
            capacity: c.capacity,
            auth: auth::register_proof(&c.secret, &welcome.challenge, &c.provider_id, c.epoch),
        };
        cx.send_msg(conn, &reg);
    }

    fn on_frame(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, frame: Frame) {
        match self.link_of(conn) {
            Some(i) => self.on_link_frame(cx, i, conn, frame),
            None => self.on_client_frame(cx, conn, frame),
        }
    }

    fn on_close(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, reason: &CloseReason) {
        if let Some(i) = self.link_of(conn) {
            if cx.is_shutting_down() {
                tracing::debug!(director = %self.links[i].addr, %reason, "director link closed");
            } else {
                tracing::warn!(director = %self.links[i].addr, %reason, "director link closed");
            }
            return self.retry_link(cx, i);
        }
        match self.sessions.remove(&conn) {
            Some(Session::Entered { context, user }) => self.leave(cx, conn, &context, &user),
            Some(Session::Waiting { context }) => {
                if let Some(Slot::Loading { waiters } | Slot::Unloading { waiters, .. }) =
                    self.contexts.get_mut(&context)
                {
                    if let Some(p) = waiters.iter().position(|w| w.conn == conn) {
                        let w = waiters.swap_remove(p);
                        cx.cancel_timer(w.timer);
                    }
                }
            }
            Some(Session::AwaitEnter) | None => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<Mail>, _timer: TimerId, data: u64) {
        let Some(target) = self.timers.try_remove(data as usize) else {
            return;
        };
        match target {
            TimerTarget::App { context, tag } => {
                let Some(Slot::Active(a)) = self.contexts.get_mut(&context) else {
                    return;
                };
                let mut acx = AppCx::new(now_ms());
                a.app.on_timer(&mut acx, tag);
                self.apply(cx, &context, acx);
                // The app may have finished what kept it active.
                self.schedule_unload(cx, &context, self.cfg.linger);
            }
            TimerTarget::EntryWait { conn } => self.on_entry_wait_expired(cx, conn),
            TimerTarget::Unload { context } => {
                if let Some(Slot::Active(a)) = self.contexts.get_mut(&context) {
                    a.unload_timer = None;
                }
                self.schedule_unload(cx, &context, Duration::ZERO);
            }
            TimerTarget::CheckpointSweep => {
                self.checkpoint_dirty();
                self.timer(
                    cx,
                    self.cfg.checkpoint_interval,
                    TimerTarget::CheckpointSweep,
                );
            }
            TimerTarget::Report => {
                self.report(cx);
                self.timer(cx, self.cfg.report_interval, TimerTarget::Report);
            }
            TimerTarget::Reconnect { link } => self.connect_link(cx, link),
        }
    }

    fn on_mail(&mut self, cx: &mut Ctx<Mail>, mail: Mail) {
        match mail {
            Mail::Enter { .. } => tracing::error!("Enter mail without a connection"),
            Mail::Activate { context } => self.want_active(cx, context, true),
            // The notice can arrive after its client already came (and even
            // left): then it must not bring the context back.
            Mail::Expect { context, token_id } => {
                if !self.replay.seen(token_id) {
                    self.want_active(cx, context, false);
                }
            }
            Mail::Drain => self.drain(cx),
            Mail::Resync { link } => self.resync(cx, link),
            Mail::Activated { context, result } => self.on_activated(cx, context, result),
            Mail::Released { context, ok } => self.on_released(cx, context, ok),
            Mail::ToDirectors(msg) => self.send_to_links(cx, &msg),
            Mail::ToDirector { link, msgs } => {
                for m in &msgs {
                    cx.send_message(link, m);
                }
                if let Some(i) = self.link_of(link) {
                    self.links[i].resync_pending = self.links[i].resync_pending.saturating_sub(1);
                }
            }
        }
    }

    fn on_adopt(&mut self, cx: &mut Ctx<Mail>, conn: ConnId, mail: Mail) {
        match mail {
            Mail::Enter { enter, claims } => self.enter(cx, conn, enter, claims),
            other => {
                tracing::error!(?other, "adopted a connection with unexpected mail");
                cx.close(
                    conn,
                    CloseReason::unexpected("internal: adopted without Enter"),
                );
            }
        }
    }

    fn on_shutdown(&mut self, cx: &mut Ctx<Mail>) {
        self.evacuate(
            cx,
            ReEnterReason::SHUTDOWN,
            "this server is shutting down; enter again through the director",
        );
        // Checkpoint and release every context now: the disk threads finish
        // their queues before the process exits.
        let names: Vec<String> = self.contexts.keys().cloned().collect();
        for context in names {
            if let Some(Slot::Active(a)) = self.contexts.get_mut(&context) {
                a.members.clear();
            }
            self.unload(cx, &context);
        }
        if self.idx == 0 {
            self.send_to_links(cx, &Message::ShuttingDown(ShuttingDown {}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elko_protocol::HistoryEntry;

    #[test]
    fn oversize_snapshots_are_trimmed_to_the_frame_limit() {
        let snap = Snapshot {
            context: "room".into(),
            app: "chat".into(),
            members: (0..2000)
                .map(|i| format!("user-with-a-long-name-{i}"))
                .collect(),
            history: (0..200)
                .map(|i| HistoryEntry {
                    context_seq: i,
                    from: "x".into(),
                    text: "y".repeat(200),
                    at_ms: 0,
                })
                .collect(),
            state: vec![],
        };
        let first = snap.members[0].clone();
        let fitted = fit_snapshot(snap, 4096);
        let len = elko_protocol::encode_frame_to_bytes(&fitted)
            .expect("encodes")
            .len()
            - 4;
        assert!(len <= 4096, "{len}");
        assert!(fitted.history.is_empty());
        assert_eq!(fitted.members[0], first, "the entering user stays");
        let small = Snapshot {
            context: "r".into(),
            app: "chat".into(),
            members: vec!["a".into()],
            history: vec![],
            state: vec![],
        };
        assert_eq!(fit_snapshot(small.clone(), 4096), small);
    }
}
