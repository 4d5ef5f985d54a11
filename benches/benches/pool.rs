//! torque-pool against deadpool and bb8, in the same run.
//!
//! - `pool_get_return/<pool>/<tasks>`: get + hold across one yield + return,
//!   with a no-op manager, 16 connections, 1/8/64/512 tasks, each pool with
//!   its default health checks on (deadpool's recycle, bb8's
//!   `test_on_check_out`, ours `is_broken` + check after the bypass window),
//!   and deadpool once more with a 30 s wait timeout (`deadpool_timeout`),
//!   since ours and bb8 time out by default and deadpool does not.
//! - Before criterion runs, a table of per-`get` latency p50/p99 at 64 and
//!   512 tasks in the steady state (each task's first and last get left
//!   out; FIFO tails: the goal is p99 <= 1.3x p50 at 512), with a
//!   reference row `fifo_bound`: tokio's FIFO `Semaphore` with 16 permits;
//!   then, from one more round per pool, the serving order: for each get,
//!   how many other gets were served while it waited (a strict FIFO serves
//!   about tasks - connections every time), which the machine's scheduling
//!   does not blur the way it blurs latency.
//! - `pool_select1/<how>`: `SELECT 1` at 64 tasks through our pool of 16
//!   connections (health checks on) against 16 tasks with a dedicated
//!   connection each (real PostgreSQL from the testkit), and through
//!   deadpool-postgres and bb8-postgres at 64 tasks on 16 connections with
//!   their defaults (deadpool: `is_closed` on recycle; bb8: a round trip
//!   before every checkout, and once more without it).
//! - `pool_spike/<pool>/50`: the spike. A fresh pool (max 20) with 5
//!   warm connections, connects that take 150 ms (a manager that sleeps, so
//!   that only the pools' decisions differ), and 50 requests at once, each
//!   holding its connection 2 ms: the time until all 50 are served and back.
//!   Before criterion runs, a table of that time, the longest single wait and
//!   the connects each pool started (HikariCP's point: a returned connection
//!   should serve a waiter instead of a new connect).

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use torque_pool::{PgManager, Pool};

const CONNECTIONS: usize = 16;
const TASKS: [usize; 4] = [1, 8, 64, 512];

#[path = "common/pool_common.rs"]
mod pool_common;
use pool_common::{Noop, run_trimmed};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The three pools, warmed to `CONNECTIONS` connections.
struct Pools {
    torque: Pool<Noop>,
    deadpool: deadpool::managed::Pool<Noop>,
    /// deadpool with a wait timeout, as ours and bb8 have by default.
    deadpool_timeout: deadpool::managed::Pool<Noop>,
    bb8: bb8::Pool<Noop>,
}

