//! Where a new context goes: the placement decision, as one pure function.
//!
//! Kept apart from [`super::Directory`] so the rule can be read, and tested,
//! on its own: the directory computes one [`Candidate`] per registered
//! context server and asks [`choose_provider`] for the winner.

/// One context server as the placement rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The provider id (the final tie-breaker).
    pub id: &'a str,
    /// False for a draining server: it takes no new activations.
    pub accepting: bool,
    /// Contexts it hosts, as best known: its last report (or what this
    /// director has seen confirmed since, if more) plus the activations this
    /// director ordered on it recently and that are not confirmed yet.
    pub load: u64,
    /// Users it hosts, from its last report (the first tie-breaker).
    pub users: u64,
    /// Most contexts it will host at once; 0 means no limit.
    pub capacity: u32,
}

impl Candidate<'_> {
    /// Accepting and under capacity.
    pub fn eligible(&self) -> bool {
        self.accepting && (self.capacity == 0 || self.load < u64::from(self.capacity))
    }
}

/// The eligible candidate with the least load; ties go to the fewest users,
/// then to the smallest provider id (so the choice is deterministic). `None`
/// when no candidate is eligible.
pub fn choose_provider<'a, I>(candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = Candidate<'a>>,
{
    candidates
        .into_iter()
        .filter(Candidate::eligible)
        .min_by_key(|c| (c.load, c.users, c.id))
        .map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, load: u64, users: u64) -> Candidate<'_> {
        Candidate {
            id,
            accepting: true,
            load,
            users,
            capacity: 0,
        }
    }

    #[test]
    fn least_load_wins() {
        let c = [cand("a", 5, 0), cand("b", 2, 100), cand("c", 3, 0)];
        assert_eq!(choose_provider(c), Some("b"));
    }

    #[test]
    fn ties_go_to_fewer_users_then_smaller_id() {
        assert_eq!(
            choose_provider([cand("a", 2, 9), cand("b", 2, 3)]),
            Some("b")
        );
        assert_eq!(
            choose_provider([cand("b", 2, 3), cand("a", 2, 3)]),
            Some("a")
        );
    }

    #[test]
    fn draining_and_full_servers_are_skipped() {
        let draining = Candidate {
            accepting: false,
            ..cand("a", 0, 0)
        };
        let full = Candidate {
            capacity: 4,
            ..cand("b", 4, 0)
        };
        let room = Candidate {
            capacity: 5,
            ..cand("c", 4, 0)
        };
        assert_eq!(choose_provider([draining, full, room]), Some("c"));
        assert_eq!(choose_provider([draining, full]), None);
        assert_eq!(choose_provider(std::iter::empty()), None);
    }

    #[test]
    fn capacity_zero_is_unlimited() {
        assert!(cand("a", u64::MAX - 1, 0).eligible());
    }
}
