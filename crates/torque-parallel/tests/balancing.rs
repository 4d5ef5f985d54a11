//! Balancing strategies, driven deterministically: seeded draws, a mock
//! clock, simulated backends.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use torque_parallel::BuildError;
use torque_parallel::balance::{BackendStats, Balancer, Pick, Strategy};
use torque_parallel::limit::MockClock;

/// SplitMix64, for the test's own draws.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

#[test]
fn round_robin_is_even_and_in_turn() {
    let balancer = Balancer::builder()
        .strategy(Strategy::RoundRobin)
        .build(vec!['a', 'b', 'c'])
        .unwrap();
    let order: Vec<char> = (0..6).map(|_| *balancer.pick()).collect();
    assert_eq!(order, ['a', 'b', 'c', 'a', 'b', 'c']);
    let held: Vec<_> = (0..294).map(|_| balancer.pick()).collect();
    let picks: Vec<u64> = balancer.stats().iter().map(|s| s.picks).collect();
    assert_eq!(picks, [100, 100, 100]);
    let in_flight: Vec<usize> = balancer.stats().iter().map(|s| s.in_flight).collect();
    assert_eq!(in_flight, [98, 98, 98]);
    drop(held);
    assert!(balancer.stats().iter().all(|s| s.in_flight == 0));
}

#[test]
fn least_busy_never_puts_a_backend_more_than_one_above_the_others() {
    let balancer = Balancer::builder()
        .strategy(Strategy::LeastBusy)
        .build(vec![0, 1, 2, 3, 4])
        .unwrap();
    // Only picks: the loads stay within one of each other.
    let mut held = Vec::new();
    for _ in 0..103 {
        held.push(balancer.pick());
        let loads: Vec<usize> = balancer.stats().iter().map(|s| s.in_flight).collect();
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(max - min <= 1, "{loads:?}");
    }
    // Picks and random completions: the chosen backend was the least busy,
    // so after the pick it is at most one above every other.
    let mut rng = SplitMix(42);
    for _ in 0..10_000 {
        if !held.is_empty() && rng.below(2) == 0 {
            let victim = rng.below(held.len());
            drop(held.swap_remove(victim));
            continue;
        }
        let pick = balancer.pick();
        let loads: Vec<usize> = balancer.stats().iter().map(|s| s.in_flight).collect();
        let mine = loads[pick.index()];
        for (i, &other) in loads.iter().enumerate() {
            assert!(
                i == pick.index() || mine <= other + 1,
                "picked {} with loads {loads:?}",
                pick.index()
            );
        }
        held.push(pick);
    }
}

/// Closed loop with `concurrency` requests always outstanding on backends
/// with the given latencies; returns each backend's share of the picks.
fn shares(
    strategy: Strategy,
    latencies_ms: &[u64],
    concurrency: usize,
    requests: usize,
) -> Vec<f64> {
    let clock = MockClock::new();
    let balancer = Balancer::builder()
        .strategy(strategy)
        .seed(2_024)
        .decay(Duration::from_secs(1))
        .build_with_clock((0..latencies_ms.len()).collect(), clock.clone())
        .unwrap();
    let mut jitter = SplitMix(9);
    let mut now_ms = 0u64;
    let mut pending: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut picks: Vec<Option<Pick<usize, MockClock>>> = Vec::new();
    for seq in 0..requests as u64 {
        if pending.len() == concurrency {
            let Reverse((done_ms, id)) = pending.pop().unwrap();
            clock.advance(Duration::from_millis(done_ms - now_ms));
            now_ms = done_ms;
            drop(picks[id as usize].take());
        }
        let pick = balancer.pick();
        let latency = latencies_ms[pick.index()] + jitter.below(3) as u64;
        pending.push(Reverse((now_ms + latency, seq)));
        picks.push(Some(pick));
    }
    let stats = balancer.stats();
    let total: u64 = stats.iter().map(|s| s.picks).sum();
    stats
        .iter()
        .map(|s| s.picks as f64 / total as f64)
        .collect()
}

#[test]
fn peak_ewma_sends_less_to_a_slow_backend() {
    let latencies = [10, 10, 10, 100];
    let fair = 1.0 / latencies.len() as f64;
    let rr = shares(Strategy::RoundRobin, &latencies, 8, 20_000);
    let p2c = shares(Strategy::PeakEwma, &latencies, 8, 20_000);
    println!("round robin {rr:.3?}\npeak-EWMA   {p2c:.3?}");
    assert!((rr[3] - fair).abs() < 0.01, "round robin is blind: {rr:?}");
    assert!(p2c[3] < fair / 2.0, "slow backend got {:.3}", p2c[3]);
    for fast in &p2c[..3] {
        assert!(*fast > fair, "{p2c:?}");
    }
}

