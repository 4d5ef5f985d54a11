//! What a limiter costs per request: `try_acquire` + `success` (two clock
//! reads, one lock round trip each way and the algorithm's update), for each
//! torque-parallel limit algorithm, single-threaded and with 2 threads
//! sharing one limiter. Peer in the same run: tokio's `Semaphore`
//! (`try_acquire` + drop), a plain permit count with no latency feedback.
//!
//!
//! `limit/queue` measures the wait line: 10,000 `acquire`s queued behind a
//! full limiter, each polled once more (as a `select!` or `timeout` re-polls
//! on any wake-up), then all cancelled newest first; tokio's `Semaphore`
//! (`acquire`, an intrusive list) in the same run.
//!
//! `cargo bench -p torque-benches --bench limit -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use torque_parallel::limit::{
    Adaptive, Aimd, Algorithm, ConcurrencyLimiter, Fixed, Gradient2, Limiter, Vegas, Windowed,
};

fn algorithms() -> Vec<(&'static str, Box<dyn Algorithm>)> {
    vec![
        ("Fixed", Box::new(Fixed::new(1000))),
        (
            "Aimd",
            Box::new(Aimd::builder().initial_limit(64).build().unwrap()),
        ),
        (
            "Vegas",
            Box::new(Vegas::builder().initial_limit(64).build().unwrap()),
        ),
        (
            "Vegas_windowed",
            Box::new(
                Windowed::builder(Vegas::builder().initial_limit(64).build().unwrap())
                    .build()
                    .unwrap(),
            ),
        ),
        (
            "Gradient2",
            Box::new(Gradient2::builder().initial_limit(64).build().unwrap()),
        ),
        (
            "Adaptive",
            Box::new(Adaptive::builder().initial_limit(64).build().unwrap()),
        ),
    ]
}

/// `iters` requests split over `threads` threads; returns the wall time.
fn run_threads(threads: usize, iters: u64, one: &Arc<dyn Fn() + Send + Sync>) -> Duration {
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let one = one.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters / threads as u64 {
                    one();
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for handle in handles {
        handle.join().unwrap();
    }
    start.elapsed()
}

fn acquire_complete(c: &mut Criterion) {
    let mut group = c.benchmark_group("limit/acquire_complete");
    for threads in [1usize, 2] {
        for (name, algorithm) in algorithms() {
            let limiter = ConcurrencyLimiter::new(algorithm);
            group.bench_function(BenchmarkId::new(name, format!("{threads}t")), |b| {
                if threads == 1 {
                    b.iter(|| {
                        if let Ok(token) = black_box(&limiter).try_acquire() {
                            token.success();
                        }
                    });
                } else {
                    let limiter = limiter.clone();
                    let one: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                        if let Ok(token) = black_box(&limiter).try_acquire() {
                            token.success();
                        }
                    });
                    b.iter_custom(|iters| run_threads(threads, iters, &one));
                }
            });
        }
        let semaphore = Arc::new(tokio::sync::Semaphore::new(1000));
        group.bench_function(
            BenchmarkId::new("tokio_Semaphore", format!("{threads}t")),
            |b| {
                if threads == 1 {
                    b.iter(|| drop(black_box(&semaphore).try_acquire()));
                } else {
                    let semaphore = semaphore.clone();
                    let one: Arc<dyn Fn() + Send + Sync> =
                        Arc::new(move || drop(black_box(&semaphore).try_acquire()));
                    b.iter_custom(|iters| run_threads(threads, iters, &one));
                }
            },
        );
    }
    group.finish();
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: std::future::Future + ?Sized>(future: std::pin::Pin<&mut F>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    future.poll(&mut cx).is_ready()
}

/// Queues `n` waiters made by `acquire` behind a limiter held full, polls
/// each once more, then drops them newest first; returns the wall time
/// of the re-polls and the drops.
fn queue_round<F: std::future::Future>(n: usize, acquire: impl Fn() -> F) -> Duration {
    let mut waiters: Vec<_> = (0..n).map(|_| Box::pin(acquire())).collect();
    for waiter in &mut waiters {
        assert!(!poll_once(waiter.as_mut()), "the limiter is full");
    }
    let start = Instant::now();
    for waiter in &mut waiters {
        assert!(!poll_once(waiter.as_mut()));
    }
    while let Some(waiter) = waiters.pop() {
        drop(waiter);
    }
    start.elapsed()
}

fn queue(c: &mut Criterion) {
    const WAITERS: usize = 10_000;
    let mut group = c.benchmark_group("limit/queue");
    group.sample_size(10);
    let limiter = ConcurrencyLimiter::new(Fixed::new(1));
    let held = limiter.try_acquire().expect("an empty limiter admits one");
    group.bench_function(BenchmarkId::new("ConcurrencyLimiter", WAITERS), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| queue_round(WAITERS, || limiter.acquire_owned()))
                .sum()
        });
    });
    drop(held);
    let semaphore = tokio::sync::Semaphore::new(1);
    let held = semaphore
        .try_acquire()
        .expect("an empty semaphore admits one");
    group.bench_function(BenchmarkId::new("tokio_Semaphore", WAITERS), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| queue_round(WAITERS, || semaphore.acquire()))
                .sum()
        });
    });
    drop(held);
    group.finish();
}

criterion_group!(benches, acquire_complete, queue);
criterion_main!(benches);
