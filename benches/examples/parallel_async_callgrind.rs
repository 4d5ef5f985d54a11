//! Instruction counts of the `Async` strategy against `buffer_unordered` on
//! the simulated backend of `benches/parallel_async.rs`, for callgrind
//! (repeatable on a shared machine, unlike time):
//!
//! ```text
//! cargo build --release -p torque-benches --example parallel_async_callgrind
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/parallel_async_callgrind MODE N ITEMS
//! ```
//!
//! MODE: `torque` (`async_io()` under `Fixed(N)`), `torque-cancel` (the
//! same with a cancel token that is never cancelled: what the token's
//! bookkeeping costs), `torque-adaptive` (the
//! processor's default limiter; N unused), `buffer_unordered` (the
//! hand-written peer) or `hybrid` (`hybrid()` under `Fixed(N)`, an identity
//! CPU stage on rayon before the same I/O; rayon's threads make its count
//! vary by a few per cent from run to run). The cost per item is the difference in instructions
//! between ITEMS and 0 items, divided by ITEMS. The sleeps run on tokio's
//! paused clock, so they add timer work but no waiting.

use std::time::Duration;

use futures_util::StreamExt;
use torque_parallel::Processor;
use torque_parallel::limit::{ConcurrencyLimiter, Fixed};

async fn request(i: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(1 + (i * 7) % 10)).await;
    i
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: parallel_async_callgrind torque|torque-cancel|torque-adaptive|buffer_unordered|hybrid N ITEMS";
    let (Some(mode), Some(n), Some(items)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (Ok(n), Ok(items)) = (n.parse::<usize>(), items.parse::<u64>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let p = Processor::builder().build().expect("processor");
    let done = rt.block_on(async {
        match mode.as_str() {
            "torque" => p
                .async_io()
                .with_limiter(ConcurrencyLimiter::new(Fixed::new(n)))
                .map(0..items, request)
                .await
                .len(),
            "torque-adaptive" => p.async_io().map(0..items, request).await.len(),
            "torque-cancel" => p
                .with_cancel(torque_parallel::CancelToken::new())
                .async_io()
                .with_limiter(ConcurrencyLimiter::new(Fixed::new(n)))
                .map(0..items, request)
                .await
                .len(),
            "hybrid" => p
                .hybrid()
                .with_limiter(ConcurrencyLimiter::new(Fixed::new(n)))
                .map(0..items, |i| i, request)
                .await
                .len(),
            "buffer_unordered" => {
                let mut out: Vec<Option<u64>> = vec![None; items as usize];
                let mut done = futures_util::stream::iter(0..items)
                    .map(|i| async move { (i, request(i).await) })
                    .buffer_unordered(n.max(1));
                while let Some((i, v)) = done.next().await {
                    out[i as usize] = Some(v);
                }
                out.len()
            }
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    });
    println!("{mode} N={n}: {done} items");
}
