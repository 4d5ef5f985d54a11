//! Waiters are served first come, first served, with direct hand-off and no
//! barging; a returned connection serves a waiter instead of a new connect.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Fake, assert_sane, quiet, settle, wait_until};
use parking_lot::Mutex;

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (p, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let pool = p;
            let conn = pool.get().await.unwrap();
            order.lock().push(i);
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(conn);
        }));
        // Make arrival order certain before the next one starts.
        wait_until(Duration::from_secs(1), || pool.status().waiting == i + 1).await;
    }
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock(), (0..10).collect::<Vec<_>>());
    assert_eq!(fake.creates(), 1, "one connection served everyone");
    assert_sane(&pool);
}

#[tokio::test(start_paused = true)]
async fn a_returned_connection_goes_to_the_oldest_waiter_not_a_newcomer() {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get().await })
    };
    wait_until(Duration::from_secs(1), || pool.status().waiting == 1).await;
    let id = held.id;
    drop(held);
    // Handed over on return: nothing idles for a newcomer to grab.
    let s = pool.status();
    assert_eq!((s.idle, s.in_use, s.waiting), (0, 1, 0), "{s:?}");
    let newcomer = tokio::time::timeout(Duration::from_millis(10), pool.get()).await;
    assert!(newcomer.is_err(), "the newcomer waited");
    assert_eq!(waiter.await.unwrap().unwrap().id, id);
}

/// HikariCP's spike behaviour: 50 requests at once on 5 warm connections with
/// slow connects are served by the warm connections coming back, not by 45
/// new connections.
#[tokio::test(start_paused = true)]
async fn a_spike_is_served_by_returns_not_by_new_connections() {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(50).min_idle(5).build().unwrap();
    wait_until(Duration::from_secs(1), || pool.status().idle == 5).await;
    fake.set_create_delay(Duration::from_millis(150));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let conn = pool.get().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(conn);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    assert!(took <= Duration::from_millis(30), "spike took {took:?}");
    settle().await;
    assert!(
        fake.creates() <= 5 + 2,
        "{} connects for the spike",
        fake.creates() - 5
    );
    assert_sane(&pool);
}

#[tokio::test(start_paused = true)]
async fn refills_to_min_idle_in_the_background() {
    let fake = Fake::default();
    let pool = quiet(&fake).max_size(10).min_idle(3).build().unwrap();
    wait_until(Duration::from_secs(1), || pool.status().idle == 3).await;
    let a = pool.get().await.unwrap();
    wait_until(Duration::from_secs(2), || pool.status().idle == 3).await;
    assert_eq!(pool.status().size, 4);
    drop(a);
    assert_eq!(pool.status().idle, 4);
}
