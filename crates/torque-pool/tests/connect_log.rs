//! The pool's own log lines about a backend error carry the server's words.
//!
//! Alone in its test binary: it captures events with a thread-local
//! `tracing` subscriber, and `tracing` caches a callsite's interest when the
//! callsite is first hit. A test on another thread of the same binary that
//! hit the pool's "cannot connect" callsite while this one was installing
//! its subscriber could leave the interest cached as "never", and this test
//! then saw no event at all (it failed so once in CI, 2026-12-07).

use torque_pool::{PgManager, Pool};
use torque_testkit::pg_database;

/// The pool's own log lines about a backend error carry its whole chain:
/// tokio-postgres's `Display` is only "db error", so a log of `%e` said
/// "cannot connect error=db error" and never why.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_connect_is_logged_with_the_server_s_words() {
    let db = pg_database().await;
    let mut config = db.config();
    config.dbname("torque_no_such_database");
    let events = log::Captured::default();
    let _guard = tracing::subscriber::set_default(events.clone());
    let pool = Pool::builder(PgManager::new(config)).build().unwrap();
    let _ = pool.get().await.unwrap_err();
    let lines = events.lines();
    let line = lines
        .iter()
        .find(|l| l.contains("cannot connect"))
        .unwrap_or_else(|| panic!("no 'cannot connect' event in {lines:?}"));
    assert!(line.contains("torque_no_such_database"), "{line}");
}

/// A minimal `tracing` subscriber that keeps every event's fields as text.
mod log {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<String>>>);

    impl Captured {
        pub(crate) fn lines(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }

    impl Subscriber for Captured {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = Line(String::new());
            event.record(&mut line);
            self.0.lock().unwrap().push(line.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}
