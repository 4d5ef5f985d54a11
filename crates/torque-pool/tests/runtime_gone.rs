//! A pool whose runtime has shut down (built in one runtime, used from
//! another: a `static` pool shared by `#[tokio::test]`s, each with its own
//! runtime; an application whose background runtime stopped first). Its
//! tasks cannot run any more; a `get()` must fail, not wait for ever.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{Fake, quiet};
use torque_pool::PoolError;

#[test]
fn a_get_after_the_pools_runtime_shut_down_fails_instead_of_hanging() {
    let fake = Fake::default();
    let building = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = building.block_on(async { quiet(&fake).max_size(2).build().unwrap() });
    drop(building);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        // A connect would be spawned on the pool's runtime, which drops it
        // unrun, and the acquire timeout is the pool's background task's
        // job, gone with that runtime.
        let got = tokio::time::timeout(Duration::from_secs(3600), pool.get()).await;
        let err = got
            .expect("get() hung: the pool's runtime is gone, and its tasks with it")
            .expect_err("no connection can be made");
        assert!(matches!(err, PoolError::Closed), "{err:?}");
        // And so does the next one, at once.
        let again = tokio::time::timeout(Duration::from_secs(3600), pool.get()).await;
        assert!(matches!(again, Ok(Err(PoolError::Closed))), "{again:?}");
        let s = pool.status();
        assert_eq!((s.connecting, s.size, s.waiting), (0, 0, 0), "{s:?}");
    });
}

/// A connect spawned as the runtime shuts down is dropped before it ever
/// ran: its slot must come back all the same (it counted in `connecting`
/// and `size` for ever, on a pool that opens nothing more).
#[test]
fn a_connect_dropped_unrun_by_a_runtime_shutting_down_gives_its_slot_back() {
    let fake = Fake::default();
    let building = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = building.block_on(async { quiet(&fake).max_size(2).build().unwrap() });
    let mut get = Box::pin(pool.get());
    // Polled once inside the runtime: it queues, and spawns a connect that
    // has not run yet when the runtime goes.
    building.block_on(async {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(get.as_mut().poll(&mut cx).is_pending());
        assert_eq!(pool.status().connecting, 1);
    });
    drop(building);
    assert_eq!(fake.creates(), 0, "the connect never ran");
    let s = pool.status();
    assert_eq!((s.connecting, s.size), (0, 0), "{s:?}");
    drop(get);
}
