//! The tokio batcher: a bounded queue in front of a sink, flushed by size or
//! by age.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::BatchSizer;
use crate::BuildError;
use crate::outcome::PanicError;

/// Where a [`Batcher`] writes its batches: one call per batch.
///
/// Any `FnMut(Vec<T>) -> impl Future<Output = Result<(), E>>` is a sink;
/// implement the trait for a type that holds a connection.
pub trait Sink<T>: Send + 'static {
    /// Why a batch could not be written.
    type Error: Send + Sync + 'static;

    /// Writes one batch. The batcher waits for it before the next.
    fn write(&mut self, batch: Vec<T>) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<T, F, Fut, E> Sink<T> for F
where
    F: FnMut(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Send + Sync + 'static,
{
    type Error = E;

    fn write(&mut self, batch: Vec<T>) -> impl Future<Output = Result<(), E>> + Send {
        self(batch)
    }
}

/// Collects items into batches for a [`Sink`]: a batch is written when
/// `max_size` items are collected or `max_linger` has passed since its first
/// item was sent, whichever comes first.
///
/// [`send`](Batcher::send) waits while the bounded queue is full
/// (backpressure) and returns a [`Receipt`] that resolves to the outcome of
/// the batch the item went into. The work happens in the [`BatchDriver`]
/// returned beside the batcher, which the caller spawns; when every clone of
/// the batcher is dropped the driver writes what is left and returns its
/// [`BatchStats`] — nothing sent is lost.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use torque_parallel::batch::Batcher;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), torque_parallel::BuildError> {
/// let (batcher, driver) = Batcher::builder()
///     .max_size(100)
///     .max_linger(Duration::from_millis(5))
///     .build(|rows: Vec<u32>| async move {
///         // e.g. one multi-row INSERT
///         if rows.contains(&13) { Err("unlucky row") } else { Ok(()) }
///     })?;
/// let driver = tokio::spawn(driver.run());
///
/// let ok = batcher.send(1).await.expect("open");
/// assert!(ok.await.is_ok());
///
/// drop(batcher); // the driver flushes what is queued, then stops
/// let stats = driver.await.expect("driver ran");
/// assert_eq!(stats.items, 1);
/// # Ok(())
/// # }
/// ```
pub struct Batcher<T, E> {
    tx: mpsc::Sender<Envelope<T, E>>,
    counters: Arc<Counters>,
}

impl<T, E> Clone for Batcher<T, E> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
            counters: Arc::clone(&self.counters),
        }
    }
}

/// The driver's counters, shared with the batchers for `stats()`.
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    items: AtomicU64,
    failed_batches: AtomicU64,
    failed_items: AtomicU64,
    full_batches: AtomicU64,
    size: AtomicUsize,
    /// Items in the driver's hands: taken from the queue, not yet written.
    pending: AtomicUsize,
}

impl Counters {
    fn snapshot(&self, queued: usize) -> BatchStats {
        BatchStats {
            batches: self.batches.load(Relaxed),
            items: self.items.load(Relaxed),
            failed_batches: self.failed_batches.load(Relaxed),
            failed_items: self.failed_items.load(Relaxed),
            full_batches: self.full_batches.load(Relaxed),
            size: self.size.load(Relaxed),
            queued,
            pending: self.pending.load(Relaxed),
        }
    }
}

impl<T, E> fmt::Debug for Batcher<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("queued", &self.queued())
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

struct Envelope<T, E> {
    item: T,
    sent_at: Instant,
    done: oneshot::Sender<Result<(), FlushError<E>>>,
}

impl<T: Send + 'static, E: Send + Sync + 'static> Batcher<T, E> {
    /// Queues `item`, waiting while the queue is full.
    ///
    /// Cancel safe: dropped before it completes, the item was not queued.
    ///
    /// # Errors
    /// [`Closed`] (with the item) when the driver has stopped.
    pub async fn send(&self, item: T) -> Result<Receipt<E>, Closed<T>> {
        let permit = match self.tx.reserve().await {
            Ok(permit) => permit,
            Err(_) => return Err(Closed(item)),
        };
        let (done, rx) = oneshot::channel();
        permit.send(Envelope {
            item,
            sent_at: Instant::now(),
            done,
        });
        Ok(Receipt { rx })
    }

