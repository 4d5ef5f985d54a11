//! Counters of the `Async` and `Hybrid` strategies, and their snapshot.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::latency::AtomicHistogram;

/// How one item of an async batch ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Ok,
    Failed,
    TimedOut,
}

/// Shared by every async batch of one processor; updated with relaxed
/// atomics (one increment or two per item, next to a task spawn).
#[derive(Debug)]
pub(crate) struct Counters {
    taken: AtomicU64,
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    panicked: AtomicU64,
    cancelled: AtomicU64,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    awaiting_permit: AtomicUsize,
    latency: AtomicHistogram,
    /// First start and last end of an item: the span throughput is over.
    span: Mutex<Option<(Instant, Instant)>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            taken: AtomicU64::new(0),
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            awaiting_permit: AtomicUsize::new(0),
            latency: AtomicHistogram::new(),
            span: Mutex::new(None),
        }
    }
}

impl Counters {
    /// A batch took an item from its input.
    pub(crate) fn taken(&self) {
        self.taken.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("torque_parallel_io_taken_total").increment(1);
    }

    /// An item's task was spawned at `now`.
    pub(crate) fn started(&self, now: Instant) {
        self.started.fetch_add(1, Relaxed);
        let mut span = self.span.lock();
        self.in_flight.fetch_add(1, Relaxed);
        // The gauges move by deltas, so that they add up over processors
        // (process-wide, like the counters); set to this processor's value,
        // they showed whichever processor changed last.
        #[cfg(feature = "metrics")]
        metrics::gauge!("torque_parallel_io_in_flight").increment(1.0);
        if span.is_none() {
            *span = Some((now, now));
        }
        drop(span);
        #[cfg(feature = "metrics")]
        metrics::counter!("torque_parallel_io_started_total").increment(1);
    }

    /// An item's task ended (or was dropped): it is no longer in flight.
    pub(crate) fn left(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!("torque_parallel_io_in_flight").decrement(1.0);
    }

    fn counter(&self, ended: Ended) -> &AtomicU64 {
        match ended {
            Ended::Ok => &self.succeeded,
            Ended::Failed => &self.failed,
            Ended::TimedOut => &self.timed_out,
        }
    }

    /// An item ran to an end at `now` after `latency`. The end's counter
    /// for the `metrics` facade waits for [`Counters::published`]: the
    /// limit algorithm told of the item's end may still panic, and a
    /// published counter cannot be taken back.
    pub(crate) fn ended(&self, ended: Ended, latency: Duration, now: Instant) {
        self.counter(ended).fetch_add(1, Relaxed);
        self.latency.record(latency);
        if let Some((_, end)) = self.span.lock().as_mut() {
            *end = (*end).max(now);
        }
        #[cfg(feature = "metrics")]
        metrics::histogram!("torque_parallel_io_latency_seconds").record(latency.as_secs_f64());
    }

    /// The item that ended as `ended` has given its permit back: its end
    /// is final, and published.
    pub(crate) fn published(&self, ended: Ended) {
        #[cfg(feature = "metrics")]
        {
            let name = match ended {
                Ended::Ok => "torque_parallel_io_succeeded_total",
                Ended::Failed => "torque_parallel_io_failed_total",
                Ended::TimedOut => "torque_parallel_io_timed_out_total",
            };
            metrics::counter!(name).increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = ended;
    }

    /// The limit algorithm panicked as the item that ended as `ended` gave
    /// its permit back: the panic is the item's result, so it counts as
    /// panicked instead.
    pub(crate) fn ended_in_a_panic(&self, ended: Ended) {
        self.counter(ended).fetch_sub(1, Relaxed);
        self.panicked();
    }

    /// An item ended with an error before its future started: the
    /// `Hybrid` CPU stage's.
    pub(crate) fn failed_before_start(&self) {
        self.failed.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("torque_parallel_io_failed_total").increment(1);
    }

    pub(crate) fn panicked(&self) {
        self.panicked.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("torque_parallel_io_panicked_total").increment(1);
    }

    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("torque_parallel_io_cancelled_total").increment(1);
    }

