//! A manager whose hooks (`is_broken`, `reset`, `check`, `create`) or role
//! probe panic: a sync hook's panic may reach the caller, but the pool must
//! not lose count of the connection (a slot leaked for good shrinks the pool
//! until it serves no one), waiters must not be left waiting, and a cluster
//! must keep checking the host's role.

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Fake, FakeConn, FakeError, wait_until};
use torque_pool::{
    Balance, Cluster, ClusterConfig, Manager, Pool, PoolConfig, PoolError, Role, RoleProbe,
};

const BOUND: Duration = Duration::from_secs(10);

/// The fake manager, with hooks that panic once when told to.
#[derive(Debug, Clone, Default)]
struct Panicky {
    fake: Fake,
    panic_in_is_broken: Arc<AtomicBool>,
    panic_in_reset: Arc<AtomicBool>,
    panic_in_role: Arc<AtomicBool>,
    panic_in_check: Arc<AtomicBool>,
}

fn once(flag: &AtomicBool, what: &str) {
    if flag.swap(false, Ordering::SeqCst) {
        panic!("the test manager panics in {what}");
    }
}

impl Manager for Panicky {
    type Connection = FakeConn;
    type Error = FakeError;

    async fn create(&self) -> Result<FakeConn, FakeError> {
        self.fake.create().await
    }
    async fn check(&self, conn: &mut FakeConn) -> Result<(), FakeError> {
        once(&self.panic_in_check, "check");
        self.fake.check(conn).await
    }
    fn is_broken(&self, conn: &FakeConn) -> bool {
        once(&self.panic_in_is_broken, "is_broken");
        self.fake.is_broken(conn)
    }
    fn reset(&self, _conn: &mut FakeConn) -> Result<(), FakeError> {
        once(&self.panic_in_reset, "reset");
        Ok(())
    }
}

impl RoleProbe for Panicky {
    async fn role(&self, conn: &mut FakeConn) -> Result<Role, FakeError> {
        once(&self.panic_in_role, "role");
        self.fake.role(conn).await
    }
}

fn pool(m: &Panicky) -> Pool<Panicky> {
    Pool::builder(m.clone())
        .max_size(1)
        .min_idle(0)
        .keepalive_interval(None)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(1))
        .seed(1)
        .build()
        .unwrap()
}

/// The pool serves again and counts no connection it does not have.
async fn assert_recovers(pool: &Pool<Panicky>) {
    let s = pool.status();
    assert_eq!(
        (s.in_use, s.waiting),
        (0, 0),
        "nothing left checked out: {s:?}"
    );
    let conn = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("no hang")
        .expect("the pool serves again (max_size 1: its only slot came back)");
    drop(conn);
    let s = pool.status();
    assert_eq!((s.size, s.idle, s.in_use), (1, 1, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_reset_that_panics_on_return_does_not_leak_the_slot() {
    let m = Panicky::default();
    let pool = pool(&m);
    let conn = pool.get().await.unwrap();
    m.panic_in_reset.store(true, Ordering::SeqCst);
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(conn)));
    assert!(dropped.is_err(), "the manager's panic reaches the caller");
    assert_recovers(&pool).await;
    assert_eq!(pool.status().closed.broken, 1, "closed as broken");
}

#[tokio::test(start_paused = true)]
async fn an_is_broken_that_panics_on_return_does_not_leak_the_slot() {
    let m = Panicky::default();
    let pool = pool(&m);
    let conn = pool.get().await.unwrap();
    m.panic_in_is_broken.store(true, Ordering::SeqCst);
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(conn)));
    assert!(dropped.is_err(), "the manager's panic reaches the caller");
    assert_recovers(&pool).await;
}

#[tokio::test(start_paused = true)]
async fn an_is_broken_that_panics_at_checkout_does_not_leak_the_slot() {
    let m = Panicky::default();
    let pool = pool(&m);
    drop(pool.get().await.unwrap());
    m.panic_in_is_broken.store(true, Ordering::SeqCst);
    let get = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    let joined = tokio::time::timeout(BOUND, get).await.expect("no hang");
    assert!(
        joined.unwrap_err().is_panic(),
        "the manager's panic reaches the caller"
    );
    assert_recovers(&pool).await;
}

