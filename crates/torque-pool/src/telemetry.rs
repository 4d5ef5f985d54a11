//! What the pool reports through the `metrics` facade (with the `metrics`
//! feature; every function is a no-op without it). No recorder is installed:
//! that is the application's job.

use std::time::Duration;

use crate::error::TimeoutKind;
use crate::status::Status;

/// Labels on every metric of one pool: none for a lone pool; `host` for
/// each pool of a [`Cluster`](crate::Cluster), so that its hosts' gauges do
/// not overwrite each other.
#[derive(Debug, Clone, Default)]
pub(crate) struct Labels {
    #[cfg(feature = "metrics")]
    labels: Vec<::metrics::Label>,
}

impl Labels {
    pub(crate) fn host(index: usize) -> Labels {
        #[cfg(feature = "metrics")]
        return Labels {
            labels: vec![::metrics::Label::new("host", index.to_string())],
        };
        #[cfg(not(feature = "metrics"))]
        {
            let _ = index;
            Labels {}
        }
    }

    /// These labels and one more.
    #[cfg(feature = "metrics")]
    fn with(&self, key: &'static str, value: &'static str) -> Vec<::metrics::Label> {
        let mut labels = self.labels.clone();
        labels.push(::metrics::Label::new(key, value));
        labels
    }
}

/// A `get()` succeeded after waiting `wait()`, which is called (it reads the
/// clock) only when the histogram is published.
pub(crate) fn acquired(labels: &Labels, wait: impl FnOnce() -> Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!("torque_pool_acquire_wait_seconds", labels.labels.iter())
        .record(wait().as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = (labels, wait);
}

/// A timeout fired.
pub(crate) fn timeout(labels: &Labels, kind: TimeoutKind) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(
        "torque_pool_timeouts_total",
        labels.with("kind", kind.as_str())
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (labels, kind);
}

/// Gauges, and the counters kept by the state machine (as increments since
/// `before`), published by the maintenance task on every tick so that the hot
/// path does not touch the recorder.
pub(crate) fn publish(labels: &Labels, before: &Status, status: &Status) {
    #[cfg(feature = "metrics")]
    {
        let closed = |s: &Status| {
            [
                ("broken", s.closed.broken),
                ("lifetime", s.closed.lifetime),
                ("idle", s.closed.idle),
                ("check_failed", s.closed.check_failed),
                ("cancelled", s.closed.cancelled),
                ("pool_closed", s.closed.pool_closed),
            ]
        };
        for ((reason, was), (_, is)) in closed(before).into_iter().zip(closed(status)) {
            ::metrics::counter!(
                "torque_pool_connections_closed_total",
                labels.with("reason", reason)
            )
            .increment(is - was);
        }
        let own = &labels.labels;
        ::metrics::counter!("torque_pool_connections_created_total", own.iter())
            .increment(status.created - before.created);
        ::metrics::counter!("torque_pool_connect_failures_total", own.iter())
            .increment(status.create_failures - before.create_failures);
        for (state, n) in [
            ("idle", status.idle),
            ("in_use", status.in_use),
            ("connecting", status.connecting),
        ] {
            ::metrics::gauge!("torque_pool_connections", labels.with("state", state)).set(n as f64);
        }
        ::metrics::gauge!("torque_pool_size", own.iter()).set(status.size as f64);
        ::metrics::gauge!("torque_pool_waiting", own.iter()).set(status.waiting as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (labels, before, status);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use ::metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use parking_lot::Mutex;

    /// Remembers the key (name and labels) of every metric touched.
    #[derive(Debug, Default)]
    struct Keys(Mutex<Vec<Key>>);

    impl Recorder for Keys {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.0.lock().push(key.clone());
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            self.0.lock().push(key.clone());
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.0.lock().push(key.clone());
            Histogram::noop()
        }
    }

    fn record_all(labels: &Labels) -> Vec<Key> {
        let keys = Keys::default();
        ::metrics::with_local_recorder(&keys, || {
            acquired(labels, || Duration::from_millis(1));
            timeout(labels, TimeoutKind::Acquire);
            publish(labels, &Status::default(), &Status::default());
        });
        keys.0.into_inner()
    }

    #[test]
    fn a_cluster_host_pool_labels_every_metric_with_its_host() {
        let keys = record_all(&Labels::host(2));
        assert!(keys.len() >= 10, "{keys:?}");
        for key in &keys {
            let host: Vec<_> = key.labels().filter(|l| l.key() == "host").collect();
            assert_eq!(host.len(), 1, "{key:?}");
            assert_eq!(host[0].value(), "2");
        }
        let timeouts = keys
            .iter()
            .find(|k| k.name() == "torque_pool_timeouts_total")
            .unwrap();
        assert!(
            timeouts
                .labels()
                .any(|l| l.key() == "kind" && l.value() == "acquire")
        );
    }

    #[test]
    fn a_lone_pool_keeps_its_metrics_unlabelled_by_host() {
        let keys = record_all(&Labels::default());
        assert!(keys.len() >= 10);
        assert!(keys.iter().all(|k| k.labels().all(|l| l.key() != "host")));
    }
}