#[test]
fn peak_ewma_jumps_to_a_slow_sample_and_decays_back() {
    let clock = MockClock::new();
    let balancer = Balancer::builder()
        .decay(Duration::from_secs(1))
        .default_rtt(Duration::from_millis(1))
        .build_with_clock(vec!["only"], clock.clone())
        .unwrap();
    let pick = balancer.pick();
    clock.advance(Duration::from_millis(500));
    drop(pick);
    assert_eq!(
        balancer.stats()[0].latency,
        Duration::from_millis(500),
        "peak at once"
    );
    for _ in 0..50 {
        let pick = balancer.pick();
        clock.advance(Duration::from_millis(100));
        drop(pick);
    }
    // Five seconds of 100 ms answers: e^-5 of the peak's excess is left.
    let latency = balancer.stats()[0].latency;
    assert!(latency < Duration::from_millis(105), "{latency:?}");
    assert!(latency >= Duration::from_millis(100), "{latency:?}");
}

#[test]
fn a_discarded_pick_frees_its_slot_without_a_latency() {
    let clock = MockClock::new();
    let balancer = Balancer::builder()
        .default_rtt(Duration::from_millis(1))
        .build_with_clock(vec![1, 2], clock.clone())
        .unwrap();
    let pick = balancer.pick();
    clock.advance(Duration::from_secs(30));
    pick.discard();
    assert!(balancer.stats().iter().all(|s| s.in_flight == 0));
    assert!(
        balancer
            .stats()
            .iter()
            .all(|s| s.latency <= Duration::from_millis(1))
    );
}

/// Two backends answer in 10 ms; a third refuses every request at once,
/// which `report` tells the balancer. Returns each backend's stats after
/// 30 000 picks (7.5 s), and the third one's picks in the next 30 000,
/// once it answers in 10 ms too.
fn with_a_dead_backend(
    strategy: Strategy,
    report: fn(Pick<&'static str, MockClock>),
) -> (Vec<BackendStats>, u64) {
    let clock = MockClock::new();
    let balancer = Balancer::builder()
        .strategy(strategy)
        .seed(1)
        .build_with_clock(vec!["ok-a", "ok-b", "dead"], clock.clone())
        .unwrap();
    let mut held: Vec<(u64, Pick<&'static str, MockClock>)> = Vec::new();
    let mut run = |from: u64, dead: bool| {
        for i in from..from + 30_000 {
            let pick = balancer.pick();
            if dead && *pick == "dead" {
                clock.advance(Duration::from_micros(200)); // connection refused
                report(pick);
            } else {
                held.push((i + 40, pick)); // answers 40 picks (10 ms) later
            }
            clock.advance(Duration::from_micros(250));
            held.retain(|(due, _)| *due > i);
        }
    };
    run(0, true);
    let before = balancer.stats();
    run(30_000, false);
    let after = balancer.stats()[2].picks - before[2].picks;
    (before, after)
}

#[test]
fn regression_a_failing_backend_is_left_out_for_the_failure_penalty() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastBusy,
        Strategy::PeakEwma,
    ] {
        // Each reported failure leaves the dead backend out for a second:
        // 8 picks in 7.5 s, all failed, the others share the rest evenly.
        let (stats, recovered) = with_a_dead_backend(strategy, Pick::fail);
        let picks: Vec<u64> = stats.iter().map(|s| s.picks).collect();
        assert!(picks[2] <= 10, "{strategy:?}: {picks:?}");
        assert_eq!(stats[2].failures, picks[2], "{strategy:?}");
        assert!(stats[2].ejected, "{strategy:?}");
        assert!(
            picks[0].abs_diff(picks[1]) <= 300,
            "{strategy:?}: {picks:?}"
        );
        // Back in service, it gets its share again.
        assert!(recovered > 30_000 / 4, "{strategy:?}: {recovered}");
    }
    // Before `fail`, a pick could only be dropped (a fast answer) or
    // discarded, and the dead backend drew 10 000 of the 30 000 picks under
    // round robin, 28 570 under least-busy (never busy) and 19 924 under
    // peak-EWMA (it looks fastest). Discarding still does that: it says
    // the request never reached the backend.
    let (stats, _) = with_a_dead_backend(Strategy::LeastBusy, Pick::discard);
    assert!(stats[2].picks > 25_000, "{stats:?}");
    assert_eq!(stats[2].failures, 0);
}

/// Every backend has failed and is left out: round robin then tried them
/// all the same in turn, as its docs say ("when all are out, the one in
/// turn"). It skipped over the whole ring on every pick and so landed on
/// the same backend each time, which took every request of the penalty.
#[test]
fn regression_round_robin_goes_on_in_turn_when_every_backend_is_out() {
    let clock = MockClock::new();
    let balancer = Balancer::builder()
        .strategy(Strategy::RoundRobin)
        .build_with_clock(vec!["a", "b", "c"], clock)
        .unwrap();
    for _ in 0..3 {
        balancer.pick().fail();
    }
    assert!(
        balancer
            .stats()
            .iter()
            .all(|s| s.ejected && s.failures == 1)
    );
    let picked: Vec<&str> = (0..6)
        .map(|_| {
            let pick = balancer.pick();
            let backend = *pick;
            pick.discard();
            backend
        })
        .collect();
    for backend in ["a", "b", "c"] {
        assert_eq!(
            picked.iter().filter(|&&b| b == backend).count(),
            2,
            "{picked:?}"
        );
    }
}

