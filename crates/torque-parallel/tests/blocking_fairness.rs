//! Fairness of the `Blocking` strategy's admission under a memory budget:
//! once an item waits for room, later arrivals do not pass it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use torque_parallel::{CancelToken, ItemError, Processor};

const BUDGET: u64 = 10;
/// Two light items fit together; a light one and the heavy one do not.
const LIGHT: u64 = 4;
const HEAVY: u64 = BUDGET;
/// Fires only when something hangs.
const LIVENESS: Duration = Duration::from_secs(10);

/// Polls `fut` once, as a runtime would when it first spawns it.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

type Light = Pin<Box<dyn Future<Output = Vec<Result<(), ItemError<Infallible>>>> + Send>>;

/// One light item in a batch of its own, holding `LIGHT` of the budget until
/// its gate opens (or its opener is dropped).
fn light(p: &Processor) -> (mpsc::Sender<()>, Light) {
    let (open, gate) = mpsc::channel::<()>();
    let batch = p.blocking().map_weighted_async(
        vec![gate],
        |_| LIGHT,
        |gate: mpsc::Receiver<()>| {
            let _ = gate.recv();
            Ok::<(), Infallible>(())
        },
    );
    (open, Box::pin(batch))
}

/// Regression: a heavy item waited behind a stream of light items from
/// other batches for as long as the stream went on, because each light
/// arrival was admitted while the heavy one waited for the budget to drain
/// (barging). Here a new light item arrives every round and the oldest one
/// finishes, so some light item is always in flight: only a fair (first
/// come, first served) admission lets the heavy item in.
#[tokio::test(flavor = "current_thread")]
async fn regression_a_heavy_item_is_not_starved_by_a_stream_of_light_items() {
    const ROUNDS: usize = 50;
    let p = Processor::builder()
        .blocking_threads(4)
        .queue_capacity(16)
        .memory_budget(BUDGET)
        .build()
        .unwrap();
    let mut lights = VecDeque::new();
    let mut first = light(&p);
    assert!(poll_once(&mut first.1).is_pending(), "held by its gate");
    lights.push_back(first);

    let heavy_ran = Arc::new(AtomicBool::new(false));
    let ran = Arc::clone(&heavy_ran);
    let mut heavy = p.blocking().map_weighted_async(
        vec![()],
        |_| HEAVY,
        move |()| {
            ran.store(true, SeqCst);
            Ok::<(), Infallible>(())
        },
    );
    let mut heavy_out = None;
    let mut rounds = 0;
    while rounds < ROUNDS && !heavy_ran.load(SeqCst) {
        // Light traffic keeps coming...
        let mut next = light(&p);
        assert!(poll_once(&mut next.1).is_pending(), "held by its gate");
        lights.push_back(next);
        if rounds == 0 {
            // ... the heavy item arrives while two light ones are in flight ...
            assert!(poll_once(&mut heavy).is_pending(), "no room for it yet");
        }
        // ... and the oldest light item finishes, giving its weight back.
        let (open, oldest) = lights.pop_front().unwrap();
        open.send(()).unwrap();
        let out = tokio::time::timeout(LIVENESS, oldest)
            .await
            .expect("a light item finishes");
        assert!(matches!(out[..], [Ok(())]), "{out:?}");
        // The heavy batch gets its turn to submit.
        if heavy_out.is_none()
            && let Poll::Ready(out) = poll_once(&mut heavy)
        {
            heavy_out = Some(out);
        }
        rounds += 1;
    }
    assert!(
        heavy_ran.load(SeqCst),
        "the heavy item did not run in {rounds} rounds of light traffic (stats {:?})",
        p.stats()
    );
    let out = match heavy_out {
        Some(out) => out,
        None => tokio::time::timeout(LIVENESS, heavy)
            .await
            .expect("the heavy batch ends"),
    };
    assert!(matches!(out[..], [Ok(())]), "{out:?}");
    // The light stream goes on after it.
    for (open, batch) in lights {
        open.send(()).unwrap();
        let out = tokio::time::timeout(LIVENESS, batch)
            .await
            .expect("a light item finishes");
        assert!(matches!(out[..], [Ok(())]), "{out:?}");
    }
    let stats = p.stats();
    assert_eq!(stats.blocking_in_flight_weight, 0, "{stats:?}");
    assert!(stats.blocking_peak_in_flight_weight <= BUDGET, "{stats:?}");
}

