//! While the backend is down: one connect in flight at a time, exponential
//! backoff with jitter, callers fail fast with the real error; once it is
//! back, no caller sees another error.

mod common;

use std::time::Duration;

use common::{Fake, assert_sane, quiet, wait_until};
use tokio::time::Instant;
use torque_pool::PoolError;

#[tokio::test(start_paused = true)]
async fn a_down_backend_gets_one_connect_at_a_time_with_backoff() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(20)
        .min_idle(5)
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(1), || pool.status().idle == 5).await;
    // The server restarts: every connection dies, connects are refused.
    fake.fail_creates(Some("connection refused"));
    for id in 0..5 {
        fake.break_conn(id);
    }
    fake.set_create_delay(Duration::from_millis(1));
    // The first caller finds out (up to max_connecting connects may be in
    // flight before anyone knows the server is down)...
    assert!(pool.get().await.is_err());
    wait_until(Duration::from_secs(1), || pool.status().connecting == 0).await;
    // ...from then on, one at a time.
    let before = fake.creates();
    fake.knobs
        .max_creates_in_flight
        .store(0, std::sync::atomic::Ordering::SeqCst);

    // 50 callers during 2 s of outage.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 40)).await;
            let t = Instant::now();
            let r = pool.get().await.map(|_| ());
            (r, t.elapsed())
        }));
    }
    for t in tasks {
        let (r, took) = t.await.unwrap();
        let err = r.unwrap_err();
        let real = err.backend_error().map(|e| e.0.as_str());
        assert_eq!(real, Some("connection refused"), "{err:?}");
        assert!(took <= Duration::from_millis(300), "failed fast: {took:?}");
    }
    let attempts = fake.creates() - before;
    let outage = start.elapsed();
    assert_eq!(fake.max_in_flight(), 1, "one connect in flight at a time");
    // Backoff is capped at 250 ms with equal jitter: at least 125 ms apart
    // once grown, so a 2 s outage sees a handful of attempts, not hundreds.
    assert!(
        (4..=30).contains(&attempts),
        "{attempts} connect attempts in {outage:?}"
    );
    assert_sane(&pool);
}

#[tokio::test(start_paused = true)]
async fn once_the_backend_is_back_no_caller_sees_an_error() {
    let fake = Fake::default();
    let pool = quiet(&fake).build().unwrap();
    fake.fail_creates(Some("connection refused"));
    assert!(matches!(pool.get().await, Err(PoolError::Backend(_))));
    // Let the backoff grow to its cap.
    tokio::time::sleep(Duration::from_secs(3)).await;
    fake.fail_creates(None);
    // A caller arriving now waits for the next attempt instead of failing.
    let start = Instant::now();
    for _ in 0..20 {
        drop(pool.get().await.expect("backend is back"));
    }
    assert!(
        start.elapsed() <= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(pool.status().timeouts.acquire, 0);
}

#[tokio::test(start_paused = true)]
async fn callers_wait_for_connections_in_use_rather_than_fail_while_connects_fail() {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(3).build().unwrap();
    let held = pool.get().await.unwrap();
    fake.fail_creates(Some("too many clients"));
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(|c| c.id) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = held.id;
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), id);
}
