//! The async [`Pool`] around the state machine, and the [`Pooled`] guard.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{Instant, timeout_at};

use crate::config::{PoolBuilder, PoolConfig};
use crate::core::{CloseReason, Core, Entry, Return};
use crate::error::{Chain, Occupancy, PoolError, TimeoutKind};
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

/// Where one waiting `get()` receives its hand-off. Slots are reused (a free
/// list in [`State`]), so a wait allocates nothing once the pool is warm.
/// The pool fills a slot under its own lock (lock order: pool, then slot),
/// so a waiter that leaves the line can always tell whether it was served;
/// the waker is woken after the pool lock is released, so the wake-up (which
/// may unpark another worker thread) does not lengthen the critical section.
struct Slot<M: Manager> {
    inner: Mutex<SlotInner<M>>,
}

struct SlotInner<M: Manager> {
    value: Option<Handoff<M>>,
    waker: Option<Waker>,
}

impl<M: Manager> Slot<M> {
    fn new() -> Self {
        Slot {
            inner: Mutex::new(SlotInner {
                value: None,
                waker: None,
            }),
        }
    }

    /// Puts the hand-off in; returns the waker to wake once the pool lock is
    /// released.
    fn fill(&self, handoff: Handoff<M>) -> Option<Waker> {
        let mut slot = self.inner.lock();
        slot.value = Some(handoff);
        slot.waker.take()
    }

    /// Takes the hand-off if it is there.
    fn take(&self) -> Option<Handoff<M>> {
        let mut slot = self.inner.lock();
        slot.waker = None;
        slot.value.take()
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Handoff<M>> {
        let mut slot = self.inner.lock();
        if let Some(value) = slot.value.take() {
            slot.waker = None;
            return Poll::Ready(value);
        }
        match &mut slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

type Waiter<M> = Arc<Slot<M>>;

/// What the state machine's `send` returns: the entry back if not taken.
type Sent<M> = Result<(), Entry<Conn<M>>>;

/// Free slots kept for reuse: enough for a large burst of waiters; beyond
/// it, slots are freed.
const FREE_SLOTS: usize = 1024;

/// The state machine's clock is the runtime's (so tests can pause it).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// `t + d` on the runtime's clock, far off instead of overflowing (see
/// [`later`](crate::core::later)).
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    Instant::from_std(crate::core::later(t.into_std(), d))
}

/// Hands a connection to a waiter, keeping the waker to wake after the lock.
/// A waiter in the line is always there to take it (one that gives up
/// leaves the line first, under the pool lock), so this never fails.
fn hand_off<M: Manager>(
    woken: &mut Option<Waker>,
) -> impl FnMut(Waiter<M>, Entry<Conn<M>>) -> Sent<M> + '_ {
    move |waiter, entry| {
        *woken = waiter.fill(Handoff::Conn(entry));
        Ok(())
    }
}

/// Fails waiters; the wakers go into `woken`, to wake after the lock.
fn fail_all<M: Manager>(
    waiters: impl IntoIterator<Item = Waiter<M>>,
    mut error: impl FnMut() -> PoolError<BackendError<M>>,
    woken: &mut Vec<Waker>,
) {
    for w in waiters {
        woken.extend(w.fill(Handoff::Fail(error())));
    }
}

/// Who checked a connection out and when, for leak reports.
struct Lease {
    since: Instant,
    caller: &'static Location<'static>,
    reported: bool,
}

struct State<M: Manager> {
    core: Core<Conn<M>, Waiter<M>>,
    /// The backend's last error (a failed connect or check) while it is
    /// current: what a timeout reports as the reason. A successful connect
    /// clears it; a successful check (at checkout or keepalive) clears only
    /// a check's error ([`Self::check_succeeded`]).
    last_error: Option<Arc<BackendError<M>>>,
    /// Whether `last_error` came from a check, not a connect.
    last_error_from_check: bool,
    /// Checked-out connections by id, kept only when leak detection is on.
    leases: HashMap<u64, Lease>,
    /// When the background task will next run; a waiter whose deadline comes
    /// sooner wakes it.
    next_wake: Option<std::time::Instant>,
    /// Waiter slots to reuse.
    free_slots: Vec<Waiter<M>>,
}

impl<M: Manager> State<M> {
    /// A check (at checkout or keepalive) found its connection alive: a
    /// check's error is not current any more, and a timeout must not report
    /// it. A connect's error stays until a connect succeeds: a server that
    /// refuses new connections ("too many clients") still serves the ones
    /// it has, and a timeout waiting for a new one must still say why.
    fn check_succeeded(&mut self) {
        if self.last_error_from_check {
            self.last_error = None;
        }
    }

