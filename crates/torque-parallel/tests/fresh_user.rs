//! A first-time user's checks of the documented API (README,
//! docs/parallel.md, rustdoc): defaults, bad input, nothing lost, stats
//! that add up. Time-related checks run on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use torque_parallel::balance::{Balancer, Strategy};
use torque_parallel::batch::{BatchSizer, Batcher, FlushError};
use torque_parallel::limit::{
    Adaptive, Aimd, AlgorithmKind, ConcurrencyLimiter, Fixed, Gradient2, Limiter, LimiterConfig,
    MockClock, Vegas,
};
use torque_parallel::{BuildError, CancelToken, ItemError, Processor};

// ---------------------------------------------------------------- builder

#[test]
fn processor_builder_rejects_zeros_with_the_documented_error() {
    let zero = |b: torque_parallel::ProcessorBuilder| match b.build() {
        Err(BuildError::Zero(name)) => name,
        other => panic!("expected Zero, got {:?}", other.map(|_| ())),
    };
    assert_eq!(zero(Processor::builder().cpu_threads(0)), "cpu_threads");
    assert_eq!(
        zero(Processor::builder().blocking_threads(0)),
        "blocking_threads"
    );
    assert_eq!(
        zero(Processor::builder().queue_capacity(0)),
        "queue_capacity"
    );
    assert_eq!(zero(Processor::builder().memory_budget(0)), "memory_budget");
    assert_eq!(zero(Processor::builder().async_limit(0)), "async_limit");
    assert_eq!(zero(Processor::builder().hybrid_buffer(0)), "hybrid_buffer");
    assert_eq!(
        zero(Processor::builder().item_timeout(Duration::ZERO)),
        "item_timeout"
    );
    for b in [
        Processor::builder().parallel_threshold(Duration::ZERO),
        Processor::builder().parallel_threshold(Duration::from_secs(2)),
        Processor::builder().grain_target(Duration::ZERO),
        Processor::builder().grain_target(Duration::MAX),
    ] {
        assert!(matches!(b.build(), Err(BuildError::Duration { .. })));
    }
    assert!(matches!(
        Processor::builder().blocking_threads(65_537).build(),
        Err(BuildError::OutOfRange { .. })
    ));
    assert!(matches!(
        Processor::builder().cpu_threads(usize::MAX).build(),
        Err(BuildError::OutOfRange { .. })
    ));
}

#[test]
fn processor_defaults_are_the_documented_ones() {
    let p = Processor::builder().build().unwrap();
    let c = p.config();
    assert_eq!(c.parallel_threshold, Duration::from_micros(50));
    assert_eq!(c.grain_target, Duration::from_micros(10));
    assert!(c.learn_dispatch);
    assert_eq!(c.memory_budget, None);
    assert_eq!(c.async_limit, None);
    assert_eq!(c.item_timeout, None);
    let s = p.stats();
    assert_eq!(s.blocking_threads, 0, "blocking threads start on first use");
    assert_eq!(s.cpu_threads, rayon::current_num_threads());
}

// ---------------------------------------------------------------- Cpu

#[test]
fn cpu_map_keeps_order_and_isolates_panics_and_errors() {
    let p = Processor::builder().build().unwrap();
    let items: Vec<u64> = (0..5_000).collect();
    let out = p.map(&items, |&x| {
        if x % 1_000 == 999 {
            panic!("boom {x}")
        }
        x * 3
    });
    assert_eq!(out.len(), items.len());
    for (i, r) in out.iter().enumerate() {
        if i % 1_000 == 999 {
            let Err(ItemError::Panicked(p)) = r else {
                panic!("{i}: {r:?}")
            };
            assert_eq!(p.message(), format!("boom {i}"));
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64 * 3);
        }
    }
    let out = p.try_map(&items, |&x| if x == 3 { Err("three") } else { Ok(x) });
    assert!(matches!(out[3], Err(ItemError::Failed("three"))));
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), items.len() - 1);
}

#[test]
fn cpu_map_reduce_and_for_each_summaries_add_up() {
    let p = Processor::builder().build().unwrap();
    let items: Vec<u64> = (0..10_000).collect();
    let s = p.map_reduce(
        &items,
        |&x| {
            if x % 2_500 == 0 {
                panic!("p")
            }
            x
        },
        || 0u64,
        |a, b| a + b,
    );
    assert_eq!(s.panics.len(), 4);
    assert_eq!(s.value, items.iter().sum::<u64>() - (2_500 + 5_000 + 7_500));
    assert!(!s.is_complete());
    let ran = AtomicUsize::new(0);
    let s = p.for_each(&items, |_| {
        ran.fetch_add(1, Ordering::Relaxed);
    });
    assert!(s.is_complete());
    assert_eq!(ran.into_inner(), items.len());
}

#[test]
fn cpu_cancelled_batches_return_one_cancelled_per_item() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .build()
        .unwrap()
        .with_cancel(token.clone());
    token.cancel();
    let items: Vec<u32> = (0..1000).collect();
    let out = p.map(&items, |&x| x);
    assert_eq!(out.len(), 1000);
    assert!(out.iter().all(|r| matches!(r, Err(ItemError::Cancelled))));
    let err = p.collect(&items, |&x| x).unwrap_err();
    assert!(err.is_cancelled());
    let s = p.map_reduce(&items, |&x| x as u64, || 0, |a, b| a + b);
    assert_eq!(s.cancelled, 1000);
    assert_eq!(s.value, 0);
}

#[test]
fn map_weighted_with_weights_of_zero_and_u64_max_runs_every_item_once() {
    let p = Processor::builder().memory_budget(10).build().unwrap();
    let items: Vec<u64> = vec![0, u64::MAX, 0, 5, u64::MAX, 6, 0];
    let ran = AtomicUsize::new(0);
    let out = p.map_weighted(
        &items,
        |&w| w,
        |&w| {
            ran.fetch_add(1, Ordering::Relaxed);
            w
        },
    );
    assert_eq!(ran.into_inner(), items.len());
    let got: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, items);
}

#[test]
fn blocking_weighted_with_weights_of_zero_and_u64_max_finishes() {
    let p = Processor::builder()
        .blocking_threads(2)
        .memory_budget(u64::MAX)
        .build()
        .unwrap();
    let items: Vec<u64> = vec![u64::MAX, 0, u64::MAX, 1, u64::MAX];
    let out = p.blocking().map_weighted(items.clone(), |&w| w, |w| w);
    let got: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, items);
    assert_eq!(p.stats().blocking_in_flight_weight, 0);
}

