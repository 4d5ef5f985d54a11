//! A `Blocking` batch fed from a rayon thread (a `Cpu` item): liveness on
//! tiny pools, accounting, fairness and where `Cpu` batches run.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use torque_parallel::{CancelToken, ItemError, Processor};

mod common;

/// The results of [`plain_job_that_needs_rayon`]'s batch.
type Plain = Vec<Result<bool, ItemError<std::convert::Infallible>>>;

/// A plain thread's `Blocking` batch of one job, running on a blocking
/// thread when this returns, that waits for `go` and then runs a `Cpu`
/// batch, which needs a rayon thread. Returns `go` and the plain thread,
/// whose result says whether that batch went to rayon.
fn plain_job_that_needs_rayon(p: &Processor) -> (mpsc::Sender<()>, std::thread::JoinHandle<Plain>) {
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let cpu = p.clone();
    let other = p.clone();
    let plain = std::thread::spawn(move || {
        other.blocking().map(vec![()], move |()| {
            started_tx.send(()).unwrap();
            go_rx.lock().unwrap().recv().unwrap();
            cpu_batch_went_to_rayon(&cpu, 8)
        })
    });
    started_rx.recv().unwrap();
    (go_tx, plain)
}

/// [`cpu_batch_went_to_rayon`] inside a job of a `Blocking` batch fed from
/// this (plain) thread.
fn plain_jobs_cpu_batch_went_to_rayon(p: &Processor) -> bool {
    let cpu = p.clone();
    let out = p
        .blocking()
        .map(vec![()], move |()| cpu_batch_went_to_rayon(&cpu, 16));
    *out[0].as_ref().unwrap()
}

/// A `Cpu` batch of `n` spinning items; returns whether any ran on rayon.
fn cpu_batch_went_to_rayon(p: &Processor, n: u64) -> bool {
    let items: Vec<u64> = (0..n).collect();
    let seen = AtomicBool::new(false);
    let out = p.map(&items, |&x| {
        common::spin(Duration::from_micros(20));
        if common::on_rayon() {
            seen.store(true, Ordering::Relaxed);
        }
        x
    });
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == i as u64)
    );
    seen.load(Ordering::Relaxed)
}

/// The only blocking thread runs a job of a batch from a plain thread that
/// runs a `Cpu` batch on rayon (one rayon thread); a `Cpu` item on that
/// rayon thread awaits a `map_async` batch with a `block_on`, its job queued
/// behind that job. The sync `map` takes its job back and runs it; the
/// future waited in the queue with the rayon thread parked in `block_on`,
/// and the plain job's `Cpu` batch waited for that rayon thread: for ever.
#[test]
fn regression_a_map_async_blocked_on_in_a_cpu_item_does_not_wait_behind_a_job_that_needs_rayon() {
    let (out, plain) = common::live(
        "the rayon thread parked in block_on for a job queued behind a job waiting for rayon",
        || {
            let p = common::eager(1, 1);
            let (go_tx, plain) = plain_job_that_needs_rayon(&p);
            let go = Mutex::new(Some(go_tx));
            let items: Vec<u64> = (0..4).collect();
            let out = p.map(&items, |&x| {
                let Some(go) = common::take_on_rayon(&go) else {
                    return x;
                };
                let fut = p.blocking().map_async(vec![x, x + 1], |y| y * 10);
                go.send(()).unwrap();
                common::block_on(fut)
                    .into_iter()
                    .map(Result::unwrap)
                    .sum::<u64>()
                    + 1000
            });
            let plain = plain.join().unwrap();
            (out, plain)
        },
    );
    assert!(
        *plain[0].as_ref().unwrap(),
        "the plain job's Cpu batch ran on rayon"
    );
    let awaited = out
        .iter()
        .enumerate()
        .filter(|&(i, r)| {
            let i = i as u64;
            let v = *r.as_ref().unwrap();
            assert!(v == i || v == 1000 + i * 10 + (i + 1) * 10, "item {i}: {v}");
            v != i
        })
        .count();
    assert_eq!(awaited, 1);
}

