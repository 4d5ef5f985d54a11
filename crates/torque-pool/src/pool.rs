//! The async [`Pool`] around the state machine, and the [`Pooled`] guard.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, timeout_at};

use crate::config::{PoolBuilder, PoolConfig};
use crate::core::{CloseReason, Core, Entry, Return};
use crate::error::{PoolError, TimeoutKind};
use crate::manager::Manager;
use crate::status::{Closed, Status, Timeouts};
use crate::telemetry;

type Conn<M> = <M as Manager>::Connection;
type BackendError<M> = <M as Manager>::Error;

/// What a waiter receives.
enum Handoff<M: Manager> {
    Conn(Entry<Conn<M>>),
    Fail(PoolError<BackendError<M>>),
}

type Waiter<M> = oneshot::Sender<Handoff<M>>;

/// The state machine's clock is the runtime's (so tests can pause it).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Hands a connection to a waiter; gives it back if the waiter has gone.
fn send_conn<M: Manager>(waiter: Waiter<M>, entry: Entry<Conn<M>>) -> Result<(), Entry<Conn<M>>> {
    waiter
        .send(Handoff::Conn(entry))
        .map_err(|back| match back {
            Handoff::Conn(entry) => entry,
            // We sent a connection, so a connection comes back.
            Handoff::Fail(_) => unreachable!("a returned hand-off is the one sent"),
        })
}

/// Who checked a connection out and when, for leak reports.
struct Lease {
    since: Instant,
    caller: &'static Location<'static>,
    reported: bool,
}

struct State<M: Manager> {
    core: Core<Conn<M>, Waiter<M>>,
    /// The backend's last error since the last successful connect or check.
    last_error: Option<Arc<BackendError<M>>>,
    /// Checked-out connections by id, kept only when leak detection is on.
    leases: HashMap<u64, Lease>,
    /// When the background task will next run; a waiter whose deadline comes
    /// sooner wakes it.
    next_wake: Option<std::time::Instant>,
}

struct Inner<M: Manager> {
    manager: M,
    config: PoolConfig,
    state: Mutex<State<M>>,
    wake: Arc<Notify>,
    runtime: tokio::runtime::Handle,
    acquired: AtomicU64,
    timeouts: [AtomicU64; 3],
    leaks_reported: AtomicU64,
    labels: telemetry::Labels,
}

/// A health-checked async pool of connections made by a [`Manager`].
///
/// Cloning is cheap and shares the pool. See the [crate documentation](crate)
/// for an example and what the pool does.
pub struct Pool<M: Manager> {
    inner: Arc<Inner<M>>,
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Manager + fmt::Debug> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("manager", &self.inner.manager)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl<M: Manager> Pool<M> {
    /// Starts building a pool of `manager`'s connections.
    pub fn builder(manager: M) -> PoolBuilder<M> {
        PoolBuilder::new(manager)
    }

    pub(crate) fn start(
        manager: M,
        config: PoolConfig,
        seed: u64,
        runtime: tokio::runtime::Handle,
        labels: telemetry::Labels,
    ) -> Pool<M> {
        let core = Core::new(config.core(seed));
        let inner = Arc::new(Inner {
            manager,
            config,
            state: Mutex::new(State {
                core,
                last_error: None,
                leases: HashMap::new(),
                next_wake: None,
            }),
            wake: Arc::new(Notify::new()),
            runtime,
            acquired: AtomicU64::new(0),
            timeouts: Default::default(),
            leaks_reported: AtomicU64::new(0),
            labels,
        });
        inner
            .runtime
            .spawn(maintain(Arc::downgrade(&inner), inner.wake.clone()));
        Pool { inner }
    }

    /// Checks out a healthy connection, waiting in line (first come, first
    /// served) for at most `acquire_timeout`.
    ///
    /// The connection is `is_broken`-tested, and really checked if it idled
    /// longer than the check bypass window; one that fails is closed and the
    /// caller keeps its place in line. Dropping the returned future at any
    /// point is safe: it never loses a connection or a slot.
    ///
    /// The call site is recorded for leak reports.
    ///
    /// # Errors
    /// - [`PoolError::Timeout`] of kind `Acquire` when no healthy connection
    ///   came in time (with the backend's last error, if it is failing), or of
    ///   kind `Create` when the connect this caller waited for timed out and
    ///   nothing else could serve it;
    /// - [`PoolError::Backend`] when connecting failed and nothing in the pool
    ///   could serve the caller (a wrong password surfaces here at once);
    /// - [`PoolError::Closed`] after [`close`](Self::close).
    #[track_caller]
    pub fn get(
        &self,
    ) -> impl Future<Output = Result<Pooled<M>, PoolError<BackendError<M>>>> + Send + '_ {
        let caller = Location::caller();
        self.acquire(caller)
    }

