//! Stampede protection: one load per key at a time, shared by every caller
//! that misses while it runs.
//!
//! The first caller to miss a key becomes its *leader*: it registers a slot in
//! the in-flight map and runs its loader; later callers find the slot and wait
//! on it (blocking on a condvar, or as a future with a waker). The leader
//! publishes to the cache *before* leaving the in-flight map, and a caller that
//! finds no slot re-reads the cache under the map's lock, so a load that has
//! just finished is never repeated. A leader that is dropped mid-load
//! (cancelled future, panicking loader) marks its slot abandoned from a drop
//! guard; waiters then start over and one of them leads — nobody waits on a
//! load that no one is running (moka #240).
//!
//! A write, `remove` or `invalidate_all` of a key while its load runs
//! supersedes that load (and a `retain` every load then in flight): the
//! loader may have read its source before the change, so its value goes to
//! the callers that waited for it but is not stored over the change. It
//! also leaves the in-flight map then, so that a call made after the change
//! loads afresh instead of waiting for that value.

use std::any::Any;
use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::LocalCache;
use crate::clock::to_nanos;

type AnyError = Arc<dyn Any + Send + Sync>;

/// A caught panic's payload, to resume later.
type Panic = Box<dyn Any + Send>;

/// The in-flight map: the slot of each key being loaded.
type Pending<K, V> = HashMap<K, Arc<LoadSlot<V>>, foldhash::fast::RandomState>;

/// One entry of the in-flight map, taken out.
type PendingEntry<K, V> = (K, Arc<LoadSlot<V>>);

thread_local! {
    /// The loads that this thread is running user code of right now,
    /// innermost last (by their link, held while listed: its address
    /// names the load in [`BLOCKED`]): a poll of an
    /// async loader (or the call that makes its future), and for every
    /// leader the clock read as it starts and the weigher, clock and clones
    /// as it finishes. A caller that would wait on one of them runs inside
    /// that code: the load waits for itself.
    static POLLING: RefCell<Vec<Arc<LoadLink>>> = const { RefCell::new(Vec::new()) };
}

/// Lists a load in [`POLLING`] while this thread runs user code that is
/// part of it; unlisted on drop, so also when that code panics.
struct PollingLoad(usize);

impl PollingLoad {
    fn enter(link: &Arc<LoadLink>) -> Self {
        // `try_with`: from a thread-local destructor that runs after
        // `POLLING`'s, the load goes unlisted (and a wait for itself from
        // inside it is not caught) rather than panicking.
        let _ = POLLING.try_with(|p| p.borrow_mut().push(Arc::clone(link)));
        Self(Arc::as_ptr(link) as usize)
    }
}

impl Drop for PollingLoad {
    fn drop(&mut self) {
        // `try_with`: see `enter`.
        let _ = POLLING.try_with(|p| {
            let mut p = p.borrow_mut();
            if let Some(i) = p.iter().rposition(|l| Arc::as_ptr(l) as usize == self.0) {
                p.remove(i);
            }
        });
    }
}

/// In-flight loads and their counters.
pub(crate) struct Loads<K, V> {
    pending: Mutex<Pending<K, V>>,
    /// `pending.len()`, read without the lock by writers (see
    /// [`Loads::supersede`]).
    in_flight: AtomicUsize,
    loads: AtomicU64,
    failures: AtomicU64,
    nanos: AtomicU64,
}

impl<K, V> Loads<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            pending: Mutex::new(HashMap::default()),
            in_flight: AtomicUsize::new(0),
            loads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        }
    }

    /// Called by a write, remove or invalidation of `key` (all keys with
    /// `None`) *before* it changes the cache: a load of that key now in
    /// flight may have read its source before the change, so its value
    /// must not be stored over the change (it still goes to the callers
    /// already waiting for it; later ones start a load of their own).
    /// A load that starts after this call finds the change in the cache, or
    /// reads its source after the caller changed it. Costs one atomic load
    /// while no load is in flight.
    ///
    /// Inlined, so that a write pays that load and no call; the rest is
    /// out of line ([`Self::supersede_pending`]).
    #[inline]
    pub(crate) fn supersede<Q>(&self, key: Option<&Q>)
    where
        K: Borrow<Q> + Hash + Eq,
        Q: Hash + Eq + ?Sized,
    {
        if self.in_flight.load(Ordering::SeqCst) != 0 {
            self.supersede_pending(key);
        }
    }

    /// [`Self::supersede`] while some load is in flight. A superseded
    /// load also leaves the in-flight map: a call that comes after the
    /// change must not wait for a value that may predate it (it found the
    /// load there and got its value, even from the writer's own thread
    /// after its `remove` returned), so it starts a load of its own. The
    /// superseded leader then finds its key gone, or another load's slot
    /// there, and leaves that alone ([`LeaderGuard::leave`]).
    #[inline(never)]
    fn supersede_pending<Q>(&self, key: Option<&Q>)
    where
        K: Borrow<Q> + Hash + Eq,
        Q: Hash + Eq + ?Sized,
    {
        let mut pending = self.pending.lock();
        let left: Vec<PendingEntry<K, V>> = match key {
            Some(key) => pending.remove_entry(key).into_iter().collect(),
            None => pending.drain().collect(),
        };
        for (_, slot) in &left {
            slot.superseded.store(true, Ordering::Relaxed);
        }
        self.in_flight.store(pending.len(), Ordering::SeqCst);
        drop(pending);
        // The map's copies of the keys: user code, with no lock held.
        drop(left);
    }

    /// `(loads, failures, nanoseconds spent loading)`.
    pub(crate) fn counters(&self) -> (u64, u64, u64) {
        (
            self.loads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.nanos.load(Ordering::Relaxed),
        )
    }
}