/// The same with a future first polled on a plain thread, one job queued
/// (the queue holds one) and the next in the wait line, then moved into a
/// `Cpu` item and blocked on there: it takes both back and runs them, and
/// the rest of its items, on the rayon thread.
#[test]
fn a_map_async_future_moved_into_a_cpu_item_takes_its_jobs_back() {
    let (out, plain) = common::live(
        "a moved future parked a rayon thread behind a job waiting for rayon",
        || {
            let p = common::eager_builder(1, 1)
                .queue_capacity(1)
                .build()
                .unwrap();
            let (go_tx, plain) = plain_job_that_needs_rayon(&p);
            let mut fut = Box::pin(p.blocking().map_async(vec![1u64, 2, 3], |y| y * 10));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert_eq!(
                p.stats().blocking_queued,
                1,
                "one job queued, one in the line"
            );
            let fut = Mutex::new(Some(fut));
            let go = Mutex::new(Some(go_tx));
            let items: Vec<u64> = (0..4).collect();
            let out = p.map(&items, |&x| {
                let Some(go) = common::take_on_rayon(&go) else {
                    return vec![x];
                };
                let fut = fut.lock().unwrap().take().unwrap();
                go.send(()).unwrap();
                common::block_on(fut)
                    .into_iter()
                    .map(Result::unwrap)
                    .collect()
            });
            let plain = plain.join().unwrap();
            let s = p.stats();
            assert_eq!((s.blocking_queued, s.blocking_in_flight_weight), (0, 0));
            (out, plain)
        },
    );
    assert!(
        *plain[0].as_ref().unwrap(),
        "the plain job's Cpu batch ran on rayon"
    );
    let awaited: Vec<_> = out
        .into_iter()
        .map(Result::unwrap)
        .filter(|v| v.len() == 3)
        .collect();
    assert_eq!(awaited, [vec![10, 20, 30]]);
}

/// Two jobs of one batch that meet at a barrier (a producer and its
/// consumer, say), fed from a rayon thread while the budget is held by
/// another batch's job. Fed from a plain thread, both get in once the
/// budget frees and run at once on two blocking threads. The rayon
/// feeder ran the first one itself at once, before it had submitted the
/// second, and the first waited at the barrier for a job that was never
/// submitted: for ever, however soon the budget freed. (Here the other
/// job ends once one of the two has started: the budget frees only after
/// the feeder has chosen, so that the old code hangs every time.)
#[test]
fn regression_a_rayon_fed_job_that_waits_for_a_later_sibling_job_does_not_hang() {
    let out = common::live(
        "the rayon feeder ran a job that waits for a job it had not submitted",
        || {
            let p = common::eager_builder(1, 3)
                .memory_budget(3)
                .build()
                .unwrap();
            let (held_tx, held) = mpsc::channel::<()>();
            let (release, gate) = mpsc::channel::<()>();
            let gate = Mutex::new(gate);
            let holder = {
                let p = p.clone();
                std::thread::spawn(move || {
                    p.blocking().map_weighted(
                        vec![()],
                        |_| 2,
                        move |()| {
                            held_tx.send(()).unwrap();
                            gate.lock().unwrap().recv().unwrap();
                        },
                    )
                })
            };
            held.recv().unwrap();
            let release = Mutex::new(Some(release));
            let items: Vec<u64> = (0..3).collect();
            let out = p.map(&items, |&o| {
                if o != 1 {
                    return 0;
                }
                let barrier = Arc::new(std::sync::Barrier::new(2));
                let started = Arc::new(Mutex::new(release.lock().unwrap().take()));
                p.blocking()
                    .map_weighted(
                        vec![10u64, 20],
                        |_| 2,
                        move |x| {
                            if let Some(release) = started.lock().unwrap().take() {
                                release.send(()).unwrap();
                            }
                            barrier.wait();
                            x
                        },
                    )
                    .into_iter()
                    .map(Result::unwrap)
                    .sum::<u64>()
            });
            holder.join().unwrap();
            let s = p.stats();
            assert_eq!((s.blocking_queued, s.blocking_in_flight_weight), (0, 0));
            out
        },
    );
    let out: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(out, [0, 30, 0]);
}

