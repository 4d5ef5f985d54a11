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
//!   when its predicted time is under [`UNTIMED_BELOW`]; such calls are
//!   timed once per [`SAMPLE_AFTER`] of their predicted work, to follow
//!   drift.
//!
//! We use both: the learned cost decides warm calls, and the growing prefix
//! is what a cold call (or a warm call predicted to take between
//! [`UNTIMED_BELOW`] and the parallel threshold, where a few clock reads are
//! under 1 %) runs, so a batch whose cost was never seen still escapes to
//! rayon after one expensive item (10 items of 100 ms run in parallel).
//! The residual risk: two closures with identical code share one entry (which
//! is right), but a closure whose per-item cost changes by orders of
//! magnitude between calls is mispredicted until the next sample (calls
//! predicted to total [`SAMPLE_AFTER`]), and then only when those calls are
//! under [`UNTIMED_BELOW`]; a sample may raise the estimate ×8 at most, so
//! one that was capped makes the next call a sample too, until it catches
//! up.
//!
//! A parallel run learns too, from the items' own time (whole chunks in a
//! reduction, whatever the items cost, a chunk with a panic or a skipped
//! item set aside; for items of 125 ns or more, a clock read about once per
//! 2 µs of work in each rayon leaf of a `map` or `collect`, whose cheaper
//! items predicted parallel are re-measured by the timed prefix): the cost
//! must not include rayon's dispatch, or a small batch would look expensive
//! for ever.
//!
//! # Splitting
//! Once parallel, the batch is a rayon indexed iterator with
//! `with_min_len(grain)`, where `grain` is the number of items worth
//! `grain_target` of work: rayon's adaptive splitter and work stealing still
//! decide how far to split (so skewed costs balance), the grain only stops it
//! from splitting below the point where a split costs more than it saves.

use crate::outcome::caught_panics;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::cancel::CancelToken;
use crate::outcome::{ItemError, PanicError, Summary};

thread_local! {
    /// Set while this thread runs a job of a `Blocking` batch that a rayon
    /// thread waits for ([`kept_on_this_thread`]).
    static KEPT_ON_THIS_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every `Cpu` batch it starts on this thread run on this
/// thread, not on rayon (the `Hybrid` strategy's CPU stage too), and
/// restores the previous setting after, even when `f` panics.
///
/// For a job of a `Blocking` batch submitted from a rayon thread, which
/// that thread waits for. rayon's threads may all be waiting so: a `Cpu`
/// batch handed to rayon from a blocking thread would wait for one of
/// them, and they for it. And where the waiting rayon thread runs the job
/// itself, rayon's `join` would run the jobs it waits beside, the other
/// items of the waiting item's batch, nested inside the job.
pub(crate) fn kept_on_this_thread<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEPT_ON_THIS_THREAD.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(KEPT_ON_THIS_THREAD.with(|k| k.replace(true)));
    f()
}

/// Whether `Cpu` batches started here stay on this thread
/// ([`kept_on_this_thread`]).
pub(crate) fn is_kept_on_this_thread() -> bool {
    KEPT_ON_THIS_THREAD.with(Cell::get)
}

/// Number of closures whose cost is remembered; a colliding closure takes
/// over a slot, which costs it one cold (timed) call.
const SLOTS: usize = 64;
/// Linear probes before taking over the home slot.
const PROBES: usize = 4;
/// A warm call predicted to take less than this is not timed (the clock read
/// would be more than 1 % of it), except for samples ([`SAMPLE_AFTER`]).
pub(crate) const UNTIMED_BELOW: Duration = Duration::from_micros(4);
/// An untimed call is timed anyway once the untimed calls since the last
/// sample are predicted to have taken this long, to follow a drifting cost.
/// Counting predicted work rather than calls bounds the work between
/// samples the same way for every batch size (64 calls of just under 4 µs;
/// 5,000 calls of 100 cheap items), while a tiny batch stops paying for a
/// clock pair every few calls (one pair per 64 calls of 100 cheap items was
/// ~1 ns a call, 2 % of the batch).
pub(crate) const SAMPLE_AFTER: Duration = Duration::from_micros(256);
/// A warm call that is timed first checks the clock after this much work.
const FIRST_CHECK: Duration = Duration::from_micros(2);

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
    /// Predicted work (ps) of the untimed calls since the last sample.
    /// Load + store, not an RMW: a lost update only shifts the next sample.
    untimed_ps: AtomicU64,
}

#[derive(Debug)]
struct CostTable {
    /// Inline (the `Cpu` lives behind the processor's `Arc`): a probe is one
    /// load from the processor, with no pointer to chase and no bounds check.
    slots: [Slot; SLOTS],
}

