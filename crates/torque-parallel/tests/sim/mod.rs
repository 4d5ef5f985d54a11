//! A deterministic simulated backend behind a limiter, on tokio's paused
//! clock. Shared by `tests/simulation.rs` and `examples/limit_sim.rs`
//! (included there with `#[path]`), so the table in docs/parallel.md and the
//! tests exercise the same code.
//!
//! The backend has C hidden FIFO servers. Request `id`'s service time is
//! 10 ms + Exp(mean 10 ms), drawn from a hash of (seed, id), so every run of a
//! scenario is identical. Variants: `thrash` (service time × (1 + 0.2 × (n −
//! C) / C) when n > C requests are in the backend at arrival), a step (C
//! changes at an instant), and open-loop Poisson arrivals with fail-fast
//! rejection instead of a closed loop that always has work waiting.
//! Latency is measured from admission to completion.
//!
//! [`Service`] swaps the service-time model for held-out ones (lognormal,
//! bimodal, a network round trip that holds no server), and
//! `Scenario::drift` moves C linearly over the run; the defaults are the
//! model above, unchanged.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use torque_parallel::limit::{Algorithm, Clock, ConcurrencyLimiter, Limiter};

/// Reads tokio's (paused) clock, so limiter latencies follow simulated time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub servers: usize,
    pub thrash: bool,
    /// At this offset, the number of servers becomes `.1`.
    pub step: Option<(Duration, usize)>,
    /// Open loop: Poisson arrivals at this multiple of capacity, fail-fast.
    pub open_loop: Option<f64>,
    pub duration: Duration,
    pub seed: u64,
    /// The service-time model ([`Service::Issue`] by default).
    pub service: Service,
    /// C moves linearly from `servers` to this over the run.
    pub drift: Option<usize>,
}

/// A request's service-time model. `Issue` is the one the limiter was tuned
/// on; the others are held out, to check that tuning did not overfit it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Service {
    /// 10 ms + Exp(10 ms).
    #[default]
    Issue,
    /// Lognormal, median 10 ms, σ = 1 (mean 16.5 ms, p99 102 ms).
    Lognormal,
    /// 90 % cache hits of 1 ms, 10 % misses of 50 ms (mean 5.9 ms).
    Bimodal,
    /// A 30 ms network round trip that holds no server, plus Exp(2 ms) of
    /// service: queueing is a small share of the latency, and saturating
    /// C servers takes about 16 C requests in flight.
    Rtt,
}

impl Service {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "issue" => Service::Issue,
            "lognormal" => Service::Lognormal,
            "bimodal" => Service::Bimodal,
            "rtt" => Service::Rtt,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::Issue => "issue",
            Service::Lognormal => "lognormal",
            Service::Bimodal => "bimodal",
            Service::Rtt => "rtt",
        }
    }

    /// The mean time a request holds a server, in seconds: capacity is
    /// servers / this.
    pub fn mean_hold(self) -> f64 {
        match self {
            Service::Issue => 2.0 * BASE.as_secs_f64(),
            Service::Lognormal => 0.010 * 0.5f64.exp(),
            Service::Bimodal => 0.9 * 0.001 + 0.1 * 0.050,
            Service::Rtt => 0.002,
        }
    }

    /// Request `id`'s time holding a server and its time on the network
    /// (holding none), in seconds.
    fn draw(self, seed: u64, id: u64) -> (f64, f64) {
        match self {
            Service::Issue => (BASE.as_secs_f64() * (1.0 + exp1(seed, 1, id)), 0.0),
            Service::Lognormal => {
                // Box–Muller: √(2 Exp(1)) = √(−2 ln u).
                let z = (2.0 * exp1(seed, 3, id)).sqrt()
                    * (std::f64::consts::TAU * uniform(seed, 4, id)).cos();
                (0.010 * z.exp(), 0.0)
            }
            Service::Bimodal => {
                let hit = uniform(seed, 3, id) < 0.9;
                (if hit { 0.001 } else { 0.050 }, 0.0)
            }
            Service::Rtt => (0.002 * exp1(seed, 1, id), 0.030),
        }
    }
}

