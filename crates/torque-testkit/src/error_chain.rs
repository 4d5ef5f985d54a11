//! Checks on an error's `source()` chain, shared by the crates' tests.
//!
//! An error either prints its source in its own `Display` or returns it from
//! `source()`, never both: reporters that walk the chain (anyhow's `{:#}`,
//! eyre, tracing's error recording) print every level, so an error that does
//! both shows its source's message twice
//! (`cannot connect: connection refused: connection refused`).

use std::error::Error;

/// The `Display` of `error` and of each of its sources, outermost first.
pub fn chain_messages(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut messages = vec![error.to_string()];
    let mut next = error.source();
    while let Some(e) = next {
        messages.push(e.to_string());
        next = e.source();
    }
    messages
}

/// The whole chain on one line, `outer: inner: innermost`, as anyhow's
/// `{:#}` prints it: what a log line should show.
pub fn display_chain(error: &(dyn Error + 'static)) -> String {
    chain_messages(error).join(": ")
}

/// Panics when a message of `error`'s chain contains the message of a
/// source further down (an empty message is contained in any, so it counts
/// too): that level prints its source itself and returns it from `source()`,
/// and a chain reporter prints it twice.
///
/// # Panics
/// On such a repeat, naming both levels and the chain.
pub fn assert_no_repeated_source_messages(error: &(dyn Error + 'static)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// `outer` over an io error; `repeat` prints the io error in its own message too.
    #[derive(Debug)]
    struct Outer {
        repeat: bool,
        inner: std::io::Error,
    }

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")?;
            if self.repeat {
                write!(f, ": {}", self.inner)?;
            }
            Ok(())
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.inner)
        }
    }

    fn outer(repeat: bool) -> Outer {
        Outer {
            repeat,
            inner: std::io::Error::other("refused"),
        }
    }

    #[test]
    fn a_chain_that_prints_each_message_once_passes() {
        let e = outer(false);
        assert_no_repeated_source_messages(&e);
        assert_eq!(display_chain(&e), "outer: refused");
    }

    #[test]
    #[should_panic(expected = "repeats the message of its source")]
    fn a_level_that_prints_its_source_too_fails() {
        assert_no_repeated_source_messages(&outer(true));
    }
}
