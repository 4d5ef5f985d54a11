//! `PgCluster` against the real PostgreSQL, each "host" a `FaultProxy` in
//! front of the same server.
//!
//! There are no real replicas on the test machine, and the shared server is
//! never reconfigured, so a failover is played out honestly but partly: the
//! role query is pointed at a table the test controls (`PgManager::role_query`)
//! instead of `pg_is_in_recovery()`, while the connections, the SQLSTATE 25006
//! (the real server's answer to a write in a read-only transaction), the
//! timers and the down host (a proxy refusing and resetting connections) are
//! real.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use torque_pool::{Balance, PgCluster, PgManager, PoolConfig, PoolError, Role};
use torque_testkit::{FaultProxy, TestDatabase, pg_database};

/// Polls `cond` (real time) until it holds; fails after `limit`.
async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A database with a `roles` table (`host`, `in_recovery`) standing in for
/// each host's `pg_is_in_recovery()`, and a table `t` to write to.
async fn database(hosts: &[(&str, bool)]) -> TestDatabase {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE roles (host text PRIMARY KEY, in_recovery bool NOT NULL);
             CREATE TABLE t (n int)",
        )
        .await
        .unwrap();
    for (host, in_recovery) in hosts {
        client
            .execute("INSERT INTO roles VALUES ($1, $2)", &[host, in_recovery])
            .await
            .unwrap();
    }
    db
}

async fn set_roles(db: &TestDatabase, primary: &str) {
    db.connect()
        .await
        .execute("UPDATE roles SET in_recovery = (host <> $1)", &[&primary])
        .await
        .unwrap();
}

fn manager(db: &TestDatabase, via: SocketAddr, host: &str) -> PgManager {
    PgManager::new(db.config_via(via)).role_query(format!(
        "SELECT in_recovery FROM roles WHERE host = '{host}'"
    ))
}

fn pool_config() -> PoolConfig {
    let mut pool = PoolConfig::default();
    pool.max_size = 4;
    pool.min_idle = 1;
    pool.acquire_timeout = Duration::from_secs(2);
    pool
}