enum SlotState<V> {
    /// The leader is loading; futures waiting on it, by waiter index.
    Running(Vec<Option<Waker>>),
    Loaded(V),
    Failed(AnyError),
    Abandoned,
}

enum Outcome<V> {
    Loaded(V),
    Failed(AnyError),
    Abandoned,
}

/// What a waiter makes of a finished load: the value or the shared error, or
/// `None` to try again — the load was abandoned, or a loader with another
/// error type failed, so the waiter loads with its own.
fn settle<V, E: Send + Sync + 'static>(outcome: Outcome<V>) -> Option<Result<V, Arc<E>>> {
    match outcome {
        Outcome::Loaded(value) => Some(Ok(value)),
        Outcome::Failed(error) => error.downcast::<E>().ok().map(Err),
        Outcome::Abandoned => None,
    }
}

/// Where waiters meet the result of one load.
struct LoadSlot<V> {
    state: Mutex<SlotState<V>>,
    ready: Condvar,
    /// The key was written, removed or invalidated while this load ran;
    /// set and read under the in-flight map's lock.
    superseded: AtomicBool,
    /// Who runs this load and whether it still runs, for the threads that
    /// block on it ([`BLOCKED`]).
    link: Arc<LoadLink>,
}

/// What a waiter of a load waits for, in [`BLOCKED`]: the load's leader
/// and whether the load has ended. Not generic, so that loads of every
/// cache's types meet in one graph.
#[derive(Debug)]
struct LoadLink {
    /// The thread running the load's blocking loader
    /// ([`LocalCache::get_or_load`]), or `None` for an async loader, which
    /// is named by this link's address instead ([`Self::leader`]).
    thread: Option<ThreadId>,
    /// Set as the load ends, before its waiters are woken.
    done: AtomicBool,
}

impl LoadLink {
    /// This load as a node of the graph: named by its link's address,
    /// under which the waits its loader makes (polled while it is listed
    /// in [`POLLING`]) are listed.
    fn node(self: &Arc<Self>) -> Waiter {
        Waiter::Load(Arc::as_ptr(self) as usize)
    }

    /// Whether `waiter` holds this load up: the load itself, or the thread
    /// running its blocking loader, which only blocks from inside it. Not
    /// the thread for waits merely polled there: a wait polled inside a
    /// blocking loader is listed as that load's, for a thread-wide edge
    /// outlived the loader (a wait kept aside) and made every later load
    /// on the thread look like a waiter.
    fn is_led_by(self: &Arc<Self>, waiter: &Waiter) -> bool {
        *waiter == self.node() || self.thread.is_some_and(|t| *waiter == Waiter::Thread(t))
    }
}

/// A node of the wait-for graph: a thread blocked in
/// [`LocalCache::get_or_load`], or a load (blocking or async) whose loader
/// waits (named by its [`LoadLink`]'s address, listed in [`POLLING`] while
/// its loader runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    Thread(ThreadId),
    Load(usize),
}

/// Who waits for which load: a wait-for graph, so that loaders that wait
/// for each other's keys (1's loader loads 2 while 2's loader, on another
/// thread or in another task, loads 1) are caught instead of waiting
/// forever, as a cycle on one thread is. An edge is a thread blocked on a
/// load, or a load whose loader awaits another load (every load whose
/// loader is running around that wait waits too). Process-wide:
/// a cycle may run through several caches. Taken only by a caller about
/// to wait from inside a loader, or blocking (and as it stops), never on a
/// hit, by a leader, or by an async waiter that is not inside a loader.
static BLOCKED: Mutex<Vec<(Waiter, Arc<LoadLink>)>> = Mutex::new(Vec::new());