impl CostTable {
    fn new() -> Self {
        CostTable {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }

    /// Fibonacci hashing: the top bits of key × 2^64/φ.
    #[inline(always)]
    fn home(key: usize) -> usize {
        ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize
    }

    #[inline]
    fn slot(&self, key: usize) -> &Slot {
        let home = Self::home(key);
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

    /// The slot of `key` if it has one; unlike [`slot`](CostTable::slot)
    /// it claims none and evicts nobody (a query must not make the table
    /// forget another closure's cost).
    fn find(&self, key: usize) -> Option<&Slot> {
        let home = Self::home(key);
        (0..PROBES)
            .map(|probe| &self.slots[(home + probe) % SLOTS])
            .find(|slot| slot.key.load(Relaxed) == key)
    }
}

/// What one `Instant::now()` costs here (the fastest of a few back-to-back
/// pairs): subtracted from measured intervals, so that the clock's own cost
/// (~25 ns natively, microseconds under valgrind) is not taken for the items'.
fn clock_cost() -> Duration {
    (0..16)
        .map(|_| {
            let a = Instant::now();
            Instant::now().duration_since(a)
        })
        .min()
        .unwrap_or_default()
}

fn record(slot: &Slot, elapsed: Duration, items: usize) {
    let sample = (elapsed.as_nanos() as u64 * 1000 / items.max(1) as u64).max(1);
    let old = slot.cost_ps.load(Relaxed);
    // EWMA with weight 1/2 halves noise. A sample 8x under the estimate is
    // a new regime (other data, or a first estimate spoiled by preemption)
    // and replaces it. Upward, a sample can only multiply the estimate by 8:
    // preemption inflates samples, never shrinks them, and one preempted
    // call must not send 100-item batches to rayon. A capped sample makes
    // the next untimed call a sample too: a cost that really grew climbs
    // ×8 a call instead of once per `SAMPLE_AFTER` of predictions still
    // far too low (hundreds of calls), and a preempted sample costs one
    // more timed call.
    let new = if old == 0 || old > sample.saturating_mul(8) {
        sample
    } else if sample > old.saturating_mul(8) {
        slot.untimed_ps.store(ps(SAMPLE_AFTER), Relaxed);
        old.saturating_mul(8)
    } else {
        old / 2 + sample / 2
    };
    slot.cost_ps.store(new.max(1), Relaxed);
}

/// How a call ran, for the stats: entirely on the calling thread, or (at
/// least partly) on rayon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    Sequential,
    Parallel,
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
    fn par(&self, items: &[T], grain: usize, probe: &Probe, acc: &mut Self::Acc);
    /// Whether the batch's token is cancelled: its items need no rayon
    /// worker, only a `Cancelled` each.
    fn cancelled(&self) -> bool;
    /// Whether [`Self::par`] times every item it runs, cheap or not (in
    /// chunks of `grain`): a warm call predicted parallel then goes to
    /// rayon at once, with no timed prefix to re-measure its items.
    const TIMES_ALL: bool = false;
}

#[derive(Debug)]
pub(crate) struct Cpu {
    table: CostTable,
    pool: Option<rayon::ThreadPool>,
    /// The configured threshold: the least predicted time that goes to
    /// rayon ([`Cpu::threshold`] may ask for more).
    parallel_threshold_ps: u64,
    grain_target_ps: u64,
    clock: Duration,
    /// Whether [`Cpu::threshold`] raises the configured threshold to what
    /// the dispatch is measured to cost.
    learn_dispatch: bool,
    /// What handing a batch to rayon from a thread outside the pool has
    /// cost lately (ps; 0 until measured): the parallel runs' wall time
    /// beyond their items' work shared by the threads, an EWMA
    /// ([`next_dispatch`]), of the runs that started more than
    /// [`WARM_GAP`] after the last one ended (rayon's workers likely
    /// asleep).
    dispatch_ps: AtomicU64,
    /// The same of the runs that started within [`WARM_GAP`] of the last
    /// one's end (its workers still awake). Kept apart, because the two
    /// differ several-fold (about 15 against 100–200 µs on this project's
    /// 2-core VM), and one estimate fed by both swung between them: a
    /// batch whose work sat between the two costs went back and forth
    /// between rayon and the calling thread, and paid at each switch (a
    /// run on rayon after calls on the calling thread wakes the workers;
    /// a call on the calling thread right after a run shares the cores
    /// with workers still spinning).
    warm_dispatch_ps: AtomicU64,
    /// When the last parallel run from outside the pool ended, in
    /// nanoseconds since `epoch` (0: none yet).
    last_parallel_end_ns: AtomicU64,
    epoch: Instant,
    /// Calls that chose a threshold since the start ([`Cpu::threshold`]).
    explore: AtomicU64,
    pub(crate) counters: CpuCounters,
}

/// Of every this many calls that the learned dispatch cost would keep on
/// the calling thread, [`EXPLORE_BURST`] in a row go to rayon anyway, to
/// measure the dispatch again: the cost falls when calls come closer
/// together, and only a parallel run shows it.
const EXPLORE_EVERY: u64 = 64;
/// Consecutive calls of an exploration. The first finds rayon's workers
/// asleep after the calls kept on the calling thread, whatever the calls'
/// pace; the second finds them awake if the calls come back to back (and
/// teaches [`Cpu::warm_dispatch_ps`], which then judges the calls that
/// follow it as closely). With
/// one call per exploration, a tight loop of 10⁵ cheap items measured a
/// cold dispatch every time and stayed on the calling thread at 1.3 × its
/// parallel time (`collect`, 95 against 68–75 µs; `cargo run --release -p
/// torque-benches --example parallel_cpu_alone -- ours-collect 100000 0`).
const EXPLORE_BURST: u64 = 2;
/// How long after a parallel run rayon's workers are taken to be still
/// awake: an idle worker yields about 32 times before it sleeps
/// (rayon-core's `sleep` module), tens of microseconds on an idle core.
const WARM_GAP: Duration = Duration::from_micros(50);
/// The most a dispatch is taken to cost (a preempted run is not a
/// dispatch).
const DISPATCH_CAP: Duration = Duration::from_millis(1);

/// The dispatch cost after a parallel run that took `wall_ps` for items
/// whose work was `work_ps` on one thread, on `threads` threads: the wall
/// time beyond an even share of the work, capped at [`DISPATCH_CAP`]. A
/// sample under the estimate replaces it (a run that found more of the
/// workers awake than the estimate assumed: what the calls cost at their
/// pace; a run started more than [`WARM_GAP`] after the last can still
/// find them awake); one above moves it by a quarter of the difference
/// (the first sample replaces the unmeasured 0). Each of the two
/// estimates, warm and cold, is updated this way by its own runs.
fn next_dispatch(old: u64, wall_ps: u64, work_ps: u64, threads: u64) -> u64 {
    let sample = wall_ps
        .saturating_sub(work_ps / threads.max(1))
        .min(ps(DISPATCH_CAP));
    let new = if old == 0 || sample <= old {
        sample
    } else {
        old + (sample - old) / 4
    };
    new.max(1)
}

/// The predicted time from which a batch is worth handing to rayon when
/// that costs `dispatch_ps`: with the work shared by `threads` threads, it
/// takes `work / threads + dispatch`, under `work` once `work` is at least
/// `dispatch × threads / (threads − 1)`. Never under `floor`.
fn learned_threshold(dispatch_ps: u64, threads: u64, floor: u64) -> u64 {
    let threads = threads.max(2);
    (dispatch_ps.saturating_mul(threads) / (threads - 1)).max(floor)
}

impl Cpu {
    pub(crate) fn new(
        pool: Option<rayon::ThreadPool>,
        parallel_threshold: Duration,
        learn_dispatch: bool,
        grain_target: Duration,
    ) -> Self {
        Cpu {
            table: CostTable::new(),
            pool,
            parallel_threshold_ps: ps(parallel_threshold).max(1),
            grain_target_ps: ps(grain_target).max(1),
            clock: clock_cost(),
            learn_dispatch,
            dispatch_ps: AtomicU64::new(0),
            warm_dispatch_ps: AtomicU64::new(0),
            last_parallel_end_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            explore: AtomicU64::new(0),
            counters: CpuCounters::default(),
        }
    }

