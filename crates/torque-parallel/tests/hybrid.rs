//! The `Hybrid` strategy: a CPU stage on rayon feeding an I/O stage of
//! tokio tasks, with order kept, errors from either stage, and a bounded
//! buffer between them.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep};
use torque_parallel::{CancelToken, ItemError, Processor};

mod common;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn order_is_kept_and_errors_come_from_either_stage() {
    let p = Processor::builder()
        .cpu_threads(2)
        .async_limit(4)
        .build()
        .unwrap();
    let out = p
        .hybrid()
        .try_map(
            (0..100u32).collect::<Vec<_>>(),
            |x| {
                assert!(x != 13, "cpu thirteen");
                if x == 20 {
                    Err("cpu twenty")
                } else {
                    Ok(x * 2)
                }
            },
            |y| async move {
                sleep((y % 5) * MS).await;
                assert!(y != 60, "io thirty");
                if y == 80 { Err("io forty") } else { Ok(y + 1) }
            },
        )
        .await;
    assert_eq!(out.len(), 100);
    for (i, r) in out.iter().enumerate() {
        match i {
            13 => {
                assert!(matches!(r, Err(ItemError::Panicked(p)) if p.message() == "cpu thirteen"))
            }
            20 => assert!(matches!(r, Err(ItemError::Failed("cpu twenty")))),
            30 => assert!(matches!(r, Err(ItemError::Panicked(p)) if p.message() == "io thirty")),
            40 => assert!(matches!(r, Err(ItemError::Failed("io forty")))),
            _ => assert_eq!(*r.as_ref().unwrap(), i as u32 * 2 + 1),
        }
    }
    let s = p.stats().io;
    assert_eq!((s.panicked, s.queued, s.in_flight), (2, 0, 0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_io_stage_holds_back_the_cpu_stage() {
    const BUFFER: usize = 3;
    const LIMIT: usize = 2;
    let p = Processor::builder()
        .cpu_threads(2)
        .hybrid_buffer(BUFFER)
        .async_limit(LIMIT)
        .build()
        .unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let worst = Arc::new(Mutex::new((0usize, 0usize)));
    let counting = {
        let pulled = Arc::clone(&pulled);
        (0..60u32).inspect(move |_| {
            pulled.fetch_add(1, SeqCst);
        })
    };
    let (d, w, pl, proc) = (
        Arc::clone(&done),
        Arc::clone(&worst),
        Arc::clone(&pulled),
        p.clone(),
    );
    let out = p
        .hybrid()
        .map(
            counting,
            |x| x,
            move |x| {
                let (d, w, pl) = (Arc::clone(&d), Arc::clone(&w), Arc::clone(&pl));
                let queued = proc.stats().io.queued;
                async move {
                    {
                        let mut w = w.lock().unwrap();
                        let ahead = pl.load(SeqCst) - d.load(SeqCst);
                        *w = (w.0.max(ahead), w.1.max(queued));
                    }
                    sleep(10 * MS).await;
                    d.fetch_add(1, SeqCst);
                    x
                }
            },
        )
        .await;
    assert_eq!(out.len(), 60);
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == i as u32)
    );
    let (ahead, queued) = *worst.lock().unwrap();
    // Taken and not done: the buffer, the I/O stage's limit and the item
    // waiting for a permit.
    assert!(ahead <= BUFFER + LIMIT + 1, "{ahead} items ahead");
    assert!(queued <= BUFFER, "{queued} queued");
    assert_eq!(p.stats().io.queued, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cancelled_hybrid_batch_stops_within_100ms() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .async_limit(4)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let t = token.clone();
    tokio::spawn(async move {
        sleep(20 * MS).await;
        t.cancel();
    });
    let start = Instant::now();
    let out = p
        .hybrid()
        .map(
            0..10_000u32,
            |x| x,
            |x| async move {
                sleep(60_000 * MS).await;
                x
            },
        )
        .await;
    assert!(start.elapsed() <= 100 * MS);
    assert!(
        out.iter()
            .all(|r| r.as_ref().is_err_and(ItemError::is_cancelled))
    );
    assert_eq!(p.stats().io.in_flight, 0);
}

/// Regression: `as_completed_stream` lost the items a cancel caught between
/// the stages (CPU part done, I/O part never started): they came out
/// neither as results nor as `Cancelled`, so a consumer of the stream never
/// heard of them (`map` papered over the gaps, but not over a trailing one).
#[tokio::test(flavor = "current_thread")]
async fn regression_as_completed_stream_yields_every_item_a_cancel_catches_between_stages() {
    use futures_util::StreamExt;

    const BUFFER: usize = 4;
    // With one permit the I/O stage runs one item and holds one more
    // waiting for the permit; the CPU stage fills its buffer again after
    // the first hand-over only: BUFFER + 1 items leave the input, all of
    // them before the cancel below.
    const N: usize = BUFFER + 1;
    let token = CancelToken::new();
    let p = Processor::builder()
        .cpu_threads(2)
        .hybrid_buffer(BUFFER)
        .async_limit(1)
        .build()
        .unwrap()
        .with_cancel(token.clone());
    let (cpu_done_tx, cpu_done) = tokio::sync::watch::channel(0usize);
    let t = token.clone();
    let stream = p.hybrid().as_completed_stream(
        futures_util::stream::iter(0..N),
        move |x| {
            cpu_done_tx.send_modify(|n| *n += 1);
            Ok::<_, std::convert::Infallible>(x)
        },
        move |x| {
            let t = t.clone();
            let mut cpu_done = cpu_done.clone();
            async move {
                // The first item to reach the I/O stage holds the only
                // permit until every CPU part is done, then cancels: the
                // other items sit between the stages (or wait for the
                // permit) when the batch stops.
                cpu_done.wait_for(|&n| n == N).await.unwrap();
                t.cancel();
                std::future::pending::<()>().await;
                Ok(x)
            }
        },
    );
    let out: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect())
        .await
        .expect("the cancelled stream ends");
    let mut indices: Vec<usize> = out.iter().map(|(i, _)| *i).collect();
    indices.sort_unstable();
    assert_eq!(
        indices,
        (0..N).collect::<Vec<_>>(),
        "each item once: {out:?}"
    );
    let cancelled = out
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(ItemError::is_cancelled))
        .count();
    let succeeded = out.iter().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(cancelled + succeeded, N, "results or Cancelled: {out:?}");
    let stats = p.stats().io;
    assert_eq!(stats.cancelled as usize, cancelled, "{stats:?}");
    assert_eq!(stats.queued, 0, "{stats:?}");
}