async fn pools() -> Pools {
    let torque = Pool::builder(Noop)
        .max_size(CONNECTIONS)
        .min_idle(CONNECTIONS)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let deadpool = deadpool::managed::Pool::builder(Noop)
        .max_size(CONNECTIONS)
        .build()
        .unwrap();
    let deadpool_timeout = deadpool::managed::Pool::builder(Noop)
        .max_size(CONNECTIONS)
        .wait_timeout(Some(Duration::from_secs(30)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .unwrap();
    let bb8 = bb8::Pool::builder()
        .max_size(CONNECTIONS as u32)
        .min_idle(Some(CONNECTIONS as u32))
        .connection_timeout(Duration::from_secs(30))
        .build(Noop)
        .await
        .unwrap();
    // Warm every pool to its full size.
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push((
            torque.get().await.unwrap(),
            deadpool.get().await.unwrap(),
            deadpool_timeout.get().await.unwrap(),
            bb8.get_owned().await.unwrap(),
        ));
    }
    drop(held);
    Pools {
        torque,
        deadpool,
        deadpool_timeout,
        bb8,
    }
}

/// Runs `tasks` tasks doing `per_task` rounds of get, yield, return; returns
/// every get's latency.
async fn run<G, F, Fut>(tasks: usize, per_task: usize, get: F) -> Vec<Duration>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = G> + Send,
    G: Send + 'static,
{
    run_trimmed(tasks, per_task, 0, get).await
}

macro_rules! each_pool {
    ($pools:expr, |$name:ident, $get:ident| $body:expr) => {{
        {
            let p = $pools.torque.clone();
            let $name = "torque";
            let $get = move || {
                let p = p.clone();
                async move { p.get().await.unwrap() }
            };
            $body
        }
        {
            let p = $pools.deadpool.clone();
            let $name = "deadpool";
            let $get = move || {
                let p = p.clone();
                async move { p.get().await.unwrap() }
            };
            $body
        }
        {
            let p = $pools.deadpool_timeout.clone();
            let $name = "deadpool_timeout";
            let $get = move || {
                let p = p.clone();
                async move { p.get().await.unwrap() }
            };
            $body
        }
        {
            let p = $pools.bb8.clone();
            let $name = "bb8";
            let $get = move || {
                let p = p.clone();
                async move { p.get_owned().await.unwrap() }
            };
            $body
        }
    }};
}

/// Like [`run_trimmed`], but for each steady-state get returns how many other
/// gets were served while it waited: the order the pool served them in,
/// which the machine's scheduling cannot blur the way it blurs time. In a
/// strict FIFO it is about tasks - connections for every get.
async fn run_order<G, F, Fut>(tasks: usize, per_task: usize, trim: usize, get: F) -> Vec<u64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = G> + Send,
    G: Send + 'static,
{
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let get = get.clone();
        let served = served.clone();
        handles.push(tokio::spawn(async move {
            let mut ahead = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let before = served.load(Ordering::SeqCst);
                let conn = get().await;
                ahead.push(served.fetch_add(1, Ordering::SeqCst) - before);
                tokio::task::yield_now().await;
                drop(black_box(conn));
            }
            ahead.truncate(per_task.saturating_sub(trim));
            ahead.drain(..trim.min(ahead.len()));
            ahead
        }));
    }
    let mut all = Vec::with_capacity(tasks * per_task);
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// The reference for the tails: tokio's `Semaphore` with `CONNECTIONS`
/// permits, which is strictly FIFO and does nothing else (no connection, no
/// clock, no health check). What it reaches is what a perfectly fair pool
/// can expect on this runtime.
fn fifo_bound()
-> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = tokio::sync::OwnedSemaphorePermit> + Send>>
+ Clone
+ Send
+ 'static {
    let sem = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    move || {
        let sem = sem.clone();
        Box::pin(async move { sem.acquire_owned().await.unwrap() })
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Prints per-get latency tails at 64 and 512 tasks in the steady state
/// (each task's first and last get left out): three rounds with the pools
/// interleaved (so that a burst of load from elsewhere on the machine does
/// not land on one pool only), each pool's median round reported, with
/// [`fifo_bound`] as the reference.
fn tails(rt: &tokio::runtime::Runtime, pools: &Pools) {
    const ROUNDS: usize = 3;
    const TRIM: usize = 1;
    println!(
        "\npool get latency, {CONNECTIONS} connections, no-op manager (get, yield, return), steady state \
         (each task's first and last get left out); median of {ROUNDS} interleaved rounds"
    );
    println!("| pool | tasks | gets per round | p50 | p99 | p99/p50 |");
    println!("|---|---|---|---|---|---|");
    let mut orders = Vec::new();
    for tasks in [64, 512] {
        let per_task = 40_000 / tasks;
        let mut results: Vec<(&str, Vec<(Duration, Duration)>)> = Vec::new();
        for _ in 0..ROUNDS {
            let mut record = |name, mut lat: Vec<Duration>| {
                lat.sort();
                let round = (percentile(&lat, 0.5), percentile(&lat, 0.99));
                match results.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, rounds)) => rounds.push(round),
                    None => results.push((name, vec![round])),
                }
            };
            each_pool!(pools, |name, get| {
                record(name, rt.block_on(run_trimmed(tasks, per_task, TRIM, get)));
            });
            record(
                "fifo_bound",
                rt.block_on(run_trimmed(tasks, per_task, TRIM, fifo_bound())),
            );
        }
        // One more round per pool for the serving order.
        let mut order: Vec<(&str, Vec<u64>)> = Vec::new();
        each_pool!(pools, |name, get| {
            order.push((name, rt.block_on(run_order(tasks, per_task, TRIM, get))));
        });
        order.push((
            "fifo_bound",
            rt.block_on(run_order(tasks, per_task, TRIM, fifo_bound())),
        ));
        orders.push((tasks, order));
        for (name, mut rounds) in results {
            rounds.sort_by_key(|&(_, p99)| p99);
            let (p50, p99) = rounds[rounds.len() / 2];
            println!(
                "| {name} | {tasks} | {} | {p50:?} | {p99:?} | {:.2} |",
                (per_task - 2 * TRIM) * tasks,
                p99.as_secs_f64() / p50.as_secs_f64().max(1e-9),
            );
        }
    }
    println!();
    println!(
        "gets served while one waited (steady state, one more round): a strict FIFO serves about tasks - connections"
    );
    println!("| pool | tasks | p1 | p50 | p99 | p99/p50 |");
    println!("|---|---|---|---|---|---|");
    for (tasks, order) in orders {
        for (name, mut ahead) in order {
            ahead.sort();
            let at = |p: f64| ahead[((ahead.len() - 1) as f64 * p).round() as usize];
            println!(
                "| {name} | {tasks} | {} | {} | {} | {:.2} |",
                at(0.01),
                at(0.5),
                at(0.99),
                at(0.99) as f64 / (at(0.5) as f64).max(1.0)
            );
        }
    }
    println!();
}

