//! The simulated Elko clients: an `elko-engine` handler per generator loop.
//!
//! Each client takes the whole path a real client takes: connect to the
//! director, `EnterContext`, follow the `Redirect` to the context server with
//! its token, `Enter`, then speak in an open loop — every utterance has an
//! intended send time from its [`Schedule`], and the generator never waits
//! for replies before sending. The intended time travels in `Say.sent_at_us`
//! and, with the actual send time, in the utterance's header
//! ([`crate::payload`]), so a receiver computes both latencies without any
//! shared table and without allocating. Order is checked on the context's
//! sequence numbers.

use crate::metrics::{Delivery, SeqCheck, Shared};
use crate::payload::{self, Stamp, Utterance};
use crate::schedule::Schedule;
use elko_engine::{CloseReason, ConnId, Ctx, Handler, TimerId};
use elko_protocol::{
    Denied, Enter, EnterContext, ErrorCode, Exit, Frame, Message, MessageType, ReEnter, Redirect,
    SaidRef, SayRef, Welcome,
};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings every loop shares.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub director: SocketAddr,
    /// Clients in the whole run (for the ramp's spacing).
    pub clients_total: usize,
    pub rooms: usize,
    pub ramp: Duration,
    pub message_size: usize,
    pub seed: u64,
    /// Source address of every connection (to spread ports over 127.0.0.x).
    pub source_ip: Option<IpAddr>,
}

/// Mail from the controller.
#[derive(Debug)]
pub enum Control {
    /// Leave every context (Exit) and close.
    ExitAll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    AskingDirector,
    Entering,
    Entered,
    Done,
}

#[derive(Debug)]
struct Client {
    idx: usize,
    room: usize,
    user: String,
    context: String,
    phase: Phase,
    director_conn: Option<ConnId>,
    conn: Option<ConnId>,
    token: Vec<u8>,
    seq: u64,
    next_intended_us: u64,
    retries: u32,
    order: SeqCheck,
    schedule: Schedule,
    /// When the client entered its room, µs since the epoch.
    entered_us: u64,
    /// When the current entry attempt began (its first connect to the
    /// director, retries included); `u64::MAX` between entries.
    enter_began_us: u64,
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Director(usize),
    Contextd(usize),
}

/// A multiplicative hasher for connection ids (SipHash costs more than the
/// rest of a delivery's bookkeeping).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type IdMap<V> = HashMap<ConnId, V, BuildHasherDefault<IdHasher>>;

const T_START: u64 = 0;
const T_SPEAK: u64 = 1;

/// One loop's share of the clients.
#[derive(Debug)]
pub struct Driver {
    idx: usize,
    cfg: Arc<DriverConfig>,
    shared: Arc<Shared>,
    clients: Vec<Client>,
    roles: IdMap<Role>,
    utterance: Utterance,
    addr_cache: HashMap<String, SocketAddr>,
    /// The rate generation this loop's schedules follow ([`Shared::rate`]).
    rate_gen: u64,
}

impl Driver {
    /// The driver of loop `idx`, for the clients with these global indices.
    pub fn new(
        idx: usize,
        clients: &[usize],
        cfg: Arc<DriverConfig>,
        shared: Arc<Shared>,
    ) -> Driver {
        let clients = clients
            .iter()
            .map(|&i| {
                let room = i % cfg.rooms.max(1);
                Client {
                    idx: i,
                    room,
                    user: format!("user-{i}"),
                    context: format!("room/{room}"),
                    phase: Phase::Idle,
                    director_conn: None,
                    conn: None,
                    token: Vec::new(),
                    seq: 0,
                    next_intended_us: 0,
                    retries: 0,
                    order: SeqCheck::default(),
                    schedule: Schedule::new(cfg.seed, i),
                    entered_us: u64::MAX,
                    enter_began_us: u64::MAX,
                }
            })
            .collect();
        Driver {
            idx,
            utterance: Utterance::new(cfg.message_size),
            cfg,
            shared,
            clients,
            roles: IdMap::default(),
            addr_cache: HashMap::new(),
            rate_gen: 0,
        }
    }

    fn timer(
        cx: &mut Ctx<Control>,
        at_us: u64,
        local: usize,
        kind: u64,
        shared: &Shared,
    ) -> TimerId {
        let at = shared.epoch + Duration::from_micros(at_us);
        cx.set_timer_at(at, (local as u64) << 2 | kind)
    }