#[test]
fn one_backend_is_always_picked() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastBusy,
        Strategy::PeakEwma,
    ] {
        let balancer = Balancer::builder()
            .strategy(strategy)
            .build(vec!["x"])
            .unwrap();
        let held: Vec<_> = (0..10).map(|_| balancer.pick()).collect();
        assert!(held.iter().all(|p| **p == "x"));
        assert_eq!(balancer.stats()[0].in_flight, 10);
    }
}

#[test]
fn bad_settings_are_build_errors() {
    let err = Balancer::builder().build(Vec::<u8>::new()).unwrap_err();
    assert!(matches!(err, BuildError::Zero("backends")), "{err}");
    let err = Balancer::builder()
        .decay(Duration::ZERO)
        .build(vec![1])
        .unwrap_err();
    assert!(
        matches!(err, BuildError::OutOfRange { name: "decay", .. }),
        "{err}"
    );
    let err = Balancer::builder()
        .failure_penalty(Duration::ZERO)
        .build(vec![1])
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::OutOfRange {
                name: "failure_penalty",
                ..
            }
        ),
        "{err}"
    );
    let err = Balancer::builder()
        .default_rtt(Duration::MAX)
        .build(vec![1])
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::OutOfRange {
                name: "default_rtt",
                ..
            }
        ),
        "{err}"
    );
}

proptest::proptest! {
    /// Against a model of per-backend counts: every strategy's in-flight
    /// counts match picks minus drops, no strategy picks a backend left out
    /// after a failure while another is in, and least-busy always picks a
    /// backend that had the fewest in flight among those.
    #[test]
    fn in_flight_counts_follow_a_simple_model(
        backends in 1usize..6,
        strategy in proptest::sample::select(vec![Strategy::RoundRobin, Strategy::LeastBusy, Strategy::PeakEwma]),
        ops in proptest::collection::vec(proptest::option::of(0usize..64), 0..300),
    ) {
        let clock = MockClock::new();
        let balancer = Balancer::builder()
            .strategy(strategy)
            .seed(1)
            .build_with_clock((0..backends).collect(), clock.clone())
            .unwrap();
        let mut model = vec![0usize; backends];
        // Left out until this many ms (the default failure penalty: 1 s).
        let mut out_until = vec![0u64; backends];
        let mut held = Vec::new();
        for (now, op) in (1u64..).zip(ops) {
            clock.advance(Duration::from_millis(1));
            match op {
                Some(k) if !held.is_empty() => {
                    let pick: Pick<usize, MockClock> = held.swap_remove(k % held.len());
                    model[pick.index()] -= 1;
                    if k % 4 == 0 {
                        out_until[pick.index()] = now + 1_000;
                        pick.fail();
                    } else {
                        drop(pick);
                    }
                }
                _ => {
                    let available: Vec<usize> =
                        (0..backends).filter(|&i| now >= out_until[i]).collect();
                    let candidates = if available.is_empty() {
                        (0..backends).collect()
                    } else {
                        available
                    };
                    let least = candidates.iter().map(|&i| model[i]).min().unwrap();
                    let pick = balancer.pick();
                    proptest::prop_assert!(candidates.contains(&pick.index()));
                    if strategy == Strategy::LeastBusy {
                        proptest::prop_assert_eq!(model[pick.index()], least);
                    }
                    model[pick.index()] += 1;
                    held.push(pick);
                }
            }
            let actual: Vec<usize> = balancer.stats().iter().map(|s| s.in_flight).collect();
            proptest::prop_assert_eq!(&actual, &model);
        }
    }
}

/// A clock that panics once armed: the caller's, like the limiters'.
#[derive(Debug, Clone, Default)]
struct FailingClock(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl torque_parallel::limit::Clock for FailingClock {
    fn now(&self) -> std::time::Instant {
        assert!(
            !self.0.load(std::sync::atomic::Ordering::Relaxed),
            "clock failed"
        );
        std::time::Instant::now()
    }
}

/// A pick whose drop found the clock panicking (reading the latency, or
/// the end of a failure's penalty) kept its slot for good: least-busy
/// never picked that backend again while another was free.
#[test]
fn regression_a_panicking_clock_does_not_leak_a_picks_slot() {
    for fail in [false, true] {
        let clock = FailingClock::default();
        let balancer = Balancer::builder()
            .strategy(Strategy::LeastBusy)
            .build_with_clock(vec!["a", "b"], clock.clone())
            .unwrap();
        let pick = balancer.pick();
        clock.0.store(true, std::sync::atomic::Ordering::Relaxed);
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if fail { pick.fail() } else { drop(pick) }
        }));
        assert!(dropped.is_err(), "the clock's panic reaches the caller");
        clock.0.store(false, std::sync::atomic::Ordering::Relaxed);
        let stats = balancer.stats();
        assert_eq!(
            stats.iter().map(|s| s.in_flight).sum::<usize>(),
            0,
            "fail {fail}: {stats:?}"
        );
    }
}
