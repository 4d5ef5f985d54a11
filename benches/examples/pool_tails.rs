//! Diagnostic: get-latency tails of torque-pool against tokio's FIFO
//! `Semaphore` (the bench's `fifo_bound`), interleaved rounds at one task
//! count, each round's p50 / p99 printed.
//!
//! `cargo run --release -p torque-benches --example pool_tails -- TASKS ROUNDS [MODE]`
//!
//! Each round also prints the process's context switches, the workers'
//! parks and busy time (tokio's stable runtime metrics), and the share of
//! gets slower than twice the median. Findings: docs/benchmarks.md.

use std::sync::Arc;
use std::time::Duration;

use torque_pool::Pool;

#[path = "../benches/common/pool_common.rs"]
mod pool_common;
use pool_common::{Noop, run_trimmed};

/// Each task's latencies but its first and last get, sorted.
async fn round<G: Send + 'static, Fut: Future<Output = G> + Send>(
    tasks: usize,
    per_task: usize,
    get: impl Fn() -> Fut + Clone + Send + 'static,
) -> Vec<Duration> {
    let mut all = run_trimmed(tasks, per_task, 1, get).await;
    all.sort();
    all
}

/// Context switches of this process's threads so far: (voluntary, involuntary).
fn switches() -> (u64, u64) {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let n = || {
                line.split_whitespace()
                    .last()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            };
            if line.starts_with("voluntary_ctxt_switches") {
                total.0 += n();
            } else if line.starts_with("nonvoluntary_ctxt_switches") {
                total.1 += n();
            }
        }
    }
    total
}

/// Share of gets that took more than twice the median.
fn slow_share(v: &[Duration]) -> f64 {
    let limit = pct(v, 0.5) * 2;
    v.iter().filter(|&&d| d > limit).count() as f64 / v.len() as f64
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let tasks = args.first().copied().unwrap_or(64);
    let rounds = args.get(1).copied().unwrap_or(5);
    // 0: both at TASKS; 1: the semaphore at 17 tasks only (barely
    // contended), to profile ours; 2: ours at 17 tasks, to profile the
    // semaphore.
    let only = args.get(2).copied().unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async {
        let pool = Pool::builder(Noop)
            .max_size(16)
            .min_idle(16)
            .acquire_timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut held = Vec::new();
        for _ in 0..16 {
            held.push(pool.get().await.unwrap());
        }
        pool
    });
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let per_task = 40_000 / tasks;
    let mut ratios = (Vec::new(), Vec::new());
    let m = rt.metrics();
    let snap = || {
        (0..2)
            .map(|w| {
                (
                    m.worker_park_count(w),
                    m.worker_park_unpark_count(w),
                    m.worker_total_busy_duration(w),
                )
            })
            .collect::<Vec<_>>()
    };
    let diff = |a: &[(u64, u64, Duration)], b: &[(u64, u64, Duration)]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                format!(
                    "park {} unpark {} busy {:?}",
                    y.0 - x.0,
                    y.1 - x.1,
                    y.2 - x.2
                )
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for r in 0..rounds {
        let p = pool.clone();
        let c0 = switches();
        let s0 = snap();
        let ours = rt.block_on(round(
            if only == 2 { 17 } else { tasks },
            per_task,
            move || {
                let p = p.clone();
                async move { p.get().await.unwrap() }
            },
        ));
        let s1 = snap();
        let c1 = switches();
        let s = sem.clone();
        let fifo = rt.block_on(round(
            if only == 1 { 17 } else { tasks },
            per_task,
            move || {
                let s = s.clone();
                async move { s.acquire_owned().await.unwrap() }
            },
        ));
        let s2 = snap();
        let c2 = switches();
        println!(
            "  ours: switches vol {} invol {}, slow share {:.3} | fifo: switches vol {} invol {}, slow share {:.3}",
            c1.0 - c0.0,
            c1.1 - c0.1,
            slow_share(&ours),
            c2.0 - c1.0,
            c2.1 - c1.1,
            slow_share(&fifo)
        );
        println!("  ours: {}\n  fifo: {}", diff(&s0, &s1), diff(&s1, &s2));
        let ro = pct(&ours, 0.99).as_secs_f64() / pct(&ours, 0.5).as_secs_f64();
        let rf = pct(&fifo, 0.99).as_secs_f64() / pct(&fifo, 0.5).as_secs_f64();
        println!(
            "round {r}: ours p50 {:?} p90 {:?} p99 {:?} ({ro:.2}) | fifo p50 {:?} p90 {:?} p99 {:?} ({rf:.2})",
            pct(&ours, 0.5),
            pct(&ours, 0.9),
            pct(&ours, 0.99),
            pct(&fifo, 0.5),
            pct(&fifo, 0.9),
            pct(&fifo, 0.99)
        );
        ratios.0.push(ro);
        ratios.1.push(rf);
    }
    ratios.0.sort_by(f64::total_cmp);
    ratios.1.sort_by(f64::total_cmp);
    println!(
        "median p99/p50: ours {:.2}, fifo {:.2}",
        ratios.0[rounds / 2],
        ratios.1[rounds / 2]
    );
}