fn get_return(c: &mut Criterion) {
    let rt = runtime();
    let pools = rt.block_on(pools());
    tails(&rt, &pools);
    let mut group = c.benchmark_group("pool_get_return");
    group.throughput(Throughput::Elements(1));
    for tasks in TASKS {
        each_pool!(pools, |name, get| {
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                b.iter_custom(|iters| {
                    let per_task = (iters as usize).div_ceil(tasks);
                    let get = get.clone();
                    let start = Instant::now();
                    rt.block_on(run(tasks, per_task, get));
                    // Scale to `iters` operations.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * tasks) as f64)
                })
            });
        });
    }
    group.finish();
}

/// One `get` + `SELECT 1` + return through some pool (boxed alike for every
/// pool: an allocation per query, against tens of µs for the round trip).
type Select1 = Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// `SELECT 1` through a pool whose `get` yields anything that derefs to a
/// tokio-postgres client.
fn select1_via<G, F, Fut>(get: F) -> Select1
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = G> + Send + 'static,
    G: std::ops::Deref<Target = tokio_postgres::Client> + Send + 'static,
{
    Arc::new(move || {
        let conn = get();
        Box::pin(async move {
            conn.await.simple_query("SELECT 1").await.unwrap();
        })
    })
}

/// A deadpool-postgres connection, as a tokio-postgres client (it derefs to
/// deadpool's `ClientWrapper`, which derefs to the client).
struct DeadpoolClient(deadpool_postgres::Object);

impl std::ops::Deref for DeadpoolClient {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.0
    }
}

/// `tasks` tasks running `per_task` of `op` each; returns the time taken.
async fn select1_round(tasks: usize, per_task: usize, op: &Select1) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    op().await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

