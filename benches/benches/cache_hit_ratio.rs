//! Miss ratios of torque-cache's policies and of peer caches on the same
//! seeded traces: Zipf(0.8) and Zipf(1.0), 1M requests over 100k keys, and a
//! scan/loop mix, at 1k and 10k entries (the cells). A second table
//! adds traces beyond those cells, where popularity does not last: recency
//! (an LRU stack-distance model) and a Zipf ranking that shifts; and one
//! where a scan looks recent (each scan key asked for twice). The tables
//! (printed to stderr) are the result; the criterion group only times a
//! trace replay.
//!
//! Each request is a read; a miss is followed by an insert (demand fill).

mod cache_traces;

use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::num::NonZeroUsize;

use criterion::{BenchmarkId, Criterion, criterion_group};
use torque_cache::{LocalCache, Policy};

use cache_traces::{
    double_touch_scan_trace, recency_trace, scan_loop_trace, shifting_zipf_trace, zipf_trace,
};

const REQUESTS: usize = 1_000_000;
const KEYS: usize = 100_000;
const CAPACITIES: [usize; 2] = [1_000, 10_000];

type Access = Box<dyn FnMut(u64) -> bool>;

fn ours(policy: Policy, capacity: usize, shards: Option<usize>) -> Access {
    let mut b = LocalCache::builder()
        .max_capacity(capacity as u64)
        .policy(policy);
    if let Some(n) = shards {
        b = b.shards(n);
    }
    let cache: LocalCache<u64, u64> = b.build().expect("valid config");
    Box::new(move |k| {
        if cache.get(&k).is_some() {
            return true;
        }
        cache.insert(k, k);
        false
    })
}

fn quick(capacity: usize) -> Access {
    let cache: quick_cache::sync::Cache<u64, u64> = quick_cache::sync::Cache::new(capacity);
    Box::new(move |k| {
        if cache.get(&k).is_some() {
            return true;
        }
        cache.insert(k, k);
        false
    })
}

fn moka(capacity: usize) -> Access {
    let cache: moka::sync::Cache<u64, u64> = moka::sync::Cache::new(capacity as u64);
    Box::new(move |k| {
        if cache.get(&k).is_some() {
            return true;
        }
        cache.insert(k, k);
        false
    })
}

fn lru(capacity: usize) -> Access {
    let mut cache = lru::LruCache::new(NonZeroUsize::new(capacity).expect("non-zero"));
    Box::new(move |k| {
        if cache.get(&k).is_some() {
            return true;
        }
        cache.put(k, k);
        false
    })
}

fn contenders(capacity: usize) -> Vec<(&'static str, Access)> {
    vec![
        ("torque Adaptive", ours(Policy::Adaptive, capacity, None)),
        (
            "torque Adaptive (1 shard)",
            ours(Policy::Adaptive, capacity, Some(1)),
        ),
        ("torque Lru", ours(Policy::Lru, capacity, None)),
        ("torque Lru (1 shard)", ours(Policy::Lru, capacity, Some(1))),
        ("torque Lfu", ours(Policy::Lfu, capacity, None)),
        ("torque Fifo", ours(Policy::Fifo, capacity, None)),
        ("quick_cache 0.7 (sync)", quick(capacity)),
        ("moka 0.12 (sync)", moka(capacity)),
        ("lru 0.19 LruCache", lru(capacity)),
    ]
}

fn miss_ratio(access: &mut Access, trace: &[u64]) -> f64 {
    let misses = trace.iter().filter(|&&k| !access(k)).count();
    misses as f64 / trace.len() as f64
}

/// Belady's MIN with bypass, the offline optimum: on a miss with the cache
/// full, evict whichever of the residents and the newcomer is next used
/// farthest in the future.
fn belady(trace: &[u64], capacity: usize) -> f64 {
    let mut next = vec![usize::MAX; trace.len()];
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, k) in trace.iter().enumerate().rev() {
        next[i] = seen.insert(*k, i).unwrap_or(usize::MAX);
    }
    let mut resident: HashMap<u64, usize> = HashMap::new();
    let mut order: BTreeSet<(usize, u64)> = BTreeSet::new();
    let mut misses = 0usize;
    for (i, &k) in trace.iter().enumerate() {
        if let Some(use_at) = resident.remove(&k) {
            order.remove(&(use_at, k));
        } else {
            misses += 1;
            if resident.len() == capacity {
                match order.last() {
                    Some(&(farthest, victim)) if farthest > next[i] => {
                        order.pop_last();
                        resident.remove(&victim);
                    }
                    _ => continue,
                }
            }
        }
        resident.insert(k, next[i]);
        order.insert((next[i], k));
    }
    misses as f64 / trace.len() as f64
}

