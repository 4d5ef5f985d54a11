//! The `Cpu` strategy: rayon with a sequential cutoff learned from the work.
//!
//! # How the cutoff is chosen
//! Rayon splits every `par_iter` into at least as many pieces as there are
//! threads and wakes them, which costs microseconds; 100 cheap items run
//! sequentially in a few hundred nanoseconds (rayon #648). So the question
//! per call is "is this batch worth more than the dispatch?", and it must be
//! answered without spending more than the cheap batch itself: a clock read
//! (`Instant::now`, ~20–25 ns) already costs as much as 10–20 cheap items.
//!
//! Two designs were weighed:
//! - an exponentially growing sequential prefix that reads the clock after
//!   1, 2, 4, ... items and escapes to rayon once the remaining work is
//!   predicted to be worth it: needs no memory, but pays `log2(n)` clock
//!   reads on *every* call (~170 ns for 100 items, more than the work);
//! - a learned per-item cost per closure (a small fixed table, relaxed
//!   atomics): a warm call costs one table probe (~2–4 ns) and no clock read
//!   when its predicted time is under [`UNTIMED_BELOW`]; every
//!   [`SAMPLE_EVERY`]-th such call is timed to follow drift.
//!
//! We use both: the learned cost decides warm calls, and the growing prefix
//! is what a cold call (or a warm call predicted to take between
//! [`UNTIMED_BELOW`] and the parallel threshold, where a few clock reads are
//! under 1 %) runs, so a batch whose cost was never seen still escapes to
//! rayon after one expensive item (10 items of 100 ms run in parallel).
//! The residual risk: two closures with identical code share one entry (which
//! is right), but a closure whose per-item cost changes by orders of
//! magnitude between calls is mispredicted for up to [`SAMPLE_EVERY`] small
//! calls, and then only when those calls are under [`UNTIMED_BELOW`].
//!
//! # Splitting
//! Once parallel, the batch is a rayon indexed iterator with
//! `with_min_len(grain)`, where `grain` is the number of items worth
//! `grain_target` of work: rayon's adaptive splitter and work stealing still
//! decide how far to split (so skewed costs balance), the grain only stops it
//! from splitting below the point where a split costs more than it saves.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::cancel::CancelToken;
use crate::outcome::{ItemError, PanicError, Summary};

/// Number of closures whose cost is remembered; a colliding closure takes
/// over a slot, which costs it one cold (timed) call.
const SLOTS: usize = 64;
/// Linear probes before taking over the home slot.
const PROBES: usize = 4;
/// A warm call predicted to take less than this is not timed (the clock read
/// would be more than 1 % of it), except every [`SAMPLE_EVERY`]-th call.
pub(crate) const UNTIMED_BELOW: Duration = Duration::from_micros(4);
/// How often an untimed call is timed anyway, to follow a drifting cost.
pub(crate) const SAMPLE_EVERY: u64 = 64;
/// A warm call that is timed first checks the clock after this much work.
const FIRST_CHECK: Duration = Duration::from_micros(2);
/// Items cheap enough that [`FIRST_CHECK`] holds this many are re-measured
/// by a sequential prefix even when the batch is predicted parallel.
const MIN_PREFIX_ITEMS: u64 = 16;

const fn ps(d: Duration) -> u64 {
    d.as_nanos() as u64 * 1000
}

/// The key of a closure type: the address of a function monomorphized for it.
/// Unlike `TypeId` it needs no `'static`; closures with identical code may be
/// merged by the compiler into one function, and then share one cost, which
/// is what we want.
pub(crate) fn key_of<T, R, F: Fn(&T) -> R>() -> usize {
    fn call<T, R, F: Fn(&T) -> R>(f: &F, x: &T) -> R {
        f(x)
    }
    call::<T, R, F> as fn(&F, &T) -> R as usize
}

#[derive(Debug, Default)]
struct Slot {
    key: AtomicUsize,
    /// Per-item cost in picoseconds; 0 = unknown.
    cost_ps: AtomicU64,
    /// Untimed calls so far, for sampling. Load + store, not an RMW: a lost
    /// update only shifts the next sample.
    calls: AtomicU64,
}

#[derive(Debug)]
struct CostTable {
    slots: Box<[Slot]>,
}