/// The baseline: 16 tasks, each with a connection of its own, running
/// `per_task` queries each (16 in flight, as through a pool of 16).
async fn dedicated_round(dedicated: &[Arc<tokio_postgres::Client>], per_task: usize) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = dedicated
        .iter()
        .map(|client| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    client.simple_query("SELECT 1").await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

fn select1(c: &mut Criterion) {
    let rt = runtime();
    let tasks = 64;
    let (db, pools, dedicated) = rt.block_on(async {
        let db = torque_testkit::pg_database().await;
        let pool = Pool::builder(PgManager::new(db.config()))
            .max_size(CONNECTIONS)
            .min_idle(CONNECTIONS)
            .build()
            .unwrap();
        // The peers with their defaults: deadpool-postgres recycles with
        // `RecyclingMethod::Fast` (`is_closed` only); bb8 tests every
        // checkout with a round trip (`test_on_check_out`, an empty query),
        // so it runs once more without that test.
        let deadpool_pg = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
            db.config(),
            tokio_postgres::NoTls,
        ))
        .max_size(CONNECTIONS)
        .build()
        .unwrap();
        let bb8_pg = |test_on_check_out| {
            bb8::Pool::builder()
                .max_size(CONNECTIONS as u32)
                .min_idle(Some(CONNECTIONS as u32))
                .test_on_check_out(test_on_check_out)
                .build(bb8_postgres::PostgresConnectionManager::new(
                    db.config(),
                    tokio_postgres::NoTls,
                ))
        };
        let bb8_pg_unchecked = bb8_pg(false).await.unwrap();
        let bb8_pg = bb8_pg(true).await.unwrap();
        // Warm every pool to its full size.
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS {
            held.push((
                pool.get().await.unwrap(),
                deadpool_pg.get().await.unwrap(),
                bb8_pg.get_owned().await.unwrap(),
                bb8_pg_unchecked.get_owned().await.unwrap(),
            ));
        }
        drop(held);
        let mut dedicated = Vec::new();
        for _ in 0..CONNECTIONS {
            dedicated.push(Arc::new(db.connect().await));
        }
        let bb8_get =
            |p: bb8::Pool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>| {
                move || {
                    let p = p.clone();
                    async move { p.get_owned().await.unwrap() }
                }
            };
        let ours: Select1 = Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                let conn = pool.get().await.unwrap();
                conn.simple_query("SELECT 1").await.unwrap();
            })
        });
        let pools: Vec<(&str, Select1)> = vec![
            ("torque_pool", ours),
            (
                "deadpool_postgres",
                select1_via(move || {
                    let p = deadpool_pg.clone();
                    async move { DeadpoolClient(p.get().await.unwrap()) }
                }),
            ),
            ("bb8_postgres", select1_via(bb8_get(bb8_pg))),
            (
                "bb8_postgres_unchecked",
                select1_via(bb8_get(bb8_pg_unchecked)),
            ),
        ];
        (db, pools, dedicated)
    });

    // Before criterion: interleaved rounds, so that load from elsewhere on
    // the machine lands on every contender alike; each round's throughput
    // against the dedicated connections' in the same round.
    const ROUNDS: usize = 5;
    const QUERIES: usize = 8192;
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); pools.len()];
    let mut dedicated_rates = Vec::new();
    for _ in 0..ROUNDS {
        let base = rt.block_on(dedicated_round(&dedicated, QUERIES / CONNECTIONS));
        dedicated_rates.push(QUERIES as f64 / base.as_secs_f64());
        for (i, (_, op)) in pools.iter().enumerate() {
            let took = rt.block_on(select1_round(tasks, QUERIES / tasks, op));
            ratios[i].push(base.as_secs_f64() / took.as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\npool SELECT 1: {tasks} tasks on {CONNECTIONS} connections against {CONNECTIONS} dedicated \
         connections; {ROUNDS} interleaved rounds of {QUERIES} queries each; dedicated median {:.0} queries/s",
        median(&mut dedicated_rates)
    );
    println!("| pool | throughput / dedicated (median of the rounds) | min–max |");
    println!("|---|---|---|");
    for ((name, _), mut r) in pools.iter().zip(ratios) {
        let mid = median(&mut r);
        println!("| {name} | {mid:.3} | {:.3}–{:.3} |", r[0], r[r.len() - 1]);
    }
    println!();

    let mut group = c.benchmark_group("pool_select1");
    group.throughput(Throughput::Elements(1));
    for (name, op) in &pools {
        group.bench_function(BenchmarkId::new(*name, tasks), |b| {
            b.iter_custom(|iters| {
                let per_task = (iters as usize).div_ceil(tasks);
                rt.block_on(select1_round(tasks, per_task, op))
                    .mul_f64(iters as f64 / (per_task * tasks) as f64)
            })
        });
        if *name == "torque_pool" {
            group.bench_function(BenchmarkId::new("dedicated_16", CONNECTIONS), |b| {
                b.iter_custom(|iters| {
                    let per_task = (iters as usize).div_ceil(CONNECTIONS);
                    rt.block_on(dedicated_round(&dedicated, per_task))
                        .mul_f64(iters as f64 / (per_task * CONNECTIONS) as f64)
                })
            });
        }
    }
    group.finish();
    drop((pools, dedicated));
    drop(db);
}

const SPIKE_REQUESTS: usize = 50;
const SPIKE_WARM: usize = 5;
const SPIKE_MAX: usize = 20;
const SPIKE_CONNECT: Duration = Duration::from_millis(150);
const SPIKE_HOLD: Duration = Duration::from_millis(2);

/// A manager whose connects take `SPIKE_CONNECT` once `slow` is set (warm-up
/// connects are instant), counting the connects started.
#[derive(Debug, Clone, Default)]
struct SlowConnect {
    slow: Arc<AtomicBool>,
    creates: Arc<AtomicUsize>,
}

impl SlowConnect {
    async fn connect(&self) -> Result<u64, std::io::Error> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(SPIKE_CONNECT).await;
        }
        Ok(0)
    }
}

impl torque_pool::Manager for SlowConnect {
    type Connection = u64;
    type Error = std::io::Error;
    async fn create(&self) -> Result<u64, std::io::Error> {
        self.connect().await
    }
    async fn check(&self, _: &mut u64) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn is_broken(&self, _: &u64) -> bool {
        false
    }
}

