//! The `metrics` feature: limiter events through the `metrics` facade.
//!
//! Names follow the Prometheus convention; the application installs the
//! recorder. Counters are process-wide (summed over all limiters), like
//! torque-cache's; the gauges hold the value of the limiter that last
//! changed, so with several limiters read each one's `stats()`.

use std::time::Duration;

use super::Outcome;

pub(super) fn record_acquired(in_flight: usize) {
    metrics::counter!("torque_parallel_limiter_acquired_total").increment(1);
    metrics::gauge!("torque_parallel_limiter_in_flight").set(in_flight as f64);
}

pub(super) fn record_limit(limit: usize) {
    metrics::gauge!("torque_parallel_limiter_limit").set(limit as f64);
}

pub(super) fn record_rejected() {
    metrics::counter!("torque_parallel_limiter_rejected_total").increment(1);
}

pub(super) fn record_completed(
    outcome: Outcome,
    latency: Duration,
    limit: usize,
    in_flight: usize,
) {
    match outcome {
        Outcome::Success => {
            metrics::histogram!("torque_parallel_limiter_latency_seconds")
                .record(latency.as_secs_f64());
        }
        Outcome::Overload => {
            metrics::counter!("torque_parallel_limiter_overloads_total").increment(1);
        }
        Outcome::Ignored => {
            metrics::counter!("torque_parallel_limiter_ignored_total").increment(1);
        }
    }
    metrics::gauge!("torque_parallel_limiter_limit").set(limit as f64);
    metrics::gauge!("torque_parallel_limiter_in_flight").set(in_flight as f64);
}