impl CostTable {
    fn new() -> Self {
        CostTable {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }

    #[inline]
    fn slot(&self, key: usize) -> &Slot {
        // Fibonacci hashing: the top bits of key × 2^64/φ.
        let home = ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize;
        for probe in 0..PROBES {
            let slot = &self.slots[(home + probe) % SLOTS];
            let k = slot.key.load(Relaxed);
            if k == key {
                return slot;
            }
            if k == 0 {
                match slot.key.compare_exchange(0, key, Relaxed, Relaxed) {
                    Ok(_) => return slot,
                    Err(now) if now == key => return slot,
                    Err(_) => {}
                }
            }
        }
        let slot = &self.slots[home];
        slot.key.store(key, Relaxed);
        slot.cost_ps.store(0, Relaxed);
        slot
    }
}

fn record(slot: &Slot, elapsed: Duration, items: usize) {
    let sample = (elapsed.as_nanos() as u64 * 1000 / items.max(1) as u64).max(1);
    let old = slot.cost_ps.load(Relaxed);
    // EWMA with weight 1/2: follows a change within a few samples, halves noise.
    let new = if old == 0 {
        sample
    } else {
        old / 2 + sample / 2
    };
    slot.cost_ps.store(new.max(1), Relaxed);
}

/// How the last call was run; exposed through `Stats` for tests and tuning.
#[derive(Debug, Default)]
pub(crate) struct CpuCounters {
    pub(crate) sequential: AtomicU64,
    pub(crate) parallel: AtomicU64,
}

#[inline]
fn bump(c: &AtomicU64) {
    // Load + store instead of fetch_add: an uncontended `lock xadd` costs
    // ~6 ns, 5 % of a 100-item batch. Under concurrent calls the counters
    // may miss increments; they are statistics.
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

/// A batch's work in the two forms the engine runs it: sequentially on a
/// sub-slice, or as a rayon parallel iterator over a sub-slice.
pub(crate) trait Work<T>: Sync {
    type Acc: Send;
    fn seq(&self, items: &[T], acc: &mut Self::Acc);
    fn par(&self, items: &[T], grain: usize, acc: &mut Self::Acc);
}

#[derive(Debug)]
pub(crate) struct Cpu {
    table: CostTable,
    pool: Option<rayon::ThreadPool>,
    parallel_threshold_ps: u64,
    grain_target_ps: u64,
    pub(crate) counters: CpuCounters,
}

impl Cpu {
    pub(crate) fn new(
        pool: Option<rayon::ThreadPool>,
        parallel_threshold: Duration,
        grain_target: Duration,
    ) -> Self {
        Cpu {
            table: CostTable::new(),
            pool,
            parallel_threshold_ps: ps(parallel_threshold).max(1),
            grain_target_ps: ps(grain_target).max(1),
            counters: CpuCounters::default(),
        }
    }

    pub(crate) fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    pub(crate) fn learned_cost(&self, key: usize) -> Option<Duration> {
        let slot = self.table.slot(key);
        match slot.cost_ps.load(Relaxed) {
            0 => None,
            c => Some(Duration::from_nanos(c / 1000)),
        }
    }

    /// Runs `items` through `work`, sequentially or on rayon as the learned
    /// cost says.
    pub(crate) fn run<T: Sync, W: Work<T>>(
        &self,
        key: usize,
        items: &[T],
        work: &W,
        acc: &mut W::Acc,
    ) {
        let n = items.len();
        if n == 0 {
            return;
        }
        let slot = self.table.slot(key);
        let cost = slot.cost_ps.load(Relaxed);
        let first_check = if cost != 0 {
            let predicted = cost.saturating_mul(n as u64);
            if predicted < ps(UNTIMED_BELOW) {
                bump(&self.counters.sequential);
                let calls = slot.calls.load(Relaxed);
                slot.calls.store(calls.wrapping_add(1), Relaxed);
                if !calls.is_multiple_of(SAMPLE_EVERY) {
                    work.seq(items, acc);
                } else {
                    let start = Instant::now();
                    work.seq(items, acc);
                    record(slot, start.elapsed(), n);
                }
                return;
            }
            // Cheap items predicted to be worth a dispatch go through the
            // timed prefix below: it re-measures the true per-item cost in
            // ~2 µs and usually escapes at its first check. Timing the
            // parallel run instead would fold rayon's dispatch into the cost
            // (elapsed × threads / n), which for a batch near the threshold
            // predicts it above the threshold again: it would stay parallel
            // for ever.
            if predicted >= self.parallel_threshold_ps
                && cost.saturating_mul(MIN_PREFIX_ITEMS) > ps(FIRST_CHECK)
            {
                bump(&self.counters.parallel);
                let start = Instant::now();
                self.par(items, cost, work, acc);
                // Expensive items: wall time × threads over-estimates the
                // per-item cost by the dispatch overhead / n, small beside
                // items of a quarter microsecond or more.
                let threads = self.threads().min(n).max(1) as u32;
                record(slot, start.elapsed() * threads, n);
                return;
            }
            (ps(FIRST_CHECK) / cost).max(1) as usize
        } else {
            1
        };
        // Timed sequential prefix, growing ×2, escaping to rayon when the
        // rest is predicted to be worth a dispatch.
        let start = Instant::now();
        let mut done = 0;
        let mut next = first_check.min(n);
        loop {
            work.seq(&items[done..next], acc);
            done = next;
            let elapsed = start.elapsed();
            if done == n {
                bump(&self.counters.sequential);
                record(slot, elapsed, n);
                return;
            }
            let per_item = (elapsed.as_nanos() as u64 * 1000 / done as u64).max(1);
            let rest = n - done;
            if rest >= 2 && per_item.saturating_mul(rest as u64) >= self.parallel_threshold_ps {
                bump(&self.counters.parallel);
                record(slot, elapsed, done);
                self.par(&items[done..], per_item, work, acc);
                return;
            }
            next = done.saturating_mul(2).min(n);
        }
    }

    fn par<T: Sync, W: Work<T>>(&self, items: &[T], cost_ps: u64, work: &W, acc: &mut W::Acc) {
        let grain = ((self.grain_target_ps / cost_ps.max(1)) as usize).clamp(1, items.len());
        match &self.pool {
            Some(pool) => pool.install(|| work.par(items, grain, acc)),
            None => work.par(items, grain, acc),
        }
    }
}

/// Runs one item: skipped when cancelled, panics caught.
#[inline(always)]
pub(crate) fn run_item<T, R, E, F>(
    f: &F,
    x: &T,
    cancel: Option<&CancelToken>,
) -> Result<R, ItemError<E>>
where
    F: Fn(&T) -> Result<R, E>,
{
    if let Some(c) = cancel
        && c.is_cancelled()
    {
        return Err(ItemError::Cancelled);
    }
    // `catch_unwind` costs nothing on the happy path: the closure is inlined
    // behind an `invoke`, only the landing pad is extra code.
    match catch_unwind(AssertUnwindSafe(|| f(x))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ItemError::Failed(e)),
        Err(payload) => Err(ItemError::Panicked(PanicError::from_payload(&*payload))),
    }
}

/// `map` / `try_map`: results in input order.
pub(crate) struct MapWork<'a, F> {
    pub(crate) f: F,
    pub(crate) cancel: Option<&'a CancelToken>,
}

