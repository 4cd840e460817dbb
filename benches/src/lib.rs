//! Shared pieces of Elko's benchmarks: a sample of every message, CPU time of
//! named threads, and an allocation counter.
//!
//! The benchmarks themselves are `benches/codec.rs` (criterion: the codec per
//! message type, the borrowed hot-path views, frame splitting),
//! `benches/fanout.rs` (engine broadcast throughput and server CPU per
//! delivery) and the `accept_spread` binary (how the accept modes spread
//! connections over loops). `codec_table` turns criterion's saved estimates
//! into the table of `RESULTS.md`. Figures and the commands that produced them
//! are in `RESULTS.md`.

pub mod alloc_count;
pub mod cpu;
pub mod samples;

pub use alloc_count::{
    allocations, allocations_during, set_alloc_class, set_counting, CountingAlloc,
};
pub use cpu::{process_cpu_seconds, threads_cpu_seconds, MachineCpu};
pub use samples::{mixed_stream, sample_messages};

#[cfg(test)]
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_counted_per_thread_class() {
        std::thread::spawn(|| {
            set_alloc_class(3);
            let (v, n) = allocations_during(|| {
                (0..10)
                    .map(|i| std::hint::black_box(Box::new(i)))
                    .collect::<Vec<_>>()
            });
            assert_eq!(v.len(), 10);
            // Ten boxes plus the Vec (one allocation: the size is known).
            assert!((10..=12).contains(&n), "{n} allocations counted");
            let ((), none) = allocations_during(|| {
                std::hint::black_box(1 + 1);
            });
            assert_eq!(none, 0);
        })
        .join()
        .expect("probe thread");
    }
}