    pub(crate) async fn acquire(
        &self,
        caller: &'static Location<'static>,
    ) -> Result<Pooled<M>, PoolError<BackendError<M>>> {
        let inner = &self.inner;
        let start = Instant::now();
        let deadline = start + inner.config.acquire_timeout;
        let mut front = false;
        loop {
            let mut close = Vec::new();
            let mut wake = false;
            let (step, creates) = {
                let mut st = inner.state.lock();
                if st.core.is_closed() {
                    return Err(PoolError::Closed);
                }
                let now = now();
                let step = match st.core.take_idle(now, &mut close) {
                    Some((entry, needs_check)) => Step::Ready(entry, needs_check),
                    None => {
                        let (tx, rx) = oneshot::channel();
                        let deadline = deadline.into_std();
                        let id = st.core.push_waiter(tx, deadline, front);
                        // Waiters have no timer each (registering one per wait
                        // costs more than the rest of the wait path): the
                        // background task expires them, so it must wake in time.
                        // A waiter may also bring the next reconnect attempt
                        // forward (the lower backoff cap while someone waits).
                        let retry = st.core.retry_at().filter(|&r| r > now);
                        let due = retry.map_or(deadline, |r| r.min(deadline));
                        wake = st.next_wake.is_none_or(|w| due < w);
                        Step::Wait(id, rx)
                    }
                };
                (step, st.core.plan_creates(now))
            };
            if wake {
                inner.wake.notify_one();
            }
            drop(close);
            inner.spawn_creates(creates);

            let (entry, needs_check) = match step {
                Step::Ready(entry, needs_check) => (entry, needs_check),
                Step::Wait(id, rx) => {
                    let mut wait = WaitGuard {
                        inner,
                        id,
                        rx,
                        armed: true,
                    };
                    let outcome = (&mut wait.rx).await;
                    wait.armed = false;
                    match outcome {
                        Ok(Handoff::Conn(entry)) => (entry, false),
                        Ok(Handoff::Fail(mut err)) => {
                            if let PoolError::Timeout { waited, .. } = &mut err {
                                *waited = start.elapsed();
                            }
                            return Err(err);
                        }
                        Err(_) => return Err(PoolError::Closed),
                    }
                }
            };
            if let Some(entry) = inner.validate(entry, needs_check, deadline).await {
                let waited = start.elapsed();
                inner.acquired.fetch_add(1, Ordering::Relaxed);
                telemetry::acquired(&inner.labels, waited);
                if inner.config.leak_threshold.is_some() {
                    inner.state.lock().leases.insert(
                        entry.meta.id,
                        Lease {
                            since: Instant::now(),
                            caller,
                            reported: false,
                        },
                    );
                }
                return Ok(Pooled {
                    entry: Some(entry),
                    pool: inner.clone(),
                });
            }
            if Instant::now() >= deadline {
                return Err(inner.acquire_timed_out(start));
            }
            // The connection failed its check: keep our place in line.
            front = true;
        }
    }

    /// A snapshot of sizes and counters.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// The settings the pool runs with.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The manager.
    pub fn manager(&self) -> &M {
        &self.inner.manager
    }

    /// Closes the pool: idle connections are closed now, checked-out ones when
    /// they come back, waiters and later `get()`s fail with
    /// [`PoolError::Closed`], and the background task stops.
    pub fn close(&self) {
        let idle = {
            let mut st = self.inner.state.lock();
            let (idle, waiters) = st.core.close();
            for w in waiters {
                let _ = w.send(Handoff::Fail(PoolError::Closed));
            }
            idle
        };
        drop(idle);
        self.inner.wake.notify_one();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().core.is_closed()
    }
}

enum Step<M: Manager> {
    Ready(Entry<Conn<M>>, bool),
    Wait(u64, oneshot::Receiver<Handoff<M>>),
}

