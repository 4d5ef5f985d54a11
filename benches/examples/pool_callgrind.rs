//! Instruction counts of get + return on a no-op manager, ours against
//! deadpool and bb8, for callgrind (repeatable on a shared machine, unlike
//! time):
//!
//! ```text
//! cargo build --release -p torque-benches --example pool_callgrind
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/pool_callgrind MODE TASKS OPS
//! ```
//!
//! MODE: `torque`, `deadpool`, `bb8`, or `fifo_bound` (tokio's FIFO
//! `Semaphore` with 16 permits, the bench's reference). TASKS tasks on a current-thread
//! runtime share a pool of 16 connections, each doing OPS / TASKS rounds of
//! get, hold across one `yield_now`, return (the loop of
//! `benches/pool.rs`). The cost per get + return is the difference in
//! instructions between OPS and 0 operations, divided by OPS. With TASKS <=
//! 16 nobody waits (the uncontended path); above, waiters are handed
//! connections.

use std::time::Duration;

#[allow(dead_code, reason = "this example drives its own loop")]
#[path = "../benches/common/pool_common.rs"]
mod pool_common;
use pool_common::Noop;

const CONNECTIONS: usize = 16;

/// `tasks` tasks doing `per_task` rounds of get, yield, return.
async fn drive<G, F, Fut>(tasks: usize, per_task: usize, get: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = G> + Send,
    G: Send + 'static,
{
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let get = get.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let conn = get().await;
                    tokio::task::yield_now().await;
                    drop(std::hint::black_box(conn));
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: pool_callgrind torque|deadpool|bb8|fifo_bound TASKS OPS";
    let (Some(mode), Some(tasks), Some(ops)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (Ok(tasks), Ok(ops)) = (tasks.parse::<usize>(), ops.parse::<usize>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let per_task = ops.div_ceil(tasks.max(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        match mode.as_str() {
            "torque" => {
                let pool = torque_pool::Pool::builder(Noop)
                    .max_size(CONNECTIONS)
                    .min_idle(CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(30))
                    .build()
                    .expect("pool");
                let warm: Vec<_> =
                    futures_util::future::join_all((0..CONNECTIONS).map(|_| pool.get())).await;
                drop(warm);
                drive(tasks, per_task, move || {
                    let p = pool.clone();
                    async move { p.get().await.expect("get") }
                })
                .await;
            }
            "deadpool" => {
                let pool: deadpool::managed::Pool<Noop> = deadpool::managed::Pool::builder(Noop)
                    .max_size(CONNECTIONS)
                    .build()
                    .expect("pool");
                let warm: Vec<_> =
                    futures_util::future::join_all((0..CONNECTIONS).map(|_| pool.get())).await;
                drop(warm);
                drive(tasks, per_task, move || {
                    let p = pool.clone();
                    async move { p.get().await.expect("get") }
                })
                .await;
            }
            "bb8" => {
                let pool = bb8::Pool::builder()
                    .max_size(CONNECTIONS as u32)
                    .min_idle(Some(CONNECTIONS as u32))
                    .connection_timeout(Duration::from_secs(30))
                    .build(Noop)
                    .await
                    .expect("pool");
                let warm: Vec<_> =
                    futures_util::future::join_all((0..CONNECTIONS).map(|_| pool.get())).await;
                drop(warm);
                drive(tasks, per_task, move || {
                    let p = pool.clone();
                    async move { p.get_owned().await.expect("get") }
                })
                .await;
            }
            "fifo_bound" => {
                // The bench's reference: tokio's FIFO semaphore, no pool.
                let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
                drive(tasks, per_task, move || {
                    let s = sem.clone();
                    async move { s.acquire_owned().await.expect("acquire") }
                })
                .await;
            }
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    });
    println!("{mode} tasks={tasks}: {} gets", per_task * tasks);
}
