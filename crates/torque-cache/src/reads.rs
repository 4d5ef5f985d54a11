//! Exact read counters without a locked instruction on the read path.
//!
//! Every `get` counts one hit or one miss. Counted with an atomic
//! read-modify-write (`lock xadd` on x86), that one instruction took about
//! 15 % of the whole throughput bench on this project's 2-core AMD EPYC
//! machine (2026-12-05: 23.5 against 20.1 ns per request with the count
//! removed; `cache_callgrind adaptive 8000000`, alternate runs): a locked
//! instruction waits for every earlier load, including the read's cache
//! misses, to complete.
//!
//! So each thread gets a small index of its own (recycled when the thread
//! exits), and each cache a few cache-padded stripes of counters: a thread
//! whose index has a stripe is the only writer of that stripe and counts with
//! a plain load and store, which is exact because no one else writes there.
//! Threads beyond the stripes (more threads than the cache made room for)
//! count with an atomic add on a shared counter instead. `stats()` sums
//! everything. The same design as the per-CPU counters of Linux
//! (`percpu_counter`), with threads for CPUs.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

/// Indices handed to threads: the next never handed out, and those returned
/// by threads that exited (reused first, so indices stay below the peak
/// number of live threads that have read a cache).
struct Registry {
    next: usize,
    free: Vec<usize>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    free: Vec::new(),
});

/// This thread's index; returned to the registry when the thread exits.
struct ThreadIndex(usize);

impl ThreadIndex {
    fn acquire() -> Self {
        let mut registry = REGISTRY.lock();
        let index = registry.free.pop().unwrap_or_else(|| {
            registry.next += 1;
            registry.next - 1
        });
        Self(index)
    }
}

impl Drop for ThreadIndex {
    fn drop(&mut self) {
        // Reads from later thread-local destructors of this thread must not
        // use the stripe any more: its next owner may be counting there.
        // (`FAST` has no destructor, so it is still there.)
        let _ = FAST.try_with(|f| f.set(GONE));
        // Through the mutex: the next owner of the index sees every count
        // this thread stored in the stripes.
        REGISTRY.lock().free.push(self.0);
    }
}

/// `FAST` before this thread has an index.
const UNSET: usize = usize::MAX;
/// `FAST` after this thread gave its index back: no stripe has this index,
/// so reads count on the shared counter.
const GONE: usize = usize::MAX - 1;

thread_local! {
    static INDEX: ThreadIndex = ThreadIndex::acquire();
    /// A copy of `INDEX`'s value, read without `INDEX`'s lazy-initialisation
    /// check: [`UNSET`] until the first read, [`GONE`] once `INDEX` is
    /// dropped.
    static FAST: Cell<usize> = const { Cell::new(UNSET) };
}

/// This thread's index; an index with no stripe ([`GONE`]) once the thread's
/// locals are being torn down.
#[inline]
fn thread_index() -> usize {
    let fast = FAST.with(Cell::get);
    if fast != UNSET {
        return fast;
    }
    first_thread_index()
}

/// This thread's index as stored, [`UNSET`] before its first read:
/// [`ReadCounters::count`] checks it against the stripes anyway, and
/// [`UNSET`] is past every stripe, so the first read takes the slow path
/// with no check of its own on the hot one.
#[inline]
fn thread_index_or_unset() -> usize {
    FAST.with(Cell::get)
}

#[cold]
#[inline(never)]
fn first_thread_index() -> usize {
    match INDEX.try_with(|i| i.0) {
        Ok(index) => {
            FAST.with(|f| f.set(index));
            index
        }
        // Unreachable as far as we know (`INDEX` is only ever initialised
        // here, which sets `FAST`, and its drop sets `FAST` to `GONE`), but
        // should it happen, the shared counter is always safe.
        Err(_) => GONE,
    }
}

/// One thread's counts in one cache. Misses first: a read picks its counter
/// at `hit as usize * 8` bytes, with no flip of the flag.
#[derive(Debug, Default)]
#[repr(C)]
struct Stripe {
    misses: AtomicU64,
    hits: AtomicU64,
}

/// The read counters of one cache.
#[derive(Debug)]
pub(crate) struct ReadCounters {
    stripes: Box<[CachePadded<Stripe>]>,
    shared: CachePadded<Stripe>,
}

