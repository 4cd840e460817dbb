//! Auction: a context that acts with nobody present.
//!
//! An auction opens when its context is first activated and closes on a
//! timer, whether or not anyone is in the room; at the close it records the
//! winner in its state (and so in its checkpoint). While open it stays active
//! with no members ([`App::keep_active`]); once closed it unloads like any
//! other context when empty. A context reactivated after its end time (say,
//! after a crash) closes at once.
//!
//! Application messages (all integers little-endian):
//! - client -> server `1` OPEN: `duration_ms: u64` — restart the clock; only
//!   before the first bid.
//! - client -> server `2` BID: `amount: u64` — must beat the highest bid.
//! - server -> members `3` HIGH_BID: `amount: u64` then the bidder (UTF-8).
//! - server -> members `4` CLOSED: `amount: u64` then the winner (UTF-8;
//!   empty and amount 0 when nobody bid).
//!
//! `Snapshot.state` = the state struct below in the protocol's encoding:
//! `end_at_ms: u64`, `highest: Option<(String, u64)>`, `bids: u64`,
//! `closed: bool`.

use super::{decode_state, encode_state, App, AppCx, AppEffect, RestoreError};
use elko_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long an auction runs unless OPEN says otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(60);

pub const OP_OPEN: u16 = 1;
pub const OP_BID: u16 = 2;
pub const OP_HIGH_BID: u16 = 3;
pub const OP_CLOSED: u16 = 4;

/// The timer tag for closing; carries the end time it was set for, so a
/// timer left over from before an OPEN is ignored.
const TAG_CLOSE_BASE: u64 = 0;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    end_at_ms: u64,
    highest: Option<(String, u64)>,
    bids: u64,
    closed: bool,
}

/// An auction.
#[derive(Debug)]
pub struct Auction {
    s: State,
    duration: Duration,
}

fn amount_and_name(amount: u64, name: &str) -> Vec<u8> {
    let mut b = amount.to_le_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b
}

fn read_u64(body: &[u8]) -> Result<u64, ErrorCode> {
    let arr: [u8; 8] = body.try_into().map_err(|_| ErrorCode::MALFORMED)?;
    Ok(u64::from_le_bytes(arr))
}

impl Auction {
    /// A new auction that will run `duration` from activation.
    pub fn new(duration: Duration) -> Self {
        Auction {
            s: State::default(),
            duration,
        }
    }

    /// An auction from its checkpoint.
    pub fn restore(b: &[u8]) -> Result<Self, RestoreError> {
        Ok(Auction {
            s: decode_state("auction", b)?,
            duration: DEFAULT_DURATION,
        })
    }

    /// The winner and amount, once closed (`None` winner: nobody bid).
    pub fn outcome(&self) -> Option<(Option<&str>, u64)> {
        let result = match &self.s.highest {
            Some((u, a)) => (Some(u.as_str()), *a),
            None => (None, 0),
        };
        self.s.closed.then_some(result)
    }

    fn arm(&self, cx: &mut AppCx) {
        let after = Duration::from_millis(self.s.end_at_ms.saturating_sub(cx.now_ms));
        cx.effect(AppEffect::SetTimer {
            after,
            tag: TAG_CLOSE_BASE + self.s.end_at_ms,
        });
    }

    fn close(&mut self, cx: &mut AppCx) {
        self.s.closed = true;
        let (winner, amount) = match &self.s.highest {
            Some((u, a)) => (u.as_str(), *a),
            None => ("", 0),
        };
        tracing::info!(winner, amount, bids = self.s.bids, "auction closed");
        cx.effect(AppEffect::Broadcast {
            op: OP_CLOSED,
            body: amount_and_name(amount, winner),
        });
        cx.mark_changed();
    }
}