/// A feeder that gives up its place at the head of the line (its batch
/// cancelled, or dropped) lets in at once the items behind it that fit,
/// rather than leaving them to wait for the next job to end.
async fn giving_up_the_head_of_the_line_lets_the_next_in(
    give_up: impl FnOnce(&mut Heavy, &CancelToken),
) {
    let token = CancelToken::new();
    let p = Processor::builder()
        .blocking_threads(2)
        .memory_budget(BUDGET)
        .build()
        .unwrap();
    // One light item holds its weight for the whole test.
    let (hold, mut held) = light(&p);
    assert!(poll_once(&mut held).is_pending());
    let mut heavy: Heavy = Box::pin(p.with_cancel(token.clone()).blocking().map_weighted_async(
        vec![()],
        |_| HEAVY,
        |()| Ok::<(), Infallible>(()),
    ));
    assert!(poll_once(&mut heavy).is_pending(), "no room for it");
    // This one would fit, but waits behind the heavy item.
    let (open, next) = light(&p);
    open.send(()).unwrap();
    let mut next = next;
    assert!(poll_once(&mut next).is_pending());
    give_up(&mut heavy, &token);
    let out = tokio::time::timeout(LIVENESS, next)
        .await
        .expect("the item behind the heavy one gets in while the first light one holds");
    assert!(matches!(out[..], [Ok(())]), "{out:?}");
    hold.send(()).unwrap();
    let out = tokio::time::timeout(LIVENESS, held).await.unwrap();
    assert!(matches!(out[..], [Ok(())]), "{out:?}");
    assert_eq!(p.stats().blocking_in_flight_weight, 0);
}