    /// A check failed with `e`.
    fn check_failed(&mut self, e: BackendError<M>) {
        self.last_error = Some(Arc::new(e));
        self.last_error_from_check = true;
    }
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
/// Cloning is cheap and shares the pool. Dropping the last clone closes the
/// pool (see [`close`](Self::close)): nobody can get a connection from it any
/// more, so its idle connections are closed and no new ones are opened; a
/// connection still checked out works until it is dropped, and is closed
/// then. See the [crate documentation](crate) for an example and what the
/// pool does.
pub struct Pool<M: Manager> {
    inner: Arc<Inner<M>>,
    /// Shared by the pool's handles alone, not by checked-out connections or
    /// the pool's tasks, which also hold `inner`.
    handle: Arc<Handle<M>>,
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
            handle: self.handle.clone(),
        }
    }
}

/// Closes the pool when the last [`Pool`] handle goes: a connection still
/// checked out keeps the pool's state alive, but must not keep it refilling
/// `min_idle` and checking idle connections for nobody.
struct Handle<M: Manager> {
    inner: Weak<Inner<M>>,
}

impl<M: Manager> Drop for Handle<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.close();
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
                last_error_from_check: false,
                leases: HashMap::new(),
                next_wake: None,
                free_slots: Vec::new(),
            }),
            wake: Arc::new(Notify::new()),
            runtime,
            acquired: AtomicU64::new(0),
            timeouts: Default::default(),
            leaks_reported: AtomicU64::new(0),
            labels,
        });
        let orphaned = Orphaned {
            pool: Arc::downgrade(&inner),
        };
        inner.runtime.spawn(maintain(orphaned, inner.wake.clone()));
        Pool {
            handle: Arc::new(Handle {
                inner: Arc::downgrade(&inner),
            }),
            inner,
        }
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
        // One clock read serves the whole uncontended get, and it is taken
        // before the lock so that the critical section stays short.
        let start = Instant::now();
        let deadline = later(start, inner.config.acquire_timeout);
        let mut now = start.into_std();
        let mut front = false;
        loop {
            let mut close = Vec::new();
            let mut wake = false;
            let (step, creates) = {
                let mut st = inner.state.lock();
                if st.core.is_closed() {
                    return Err(PoolError::Closed);
                }
                let step = match st.core.take_idle(now, &mut close) {
                    Some((entry, needs_check)) => Step::Ready(entry, needs_check),
                    None => {
                        let slot = st.free_slots.pop().unwrap_or_else(|| Arc::new(Slot::new()));
                        let deadline = deadline.into_std();
                        let id = st.core.push_waiter(slot.clone(), deadline, front);
                        // Waiters have no timer each (registering one per wait
                        // costs more than the rest of the wait path): the
                        // background task expires them, so it must wake in time.
                        // A waiter may also bring the next reconnect attempt
                        // forward (the lower backoff cap while someone waits).
                        let retry = st.core.retry_at().filter(|&r| r > now);
                        let due = retry.map_or(deadline, |r| r.min(deadline));
                        wake = st.next_wake.is_none_or(|w| due < w);
                        Step::Wait(id, slot)
                    }
                };
                (step, st.core.plan_creates(now))
            };
            if wake {
                inner.wake.notify_one();
            }
            drop(close);
            inner.spawn_creates(creates);

            let (entry, needs_check, slot) = match step {
                Step::Ready(entry, needs_check) => (entry, needs_check, None),
                Step::Wait(id, slot) => {
                    let mut wait = WaitGuard {
                        inner,
                        id,
                        slot,
                        armed: true,
                    };
                    let outcome = std::future::poll_fn(|cx| wait.slot.poll_take(cx)).await;
                    wait.armed = false;
                    match outcome {
                        Handoff::Conn(entry) => (entry, false, Some(wait.slot.clone())),
                        Handoff::Fail(mut err) => {
                            if let PoolError::Timeout { waited, .. } = &mut err {
                                *waited = start.elapsed();
                            }
                            return Err(err);
                        }
                    }
                }
            };
            let waited = needs_check || slot.is_some() || front;
            // `is_broken`, then a real check if the connection idled past
            // the bypass window. Only the check is a future, and it is boxed:
            // it is the rare path, and held inline (the manager's future, its
            // timer, the entry) it made every `get()` future 608 bytes
            // (tokio's semaphore acquire: 88), moved into the caller's task
            // on every call.
            let entry = match inner.not_broken(entry) {
                Some(entry) if needs_check => Box::pin(inner.check(entry, deadline)).await,
                entry => entry,
            };
            if let Some(entry) = entry {
                inner.acquired.fetch_add(1, Ordering::Relaxed);
                // The wait is read from the clock only for the histogram (a
                // clock read is about 40 ns, a tenth of a contended get), and
                // an idle connection taken at once (no wait, no check) has
                // waited only for the lock: a zero, with no clock read.
                telemetry::acquired(&inner.labels, || {
                    if waited {
                        start.elapsed()
                    } else {
                        Duration::ZERO
                    }
                });
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
                    slot,
                    pool: inner.clone(),
                });
            }
            if Instant::now() >= deadline {
                return Err(inner.acquire_timed_out(start));
            }
            // The connection failed its check: keep our place in line.
            front = true;
            now = self::now();
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
        self.inner.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().core.is_closed()
    }
}

