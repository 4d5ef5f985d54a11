//! Assertions on fingerprint shapes, shared by the fingerprint test files
//! (included with `#[path]`).

use torque_query::fingerprint;

/// `a` and `b` have the same fingerprint.
pub(crate) fn same(a: &str, b: &str) {
    let (fa, fb) = (fingerprint(a), fingerprint(b));
    assert_eq!(
        fa.hash(),
        fb.hash(),
        "expected the same shape:\n  {a}\n  -> {}\n  {b}\n  -> {}",
        fa.normalized(),
        fb.normalized()
    );
}

/// `a` and `b` have different fingerprints.
pub(crate) fn differ(a: &str, b: &str) {
    let (fa, fb) = (fingerprint(a), fingerprint(b));
    assert_ne!(
        fa.hash(),
        fb.hash(),
        "expected different shapes:\n  {a}\n  {b}\n  both -> {}",
        fa.normalized()
    );
}
