//! What the pool reports through the `metrics` facade (with the `metrics`
//! feature; every function is a no-op without it). No recorder is installed:
//! that is the application's job.

use std::time::Duration;

use crate::error::TimeoutKind;
use crate::status::Status;

/// A `get()` succeeded after waiting `wait`.
pub(crate) fn acquired(wait: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!("torque_pool_acquire_wait_seconds").record(wait.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = wait;
}

/// A timeout fired.
pub(crate) fn timeout(kind: TimeoutKind) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("torque_pool_timeouts_total", "kind" => kind.as_str()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = kind;
}

/// Gauges, and the counters kept by the state machine (as increments since
/// `before`), published by the maintenance task on every tick so that the hot
/// path does not touch the recorder.
pub(crate) fn publish(before: &Status, status: &Status) {
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
            ::metrics::counter!("torque_pool_connections_closed_total", "reason" => reason)
                .increment(is - was);
        }
        ::metrics::counter!("torque_pool_connections_created_total")
            .increment(status.created - before.created);
        ::metrics::counter!("torque_pool_connect_failures_total")
            .increment(status.create_failures - before.create_failures);
        ::metrics::gauge!("torque_pool_connections", "state" => "idle").set(status.idle as f64);
        ::metrics::gauge!("torque_pool_connections", "state" => "in_use").set(status.in_use as f64);
        ::metrics::gauge!("torque_pool_connections", "state" => "connecting")
            .set(status.connecting as f64);
        ::metrics::gauge!("torque_pool_size").set(status.size as f64);
        ::metrics::gauge!("torque_pool_waiting").set(status.waiting as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (before, status);
}
