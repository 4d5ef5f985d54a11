//! The `Hybrid` strategy: a CPU stage on rayon feeding an I/O stage (the
//! `Async` strategy) through a bounded channel.
//!
//! The CPU stage is a stream polled by the I/O stage's driver: when the
//! driver wants an item, the stage hands over one whose CPU part is done and
//! tops itself up to `hybrid_buffer` items (running on rayon or done and
//! waiting in the channel). When the I/O stage is at its limit it stops
//! asking, so the CPU stage stops taking input: backpressure, with at most
//! `hybrid_buffer` + limit + 1 items taken from the input at any time.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::cancel::CancelToken;
use crate::io::{AsyncIo, Counters, IoLimiter};
use crate::limit::Limiter;
use crate::outcome::{ItemError, PanicError, drop_caught, not_run};
use crate::processor::Processor;

/// The `Hybrid` strategy of a [`Processor`], from [`Processor::hybrid`]:
/// each item goes through a CPU stage on rayon (parse, encode, compress),
/// then an I/O stage as a tokio task under the limiter (send, store), in one
/// pipeline with a bounded buffer between the stages.
///
/// Awaited on a rayon worker (a `block_on` inside a `Cpu` item), the CPU
/// stage runs on that thread as the batch is polled: the worker is blocked
/// until the batch is done, so a job spawned for it might never run.
///
/// An error or panic in either stage is that item's [`ItemError`]; an item
/// that fails its CPU stage never reaches the I/O stage. A panic of the
/// input is the [`ItemError::Panicked`] of the item it was making, and ends
/// the input, as for [`AsyncIo`]. Results come back
/// in input order. Dropping the future cancels the batch: the I/O tasks are
/// aborted, CPU work not yet started is skipped (work already running on
/// rayon finishes and is discarded). With the processor's [`CancelToken`]
/// cancelled, the batch stops taking input and every item it has taken
/// comes back once, as its result or [`ItemError::Cancelled`] — including
/// items caught between the stages (CPU part done or running, I/O part not
/// started) — in `map` and in [`as_completed_stream`](Hybrid::as_completed_stream)
/// alike.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), torque_parallel::BuildError> {
/// let processor = torque_parallel::Processor::builder().build()?;
/// let out = processor
///     .hybrid()
///     .map(
///         vec!["1", "22", "333"],
///         |s| s.len(),                        // CPU stage, on rayon
///         |n| async move { n * 100 },         // I/O stage, a tokio task
///     )
///     .await;
/// assert_eq!(*out[2].as_ref().unwrap(), 300);
/// # Ok(()) }
/// ```
pub struct Hybrid<L = IoLimiter> {
    io: AsyncIo<L>,
    processor: Processor,
    buffer: usize,
}

/// Clones share the limiter, as [`AsyncIo`]'s do.
impl<L> Clone for Hybrid<L> {
    fn clone(&self) -> Self {
        Hybrid {
            io: self.io.clone(),
            processor: self.processor.clone(),
            buffer: self.buffer,
        }
    }
}

impl<L> fmt::Debug for Hybrid<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hybrid")
            .field("io", &self.io)
            .field("buffer", &self.buffer)
            .finish()
    }
}

impl Processor {
    /// The `Hybrid` strategy: a CPU stage on rayon feeding an I/O stage of
    /// tokio tasks under the processor's limiter; see [`Hybrid`].
    pub fn hybrid(&self) -> Hybrid {
        let buffer = self
            .config()
            .hybrid_buffer
            .unwrap_or_else(|| 2 * self.cpu().threads())
            // tokio's channel refuses capacities above `usize::MAX >> 3`.
            .clamp(1, usize::MAX >> 3);
        Hybrid {
            io: self.async_io(),
            processor: self.clone(),
            buffer,
        }
    }
}