    /// The predicted time from which this call's batch goes to rayon: the
    /// configured threshold, raised (unless it was set by hand) to what the
    /// measured dispatch cost makes worth it ([`learned_threshold`]) for a
    /// call from outside the pool, except [`EXPLORE_BURST`] calls in a row
    /// of every [`EXPLORE_EVERY`], which re-measure the dispatch. Waking
    /// rayon's sleeping workers is most of a dispatch's cost: on this
    /// project's 2-core VM about 200 µs for a call after a
    /// 1 ms pause against about 15 µs in a tight loop, so a batch of 60 µs
    /// called now and then took twice the sequential loop's time on rayon
    /// (`cargo run --release -p torque-benches --example
    /// parallel_cpu_gaps`). So a call within [`WARM_GAP`] of the last
    /// parallel run's end is judged on what such calls have cost
    /// ([`Cpu::warm_dispatch_ps`]), any other on what a run after a pause
    /// costs. From a pool thread (a nested batch) the configured threshold
    /// decides: a split there is a `join`.
    fn threshold(&self) -> u64 {
        let floor = self.parallel_threshold_ps;
        if !self.learn_dispatch || rayon::current_thread_index().is_some() {
            return floor;
        }
        // Right after a parallel run (its workers still awake) the lower of
        // the two estimates applies; the clock is read only when that can
        // change the answer.
        let cold = self.dispatch_ps.load(Relaxed);
        let warm = self.warm_dispatch_ps.load(Relaxed);
        // (A cold estimate never measured, when the first parallel run
        // panicked or was cancelled and every later one came right after
        // another, is no bound: the warm one applies.)
        let dispatch = if warm != 0 && (cold == 0 || warm < cold) && self.workers_awake() {
            warm
        } else {
            cold
        };
        if dispatch == 0 {
            return floor;
        }
        let learned = learned_threshold(dispatch, self.threads() as u64, floor);
        if learned == floor {
            return floor;
        }
        // Load + store: a lost update only shifts the next exploration.
        let k = self.explore.load(Relaxed).wrapping_add(1);
        self.explore.store(k, Relaxed);
        if k % EXPLORE_EVERY < EXPLORE_BURST {
            floor
        } else {
            learned
        }
    }

    /// Whether a parallel run from outside the pool ended less than
    /// [`WARM_GAP`] ago, so that rayon's workers are likely still awake.
    fn workers_awake(&self) -> bool {
        let end = self.last_parallel_end_ns.load(Relaxed);
        end != 0 && self.now_ns().saturating_sub(end) <= WARM_GAP.as_nanos() as u64
    }

    fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// The measured dispatch cost of a run that finds rayon's workers
    /// asleep (see [`Self::threshold`]), zero until measured. Rounded up
    /// to whole nanoseconds: a measured dispatch of (almost) nothing, kept
    /// as 1 ps, reads as 1 ns, not as "unmeasured".
    pub(crate) fn dispatch(&self) -> Duration {
        Duration::from_nanos(self.dispatch_ps.load(Relaxed).div_ceil(1000))
    }

    /// The same for a run that comes right after another
    /// ([`WARM_GAP`]), zero until measured.
    pub(crate) fn warm_dispatch(&self) -> Duration {
        Duration::from_nanos(self.warm_dispatch_ps.load(Relaxed).div_ceil(1000))
    }

    pub(crate) fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Runs `job` on this strategy's rayon pool, detached (the `Hybrid`
    /// strategy's CPU stage); on the calling thread when it is a rayon
    /// worker itself. That is a `Hybrid` batch awaited inside an item (a
    /// `block_on` in a `Cpu` item): its worker blocks until the batch is
    /// done, and with every worker so blocked no job spawned would ever
    /// run. (rayon does not tell whose worker a thread is; a worker of
    /// another pool runs the job inline too.) Likewise in a blocking job
    /// that a rayon thread waits for ([`kept_on_this_thread`]).
    #[cfg(feature = "tokio")]
    pub(crate) fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        if rayon::current_thread_index().is_some() || is_kept_on_this_thread() {
            return job();
        }
        match &self.pool {
            Some(p) => p.spawn(job),
            None => rayon::spawn(job),
        }
    }

    pub(crate) fn learned_cost(&self, key: usize) -> Option<Duration> {
        match self.table.find(key)?.cost_ps.load(Relaxed) {
            0 => None,
            c => Some(Duration::from_nanos(c.div_ceil(1000))),
        }
    }

    /// Whether a batch of `n` items of the closure `key` is warm, predicted
    /// under [`UNTIMED_BELOW`] and not due for a sample: the case the caller
    /// may run as a plain loop with no clock read. Counts the call when it
    /// says yes; when it says no, [`run`](Cpu::run) decides as usual.
    ///
    /// It is `run`'s first branch without the rest of `run` around it: one
    /// load of the closure's home slot (no probing: a closure displaced
    /// from it takes `run`), a multiply and a compare, so that callers whose
    /// sequential path is cheaper outside `Work` (`collect`) pay a dozen
    /// instructions for the decision.
    #[inline(always)]
    pub(crate) fn untimed(&self, key: usize, n: usize) -> bool {
        let slot = &self.table.slots[CostTable::home(key)];
        if slot.key.load(Relaxed) != key || n == 0 {
            return false;
        }
        let cost = slot.cost_ps.load(Relaxed);
        let predicted = cost.saturating_mul(n as u64);
        if cost == 0 || predicted >= ps(UNTIMED_BELOW) {
            return false;
        }
        let since = slot.untimed_ps.load(Relaxed);
        if since >= ps(SAMPLE_AFTER) {
            return false;
        }
        slot.untimed_ps.store(since + predicted, Relaxed);
        bump(&self.counters.sequential);
        true
    }

    /// Runs `items` through `work`, sequentially or on rayon as the learned
    /// cost says, and counts the call in the stats.
    #[inline]
    pub(crate) fn run<T: Sync, W: Work<T>>(
        &self,
        key: usize,
        items: &[T],
        work: &W,
        acc: &mut W::Acc,
    ) {
        let ran = self.run_uncounted(key, items, work, acc);
        self.count(ran);
    }

    /// Counts one call that ran as `ran` says.
    #[inline]
    pub(crate) fn count(&self, ran: Ran) {
        bump(match ran {
            Ran::Sequential => &self.counters.sequential,
            Ran::Parallel => &self.counters.parallel,
        });
    }

