//! What the pool benchmarks share: the no-op connection manager and the
//! latency rounds (included with `#[path]` by `benches/pool.rs` and the pool
//! examples: the peers are dev-dependencies, which the package's library
//! cannot use).

use std::hint::black_box;
use std::time::{Duration, Instant};

/// A manager whose connections are numbers: measures the pool alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Noop;

impl torque_pool::Manager for Noop {
    type Connection = u64;
    type Error = std::io::Error;
    async fn create(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
    async fn check(&self, _: &mut u64) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn is_broken(&self, _: &u64) -> bool {
        false
    }
}

impl deadpool::managed::Manager for Noop {
    type Type = u64;
    type Error = std::io::Error;
    async fn create(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
    async fn recycle(
        &self,
        _: &mut u64,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<std::io::Error> {
        Ok(())
    }
}

impl bb8::ManageConnection for Noop {
    type Connection = u64;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
    async fn is_valid(&self, _: &mut u64) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn has_broken(&self, _: &mut u64) -> bool {
        false
    }
}

/// `tasks` tasks doing `per_task` rounds of get, yield, return; every get's
/// latency but the steady state's only: each task's first and last `trim`
/// gets are left out of the latencies returned (the first ones queue behind
/// the start-up burst of all tasks spawned at once, the last ones see the
/// line thin out as other tasks finish).
pub(crate) async fn run_trimmed<G, F, Fut>(
    tasks: usize,
    per_task: usize,
    trim: usize,
    get: F,
) -> Vec<Duration>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = G> + Send,
    G: Send + 'static,
{
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let get = get.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                let conn = get().await;
                lat.push(t.elapsed());
                tokio::task::yield_now().await;
                drop(black_box(conn));
            }
            lat.truncate(per_task.saturating_sub(trim));
            lat.drain(..trim.min(lat.len()));
            lat
        }));
    }
    let mut all = Vec::with_capacity(tasks * per_task);
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}