/// Leaves the line if the `get()` future is dropped while waiting; a
/// connection handed over in the meantime goes on to the next in line.
struct WaitGuard<'a, M: Manager> {
    inner: &'a Arc<Inner<M>>,
    id: u64,
    rx: oneshot::Receiver<Handoff<M>>,
    armed: bool,
}

impl<M: Manager> Drop for WaitGuard<'_, M> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self
            .inner
            .state
            .lock()
            .core
            .remove_waiter(self.id)
            .is_some()
        {
            return;
        }
        // Already served: hand-offs are sent under the lock, so whatever was
        // sent is in the channel now.
        self.rx.close();
        if let Ok(Handoff::Conn(entry)) = self.rx.try_recv() {
            self.inner.release(entry, Return::Reuse);
        }
    }
}

/// Closes the connection if the `get()` future is dropped mid-check: the
/// check's round trip may be half done, so its state is unknown.
struct CheckGuard<'a, M: Manager> {
    inner: &'a Arc<Inner<M>>,
    entry: Option<Entry<Conn<M>>>,
}

impl<M: Manager> Drop for CheckGuard<'_, M> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.inner
                .release(entry, Return::Close(CloseReason::Cancelled));
        }
    }
}

/// Gives the slot back if a create task dies without finishing (a panic in
/// the manager, or a runtime shutting down).
struct CreateGuard<M: Manager> {
    inner: Option<Arc<Inner<M>>>,
}

impl<M: Manager> Drop for CreateGuard<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let waiters = inner.state.lock().core.create_failed(now());
            // Dropped senders read as "closed" to the waiters.
            drop(waiters);
        }
    }
}

/// Puts a connection back (as failed) if a keepalive task dies mid-check.
struct KeepaliveGuard<M: Manager> {
    inner: Arc<Inner<M>>,
    entry: Option<Entry<Conn<M>>>,
}

impl<M: Manager> Drop for KeepaliveGuard<M> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.inner.keepalive_done(entry, false);
        }
    }
}

impl<M: Manager> Inner<M> {
    fn acquire_timed_out(&self, start: Instant) -> PoolError<BackendError<M>> {
        self.count_timeout(TimeoutKind::Acquire);
        PoolError::Timeout {
            kind: TimeoutKind::Acquire,
            waited: start.elapsed(),
            last_error: self.state.lock().last_error.clone(),
        }
    }

    fn count_timeout(&self, kind: TimeoutKind) {
        let i = match kind {
            TimeoutKind::Acquire => 0,
            TimeoutKind::Create => 1,
            TimeoutKind::Check => 2,
        };
        self.timeouts[i].fetch_add(1, Ordering::Relaxed);
        telemetry::timeout(&self.labels, kind);
    }

    /// `is_broken`, then a real check if the connection idled past the bypass
    /// window. `None`: it failed and was closed.
    async fn validate(
        self: &Arc<Self>,
        entry: Entry<Conn<M>>,
        needs_check: bool,
        deadline: Instant,
    ) -> Option<Entry<Conn<M>>> {
        if self.manager.is_broken(&entry.conn) {
            self.release(entry, Return::Close(CloseReason::Broken));
            return None;
        }
        if !needs_check {
            return Some(entry);
        }
        let mut guard = CheckGuard {
            inner: self,
            entry: Some(entry),
        };
        let check_deadline = (Instant::now() + self.config.check_timeout).min(deadline);
        let outcome = match guard.entry.as_mut() {
            Some(entry) => timeout_at(check_deadline, self.manager.check(&mut entry.conn)).await,
            None => return None,
        };
        let mut entry = guard.entry.take()?;
        match outcome {
            Ok(Ok(())) => {
                entry.meta.last_alive = now();
                Some(entry)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connection failed its check; closing it");
                self.state.lock().last_error = Some(Arc::new(e));
                self.release(entry, Return::Close(CloseReason::CheckFailed));
                None
            }
            Err(_) => {
                if check_deadline < deadline {
                    self.count_timeout(TimeoutKind::Check);
                }
                tracing::debug!("connection check timed out; closing it");
                self.release(entry, Return::Close(CloseReason::CheckFailed));
                None
            }
        }
    }

