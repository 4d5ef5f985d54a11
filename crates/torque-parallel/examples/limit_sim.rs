//! Adaptive limiters against the best static limit, on a simulated backend
//! that runs on tokio's paused clock (deterministic: same seed, same table).
//!
//! `cargo run --release -p torque-parallel --example limit_sim -- [--seeds 1,2,3] [--only thrash|step|open] [--scale N]`
//!
//! `--scale N` multiplies every run's duration (and the step's instant) by N,
//! to separate start-up cost from steady state.
//!
//! For each scenario and seed it sweeps static limits 1..=256 for the best
//! (the oracle), then runs each limiter, which knows nothing of the
//! backend's capacity, and prints throughput and p99 relative to the oracle.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::Duration;

use sim::{Report, Scenario, oracle, run};
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

fn scenarios(kind: &str, seed: u64, scale: u32) -> Vec<(String, Scenario)> {
    let mut out = Vec::new();
    if kind == "thrash" || kind == "all" {
        for c in [8, 24, 64] {
            let mut s = Scenario::closed(c, seed);
            s.thrash = true;
            s.duration = Duration::from_secs(60);
            out.push((format!("thrash C={c}"), s));
        }
    }
    if kind == "step" || kind == "all" {
        for (from, to) in [(24, 8), (9, 3), (64, 21)] {
            let mut s = Scenario::closed(from, seed);
            s.thrash = true;
            s.duration = Duration::from_secs(120);
            s.step = Some((Duration::from_secs(60), to));
            out.push((format!("step C={from}→{to}"), s));
        }
    }
    if kind == "open" || kind == "all" {
        for c in [8, 24, 64] {
            let mut s = Scenario::closed(c, seed);
            s.thrash = true;
            s.open_loop = Some(1.3);
            s.duration = Duration::from_secs(60);
            out.push((format!("open 1.3× C={c}"), s));
        }
    }
    for (_, s) in &mut out {
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
            "--only" => only = args.next().expect("--only thrash|step|open"),
            "--scale" => scale = args.next().and_then(|s| s.parse().ok()).expect("--scale N"),
            other => panic!("unknown argument {other}"),
        }
    }
    println!(
        "| scenario | seed | oracle limit | oracle req/s | oracle p99 ms | limiter | req/s × oracle | p99 × oracle | mean limit (1st/2nd half) | goal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for seed in seeds {
        for (name, scenario) in scenarios(&only, seed, scale) {
            let (best, base) = oracle(&scenario);
            for (limiter, algorithm) in limiters() {
                let report = run(&scenario, algorithm);
                let goal = if limiter == "Adaptive" {
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
            }
        }
    }
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
