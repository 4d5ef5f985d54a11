//! The `Blocking` strategy: a fixed set of dedicated threads fed through one
//! bounded queue, for work that blocks (file I/O, a synchronous driver, a
//! compression library).
//!
//! Unlike tokio's `spawn_blocking` pool, whose queue is unbounded, a batch
//! here waits for room before it submits the next item: the queue holds at
//! most `queue_capacity` jobs, and the weight of the items queued or running
//! never exceeds the memory budget (an item heavier than the whole budget
//! runs alone). A synchronous caller blocks while it waits; an async
//! caller (`map_async`) returns `Pending` and is woken when a worker frees
//! room. Neither waits on a rayon thread, which runs its own jobs instead
//! (see `BlockingPool::run`).
//!
//! Admission is first come, first served, as in tokio's `Semaphore`: a job
//! that finds no room joins a wait line, and once anyone waits, later
//! arrivals queue behind it even if they would fit, so a heavy item is not
//! starved by a stream of light ones slipping past it. Whoever frees room
//! (a finishing job, a worker taking a job out of a full queue, a feeder
//! leaving the line) moves the jobs at the head of the line into the queue
//! itself, so a waiting feeder need not be polled for its job to get in.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::cpu::kept_on_this_thread;
use crate::outcome::{ItemError, PanicError, drop_caught, not_run};

thread_local! {
    /// Set on the pool's own threads: a batch submitted from inside a job runs
    /// inline, because waiting for room in the queue from a worker could wait
    /// for itself.
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// How often a blocked feeder looks at its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Jobs never panic while holding a lock (panics are caught inside the
    // job, outside any lock), so a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Job {
    /// Counted into `in_flight_weight` when queued; the job gives it back.
    weight: u64,
    /// The batch the job belongs to ([`owner_of`]).
    owner: usize,
    /// Runs the item, or only drops it ([`Run`]), and completes it in its
    /// batch.
    run: Box<dyn FnOnce(Run) + Send>,
}

/// How a [`Job`] ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Admitted: its weight is counted in flight, given back when it ends.
    Admitted,
    /// Admitted, and taken by a worker, which counted it in
    /// [`Shared::running`]: the job counts itself out before its batch
    /// learns that it ended. A caller that has its results and drops the
    /// processor must find it no longer running, or the drop leaves the
    /// threads to exit on their own, unjoined (they outlived the processor).
    Worker,
    /// Taken back out of the wait line before admission by a feeder that
    /// gives up: it drops the item and reports `Cancelled`, with no weight
    /// to give back.
    Withdrawn,
    /// Never admitted, run by its own feeder: taken back out of the wait
    /// line by a feeder polled on a worker or fed on a rayon thread, which
    /// runs it there (see `BlockingMap::poll`, `BlockingPool::run`). It
    /// runs the item, with no weight to give back.
    Inline,
}

/// A job in the wait line for room.
struct Waiting {
    /// Handed out in arrival order: the line is sorted by ticket.
    ticket: u64,
    job: Job,
    /// The async feeder to wake once the job is admitted; `None` for a
    /// synchronous one, which waits on `space_ready`.
    waker: Option<Waker>,
}

/// The feeders to wake after a change to the wait line, outside the lock.
#[derive(Default)]
#[must_use]
struct Wake {
    wakers: Vec<Waker>,
    /// A synchronous feeder is among them.
    sync: bool,
}