/// A `Hybrid` batch awaited inside a `Cpu` item (a `block_on` on the
/// item's thread) spawned its CPU stage onto the pool whose worker was
/// blocked waiting for it: with one CPU thread, and whenever every worker
/// was so blocked, no CPU job ever ran and the batches deadlocked. From a
/// rayon worker the CPU stage now runs on that thread.
#[test]
fn regression_a_hybrid_batch_awaited_inside_a_cpu_item_does_not_deadlock() {
    let p = Processor::builder().cpu_threads(1).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let q = p.clone();
    std::thread::spawn(move || {
        // 4 items of a whole batch each: parallel after the first.
        let items: Vec<u64> = (0..4).collect();
        let out = q.map(&items, |&x| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let out = rt.block_on(q.hybrid().map(
                vec![x, x + 1],
                |v| v * 2,
                |u| async move { u + 1 },
            ));
            out.into_iter().map(Result::unwrap).sum::<u64>()
        });
        let _ = tx.send(out);
    });
    let mut out = None;
    common::wait_until(Duration::from_secs(10), || {
        out = rx.try_recv().ok();
        out.is_some()
    });
    let sums: Vec<u64> = out.unwrap().into_iter().map(Result::unwrap).collect();
    assert_eq!(sums, [4, 8, 12, 16]);
    assert_eq!(p.stats().parallel_runs, 1, "the items ran on the worker");
}
