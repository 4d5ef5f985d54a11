//! Settings at the top of their range: `validate()` accepts any non-zero
//! duration, so a caller who means "as long as it takes" and writes
//! `Duration::MAX` must get a pool that works, not one that panics adding
//! the duration to the clock (on the paused clock).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Fake, FakeConn, quiet, wait_until};
use torque_pool::{Cluster, ClusterConfig, PoolConfig, PoolError, Role};

/// A liveness bound: several seconds of (virtual) time for what takes
/// milliseconds when the pool works.
const BOUND: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn a_huge_acquire_timeout_waits_without_panicking() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(1)
        .acquire_timeout(Duration::MAX)
        .build()
        .unwrap();
    let held = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("served in time")
        .expect("served");
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    wait_until(BOUND, || pool.status().waiting == 1 || waiter.is_finished()).await;
    let id = held.id;
    drop(held);
    let got = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("served in time")
        .expect("the get() did not panic");
    assert_eq!(got.unwrap(), id);
}

#[tokio::test(start_paused = true)]
async fn a_huge_check_timeout_checks_without_panicking() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(1)
        .check_timeout(Duration::MAX)
        .check_bypass(Duration::from_millis(10))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Idle past the bypass window: this get runs a real check.
    let got = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    let got = tokio::time::timeout(BOUND, got)
        .await
        .expect("served in time")
        .expect("the get() did not panic");
    assert_eq!(got.unwrap(), 0);
    assert_eq!(fake.checks(), 1);
    assert_eq!(pool.status().size, 1);
}

/// The background task expires waiters; if it dies adding the interval to
/// the clock, a waiter's acquire timeout never fires.
#[tokio::test(start_paused = true)]
async fn a_huge_maintenance_interval_still_times_waiters_out() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(1)
        .maintenance_interval(Duration::MAX)
        .acquire_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let _held = pool.get().await.unwrap();
    let r = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("the acquire timeout fired (the get did not hang)");
    assert!(
        matches!(r, Err(PoolError::Timeout { .. })),
        "{:?}",
        r.map(|c| c.id)
    );
}

/// A lifetime that means "for ever" keeps the connection, and the caller
/// that triggered its connect gets it.
#[tokio::test(start_paused = true)]
async fn a_huge_max_lifetime_hands_the_connection_over() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(1)
        .max_lifetime(Some(Duration::MAX))
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let got = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("no hang")
        .map(|c| c.id);
    assert_eq!(got.unwrap(), 0);
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.in_use), (1, 1, 0), "{s:?}");
}

/// A failed connect with a huge backoff still fails the caller at once with
/// the backend's error (the documented fail-fast), instead of panicking in
/// the connect task and leaving the caller to its acquire timeout.
#[tokio::test(start_paused = true)]
async fn a_huge_reconnect_backoff_still_fails_fast_with_the_backend_error() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(1)
        .reconnect_backoff_min(Duration::MAX)
        .reconnect_backoff_max(Duration::MAX)
        .reconnect_backoff_max_waiting(Duration::MAX)
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    fake.fail_creates(Some("connection refused"));
    let r = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("no hang")
        .map(|c| c.id);
    match r {
        Err(PoolError::Backend(e)) => assert_eq!(e.0, "connection refused"),
        other => panic!("expected the backend's error, got {other:?}"),
    }
    assert_eq!(pool.status().size, 0);
}

/// A cluster whose pools wait "for ever" and whose roles are checked
/// "never again" after the first probe: checkouts work, and a read-only
/// error still re-checks the role (the probe must not die adding the
/// interval to the clock, before it records the role it saw).
#[tokio::test(start_paused = true)]
async fn a_cluster_with_huge_intervals_serves_and_sees_a_role_change() {
    let primary = Fake::default();
    let replica = Fake::default();
    replica.set_replica(true);
    let mut pool = PoolConfig::default();
    pool.min_idle = 0;
    pool.acquire_timeout = Duration::MAX;
    let mut config = ClusterConfig::default();
    config.role_check_interval = Duration::MAX;
    config.pool = pool;
    let cluster = Cluster::builder(primary.clone())
        .replica(replica.clone())
        .config(config)
        .seed(1)
        .build()
        .unwrap();
    wait_until(BOUND, || {
        primary.role_probes() >= 1 && replica.role_probes() >= 1
    })
    .await;
    let write = tokio::time::timeout(BOUND, cluster.get())
        .await
        .expect("no hang")
        .expect("served");
    assert_eq!(write.host(), 0);
    // The primary is demoted; a write on it sees SQLSTATE 25006.
    primary.set_replica(true);
    write.read_only_error.store(true, Ordering::SeqCst);
    drop::<torque_pool::ClusterConn<Fake>>(write);
    wait_until(BOUND, || cluster.hosts()[0].role == Role::Replica).await;
    let read = tokio::time::timeout(BOUND, cluster.get_read())
        .await
        .expect("no hang")
        .expect("served");
    let _: &FakeConn = &read;
}
