//! When to send a Ping and when to give up on a silent server.
//!
//! A small state machine with the clock passed in (`now`), so the rules are
//! tested without sockets or sleeps. The connection tells it what it sent and
//! received and asks it what is due. The rules (`docs/protocol.md` section 8,
//! both sides of it):
//!
//! - Ping when we have **sent** nothing for `heartbeat_ms`: the server's idle
//!   timeout counts what it receives, so this keeps a quiet client alive.
//! - Ping when we have **received** nothing for `heartbeat_ms` (at most once
//!   per `heartbeat_ms`): a live server answers, so silence becomes evidence.
//! - The server is gone when nothing has arrived for `idle_timeout_ms` and a
//!   Ping we sent has gone unanswered for at least `heartbeat_ms`. Requiring
//!   the unanswered Ping means a caller that stopped reading for a while is
//!   not mistaken for a dead server: the first thing it does on return is
//!   ping, and the answer clears the suspicion.
//!
//! A `heartbeat_ms` of 0 disables both pings and the silence check.

use elko_protocol::Ping;
use std::time::{Duration, Instant};

/// Shortest ping interval honoured, whatever the server announces.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Heartbeat timers of one connection.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// `None`: heartbeats disabled (before the handshake, or `heartbeat_ms` 0).
    interval: Option<Duration>,
    /// Zero: never declare the server silent.
    idle_timeout: Duration,
    last_tx: Instant,
    last_rx: Instant,
    last_ping: Option<Instant>,
    /// When the first Ping after the last received byte was sent.
    unanswered_since: Option<Instant>,
    next_nonce: u64,
}

impl Heartbeat {
    /// No pings and no silence check (used until the Welcome arrives).
    pub(crate) fn disabled(now: Instant) -> Heartbeat {
        Heartbeat::new(0, 0, now)
    }

    /// Timers for the limits a server announced in its Welcome.
    pub(crate) fn new(heartbeat_ms: u32, idle_timeout_ms: u32, now: Instant) -> Heartbeat {
        let interval = (heartbeat_ms > 0)
            .then(|| Duration::from_millis(u64::from(heartbeat_ms)).max(MIN_INTERVAL));
        Heartbeat {
            interval,
            idle_timeout: Duration::from_millis(u64::from(idle_timeout_ms)),
            last_tx: now,
            last_rx: now,
            last_ping: None,
            unanswered_since: None,
            next_nonce: 1,
        }
    }

    /// Bytes were sent.
    pub(crate) fn on_sent(&mut self, now: Instant) {
        self.last_tx = now;
    }

    /// Bytes were received: the server is alive.
    pub(crate) fn on_received(&mut self, now: Instant) {
        self.last_rx = now;
        self.unanswered_since = None;
    }

    /// The Ping to send now, if one is due. The caller sends it and reports
    /// it with [`Heartbeat::on_sent`].
    pub(crate) fn poll_ping(&mut self, now: Instant) -> Option<Ping> {
        let interval = self.interval?;
        let since = |t: Instant| now.saturating_duration_since(t);
        let quiet_out = since(self.last_tx) >= interval;
        let quiet_in =
            since(self.last_rx) >= interval && self.last_ping.is_none_or(|p| since(p) >= interval);
        if !(quiet_out || quiet_in) {
            return None;
        }
        self.last_ping = Some(now);
        self.unanswered_since.get_or_insert(now);
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        Some(Ping { nonce })
    }

    /// `Err(silent_for)` when the server must be considered gone. Call it
    /// only after a read found nothing, so bytes waiting unread in the
    /// socket are never mistaken for silence.
    pub(crate) fn check_silence(&self, now: Instant) -> Result<(), Duration> {
        let (Some(interval), Some(pinged)) = (self.interval, self.unanswered_since) else {
            return Ok(());
        };
        let silent_for = now.saturating_duration_since(self.last_rx);
        if !self.idle_timeout.is_zero()
            && silent_for >= self.idle_timeout
            && now.saturating_duration_since(pinged) >= interval
        {
            return Err(silent_for);
        }
        Ok(())
    }