impl Scenario {
    pub fn closed(servers: usize, seed: u64) -> Self {
        Scenario {
            servers,
            thrash: false,
            step: None,
            open_loop: None,
            duration: Duration::from_secs(30),
            seed,
            service: Service::Issue,
            drift: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub completed: u64,
    pub rejected: u64,
    /// Completions per second over the whole run.
    pub throughput: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// p99 over completions after the step (or the second half).
    pub p99_second_half: Duration,
    /// The limit sampled every 100 ms.
    pub limits: Vec<usize>,
    pub max_in_flight_over_limit: bool,
}

impl Report {
    pub fn mean_limit(&self, from: f64, to: f64) -> f64 {
        let n = self.limits.len();
        let (a, b) = ((n as f64 * from) as usize, (n as f64 * to) as usize);
        let slice = &self.limits[a..b.max(a + 1).min(n)];
        slice.iter().sum::<usize>() as f64 / slice.len().max(1) as f64
    }
}

const BASE: Duration = Duration::from_millis(10);

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Exp(1) drawn from (seed, stream, id).
fn exp1(seed: u64, stream: u64, id: u64) -> f64 {
    let h = splitmix(splitmix(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407)) ^ id);
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
    -u.ln()
}

/// Uniform on (0, 1] drawn from (seed, stream, id).
fn uniform(seed: u64, stream: u64, id: u64) -> f64 {
    (-exp1(seed, stream, id)).exp()
}

struct Backend {
    capacity: usize,
    free_at: Vec<Instant>,
    in_system: usize,
    thrash: bool,
    seed: u64,
    service: Service,
    /// With a network round trip: when the requests at a server (queued or
    /// served) leave it.
    at_server: Vec<Instant>,
}

impl Backend {
    /// Admits request `id` now; returns when it completes.
    fn arrive(&mut self, id: u64, now: Instant) -> Instant {
        self.in_system += 1;
        let (mut service, network) = self.service.draw(self.seed, id);
        // Thrashing counts the requests at the servers, not on the wire.
        let n = if network > 0.0 {
            self.at_server.retain(|&at| at > now);
            self.at_server.len() + 1
        } else {
            self.in_system
        };
        let c = self.capacity;
        if self.thrash && n > c {
            service *= 1.0 + 0.2 * (n - c) as f64 / c as f64;
        }
        let (index, free) = self
            .free_at
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(_, at)| at)
            .expect("at least one server");
        let done = free.max(now) + Duration::from_secs_f64(service);
        self.free_at[index] = done;
        if network > 0.0 {
            self.at_server.push(done);
            return done + Duration::from_secs_f64(network);
        }
        done
    }

    fn resize(&mut self, servers: usize, now: Instant) {
        self.free_at.sort();
        self.free_at.truncate(servers);
        while self.free_at.len() < servers {
            self.free_at.push(now);
        }
        self.capacity = servers;
    }
}

#[derive(Default)]
struct Record {
    latencies_us: Vec<(Instant, u32)>,
    completed: u64,
}

/// Runs `scenario` with `algorithm` on a fresh paused-clock runtime.
/// Request `id` arrives at the backend now, holding `token`; a task waits
/// out its service time, then completes the token and, if the run has not
/// ended, records its latency.
fn serve(
    backend: &Arc<Mutex<Backend>>,
    record: &Arc<Mutex<Record>>,
    id: u64,
    token: torque_parallel::limit::Token,
    end: Instant,
) {
    let now = Instant::now();
    let done = backend.lock().unwrap().arrive(id, now);
    let (backend, record) = (backend.clone(), record.clone());
    tokio::spawn(async move {
        tokio::time::sleep_until(done).await;
        let finished = Instant::now();
        backend.lock().unwrap().in_system -= 1;
        token.success();
        if finished <= end {
            let mut r = record.lock().unwrap();
            r.completed += 1;
            let us = (finished - now).as_micros().min(u32::MAX as u128) as u32;
            r.latencies_us.push((finished, us));
        }
    });
}

pub fn run<A: Algorithm>(scenario: &Scenario, algorithm: A) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(simulate(scenario.clone(), algorithm))
}

/// The same, inside a paused-clock runtime the caller made.
pub async fn simulate<A: Algorithm>(scenario: Scenario, algorithm: A) -> Report {
    let limiter = ConcurrencyLimiter::with_clock(algorithm, TokioClock);
    simulate_with(scenario, limiter).await
}

