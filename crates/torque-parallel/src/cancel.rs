//! Cooperative cancellation of a batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cancellation flag shared between a batch and whoever may stop it.
///
/// Give it to a processor with [`Processor::with_cancel`](crate::Processor::with_cancel);
/// once [`cancel`](CancelToken::cancel) is called, items that have not started
/// are skipped (they come back as [`ItemError::Cancelled`](crate::ItemError::Cancelled))
/// and the batch returns as soon as the items already running finish.
/// Items are checked one at a time, so an item shorter than 100 ms means the
/// batch stops within 100 ms.
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
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every batch that uses this token (or a clone of it).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`cancel`](CancelToken::cancel) was called.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        // Relaxed is enough for a stop flag: an item started just after the
        // store is allowed; Release/Acquire would only order unrelated data.
        self.0.load(Ordering::Relaxed)
    }
}