impl<T, R, E, F> Work<T> for MapWork<'_, F>
where
    T: Sync,
    R: Send,
    E: Send,
    F: Fn(&T) -> Result<R, E> + Sync,
{
    type Acc = Vec<Result<R, ItemError<E>>>;

    #[inline]
    fn seq(&self, items: &[T], acc: &mut Self::Acc) {
        match self.cancel {
            None => acc.extend(items.iter().map(|x| run_item(&self.f, x, None))),
            c => acc.extend(items.iter().map(|x| run_item(&self.f, x, c))),
        }
    }

    fn par(&self, items: &[T], grain: usize, acc: &mut Self::Acc) {
        let c = self.cancel;
        acc.par_extend(
            items
                .par_iter()
                .with_min_len(grain)
                .map(|x| run_item(&self.f, x, c)),
        );
    }
}

/// `map_reduce` / `for_each`: an associative reduction.
pub(crate) struct ReduceWork<'a, M, I, O> {
    pub(crate) map: M,
    pub(crate) identity: I,
    pub(crate) op: O,
    pub(crate) cancel: Option<&'a CancelToken>,
}

pub(crate) struct Part<R> {
    pub(crate) value: R,
    pub(crate) panics: Vec<PanicError>,
    pub(crate) cancelled: usize,
}

impl<R> Part<R> {
    fn merge(mut self, other: Part<R>, op: impl Fn(R, R) -> R) -> Part<R> {
        self.panics.extend(other.panics);
        Part {
            value: op(self.value, other.value),
            panics: self.panics,
            cancelled: self.cancelled + other.cancelled,
        }
    }

    pub(crate) fn into_summary(self) -> Summary<R> {
        Summary {
            value: self.value,
            panics: self.panics,
            cancelled: self.cancelled,
        }
    }
}

impl<M, I, O> ReduceWork<'_, M, I, O> {
    #[inline(always)]
    fn fold<T, R>(&self, mut part: Part<R>, x: &T) -> Part<R>
    where
        M: Fn(&T) -> Result<R, std::convert::Infallible>,
        O: Fn(R, R) -> R,
    {
        match run_item(&self.map, x, self.cancel) {
            Ok(v) => part.value = (self.op)(part.value, v),
            Err(ItemError::Panicked(p)) => part.panics.push(p),
            Err(_) => part.cancelled += 1,
        }
        part
    }

    pub(crate) fn empty<R>(&self) -> Part<R>
    where
        I: Fn() -> R,
    {
        Part {
            value: (self.identity)(),
            panics: Vec::new(),
            cancelled: 0,
        }
    }
}

impl<T, R, M, I, O> Work<T> for ReduceWork<'_, M, I, O>
where
    T: Sync,
    R: Send,
    M: Fn(&T) -> Result<R, std::convert::Infallible> + Sync,
    I: Fn() -> R + Sync,
    O: Fn(R, R) -> R + Sync,
{
    type Acc = Option<Part<R>>;

    #[inline]
    fn seq(&self, items: &[T], acc: &mut Self::Acc) {
        let part = acc.take().unwrap_or_else(|| self.empty());
        *acc = Some(items.iter().fold(part, |p, x| self.fold(p, x)));
    }

    fn par(&self, items: &[T], grain: usize, acc: &mut Self::Acc) {
        let part = items
            .par_iter()
            .with_min_len(grain)
            .fold(|| self.empty(), |p, x| self.fold(p, x))
            .reduce(|| self.empty(), |a, b| a.merge(b, &self.op));
        *acc = Some(match acc.take() {
            Some(prefix) => prefix.merge(part, &self.op),
            None => part,
        });
    }
}
