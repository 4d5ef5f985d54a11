//! The `metrics` feature: counters through the `metrics` facade.
//!
//! Names follow the Prometheus convention; the application installs the
//! recorder. Counters are process-wide (summed over all caches).

use std::time::Duration;

use crate::RemovalCause;

pub(crate) fn record_read(hit: bool) {
    if hit {
        metrics::counter!("torque_cache_hits_total").increment(1);
    } else {
        metrics::counter!("torque_cache_misses_total").increment(1);
    }
}

pub(crate) fn record_insert() {
    metrics::counter!("torque_cache_inserts_total").increment(1);
}

pub(crate) fn record_removal(cause: RemovalCause) {
    record_removals(cause, 1);
}

pub(crate) fn record_removals(cause: RemovalCause, n: u64) {
    if n == 0 {
        return;
    }
    let cause = match cause {
        RemovalCause::Expired => "expired",
        RemovalCause::Capacity => "capacity",
        RemovalCause::Replaced => "replaced",
        RemovalCause::Removed => "removed",
    };
    metrics::counter!("torque_cache_evictions_total", "cause" => cause).increment(n);
}

/// A load that panicked: a failure, with no time (see `LeaderGuard`).
pub(crate) fn record_load_failure() {
    metrics::counter!("torque_cache_load_failures_total").increment(1);
}

pub(crate) fn record_load(ok: bool, elapsed: Duration) {
    if ok {
        metrics::counter!("torque_cache_loads_total").increment(1);
    } else {
        metrics::counter!("torque_cache_load_failures_total").increment(1);
    }
    metrics::histogram!("torque_cache_load_seconds").record(elapsed.as_secs_f64());
}