    fn start(&mut self, cx: &mut Ctx<Control>, local: usize) {
        self.shared
            .entry_attempt(&mut self.clients[local].enter_began_us);
        match cx.connect_from(self.cfg.director, self.cfg.source_ip) {
            Ok(conn) => {
                let c = &mut self.clients[local];
                c.phase = Phase::AskingDirector;
                c.director_conn = Some(conn);
                self.roles.insert(conn, Role::Director(local));
            }
            Err(e) => {
                self.shared
                    .error(&format!("connect_director: {:?}", e.kind()));
                self.retry(cx, local);
            }
        }
    }

    fn retry(&mut self, cx: &mut Ctx<Control>, local: usize) {
        let c = &mut self.clients[local];
        c.phase = Phase::Idle;
        match self.shared.retry_at(c.idx, &mut c.retries) {
            Some(at) => {
                Self::timer(cx, at, local, T_START, &self.shared);
            }
            None => c.phase = Phase::Done,
        }
    }

    fn on_redirect(&mut self, cx: &mut Ctx<Control>, dconn: ConnId, local: usize, r: Redirect) {
        cx.close(dconn, CloseReason::Application(None));
        let addr = match self.addr_cache.get(&r.contextd_addr) {
            Some(a) => *a,
            None => match r.contextd_addr.parse::<SocketAddr>() {
                Ok(a) => {
                    self.addr_cache.insert(r.contextd_addr.clone(), a);
                    a
                }
                Err(_) => {
                    self.shared.error("bad_contextd_addr");
                    return self.retry(cx, local);
                }
            },
        };
        let c = &mut self.clients[local];
        c.token = r.token;
        c.director_conn = None;
        match cx.connect_from(addr, self.cfg.source_ip) {
            Ok(conn) => {
                c.phase = Phase::Entering;
                c.conn = Some(conn);
                self.roles.insert(conn, Role::Contextd(local));
            }
            Err(e) => {
                self.shared
                    .error(&format!("connect_contextd: {:?}", e.kind()));
                self.retry(cx, local);
            }
        }
    }

    fn entered(&mut self, cx: &mut Ctx<Control>, local: usize) {
        let now = self.shared.now_us();
        let (mean, _) = self.shared.rate();
        let c = &mut self.clients[local];
        c.phase = Phase::Entered;
        c.retries = 0;
        c.entered_us = now;
        self.shared.entered(self.idx, &mut c.enter_began_us, now);
        self.shared.loops[self.idx].connected_add(1);
        self.shared.room_members[c.room].fetch_add(1, Relaxed);
        // First utterance: a Poisson arrival after speaking starts.
        let start = self.shared.window.speak_start_us.max(now);
        c.next_intended_us = start.saturating_add(c.schedule.gap_us(mean));
        Self::timer(cx, c.next_intended_us, local, T_SPEAK, &self.shared);
    }

    fn left(&mut self, local: usize) {
        let c = &self.clients[local];
        if c.phase == Phase::Entered {
            self.shared.loops[self.idx].connected_add(-1);
            self.shared.room_members[c.room].fetch_sub(1, Relaxed);
        }
    }

    fn speak(&mut self, cx: &mut Ctx<Control>, local: usize) {
        let (mean, changed) = self.shared.rate_since(&mut self.rate_gen);
        if changed {
            self.reschedule(cx, mean);
        }
        let now = self.shared.now_us();
        let c = &mut self.clients[local];
        let (Phase::Entered, Some(conn)) = (c.phase, c.conn) else {
            return;
        };
        let intended = c.next_intended_us;
        // Timers never fire early: one due later than now was replaced by
        // a rescheduling and is stale.
        if intended > now || !self.shared.may_send(intended) {
            return;
        }
        c.seq += 1;
        self.utterance.stamp(Stamp {
            late_us: now.saturating_sub(intended),
            intended_us: intended,
            sender: c.idx as u32,
            seq: c.seq,
        });
        let say = SayRef {
            client_seq: c.seq,
            sent_at_us: intended,
            text: self.utterance.as_str(),
        };
        // Open loop: the next intended time follows the schedule, not the
        // actual send time, so a late generator shows up as latency.
        c.next_intended_us = intended.saturating_add(c.schedule.gap_us(mean));
        let (room, next) = (c.room, c.next_intended_us);
        // Counted (and its deliveries expected) only once it is on its way:
        // a connection already closing (sent back by a ReEnter this pass)
        // takes nothing more.
        if cx.send_msg(conn, &say) {
            self.shared.sending(self.idx, room, intended);
        } else {
            self.shared.error("send_failed");
        }
        Self::timer(cx, next, local, T_SPEAK, &self.shared);
    }

