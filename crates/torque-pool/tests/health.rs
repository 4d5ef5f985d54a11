//! Health: `is_broken` at every checkout and return, a real check after the
//! bypass window, keepalive, lifetime with jitter (never in use), idle
//! timeout above `min_idle`, leak reports.

mod common;

use std::time::Duration;

use common::{Fake, assert_sane, quiet, wait_until};
use torque_pool::{Pool, PoolBuilder, PoolError, TimeoutKind};

#[tokio::test(start_paused = true)]
async fn a_broken_connection_is_closed_on_return_and_at_checkout() {
    let fake = Fake::default();
    let pool = quiet(&fake).build().unwrap();
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let (a_id, b_id) = (a.id, b.id);
    fake.break_conn(a_id);
    drop(a);
    assert_eq!(pool.status().closed.broken, 1);
    drop(b);
    fake.break_conn(b_id); // breaks while idle
    let c = pool.get().await.unwrap();
    assert!(c.id != a_id && c.id != b_id);
    assert_eq!(pool.status().closed.broken, 2);
    assert_sane(&pool);
}

#[tokio::test(start_paused = true)]
async fn a_real_check_runs_only_after_the_bypass_window() {
    let fake = Fake::default();
    let pool = quiet(&fake).build().unwrap();
    drop(pool.get().await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(fake.checks(), 0, "used 400 ms ago: bypassed");
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(fake.checks(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_check_closes_the_connection_and_the_caller_keeps_its_place() {
    let fake = Fake::default();
    let pool = quiet(&fake).build().unwrap();
    let first = pool.get().await.unwrap().id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    fake.fail_checks(Some("server closed the connection unexpectedly"));
    let conn = pool.get().await.unwrap();
    assert_ne!(conn.id, first);
    assert_eq!(pool.status().closed.check_failed, 1);
}

#[tokio::test(start_paused = true)]
async fn keepalive_finds_dead_idle_connections_before_callers_do() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .min_idle(2)
        .keepalive_interval(Some(Duration::from_secs(30)))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(1), || pool.status().idle == 2).await;
    fake.fail_checks(Some("connection reset"));
    wait_until(Duration::from_secs(32), || {
        pool.status().closed.check_failed == 2
    })
    .await;
    fake.fail_checks(None);
    // Refilled with fresh ones.
    wait_until(Duration::from_secs(2), || pool.status().idle == 2).await;
    assert_eq!(fake.creates(), 4);
}

#[tokio::test(start_paused = true)]
async fn lifetime_retires_idle_connections_with_jitter_and_never_one_in_use() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(10)
        .min_idle(8)
        .max_connecting(8)
        .max_lifetime(Some(Duration::from_secs(400)))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(1), || pool.status().idle == 8).await;
    let held = pool.get().await.unwrap();
    let held_id = held.id;
    // min_idle refills behind it.
    wait_until(Duration::from_secs(1), || pool.status().idle == 8).await;
    // Jitter is up to 2.5% of 400 s = 10 s: by 389 s none is due.
    tokio::time::sleep(Duration::from_secs(389)).await;
    assert_eq!(pool.status().closed.lifetime, 0);
    // Spread over the jitter window rather than all at once.
    let mut seen = Vec::new();
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen.push(pool.status().closed.lifetime);
    }
    assert_eq!(*seen.last().unwrap(), 8, "every idle one retired: {seen:?}");
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert!(distinct.len() >= 3, "retired in a spread: {seen:?}");
    // The held one is past its lifetime but still ours, and usable.
    assert_eq!(held.id, held_id);
    drop(held);
    assert_eq!(pool.status().closed.lifetime, 9, "retired on return");
    assert_sane(&pool);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_retires_down_to_min_idle() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(10)
        .min_idle(2)
        .idle_timeout(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let conns: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(pool.get().await.unwrap());
        }
        v
    };
    drop(conns);
    assert_eq!(pool.status().idle, 6);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let s = pool.status();
    // (The two warm connections refilled at start count among the retired.)
    assert_eq!((s.idle, s.closed.idle), (2, s.created - 2), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_held_past_the_leak_threshold_is_reported_once() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .leak_threshold(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let quick = pool.get().await.unwrap();
    drop(quick);
    let _leaked = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.status().leaks_reported, 0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        pool.status().leaks_reported,
        1,
        "reported once, not every tick"
    );
}

#[tokio::test(start_paused = true)]
async fn close_fails_waiters_and_later_gets() {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(|_| ()) })
    };
    wait_until(Duration::from_secs(1), || pool.status().waiting == 1).await;
    pool.close();
    assert!(matches!(
        waiter.await.unwrap(),
        Err(torque_pool::PoolError::Closed)
    ));
    assert!(matches!(
        pool.get().await,
        Err(torque_pool::PoolError::Closed)
    ));
    drop(held);
    let s = pool.status();
    assert_eq!((s.size, s.closed.pool_closed), (0, 1));
}

