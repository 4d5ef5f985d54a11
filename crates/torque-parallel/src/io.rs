//! The `Async` strategy: I/O-bound items as tokio tasks, as many at once as
//! a [`Limiter`] allows.
//!
//! One driver ([`Completions`]) runs in the caller's task. It takes an item
//! from the input only when it can start it soon (at most one item waits for
//! a permit), takes a permit from the limiter, and starts the item's future:
//! spawned into a [`JoinSet`] it owns, or — for `map`, `try_map`, their
//! `_stream` forms and `for_each` on a current-thread runtime, where a task buys no parallelism — pushed into a
//! [`FuturesUnordered`] it polls itself ([`Polling`]). Each item times
//! itself, completes the limiter token with the outcome (success, overload
//! on timeout, ignore on error or panic) and hands back `(index, result)`.
//! Dropping the driver drops the `JoinSet` (aborting every task) or the
//! inline futures: nothing outlives the batch.

mod stats;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::{AbortHandle, Id, JoinSet};

pub use self::stats::IoStats;
pub(crate) use self::stats::{Counters, Ended};
use crate::cancel::CancelToken;
use crate::limit::{Algorithm, Clock, ConcurrencyLimiter, Limiter, Token};
use crate::outcome::{ItemError, PanicError, Summary};
use crate::processor::{Processor, ProcessorBuilder};

/// The limiter a [`Processor`] uses for its async batches unless told
/// otherwise: the configured algorithm ([`limit::Adaptive`](crate::limit::Adaptive)
/// by default, [`limit::Fixed`](crate::limit::Fixed) with
/// [`async_limit`](crate::ProcessorBuilder::async_limit)) timed by tokio's
/// clock.
pub type IoLimiter = ConcurrencyLimiter<Box<dyn Algorithm>, TokioClock>;

/// A [`Clock`] reading tokio's clock, so that latencies follow a paused test
/// clock (`tokio::time::pause`); outside a paused runtime it is the system
/// clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// The state of the `Async` strategy a processor shares between its batches.
pub(crate) struct Shared {
    pub(crate) limiter: IoLimiter,
    pub(crate) counters: Arc<Counters>,
}

impl Shared {
    pub(crate) fn new(algorithm: Box<dyn Algorithm>) -> Self {
        Shared {
            limiter: ConcurrencyLimiter::with_clock(algorithm, TokioClock),
            counters: Arc::new(Counters::default()),
        }
    }

    pub(crate) fn stats(&self) -> IoStats {
        self.counters.snapshot(self.limiter.stats())
    }
}

/// Settings of the `Async` and `Hybrid` strategies.
impl ProcessorBuilder {
    /// A fixed concurrency limit for the `Async` strategy instead of the
    /// adaptive one ([`limit::Adaptive`](crate::limit::Adaptive), which
    /// finds the limit from the latencies it observes).
    ///
    /// ```
    /// let processor = torque_parallel::Processor::builder().async_limit(32).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn async_limit(mut self, limit: usize) -> Self {
        self.config_mut().async_limit = Some(limit);
        self
    }

    /// The longest an `Async` or `Hybrid` item may take (default: no
    /// limit); a slower item comes back [`ItemError::TimedOut`] and counts
    /// as overload for the limiter.
    ///
    /// ```
    /// use std::time::Duration;
    /// let processor = torque_parallel::Processor::builder()
    ///     .item_timeout(Duration::from_secs(2))
    ///     .build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn item_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().item_timeout = Some(timeout);
        self
    }

    /// How many items the `Hybrid` strategy's CPU stage may hold ahead of
    /// its I/O stage, running or done (default twice the CPU threads): the
    /// capacity of the channel between the stages.
    ///
    /// ```
    /// let processor = torque_parallel::Processor::builder().hybrid_buffer(16).build()?;
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn hybrid_buffer(mut self, items: usize) -> Self {
        self.config_mut().hybrid_buffer = Some(items);
        self
    }
}

/// The `Async` strategy of a [`Processor`], from [`Processor::async_io`]:
/// every item is a future, with at most as many running as the limiter
/// allows. Each runs as a tokio task — except under `map`, `try_map`, their
/// `_stream` forms and `for_each` on a current-thread runtime, where a task
/// would buy no parallelism and the batch polls the items itself, at about
/// half the cost (panic isolation, cancellation and the limiter work the
/// same). Two differences an item can see when polled inline: it runs in
/// the batch's task, so it sees that task's task-locals, `task::id()` and
/// tracing span (a spawned item sees none of them); and a panic in the
/// item future's `Drop`, when a cancelled or dropped batch drops it, is
/// caught and the item comes back `Cancelled` (a task's comes back
/// `Panicked`, as tokio reports it).
///
/// A batch awaited inside an item of another batch under the same limiter
/// (the processor's, or clones of one [`ConcurrencyLimiter`] given to
/// [`with_limiter`](AsyncIo::with_limiter); see
/// [`Limiter::permits_id`]) runs on
/// that item's permit, one item at a time (of all the batches the item
/// awaits), whenever none of its own comes:
/// the item waits for it, and otherwise batches nested in every item at the
/// limit would wait for each other's permits for ever. A nested batch
/// under another limiter waits for that limiter as any batch does.
///
/// Methods consume the handle (it is a cheap clone of the processor) and
/// return futures and streams that own everything they need, so they can be
/// spawned. They must be polled inside a tokio runtime (with its time driver
/// if a [`timeout`](AsyncIo::timeout) is set).
///
/// Every method comes in two forms: items from an iterator (`map`) or from a
/// [`Stream`] (`map_stream`). Results come back in input order (`map`,
/// `try_map`) or as they complete ([`as_completed`](AsyncIo::as_completed)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), torque_parallel::BuildError> {
/// use torque_parallel::Processor;
///
/// let processor = Processor::builder().build()?;
/// let out = processor.async_io().map(1..=3u64, |x| async move { x * 10 }).await;
/// assert_eq!(*out[2].as_ref().unwrap(), 30);
/// # Ok(()) }
/// ```
pub struct AsyncIo<L = IoLimiter> {
    processor: Processor,
    limiter: Arc<L>,
    timeout: Option<Duration>,
}