impl deadpool::managed::Manager for SlowConnect {
    type Type = u64;
    type Error = std::io::Error;
    async fn create(&self) -> Result<u64, std::io::Error> {
        self.connect().await
    }
    async fn recycle(
        &self,
        _: &mut u64,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<std::io::Error> {
        Ok(())
    }
}

impl bb8::ManageConnection for SlowConnect {
    type Connection = u64;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<u64, std::io::Error> {
        SlowConnect::connect(self).await
    }
    async fn is_valid(&self, _: &mut u64) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn has_broken(&self, _: &mut u64) -> bool {
        false
    }
}

/// What one spike cost.
#[derive(Debug, Clone, Copy)]
struct Spike {
    /// Until all requests were served and their connections back.
    took: Duration,
    /// The longest a single request waited for its connection.
    longest_wait: Duration,
    /// Connects started from the spike's start until it was over.
    connects: usize,
}

/// 50 requests at once through `get`; `manager` is the pool's, already warm.
async fn spike<G, F, Fut>(manager: &SlowConnect, get: F) -> Spike
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = G> + Send,
    G: Send + 'static,
{
    manager.slow.store(true, Ordering::SeqCst);
    let before = manager.creates.load(Ordering::SeqCst);
    let start = Instant::now();
    let handles: Vec<_> = (0..SPIKE_REQUESTS)
        .map(|_| {
            let get = get.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let conn = get().await;
                let waited = t.elapsed();
                tokio::time::sleep(SPIKE_HOLD).await;
                drop(black_box(conn));
                waited
            })
        })
        .collect();
    let mut longest_wait = Duration::ZERO;
    for h in handles {
        longest_wait = longest_wait.max(h.await.unwrap());
    }
    Spike {
        took: start.elapsed(),
        longest_wait,
        connects: manager.creates.load(Ordering::SeqCst) - before,
    }
}

/// A fresh pool of each kind with `SPIKE_WARM` warm connections, then a spike.
async fn spike_on(pool: &str) -> Spike {
    let m = SlowConnect::default();
    match pool {
        "torque" => {
            let p = Pool::builder(m.clone())
                .max_size(SPIKE_MAX)
                .min_idle(SPIKE_WARM)
                .build()
                .unwrap();
            while p.status().idle < SPIKE_WARM || p.status().connecting > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            spike(&m, move || {
                let p = p.clone();
                async move { p.get().await.unwrap() }
            })
            .await
        }
        "deadpool" => {
            let p: deadpool::managed::Pool<SlowConnect> =
                deadpool::managed::Pool::builder(m.clone())
                    .max_size(SPIKE_MAX)
                    .build()
                    .unwrap();
            let mut warm = Vec::new();
            for _ in 0..SPIKE_WARM {
                warm.push(p.get().await.unwrap());
            }
            drop(warm);
            spike(&m, move || {
                let p = p.clone();
                async move { p.get().await.unwrap() }
            })
            .await
        }
        "bb8" => {
            let p = bb8::Pool::builder()
                .max_size(SPIKE_MAX as u32)
                .min_idle(Some(SPIKE_WARM as u32))
                .build(m.clone())
                .await
                .unwrap();
            while (p.state().idle_connections as usize) < SPIKE_WARM {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            spike(&m, move || {
                let p = p.clone();
                async move { p.get_owned().await.unwrap() }
            })
            .await
        }
        other => unreachable!("no pool {other}"),
    }
}

const SPIKE_POOLS: [&str; 3] = ["torque", "deadpool", "bb8"];

fn spike_group(c: &mut Criterion) {
    let rt = runtime();
    const ROUNDS: usize = 5;
    println!(
        "\npool spike: {SPIKE_REQUESTS} requests at once, {SPIKE_WARM} warm, max {SPIKE_MAX}, \
         connect {SPIKE_CONNECT:?}, each holds {SPIKE_HOLD:?}; {ROUNDS} interleaved rounds"
    );
    println!("| pool | all served (median) | longest wait (median) | connects started (min–max) |");
    println!("|---|---|---|---|");
    let mut rounds: Vec<Vec<Spike>> = vec![Vec::new(); SPIKE_POOLS.len()];
    for _ in 0..ROUNDS {
        for (i, pool) in SPIKE_POOLS.iter().enumerate() {
            rounds[i].push(rt.block_on(spike_on(pool)));
        }
    }
    for (pool, mut r) in SPIKE_POOLS.iter().zip(rounds) {
        r.sort_by_key(|s| s.took);
        let took = r[r.len() / 2].took;
        r.sort_by_key(|s| s.longest_wait);
        let wait = r[r.len() / 2].longest_wait;
        let min = r.iter().map(|s| s.connects).min().unwrap();
        let max = r.iter().map(|s| s.connects).max().unwrap();
        println!("| {pool} | {took:?} | {wait:?} | {min}–{max} |");
    }
    println!();

    let mut group = c.benchmark_group("pool_spike");
    group.sample_size(10);
    for pool in SPIKE_POOLS {
        group.bench_function(BenchmarkId::new(pool, SPIKE_REQUESTS), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(spike_on(pool)).took).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, get_return, select1, spike_group);
criterion_main!(benches);