impl Wake {
    fn run(self, shared: &Shared) {
        if self.sync {
            shared.space_ready.notify_all();
        }
        for w in self.wakers {
            w.wake();
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    in_flight_weight: u64,
    peak_in_flight_weight: u64,
    shutdown: bool,
    live_workers: usize,
    /// Jobs that found no room, first come first served; at most one per
    /// feeder (a feeder takes its next item once this one is admitted),
    /// except a feeder on a rayon thread, which puts its jobs here without
    /// waiting and takes back those still here to run them itself.
    waiting: VecDeque<Waiting>,
    next_ticket: u64,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    work_ready: Condvar,
    space_ready: Condvar,
    queue_capacity: usize,
    memory_budget: u64,
    /// Jobs the workers are running: counted up under `state`'s lock as a
    /// worker takes one, so that a shutdown, which looks under that lock,
    /// never misses one; counted down without it, by the job itself before
    /// its batch learns that it ended (see [`Run::Worker`]).
    running: AtomicUsize,
}

impl Shared {
    fn admits(&self, st: &State, weight: u64) -> bool {
        // Checked, not saturating: a sum past `u64::MAX` would pass a
        // budget of `u64::MAX` (no budget) and then lose weight, which
        // `release` gives back in full.
        st.queue.len() < self.queue_capacity
            && (st.in_flight_weight == 0
                || st
                    .in_flight_weight
                    .checked_add(weight)
                    .is_some_and(|w| w <= self.memory_budget))
    }

    fn push(&self, st: &mut State, job: Job) {
        st.in_flight_weight = st.in_flight_weight.saturating_add(job.weight);
        st.peak_in_flight_weight = st.peak_in_flight_weight.max(st.in_flight_weight);
        st.queue.push_back(job);
        self.work_ready.notify_one();
    }

    /// Queues `job` when nobody waits for room and it fits; otherwise
    /// gives it back. Not for a shut-down pool.
    fn try_push(&self, st: &mut State, job: Job) -> Result<(), Job> {
        // The only check the uncontended path adds: the line is empty.
        if st.waiting.is_empty() && self.admits(st, job.weight) {
            self.push(st, job);
            return Ok(());
        }
        Err(job)
    }

    /// Queues `job` when nobody waits for room and it fits; otherwise puts
    /// it at the end of the wait line and returns its ticket. Not for a
    /// shut-down pool.
    fn submit(&self, st: &mut State, job: Job, waker: Option<&Waker>) -> Option<u64> {
        let Err(job) = self.try_push(st, job) else {
            return None;
        };
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.waiting.push_back(Waiting {
            ticket,
            job,
            waker: waker.cloned(),
        });
        Some(ticket)
    }

    /// Whether the job with `ticket` has left the wait line by admission.
    /// Only its own feeder takes a job out otherwise ([`withdraw`](Self::withdraw)),
    /// and admission takes the head, so a ticket no longer in the line is
    /// one below the head's.
    fn is_admitted(st: &State, ticket: u64) -> bool {
        st.waiting.front().is_none_or(|w| w.ticket > ticket)
    }

    /// The feeder of `ticket` was polled again: wake that task when
    /// admitted. Returns the waker replaced, to drop outside the lock.
    #[must_use]
    fn set_waker(st: &mut State, ticket: u64, waker: &Waker) -> Option<Waker> {
        let i = Self::place_in_line(st, ticket)?;
        let w = &mut st.waiting[i];
        if w.waker.as_ref().is_some_and(|old| old.will_wake(waker)) {
            return None;
        }
        w.waker.replace(waker.clone())
    }

    /// Moves jobs from the head of the wait line into the queue while they
    /// fit, in order: one that does not fit holds back those behind it.
    /// After shutdown it admits none and wakes every feeder instead, to
    /// give up.
    fn admit_waiting(&self, st: &mut State) -> Wake {
        let mut wake = Wake::default();
        if st.shutdown {
            wake.sync = !st.waiting.is_empty();
            wake.wakers = st
                .waiting
                .iter_mut()
                .filter_map(|w| w.waker.take())
                .collect();
            return wake;
        }
        while let Some(head) = st.waiting.front() {
            if !self.admits(st, head.job.weight) {
                break;
            }
            let Some(w) = st.waiting.pop_front() else {
                break;
            };
            match w.waker {
                Some(waker) => wake.wakers.push(waker),
                None => wake.sync = true,
            }
            self.push(st, w.job);
        }
        wake
    }

    /// Takes the job of `ticket` back out of the wait line (its feeder gives
    /// up: cancelled or shut down), letting in whoever fits behind it now.
    /// Run the job with [`Run::Withdrawn`], outside the lock.
    fn withdraw(&self, st: &mut State, ticket: u64) -> (Option<Job>, Wake) {
        let job = Self::remove_waiting(st, ticket);
        (job, self.admit_waiting(st))
    }

    /// The job of `ticket`, out of the wait line; `None` once admitted.
    fn remove_waiting(st: &mut State, ticket: u64) -> Option<Job> {
        Self::place_in_line(st, ticket)
            .and_then(|i| st.waiting.remove(i))
            .map(|w| w.job)
    }

    /// Where the job of `ticket` stands in the wait line, if still there:
    /// a binary search, as the line is sorted by ticket (a feeder on a
    /// rayon thread puts a whole batch in it at once, and a scan from the
    /// front cost every poll of the async feeders behind it that many).
    fn place_in_line(st: &State, ticket: u64) -> Option<usize> {
        st.waiting.binary_search_by_key(&ticket, |w| w.ticket).ok()
    }

    /// The queued jobs of batch `owner`, out of the queue (their weight is
    /// still in flight: run them with [`Run::Admitted`]).
    fn take_queued(st: &mut State, owner: usize) -> VecDeque<Job> {
        let (mine, rest) = std::mem::take(&mut st.queue)
            .into_iter()
            .partition(|job| job.owner == owner);
        st.queue = rest;
        mine
    }

    /// For a feeder polled on a worker, which runs what is left of its
    /// batch there: takes batch `owner`'s job `ticket` back out of the wait
    /// line if it is still there, and its queued jobs out of the queue, in
    /// one go (a job admitted meanwhile is among the queued ones, unless a
    /// worker has it already), letting in whoever fits now. Outside the
    /// lock, run the queued jobs with [`Run::Admitted`], then the job taken
    /// out of the line with [`Run::Inline`].
    fn take_back(
        &self,
        st: &mut State,
        owner: usize,
        ticket: Option<u64>,
    ) -> (VecDeque<Job>, Option<Job>, Wake) {
        let withdrawn = ticket.and_then(|ticket| Self::remove_waiting(st, ticket));
        let queued = Self::take_queued(st, owner);
        (queued, withdrawn, self.admit_waiting(st))
    }

    /// For a feeder on a rayon thread (see [`BlockingPool::run`]), in one
    /// look at the pool: batch `owner`'s first queued job, out of the queue
    /// (its weight still in flight: run it with [`Run::Admitted`]), or with
    /// none queued its first job in the wait line, out of the line (never
    /// admitted: run it with [`Run::Inline`]). One look, so that a job
    /// admitted meanwhile is not missed between the two. The room a job
    /// leaves lets in whoever waits for it, as a worker's pop does.
    fn take_own_job(&self, owner: usize) -> Option<(Job, Run)> {
        let (taken, wake) = {
            let mut st = lock(&self.state);
            if let Some(i) = st.queue.iter().position(|job| job.owner == owner) {
                let made_room = st.queue.len() >= self.queue_capacity;
                let job = st.queue.remove(i)?;
                let wake =
                    (made_room && !st.waiting.is_empty()).then(|| self.admit_waiting(&mut st));
                ((job, Run::Admitted), wake)
            } else {
                let i = st.waiting.iter().position(|w| w.job.owner == owner)?;
                let job = st.waiting.remove(i)?.job;
                ((job, Run::Inline), Some(self.admit_waiting(&mut st)))
            }
        };
        if let Some(wake) = wake {
            wake.run(self);
        }
        Some(taken)
    }

    /// For a feeder on a rayon thread once every item is in (queued or in
    /// the wait line): runs batch `owner`'s jobs that no worker has
    /// started here, front first (the queued ones, then those in the
    /// line), so that it waits only for the jobs that workers have
    /// started. After a cancel each only drops its item and reports
    /// `Cancelled` (giving back its weight if it had any).
    fn run_own_jobs_here(&self, owner: usize) {
        while let Some((job, run)) = self.take_own_job(owner) {
            kept_on_this_thread(|| (job.run)(run));
        }
    }

    fn worker(self: Arc<Self>) {
        ON_WORKER.with(|w| w.set(true));
        loop {
            let (job, wake) = {
                let mut st = lock(&self.state);
                loop {
                    if let Some(job) = st.queue.pop_front() {
                        // The queue was full and has room now: a job waiting
                        // for it gets in (a job that ends admits too, but it
                        // may have found the queue still full before this
                        // pop). A pop from a queue with room frees nothing a
                        // waiting job lacks.
                        let made_room = st.queue.len() + 1 >= self.queue_capacity;
                        let wake = (made_room && !st.waiting.is_empty())
                            .then(|| self.admit_waiting(&mut st));
                        // Counted out by the job ([`Run::Worker`]).
                        self.running.fetch_add(1, Ordering::Relaxed);
                        break (job, wake);
                    }
                    if st.shutdown {
                        st.live_workers -= 1;
                        return;
                    }
                    st = self
                        .work_ready
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            if let Some(wake) = wake {
                wake.run(&self);
            }
            (job.run)(Run::Worker);
        }
    }

    /// Takes the queued jobs of batch `owner` (cancelled or dropped) out of
    /// the queue and runs them here: each sees the cancel (or `abandoned`),
    /// so it only drops its item, gives back its weight and reports
    /// `Cancelled`. Otherwise they would wait for a worker, which may be
    /// busy with another batch's long job.
    fn skip_queued(&self, owner: usize) {
        let mine = Self::take_queued(&mut lock(&self.state), owner);
        for job in mine {
            (job.run)(Run::Admitted);
        }
    }

    /// Gives back a finished job's weight, admits the jobs at the head of
    /// the wait line that fit now, and wakes their feeders.
    fn release(&self, weight: u64) {
        let wake = {
            let mut st = lock(&self.state);
            st.in_flight_weight -= weight;
            if st.waiting.is_empty() {
                return;
            }
            self.admit_waiting(&mut st)
        };
        wake.run(self);
    }
}

/// A snapshot of the blocking pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PoolStatus {
    pub(crate) threads: usize,
    pub(crate) queued: usize,
    pub(crate) in_flight_weight: u64,
    pub(crate) peak_in_flight_weight: u64,
}

/// The dedicated threads; joined when dropped, unless they have work left.
pub(crate) struct BlockingPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingPool")
            .field("status", &self.status())
            .finish()
    }
}

impl BlockingPool {
    pub(crate) fn new(
        threads: usize,
        queue_capacity: usize,
        memory_budget: u64,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                live_workers: threads,
                ..State::default()
            }),
            work_ready: Condvar::new(),
            space_ready: Condvar::new(),
            queue_capacity,
            memory_budget,
            running: AtomicUsize::new(0),
        });
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let s = Arc::clone(&shared);
            match thread::Builder::new()
                .name(format!("torque-blocking-{i}"))
                .spawn(move || s.worker())
            {
                Ok(h) => handles.push(h),
                Err(e) => {
                    let mut pool = BlockingPool { shared, handles };
                    lock(&pool.shared.state).live_workers = pool.handles.len();
                    pool.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(BlockingPool { shared, handles })
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let st = lock(&self.shared.state);
        PoolStatus {
            threads: st.live_workers,
            queued: st.queue.len(),
            in_flight_weight: st.in_flight_weight,
            peak_in_flight_weight: st.peak_in_flight_weight,
        }
    }

    fn shutdown(&mut self) {
        let (wake, work_left) = {
            let mut st = lock(&self.shared.state);
            st.shutdown = true;
            // Jobs still running or queued (of batches whose futures were
            // dropped) are user code that may wait for the very thread
            // dropping the pool (a task of its runtime, a lock it holds):
            // the workers finish them and exit on their own, unwaited.
            let work_left = !st.queue.is_empty() || self.shared.running.load(Ordering::Relaxed) > 0;
            (self.shared.admit_waiting(&mut st), work_left)
        };
        self.shared.work_ready.notify_all();
        self.shared.space_ready.notify_all();
        wake.run(&self.shared);
        if work_left {
            self.handles.clear();
            return;
        }
        let me = thread::current().id();
        for h in self.handles.drain(..) {
            // A job that drops the last handle to the processor runs on a
            // worker: that worker cannot join itself, it exits on its own.
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }

    /// Runs a batch synchronously; blocks for room and for the results.
    ///
    /// Called on a rayon thread (a `Cpu` item's batch), it never waits for
    /// room, nor for a worker to take a job: it submits every item at once,
    /// into the queue or, with no room, the wait line (in turn with other
    /// feeders); then it takes back the batch's jobs that no worker has
    /// started and runs them itself, front first, the queued ones (their
    /// weight counted until they end) before those still in the line
    /// (uncounted, as inline items), so that it waits only for its jobs
    /// that workers have started. It submits every item before it runs
    /// any: a job it ran could wait for a later one of the batch (a
    /// producer for its consumer), which it would then never submit. It never runs
    /// other rayon work while it waits (which would most often be the
    /// other items of the waiting item's own batch, nested inside it), so
    /// nothing it waits for may need a rayon thread: the jobs of such a
    /// batch run their `Cpu` batches on their own thread
    /// ([`kept_on_this_thread`]), and the workers they are queued behind
    /// may wait for rayon themselves (a job from a plain thread running a
    /// `Cpu` batch), which is why it does not wait behind them.
    pub(crate) fn run<T, R, E, W, F>(
        &self,
        items: Vec<T>,
        weigh: W,
        f: F,
        cancel: Option<&CancelToken>,
    ) -> Vec<Result<R, ItemError<E>>>
    where
        T: Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
        W: Fn(&T) -> u64,
        F: Fn(T) -> Result<R, E> + Send + Sync + 'static,
    {
        let is_cancelled = || cancel.is_some_and(CancelToken::is_cancelled);
        if ON_WORKER.with(Cell::get) {
            return items
                .into_iter()
                .map(|x| {
                    if is_cancelled() {
                        not_run(x)
                    } else {
                        run_owned(&f, x)
                    }
                })
                .collect();
        }
        let batch = Arc::new(Batch::new(items.len()));
        let f = Arc::new(f);
        let shared = &self.shared;
        let on_rayon = rayon::current_thread_index().is_some();
        let owner = owner_of(&batch);
        'items: for (i, item) in items.into_iter().enumerate() {
            if is_cancelled() {
                batch.complete(i, not_run(item), false);
                continue;
            }
            let (weight, item) = match weigh_caught(&weigh, item) {
                Ok(weighed) => weighed,
                Err(panicked) => {
                    batch.complete(i, panicked, false);
                    continue;
                }
            };
            let mut st = lock(&shared.state);
            if st.shutdown {
                drop(st);
                batch.complete(i, not_run(item), false);
                continue;
            }
            batch.add_pending();
            let job = job(shared, &batch, &f, i, item, weight, cancel.cloned());
            if on_rayon {
                // Queued or in the wait line, without waiting: a job that
                // this thread ran now could wait for one of the batch's
                // later jobs (a producer for its consumer) that it then
                // would never submit.
                let _ = shared.submit(&mut st, job, None);
                continue;
            }
            let Some(ticket) = shared.submit(&mut st, job, None) else {
                continue;
            };
            // In the wait line: whoever frees room admits the job.
            while !Shared::is_admitted(&st, ticket) {
                if st.shutdown || is_cancelled() {
                    let (job, wake) = shared.withdraw(&mut st, ticket);
                    drop(st);
                    wake.run(shared);
                    if let Some(job) = job {
                        (job.run)(Run::Withdrawn);
                    }
                    continue 'items;
                }
                st = shared
                    .space_ready
                    .wait_timeout(st, CANCEL_POLL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        if on_rayon {
            shared.run_own_jobs_here(owner);
            return batch.wait();
        }
        match cancel {
            None => batch.wait(),
            Some(token) => {
                let mut skipped = false;
                batch.wait_polling(|| {
                    if !skipped && token.is_cancelled() {
                        skipped = true;
                        shared.skip_queued(owner);
                    }
                })
            }
        }
    }
}

impl Drop for BlockingPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The item with its weight, or, when `weigh` panicked, that item's result:
/// the panic (the item is dropped, not run; a panic of its `Drop` is
/// caught too). The weigher is the caller's code run item by item, like
/// the closure: its panic is the item's, not the batch's.
fn weigh_caught<T, R, E>(
    weigh: &impl Fn(&T) -> u64,
    item: T,
) -> Result<(u64, T), Result<R, ItemError<E>>> {
    match catch_unwind(AssertUnwindSafe(|| weigh(&item))) {
        Ok(weight) => Ok((weight, item)),
        Err(payload) => {
            let _ = drop_caught(item);
            Err(Err(ItemError::Panicked(PanicError::from_box(payload))))
        }
    }
}

fn run_owned<T, R, E, F: Fn(T) -> Result<R, E>>(f: &F, x: T) -> Result<R, ItemError<E>> {
    match catch_unwind(AssertUnwindSafe(|| f(x))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ItemError::Failed(e)),
        Err(payload) => Err(ItemError::Panicked(PanicError::from_box(payload))),
    }
}

/// The identity of a batch, for its jobs: the address of its shared state,
/// which every job keeps alive.
fn owner_of<R, E>(batch: &Arc<Batch<R, E>>) -> usize {
    Arc::as_ptr(batch).cast::<()>() as usize
}

fn job<T, R, E, F>(
    shared: &Arc<Shared>,
    batch: &Arc<Batch<R, E>>,
    f: &Arc<F>,
    index: usize,
    item: T,
    weight: u64,
    cancel: Option<CancelToken>,
) -> Job
where
    T: Send + 'static,
    R: Send + 'static,
    E: Send + 'static,
    F: Fn(T) -> Result<R, E> + Send + Sync + 'static,
{
    let shared = Arc::clone(shared);
    let batch = Arc::clone(batch);
    let f = Arc::clone(f);
    // Submitted from a rayon thread (a `Cpu` item's batch, or a future
    // polled there by a `block_on` in one), which waits for the job
    // without running other rayon work: the job's `Cpu` batches must not
    // wait for a rayon thread (see `BlockingPool::run`).
    let keep_cpu_here = rayon::current_thread_index().is_some();
    Job {
        weight,
        owner: owner_of(&batch),
        run: Box::new(move |run: Run| {
            let skip = run == Run::Withdrawn
                || batch.abandoned.load(Ordering::Relaxed)
                || cancel.as_ref().is_some_and(CancelToken::is_cancelled);
            let result = if skip {
                not_run(item)
            } else if keep_cpu_here {
                kept_on_this_thread(|| run_owned(&*f, item))
            } else {
                run_owned(&*f, item)
            };
            // Release what the job holds (and its weight) before reporting
            // it done, so that a batch that has returned holds nothing of
            // the caller's and its weight is no longer in flight. The last
            // handle to the closure may be this one (the batch's future was
            // dropped): a panic of its `Drop` belongs to no item, and must
            // neither kill the worker nor keep the weight, so it is caught
            // and dropped (the panic hook has reported it).
            let _ = drop_caught(f);
            drop(cancel);
            if matches!(run, Run::Admitted | Run::Worker) {
                shared.release(weight);
            }
            // A worker's job is no longer running once its caller can have
            // the results (see `BlockingPool::shutdown`). A batch whose
            // future was dropped takes no more results: the job drops its
            // own (user code, whose `Drop` may panic, which must not kill
            // the worker: the pool would be a thread short for good) and
            // counts until after. Decided under the batch's lock, where
            // the future's drop marks it abandoned and takes the results
            // it holds: read outside, a drop just after the read left this
            // handle the last, to drop those results uncounted.
            let counted = run == Run::Worker;
            let counted_out = || {
                if counted {
                    shared.running.fetch_sub(1, Ordering::Relaxed);
                }
            };
            if let Some(result) = batch.complete_job(index, result, counted_out) {
                let _ = drop_caught(result);
                counted_out();
            }
            // The batch holds none of the caller's data now (the results
            // are the caller's, or were taken by the future's drop, with
            // its waker); caught all the same, as the worker must live on.
            let _ = drop_caught(batch);
        }),
    }
}

struct BatchState<R, E> {
    results: Vec<Option<Result<R, ItemError<E>>>>,
    pending: usize,
    waker: Option<Waker>,
}

/// One batch's results, filled in by the workers.
struct Batch<R, E> {
    state: Mutex<BatchState<R, E>>,
    done: Condvar,
    /// Set when an async batch is dropped: queued items are skipped.
    abandoned: AtomicBool,
}

impl<R, E> Batch<R, E> {
    fn new(n: usize) -> Self {
        Batch {
            state: Mutex::new(BatchState {
                results: (0..n).map(|_| None).collect(),
                pending: 0,
                waker: None,
            }),
            done: Condvar::new(),
            abandoned: AtomicBool::new(false),
        }
    }

    fn add_pending(&self) {
        lock(&self.state).pending += 1;
    }

    /// [`complete`](Self::complete) for a job: `counted_out` runs before
    /// the batch learns of the result. A batch abandoned (its future
    /// dropped) takes no result: it is handed back, for the job to drop.
    fn complete_job(
        &self,
        index: usize,
        result: Result<R, ItemError<E>>,
        counted_out: impl FnOnce(),
    ) -> Option<Result<R, ItemError<E>>> {
        let mut st = lock(&self.state);
        st.pending -= 1;
        if self.abandoned.load(Ordering::Relaxed) {
            return Some(result);
        }
        self.store(st, index, result, counted_out);
        None
    }

    fn complete(&self, index: usize, result: Result<R, ItemError<E>>, was_pending: bool) {
        let mut st = lock(&self.state);
        if was_pending {
            st.pending -= 1;
        }
        self.store(st, index, result, || {});
    }

    /// Stores `result` under the lock `st`, runs `before_wake` there, and
    /// wakes the caller (after unlocking) once no job is pending.
    fn store(
        &self,
        mut st: MutexGuard<'_, BatchState<R, E>>,
        index: usize,
        result: Result<R, ItemError<E>>,
        before_wake: impl FnOnce(),
    ) {
        st.results[index] = Some(result);
        before_wake();
        let waker = if st.pending == 0 {
            self.done.notify_all();
            st.waker.take()
        } else {
            None
        };
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn take_results(st: &mut BatchState<R, E>) -> Vec<Result<R, ItemError<E>>> {
        std::mem::take(&mut st.results)
            .into_iter()
            .map(|r| r.unwrap_or(Err(ItemError::Cancelled)))
            .collect()
    }

    fn wait(&self) -> Vec<Result<R, ItemError<E>>> {
        let mut st = lock(&self.state);
        while st.pending > 0 {
            st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        Self::take_results(&mut st)
    }

    /// [`wait`](Self::wait), calling `poll` (without the lock) before the
    /// first wait and every [`CANCEL_POLL`] after.
    fn wait_polling(&self, mut poll: impl FnMut()) -> Vec<Result<R, ItemError<E>>> {
        loop {
            poll();
            let st = lock(&self.state);
            let mut st = if st.pending > 0 {
                self.done
                    .wait_timeout(st, CANCEL_POLL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            } else {
                st
            };
            if st.pending == 0 {
                return Self::take_results(&mut st);
            }
        }
    }
}

/// The future returned by [`Blocking::map_async`](crate::Blocking::map_async)
/// and [`Blocking::try_map_async`](crate::Blocking::try_map_async).
///
/// It submits items as the queue and the memory budget allow, in turn with
/// other batches on the pool (first come, first served), and resolves to
/// the results in input order. Dropping it cancels the batch: items not yet
/// running (unsubmitted, waiting for room or queued) are dropped at once,
/// and only items already running finish.
///
/// Polled on a blocking worker (awaited inside a job, whether or not it was
/// polled elsewhere before), it runs what is left of the batch on that
/// thread, its items waiting for room and its queued ones included: waiting
/// there for a worker could wait for itself. Polled on a rayon thread (a
/// `block_on` in a `Cpu` item), it never waits for room nor for a worker
/// to take a job, as the synchronous `map` there: it submits every item
/// at once, runs its jobs that no worker has started on that thread, and
/// is pending only for the jobs that workers have started.
#[must_use = "futures do nothing unless polled"]
pub struct BlockingMap<T, R, E, F, W = fn(&T) -> u64> {
    shared: Arc<Shared>,
    batch: Arc<Batch<R, E>>,
    items: std::iter::Enumerate<std::vec::IntoIter<T>>,
    /// The ticket of the batch's job in the pool's wait line, if any.
    waiting: Option<u64>,
    f: Arc<F>,
    weigh: W,
    cancel: Option<CancelToken>,
    /// The waker registered with `cancel` while the batch is not done.
    registered: Option<Waker>,
    /// The batch's queued jobs were taken back after a cancel.
    skipped: bool,
    /// Polled on a blocking worker: what was left of the batch ran there
    /// (nothing is queued or in the wait line any more).
    inline: bool,
    finished: bool,
}

// Nothing in the future is ever pinned in place (no field is projected), so
// it may move freely whatever `T` is.
impl<T, R, E, F, W> Unpin for BlockingMap<T, R, E, F, W> {}

impl<T, R, E, F, W> fmt::Debug for BlockingMap<T, R, E, F, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingMap")
            .field("remaining_to_submit", &self.items.len())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<T, R, E, F, W> BlockingMap<T, R, E, F, W> {
    pub(crate) fn new(
        pool: &BlockingPool,
        items: Vec<T>,
        weigh: W,
        f: F,
        cancel: Option<CancelToken>,
    ) -> Self {
        BlockingMap {
            shared: Arc::clone(&pool.shared),
            batch: Arc::new(Batch::new(items.len())),
            items: items.into_iter().enumerate(),
            waiting: None,
            f: Arc::new(f),
            weigh,
            cancel,
            registered: None,
            skipped: false,
            inline: false,
            finished: false,
        }
    }
}

impl<T, R, E, F, W> BlockingMap<T, R, E, F, W> {
    /// A future for a processor whose threads could not start: every item
    /// resolves as cancelled.
    pub(crate) fn cancelled(items: Vec<T>, weigh: W, f: F) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                shutdown: true,
                ..State::default()
            }),
            work_ready: Condvar::new(),
            space_ready: Condvar::new(),
            queue_capacity: 1,
            memory_budget: u64::MAX,
            running: AtomicUsize::new(0),
        });
        BlockingMap {
            shared,
            batch: Arc::new(Batch::new(items.len())),
            items: items.into_iter().enumerate(),
            waiting: None,
            f: Arc::new(f),
            weigh,
            cancel: None,
            registered: None,
            skipped: false,
            inline: false,
            finished: false,
        }
    }
}

