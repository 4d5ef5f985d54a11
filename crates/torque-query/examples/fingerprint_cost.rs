//! Fingerprints one statement N times: a fixed workload for instruction counts,
//! which stay repeatable on a noisy machine where wall-clock times do not.
//!
//! ```sh
//! cargo build --release -p torque-query --example fingerprint_cost
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/fingerprint_cost 10000 typical
//! ```
//! Instructions per call = callgrind's total / N (startup is a few hundred
//! thousand instructions, noise at N = 10,000). Statements: `typical` (a
//! 103-byte ORM lookup), `join` (a 180-byte join with ORDER BY/LIMIT), `in`
//! (a 160-byte IN-list with a sqlcommenter tag).

use std::hint::black_box;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let sql = match args.next().as_deref().unwrap_or("typical") {
        "join" => {
            "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
             WHERE o.status = 'open' AND o.created_at > now() - interval '7 days' ORDER BY o.created_at DESC LIMIT 50"
        }
        "in" => {
            "select * from products where category_id in (12, 17, 23, 31, 44, 58, 61, 77) \
             /*controller='products',action='index',traceparent='00-4bf92f3577b34da6-01'*/"
        }
        _ => {
            "SELECT u.id, u.email, u.created_at FROM public.users u WHERE u.id = $1 \
             AND u.deleted_at IS NULL LIMIT 1"
        }
    };
    let mut acc = 0u64;
    for _ in 0..n {
        acc ^= torque_query::fingerprint(black_box(sql)).hash();
    }
    println!("{} bytes, {n} calls, {acc:016x}", sql.len());
}
