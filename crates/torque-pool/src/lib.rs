//! A health-checked async connection pool.
//!
//! `torque-pool` hands out connections fairly (strict FIFO waiters, direct
//! hand-off), checks their health before use, recycles them on a lifetime with
//! jitter, and reconnects with backoff when the server goes away, with a timeout
//! on every await, on by default.
//!
//! **Status: skeleton.** The workspace foundation creates this crate so that the
//! layout, CI and docs are in place; the pool lands with the "torque-pool" issue.
//! Nothing below is usable yet, and this page will say so until it is.
//!
//! # What it will offer
//! - `Manager`: a tiny trait that creates, checks and recycles connections.
//! - `Pool<M>`: min-idle/max-size sizing, fair waiters, health checks,
//!   max lifetime, idle timeout, leak detection, `status()` snapshots.
//! - `PgManager`: a PostgreSQL manager on tokio-postgres with a statement cache,
//!   and primary/replica balancing across several hosts.
//!
//! # Feature flags
//! None yet. Planned: `postgres` (the PostgreSQL manager), `metrics`,
//! `serde` (serializable `PoolConfig`).
