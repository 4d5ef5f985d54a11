//! The processor's default `Adaptive` limiter on items whose latency is
//! bimodal: a share of them are cache hits (1 ms), the rest also call a
//! backend of 32 connections (20 ms more). Batches of 500 items for 20 s on
//! tokio's paused clock (deterministic); prints, per hit share, the limit
//! the processor ends at and the items served per second; then the same
//! with the documented workaround: the batch at a fixed `async_limit`, and
//! a shared `ConcurrencyLimiter` (`Adaptive`) around the backend call alone.
//!
//! `cargo run --release -p torque-parallel --features tokio --example bimodal_limit`
//!
//! On 2026-12-07 (the commit that added this example) the limit collapsed
//! to 1 at 50 % and 75 % hits (157 and 298 items/s against 1,487 with no
//! hits; 95 %: limit 512, 23,746 items/s; with the workaround, limits of
//! 32–34 and 1,523 / 3,038 / 6,037 / 23,238 items/s): a window
//! that closed on its first, fast completions took the hits' latency for
//! the no-load latency. Since windows wait for every request in flight at
//! their cut-off: limits 35 / 38 / 201 / 512, 1,487 / 2,958 / 6,129 /
//! 23,694 items/s (docs/parallel.md, "Items that are not all backend
//! calls").

use std::sync::Arc;
use std::time::Duration;

use torque_parallel::limit::{Adaptive, ConcurrencyLimiter, Limiter};
use torque_parallel::{Processor, TokioClock};

/// Runs the traffic; with `backend_limiter`, the workaround. Returns the
/// limit that ends up governing the backend calls, and items per second.
async fn run(hit_percent: u64, backend_limiter: bool) -> (usize, f64) {
    let connections = Arc::new(tokio::sync::Semaphore::new(32));
    let limiter = ConcurrencyLimiter::with_clock(Adaptive::default(), TokioClock);
    let processor = if backend_limiter {
        Processor::builder().async_limit(1_000).build()
    } else {
        Processor::builder().build()
    }
    .expect("processor");
    let start = tokio::time::Instant::now();
    let (mut served, mut round) = (0usize, 0u64);
    while start.elapsed() < Duration::from_secs(20) {
        let items: Vec<u64> = (0..500).collect();
        let connections = Arc::clone(&connections);
        let limiter = limiter.clone();
        let out = processor
            .async_io()
            .map(items, move |i| {
                let connections = Arc::clone(&connections);
                let limiter = limiter.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    // A deterministic mix: `hit_percent` of every 100 items hit.
                    if (i * 37 + round) % 100 >= hit_percent {
                        let token = backend_limiter.then_some(limiter.acquire().await);
                        let _connection = connections.acquire().await.expect("open");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if let Some(token) = token {
                            token.success();
                        }
                    }
                }
            })
            .await;
        served += out.len();
        round += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let limit = if backend_limiter {
        limiter.limit()
    } else {
        processor.stats().io.limit
    };
    (limit, served as f64 / seconds)
}

fn main() {
    for (title, backend_limiter) in [
        ("the processor's own limiter", false),
        ("a limiter around the backend call", true),
    ] {
        println!("{title}\nhits %   limit   items/s");
        for hits in [0, 50, 75, 95] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            let (limit, rate) = runtime.block_on(run(hits, backend_limiter));
            println!("{hits:>6}   {limit:>5}   {rate:>7.0}");
        }
    }
}