    /// [`run`](Cpu::run) without counting the call: for a call made of
    /// several runs (`map_weighted`'s waves), counted once by its caller.
    pub(crate) fn run_uncounted<T: Sync, W: Work<T>>(
        &self,
        key: usize,
        items: &[T],
        work: &W,
        acc: &mut W::Acc,
    ) -> Ran {
        let n = items.len();
        if n == 0 {
            return Ran::Sequential;
        }
        let slot = self.table.slot(key);
        let cost = slot.cost_ps.load(Relaxed);
        // Chosen once per call that may go to rayon ([`Cpu::threshold`]).
        let threshold;
        let first_check = if cost != 0 {
            let predicted = cost.saturating_mul(n as u64);
            if predicted < ps(UNTIMED_BELOW) {
                let since = slot.untimed_ps.load(Relaxed);
                if since < ps(SAMPLE_AFTER) {
                    slot.untimed_ps.store(since + predicted, Relaxed);
                    work.seq(items, acc);
                } else {
                    slot.untimed_ps.store(0, Relaxed);
                    let panics = caught_panics();
                    let start = Instant::now();
                    work.seq(items, acc);
                    // A panic's cost (hook, backtrace) is not the items'.
                    if caught_panics() == panics {
                        let elapsed = start.elapsed().saturating_sub(self.clock);
                        // Skipped (cancelled) items cost nothing: the time
                        // per item of a cancelled batch is a lower bound,
                        // learned only when it says the items became
                        // slower. Ignored, a closure whose tiny batches are
                        // cancelled part-way as a rule (a search) was never
                        // sampled again, however slow its items became.
                        if !work.cancelled() || ps(elapsed) > predicted {
                            record(slot, elapsed, n);
                        }
                    }
                }
                return Ran::Sequential;
            }
            // Cheap items (16 or more per 2 µs) predicted parallel still go
            // through the timed prefix: it re-measures them in ~2 µs and
            // escapes to rayon at its first check, so the parallel `map`
            // needs no per-item probe (which slowed cheap items several-fold).
            // One item cannot run in parallel (and, timed by the prefix,
            // corrects an estimate a slow batch left behind).
            // A reduction times its chunks, cheap items too
            // ([`Work::TIMES_ALL`]): the prefix ran on the calling thread
            // while rayon's workers, back from the last call, spun for new
            // work on the same cores, and on 10⁵ items of about 1 ns it made
            // `map_reduce` 1.65 × rayon's time.
            threshold = self.threshold();
            if n >= 2
                && predicted >= threshold
                && (W::TIMES_ALL || cost.saturating_mul(PROBED_PER_CHECK) > ps(FIRST_CHECK))
            {
                return self.par(slot, items, cost, work, acc);
            }
            (ps(FIRST_CHECK) / cost).max(1) as usize
        } else {
            threshold = self.threshold();
            1
        };
        // Timed sequential prefix, growing ×2, escaping to rayon when the
        // rest is predicted to be worth a dispatch.
        // The timing restarts after a stretch in which an item panicked: a
        // panic's cost (the hook's message, a backtrace: milliseconds in a
        // debug build) is not the items', and must neither send the rest of
        // the batch to rayon nor be learned.
        let mut start = Instant::now();
        let mut timed_from = 0;
        let mut panics = caught_panics();
        let mut done = 0;
        let mut next = first_check.min(n);
        let mut reads = 0u32;
        // The last check's (time, items): all of them ran, none skipped.
        let mut ran = None;
        loop {
            work.seq(&items[done..next], acc);
            done = next;
            reads += 1;
            if work.cancelled() {
                // The rest is only marked `Cancelled`, on this thread. A
                // skipped item costs nanoseconds (one cancelled batch would
                // replace a 1 ms estimate), so only the items timed up to
                // the last check, before the cancel, are learned: a closure
                // whose batches are cancelled part-way as a rule (a search)
                // still follows its cost.
                if let Some((elapsed, timed)) = ran {
                    record(slot, elapsed, timed);
                }
                work.seq(&items[done..], acc);
                return Ran::Sequential;
            }
            if caught_panics() != panics {
                panics = caught_panics();
                if done == n {
                    return Ran::Sequential;
                }
                start = Instant::now();
                timed_from = done;
                reads = 0;
                ran = None;
                // Again from a short stretch: one as long as all the items
                // done meets the next panic whenever they come about as
                // often as the stretches double, and then never escapes.
                next = done.saturating_add(first_check).min(n);
                continue;
            }
            let elapsed = start.elapsed().saturating_sub(self.clock * reads);
            let timed = done - timed_from;
            if done == n {
                if timed > 0 {
                    record(slot, elapsed, timed);
                }
                return Ran::Sequential;
            }
            let per_item = (elapsed.as_nanos() as u64 * 1000 / timed.max(1) as u64).max(1);
            let rest = n - done;
            if rest >= 2 && per_item.saturating_mul(rest as u64) >= threshold {
                record(slot, elapsed, timed);
                return self.par(slot, &items[done..], per_item, work, acc);
            }
            ran = Some((elapsed, timed));
            // Growing ×2 from where the timing (re)started.
            next = done.saturating_add(timed.max(first_check)).min(n);
        }
    }