/// Clones share the limiter (it is behind an `Arc`), so it need not be
/// `Clone` itself.
impl<L> Clone for AsyncIo<L> {
    fn clone(&self) -> Self {
        AsyncIo {
            processor: self.processor.clone(),
            limiter: Arc::clone(&self.limiter),
            timeout: self.timeout,
        }
    }
}

impl<L> fmt::Debug for AsyncIo<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncIo")
            .field("processor", &self.processor)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// The `Async` strategy: I/O-bound items as tokio tasks under the
    /// processor's limiter (adaptive unless configured otherwise), shared by
    /// all its async batches so that what it learns about the backend
    /// carries over.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// let processor = torque_parallel::Processor::builder().async_limit(8).build()?;
    /// let lens = processor
    ///     .async_io()
    ///     .map(["a", "bcd"], |s| async move { s.len() })
    ///     .await;
    /// assert_eq!(*lens[1].as_ref().unwrap(), 3);
    /// # Ok(()) }
    /// ```
    pub fn async_io(&self) -> AsyncIo {
        AsyncIo {
            processor: self.clone(),
            limiter: Arc::new(self.io().limiter.clone()),
            timeout: self.config().item_timeout,
        }
    }
}

impl<L: Limiter + 'static> AsyncIo<L> {
    /// Runs the batches of this handle under `limiter` instead of the
    /// processor's: a [`ConcurrencyLimiter`] with any algorithm, or any
    /// other [`Limiter`]. Clones of a `ConcurrencyLimiter` share one limit,
    /// so one limiter can guard a backend across processors.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// use torque_parallel::limit::{ConcurrencyLimiter, Fixed, Limiter};
    ///
    /// let limiter = ConcurrencyLimiter::new(Fixed::new(4));
    /// let processor = torque_parallel::Processor::builder().build()?;
    /// let out = processor
    ///     .async_io()
    ///     .with_limiter(limiter.clone())
    ///     .map(0..10, |x| async move { x })
    ///     .await;
    /// assert_eq!(out.len(), 10);
    /// assert_eq!(limiter.stats().in_flight, 0);
    /// # Ok(()) }
    /// ```
    pub fn with_limiter<M: Limiter + 'static>(self, limiter: M) -> AsyncIo<M> {
        AsyncIo {
            processor: self.processor,
            limiter: Arc::new(limiter),
            timeout: self.timeout,
        }
    }

    /// Gives every item at most `timeout` (default: the processor's
    /// [`item_timeout`](crate::ProcessorBuilder::item_timeout), none unless
    /// set). An item past it is dropped, comes back
    /// [`ItemError::TimedOut`] and counts as overload for the limiter. As
    /// with tokio's `timeout`, an item is polled once before its deadline
    /// is looked at: one that completes on its first poll is never timed
    /// out. A zero `timeout` times out every other item at once, each an
    /// overload that cuts the limit;
    /// [`item_timeout`](crate::ProcessorBuilder::item_timeout) refuses zero
    /// for that reason.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// use std::time::Duration;
    ///
    /// let processor = torque_parallel::Processor::builder().build()?;
    /// let out = processor
    ///     .async_io()
    ///     .timeout(Duration::from_millis(50))
    ///     .map([10u64, 100], |ms| async move {
    ///         tokio::time::sleep(Duration::from_millis(ms)).await;
    ///         ms
    ///     })
    ///     .await;
    /// assert!(out[0].is_ok());
    /// assert!(out[1].as_ref().is_err_and(|e| e.is_timeout()));
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The limiter this handle runs its batches under.
    pub fn limiter(&self) -> &L {
        &self.limiter
    }

    /// `f(item)` for every item, each future run under the limit; the
    /// results in input order. A panicking future is that item's
    /// [`ItemError::Panicked`]; the batch goes on. A panic of the input
    /// itself (the iterator's `next`, the stream's `poll_next`) is the
    /// `Panicked` of the item it was making, the last one taken: the input
    /// is not resumed, and the vector ends there.
    ///
    /// Dropping the returned future cancels the batch and drops (aborts) its
    /// running items: inline ones at once, tasks when the runtime next gets
    /// to them (tokio's `abort`), which is when their limiter permits come
    /// back. With the processor's [`CancelToken`] cancelled, the
    /// batch stops at once: running items are aborted and come back
    /// [`ItemError::Cancelled`], no further item is taken from the input, and
    /// the vector ends at the last item taken.
    ///
    /// # Panics
    /// When polled outside a tokio runtime (like `tokio::spawn`).
    pub fn map<I, F, Fut, R>(
        self,
        items: I,
        mut f: F,
    ) -> impl Future<Output = Vec<Result<R, ItemError>>>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        self.try_map(items, move |x| ok(f(x)))
    }

    /// Like [`map`](AsyncIo::map) for items from a [`Stream`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// use futures_util::stream;
    ///
    /// let processor = torque_parallel::Processor::builder().build()?;
    /// let out = processor
    ///     .async_io()
    ///     .map_stream(stream::iter(0..4u32), |x| async move { x + 1 })
    ///     .await;
    /// assert_eq!(*out[3].as_ref().unwrap(), 4);
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn map_stream<S, F, Fut, R>(
        self,
        items: S,
        mut f: F,
    ) -> impl Future<Output = Vec<Result<R, ItemError>>>
    where
        S: Stream,
        F: FnMut(S::Item) -> Fut,
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        self.try_map_stream(items, move |x| ok(f(x)))
    }

    /// Like [`map`](AsyncIo::map) for fallible futures: an `Err(e)` is that
    /// item's [`ItemError::Failed`] (the limiter ignores its latency: an
    /// error says little about the backend's load).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// use torque_parallel::ItemError;
    ///
    /// let processor = torque_parallel::Processor::builder().build()?;
    /// let out = processor
    ///     .async_io()
    ///     .try_map(["1", "x"], |s| async move { s.parse::<u32>() })
    ///     .await;
    /// assert_eq!(*out[0].as_ref().unwrap(), 1);
    /// assert!(matches!(out[1], Err(ItemError::Failed(_))));
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn try_map<I, F, Fut, R, E>(
        self,
        items: I,
        f: F,
    ) -> impl Future<Output = Vec<Result<R, ItemError<E>>>>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        self.try_map_stream(futures_util::stream::iter(items), f)
    }

    /// Like [`try_map`](AsyncIo::try_map) for items from a [`Stream`].
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn try_map_stream<S, F, Fut, R, E>(
        self,
        items: S,
        f: F,
    ) -> impl Future<Output = Vec<Result<R, ItemError<E>>>>
    where
        S: Stream,
        F: FnMut(S::Item) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let counters = Arc::clone(&self.processor.io().counters);
        let input = Indexed::new(items, Arc::clone(&counters));
        collect_in_order(self.run_as(input, f, Polling::InlineIfOneThread), counters)
    }

    /// Runs `f(item)` for every item for its effect.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// let processor = torque_parallel::Processor::builder().build()?;
    /// let total = Arc::new(AtomicU64::new(0));
    /// let summary = processor
    ///     .async_io()
    ///     .for_each(1..=3u64, |x| {
    ///         let total = Arc::clone(&total);
    ///         async move { total.fetch_add(x, Ordering::Relaxed); }
    ///     })
    ///     .await;
    /// assert!(summary.is_complete());
    /// assert_eq!(total.load(Ordering::Relaxed), 6);
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn for_each<I, F, Fut>(self, items: I, f: F) -> impl Future<Output = Summary<()>>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.for_each_stream(futures_util::stream::iter(items), f)
    }

    /// Like [`for_each`](AsyncIo::for_each) for items from a [`Stream`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// use futures_util::stream;
    ///
    /// let processor = torque_parallel::Processor::builder().build()?;
    /// let summary = processor
    ///     .async_io()
    ///     .for_each_stream(stream::iter(0..4u32), |_| async {})
    ///     .await;
    /// assert!(summary.is_complete());
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn for_each_stream<S, F, Fut>(self, items: S, mut f: F) -> impl Future<Output = Summary<()>>
    where
        S: Stream,
        F: FnMut(S::Item) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let counters = Arc::clone(&self.processor.io().counters);
        let input = Indexed::new(items, counters);
        let completions = self.run_as(input, move |x| ok(f(x)), Polling::InlineIfOneThread);
        async move {
            let mut summary = Summary {
                value: (),
                panics: Vec::new(),
                cancelled: 0,
                timed_out: 0,
            };
            let mut completions = std::pin::pin!(completions);
            while let Some((_, result)) = completions.next().await {
                match result {
                    Err(ItemError::Panicked(p)) => summary.panics.push(p),
                    Err(ItemError::Cancelled) => summary.cancelled += 1,
                    Err(ItemError::TimedOut(_)) => summary.timed_out += 1,
                    Ok(()) | Err(ItemError::Failed(_)) => {}
                }
            }
            summary
        }
    }

    /// The results as they complete: a [`Stream`] of `(input index,
    /// result)`. Nothing buffers: an item is taken from the input only when
    /// it can start, and a result waits only until the stream is polled.
    ///
    /// Dropping the stream aborts its tasks: the runtime drops them at its
    /// next turn, and only then do they give back their limiter permits
    /// (right after the drop, before the caller yields, a `try_acquire` on
    /// the same limiter may still be refused).
    ///
    /// A stream that has just handed out a result holds no place in the
    /// limiter's queue, so it can be left unpolled while the caller awaits
    /// another batch under the same limiter. One whose last poll returned
    /// `Pending` (a `timeout` or `select!` around `next()` that gave up)
    /// still waits in that queue for a permit, as a pending
    /// `tokio::sync::Semaphore::acquire` does, and a batch queued behind it
    /// waits for it: poll it again, or drop it, before awaiting another
    /// batch under that limiter.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// use std::time::Duration;
    /// use futures_util::StreamExt;
    ///
    /// let processor = torque_parallel::Processor::builder().build()?;
    /// let done: Vec<usize> = processor
    ///     .async_io()
    ///     .as_completed([30u64, 10, 20], |ms| async move {
    ///         tokio::time::sleep(Duration::from_millis(ms)).await;
    ///         Ok::<_, std::convert::Infallible>(ms)
    ///     })
    ///     .map(|(index, _)| index)
    ///     .collect()
    ///     .await;
    /// assert_eq!(done, [1, 2, 0]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn as_completed<I, F, Fut, R, E>(
        self,
        items: I,
        f: F,
    ) -> impl Stream<Item = (usize, Result<R, ItemError<E>>)>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        self.as_completed_stream(futures_util::stream::iter(items), f)
    }

    /// Like [`as_completed`](AsyncIo::as_completed) for items from a
    /// [`Stream`].
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn as_completed_stream<S, F, Fut, R, E>(
        self,
        items: S,
        f: F,
    ) -> impl Stream<Item = (usize, Result<R, ItemError<E>>)>
    where
        S: Stream,
        F: FnMut(S::Item) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let counters = Arc::clone(&self.processor.io().counters);
        self.run(Indexed::new(items, counters), f)
    }

    /// Runs a stream of `(index, item or early error)` through `f`: the
    /// part the `Hybrid` strategy shares.
    pub(crate) fn run<S, X, F, Fut, R, E>(self, input: S, f: F) -> Completions<S, X, F, L, R, E>
    where
        S: Stream<Item = (usize, Result<X, ItemError<E>>)>,
        F: FnMut(X) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        self.run_as(input, f, Polling::Tasks)
    }

    /// [`run`](Self::run), choosing how the items' futures are polled.
    fn run_as<S, X, F, Fut, R, E>(
        self,
        input: S,
        f: F,
        polling: Polling,
    ) -> Completions<S, X, F, L, R, E>
    where
        S: Stream<Item = (usize, Result<X, ItemError<E>>)>,
        F: FnMut(X) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let cancel = self.processor.cancel_token().cloned();
        Completions {
            limiter_id: self.limiter.permits_id(),
            input: Some(Box::pin(input)),
            f,
            limiter: self.limiter,
            acquiring: None,
            polled_to_the_end: matches!(polling, Polling::InlineIfOneThread),
            next: None,
            running: match polling {
                Polling::Tasks => Running::tasks(),
                Polling::InlineIfOneThread => Running::Undecided,
            },
            ready: VecDeque::new(),
            cancel,
            registered: None,
            aborter: None,
            cancelled: false,
            timeout: self.timeout,
            counters: Arc::clone(&self.processor.io().counters),
        }
    }
}