impl<L: Limiter + 'static> Hybrid<L> {
    /// Runs the I/O stage under `limiter`; see [`AsyncIo::with_limiter`].
    pub fn with_limiter<M: Limiter + 'static>(self, limiter: M) -> Hybrid<M> {
        Hybrid {
            io: self.io.with_limiter(limiter),
            processor: self.processor,
            buffer: self.buffer,
        }
    }

    /// Gives every item's I/O stage at most `timeout`; see
    /// [`AsyncIo::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.io = self.io.timeout(timeout);
        self
    }

    /// `io(cpu(item))` for every item; results in input order. A panic of
    /// the input itself (the iterator's `next`, the stream's `poll_next`)
    /// is the `Panicked` of the item it was making, the last one taken: the
    /// input is not resumed, and the vector ends there.
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn map<I, C, U, F, Fut, R>(
        self,
        items: I,
        cpu: C,
        mut io: F,
    ) -> impl Future<Output = Vec<Result<R, ItemError>>>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        C: Fn(I::Item) -> U + Send + Sync + 'static,
        U: Send + 'static,
        F: FnMut(U) -> Fut,
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        self.try_map(
            items,
            move |x| Ok::<U, Infallible>(cpu(x)),
            move |u| {
                let fut = io(u);
                async move { Ok(fut.await) }
            },
        )
    }

    /// Like [`map`](Hybrid::map) with fallible stages: an `Err(e)` from
    /// either is that item's [`ItemError::Failed`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// use torque_parallel::ItemError;
    ///
    /// let processor = torque_parallel::Processor::builder().build()?;
    /// let out = processor
    ///     .hybrid()
    ///     .try_map(
    ///         vec!["7", "x", "0"],
    ///         |s| s.parse::<u32>().map_err(|e| e.to_string()),
    ///         |n| async move { 100u32.checked_div(n).ok_or_else(|| "zero".to_string()) },
    ///     )
    ///     .await;
    /// assert_eq!(*out[0].as_ref().unwrap(), 14);
    /// assert!(matches!(&out[1], Err(ItemError::Failed(_)))); // CPU stage
    /// assert!(matches!(&out[2], Err(ItemError::Failed(e)) if e == "zero")); // I/O stage
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn try_map<I, C, U, F, Fut, R, E>(
        self,
        items: I,
        cpu: C,
        io: F,
    ) -> impl Future<Output = Vec<Result<R, ItemError<E>>>>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        C: Fn(I::Item) -> Result<U, E> + Send + Sync + 'static,
        U: Send + 'static,
        F: FnMut(U) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        self.try_map_stream(futures_util::stream::iter(items), cpu, io)
    }

    /// Like [`try_map`](Hybrid::try_map) for items from a [`Stream`].
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn try_map_stream<S, C, U, F, Fut, R, E>(
        self,
        items: S,
        cpu: C,
        io: F,
    ) -> impl Future<Output = Vec<Result<R, ItemError<E>>>>
    where
        S: Stream,
        S::Item: Send + 'static,
        C: Fn(S::Item) -> Result<U, E> + Send + Sync + 'static,
        U: Send + 'static,
        F: FnMut(U) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let counters = Arc::clone(&self.processor.io().counters);
        crate::io::collect_in_order(self.as_completed_stream(items, cpu, io), counters)
    }

    /// The results of [`try_map_stream`](Hybrid::try_map_stream) as they
    /// complete: a [`Stream`] of `(input index, result)`. Every item taken
    /// from the input comes out exactly once; after a cancel (the
    /// processor's [`CancelToken`]) the items the batch had taken and not
    /// finished come out as [`ItemError::Cancelled`], those caught between
    /// the stages last, just before the stream ends.
    ///
    /// # Panics
    /// When polled outside a tokio runtime.
    pub fn as_completed_stream<S, C, U, F, Fut, R, E>(
        self,
        items: S,
        cpu: C,
        io: F,
    ) -> impl Stream<Item = (usize, Result<R, ItemError<E>>)>
    where
        S: Stream,
        S::Item: Send + 'static,
        C: Fn(S::Item) -> Result<U, E> + Send + Sync + 'static,
        U: Send + 'static,
        F: FnMut(U) -> Fut,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let (tx, rx) = mpsc::channel(self.buffer);
        let lost = Arc::new(Mutex::new(Vec::new()));
        let stage = CpuStage {
            input: Some(Box::pin(items)),
            next_index: 0,
            cpu: Arc::new(cpu),
            cancel: self.processor.cancel_token().cloned(),
            counters: Arc::clone(&self.processor.io().counters),
            processor: self.processor,
            tx,
            rx,
            held: Vec::new(),
            free: Vec::new(),
            outstanding: 0,
            lost: Arc::clone(&lost),
            buffer: self.buffer,
        };
        WithLost {
            completions: self.io.run(stage, io),
            lost,
            tail: None,
        }
    }
}