impl<T, R, E, F, W> Future for BlockingMap<T, R, E, F, W>
where
    T: Send + 'static,
    R: Send + 'static,
    E: Send + 'static,
    W: Fn(&T) -> u64,
    F: Fn(T) -> Result<R, E> + Send + Sync + 'static,
{
    type Output = Vec<Result<R, ItemError<E>>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let shared = &this.shared;
        let batch = &this.batch;
        let on_worker = ON_WORKER.with(Cell::get);
        // Polled on a rayon thread (a `block_on` in a `Cpu` item), it feeds
        // as `BlockingPool::run` does there, never waiting for room nor for
        // a worker to take a job: the thread is parked while the future is
        // pending, and the workers it would wait behind may be waiting for
        // a rayon thread themselves (a job from a plain thread running a
        // `Cpu` batch).
        let on_rayon = !on_worker && rayon::current_thread_index().is_some();
        if let Some(ticket) = this.waiting {
            let mut st = lock(&shared.state);
            if Shared::is_admitted(&st, ticket) {
                this.waiting = None;
            } else if st.shutdown || this.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                let (job, wake) = shared.withdraw(&mut st, ticket);
                drop(st);
                this.waiting = None;
                wake.run(shared);
                if let Some(job) = job {
                    (job.run)(Run::Withdrawn);
                }
            } else if on_rayon {
                // First polled elsewhere: the job is taken back out of the
                // line below, with the rest.
                drop(st);
                this.waiting = None;
            } else if !on_worker {
                let replaced = Shared::set_waker(&mut st, ticket, cx.waker());
                drop(st);
                drop(replaced);
            }
            // On a worker the job is taken back below, to run here.
        }
        if on_worker && !this.inline {
            // Polled on a pool thread (a job awaiting a nested batch): as in
            // `run`, the items run here, for waiting for room from a worker
            // could wait for this very job (queued behind an item that
            // waits for its weight, or the only worker). So could waiting
            // for a worker to take the batch's queued jobs, or for room for
            // its job in the wait line: a future first polled elsewhere
            // (on a runtime) and then awaited inside a job takes them back
            // and runs them here too. In one look at the pool: a job
            // admitted since the check above is queued, or a worker runs it.
            this.inline = true;
            let ticket = this.waiting.take();
            if ticket.is_some() || lock(&batch.state).pending > 0 {
                let (queued, withdrawn, wake) =
                    shared.take_back(&mut lock(&shared.state), owner_of(batch), ticket);
                wake.run(shared);
                for job in queued {
                    (job.run)(Run::Admitted);
                }
                if let Some(job) = withdrawn {
                    (job.run)(Run::Inline);
                }
            }
            for (i, item) in this.items.by_ref() {
                let result = if this.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                    not_run(item)
                } else {
                    run_owned(&*this.f, item)
                };
                batch.complete(i, result, false);
            }
        }
        while this.waiting.is_none()
            && let Some((i, item)) = this.items.next()
        {
            if this.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                batch.complete(i, not_run(item), false);
                continue;
            }
            let (weight, item) = match weigh_caught(&this.weigh, item) {
                Ok(weighed) => weighed,
                Err(panicked) => {
                    batch.complete(i, panicked, false);
                    continue;
                }
            };
            let mut st = lock(&shared.state);
            if st.shutdown {
                drop(st);
                batch.complete(i, not_run(item), false);
                continue;
            }
            batch.add_pending();
            let job = job(shared, batch, &this.f, i, item, weight, this.cancel.clone());
            if on_rayon {
                let _ = shared.submit(&mut st, job, None);
                continue;
            }
            this.waiting = shared.submit(&mut st, job, Some(cx.waker()));
        }
        if on_rayon {
            // Also the jobs that polls elsewhere left queued or waiting.
            shared.run_own_jobs_here(owner_of(batch));
        }
        if !this.skipped && this.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            this.skipped = true;
            // A cancel since the wait line was looked at above: the job
            // left there would hold the batch (no longer listening to the
            // token) until admitted, which may take another batch's long
            // job; and the items behind it would wait for that poll.
            if let Some(ticket) = this.waiting.take() {
                let (job, wake) = {
                    let mut st = lock(&shared.state);
                    shared.withdraw(&mut st, ticket)
                };
                wake.run(shared);
                if let Some(job) = job {
                    (job.run)(Run::Withdrawn);
                }
            }
            for (i, item) in this.items.by_ref() {
                batch.complete(i, not_run(item), false);
            }
            // After the withdrawal: a job admitted meanwhile is queued.
            shared.skip_queued(owner_of(batch));
        }
        let mut st = lock(&batch.state);
        if this.waiting.is_none() && this.items.len() == 0 && st.pending == 0 {
            this.finished = true;
            let results = Batch::take_results(&mut st);
            drop(st);
            this.unregister();
            return Poll::Ready(results);
        }
        st.waker = Some(cx.waker().clone());
        drop(st);
        // Room and results come from workers, which may be busy with
        // someone else's long job: the cancel must wake the batch.
        // Cancelled since the items were looked at: woken to go round again.
        if !this.skipped
            && let Some(token) = &this.cancel
        {
            token.keep_registered(&mut this.registered, cx.waker());
        }
        Poll::Pending
    }
}