/// A `map_async` future that outlives its processor (the pool shut down)
/// and is then blocked on in a `Cpu` item of another processor: every item
/// comes back `Cancelled`, none runs, and nothing hangs.
#[test]
fn a_map_async_future_of_a_dropped_processor_blocked_on_in_a_cpu_item_cancels_its_items() {
    let out = common::live("a future of a shut-down pool on a rayon thread", || {
        let p = Processor::builder().blocking_threads(1).build().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ran);
        let fut = p.blocking().map_async(vec![1u64, 2, 3], move |x| {
            counter.fetch_add(1, Ordering::Relaxed);
            x
        });
        drop(p);
        let q = common::eager(1, 1);
        let fut = Mutex::new(Some(fut));
        let items: Vec<u64> = (0..4).collect();
        let out = q.map(&items, |_| {
            let fut = common::take_on_rayon(&fut)?;
            Some(common::block_on(fut))
        });
        (out, ran.load(Ordering::Relaxed))
    });
    let (out, ran) = out;
    assert_eq!(ran, 0);
    let awaited: Vec<_> = out.into_iter().filter_map(Result::unwrap).collect();
    assert_eq!(awaited.len(), 1);
    assert!(
        awaited[0]
            .iter()
            .all(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
    );
}

/// Performance sanity: a `Cpu` batch from a plain thread, and one inside a
/// job of a `Blocking` batch from a plain thread, still go to rayon; only
/// the jobs of a batch fed from a rayon thread keep theirs on their thread.
#[test]
fn cpu_batches_outside_a_rayon_feeder_still_go_to_rayon() {
    let p = common::eager(2, 1);
    let before = p.stats().parallel_runs;
    assert!(cpu_batch_went_to_rayon(&p, 16), "a plain thread's batch");
    assert!(p.stats().parallel_runs > before);
    assert!(
        plain_jobs_cpu_batch_went_to_rayon(&p),
        "a plain-thread blocking job's batch"
    );
}

/// A job of a rayon thread's batch that panics, one on the only blocking
/// thread and one on the rayon thread itself (the two meet at a barrier,
/// so each runs on its own thread), does not leave either thread keeping
/// `Cpu` batches to itself: a later nested `Cpu` batch on the rayon thread,
/// and a later plain-thread job on the blocking thread, still go to rayon.
#[test]
fn the_keep_flag_does_not_outlive_a_panicking_job() {
    common::quiet_bad_items();
    let p = common::eager(1, 1);
    let threads = common::live("a panicking rayon-fed batch", {
        let p = p.clone();
        move || {
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let threads = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&threads);
            let items: Vec<u64> = (0..4).collect();
            let done = AtomicBool::new(false);
            let nested_on_rayon = p.map(&items, |_| {
                if !common::on_rayon() || done.swap(true, Ordering::Relaxed) {
                    return None;
                }
                let barrier = Arc::clone(&barrier);
                let seen = Arc::clone(&seen);
                let out = p.blocking().map(vec![(); 2], move |()| {
                    seen.lock()
                        .unwrap()
                        .push(std::thread::current().name().map(str::to_owned));
                    barrier.wait();
                    std::panic::panic_any(common::BAD)
                });
                assert!(out.iter().all(|r| matches!(r, Err(ItemError::Panicked(_)))));
                // The rayon thread ran one of those jobs itself.
                Some(cpu_batch_went_to_rayon(&p, 8))
            });
            let nested_on_rayon: Vec<bool> = nested_on_rayon
                .into_iter()
                .filter_map(Result::unwrap)
                .collect();
            assert_eq!(nested_on_rayon, [true], "the rayon thread's nested batch");
            threads.lock().unwrap().clone()
        }
    });
    let on_worker = threads
        .iter()
        .filter(|t| {
            t.as_deref()
                .is_some_and(|n| n.starts_with("torque-blocking-"))
        })
        .count();
    assert_eq!(on_worker, 1, "{threads:?}");
    assert!(
        plain_jobs_cpu_batch_went_to_rayon(&p),
        "the worker kept Cpu batches to itself after a panicking kept job"
    );
    let s = p.stats();
    assert_eq!((s.blocking_queued, s.blocking_in_flight_weight), (0, 0));
}

