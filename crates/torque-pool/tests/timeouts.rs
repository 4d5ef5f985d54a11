//! Every wait has a timeout, on by default; the error says which fired and
//! carries the backend's last error.

mod common;

use std::error::Error as _;
use std::time::Duration;

use common::{Fake, FakeError, assert_sane, quiet, wait_until};
use tokio::time::Instant;
use torque_pool::{Pool, PoolConfig, PoolError, Pooled, TimeoutKind};
use torque_testkit::display_chain;

#[test]
fn timeouts_are_on_by_default() {
    let c = PoolConfig::default();
    assert_eq!(c.acquire_timeout, Duration::from_secs(5));
    assert_eq!(c.create_timeout, Duration::from_secs(5));
    assert_eq!(c.check_timeout, Duration::from_secs(1));
    assert_eq!((c.min_idle, c.max_size), (5, 20));
}

/// A pool of one connection, held by the caller, whose `get` gives up
/// after 300 ms: every other `get` waits and times out.
async fn one_held(fake: &Fake) -> (Pool<Fake>, Pooled<Fake>) {
    let pool = quiet(fake)
        .max_size(1)
        .acquire_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    (pool, held)
}

#[tokio::test(start_paused = true)]
async fn acquire_timeout_is_typed_and_ends_the_wait() {
    let fake = Fake::default();
    let (pool, _held) = one_held(&fake).await;
    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Acquire));
    assert!(err.source().is_none(), "no backend error to blame");
    let s = pool.status();
    assert_eq!((s.timeouts.acquire, s.waiting), (1, 0));
}

/// An acquire timeout says how full the pool was: here every connection
/// held by callers (so: raise `max_size` or hold connections for less
/// time), with another caller still waiting behind this one.
#[tokio::test(start_paused = true)]
async fn an_acquire_timeout_says_how_full_the_pool_was() {
    let fake = Fake::default();
    let (pool, _held) = one_held(&fake).await;
    let later = tokio::spawn({
        let pool = pool.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            pool.get().await.map(|_| ())
        }
    });
    let err = pool.get().await.unwrap_err();
    let Some(occupancy) = (match &err {
        PoolError::Timeout { occupancy, .. } => *occupancy,
        other => panic!("expected a timeout, got {other:?}"),
    }) else {
        panic!("an acquire timeout of a pool carries its occupancy: {err:?}");
    };
    assert_eq!(
        (
            occupancy.max_size,
            occupancy.in_use,
            occupancy.idle,
            occupancy.connecting,
            occupancy.waiting
        ),
        (1, 1, 0, 0, 1)
    );
    assert_eq!(
        err.to_string(),
        "acquire timeout: no connection after 300ms \
         (max_size 1: 1 in use, 0 idle, 0 connecting, 1 waiting)"
    );
    assert!(
        later.await.unwrap().is_err(),
        "the second caller timed out too"
    );
}

/// Waiters have no timer of their own (the background task expires them):
/// each still times out exactly at its own deadline.
#[tokio::test(start_paused = true)]
async fn each_waiter_times_out_at_its_own_deadline() {
    let fake = Fake::default();
    let (pool, _held) = one_held(&fake).await;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..3u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let err = pool.get().await.unwrap_err();
            (err.timeout_kind(), t0.elapsed())
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (kind, at) = t.await.unwrap();
        assert_eq!(kind, Some(TimeoutKind::Acquire));
        assert_eq!(at, Duration::from_millis(300 + 100 * i as u64));
    }
    assert_eq!(pool.status().timeouts.acquire, 3);
}

#[tokio::test(start_paused = true)]
async fn create_timeout_fails_the_waiter_as_a_create_timeout() {
    let fake = Fake::default();
    fake.set_create_delay(Duration::from_secs(60));
    let pool = quiet(&fake)
        .create_timeout(Duration::from_millis(200))
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Create));
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert!(
        matches!(err, PoolError::Timeout { waited, .. } if waited == Duration::from_millis(200))
    );
    assert_eq!(pool.status().timeouts.create, 1);
    assert_sane(&pool);
}