    /// A checked-out connection comes back (to a waiter, to idle, or closed).
    fn release(self: &Arc<Self>, entry: Entry<Conn<M>>, how: Return) {
        let (close, creates) = {
            let mut st = self.state.lock();
            if self.config.leak_threshold.is_some() {
                st.leases.remove(&entry.meta.id);
            }
            let now = now();
            let close = st.core.release(entry, how, now, send_conn::<M>);
            (close, st.core.plan_creates(now))
        };
        drop(close);
        self.spawn_creates(creates);
    }

    fn keepalive_done(self: &Arc<Self>, entry: Entry<Conn<M>>, ok: bool) {
        let (close, creates) = {
            let mut st = self.state.lock();
            let now = now();
            let close = st.core.keepalive_done(entry, ok, now, send_conn::<M>);
            (close, st.core.plan_creates(now))
        };
        drop(close);
        self.spawn_creates(creates);
    }

    fn spawn_creates(self: &Arc<Self>, n: usize) {
        for _ in 0..n {
            let inner = self.clone();
            self.runtime.spawn(inner.create_one());
        }
    }

    /// One connect, whose slot [`Core::plan_create`] has reserved.
    async fn create_one(self: Arc<Self>) {
        let mut guard = CreateGuard {
            inner: Some(self.clone()),
        };
        let result = tokio::time::timeout(self.config.create_timeout, self.manager.create()).await;
        guard.inner = None;
        let failed = result.as_ref().map_or(true, |r| r.is_err());
        let (close, creates) = {
            let mut st = self.state.lock();
            let now = now();
            let close = match result {
                Ok(Ok(conn)) => {
                    st.last_error = None;
                    st.core.create_succeeded(conn, now, send_conn::<M>)
                }
                Ok(Err(e)) => {
                    let e = Arc::new(e);
                    tracing::warn!(error = %e, "cannot connect");
                    st.last_error = Some(e.clone());
                    for w in st.core.create_failed(now) {
                        let _ = w.send(Handoff::Fail(PoolError::Backend(e.clone())));
                    }
                    None
                }
                Err(_) => {
                    self.count_timeout(TimeoutKind::Create);
                    tracing::warn!(
                        timeout = ?self.config.create_timeout,
                        "connect timed out"
                    );
                    let last_error = st.last_error.clone();
                    for w in st.core.create_failed(now) {
                        let _ = w.send(Handoff::Fail(PoolError::Timeout {
                            kind: TimeoutKind::Create,
                            waited: Duration::ZERO,
                            last_error: last_error.clone(),
                        }));
                    }
                    None
                }
            };
            (close, st.core.plan_creates(now))
        };
        drop(close);
        self.spawn_creates(creates);
        if failed {
            // The background task retries once the backoff has passed.
            self.wake.notify_one();
        }
    }

    /// One round of background work; returns when the next is due.
    fn maintain_once(self: &Arc<Self>, published: &mut Status) -> Instant {
        let tokio_now = Instant::now();
        let mut close = Vec::new();
        let (due, creates, next) = {
            let mut st = self.state.lock();
            if st.core.is_closed() {
                return tokio_now + self.config.maintenance_interval;
            }
            let now = now();
            let expired = st.core.expire_waiters(now);
            if !expired.is_empty() {
                let last_error = st.last_error.clone();
                for w in expired {
                    self.count_timeout(TimeoutKind::Acquire);
                    let _ = w.send(Handoff::Fail(PoolError::Timeout {
                        kind: TimeoutKind::Acquire,
                        waited: Duration::ZERO,
                        last_error: last_error.clone(),
                    }));
                }
            }
            let due = st.core.maintain(now, &mut close);
            if let Some(threshold) = self.config.leak_threshold {
                for (id, lease) in st.leases.iter_mut() {
                    let held = tokio_now.saturating_duration_since(lease.since);
                    if !lease.reported && held >= threshold {
                        lease.reported = true;
                        self.leaks_reported.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            connection = id,
                            held_for = ?held,
                            call_site = %lease.caller,
                            "connection held longer than leak_threshold (possible leak)"
                        );
                    }
                }
            }
            let creates = st.core.plan_creates(now);
            let mut next = now + self.config.maintenance_interval;
            for t in [st.core.retry_at(), st.core.next_waiter_deadline()]
                .into_iter()
                .flatten()
            {
                if t > now && t < next {
                    next = t;
                }
            }
            st.next_wake = Some(next);
            (due, creates, next)
        };
        drop(close);
        self.spawn_creates(creates);
        for entry in due {
            let guard = KeepaliveGuard {
                inner: self.clone(),
                entry: Some(entry),
            };
            self.runtime.spawn(keepalive(guard));
        }
        let status = self.status();
        telemetry::publish(&self.labels, published, &status);
        *published = status;