/// Whether waiters `mine`, about to wait for the load of `target`, would
/// wait for themselves: `target`'s leader waits for a load whose leader
/// waits ... for a load whose leader is one of `mine`, every one of them
/// still running. Such a cycle never ends by itself: each of its loads
/// waits for the next. A link whose load has ended breaks the chain (its
/// leader's entry may still be listed, about to leave). An async load may
/// wait for several loads at once (a loader that joins two), so this is a
/// search of the graph, each link visited once.
fn waits_in_a_cycle(
    mine: &[Waiter],
    target: &Arc<LoadLink>,
    blocked: &[(Waiter, Arc<LoadLink>)],
) -> bool {
    let mut visited: Vec<*const LoadLink> = Vec::new();
    let mut next = vec![target];
    while let Some(link) = next.pop() {
        if visited.contains(&Arc::as_ptr(link)) {
            continue;
        }
        visited.push(Arc::as_ptr(link));
        if link.done.load(Ordering::SeqCst) {
            continue;
        }
        if mine.iter().any(|waiter| link.is_led_by(waiter)) {
            return true;
        }
        next.extend(
            blocked
                .iter()
                .filter(|(waiter, _)| link.is_led_by(waiter))
                .map(|(_, link)| link),
        );
    }
    false
}

/// The loads whose loaders this thread is running now ([`POLLING`]).
fn polling_loads() -> Vec<Arc<LoadLink>> {
    POLLING.try_with(|p| p.borrow().clone()).unwrap_or_default()
}

/// Whether [`POLLING`] lists exactly the loads of `waiters`, in order.
fn polling_is(waiters: &[Waiter]) -> bool {
    POLLING
        .try_with(|p| {
            let p = p.borrow();
            p.len() == waiters.len() && p.iter().zip(waiters).all(|(l, w)| *w == l.node())
        })
        .unwrap_or(waiters.is_empty())
}

/// Entries of [`BLOCKED`]: `waiters`, each waiting for `target`; removed on
/// drop.
struct Blocked {
    waiters: Vec<Waiter>,
    target: Arc<LoadLink>,
    /// The links of the loads among `waiters`, held while they are listed:
    /// a load is named by its link's address, which a new load must not
    /// take while an edge of this one is in the graph (the wait may
    /// outlive the load it was polled from; its edges, inherited by the new
    /// load, made it look part of a cycle).
    _loads: Vec<Arc<LoadLink>>,
}

impl Blocked {
    /// Lists `loads` (and `thread`, if given) as waiting for `target`, or
    /// returns `None` if that closes a cycle of loads (checked and listed
    /// under one lock, so of two waits closing a cycle at once the second
    /// sees the first).
    fn enter(
        loads: Vec<Arc<LoadLink>>,
        thread: Option<ThreadId>,
        target: &Arc<LoadLink>,
    ) -> Option<Self> {
        // Every load listed in `POLLING`, blocking or async, waits as
        // itself ([`LoadLink::is_led_by`]).
        let waiters: Vec<Waiter> = loads
            .iter()
            .map(LoadLink::node)
            .chain(thread.map(Waiter::Thread))
            .collect();
        let mut blocked = BLOCKED.lock();
        if waits_in_a_cycle(&waiters, target, &blocked) {
            return None;
        }
        blocked.extend(waiters.iter().map(|&w| (w, Arc::clone(target))));
        drop(blocked);
        Some(Self {
            waiters,
            target: Arc::clone(target),
            _loads: loads,
        })
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let mut blocked = BLOCKED.lock();
        for waiter in &self.waiters {
            if let Some(i) = blocked
                .iter()
                .position(|(w, link)| w == waiter && Arc::ptr_eq(link, &self.target))
            {
                blocked.swap_remove(i);
            }
        }
    }
}

impl<V: Clone> LoadSlot<V> {
    fn new(leader: Option<ThreadId>) -> Self {
        Self {
            state: Mutex::new(SlotState::Running(Vec::new())),
            ready: Condvar::new(),
            superseded: AtomicBool::new(false),
            link: Arc::new(LoadLink {
                thread: leader,
                done: AtomicBool::new(false),
            }),
        }
    }

    /// Whether waiting for this load from the calling thread would wait for
    /// itself: the thread is running its blocking loader, or is inside a
    /// poll of its async loader. Either way the caller is (part of) the
    /// loader, which cannot finish while the caller waits.
    fn waits_for_itself(&self) -> bool {
        self.link.thread == Some(std::thread::current().id())
            || POLLING
                .try_with(|p| p.borrow().iter().any(|l| Arc::ptr_eq(l, &self.link)))
                .unwrap_or(false)
    }

