//! torque-parallel's `Async` strategy against a hand-written
//! `futures::stream::iter(..).map(..).buffer_unordered(N)`, side by side in
//! one group, at N = 4, 16 and 64 (ours under a `Fixed(N)` limiter, so both
//! run N requests at once), plus ours under its default adaptive limiter.
//!
//! The backend is simulated: 1 000 requests, request *i* waits
//! 1 + (*i* × 7 mod 10) ms on tokio's **paused** clock, which advances as
//! soon as every task waits. The sleeps therefore cost no wall time and the
//! figure is what each approach costs in CPU to run the same schedule: task
//! spawns, limiter permits and result ordering for ours, one task's
//! `FuturesUnordered` for the peer. Both collect the results in input order.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use torque_parallel::Processor;
use torque_parallel::limit::{ConcurrencyLimiter, Fixed};

const ITEMS: u64 = 1_000;

async fn request(i: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(1 + (i * 7) % 10)).await;
    i
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn async_vs_buffer_unordered(c: &mut Criterion) {
    let rt = paused_runtime();
    let p = Processor::builder().build().expect("processor");
    let mut group = c.benchmark_group("async_io");
    group.sample_size(20);
    for n in [4usize, 16, 64] {
        group.bench_with_input(BenchmarkId::new("torque_fixed", n), &n, |b, &n| {
            b.iter(|| {
                rt.block_on(async {
                    let limiter = ConcurrencyLimiter::new(Fixed::new(n));
                    let out = p
                        .async_io()
                        .with_limiter(limiter)
                        .map(0..ITEMS, request)
                        .await;
                    assert_eq!(out.len(), ITEMS as usize);
                })
            });
        });
        group.bench_with_input(BenchmarkId::new("buffer_unordered", n), &n, |b, &n| {
            b.iter(|| {
                rt.block_on(async {
                    let mut out: Vec<Option<u64>> = vec![None; ITEMS as usize];
                    let mut done = futures_util::stream::iter(0..ITEMS)
                        .map(|i| async move { (i, request(i).await) })
                        .buffer_unordered(n);
                    while let Some((i, v)) = done.next().await {
                        out[i as usize] = Some(v);
                    }
                    assert!(out.iter().all(Option::is_some));
                })
            });
        });
    }
    group.bench_function("torque_adaptive", |b| {
        b.iter(|| {
            rt.block_on(async {
                let out = p.async_io().map(0..ITEMS, request).await;
                assert_eq!(out.len(), ITEMS as usize);
            })
        });
    });
    group.finish();
}

criterion_group!(benches, async_vs_buffer_unordered);
criterion_main!(benches);