enum Step<M: Manager> {
    Ready(Entry<Conn<M>>, bool),
    Wait(u64, Waiter<M>),
}

/// Leaves the line if the `get()` future is dropped while waiting; a
/// connection handed over in the meantime goes on to the next in line.
struct WaitGuard<'a, M: Manager> {
    inner: &'a Arc<Inner<M>>,
    id: u64,
    slot: Waiter<M>,
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
        // Already served: hand-offs are made under the lock, so whatever was
        // handed over is in the slot now.
        if let Some(Handoff::Conn(entry)) = self.slot.take() {
            self.inner.release(entry, Return::Reuse, None);
        }
    }
}

/// Closes a connection that is out of the pool's hands, for `reason`, unless
/// it is taken back out first: if the `get()` future is dropped mid-check
/// (the check's round trip may be half done, so its state is unknown), or if
/// the manager's `is_broken` or `reset` panics (the panic goes on to the
/// caller, but the pool does not lose count of the connection: a slot
/// counted in use for ever shrinks the pool until it serves no one).
struct CloseGuard<'a, M: Manager> {
    inner: &'a Arc<Inner<M>>,
    entry: Option<Entry<Conn<M>>>,
    reason: CloseReason,
}

impl<M: Manager> Drop for CloseGuard<'_, M> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.inner.release(entry, Return::Close(self.reason), None);
        }
    }
}

/// Runs `fut`, catching a panic in any of its polls (the future's
/// `catch_unwind`): `Err` with the panic's message. The panic hook has
/// reported it already.
async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, Arc<str>> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                let message: Arc<str> = if let Some(s) = payload.downcast_ref::<&'static str>() {
                    Arc::from(*s)
                } else if let Some(s) = payload.downcast_ref::<String>() {
                    Arc::from(s.as_str())
                } else {
                    Arc::from("a panic with a non-string payload")
                };
                // The payload's own drop may panic too; leak it rather.
                if let Err(again) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(payload)))
                {
                    std::mem::forget(again);
                }
                Poll::Ready(Err(message))
            }
        }
    })
    .await
}

