//! A `PoolError` prints its own message and returns the backend's error
//! from `source()`, never both: a reporter that walks the chain (anyhow's
//! `{:#}`, eyre, tracing) would print the backend's message twice
//! (`cannot connect: connection refused: connection refused`).

mod common;

use std::error::Error as _;
use std::time::Duration;

use common::{Fake, FakeError, quiet};
use torque_pool::{PoolError, TimeoutKind};
use torque_testkit::{assert_no_repeated_source_messages, display_chain};

#[tokio::test(start_paused = true)]
async fn regression_a_failed_connect_does_not_print_the_backend_error_twice() {
    let fake = Fake::default();
    fake.fail_creates(Some("connection refused"));
    let pool = quiet(&fake).build().unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, PoolError::Backend(_)), "{err:?}");
    assert_no_repeated_source_messages(&err);
    assert_eq!(display_chain(&err), "cannot connect: connection refused");
    let source = err.source().expect("the backend error is the source");
    assert!(source.is::<FakeError>(), "{source:?}");
}

#[tokio::test(start_paused = true)]
async fn regression_a_timeout_does_not_print_the_last_backend_error_twice() {
    let fake = Fake::default();
    let pool = quiet(&fake)
        .max_size(2)
        .acquire_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let _held = pool.get().await.unwrap();
    fake.fail_creates(Some("too many clients already"));
    let err = pool.get().await.unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Acquire));
    assert_no_repeated_source_messages(&err);
    // The pool's own context (which timeout, how long, how full) stays in
    // its message; the backend's is the next one down.
    let text = err.to_string();
    assert!(
        text.starts_with("acquire timeout: no connection after 500ms (max_size 2: 1 in use"),
        "{text}"
    );
    // `{err}` alone still says the backend failed, not only how full the
    // pool was.
    assert!(
        text.ends_with("; the backend failed (the source says how)"),
        "{text}"
    );
    assert_eq!(
        display_chain(&err),
        format!("{text}: too many clients already")
    );
}
