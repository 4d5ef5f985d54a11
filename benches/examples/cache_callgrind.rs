//! The throughput bench's workload (90 % `get`, 10 % `insert`, a miss also
//! inserts; Zipf(1.0) over 100k keys, capacity 10k) on one thread, without
//! criterion, for instruction and cache-miss counts under callgrind, which
//! unlike wall-clock time do not move with the load of a shared machine:
//!
//! ```text
//! cargo build --release -p torque-benches --example cache_callgrind
//! valgrind --tool=callgrind target/release/examples/cache_callgrind adaptive 1000000
//! ```
//!
//! Arguments: policy (`adaptive`, `lru`, `fifo`, `lfu`, `ttl`; default
//! `adaptive`) or a peer (`quick_cache`, `mutex_lru`), and the number of
//! requests after a warm-up pass (default 2^20), and the number of threads
//! (default 1), each replaying its own seeded trace, for wall-clock runs.
//!
//! Our caches' default hasher is randomly seeded, which moves the count by up
//! to about 3 instructions per request between two runs of one binary. With
//! `SEED=n` in the environment they hash with foldhash at the fixed seed `n`
//! instead (the same hash function), so that two builds of the policy can be
//! compared to the instruction. With `TTL=secs` our caches have that
//! cache-wide time-to-live (long enough that nothing expires in a run), for
//! what expiry costs the read and write paths; `TTI=secs` likewise sets a
//! time-to-idle. `WRITES=percent` sets the share of writes (default 10).

#[path = "../benches/cache_traces/mod.rs"]
mod cache_traces;
#[path = "../benches/common/contenders.rs"]
mod contenders;

use std::num::NonZeroUsize;

use cache_traces::{Rng, zipf_trace};
use contenders::Contender;
use parking_lot::Mutex;
use torque_cache::{LocalCache, Policy};

fn ours(policy: Policy) -> Box<dyn Contender> {
    let mut builder = LocalCache::<u64, u64>::builder()
        .max_capacity(10_000)
        .policy(policy);
    // `TTL=secs`: a cache-wide time-to-live, long enough that nothing
    // expires during the run, to measure what expiry costs the read and
    // write paths.
    if let Some(secs) = std::env::var("TTL").ok().and_then(|s| s.parse().ok()) {
        builder = builder.time_to_live(std::time::Duration::from_secs(secs));
    }
    // `TTI=secs`: likewise a time-to-idle, which a read also refreshes.
    if let Some(secs) = std::env::var("TTI").ok().and_then(|s| s.parse().ok()) {
        builder = builder.time_to_idle(std::time::Duration::from_secs(secs));
    }
    match std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => Box::new(
            builder
                .hasher(foldhash::fast::FixedState::with_seed(seed))
                .build()
                .expect("valid config"),
        ),
        None => Box::new(builder.build().expect("valid config")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).map_or("adaptive", String::as_str);
    let cache: Box<dyn Contender> = match name {
        "lru" => ours(Policy::Lru),
        "fifo" => ours(Policy::Fifo),
        "lfu" => ours(Policy::Lfu),
        "ttl" => ours(Policy::Ttl),
        "quick_cache" => Box::new(quick_cache::sync::Cache::<u64, u64>::new(10_000)),
        "mutex_lru" => Box::new(Mutex::new(lru::LruCache::<u64, u64>::new(
            NonZeroUsize::new(10_000).expect("non-zero"),
        ))),
        "adaptive" => ours(Policy::Adaptive),
        other => panic!(
            "unknown cache {other:?}: adaptive, lru, fifo, lfu, ttl, quick_cache or mutex_lru"
        ),
    };
    let requests: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1 << 20);
    let threads: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    // `WRITES=percent`: the share of requests that are writes (default 10,
    // the issue's workload), for other mixes.
    let writes: u64 = std::env::var("WRITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .min(100);
    // Per thread: its own seeded trace (thread 0's is the one-thread trace).
    let works: Vec<Vec<(u64, bool)>> = (0..threads)
        .map(|t| {
            let keys = zipf_trace(100_000, 1.0, 1 << 16, 0xc0ffee + t);
            let mut rng = Rng::new(0xfeed + t);
            keys.into_iter()
                .map(|k| (k, rng.next_u64() % 100 < writes))
                .collect()
        })
        .collect();
    let cache = cache.as_ref();
    let run = |work: &[(u64, bool)], n: usize| {
        let mut hits = 0u64;
        for i in 0..n {
            let (k, write) = work[i & (work.len() - 1)];
            if write {
                cache.insert(k, k);
            } else if cache.get(k).is_some() {
                hits += 1;
            } else {
                cache.insert(k, k);
            }
        }
        hits
    };
    for work in &works {
        run(work, work.len());
    }
    let start = std::time::Instant::now();
    let hits: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = works
            .iter()
            .map(|work| s.spawn(move || run(work, requests)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .sum()
    });
    let total = requests as f64 * threads as f64;
    let nanos = start.elapsed().as_nanos() as f64 / total;
    println!(
        "{name}: {threads} thread(s) x {requests} requests, {hits} read hits, \
         {nanos:.1} ns wall per request"
    );
}
