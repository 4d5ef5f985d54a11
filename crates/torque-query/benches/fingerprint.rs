//! Cost of `fingerprint` per statement on a mixed set of realistic statements
//! (ORM-style selects with joins, IN lists, inserts with ON CONFLICT, updates,
//! utility statements, sqlcommenter tags), and of the detector's `record`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use torque_query::detect::{Detector, DetectorConfig, OnFinding};
use torque_query::fingerprint;

const STATEMENTS: &[&str] = &[
    "SELECT u.id, u.email, u.created_at FROM public.users u WHERE u.id = $1 AND u.deleted_at IS NULL LIMIT 1",
    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.status = 'open' AND o.created_at > now() - interval '7 days' ORDER BY o.created_at DESC LIMIT 50",
    "select * from products where category_id in (12, 17, 23, 31, 44, 58, 61, 77) and price between 10.00 and 99.99 /*controller='products',action='index',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
    "INSERT INTO events (account_id, kind, payload, created_at) VALUES ($1, $2, $3, now()) ON CONFLICT (account_id, kind) DO UPDATE SET payload = EXCLUDED.payload RETURNING id",
    "UPDATE accounts SET balance = balance - $1, updated_at = now() WHERE id = $2 AND balance >= $1",
    "DELETE FROM sessions WHERE user_id = 42 AND expires_at < '2026-11-23 00:00:00+00'",
    "SELECT count(*) FROM line_items li WHERE li.order_id = ANY(ARRAY[101, 102, 103, 104])",
    "BEGIN",
    "SAVEPOINT sp_17",
    "WITH recent AS (SELECT account_id, sum(amount) AS total FROM transfers WHERE created_at > $1 GROUP BY account_id) SELECT a.id, r.total FROM accounts a JOIN recent r ON r.account_id = a.id WHERE r.total > 1000",
];

fn fingerprint_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("fingerprint");
    let typical = STATEMENTS[0];
    group.throughput(Throughput::Bytes(typical.len() as u64));
    group.bench_function(
        BenchmarkId::new("typical", format!("{}B", typical.len())),
        |b| b.iter(|| black_box(fingerprint(black_box(typical)))),
    );
    // The yardstick is a typical ~200-byte statement: the join.
    let join = STATEMENTS[1];
    group.throughput(Throughput::Bytes(join.len() as u64));
    group.bench_function(BenchmarkId::new("join", format!("{}B", join.len())), |b| {
        b.iter(|| black_box(fingerprint(black_box(join))))
    });
    let total: usize = STATEMENTS.iter().map(|s| s.len()).sum();
    group.throughput(Throughput::Elements(STATEMENTS.len() as u64));
    group.bench_function(
        BenchmarkId::new("mixed", format!("{} stmts, {total}B", STATEMENTS.len())),
        |b| {
            b.iter(|| {
                for s in STATEMENTS {
                    black_box(fingerprint(black_box(s)));
                }
            })
        },
    );
    group.finish();

    let detector = Detector::new(DetectorConfig {
        on_finding: OnFinding::Return,
        ..DetectorConfig::default()
    });
    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(STATEMENTS.len() as u64));
    group.bench_function("record_mixed", |b| {
        b.iter(|| {
            let scope = detector.scope();
            for s in STATEMENTS {
                scope.record(black_box(s));
            }
            black_box(scope.finish())
        })
    });
    group.finish();
}

criterion_group!(benches, fingerprint_cost);
criterion_main!(benches);