#[test]
fn huge_queue_capacity_and_budget_are_accepted_and_work() {
    let p = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(usize::MAX)
        .memory_budget(u64::MAX)
        .build()
        .unwrap();
    let out = p.blocking().map((0..100u32).collect(), |x| x + 1);
    assert_eq!(out.len(), 100);
    assert!(out.iter().all(Result::is_ok));
}

// ---------------------------------------------------------------- Async

#[tokio::test(start_paused = true)]
async fn async_limit_of_usize_max_and_a_huge_item_timeout_work() {
    let p = Processor::builder()
        .async_limit(usize::MAX)
        .item_timeout(Duration::MAX)
        .build()
        .unwrap();
    let out = p
        .async_io()
        .map(0..50u64, |x| async move {
            tokio::time::sleep(Duration::from_millis(x)).await;
            x
        })
        .await;
    assert_eq!(out.len(), 50);
    assert!(out.iter().all(Result::is_ok));
    let io = p.stats().io;
    assert_eq!(io.taken, 50);
    assert_eq!(io.succeeded, 50);
    assert_eq!(io.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn async_outcomes_add_up_in_stats() {
    let p = Processor::builder().async_limit(4).build().unwrap();
    let out = p
        .async_io()
        .timeout(Duration::from_millis(100))
        .try_map(0..40u64, |x| async move {
            match x % 4 {
                0 => Ok(x),
                1 => Err("e"),
                2 => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(x)
                }
                _ => panic!("p{x}"),
            }
        })
        .await;
    assert_eq!(out.len(), 40);
    let io = p.stats().io;
    assert_eq!(
        (io.taken, io.succeeded, io.failed, io.timed_out, io.panicked),
        (40, 10, 10, 10, 10)
    );
    assert_eq!(
        io.taken,
        io.completed()
            + io.panicked
            + io.cancelled
            + io.in_flight as u64
            + io.queued as u64
            + io.awaiting_permit as u64
    );
    assert_eq!(p.async_io().limiter().stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn async_as_completed_yields_each_index_once() {
    let p = Processor::builder().async_limit(3).build().unwrap();
    let mut seen: Vec<usize> = p
        .async_io()
        .as_completed((0..30u64).rev(), |ms| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, ()>(ms)
        })
        .map(|(i, _)| i)
        .collect()
        .await;
    seen.sort_unstable();
    assert_eq!(seen, (0..30).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn dropping_an_async_batch_frees_its_permits() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(2));
    let p = Processor::builder().build().unwrap();
    let fut = p
        .async_io()
        .with_limiter(limiter.clone())
        .map(0..10u64, |_| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
    let _ = tokio::time::timeout(Duration::from_millis(10), fut).await;
    assert_eq!(limiter.stats().in_flight, 0);
    assert_eq!(limiter.stats().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn hybrid_map_keeps_order_and_stats_add_up() {
    let p = Processor::builder()
        .async_limit(2)
        .hybrid_buffer(2)
        .build()
        .unwrap();
    let out = p
        .hybrid()
        .try_map(
            0..20u64,
            |x| if x == 5 { Err("cpu") } else { Ok(x * 2) },
            |y| async move {
                tokio::time::sleep(Duration::from_millis(y)).await;
                if y == 14 { Err("io") } else { Ok(y) }
            },
        )
        .await;
    assert_eq!(out.len(), 20);
    for (i, r) in out.iter().enumerate() {
        match i {
            5 | 7 => assert!(matches!(r, Err(ItemError::Failed(_))), "{i}: {r:?}"),
            _ => assert_eq!(*r.as_ref().unwrap(), i as u64 * 2),
        }
    }
    let io = p.stats().io;
    assert_eq!((io.taken, io.succeeded, io.failed), (20, 18, 2));
}

// ---------------------------------------------------------------- limit

#[test]
fn limiter_tokens_record_their_outcomes() {
    let clock = MockClock::new();
    let limiter = ConcurrencyLimiter::with_clock(Fixed::new(3), clock.clone());
    let a = limiter.try_acquire().unwrap();
    let b = limiter.try_acquire().unwrap();
    let c = limiter.try_acquire().unwrap();
    let r = limiter.try_acquire().unwrap_err();
    assert_eq!((r.limit, r.in_flight, r.waiting), (3, 3, 0));
    clock.advance(Duration::from_millis(10));
    a.success();
    b.overload();
    drop(c);
    let s = limiter.stats();
    assert_eq!(
        (s.succeeded, s.overloaded, s.ignored, s.rejected),
        (1, 1, 1, 1)
    );
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.busy, Duration::from_millis(10));
    assert!((s.throughput() - 200.0).abs() < 1e-9, "{}", s.throughput());
}

#[test]
fn fixed_limit_of_usize_max_admits() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(usize::MAX));
    let tokens: Vec<_> = (0..100).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(limiter.stats().in_flight, 100);
    drop(tokens);
    assert_eq!(limiter.stats().in_flight, 0);
}

#[test]
fn algorithm_builders_reject_nan_and_bad_bounds() {
    assert!(Aimd::builder().backoff_ratio(f64::NAN).build().is_err());
    assert!(Aimd::builder().min_limit(0).build().is_err());
    assert!(Aimd::builder().min_limit(5).max_limit(4).build().is_err());
    assert!(Aimd::builder().timeout(Duration::ZERO).build().is_err());
    assert!(Vegas::builder().smoothing(f64::NAN).build().is_err());
    assert!(Gradient2::builder().smoothing(f64::NAN).build().is_err());
    assert!(
        Gradient2::builder()
            .rtt_tolerance(f64::NAN)
            .build()
            .is_err()
    );
    assert!(Gradient2::builder().queue_size(f64::NAN).build().is_err());
    assert!(
        Gradient2::builder()
            .queue_size(f64::INFINITY)
            .build()
            .is_err()
    );
    assert!(Adaptive::builder().headroom(f64::NAN).build().is_err());
    assert!(Adaptive::builder().backoff_ratio(f64::NAN).build().is_err());
    assert!(Adaptive::builder().min_limit(0).build().is_err());
    assert!(
        Adaptive::builder()
            .max_window(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(
        Adaptive::builder()
            .probe_interval(Duration::ZERO)
            .build()
            .is_err()
    );
}

#[test]
fn limiter_config_defaults_to_adaptive_and_rejects_foreign_knobs() {
    let config = LimiterConfig::default();
    assert_eq!(config.algorithm, AlgorithmKind::Adaptive);
    config.build().unwrap();
    let mut config = LimiterConfig::default();
    config.algorithm = AlgorithmKind::Fixed;
    config.timeout = Some(Duration::from_secs(1));
    assert!(matches!(
        config.build(),
        Err(BuildError::NotApplicable { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn limiter_waiters_are_served_in_order_and_try_acquire_does_not_jump() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    let held = limiter.try_acquire().unwrap();
    let l2 = limiter.clone();
    let waiter = tokio::spawn(async move { l2.acquire().await.success() });
    tokio::task::yield_now().await;
    assert_eq!(limiter.stats().waiting, 1);
    drop(held);
    let r = limiter.try_acquire();
    assert!(r.is_err(), "try_acquire jumped the queue");
    waiter.await.unwrap();
    assert_eq!(limiter.stats().in_flight, 0);
}

// ---------------------------------------------------------------- batch

#[test]
fn batch_sizer_builder_validation() {
    assert!(matches!(
        BatchSizer::builder().min_size(0).build(),
        Err(BuildError::Zero(_))
    ));
    assert!(matches!(
        BatchSizer::builder().min_size(10).max_size(5).build(),
        Err(BuildError::Bounds { .. })
    ));
    assert!(matches!(
        BatchSizer::builder().latency_target(Duration::ZERO).build(),
        Err(BuildError::Duration { .. })
    ));
    assert!(matches!(
        BatchSizer::builder()
            .latency_target(Duration::from_secs(2))
            .build(),
        Err(BuildError::Duration { .. })
    ));
    assert!(matches!(
        BatchSizer::builder().window(3).build(),
        Err(BuildError::OutOfRange { .. })
    ));
    assert!(matches!(
        BatchSizer::builder().probe_every(1).build(),
        Err(BuildError::OutOfRange { .. })
    ));
    // max_size 0 with the default min_size 1 is an empty range.
    assert!(BatchSizer::builder().max_size(0).build().is_err());
}

#[test]
fn batch_sizer_defaults_and_first_sizes() {
    let mut s = BatchSizer::builder().build().unwrap();
    assert_eq!(s.max_size(), 1000);
    assert_eq!(s.size(), 16);
    assert_eq!(s.next_size(), 16);
    assert_eq!(s.next_size(), 32);
    assert!(s.model().is_none());
}

#[test]
fn batch_sizer_survives_extreme_observations() {
    let mut s = BatchSizer::builder().build().unwrap();
    for i in 0..200usize {
        let n = s.next_size();
        assert!((1..=1000).contains(&n), "{i}: {n}");
        let latency = match i % 4 {
            0 => Duration::ZERO,
            1 => Duration::MAX,
            2 => Duration::from_nanos(1),
            _ => Duration::from_secs(u64::MAX / 2),
        };
        s.observe(n, latency);
        s.observe_arrivals(n, latency);
    }
    let n = s.next_size_after(Duration::MAX);
    assert!((1..=1000).contains(&n), "{n}");
    s.observe(0, Duration::from_millis(1)); // an empty batch is ignored
}

#[tokio::test(start_paused = true)]
async fn batcher_writes_by_size_and_by_linger_and_loses_nothing() {
    let written = Arc::new(parking_lot::Mutex::new(Vec::<Vec<u32>>::new()));
    let w = Arc::clone(&written);
    let (batcher, driver) = Batcher::builder()
        .max_size(4)
        .max_linger(Duration::from_millis(50))
        .build(move |rows: Vec<u32>| {
            w.lock().push(rows.clone());
            async move {
                if rows.contains(&13) {
                    Err("thirteen")
                } else {
                    Ok(())
                }
            }
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let mut receipts = Vec::new();
    for i in 0..14u32 {
        receipts.push(batcher.send(i).await.unwrap());
    }
    // 3 full batches written at once; 2 items linger.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(written.lock().len(), 3);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(written.lock().len(), 4);
    for (i, r) in receipts.into_iter().enumerate() {
        let r = r.await;
        if i >= 12 {
            assert!(matches!(r, Err(FlushError::Sink(_))), "{i}");
        } else {
            assert!(r.is_ok(), "{i}");
        }
    }
    let stats = batcher.stats();
    assert_eq!(
        (
            stats.batches,
            stats.items,
            stats.failed_batches,
            stats.failed_items
        ),
        (4, 14, 1, 2)
    );
    assert_eq!(stats.full_batches, 3);
    drop(batcher);
    let stats = driver.await.unwrap();
    assert_eq!(stats.items, 14);
    assert!(
        written.lock().iter().all(|b| !b.is_empty()),
        "an empty batch was written"
    );
}

#[tokio::test(start_paused = true)]
async fn batcher_with_huge_linger_and_capacity_flushes_on_close() {
    let (batcher, driver) = Batcher::builder()
        .max_size(usize::MAX)
        .max_linger(Duration::MAX)
        .queue_capacity(usize::MAX)
        .build(|_rows: Vec<u8>| async { Ok::<(), ()>(()) })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let r = batcher.send(1).await.unwrap();
    drop(batcher);
    assert!(r.await.is_ok());
    assert_eq!(driver.await.unwrap().items, 1);
}

#[test]
fn batcher_builder_validation() {
    let sink = |_rows: Vec<u8>| async { Ok::<(), ()>(()) };
    assert!(matches!(
        Batcher::builder().max_size(0).build(sink),
        Err(BuildError::Zero(_))
    ));
    assert!(matches!(
        Batcher::builder().queue_capacity(0).build(sink),
        Err(BuildError::Zero(_))
    ));
}

// ---------------------------------------------------------------- balance

#[test]
fn balancer_validation_and_round_robin() {
    assert!(matches!(
        Balancer::builder().build(Vec::<u8>::new()),
        Err(BuildError::Zero(_))
    ));
    for d in [Duration::ZERO, Duration::from_secs(3601), Duration::MAX] {
        assert!(
            Balancer::builder().decay(d).build(vec![1]).is_err(),
            "{d:?}"
        );
        assert!(
            Balancer::builder().default_rtt(d).build(vec![1]).is_err(),
            "{d:?}"
        );
        assert!(
            Balancer::builder()
                .failure_penalty(d)
                .build(vec![1])
                .is_err(),
            "{d:?}"
        );
    }
    let b = Balancer::builder()
        .strategy(Strategy::RoundRobin)
        .build(vec!['a', 'b', 'c'])
        .unwrap();
    let picks: String = (0..6).map(|_| *b.pick()).collect();
    assert_eq!(picks, "abcabc");
    let stats = b.stats();
    assert!(stats.iter().all(|s| s.picks == 2 && s.in_flight == 0));
}

#[test]
fn least_busy_prefers_the_idle_backend() {
    let b = Balancer::builder()
        .strategy(Strategy::LeastBusy)
        .build(vec![0, 1, 2])
        .unwrap();
    let p0 = b.pick();
    let p1 = b.pick();
    let p2 = b.pick();
    let mut idx = [p0.index(), p1.index(), p2.index()];
    idx.sort_unstable();
    assert_eq!(idx, [0, 1, 2], "each pick went to an idle backend");
    let freed = p1.index();
    drop(p1);
    assert_eq!(b.pick().index(), freed, "the only idle backend");
}

#[test]
fn single_backend_peak_ewma_and_failure() {
    let clock = MockClock::new();
    let b = Balancer::builder()
        .seed(1)
        .build_with_clock(vec!["only"], clock.clone())
        .unwrap();
    for _ in 0..10 {
        let p = b.pick();
        clock.advance(Duration::from_millis(5));
        p.fail();
    }
    assert_eq!(*b.pick(), "only", "a sole backend is still picked when out");
    let s = &b.stats()[0];
    assert_eq!(s.failures, 10);
    assert_eq!(s.picks, 11);
}

// ---------------------------------------------------------------- batch 2

#[test]
fn adaptive_default_is_what_its_builder_docs_say() {
    // `Adaptive::builder` documents its defaults; `Adaptive::default()`
    // must be that configuration.
    let documented = Adaptive::builder()
        .initial_limit(4)
        .min_limit(1)
        .max_limit(1000)
        .min_samples(64)
        .max_window(Duration::from_secs(1))
        .headroom(0.03)
        .probe_interval(Duration::from_secs(60))
        .probe_limit(4)
        .backoff_ratio(0.9)
        .build()
        .unwrap();
    assert_eq!(
        format!("{:?}", Adaptive::default()),
        format!("{documented:?}")
    );
}

#[test]
fn cpu_stats_count_every_call_once() {
    let p = Processor::builder().memory_budget(10).build().unwrap();
    let empty: [u64; 0] = [];
    let one = [1u64];
    let before = p.stats();
    let _ = p.map(&empty, |&x| x);
    let _ = p.try_map(&empty, |&x| Ok::<_, ()>(x));
    let _ = p.collect(&empty, |&x| x);
    let _ = p.try_collect(&empty, |&x| Ok::<_, ()>(x));
    let _ = p.map_reduce(&empty, |&x| x, || 0, |a, b| a + b);
    let _ = p.for_each(&empty, |_| {});
    let _ = p.map_weighted(&empty, |_| 1, |&x| x);
    let _ = p.map(&one, |&x| x);
    let _ = p.map_weighted(&[5u64, 5, 5, 5], |&w| w, |&x| x);
    let after = p.stats();
    let calls = (after.sequential_runs + after.parallel_runs)
        - (before.sequential_runs + before.parallel_runs);
    assert_eq!(calls, 9);
}

#[test]
fn blocking_unweighted_items_weigh_one_against_the_budget() {
    let p = Processor::builder()
        .blocking_threads(8)
        .memory_budget(3)
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, pk) = (Arc::clone(&running), Arc::clone(&peak));
    let out = p.blocking().map((0..64u32).collect(), move |x| {
        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
        pk.fetch_max(now, Ordering::SeqCst);
        for _ in 0..1000 {
            std::hint::spin_loop();
        }
        r.fetch_sub(1, Ordering::SeqCst);
        x
    });
    assert!(out.iter().all(Result::is_ok));
    assert!(peak.load(Ordering::SeqCst) <= 3);
    let s = p.stats();
    assert!(s.blocking_peak_in_flight_weight <= 3, "{s:?}");
    assert_eq!(s.blocking_in_flight_weight, 0);
}

#[tokio::test(start_paused = true)]
async fn batcher_stats_add_up_while_a_write_runs() {
    let (batcher, driver) = Batcher::builder()
        .max_size(4)
        .max_linger(Duration::ZERO)
        .queue_capacity(100)
        .build(|_rows: Vec<u32>| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<(), ()>(())
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let mut receipts = Vec::new();
    for i in 0..10 {
        receipts.push(batcher.send(i).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = batcher.stats();
    assert_eq!(s.items + s.queued as u64 + s.pending as u64, 10, "{s:?}");
    drop(batcher);
    for r in receipts {
        r.await.unwrap();
    }
    assert_eq!(driver.await.unwrap().items, 10);
}

#[tokio::test(start_paused = true)]
async fn batcher_try_send_gives_the_item_back_and_a_dropped_driver_is_reported() {
    let (batcher, driver) = Batcher::builder()
        .max_size(2)
        .queue_capacity(1)
        .build(|_rows: Vec<u32>| async { Ok::<(), ()>(()) })
        .unwrap();
    let r = batcher.try_send(1).unwrap();
    match batcher.try_send(2) {
        Err(torque_parallel::batch::TrySendError::Full(2)) => {}
        other => panic!("{other:?}"),
    }
    drop(driver);
    assert!(matches!(r.await, Err(FlushError::Dropped)));
    assert!(batcher.send(3).await.is_err());
}

#[test]
fn balancer_unheard_backend_latency_is_the_default_rtt() {
    let b = Balancer::builder().build(vec![1, 2]).unwrap();
    assert_eq!(
        b.stats()[0].latency,
        Duration::from_millis(30),
        "{:?}",
        b.stats()
    );
    let b = Balancer::builder()
        .default_rtt(Duration::from_millis(5))
        .decay(Duration::from_secs(3600))
        .failure_penalty(Duration::from_secs(3600))
        .build(vec![1, 2])
        .unwrap();
    assert_eq!(b.stats()[1].latency, Duration::from_millis(5));
}

#[test]
fn peak_ewma_decays_while_idle_and_discard_records_nothing() {
    let clock = MockClock::new();
    let b = Balancer::builder()
        .seed(3)
        .decay(Duration::from_secs(1))
        .build_with_clock(vec!["a", "b"], clock.clone())
        .unwrap();
    let p = b.pick();
    let i = p.index();
    clock.advance(Duration::from_secs(2));
    drop(p);
    let high = b.stats()[i].latency;
    assert!(high >= Duration::from_secs(2), "{high:?}");
    let p = b.pick();
    clock.advance(Duration::from_secs(30));
    p.discard();
    let s = b.stats();
    assert!(s.iter().all(|s| s.in_flight == 0));
}

#[tokio::test(start_paused = true)]
async fn async_for_each_counts_timeouts_panics_and_cancels() {
    let p = Processor::builder().async_limit(8).build().unwrap();
    let s = p
        .async_io()
        .timeout(Duration::from_millis(10))
        .for_each(0..9u64, |x| async move {
            match x % 3 {
                0 => {}
                1 => tokio::time::sleep(Duration::from_secs(1)).await,
                _ => panic!("x"),
            }
        })
        .await;
    assert_eq!((s.timed_out, s.panics.len(), s.cancelled), (3, 3, 0));
    assert!(!s.is_complete());
}

#[tokio::test(start_paused = true)]
async fn async_cancel_token_stops_an_endless_input() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .async_limit(2)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(35)).await;
        t.cancel();
    });
    let out = p
        .async_io()
        .map(0u64.., |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
        })
        .await;
    assert!(!out.is_empty());
    assert!(
        out.last()
            .unwrap()
            .as_ref()
            .is_err_and(ItemError::is_cancelled)
    );
    let io = p.stats().io;
    assert_eq!(io.taken as usize, out.len());
    assert_eq!(io.taken, io.completed() + io.panicked + io.cancelled);
}

/// docs/parallel.md, "Cancellation" (Async): dropping the stream aborts
/// its tasks, which the runtime drops at its next turn; only then do their
/// permits come back. Before the doc said so, "nothing of the batch
/// outlives it" read as at once: right after the drop `in_flight` was 4 and
/// a `try_acquire` on the limiter was refused.
#[tokio::test(start_paused = true)]
async fn a_dropped_as_completed_stream_gives_its_permits_back_at_the_next_turn() {
    let limiter = ConcurrencyLimiter::new(Fixed::new(4));
    let p = Processor::builder().build().unwrap();
    {
        let mut s = std::pin::pin!(p.async_io().with_limiter(limiter.clone()).as_completed(
            0..100u64,
            |ms| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, ()>(ms)
            }
        ));
        for _ in 0..3 {
            let _ = s.next().await.unwrap();
        }
    }
    // The aborted tasks still hold their permits until the runtime drops
    // them (what the guide now says).
    let right_after = limiter.stats().in_flight;
    assert!(right_after <= 4, "{right_after}");
    tokio::task::yield_now().await;
    assert_eq!(limiter.stats().in_flight, 0);
    assert!(limiter.try_acquire().is_ok());
    let io = p.stats().io;
    assert_eq!((io.in_flight, io.awaiting_permit), (0, 0), "{io:?}");
    assert_eq!(
        io.taken,
        io.completed() + io.panicked + io.cancelled,
        "{io:?}"
    );
}

// ---------------------------------------------------------------- batch 3

fn drive<A: torque_parallel::limit::Algorithm>(name: &str, algorithm: A, min: usize, max: usize) {
    let clock = MockClock::new();
    let limiter = ConcurrencyLimiter::with_clock(algorithm, clock.clone());
    for round in 0..3_000u64 {
        let n = limiter.stats().limit.min(64);
        let tokens: Vec<_> = (0..n).filter_map(|_| limiter.try_acquire().ok()).collect();
        let step = match round % 5 {
            0 => Duration::ZERO,
            1 => Duration::from_nanos(1),
            2 => Duration::from_secs(3_600 * 24 * 365),
            3 => Duration::from_millis(10),
            _ => Duration::from_micros(round),
        };
        clock.advance(step);
        for (i, t) in tokens.into_iter().enumerate() {
            if (i as u64 + round).is_multiple_of(7) {
                t.overload();
            } else {
                t.success();
            }
        }
        let limit = limiter.stats().limit;
        assert!(
            (min..=max).contains(&limit),
            "{name}: round {round}: limit {limit}"
        );
    }
}

#[test]
fn every_algorithm_stays_in_bounds_under_zero_and_huge_latencies() {
    drive("fixed", Fixed::new(7), 7, 7);
    drive(
        "aimd",
        Aimd::builder().min_limit(2).max_limit(50).build().unwrap(),
        2,
        50,
    );
    drive(
        "vegas",
        Vegas::builder().min_limit(2).max_limit(50).build().unwrap(),
        2,
        50,
    );
    drive(
        "gradient2",
        Gradient2::builder()
            .min_limit(2)
            .max_limit(50)
            .build()
            .unwrap(),
        2,
        50,
    );
    drive(
        "adaptive",
        Adaptive::builder()
            .min_limit(2)
            .max_limit(50)
            .build()
            .unwrap(),
        2,
        50,
    );
    drive(
        "windowed vegas",
        torque_parallel::limit::Windowed::builder(
            Vegas::builder().min_limit(2).max_limit(50).build().unwrap(),
        )
        .build()
        .unwrap(),
        2,
        50,
    );
    drive("default adaptive", Adaptive::default(), 1, 1000);
}

#[test]
fn limiter_config_builds_every_kind() {
    for kind in [
        AlgorithmKind::Fixed,
        AlgorithmKind::Aimd,
        AlgorithmKind::Vegas,
        AlgorithmKind::Gradient2,
        AlgorithmKind::Adaptive,
    ] {
        let mut c = LimiterConfig::default();
        c.algorithm = kind;
        c.initial_limit = Some(5);
        if kind != AlgorithmKind::Fixed {
            c.min_limit = Some(2);
            c.max_limit = Some(9);
        }
        let l = c.build().unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        // Adaptive starts at its probe limit (4) when that is lower: its
        // first window measures the no-load latency.
        let expected = if kind == AlgorithmKind::Adaptive {
            4
        } else {
            5
        };
        assert_eq!(l.stats().limit, expected, "{kind:?}");
    }
    let mut c = LimiterConfig::default();
    c.algorithm = AlgorithmKind::Fixed;
    assert!(matches!(c.build(), Err(BuildError::Missing { .. })));
    let mut c = LimiterConfig::default();
    c.headroom = Some(f64::NAN);
    assert!(c.build().is_err());
    let mut c = LimiterConfig::default();
    c.min_limit = Some(10);
    c.max_limit = Some(5);
    assert!(matches!(c.build(), Err(BuildError::Bounds { .. })));
}

#[tokio::test(start_paused = true)]
async fn hybrid_cancel_returns_every_taken_item_once() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .async_limit(2)
        .hybrid_buffer(3)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(55)).await;
        t.cancel();
    });
    let out = p
        .hybrid()
        .map(
            0u64..,
            |x| x,
            |x| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                x
            },
        )
        .await;
    assert!(!out.is_empty());
    for (i, r) in out.iter().enumerate() {
        if let Ok(v) = r {
            assert_eq!(*v, i as u64);
        } else {
            assert!(r.as_ref().is_err_and(ItemError::is_cancelled), "{i}: {r:?}");
        }
    }
    let io = p.stats().io;
    assert_eq!(io.taken as usize, out.len(), "{io:?}");
    assert_eq!(
        io.taken,
        io.completed() + io.panicked + io.cancelled,
        "{io:?}"
    );
    assert_eq!((io.in_flight, io.queued, io.awaiting_permit), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn hybrid_cpu_panic_is_the_items_error_and_counted() {
    let p = Processor::builder().async_limit(2).build().unwrap();
    let out = p
        .hybrid()
        .map(
            0..6u64,
            |x| if x == 2 { panic!("cpu {x}") } else { x },
            |x| async move {
                if x == 4 {
                    panic!("io {x}")
                }
                x
            },
        )
        .await;
    assert!(matches!(&out[2], Err(ItemError::Panicked(p)) if p.message() == "cpu 2"));
    assert!(matches!(&out[4], Err(ItemError::Panicked(p)) if p.message() == "io 4"));
    let io = p.stats().io;
    assert_eq!((io.taken, io.succeeded, io.panicked), (6, 4, 2), "{io:?}");
}

#[tokio::test]
async fn blocking_map_async_with_a_cancelled_token_cancels_every_item() {
    let token = CancelToken::new();
    token.cancel();
    let p = Processor::builder()
        .blocking_threads(2)
        .build()
        .unwrap()
        .with_cancel(token);
    let out = p.blocking().map_async((0..50u32).collect(), |x| x).await;
    assert_eq!(out.len(), 50);
    assert!(
        out.iter()
            .all(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
    );
}

#[tokio::test]
async fn blocking_weighted_async_stays_under_the_budget() {
    let p = Processor::builder()
        .blocking_threads(4)
        .memory_budget(10)
        .build()
        .unwrap();
    let items: Vec<u64> = (0..40).map(|i| i % 7).collect();
    let out = p
        .blocking()
        .map_weighted_async(items.clone(), |&w| w, Ok::<_, ()>)
        .await;
    let got: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, items);
    let s = p.stats();
    assert!(s.blocking_peak_in_flight_weight <= 10, "{s:?}");
    assert_eq!(s.blocking_in_flight_weight, 0);
}

/// `AdaptiveBuilder::initial_limit` said "the limit before any sample"; the
/// limit before any sample is the start-up probe's (`probe_limit`, 4) when
/// that is lower, and the initial limit once the probe's window is done.
#[test]
fn adaptive_initial_limit_is_where_it_goes_after_the_start_up_probe() {
    let adaptive = Adaptive::builder().initial_limit(100).build().unwrap();
    assert_eq!(
        torque_parallel::limit::Algorithm::initial_limit(&adaptive),
        4,
        "the start-up probe's limit"
    );
    let clock = MockClock::new();
    let limiter = ConcurrencyLimiter::with_clock(adaptive, clock.clone());
    let mut seen = Vec::new();
    for _ in 0..40 {
        let n = limiter.stats().limit;
        seen.push(n);
        let tokens: Vec<_> = (0..n).filter_map(|_| limiter.try_acquire().ok()).collect();
        clock.advance(Duration::from_millis(10));
        tokens
            .into_iter()
            .for_each(torque_parallel::limit::Token::success);
    }
    assert!(seen.iter().any(|&l| l >= 100), "{seen:?}");
}

// ---------------------------------------------------------------- batch 4

#[test]
fn a_failed_backend_is_left_out_for_the_penalty_then_tried_again() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastBusy,
        Strategy::PeakEwma,
    ] {
        let clock = MockClock::new();
        let b = Balancer::builder()
            .strategy(strategy)
            .seed(11)
            .failure_penalty(Duration::from_millis(500))
            .build_with_clock(vec!["a", "b", "c"], clock.clone())
            .unwrap();
        let mut first = b.pick();
        while first.index() != 0 {
            drop(first);
            first = b.pick();
        }
        first.fail();
        assert!(b.stats()[0].ejected, "{strategy:?}");
        for _ in 0..100 {
            let p = b.pick();
            assert_ne!(p.index(), 0, "{strategy:?}: picked during its penalty");
            clock.advance(Duration::from_millis(1));
        }
        clock.advance(Duration::from_millis(400));
        assert!(!b.stats()[0].ejected, "{strategy:?}");
        let picked_again = (0..300).any(|_| {
            let p = b.pick();
            clock.advance(Duration::from_micros(10));
            p.index() == 0
        });
        assert!(picked_again, "{strategy:?}: never tried again");
    }
}

#[test]
fn when_every_backend_is_out_they_are_still_picked() {
    let clock = MockClock::new();
    let b = Balancer::builder()
        .strategy(Strategy::LeastBusy)
        .build_with_clock(vec![1, 2], clock)
        .unwrap();
    b.pick().fail();
    b.pick().fail();
    assert!(b.stats().iter().all(|s| s.ejected));
    let p = b.pick();
    assert!(p.index() < 2);
    let s = b.stats();
    assert_eq!(s.iter().map(|s| s.picks).sum::<u64>(), 3);
    assert_eq!(s.iter().map(|s| s.in_flight).sum::<usize>(), 1);
}

#[tokio::test(start_paused = true)]
async fn io_latency_percentiles_and_throughput_follow_the_paused_clock() {
    let p = Processor::builder().async_limit(10).build().unwrap();
    let out = p
        .async_io()
        .map(0..10u64, |_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
        })
        .await;
    assert!(out.iter().all(Result::is_ok));
    let io = p.stats().io;
    let p50 = io.latency_p50.unwrap();
    assert!(p50 >= Duration::from_millis(100), "{io:?}");
    assert!(p50 <= Duration::from_micros(112_500), "{io:?}");
    assert!(
        io.busy >= Duration::from_millis(100) && io.busy <= Duration::from_millis(102),
        "{io:?}"
    );
    assert!(io.throughput() > 90.0 && io.throughput() <= 100.0, "{io:?}");
}