pub async fn simulate_with<A: Algorithm>(
    scenario: Scenario,
    limiter: ConcurrencyLimiter<A, TokioClock>,
) -> Report {
    let start = Instant::now();
    let end = start + scenario.duration;
    let half = start + scenario.step.map_or(scenario.duration / 2, |(at, _)| at);
    let backend = Arc::new(Mutex::new(Backend {
        capacity: scenario.servers,
        free_at: vec![start; scenario.servers],
        in_system: 0,
        thrash: scenario.thrash,
        seed: scenario.seed,
        service: scenario.service,
        at_server: Vec::new(),
    }));
    let record = Arc::new(Mutex::new(Record::default()));
    let over_limit = Arc::new(Mutex::new(false));

    let sampler = {
        let limiter = limiter.clone();
        let over_limit = over_limit.clone();
        tokio::spawn(async move {
            let mut limits = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if Instant::now() >= end {
                    return limits;
                }
                let stats = limiter.stats();
                if stats.in_flight > stats.limit.max(1) * 2 {
                    *over_limit.lock().unwrap() = true;
                }
                limits.push(stats.limit);
            }
        })
    };

    let mut stepped = scenario.step.is_none();
    let admit = |id: u64, token: torque_parallel::limit::Token| {
        serve(&backend, &record, id, token, end);
    };
    // A drift moves C linearly: the servers C should have now.
    let drift = |now: Instant| {
        let Some(to) = scenario.drift else { return };
        let from = scenario.servers as f64;
        let share = (now - start).as_secs_f64() / scenario.duration.as_secs_f64();
        let servers = (from + (to as f64 - from) * share.min(1.0)).round() as usize;
        let mut backend = backend.lock().unwrap();
        if servers.max(1) != backend.capacity {
            backend.resize(servers.max(1), now);
        }
    };
    let mut rejected = 0u64;
    match scenario.open_loop {
        None => {
            let mut id = 0u64;
            loop {
                let token = limiter.acquire().await;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if !stepped && now >= half {
                    let (_, servers) = scenario.step.expect("step");
                    backend.lock().unwrap().resize(servers, now);
                    stepped = true;
                }
                drift(now);
                admit(id, token);
                id += 1;
            }
        }
        Some(load) => {
            let rate = load * scenario.servers as f64 / scenario.service.mean_hold();
            let mut at = start;
            for id in 0u64.. {
                at += Duration::from_secs_f64(exp1(scenario.seed, 2, id) / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let now = Instant::now();
                if !stepped && now >= half {
                    let (_, servers) = scenario.step.expect("step");
                    backend.lock().unwrap().resize(servers, now);
                    stepped = true;
                }
                drift(now);
                match limiter.try_acquire() {
                    Ok(token) => admit(id, token),
                    Err(_) => rejected += 1,
                }
            }
        }
    }
    tokio::time::sleep_until(end).await;
    let limits = sampler.await.expect("sampler");
    let record = record.lock().unwrap();
    let mut all: Vec<u32> = record.latencies_us.iter().map(|&(_, us)| us).collect();
    let mut second: Vec<u32> = record
        .latencies_us
        .iter()
        .filter(|&&(at, _)| at >= half)
        .map(|&(_, us)| us)
        .collect();
    let p = |v: &mut Vec<u32>, q: f64| -> Duration {
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        Duration::from_micros(u64::from(v[i]))
    };
    Report {
        completed: record.completed,
        rejected,
        throughput: record.completed as f64 / scenario.duration.as_secs_f64(),
        p50: p(&mut all, 0.50),
        p99: p(&mut all, 0.99),
        p99_second_half: p(&mut second, 0.99),
        limits,
        max_in_flight_over_limit: *over_limit.lock().unwrap(),
    }
}

/// The best static limit by throughput, `eval` giving a limit's report: a
/// coarse sweep of 1..=256, then every integer between the best coarse
/// point's neighbours.
///
/// With `wide`, the coarse sweep goes on to 1024 (a network round trip
/// needs limits of about 16 C).
fn sweep(wide: bool, mut eval: impl FnMut(usize) -> Report) -> (usize, Report) {
    let mut coarse = vec![
        1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256,
    ];
    if wide {
        coarse.extend([384, 512, 768, 1024]);
    }
    let mut results: Vec<(usize, Report)> = Vec::new();
    for &limit in &coarse {
        results.push((limit, eval(limit)));
    }
    let best = |results: &Vec<(usize, Report)>| {
        results
            .iter()
            .max_by(|a, b| a.1.throughput.total_cmp(&b.1.throughput))
            .map(|(l, _)| *l)
            .expect("non-empty")
    };
    let b = best(&results);
    let i = coarse.iter().position(|&l| l == b).expect("coarse");
    let lo = coarse[i.saturating_sub(1)];
    let hi = coarse[(i + 1).min(coarse.len() - 1)];
    for limit in lo..=hi {
        if !results.iter().any(|(l, _)| *l == limit) {
            results.push((limit, eval(limit)));
        }
    }
    let b = best(&results);
    results
        .into_iter()
        .find(|(l, _)| *l == b)
        .expect("best is in results")
}

/// The best static limit for `scenario` by throughput ([`sweep`]).
pub fn oracle(scenario: &Scenario) -> (usize, Report) {
    use torque_parallel::limit::Fixed;
    sweep(scenario.service == Service::Rtt, |limit| {
        run(scenario, Fixed::new(limit))
    })
}

/// One client of a shared backend: its own limiter and closed loop.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    /// Completions per second over the whole run.
    pub throughput: f64,
    /// Completions per second over the run's last quarter.
    pub late_throughput: f64,
    /// The limit sampled every 100 ms (0 before the client starts).
    pub limits: Vec<usize>,
    /// What `inspect` said of the algorithm at the end.
    pub note: String,
}