    fn outcome(state: &SlotState<V>) -> Option<Outcome<V>> {
        match state {
            SlotState::Running(_) => None,
            SlotState::Loaded(v) => Some(Outcome::Loaded(v.clone())),
            SlotState::Failed(e) => Some(Outcome::Failed(Arc::clone(e))),
            SlotState::Abandoned => Some(Outcome::Abandoned),
        }
    }

    /// Ends the load with `result` and wakes every waiter. A waker is
    /// user code (the waiting task's executor's) and may panic: the wakers
    /// after it are woken all the same (a panic that dropped them unwoken
    /// left their tasks asleep on a finished load, for ever), and the first
    /// panic is returned, for the leader to resume once its own work is
    /// done.
    #[must_use]
    fn complete(&self, result: SlotState<V>) -> Option<Panic> {
        // Before anyone wakes: a waiter that has woken no longer waits on
        // this load, whatever its entry in `BLOCKED` still says.
        self.link.done.store(true, Ordering::SeqCst);
        let old = std::mem::replace(&mut *self.state.lock(), result);
        self.ready.notify_all();
        let mut first = None;
        if let SlotState::Running(wakers) = old {
            for waker in wakers.into_iter().flatten() {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| waker.wake())) {
                    first.get_or_insert(panic);
                }
            }
        }
        first
    }

    /// Blocks the calling thread `me` until the load ends.
    ///
    /// # Panics
    /// If the wait would close a cycle of loaders that wait for each other
    /// (see [`BLOCKED`]).
    fn wait(&self, me: ThreadId) -> Outcome<V> {
        // The thread, and every async load whose loader it is polling
        // (they cannot go on while it blocks).
        let Some(_blocked) = Blocked::enter(polling_loads(), Some(me), &self.link) else {
            panic!(
                "get_or_load: the loader of a key waits, through loaders running on other \
                 threads or tasks, for the load of a key that this thread's loader is \
                 running: a cycle of loads that would wait for each other forever"
            );
        };
        let mut state = self.state.lock();
        loop {
            if let Some(outcome) = Self::outcome(&state) {
                return outcome;
            }
            self.ready.wait(&mut state);
        }
    }
}

/// A follower's wait as a future. Dropping it (cancellation) only forgets its
/// waker; the load and the other waiters carry on.
struct Wait<V> {
    slot: Arc<LoadSlot<V>>,
    waker_index: Option<usize>,
    /// While it waits from inside async loaders: their entries in
    /// [`BLOCKED`], those of the loaders it was last polled from.
    blocked: Option<Blocked>,
}

impl<V: Clone> Future for Wait<V> {
    type Output = Outcome<V>;

    /// # Panics
    /// If the loaders it is polled from would wait for themselves through
    /// other tasks or threads (see [`BLOCKED`]).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<V>> {
        let this = &mut *self;
        // Only a wait from inside a loader can close a cycle: a plain
        // task's wait costs nothing more. The loaders that wait are those
        // polling it now, not at its first poll: a wait a loader polled
        // and then handed to another task (or that another loader took
        // over) no longer holds up the first one, whose edges, left in the
        // graph, made a later wait for its key look like a cycle.
        let listed = this.blocked.as_ref().map_or(&[][..], |b| &b.waiters[..]);
        if !polling_is(listed) {
            this.blocked = None;
            let loads = polling_loads();
            if !loads.is_empty() {
                match Blocked::enter(loads, None, &this.slot.link) {
                    Some(blocked) => this.blocked = Some(blocked),
                    None => panic!(
                        "get_or_load_async: the loader of a key waits, through loaders \
                         running in other tasks or threads, for the load of a key that this \
                         loader's load is waiting for: a cycle of loads that would wait for \
                         each other forever"
                    ),
                }
            }
        }
        let mut state = this.slot.state.lock();
        if let Some(outcome) = LoadSlot::outcome(&state) {
            drop(state);
            this.blocked = None;
            return Poll::Ready(outcome);
        }
        if let SlotState::Running(wakers) = &mut *state {
            match this.waker_index {
                Some(i) => match &mut wakers[i] {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                },
                None => {
                    wakers.push(Some(cx.waker().clone()));
                    this.waker_index = Some(wakers.len() - 1);
                }
            }
        }
        Poll::Pending
    }
}

impl<V> Drop for Wait<V> {
    fn drop(&mut self) {
        if let Some(i) = self.waker_index
            && let SlotState::Running(wakers) = &mut *self.slot.state.lock()
            && let Some(w) = wakers.get_mut(i)
        {
            *w = None;
        }
    }
}

enum Join<V> {
    Hit(V),
    Leader(Arc<LoadSlot<V>>),
    Follower(Arc<LoadSlot<V>>),
}