    /// Queues `item` if there is room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`] when the queue is full,
    /// [`TrySendError::Closed`] when the driver has stopped; both give the
    /// item back.
    pub fn try_send(&self, item: T) -> Result<Receipt<E>, TrySendError<T>> {
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return Err(TrySendError::Full(item)),
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(TrySendError::Closed(item));
            }
        };
        let (done, rx) = oneshot::channel();
        permit.send(Envelope {
            item,
            sent_at: Instant::now(),
            done,
        });
        Ok(Receipt { rx })
    }
}

impl Batcher<(), ()> {
    /// A builder with the defaults: batches of 100, 5 ms linger, a queue of
    /// twice the batch size (with an adaptive size: no linger, a queue of
    /// twice the sizer's maximum). The item and error types come from the sink
    /// given to [`build`](BatcherBuilder::build).
    pub fn builder() -> BatcherBuilder {
        BatcherBuilder::default()
    }
}

impl<T, E> Batcher<T, E> {
    /// Items queued and not yet taken into a batch.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// A snapshot of what the driver has done so far, and the queue depth.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), torque_parallel::BuildError> {
    /// let (batcher, driver) = torque_parallel::batch::Batcher::builder()
    ///     .build(|_rows: Vec<u8>| async { Ok::<(), std::io::Error>(()) })?;
    /// let driver = tokio::spawn(driver.run());
    /// batcher.send(1).await.expect("open").await.expect("written");
    /// assert_eq!((batcher.stats().batches, batcher.stats().queued), (1, 0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> BatchStats {
        self.counters.snapshot(self.queued())
    }
}

/// Resolves to the outcome of the batch an item went into: `Ok(())` once
/// the sink wrote it. Dropping it does not cancel the item.
#[must_use = "a receipt says whether the item was written; drop it to not wait"]
pub struct Receipt<E> {
    rx: oneshot::Receiver<Result<(), FlushError<E>>>,
}

impl<E> fmt::Debug for Receipt<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt").finish_non_exhaustive()
    }
}

impl<E> Future for Receipt<E> {
    type Output = Result<(), FlushError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(FlushError::Dropped)))
    }
}

/// Why an item's batch was not written.
#[non_exhaustive]
pub enum FlushError<E> {
    /// The sink returned an error for the batch; every item of the batch
    /// shares it.
    Sink(Arc<E>),
    /// The driver was dropped before the item's batch was written.
    Dropped,
    /// The sink panicked while writing the batch; every item of the batch
    /// shares the panic. The driver goes on with the next batch, as a
    /// [`Processor`](crate::Processor) goes on after a panicking item.
    Panicked(PanicError),
}

impl<E> Clone for FlushError<E> {
    fn clone(&self) -> Self {
        match self {
            FlushError::Sink(e) => FlushError::Sink(Arc::clone(e)),
            FlushError::Dropped => FlushError::Dropped,
            FlushError::Panicked(p) => FlushError::Panicked(p.clone()),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for FlushError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::Sink(e) => f.debug_tuple("Sink").field(e).finish(),
            FlushError::Dropped => f.write_str("Dropped"),
            FlushError::Panicked(p) => f.debug_tuple("Panicked").field(p).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for FlushError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::Sink(e) => write!(f, "the sink failed to write the batch: {e}"),
            FlushError::Dropped => f.write_str("the batch driver stopped before writing the item"),
            FlushError::Panicked(p) => write!(f, "the sink panicked writing the batch: {p}"),
        }
    }
}

/// `source()` goes on below the sink's error, which `Display` already prints
/// (the sink's error type need not implement `Error`, so leaving it to
/// `source()` alone would hide it; printing it in both would make a chain
/// reporter print it twice). Match on [`FlushError::Sink`] for the error
/// itself.
impl<E: std::error::Error + 'static> std::error::Error for FlushError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FlushError::Sink(e) => e.source(),
            FlushError::Dropped | FlushError::Panicked(_) => None,
        }
    }
}

/// [`Batcher::send`] found the driver stopped; the item is given back.
pub struct Closed<T>(pub T);

impl<T> fmt::Debug for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Closed(..)")
    }
}

impl<T> fmt::Display for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the batcher is closed")
    }
}

