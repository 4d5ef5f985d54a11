//! A panicking item becomes that item's error; the batch goes on.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use torque_parallel::{ItemError, Processor};

mod common;
use common::spin;

fn processor() -> Processor {
    Processor::builder().blocking_threads(2).build().unwrap()
}

fn panic_message<E>(r: &Result<impl Sized, ItemError<E>>) -> Option<&str> {
    match r {
        Err(ItemError::Panicked(p)) => Some(p.message()),
        _ => None,
    }
}

#[test]
fn cpu_panic_is_that_items_error_sequential_and_parallel() {
    let p = processor();
    let cheap: Vec<u32> = (0..1_000).collect();
    let slow: Vec<u32> = (0..16).collect();
    for (items, pause) in [(&cheap, Duration::ZERO), (&slow, Duration::from_millis(2))] {
        let ran = AtomicUsize::new(0);
        let out = p.map(items, |&x| {
            std::thread::sleep(pause);
            ran.fetch_add(1, Ordering::Relaxed);
            if x % 5 == 3 {
                panic!("item {x} failed");
            }
            x
        });
        assert_eq!(ran.into_inner(), items.len(), "every item ran");
        for (i, r) in out.iter().enumerate() {
            if i % 5 == 3 {
                assert_eq!(panic_message(r), Some(format!("item {i} failed").as_str()));
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u32);
            }
        }
    }
}

#[test]
fn panic_with_a_non_string_payload_has_a_message() {
    let p = processor();
    let out = p.map(&[1], |_| -> u8 { std::panic::panic_any(42u32) });
    assert_eq!(
        panic_message(&out[0]),
        Some("panic with a non-string payload")
    );
}

#[test]
fn panic_in_a_nested_map_stays_in_the_inner_item() {
    let p = processor();
    let outer: Vec<u32> = (0..8).collect();
    let out = p.map(&outer, |&o| {
        spin(Duration::from_millis(1));
        let inner: Vec<u32> = (0..100).collect();
        let r = p.map(&inner, |&i| if i == 50 { panic!("inner {o}") } else { i });
        assert_eq!(panic_message(&r[50]), Some(format!("inner {o}").as_str()));
        r.iter().filter(|x| x.is_ok()).count()
    });
    assert!(out.iter().all(|r| *r.as_ref().unwrap() == 99));
}

#[test]
fn panic_after_a_nested_map_is_the_outer_items_error() {
    let p = processor();
    let outer: Vec<u32> = (0..8).collect();
    let out = p.map(&outer, |&o| {
        let inner: Vec<u32> = (0..100).collect();
        let sum = p.map_reduce(&inner, |&i| i, || 0, |a, b| a + b).value;
        if o == 4 {
            panic!("outer after inner");
        }
        sum
    });
    for (i, r) in out.iter().enumerate() {
        if i == 4 {
            assert_eq!(panic_message(r), Some("outer after inner"));
        } else {
            assert_eq!(*r.as_ref().unwrap(), 4950);
        }
    }
}

#[test]
fn map_reduce_reports_panics_and_reduces_the_rest() {
    let p = processor();
    let items: Vec<u64> = (0..10_000).collect();
    let s = p.map_reduce(
        &items,
        |&x| if x == 9_999 { panic!("last") } else { x },
        || 0,
        |a, b| a + b,
    );
    assert_eq!(s.value, (0..9_999u64).sum::<u64>());
    assert_eq!(s.panics.len(), 1);
    assert_eq!(s.panics[0].message(), "last");
    assert!(!s.is_complete());
}

#[test]
fn blocking_panic_is_that_items_error_and_the_worker_survives() {
    let p = Processor::builder().blocking_threads(1).build().unwrap();
    let out = p.blocking().map((0..20u32).collect(), |x| {
        if x % 2 == 0 { panic!("even {x}") } else { x }
    });
    for (i, r) in out.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(panic_message(r), Some(format!("even {i}").as_str()));
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u32);
        }
    }
    assert_eq!(
        p.stats().blocking_threads,
        1,
        "the one worker is still alive"
    );
    let again = p.blocking().map(vec![1, 2], |x| x + 1);
    assert_eq!(*again[1].as_ref().unwrap(), 3);
}