/// A role probe that panics once: the host is probed again (as after a
/// failed probe), so a role change is still seen.
#[tokio::test(start_paused = true)]
async fn a_role_probe_that_panics_does_not_stop_role_checks() {
    let primary = Panicky::default();
    let replica = Panicky::default();
    replica.fake.set_replica(true);
    primary.panic_in_role.store(true, Ordering::SeqCst);
    let mut pool = PoolConfig::default();
    pool.min_idle = 0;
    let mut config = ClusterConfig::default();
    config.role_check_interval = Duration::from_millis(100);
    config.pool = pool;
    let cluster = Cluster::builder(primary.clone())
        .replica(replica.clone())
        .config(config)
        .seed(1)
        .build()
        .unwrap();
    // The first probe of the primary panicked; the primary is then demoted
    // and the replica promoted. The role checks must see it.
    wait_until(BOUND, || !primary.panic_in_role.load(Ordering::SeqCst)).await;
    primary.fake.set_replica(true);
    replica.fake.set_replica(false);
    wait_until(BOUND, || {
        let hosts = cluster.hosts();
        hosts[0].role == Role::Replica && hosts[1].role == Role::Primary
    })
    .await;
    let write = tokio::time::timeout(BOUND, cluster.get())
        .await
        .expect("no hang")
        .expect("served by the promoted host");
    assert_eq!(write.host(), 1);
}

/// A pool of the plain fake manager (whose connect can be told to panic),
/// with no background work but the reconnects.
fn fake_pool(fake: &Fake, max_size: usize) -> Pool<Fake> {
    Pool::builder(fake.clone())
        .max_size(max_size)
        .min_idle(0)
        .keepalive_interval(None)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .seed(1)
        .build()
        .unwrap()
}

/// A connect that panics is a failed connect: the next attempt comes after
/// the reconnect backoff (10 ms, at most 50 ms while someone waits), not
/// whenever the background task next happens to wake (its 500 ms
/// maintenance interval, or the waiter's acquire timeout).
#[tokio::test(start_paused = true)]
async fn after_a_connect_that_panics_the_next_attempt_comes_after_the_backoff() {
    let fake = Fake::default();
    let pool = fake_pool(&fake, 2);
    // One connection out: it could serve the waiter, so the waiter is not
    // failed when the connect panics; it waits for the next attempt.
    let _held = pool.get().await.unwrap();
    fake.knobs.panic_in_create.store(true, Ordering::SeqCst);
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    wait_until(BOUND, || {
        fake.creates() == 2 && pool.status().connecting == 0
    })
    .await;
    fake.knobs.panic_in_create.store(false, Ordering::SeqCst);
    let panicked_at = tokio::time::Instant::now();
    let got = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(got.unwrap(), 1);
    let waited = panicked_at.elapsed();
    assert!(
        waited <= Duration::from_millis(100),
        "served {waited:?} after the panic; the backoff is at most 50 ms"
    );
}

/// A connect that panics with nothing in the pool that could serve the
/// waiters fails them at once, as a connect error does, with an error that
/// says the connect panicked and why: not `Closed`, which said the pool was
/// closed when it was not (and still serves after the backoff).
#[tokio::test(start_paused = true)]
async fn a_connect_that_panics_fails_its_waiters_with_the_panic_not_closed() {
    let fake = Fake::default();
    let pool = fake_pool(&fake, 1);
    fake.knobs.panic_in_create.store(true, Ordering::SeqCst);
    let err = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("no hang")
        .expect_err("the only connect panicked");
    let text = err.to_string();
    assert!(
        !matches!(err, torque_pool::PoolError::Closed),
        "a panicked connect reported as a closed pool: {err:?}"
    );
    assert!(
        text.contains("the fake manager was told to panic"),
        "the panic's message is missing: {text}"
    );
    fake.knobs.panic_in_create.store(false, Ordering::SeqCst);
    let conn = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("no hang")
        .expect("the pool serves once connects work");
    drop(conn);
}

/// A manager whose `create` panics when called, before it returns its
/// future (the trait's methods are `fn ... -> impl Future`, so a manager
/// may do work, and panic, outside the future).
#[derive(Debug, Clone, Default)]
struct PanicsOnCall {
    fake: Fake,
    panic: Arc<AtomicBool>,
    panic_check: Arc<AtomicBool>,
}

impl Manager for PanicsOnCall {
    type Connection = FakeConn;
    type Error = FakeError;

    #[allow(clippy::manual_async_fn)]
    fn create(&self) -> impl Future<Output = Result<FakeConn, FakeError>> + Send {
        once(&self.panic, "create, before its future");
        let fake = self.fake.clone();
        async move { fake.create().await }
    }
    #[allow(clippy::manual_async_fn)]
    fn check(&self, conn: &mut FakeConn) -> impl Future<Output = Result<(), FakeError>> + Send {
        once(&self.panic_check, "check, before its future");
        self.fake.check(conn)
    }
    fn is_broken(&self, conn: &FakeConn) -> bool {
        self.fake.is_broken(conn)
    }
}