impl<T, R, E, F, W> BlockingMap<T, R, E, F, W> {
    fn unregister(&mut self) {
        if let (Some(token), Some(waker)) = (&self.cancel, self.registered.take()) {
            token.unregister(&waker);
        }
    }
}

impl<T, R, E, F, W> Drop for BlockingMap<T, R, E, F, W> {
    fn drop(&mut self) {
        self.unregister();
        // The results in by now are dropped here, at the end (a panic of
        // theirs is the caller's, as when this handle was the last); the
        // jobs that end later drop their own (see `job`).
        let mut taken = (Vec::new(), None);
        if !self.finished {
            let mut st = lock(&self.batch.state);
            self.batch.abandoned.store(true, Ordering::Relaxed);
            taken = (std::mem::take(&mut st.results), st.waker.take());
        }
        // A job left in the wait line would hold back everyone behind it
        // until admitted, only to be skipped.
        if let Some(ticket) = self.waiting.take() {
            let (job, wake) = {
                let mut st = lock(&self.shared.state);
                self.shared.withdraw(&mut st, ticket)
            };
            wake.run(&self.shared);
            if let Some(job) = job {
                (job.run)(Run::Withdrawn);
            }
        }
        // Its queued jobs would wait for a worker (maybe busy with another
        // batch's long job), holding the items, the closure and their
        // weight meanwhile: run here, each sees `abandoned` and only drops
        // its item and gives back its weight.
        if !self.finished && lock(&self.batch.state).pending > 0 {
            self.shared.skip_queued(owner_of(&self.batch));
        }
        drop(taken);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::task::Wake;

    use super::*;

    /// A batch's waker that records, each time it is woken, how many jobs
    /// the pool still counts running.
    struct SeesRunning {
        shared: Arc<Shared>,
        seen: Mutex<mpsc::Sender<usize>>,
    }

    impl Wake for SeesRunning {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            let running = self.shared.running.load(Ordering::SeqCst);
            let _ = lock(&self.seen).send(running);
        }
    }