/// Weighted batches from rayon threads, with panicking items, a panicking
/// weigher and cancelled batches, on a queue of one and a budget of four:
/// every item gets one result in input order, nothing stays queued or in
/// flight, and the counted weight never passes the budget.
#[test]
fn weighted_rayon_fed_batches_keep_the_books() {
    common::quiet_bad_items();
    let p = common::eager_builder(2, 2)
        .queue_capacity(1)
        .memory_budget(4)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let out = common::live("weighted rayon-fed batches", {
        let p = p.clone();
        let ran = Arc::clone(&ran);
        move || {
            let outer: Vec<u64> = (0..32).collect();
            p.map(&outer, |&o| {
                let token = CancelToken::new();
                let handle = p.with_cancel(token.clone());
                let items: Vec<u64> = (0..12).map(|i| o * 100 + i).collect();
                let ran = Arc::clone(&ran);
                let out = handle.blocking().map_weighted(
                    items,
                    |&x| {
                        assert!(x % 100 != 7, "{}", common::BAD);
                        x % 4 + 1
                    },
                    move |x| {
                        ran.fetch_add(1, Ordering::Relaxed);
                        if x % 100 == 3 {
                            std::panic::panic_any(common::BAD);
                        }
                        if o % 4 == 1 && x % 100 == 5 {
                            token.cancel();
                        }
                        x
                    },
                );
                (o, out)
            })
        }
    });
    for r in out {
        let (o, results) = r.unwrap();
        assert_eq!(results.len(), 12);
        for (i, r) in results.iter().enumerate() {
            let x = o * 100 + i as u64;
            match i {
                // Cancelled by item 5: the others not started by then
                // (queued ones too, before or after it) do not run.
                _ if o % 4 == 1 && i != 5 && r.as_ref().is_err_and(ItemError::is_cancelled) => {}
                3 | 7 => assert!(matches!(r, Err(ItemError::Panicked(_))), "{x}: {r:?}"),
                _ => assert_eq!(*r.as_ref().unwrap(), x),
            }
        }
    }
    let s = p.stats();
    assert_eq!((s.blocking_queued, s.blocking_in_flight_weight), (0, 0));
    assert!(s.blocking_peak_in_flight_weight <= 4, "{s:?}");
}

/// A plain thread's heavy item waits in the line for the whole budget
/// while rayon threads feed light items: it is admitted, and they finish.
#[test]
fn a_plain_feeders_heavy_item_is_not_starved_by_rayon_feeders() {
    let p = common::eager_builder(2, 2)
        .queue_capacity(2)
        .memory_budget(8)
        .build()
        .unwrap();
    common::live("a heavy item behind rayon feeders", move || {
        let stop = Arc::new(AtomicBool::new(false));
        let feeders = {
            let p = p.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let outer: Vec<u64> = (0..8).collect();
                    let out = p.map(&outer, |&o| {
                        p.blocking()
                            .map_weighted(
                                vec![o; 4],
                                |_| 2,
                                |x| {
                                    common::spin(Duration::from_micros(50));
                                    x
                                },
                            )
                            .len()
                    });
                    assert!(out.iter().all(|r| *r.as_ref().unwrap() == 4));
                    rounds += 1;
                }
                rounds
            })
        };
        for _ in 0..20 {
            let out = p.blocking().map_weighted(vec![1u64, 2], |&x| x * 8, |x| x);
            assert_eq!(*out[1].as_ref().unwrap(), 2);
        }
        stop.store(true, Ordering::Relaxed);
        feeders.join().unwrap();
        let s = p.stats();
        assert_eq!((s.blocking_queued, s.blocking_in_flight_weight), (0, 0));
    });
}

