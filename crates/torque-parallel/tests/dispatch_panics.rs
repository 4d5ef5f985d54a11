//! A parallel `map` or `collect` whose items panic teaches the processor
//! neither a dispatch cost nor a per-item cost: a panic's unwinding costs
//! microseconds, not what a dispatch or a clean item costs, and a learned
//! figure inflated by it keeps later clean batches of the closure on the
//! calling thread. (`map_reduce` and `for_each` had this fixed before:
//! tests/review_reduce_fold.rs.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use torque_parallel::{Processor, Stats};

mod common;
use common::{BAD, quiet_bad_items, spin};

/// Items past the first fifth (beyond any timed prefix), one in 50,
/// panic once armed.
fn bad(x: u64, n: u64) -> bool {
    x >= n / 5 && x.is_multiple_of(50)
}

/// Held by each test: run alone, a test's wall times are its own.
static ALONE: Mutex<()> = Mutex::new(());

/// Batches of two items that teach a processor a cheap closure's cost
/// before the armed run, which is then its first parallel run. A batch of
/// two goes to rayon only if an item is predicted to take half the parallel
/// threshold; a batch of a closure not yet timed escapes after its first
/// item, whose time (first use, cold caches: microseconds) would send the
/// armed `map`'s items to the leaves' timing rather than to the untimed
/// path under test. Clean parallel runs would teach the dispatch instead,
/// and in a debug build both estimates then sit at their 1 ms cap, where a
/// panicking run's sample is cut to the same figure and the two compare
/// equal with or without the fix. Two-item calls are timed once per
/// `SAMPLE_AFTER` of predicted work: this many bring the estimate near the
/// items' cost.
const TEACHING_CALLS: usize = 10_000;

fn cheap(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

/// Items of the two regression tests below.
const N: u64 = 1_000_000;

/// A cheap closure taught to a new processor by two-item calls of `run`
/// (see [`TEACHING_CALLS`]), then run once over [`N`] items with one in 50
/// past the first fifth panicking: the stats before and after that run,
/// which must be the processor's first parallel one.
fn around_an_armed_run(
    run: impl Fn(&Processor, &[u64], &(dyn Fn(&u64) -> u64 + Sync)),
) -> (Stats, Stats) {
    let _alone = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    quiet_bad_items();
    let p = Processor::builder().build().unwrap();
    let armed = AtomicBool::new(false);
    let f = |&x: &u64| {
        if armed.load(Ordering::Relaxed) && bad(x, N) {
            panic!("{BAD}");
        }
        cheap(x)
    };
    let items: Vec<u64> = (0..N).collect();
    for _ in 0..TEACHING_CALLS {
        run(&p, &items[..2], &f);
    }
    // No parallel run yet: both estimates are zero, and any dispatch the
    // armed run taught would show.
    let before = p.stats();
    armed.store(true, Ordering::Relaxed);
    run(&p, &items, &f);
    let after = p.stats();
    assert_eq!(
        after.parallel_runs,
        before.parallel_runs + 1,
        "ran on rayon"
    );
    (before, after)
}

/// How many of `items` panic once armed.
fn bad_among(items: &[u64]) -> usize {
    items.iter().filter(|&&x| bad(x, N)).count()
}

#[test]
fn regression_a_map_of_cheap_items_that_panic_on_rayon_does_not_teach_the_dispatch() {
    let (before, after) = around_an_armed_run(|p, items, f| {
        let out = p.map(items, f);
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), bad_among(items));
    });
    assert_eq!(
        (after.cpu_dispatch, after.cpu_warm_dispatch),
        (before.cpu_dispatch, before.cpu_warm_dispatch),
        "a run with panics taught the dispatch"
    );
}

#[test]
fn regression_a_failed_collect_on_rayon_does_not_teach_the_dispatch() {
    let (before, after) = around_an_armed_run(|p, items, f| {
        let out = p.collect(items, f);
        assert_eq!(out.is_err(), bad_among(items) > 0);
    });
    assert_eq!(
        (after.cpu_dispatch, after.cpu_warm_dispatch),
        (before.cpu_dispatch, before.cpu_warm_dispatch),
        "a failed collect taught the dispatch"
    );
}

/// Items timed inside the leaves (about 2 µs each): a stretch with a panic
/// is an outlier, set aside, so the learned per-item cost stays the clean
/// items' (this held before the fixes above; a guard). The panic's cost is modelled by an item that spins 300 µs
/// before it panics.
#[test]
fn a_map_whose_timed_leaves_hold_panics_does_not_learn_their_cost() {
    let _alone = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    quiet_bad_items();
    let p = Processor::builder()
        .parallel_threshold(Duration::from_micros(50))
        .build()
        .unwrap();
    let n = 2_000u64;
    let armed = AtomicBool::new(false);
    let f = |&x: &u64| {
        if armed.load(Ordering::Relaxed) && bad(x, n) {
            spin(Duration::from_micros(300));
            panic!("{BAD}");
        }
        spin(Duration::from_micros(2));
        cheap(x)
    };
    let items: Vec<u64> = (0..n).collect();
    for _ in 0..5 {
        assert!(p.map(&items, f).iter().all(Result::is_ok));
    }
    let before = p.learned_cost(&f).unwrap();
    armed.store(true, Ordering::Relaxed);
    let stats = p.stats();
    let out = p.map(&items, f);
    assert_eq!(
        out.iter().filter(|r| r.is_err()).count(),
        items.iter().filter(|&&x| bad(x, n)).count()
    );
    assert_eq!(
        p.stats().parallel_runs,
        stats.parallel_runs + 1,
        "ran on rayon"
    );
    let after = p.learned_cost(&f).unwrap();
    assert!(
        after <= before * 2,
        "learned {after:?} an item after a batch with panics, {before:?} before"
    );
}

/// Items timed inside the leaves (about 2 µs each, so the run's per-item
/// cost comes from the leaves' clean stretches): the run's wall time still
/// holds the panics' cost (modelled by items that spin 1 ms before they
/// panic), and a processor whose first parallel run it is learns no
/// dispatch from it. (The leaves' timing took the stretches with a panic
/// for outliers, but the run taught the dispatch.)
#[test]
fn regression_a_map_whose_timed_leaves_hold_panics_does_not_teach_the_dispatch() {
    let _alone = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    quiet_bad_items();
    let p = Processor::builder().build().unwrap();
    let n = 2_000u64;
    let f = |&x: &u64| {
        if bad(x, n) {
            spin(Duration::from_millis(1));
            panic!("{BAD}");
        }
        spin(Duration::from_micros(2));
        cheap(x)
    };
    let items: Vec<u64> = (0..n).collect();
    let out = p.map(&items, f);
    assert_eq!(
        out.iter().filter(|r| r.is_err()).count(),
        items.iter().filter(|&&x| bad(x, n)).count()
    );
    let stats = p.stats();
    assert_eq!(stats.parallel_runs, 1, "ran on rayon");
    assert_eq!(
        (stats.cpu_dispatch, stats.cpu_warm_dispatch),
        (Duration::ZERO, Duration::ZERO),
        "a run with panics taught the dispatch"
    );
}