    /// Runs `items` on rayon and learns the per-item cost from a sample of
    /// items timed one by one. Timing the whole parallel run instead
    /// (elapsed × threads / n) would fold rayon's dispatch into the cost: a
    /// small batch would then be predicted above the threshold on every call
    /// and stay parallel for ever (seen under callgrind and on a loaded
    /// machine, where one preempted cold call was enough).
    fn par<T: Sync, W: Work<T>>(
        &self,
        slot: &Slot,
        items: &[T],
        cost_ps: u64,
        work: &W,
        acc: &mut W::Acc,
    ) -> Ran {
        // A cancelled batch only marks its items: handing them to a pool
        // saturated by other batches would wait for a worker (rayon takes
        // injected jobs last), however long those batches run. A batch
        // started in a blocking job that a rayon thread waits for stays on
        // its thread ([`kept_on_this_thread`]).
        if work.cancelled() || is_kept_on_this_thread() {
            work.seq(items, acc);
            return Ran::Sequential;
        }
        let cost_ps = cost_ps.max(1);
        let grain = ((self.grain_target_ps / cost_ps) as usize).clamp(1, items.len());
        let probe = Probe::new(cost_ps, self.clock);
        let outside = self.learn_dispatch && rayon::current_thread_index().is_none();
        let warm = outside && self.workers_awake();
        let start = Instant::now();
        match &self.pool {
            Some(pool) => pool.install(|| work.par(items, grain, &probe, acc)),
            None => work.par(items, grain, &probe, acc),
        }
        let wall = start.elapsed();
        // After a cancel the probe holds only items that ran: a leaf stops
        // timing at its first skipped item (a `map`), stops altogether (a
        // `collect`), a chunk with one is not timed (a reduction).
        let sample = probe.sample();
        // The dispatch, from the run's wall time and its items' work: as
        // the run measured it, or for cheap items of a `map` or `collect`
        // (not timed in their leaves) as the timed prefix has just
        // measured it. (Learned from sampled runs only, a `collect` of 10⁵
        // cheap items kept the cold dispatch of its first call for ever:
        // its explorations measured nothing.) Not from a cancelled run,
        // whose items did not all run, nor one with a panic, whose cost is
        // not a dispatch's.
        let per_item = match sample {
            Some((elapsed, n)) => Some(ps(elapsed) / n.max(1) as u64),
            None if probe.sparse() => Some(cost_ps),
            None => None,
        };
        if let Some(per_item) = per_item
            && outside
            && !work.cancelled()
            && !probe.any_set_aside()
        {
            let work_ps = per_item.saturating_mul(items.len() as u64);
            let estimate = if warm {
                &self.warm_dispatch_ps
            } else {
                &self.dispatch_ps
            };
            let old = estimate.load(Relaxed);
            let threads = self.threads() as u64;
            estimate.store(next_dispatch(old, ps(wall), work_ps, threads), Relaxed);
        }
        if outside {
            // The run's end, from the clock reads already made.
            let end = (start + wall).saturating_duration_since(self.epoch);
            self.last_parallel_end_ns
                .store((end.as_nanos() as u64).max(1), Relaxed);
        }
        match sample {
            Some((elapsed, n)) => record(slot, elapsed, n),
            // Skipped items are no evidence of tiny leaves, nor are
            // stretches set aside for a panic.
            None if work.cancelled() || probe.any_set_aside() => {}
            // No leaf ran two sample points (tiny leaves): no evidence, so
            // halve the estimate. A batch that is really expensive is back
            // to the timed prefix after a few calls, which re-measures it.
            None => slot.cost_ps.store((cost_ps / 2).max(1), Relaxed),
        }
        Ran::Parallel
    }
}

/// Measures the per-item cost inside a parallel run. Each rayon leaf reads
/// the clock every `stride` items (about one read per [`FIRST_CHECK`] of
/// predicted work, so under 2 % overhead) and reports the interval per item:
/// timing single items would add the clock's own ~25 ns to each sample,
/// 20× the cost of a cheap item. Intervals more than [`OUTLIER`] times the
/// prediction (a preempted thread) are set aside, and used only if every
/// interval was one (the cost really did grow).
pub(crate) struct Probe {
    mask: usize,
    clock_ns: u64,
    limit_ns: u64,
    kept: (AtomicU64, AtomicU64),
    outliers: (AtomicU64, AtomicU64),
    /// An item panicked: its stretch was not timed (or was an outlier),
    /// and the run's wall time holds the unwinding ([`Probe::set_aside`]).
    set_aside: AtomicBool,
}

/// See [`Probe`].
const OUTLIER: u64 = 16;
/// Items at least `FIRST_CHECK / PROBED_PER_CHECK` long (125 ns) are timed
/// inside a parallel `map`; cheaper ones are measured by the timed prefix.
const PROBED_PER_CHECK: u64 = 16;

/// One leaf's last clock reading: (item index, time).
#[derive(Default)]
pub(crate) struct LeafClock(Option<(usize, Instant)>);

/// A [`LeafClock`] that times its leaf's last stretch (from the last
/// reading to the end of the leaf) when the leaf is done: `map_init`'s
/// per-leaf state, dropped when rayon completes the leaf.
pub(crate) struct LeafTimer<'a> {
    probe: &'a Probe,
    clock: LeafClock,
    /// Index of the last item the leaf ran.
    last: usize,
    /// An item was skipped (the batch is cancelled): the leaf times no
    /// more, its stretch in progress included (a skipped item costs
    /// nanoseconds, and would pass for a cheap one).
    skipped: bool,
}

impl LeafTimer<'_> {
    #[inline(always)]
    fn tick(&mut self, index: usize) {
        if !self.skipped {
            self.probe.tick(&mut self.clock, index);
            self.last = index;
        }
    }

    /// Called after each item with its result.
    #[inline(always)]
    fn ran<R, E>(&mut self, result: &Result<R, ItemError<E>>) {
        if matches!(result, Err(ItemError::Cancelled)) {
            self.skipped = true;
        }
    }
}

impl Drop for LeafTimer<'_> {
    fn drop(&mut self) {
        if !self.skipped {
            self.probe.finish(&self.clock, self.last);
        }
    }
}

impl Probe {
    fn new(cost_ps: u64, clock: Duration) -> Self {
        // Rounded up, and at least 2 unless an item costs 16 clock reads:
        // with a stride of 1 the interval would still carry a whole clock
        // read per item if the calibration missed some of it, and a cost
        // inflated by it would confirm itself.
        let clock_ps = clock.as_nanos() as u64 * 1000;
        let least = if cost_ps >= clock_ps.saturating_mul(16) {
            1
        } else {
            2
        };
        let stride = (ps(FIRST_CHECK).div_ceil(cost_ps).max(least) as usize).next_power_of_two();
        Probe {
            mask: stride - 1,
            clock_ns: clock.as_nanos() as u64,
            limit_ns: (cost_ps.saturating_mul(stride as u64) / 1000).saturating_mul(OUTLIER),
            kept: (AtomicU64::new(0), AtomicU64::new(0)),
            outliers: (AtomicU64::new(0), AtomicU64::new(0)),
            set_aside: AtomicBool::new(false),
        }
    }

    /// Called before item `index` of a leaf runs.
    #[inline(always)]
    pub(crate) fn tick(&self, clock: &mut LeafClock, index: usize) {
        if index & self.mask != 0 {
            return;
        }
        let now = Instant::now();
        if let Some((prev, then)) = clock.0
            && index > prev
        {
            let ns = (now.duration_since(then).as_nanos() as u64)
                .saturating_sub(self.clock_ns)
                .max(1);
            let (sum, items) = if ns > self.limit_ns.max(1) {
                &self.outliers
            } else {
                &self.kept
            };
            sum.fetch_add(ns, Relaxed);
            items.fetch_add((index - prev) as u64, Relaxed);
        }
        clock.0 = Some((index, now));
    }