#[tokio::test(start_paused = true)]
async fn check_timeout_discards_the_connection_and_the_caller_gets_a_fresh_one() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .check_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let first = pool.get().await.unwrap().id;
    tokio::time::sleep(Duration::from_secs(1)).await; // past the bypass window
    fake.set_check_delay(Duration::from_secs(60));
    let start = Instant::now();
    let conn = pool.get().await.unwrap();
    assert_ne!(conn.id, first, "the unresponsive one was closed");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    let s = pool.status();
    assert_eq!((s.timeouts.check, s.closed.check_failed), (1, 1));
}

/// bb8 #141: a wrong password must surface as the auth error, at once, not
/// as "timed out" after the acquire timeout.
#[tokio::test(start_paused = true)]
async fn regression_bb8_141_auth_failure_surfaces_as_the_backend_error_not_a_timeout() {
    let fake = Fake::default();
    fake.fail_creates(Some("password authentication failed for user \"app\""));
    let pool = quiet(&fake).build().unwrap();
    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(1), "failed fast");
    assert!(matches!(err, PoolError::Backend(_)), "{err:?}");
    let source = err.source().expect("the backend error is the source");
    let fake_err = source.downcast_ref::<FakeError>().expect("typed source");
    assert!(fake_err.0.contains("password authentication failed"));
    // `{err}` is the pool's own message; the backend's is the next in the chain.
    assert!(display_chain(&err).contains("password authentication failed"));
}

/// When connections are out (so the caller waits rather than fail fast) and
/// connects fail, the acquire timeout still says why.
#[tokio::test(start_paused = true)]
async fn an_acquire_timeout_carries_the_last_connect_error() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(2)
        .acquire_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let _held = pool.get().await.unwrap();
    fake.fail_creates(Some("too many clients already"));
    let err = pool.get().await.unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Acquire));
    let source = err.source().unwrap().downcast_ref::<FakeError>().unwrap();
    assert_eq!(source.0, "too many clients already");
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_waiter_does_not_take_the_next_connection() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(1)
        .acquire_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    assert!(pool.get().await.is_err());
    drop(held);
    wait_until(Duration::from_secs(1), || pool.status().idle == 1).await;
    assert!(pool.get().await.is_ok());
}

/// Regression: `.max_size(2)` alone failed to build ("min_idle is 5 but
/// max_size is 2"), for a setting the user never touched. Unless given, the
/// default `min_idle` is lowered to `max_size`; given, it is still checked.
#[tokio::test(start_paused = true)]
async fn a_small_max_size_alone_builds_with_min_idle_lowered_to_it() {
    let fake = Fake::default();
    let pool = Pool::builder(fake.clone()).max_size(2).build().unwrap();
    wait_until(Duration::from_secs(5), || pool.status().idle == 2).await;
    assert_eq!(fake.creates(), 2, "refilled to min_idle = max_size = 2");
    let err = Pool::builder(Fake::default())
        .max_size(2)
        .min_idle(5)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("min_idle"), "{err}");
    let mut config = PoolConfig::default();
    config.max_size = 2;
    let err = Pool::builder(Fake::default())
        .config(config)
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("min_idle"),
        "a config is taken as given: {err}"
    );
}

#[tokio::test]
async fn build_rejects_bad_settings_with_a_message_that_says_what_to_change() {
    let err = Pool::builder(Fake::default())
        .max_size(2)
        .min_idle(3)
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("min_idle") && msg.contains("max_size"),
        "{msg}"
    );
    let err = Pool::builder(Fake::default())
        .max_size(0)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("max_size"));
    let err = Pool::builder(Fake::default())
        .max_lifetime(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("None"), "{err}");
}

#[test]
fn build_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Pool::builder(Fake::default()).build().unwrap_err();
    assert_eq!(err, torque_pool::BuildError::NoRuntime);
}
