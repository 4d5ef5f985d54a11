//! Adaptive limiters against the best static limit, on a simulated backend
//! that runs on tokio's paused clock (deterministic: same seed, same table).
//!
//! `cargo run --release -p torque-parallel --example limit_sim -- [--seeds 1,2,3] [--only thrash|step|open] [--servers 12,40,100] [--load 1.3] [--scale N] [--limiter NAME] [--trace]`
//!
//! `--load X` sets the open loop's arrival rate to X × the capacity (1.3).
//! `--only shared` runs instead two or three clients, each with its own
//! `Adaptive`, against one backend (see `shared` below); `--only
//! shared-open` the same with each client an open loop (its share of
//! `--load`, refused at its limit).
//! `--servers LIST` replaces the issue's capacities (8, 24, 64; steps
//! 24 → 8, 9 → 3, 64 → 21) with held-out ones (steps drop each to a third).
//!
//! `--model issue|lognormal|bimodal|rtt` swaps the service-time model for a
//! held-out one (rows then end in `[model]`; see `sim::Service`): lognormal
//! (median 10 ms, σ 1), bimodal (90 % 1 ms, 10 % 50 ms), rtt (a 30 ms
//! network round trip holding no server + Exp(2 ms) of service; its static
//! sweep goes on to 1024). `--only drift` runs thrash while C drifts
//! linearly to half its value over the run (24 → 12, or each `--servers`).
//!
//! `--scale N` multiplies every run's duration (and the step's instant) by N,
//! to separate start-up cost from steady state. `--limiter NAME` runs only
//! the limiters whose name starts with NAME (e.g. `Adaptive`).
//! `--oracle-cache PATH` keeps the static sweeps' results in a file, to
//! re-run a limiter without sweeping again (delete it after changing the
//! backend). `--trace`
//! prints, after each row, the limit over time (every 100 ms sample, run
//! length encoded as `limit×count`), to see what the controller does.
//! `--curve K` prints instead, for each scenario and seed, the static limits
//! from K below the oracle's to K above it, each with its throughput and
//! p99 relative to the oracle's: how much a limit off by a few costs.
//!
//! For each scenario and seed it sweeps static limits 1..=256 for the best
//! (the oracle), then runs each limiter, which knows nothing of the
//! backend's capacity, and prints throughput and p99 relative to the oracle.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::Duration;

use sim::{Report, Scenario, Service, oracle, run, run_shared, shared_oracle};
use torque_parallel::limit::{Adaptive, Aimd, Algorithm, Gradient2, Vegas, Windowed};

fn limiters() -> Vec<(&'static str, Box<dyn Algorithm>)> {
    vec![
        ("Adaptive", Box::new(Adaptive::default())),
        ("Gradient2", Box::new(Gradient2::default())),
        (
            "Vegas (windowed)",
            Box::new(Windowed::builder(Vegas::default()).build().expect("valid")),
        ),
        (
            "Aimd (100 ms timeout)",
            Box::new(
                Aimd::builder()
                    .timeout(Duration::from_millis(100))
                    .build()
                    .expect("valid"),
            ),
        ),
    ]
}

