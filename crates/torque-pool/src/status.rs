//! [`Status`]: a snapshot of the pool.

/// A snapshot of a pool's state and counters, from [`Pool::status`](crate::Pool::status).
///
/// With the `serde` feature it is `Serialize` (fields by their names,
/// durations as `{ secs, nanos }`), for a statistics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Status {
    /// `max_size` setting.
    pub max_size: usize,
    /// Connections open or being opened: `idle + in_use + connecting` plus any
    /// out for a keepalive check. Never above `max_size`.
    pub size: usize,
    /// Connections ready in the pool.
    pub idle: usize,
    /// Connections checked out (including ones being checked for a caller).
    pub in_use: usize,
    /// Connects in flight.
    pub connecting: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// Connections opened since the pool started.
    pub created: u64,
    /// Connects that failed or timed out.
    pub create_failures: u64,
    /// Connections closed, by reason.
    pub closed: Closed,
    /// Timeouts, by kind.
    pub timeouts: Timeouts,
    /// Successful `get()`s.
    pub acquired: u64,
    /// Connections reported as held longer than `leak_threshold`.
    pub leaks_reported: u64,
}

/// Connections closed, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Closed {
    /// `is_broken` said so, or `reset` failed.
    pub broken: u64,
    /// Past `max_lifetime`.
    pub lifetime: u64,
    /// Idle past `idle_timeout` above `min_idle`.
    pub idle: u64,
    /// A health check (at checkout or keepalive) failed, timed out or
    /// panicked.
    pub check_failed: u64,
    /// The caller was cancelled while its connection was being checked, so the
    /// connection's state was unknown.
    pub cancelled: u64,
    /// Closed with the pool.
    pub pool_closed: u64,
}

/// Timeouts, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Timeouts {
    /// `get()` calls that ran out of `acquire_timeout`.
    pub acquire: u64,
    /// Connects that ran out of `create_timeout`.
    pub create: u64,
    /// Checks that ran out of `check_timeout`.
    pub check: u64,
}
