//! Helpers shared by the integration tests (each test binary uses some).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Waits for `cond`, failing the test after `limit` rather than hanging.
pub(crate) fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        std::thread::yield_now();
    }
}

/// [`wait_until`] from a task: yields to the runtime between looks (so
/// the batch under test makes progress on the same thread) instead of
/// sleeping, and fails the test after `limit` of real time.
pub(crate) async fn wait_until_async(limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Keeps this thread busy for `d`: an item of a known cost. (A sleeping item
/// gives its core away, so other work runs meanwhile and a parallel run's
/// timing measures the sleep, not the work.)
pub(crate) fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Holds the only blocking thread of `processor` with another batch's job
/// (weight 1) until the returned sender is used (or dropped).
pub(crate) fn hold_the_only_worker(
    processor: &torque_parallel::Processor,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let other = processor.clone();
    let holder = std::thread::spawn(move || {
        other.blocking().map(vec![()], move |()| {
            started_tx.send(()).unwrap();
            let _ = release_rx.lock().unwrap().recv();
        });
    });
    started_rx.recv().unwrap();
    (release_tx, holder)
}

/// The message of every panic a test provokes on purpose with
/// [`quiet_bad_items`] in place.
pub(crate) const BAD: &str = "bad item";

/// Keeps the panic hook quiet for panics with the message [`BAD`]
/// (thousands of them in some tests, each a backtrace under
/// `RUST_BACKTRACE`); any other panic is reported as usual.
pub(crate) fn quiet_bad_items() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload_as_str() != Some(BAD) {
                default(info);
            }
        }));
    });
}

/// How long a scenario that could deadlock may take before the test says
/// so: a liveness bound, not a timing assertion (each finishes in
/// milliseconds).
pub(crate) const LIVENESS: Duration = Duration::from_secs(60);

/// Runs `scenario` on a thread of its own and returns its result, failing
/// with `deadlock` if it has not finished within [`LIVENESS`] (the thread
/// is left behind; the test binary exits without it).
pub(crate) fn live<T: Send + 'static>(
    deadlock: &str,
    scenario: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(scenario());
    });
    match rx.recv_timeout(LIVENESS) {
        Ok(out) => {
            worker.join().unwrap();
            out
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(worker.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("deadlocked (no result in {LIVENESS:?}): {deadlock}")
        }
    }
}

/// Whether this is a thread of a processor's own rayon pool.
pub(crate) fn on_rayon() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("torque-cpu-"))
}

/// On a rayon thread, what `slot` holds, taken (so only the first such
/// item gets it); `None` elsewhere.
pub(crate) fn take_on_rayon<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    on_rayon().then(|| slot.lock().unwrap().take()).flatten()
}

/// Blocks this thread on `fut` with a current-thread runtime, as a caller
/// inside a `Cpu` item or a blocking job would.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(fut)
}

/// A processor whose `Cpu` batches go to rayon after their first item.
pub(crate) fn eager(cpu_threads: usize, blocking_threads: usize) -> torque_parallel::Processor {
    eager_builder(cpu_threads, blocking_threads)
        .build()
        .unwrap()
}

/// [`eager`]'s builder, for more settings.
pub(crate) fn eager_builder(
    cpu_threads: usize,
    blocking_threads: usize,
) -> torque_parallel::ProcessorBuilder {
    torque_parallel::Processor::builder()
        .cpu_threads(cpu_threads)
        .blocking_threads(blocking_threads)
        .parallel_threshold(Duration::from_nanos(1))
        .grain_target(Duration::from_nanos(1))
}
