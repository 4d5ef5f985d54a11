//! A health-checked async connection pool.
//!
//! `torque-pool` keeps connections made by a [`Manager`] ready for an async
//! service, and hands them out fairly: waiters are served strictly first come,
//! first served, a returned connection goes straight to the oldest waiter, and
//! no new caller can barge in ahead of them. Connections are health-checked
//! before use (a cheap [`Manager::is_broken`] every time, a real
//! [`Manager::check`] when idle longer than a bypass window), kept alive in the
//! background, retired by lifetime (with per-connection jitter) and idle
//! timeout, and replaced with exponential backoff when the server goes away,
//! one connect at a time, with callers failing fast with the server's real
//! error. Every wait has a timeout, on by default. [`Pool::status`] is a
//! snapshot of sizes and counters. [`Cluster`] runs a pool per host for a
//! primary and its replicas: writes to the primary, reads balanced across
//! healthy replicas ([`Balance`]), roles re-checked on a timer and on
//! read-only errors, down hosts skipped with backoff. The `postgres` feature
//! adds `PgManager` on tokio-postgres, with a per-connection statement cache,
//! and `PgCluster`. A guide is in `docs/pool.md`.
//!
//! # Example
//! A pool of in-memory "connections"; a real manager opens sockets instead.
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use torque_pool::{Manager, Pool, PoolError};
//!
//! #[derive(Debug, Default)]
//! struct Counter {
//!     opened: AtomicU32,
//! }
//!
//! impl Manager for Counter {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!
//!     async fn create(&self) -> Result<u32, std::io::Error> {
//!         Ok(self.opened.fetch_add(1, Ordering::Relaxed))
//!     }
//!     async fn check(&self, _conn: &mut u32) -> Result<(), std::io::Error> {
//!         Ok(())
//!     }
//!     fn is_broken(&self, _conn: &u32) -> bool {
//!         false
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::builder(Counter::default())
//!     .max_size(2)
//!     .min_idle(0)
//!     .acquire_timeout(Duration::from_millis(100))
//!     .build()?;
//!
//! let a = pool.get().await?;
//! let b = pool.get().await?;
//! assert_ne!(*a, *b);
//! // Both connections are out: a third caller waits, then times out.
//! let err = pool.get().await.unwrap_err();
//! assert!(matches!(err, PoolError::Timeout { .. }));
//!
//! drop(a); // back to the pool
//! let c = pool.get().await?;
//! assert_eq!(pool.status().in_use, 2);
//! # drop((b, c));
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! - `postgres`: `PgManager`, a PostgreSQL manager on tokio-postgres with a
//!   per-connection statement cache, discarding connections that saw a
//!   connection-class error or a cancelled query; `PgCluster`, a primary and
//!   replicas whose roles are checked with `pg_is_in_recovery()` and
//!   SQLSTATE 25006.
//! - `metrics`: publish sizes, counters and the acquire-wait histogram through
//!   the [`metrics`](https://docs.rs/metrics) facade (no recorder is installed;
//!   that is the application's job).
//! - `serde`: `Serialize`/`Deserialize` for [`PoolConfig`].

mod cluster;
mod config;
mod core;
mod error;
mod manager;
mod pool;
#[cfg(feature = "postgres")]
mod postgres;
mod status;
mod telemetry;

pub use cluster::{
    Balance, Cluster, ClusterBuilder, ClusterConfig, ClusterConn, HostStatus, Role, RoleProbe,
};
pub use config::{PoolBuilder, PoolConfig};
pub use error::{BuildError, Occupancy, PoolError, TimeoutKind};
pub use manager::Manager;
pub use pool::{Pool, Pooled};
#[cfg(feature = "postgres")]
pub use postgres::{PgCluster, PgConnection, PgManager, PgPool};

// The guide's code blocks are compiled as doctests, so that they stay true.
#[cfg(all(doctest, feature = "postgres"))]
#[doc = include_str!("../../../docs/pool.md")]
struct Guide;
pub use status::{Closed, Status, Timeouts};
