//! Throughput beyond the issue's one cell (capacity 10k, Zipf(1.0) over
//! 100k keys, 10 % writes): capacities from 1k to 1M entries, key spaces of
//! ten times the capacity, Zipf(0.8) and Zipf(1.0), 0 %, 10 % and 50 %
//! writes, and a read-only cache that holds every key; `Adaptive` and `Lru`
//! against quick_cache and `Mutex<lru::LruCache>`, one thread. A cache
//! tuned on one cell must not fall far behind in the others.
//!
//! ```text
//! cargo run --release -p torque-benches --example cache_throughput_sweep
//! ```
//!
//! With arguments `CAPACITY KEYS ZIPF WRITES` it runs that one cell only;
//! `ROUNDS=n` in the environment sets the rounds and `REQUESTS=n` the
//! requests per timed run, and `ONLY=name` keeps one contender (for a
//! profiler).
//!
//! Each contender replays the same seeded trace (a get, inserting on a
//! miss; or a write) after one warm-up pass; each cell times every
//! contender `ROUNDS` times, each round starting with the next contender,
//! and prints the median nanoseconds per request and the median of the
//! per-round ratios against quick_cache (ours ÷ peer: above 1 is slower),
//! so that a slow stretch of a shared machine falls on all of them alike.
//! Read hits per contender are printed too: a cache with more hits does
//! less work per request.

#[path = "../benches/cache_traces/mod.rs"]
mod cache_traces;
#[path = "../benches/common/contenders.rs"]
mod contenders;

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::Instant;

use cache_traces::{Rng, zipf_trace};
use contenders::Contender;
use parking_lot::Mutex;
use torque_cache::{LocalCache, Policy};

const ROUNDS: usize = 7;
/// Requests of one timed run (the trace is replayed as often as needed).
const REQUESTS: usize = 1 << 21;

const NAMES: [&str; 4] = ["Adaptive", "Lru", "quick_cache", "Mutex<LruCache>"];

fn build(which: usize, capacity: usize) -> Box<dyn Contender> {
    let ours = |policy| {
        Box::new(
            LocalCache::<u64, u64>::builder()
                .max_capacity(capacity as u64)
                .policy(policy)
                .build()
                .expect("valid config"),
        ) as Box<dyn Contender>
    };
    match which {
        0 => ours(Policy::Adaptive),
        1 => ours(Policy::Lru),
        2 => Box::new(quick_cache::sync::Cache::<u64, u64>::new(capacity)),
        _ => Box::new(Mutex::new(lru::LruCache::<u64, u64>::new(
            NonZeroUsize::new(capacity).expect("non-zero"),
        ))),
    }
}

/// Replays `work` for `n` requests; returns the read hits.
fn run(cache: &dyn Contender, work: &[(u64, bool)], n: usize) -> u64 {
    let mut hits = 0;
    for i in 0..n {
        let (k, write) = work[i % work.len()];
        if write {
            cache.insert(k, k);
        } else if cache.get(black_box(k)).is_some() {
            hits += 1;
        } else {
            cache.insert(k, k);
        }
    }
    hits
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[allow(clippy::type_complexity)]
fn main() {
    println!(
        "| capacity | keys | Zipf | writes | contender | ns per request | ÷ quick_cache | read hits |"
    );
    println!("|---:|---:|---:|---:|---|---:|---:|---:|");
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, requests) = (env("ROUNDS", ROUNDS), env("REQUESTS", REQUESTS));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let one = match args.as_slice() {
        [c, k, s, w] => Some((
            c.parse().expect("capacity"),
            k.parse().expect("keys"),
            s.parse().expect("Zipf exponent"),
            w.parse().expect("write percent"),
        )),
        _ => None,
    };
    for capacity in [1_000usize, 10_000, 100_000, 1_000_000] {
        // (keys, Zipf exponent, write percent); the last holds every key.
        let cells = [
            (capacity * 10, 0.8, 10),
            (capacity * 10, 1.0, 0),
            (capacity * 10, 1.0, 10),
            (capacity * 10, 1.0, 50),
            (capacity, 1.0, 0),
        ];
        for (keys, s, writes) in cells {
            if one.is_some_and(|one| one != (capacity, keys, s, writes)) {
                continue;
            }
            let len = (capacity * 4).next_power_of_two().max(1 << 16);
            let mut rng = Rng::new(0xfeed);
            let work: Vec<(u64, bool)> = zipf_trace(keys, s, len, 0xc0ffee)
                .into_iter()
                .map(|k| (k, rng.next_u64() % 100 < writes))
                .collect();
            let caches: Vec<Box<dyn Contender>> =
                (0..NAMES.len()).map(|w| build(w, capacity)).collect();
            let mut hits = [0u64; NAMES.len()];
            for (cache, hits) in caches.iter().zip(&mut hits) {
                // Warm-up: fill the cache (and hold every key in the last
                // cell).
                run(cache.as_ref(), &work, work.len());
                *hits = run(cache.as_ref(), &work, work.len());
            }
            let mut times = vec![Vec::new(); NAMES.len()];
            let only = std::env::var("ONLY").ok();
            for round in 0..rounds {
                for i in 0..NAMES.len() {
                    let which = (round + i) % NAMES.len();
                    if only.as_deref().is_some_and(|o| o != NAMES[which]) {
                        times[which].push(f64::NAN);
                        continue;
                    }
                    let start = Instant::now();
                    black_box(run(caches[which].as_ref(), &work, requests));
                    times[which].push(start.elapsed().as_secs_f64() * 1e9 / requests as f64);
                }
            }
            let peer = times[2].clone();
            for (which, name) in NAMES.iter().enumerate() {
                let ratios = times[which].iter().zip(&peer).map(|(a, b)| a / b).collect();
                println!(
                    "| {capacity} | {keys} | {s} | {writes} % | {name} | {:.1} | {:.2} | {} |",
                    median(times[which].clone()),
                    median(ratios),
                    hits[which],
                );
            }
        }
    }
}
