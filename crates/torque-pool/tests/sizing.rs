//! `size` never exceeds `max_size`, whatever mix of callers, cancellations,
//! slow connects, failures and broken connections runs at once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Fake, quiet};
use proptest::prelude::*;
use torque_pool::Pool;

#[derive(Debug, Clone)]
struct Caller {
    start_ms: u64,
    hold_ms: u64,
    cancel_after_ms: Option<u64>,
    breaks_it: bool,
}

fn caller() -> impl Strategy<Value = Caller> {
    (
        0u64..200,
        0u64..30,
        proptest::option::weighted(0.3, 0u64..40),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(start_ms, hold_ms, cancel_after_ms, breaks_it)| Caller {
            start_ms,
            hold_ms,
            cancel_after_ms,
            breaks_it,
        })
}

/// Runs `callers` against a pool of `max_size`, sampling the pool's size on
/// every tick; returns whether it ever exceeded `max_size`.
async fn run(max_size: usize, callers: Vec<Caller>, create_ms: u64, fail_every: u32) -> bool {
    let fake = Fake::default();
    fake.set_create_delay(Duration::from_millis(create_ms));
    let pool: Pool<Fake> = quiet(&fake)
        .max_size(max_size)
        .min_idle(max_size / 2)
        .acquire_timeout(Duration::from_millis(100))
        .check_bypass(Duration::from_millis(5))
        .build()
        .unwrap();
    let exceeded = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pool, exceeded, done) = (pool.clone(), exceeded.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let s = pool.status();
                if s.size > s.max_size || (s.idle > 0 && s.waiting > 0) {
                    exceeded.store(true, Ordering::SeqCst);
                }
                // A sleep, not a yield: the paused clock only moves when
                // every task is idle.
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for (i, c) in callers.into_iter().enumerate() {
        let (pool, fake) = (pool.clone(), fake.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(c.start_ms)).await;
            if fail_every > 0 && (i as u32).is_multiple_of(fail_every) {
                fake.fail_creates(Some("refused"));
            } else {
                fake.fail_creates(None);
            }
            let get = async {
                if let Ok(conn) = pool.get().await {
                    if c.breaks_it {
                        fake.break_conn(conn.id);
                    }
                    tokio::time::sleep(Duration::from_millis(c.hold_ms)).await;
                }
            };
            match c.cancel_after_ms {
                Some(ms) => {
                    let _ = tokio::time::timeout(Duration::from_millis(ms), get).await;
                }
                None => get.await,
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    // Everything came back: nothing in use, nobody waiting.
    let s = pool.status();
    assert_eq!((s.in_use, s.waiting), (0, 0), "{s:?}");
    exceeded.load(Ordering::SeqCst)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn size_never_exceeds_max_size(
        max_size in 1usize..6,
        callers in proptest::collection::vec(caller(), 1..60),
        create_ms in 0u64..20,
        fail_every in 0u32..5,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let exceeded = rt.block_on(run(max_size, callers, create_ms, fail_every));
        prop_assert!(!exceeded);
    }
}

/// The same on a multi-threaded runtime with real time, for a while.
#[test]
#[ignore = "long stress run: cargo test -- --ignored stress_"]
fn stress_size_never_exceeds_max_size_on_many_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
    runner
        .run(
            &(
                1usize..8,
                proptest::collection::vec(caller(), 1..200),
                0u64..5,
                0u32..5,
            ),
            |(max_size, callers, create_ms, fail_every)| {
                let exceeded = rt.block_on(run(max_size, callers, create_ms, fail_every));
                prop_assert!(!exceeded);
                Ok(())
            },
        )
        .unwrap();
}
