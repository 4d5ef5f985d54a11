//! Miss ratios on traces none of the tuning looked at, `Adaptive` (default
//! shards) against quick_cache, moka and `lru::LruCache`: a pure loop a
//! little larger than the cache, Zipf(1.0) mixed with a loop, Zipf(0.6) and
//! Zipf(1.2), and a Zipf(1.0) sample of 30,000 or 65,536 requests replayed
//! (a periodic job's traffic: every key comes back after the same number of
//! requests; the throughput bench replays its 65,536-request trace so);
//! and, with a weigher, Zipf(0.9) where the popular keys are the heavy
//! ones or the light ones.
//!
//! ```text
//! cargo run --release -p torque-benches --example cache_more_traces
//! ```

#[path = "../benches/cache_traces/mod.rs"]
mod cache_traces;
use cache_traces::{Rng, Zipf, key_of, zipf_trace};
use std::num::NonZeroUsize;
use torque_cache::LocalCache;

/// Miss ratio of `trace` through `f` (get, inserting on a miss).
fn misses(trace: &[u64], mut f: impl FnMut(u64) -> bool) -> f64 {
    trace.iter().filter(|&&k| !f(k)).count() as f64 / trace.len() as f64
}
/// quick_cache's weighter: the same weights.
#[derive(Clone)]
struct W(fn(u64) -> u32);
impl quick_cache::Weighter<u64, u64> for W {
    fn weight(&self, k: &u64, _: &u64) -> u64 {
        u64::from((self.0)(*k))
    }
}
/// The rank `key_of` made `key` from (its multiplier is odd, so it has an
/// inverse modulo 2^64, found by Newton's iteration).
fn rank_of(key: u64) -> u64 {
    let x = key ^ 0x5555_5555_5555_5555;
    let mut inv: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(inv)));
    }
    x.wrapping_mul(inv)
}
/// About 200 units for the most popular keys, falling with the log of the
/// rank to 1.
fn heavy_popular(k: u64) -> u32 {
    let r = rank_of(k);
    (200.0 / (1.0 + (r as f64).log2())).max(1.0) as u32
}
/// 1 unit for the most popular key, rising with the log of the rank.
fn light_popular(k: u64) -> u32 {
    let r = rank_of(k);
    (1.0 + (r as f64 + 1.0).log2() * 12.0) as u32
}

fn main() {
    let len = 1_000_000;
    let loop_trace: Vec<u64> = (0..len as u64).map(|i| key_of(i % 1500)).collect();
    let mut rng = Rng::new(5);
    let z = Zipf::new(100_000, 1.0);
    let loop_zipf: Vec<u64> = (0..len as u64)
        .map(|i| {
            if rng.next_u64().is_multiple_of(2) {
                key_of(z.sample(&mut rng))
            } else {
                key_of(500_000 + i % 3000)
            }
        })
        .collect();
    let periodic = |period: usize| -> Vec<u64> {
        let sample = zipf_trace(100_000, 1.0, period, 0xc0ffee);
        (0..len).map(|i| sample[i % period]).collect()
    };
    let traces = [
        ("loop 1500", loop_trace),
        ("zipf replayed 30000", periodic(30_000)),
        ("zipf replayed 65536", periodic(65_536)),
        ("zipf+loop3000", loop_zipf),
        ("zipf 0.6", zipf_trace(100_000, 0.6, len, 3)),
        ("zipf 1.2", zipf_trace(100_000, 1.2, len, 4)),
    ];
    println!("unweighted | trace | cap | ours | qc | moka | lru");
    for (name, t) in &traces {
        for cap in [1000usize, 10_000] {
            let ours: LocalCache<u64, u64> = LocalCache::new(cap as u64);
            let a = misses(t, |k| {
                let h = ours.get(&k).is_some();
                if !h {
                    ours.insert(k, k)
                }
                h
            });
            let q = quick_cache::sync::Cache::<u64, u64>::new(cap);
            let qm = misses(t, |k| {
                let h = q.get(&k).is_some();
                if !h {
                    q.insert(k, k)
                }
                h
            });
            let m = moka::sync::Cache::<u64, u64>::new(cap as u64);
            let mm = misses(t, |k| {
                let h = m.get(&k).is_some();
                if !h {
                    m.insert(k, k);
                    m.run_pending_tasks();
                }
                h
            });
            let mut l = lru::LruCache::new(NonZeroUsize::new(cap).unwrap());
            let lm = misses(t, |k| {
                let h = l.get(&k).is_some();
                if !h {
                    l.put(k, k);
                }
                h
            });
            println!("| {name} | {cap} | {a:.3} | {qm:.3} | {mm:.3} | {lm:.3} |");
        }
    }
    let zt = zipf_trace(100_000, 0.9, len, 9);
    println!("weighted | weights | cap | ours | qc | moka");
    for (wn, wf) in [
        ("heavy popular", heavy_popular as fn(u64) -> u32),
        ("light popular", light_popular as fn(u64) -> u32),
    ] {
        let avg: f64 = (0..100_000u64).map(|r| wf(key_of(r)) as f64).sum::<f64>() / 1e5;
        for cap in [20_000u64, 200_000] {
            let ours: LocalCache<u64, u64> = LocalCache::builder()
                .max_capacity(cap)
                .weigher(move |k: &u64, _: &u64| wf(*k))
                .build()
                .unwrap();
            let a = misses(&zt, |k| {
                let h = ours.get(&k).is_some();
                if !h {
                    ours.insert(k, k)
                }
                h
            });
            let q = quick_cache::sync::Cache::<u64, u64, W>::with_weighter(
                (cap as f64 / avg) as usize,
                cap,
                W(wf),
            );
            let qm = misses(&zt, |k| {
                let h = q.get(&k).is_some();
                if !h {
                    q.insert(k, k)
                }
                h
            });
            let m = moka::sync::Cache::<u64, u64>::builder()
                .max_capacity(cap)
                .weigher(move |k: &u64, _: &u64| wf(*k))
                .build();
            let mm = misses(&zt, |k| {
                let h = m.get(&k).is_some();
                if !h {
                    m.insert(k, k);
                    m.run_pending_tasks();
                }
                h
            });
            println!("| {wn} (avg {avg:.0}) | {cap} | {a:.3} | {qm:.3} | {mm:.3} |");
        }
    }
}