    /// A job no longer counts as running once its batch is told it ended:
    /// a caller that has its results and drops the last handle to the
    /// processor finds no job running, and joins the threads (a job still
    /// counted running is user code the drop must not wait for, so the
    /// threads were left to exit on their own, and outlived the processor
    /// the caller dropped: `tests/threads.rs` failed now and then on a
    /// loaded machine). The waker, run on the worker as the batch learns
    /// that its last job ended, reads the count at that moment.
    #[test]
    fn a_job_no_longer_counts_as_running_once_its_batch_is_told_it_ended() {
        let pool = BlockingPool::new(1, 4, u64::MAX).unwrap();
        let (seen_tx, seen) = mpsc::channel();
        let waker = Waker::from(Arc::new(SeesRunning {
            shared: Arc::clone(&pool.shared),
            seen: Mutex::new(seen_tx),
        }));
        let mut cx = Context::from_waker(&waker);
        // The item ends once the batch has been polled (and so has left
        // its waker), for the waker to be the one that learns of the end.
        let (go_tx, go) = mpsc::channel::<()>();
        let go = Mutex::new(go);
        let mut batch = BlockingMap::new(
            &pool,
            vec![7u32],
            |_: &u32| 1,
            move |x: u32| {
                let _ = lock(&go).recv_timeout(Duration::from_secs(60));
                Ok::<_, ()>(x)
            },
            None,
        );
        assert!(Pin::new(&mut batch).poll(&mut cx).is_pending());
        go_tx.send(()).unwrap();
        let running = seen
            .recv_timeout(Duration::from_secs(60))
            .expect("the batch is woken as its job ends");
        assert_eq!(
            running, 0,
            "jobs counted running as the batch learns it ended"
        );
        match Pin::new(&mut batch).poll(&mut cx) {
            Poll::Ready(out) => assert!(matches!(out.as_slice(), [Ok(7)]), "{out:?}"),
            Poll::Pending => panic!("woken, but not done"),
        }
    }

