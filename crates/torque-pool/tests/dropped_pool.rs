//! Dropping every handle of a pool (or cluster) while a connection is still
//! checked out: nobody can get a connection from it any more, so its idle
//! connections must be closed and no new ones opened; the one still out is
//! closed when it comes back. (The background task holds the pool weakly
//! "so it ends when the pool is dropped"; a checked-out connection must not
//! keep it refilling `min_idle` and probing for ever.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Fake, FakeConn, FakeError, wait_until};
use torque_pool::{Cluster, ClusterConfig, Manager, Pool, PoolConfig, Role, RoleProbe};

const BOUND: Duration = Duration::from_secs(10);

/// The fake manager, counting connections open (made and not yet dropped).
#[derive(Debug, Clone, Default)]
struct Counting {
    fake: Fake,
    open: Arc<AtomicUsize>,
}

impl Counting {
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Conn {
    inner: FakeConn,
    open: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Manager for Counting {
    type Connection = Conn;
    type Error = FakeError;

    async fn create(&self) -> Result<Conn, FakeError> {
        let inner = self.fake.create().await?;
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(Conn {
            inner,
            open: self.open.clone(),
        })
    }
    async fn check(&self, conn: &mut Conn) -> Result<(), FakeError> {
        self.fake.check(&mut conn.inner).await
    }
    fn is_broken(&self, conn: &Conn) -> bool {
        self.fake.is_broken(&conn.inner)
    }
}

impl RoleProbe for Counting {
    async fn role(&self, conn: &mut Conn) -> Result<Role, FakeError> {
        self.fake.role(&mut conn.inner).await
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_pool_handle_closes_its_idle_connections() {
    let m = Counting::default();
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .min_idle(2)
        .seed(1)
        .build()
        .unwrap();
    wait_until(BOUND, || m.open() == 2).await;
    let held = pool.get().await.unwrap();
    // One idle left, below min_idle: the pool refills.
    wait_until(BOUND, || m.open() == 3).await;
    let clone = pool.clone();
    drop(pool);
    assert_eq!(m.open(), 3, "a clone still holds the pool");
    drop(clone);
    // No handle left: the idle connections go, and none is opened again.
    wait_until(BOUND, || m.open() == 1).await;
    let created = m.fake.creates();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((m.open(), m.fake.creates()), (1, created), "no refill");
    // The one still out is closed when it comes back.
    drop(held);
    assert_eq!(m.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_cluster_handle_closes_its_idle_connections_and_stops_probes() {
    let primary = Counting::default();
    let replica = Counting::default();
    replica.fake.set_replica(true);
    let mut pool = PoolConfig::default();
    pool.min_idle = 2;
    let mut config = ClusterConfig::default();
    config.role_check_interval = Duration::from_millis(100);
    config.pool = pool;
    let cluster = Cluster::builder(primary.clone())
        .replica(replica.clone())
        .config(config)
        .seed(1)
        .build()
        .unwrap();
    wait_until(BOUND, || primary.open() >= 2 && replica.open() >= 2).await;
    let held = cluster.get_read().await.unwrap();
    assert_eq!(held.host(), 1);
    drop(cluster);
    wait_until(BOUND, || primary.open() == 0 && replica.open() == 1).await;
    let probes = (primary.fake.role_probes(), replica.fake.role_probes());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        (primary.fake.role_probes(), replica.fake.role_probes()),
        probes,
        "no role probes for a cluster nobody holds"
    );
    drop(held);
    assert_eq!(replica.open(), 0);
}