fn scenarios(
    kind: &str,
    seed: u64,
    scale: u32,
    servers: &[usize],
    load: f64,
    model: Service,
) -> Vec<(String, Scenario)> {
    let mut out = Vec::new();
    if kind == "drift" {
        for &c in if servers.is_empty() {
            &[24][..]
        } else {
            servers
        } {
            let mut s = Scenario::closed(c, seed);
            s.thrash = true;
            s.duration = Duration::from_secs(60);
            s.drift = Some((c / 2).max(1));
            out.push((format!("drift C={c}→{}", (c / 2).max(1)), s));
        }
    }
    // The issue's capacities, or held-out ones from `--servers` (steps then
    // drop each to a third).
    let steps: Vec<(usize, usize)> = if servers.is_empty() {
        vec![(24, 8), (9, 3), (64, 21)]
    } else {
        servers.iter().map(|&c| (c, (c / 3).max(1))).collect()
    };
    let servers = if servers.is_empty() {
        &[8, 24, 64][..]
    } else {
        servers
    };
    if kind == "thrash" || kind == "all" {
        for &c in servers {
            let mut s = Scenario::closed(c, seed);
            s.thrash = true;
            s.duration = Duration::from_secs(60);
            out.push((format!("thrash C={c}"), s));
        }
    }
    if kind == "step" || kind == "all" {
        for &(from, to) in &steps {
            let mut s = Scenario::closed(from, seed);
            s.thrash = true;
            s.duration = Duration::from_secs(120);
            s.step = Some((Duration::from_secs(60), to));
            out.push((format!("step C={from}→{to}"), s));
        }
    }
    if kind == "open" || kind == "all" {
        for &c in servers {
            let mut s = Scenario::closed(c, seed);
            s.thrash = true;
            s.open_loop = Some(load);
            s.duration = Duration::from_secs(60);
            out.push((format!("open {load}× C={c}"), s));
        }
    }
    for (name, s) in &mut out {
        s.service = model;
        if model != Service::Issue {
            name.push_str(&format!(" [{}]", model.name()));
        }
        s.duration *= scale;
        if let Some((at, _)) = &mut s.step {
            *at *= scale;
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut seeds = vec![1u64, 2, 3];
    let mut only = "all".to_string();
    let mut scale = 1u32;
    let mut only_limiter = String::new();
    let mut trace = false;
    let mut cache: Option<String> = None;
    let mut servers: Vec<usize> = Vec::new();
    let mut load = 1.3;
    let mut curve: Option<usize> = None;
    let mut model = Service::Issue;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seeds" => {
                seeds = args
                    .next()
                    .expect("--seeds 1,2,3")
                    .split(',')
                    .map(|s| s.parse().expect("a seed is a number"))
                    .collect();
            }
            "--only" => {
                only = args.next().expect("--only thrash|step|open|drift|shared");
                assert!(
                    [
                        "thrash",
                        "step",
                        "open",
                        "drift",
                        "shared",
                        "shared-open",
                        "all"
                    ]
                    .contains(&only.as_str()),
                    "--only thrash|step|open|drift|shared, not {only:?}"
                );
            }
            "--scale" => scale = args.next().and_then(|s| s.parse().ok()).expect("--scale N"),
            "--limiter" => only_limiter = args.next().expect("--limiter NAME"),
            "--trace" => trace = true,
            "--load" => {
                load = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--load 1.3")
            }
            "--servers" => {
                servers = args
                    .next()
                    .expect("--servers 12,40,100")
                    .split(',')
                    .map(|s| s.parse().expect("a server count is a number"))
                    .collect();
            }
            "--curve" => curve = Some(args.next().and_then(|s| s.parse().ok()).expect("--curve K")),
            "--model" => {
                let name = args.next().expect("--model issue|lognormal|bimodal|rtt");
                model = Service::parse(&name)
                    .unwrap_or_else(|| panic!("--model issue|lognormal|bimodal|rtt, not {name:?}"));
            }
            "--oracle-cache" => cache = Some(args.next().expect("--oracle-cache PATH")),
            other => panic!("unknown argument {other}"),
        }
    }
    if only == "shared" || only == "shared-open" {
        let open_loop = (only == "shared-open").then_some(load);
        shared(&seeds, scale, trace, open_loop);
        return;
    }
    if let Some(k) = curve {
        static_curve(&seeds, &only, scale, &servers, load, k, model);
        return;
    }
    println!(
        "| scenario | seed | oracle limit | oracle req/s | oracle p99 ms | limiter | req/s × oracle | p99 × oracle | mean limit (1st/2nd half) | goal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for seed in seeds {
        for (name, scenario) in scenarios(&only, seed, scale, &servers, load, model) {
            let (best, base) = cached_oracle(
                cache.as_deref(),
                &format!("{name} {seed} {scale}"),
                &scenario,
            );
            for (limiter, algorithm) in limiters() {
                if !limiter.starts_with(only_limiter.as_str()) {
                    continue;
                }
                let report = run(&scenario, algorithm);
                // The issue's goals are for its own scenarios.
                let goal = if limiter == "Adaptive" && !name.starts_with("drift") {
                    goal(&name, &report, &base)
                } else {
                    String::new()
                };
                let (p99, base_p99) = (report.p99, base.p99);
                println!(
                    "| {name} | {seed} | {best} | {:.0} | {:.1} | {limiter} | {:.3} | {:.2} | {:.1} / {:.1} | {goal} |",
                    base.throughput,
                    ms(base_p99),
                    report.throughput / base.throughput,
                    p99.as_secs_f64() / base_p99.as_secs_f64(),
                    report.mean_limit(0.0, 0.5),
                    report.mean_limit(0.5, 1.0),
                );
                if trace {
                    println!("{}", run_length(&report.limits));
                }
            }
        }
    }
}

/// Static limits around the oracle's: throughput and p99 relative to it.
fn static_curve(
    seeds: &[u64],
    only: &str,
    scale: u32,
    servers: &[usize],
    load: f64,
    k: usize,
    model: Service,
) {
    use torque_parallel::limit::Fixed;
    println!("| scenario | seed | static limit | req/s × oracle | p99 × oracle |");
    println!("|---|---|---|---|---|");
    for &seed in seeds {
        for (name, scenario) in scenarios(only, seed, scale, servers, load, model) {
            let (best, base) = oracle(&scenario);
            for limit in best.saturating_sub(k).max(1)..=best + k {
                let report = run(&scenario, Fixed::new(limit));
                println!(
                    "| {name} | {seed} | {limit} | {:.4} | {:.3} |",
                    report.throughput / base.throughput,
                    report.p99.as_secs_f64() / base.p99.as_secs_f64(),
                );
            }
        }
    }
}