type Heavy = Pin<Box<dyn Future<Output = Vec<Result<(), ItemError<Infallible>>>> + Send>>;

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_batch_at_the_head_of_the_line_lets_the_next_in() {
    giving_up_the_head_of_the_line_lets_the_next_in(|heavy, token| {
        token.cancel();
        // Polled after the cancel (the token would wake its task).
        match poll_once(heavy) {
            Poll::Ready(out) => assert!(matches!(out[..], [Err(ItemError::Cancelled)]), "{out:?}"),
            Poll::Pending => panic!("a cancelled batch waiting for room ends at once"),
        }
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_batch_at_the_head_of_the_line_lets_the_next_in() {
    giving_up_the_head_of_the_line_lets_the_next_in(|heavy, _| {
        *heavy = Box::pin(std::future::pending());
    })
    .await;
}

/// Records its wake-ups, to tell whether a future asks to be polled again
/// (a runtime's timer would poll it anyway, hiding a lost wake-up).
struct Notify(std::sync::Mutex<mpsc::Sender<()>>);

impl std::task::Wake for Notify {
    fn wake(self: Arc<Self>) {
        let _ = self.0.lock().unwrap().send(());
    }
}

/// Regression: a cancel that landed during a batch's first poll, after its
/// item had joined the wait line, left the batch pending and never woken
/// until room freed up (here: until another batch's job ended), not within
/// the cancel bound. The poll saw the cancel only after the wait line, took
/// the batch's queued jobs back and stopped listening to the token, but left
/// its own job in the line, where only an admission would wake it. The
/// weigher cancels, to land a cancel from elsewhere in that window
/// deterministically.
#[test]
fn regression_a_cancel_during_the_first_poll_ends_a_batch_waiting_for_room() {
    let token = CancelToken::new();
    let p = Processor::builder()
        .blocking_threads(2)
        .memory_budget(BUDGET)
        .build()
        .unwrap();
    // Another batch holds part of the budget until the end of the test.
    let (hold, mut held) = light(&p);
    assert!(poll_once(&mut held).is_pending(), "held by its gate");
    let cancel = token.clone();
    let mut batch = p.with_cancel(token).blocking().map_weighted_async(
        vec![()],
        move |_| {
            cancel.cancel();
            HEAVY
        },
        |()| Ok::<(), Infallible>(()),
    );
    let (woken_tx, woken) = mpsc::channel();
    let waker = Waker::from(Arc::new(Notify(std::sync::Mutex::new(woken_tx))));
    let out = loop {
        if let Poll::Ready(out) = Pin::new(&mut batch).poll(&mut Context::from_waker(&waker)) {
            break out;
        }
        woken
            .recv_timeout(LIVENESS)
            .expect("a cancelled batch is woken while another batch holds the room it waits for");
    };
    assert!(matches!(out[..], [Err(ItemError::Cancelled)]), "{out:?}");
    hold.send(()).unwrap();
    let (done_tx, done) = mpsc::channel();
    let waker = Waker::from(Arc::new(Notify(std::sync::Mutex::new(done_tx))));
    let out = loop {
        if let Poll::Ready(out) = held.as_mut().poll(&mut Context::from_waker(&waker)) {
            break out;
        }
        done.recv_timeout(LIVENESS)
            .expect("the light item finishes");
    };
    assert!(matches!(out[..], [Ok(())]), "{out:?}");
    assert_eq!(p.stats().blocking_in_flight_weight, 0);
}

/// A waker that, on its first wake-up, reports it and holds the waking
/// thread until told to go: it parks a worker between finishing a job and
/// taking the next one from the queue.
struct Stall {
    entered: std::sync::Mutex<mpsc::Sender<()>>,
    go: std::sync::Mutex<mpsc::Receiver<()>>,
    once: AtomicBool,
}

impl std::task::Wake for Stall {
    fn wake(self: Arc<Self>) {
        if !self.once.swap(true, SeqCst) {
            let _ = self.entered.lock().unwrap().send(());
            let _ = self.go.lock().unwrap().recv_timeout(LIVENESS);
        }
    }
}

/// One item in a batch of its own that reports when it starts (`started`)
/// and then holds its worker until its gate opens (or its opener is
/// dropped).
fn gated(p: &Processor, started: &mpsc::Sender<()>) -> (mpsc::Sender<()>, Light) {
    let (open, gate) = mpsc::channel::<()>();
    let started = std::sync::Mutex::new(started.clone());
    let batch = p
        .blocking()
        .try_map_async(vec![gate], move |gate: mpsc::Receiver<()>| {
            let _ = started.lock().unwrap().send(());
            let _ = gate.recv();
            Ok::<(), Infallible>(())
        });
    (open, Box::pin(batch))
}

/// Regression: a job waiting in line for room in the queue was admitted
/// only when some job ended, not when a worker took a job out of the queue.
/// Two workers that ended their jobs while the queue was full (no room for
/// the waiting one) then shared out the one queued job: one of them took
/// it, the other found the queue empty and went idle, while the waiting job
/// stayed in line until some job ended — here, never before the job running
/// alongside ends, so the second worker sat idle with work waiting.
#[test]
fn regression_a_job_waiting_for_queue_room_gets_in_when_a_worker_takes_the_queued_one() {
    let p = Processor::builder()
        .blocking_threads(2)
        .queue_capacity(1)
        .build()
        .unwrap();
    let (started_tx, started) = mpsc::channel();
    let wait_start = |what: &str| {
        started
            .recv_timeout(LIVENESS)
            .unwrap_or_else(|_| panic!("{what} starts"));
    };
    // Both workers busy; the worker that ends the first job will stall in
    // that batch's wake-up, before it looks at the queue again.
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let stall = Waker::from(Arc::new(Stall {
        entered: std::sync::Mutex::new(entered_tx),
        go: std::sync::Mutex::new(go_rx),
        once: AtomicBool::new(false),
    }));
    let (open_a, mut a) = gated(&p, &started_tx);
    assert!(
        a.as_mut()
            .poll(&mut Context::from_waker(&stall))
            .is_pending()
    );
    wait_start("the first job");
    let (open_b, mut b) = gated(&p, &started_tx);
    assert!(poll_once(&mut b).is_pending());
    wait_start("the second job");
    // The queue holds one job; the next waits in line for room.
    let (open_queued, mut queued) = gated(&p, &started_tx);
    assert!(poll_once(&mut queued).is_pending());
    assert_eq!(p.stats().blocking_queued, 1);
    let (open_waiting, mut waiting) = gated(&p, &started_tx);
    assert!(poll_once(&mut waiting).is_pending());
    // The first job ends; its worker stalls with the queue still full.
    open_a.send(()).unwrap();
    entered.recv_timeout(LIVENESS).expect("the first job ends");
    // The second job ends; its worker takes the queued job.
    open_b.send(()).unwrap();
    wait_start("the queued job");
    // The stalled worker goes on and finds the queue empty: the waiting job
    // must have got in when the queued one left the queue, to run now.
    go.send(()).unwrap();
    wait_start("the job that waited for queue room, beside the one that was queued");
    for open in [open_queued, open_waiting] {
        open.send(()).unwrap();
    }
    let (done_tx, done) = mpsc::channel();
    let waker = Waker::from(Arc::new(Notify(std::sync::Mutex::new(done_tx))));
    for batch in [&mut a, &mut b, &mut queued, &mut waiting] {
        let out = loop {
            if let Poll::Ready(out) = batch.as_mut().poll(&mut Context::from_waker(&waker)) {
                break out;
            }
            done.recv_timeout(LIVENESS).expect("the batch ends");
        };
        assert!(matches!(out[..], [Ok(())]), "{out:?}");
    }
    assert_eq!(p.stats().blocking_queued, 0);
}

/// Polls `fut` on this thread until it is ready, or gives up (`None`) when
/// it is not woken within `limit`.
fn block_on_for<F: Future + Unpin>(mut fut: F, limit: Duration) -> Option<F::Output> {
    let (woken_tx, woken) = mpsc::channel();
    let waker = Waker::from(Arc::new(Notify(std::sync::Mutex::new(woken_tx))));
    loop {
        if let Poll::Ready(out) = Pin::new(&mut fut).poll(&mut Context::from_waker(&waker)) {
            return Some(out);
        }
        woken.recv_timeout(limit).ok()?;
    }
}

/// Regression: a `map_async` batch awaited inside a blocking job queued its
/// items like any other batch, so once admission became first come, first
/// served they waited behind a heavy item that itself waited for the job's
/// weight: a deadlock (before, the nested item slipped past when it fit). A
/// batch started from inside a blocking job runs inline on that job's
/// thread, as the synchronous `map` already did.
#[test]
fn regression_a_map_async_awaited_inside_a_blocking_job_runs_inline() {
    let p = Processor::builder()
        .blocking_threads(2)
        .memory_budget(BUDGET)
        .build()
        .unwrap();
    let (started_tx, started) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let (started_tx, go) = (std::sync::Mutex::new(started_tx), std::sync::Mutex::new(go));
    let inner = p.clone();
    let mut outer = p.blocking().map_weighted_async(
        vec![()],
        |_| LIGHT,
        move |()| {
            started_tx.lock().unwrap().send(()).unwrap();
            let _ = go.lock().unwrap().recv();
            let nested = inner.blocking().map_async(vec![1u32, 2], |x| x + 1);
            Ok::<_, Infallible>(block_on_for(nested, LIVENESS))
        },
    );
    assert!(poll_once(&mut outer).is_pending());
    started
        .recv_timeout(LIVENESS)
        .expect("the outer job starts");
    // A heavy item waits for the outer job's weight.
    let mut heavy =
        p.blocking()
            .map_weighted_async(vec![()], |_| HEAVY, |()| Ok::<(), Infallible>(()));
    assert!(poll_once(&mut heavy).is_pending(), "no room for it yet");
    go_tx.send(()).unwrap();
    let out = block_on_for(outer, LIVENESS).expect("the outer batch ends");
    let nested = match &out[..] {
        [Ok(nested)] => nested.as_ref().expect("the nested batch ends"),
        other => panic!("{other:?}"),
    };
    assert!(matches!(nested[..], [Ok(2), Ok(3)]), "{nested:?}");
    let out = block_on_for(heavy, LIVENESS).expect("the heavy batch ends");
    assert!(matches!(out[..], [Ok(())]), "{out:?}");
    assert_eq!(p.stats().blocking_in_flight_weight, 0);
}

type NestedOut = Vec<Result<u32, ItemError<Infallible>>>;
type Nested = Pin<Box<dyn Future<Output = NestedOut> + Send>>;
/// The awaited future's results (`None`: not woken within `LIVENESS`) and
/// the pool's stats at the end of the job that awaited it.
type Awaited = (Option<NestedOut>, torque_parallel::Stats);
type Awaiting = Pin<Box<dyn Future<Output = Vec<Result<Awaited, ItemError<Infallible>>>> + Send>>;

/// A job on `p` that awaits there (`block_on`) the future it is handed,
/// then reports the pool's stats. Returns, once the job has started, the
/// sender to hand the future over and the job's batch.
fn awaiting_job(p: &Processor) -> (mpsc::Sender<Nested>, Awaiting) {
    let (started_tx, started) = mpsc::channel();
    let (hand_over, handed) = mpsc::channel::<Nested>();
    let started_tx = std::sync::Mutex::new(started_tx);
    let inner = p.clone();
    let mut job =
        p.blocking()
            .try_map_async(vec![handed], move |handed: mpsc::Receiver<Nested>| {
                started_tx.lock().unwrap().send(()).unwrap();
                let nested = handed.recv().expect("a future is handed over");
                let out = block_on_for(nested, LIVENESS);
                Ok::<_, Infallible>((out, inner.stats()))
            });
    assert!(poll_once(&mut job).is_pending());
    started
        .recv_timeout(LIVENESS)
        .expect("the awaiting job starts");
    (hand_over, Box::pin(job))
}

/// `map_async` of three items weighing `weight` each on `p` (one blocking
/// thread), polled off the pool until its second item waits for room, then
/// handed to a job on the only worker that awaits it there; another batch
/// waits in line behind it.
fn a_future_moved_onto_the_only_worker_while_waiting_for_room(p: &Processor, weight: u64) {
    let (hand_over, outer) = awaiting_job(p);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let mut nested: Nested = Box::pin(p.blocking().map_weighted_async(
        vec![1u32, 2, 3],
        move |_| weight,
        move |x| {
            counted.fetch_add(1, SeqCst);
            Ok::<_, Infallible>(x + 1)
        },
    ));
    // Polled off the pool: its first item is queued, the second waits for
    // room (the third is not submitted yet).
    assert!(poll_once(&mut nested).is_pending());
    assert_eq!(p.stats().blocking_queued, 1);
    // Another batch arrives behind it in the line.
    let mut behind = p
        .blocking()
        .try_map_async(vec![()], |()| Ok::<(), Infallible>(()));
    assert!(poll_once(&mut behind).is_pending());
    hand_over.send(nested).unwrap();
    let out = block_on_for(outer, 2 * LIVENESS).expect("the outer batch ends");
    let (nested, stats_in_job) = match &out[..] {
        [Ok((nested, stats))] => (
            nested
                .as_ref()
                .expect("the future handed to the only worker ends there"),
            stats,
        ),
        other => panic!("{other:?}"),
    };
    assert!(matches!(nested[..], [Ok(2), Ok(3), Ok(4)]), "{nested:?}");
    assert_eq!(runs.load(SeqCst), 3, "each item runs once");
    // The batch behind got in once the future left the line (and its item
    // the queue), while the awaiting job still ran.
    assert_eq!(stats_in_job.blocking_queued, 1, "{stats_in_job:?}");
    let out = block_on_for(behind, LIVENESS).expect("the batch behind ends");
    assert!(matches!(out[..], [Ok(())]), "{out:?}");
    let stats = p.stats();
    assert_eq!(stats.blocking_in_flight_weight, 0, "{stats:?}");
    assert_eq!(stats.blocking_queued, 0, "{stats:?}");
    if let Some(budget) = p.config().memory_budget {
        assert!(stats.blocking_peak_in_flight_weight <= budget, "{stats:?}");
    }
}

/// Regression: a `map_async` future first polled off the pool (on a
/// runtime), where its next item joined the wait line for queue room, and
/// then awaited inside a blocking job (handed to it and `block_on`ed there)
/// skipped the inline path, which was only for a future not in the line: it
/// waited on the worker for room that only a worker frees, and for its own
/// item queued before it. With the pool's only worker the one waiting, that
/// was for ever. Polled on a worker, the future now takes its job back out
/// of the line and its queued job out of the queue, and runs them and the
/// rest of its items there.
#[test]
fn regression_a_map_async_future_moved_onto_a_worker_while_waiting_for_room_runs_inline() {
    let p = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    a_future_moved_onto_the_only_worker_while_waiting_for_room(&p, 1);
}

/// The same, with the item waiting for the memory budget rather than for
/// queue room: it runs on the worker too, and the weight of the queued item
/// taken back is given back once it has run there.
#[test]
fn regression_a_map_async_future_moved_onto_a_worker_while_waiting_for_weight_runs_inline() {
    let p = Processor::builder()
        .blocking_threads(1)
        .memory_budget(BUDGET)
        .build()
        .unwrap();
    // The awaiting job weighs 1: with it, one item fits and two do not.
    a_future_moved_onto_the_only_worker_while_waiting_for_room(&p, BUDGET / 2);
}

/// A future handed to a worker while room frees elsewhere (another worker
/// ends its job and takes the future's queued item, letting its waiting one
/// in): whichever comes first, admission or the worker taking the job back,
/// each item runs once, the batch ends, and all weight is given back.
#[test]
fn a_future_moved_onto_a_worker_as_room_frees_runs_each_item_once() {
    const ROUNDS: usize = 50;
    for round in 0..ROUNDS {
        let p = Processor::builder()
            .blocking_threads(2)
            .queue_capacity(1)
            .build()
            .unwrap();
        let (hand_over, outer) = awaiting_job(&p);
        // The other worker is busy until `open`.
        let (started_tx, started) = mpsc::channel();
        let (open, mut other) = gated(&p, &started_tx);
        assert!(poll_once(&mut other).is_pending());
        started
            .recv_timeout(LIVENESS)
            .expect("the other job starts");
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let mut nested: Nested = Box::pin(p.blocking().map_async(vec![1u32, 2, 3], move |x| {
            counted.fetch_add(1, SeqCst);
            x + 1
        }));
        assert!(poll_once(&mut nested).is_pending());
        // Room frees on the other worker as this one takes the future (in
        // turn one or the other told first, to vary who wins).
        if round % 2 == 0 {
            open.send(()).unwrap();
            hand_over.send(nested).unwrap();
        } else {
            hand_over.send(nested).unwrap();
            open.send(()).unwrap();
        }
        let out = block_on_for(outer, 2 * LIVENESS).expect("the outer batch ends");
        let nested = match &out[..] {
            [Ok((Some(nested), _))] => nested,
            other => panic!("round {round}: {other:?}"),
        };
        assert!(
            matches!(nested[..], [Ok(2), Ok(3), Ok(4)]),
            "round {round}: {nested:?}"
        );
        assert_eq!(runs.load(SeqCst), 3, "round {round}: each item runs once");
        let out = block_on_for(other, LIVENESS).expect("the other batch ends");
        assert!(matches!(out[..], [Ok(())]), "{out:?}");
        let stats = p.stats();
        assert_eq!(
            stats.blocking_in_flight_weight, 0,
            "round {round}: {stats:?}"
        );
        assert_eq!(stats.blocking_queued, 0, "round {round}: {stats:?}");
    }
}

/// Feeders behind the head of the wait line are found by their own
/// ticket: one that gives up its place takes only its own job out of the
/// line, and one polled again with another waker replaces only its own.
/// Here B, behind A, is polled with a new waker and then dropped; A must
/// still be admitted, woken through its own waker, and run its item.
#[test]
fn a_feeder_behind_the_head_of_the_line_withdraws_and_rewakes_only_itself() {
    let p = Processor::builder()
        .blocking_threads(2)
        .memory_budget(BUDGET)
        .build()
        .unwrap();
    // Two light items hold 8 of the budget of 10 until their gates open.
    let (hold_1, mut held_1) = light(&p);
    let (hold_2, mut held_2) = light(&p);
    assert!(poll_once(&mut held_1).is_pending());
    assert!(poll_once(&mut held_2).is_pending());
    // Two more wait in line for the budget, A ahead of B.
    let (open_a, mut a) = light(&p);
    open_a.send(()).unwrap();
    let (a_woken_tx, a_woken) = mpsc::channel();
    let a_waker = Waker::from(Arc::new(Notify(std::sync::Mutex::new(a_woken_tx))));
    assert!(
        a.as_mut()
            .poll(&mut Context::from_waker(&a_waker))
            .is_pending()
    );
    let (_open_b, mut b) = light(&p);
    assert!(poll_once(&mut b).is_pending());
    let (b_woken_tx, _b_woken) = mpsc::channel();
    let b_waker = Waker::from(Arc::new(Notify(std::sync::Mutex::new(b_woken_tx))));
    assert!(
        b.as_mut()
            .poll(&mut Context::from_waker(&b_waker))
            .is_pending(),
        "B, polled again with another waker, still waits"
    );
    drop(b);
    // Room for one more: A gets in, and is told so through its own waker.
    hold_1.send(()).unwrap();
    a_woken
        .recv_timeout(LIVENESS)
        .expect("A is woken when it is admitted");
    let out = block_on_for(a, LIVENESS).expect("A ends");
    assert!(matches!(out[..], [Ok(())]), "A's item ran: {out:?}");
    hold_2.send(()).unwrap();
    for held in [held_1, held_2] {
        let out = block_on_for(held, LIVENESS).expect("the holders end");
        assert!(matches!(out[..], [Ok(())]), "{out:?}");
    }
    let stats = p.stats();
    assert_eq!(
        (stats.blocking_queued, stats.blocking_in_flight_weight),
        (0, 0)
    );
}