/// Two rayon threads feed `Blocking` batches at once on one blocking
/// thread and a queue of one; the jobs start `Blocking` batches (inline
/// on a worker, fed again on the rayon thread) and `Cpu` batches.
#[test]
fn two_rayon_feeders_with_nested_batches_on_the_smallest_pools() {
    for (cpu_threads, blocking_threads) in [(1, 1), (2, 1), (2, 2), (1, 2)] {
        let out = common::live("two rayon feeders, nested", move || {
            let p = common::eager_builder(cpu_threads, blocking_threads)
                .queue_capacity(1)
                .build()
                .unwrap();
            let outer: Vec<u64> = (0..8).collect();
            let out = p.map(&outer, |&o| {
                let inner = p.clone();
                p.blocking()
                    .map(vec![o, o + 1, o + 2], move |x| {
                        let cpu = inner.clone();
                        let nested = inner
                            .blocking()
                            .map(vec![x, x], move |y| {
                                let items: Vec<u64> = (0..4).collect();
                                y + cpu
                                    .map(&items, |&z| z)
                                    .into_iter()
                                    .map(Result::unwrap)
                                    .sum::<u64>()
                            })
                            .into_iter()
                            .map(Result::unwrap)
                            .sum::<u64>();
                        let items: Vec<u64> = (0..4).collect();
                        nested
                            + inner
                                .map(&items, |&z| z)
                                .into_iter()
                                .map(Result::unwrap)
                                .sum::<u64>()
                    })
                    .into_iter()
                    .map(Result::unwrap)
                    .sum::<u64>()
            });
            let s = p.stats();
            assert_eq!((s.blocking_queued, s.blocking_in_flight_weight), (0, 0));
            out
        });
        for (o, r) in out.iter().enumerate() {
            let o = o as u64;
            // Each x: 2 * (x + 6) + 6.
            let want: u64 = (o..o + 3).map(|x| 2 * (x + 6) + 6).sum();
            assert_eq!(
                *r.as_ref().unwrap(),
                want,
                "{cpu_threads}/{blocking_threads}"
            );
        }
    }
}

/// A `Hybrid` batch awaited with a `block_on` in `Cpu` items, on one rayon
/// thread, with the only blocking thread busy running a `Cpu` batch.
#[test]
fn a_hybrid_batch_blocked_on_in_cpu_items_on_one_rayon_thread() {
    let out = common::live("hybrid in a cpu item", || {
        let p = common::eager(1, 1);
        let outer: Vec<u64> = (0..4).collect();
        p.map(&outer, |&o| {
            common::block_on(
                p.hybrid()
                    .map(vec![o, o + 1], |x| x * 2, |y| async move { y + 1 }),
            )
            .into_iter()
            .map(Result::unwrap)
            .sum::<u64>()
        })
    });
    for (o, r) in out.iter().enumerate() {
        let o = o as u64;
        assert_eq!(*r.as_ref().unwrap(), 2 * o + 1 + 2 * (o + 1) + 1);
    }
}