    /// The next instant at which [`Heartbeat::poll_ping`] or
    /// [`Heartbeat::check_silence`] may change their answer; `None` when
    /// heartbeats are disabled.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let interval = self.interval?;
        let ping_out = self.last_tx + interval;
        let ping_in = match self.last_ping {
            Some(p) => (self.last_rx + interval).max(p + interval),
            None => self.last_rx + interval,
        };
        let mut next = ping_out.min(ping_in);
        if let Some(pinged) = self.unanswered_since {
            if !self.idle_timeout.is_zero() {
                next = next.min((self.last_rx + self.idle_timeout).max(pinged + interval));
            }
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_quiet_sender_pings_every_interval() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(100, 1000, t0);
        // Traffic keeps arriving, but we send nothing.
        hb.on_received(t0 + 50 * MS);
        assert_eq!(hb.poll_ping(t0 + 99 * MS), None);
        assert_eq!(hb.next_deadline(), Some(t0 + 100 * MS));
        let p = hb.poll_ping(t0 + 100 * MS).expect("due");
        assert_eq!(p.nonce, 1);
        hb.on_sent(t0 + 100 * MS);
        hb.on_received(t0 + 101 * MS);
        assert_eq!(hb.poll_ping(t0 + 150 * MS), None);
        assert_eq!(hb.poll_ping(t0 + 200 * MS).expect("due again").nonce, 2);
    }

    #[test]
    fn sending_postpones_the_ping_while_traffic_arrives() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(100, 1000, t0);
        for i in 1..10u32 {
            let t = t0 + i * 60 * MS;
            hb.on_sent(t);
            hb.on_received(t);
            assert_eq!(hb.poll_ping(t), None);
        }
    }

    #[test]
    fn a_silent_server_is_pinged_once_per_interval_even_while_we_send() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(100, 1000, t0);
        hb.on_sent(t0 + 90 * MS);
        // Nothing received for 100 ms: ping although we sent 10 ms ago.
        assert!(hb.poll_ping(t0 + 100 * MS).is_some());
        hb.on_sent(t0 + 100 * MS);
        hb.on_sent(t0 + 150 * MS);
        assert_eq!(hb.poll_ping(t0 + 190 * MS), None);
        assert_eq!(hb.next_deadline(), Some(t0 + 200 * MS));
        assert!(hb.poll_ping(t0 + 200 * MS).is_some());
    }

    #[test]
    fn silence_needs_the_idle_timeout_and_an_unanswered_ping() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(100, 300, t0);
        // A caller that did not read for a long time: no ping sent yet, so
        // it is not silence, however long ago the last byte came.
        assert_eq!(hb.check_silence(t0 + 5000 * MS), Ok(()));
        let t1 = t0 + 5000 * MS;
        assert!(hb.poll_ping(t1).is_some());
        hb.on_sent(t1);
        // The ping gets one interval to be answered.
        assert_eq!(hb.check_silence(t1 + 99 * MS), Ok(()));
        assert_eq!(hb.next_deadline(), Some(t1 + 100 * MS));
        assert_eq!(hb.check_silence(t1 + 100 * MS), Err(5100 * MS));
        // An answer clears it.
        hb.on_received(t1 + 100 * MS);
        assert_eq!(hb.check_silence(t1 + 150 * MS), Ok(()));
    }

    #[test]
    fn silence_is_declared_at_the_idle_timeout() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(100, 300, t0);
        let mut t = t0;
        let mut declared = None;
        // Drive it like the connection does: wake at each deadline.
        for _ in 0..20 {
            t = hb.next_deadline().expect("enabled");
            if hb.poll_ping(t).is_some() {
                hb.on_sent(t);
            }
            if let Err(silent) = hb.check_silence(t) {
                declared = Some(silent);
                break;
            }
        }
        assert_eq!(declared, Some(300 * MS));
        assert_eq!(t, t0 + 300 * MS);
    }

    #[test]
    fn zero_disables_heartbeats() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(0, 300, t0);
        assert_eq!(hb.poll_ping(t0 + 10_000 * MS), None);
        assert_eq!(hb.check_silence(t0 + 10_000 * MS), Ok(()));
        assert_eq!(hb.next_deadline(), None);
        let mut hb = Heartbeat::new(100, 0, t0);
        assert!(hb.poll_ping(t0 + 100 * MS).is_some());
        assert_eq!(hb.check_silence(t0 + 10_000 * MS), Ok(()));
    }
}