/// A tiny reduction of a closure whose cost is known runs as one fold under
/// one `catch_unwind`; after a panic it resumes after the panicking item
/// with the value so far: every item runs once, the others are reduced.
#[test]
fn a_panic_in_a_tiny_warm_reduction_resumes_after_it() {
    let p = processor();
    let items: Vec<u64> = (0..10).collect();
    let runs: Vec<AtomicUsize> = items.iter().map(|_| AtomicUsize::new(0)).collect();
    let armed = std::sync::atomic::AtomicBool::new(false);
    let work = |&x: &u64| {
        runs[x as usize].fetch_add(1, Ordering::Relaxed);
        if armed.load(Ordering::Relaxed) && (x == 2 || x == 7) {
            panic!("item {x}");
        }
        x
    };
    for _ in 0..3 {
        assert_eq!(p.map_reduce(&items, work, || 0, |a, b| a + b).value, 45);
    }
    armed.store(true, Ordering::Relaxed);
    for _ in 0..4 {
        runs.iter().for_each(|r| r.store(0, Ordering::Relaxed));
        let before = p.stats();
        let sum = p.map_reduce(&items, work, || 0, |a, b| a + b);
        let after = p.stats();
        // The warm tiny batch ran as one sequential run, not on rayon.
        assert_eq!(after.sequential_runs, before.sequential_runs + 1);
        assert_eq!(after.parallel_runs, before.parallel_runs);
        assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1));
        assert_eq!(sum.value, 45 - 2 - 7);
        let mut messages: Vec<&str> = sum.panics.iter().map(|p| p.message()).collect();
        messages.sort_unstable();
        assert_eq!(messages, ["item 2", "item 7"]);
    }
}

/// Each rayon leaf of a parallel reduction folds its chunk under one
/// `catch_unwind` and, after a panicking item, resumes after it with the
/// value so far: with panics spread through every chunk, each item runs
/// exactly once, every panic is reported, and the rest is reduced.
#[test]
fn a_parallel_reduction_with_panics_in_every_chunk_runs_each_item_once() {
    let p = Processor::builder()
        .parallel_threshold(Duration::from_nanos(1))
        .grain_target(Duration::from_nanos(1))
        .build()
        .unwrap();
    let items: Vec<u64> = (0..20_000).collect();
    let runs: Vec<AtomicUsize> = items.iter().map(|_| AtomicUsize::new(0)).collect();
    let panics_at = |x: u64| x % 997 == 5;
    let work = |&x: &u64| {
        runs[x as usize].fetch_add(1, Ordering::Relaxed);
        if panics_at(x) {
            panic!("item {x}");
        }
        x
    };
    let expected: u64 = items.iter().filter(|&&x| !panics_at(x)).sum();
    let panicking = items.iter().filter(|&&x| panics_at(x)).count();
    for round in 0..4 {
        runs.iter().for_each(|r| r.store(0, Ordering::Relaxed));
        let before = p.stats();
        let sum = p.map_reduce(&items, work, || 0, |a, b| a + b);
        assert!(
            p.stats().parallel_runs > before.parallel_runs,
            "round {round} ran on rayon"
        );
        assert!(
            runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
            "round {round}: every item ran exactly once"
        );
        assert_eq!(sum.value, expected, "round {round}");
        assert_eq!(sum.panics.len(), panicking, "round {round}");
        assert_eq!(sum.cancelled, 0);
    }
}

/// `op` is not isolated (the running value would be lost): its panic
/// propagates, on the tiny warm path as on the general one.
#[test]
fn a_panic_in_the_reduction_op_propagates() {
    let p = processor();
    let items: Vec<u64> = (0..10).collect();
    let explode = std::sync::atomic::AtomicBool::new(false);
    let op = |a: u64, b: u64| {
        assert!(!explode.load(Ordering::Relaxed), "op");
        a + b
    };
    for _ in 0..3 {
        assert_eq!(p.map_reduce(&items, |&x| x, || 0, op).value, 45);
    }
    explode.store(true, Ordering::Relaxed);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.map_reduce(&items, |&x| x, || 0, op)
    }));
    assert!(run.is_err());
}

/// A panic's own cost (the panic hook printing a message and, with
/// `RUST_BACKTRACE` set, capturing and printing a backtrace: milliseconds
/// in a debug build) is not the items' cost: a batch whose item panics must
/// not take it as a sign that its items are expensive and send the rest to
/// rayon. Modelled here by an item that
/// spends 5 ms before it panics, in batches of items of about 1 µs (timed
/// as they run, so the decision to escape to rayon is made mid-batch). The
/// `a_panic_in_a_tiny_warm_reduction` test above failed this way with
/// `RUST_BACKTRACE=1`, 15 times in 30.
#[test]
fn a_slow_panic_does_not_send_a_tiny_batch_to_rayon() {
    let p = processor();
    let items: Vec<u64> = (0..10).collect();
    let armed = std::sync::atomic::AtomicBool::new(false);
    let work = |&x: &u64| {
        spin(std::time::Duration::from_micros(1));
        if armed.load(Ordering::Relaxed) && x == 3 {
            spin(std::time::Duration::from_millis(5));
            panic!("slow {x}");
        }
        x
    };
    for _ in 0..5 {
        assert_eq!(p.map_reduce(&items, work, || 0, |a, b| a + b).value, 45);
    }
    // Each armed batch escapes to rayon on main (the 5 ms is timed as the
    // items' cost); a batch may still escape here when the machine preempts
    // its timed stretch (other tests run beside this one on two cores), so
    // the check is that most stay sequential, which main never does.
    armed.store(true, Ordering::Relaxed);
    let mut sequential = 0;
    for _ in 0..10 {
        let before = p.stats();
        assert_eq!(p.map_reduce(&items, work, || 0, |a, b| a + b).value, 42);
        let after = p.stats();
        if after.parallel_runs == before.parallel_runs {
            sequential += 1;
        }
    }
    assert!(
        sequential >= 6,
        "tiny batches with a slow panic stayed sequential {sequential} times in 10"
    );
}