        Instant::from_std(next)
    }

    fn status(&self) -> Status {
        let st = self.state.lock();
        let core = &st.core;
        let c = core.counters.closed;
        let closed = |r: CloseReason| c[r.index()];
        Status {
            max_size: self.config.max_size,
            size: core.size(),
            idle: core.idle(),
            in_use: core.in_use(),
            connecting: core.connecting(),
            waiting: core.waiting(),
            created: core.counters.created,
            create_failures: core.counters.create_failures,
            closed: Closed {
                broken: closed(CloseReason::Broken),
                lifetime: closed(CloseReason::Lifetime),
                idle: closed(CloseReason::Idle),
                check_failed: closed(CloseReason::CheckFailed),
                cancelled: closed(CloseReason::Cancelled),
                pool_closed: closed(CloseReason::PoolClosed),
            },
            timeouts: Timeouts {
                acquire: self.timeouts[0].load(Ordering::Relaxed),
                create: self.timeouts[1].load(Ordering::Relaxed),
                check: self.timeouts[2].load(Ordering::Relaxed),
            },
            acquired: self.acquired.load(Ordering::Relaxed),
            leaks_reported: self.leaks_reported.load(Ordering::Relaxed),
        }
    }
}

async fn keepalive<M: Manager>(mut guard: KeepaliveGuard<M>) {
    let inner = guard.inner.clone();
    let ok = match guard.entry.as_mut() {
        Some(entry) if !inner.manager.is_broken(&entry.conn) => {
            match tokio::time::timeout(
                inner.config.check_timeout,
                inner.manager.check(&mut entry.conn),
            )
            .await
            {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "idle connection failed keepalive; closing it");
                    inner.state.lock().last_error = Some(Arc::new(e));
                    false
                }
                Err(_) => {
                    inner.count_timeout(TimeoutKind::Check);
                    false
                }
            }
        }
        Some(_) => false,
        None => return,
    };
    if let Some(entry) = guard.entry.take() {
        inner.keepalive_done(entry, ok);
    }
}

/// The background task: refill, keepalive, lifetime and idle retirement,
/// leak reports, reconnect after backoff. Holds the pool only weakly, so it
/// ends when the pool is dropped (or closed).
async fn maintain<M: Manager>(pool: Weak<Inner<M>>, wake: Arc<Notify>) {
    let mut published = Status::default();
    loop {
        let next = {
            let Some(inner) = pool.upgrade() else { return };
            if inner.state.lock().core.is_closed() {
                return;
            }
            inner.maintain_once(&mut published)
        };
        let _ = timeout_at(next, wake.notified()).await;
    }
}

/// A connection checked out of a [`Pool`]; derefs to the connection and goes
/// back to the pool when dropped (closed instead if the manager's `is_broken`
/// says so or its `reset` fails).
pub struct Pooled<M: Manager> {
    /// `Some` until dropped.
    entry: Option<Entry<Conn<M>>>,
    pool: Arc<Inner<M>>,
}

impl<M: Manager> Pooled<M> {
    fn entry(&self) -> &Entry<Conn<M>> {
        self.entry
            .as_ref()
            .expect("a Pooled holds its connection until dropped")
    }
}

impl<M: Manager> fmt::Debug for Pooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("id", &self.entry().meta.id)
            .finish_non_exhaustive()
    }
}

impl<M: Manager> Deref for Pooled<M> {
    type Target = Conn<M>;
    fn deref(&self) -> &Conn<M> {
        &self.entry().conn
    }
}

impl<M: Manager> DerefMut for Pooled<M> {
    fn deref_mut(&mut self) -> &mut Conn<M> {
        &mut self
            .entry
            .as_mut()
            .expect("a Pooled holds its connection until dropped")
            .conn
    }
}

impl<M: Manager> Drop for Pooled<M> {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        let manager = &self.pool.manager;
        let how = if manager.is_broken(&entry.conn) || manager.reset(&mut entry.conn).is_err() {
            Return::Close(CloseReason::Broken)
        } else {
            Return::Reuse
        };
        self.pool.release(entry, how);
    }
}
