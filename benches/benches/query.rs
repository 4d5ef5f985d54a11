//! torque-query against real PostgreSQL (from torque-testkit), side by side
//! with what it replaces:
//!
//! - `loader_vs_per_row/N`: N lookups by primary key as N sequential
//!   statements, against one `Loader` batch (`= ANY($1)`).
//! - `insert_1000_rows`: 1,000 rows inserted row by row (one prepared INSERT
//!   each), against `BatchInsert` via UNNEST, multi-row VALUES and binary COPY.
//!
//! Every case runs on one connection over loopback, in one process and run.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use torque_query::{BatchInsert, Loader};
use torque_testkit::{PgServer, TestDatabase};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn setup() -> (TestDatabase, Arc<Client>) {
    let db = PgServer::shared().await.database().await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE users (id int8 PRIMARY KEY, name text NOT NULL);
             INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 10000) g;
             CREATE TABLE events (id int8, account int8, kind text, amount float8);
             ANALYZE users;",
        )
        .await
        .expect("create bench tables");
    (db, Arc::new(client))
}

fn loader_vs_per_row(c: &mut Criterion) {
    let rt = runtime();
    let (_db, client) = rt.block_on(setup());
    // Both sides prepare their statement once, as a service would.
    let by_id = rt
        .block_on(client.prepare("SELECT name FROM users WHERE id = $1"))
        .expect("prepare");
    let by_ids = rt
        .block_on(client.prepare("SELECT id, name FROM users WHERE id = ANY($1)"))
        .expect("prepare");
    let mut group = c.benchmark_group("loader_vs_per_row");
    for n in [10i64, 100, 1000] {
        let keys: Vec<i64> = (0..n).map(|i| 1 + (i * 7919) % 10_000).collect();
        group.bench_with_input(BenchmarkId::new("per_row", n), &keys, |b, keys| {
            b.iter(|| {
                rt.block_on(async {
                    let mut names = Vec::with_capacity(keys.len());
                    for k in keys {
                        let row = client.query_one(&by_id, &[k]).await.expect("row");
                        names.push(row.get::<_, String>(0));
                    }
                    black_box(names)
                })
            })
        });
        group.bench_with_input(BenchmarkId::new("loader", n), &keys, |b, keys| {
            b.iter(|| {
                // A fresh loader per request, as a service would use it.
                let client = Arc::clone(&client);
                let by_ids = by_ids.clone();
                let loader = Loader::new(move |ids: Vec<i64>| {
                    let client = Arc::clone(&client);
                    let by_ids = by_ids.clone();
                    async move {
                        let rows = client.query(&by_ids, &[&ids]).await?;
                        Ok::<_, tokio_postgres::Error>(
                            rows.into_iter()
                                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
                                .collect::<HashMap<_, _>>(),
                        )
                    }
                });
                rt.block_on(async {
                    black_box(loader.load_many(keys.iter().copied()).await.expect("load"))
                })
            })
        });
    }
    group.finish();
}

type Event = (i64, i64, String, f64);

fn events() -> Vec<Event> {
    (0..1000i64)
        .map(|i| (i, i % 97, format!("kind-{}", i % 5), i as f64 * 0.25))
        .collect()
}

fn batch(rows: &[Event]) -> BatchInsert {
    let mut b = BatchInsert::new(
        "events",
        &[
            ("id", Type::INT8),
            ("account", Type::INT8),
            ("kind", Type::TEXT),
            ("amount", Type::FLOAT8),
        ],
    );
    for (id, account, kind, amount) in rows {
        b.push(&[id, account, kind, amount]).expect("row");
    }
    b
}

fn insert_1000_rows(c: &mut Criterion) {
    let rt = runtime();
    let (_db, client) = rt.block_on(setup());
    let rows = events();
    let truncate = || {
        rt.block_on(client.batch_execute("TRUNCATE events"))
            .expect("truncate")
    };
    let mut group = c.benchmark_group("insert_1000_rows");
    group.sample_size(10);
    group.bench_function("row_by_row", |b| {
        let insert = rt
            .block_on(
                client.prepare(
                    "INSERT INTO events (id, account, kind, amount) VALUES ($1, $2, $3, $4)",
                ),
            )
            .expect("prepare");
        b.iter_batched(
            truncate,
            |()| {
                rt.block_on(async {
                    for (id, account, kind, amount) in &rows {
                        client
                            .execute(&insert, &[id, account, kind, amount])
                            .await
                            .expect("insert");
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("unnest", |b| {
        b.iter_batched(
            truncate,
            |()| rt.block_on(async { batch(&rows).execute(&*client).await.expect("unnest") }),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("values", |b| {
        b.iter_batched(
            truncate,
            |()| {
                rt.block_on(async { batch(&rows).execute_values(&*client).await.expect("values") })
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("copy", |b| {
        b.iter_batched(
            truncate,
            |()| rt.block_on(async { batch(&rows).copy_in(&*client).await.expect("copy") }),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, loader_vs_per_row, insert_1000_rows);
criterion_main!(benches);