/// The input of an async batch: each item with its index, and a panic of
/// the caller's iterator or stream as the error of the item it was making,
/// the last: an input that panicked is not polled again (dropped, a panic
/// of its `Drop` caught). Counts each item it yields `taken`.
struct Indexed<S, E> {
    /// Boxed: the batch never pins `S` in place; `None` once ended.
    input: Option<Pin<Box<S>>>,
    next: usize,
    counters: Arc<Counters>,
    _error: std::marker::PhantomData<fn() -> E>,
}

impl<S, E> Indexed<S, E> {
    fn new(input: S, counters: Arc<Counters>) -> Self {
        Indexed {
            input: Some(Box::pin(input)),
            next: 0,
            counters,
            _error: std::marker::PhantomData,
        }
    }
}

impl<S: Stream, E> Stream for Indexed<S, E> {
    type Item = (usize, Result<S::Item, ItemError<E>>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(input) = self.input.as_mut() else {
            return Poll::Ready(None);
        };
        let (index, item) = match catch_unwind(AssertUnwindSafe(|| input.as_mut().poll_next(cx))) {
            Ok(Poll::Ready(Some(x))) => (self.next, Ok(x)),
            Ok(Poll::Ready(None)) => {
                self.input = None;
                return Poll::Ready(None);
            }
            Ok(Poll::Pending) => return Poll::Pending,
            Err(payload) => {
                let _ = crate::outcome::drop_caught(self.input.take());
                let panic = PanicError::from_box(payload);
                (self.next, Err(ItemError::Panicked(panic)))
            }
        };
        self.next += 1;
        self.counters.taken();
        Poll::Ready(Some((index, item)))
    }
}

