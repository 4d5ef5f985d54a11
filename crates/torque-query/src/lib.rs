//! Query tooling for services on PostgreSQL.
//!
//! `torque-query` sits between application code and PostgreSQL: it fingerprints
//! every statement, finds N+1 patterns within a request, turns per-row lookups
//! into one batched round trip, writes rows in bulk, and reads query plans to
//! advise on indexes. "Same shape" and "N+1" are defined by the project's query
//! contract (docs/query.md once the crate lands).
//!
//! **Status: skeleton.** The workspace foundation creates this crate so that the
//! layout, CI and docs are in place; the core lands with the "torque-query core"
//! issue. Nothing below is usable yet, and this page will say so until it is.
//!
//! # What it will offer
//! - `fingerprint(sql)`: a hand-written lexer giving a normalized form and a
//!   64-bit hash.
//! - `detect::Detector`: N+1 and redundant-query findings per request scope.
//! - `Loader<K, V>`: DataLoader batching into `= ANY($1)` lookups.
//! - Batch INSERT/UPDATE/UPSERT builders and a binary COPY path.
//!
//! # Feature flags
//! None yet. Planned: `postgres` (tokio-postgres instrumentation and batch
//! writes), `cache` (the result cache on torque-cache), `metrics`.