/// Held by the leader while its loader runs; on drop without a result (a
/// cancelled future, a panic) it marks the slot abandoned so waiters retry.
struct LeaderGuard<'a, K: Hash + Eq, V: Clone, S: BuildHasher> {
    cache: &'a LocalCache<K, V, S>,
    key: K,
    slot: Arc<LoadSlot<V>>,
    started: Instant,
    done: bool,
    /// The load's outcome is in the statistics ([`Self::finish`] counted
    /// a load or a failure).
    counted: bool,
}

impl<K: Hash + Eq, V: Clone, S: BuildHasher> LeaderGuard<'_, K, V, S> {
    /// Ends the load with `state`; returns a panic for the caller to
    /// resume: the key's, from leaving the map (see [`Self::leave`]), else
    /// a waker's (see [`LoadSlot::complete`]).
    #[must_use]
    fn release(&mut self, state: SlotState<V>) -> Option<Panic> {
        self.done = true;
        let mut pending = self.cache.inner.loads.pending.lock();
        let (left, lookup) = self.leave(&mut pending);
        drop(pending);
        // Waiters first: the key's `Drop` may panic, and the slot must not
        // be left running with nobody to complete it.
        let woke = self.slot.complete(state);
        drop(left);
        lookup.or(woke)
    }

    /// Takes this load out of the in-flight map; returns the map's entry,
    /// for the caller to drop once it has released the map's lock (the
    /// key's `Drop` is user code, which may use this cache), and the panic
    /// of the key's `Hash` or `Eq` (user code too) if the lookup panicked,
    /// for the caller to resume once the waiters have the outcome. The
    /// entry leaves even then, found by its slot without the key's help:
    /// left in the map once done, it made the load's waiters and every
    /// later caller of the key wait for ever.
    #[must_use]
    fn leave(&self, pending: &mut Pending<K, V>) -> (Option<PendingEntry<K, V>>, Option<Panic>) {
        let looked_up = catch_unwind(AssertUnwindSafe(|| {
            if pending
                .get(&self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                pending.remove_entry(&self.key)
            } else {
                None
            }
        }));
        let (left, lookup) = match looked_up {
            Ok(left) => (left, None),
            Err(panic) => (
                pending.extract_if(|_, s| Arc::ptr_eq(s, &self.slot)).next(),
                Some(panic),
            ),
        };
        self.cache
            .inner
            .loads
            .in_flight
            .store(pending.len(), Ordering::SeqCst);
        (left, lookup)
    }

    /// This load's entry in [`POLLING`].
    fn part_of_load(&self) -> PollingLoad {
        PollingLoad::enter(&self.slot.link)
    }

    fn finish<E: Send + Sync + 'static>(mut self, result: Result<V, E>) -> Result<V, Arc<E>>
    where
        K: Clone,
    {
        let loads = &self.cache.inner.loads;
        // The clock, and below the weigher and the clones, are user code
        // run while this load is still in flight: a wait for it from there
        // waits for itself, and must panic as one from the loader does (an
        // async leader's thread is not the slot's `leader`).
        let elapsed = {
            let _part = self.part_of_load();
            self.cache.inner.clock.now()
        }
        .saturating_duration_since(self.started);
        // Saturating: loads that overlap each count a jump of the clock,
        // and a plain add wrapped round past 584 years to a total smaller
        // than one load's time.
        let nanos = to_nanos(elapsed);
        let _ = loads
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                Some(total.saturating_add(nanos))
            });
        #[cfg(feature = "metrics")]
        crate::metrics::record_load(result.is_ok(), elapsed);
        self.counted = true;
        match result {
            Ok(value) => {
                loads.loads.fetch_add(1, Ordering::Relaxed);
                // Into the cache first, then out of the in-flight map: see
                // the module docs. Both under the map's lock, so that a
                // write of this key that superseded the load (see
                // `Loads::supersede`) either is seen here or comes after.
                // The listener hears of what the write displaced only after
                // that, so that it may load this key again instead of
                // waiting on this very load.
                // User code that may use this cache (a write from it takes
                // the map's lock) runs first, with no lock held: the
                // weigher, the expiry, the hasher, the clock (so the entry's time is
                // taken just before the lock, not under it) and the clones
                // to store. Should any of it panic, the guard's drop
                // abandons the load. Whatever the write displaces, and the
                // clones if the load was superseded, are dropped only after
                // the lock is released: a `Drop` is user code too.
                // The waiters' clone too: made once the load has left the
                // map, a panic there left the slot running for ever.
                let (write, key, copy, shared) = {
                    let _part = self.part_of_load();
                    let write = self.cache.prepare(&self.key, &value, None);
                    (write, self.key.clone(), value.clone(), value.clone())
                };
                // Declared before the lock's guard, so that it drops after
                // the guard even when a panic unwinds this frame.
                let mut removed = self.cache.removed();
                let mut pending = loads.pending.lock();
                let unstored = if self.slot.superseded.load(Ordering::Relaxed) {
                    Some((key, copy))
                } else {
                    // The write runs the key's `Eq` (user code) after its
                    // sweep may have freed expired entries: should it panic,
                    // the listener must still hear of those (as after
                    // `insert`'s), once the load is abandoned and out of
                    // the map; then the panic resumes.
                    let stored = catch_unwind(AssertUnwindSafe(|| {
                        self.cache.store_prepared(key, copy, write, &mut removed);
                    }));
                    if let Err(panic) = stored {
                        drop(pending);
                        // Counted by the shard; recorded with no lock held.
                        #[cfg(feature = "metrics")]
                        crate::metrics::record_insert();
                        // This panic is resumed, not any that `release`
                        // caught.
                        let _ = self.release(SlotState::Abandoned);
                        self.cache.notify(&mut removed);
                        resume_unwind(panic);
                    }
                    None
                };
                // Only now: should the write panic, the guard's drop
                // abandons the load so that waiters retry.
                self.done = true;
                let (left, lookup) = self.leave(&mut pending);
                drop(pending);
                // The recorder is user code, which may write to this cache
                // (and so take the map's lock): only now.
                #[cfg(feature = "metrics")]
                if unstored.is_none() {
                    crate::metrics::record_insert();
                }
                // Waiters and listener before any drop: a key's or value's
                // `Drop` may panic, and the slot must not be left running
                // with nobody to complete it, nor a counted departure go
                // untold.
                let woke = self.slot.complete(SlotState::Loaded(shared));
                self.cache.notify(&mut removed);
                drop((left, unstored));
                if let Some(panic) = lookup.or(woke) {
                    resume_unwind(panic);
                }
                Ok(value)
            }
            Err(error) => {
                loads.failures.fetch_add(1, Ordering::Relaxed);
                let error = Arc::new(error);
                if let Some(panic) = self.release(SlotState::Failed(Arc::clone(&error) as AnyError))
                {
                    resume_unwind(panic);
                }
                Err(error)
            }
        }
    }
}

