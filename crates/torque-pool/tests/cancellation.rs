//! Dropping a `get()` future at any point — while it waits in line, while its
//! connection is being checked, while the connect it triggered is in flight —
//! never leaks a slot or a connection and never wedges other callers
//! (deadpool's `managed_cancellation.rs` matrix, on the paused clock).

mod common;

use std::time::Duration;

use common::{Fake, assert_sane, quiet, settle, wait_until};
use torque_pool::Pool;

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Cancelled while the connect it triggered is in flight.
    Create,
    /// Cancelled while its idle connection is being checked.
    Check,
    /// Cancelled while waiting in line for a connection in use.
    Wait,
}

async fn setup(phase: Phase) -> (Fake, Pool<Fake>, Option<torque_pool::Pooled<Fake>>) {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(1).build().unwrap();
    let mut held = None;
    match phase {
        Phase::Create => fake.set_create_delay(Duration::from_millis(100)),
        Phase::Check => {
            drop(pool.get().await.unwrap());
            tokio::time::sleep(Duration::from_secs(1)).await;
            fake.set_check_delay(Duration::from_millis(100));
        }
        Phase::Wait => held = Some(pool.get().await.unwrap()),
    }
    (fake, pool, held)
}

/// Cancels a `get()` after `after` in `phase`, then checks the pool still
/// serves a caller and accounts for every connection.
async fn cancel_at(phase: Phase, after: Duration) {
    let (fake, pool, held) = setup(phase).await;
    let r = tokio::time::timeout(after, pool.get()).await;
    assert!(r.is_err(), "{phase:?}: cancelled before it finished");
    settle().await;
    assert_sane(&pool);
    match phase {
        Phase::Create => {
            // The connect goes on without its caller and its connection idles.
            wait_until(Duration::from_secs(1), || pool.status().idle == 1).await;
        }
        Phase::Check => {
            let s = pool.status();
            assert_eq!((s.size, s.closed.cancelled), (0, 1), "{phase:?}: {s:?}");
        }
        Phase::Wait => {
            assert_eq!(pool.status().waiting, 0);
            drop(held);
            assert_eq!(pool.status().idle, 1, "not handed to the cancelled waiter");
        }
    }
    fake.set_check_delay(Duration::ZERO);
    fake.set_create_delay(Duration::ZERO);
    let conn = tokio::time::timeout(Duration::from_secs(1), pool.get())
        .await
        .expect("not wedged")
        .expect("served");
    drop(conn);
    let s = pool.status();
    assert_eq!((s.size, s.in_use, s.waiting), (1, 0, 0), "{phase:?}: {s:?}");
}

#[tokio::test(start_paused = true)]
async fn cancel_during_create() {
    for ms in [0, 1, 50, 99] {
        cancel_at(Phase::Create, Duration::from_millis(ms)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_during_check() {
    for ms in [1, 50, 99] {
        cancel_at(Phase::Check, Duration::from_millis(ms)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_during_wait() {
    for ms in [0, 1, 50, 500] {
        cancel_at(Phase::Wait, Duration::from_millis(ms)).await;
    }
}

/// The race: a connection is handed to a waiter in the same instant that
/// waiter's future is dropped. The connection must go on to the next waiter.
#[tokio::test(start_paused = true)]
async fn a_connection_handed_to_a_cancelled_waiter_goes_to_the_next() {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let mut first = Box::pin(pool.get());
    // Poll once so it queues.
    assert!(futures_poll_once(first.as_mut()).await.is_none());
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await.map(|c| c.id) })
    };
    wait_until(Duration::from_secs(1), || pool.status().waiting == 2).await;
    let id = held.id;
    drop(held); // handed to `first`, which is never polled again...
    drop(first); // ...and is dropped with the connection in its channel.
    assert_eq!(second.await.unwrap().unwrap(), id);
    assert_sane(&pool);
}

async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
    let mut f = f;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// A connect that panics gives its slot back: the pool does not shrink for good.
#[tokio::test(start_paused = true)]
async fn a_panicking_connect_gives_its_slot_back() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(1)
        .acquire_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    fake.knobs
        .panic_in_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(pool.get().await.is_err());
    fake.knobs
        .panic_in_create
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(pool.status().size, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pool.get().await.is_ok());
}
