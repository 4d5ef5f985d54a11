//! What a batch gives back per item: a value or an [`ItemError`], and for
//! reductions a [`Summary`].

use std::any::Any;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// Why one item of a batch has no value. The rest of the batch is unaffected.
///
/// `E` is the closure's own error type for `try_map`; for `map` and `for_each`
/// it is [`Infallible`], so only [`Panicked`](ItemError::Panicked) and
/// [`Cancelled`](ItemError::Cancelled) can occur.
#[derive(Debug)]
#[non_exhaustive]
pub enum ItemError<E = Infallible> {
    /// The closure returned this error (only from `try_map`).
    Failed(E),
    /// The closure panicked on this item; the panic was caught and the batch went on.
    Panicked(PanicError),
    /// The batch was cancelled before this item ran (or, for the `Async`
    /// strategy, while it ran: its task was aborted).
    Cancelled,
    /// The item did not finish within the strategy's per-item timeout
    /// (`Async` and `Hybrid` strategies); the limiter counted it as overload.
    TimedOut(Duration),
}

impl<E> ItemError<E> {
    /// Whether the item's closure panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, ItemError::Panicked(_))
    }

    /// Whether the item never ran because the batch was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, ItemError::Cancelled)
    }

    /// Whether the item ran past its per-item timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ItemError::TimedOut(_))
    }
}

impl<E: fmt::Display> fmt::Display for ItemError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemError::Failed(e) => write!(f, "item failed: {e}"),
            ItemError::Panicked(p) => write!(f, "{p}"),
            ItemError::Cancelled => f.write_str("item not run: the batch was cancelled"),
            ItemError::TimedOut(after) => write!(f, "item timed out after {after:?}"),
        }
    }
}

/// `source()` goes on *below* the closure's error: `Display` already prints
/// it (the closure's error type need not implement `Error` — a `String`, an
/// `anyhow::Error` — so leaving it to `source()` alone would hide it), and a
/// reporter that walks the chain (anyhow's `{:#}`) would print it twice.
/// Match on [`ItemError::Failed`] for the error itself.
impl<E: StdError + 'static> StdError for ItemError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ItemError::Failed(e) => e.source(),
            ItemError::Panicked(_) | ItemError::Cancelled | ItemError::TimedOut(_) => None,
        }
    }
}

/// A panic caught while running one item, with the panic's message.
///
/// Boxed so that `Result<R, ItemError>` stays one word bigger than `R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicError {
    inner: Box<PanicInner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PanicInner {
    message: String,
}

thread_local! {
    /// Panics caught on this thread so far ([`caught_panics`]).
    static CAUGHT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many item panics this thread has caught so far: a timing that saw
/// this change measured the panic machinery (the hook's message, a
/// backtrace), not the items.
pub(crate) fn caught_panics() -> u64 {
    CAUGHT.try_with(std::cell::Cell::get).unwrap_or(0)
}

/// Drops `x`, user data whose `Drop` may panic, on a path that must go on
/// (a pool thread, a feeder, a future's `drop`; a panic out of a rayon job
/// aborts the process): a panic is caught and returned.
pub(crate) fn drop_caught<X>(x: X) -> Result<(), PanicError> {
    catch_unwind(AssertUnwindSafe(|| drop(x))).map_err(PanicError::from_box)
}

/// The result of an item that was not run (its batch was cancelled, or is
/// gone): `Cancelled`, or the panic of the item's `Drop`.
pub(crate) fn not_run<X, R, E>(item: X) -> Result<R, ItemError<E>> {
    match drop_caught(item) {
        Ok(()) => Err(ItemError::Cancelled),
        Err(panic) => Err(ItemError::Panicked(panic)),
    }
}

impl PanicError {
    /// The error for a caught panic; drops its payload, whose own `Drop`
    /// may panic too (a `panic_any` of a type that does): that second
    /// payload is leaked, not dropped, for dropping it could panic again.
    pub(crate) fn from_box(payload: Box<dyn Any + Send>) -> Self {
        let error = Self::from_payload(&*payload);
        if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
            std::mem::forget(again);
        }
        error
    }

    fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let _ = CAUGHT.try_with(|c| c.set(c.get() + 1));
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_owned()
        };
        PanicError {
            inner: Box::new(PanicInner { message }),
        }
    }

    /// The panic's message (`"panic with a non-string payload"` when it had none).
    pub fn message(&self) -> &str {
        &self.inner.message
    }
}

impl fmt::Display for PanicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item panicked: {}", self.inner.message)
    }
}

impl StdError for PanicError {}

/// The outcome of a reduction (`map_reduce`, `for_each`): the value reduced
/// from every item that ran, and what happened to the others.
#[derive(Debug)]
#[non_exhaustive]
pub struct Summary<R> {
    /// The reduction of every item that completed.
    pub value: R,
    /// The panics caught, one per panicking item (order unspecified).
    pub panics: Vec<PanicError>,
    /// How many items did not run because the batch was cancelled.
    pub cancelled: usize,
    /// How many items ran past their per-item timeout (`Async` strategy).
    pub timed_out: usize,
}

impl<R> Summary<R> {
    /// Whether every item ran to completion without panicking.
    pub fn is_complete(&self) -> bool {
        self.panics.is_empty() && self.cancelled == 0 && self.timed_out == 0
    }
}

/// Why [`Processor::collect`](crate::Processor::collect) or
/// [`try_collect`](crate::Processor::try_collect) returned no vector: some
/// items failed, panicked or were cancelled. The batch went on past each
/// failure, so every item that could run ran exactly once and every failure
/// is listed.
#[derive(Debug)]
#[non_exhaustive]
pub struct CollectError<E = Infallible> {
    /// The items that failed ([`ItemError::Failed`], only from
    /// `try_collect`) or panicked ([`ItemError::Panicked`]), as (input
    /// index, error), in input order.
    pub failures: Vec<(usize, ItemError<E>)>,
    /// How many items did not run because the batch was cancelled.
    pub cancelled: usize,
}

impl<E> CollectError<E> {
    /// Whether the batch was cancelled before some of its items ran.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled > 0
    }

    /// The input indices of the failed and panicked items, in input order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.failures.iter().map(|(i, _)| *i)
    }
}

impl<E: fmt::Display> fmt::Display for CollectError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failures.first() {
            Some((i, e)) => {
                write!(
                    f,
                    "{} item(s) failed, the first is item {i}: {e}",
                    self.failures.len()
                )?;
                if self.cancelled > 0 {
                    write!(f, "; {} not run: the batch was cancelled", self.cancelled)?;
                }
                Ok(())
            }
            None => write!(
                f,
                "{} item(s) not run: the batch was cancelled",
                self.cancelled
            ),
        }
    }
}

/// `source()` goes on below the first failure, which `Display` already
/// prints (see [`ItemError`]'s `source()`); every failure is in
/// [`failures`](CollectError::failures).
impl<E: StdError + 'static> StdError for CollectError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.failures.first().and_then(|(_, e)| e.source())
    }
}
