//! A batch whose items all panic (a reduction, `collect`, `map`): each
//! panic is that item's error, and the
//! fold goes on after it without growing the stack. (A reduction that
//! resumed after a panicking item by calling itself on the rest overflowed
//! its thread's stack after some thousands of panics in one stretch.) In a
//! binary of its own: the test silences the process-wide panic hook for
//! the items' panics, so that tens of thousands of them do not print a
//! message each.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use torque_parallel::Processor;

#[test]
fn a_reduction_whose_every_item_panics_reports_each_and_does_not_overflow() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let item = payload
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("item "))
            || payload.downcast_ref::<&str>() == Some(&"each");
        if !item {
            default(info);
        }
    }));
    // Sequential (a threshold these batches never reach), parallel (one
    // they never miss; chunks of thousands of items),
    // and the default.
    let processors = [
        Processor::builder()
            .parallel_threshold(Duration::from_secs(1))
            .build()
            .unwrap(),
        Processor::builder()
            .parallel_threshold(Duration::from_nanos(1))
            .grain_target(Duration::from_millis(100))
            .build()
            .unwrap(),
        Processor::builder().build().unwrap(),
    ];
    let items: Vec<u64> = (0..60_000).collect();
    for (i, p) in processors.iter().enumerate() {
        // Warm first: the closure's cost is known, so the batch runs in
        // long stretches (a cold batch is timed in short ones, which
        // restart short after each panic).
        let armed = AtomicBool::new(false);
        let ran = AtomicUsize::new(0);
        let work = |&x: &u64| -> u64 {
            ran.fetch_add(1, Ordering::Relaxed);
            if armed.load(Ordering::Relaxed) {
                panic!("item {x}");
            }
            x
        };
        for _ in 0..3 {
            assert!(p.map_reduce(&items, work, || 0, |a, b| a + b).is_complete());
        }
        armed.store(true, Ordering::Relaxed);
        for round in 0..2 {
            ran.store(0, Ordering::Relaxed);
            let sum = p.map_reduce(&items, work, || 0, |a, b| a + b);
            assert_eq!(
                ran.load(Ordering::Relaxed),
                items.len(),
                "processor {i}, round {round}"
            );
            assert_eq!(sum.value, 0);
            assert_eq!(
                sum.panics.len(),
                items.len(),
                "processor {i}, round {round}"
            );
            assert_eq!(sum.cancelled, 0);
            // The other calls, on the same warm processor.
            let collected = p.collect(&items, work).unwrap_err();
            assert_eq!(
                collected.failures.len(),
                items.len(),
                "processor {i}, round {round}"
            );
            let mapped = p.map(&items, work);
            assert!(
                mapped
                    .iter()
                    .all(|r| r.as_ref().is_err_and(|e| e.is_panic()))
            );
        }
    }
}
