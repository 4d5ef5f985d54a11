//! Reproducers from the third review pass.

use std::time::Duration;

use torque_parallel::balance::{Balancer, Strategy};
use torque_parallel::limit::MockClock;
use torque_parallel::{CancelToken, ItemError, Processor};

/// After a long idle spell the peak-EWMA estimates decay to exactly zero
/// (e^(-elapsed/decay) underflows), every cost is then 0 × (in flight + 1)
/// and power of two choices ignores load: picks land at random.
#[test]
fn peak_ewma_still_balances_load_after_the_estimates_decay_to_zero() {
    let clock = MockClock::new();
    let balancer = Balancer::builder()
        .strategy(Strategy::PeakEwma)
        .seed(1)
        .build_with_clock(vec![0, 1], clock.clone())
        .unwrap();
    // Default decay 10 s: 3 hours idle is e^-1080, below f64's range.
    clock.advance(Duration::from_secs(3 * 3600));
    let held: Vec<_> = (0..100).map(|_| balancer.pick()).collect();
    let loads: Vec<usize> = balancer.stats().iter().map(|s| s.in_flight).collect();
    assert!(
        loads[0].abs_diff(loads[1]) <= 1,
        "two idle backends, 100 concurrent picks: {loads:?}"
    );
    drop(held);
}

/// An item lost in the Hybrid CPU stage by a cancel comes back
/// `Err(Cancelled)` in the result vector but is not counted in
/// `stats().io.cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_cancel_counts_every_cancelled_result() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .cpu_threads(2)
        .hybrid_buffer(4)
        .async_limit(4)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let t = token.clone();
    let batch = p.hybrid().map(
        0..4u32,
        move |x| {
            if x == 0 {
                // Item 0's CPU part ends only after the batch has ended.
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }
            x
        },
        move |x| {
            let t = t.clone();
            async move {
                if x == 1 {
                    t.cancel();
                }
                std::future::pending::<()>().await;
                x
            }
        },
    );
    let out = tokio::time::timeout(Duration::from_secs(10), batch)
        .await
        .expect("the cancelled batch ends");
    release_tx.send(()).unwrap();
    let cancelled_results = out
        .iter()
        .filter(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
        .count();
    assert!(out[0].as_ref().is_err_and(ItemError::is_cancelled));
    let stats = p.stats().io;
    assert_eq!(
        stats.cancelled as usize, cancelled_results,
        "results {out:?}, stats {stats:?}"
    );
    assert_eq!(stats.queued, 0);
}

/// A stream of `as_completed` that its consumer holds without polling (while
/// it awaits another batch of the same processor, the obvious way to follow
/// each result up) keeps a place at the head of the limiter's queue: with
/// limit 1 the other batch never gets the free permit.
#[tokio::test(flavor = "current_thread")]
async fn a_held_as_completed_stream_does_not_block_other_batches() {
    use futures_util::StreamExt;
    let p = Processor::builder().async_limit(1).build().unwrap();
    let mut first = Box::pin(p.async_io().as_completed(0..3u32, |x| async move {
        Ok::<_, std::convert::Infallible>(x)
    }));
    let (index, _) = first.next().await.expect("a first result");
    assert_eq!(index, 0);
    // Follow the result up with another batch while holding the stream.
    let follow_up = p.async_io().map(0..2u32, |x| async move { x });
    let out = tokio::time::timeout(Duration::from_secs(60), follow_up)
        .await
        .expect("the follow-up batch gets the free permit");
    assert_eq!(out.len(), 2);
    let rest: Vec<_> = first.collect().await;
    assert_eq!(rest.len(), 2);
}
