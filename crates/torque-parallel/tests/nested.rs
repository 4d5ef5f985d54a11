//! A batch run from inside an item of another batch does not deadlock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use torque_parallel::{CancelToken, ItemError, Processor};

mod common;

fn slow_sum(p: &Processor, n: u64) -> u64 {
    let items: Vec<u64> = (0..n).collect();
    p.map_reduce(
        &items,
        |&x| {
            std::thread::sleep(Duration::from_micros(200));
            x
        },
        || 0,
        |a, b| a + b,
    )
    .value
}

#[test]
fn cpu_map_inside_a_parallel_map_on_the_global_pool() {
    let p = Processor::builder().build().unwrap();
    let outer: Vec<u64> = (0..16).collect();
    let out = p.map(&outer, |&o| o + slow_sum(&p, 50));
    for (i, r) in out.iter().enumerate() {
        assert_eq!(*r.as_ref().unwrap(), i as u64 + 1225);
    }
    assert!(p.stats().parallel_runs >= 1);
}

#[test]
fn cpu_map_three_deep_on_a_one_thread_dedicated_pool() {
    let p = Processor::builder().cpu_threads(1).build().unwrap();
    let outer: Vec<u64> = (0..4).collect();
    let out = p.map(&outer, |_| {
        let mid: Vec<u64> = (0..4).collect();
        p.map(&mid, |_| slow_sum(&p, 20))
            .into_iter()
            .map(Result::unwrap)
            .sum::<u64>()
    });
    assert!(out.iter().all(|r| *r.as_ref().unwrap() == 4 * 190));
}

#[test]
fn blocking_map_inside_a_blocking_job_runs_inline() {
    // One thread, queue of one: waiting for room from inside the job would
    // wait forever; the nested batch runs on the job's own thread instead.
    let p = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let inner = p.clone();
    let out = p.blocking().map(vec![10u32, 20], move |x| {
        inner
            .blocking()
            .map(vec![x, x + 1, x + 2], |y| y * 2)
            .into_iter()
            .map(Result::unwrap)
            .sum::<u32>()
    });
    assert_eq!(*out[0].as_ref().unwrap(), 66);
    assert_eq!(*out[1].as_ref().unwrap(), 126);
}

#[test]
fn cpu_map_inside_a_blocking_job() {
    let p = Processor::builder().blocking_threads(2).build().unwrap();
    let cpu = p.clone();
    let out = p
        .blocking()
        .map(vec![5u64, 6], move |n| slow_sum(&cpu, n * 10));
    assert_eq!(*out[0].as_ref().unwrap(), 1225);
    assert_eq!(*out[1].as_ref().unwrap(), 1770);
}

/// [`slow_sum`] with items that spin for their cost instead of sleeping.
fn spun_sum(p: &Processor, n: u64) -> u64 {
    let items: Vec<u64> = (0..n).collect();
    p.map_reduce(
        &items,
        |&x| {
            common::spin(Duration::from_micros(200));
            x
        },
        || 0,
        |a, b| a + b,
    )
    .value
}

/// A `Cpu` item that runs a `Blocking` batch whose jobs run `Cpu` batches,
/// on a rayon pool of one thread: the only rayon thread waited for the
/// blocking jobs, which waited for a rayon thread. The `Cpu` batches of a
/// job of a batch submitted from a rayon thread now run on the job's own
/// thread (at first the waiting rayon thread ran the pool's pending jobs
/// meanwhile, which nested the item's siblings inside it).
#[test]
fn regression_a_blocking_batch_inside_a_cpu_item_may_run_cpu_batches() {
    let p = Processor::builder()
        .cpu_threads(1)
        .blocking_threads(1)
        .build()
        .unwrap();
    let (done_tx, done) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let outer: Vec<u64> = (0..16).collect();
        let out = p.map(&outer, |&o| {
            common::spin(Duration::from_micros(200));
            if o % 4 != 3 {
                return o;
            }
            let cpu = p.clone();
            p.blocking()
                .map(vec![o], move |n| spun_sum(&cpu, 40) + n)
                .into_iter()
                .map(Result::unwrap)
                .sum::<u64>()
        });
        assert!(p.stats().parallel_runs >= 1, "the outer batch ran on rayon");
        done_tx.send(()).unwrap();
        out
    });
    done.recv_timeout(Duration::from_secs(10))
        .expect("deadlocked: the rayon thread waited for blocking jobs that waited for it");
    let out = worker.join().unwrap();
    for (o, r) in out.iter().enumerate() {
        let o = o as u64;
        let want = if o % 4 == 3 { o + 780 } else { o };
        assert_eq!(*r.as_ref().unwrap(), want);
    }
}

