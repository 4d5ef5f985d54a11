//! The seventh review (edge inputs, cancellation races, stats consistency
//! across the strategies, limiters, batching and balancing) found no
//! behaviour that breaks the documentation, only two stale sentences of
//! it; this pins the behaviour the corrected sentence of
//! `AsyncIo::timeout` describes.

use std::time::Duration;

use torque_parallel::Processor;
use torque_parallel::limit::Limiter;

/// `AsyncIo::timeout` said a zero timeout times every item out at once.
/// Like tokio's `timeout`, the item is polled once before the deadline is
/// looked at, so an item that completes on its first poll comes back with
/// its value; every other item times out at once, as an overload.
#[tokio::test(start_paused = true)]
async fn a_zero_timeout_times_out_every_item_that_does_not_complete_on_its_first_poll() {
    let p = Processor::builder().build().unwrap();
    let out = p
        .async_io()
        .timeout(Duration::ZERO)
        .map(0..6u32, |x| async move {
            if x % 2 == 1 {
                tokio::task::yield_now().await;
            }
            x
        })
        .await;
    for (x, result) in out.iter().enumerate() {
        if x % 2 == 0 {
            assert_eq!(result.as_ref().ok(), Some(&(x as u32)), "{out:?}");
        } else {
            assert!(result.as_ref().is_err_and(|e| e.is_timeout()), "{out:?}");
        }
    }
    let io = p.stats().io;
    assert_eq!((io.succeeded, io.timed_out), (3, 3));
    assert_eq!(p.async_io().limiter().stats().overloaded, 3);
}
