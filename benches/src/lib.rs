//! Cross-crate and peer-comparison benchmarks for Torque.
//!
//! The benchmarks live in `benches/`, one file per topic, each comparing a
//! Torque component with its peers in the same criterion group. Run one with
//! `cargo bench -p torque-benches --bench NAME`; see `docs/benchmarks.md`.

// The README and the architecture page are doctested here, the one package
// that depends on every Torque crate (as dev-dependencies, which doctests
// see), so that a Rust block added to them is compiled like the guides'.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/architecture.md")]
struct ArchitectureDoctests;