/// Gives the slot back if a create task dies without finishing (a runtime
/// shutting down, even before the task first ran; a panic of the manager's
/// `create` is caught before).
struct CreateGuard<M: Manager> {
    inner: Option<Arc<Inner<M>>>,
}

impl<M: Manager> Drop for CreateGuard<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let mut woken = Vec::new();
            let waiters = inner.state.lock().core.create_failed(now());
            // The connect died with no error to report.
            fail_all::<M>(waiters, || PoolError::Closed, &mut woken);
            woken.into_iter().for_each(Waker::wake);
            // As after any failed connect: the background task retries once
            // the backoff has passed (it may be asleep until much later).
            inner.wake.notify_one();
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
    fn close(&self) {
        let mut woken = Vec::new();
        let idle = {
            let mut st = self.state.lock();
            let (idle, waiters) = st.core.close();
            fail_all::<M>(waiters, || PoolError::Closed, &mut woken);
            idle
        };
        woken.into_iter().for_each(Waker::wake);
        drop(idle);
        self.wake.notify_one();
    }

    fn acquire_timed_out(&self, start: Instant) -> PoolError<BackendError<M>> {
        self.count_timeout(TimeoutKind::Acquire);
        let st = self.state.lock();
        PoolError::Timeout {
            kind: TimeoutKind::Acquire,
            waited: start.elapsed(),
            last_error: st.last_error.clone(),
            occupancy: Some(self.occupancy(&st.core)),
        }
    }

    /// How full the pool is, for a timeout's error.
    fn occupancy(&self, core: &Core<Conn<M>, Waiter<M>>) -> Occupancy {
        Occupancy {
            max_size: self.config.max_size,
            in_use: core.in_use(),
            idle: core.idle(),
            connecting: core.connecting(),
            waiting: core.waiting(),
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

    /// The manager's `is_broken`; a broken connection is closed (`None`).
    fn not_broken(self: &Arc<Self>, entry: Entry<Conn<M>>) -> Option<Entry<Conn<M>>> {
        // Closed as broken when it is, or when `is_broken` panics.
        let mut guard = CloseGuard {
            inner: self,
            entry: Some(entry),
            reason: CloseReason::Broken,
        };
        if self.manager.is_broken(&guard.entry.as_ref()?.conn) {
            return None;
        }
        guard.entry.take()
    }

    /// The manager's `check`, bounded by `check_timeout` and the caller's
    /// deadline. `None`: it failed and was closed.
    async fn check(
        self: &Arc<Self>,
        entry: Entry<Conn<M>>,
        deadline: Instant,
    ) -> Option<Entry<Conn<M>>> {
        let mut guard = CloseGuard {
            inner: self,
            entry: Some(entry),
            reason: CloseReason::Cancelled,
        };
        let check_deadline = later(Instant::now(), self.config.check_timeout).min(deadline);
        // A check that panics is a check that failed (the connection is
        // closed as `check_failed`, the caller goes on to another), not a
        // caller that gave up: unwinding through `get()` killed the caller's
        // task and counted the connection `cancelled`. Called inside
        // `catch_panic`, as `create` is, for a manager that panics before it
        // returns its future.
        let outcome = match guard.entry.as_mut() {
            Some(entry) => {
                let check = catch_panic(async { self.manager.check(&mut entry.conn).await });
                timeout_at(check_deadline, check).await
            }
            None => return None,
        };
        let mut entry = guard.entry.take()?;
        match outcome {
            Ok(Err(message)) => {
                tracing::error!(panic = %message, "the manager's check panicked; closing the connection");
                self.release(entry, Return::Close(CloseReason::CheckFailed), None);
                None
            }
            Ok(Ok(Ok(()))) => {
                entry.meta.last_alive = now();
                self.state.lock().check_succeeded();
                Some(entry)
            }
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %Chain(&e), "connection failed its check; closing it");
                self.state.lock().check_failed(e);
                self.release(entry, Return::Close(CloseReason::CheckFailed), None);
                None
            }
            Err(_) => {
                if check_deadline < deadline {
                    self.count_timeout(TimeoutKind::Check);
                }
                tracing::debug!("connection check timed out; closing it");
                self.release(entry, Return::Close(CloseReason::CheckFailed), None);
                None
            }
        }
    }

    /// A checked-out connection comes back (to a waiter, to idle, or
    /// closed); `slot` is the waiter slot it was handed over in, to reuse.
    fn release(self: &Arc<Self>, entry: Entry<Conn<M>>, how: Return, slot: Option<Waiter<M>>) {
        // Read the clock before taking the lock: a short critical section.
        let now = now();
        let mut woken = None;
        let (close, creates) = {
            let mut st = self.state.lock();
            if self.config.leak_threshold.is_some() {
                st.leases.remove(&entry.meta.id);
            }
            if let Some(slot) = slot
                && st.free_slots.len() < FREE_SLOTS
            {
                // The line let go of it when it was served (under this lock).
                debug_assert_eq!(Arc::strong_count(&slot), 1);
                st.free_slots.push(slot);
            }
            let close = st.core.release(entry, how, now, hand_off::<M>(&mut woken));
            // A connection kept (idle or handed on) frees no slot and adds no
            // demand: only a closed one can call for a create.
            let creates = if close.is_some() {
                st.core.plan_creates(now)
            } else {
                0
            };
            (close, creates)
        };
        if let Some(waker) = woken {
            waker.wake();
        }
        drop(close);
        self.spawn_creates(creates);
    }

    fn keepalive_done(self: &Arc<Self>, entry: Entry<Conn<M>>, ok: bool) {
        let now = now();
        let mut woken = None;
        let (close, creates) = {
            let mut st = self.state.lock();
            let close = st
                .core
                .keepalive_done(entry, ok, now, hand_off::<M>(&mut woken));
            (close, st.core.plan_creates(now))
        };
        if let Some(waker) = woken {
            waker.wake();
        }
        drop(close);
        self.spawn_creates(creates);
    }

    fn spawn_creates(self: &Arc<Self>, n: usize) {
        for _ in 0..n {
            // Armed before the spawn: a task dropped unrun (its runtime is
            // shutting down, or gone) still gives its slot back.
            let guard = CreateGuard {
                inner: Some(self.clone()),
            };
            self.runtime.spawn(self.clone().create_one(guard));
        }
    }

    /// One connect, whose slot [`Core::plan_create`] has reserved.
    async fn create_one(self: Arc<Self>, mut guard: CreateGuard<M>) {
        // `create` is called inside `catch_panic`, not before it: a manager
        // may panic in the call itself, before it returns its future (the
        // trait's methods are `fn ... -> impl Future`), and that too is a
        // connect that panicked, not a task that died (whose guard tells
        // the waiters `Closed`).
        let result = tokio::time::timeout(
            self.config.create_timeout,
            catch_panic(async { self.manager.create().await }),
        )
        .await;
        guard.inner = None;
        let failed = !matches!(result, Ok(Ok(Ok(_))));
        let now = now();
        let mut woken = None;
        let mut failed_waiters = Vec::new();
        let (close, creates) = {
            let mut st = self.state.lock();
            let close = match result {
                Ok(Ok(Ok(conn))) => {
                    st.last_error = None;
                    st.core
                        .create_succeeded(conn, now, hand_off::<M>(&mut woken))
                }
                Ok(Ok(Err(e))) => {
                    let e = Arc::new(e);
                    tracing::warn!(error = %Chain(&*e), "cannot connect");
                    st.last_error = Some(e.clone());
                    st.last_error_from_check = false;
                    let waiters = st.core.create_failed(now);
                    fail_all::<M>(
                        waiters,
                        || PoolError::Backend(e.clone()),
                        &mut failed_waiters,
                    );
                    None
                }
                Ok(Err(message)) => {
                    // A bug in the manager, but to the waiters a connect
                    // that failed: they are told so (with the panic's
                    // message), and the pool retries after the backoff.
                    tracing::error!(panic = %message, "the manager's connect panicked");
                    let waiters = st.core.create_failed(now);
                    fail_all::<M>(
                        waiters,
                        || PoolError::ConnectPanicked {
                            message: message.clone(),
                        },
                        &mut failed_waiters,
                    );
                    None
                }
                Err(_) => {
                    self.count_timeout(TimeoutKind::Create);
                    tracing::warn!(
                        timeout = ?self.config.create_timeout,
                        "connect timed out"
                    );
                    let last_error = st.last_error.clone();
                    let waiters = st.core.create_failed(now);
                    let occupancy = Some(self.occupancy(&st.core));
                    fail_all::<M>(
                        waiters,
                        || PoolError::Timeout {
                            kind: TimeoutKind::Create,
                            waited: Duration::ZERO,
                            last_error: last_error.clone(),
                            occupancy,
                        },
                        &mut failed_waiters,
                    );
                    None
                }
            };
            (close, st.core.plan_creates(now))
        };
        woken.into_iter().for_each(Waker::wake);
        failed_waiters.into_iter().for_each(Waker::wake);
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
        let mut woken = Vec::new();
        let (due, creates, next) = {
            let mut st = self.state.lock();
            if st.core.is_closed() {
                return later(tokio_now, self.config.maintenance_interval);
            }
            let now = now();
            let expired = st.core.expire_waiters(now);
            if !expired.is_empty() {
                let last_error = st.last_error.clone();
                let occupancy = Some(self.occupancy(&st.core));
                fail_all::<M>(
                    expired,
                    || {
                        self.count_timeout(TimeoutKind::Acquire);
                        PoolError::Timeout {
                            kind: TimeoutKind::Acquire,
                            waited: Duration::ZERO,
                            last_error: last_error.clone(),
                            occupancy,
                        }
                    },
                    &mut woken,
                );
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
            let mut next = crate::core::later(now, self.config.maintenance_interval);
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
        woken.into_iter().for_each(Waker::wake);
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
                Ok(Ok(())) => {
                    inner.state.lock().check_succeeded();
                    true
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %Chain(&e), "idle connection failed keepalive; closing it");
                    inner.state.lock().check_failed(e);
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

/// Closes the pool when its background task ends for good: the pool was
/// closed or dropped (nothing left to do), or the task was dropped, run or
/// not, by a runtime shutting down. Without the task no waiter times out
/// and no connect is retried, so a `get()` from another runtime would wait
/// for ever; closed, it fails at once.
struct Orphaned<M: Manager> {
    pool: Weak<Inner<M>>,
}

impl<M: Manager> Drop for Orphaned<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.pool.upgrade()
            && !inner.state.lock().core.is_closed()
        {
            tracing::warn!("the pool's runtime shut down; closing the pool");
            inner.close();
        }
    }
}

/// The background task: refill, keepalive, lifetime and idle retirement,
/// leak reports, reconnect after backoff. Holds the pool only weakly, so it
/// ends when the pool is dropped (or closed).
async fn maintain<M: Manager>(orphaned: Orphaned<M>, wake: Arc<Notify>) {
    let pool = orphaned.pool.clone();
    let mut published = Status::default();
    loop {
        let next = {
            let Some(inner) = pool.upgrade() else { return };
            if inner.state.lock().core.is_closed() {
                // Closed: no more work, but the gauges must come down to
                // what the pool still holds (connections checked out when it
                // closed are closed as they come back, which wakes this
                // task), or they would show the last values for ever.
                let status = inner.status();
                telemetry::publish(&inner.labels, &published, &status);
                published = status;
                if status.size == 0 {
                    return;
                }
                later(Instant::now(), inner.config.maintenance_interval)
            } else {
                inner.maintain_once(&mut published)
            }
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
    /// The waiter slot the connection came in, given back to the pool with it.
    slot: Option<Waiter<M>>,
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
        // Closed as broken if `is_broken` or `reset` panics.
        let mut guard = CloseGuard {
            inner: &self.pool,
            entry: self.entry.take(),
            reason: CloseReason::Broken,
        };
        let Some(entry) = guard.entry.as_mut() else {
            return;
        };
        let manager = &self.pool.manager;
        let how = if manager.is_broken(&entry.conn) || manager.reset(&mut entry.conn).is_err() {
            Return::Close(CloseReason::Broken)
        } else {
            Return::Reuse
        };
        if let Some(entry) = guard.entry.take() {
            self.pool.release(entry, how, self.slot.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Numbers;

    impl Manager for Numbers {
        type Connection = u32;
        type Error = std::io::Error;
        async fn create(&self) -> Result<u32, std::io::Error> {
            Ok(0)
        }
        async fn check(&self, _: &mut u32) -> Result<(), std::io::Error> {
            Ok(())
        }
        fn is_broken(&self, _: &u32) -> bool {
            false
        }
    }

    fn free_slots(pool: &Pool<Numbers>) -> Vec<Waiter<Numbers>> {
        pool.inner.state.lock().free_slots.clone()
    }

    /// A waiter's slot goes back to the free list with the connection it
    /// brought, and the next wait takes it again instead of allocating.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_slot_is_reused_once_its_connection_returns() {
        let pool = Pool::builder(Numbers)
            .max_size(1)
            .min_idle(0)
            .build()
            .unwrap();
        // The first get waits for the first connect, in a slot.
        drop(pool.get().await.unwrap());
        assert_eq!(free_slots(&pool).len(), 1);
        for round in 0..3 {
            let held = pool.get().await.unwrap();
            assert!(held.slot.is_none(), "taken from idle, no wait");
            let waiter = tokio::spawn({
                let pool = pool.clone();
                async move { pool.get().await.unwrap() }
            });
            while pool.status().waiting == 0 {
                tokio::task::yield_now().await;
            }
            assert!(free_slots(&pool).is_empty(), "round {round}: slot in use");
            drop(held);
            let served = waiter.await.unwrap();
            let slot = served.slot.as_ref().map(Arc::as_ptr);
            assert!(slot.is_some(), "handed over in a slot");
            drop(served);
            let free = free_slots(&pool);
            assert_eq!(free.len(), 1, "round {round}: the same slot came back");
            assert_eq!(Some(Arc::as_ptr(&free[0])), slot);
        }
    }

    /// A waiter that gives up after being served hands the connection on
    /// (it was put in its slot under the lock), and nothing is lost.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_served_waiter_passes_the_connection_on() {
        let pool = Pool::builder(Numbers)
            .max_size(1)
            .min_idle(0)
            .build()
            .unwrap();
        let held = pool.get().await.unwrap();
        let mut first = Box::pin(pool.get());
        assert!(futures_poll(&mut first).is_pending());
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { pool.get().await.map(|c| *c) }
        });
        while pool.status().waiting < 2 {
            tokio::task::yield_now().await;
        }
        // The connection goes into the first waiter's slot, which is then
        // dropped without being polled again.
        drop(held);
        drop(first);
        assert_eq!(second.await.unwrap().unwrap(), 0);
        let s = pool.status();
        assert_eq!((s.size, s.idle, s.in_use, s.waiting), (1, 1, 0, 0));
    }

    fn futures_poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        std::pin::Pin::new(f).poll(&mut cx)
    }
}