impl<T> std::error::Error for Closed<T> {}

/// Why [`Batcher::try_send`] did not queue the item; the item is given back.
pub enum TrySendError<T> {
    /// The queue is full.
    Full(T),
    /// The driver has stopped.
    Closed(T),
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("the batcher's queue is full"),
            TrySendError::Closed(_) => f.write_str("the batcher is closed"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// What a [`BatchDriver`] did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BatchStats {
    /// Batches handed to the sink.
    pub batches: u64,
    /// Items handed to the sink.
    pub items: u64,
    /// Batches the sink returned an error for.
    pub failed_batches: u64,
    /// Items in those batches.
    pub failed_items: u64,
    /// Batches written because they reached their size.
    pub full_batches: u64,
    /// The batch size in use: the fixed size, or the sizer's latest
    /// recommendation.
    pub size: usize,
    /// Items queued and not yet taken into a batch (0 in the stats `run`
    /// returns).
    pub queued: usize,
    /// Items taken from the queue into the batch being collected (while it
    /// lingers) or written, not yet counted in `items` (0 in the stats
    /// `run` returns). Every item sent is in `queued`, `pending` or
    /// `items` (a snapshot taken while the driver moves items from one to
    /// the next may be off by those items).
    pub pending: usize,
}

/// What [`BatcherBuilder::build`] returns: the handle to send with, and the
/// driver to spawn.
pub type Built<T, S> = (Batcher<T, <S as Sink<T>>::Error>, BatchDriver<T, S>);

/// How big a batch may grow.
#[derive(Debug, Clone)]
enum Sizing {
    Fixed(usize),
    /// Boxed: the sizer's sums and window outweigh a `usize` many times.
    Adaptive(Box<BatchSizer>),
}

/// Builds a [`Batcher`] and its [`BatchDriver`].
#[derive(Debug, Clone)]
#[must_use]
pub struct BatcherBuilder {
    sizing: Sizing,
    /// `None`: the default for the sizing (`DEFAULT_LINGER` for a fixed
    /// size, zero for an adaptive one).
    linger: Option<Duration>,
    queue_capacity: Option<usize>,
}

/// How long a partial batch of a fixed size waits for more items, unless
/// `max_linger` says otherwise.
const DEFAULT_LINGER: Duration = Duration::from_millis(5);

impl Default for BatcherBuilder {
    fn default() -> Self {
        BatcherBuilder {
            sizing: Sizing::Fixed(100),
            linger: None,
            queue_capacity: None,
        }
    }
}

impl BatcherBuilder {
    /// Write a batch as soon as it holds `n` items (default 100).
    ///
    /// ```
    /// let builder = torque_parallel::batch::Batcher::builder().max_size(500);
    /// ```
    pub fn max_size(mut self, n: usize) -> Self {
        self.sizing = Sizing::Fixed(n);
        self
    }

    /// Let `sizer` choose each batch's size from the latencies the sink
    /// shows, instead of a fixed `max_size`.
    ///
    /// The sizer's size is a cap, not a quota: unless
    /// [`max_linger`](Self::max_linger) is set, a partial batch is written
    /// as soon as the sink is free (the items that arrive during a write
    /// make the next batch), because holding it for a fixed linger costs
    /// far more latency than the writes it saves when the load is light.
    ///
    /// ```
    /// use torque_parallel::batch::{BatchSizer, Batcher};
    /// let builder = Batcher::builder().adaptive(BatchSizer::builder().max_size(2_000).build()?);
    /// # Ok::<(), torque_parallel::BuildError>(())
    /// ```
    pub fn adaptive(mut self, sizer: BatchSizer) -> Self {
        self.sizing = Sizing::Adaptive(Box::new(sizer));
        self
    }