/// A panicking sink fails its batch's receipts with the panic and the
/// batcher goes on (it used to stop: receipts `Dropped`, later sends
/// refused; see `tests/batching.rs` for the regression test).
#[tokio::test(start_paused = true)]
async fn a_panicking_sink_fails_its_batch_with_the_panic_and_the_batcher_goes_on() {
    let (batcher, driver) = Batcher::builder()
        .max_size(2)
        .max_linger(Duration::ZERO)
        .build(|rows: Vec<u32>| async move {
            if rows.contains(&3) {
                panic!("sink bug");
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let a = batcher.send(1).await.unwrap();
    assert!(a.await.is_ok());
    let b = batcher.send(3).await.unwrap();
    assert!(matches!(b.await, Err(FlushError::Panicked(_))));
    let c = batcher.send(4).await.expect("the queue is still open");
    assert!(c.await.is_ok());
    assert_eq!(batcher.stats().pending, 0);
    drop(batcher);
    assert_eq!(
        driver
            .await
            .expect("the driver did not panic")
            .failed_batches,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn an_adaptive_batcher_writes_everything_and_sizes_within_bounds() {
    let sizer = BatchSizer::builder()
        .min_size(2)
        .max_size(300)
        .latency_target(Duration::from_millis(20))
        .build()
        .unwrap();
    let sizes = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s2 = Arc::clone(&sizes);
    let (batcher, driver) = Batcher::builder()
        .adaptive(sizer)
        .build(move |rows: Vec<u32>| {
            s2.lock().push(rows.len());
            let cost = Duration::from_millis(2) + Duration::from_micros(100) * rows.len() as u32;
            async move {
                tokio::time::sleep(cost).await;
                Ok::<(), ()>(())
            }
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let producer = {
        let batcher = batcher.clone();
        tokio::spawn(async move {
            let mut receipts = Vec::new();
            for i in 0..5_000u32 {
                receipts.push(batcher.send(i).await.unwrap());
            }
            receipts
        })
    };
    let receipts = producer.await.unwrap();
    drop(batcher);
    for r in receipts {
        r.await.unwrap();
    }
    let stats = driver.await.unwrap();
    assert_eq!(stats.items, 5_000);
    let sizes = sizes.lock();
    assert_eq!(sizes.iter().sum::<usize>(), 5_000);
    assert!(sizes.iter().all(|&n| (1..=300).contains(&n)), "{sizes:?}");
    assert!((2..=300).contains(&stats.size), "{stats:?}");
}

#[test]
fn a_threshold_set_by_hand_learns_no_dispatch() {
    let p = Processor::builder()
        .parallel_threshold(Duration::from_micros(1))
        .build()
        .unwrap();
    let items: Vec<u64> = (0..20_000).collect();
    for _ in 0..20 {
        let s = p.map_reduce(
            &items,
            |&x| (0..50).fold(x, |a, i| a.wrapping_mul(31).wrapping_add(i)),
            || 0u64,
            u64::wrapping_add,
        );
        assert!(s.is_complete());
    }
    let s = p.stats();
    assert_eq!(
        (s.cpu_dispatch, s.cpu_warm_dispatch),
        (Duration::ZERO, Duration::ZERO),
        "{s:?}"
    );
    assert!(!p.config().learn_dispatch);
}

#[test]
fn a_blocking_item_heavier_than_the_budget_runs_alone() {
    let p = Processor::builder()
        .blocking_threads(4)
        .memory_budget(10)
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let heavy_with_company = Arc::new(AtomicUsize::new(0));
    let (r, h) = (Arc::clone(&running), Arc::clone(&heavy_with_company));
    let items: Vec<u64> = vec![1, 1, 50, 1, 1, 50, 1];
    let out = p.blocking().map_weighted(
        items.clone(),
        |&w| w,
        move |w| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            if w == 50 {
                for _ in 0..200 {
                    if r.load(Ordering::SeqCst) > 1 || now > 1 {
                        h.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    std::thread::yield_now();
                }
            }
            r.fetch_sub(1, Ordering::SeqCst);
            w
        },
    );
    assert_eq!(
        out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        items
    );
    assert_eq!(heavy_with_company.load(Ordering::SeqCst), 0);
    assert_eq!(p.stats().blocking_peak_in_flight_weight, 50);
}

#[test]
fn batcher_default_queue_is_twice_the_largest_batch() {
    let sink = |_rows: Vec<u32>| async { Ok::<(), ()>(()) };
    let (batcher, _driver) = Batcher::builder().max_size(3).build(sink).unwrap();
    let receipts: Vec<_> = (0..6).map(|i| batcher.try_send(i).unwrap()).collect();
    assert!(batcher.try_send(6).is_err(), "the queue holds 2 × 3");
    assert_eq!(batcher.stats().queued, 6);
    drop(receipts);
    let sizer = BatchSizer::builder().max_size(5).build().unwrap();
    let (batcher, _driver) = Batcher::builder().adaptive(sizer).build(sink).unwrap();
    let receipts: Vec<_> = (0..10).map(|i| batcher.try_send(i).unwrap()).collect();
    assert!(batcher.try_send(10).is_err(), "the queue holds 2 × 5");
    drop(receipts);
    let (batcher, _driver) = Batcher::builder().build(sink).unwrap();
    assert_eq!(batcher.stats().size, 100, "default max_size");
    let _r: Vec<_> = (0..200).map(|i| batcher.try_send(i).unwrap()).collect();
    assert!(batcher.try_send(200).is_err(), "the queue holds 2 × 100");
}

#[test]
fn the_default_failure_penalty_is_one_second() {
    let clock = MockClock::new();
    let b = Balancer::builder()
        .strategy(Strategy::RoundRobin)
        .build_with_clock(vec![0, 1], clock.clone())
        .unwrap();
    b.pick().fail();
    clock.advance(Duration::from_millis(999));
    assert!(b.stats()[0].ejected);
    clock.advance(Duration::from_millis(1));
    assert!(!b.stats()[0].ejected);
}

/// The guide: the futures need the runtime's time driver only when a
/// timeout is set.
#[test]
fn async_and_hybrid_batches_run_on_a_runtime_without_a_time_driver() {
    let p = Processor::builder().build().unwrap();
    for rt in [
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap(),
    ] {
        rt.block_on(async {
            let out = p
                .async_io()
                .map(0..500u32, |x| async move {
                    tokio::task::yield_now().await;
                    x
                })
                .await;
            assert!(
                out.iter()
                    .enumerate()
                    .all(|(i, r)| *r.as_ref().unwrap() == i as u32)
            );
            let out = p
                .hybrid()
                .map(0..50u32, |x| x + 1, |x| async move { x * 2 })
                .await;
            assert!(
                out.iter()
                    .enumerate()
                    .all(|(i, r)| *r.as_ref().unwrap() == (i as u32 + 1) * 2)
            );
            let n = p
                .async_io()
                .as_completed(0..20u32, |x| async move { Ok::<_, ()>(x) })
                .count()
                .await;
            assert_eq!(n, 20);
        });
    }
}

#[test]
fn aimd_grows_when_half_used_and_backs_off_past_its_timeout() {
    use torque_parallel::limit::{Algorithm, Outcome, Sample};
    let mut aimd = Aimd::builder()
        .initial_limit(10)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let sample = |in_flight, latency, outcome| {
        Sample::new(std::time::Instant::now(), latency, in_flight, outcome)
    };
    let ms = Duration::from_millis;
    assert_eq!(aimd.update(&sample(4, ms(1), Outcome::Success)), 10);
    assert_eq!(aimd.update(&sample(5, ms(1), Outcome::Success)), 11);
    assert_eq!(aimd.update(&sample(5, ms(101), Outcome::Success)), 9);
    assert_eq!(aimd.update(&sample(5, ms(1), Outcome::Overload)), 8);
}

/// `AsyncIo`'s doc: "Every method comes in two forms: items from an
/// iterator (`map`) or from a `Stream` (`map_stream`)". `for_each` had no
/// `_stream` form (this did not compile).
#[tokio::test(start_paused = true)]
async fn async_for_each_has_a_stream_form() {
    let p = Processor::builder().async_limit(3).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    let summary = p
        .async_io()
        .timeout(Duration::from_millis(50))
        .for_each_stream(futures_util::stream::iter(0..12u64), move |x| {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::Relaxed);
                match x % 4 {
                    0 => tokio::time::sleep(Duration::from_secs(1)).await,
                    1 => panic!("item {x}"),
                    _ => {}
                }
            }
        })
        .await;
    assert_eq!(ran.load(Ordering::Relaxed), 12);
    assert_eq!((summary.timed_out, summary.panics.len()), (3, 3));
    let io = p.stats().io;
    assert_eq!((io.taken, io.succeeded), (12, 6), "{io:?}");
}

/// `with_cancel` on a handle that already has a token replaces it (now
/// documented): the first token no longer stops the new handle's batches.
#[test]
fn with_cancel_replaces_the_handles_token() {
    let (outer, inner) = (CancelToken::new(), CancelToken::new());
    let p = Processor::builder()
        .build()
        .unwrap()
        .with_cancel(outer.clone())
        .with_cancel(inner.clone());
    outer.cancel();
    assert!(p.map(&[1, 2, 3], |&x| x).iter().all(Result::is_ok));
    inner.cancel();
    assert!(
        p.map(&[1, 2, 3], |&x| x)
            .iter()
            .all(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
    );
}

#[cfg(feature = "tower")]
mod tower_layer_checks {
    use std::future::{Ready, poll_fn, ready};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use torque_parallel::limit::{ConcurrencyLimiter, Fixed, LimitLayer, Limiter, MockClock};
    use tower_layer::Layer;
    use tower_service::Service;

    #[derive(Clone)]
    struct Echo;

    impl Service<u32> for Echo {
        type Response = u32;
        type Error = &'static str;
        type Future = Ready<Result<u32, &'static str>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, x: u32) -> Self::Future {
            ready(if x == 0 { Err("zero") } else { Ok(x) })
        }
    }

    /// The guide: latency from `call`, not from `poll_ready`; `Ok` a
    /// success, `Err` ignored by default.
    #[tokio::test]
    async fn the_layer_times_from_call_and_ignores_errors_by_default() {
        let clock = MockClock::new();
        let limiter = ConcurrencyLimiter::with_clock(Fixed::new(2), clock.clone());
        let mut service = LimitLayer::new(limiter.clone()).layer(Echo);
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        assert_eq!(limiter.stats().in_flight, 1, "poll_ready holds the permit");
        clock.advance(Duration::from_secs(5));
        let response = service.call(7);
        clock.advance(Duration::from_millis(3));
        assert_eq!(response.await, Ok(7));
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        assert!(service.call(0).await.is_err());
        let s = limiter.stats();
        assert_eq!(
            (s.succeeded, s.ignored, s.overloaded, s.in_flight),
            (1, 1, 0, 0)
        );
        let p99 = s.latency_p99.unwrap();
        assert!(
            p99 >= Duration::from_millis(3) && p99 < Duration::from_millis(4),
            "{p99:?}"
        );
        // A ready service dropped without a call gives its permit back.
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        drop(service);
        assert_eq!(limiter.stats().in_flight, 0);
    }
}

/// The guide: "the linger counts from the send, so an item that waited
/// behind a slow write is not held again".
#[tokio::test(start_paused = true)]
async fn the_linger_counts_from_the_send() {
    let t0 = tokio::time::Instant::now();
    let writes = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let w = Arc::clone(&writes);
    let (batcher, driver) = Batcher::builder()
        .max_size(10)
        .max_linger(Duration::from_millis(50))
        .build(move |rows: Vec<u32>| {
            w.lock().push((t0.elapsed(), rows.len()));
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<(), ()>(())
            }
        })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let a = batcher.send(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let b = batcher.send(2).await.unwrap();
    a.await.unwrap();
    b.await.unwrap();
    drop(batcher);
    driver.await.unwrap();
    let writes = writes.lock();
    assert_eq!(writes.len(), 2, "{writes:?}");
    // First write at the linger's end (tokio's timer may end it up to 1 ms
    // early), the second as soon as the sink is free: its linger ran out
    // while it waited.
    assert!(writes[0].0 >= Duration::from_millis(49) && writes[0].0 <= Duration::from_millis(50));
    assert!(
        writes[1].0 <= writes[0].0 + Duration::from_millis(101),
        "{writes:?}"
    );
}

#[test]
fn batch_sizer_start_up_sizes_are_as_documented() {
    let first_two = |b: torque_parallel::batch::BatchSizerBuilder| {
        let mut s = b.build().unwrap();
        (s.next_size(), s.next_size())
    };
    assert_eq!(first_two(BatchSizer::builder()), (16, 32));
    assert_eq!(
        first_two(BatchSizer::builder().max_size(10)),
        (10, 5),
        "min(16, max)"
    );
    assert_eq!(
        first_two(BatchSizer::builder().min_size(20)),
        (20, 40),
        "at least min"
    );
    assert_eq!(
        first_two(BatchSizer::builder().min_size(16).max_size(20)),
        (16, 20),
        "no double, the half is the initial again: max_size"
    );
    assert_eq!(
        first_two(BatchSizer::builder().initial_size(600)),
        (600, 300),
        "the double is out of bounds: the half"
    );
    let (a, b) = first_two(BatchSizer::builder().initial_size(5_000));
    assert!(a <= 1000 && b <= 1000, "{a} {b}");
    assert_eq!(
        first_two(BatchSizer::builder().min_size(7).max_size(7)),
        (7, 7)
    );
}
