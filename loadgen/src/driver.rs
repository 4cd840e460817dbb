//! The simulated clients: an `elko-engine` handler per generator loop.
//!
//! Each client takes the whole path a real client takes: connect to the
//! director, `EnterContext`, follow the `Redirect` to the context server with
//! its token, `Enter`, then speak in an open loop — every utterance has an
//! intended send time drawn from a Poisson process, and the generator never
//! waits for replies before sending. The intended time travels in
//! `Say.sent_at_us`; the actual send time rides in the first 16 characters
//! of the text (hex offset from the intended time), so a receiver computes
//! both latencies without any shared table and without allocating.

use crate::metrics::{SeqCheck, SeqVerdict, Shared};
use elko_engine::{CloseReason, ConnId, Ctx, Handler, TimerId};
use elko_protocol::{
    Denied, Enter, EnterContext, ErrorCode, Exit, Frame, Message, MessageType, Redirect, SaidRef,
    SayRef, Welcome,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Settings every loop shares.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub director: SocketAddr,
    pub clients: usize,
    pub rooms: usize,
    pub ramp: Duration,
    pub message_size: usize,
    pub seed: u64,
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
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Director(usize),
    Contextd(usize),
}

const T_START: u64 = 0;
const T_SPEAK: u64 = 1;

/// One loop's share of the clients.
#[derive(Debug)]
pub struct Driver {
    idx: usize,
    cfg: Arc<DriverConfig>,
    shared: Arc<Shared>,
    clients: Vec<Client>,
    roles: HashMap<ConnId, Role>,
    rng: SmallRng,
    text: String,
    addr_cache: HashMap<String, SocketAddr>,
}