impl App for Auction {
    fn kind(&self) -> &'static str {
        "auction"
    }

    fn checkpoint(&self) -> Vec<u8> {
        encode_state(&self.s)
    }

    fn snapshot_state(&self) -> Vec<u8> {
        encode_state(&self.s)
    }

    fn on_activate(&mut self, cx: &mut AppCx) {
        if self.s.closed {
            return;
        }
        if self.s.end_at_ms == 0 {
            self.s.end_at_ms = cx.now_ms + self.duration.as_millis() as u64;
            cx.mark_changed();
        }
        self.arm(cx);
    }

    fn on_app_message(
        &mut self,
        cx: &mut AppCx,
        user: &str,
        op: u16,
        body: &[u8],
    ) -> Result<(), ErrorCode> {
        if self.s.closed {
            return Err(ErrorCode::UNEXPECTED_MESSAGE);
        }
        match op {
            OP_OPEN => {
                if self.s.bids > 0 {
                    return Err(ErrorCode::UNEXPECTED_MESSAGE);
                }
                self.s.end_at_ms = cx.now_ms + read_u64(body)?;
                cx.mark_changed();
                self.arm(cx);
                Ok(())
            }
            OP_BID => {
                let amount = read_u64(body)?;
                if self.s.highest.as_ref().is_some_and(|(_, a)| amount <= *a) {
                    // A losing bid is not an error worth a disconnect; ignore it.
                    return Ok(());
                }
                self.s.highest = Some((user.to_string(), amount));
                self.s.bids += 1;
                cx.mark_changed();
                cx.effect(AppEffect::Broadcast {
                    op: OP_HIGH_BID,
                    body: amount_and_name(amount, user),
                });
                Ok(())
            }
            _ => Err(ErrorCode::UNEXPECTED_MESSAGE),
        }
    }

    fn on_timer(&mut self, cx: &mut AppCx, tag: u64) {
        // Ignore a timer set for an end time that OPEN has since moved.
        if !self.s.closed
            && tag == TAG_CLOSE_BASE + self.s.end_at_ms
            && cx.now_ms + 5 >= self.s.end_at_ms
        {
            self.close(cx);
        }
    }

    fn keep_active(&self) -> bool {
        !self.s.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer_of(fx: &[AppEffect]) -> Option<(Duration, u64)> {
        fx.iter().find_map(|e| match e {
            AppEffect::SetTimer { after, tag } => Some((*after, *tag)),
            _ => None,
        })
    }

    #[test]
    fn closes_on_its_timer_with_the_highest_bidder() {
        let mut a = Auction::new(Duration::from_secs(10));
        let mut cx = AppCx::new(1_000);
        a.on_activate(&mut cx);
        let (fx, _) = cx.finish();
        let (after, tag) = timer_of(&fx).expect("timer set");
        assert_eq!(after, Duration::from_secs(10));
        assert!(a.keep_active());
        let mut cx = AppCx::new(2_000);
        a.on_app_message(&mut cx, "ann", OP_BID, &5u64.to_le_bytes())
            .expect("bid");
        a.on_app_message(&mut cx, "bob", OP_BID, &7u64.to_le_bytes())
            .expect("bid");
        a.on_app_message(&mut cx, "ann", OP_BID, &6u64.to_le_bytes())
            .expect("low bid ignored");
        // Everyone left; the timer fires with nobody present.
        let mut cx = AppCx::new(11_000);
        a.on_timer(&mut cx, tag);
        let (fx, changed) = cx.finish();
        assert!(changed);
        assert_eq!(a.outcome(), Some((Some("bob"), 7)));
        assert!(!a.keep_active());
        assert_eq!(
            fx,
            vec![AppEffect::Broadcast {
                op: OP_CLOSED,
                body: amount_and_name(7, "bob")
            }]
        );
        // The outcome survives a checkpoint.
        let back = Auction::restore(&a.checkpoint()).expect("restores");
        assert_eq!(back.outcome(), Some((Some("bob"), 7)));
        let mut cx = AppCx::new(12_000);
        assert_eq!(
            a.on_app_message(&mut cx, "ann", OP_BID, &9u64.to_le_bytes()),
            Err(ErrorCode::UNEXPECTED_MESSAGE)
        );
    }

    #[test]
    fn reactivation_after_the_end_closes_at_once() {
        let mut a = Auction::new(Duration::from_secs(10));
        let mut cx = AppCx::new(1_000);
        a.on_activate(&mut cx);
        let saved = a.checkpoint();
        let mut b = Auction::restore(&saved).expect("restores");
        let mut cx = AppCx::new(60_000);
        b.on_activate(&mut cx);
        let (fx, _) = cx.finish();
        let (after, tag) = timer_of(&fx).expect("timer");
        assert_eq!(after, Duration::ZERO);
        let mut cx = AppCx::new(60_000);
        b.on_timer(&mut cx, tag);
        assert_eq!(b.outcome(), Some((None, 0)));
    }

    #[test]
    fn open_moves_the_end_and_stale_timer_is_ignored() {
        let mut a = Auction::new(Duration::from_secs(10));
        let mut cx = AppCx::new(0);
        a.on_activate(&mut cx);
        let (fx, _) = cx.finish();
        let (_, old_tag) = timer_of(&fx).expect("timer");
        let mut cx = AppCx::new(100);
        a.on_app_message(&mut cx, "ann", OP_OPEN, &50_000u64.to_le_bytes())
            .expect("open");
        let mut cx = AppCx::new(10_000);
        a.on_timer(&mut cx, old_tag);
        assert_eq!(a.outcome(), None, "stale timer must not close");
        assert_eq!(
            a.on_app_message(&mut cx, "ann", OP_BID, &[1, 2]),
            Err(ErrorCode::MALFORMED)
        );
    }
}