    /// `entered` items entered and `left` items left the `Hybrid` stage
    /// buffer.
    pub(crate) fn queue(&self, entered: usize, left: usize) {
        // Nothing moved: nothing to count or publish.
        if entered == 0 && left == 0 {
            return;
        }
        if entered > 0 {
            self.queued.fetch_add(entered, Relaxed);
            #[cfg(feature = "metrics")]
            metrics::gauge!("torque_parallel_io_queued").increment(entered as f64);
        }
        if left > 0 {
            self.queued.fetch_sub(left, Relaxed);
            #[cfg(feature = "metrics")]
            metrics::gauge!("torque_parallel_io_queued").decrement(left as f64);
        }
    }

    /// `entered` items began and `left` items stopped waiting for a
    /// permit.
    pub(crate) fn awaiting_permit(&self, entered: usize, left: usize) {
        if entered == 0 && left == 0 {
            return;
        }
        if entered > 0 {
            self.awaiting_permit.fetch_add(entered, Relaxed);
            #[cfg(feature = "metrics")]
            metrics::gauge!("torque_parallel_io_awaiting_permit").increment(entered as f64);
        }
        if left > 0 {
            self.awaiting_permit.fetch_sub(left, Relaxed);
            #[cfg(feature = "metrics")]
            metrics::gauge!("torque_parallel_io_awaiting_permit").decrement(left as f64);
        }
    }

    pub(crate) fn snapshot(&self, limiter: crate::limit::Stats) -> IoStats {
        let [latency_p50, latency_p90, latency_p99] = self.latency.percentiles();
        let span = *self.span.lock();
        IoStats {
            taken: self.taken.load(Relaxed),
            started: self.started.load(Relaxed),
            succeeded: self.succeeded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            queued: self.queued.load(Relaxed),
            awaiting_permit: self.awaiting_permit.load(Relaxed),
            limit: limiter.limit,
            waiting: limiter.waiting,
            rejected: limiter.rejected,
            busy: span.map_or(Duration::ZERO, |(start, end)| end - start),
            latency_p50,
            latency_p90,
            latency_p99,
        }
    }
}