    /// Called when a leaf is done, `last` the index of its last item: adds
    /// the stretch from the leaf's last reading to now. Without it a leaf
    /// of one item (rayon makes such leaves for a batch of as many items as
    /// threads) measures nothing, and an estimate left high by one slow
    /// batch would only be halved, call after parallel call.
    pub(crate) fn finish(&self, clock: &LeafClock, last: usize) {
        if let Some((prev, then)) = clock.0
            && last >= prev
        {
            self.add(then.elapsed(), last - prev + 1);
        }
    }

    /// Whether items are cheap enough that per-item probing would cost
    /// more than it tells (then the timed prefix measures them).
    pub(crate) fn sparse(&self) -> bool {
        self.stride() as u64 > PROBED_PER_CHECK
    }

    /// Adds a chunk timed as a whole.
    pub(crate) fn add(&self, elapsed: Duration, items: usize) {
        let ns = (elapsed.as_nanos() as u64)
            .saturating_sub(self.clock_ns)
            .max(1);
        let limit = self.limit_ns.max(1).saturating_mul(items as u64) / self.stride() as u64;
        let (sum, n) = if ns > limit {
            &self.outliers
        } else {
            &self.kept
        };
        sum.fetch_add(ns, Relaxed);
        n.fetch_add(items as u64, Relaxed);
    }

    /// Notes that an item panicked, its stretch not timed (or set apart as
    /// an outlier): the run's wall time holds the unwinding, so it teaches
    /// no dispatch, and a probe with no sample is no evidence of tiny
    /// leaves.
    pub(crate) fn set_aside(&self) {
        self.set_aside.store(true, Relaxed);
    }

    fn any_set_aside(&self) -> bool {
        self.set_aside.load(Relaxed)
    }

    fn stride(&self) -> usize {
        self.mask + 1
    }

    /// The measured (time, items), if any interval was measured.
    fn sample(&self) -> Option<(Duration, usize)> {
        for (sum, items) in [&self.kept, &self.outliers] {
            let n = items.load(Relaxed);
            if n > 0 {
                return Some((Duration::from_nanos(sum.load(Relaxed)), n as usize));
            }
        }
        None
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
    run_item_noting(f, x, cancel, || {})
}

/// [`run_item`], calling `panicked` when the item panics (on the unwinding
/// path only, so a clean item pays nothing for it).
#[inline(always)]
pub(crate) fn run_item_noting<T, R, E, F>(
    f: &F,
    x: &T,
    cancel: Option<&CancelToken>,
    panicked: impl FnOnce(),
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
        Err(payload) => {
            panicked();
            Err(ItemError::Panicked(PanicError::from_box(payload)))
        }
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

    fn par(&self, items: &[T], grain: usize, probe: &Probe, acc: &mut Self::Acc) {
        let c = self.cancel;
        if probe.sparse() {
            // Items too cheap to time in the leaves: the run's wall time
            // then teaches the dispatch from the prefix's cost, which a
            // panic's unwinding (microseconds) would inflate; so a panic
            // marks the run as not timed.
            acc.par_extend(
                items
                    .par_iter()
                    .with_min_len(grain)
                    .map(|x| run_item_noting(&self.f, x, c, || probe.set_aside())),
            );
            return;
        }
        acc.par_extend(items.par_iter().enumerate().with_min_len(grain).map_init(
            || LeafTimer {
                probe,
                clock: LeafClock::default(),
                last: 0,
                skipped: false,
            },
            |timer, (i, x)| {
                timer.tick(i);
                // The leaves' timing leaves a stretch with a panic out of
                // the per-item cost (an outlier), but the run's wall time
                // holds the unwinding: no dispatch is learned from it.
                let result = run_item_noting(&self.f, x, c, || probe.set_aside());
                timer.ran(&result);
                result
            },
        ));
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(CancelToken::is_cancelled)
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
            timed_out: 0,
        }
    }
}