thread_local! {
    /// The item being polled on this thread: the limiter (its
    /// [`Limiter::permits_id`]) whose permit it runs on, 0 outside items.
    /// Plain values, set and restored at every poll of every item: a
    /// thread-local with drop glue checks its destructor's registration at
    /// each access, which cost an async item about 160 instructions.
    static HOLDING: Cell<usize> = const { Cell::new(0) };
    /// Whether [`LOAN`] holds the polled item's [`Loan`].
    static LOANED: Cell<bool> = const { Cell::new(false) };
    /// The polled item's permit, as lent to nested batches, once one is
    /// made (rare: only items that await batches of their own limiter).
    static LOAN: Cell<Option<Arc<Loan>>> = const { Cell::new(None) };
}

/// Marks this thread as polling an item on a permit of limiter `id` until
/// dropped (also when the poll panics), restoring the mark of the item it
/// is nested in; the item's [`Loan`] goes back to `loan`, kept by the
/// item between polls.
struct Holding<'a> {
    outer_id: usize,
    /// The outer item's loan, if it has one (taken out of [`LOAN`] while
    /// this item is polled).
    outer_loan: Option<Option<Arc<Loan>>>,
    loan: &'a mut Option<Arc<Loan>>,
}

impl<'a> Holding<'a> {
    fn enter(id: usize, loan: &'a mut Option<Arc<Loan>>) -> Self {
        let outer_id = HOLDING.replace(id);
        let ours = loan.is_some();
        let outer_loaned = LOANED.replace(ours);
        // Only items with loans touch the slot (see `HOLDING`).
        let outer_loan = if outer_loaned || ours {
            let outer = LOAN.replace(loan.take());
            outer_loaned.then_some(outer)
        } else {
            None
        };
        Holding {
            outer_id,
            outer_loan,
            loan,
        }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        HOLDING.set(self.outer_id);
        if LOANED.get() {
            *self.loan = LOAN.take();
        }
        match self.outer_loan.take() {
            Some(outer) => {
                LOAN.set(outer);
                LOANED.set(true);
            }
            None => LOANED.set(false),
        }
    }
}

/// An item's permit as lent to the items of batches nested in it: to one
/// at a time, whichever batch it belongs to (two batches awaited together
/// in an item must not both run on its one permit), with the batches that
/// found it lent woken when it comes back.
#[derive(Default)]
struct Loan {
    /// Whether it is lent, and who waits for it.
    state: parking_lot::Mutex<(bool, Vec<Waker>)>,
}

/// The permit of the item being polled on this thread, lent to an item of
/// a batch under limiter `id`, if that item runs on one of `id`'s permits
/// and has not lent it already (then `waker` is woken when it comes back).
fn borrow_holding(id: usize, waker: &Waker) -> Option<Lent> {
    if HOLDING.get() != id {
        return None;
    }
    let loan = match LOAN.take() {
        Some(loan) => loan,
        None => Arc::new(Loan::default()),
    };
    LOANED.set(true);
    let lent = {
        let mut state = loan.state.lock();
        if state.0 {
            if !state.1.iter().any(|w| w.will_wake(waker)) {
                state.1.push(waker.clone());
            }
            None
        } else {
            state.0 = true;
            drop(state);
            Some(Lent(Arc::clone(&loan)))
        }
    };
    LOAN.set(Some(loan));
    lent
}