/// A `Cpu` item that holds a `std::sync::Mutex` across a `Blocking`
/// batch, in a batch whose other items take the same mutex. The waiting
/// rayon thread used to run its pending rayon jobs, the item's siblings,
/// nested on its own stack: the nested sibling locked the mutex its own
/// thread held, and waited for itself for ever (std's `Mutex` may also
/// panic there). Now a waiting rayon thread runs only its own batch's
/// blocking jobs: the siblings wait for the lock on other threads, or in
/// the deque, and every item finishes.
#[test]
fn regression_a_lock_held_across_a_blocking_wait_in_a_cpu_item_is_not_taken_by_a_nested_sibling() {
    for cpu_threads in [1, 2] {
        let (out, total, parallel_runs) =
            common::live("a sibling nested under the lock holder", move || {
                let p = common::eager(cpu_threads, 1);
                let total = std::sync::Mutex::new(0u64);
                let items: Vec<u64> = (0..64).collect();
                let out = p.map(&items, |&x| {
                    common::spin(Duration::from_micros(20));
                    let mut held = total.lock().unwrap();
                    let doubled = p.blocking().map(vec![x], |y| y * 2);
                    *held += *doubled[0].as_ref().unwrap();
                    x
                });
                (out, total.into_inner().unwrap(), p.stats().parallel_runs)
            });
        assert!(
            parallel_runs >= 1,
            "{cpu_threads} rayon threads: the batch ran on rayon"
        );
        for (i, r) in out.iter().enumerate() {
            assert_eq!(
                *r.as_ref().unwrap(),
                i as u64,
                "{cpu_threads} rayon threads"
            );
        }
        assert_eq!(total, 2 * (0..64).sum::<u64>());
    }
}

/// One rayon thread and one blocking thread. The blocking thread runs an
/// unrelated job, submitted from a plain thread, that runs a `Cpu` batch:
/// that batch needs the rayon thread. Meanwhile the rayon thread's item
/// waits for its own `Blocking` batch, queued behind that job. Had the
/// rayon thread only waited, each would have waited for the other for
/// ever; it takes its own job back out of the queue, runs it, and is then
/// free for the other batch's rayon work.
#[test]
fn a_cpu_item_whose_blocking_batch_is_queued_behind_a_job_that_needs_rayon_runs_it_itself() {
    let (out, unrelated) = common::live(
        "the rayon thread waited for its job, queued behind one that waited for rayon",
        || {
            let p = common::eager(1, 1);
            let item_done = Arc::new(AtomicBool::new(false));
            let (started_tx, started) = mpsc::channel();
            let unrelated = {
                let (p, item_done) = (p.clone(), Arc::clone(&item_done));
                std::thread::spawn(move || {
                    let cpu = p.clone();
                    p.blocking().map(vec![()], move |()| {
                        started_tx.send(()).unwrap();
                        // Until the item's job is queued behind this one
                        // (or already done, taken back before this looked).
                        while cpu.stats().blocking_queued == 0 && !item_done.load(Ordering::SeqCst)
                        {
                            std::thread::yield_now();
                        }
                        let items: Vec<u64> = (0..16).collect();
                        cpu.map(&items, |&x| {
                            common::spin(Duration::from_micros(50));
                            (x, common::on_rayon())
                        })
                    })
                })
            };
            started.recv().unwrap();
            let items: Vec<u64> = (0..3).collect();
            let out = p.map(&items, |&o| {
                common::spin(Duration::from_micros(20));
                if o != 1 {
                    return Ok(o);
                }
                if !common::on_rayon() {
                    return Err("item 1 did not run on rayon");
                }
                // The only blocking thread is busy until the unrelated
                // batch is done, which needs this thread: the job can only
                // have run here.
                let r = p.blocking().map(vec![o], |x| {
                    if common::on_rayon() {
                        Ok(x * 10)
                    } else {
                        Err("the job ran on a blocking thread")
                    }
                });
                item_done.store(true, Ordering::SeqCst);
                r.into_iter().next().unwrap().unwrap()
            });
            let unrelated = unrelated.join().unwrap().pop().unwrap().unwrap();
            (out, unrelated)
        },
    );
    let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(out, [Ok(0), Ok(10), Ok(2)]);
    assert!(
        unrelated.iter().any(|r| r.as_ref().unwrap().1),
        "the unrelated job's batch went to rayon, as a batch from a plain thread's job does"
    );
    for (i, r) in unrelated.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap().0, i as u64);
    }
}