/// Runs one closed loop per algorithm, each behind its own limiter, against
/// one backend of `scenario.servers` servers (thrash as the scenario says;
/// steps are not supported). With `scenario.open_loop`, each client is an
/// open loop instead: Poisson arrivals at its share of the load, refused at
/// its limit. Client `i` starts at
/// `starts[i]`. Returns the report over all requests and one per client.
pub fn run_shared<A: Algorithm>(
    scenario: &Scenario,
    algorithms: Vec<A>,
    starts: &[Duration],
    inspect: impl Fn(&A) -> String,
) -> (Report, Vec<ClientReport>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(simulate_shared(
        scenario.clone(),
        algorithms,
        starts,
        inspect,
    ))
}

async fn simulate_shared<A: Algorithm>(
    scenario: Scenario,
    algorithms: Vec<A>,
    starts: &[Duration],
    inspect: impl Fn(&A) -> String,
) -> (Report, Vec<ClientReport>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let start = Instant::now();
    let end = start + scenario.duration;
    let backend = Arc::new(Mutex::new(Backend {
        capacity: scenario.servers,
        free_at: vec![start; scenario.servers],
        in_system: 0,
        thrash: scenario.thrash,
        seed: scenario.seed,
        service: scenario.service,
        at_server: Vec::new(),
    }));
    let next_id = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    let count = algorithms.len().max(1) as f64;
    for (i, algorithm) in algorithms.into_iter().enumerate() {
        let limiter = ConcurrencyLimiter::with_clock(algorithm, TokioClock);
        let record = Arc::new(Mutex::new(Record::default()));
        let offset = starts.get(i).copied().unwrap_or_default();
        let sampler = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut limits = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    if now >= end {
                        return limits;
                    }
                    limits.push(if now < start + offset {
                        0
                    } else {
                        limiter.stats().limit
                    });
                }
            })
        };
        let client = {
            let (limiter, backend, record, next_id) = (
                limiter.clone(),
                backend.clone(),
                record.clone(),
                next_id.clone(),
            );
            let (open_loop, servers, seed, hold) = (
                scenario.open_loop,
                scenario.servers,
                scenario.seed,
                scenario.service.mean_hold(),
            );
            tokio::spawn(async move {
                tokio::time::sleep_until(start + offset).await;
                if let Some(load) = open_loop {
                    let rate = load * servers as f64 / hold / count;
                    let mut at = start + offset;
                    for k in 0u64.. {
                        at += Duration::from_secs_f64(exp1(seed, 10 + i as u64, k) / rate);
                        if at >= end {
                            return;
                        }
                        tokio::time::sleep_until(at).await;
                        if let Ok(token) = limiter.try_acquire() {
                            let id = next_id.fetch_add(1, Ordering::Relaxed);
                            serve(&backend, &record, id, token, end);
                        }
                    }
                }
                loop {
                    let token = limiter.acquire().await;
                    let now = Instant::now();
                    if now >= end {
                        return;
                    }
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    serve(&backend, &record, id, token, end);
                }
            })
        };
        clients.push((limiter, record, sampler, client));
    }
    tokio::time::sleep_until(end).await;
    let mut all: Vec<u32> = Vec::new();
    let mut completed = 0;
    let mut reports = Vec::new();
    for (limiter, record, sampler, client) in clients {
        let limits = sampler.await.expect("sampler");
        client.abort();
        let record = record.lock().unwrap();
        completed += record.completed;
        all.extend(record.latencies_us.iter().map(|&(_, us)| us));
        let quarter = scenario.duration / 4;
        let late = record
            .latencies_us
            .iter()
            .filter(|&&(at, _)| at > end - quarter)
            .count();
        reports.push(ClientReport {
            throughput: record.completed as f64 / scenario.duration.as_secs_f64(),
            late_throughput: late as f64 / quarter.as_secs_f64(),
            limits,
            note: limiter.with_algorithm(&inspect),
        });
    }
    all.sort_unstable();
    let p = |q: f64| -> Duration {
        if all.is_empty() {
            return Duration::ZERO;
        }
        let i = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1;
        Duration::from_micros(u64::from(all[i]))
    };
    let total = Report {
        completed,
        throughput: completed as f64 / scenario.duration.as_secs_f64(),
        p50: p(0.50),
        p99: p(0.99),
        ..Report::default()
    };
    (total, reports)
}

/// The best static limit per client (the same for every client) for
/// `clients` closed loops sharing the backend, by total throughput
/// ([`sweep`]).
pub fn shared_oracle(scenario: &Scenario, starts: &[Duration]) -> (usize, Report) {
    use torque_parallel::limit::Fixed;
    sweep(scenario.service == Service::Rtt, |limit| {
        let fixed = vec![Fixed::new(limit); starts.len()];
        run_shared(scenario, fixed, starts, |_| String::new()).0
    })
}