/// The permit an item runs on: of limiter `limiter_id` (its
/// [`Limiter::permits_id`]), or, with `lent`, the item's it is nested in.
struct OnPermit {
    limiter_id: usize,
    lent: Option<Lent>,
}

/// A lent permit, given back (and its waiters woken) when dropped, with the
/// item that ran on it.
struct Lent(Arc<Loan>);

impl Drop for Lent {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.0.state.lock();
            state.0 = false;
            std::mem::take(&mut state.1)
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

/// Wraps an infallible future.
async fn ok<R>(fut: impl Future<Output = R>) -> Result<R, std::convert::Infallible> {
    Ok(fut.await)
}

/// Collects completions into input order. Every strategy's stream yields
/// each item it took exactly once (`Hybrid` included, since it reports the
/// items a cancel catches between its stages), so no gap is expected; were
/// one left, it would come back `Cancelled` and be counted so in `counters`
/// rather than panic.
pub(crate) async fn collect_in_order<R, E>(
    completions: impl Stream<Item = (usize, Result<R, ItemError<E>>)>,
    counters: Arc<Counters>,
) -> Vec<Result<R, ItemError<E>>> {
    let mut completions = std::pin::pin!(completions);
    let mut out: Vec<Option<Result<R, ItemError<E>>>> = Vec::new();
    while let Some((index, result)) = completions.next().await {
        if out.len() <= index {
            out.resize_with(index + 1, || None);
        }
        out[index] = Some(result);
    }
    out.into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                counters.cancelled();
                Err(ItemError::Cancelled)
            })
        })
        .collect()
}

type Acquiring = Pin<Box<dyn Future<Output = Token> + Send>>;

/// How a batch polls its items' futures.
#[derive(Debug, Clone, Copy)]
enum Polling {
    /// A tokio task per item: on a multi-thread runtime the items run on
    /// several workers, and they go on while the stream is not polled.
    Tasks,
    /// Inside the batch's own future when the runtime is current-thread
    /// (no parallelism to lose there, and no spawn to pay: a task per item
    /// cost 3–4 × `buffer_unordered`'s instructions), tasks on any other.
    /// Only for batches whose consumer polls them until they end (`map`,
    /// `for_each`): the items of a stream left unpolled would stall, and
    /// their latencies would mislead the limiter.
    InlineIfOneThread,
}

/// One item's outcome, with its input index.
type Done<R, E> = (usize, Result<R, ItemError<E>>);

/// The items of a batch that have started and not been handed out.
enum Running<R, E> {
    /// `InlineIfOneThread`, before the batch first looks for an item.
    Undecided,
    Tasks {
        set: JoinSet<Done<R, E>>,
        /// Input index of every task, to place an aborted or panicked one.
        ids: HashMap<Id, usize>,
    },
    Inline(FuturesUnordered<Caught<R, E>>),
}

impl<R: Send + 'static, E: Send + 'static> Running<R, E> {
    fn tasks() -> Self {
        Running::Tasks {
            set: JoinSet::new(),
            ids: HashMap::new(),
        }
    }

    /// Whether items run as tasks (deciding, before the first item is
    /// taken, from the runtime's flavour: inside a poll, so inside the
    /// runtime, or `Handle::current` panics as `tokio::spawn` would).
    fn runs_tasks(&mut self) -> bool {
        if let Running::Undecided = self {
            *self = match Handle::current().runtime_flavor() {
                RuntimeFlavor::CurrentThread => Running::Inline(FuturesUnordered::new()),
                _ => Running::tasks(),
            };
        }
        matches!(self, Running::Tasks { .. })
    }

    /// Runs `item` (whose future is `fut`) as a task or inline; returns
    /// the task's abort handle.
    fn push<Fut>(&mut self, index: usize, fut: Fut) -> Option<AbortHandle>
    where
        Fut: Future<Output = Done<R, E>> + Send + 'static,
    {
        self.runs_tasks();
        match self {
            Running::Tasks { set, ids } => {
                let handle = set.spawn(fut);
                ids.insert(handle.id(), index);
                Some(handle)
            }
            Running::Inline(set) => {
                set.push(Caught {
                    index,
                    fut: Some(Box::pin(fut)),
                });
                None
            }
            Running::Undecided => unreachable!("decided above"),
        }
    }

    /// Whether no item of the batch is running (or waits to be reaped).
    fn is_empty(&self) -> bool {
        match self {
            Running::Undecided => true,
            Running::Tasks { set, .. } => set.is_empty(),
            Running::Inline(set) => set.is_empty(),
        }
    }

    /// Stops every running item. Inline items are dropped at once and come
    /// back through `cancelled`; tasks are aborted and come back `Cancelled`
    /// as they are reaped. Either way each item's [`InFlight`] guard counts
    /// it cancelled.
    fn cancel(&mut self, cancelled: &mut VecDeque<Done<R, E>>) {
        match self {
            Running::Tasks { set, .. } => set.abort_all(),
            Running::Inline(set) => {
                for item in set.iter() {
                    cancelled.push_back((item.index, Err(ItemError::Cancelled)));
                }
                // Dropping the futures drops their tokens and in-flight
                // guards, which count them cancelled.
                *set = FuturesUnordered::new();
            }
            Running::Undecided => {}
        }
    }

