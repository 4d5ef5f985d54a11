//! Cross-crate and peer-comparison benchmarks for Torque.
//!
//! The benchmarks live in `benches/`, one file per topic, each comparing a
//! Torque component with its peers in the same criterion group. Run one with
//! `cargo bench -p torque-benches --bench NAME`; see `docs/benchmarks.md`.
