//! Query tooling for services on PostgreSQL.
//!
//! `torque-query` sits between application code and PostgreSQL. It fingerprints
//! every statement (which statements are the same shape), finds N+1 patterns and
//! redundant queries within a request, turns per-row lookups made in the same
//! tick into one batched round trip, and writes rows in bulk. "Same shape" and
//! "N+1" follow the project's query contract, restated in `docs/query.md`.
//!
//! # Example
//! ```
//! use torque_query::{detect::{Detector, DetectorConfig, FindingKind}, fingerprint};
//!
//! // Same shape, whatever the values, the IN-list length or the alias.
//! assert_eq!(
//!     fingerprint("SELECT * FROM users u WHERE u.id = 42").hash(),
//!     fingerprint("select * from users x where x.id = $1").hash(),
//! );
//!
//! // A loop issuing one query per parent row is an N+1.
//! let detector = Detector::new(DetectorConfig::default());
//! let scope = detector.scope();
//! for post in 1..=10 {
//!     scope.record(&format!("SELECT * FROM comments WHERE post_id = {post}"));
//! }
//! let findings = scope.finish();
//! assert_eq!(findings.len(), 1);
//! assert_eq!(findings[0].kind, FindingKind::NPlusOne);
//! assert_eq!(findings[0].count, 10);
//! ```
//!
//! # Feature flags
//! - `postgres`: [`Instrumented`] (records every statement a tokio-postgres
//!   client runs, with its call site, into the current request's scope),
//!   [`BatchInsert`] / [`BatchUpdate`] (UNNEST, multi-row VALUES, binary COPY).
//! - `metrics`: findings counted through the `metrics` facade.
//!
//! EXPLAIN analysis, index advice, the result cache and the slow-query log come
//! in a later release.

#[cfg(feature = "postgres")]
mod batch;
pub mod detect;
mod fingerprint;
#[cfg(feature = "postgres")]
mod instrument;
mod lexer;
mod loader;

// The guide's code blocks run as doctests, so that what users copy compiles
// against the current API (its batch-write and instrumentation blocks need
// the `postgres` feature; CI tests with all features).
#[cfg(all(doctest, feature = "postgres"))]
#[doc = include_str!("../../../docs/query.md")]
struct GuideDoctests;

#[cfg(feature = "postgres")]
pub use batch::{BatchError, BatchInsert, BatchUpdate, Conflict, CopyTarget};
pub use fingerprint::{Fingerprint, StatementKind, fingerprint};
#[cfg(feature = "postgres")]
pub use instrument::{Instrumented, QueryClient};
pub use loader::{BatchFn, Loader, LoaderBuilder, LoaderStats};