impl<M, I, O> ReduceWork<'_, M, I, O> {
    /// `items` folded from the identity, as the loop of
    /// `iter().map().fold()` under one `catch_unwind` for the whole slice:
    /// the running value and the count of items done live outside it, so
    /// after an item panics the fold resumes after that item with the value
    /// so far ([`Self::resume_after`]); nothing runs twice. With a token, an
    /// item skipped for a cancel ends the loop and the rest are counted
    /// `cancelled` without a look each (the token stays cancelled; over a
    /// huge input, a look per item took minutes after the cancel). `op` and
    /// `identity` are not isolated: a panic in them (the running value is
    /// then gone) propagates.
    ///
    /// Every path folds through here, the sequential ones and each rayon
    /// leaf. Until 2026-12-06 a leaf folded item by item through a
    /// `catch_unwind` per item, passing the whole `Part` (value, panic list,
    /// count) along: where the compiler could not keep it in registers (a
    /// closure with an opaque call, `black_box` in the example) that cost
    /// about 6 ns an item, and a parallel `map_reduce` of 10⁵ items of about
    /// 1 ns took 8 × the sequential loop's time
    /// (`cargo run --release -p torque-benches --example parallel_cpu_sweep`).
    #[inline(always)]
    pub(crate) fn fold_chunk<T, R>(&self, items: &[T]) -> Part<R>
    where
        T: Sync,
        R: Send,
        M: Fn(&T) -> Result<R, std::convert::Infallible> + Sync,
        I: Fn() -> R + Sync,
        O: Fn(R, R) -> R + Sync,
    {
        let mut value = Some((self.identity)());
        let mut done = 0;
        let cancel = self.cancel;
        // The loop of `fold_from`, written out: called from here,
        // `fold_from` cost 0.25 instructions more per item on tiny batches
        // (`parallel_callgrind torque 1000`: 7,912 → 8,164 per call).
        let run = catch_unwind(AssertUnwindSafe(|| {
            for x in items {
                if let Some(c) = cancel
                    && c.is_cancelled()
                {
                    return;
                }
                let Ok(v) = (self.map)(x);
                if let Some(a) = value.take() {
                    value = Some((self.op)(a, v));
                }
                done += 1;
            }
        }));
        match (run, value) {
            (Ok(()), Some(value)) => Part {
                value,
                panics: Vec::new(),
                cancelled: items.len() - done,
            },
            (Err(payload), Some(value)) => self.resume_after(items, done, value, payload),
            (Err(payload), None) => resume_unwind(payload),
            (Ok(()), None) => unreachable!("the running value is put back after every item"),
        }
    }

    /// The loop of [`Self::fold_chunk`], for [`Self::resume_after`]: folds
    /// `items[start..]` into `value` under one `catch_unwind`; stops at an
    /// item skipped for a cancel. Returns the outcome, the index of the
    /// first item not done and the running value. An `Err` is a panic of
    /// the item at that index (with the value still there) or of `op` (with
    /// the value gone).
    #[inline(always)]
    fn fold_from<T, R>(
        &self,
        items: &[T],
        start: usize,
        value: R,
    ) -> (std::thread::Result<()>, usize, Option<R>)
    where
        M: Fn(&T) -> Result<R, std::convert::Infallible>,
        O: Fn(R, R) -> R,
    {
        let mut value = Some(value);
        let mut done = start;
        let cancel = self.cancel;
        let run = catch_unwind(AssertUnwindSafe(|| {
            for x in &items[start..] {
                if let Some(c) = cancel
                    && c.is_cancelled()
                {
                    return;
                }
                let Ok(v) = (self.map)(x);
                if let Some(a) = value.take() {
                    value = Some((self.op)(a, v));
                }
                done += 1;
            }
        }));
        (run, done, value)
    }

    /// [`Self::fold_chunk`] for a batch the learned cost says is tiny
    /// ([`Cpu::untimed`]; no token, the caller checked).
    #[inline(always)]
    pub(crate) fn run_untimed<T, R>(&self, items: &[T]) -> Part<R>
    where
        T: Sync,
        R: Send,
        M: Fn(&T) -> Result<R, std::convert::Infallible> + Sync,
        I: Fn() -> R + Sync,
        O: Fn(R, R) -> R + Sync,
    {
        self.fold_chunk(items)
    }

    /// The rest of [`Self::fold_chunk`] after item `at` panicked: the same
    /// loop from the next item, again after each later panic. A loop, not a
    /// call of `fold_chunk` on the rest: that recursed once per panic, and
    /// a stretch of a few thousand panicking items overflowed the thread's
    /// stack (`tests/panic_storm.rs`).
    #[cold]
    #[inline(never)]
    fn resume_after<T, R>(
        &self,
        items: &[T],
        at: usize,
        value: R,
        payload: Box<dyn std::any::Any + Send>,
    ) -> Part<R>
    where
        T: Sync,
        R: Send,
        M: Fn(&T) -> Result<R, std::convert::Infallible> + Sync,
        I: Fn() -> R + Sync,
        O: Fn(R, R) -> R + Sync,
    {
        let mut panics = vec![PanicError::from_box(payload)];
        let (mut start, mut value) = (at + 1, value);
        loop {
            match self.fold_from(items, start, value) {
                (Ok(()), done, Some(value)) => {
                    return Part {
                        value,
                        panics,
                        cancelled: items.len() - done,
                    };
                }
                (Err(payload), done, Some(v)) => {
                    panics.push(PanicError::from_box(payload));
                    (start, value) = (done + 1, v);
                }
                // `op` panicked: the running value is gone.
                (Err(payload), _, None) => resume_unwind(payload),
                (Ok(()), _, None) => {
                    unreachable!("the running value is put back after every item")
                }
            }
        }
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
        let part = self.fold_chunk(items);
        *acc = Some(match acc.take() {
            Some(prefix) => prefix.merge(part, &self.op),
            None => part,
        });
    }

    fn par(&self, items: &[T], grain: usize, probe: &Probe, acc: &mut Self::Acc) {
        // Chunks of `grain` items, each folded by a plain loop
        // ([`Self::fold_chunk`]) and timed as a whole (one clock pair per
        // >= 10 µs of work). A per-item probe in a rayon `fold` (enumerate +
        // map_init) kept the fold state in memory and ran 10x slower per
        // item.
        //
        // Cheap items too: a chunk is `grain` items, at least
        // `grain_target` (10 µs) of work, so its clock pair is under 1 % of
        // it. (Before the chunks folded in one loop, items under 125 ns were
        // not timed here: with a `catch_unwind` and the fold state per item,
        // timed chunks cost 7 % more on 10⁶ items of about 1 ns.)
        let part = items
            .par_chunks(grain)
            .map(|chunk| {
                let start = Instant::now();
                let part = self.fold_chunk(chunk);
                // A chunk with skipped (cancelled) items is not timed, nor
                // one in which an item panicked: a panic's cost (the hook,
                // a backtrace) is not the items', and with one in every
                // chunk each chunk was an outlier, all of them counted and
                // one call raised the estimate ×8 (the cap).
                if !part.panics.is_empty() {
                    probe.set_aside();
                } else if part.cancelled == 0 {
                    probe.add(start.elapsed(), chunk.len());
                }
                part
            })
            .reduce(|| self.empty(), |a, b| a.merge(b, &self.op));
        *acc = Some(match acc.take() {
            Some(prefix) => prefix.merge(part, &self.op),
            None => part,
        });
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(CancelToken::is_cancelled)
    }

    const TIMES_ALL: bool = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000_000;

    #[test]
    fn the_dispatch_is_the_wall_time_beyond_an_even_share_of_the_work() {
        // 300 µs of work on 2 threads in 350 µs: 200 µs beyond 150.
        assert_eq!(next_dispatch(0, 350 * US, 300 * US, 2), 200 * US);
        // A lower sample replaces it (160 − 150 = 10 µs); a higher one
        // moves it by a quarter of the difference.
        assert_eq!(next_dispatch(200 * US, 160 * US, 300 * US, 2), 10 * US);
        // (250 − 150 = 100 µs: 10 + 90 / 4.)
        assert_eq!(next_dispatch(10 * US, 250 * US, 300 * US, 2), 32_500_000);
        // A run faster than an even share is a dispatch of (almost) nothing,
        // still "measured".
        assert_eq!(next_dispatch(0, 100 * US, 300 * US, 2), 1);
        // A preempted run is not a dispatch of seconds.
        assert_eq!(
            next_dispatch(0, 5_000_000 * US, 300 * US, 2),
            ps(DISPATCH_CAP)
        );
    }

    #[test]
    fn a_batch_goes_to_rayon_once_its_work_outweighs_the_dispatch() {
        // On 2 threads, `work / 2 + dispatch < work` from `2 × dispatch`.
        assert_eq!(learned_threshold(200 * US, 2, 50 * US), 400 * US);
        // On 4, from `4/3 × dispatch`.
        assert_eq!(learned_threshold(150 * US, 4, 50 * US), 200 * US);
        // Never under the configured floor; one thread counts as two.
        assert_eq!(learned_threshold(10 * US, 2, 50 * US), 50 * US);
        assert_eq!(learned_threshold(100 * US, 1, 50 * US), 200 * US);
    }

    fn cpu(learn_dispatch: bool) -> Cpu {
        Cpu::new(
            None,
            Duration::from_micros(50),
            learn_dispatch,
            Duration::from_micros(10),
        )
    }

    #[test]
    fn the_threshold_is_the_floor_until_a_dispatch_is_measured_or_when_set_by_hand() {
        let learning = cpu(true);
        assert_eq!(learning.threshold(), 50 * US, "nothing measured yet");
        let fixed = cpu(false);
        fixed.dispatch_ps.store(200 * US, Relaxed);
        assert_eq!(fixed.threshold(), 50 * US, "set by hand: kept as set");
    }

    #[test]
    fn two_calls_in_a_row_of_sixty_four_that_the_dispatch_keeps_sequential_measure_it_again() {
        let c = cpu(true);
        c.dispatch_ps.store(1_000 * US, Relaxed);
        let learned = learned_threshold(1_000 * US, c.threads() as u64, 50 * US);
        assert!(learned > 50 * US);
        let thresholds: Vec<u64> = (0..128).map(|_| c.threshold()).collect();
        let floors: Vec<usize> = (0..128).filter(|&i| thresholds[i] == 50 * US).collect();
        // The counter's 64k and 64k + 1 (it starts at 1 for the first call:
        // the second half of a burst comes first, then whole bursts).
        assert_eq!(floors, [0, 63, 64, 127]);
        assert!(thresholds.iter().all(|&t| t == 50 * US || t == learned));
        // A dispatch measured under the floor's worth leaves the floor, with
        // nothing to explore.
        c.dispatch_ps.store(1, Relaxed);
        assert!((0..64).all(|_| c.threshold() == 50 * US));
    }

    /// The thresholds of 64 calls in a row (an exploration burst among
    /// them returns the floor).
    fn thresholds(c: &Cpu) -> std::collections::BTreeSet<u64> {
        (0..EXPLORE_EVERY).map(|_| c.threshold()).collect()
    }

    #[test]
    fn a_call_right_after_a_parallel_run_is_judged_on_the_warm_dispatch() {
        let c = cpu(true);
        let threads = c.threads() as u64;
        c.dispatch_ps.store(1_000 * US, Relaxed);
        c.warm_dispatch_ps.store(40 * US, Relaxed);
        let cold = learned_threshold(1_000 * US, threads, 50 * US);
        let warm = learned_threshold(40 * US, threads, 50 * US);
        assert!(warm > 50 * US && warm < cold);
        // No parallel run yet: the workers are asleep.
        assert_eq!(thresholds(&c), [50 * US, cold].into());
        // A run that ends "now" (later than any clock read of the test, so
        // that a preempted test thread cannot make it stale).
        c.last_parallel_end_ns
            .store(c.now_ns() + 3_600_000_000_000, Relaxed);
        assert_eq!(thresholds(&c), [50 * US, warm].into());
        // A warm estimate above the cold one is not used.
        c.warm_dispatch_ps.store(2_000 * US, Relaxed);
        assert_eq!(thresholds(&c), [50 * US, cold].into());
        // A cold one never measured is no bound.
        c.warm_dispatch_ps.store(40 * US, Relaxed);
        c.dispatch_ps.store(0, Relaxed);
        assert_eq!(thresholds(&c), [50 * US, warm].into());
    }

    #[test]
    fn a_call_longer_than_the_gap_after_the_last_parallel_run_is_judged_on_the_cold_dispatch() {
        let mut c = cpu(true);
        // Made a millisecond ago (its epoch moved back rather than waited
        // for), so that an end two gaps ago is on its clock.
        c.epoch = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap();
        let threads = c.threads() as u64;
        c.dispatch_ps.store(1_000 * US, Relaxed);
        c.warm_dispatch_ps.store(40 * US, Relaxed);
        let cold = learned_threshold(1_000 * US, threads, 50 * US);
        // Only further in the past by the time it is read.
        let gap = WARM_GAP.as_nanos() as u64;
        c.last_parallel_end_ns.store(c.now_ns() - 2 * gap, Relaxed);
        assert!(!c.workers_awake());
        assert_eq!(thresholds(&c), [50 * US, cold].into());
    }

    #[test]
    fn a_run_right_after_another_teaches_the_warm_dispatch_and_one_after_a_pause_the_other() {
        let c = cpu(true);
        // 64 items of about 20 µs: parallel from the first call's prefix.
        let items: Vec<u64> = (0..64).collect();
        let work = MapWork {
            f: |_: &u64| {
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(20) {
                    std::hint::spin_loop();
                }
                Ok::<(), std::convert::Infallible>(())
            },
            cancel: None,
        };
        let run = |c: &Cpu| {
            let mut out = Vec::new();
            assert_eq!(c.run_uncounted(7, &items, &work, &mut out), Ran::Parallel);
            assert!(out.iter().all(Result::is_ok));
        };
        // A run "right after" another (its end set in the future, see above).
        c.last_parallel_end_ns
            .store(c.now_ns() + 3_600_000_000_000, Relaxed);
        run(&c);
        assert_ne!(c.warm_dispatch_ps.load(Relaxed), 0, "warm run measured");
        assert_eq!(c.dispatch_ps.load(Relaxed), 0, "not as a cold one");
        // After a pause (no parallel run on record).
        c.last_parallel_end_ns.store(0, Relaxed);
        let warm = c.warm_dispatch_ps.load(Relaxed);
        run(&c);
        assert_ne!(c.dispatch_ps.load(Relaxed), 0, "cold run measured");
        assert_eq!(c.warm_dispatch_ps.load(Relaxed), warm, "not as a warm one");
        // Each run records its end.
        assert_ne!(c.last_parallel_end_ns.load(Relaxed), 0);
    }

    #[test]
    fn on_a_pool_thread_the_floor_decides() {
        let c = cpu(true);
        c.dispatch_ps.store(1_000 * US, Relaxed);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| c.threshold()), 50 * US);
    }
}
