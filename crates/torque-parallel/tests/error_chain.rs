//! An error either prints its source in its own `Display` or returns it from
//! `source()`, never both: a reporter that walks the chain (anyhow's `{:#}`,
//! eyre, tracing) would print the inner message twice
//! (`item failed: connection refused: connection refused`).
//!
//! `ItemError`, `CollectError` and `FlushError` are generic over the
//! caller's error type, which need not implement `std::error::Error`
//! (`String`, `anyhow::Error`): they print it in their `Display`, and their
//! `source()` goes on with that error's own source.

use std::error::Error;
use std::fmt;

use torque_parallel::{ItemError, Processor};

// The three helpers below are copies of torque-testkit's: torque-parallel's
// tests do not depend on the testkit, which brings the database drivers.

/// The `Display` of `error` and of each of its sources, outermost first.
fn chain_messages(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut messages = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        messages.push(e.to_string());
        next = e.source();
    }
    messages
}

/// The chain on one line, as anyhow's `{:#}` prints it.
fn display_chain(error: &(dyn Error + 'static)) -> String {
    chain_messages(error).join(": ")
}

/// No level's message contains the message of a source further down.
fn assert_no_repeated_source_messages(error: &(dyn Error + 'static)) {
    let messages = chain_messages(error);
    for (i, outer) in messages.iter().enumerate() {
        for (j, inner) in messages.iter().enumerate().skip(i + 1) {
            assert!(
                !outer.contains(inner.as_str()),
                "level {i} of the error chain repeats the message of its source at level {j}: \
                 {outer:?} contains {inner:?}; a chain reporter prints {:?}",
                messages.join(": ")
            );
        }
    }
}

/// A backend error with a cause of its own, as a driver's would be.
#[derive(Debug)]
struct CallFailed(Refused);

impl fmt::Display for CallFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("backend call failed")
    }
}

impl Error for CallFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

#[derive(Debug)]
struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection refused")
    }
}

impl Error for Refused {}

fn processor() -> Processor {
    Processor::builder().build().unwrap()
}

#[test]
fn regression_an_item_error_does_not_print_the_closures_error_twice() {
    let p = processor();
    let out = p.try_map(&[1], |_| Err::<u8, _>(CallFailed(Refused)));
    let err = out.into_iter().next().unwrap().unwrap_err();
    assert!(matches!(err, ItemError::Failed(_)), "{err:?}");
    assert_no_repeated_source_messages(&err);
    assert_eq!(
        display_chain(&err),
        "item failed: backend call failed: connection refused"
    );
}

#[test]
fn regression_a_panicked_item_does_not_print_the_panic_twice() {
    let p = processor();
    let out = p.map(&[1], |_: &i32| -> u8 { panic!("boom") });
    let err = out.into_iter().next().unwrap().unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    assert_no_repeated_source_messages(&err);
    assert_eq!(display_chain(&err), "item panicked: boom");
}

#[test]
fn regression_a_collect_error_does_not_print_the_first_failure_twice() {
    let p = processor();
    let err = p
        .try_collect(&[1, 2], |&i: &i32| {
            if i == 2 {
                Err(CallFailed(Refused))
            } else {
                Ok(i)
            }
        })
        .unwrap_err();
    assert_no_repeated_source_messages(&err);
    assert_eq!(
        display_chain(&err),
        "1 item(s) failed, the first is item 1: item failed: backend call failed: \
         connection refused"
    );
}

#[cfg(feature = "tokio")]
#[tokio::test(start_paused = true)]
async fn regression_a_flush_error_does_not_print_the_sinks_error_twice() {
    use torque_parallel::batch::{Batcher, FlushError};

    let (batcher, driver) = Batcher::builder()
        .max_size(1)
        .build(|_batch: Vec<u32>| async { Err::<(), _>(CallFailed(Refused)) })
        .unwrap();
    let driver = tokio::spawn(driver.run());
    let receipt = batcher.send(1).await.unwrap();
    let err = receipt.await.unwrap_err();
    assert!(matches!(err, FlushError::Sink(_)), "{err:?}");
    assert_no_repeated_source_messages(&err);
    assert_eq!(
        display_chain(&err),
        "the sink failed to write the batch: backend call failed: connection refused"
    );
    drop(batcher);
    driver.await.unwrap();
}