    /// The next finished item; `Ready(None)` when none is running. A
    /// reaped task leaves `aborter`.
    fn poll_done(
        &mut self,
        cx: &mut Context<'_>,
        aborter: Option<&Aborter>,
    ) -> Poll<Option<Done<R, E>>> {
        match self {
            Running::Undecided => Poll::Ready(None),
            Running::Tasks { set, ids } => loop {
                let forget = |id: &Id| {
                    if let Some(aborter) = aborter {
                        aborter.tasks.lock().remove(id);
                    }
                };
                match set.poll_join_next_with_id(cx) {
                    Poll::Ready(Some(Ok((id, item)))) => {
                        ids.remove(&id);
                        forget(&id);
                        return Poll::Ready(Some(item));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        forget(&e.id());
                        let Some(index) = ids.remove(&e.id()) else {
                            continue;
                        };
                        // Either way counted by its `InFlight` guard when
                        // the panic or the abort dropped it.
                        let error = if e.is_panic() {
                            ItemError::Panicked(PanicError::from_box(e.into_panic()))
                        } else {
                            ItemError::Cancelled
                        };
                        return Poll::Ready(Some((index, Err(error))));
                    }
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            },
            // A panicked item was counted by its `InFlight` guard when
            // `FuturesUnordered` dropped it.
            Running::Inline(set) => set.poll_next_unpin(cx),
        }
    }
}

/// Aborts a batch's tasks when its cancel token fires, registered with the
/// token as a waker: the batch itself only sees the cancel when polled, and
/// an `as_completed` stream its consumer holds unpolled would run its items
/// on until then.
#[derive(Default)]
struct Aborter {
    /// The batch's running tasks; a task leaves when reaped.
    tasks: parking_lot::Mutex<HashMap<Id, AbortHandle>>,
}

impl std::task::Wake for Aborter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for task in self.tasks.lock().values() {
            task.abort();
        }
    }
}

/// An inline item: a panic while polling it becomes its
/// `ItemError::Panicked`, as a task's would, and a panic while dropping it
/// (a cancel or a dropped batch drops a running item's future) is caught,
/// as tokio catches an aborted task's: out of `FuturesUnordered`'s drop it
/// would unwind out of the batch and leak the items after it, whose
/// in-flight guards would then never run.
struct Caught<R, E> {
    index: usize,
    /// `None` only in `drop`.
    fut: Option<InlineItem<R, E>>,
}

/// The future of an item run inline.
type InlineItem<R, E> = Pin<Box<dyn Future<Output = Done<R, E>> + Send>>;

impl<R, E> Future for Caught<R, E> {
    type Output = Done<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done<R, E>> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Pending;
        };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready((
                this.index,
                Err(ItemError::Panicked(PanicError::from_box(payload))),
            )),
        }
    }
}

impl<R, E> Drop for Caught<R, E> {
    fn drop(&mut self) {
        // The item's in-flight guard counts it (cancelled, unless it had
        // ended) while the panic unwinds; its result is already decided.
        let _ = crate::outcome::drop_caught(self.fut.take());
    }
}

/// One item, from its permit to its result: times it, completes the
/// limiter token with the outcome and counts it. `in_flight` leaves
/// in-flight when the future ends, panics or is dropped (even unpolled:
/// it is moved in, not made inside), and counts it panicked if a panic of
/// its own ended it, cancelled if it was dropped before its end.
///
/// The item's counts are final before its permit goes back (the token, or
/// a permit lent by the item it is nested in): a caller woken by the
/// permit, or an algorithm told of it, reads counts that no longer include
/// the item as in flight. Hence the order of the locals below, which drop
/// in reverse: the item's future, then the guard (after the future, see
/// [`InFlight`]), then the permits.
async fn run_item<Fut, R, E>(
    index: usize,
    fut: Fut,
    token: Token,
    timeout: Option<Duration>,
    counters: Arc<Counters>,
    in_flight: InFlight,
    permit: OnPermit,
) -> Done<R, E>
where
    Fut: Future<Output = Result<R, E>>,
{
    let token = token;
    // A lent permit is given back when the item ends or is dropped.
    let OnPermit {
        limiter_id,
        lent: _lent,
    } = permit;
    let mut loan = None;
    let mut in_flight = in_flight;
    let mut item = std::pin::pin!(item_body(index, fut, timeout, &counters));
    // A poll of the item that does not return is a panic of its own (its
    // future's): `in_flight` counts it panicked, not cancelled.
    // `std::thread::panicking` cannot tell that panic from another one
    // that drops the batch.
    let polling = &mut in_flight.polling;
    let (done, ended) = std::future::poll_fn(|cx| {
        let _holding = Holding::enter(limiter_id, &mut loan);
        *polling = true;
        let poll = item.as_mut().poll(cx);
        *polling = false;
        poll
    })
    .await;
    in_flight.ended = true;
    drop(in_flight);
    // The algorithm may be the user's and panic: the panic is then the
    // item's result (it unwinds out of the item), and its count.
    let completed = catch_unwind(AssertUnwindSafe(|| match ended {
        Ended::Ok => token.success(),
        Ended::Failed => token.ignore(),
        Ended::TimedOut => token.overload(),
    }));
    match completed {
        Ok(()) => counters.published(ended),
        Err(payload) => {
            counters.ended_in_a_panic(ended);
            resume_unwind(payload);
        }
    }
    done
}

/// [`run_item`]'s item, without its in-flight guard and its token: how it
/// ended tells the caller how to complete the token.
async fn item_body<Fut, R, E>(
    index: usize,
    fut: Fut,
    timeout: Option<Duration>,
    counters: &Counters,
) -> (Done<R, E>, Ended)
where
    Fut: Future<Output = Result<R, E>>,
{
    let started = tokio::time::Instant::now();
    let result = match timeout {
        Some(limit) => tokio::time::timeout(limit, fut).await.ok(),
        None => Some(fut.await),
    };
    let now = tokio::time::Instant::now();
    let latency = now - started;
    let (ended, result) = match result {
        Some(Ok(v)) => (Ended::Ok, Ok(v)),
        Some(Err(e)) => (Ended::Failed, Err(ItemError::Failed(e))),
        None => {
            let after = timeout.unwrap_or(latency);
            (Ended::TimedOut, Err(ItemError::TimedOut(after)))
        }
    };
    counters.ended(ended, latency, now.into_std());
    ((index, result), ended)
}