impl ReadCounters {
    /// Counters with `stripes` threads counting without locked instructions.
    pub(crate) fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes).map(|_| CachePadded::default()).collect(),
            shared: CachePadded::default(),
        }
    }

    /// Counts one read by the calling thread.
    #[inline]
    pub(crate) fn count(&self, hit: bool) {
        match self.stripes.get(thread_index_or_unset()) {
            Some(stripe) => {
                // Only this thread writes this stripe: load and store, no
                // locked instruction, nothing lost.
                let n = if hit { &stripe.hits } else { &stripe.misses };
                n.store(n.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            None => self.count_elsewhere(hit),
        }
    }

    /// [`Self::count`] for a thread without a stripe of its own yet (its
    /// first read: it gets its index, and counts in its stripe if that
    /// index has one) or beyond the stripes (on the shared counter).
    #[cold]
    #[inline(never)]
    fn count_elsewhere(&self, hit: bool) {
        if let Some(stripe) = self.stripes.get(thread_index()) {
            let n = if hit { &stripe.hits } else { &stripe.misses };
            n.store(n.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            return;
        }
        let n = if hit {
            &self.shared.hits
        } else {
            &self.shared.misses
        };
        n.fetch_add(1, Ordering::Relaxed);
    }

    /// `(hits, misses)` counted so far.
    pub(crate) fn sum(&self) -> (u64, u64) {
        std::iter::once(&*self.shared)
            .chain(self.stripes.iter().map(|s| &**s))
            .fold((0, 0), |(h, m), s| {
                (
                    h + s.hits.load(Ordering::Relaxed),
                    m + s.misses.load(Ordering::Relaxed),
                )
            })
    }
}

/// Stripes per cache: four per CPU, at least 8 and at most 64 (8 KiB).
/// Stripes go to the threads with the lowest indices, which are handed out
/// in the order threads first read any cache, not by how busy they are: a
/// process with more live reader threads than that counts the rest on the
/// shared counter, correctly but with a locked add.
pub(crate) fn default_stripes() -> usize {
    let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
    (cpus * 4).clamp(8, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_counts_add_up_in_stripes_and_on_the_shared_counter() {
        // Thread indices are process-wide, so which threads get a stripe
        // depends on the other tests' threads: no stripes (all on the
        // shared counter), two (usually some of each) and 64 (all on their
        // own stripes here); none may lose a count.
        for stripes in [0, 2, 64] {
            let counters = ReadCounters::new(stripes);
            std::thread::scope(|s| {
                for _ in 0..6 {
                    s.spawn(|| {
                        for i in 0..30_000 {
                            counters.count(i % 3 != 0);
                        }
                    });
                }
            });
            assert_eq!(
                counters.sum(),
                (6 * 20_000, 6 * 10_000),
                "{stripes} stripes"
            );
        }
    }

    #[test]
    fn a_thread_that_takes_over_an_exited_threads_stripe_keeps_its_counts() {
        // One after another, each joined (so its index is back in the
        // registry), so each thread usually inherits the index (and stripe)
        // of the one before: it must add to that stripe's count, not start
        // it again.
        let counters = std::sync::Arc::new(ReadCounters::new(64));
        for n in [5, 7, 11] {
            let counters = std::sync::Arc::clone(&counters);
            std::thread::spawn(move || {
                for _ in 0..n {
                    counters.count(true);
                }
            })
            .join()
            .expect("no panic");
        }
        assert_eq!(counters.sum(), (23, 0));
    }

    #[test]
    fn a_read_from_a_thread_local_destructor_is_counted() {
        use std::sync::Arc;

        struct CountsOnDrop(Arc<ReadCounters>);
        impl Drop for CountsOnDrop {
            fn drop(&mut self) {
                // Runs while the thread's locals are torn down, possibly
                // after this module's own: must neither panic nor lose it.
                self.0.count(true);
            }
        }
        thread_local! {
            static LATE: std::cell::RefCell<Option<CountsOnDrop>> =
                const { std::cell::RefCell::new(None) };
        }

        // Destructors run in the reverse order of first use (on Linux):
        // set up before the first read, `LATE` is dropped after this
        // module's index, whose stripe may already be another thread's, so
        // its read must go to the shared counter; set up after, it is
        // dropped before, and its read still counts in the stripe.
        for late_first in [true, false] {
            let counters = Arc::new(ReadCounters::new(64));
            let for_thread = Arc::clone(&counters);
            std::thread::spawn(move || {
                if late_first {
                    let keep = Arc::clone(&for_thread);
                    LATE.with(|l| *l.borrow_mut() = Some(CountsOnDrop(keep)));
                }
                for_thread.count(false);
                if !late_first {
                    LATE.with(|l| *l.borrow_mut() = Some(CountsOnDrop(for_thread)));
                }
            })
            .join()
            .expect("no panic in the thread or its destructors");
            assert_eq!(counters.sum(), (1, 1));
            if cfg!(target_os = "linux") {
                let shared = counters.shared.hits.load(Ordering::Relaxed);
                assert_eq!(shared, u64::from(late_first), "late_first: {late_first}");
            }
        }
    }
}