    /// Write a batch at the latest this long after its first item was sent
    /// (default 5 ms with a fixed size, zero with
    /// [`adaptive`](Self::adaptive)). Zero writes whatever is queued right
    /// away. tokio's timer ticks in milliseconds: a linger that ends between
    /// two ticks ends at the earlier one (up to 1 ms short), never later.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = torque_parallel::batch::Batcher::builder().max_linger(Duration::from_millis(1));
    /// ```
    pub fn max_linger(mut self, linger: Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    /// How many items may wait in the queue before `send` waits (default
    /// twice the (largest) batch size).
    ///
    /// ```
    /// let builder = torque_parallel::batch::Batcher::builder().queue_capacity(10_000);
    /// ```
    pub fn queue_capacity(mut self, items: usize) -> Self {
        self.queue_capacity = Some(items);
        self
    }

    /// Validates the settings; returns the batcher and the driver to spawn.
    ///
    /// # Errors
    /// [`BuildError::Zero`] for a zero `max_size` or `queue_capacity`.
    pub fn build<T, S>(self, sink: S) -> Result<Built<T, S>, BuildError>
    where
        S: Sink<T>,
    {
        let largest = match &self.sizing {
            Sizing::Fixed(0) => return Err(BuildError::Zero("max_size")),
            Sizing::Fixed(n) => *n,
            Sizing::Adaptive(sizer) => sizer.max_size(),
        };
        let capacity = match self.queue_capacity {
            Some(0) => return Err(BuildError::Zero("queue_capacity")),
            Some(n) => n,
            None => largest.saturating_mul(2),
        };
        // tokio's channel refuses capacities above this.
        let capacity = capacity.min(usize::MAX >> 3);
        let (tx, rx) = mpsc::channel(capacity);
        let counters = Arc::new(Counters::default());
        counters.size.store(
            match &self.sizing {
                Sizing::Fixed(n) => *n,
                Sizing::Adaptive(sizer) => sizer.size(),
            },
            Relaxed,
        );
        Ok((
            Batcher {
                tx,
                counters: Arc::clone(&counters),
            },
            BatchDriver {
                rx,
                sink,
                linger: self.linger.unwrap_or(match self.sizing {
                    Sizing::Fixed(_) => DEFAULT_LINGER,
                    Sizing::Adaptive(_) => Duration::ZERO,
                }),
                sizing: self.sizing,
                counters,
                last_sent: None,
            },
        ))
    }
}

/// The instant to give tokio's timer for `deadline` so that it fires at
/// the last tick at or before it: the timer ticks in whole milliseconds and
/// rounds a deadline up to the next tick, which held a batch up to 1 ms
/// past its linger (a 200 µs linger for 1 ms). Aimed 1 ms − 1 ns earlier,
/// it rounds up to at most `deadline`: up to 1 ms early, never late.
fn not_late(deadline: Instant) -> Instant {
    deadline
        .checked_sub(Duration::from_nanos(999_999))
        .unwrap_or(deadline)
}

/// The task behind a [`Batcher`]: collects batches and writes them to the
/// sink, one at a time. Spawn [`run`](BatchDriver::run).
pub struct BatchDriver<T, S: Sink<T>> {
    rx: mpsc::Receiver<Envelope<T, S::Error>>,
    sink: S,
    sizing: Sizing,
    linger: Duration,
    counters: Arc<Counters>,
    /// When the previous batch's last item was sent: the sizer is told how
    /// fast items arrive.
    last_sent: Option<Instant>,
}

/// A driver dropped part-way writes none of the items it held: their receipts say [`FlushError::Dropped`], and the
/// stats no longer show them pending.
impl<T, S: Sink<T>> Drop for BatchDriver<T, S> {
    fn drop(&mut self) {
        self.counters.pending.store(0, Relaxed);
    }
}

impl<T, S: Sink<T>> fmt::Debug for BatchDriver<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchDriver")
            .field("sizing", &self.sizing)
            .field("linger", &self.linger)
            .field("stats", &self.counters.snapshot(0))
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, S: Sink<T>> BatchDriver<T, S> {
    /// Runs until every [`Batcher`] clone is dropped and the queue is
    /// written out; returns what it did.
    pub async fn run(mut self) -> BatchStats {
        let mut buf: Vec<Envelope<T, S::Error>> = Vec::new();
        loop {
            match self.rx.recv().await {
                Some(first) => buf.push(first),
                None => break,
            }
            self.counters.pending.store(buf.len(), Relaxed);
            // Sized once the first item is in hand: how long it waited
            // tells a backlog from an open loop's ordinary queue.
            let target = match &mut self.sizing {
                Sizing::Fixed(n) => *n,
                Sizing::Adaptive(sizer) => sizer.next_size_after(buf[0].sent_at.elapsed()),
            };
            // The linger counts from when the first item was sent: it may
            // have waited in the queue while the previous batch was written.
            let deadline = buf[0].sent_at.checked_add(self.linger).map(not_late);
            let mut closed = false;
            while buf.len() < target {
                let want = target - buf.len();
                let got = match deadline {
                    Some(deadline) => {
                        match tokio::time::timeout_at(deadline, self.rx.recv_many(&mut buf, want))
                            .await
                        {
                            Ok(got) => got,
                            Err(_elapsed) => {
                                // Take what is already queued: the timeout
                                // also fires when tokio's cooperative budget
                                // runs out with items still waiting.
                                while buf.len() < target {
                                    match self.rx.try_recv() {
                                        Ok(envelope) => buf.push(envelope),
                                        Err(_) => break,
                                    }
                                }
                                break;
                            }
                        }
                    }
                    None => self.rx.recv_many(&mut buf, want).await,
                };
                self.counters.pending.store(buf.len(), Relaxed);
                if got == 0 {
                    closed = true;
                    break;
                }
            }
            // The linger's end may have taken more without a `got`.
            self.counters.pending.store(buf.len(), Relaxed);
            if buf.len() >= target {
                self.counters.full_batches.fetch_add(1, Relaxed);
            }
            self.flush(&mut buf).await;
            if closed {
                break;
            }
        }
        self.counters.snapshot(0)
    }

    async fn flush(&mut self, buf: &mut Vec<Envelope<T, S::Error>>) {
        let n = buf.len();
        if let (Sizing::Adaptive(sizer), Some(last)) = (&mut self.sizing, buf.last()) {
            // Arrivals count whether or not the write succeeds.
            if let Some(previous) = self.last_sent {
                sizer.observe_arrivals(n, last.sent_at.saturating_duration_since(previous));
            }
            self.last_sent = Some(last.sent_at);
        }
        let mut items = Vec::with_capacity(n);
        let mut receipts = Vec::with_capacity(n);
        for envelope in buf.drain(..) {
            items.push(envelope.item);
            receipts.push(envelope.done);
        }
        let started = Instant::now();
        // A sink that panics fails its batch alone, as a panicking item
        // fails alone in a `Processor`: the driver goes on. (It used to
        // unwind out of the driver, so one bad row stopped every later
        // write: `send` said `Closed` until the service restarted.)
        let result = caught(|| self.sink.write(items)).await;
        self.counters.batches.fetch_add(1, Relaxed);
        self.counters.items.fetch_add(n as u64, Relaxed);
        // After `items` has them: a snapshot between may count them twice,
        // never not at all.
        self.counters.pending.store(0, Relaxed);
        match result {
            Ok(Ok(())) => {
                if let Sizing::Adaptive(sizer) = &mut self.sizing {
                    sizer.observe(n, started.elapsed());
                    self.counters.size.store(sizer.size(), Relaxed);
                }
                for done in receipts {
                    let _ = done.send(Ok(()));
                }
            }
            Ok(Err(e)) => {
                // A failed write's latency (often a timeout) says nothing
                // about the cost model: not observed.
                self.counters.failed_batches.fetch_add(1, Relaxed);
                self.counters.failed_items.fetch_add(n as u64, Relaxed);
                let e = Arc::new(e);
                for done in receipts {
                    let _ = done.send(Err(FlushError::Sink(Arc::clone(&e))));
                }
            }
            Err(panic) => {
                self.counters.failed_batches.fetch_add(1, Relaxed);
                self.counters.failed_items.fetch_add(n as u64, Relaxed);
                for done in receipts {
                    let _ = done.send(Err(FlushError::Panicked(panic.clone())));
                }
            }
        }
    }
}

/// The future `make` returns, run to its end, with a panic of `make` or of
/// any poll of the future caught as the batch's error.
async fn caught<F: Future>(make: impl FnOnce() -> F) -> Result<F::Output, PanicError> {
    let fut = catch_unwind(AssertUnwindSafe(make)).map_err(PanicError::from_box)?;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(payload) => Poll::Ready(Err(PanicError::from_box(payload))),
        },
    )
    .await
}