/// The driver of an async batch: a stream of `(index, result)` in completion
/// order. See the module docs.
pub(crate) struct Completions<S, X, F, L, R, E> {
    /// The [`Limiter::permits_id`] of `limiter`.
    limiter_id: usize,
    /// `None` once exhausted or cancelled.
    input: Option<Pin<Box<S>>>,
    f: F,
    limiter: Arc<L>,
    /// The permit being waited for, for `next`.
    acquiring: Option<Acquiring>,
    /// Whether the consumer polls until the batch ends (`map`, `for_each`):
    /// then the batch may keep its place in the limiter's queue while it
    /// hands out a result ([`Self::leave_queue`]).
    polled_to_the_end: bool,
    /// The one item taken from the input and waiting for a permit (set and
    /// taken through [`Self::hold`] and [`Self::unhold`], which keep the
    /// `awaiting_permit` gauge).
    next: Option<(usize, X)>,
    running: Running<R, E>,
    /// Results that need no task: early errors, cancelled items.
    ready: VecDeque<(usize, Result<R, ItemError<E>>)>,
    cancel: Option<CancelToken>,
    /// The waker registered with `cancel`, to unregister on drop.
    registered: Option<Waker>,
    /// With `cancel` and tasks: aborts them when the token fires, and the
    /// waker it is registered as (unregistered on drop).
    aborter: Option<(Arc<Aborter>, Waker)>,
    cancelled: bool,
    timeout: Option<Duration>,
    counters: Arc<Counters>,
}

// The driver never pins `f` or the items; the input is boxed.
impl<S, X, F, L, R, E> Unpin for Completions<S, X, F, L, R, E> {}

impl<S, X, F, L, R, E> Completions<S, X, F, L, R, E> {
    /// The item held for the next permit, no longer held.
    fn unhold(&mut self) -> Option<(usize, X)> {
        let next = self.next.take();
        if next.is_some() {
            self.counters.awaiting_permit(0, 1);
        }
        next
    }
}

impl<S, X, F, Fut, L, R, E> Completions<S, X, F, L, R, E>
where
    S: Stream<Item = (usize, Result<X, ItemError<E>>)>,
    F: FnMut(X) -> Fut,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    L: Limiter + 'static,
    R: Send + 'static,
    E: Send + 'static,
{
    /// Stops the batch: no more input, running tasks aborted (they come back
    /// `Cancelled` as they are reaped), the waiting item cancelled.
    fn cancel_all(&mut self) {
        self.cancelled = true;
        self.input = None;
        self.acquiring = None;
        if let Some((index, x)) = self.unhold() {
            // The caller's data: a panic of its `Drop` is this item's.
            let result = crate::outcome::not_run(x);
            if let Err(ItemError::Panicked(_)) = &result {
                self.counters.panicked();
            } else {
                self.counters.cancelled();
            }
            self.ready.push_back((index, result));
        }
        self.running.cancel(&mut self.ready);
    }

    /// Starts items while the input has some and the limiter has permits.
    /// Returns early when it has a ready result to hand out.
    fn fill(&mut self, cx: &mut Context<'_>) {
        // Decided before an item is taken: outside a runtime `Handle::current`
        // panics here with nothing taken, where on the first item's start it
        // left that item counted taken and in flight for good.
        self.running.runs_tasks();
        loop {
            if self.next.is_none() {
                let Some(input) = self.input.as_mut() else {
                    return;
                };
                match input.as_mut().poll_next(cx) {
                    Poll::Ready(Some((index, Ok(x)))) => self.hold(index, x),
                    Poll::Ready(Some((index, Err(e)))) => {
                        // An item the `Hybrid` CPU stage ended.
                        match &e {
                            ItemError::Panicked(_) => self.counters.panicked(),
                            ItemError::Cancelled => self.counters.cancelled(),
                            ItemError::Failed(_) => self.counters.failed_before_start(),
                            ItemError::TimedOut(_) => {}
                        }
                        self.ready.push_back((index, Err(e)));
                        return;
                    }
                    Poll::Ready(None) => {
                        self.input = None;
                        return;
                    }
                    Poll::Pending => return,
                }
            }
            let acquiring = self.acquiring.get_or_insert_with(|| {
                let limiter = Arc::clone(&self.limiter);
                Box::pin(async move { limiter.acquire().await })
            });
            let (token, lent) = match acquiring.as_mut().poll(cx) {
                Poll::Ready(token) => {
                    self.acquiring = None;
                    (token, None)
                }
                // Polled inside an item that runs on a permit of this very
                // limiter (a batch awaited in an item of another): that
                // item waits for this batch, so its permit serves this
                // batch, one item at a time, while no permit of its own
                // comes. Otherwise batches nested in every item at the
                // limit wait for each other's permits for ever. The
                // waiter stays queued; its permit serves a later item.
                Poll::Pending if self.running.is_empty() => {
                    match borrow_holding(self.limiter_id, cx.waker()) {
                        Some(lent) => (Token::detached(TokioClock.now()), Some(lent)),
                        None => return,
                    }
                }
                Poll::Pending => return,
            };
            if let Some((index, x)) = self.unhold()
                && let Some(result) = self.start(index, x, token, lent)
            {
                self.ready.push_back((index, result));
                return;
            }
        }
    }

    /// Holds item `index` until a permit comes.
    fn hold(&mut self, index: usize, x: X) {
        self.counters.awaiting_permit(1, 0);
        self.next = Some((index, x));
    }

    /// Starts item `index`; returns its result instead when making its
    /// future panicked.
    fn start(
        &mut self,
        index: usize,
        x: X,
        token: Token,
        lent: Option<Lent>,
    ) -> Option<Result<R, ItemError<E>>> {
        let fut = match catch_unwind(AssertUnwindSafe(|| (self.f)(x))) {
            Ok(fut) => fut,
            Err(payload) => {
                // Counted before the permit goes back (see `run_item`).
                self.counters.panicked();
                drop(token);
                return Some(Err(ItemError::Panicked(PanicError::from_box(payload))));
            }
        };
        let counters = Arc::clone(&self.counters);
        counters.started(TokioClock.now());
        let in_flight = InFlight::new(Arc::clone(&counters), self.running.runs_tasks());
        let item = run_item(
            index,
            fut,
            token,
            self.timeout,
            counters,
            in_flight,
            OnPermit {
                limiter_id: self.limiter_id,
                lent,
            },
        );
        if let (Some(task), Some(cancel)) = (self.running.push(index, item), &self.cancel) {
            let (aborter, _) = self.aborter.get_or_insert_with(|| {
                let aborter = Arc::new(Aborter::default());
                let waker = Waker::from(Arc::clone(&aborter));
                // Already cancelled: nothing registered, each task is
                // aborted below.
                cancel.register(&waker);
                (aborter, waker)
            });
            aborter.tasks.lock().insert(task.id(), task.clone());
            // Checked after the insert: a cancel whose wake took the lock
            // before it has set the flag by now.
            if cancel.is_cancelled() {
                task.abort();
            }
        }
        None
    }
}

