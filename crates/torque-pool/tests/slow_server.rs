//! A slow server, through the fault proxy's latency: calls slow down but
//! succeed while the latency fits the timeouts, and fail with a typed
//! timeout (never hang) once checks cannot finish in `check_timeout`.

use std::time::Duration;

use tokio::time::Instant;
use torque_pool::{PgManager, Pool, TimeoutKind};
use torque_testkit::{FaultProxy, pg_database};

#[tokio::test]
async fn latency_within_the_timeouts_only_slows_calls_down() {
    let db = pg_database().await;
    let proxy = FaultProxy::start(db.tcp_addr()).await.unwrap();
    let pool = Pool::builder(PgManager::new(db.config_via(proxy.addr())))
        .min_idle(2)
        .check_bypass(Duration::from_millis(1))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    proxy.set_latency(Duration::from_millis(50), Duration::from_millis(10));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..3 {
                let conn = pool.get().await.expect("slow but within the timeouts");
                conn.simple_query("SELECT 1").await.expect("query");
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let s = pool.status();
    assert_eq!(
        (s.timeouts.acquire, s.timeouts.check, s.timeouts.create),
        (0, 0, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn latency_beyond_the_check_timeout_fails_with_a_typed_timeout_not_a_hang() {
    let db = pg_database().await;
    let proxy = FaultProxy::start(db.tcp_addr()).await.unwrap();
    let acquire_timeout = Duration::from_secs(2);
    let pool = Pool::builder(PgManager::new(db.config_via(proxy.addr())))
        .min_idle(0)
        .max_size(1)
        .acquire_timeout(acquire_timeout)
        .check_timeout(Duration::from_millis(200))
        .check_bypass(Duration::from_millis(1))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    // A round trip now takes 3 s: the check gives up after 200 ms and the
    // replacement connect cannot finish within the acquire timeout.
    proxy.set_latency(Duration::from_millis(1500), Duration::ZERO);
    // Idle past the 1 ms bypass window, so the next get checks it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Acquire), "{err:?}");
    assert!(took >= acquire_timeout, "{took:?}");
    assert!(
        took < acquire_timeout + Duration::from_secs(1),
        "hung: {took:?}"
    );
    assert!(pool.status().timeouts.check >= 1, "{:?}", pool.status());
    // Back to normal: served again.
    proxy.pass_through().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match pool.get().await {
            Ok(conn) => {
                conn.simple_query("SELECT 1").await.unwrap();
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "not recovered: {e}"),
        }
    }
}
