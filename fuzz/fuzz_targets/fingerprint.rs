//! `fingerprint` must never panic, and must be deterministic, on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let a = torque_query::fingerprint(&sql);
    let b = torque_query::fingerprint(&sql);
    assert_eq!(a, b);
    // Normalizing is idempotent in shape: the normalized text has the same hash
    // when normalized again is not guaranteed (placeholders are `?`), but it
    // must not panic either.
    let _ = torque_query::fingerprint(a.normalized());
});