async fn probed(cluster: &PgCluster) {
    wait_for(Duration::from_secs(5), "first role probes", || {
        cluster.hosts().iter().all(|h| h.pool.acquired > 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_read_only_error_rechecks_roles_and_moves_writes() {
    let db = database(&[("a", false), ("b", true)]).await;
    let (pa, pb) = (
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
    );
    // The timer is far away: only the 25006 can explain a prompt re-check.
    let interval = Duration::from_secs(600);
    let cluster = PgCluster::builder(manager(&db, pa.addr(), "a"))
        .replica(manager(&db, pb.addr(), "b"))
        .role_check_interval(interval)
        .pool(pool_config())
        .build()
        .unwrap();
    probed(&cluster).await;
    let roles: Vec<Role> = cluster.hosts().iter().map(|h| h.role).collect();
    assert_eq!(roles, [Role::Primary, Role::Replica]);

    let conn = cluster.get().await.unwrap();
    assert_eq!(conn.host(), 0);
    conn.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();

    // Failover: a is demoted, b promoted. A demoted server refuses writes;
    // this session is made read-only so that the real server answers the
    // next write with SQLSTATE 25006.
    set_roles(&db, "b").await;
    conn.batch_execute("SET default_transaction_read_only = on")
        .await
        .unwrap();
    let err = conn
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    let t = Instant::now();
    drop(conn);

    wait_for(
        Duration::from_secs(5),
        "roles re-checked after 25006",
        || {
            let h = cluster.hosts();
            h[0].role == Role::Replica && h[1].role == Role::Primary
        },
    )
    .await;
    let seen_after = t.elapsed();
    let conn = cluster.get().await.unwrap();
    assert_eq!(conn.host(), 1, "writes moved to the promoted host");
    conn.execute("INSERT INTO t VALUES (3)", &[]).await.unwrap();
    assert_eq!(cluster.get_read().await.unwrap().host(), 0);
    println!("25006: roles re-checked and writes moved {seen_after:?} after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_flip_is_seen_on_the_timer() {
    let db = database(&[("a", false), ("b", true)]).await;
    let (pa, pb) = (
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
    );
    let interval = Duration::from_millis(300);
    let cluster = PgCluster::builder(manager(&db, pa.addr(), "a"))
        .replica(manager(&db, pb.addr(), "b"))
        .role_check_interval(interval)
        .pool(pool_config())
        .build()
        .unwrap();
    probed(&cluster).await;
    assert_eq!(cluster.get().await.unwrap().host(), 0);

    set_roles(&db, "b").await;
    let t = Instant::now();
    wait_for(interval * 10, "role flip seen on the timer", || {
        let h = cluster.hosts();
        h[0].role == Role::Replica && h[1].role == Role::Primary
    })
    .await;
    let seen_after = t.elapsed();
    let conn = cluster.get().await.unwrap();
    assert_eq!(conn.host(), 1);
    conn.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    assert_eq!(cluster.get_read().await.unwrap().host(), 0);
    println!("timer: role flip seen {seen_after:?} after it happened (interval {interval:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_replica_is_skipped_and_comes_back_without_a_caller_error() {
    let db = database(&[("a", false), ("b", true), ("c", true)]).await;
    let proxies = [
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
    ];
    let cluster = PgCluster::builder(manager(&db, proxies[0].addr(), "a"))
        .replica(manager(&db, proxies[1].addr(), "b"))
        .replica(manager(&db, proxies[2].addr(), "c"))
        .balance(Balance::RoundRobin)
        .pool(pool_config())
        .build()
        .unwrap();
    probed(&cluster).await;

    async fn read(cluster: &PgCluster) -> Result<usize, String> {
        let conn = cluster.get_read().await.map_err(|e| e.to_string())?;
        conn.query_one("SELECT 1", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn.host())
    }

    // Replica b goes away: its connections are reset, new ones refused.
    let outage = Duration::from_secs(3);
    proxies[1].restart(outage).await;
    let down_at = Instant::now();
    let mut served = [0usize; 3];
    let mut errors = Vec::new();
    while down_at.elapsed() < outage {
        match read(&cluster).await {
            Ok(host) => served[host] += 1,
            // A query on a connection whose reset arrived after checkout.
            Err(e) => errors.push(e),
        }
    }
    let status = cluster.hosts();
    assert!(!status[1].up, "b is marked down: {status:?}");
    assert!(
        served[2] > 10 * served[1],
        "reads went to c while b was down: {served:?}"
    );
    assert!(errors.len() <= 1, "{errors:?}");

    // Back: a probe finds it and reads reach it again; no caller errors.
    let back_at = Instant::now();
    let limit = cluster.config().host_backoff_max * 2;
    wait_for(limit, "b back up", || cluster.hosts()[1].up).await;
    let back_after = back_at.elapsed();
    let mut after = [0usize; 3];
    for _ in 0..20 {
        after[read(&cluster).await.unwrap()] += 1;
    }
    assert_eq!(after, [0, 10, 10]);
    println!(
        "down replica: reads while down {served:?} ({} caller errors); b back {back_after:?} \
         after the proxy accepted again; {:?}",
        errors.len(),
        cluster.hosts()[1]
    );
    // The primary's error is what a write gets while the primary is down.
    proxies[0].restart(Duration::from_secs(2)).await;
    let err = loop {
        match cluster.get().await {
            Ok(conn) => {
                // A connection checked out before the reset reached it.
                let _ = conn.query_one("SELECT 1", &[]).await;
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, PoolError::Backend(_) | PoolError::Timeout { .. }),
        "{err}"
    );
    let e = err.backend_error().expect("carries the backend error");
    println!("write while the primary is down: {err} ({:?})", e.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_replica_is_marked_down_by_its_role_probe() {
    let db = database(&[("a", false), ("b", true), ("c", true)]).await;
    let proxies = [
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
        FaultProxy::start(db.tcp_addr()).await.unwrap(),
    ];
    let mut pool = pool_config();
    pool.check_timeout = Duration::from_millis(200);
    pool.acquire_timeout = Duration::from_secs(1);
    let interval = Duration::from_millis(500);
    let cluster = PgCluster::builder(manager(&db, proxies[0].addr(), "a"))
        .replica(manager(&db, proxies[1].addr(), "b"))
        .replica(manager(&db, proxies[2].addr(), "c"))
        .balance(Balance::RoundRobin)
        .role_check_interval(interval)
        .pool(pool.clone())
        .build()
        .unwrap();
    probed(&cluster).await;

    // The caller's own query timeout: a query stuck in the blackhole is
    // abandoned (and its connection discarded).
    let query_timeout = Duration::from_millis(500);
    let read = |cluster: PgCluster| async move {
        let conn = cluster.get_read().await.map_err(|e| e.to_string())?;
        let host = conn.host();
        match tokio::time::timeout(query_timeout, conn.query_one("SELECT 1", &[])).await {
            Ok(Ok(_)) => Ok(host),
            Ok(Err(e)) => Err(format!("host {host}: {e}")),
            Err(_) => Err(format!("host {host}: query timed out")),
        }
    };

    proxies[1].set_blackhole(true);
    let t = Instant::now();
    // Detection comes from the role probe: within one interval, plus the
    // probe's own bound (a checkout, then the check timeout).
    let bound = interval + pool.acquire_timeout + pool.check_timeout;
    let mut errors = Vec::new();
    while cluster.hosts()[1].up {
        assert!(
            t.elapsed() < bound * 2,
            "b not marked down in {:?}",
            t.elapsed()
        );
        if let Err(e) = read(cluster.clone()).await {
            errors.push(e);
        }
    }
    let detected = t.elapsed();
    // Once down, reads avoid it: no more errors.
    let mut served = [0usize; 3];
    for _ in 0..50 {
        served[read(cluster.clone()).await.unwrap()] += 1;
    }
    assert_eq!(served, [0, 0, 50]);
    // Until then, reads that went to b failed: by the caller's query timeout
    // (a connection handed out unchecked), or by b's pool's acquire timeout
    // (a check or a connect hung). Such a timeout carries no backend error,
    // so it does not mark the host down (it may only be busy); the probe does.
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("host 1: query timed out") || e.starts_with("acquire timeout")),
        "{errors:?}"
    );

    proxies[1].set_blackhole(false);
    let back = Instant::now();
    wait_for(cluster.config().host_backoff_max * 2, "b back up", || {
        cluster.hosts()[1].up
    })
    .await;
    let back_after = back.elapsed();
    let mut after = [0usize; 3];
    for _ in 0..20 {
        after[read(cluster.clone()).await.unwrap()] += 1;
    }
    assert_eq!(after, [0, 10, 10]);
    println!(
        "hanging replica: marked down {detected:?} after the blackhole (bound {bound:?}); \
         reads failed meanwhile: {errors:?}; back {back_after:?} after it lifted"
    );
}
