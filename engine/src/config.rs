//! Engine configuration: every limit has a number.

use elko_protocol::{DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME_PREAUTH, DEFAULT_MAX_ID_LEN};
use std::time::Duration;

/// How accepted connections are spread over the loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptMode {
    /// Every loop has its own `SO_REUSEPORT` listener; the kernel spreads
    /// connections by a hash of the 4-tuple.
    ReusePort,
    /// Loop 0 accepts every connection and deals them to the loops
    /// round-robin. Even spreading at the price of one hop per accept.
    Single,
}

/// Limits enforced per connection and per loop.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame (type byte + body) accepted after the handshake.
    pub max_frame: u32,
    /// Largest frame accepted before the handshake completes.
    pub max_frame_preauth: u32,
    /// Largest context id / user name (announced in Welcome; enforced by applications).
    pub max_id_len: u16,
    /// Largest utterance / application body (announced; enforced by applications).
    pub max_text_len: u32,
    /// Outbound bytes queued above which the grace period starts.
    pub out_soft: usize,
    /// How long a connection may stay above `out_soft`.
    pub out_soft_grace: Duration,
    /// Outbound bytes queued above which the connection is closed at once.
    pub out_hard: usize,
    /// Time allowed between accept and a valid Hello (or connect and Welcome).
    pub handshake_timeout: Duration,
    /// Send a Ping when nothing was received for this long.
    pub heartbeat: Duration,
    /// Close when nothing was received for this long.
    pub idle_timeout: Duration,
    /// Most connections one loop holds; more are answered SERVER_FULL.
    pub max_connections_per_loop: usize,
    /// Most bytes written to one connection per pass.
    pub write_budget: usize,
    /// Most bytes read from one connection per pass.
    pub read_budget: usize,
    /// Most frames dispatched for one connection per pass.
    pub frame_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_frame_preauth: DEFAULT_MAX_FRAME_PREAUTH,
            max_id_len: DEFAULT_MAX_ID_LEN,
            max_text_len: 16 * 1024,
            out_soft: 256 * 1024,
            out_soft_grace: Duration::from_secs(5),
            out_hard: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            max_connections_per_loop: 100_000,
            write_budget: 1024 * 1024,
            read_budget: 256 * 1024,
            frame_budget: 256,
        }
    }
}

impl Limits {
    /// How long a due Ping may wait to leave in the same segment as other
    /// frames: a quarter of the heartbeat, and of the idle timeout's margin
    /// over it (the peer still has three quarters of that margin to answer).
    pub fn ping_hold(&self) -> Duration {
        (self.heartbeat / 4).min(self.idle_timeout.saturating_sub(self.heartbeat) / 4)
    }

    /// Set the heartbeat and the idle timeout an operator asked for, in
    /// milliseconds (`None` keeps the current value). Both are announced in
    /// Welcome as u32 milliseconds. Refused: a heartbeat under 1 s (the
    /// sweep runs every 250 ms), and an idle timeout not above the heartbeat
    /// (a quiet peer would be closed before it was asked for a Pong).
    pub fn set_heartbeat(
        &mut self,
        heartbeat_ms: Option<u64>,
        idle_timeout_ms: Option<u64>,
    ) -> Result<(), String> {
        let max = u64::from(u32::MAX);
        let heartbeat = heartbeat_ms.map_or(self.heartbeat, Duration::from_millis);
        let idle = idle_timeout_ms.map_or(self.idle_timeout, Duration::from_millis);
        if heartbeat < Duration::from_secs(1) || heartbeat.as_millis() > u128::from(max) {
            return Err(format!(
                "heartbeat {} ms: give 1000 ms to {max} ms",
                heartbeat.as_millis()
            ));
        }
        if idle <= heartbeat || idle.as_millis() > u128::from(max) {
            return Err(format!(
                "idle timeout {} ms: give more than the heartbeat ({} ms; twice it or more lets a peer miss one Ping), at most {max} ms",
                idle.as_millis(),
                heartbeat.as_millis()
            ));
        }
        self.heartbeat = heartbeat;
        self.idle_timeout = idle;
        Ok(())
    }
}

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of event loops (threads). 0 means one per available core.
    pub loops: usize,
    /// Pin loop `i` to core `i % cores`.
    pub pin_cpus: bool,
    /// How accepted connections are spread.
    pub accept_mode: AcceptMode,
    /// Name announced in Welcome (server side) and used in thread names.
    pub server_id: String,
    /// Name sent in Hello on outbound connections.
    pub client_name: String,
    /// Limits.
    pub limits: Limits,
    /// Capacity of each loop's mailbox.
    pub mailbox_capacity: usize,
    /// How often the loop sweeps connections for timeouts and heartbeats.
    pub sweep_interval: Duration,
    /// Have the kernel stamp what arrives on every connection and read with
    /// `recvmsg`, so that a handler learns when the bytes of the frame it
    /// handles reached the socket ([`Ctx::rx_stamp`](crate::Ctx::rx_stamp)).
    /// For measuring clients (the load generator), not servers: the stamp
    /// costs a little on every segment.
    pub rx_timestamps: bool,
    /// Run the loops under `SCHED_BATCH` ([`batch_scheduling`]): their
    /// wake-ups do not preempt whatever runs where they wake. For a load
    /// generator sharing the machine with the server it measures, not for
    /// servers, whose wake-ups are their latency.
    ///
    /// [`batch_scheduling`]: crate::batch_scheduling
    pub batch_sched: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            loops: 0,
            pin_cpus: false,
            accept_mode: AcceptMode::ReusePort,
            server_id: "elko".into(),
            client_name: concat!("elko-engine/", env!("CARGO_PKG_VERSION")).into(),
            limits: Limits::default(),
            mailbox_capacity: 65_536,
            sweep_interval: Duration::from_millis(250),
            rx_timestamps: false,
            batch_sched: false,
        }
    }
}

impl EngineConfig {
    /// The number of loops to start (resolving 0 to the core count).
    pub fn loop_count(&self) -> usize {
        if self.loops > 0 {
            self.loops
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_and_idle_timeout_are_set_together_or_refused() {
        let mut l = Limits::default();
        l.set_heartbeat(Some(5_000), None)
            .expect("under the default idle timeout");
        assert_eq!(
            (l.heartbeat, l.idle_timeout),
            (Duration::from_secs(5), Duration::from_secs(60))
        );
        l.set_heartbeat(None, Some(12_000))
            .expect("above the heartbeat");
        assert_eq!(l.idle_timeout, Duration::from_secs(12));
        for (hb, idle, says) in [
            (Some(500), None, "heartbeat 500 ms"),
            (Some(20_000), None, "idle timeout 12000 ms"),
            (None, Some(5_000), "more than the heartbeat"),
            (None, Some(1 << 40), "at most"),
        ] {
            let before = (l.heartbeat, l.idle_timeout);
            let e = match l.set_heartbeat(hb, idle) {
                Err(e) => e,
                Ok(()) => panic!("{hb:?} {idle:?} accepted"),
            };
            assert!(e.contains(says), "{e}");
            assert_eq!(
                (l.heartbeat, l.idle_timeout),
                before,
                "unchanged when refused"
            );
        }
    }
}