impl Driver {
    /// The driver of loop `idx` of `loops`: clients `idx, idx + loops, ...`.
    pub fn new(idx: usize, loops: usize, cfg: Arc<DriverConfig>, shared: Arc<Shared>) -> Driver {
        let clients = (idx..cfg.clients)
            .step_by(loops.max(1))
            .map(|i| {
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
                }
            })
            .collect();
        Driver {
            idx,
            rng: SmallRng::seed_from_u64(
                cfg.seed ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            cfg,
            shared,
            clients,
            roles: HashMap::new(),
            text: String::new(),
            addr_cache: HashMap::new(),
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

    /// Exponentially distributed gap with the current mean (Poisson arrivals).
    fn gap_us(&mut self) -> u64 {
        let mean = self.shared.mean_interval_us.load(Relaxed) as f64;
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        (-u.ln() * mean) as u64
    }

    fn start(&mut self, cx: &mut Ctx<Control>, local: usize) {
        let c = &mut self.clients[local];
        match cx.connect(self.cfg.director) {
            Ok(conn) => {
                c.phase = Phase::AskingDirector;
                c.director_conn = Some(conn);
                self.roles.insert(conn, Role::Director(local));
            }
            Err(e) => {
                self.shared
                    .error(&format!("connect_director: {}", e.kind()));
                self.retry(cx, local);
            }
        }
    }

    fn retry(&mut self, cx: &mut Ctx<Control>, local: usize) {
        let c = &mut self.clients[local];
        c.retries += 1;
        c.phase = Phase::Idle;
        if c.retries > 50 {
            self.shared.error("gave_up_entering");
            c.phase = Phase::Done;
            return;
        }
        let at = self.shared.now_us() + 200_000;
        Self::timer(cx, at, local, T_START, &self.shared);
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
        match cx.connect(addr) {
            Ok(conn) => {
                c.phase = Phase::Entering;
                c.conn = Some(conn);
                self.roles.insert(conn, Role::Contextd(local));
            }
            Err(e) => {
                self.shared
                    .error(&format!("connect_contextd: {}", e.kind()));
                self.retry(cx, local);
            }
        }
    }

    fn entered(&mut self, cx: &mut Ctx<Control>, local: usize) {
        let now = self.shared.now_us();
        let gap = self.gap_us();
        let c = &mut self.clients[local];
        c.phase = Phase::Entered;
        c.retries = 0;
        self.shared.connected.fetch_add(1, Relaxed);
        self.shared.room_members[c.room].fetch_add(1, Relaxed);
        // First utterance: a Poisson arrival after speaking starts.
        let start = self.shared.speak_start_us.load(Relaxed).max(now);
        c.next_intended_us = start.saturating_add(gap);
        Self::timer(cx, c.next_intended_us, local, T_SPEAK, &self.shared);
    }

    fn speak(&mut self, cx: &mut Ctx<Control>, local: usize) {
        if self.shared.stop_sending.load(Relaxed) {
            return;
        }
        let gap = self.gap_us();
        let now = self.shared.now_us();
        let c = &mut self.clients[local];
        let (Phase::Entered, Some(conn)) = (c.phase, c.conn) else {
            return;
        };
        let intended = c.next_intended_us;
        // Text: 16 hex digits of (actual - intended), then padding.
        self.text.clear();
        let late = now.saturating_sub(intended);
        use std::fmt::Write as _;
        let _ = write!(self.text, "{late:016x}");
        while self.text.len() < self.cfg.message_size.max(16) {
            self.text.push('x');
        }
        c.seq += 1;
        let say = SayRef {
            client_seq: c.seq,
            sent_at_us: intended,
            text: &self.text,
        };
        if self.shared.in_window(intended) {
            self.shared.utterances_window.fetch_add(1, Relaxed);
            let fanout = self.shared.room_members[c.room].load(Relaxed);
            self.shared
                .expected_window
                .fetch_add(u64::from(fanout), Relaxed);
        }
        self.shared.sent_total.fetch_add(1, Relaxed);
        if !cx.send_msg(conn, &say) {
            self.shared.error("send_failed");
        }
        // Open loop: the next intended time follows the schedule, not the
        // actual send time, so a late generator shows up as latency.
        c.next_intended_us = intended.saturating_add(gap);
        Self::timer(cx, c.next_intended_us, local, T_SPEAK, &self.shared);
    }

    fn said(&mut self, local: usize, frame: &Frame) {
        let now = self.shared.now_us();
        let s: SaidRef<'_> = match frame.decode_as(MessageType::Said) {
            Ok(s) => s,
            Err(_) => return self.shared.error("bad_said"),
        };
        self.shared.received_total.fetch_add(1, Relaxed);
        match self.clients[local].order.check(s.context_seq) {
            SeqVerdict::InOrder | SeqVerdict::Gap(_) => {}
            SeqVerdict::Duplicate => {
                self.shared.duplicates.fetch_add(1, Relaxed);
                return;
            }
            SeqVerdict::OutOfOrder => {
                self.shared.out_of_order.fetch_add(1, Relaxed);
            }
        }
        if !self.shared.in_window(s.sent_at_us) {
            return;
        }
        self.shared.received_window.fetch_add(1, Relaxed);
        let late = s
            .text
            .get(..16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        let corrected = now.saturating_sub(s.sent_at_us);
        let uncorrected = now.saturating_sub(s.sent_at_us + late);
        self.shared.hists[self.idx]
            .lock()
            .record(corrected, uncorrected);
    }
}

impl Handler for Driver {
    type Mail = Control;

    fn on_start(&mut self, cx: &mut Ctx<Control>) {
        let n = self.cfg.clients.max(1) as u64;
        let ramp = self.cfg.ramp.as_micros() as u64;
        let base = self.shared.now_us();
        for local in 0..self.clients.len() {
            let at = base + ramp * self.clients[local].idx as u64 / n;
            Self::timer(cx, at, local, T_START, &self.shared);
        }
    }

    fn on_welcome(&mut self, cx: &mut Ctx<Control>, conn: ConnId, _w: &Welcome) {
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
                Ok(MessageType::Said) => self.said(local, &frame),
                Ok(MessageType::Joined) | Ok(MessageType::Left) | Ok(MessageType::AppMessage) => {}
                Ok(MessageType::Snapshot) if self.clients[local].phase == Phase::Entering => {
                    self.entered(cx, local)
                }
                Ok(MessageType::ReEnter) => {
                    self.shared.error("reenter");
                    cx.close(conn, CloseReason::Application(None));
                }
                _ => self.shared.error("unexpected_frame_from_contextd"),
            },
            Some(Role::Director(local)) => match frame.decode() {
                Ok(Message::Redirect(r)) => self.on_redirect(cx, conn, local, r),
                Ok(Message::Denied(Denied { code, .. })) => {
                    self.shared.error(&format!(
                        "denied_{}",
                        code.name().unwrap_or("UNKNOWN").to_lowercase()
                    ));
                    cx.close(conn, CloseReason::Application(None));
                    if code == ErrorCode::NO_CAPACITY {
                        // The context server may not have registered yet.
                        self.roles.remove(&conn);
                        self.retry(cx, local);
                    }
                }
                _ => self.shared.error("unexpected_frame_from_director"),
            },
            None => {}
        }
    }

