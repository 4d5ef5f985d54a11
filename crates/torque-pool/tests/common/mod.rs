//! A fake in-memory manager whose connects and checks can be slowed, failed
//! or broken on demand, for tests on tokio's paused clock.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use torque_pool::{Manager, Pool, PoolBuilder, Role, RoleProbe};

/// The fake backend's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeError(pub String);

impl fmt::Display for FakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FakeError {}

/// A fake connection: just an id.
#[derive(Debug)]
pub struct FakeConn {
    pub id: u32,
    /// Set by a test to play a "read-only" error (SQLSTATE 25006) seen on it.
    pub read_only_error: AtomicBool,
}

#[derive(Debug, Default)]
pub struct Knobs {
    pub create_delay: Mutex<Duration>,
    pub check_delay: Mutex<Duration>,
    pub create_error: Mutex<Option<String>>,
    pub check_error: Mutex<Option<String>>,
    /// The error of the next check alone (one that fails while others pass).
    pub next_check_error: Mutex<Option<String>>,
    /// Connection ids `is_broken` reports as broken.
    pub broken: Mutex<HashSet<u32>>,
    pub next_id: AtomicU32,
    pub creates_started: AtomicU32,
    pub creates_in_flight: AtomicU32,
    pub max_creates_in_flight: AtomicU32,
    pub checks: AtomicU32,
    pub dropped: AtomicU32,
    pub panic_in_create: AtomicBool,
    /// For clusters: the server answers role probes as a replica.
    pub replica: AtomicBool,
    /// The server is gone: connects and checks fail, connections are broken.
    pub down: AtomicBool,
    pub role_probes: AtomicU32,
}

/// The fake manager; clones share their knobs.
#[derive(Debug, Clone, Default)]
pub struct Fake {
    pub knobs: Arc<Knobs>,
}

impl Fake {
    pub fn set_create_delay(&self, d: Duration) {
        *self.knobs.create_delay.lock() = d;
    }
    pub fn set_check_delay(&self, d: Duration) {
        *self.knobs.check_delay.lock() = d;
    }
    pub fn fail_creates(&self, msg: Option<&str>) {
        *self.knobs.create_error.lock() = msg.map(str::to_owned);
    }
    pub fn fail_checks(&self, msg: Option<&str>) {
        *self.knobs.check_error.lock() = msg.map(str::to_owned);
    }
    /// Fails the next check only, with `msg`.
    pub fn fail_next_check(&self, msg: &str) {
        *self.knobs.next_check_error.lock() = Some(msg.to_owned());
    }
    pub fn break_conn(&self, id: u32) {
        self.knobs.broken.lock().insert(id);
    }
    pub fn creates(&self) -> u32 {
        self.knobs.creates_started.load(Ordering::SeqCst)
    }
    pub fn checks(&self) -> u32 {
        self.knobs.checks.load(Ordering::SeqCst)
    }
    pub fn set_replica(&self, on: bool) {
        self.knobs.replica.store(on, Ordering::SeqCst);
    }
    pub fn set_down(&self, on: bool) {
        self.knobs.down.store(on, Ordering::SeqCst);
    }
    pub fn role_probes(&self) -> u32 {
        self.knobs.role_probes.load(Ordering::SeqCst)
    }
    pub fn max_in_flight(&self) -> u32 {
        self.knobs.max_creates_in_flight.load(Ordering::SeqCst)
    }
}

struct InFlight<'a>(&'a Knobs);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.creates_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Manager for Fake {
    type Connection = FakeConn;
    type Error = FakeError;

    async fn create(&self) -> Result<FakeConn, FakeError> {
        let k = &*self.knobs;
        k.creates_started.fetch_add(1, Ordering::SeqCst);
        let now = k.creates_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        k.max_creates_in_flight.fetch_max(now, Ordering::SeqCst);
        let _in_flight = InFlight(k);
        let delay = *k.create_delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if k.panic_in_create.load(Ordering::SeqCst) {
            panic!("the fake manager was told to panic");
        }
        if let Some(msg) = k.create_error.lock().clone() {
            return Err(FakeError(msg));
        }
        if k.down.load(Ordering::SeqCst) {
            return Err(FakeError("connection refused".into()));
        }
        Ok(FakeConn {
            id: k.next_id.fetch_add(1, Ordering::SeqCst),
            read_only_error: AtomicBool::new(false),
        })
    }

    async fn check(&self, _conn: &mut FakeConn) -> Result<(), FakeError> {
        let k = &*self.knobs;
        k.checks.fetch_add(1, Ordering::SeqCst);
        let delay = *k.check_delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if k.down.load(Ordering::SeqCst) {
            return Err(FakeError("connection reset".into()));
        }
        if let Some(msg) = k.next_check_error.lock().take() {
            return Err(FakeError(msg));
        }
        match k.check_error.lock().clone() {
            Some(msg) => Err(FakeError(msg)),
            None => Ok(()),
        }
    }

    fn is_broken(&self, conn: &FakeConn) -> bool {
        self.knobs.down.load(Ordering::SeqCst) || self.knobs.broken.lock().contains(&conn.id)
    }
}

impl RoleProbe for Fake {
    async fn role(&self, _conn: &mut FakeConn) -> Result<Role, FakeError> {
        let k = &*self.knobs;
        k.role_probes.fetch_add(1, Ordering::SeqCst);
        if k.down.load(Ordering::SeqCst) {
            return Err(FakeError("connection reset".into()));
        }
        Ok(if k.replica.load(Ordering::SeqCst) {
            Role::Replica
        } else {
            Role::Primary
        })
    }

    fn take_read_only_error(&self, conn: &FakeConn) -> bool {
        conn.read_only_error.swap(false, Ordering::SeqCst)
    }
}

/// A builder with no background surprises: no warm-up, no keepalive,
/// lifetime or idle timeout unless a test turns them on.
pub fn quiet(fake: &Fake) -> PoolBuilder<Fake> {
    Pool::builder(fake.clone())
        .min_idle(0)
        .keepalive_interval(None)
        .max_lifetime(None)
        .idle_timeout(None)
        .seed(1)
}

/// Waits (on the paused clock, so instantly in real time) until `cond`
/// holds, failing after `limit` of virtual time.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets every ready task run (on a current-thread runtime).
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Checks the invariants visible from outside.
pub fn assert_sane(pool: &Pool<Fake>) {
    let s = pool.status();
    assert!(s.size <= s.max_size, "size above max_size: {s:?}");
    assert!(s.idle + s.in_use + s.connecting <= s.size, "{s:?}");
    assert!(s.idle == 0 || s.waiting == 0, "idle while waiting: {s:?}");
}
