//! Test services for the Torque crates.
//!
//! Every Torque crate that talks to PostgreSQL or Redis tests against a real
//! server, and gets it from here:
//!
//! - [`pg_database`]: a fresh PostgreSQL database for one test, created from a
//!   template and dropped afterwards, so tests run in parallel.
//! - [`redis_namespace`]: an isolated key prefix on Redis for one test, whose
//!   keys are deleted afterwards.
//! - [`FaultProxy`]: a TCP proxy between a client and a server that adds latency,
//!   blackholes, resets, refuses connections, cuts after N bytes or limits
//!   bandwidth, while traffic flows. Fault tests use it and never stop a shared
//!   server.
//! - [`assert_no_repeated_source_messages`] and [`display_chain`]: an error's
//!   `source()` chain, checked for a level that prints its source itself (a
//!   chain reporter would print that message twice), and printed on one line.
//!
//! # Finding servers
//! PostgreSQL: `DATABASE_URL` if set; else a server on 127.0.0.1:5432 (user
//! `postgres`, trust auth); else a throwaway cluster started once per test
//! process from the local binaries (`initdb`, `postgres` on PATH or under
//! `/usr/lib/postgresql/*/bin`, run as an unprivileged user when the tests run
//! as root), removed when the process exits. Redis: `REDIS_URL`, else
//! 127.0.0.1:6379, else a throwaway `redis-server`. When none can be had the
//! test **fails**, with a message saying how to get one: it never skips.
//! `TORQUE_TESTKIT_PG=throwaway` and `TORQUE_TESTKIT_REDIS=throwaway` skip
//! straight to the throwaway servers (to keep tests off a local server).
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use torque_testkit::{FaultProxy, pg_database};
//!
//! # async fn demo() {
//! let db = pg_database().await;
//! let proxy = FaultProxy::start(db.tcp_addr()).await.unwrap();
//! let (client, conn) = db
//!     .config_via(proxy.addr())
//!     .connect(tokio_postgres::NoTls)
//!     .await
//!     .unwrap();
//! tokio::spawn(conn);
//! client.simple_query("SELECT 1").await.unwrap();
//!
//! proxy.set_latency(Duration::from_millis(100), Duration::ZERO);
//! client.simple_query("SELECT 1").await.unwrap(); // now takes ≥ 200 ms
//! # }
//! ```
//!
//! # Feature flags
//! None: this crate is a dev-dependency and always has PostgreSQL and Redis
//! support.

mod error_chain;
mod postgres;
mod proxy;
mod redis;
mod throwaway;

// The testing guide's code blocks run as doctests, like the other guides'.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/testing.md")]
struct GuideDoctests;

pub use error_chain::{assert_no_repeated_source_messages, chain_messages, display_chain};
pub use postgres::{Origin, PgServer, TestDatabase, pg_database};
pub use proxy::{FaultProxy, ProxyStats};
pub use redis::{RedisNamespace, RedisOrigin, RedisServer, redis_namespace};
pub use throwaway::{ServerKind, ThrowawayServer};
