//! The engine adapter: drives a [`Directory`] from one event loop.
//!
//! The director runs **one** event loop, holding the one `Directory`, with
//! two listeners (clients and context servers). Why one loop suffices: an
//! enter request costs a hash lookup, an HMAC for the token and two small
//! frames — a few microseconds — and each client asks once per context it
//! enters, not per message it sends; chat traffic never passes through a
//! director. One core therefore serves far more entries per second than the
//! context servers behind it can absorb, and more directors can be added
//! side by side.
//!
//! Why one loop is also *right*: the decision "is `c` placed? if not, pick a
//! provider and mark `c` Activating there" reads and writes shared state. On
//! one loop it runs to completion between two frames, with no lock, so two
//! clients asking for the same inactive context at the same moment get the
//! same provider and only one Activate is sent. With several loops that
//! check-then-act would need a lock or a context-to-loop partition. (Across
//! replicated directors the same race exists and is settled on the context
//! server side: an exclusive lock file per context, and an
//! `ActivateFailed{ALREADY_ACTIVE, holder}` that re-routes.)
//!
//! The adapter only translates: engine callbacks become `handle_*` inputs
//! with the time read once per callback, and [`Output`]s become `send` and
//! `close` calls.

use crate::admin::AdminMail;
use crate::directory::{Directory, Now, Output};
use elko_engine::{CloseReason, ConnId, Ctx, Handler, TimerId};
use elko_protocol::{Frame, Hello};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Index of the client listener in the addresses given to the engine.
pub const CLIENT_LISTENER: usize = 0;
/// Index of the context-server listener.
pub const PROVIDER_LISTENER: usize = 1;

/// How often the summary line is logged.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

const TIMER_TICK: u64 = 1;
const TIMER_SUMMARY: u64 = 2;

/// The director's [`Handler`]: owns the directory and feeds it.
#[derive(Debug)]
pub struct DirectorHandler {
    dir: Directory<ConnId>,
    tick_every: Duration,
    last_summary: (Instant, u64),
}

impl DirectorHandler {
    /// A handler around `dir`; dead providers are looked for every
    /// `tick_every`.
    pub fn new(dir: Directory<ConnId>, tick_every: Duration) -> Self {
        DirectorHandler {
            dir,
            tick_every,
            last_summary: (Instant::now(), 0),
        }
    }

    /// Tick period for a report interval: a quarter of it, within 50 ms..1 s.
    pub fn tick_for(report_interval: Duration) -> Duration {
        (report_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    fn now(cx: &Ctx<AdminMail>) -> Now {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Now {
            mono: cx.now(),
            wall_ms,
        }
    }

    /// Carry out what the directory asked for.
    fn flush(&mut self, cx: &mut Ctx<AdminMail>) {
        while let Some(out) = self.dir.poll_output() {
            match out {
                Output::Send { conn, msg } => match msg.to_bytes() {
                    Ok(frame) => {
                        cx.send(conn, frame);
                    }
                    Err(e) => {
                        tracing::error!(?conn, error = %e, "message did not encode; not sent")
                    }
                },
                Output::Close { conn, code, detail } => {
                    cx.close(conn, CloseReason::Protocol { code, detail });
                }
            }
        }
    }

    fn log_summary(&mut self, cx: &Ctx<AdminMail>) {
        let s = self.dir.summary();
        let (since, enters_before) = self.last_summary;
        let secs = cx.now().saturating_duration_since(since).as_secs_f64();
        let rate = if secs > 0.0 {
            (s.stats.enters - enters_before) as f64 / secs
        } else {
            0.0
        };
        self.last_summary = (cx.now(), s.stats.enters);
        let denials: Vec<String> = s
            .stats
            .denials
            .iter()
            .map(|(code, n)| {
                let name = elko_protocol::ErrorCode(*code).name().unwrap_or("?");
                format!("{name}={n}")
            })
            .collect();
        tracing::info!(
            providers = s.providers,
            contexts = s.contexts_active,
            activating = s.contexts_activating,
            users = s.users,
            enters_per_s = format_args!("{rate:.1}"),
            enters = s.stats.enters,
            redirects = s.stats.redirects,
            activations = s.stats.activations,
            denied = %denials.join(","),
            providers_lost = s.stats.providers_lost,
            "summary"
        );
        for p in self.dir.provider_views(cx.now()) {
            tracing::debug!(
                provider = %p.id,
                epoch = p.epoch,
                addr = %p.client_addr,
                load = p.load,
                activating = p.activating,
                users = p.users,
                connections = p.connections,
                busy_permille_max = p.busy_permille_max,
                capacity = p.capacity,
                draining = p.draining,
                "provider"
            );
        }
    }
}

impl Handler for DirectorHandler {
    type Mail = AdminMail;

    fn on_start(&mut self, cx: &mut Ctx<AdminMail>) {
        self.last_summary = (cx.now(), 0);
        cx.set_timer(self.tick_every, TIMER_TICK);
        cx.set_timer(SUMMARY_INTERVAL, TIMER_SUMMARY);
    }

    fn on_hello(&mut self, cx: &mut Ctx<AdminMail>, conn: ConnId, _hello: &Hello) {
        match cx.listener_of(conn) {
            Some(CLIENT_LISTENER) => self.dir.handle_client_open(conn),
            Some(PROVIDER_LISTENER) => match cx.challenge(conn) {
                Some(ch) => self.dir.handle_provider_open(conn, ch),
                None => cx.close(
                    conn,
                    CloseReason::Protocol {
                        code: elko_protocol::ErrorCode::INTERNAL,
                        detail: "no Welcome challenge recorded for this connection".into(),
                    },
                ),
            },
            other => cx.close(
                conn,
                CloseReason::unexpected(format!("connection from unknown listener {other:?}")),
            ),
        }
    }

    fn on_frame(&mut self, cx: &mut Ctx<AdminMail>, conn: ConnId, frame: Frame) {
        match frame.decode() {
            Ok(msg) => {
                let now = Self::now(cx);
                self.dir.handle_message(conn, msg, now);
                self.flush(cx);
            }
            Err(e) => cx.close(conn, CloseReason::from_decode(&e)),
        }
    }

    fn on_close(&mut self, cx: &mut Ctx<AdminMail>, conn: ConnId, reason: &CloseReason) {
        tracing::debug!(?conn, %reason, "connection closed");
        self.dir.handle_closed(conn);
        self.flush(cx);
    }

    fn on_timer(&mut self, cx: &mut Ctx<AdminMail>, _timer: TimerId, data: u64) {
        match data {
            TIMER_TICK => {
                let now = Self::now(cx);
                self.dir.handle_tick(now);
                self.flush(cx);
                cx.set_timer(self.tick_every, TIMER_TICK);
            }
            TIMER_SUMMARY => {
                self.log_summary(cx);
                cx.set_timer(SUMMARY_INTERVAL, TIMER_SUMMARY);
            }
            _ => {}
        }
    }

    fn on_mail(&mut self, cx: &mut Ctx<AdminMail>, mail: AdminMail) {
        match mail {
            AdminMail::State(reply) => {
                let _ = reply.send((self.dir.summary(), self.dir.provider_views(cx.now())));
            }
            AdminMail::Drain(provider, reply) => {
                let _ = reply.send(self.dir.drain_provider(&provider));
                self.flush(cx);
            }
        }
    }

    fn on_shutdown(&mut self, cx: &mut Ctx<AdminMail>) {
        tracing::info!("shutting down");
        self.log_summary(cx);
    }
}
