//! Cooperative cancellation of a batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use parking_lot::Mutex;

/// A cancellation flag shared between a batch and whoever may stop it.
///
/// Give it to a processor with [`Processor::with_cancel`](crate::Processor::with_cancel);
/// once [`cancel`](CancelToken::cancel) is called, items that have not started
/// are skipped (they come back as [`ItemError::Cancelled`](crate::ItemError::Cancelled))
/// and the batch returns as soon as the items already running finish.
/// Items are checked one at a time, so an item shorter than 100 ms means the
/// batch stops within 100 ms. Async batches are woken by the cancel and abort
/// their running items at once.
///
/// ```
/// use torque_parallel::CancelToken;
///
/// let token = CancelToken::new();
/// let other = token.clone();
/// other.cancel();
/// assert!(token.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Async batches waiting on this token; woken by `cancel`.
    wakers: Mutex<Vec<Waker>>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every batch that uses this token (or a clone of it).
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *self.0.wakers.lock());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether [`cancel`](CancelToken::cancel) was called.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        // Relaxed is enough for a stop flag: an item started just after the
        // store is allowed; Release/Acquire would only order unrelated data.
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// Asks to be woken by [`cancel`](CancelToken::cancel). Returns `false`
    /// (and registers nothing) when the token is already cancelled.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn register(&self, waker: &Waker) -> bool {
        let mut wakers = self.0.wakers.lock();
        // Checked under the lock: `cancel` stores the flag before it takes
        // the wakers, so a waker pushed here is either taken or sees the flag.
        if self.0.cancelled.load(Ordering::Acquire) {
            return false;
        }
        // One entry per registration, even for equal wakers: batches polled
        // by one task (a `join!`) share its waker, and the first to finish
        // unregisters only its own entry, not the others'. Each batch keeps
        // at most one registration (`keep_registered`), so this stays as
        // small as the number of waiting batches.
        wakers.push(waker.clone());
        true
    }

    /// Keeps `waker` registered in place of `registered` (the waker this
    /// future registered before, if any): a poll with a new waker swaps the
    /// registration. If the token was cancelled meanwhile, nothing is
    /// registered and `waker` is woken at once, so that the caller polls
    /// again and sees the cancel.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn keep_registered(&self, registered: &mut Option<Waker>, waker: &Waker) {
        if registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        if let Some(old) = registered.take() {
            self.unregister(&old);
        }
        if self.register(waker) {
            *registered = Some(waker.clone());
        } else {
            waker.wake_by_ref();
        }
    }

    /// Forgets a waker given to [`register`](CancelToken::register): one
    /// entry of it, the others registered by other batches of the same task
    /// stay.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn unregister(&self, waker: &Waker) {
        let mut wakers = self.0.wakers.lock();
        if let Some(i) = wakers.iter().position(|w| w.will_wake(waker)) {
            wakers.swap_remove(i);
        }
    }
}