/// `Blocking` in `Cpu` in `Blocking` in `Cpu`, on small pools: the inner
/// `Cpu` batches, started by jobs of a batch submitted from a rayon
/// thread, run on the job's own thread, whether a blocking thread runs the
/// job or the waiting rayon thread runs it itself.
#[test]
fn blocking_in_cpu_in_blocking_in_cpu_on_small_pools() {
    fn expected(a: u64) -> u64 {
        let mut sum = 0;
        for b in [a, a + 1] {
            for c in [b, b + 1] {
                sum += c + c + 1;
            }
        }
        sum
    }
    for (cpu_threads, blocking_threads) in [(1, 1), (2, 1), (1, 2)] {
        let out = common::live("Blocking in Cpu in Blocking in Cpu", move || {
            let p = common::eager(cpu_threads, blocking_threads);
            let items: Vec<u64> = (0..8).collect();
            p.map(&items, |&a| {
                common::spin(Duration::from_micros(20));
                // Item 0 runs on the calling thread (the timed prefix): its
                // jobs' batches may go to rayon, as from any plain thread.
                let from_rayon = common::on_rayon();
                let cpu = p.clone();
                p.blocking()
                    .map(vec![a, a + 1], move |b| {
                        let job_thread = std::thread::current().id();
                        let inner = cpu.clone();
                        let items = vec![b, b + 1];
                        cpu.map(&items, |&c| {
                            common::spin(Duration::from_micros(20));
                            if from_rayon {
                                assert_eq!(std::thread::current().id(), job_thread);
                            }
                            let innermost = inner.clone();
                            inner
                                .blocking()
                                .map(vec![c, c + 1], move |d| {
                                    innermost.map(&[d], |&e| e)[0].as_ref().map_or(0, |e| *e)
                                })
                                .into_iter()
                                .map(Result::unwrap)
                                .sum::<u64>()
                        })
                        .into_iter()
                        .map(Result::unwrap)
                        .sum::<u64>()
                    })
                    .into_iter()
                    .map(Result::unwrap)
                    .sum::<u64>()
            })
        });
        for (a, r) in out.iter().enumerate() {
            let got = *r.as_ref().unwrap();
            assert_eq!(
                got,
                expected(a as u64),
                "{cpu_threads} rayon, {blocking_threads} blocking"
            );
        }
    }
}

/// A rayon thread runs its own jobs itself (the only blocking thread is
/// busy), and the first to run cancels the batch: the jobs not run yet are
/// `Cancelled`, and the pool holds nothing of the batch after. With a
/// queue of one, the second job finds no room and the thread runs the
/// first, queued, to make room; with a queue of eight, all four are
/// queued and taken back, front first.
#[test]
fn a_cancel_while_the_waiting_rayon_thread_runs_its_own_job_skips_the_rest() {
    for queue in [1, 8] {
        let (jobs, status) = common::live(
            "the rayon thread waited behind a held blocking thread",
            move || {
                let p = common::eager_builder(1, 1)
                    .queue_capacity(queue)
                    .build()
                    .unwrap();
                // Another batch's job holds a blocking thread (and a weight of 1)
                // until `release`.
                let (release, holder) = common::hold_the_only_worker(&p);
                let token = CancelToken::new();
                let cancellable = p.with_cancel(token.clone());
                let items: Vec<u64> = (0..3).collect();
                let mut out = p.map(&items, |&o| {
                    common::spin(Duration::from_micros(20));
                    if o != 1 {
                        return Vec::new();
                    }
                    let first = Arc::new(AtomicBool::new(false));
                    let token = token.clone();
                    cancellable.blocking().map(vec![0u64, 1, 2, 3], move |x| {
                        if !first.swap(true, Ordering::SeqCst) {
                            token.cancel();
                        }
                        (x, common::on_rayon())
                    })
                });
                release.send(()).unwrap();
                holder.join().unwrap();
                (out.swap_remove(1).unwrap(), p.stats())
            },
        );
        for (i, r) in jobs.iter().enumerate() {
            if i == 0 {
                let want = (0, true);
                assert_eq!(
                    *r.as_ref().unwrap(),
                    want,
                    "queue {queue}: ran on the rayon thread"
                );
            } else {
                assert!(
                    matches!(r, Err(ItemError::Cancelled)),
                    "queue {queue}, job {i}: {r:?}"
                );
            }
        }
        assert_eq!(status.blocking_queued, 0);
        assert_eq!(status.blocking_in_flight_weight, 0);
    }
}

/// The memory budget is held by another batch's job, which only the test
/// releases after the `Cpu` batch: a rayon thread whose jobs find no room
/// and none of its own queued runs them itself, uncounted (the weight in
/// flight never passes the budget), instead of waiting for room.
#[test]
fn a_rayon_feeder_runs_its_jobs_itself_while_another_batch_holds_the_budget() {
    let (jobs, status) = common::live(
        "the rayon thread waited for a budget held by a gated job",
        || {
            let p = common::eager_builder(1, 2)
                .memory_budget(1)
                .build()
                .unwrap();
            // Another batch's job holds a blocking thread (and a weight of 1)
            // until `release`.
            let (release, holder) = common::hold_the_only_worker(&p);
            let items: Vec<u64> = (0..3).collect();
            let mut out = p.map(&items, |&o| {
                common::spin(Duration::from_micros(20));
                if o != 1 {
                    return Vec::new();
                }
                p.blocking()
                    .map(vec![0u64, 1, 2], |x| (x, common::on_rayon()))
            });
            let status = p.stats();
            release.send(()).unwrap();
            holder.join().unwrap();
            (out.swap_remove(1).unwrap(), status)
        },
    );
    let jobs: Vec<_> = jobs.into_iter().map(Result::unwrap).collect();
    assert_eq!(jobs, [(0, true), (1, true), (2, true)]);
    assert_eq!(
        status.blocking_in_flight_weight, 1,
        "only the holder's weight"
    );
    assert_eq!(status.blocking_peak_in_flight_weight, 1);
    assert_eq!(status.blocking_queued, 0);
}