/// A timed stretch that saw a panic is not timed, but the timing must start
/// again on a short stretch: restarted on one as long as all the items done
/// so far, it meets a panic again whenever they come about as often as the
/// stretches double, and a batch of slow items never reaches rayon. Here the
/// panics are at 0 and the powers of two (9 of 256 items); every other item
/// takes ~200 µs, 4 000 times the 50 µs threshold for the rest of the batch.
#[test]
fn a_slow_batch_with_panics_in_each_doubling_stretch_still_goes_parallel() {
    let p = processor();
    let items: Vec<u32> = (0..256).collect();
    let before = p.stats();
    let out = p.map(&items, |&x| {
        if x == 0 || x.is_power_of_two() {
            panic!("item {x}");
        }
        spin(Duration::from_micros(200));
        x
    });
    let after = p.stats();
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 9);
    assert_eq!(
        after.parallel_runs,
        before.parallel_runs + 1,
        "the batch escaped to rayon once a stretch without a panic was timed"
    );
}

/// A panic payload whose own `Drop` panics (`panic_any` of such a type).
struct PayloadBomb;

impl Drop for PayloadBomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the payload's drop");
        }
    }
}

/// Regression: a caught item panic's payload was dropped outside any
/// `catch_unwind`, so a payload whose `Drop` panics escaped the batch (the
/// other items' results lost with it) on every Cpu path: `map`, `collect`
/// and `map_reduce`, sequential and warm.
#[test]
fn regression_a_panic_payload_whose_drop_panics_stays_the_items_error() {
    let p = processor();
    let f = |&x: &u32| {
        if x == 1 {
            std::panic::panic_any(PayloadBomb);
        }
        x
    };
    for _ in 0..3 {
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| p.map(&[0u32, 1, 2], f)))
            .expect("map let the payload's drop panic escape");
        assert_eq!(*out[0].as_ref().unwrap(), 0);
        assert!(out[1].as_ref().is_err_and(ItemError::is_panic));
        assert_eq!(*out[2].as_ref().unwrap(), 2);

        let err = std::panic::catch_unwind(AssertUnwindSafe(|| p.collect(&[0u32, 1, 2], f)))
            .expect("collect let the payload's drop panic escape")
            .unwrap_err();
        assert_eq!(err.indices().collect::<Vec<_>>(), [1]);

        let sum = std::panic::catch_unwind(AssertUnwindSafe(|| {
            p.map_reduce(&[0u32, 1, 2], f, || 0, |a, b| a + b)
        }))
        .expect("map_reduce let the payload's drop panic escape");
        assert_eq!((sum.value, sum.panics.len()), (2, 1));
    }
    // On rayon: items slow enough for a parallel run.
    let items: Vec<u32> = (0..16).collect();
    let before = p.stats().parallel_runs;
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
        p.map(&items, |&x| {
            spin(Duration::from_millis(2));
            if x == 9 {
                std::panic::panic_any(PayloadBomb);
            }
            x
        })
    }))
    .expect("a parallel map let the payload's drop panic escape");
    assert!(p.stats().parallel_runs > before);
    assert!(out[9].as_ref().is_err_and(ItemError::is_panic));
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 15);
}

/// The weigher is the caller's code run on the caller's behalf, item by
/// item, like `f`: its panic on item 2 unwound out of `map_weighted` (Cpu,
/// Blocking and its async form), losing the results of every other item,
/// including those already running on the blocking threads.
#[test]
fn regression_a_panicking_weigher_is_that_items_error() {
    let p = Processor::builder()
        .blocking_threads(2)
        .memory_budget(3)
        .build()
        .unwrap();
    let weigh = |x: &u64| if *x == 2 { panic!("weigh {x}") } else { 1 };
    let check = |out: &[Result<u64, ItemError>], strategy: &str| {
        assert_eq!(out.len(), 6, "{strategy}");
        for (i, r) in out.iter().enumerate() {
            if i == 2 {
                assert_eq!(panic_message(r), Some("weigh 2"), "{strategy}");
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u64 * 10, "{strategy}");
            }
        }
    };
    let items: Vec<u64> = (0..6).collect();
    check(&p.map_weighted(&items, weigh, |x| x * 10), "cpu");
    check(
        &p.blocking().map_weighted(items.clone(), weigh, |x| x * 10),
        "blocking",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = rt.block_on(
        p.blocking()
            .map_weighted_async(items, weigh, |x| Ok::<_, std::convert::Infallible>(x * 10)),
    );
    check(&out, "blocking async");
    assert_eq!(p.stats().blocking_in_flight_weight, 0);
}