/// A `create` that panics before it returns its future is a connect that
/// panicked, like one whose future panics: its waiter is told so, with the
/// message, not `Closed` (the pool is open, and serves once connects work).
#[tokio::test(start_paused = true)]
async fn a_create_that_panics_before_its_future_fails_its_waiter_with_the_panic_not_closed() {
    let m = PanicsOnCall::default();
    m.panic.store(true, Ordering::SeqCst);
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .min_idle(0)
        .acquire_timeout(Duration::from_secs(5))
        .seed(1)
        .build()
        .unwrap();
    let err = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("no hang")
        .expect_err("the only connect panicked");
    assert!(
        matches!(&err, PoolError::ConnectPanicked { message } if message.contains("before its future")),
        "a panicked connect reported as {err:?}"
    );
    assert!(!pool.is_closed());
    let conn = tokio::time::timeout(BOUND, pool.get())
        .await
        .expect("no hang")
        .expect("the pool serves once connects work");
    drop(conn);
}

/// A cluster connection whose return panics in the manager's `reset` still
/// counts its checkout as finished: a host left with a checkout "in flight"
/// for ever looks busier than it is to the balancer (LeastBusy sends it no
/// read while another replica has fewer; PeakEwma multiplies its cost).
#[tokio::test(start_paused = true)]
async fn a_reset_that_panics_on_a_cluster_return_does_not_leak_the_in_flight_count() {
    let primary = Panicky::default();
    let replicas = [Panicky::default(), Panicky::default()];
    for r in &replicas {
        r.fake.set_replica(true);
    }
    let mut pool = PoolConfig::default();
    pool.min_idle = 0;
    let mut config = ClusterConfig::default();
    config.balance = Balance::LeastBusy;
    config.pool = pool;
    let cluster = Cluster::builder(primary.clone())
        .replica(replicas[0].clone())
        .replica(replicas[1].clone())
        .config(config)
        .seed(1)
        .build()
        .unwrap();
    wait_until(BOUND, || {
        cluster.hosts().iter().all(|h| h.pool.acquired > 0) && replicas[1].fake.role_probes() > 0
    })
    .await;
    let conn = cluster.get_read().await.unwrap();
    let host = conn.host();
    replicas[host - 1]
        .panic_in_reset
        .store(true, Ordering::SeqCst);
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(conn)));
    assert!(dropped.is_err(), "the manager's panic reaches the caller");
    let in_flight: Vec<usize> = cluster.hosts().iter().map(|h| h.in_flight).collect();
    assert_eq!(in_flight, [0, 0, 0], "nothing is checked out");
    // And the balancer treats the two replicas alike again.
    let mut counts = [0; 3];
    for _ in 0..10 {
        let a = cluster.get_read().await.unwrap();
        let b = cluster.get_read().await.unwrap();
        counts[a.host()] += 1;
        counts[b.host()] += 1;
    }
    assert_eq!(counts, [0, 10, 10], "two reads at once go to both replicas");
}

/// Regression: a `check` at checkout that panicked unwound through the
/// caller's `get()` (the caller's task died) and its connection was counted
/// `cancelled`, as if the caller had given up. A check that panics is a check
/// that failed: the connection is closed as `check_failed` and the caller
/// goes on to another, as after a check that returned an error.
#[tokio::test(start_paused = true)]
async fn a_check_that_panics_at_checkout_is_a_failed_check_and_the_caller_is_served() {
    let m = Panicky::default();
    let pool = pool(&m);
    let first = pool.get().await.unwrap().id;
    tokio::time::sleep(Duration::from_secs(1)).await; // past the bypass window
    m.panic_in_check.store(true, Ordering::SeqCst);
    let get = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    let joined = tokio::time::timeout(BOUND, get).await.expect("no hang");
    let closed = pool.status().closed;
    assert_eq!(
        (closed.check_failed, closed.cancelled),
        (1, 0),
        "counted as a failed check: {closed:?}"
    );
    let served = joined.expect("the check's panic does not reach the caller");
    let id = served.expect("served by a new connection");
    assert_ne!(id, first, "the connection whose check panicked is closed");
    assert_recovers(&pool).await;
}

/// The same for a `check` that panics when called, before it returns its
/// future.
#[tokio::test(start_paused = true)]
async fn a_check_that_panics_before_its_future_is_a_failed_check_and_the_caller_is_served() {
    let m = PanicsOnCall::default();
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .min_idle(0)
        .keepalive_interval(None)
        .acquire_timeout(Duration::from_secs(1))
        .seed(1)
        .build()
        .unwrap();
    let first = pool.get().await.unwrap().id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.panic_check.store(true, Ordering::SeqCst);
    let get = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    let joined = tokio::time::timeout(BOUND, get).await.expect("no hang");
    let s = pool.status();
    assert_eq!(
        (s.closed.check_failed, s.closed.cancelled),
        (1, 0),
        "counted as a failed check: {s:?}"
    );
    let served = joined.expect("the check's panic does not reach the caller");
    assert_ne!(served.expect("served by a new connection"), first);
    assert_eq!((s.size, s.idle, s.in_use, s.waiting), (1, 1, 0, 0), "{s:?}");
}

