//! A global allocator that counts allocations per class of thread.
//!
//! "No allocation per delivery" is a claim a benchmark should check, not
//! trust. A bench binary installs [`CountingAlloc`] as its global allocator;
//! each thread tags itself with a class ([`set_alloc_class`], for example
//! from a handler's `on_start`), and every `alloc`/`realloc` adds one to its
//! class's counter. Untagged threads count in class 0.
//!
//! The cost is one relaxed atomic add per allocation; deallocations are not
//! counted. A bench that times allocation-heavy code turns counting off
//! ([`set_counting`]) once it has its counts, leaving one relaxed load.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Number of thread classes (0 = untagged).
pub const ALLOC_CLASSES: usize = 4;

static COUNTS: [AtomicU64; ALLOC_CLASSES] = [const { AtomicU64::new(0) }; ALLOC_CLASSES];
static COUNTING: AtomicBool = AtomicBool::new(true);

thread_local! {
    // const-initialised and without a destructor: reading it never allocates.
    static CLASS: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting allocations by thread class.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

fn count() {
    if !COUNTING.load(Relaxed) {
        return;
    }
    let class = CLASS.try_with(Cell::get).unwrap_or(0);
    COUNTS[class % ALLOC_CLASSES].fetch_add(1, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; counting touches only a
// const-initialised thread-local and a static atomic, neither of which
// allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Count allocations (the default) or not, process-wide.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Relaxed);
}

/// Tag the calling thread: its allocations count in `class` from now on.
pub fn set_alloc_class(class: usize) {
    CLASS.with(|c| c.set(class % ALLOC_CLASSES));
}

/// Allocations (including reallocations) made so far by threads of `class`.
/// Stays 0 unless [`CountingAlloc`] is the global allocator.
pub fn allocations(class: usize) -> u64 {
    COUNTS[class % ALLOC_CLASSES].load(Relaxed)
}

/// Allocations made by the calling thread's class while running `f`
/// (meaningful when no other thread of that class runs meanwhile).
pub fn allocations_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let class = CLASS.with(Cell::get);
    let before = allocations(class);
    let r = f();
    (r, allocations(class) - before)
}