/// Counts an item out of in-flight when dropped; as panicked when its poll
/// panicked, and as cancelled when it is dropped otherwise before it
/// ended: aborted by a cancel, or dropped with its batch (a dropped `map`
/// future, `as_completed` stream or `JoinSet`, also while a panic of the
/// caller's unwinds), which no result reports. The panic is counted here,
/// where the item is dropped, rather than where it is caught: a panicked
/// task a dropped batch never reaped was counted nowhere.
struct InFlight {
    counters: Arc<Counters>,
    ended: bool,
    /// Set while the item is polled: still set at the drop, its poll
    /// panicked.
    polling: bool,
    /// The item is a task. An aborted task is dropped by the runtime, where
    /// nothing else unwinds: a panic under way as the guard drops is the
    /// item's own `Drop` (the guard drops after the item's future), and the
    /// task comes back `Panicked`, so it counts as panicked. Inline items
    /// may be dropped while the caller's own panic unwinds, and a panic of
    /// their `Drop` is caught as `Cancelled`: they count as cancelled.
    task: bool,
}

impl InFlight {
    fn new(counters: Arc<Counters>, task: bool) -> Self {
        InFlight {
            counters,
            ended: false,
            polling: false,
            task,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.polling || (self.task && !self.ended && std::thread::panicking()) {
            self.counters.panicked();
        } else if !self.ended {
            self.counters.cancelled();
        }
        self.counters.left();
    }
}

impl<S, X, F, Fut, L, R, E> Stream for Completions<S, X, F, L, R, E>
where
    S: Stream<Item = (usize, Result<X, ItemError<E>>)>,
    F: FnMut(X) -> Fut,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    L: Limiter + 'static,
    R: Send + 'static,
    E: Send + 'static,
{
    type Item = (usize, Result<R, ItemError<E>>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Running::Tasks { .. } = this.running {
            // Reaping a task already spends tokio's cooperative budget.
            return this.poll_item(cx);
        }
        // Inline items that are ready at once would otherwise let the batch
        // run to its end without ever yielding to the runtime.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let item = this.poll_item(cx);
        if let Poll::Ready(Some(_)) = item {
            coop.made_progress();
        }
        item
    }
}

impl<S, X, F, Fut, L, R, E> Completions<S, X, F, L, R, E>
where
    S: Stream<Item = (usize, Result<X, ItemError<E>>)>,
    F: FnMut(X) -> Fut,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    L: Limiter + 'static,
    R: Send + 'static,
    E: Send + 'static,
{
    /// Gives up the place in the limiter's queue before handing out a
    /// result: the consumer may hold the stream unpolled for a while (to
    /// await another batch under the same limiter, say), and a waiter
    /// nobody polls would keep a free permit from everyone behind it. The
    /// next poll queues again. A consumer that polls to the end (`map`,
    /// `for_each`) comes straight back, so its batch keeps its place: giving
    /// it up cost each item at the limit another boxed acquire, 6 % more
    /// instructions per item (`parallel_async_callgrind torque 16`).
    fn leave_queue(&mut self) {
        if !self.polled_to_the_end {
            self.acquiring = None;
        }
    }

    /// The next result, or `Pending` with every wake-up registered.
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done<R, E>>> {
        let this = self;
        if !this.cancelled && this.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            this.cancel_all();
        }
        if this.ready.is_empty() && !this.cancelled {
            this.fill(cx);
        }
        if let Some(result) = this.ready.pop_front() {
            this.leave_queue();
            return Poll::Ready(Some(result));
        }
        let aborter = this.aborter.as_ref().map(|(a, _)| &**a);
        match this.running.poll_done(cx, aborter) {
            Poll::Ready(Some(done)) => {
                this.leave_queue();
                return Poll::Ready(Some(done));
            }
            Poll::Ready(None) if this.input.is_none() && this.next.is_none() => {
                return Poll::Ready(None);
            }
            // Woken by the input, the limiter or an item.
            Poll::Ready(None) | Poll::Pending => {}
        }
        // Cancelled since the check above: woken to go round again.
        if let Some(token) = &this.cancel
            && !this.cancelled
        {
            token.keep_registered(&mut this.registered, cx.waker());
        }
        Poll::Pending
    }
}

impl<S, X, F, L, R, E> Drop for Completions<S, X, F, L, R, E> {
    fn drop(&mut self) {
        if let (Some(token), Some(waker)) = (&self.cancel, &self.registered) {
            token.unregister(waker);
        }
        if let (Some(token), Some((_, waker))) = (&self.cancel, &self.aborter) {
            token.unregister(waker);
        }
        // The item taken for the next permit is cancelled with the batch,
        // as the running ones are (a panic of its `Drop` caught: it would
        // unwind out of a drop).
        if let Some(next) = self.unhold() {
            self.counters.cancelled();
            let _ = crate::outcome::drop_caught(next);
        }
        // Dropping `running` aborts every task still running, or drops
        // every inline item.
    }
}