    /// The rate changed: every entered client's next utterance is drawn
    /// again, from now, with the new mean (see `Shared::set_mean_interval_us`).
    fn reschedule(&mut self, cx: &mut Ctx<Control>, mean: u64) {
        let now = self.shared.now_us();
        for (local, c) in self.clients.iter_mut().enumerate() {
            if c.phase == Phase::Entered {
                c.next_intended_us = now.saturating_add(c.schedule.gap_us(mean));
                Self::timer(cx, c.next_intended_us, local, T_SPEAK, &self.shared);
            }
        }
    }

    /// A copy of an utterance, whose bytes reached the socket at `stamp`.
    fn said(&mut self, local: usize, frame: &Frame, stamp: Option<Instant>) {
        let s: SaidRef<'_> = match frame.decode_as(MessageType::Said) {
            Ok(s) => s,
            Err(_) => return self.shared.error("bad_said"),
        };
        let now = self.shared.now_us();
        let late = payload::late_us(s.text.as_bytes());
        let c = &mut self.clients[local];
        let order = c.order.check(s.context_seq);
        let d = Delivery {
            room: c.room,
            utterance: s.context_seq,
            intended_us: s.sent_at_us,
            late_us: late,
            now_us: now,
            arrived_us: stamp.map(|t| self.shared.us_at(t)),
            member_since_us: c.entered_us,
        };
        self.shared.delivered(self.idx, order, d);
    }
}

/// The error kind for a connection to `from` that closed: an error the
/// server sent names its code ("contextd_error: SERVER_FULL"), anything
/// else the kind of close ("contextd_closed: peer_closed").
fn closed_kind(from: &str, reason: &CloseReason) -> String {
    match reason {
        CloseReason::PeerError { code, .. } => {
            format!("{from}_error: {}", code.name().unwrap_or("UNKNOWN"))
        }
        r => format!("{from}_closed: {}", r.kind().name()),
    }
}

/// The error kind for a frame a client did not expect from `from`.
fn unexpected(from: &str, ty: MessageType) -> String {
    format!("unexpected_frame_from_{from}: {}", ty.name())
}

impl Handler for Driver {
    type Mail = Control;

    fn on_start(&mut self, cx: &mut Ctx<Control>) {
        let n = self.cfg.clients_total.max(1) as u64;
        let ramp = self.cfg.ramp.as_micros() as u64;
        for local in 0..self.clients.len() {
            let at = ramp * self.clients[local].idx as u64 / n;
            Self::timer(cx, at, local, T_START, &self.shared);
        }
    }

    fn on_welcome(&mut self, cx: &mut Ctx<Control>, conn: ConnId, w: &Welcome) {
        match self.roles.get(&conn) {
            Some(&Role::Director(local)) => {
                let c = &self.clients[local];
                let m = EnterContext {
                    request_id: c.idx as u32,
                    user: c.user.clone(),
                    context: c.context.clone(),
                };
                cx.send_msg(conn, &m);
            }
            Some(&Role::Contextd(local)) => {
                let max = w.limits.max_text_len as usize;
                if self.cfg.message_size > max {
                    // Every Say would be refused (TEXT_TOO_LONG): stay out, once.
                    self.shared.error(&format!(
                        "message_size_over_server_limit: {} bytes > max_text_len {max}",
                        self.cfg.message_size
                    ));
                    self.clients[local].phase = Phase::Done;
                    cx.close(conn, CloseReason::Application(None));
                    return;
                }
                let c = &mut self.clients[local];
                let m = Enter {
                    context: c.context.clone(),
                    user: c.user.clone(),
                    token: std::mem::take(&mut c.token),
                };
                cx.send_msg(conn, &m);
            }
            None => {}
        }
    }

    fn on_frame(&mut self, cx: &mut Ctx<Control>, conn: ConnId, frame: Frame) {
        match self.roles.get(&conn).copied() {
            Some(Role::Contextd(local)) => match frame.message_type() {
                Ok(MessageType::Said) => self.said(local, &frame, cx.rx_stamp()),
                Ok(MessageType::Joined) | Ok(MessageType::Left) | Ok(MessageType::AppMessage) => {}
                Ok(MessageType::Snapshot) if self.clients[local].phase == Phase::Entering => {
                    self.entered(cx, local)
                }
                Ok(MessageType::ReEnter) => {
                    let why = match frame.decode_as::<ReEnter>(MessageType::ReEnter) {
                        Ok(r) => format!("reenter: {:?}", r.reason),
                        Err(_) => "reenter".into(),
                    };
                    self.shared.error(&why);
                    // Closed here and entered again through the director.
                    cx.close(conn, CloseReason::Application(None));
                }
                Ok(other) => self.shared.error(&unexpected("contextd", other)),
                Err(e) => self.shared.error(&format!("bad_frame_from_contextd: {e}")),
            },
            Some(Role::Director(local)) => match frame.decode() {
                Ok(Message::Redirect(r)) => self.on_redirect(cx, conn, local, r),
                Ok(Message::Denied(Denied { code, .. })) => {
                    self.shared.error(&format!(
                        "denied_{}",
                        code.name().unwrap_or("UNKNOWN").to_lowercase()
                    ));
                    cx.close(conn, CloseReason::Application(None));
                    self.roles.remove(&conn);
                    if code == ErrorCode::NO_CAPACITY {
                        // The context server may not have registered yet.
                        self.retry(cx, local);
                    } else {
                        self.clients[local].phase = Phase::Done;
                    }
                }
                Ok(other) => self
                    .shared
                    .error(&unexpected("director", other.message_type())),
                Err(e) => self.shared.error(&format!("bad_frame_from_director: {e}")),
            },
            None => {}
        }
    }