/// The input indices of the items the CPU stage held when it was dropped:
/// a cancel caught them between the stages.
type Lost = Arc<Mutex<Vec<usize>>>;

/// The I/O stage's completions, then a `Cancelled` for every item lost
/// between the stages: the I/O stage drops the CPU stage (its input) when
/// the batch is cancelled, so these are known only once it has ended.
struct WithLost<S> {
    completions: S,
    lost: Lost,
    /// The lost items, once the completions have ended.
    tail: Option<std::vec::IntoIter<usize>>,
}

impl<S, R, E> Stream for WithLost<S>
where
    S: Stream<Item = (usize, Result<R, ItemError<E>>)> + Unpin,
{
    type Item = (usize, Result<R, ItemError<E>>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Unpin: the completions are (the driver boxes its input).
        let this = self.get_mut();
        if this.tail.is_none() {
            match Pin::new(&mut this.completions).poll_next(cx) {
                Poll::Ready(None) => {
                    let mut lost = std::mem::take(&mut *this.lost.lock());
                    lost.sort_unstable();
                    this.tail = Some(lost.into_iter());
                }
                other => return other,
            }
        }
        // Counted cancelled when the CPU stage lost them.
        let next = this.tail.as_mut().and_then(Iterator::next);
        Poll::Ready(next.map(|index| (index, Err(ItemError::Cancelled))))
    }
}

type Staged<U, E> = (usize, Result<U, ItemError<E>>);

/// A result of the CPU stage in the channel, with the slot of `held` its
/// item occupied.
type Slotted<U, E> = (usize, Staged<U, E>);

/// The CPU stage: a stream of items whose CPU part is done, in completion
/// order, with at most `buffer` items taken and not yet handed over.
struct CpuStage<S, C, U, E> {
    input: Option<Pin<Box<S>>>,
    next_index: usize,
    cpu: Arc<C>,
    cancel: Option<CancelToken>,
    counters: Arc<Counters>,
    processor: Processor,
    tx: mpsc::Sender<Slotted<U, E>>,
    rx: mpsc::Receiver<Slotted<U, E>>,
    /// Input indices of the items dispatched to rayon and not yet handed
    /// over, by slot: reported lost if the stage is dropped. A slot travels
    /// with its item, so taking it back costs no search (a `HashSet` of
    /// indices cost about 3 % more instructions per item, median of 5 runs
    /// of `parallel_async_callgrind hybrid 16 2000`; the slots, none
    /// measurable).
    held: Vec<Option<usize>>,
    /// Slots of `held` not in use.
    free: Vec<usize>,
    /// Slots in use: items dispatched and not yet handed over (at most
    /// `buffer`).
    outstanding: usize,
    lost: Lost,
    buffer: usize,
}