impl<K: Hash + Eq, V: Clone, S: BuildHasher> Drop for LeaderGuard<'_, K, V, S> {
    fn drop(&mut self) {
        // A load that ends in a panic before it returned (its loader, or
        // the clock read around it) failed: counted as a load failure, as
        // Guava counts a loader's exception. Its time is not counted: the
        // clock is user code, and a panic from it now, while this thread
        // unwinds, would abort the process. A leader cancelled (dropped
        // without a panic) did not fail and is not counted.
        if !self.done && !self.counted && std::thread::panicking() {
            self.counted = true;
            self.cache
                .inner
                .loads
                .failures
                .fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            crate::metrics::record_load_failure();
        }
        // A panic `release` caught resumes here too (a cancelled leader's
        // drop), unless this thread is already unwinding (a panicking
        // loader): a second panic would abort the process.
        if !self.done
            && let Some(panic) = self.release(SlotState::Abandoned)
            && !std::thread::panicking()
        {
            resume_unwind(panic);
        }
    }
}

impl<K, V, S> LocalCache<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    /// `leader`: the calling thread, if it would block on a follower's
    /// wait (the blocking `get_or_load`).
    fn join(&self, key: &K, leader: Option<ThreadId>) -> Join<V> {
        // The clock and the key's clone are user code that may use this
        // cache: run before the map's lock. The clone, unless the map keeps
        // it, is dropped after the lock is released.
        let timing = self.timing();
        let spare = key.clone();
        let mut pending = self.inner.loads.pending.lock();
        let (join, spare) = if let Some(slot) = pending.get(key) {
            (Join::Follower(Arc::clone(slot)), Some(spare))
        } else if let Some(value) = self.peek_at(key, timing) {
            // A leader that just finished stored its value before leaving
            // the map, so this re-read under the map's lock cannot miss it.
            (Join::Hit(value), Some(spare))
        } else {
            let slot = Arc::new(LoadSlot::new(leader));
            pending.insert(spare, Arc::clone(&slot));
            self.inner
                .loads
                .in_flight
                .store(pending.len(), Ordering::SeqCst);
            (Join::Leader(slot), None)
        };
        drop(pending);
        drop(spare);
        join
    }

    /// What a waiter returns: a value it got from the load is a read of
    /// the key as much as a [`get`](Self::get) hit, so it refreshes the
    /// entry's time-to-idle and tells the policy (as the re-read of a
    /// [`Join::Hit`] does); the waiter's call counted its miss already.
    fn waited<E>(&self, key: &K, result: Result<V, Arc<E>>) -> Result<V, Arc<E>> {
        if result.is_ok() {
            self.touch(key);
        }
        result
    }

    fn lead(&self, key: K, slot: Arc<LoadSlot<V>>) -> LeaderGuard<'_, K, V, S> {
        // The guard exists before the clock (user code) is read: should
        // the read panic, the guard abandons the load instead of leaving
        // its slot running with nobody to complete it, which wedged every
        // later load of the key. A wait for this load from the clock waits
        // for itself, and panics (see `POLLING`).
        let mut guard = LeaderGuard {
            cache: self,
            key,
            slot,
            started: self.inner.origin,
            done: false,
            counted: false,
        };
        guard.started = {
            let _part = guard.part_of_load();
            self.inner.clock.now()
        };
        guard
    }

    /// The value for `key`, loading it with `load` on a miss. However many
    /// threads miss the same key at once, one of them runs its loader and
    /// the others block until it finishes and share its value or its error
    /// (a waiter whose error type is not the failed loader's cannot share
    /// its error: it runs its own loader instead).
    /// A value is cached; an error is not, so the next call loads again.
    /// A value whose key was written, removed or invalidated (or that a
    /// [`retain`](Self::retain) superseded) while it loaded is returned to
    /// the callers already waiting for it but not cached (it may predate
    /// that change); a call made after that change loads afresh. A caller
    /// that gets the value without running its loader (it waited, or found
    /// the value just stored) uses the key as a [`get`](Self::get) hit does:
    /// the entry's time-to-idle restarts and the policy sees the use. Each
    /// call counts one read in [`stats`](Self::stats): the miss that sent it
    /// to load.
    ///
    /// If the loading thread panics, its panic propagates to it alone and one
    /// of the waiting threads runs its own loader instead.
    ///
    /// # Panics
    /// If the loader calls `get_or_load` for its own key on its own thread
    /// (directly, or from a loader it runs for another key, or inside an
    /// async loader of that key that this thread is polling; likewise the
    /// weigher or the clock while they run for this load), that inner
    /// call panics (as `RefCell` does on a second borrow) instead of waiting
    /// forever for the load it is part of; the load is then abandoned, and
    /// the panic reaches the outer call unless the loader catches it.
    /// Likewise for loaders on different threads or tasks, blocking or
    /// async, that wait for each other's keys (1's loader loads 2 while 2's
    /// loader, on another thread or in another task, loads 1): the call
    /// that closes the cycle panics, its load is abandoned, and the others
    /// finish. A wait from another thread or task that the loader itself
    /// waits for (a thread it joins, a task it spawns and awaits) cannot be
    /// told from an ordinary waiter, and still waits forever. A loader that
    /// waits by driving an async call itself
    /// (`block_on(cache.get_or_load_async(..))`) waits as its load, and
    /// is caught; the other way round, a task that merely waits for a key
    /// and that the loader's thread polls from inside the loader (a task
    /// of a current-thread runtime the loader drives) is taken for part of
    /// the loader, as with [`get_or_load_async`](Self::get_or_load_async).
    ///
    /// # Errors
    /// The loader's error, shared in an `Arc` among all the callers that
    /// waited for that load.
    ///
    /// # Example
    /// ```
    /// use torque_cache::LocalCache;
    ///
    /// let cache: LocalCache<u32, String> = LocalCache::new(100);
    /// let v = cache.get_or_load(7, || Ok::<_, std::io::Error>("seven".to_string()));
    /// assert_eq!(v.unwrap(), "seven");
    /// assert_eq!(cache.get(&7).as_deref(), Some("seven"));
    /// ```
    pub fn get_or_load<E, F>(&self, key: K, load: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Result<V, E>,
        E: Send + Sync + 'static,
    {
        if let Some(value) = self.get(&key) {
            return Ok(value);
        }
        let me = std::thread::current().id();
        let slot = loop {
            match self.join(&key, Some(me)) {
                Join::Hit(value) => {
                    self.touch(&key);
                    return Ok(value);
                }
                Join::Leader(slot) => break slot,
                Join::Follower(slot) => {
                    // Waiting here would wait for this very thread.
                    assert!(
                        !slot.waits_for_itself(),
                        "get_or_load: the loader of a key called get_or_load for the same key \
                         on its own thread, which would wait for itself forever"
                    );
                    if let Some(result) = settle(slot.wait(me)) {
                        return self.waited(&key, result);
                    }
                }
            }
        };
        let link = Arc::clone(&slot.link);
        let guard = self.lead(key, slot);
        // Listed in `POLLING` while the loader runs, so that an async wait
        // the loader drives on this thread (`block_on` of
        // `get_or_load_async`) counts as this thread's: else a cycle
        // through it went unseen and hung.
        let result = {
            let _polling = PollingLoad::enter(&link);
            load()
        };
        guard.finish(result)
    }

    /// The value for `key`, loading it with the future `load` returns on a
    /// miss. However many tasks miss the same key at once, one of them
    /// awaits its loader and the others wait (without blocking a thread) and
    /// share its value or its error. A value is cached; an error is not; a
    /// value superseded by a write, remove or invalidation of its key (or by
    /// a [`retain`](Self::retain)) while it loaded is returned to the tasks
    /// already waiting for it but not cached, and a call made after that
    /// change loads afresh. A waiter's read uses the key
    /// as in [`get_or_load`](Self::get_or_load).
    ///
    /// Cancellation is safe: a waiting task that is dropped just stops
    /// waiting; if the loading task is dropped, its load is abandoned and one
    /// of the waiting tasks starts its own. The load is abandoned before the
    /// loader's future is dropped, so code in that drop may load the key
    /// (as a new load).
    ///
    /// # Panics
    /// If the loader awaits `get_or_load_async` for its own key from inside
    /// itself (directly, or through a loader of another key that it awaits),
    /// or a blocking loader of the key, or the weigher or the clock while
    /// they run for this load, blocks on it on its own thread, the inner
    /// call panics instead of waiting forever for the load it is part
    /// of, as [`get_or_load`](Self::get_or_load) does; the load is then
    /// abandoned. So does the wait that closes a cycle of loaders in
    /// different tasks or threads that wait for each other's keys (1's
    /// loader awaits 2 while 2's loader, in another task, awaits 1): its
    /// load is abandoned and the others finish. A wait from a task the
    /// loader spawns and awaits cannot be told from an ordinary waiter,
    /// and still waits forever. The other way
    /// round, a task that merely waits for the key is taken for part of the
    /// loader, and panics, when the loader's own thread polls it from inside
    /// the loader: a task of a current-thread runtime or `LocalSet` that a
    /// loader drives (`block_on`, `run_until`), even one the loader does not
    /// wait for.
    ///
    /// A waiting task's [`Waker`] that panics when the load ends does not
    /// keep the other waiters from being woken: all of them are woken and
    /// get the outcome (a value is stored as usual), and then the first such
    /// panic resumes in the loading task's call (or in the drop of its
    /// future, if it was cancelled; it is dropped if that task is already
    /// panicking).
    ///
    /// # Errors
    /// The loader's error, shared in an `Arc` among all the callers that
    /// waited for that load.
    ///
    /// # Example
    /// ```
    /// use torque_cache::LocalCache;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: LocalCache<u32, String> = LocalCache::new(100);
    /// let v = cache
    ///     .get_or_load_async(7, || async { Ok::<_, std::io::Error>("seven".to_string()) })
    ///     .await;
    /// assert_eq!(v.unwrap(), "seven");
    /// # });
    /// ```
    pub async fn get_or_load_async<E, F, Fut>(&self, key: K, load: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(value) = self.get(&key) {
            return Ok(value);
        }
        let slot = loop {
            match self.join(&key, None) {
                Join::Hit(value) => {
                    self.touch(&key);
                    return Ok(value);
                }
                Join::Leader(slot) => break slot,
                Join::Follower(slot) => {
                    // Waiting here would wait for this very loader.
                    assert!(
                        !slot.waits_for_itself(),
                        "get_or_load_async: the loader of a key waited for the load of the same \
                         key from inside itself, which would wait for itself forever"
                    );
                    let wait = Wait {
                        slot,
                        waker_index: None,
                        blocked: None,
                    };
                    if let Some(result) = settle(wait.await) {
                        return self.waited(&key, result);
                    }
                }
            }
        };
        let me = Arc::clone(&slot.link);
        // Declared before the guard, so that if this future is dropped
        // (cancelled) the guard abandons the load before the loader's
        // future is dropped: that drop runs the loader's own cleanup, and
        // a cleanup that loads this key waited for ever on the load it
        // belonged to; now it starts a new one.
        let mut loading = std::pin::pin!(None);
        let guard = self.lead(key, slot);
        // The call that makes the loader's future and each poll of it are
        // listed in `POLLING`, so that a wait for this load from inside
        // either is caught instead of hanging.
        {
            let _polling = PollingLoad::enter(&me);
            loading.set(Some(load()));
        }
        let result = std::future::poll_fn(|cx| {
            let _polling = PollingLoad::enter(&me);
            match loading.as_mut().as_pin_mut() {
                Some(loading) => loading.poll(cx),
                None => unreachable!("the loader's future is set before it is polled"),
            }
        })
        .await;
        guard.finish(result)
    }
}

impl<K, V> fmt::Debug for Loads<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loads")
            .field("in_flight", &self.pending.lock().len())
            .finish_non_exhaustive()
    }
}
