//! A real failover, on servers of the test's own: a throwaway PostgreSQL
//! primary, a streaming replica made from it with `pg_basebackup`, then the
//! primary stopped and the replica promoted. Roles come from the real
//! `pg_is_in_recovery()`, and the write refused by the standby is the
//! server's own SQLSTATE 25006. The shared server is not touched.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use torque_pool::{PgCluster, PgManager, PoolConfig, Role};
use torque_testkit::ThrowawayServer;

fn config(addr: SocketAddr) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    config
}

fn pool_config() -> PoolConfig {
    let mut pool = PoolConfig::default();
    pool.max_size = 4;
    pool.min_idle = 1;
    pool.acquire_timeout = Duration::from_secs(2);
    pool
}

/// Polls `cond` until it holds; fails with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_the_writes_once_the_primary_is_gone() {
    let primary = ThrowawayServer::start_postgres()
        .expect("a throwaway PostgreSQL primary (initdb and postgres from the local install)");
    let replica = ThrowawayServer::start_postgres_replica(&primary)
        .expect("a streaming replica of it (pg_basebackup from the local install)");

    let cluster = PgCluster::builder(PgManager::new(config(primary.addr())))
        .replica(PgManager::new(config(replica.addr())))
        .role_check_interval(Duration::from_millis(200))
        .pool(pool_config())
        .build()
        .expect("cluster");

    // The real roles, as pg_is_in_recovery() reports them.
    wait_until(Duration::from_secs(10), "both hosts probed", || async {
        cluster.hosts().iter().all(|h| h.up && h.pool.acquired > 0)
    })
    .await;
    let roles: Vec<Role> = cluster.hosts().iter().map(|h| h.role).collect();
    assert_eq!(roles, [Role::Primary, Role::Replica]);

    // Writes go to the primary and stream to the replica, where reads go.
    let conn = cluster.get().await.expect("a write connection");
    assert_eq!(conn.host(), 0);
    conn.batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .await
        .expect("write on the primary");
    drop(conn);
    wait_until(Duration::from_secs(10), "the row replicated", || async {
        let conn = cluster.get_read().await.expect("a read connection");
        assert_eq!(conn.host(), 1, "reads go to the healthy replica");
        conn.query_opt("SELECT n FROM t", &[])
            .await
            .is_ok_and(|row| row.is_some())
    })
    .await;

    // The standby refuses writes with the server's own 25006.
    let conn = cluster.get_read().await.expect("a read connection");
    let err = conn
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .expect_err("a standby takes no writes");
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    drop(conn);

    // Failover: the primary dies, the replica is promoted.
    drop(primary);
    replica.promote().expect("pg_ctl promote");

    // Writes find the promoted host without the application doing anything.
    wait_until(
        Duration::from_secs(15),
        "writes on the promoted host",
        || async {
            match cluster.get().await {
                Ok(conn) => {
                    conn.host() == 1 && conn.execute("INSERT INTO t VALUES (3)", &[]).await.is_ok()
                }
                Err(_) => false,
            }
        },
    )
    .await;
    let hosts = cluster.hosts();
    assert_eq!(hosts[1].role, Role::Primary, "{hosts:?}");
    assert!(!hosts[0].up, "the dead primary is marked down: {hosts:?}");

    // Reads fall back to the new primary: no replica is left.
    let conn = cluster.get_read().await.expect("a read connection");
    assert_eq!(conn.host(), 1);
    let count: i64 = conn
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(
        count, 2,
        "the replicated row and the one written after the failover"
    );
}