    fn on_close(&mut self, cx: &mut Ctx<Control>, conn: ConnId, reason: &CloseReason) {
        match self.roles.remove(&conn) {
            Some(Role::Contextd(local)) => {
                let was = self.clients[local].phase;
                self.left(local);
                self.clients[local].conn = None;
                if was != Phase::Done {
                    // Our own close (after a ReEnter) was reported already.
                    if !matches!(reason, CloseReason::Application(_)) {
                        self.shared.error(&closed_kind("contextd", reason));
                    }
                    if self.shared.stop_sending.load(Relaxed) {
                        self.clients[local].phase = Phase::Done;
                    } else {
                        self.retry(cx, local);
                    }
                }
            }
            Some(Role::Director(local)) => {
                let c = &self.clients[local];
                if c.phase == Phase::AskingDirector && c.director_conn == Some(conn) {
                    self.shared.error(&closed_kind("director", reason));
                    self.retry(cx, local);
                }
            }
            None => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<Control>, _t: TimerId, data: u64) {
        let local = (data >> 2) as usize;
        if local >= self.clients.len() {
            return;
        }
        match data & 3 {
            T_START if self.clients[local].phase == Phase::Idle => self.start(cx, local),
            T_SPEAK => self.speak(cx, local),
            _ => {}
        }
    }

    fn on_mail(&mut self, cx: &mut Ctx<Control>, mail: Control) {
        match mail {
            Control::ExitAll => {
                for local in 0..self.clients.len() {
                    let c = &self.clients[local];
                    match (c.phase, c.conn) {
                        (Phase::Entered, Some(conn)) => {
                            cx.send_msg(conn, &Exit {});
                        }
                        // Still on the way in: stop here, so that no Snapshot
                        // arrives for a client that is done.
                        (Phase::AskingDirector | Phase::Entering, _) => {
                            for conn in [c.director_conn, c.conn].into_iter().flatten() {
                                cx.close(conn, CloseReason::Application(None));
                            }
                        }
                        _ => {}
                    }
                    self.left(local);
                    self.clients[local].phase = Phase::Done;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Window;
    use std::time::Instant;

    #[test]
    fn clients_keep_their_global_index_and_room() {
        let cfg = Arc::new(DriverConfig {
            director: "127.0.0.1:1".parse().expect("addr"),
            clients_total: 10,
            rooms: 3,
            ramp: Duration::ZERO,
            message_size: 64,
            seed: 1,
            source_ip: None,
        });
        let w = Window {
            speak_start_us: 0,
            start_us: 0,
            end_us: 1,
        };
        let sh = Arc::new(Shared::new(Instant::now(), w, 3, 1, 1));
        let d = Driver::new(0, &[1, 4, 7], cfg, sh);
        assert_eq!(d.clients.len(), 3);
        assert!(d
            .clients
            .iter()
            .all(|c| c.room == 1 && c.context == "room/1"));
        assert_eq!(d.clients[2].user, "user-7");
    }

    #[test]
    fn a_server_error_is_reported_by_its_code() {
        let full = CloseReason::PeerError {
            code: ErrorCode::SERVER_FULL,
            message: "server full".into(),
        };
        assert_eq!(
            closed_kind("contextd", &full),
            "contextd_error: SERVER_FULL"
        );
        assert_eq!(
            closed_kind("director", &CloseReason::HandshakeTimeout),
            "director_closed: handshake_timeout"
        );
    }

    #[test]
    fn the_id_hasher_spreads_ids() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<IdHasher>::default();
        let hs: std::collections::HashSet<u64> =
            (0u32..1000).map(|i| b.hash_one((0u16, i, 1u32))).collect();
        assert_eq!(hs.len(), 1000);
    }
}