/// A seeded generator for [`mixed_feeders_on_tiny_pools`] (64-bit LCG,
/// Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// One seeded scenario: three feeders at once on pools of one or two
/// threads, a queue of one to three and a small budget, each one of: a
/// weighted batch from a plain thread; weighted batches from `Cpu` items;
/// `map_async` batches blocked on in `Cpu` items; a plain thread's batch
/// whose jobs run `Cpu` batches on rayon. Items panic, some batches cancel
/// themselves. Every batch gets one result per item, in order, and the
/// pool ends with nothing queued or in flight, its peak within the budget
/// (or one item heavier than it).
fn mixed_feeders(seed: u64) {
    let mut rng = Lcg(seed);
    let budget = 2 + rng.below(6);
    let p = Processor::builder()
        .cpu_threads(1 + rng.below(2) as usize)
        .blocking_threads(1 + rng.below(2) as usize)
        .queue_capacity(1 + rng.below(3) as usize)
        .memory_budget(budget)
        .parallel_threshold(Duration::from_nanos(1))
        .grain_target(Duration::from_nanos(1))
        .build()
        .unwrap();
    let feeders: Vec<_> = (0..3u64)
        .map(|f| {
            let p = p.clone();
            let kind = rng.below(4);
            let n = 1 + rng.below(6);
            let cancel_at = (rng.below(3) == 0).then(|| rng.below(n));
            std::thread::spawn(move || {
                let token = CancelToken::new();
                let h = p.with_cancel(token.clone());
                let job = move |x: u64| {
                    if Some(x % 100) == cancel_at {
                        token.cancel();
                    }
                    if x % 7 == 3 {
                        std::panic::panic_any(common::BAD);
                    }
                    x
                };
                let check = |out: &[Result<u64, ItemError>], base: u64| {
                    assert_eq!(out.len() as u64, n, "seed {seed}");
                    for (i, r) in out.iter().enumerate() {
                        if let Ok(v) = r {
                            assert_eq!(*v, base + i as u64, "seed {seed}");
                        }
                    }
                };
                let weigh = |x: &u64| 1 + x % 3;
                let outer: Vec<u64> = (1..5).collect();
                match kind {
                    0 => {
                        let items = (0..n).map(|i| f * 1000 + i).collect();
                        check(&h.blocking().map_weighted(items, weigh, job), f * 1000);
                    }
                    1 => {
                        let out = h.map(&outer, |&o| {
                            let items = (0..n).map(|i| o * 100 + i).collect();
                            check(
                                &h.blocking().map_weighted(items, weigh, job.clone()),
                                o * 100,
                            );
                        });
                        assert_eq!(out.len(), 4);
                    }
                    2 => {
                        let out = h.map(&outer, |&o| {
                            let items = (0..n).map(|i| o * 100 + i).collect();
                            let job = job.clone();
                            let fut = h.blocking().map_weighted_async(items, weigh, move |x| {
                                Ok::<u64, std::convert::Infallible>(job(x))
                            });
                            check(&common::block_on(fut), o * 100);
                        });
                        assert_eq!(out.len(), 4);
                    }
                    _ => {
                        let items = (0..n).map(|i| f * 1000 + i).collect();
                        let inner = h.clone();
                        let out = h.blocking().map(items, move |x| {
                            let v: Vec<u64> = (0..4).collect();
                            let ran = inner.map(&v, |&z| z).len() as u64;
                            job(x) + ran - 4
                        });
                        check(&out, f * 1000);
                    }
                }
            })
        })
        .collect();
    for feeder in feeders {
        feeder.join().unwrap();
    }
    let s = p.stats();
    assert_eq!(
        (s.blocking_queued, s.blocking_in_flight_weight),
        (0, 0),
        "seed {seed}"
    );
    // An item heavier than the whole budget (3 over 2) runs alone.
    assert!(
        s.blocking_peak_in_flight_weight <= budget.max(3),
        "seed {seed}: {s:?}"
    );
}

#[test]
fn mixed_feeders_on_tiny_pools() {
    common::quiet_bad_items();
    for seed in 0..300 {
        common::live(&format!("seed {seed}"), move || mixed_feeders(seed));
    }
}
