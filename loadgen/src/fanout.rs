//! Where an utterance's latency goes: the first copy, and the fanout.
//!
//! A server hands one utterance to every member of the room, one connection
//! after another; the last member hears it later than the first. The
//! per-delivery latency mixes the two. This module follows each measured
//! utterance of a room until every member has its copy and splits the
//! latency into:
//!
//! - **first copy**: intended send time to the earliest copy received (how
//!   soon the server answers one utterance at all), and
//! - **fanout spread**: earliest copy to the last one (how long the server
//!   takes to hand it to the whole room).
//!
//! One [`RoomFanouts`] per room, behind its own mutex in
//! [`crate::metrics::Shared`]: the copies of one utterance may arrive on
//! different generator loops. A room's list holds only the utterances still
//! arriving (one or two at the 2002 rate), so a copy costs a short scan and
//! no allocation once the list has grown to its working size.

/// Utterances followed at once in one room; beyond, the oldest is given up.
/// (At 40 utterances a second per room, 1.5 s of copies in flight.)
pub const MAX_IN_FLIGHT: usize = 64;

/// One utterance whose copies are still arriving.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The utterance, unique within its room.
    key: u64,
    intended_us: u64,
    first_us: u64,
    last_us: u64,
    copies: u32,
    expected: u32,
}

/// A room's utterances in flight.
#[derive(Debug, Default)]
pub struct RoomFanouts {
    live: Vec<InFlight>,
}

/// One utterance whose every expected copy arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Intended send time to the earliest copy, µs.
    pub first_copy_us: u64,
    /// Earliest copy to the last, µs.
    pub spread_us: u64,
}

impl RoomFanouts {
    /// A list with room for `n` utterances before it has to grow.
    pub fn with_capacity(n: usize) -> RoomFanouts {
        RoomFanouts {
            live: Vec::with_capacity(n),
        }
    }

    /// A copy of utterance `key` (intended at `intended_us`) arrived at
    /// `now_us`, in a room of `members` (the copies to expect). Returns the
    /// utterance's figures when this was its last copy. Copies may be
    /// reported slightly out of time order when several loops receive them.
    /// An utterance some copies of which never come is given up when the
    /// room has [`MAX_IN_FLIGHT`] newer ones, and counts in neither figure.
    pub fn arrived(
        &mut self,
        key: u64,
        intended_us: u64,
        now_us: u64,
        members: u32,
    ) -> Option<Fanout> {
        let i = match self.live.iter().rposition(|f| f.key == key) {
            Some(i) => i,
            None => {
                if self.live.len() >= MAX_IN_FLIGHT {
                    let oldest = (0..self.live.len()).min_by_key(|&i| self.live[i].intended_us);
                    if let Some(oldest) = oldest {
                        self.live.swap_remove(oldest);
                    }
                }
                self.live.push(InFlight {
                    key,
                    intended_us,
                    first_us: now_us,
                    last_us: now_us,
                    copies: 0,
                    expected: members.max(1),
                });
                self.live.len() - 1
            }
        };
        let f = &mut self.live[i];
        f.copies += 1;
        f.first_us = f.first_us.min(now_us);
        f.last_us = f.last_us.max(now_us);
        if f.copies < f.expected {
            return None;
        }
        let done = Fanout {
            first_copy_us: f.first_us.saturating_sub(f.intended_us),
            spread_us: f.last_us - f.first_us,
        };
        self.live.swap_remove(i);
        Some(done)
    }

    /// Utterances still waiting for copies.
    pub fn in_flight(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_utterance_is_split_into_first_copy_and_spread() {
        let mut r = RoomFanouts::with_capacity(4);
        // Utterance 7, intended at 1000, to a room of 3; utterance 8 overlaps it.
        assert_eq!(r.arrived(7, 1000, 1100, 3), None);
        assert_eq!(r.arrived(8, 1050, 1160, 3), None);
        assert_eq!(r.arrived(7, 1000, 1300, 3), None);
        assert_eq!(r.in_flight(), 2);
        assert_eq!(
            r.arrived(7, 1000, 1090, 3),
            Some(Fanout {
                first_copy_us: 90,
                spread_us: 210
            }),
            "copies reported out of time order still span first to last"
        );
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.arrived(8, 1050, 1170, 3), None);
        assert_eq!(
            r.arrived(8, 1050, 1180, 3),
            Some(Fanout {
                first_copy_us: 110,
                spread_us: 20
            })
        );
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn a_room_of_one_completes_at_once() {
        let mut r = RoomFanouts::default();
        assert_eq!(
            r.arrived(1, 10, 15, 1),
            Some(Fanout {
                first_copy_us: 5,
                spread_us: 0
            })
        );
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn lost_copies_do_not_grow_the_list_without_bound() {
        let mut r = RoomFanouts::default();
        // Every utterance loses its second copy.
        let n = MAX_IN_FLIGHT as u64 * 3;
        for k in 1..=n {
            assert_eq!(r.arrived(k, k * 10, k * 10 + 5, 2), None);
        }
        assert_eq!(r.in_flight(), MAX_IN_FLIGHT);
        // The newest are kept: the last one still completes.
        assert_eq!(
            r.arrived(n, n * 10, n * 10 + 9, 2),
            Some(Fanout {
                first_copy_us: 5,
                spread_us: 4
            })
        );
        // The oldest were given up: a late copy of one does not complete it.
        assert_eq!(r.arrived(1, 10, 99, 2), None);
    }
}