fn traces() -> Vec<(&'static str, Vec<u64>)> {
    vec![
        ("Zipf 0.8", zipf_trace(KEYS, 0.8, REQUESTS, 0x7f4a_7c15)),
        ("Zipf 1.0", zipf_trace(KEYS, 1.0, REQUESTS, 0x9e37_79b9)),
        ("scan/loop", scan_loop_trace(REQUESTS, 0x1234_5678)),
    ]
}

/// Beyond the cells: no goal is set on these, they show where a
/// frequency filter is weakest.
fn recency_traces() -> Vec<(&'static str, Vec<u64>)> {
    vec![
        (
            "recency",
            recency_trace(REQUESTS, 0.8, 50_000, 2.0, 0x0bad_5eed),
        ),
        (
            "shifting Zipf 0.9",
            shifting_zipf_trace(KEYS, 0.9, REQUESTS, 100_000, 0x5eed_0001),
        ),
        (
            "Zipf + twice-touched scan",
            double_touch_scan_trace(REQUESTS, 500, 0x5eed_0002),
        ),
    ]
}

fn print_table(title: &str, traces: &[(&'static str, Vec<u64>)]) {
    let mut header = String::from("| cache |");
    let mut rule = String::from("|---|");
    for (name, _) in traces {
        for cap in CAPACITIES {
            header.push_str(&format!(" {name} @{}k |", cap / 1000));
            rule.push_str("---:|");
        }
    }
    let names: Vec<&str> = contenders(1).into_iter().map(|(n, _)| n).collect();
    let mut rows: Vec<String> = names.iter().map(|n| format!("| {n} |")).collect();
    let mut optimum = String::from("| Belady (offline optimum) |");
    let mut best: Vec<(f64, f64)> = Vec::new();
    for (_, trace) in traces {
        for cap in CAPACITIES {
            let mut peer_best = f64::MAX;
            let mut adaptive = 0.0;
            for (i, (name, mut access)) in contenders(cap).into_iter().enumerate() {
                let ratio = miss_ratio(&mut access, trace);
                rows[i].push_str(&format!(" {ratio:.3} |"));
                if name == "torque Adaptive" {
                    adaptive = ratio;
                } else if !name.starts_with("torque") {
                    peer_best = peer_best.min(ratio);
                }
            }
            best.push((adaptive, peer_best));
            optimum.push_str(&format!(" {:.3} |", belady(trace, cap)));
        }
    }
    rows.push(optimum);
    eprintln!("\n{title}: miss ratio (lower is better), {REQUESTS} requests per trace\n");
    eprintln!("{header}");
    eprintln!("{rule}");
    for row in rows {
        eprintln!("{row}");
    }
    let cells = best.len();
    let wins = best.iter().filter(|(a, p)| a <= p).count();
    eprintln!("\nAdaptive at or below the best peer in {wins} of {cells} cells");
    for (cell, (a, p)) in best.iter().enumerate() {
        if a > p {
            eprintln!("  cell {}: Adaptive {a:.4} > best peer {p:.4}", cell + 1);
        }
    }
    eprintln!();
}

fn replay(c: &mut Criterion) {
    let trace = zipf_trace(KEYS, 1.0, 100_000, 0x9e37_79b9);
    let mut group = c.benchmark_group("hit_ratio_replay_zipf1.0_10k");
    group.sample_size(10);
    for (name, mut access) in contenders(10_000) {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| black_box(miss_ratio(&mut access, &trace)))
        });
    }
    group.finish();
}

criterion_group!(benches, replay);

fn main() {
    if !std::env::args().any(|a| a == "--list") {
        print_table("The issue's cells", &traces());
        print_table("Beyond the issue's cells", &recency_traces());
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