/// A quiet pool keeps `min_idle` connections, and keepalive checks them in
/// place. The connections out for their check used not to count toward
/// `min_idle`: each keepalive round opened replacements for them (up to
/// `max_connecting` at once), which idled beside them once they were back,
/// so an idle pool grew by two connections a round toward `max_size`, and
/// churned them through `idle_timeout` for ever.
#[tokio::test(start_paused = true)]
async fn keepalive_does_not_open_connections_for_the_ones_it_is_checking() {
    let fake = Fake::default();
    fake.set_create_delay(Duration::from_millis(5));
    fake.set_check_delay(Duration::from_millis(5));
    let pool = quiet(&fake)
        .max_size(20)
        .min_idle(5)
        .keepalive_interval(Some(Duration::from_secs(60)))
        .idle_timeout(Some(Duration::from_secs(600)))
        .build()
        .unwrap();
    wait_until(Duration::from_secs(1), || pool.status().idle == 5).await;
    // Fifteen quiet minutes: fifteen keepalive rounds.
    tokio::time::sleep(Duration::from_secs(15 * 60)).await;
    let s = pool.status();
    assert!(
        fake.checks() >= 5 * 14,
        "keepalive ran: {} checks",
        fake.checks()
    );
    assert_eq!(
        (s.size, fake.creates()),
        (5, 5),
        "a quiet pool opened connections beyond min_idle: {s:?}"
    );
}

/// A pool of at most two connections whose `get` gives up after a second:
/// the setup of the tests of what a timeout reports.
fn timing_out(fake: &Fake) -> PoolBuilder<Fake> {
    quiet(fake)
        .max_size(2)
        .acquire_timeout(Duration::from_secs(1))
}

/// Opens both of `pool`'s connections and leaves them idle.
async fn two_idle(pool: &Pool<Fake>) {
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    drop((a, b));
}

/// The error a `get()` that times out now reports as the backend's last
/// error, while the pool's one connection is held and a connect to replace
/// the closed one hangs (so the timeout itself says nothing of the backend).
async fn timeout_error_with_a_hung_connect(fake: &Fake, pool: &Pool<Fake>) -> Option<String> {
    let _held = pool.get().await.unwrap();
    fake.set_create_delay(Duration::from_secs(3600));
    let err = pool.get().await.expect_err("nothing to serve it in time");
    fake.set_create_delay(Duration::ZERO);
    match err {
        PoolError::Timeout {
            kind: TimeoutKind::Acquire,
            last_error,
            ..
        } => last_error.map(|e| e.0.clone()),
        other => panic!("expected an acquire timeout, got {other:?}"),
    }
}

/// Regression: a check that succeeded did not clear the error of one that
/// failed before it, so a timeout long after the backend had recovered still
/// carried that error as if the backend were failing (and a `Cluster` took
/// the host, merely busy, for a failing one and marked it down).
#[tokio::test(start_paused = true)]
async fn a_check_that_succeeds_clears_the_error_of_a_failed_one() {
    let fake = Fake::default();
    let pool = timing_out(&fake).build().unwrap();
    two_idle(&pool).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One connection was killed while idle; the other is fine.
    fake.fail_next_check("terminating connection due to administrator command");
    let conn = pool.get().await.unwrap();
    assert_eq!(
        (fake.checks(), pool.status().closed.check_failed),
        (2, 1),
        "one check failed, the next passed"
    );
    drop(conn);
    assert_eq!(timeout_error_with_a_hung_connect(&fake, &pool).await, None);
}

/// The same through keepalive: a keepalive check that succeeds after one
/// that failed clears its error.
#[tokio::test(start_paused = true)]
async fn a_keepalive_check_that_succeeds_clears_the_error_of_a_failed_one() {
    let fake = Fake::default();
    let pool = timing_out(&fake)
        .keepalive_interval(Some(Duration::from_secs(30)))
        .build()
        .unwrap();
    two_idle(&pool).await;
    // Both are due in the same keepalive round: the first check fails, the
    // second passes.
    fake.fail_next_check("terminating connection due to administrator command");
    wait_until(Duration::from_secs(40), || fake.checks() == 2).await;
    wait_until(Duration::from_secs(1), || {
        let s = pool.status();
        (s.closed.check_failed, s.idle) == (1, 1)
    })
    .await;
    assert_eq!(timeout_error_with_a_hung_connect(&fake, &pool).await, None);
}

/// A check that succeeds does not clear a connect's error: a server that
/// refuses new connections ("too many clients") still serves the ones it
/// has, and a timeout waiting for a new connection must still say why.
#[tokio::test(start_paused = true)]
async fn a_check_that_succeeds_keeps_the_error_of_a_failed_connect() {
    let fake = Fake::default();
    let pool = timing_out(&fake).build().unwrap();
    drop(pool.get().await.unwrap());
    fake.fail_creates(Some("sorry, too many clients already"));
    let held = pool.get().await.unwrap();
    let refused = pool.get().await.expect_err("no connection to be had");
    assert!(
        refused.backend_error().is_some(),
        "the connect failed: {refused:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let checked = fake.checks();
    fake.fail_creates(None);
    assert_eq!(
        timeout_error_with_a_hung_connect(&fake, &pool)
            .await
            .as_deref(),
        Some("sorry, too many clients already")
    );
    assert_eq!(
        fake.checks(),
        checked + 1,
        "the held connection's check passed"
    );
}

/// The error stays while it is current: with no success since, the timeout
/// carries the failed check's error.
#[tokio::test(start_paused = true)]
async fn a_timeout_carries_the_error_of_a_failed_check_until_something_succeeds() {
    let fake = Fake::default();
    let pool = timing_out(&fake).build().unwrap();
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fake.fail_next_check("terminating connection due to administrator command");
    // `a` fails its check; the caller waits for a connect, which hangs.
    fake.set_create_delay(Duration::from_secs(3600));
    let err = pool.get().await.expect_err("nothing to serve it in time");
    drop(b);
    assert!(
        matches!(
            &err,
            PoolError::Timeout { kind: TimeoutKind::Acquire, last_error: Some(e), .. }
                if e.0.contains("administrator command")
        ),
        "{err:?}"
    );
}
