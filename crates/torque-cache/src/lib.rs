//! A tiered cache for services that sit on PostgreSQL and Redis.
//!
//! `torque-cache` puts a concurrent, bounded in-process cache (L1) in front of
//! an optional shared tier (L2, Redis) and a loader, so that a hot key costs a
//! hash lookup, a warm key one Redis round trip, and a cold key exactly one load
//! however many callers miss it at once.
//!
//! **Status: skeleton.** The workspace foundation creates this crate so that the
//! layout, CI and docs are in place; the in-process cache lands with the
//! "torque-cache L1" issue and the Redis tier after it. Nothing below is usable
//! yet, and this page will say so until it is.
//!
//! # What it will offer
//! - `LocalCache<K, V>`: sharded, bounded, with a policy chosen at build time
//!   (`Lru`, `Lfu`, `Fifo`, `Ttl`, and an adaptive scan-resistant default),
//!   time-to-live / time-to-idle / per-entry expiry, stampede-protected loads,
//!   an eviction listener and statistics.
//! - `TieredCache`: L1 over a Redis L2 with read-through, write-through,
//!   cross-instance invalidation, warming, refresh-ahead and fail-safe serving.
//!
//! # Feature flags
//! None yet. Planned: `redis` (the L2 tier and invalidation), `metrics`
//! (statistics through the `metrics` facade), `serde` (serializable config).