    /// A result whose `Drop` reports the thread it runs on (a pool worker
    /// or not) and how many jobs the pool counts running at that moment.
    struct Reports {
        shared: Arc<Shared>,
        dropped: Mutex<mpsc::Sender<(bool, usize)>>,
    }

    impl Drop for Reports {
        fn drop(&mut self) {
            let on_worker = ON_WORKER.with(Cell::get);
            let running = self.shared.running.load(Ordering::SeqCst);
            let _ = lock(&self.dropped).send((on_worker, running));
        }
    }

    /// The batch's waker, woken on the worker as the job completes the
    /// batch: it holds the worker there until the test has dropped the
    /// batch's future (a drop racing with the job's end, made certain).
    struct Holds {
        woken: Mutex<mpsc::Sender<()>>,
        resume: Mutex<mpsc::Receiver<()>>,
    }

    impl Wake for Holds {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            let _ = lock(&self.woken).send(());
            let _ = lock(&self.resume).recv_timeout(Duration::from_secs(60));
        }
    }

    /// A job that read `abandoned` unset counted itself out of `running`,
    /// and the batch's future was dropped just after: the job's handle to
    /// the batch was then the last, and dropping it ran the result's `Drop`
    /// (user code) on the worker while no job counted running. A processor
    /// dropped then joins that worker, which waits for user code that may
    /// wait for the very thread dropping it (what `BlockingPool::shutdown`
    /// leaves the threads unjoined for).
    #[test]
    fn a_result_dropped_on_a_worker_drops_while_its_job_counts_running() {
        let pool = BlockingPool::new(1, 4, u64::MAX).unwrap();
        let (woken_tx, woken) = mpsc::channel();
        let (resume, resume_rx) = mpsc::channel();
        let waker = Waker::from(Arc::new(Holds {
            woken: Mutex::new(woken_tx),
            resume: Mutex::new(resume_rx),
        }));
        let mut cx = Context::from_waker(&waker);
        let (dropped_tx, dropped) = mpsc::channel();
        let shared = Arc::clone(&pool.shared);
        let (go_tx, go) = mpsc::channel::<()>();
        let go = Mutex::new(go);
        let mut batch = BlockingMap::new(
            &pool,
            vec![7u32],
            |_: &u32| 1,
            move |_: u32| {
                let _ = lock(&go).recv_timeout(Duration::from_secs(60));
                Ok::<_, ()>(Reports {
                    shared: Arc::clone(&shared),
                    dropped: Mutex::new(dropped_tx.clone()),
                })
            },
            None,
        );
        assert!(Pin::new(&mut batch).poll(&mut cx).is_pending());
        go_tx.send(()).unwrap();
        woken
            .recv_timeout(Duration::from_secs(60))
            .expect("the batch is woken as its job ends");
        drop(batch);
        resume.send(()).unwrap();
        let (on_worker, running) = dropped
            .recv_timeout(Duration::from_secs(60))
            .expect("the result is dropped");
        assert!(
            !on_worker || running > 0,
            "the result was dropped on a worker while {running} jobs counted running"
        );
        drop(pool);
    }
}