/// Several clients, each with its own `Adaptive`, share one backend (thrash,
/// closed loops): does each one's no-load estimate stay the backend's, or
/// does the others' queue raise it? The oracle is the best static limit per
/// client, the same for all.
fn shared(seeds: &[u64], scale: u32, trace: bool, open_loop: Option<f64>) {
    println!(
        "| scenario | seed | oracle limit per client | oracle req/s | oracle p99 ms | Adaptive req/s × oracle | p99 × oracle | mean limits, last quarter (sum) | req/s per client, last quarter | no-load estimates ms (true ≈ 20.4) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let s = |n: u64| Duration::from_secs(n) * scale;
    let cases: [(usize, Vec<Duration>); 4] = [
        (24, vec![s(0), s(0)]),
        (24, vec![s(0), s(30)]),
        (64, vec![s(0), s(0), s(0)]),
        (64, vec![s(0), s(20), s(40)]),
    ];
    for &seed in seeds {
        for (servers, starts) in &cases {
            let mut scenario = Scenario::closed(*servers, seed);
            scenario.thrash = true;
            scenario.duration = s(60);
            scenario.open_loop = open_loop;
            let name = format!(
                "shared{} C={servers}, {} clients from {:?}",
                open_loop.map_or(String::new(), |l| format!(" open {l}×")),
                starts.len(),
                starts.iter().map(|d| d.as_secs()).collect::<Vec<_>>()
            );
            let (best, base) = shared_oracle(&scenario, starts);
            let adaptive = vec![Adaptive::default(); starts.len()];
            let (total, clients) = run_shared(&scenario, adaptive, starts, |a| {
                a.baseline().map_or("-".into(), |b| format!("{:.1}", ms(b)))
            });
            let late = |limits: &[usize]| {
                let tail = &limits[limits.len() * 3 / 4..];
                tail.iter().sum::<usize>() as f64 / tail.len().max(1) as f64
            };
            let limits: Vec<f64> = clients.iter().map(|c| late(&c.limits)).collect();
            let rates: Vec<String> = clients
                .iter()
                .map(|c| format!("{:.0}", c.late_throughput))
                .collect();
            println!(
                "| {name} | {seed} | {best} | {:.0} | {:.1} | {:.3} | {:.2} | {} ({:.1}) | {} | {} |",
                base.throughput,
                ms(base.p99),
                total.throughput / base.throughput,
                total.p99.as_secs_f64() / base.p99.as_secs_f64(),
                limits
                    .iter()
                    .map(|l| format!("{l:.1}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                limits.iter().sum::<f64>(),
                rates.join(" / "),
                clients
                    .iter()
                    .map(|c| c.note.clone())
                    .collect::<Vec<_>>()
                    .join(" / "),
            );
            if trace {
                for (i, c) in clients.iter().enumerate() {
                    println!("    client {i}: {}", run_length(&c.limits));
                }
            }
        }
    }
}

/// The oracle, read from or added to the cache file `path` under `key`.
fn cached_oracle(path: Option<&str>, key: &str, scenario: &Scenario) -> (usize, Report) {
    let Some(path) = path else {
        return oracle(scenario);
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix('\t')) {
            let f: Vec<f64> = rest
                .split('\t')
                .map(|x| x.parse().expect("cache"))
                .collect();
            let base = Report {
                throughput: f[1],
                p99: Duration::from_secs_f64(f[2]),
                ..Report::default()
            };
            return (f[0] as usize, base);
        }
    }
    let (best, base) = oracle(scenario);
    let line = format!(
        "{key}\t{best}\t{}\t{}\n",
        base.throughput,
        base.p99.as_secs_f64()
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("oracle cache");
    std::io::Write::write_all(&mut file, line.as_bytes()).expect("oracle cache");
    (best, base)
}

/// `limits` as `limit×count` runs, 10 samples a second.
fn run_length(limits: &[usize]) -> String {
    let mut out = String::from("    limit every 100 ms:");
    let mut i = 0;
    while i < limits.len() {
        let j = limits[i..]
            .iter()
            .position(|&l| l != limits[i])
            .map_or(limits.len(), |k| i + k);
        out.push_str(&format!(" {}×{}", limits[i], j - i));
        i = j;
    }
    out
}

fn goal(name: &str, report: &Report, base: &Report) -> String {
    let tput = report.throughput / base.throughput;
    let p99 = report.p99.as_secs_f64() / base.p99.as_secs_f64();
    let (ok, text) = if name.starts_with("thrash") {
        (tput >= 0.99 && p99 <= 1.03, "≥0.99, ≤1.03")
    } else if name.starts_with("step") {
        (tput >= 1.06 && p99 <= 0.6, "≥1.06, ≤0.6")
    } else {
        (tput >= 1.0, "goodput ≥1.00")
    };
    format!("{} ({text})", if ok { "met" } else { "**missed**" })
}
