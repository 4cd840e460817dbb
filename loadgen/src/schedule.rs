//! When each client speaks: a Poisson process per client, fixed by the seed.
//!
//! Every client has its own small generator seeded from (run seed, client
//! index), so the intended send times of a run depend on the seed only, not
//! on which loop or process a client lands in or on the order timers fire.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One client's utterance schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    rng: SmallRng,
}

impl Schedule {
    /// The schedule of client `client` in a run seeded with `seed`.
    pub fn new(seed: u64, client: usize) -> Schedule {
        let mix = seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Schedule {
            rng: SmallRng::seed_from_u64(mix),
        }
    }

    /// The next gap, exponentially distributed with mean `mean_us` (Poisson arrivals).
    pub fn gap_us(&mut self, mean_us: u64) -> u64 {
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        (-u.ln() * mean_us as f64) as u64
    }
}

/// How long client `client` waits before its `retry`-th attempt to enter
/// (from 1): 200 ms, doubling to at most 5 s, less up to a quarter by a hash
/// of client and attempt, so that a crowd refused together (SERVER_FULL,
/// NO_CAPACITY, a server gone) does not come back together. Clients back
/// off as docs/protocol.md asks of every client; the first retry stays
/// quick, for a client sent to re-enter elsewhere.
pub fn retry_delay_us(client: usize, retry: u32) -> u64 {
    const FIRST_US: u64 = 200_000;
    const MOST_US: u64 = 5_000_000;
    let doublings = retry.saturating_sub(1).min(5);
    let base = (FIRST_US << doublings).min(MOST_US);
    let mix = (client as u64 ^ (u64::from(retry) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let fraction = mix >> 40; // 24 bits
    base - (base / 4) * fraction / (1 << 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_five_seconds_and_spread() {
        let ms = |retry| retry_delay_us(7, retry) as f64 / 1e3;
        assert!((150.0..=200.0).contains(&ms(1)), "{}", ms(1));
        assert!((300.0..=400.0).contains(&ms(2)), "{}", ms(2));
        assert!((2400.0..=3200.0).contains(&ms(5)), "{}", ms(5));
        for retry in [6, 7, 50, u32::MAX] {
            assert!(
                (3750.0..=5000.0).contains(&ms(retry)),
                "{retry}: {}",
                ms(retry)
            );
        }
        // A crowd refused at once comes back spread over a quarter of the delay.
        let first: Vec<u64> = (0..1000).map(|c| retry_delay_us(c, 1)).collect();
        let lo = first.iter().min().expect("1000 delays");
        let hi = first.iter().max().expect("1000 delays");
        assert!(*lo < 160_000 && *hi > 190_000, "{lo}..{hi}");
    }

    fn gaps(seed: u64, client: usize, n: usize) -> Vec<u64> {
        let mut s = Schedule::new(seed, client);
        (0..n).map(|_| s.gap_us(30_000_000)).collect()
    }

    #[test]
    fn the_schedule_is_fixed_by_seed_and_client() {
        assert_eq!(
            gaps(7, 3, 1000),
            gaps(7, 3, 1000),
            "same seed, same schedule"
        );
        assert_ne!(gaps(7, 3, 1000), gaps(8, 3, 1000), "another seed");
        assert_ne!(gaps(7, 3, 1000), gaps(7, 4, 1000), "another client");
    }

    #[test]
    fn the_gaps_are_exponential() {
        let x = gaps(2002, 0, 40_000);
        let mean = x.iter().sum::<u64>() as f64 / x.len() as f64;
        assert!((mean / 30e6 - 1.0).abs() < 0.03, "mean gap {mean} µs");
        // P(gap > mean) = 1/e; P(gap > 3 mean) = e^-3.
        let above =
            |k: f64| x.iter().filter(|&&g| g as f64 > k * 30e6).count() as f64 / x.len() as f64;
        assert!(
            (above(1.0) - (-1f64).exp()).abs() < 0.01,
            "P(gap > mean) = {}",
            above(1.0)
        );
        assert!(
            (above(3.0) - (-3f64).exp()).abs() < 0.005,
            "P(gap > 3 mean) = {}",
            above(3.0)
        );
    }
}