/// What the `Async` and `Hybrid` strategies of a processor have done, in
/// [`Stats::io`](crate::Stats::io).
///
/// Every item a batch takes from its input is counted once in
/// [`taken`](IoStats::taken), and, once it is over, once by how it ended:
/// [`succeeded`](IoStats::succeeded), [`failed`](IoStats::failed),
/// [`timed_out`](IoStats::timed_out), [`panicked`](IoStats::panicked) or
/// [`cancelled`](IoStats::cancelled) — whether its future started or not.
/// So the counters add up:
///
/// ```text
/// taken == completed() + panicked + cancelled + in_flight + queued + awaiting_permit
/// ```
///
/// exactly once no batch is running (the three gauges are then 0); a
/// snapshot taken while batches run may be off by the few items moving
/// from one state to the next as it reads them. An item can end without
/// starting (cancelled while it waits for a permit, its closure or input
/// panicking as it is made, its `Hybrid` CPU stage failing), so
/// [`started`](IoStats::started) may be below `taken`, and
/// `started == completed() + panicked + cancelled + in_flight` does not
/// hold in general.
///
/// An item is counted by how it ended, and leaves `in_flight`, before its
/// limiter permit goes back: once a caller holds every permit of the
/// batch's limiter again (an aborted batch's tasks are dropped on other
/// threads), the items that held them are counted, and `in_flight` no
/// longer includes them. (A limit algorithm that panics as an item's
/// permit goes back turns that item's count to `panicked` just after.)
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), torque_parallel::BuildError> {
/// let processor = torque_parallel::Processor::builder().build()?;
/// let out = processor
///     .async_io()
///     .try_map(0..5u32, |x| {
///         assert!(x != 3, "item 3 cannot be made"); // never starts
///         async move { if x == 4 { Err("four") } else { Ok(x) } }
///     })
///     .await;
/// assert!(out[3].as_ref().is_err_and(|e| e.is_panic()));
/// let s = processor.stats().io;
/// assert_eq!((s.taken, s.started), (5, 4));
/// assert_eq!((s.succeeded, s.failed, s.panicked), (3, 1, 1));
/// assert_eq!(s.completed() + s.panicked + s.cancelled, s.taken);
/// # Ok(()) }
/// ```
///
/// Latency percentiles come from a histogram of every item that ran to an
/// end since the processor was built, with buckets an eighth of a power of
/// two wide: each is the largest latency of its bucket, so never below the
/// true percentile and at most 12.5 % above it. `limit`, `waiting` and `rejected` are those of the
/// processor's own limiter (a batch run with
/// [`AsyncIo::with_limiter`](crate::AsyncIo::with_limiter) reports into its
/// own limiter's `stats()`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct IoStats {
    /// Items taken from the input (for `Hybrid`, by its CPU stage), started
    /// or not: each ends up counted once more by its outcome (see above).
    pub taken: u64,
    /// Items whose future was started (a task spawned, or polled inline):
    /// those that got a permit and whose future was made. Items that ended
    /// before (see above) are not counted here, only by their outcome.
    pub started: u64,
    /// Items that completed with a value.
    pub succeeded: u64,
    /// Items whose future returned an error (`try_map`), or whose `Hybrid`
    /// CPU stage did.
    pub failed: u64,
    /// Items that ran past the per-item timeout.
    pub timed_out: u64,
    /// Items that panicked: their future, the closure making it, the input
    /// as it made the item, either `Hybrid` stage, or the item's `Drop`
    /// when a cancel dropped it unstarted. Started or not.
    pub panicked: u64,
    /// Items cancelled, started or not: waiting for a permit or between
    /// the `Hybrid` stages when their batch was cancelled or dropped,
    /// aborted while running, or running when their batch was dropped (a
    /// dropped `map` future or `as_completed` stream).
    pub cancelled: u64,
    /// Item tasks running now.
    pub in_flight: usize,
    /// Items in the `Hybrid` strategy's CPU stage or its channel, waiting
    /// for the I/O stage.
    pub queued: usize,
    /// Items taken from the input and waiting for a permit to start (at
    /// most one per running batch: a batch takes an item only when it can
    /// start it soon).
    pub awaiting_permit: usize,
    /// The current concurrency limit.
    pub limit: usize,
    /// Batches waiting for a permit of the limiter.
    pub waiting: usize,
    /// Permits the limiter refused to fail-fast callers.
    pub rejected: u64,
    /// From the first item's start to the last item's end: the span
    /// [`throughput`](IoStats::throughput) is measured over.
    pub busy: Duration,
    /// Median item latency (the largest latency of its histogram bucket,
    /// at most 12.5 % above the true median).
    pub latency_p50: Option<Duration>,
    /// 90th percentile item latency.
    pub latency_p90: Option<Duration>,
    /// 99th percentile item latency.
    pub latency_p99: Option<Duration>,
}

impl IoStats {
    /// Items that ran to an end (value, error or timeout).
    pub fn completed(&self) -> u64 {
        self.succeeded + self.failed + self.timed_out
    }

    /// Completed items per second over [`busy`](IoStats::busy) (0 while
    /// `busy` is zero: before an item has taken any time).
    pub fn throughput(&self) -> f64 {
        let secs = self.busy.as_secs_f64();
        if secs > 0.0 {
            self.completed() as f64 / secs
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_histogram() {
        let c = Counters::default();
        let now = Instant::now();
        let limiter = crate::limit::Stats {
            limit: 1,
            in_flight: 0,
            waiting: 0,
            rejected: 0,
            succeeded: 0,
            overloaded: 0,
            ignored: 0,
            busy: Duration::ZERO,
            latency_p50: None,
            latency_p90: None,
            latency_p99: None,
        };
        assert_eq!(c.snapshot(limiter).latency_p50, None);
        for _ in 0..98 {
            c.ended(Ended::Ok, Duration::from_millis(1), now);
        }
        c.ended(Ended::Ok, Duration::from_millis(100), now);
        c.ended(Ended::Failed, Duration::from_millis(100), now);
        let s = c.snapshot(limiter);
        let ms = Duration::from_millis;
        // Each within an eighth above the true percentile.
        let within = |p: Option<Duration>, d: Duration| p.is_some_and(|p| p >= d && p * 8 <= d * 9);
        assert!(within(s.latency_p50, ms(1)), "{:?}", s.latency_p50);
        assert!(within(s.latency_p90, ms(1)), "{:?}", s.latency_p90);
        assert!(within(s.latency_p99, ms(100)), "{:?}", s.latency_p99);
        assert_eq!((s.succeeded, s.failed, s.completed()), (99, 1, 100));
    }
}