impl<S, C, U, E> CpuStage<S, C, U, E>
where
    S: Stream,
    S::Item: Send + 'static,
    C: Fn(S::Item) -> Result<U, E> + Send + Sync + 'static,
    U: Send + 'static,
    E: Send + 'static,
{
    fn dispatch(&mut self, x: S::Item) {
        let index = self.next_index;
        self.next_index += 1;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.held.push(None);
            self.held.len() - 1
        });
        self.held[slot] = Some(index);
        self.outstanding += 1;
        self.counters.taken();
        self.counters.queue(1, 0);
        let tx = self.tx.clone();
        let cpu = Arc::clone(&self.cpu);
        let cancel = self.cancel.clone();
        self.processor.cpu().spawn(move || {
            // No panic may leave this job: out of a rayon job it aborts the
            // process. So user data is dropped under `catch_unwind` here:
            // the item when it is not run, the closure's last handle, and
            // a result nobody wants.
            // The receiver is gone with the batch: nobody wants the result.
            if tx.is_closed() {
                let _ = drop_caught(x);
                let _ = drop_caught(cpu);
                // Possibly the channel's last sender: it drops the results
                // still queued in it.
                let _ = drop_caught(tx);
                return;
            }
            let result = if cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                not_run(x)
            } else {
                match catch_unwind(AssertUnwindSafe(|| cpu(x))) {
                    Ok(Ok(u)) => Ok(u),
                    Ok(Err(e)) => Err(ItemError::Failed(e)),
                    Err(payload) => Err(ItemError::Panicked(PanicError::from_box(payload))),
                }
            };
            let _ = drop_caught(cpu);
            // Never full: at most `buffer` items are outstanding. Fails only
            // when the batch is gone, and then the result is not wanted.
            if let Err(unsent) = tx.try_send((slot, (index, result))) {
                let _ = drop_caught(unsent);
            }
            // The last sender, if the batch closed and emptied the channel
            // meanwhile, drops a result queued in it.
            let _ = drop_caught(tx);
        });
    }
}

impl<S, C, U, E> Stream for CpuStage<S, C, U, E>
where
    S: Stream,
    S::Item: Send + 'static,
    C: Fn(S::Item) -> Result<U, E> + Send + Sync + 'static,
    U: Send + 'static,
    E: Send + 'static,
{
    type Item = Staged<U, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Unpin: the input is boxed and nothing else is pinned.
        let this = self.get_mut();
        while this.outstanding < this.buffer {
            let Some(input) = this.input.as_mut() else {
                break;
            };
            // The input is the caller's code: its panic is the error of the
            // item it was making, and it is not polled again (as `Async`'s).
            match catch_unwind(AssertUnwindSafe(|| input.as_mut().poll_next(cx))) {
                Ok(Poll::Ready(Some(x))) => this.dispatch(x),
                Ok(Poll::Ready(None)) => this.input = None,
                Ok(Poll::Pending) => break,
                Err(payload) => {
                    let _ = drop_caught(this.input.take());
                    let index = this.next_index;
                    this.next_index += 1;
                    this.counters.taken();
                    let panic = PanicError::from_box(payload);
                    return Poll::Ready(Some((index, Err(ItemError::Panicked(panic)))));
                }
            }
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some((slot, item))) => {
                this.held[slot] = None;
                this.free.push(slot);
                this.outstanding -= 1;
                this.counters.queue(0, 1);
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.input.is_none() && this.outstanding == 0 => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S, C, U, E> Unpin for CpuStage<S, C, U, E> {}

impl<S, C, U, E> Drop for CpuStage<S, C, U, E> {
    fn drop(&mut self) {
        self.counters.queue(0, self.outstanding);
        // Items done or running on rayon whose results nobody will receive
        // now (a running one's send fails): the batch still owes them a
        // `Cancelled` each. They are counted now, not when the stream hands
        // them out: a dropped batch never does.
        for _ in 0..self.outstanding {
            self.counters.cancelled();
        }
        if self.outstanding > 0 {
            self.lost.lock().extend(self.held.iter().flatten());
        }
        // The results waiting in the channel are user data: a panic of
        // their `Drop` must not unwind out of the batch (a cancel drops
        // the stage inside the batch's poll). Closed first, so that a job
        // still running fails its send and drops its result itself.
        self.rx.close();
        while let Ok(result) = self.rx.try_recv() {
            let _ = drop_caught(result);
        }
    }
}
