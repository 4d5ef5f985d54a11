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
        // A caller waits for the next attempt, at most
        // `reconnect_backoff_max_waiting` (50 ms) away, plus the 1 ms
        // connect and the timer's 1 ms granularity.
        assert!(took <= Duration::from_millis(53), "failed fast: {took:?}");
    }
    let attempts = fake.creates() - before;
    let outage = start.elapsed();
    assert_eq!(fake.max_in_flight(), 1, "one connect in flight at a time");
    // With callers waiting the backoff is capped at 50 ms with equal jitter:
    // at least 25 ms apart once grown, so a 2 s outage sees at most about
    // 80 attempts, not one per caller per millisecond.
    let bound = (outage.as_millis() / 25) as u32 + 2;
    assert!(
        (4..=bound).contains(&attempts),
        "{attempts} connect attempts in {outage:?}, at most {bound}"
    );
    assert_sane(&pool);
}

#[tokio::test(start_paused = true)]
async fn with_nobody_waiting_the_backoff_grows_to_its_full_cap() {
    let fake = Fake::default();
    let pool = quiet(&fake).min_idle(5).build().unwrap();
    wait_until(Duration::from_secs(1), || pool.status().idle == 5).await;
    fake.set_down(true);
    // One caller finds every idle connection broken and fails; from then on
    // the refill to min_idle is the only demand.
    assert!(pool.get().await.is_err());
    assert_eq!(pool.status().idle, 0);
    let before = fake.creates();
    fake.knobs
        .max_creates_in_flight
        .store(0, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = fake.creates() - before;
    // Delays of at least 5, 10, 20, 40, 80 ms, then 125 ms (half of the
    // 250 ms cap): about 20 in 2 s.
    assert!(
        (8..=22).contains(&attempts),
        "{attempts} attempts in 2 s: the backoff must keep retrying, no faster than its delays"
    );
    assert!(fake.max_in_flight() <= 1);
    fake.set_down(false);
    wait_until(Duration::from_millis(300), || pool.status().idle == 5).await;
    assert_sane(&pool);
}

#[tokio::test(start_paused = true)]
async fn once_back_the_backlog_is_served_by_a_burst_of_connects() {
    let fake = Fake::default();
    let max_size = 8;
    let pool = quiet(&fake)
        .max_size(max_size)
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    fake.set_create_delay(Duration::from_millis(5));
    let t0 = Instant::now();
    let down_at = Duration::from_millis(200);
    let back_at = down_at + Duration::from_secs(2);
    let end = back_at + Duration::from_millis(500);
    // 16 callers, each holding its connection 2 ms.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            while t0.elapsed() < end {
                let at = t0.elapsed();
                let ok = match pool.get().await {
                    Ok(conn) => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        drop(conn);
                        true
                    }
                    Err(_) => false,
                };
                calls.push((at, ok));
                tokio::task::yield_now().await;
            }
            calls
        }));
    }
    tokio::time::sleep_until(t0 + down_at).await;
    fake.set_down(true);
    wait_until(Duration::from_secs(1), || pool.status().create_failures > 0).await;
    wait_until(Duration::from_secs(1), || pool.status().connecting <= 1).await;
    fake.knobs
        .max_creates_in_flight
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let failures_before = pool.status().create_failures;
    tokio::time::sleep_until(t0 + back_at).await;
    let down_in_flight = fake.max_in_flight();
    let refused = pool.status().create_failures - failures_before;
    fake.set_down(false);
    // The next attempt is at most 50 ms away (callers wait); it succeeds, and
    // the seven missing connections are opened at once, not two at a time.
    wait_until(Duration::from_millis(50 + 5 + 5 + 3), || {
        pool.status().size == max_size
    })
    .await;
    let reopened = t0.elapsed() - back_at;
    let mut late_errors = 0;
    let mut calls = 0;
    for t in tasks {
        for (at, ok) in t.await.unwrap() {
            calls += 1;
            if at >= back_at && !ok {
                late_errors += 1;
            }
        }
    }
    assert_eq!(down_in_flight, 1, "one connect in flight while down");
    assert!(refused >= 2, "{refused}");
    assert_eq!(
        late_errors, 0,
        "no error once the server is back ({calls} calls)"
    );
    assert!(
        fake.max_in_flight() >= 7,
        "a burst after the first success: {}",
        fake.max_in_flight()
    );
    println!(
        "all {max_size} connections back {reopened:?} after the server; {refused} refused connects in the 2 s outage"
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