/// A pool that runs keepalive, and nothing else in the background.
fn keepalive_pool(m: &Panicky) -> Pool<Panicky> {
    Pool::builder(m.clone())
        .max_size(1)
        .min_idle(0)
        .keepalive_interval(Some(Duration::from_secs(30)))
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(1))
        .seed(1)
        .build()
        .unwrap()
}

/// A keepalive `check` that panics (in the pool's own task) closes the
/// connection as a failed check, and its slot comes back.
#[tokio::test(start_paused = true)]
async fn a_keepalive_check_that_panics_closes_the_connection_as_check_failed() {
    let m = Panicky::default();
    let pool = keepalive_pool(&m);
    drop(pool.get().await.unwrap());
    m.panic_in_check.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(40), || {
        let s = pool.status();
        (s.closed.check_failed, s.size) == (1, 0)
    })
    .await;
    assert!(!m.panic_in_check.load(Ordering::SeqCst), "the check ran");
    assert_recovers(&pool).await;
}

/// The same for `is_broken` panicking in keepalive.
#[tokio::test(start_paused = true)]
async fn an_is_broken_that_panics_in_keepalive_does_not_leak_the_slot() {
    let m = Panicky::default();
    let pool = keepalive_pool(&m);
    drop(pool.get().await.unwrap());
    m.panic_in_is_broken.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(40), || pool.status().size == 0).await;
    assert!(!m.panic_in_is_broken.load(Ordering::SeqCst), "it ran");
    assert_recovers(&pool).await;
}

/// A `reset` that panics on return while a caller waits for that very
/// connection: the connection is closed, and the waiter is served by a new
/// one instead of waiting out its timeout.
#[tokio::test(start_paused = true)]
async fn a_reset_that_panics_with_a_waiter_in_line_still_serves_the_waiter() {
    let m = Panicky::default();
    let pool = pool(&m);
    let held = pool.get().await.unwrap();
    let first = held.id;
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    wait_until(BOUND, || pool.status().waiting == 1).await;
    m.panic_in_reset.store(true, Ordering::SeqCst);
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(held)));
    assert!(dropped.is_err(), "the manager's panic reaches the caller");
    let served = tokio::time::timeout(Duration::from_millis(500), waiter)
        .await
        .expect("served before its 1 s acquire timeout")
        .unwrap()
        .expect("served by a new connection");
    assert_ne!(served, first);
    assert_eq!(pool.status().closed.broken, 1);
    assert_recovers(&pool).await;
}

/// A role probe that panics gives its connection back: the host's pool can
/// still hand out all of its `max_size` connections, and the cluster counts
/// nothing in flight.
#[tokio::test(start_paused = true)]
async fn a_role_probe_that_panics_gives_its_connection_back() {
    let primary = Panicky::default();
    primary.panic_in_role.store(true, Ordering::SeqCst);
    let mut pool = PoolConfig::default();
    pool.min_idle = 0;
    pool.max_size = 2;
    pool.acquire_timeout = Duration::from_secs(1);
    let mut config = ClusterConfig::default();
    config.role_check_interval = Duration::from_millis(100);
    config.pool = pool;
    let cluster = Cluster::builder(primary.clone())
        .config(config)
        .seed(1)
        .build()
        .unwrap();
    wait_until(BOUND, || !primary.panic_in_role.load(Ordering::SeqCst)).await;
    // The next probe succeeds and finds the primary.
    wait_until(BOUND, || primary.fake.role_probes() > 0).await;
    let hosts = cluster.hosts();
    assert_eq!(hosts[0].in_flight, 0, "{:?}", hosts[0]);
    let a = tokio::time::timeout(BOUND, cluster.get())
        .await
        .expect("no hang");
    let b = tokio::time::timeout(BOUND, cluster.get())
        .await
        .expect("no hang");
    assert!(a.is_ok() && b.is_ok(), "both slots are there: {a:?} {b:?}");
    drop((a, b));
    let s = cluster.pool(0).status();
    assert_eq!((s.in_use, s.waiting), (0, 0), "{s:?}");
    assert!(s.size <= 2, "{s:?}");
    assert_eq!(cluster.hosts()[0].in_flight, 0);
}