    fn on_close(&mut self, cx: &mut Ctx<Control>, conn: ConnId, reason: &CloseReason) {
        match self.roles.remove(&conn) {
            Some(Role::Contextd(local)) => {
                let c = &mut self.clients[local];
                let was = c.phase;
                c.conn = None;
                if was == Phase::Entered {
                    self.shared.connected.fetch_sub(1, Relaxed);
                    self.shared.room_members[c.room].fetch_sub(1, Relaxed);
                }
                if was != Phase::Done {
                    self.shared
                        .error(&format!("contextd_closed: {}", reason.kind().name()));
                    if !self.shared.stop_sending.load(Relaxed) {
                        self.retry(cx, local);
                    } else {
                        self.clients[local].phase = Phase::Done;
                    }
                }
            }
            Some(Role::Director(local)) => {
                let c = &mut self.clients[local];
                if c.phase == Phase::AskingDirector && c.director_conn == Some(conn) {
                    self.shared
                        .error(&format!("director_closed: {}", reason.kind().name()));
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
                for c in &mut self.clients {
                    if let (Phase::Entered, Some(conn)) = (c.phase, c.conn) {
                        cx.send_msg(conn, &Exit {});
                    }
                    if c.phase == Phase::Entered {
                        self.shared.connected.fetch_sub(1, Relaxed);
                        self.shared.room_members[c.room].fetch_sub(1, Relaxed);
                    }
                    c.phase = Phase::Done;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(seed: u64, mean_us: u64) -> Driver {
        let cfg = Arc::new(DriverConfig {
            director: "127.0.0.1:1".parse().expect("addr"),
            clients: 10,
            rooms: 2,
            ramp: Duration::ZERO,
            message_size: 64,
            seed,
        });
        Driver::new(0, 1, cfg, Arc::new(Shared::new(2, 1, mean_us)))
    }

    #[test]
    fn the_schedule_is_poisson_and_fixed_by_the_seed() {
        let (mut a, mut b, mut c) = (
            driver(7, 30_000_000),
            driver(7, 30_000_000),
            driver(8, 30_000_000),
        );
        let xa: Vec<u64> = (0..20_000).map(|_| a.gap_us()).collect();
        let xb: Vec<u64> = (0..20_000).map(|_| b.gap_us()).collect();
        let xc: Vec<u64> = (0..20_000).map(|_| c.gap_us()).collect();
        assert_eq!(xa, xb, "same seed, same schedule");
        assert_ne!(xa, xc, "another seed, another schedule");
        let mean = xa.iter().sum::<u64>() as f64 / xa.len() as f64;
        assert!((mean / 30e6 - 1.0).abs() < 0.03, "mean gap {mean} µs");
        // Exponential: P(gap > mean) = 1/e.
        let above = xa.iter().filter(|&&g| g as f64 > 30e6).count() as f64 / xa.len() as f64;
        assert!(
            (above - (-1f64).exp()).abs() < 0.02,
            "P(gap > mean) = {above}"
        );
    }

    #[test]
    fn clients_are_dealt_to_loops_and_rooms_evenly() {
        let cfg = Arc::new(DriverConfig {
            director: "127.0.0.1:1".parse().expect("addr"),
            clients: 10,
            rooms: 3,
            ramp: Duration::ZERO,
            message_size: 64,
            seed: 1,
        });
        let sh = Arc::new(Shared::new(3, 2, 1));
        let d0 = Driver::new(0, 2, cfg.clone(), sh.clone());
        let d1 = Driver::new(1, 2, cfg, sh);
        assert_eq!(d0.clients.len() + d1.clients.len(), 10);
        assert!(d0.clients.iter().all(|c| c.idx % 2 == 0));
        assert_eq!(d1.clients[0].context, "room/1");
    }
}
