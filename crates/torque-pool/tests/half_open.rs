//! A half-open server (the proxy's blackhole: connections accepted, nothing
//! answered, nothing closed) under load, with the pool's default settings:
//! no `get()` hangs past its timeout, and the pool recovers soon after the
//! server answers again.

mod load;

use std::time::Duration;

use tokio::time::Instant;
use torque_pool::{PgManager, Pool, PoolConfig};
use torque_testkit::{FaultProxy, pg_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_server_never_hangs_callers_and_the_pool_recovers() {
    let db = pg_database().await;
    let proxy = FaultProxy::start(db.tcp_addr()).await.unwrap();
    let defaults = PoolConfig::default();
    let pool = Pool::builder(PgManager::new(db.config_via(proxy.addr())))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());

    let t0 = Instant::now();
    let run_for = Duration::from_secs(6);
    let load = {
        let pool = pool.clone();
        // The caller's own query timeout: a query stuck in the blackhole is
        // abandoned, and the pool must then not reuse that connection.
        tokio::spawn(async move { load::run(&pool, 8, t0, run_for, Duration::from_secs(1)).await })
    };
    tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
    proxy.set_blackhole(true);
    tokio::time::sleep_until(t0 + Duration::from_secs(3)).await;
    proxy.set_blackhole(false);
    let back_at = t0.elapsed();
    let calls = load.await.unwrap();

    let margin = Duration::from_secs(1);
    let slowest = calls.iter().map(|c| c.get_took).max().unwrap();
    assert!(
        slowest <= defaults.acquire_timeout + margin,
        "a get hung: {slowest:?}"
    );
    let first_ok_after = calls
        .iter()
        .filter(|c| c.at >= back_at && c.error.is_none())
        .map(|c| c.at + c.get_took - back_at)
        .min();
    let last_error = calls
        .iter()
        .filter(|c| c.error.is_some())
        .map(|c| c.at + c.total)
        .max();
    // Recovered: calls that start a second after the server answers again
    // all succeed (the 1 s goal, with the margin measured below).
    let late: Vec<_> = calls
        .iter()
        .filter(|c| c.at >= back_at + Duration::from_secs(1) && c.error.is_some())
        .collect();
    assert!(
        late.is_empty(),
        "still failing 1 s after recovery: {late:?}"
    );
    println!(
        "half-open: {} calls, {} errors; slowest get {slowest:?}; first success {first_ok_after:?} \
         after the blackhole lifted; last error ended at {last_error:?} (lifted at {back_at:?}); {:?}",
        calls.len(),
        calls.iter().filter(|c| c.error.is_some()).count(),
        pool.status()
    );
}
