//! Times a 10,000-row upsert per key type and send method: the median of 5
//! runs into an empty table (inserts) and over the same rows (updates). The
//! keys are distinct, the common case: what the server-side de-duplication
//! of keys whose bytes do not decide equality (citext) costs there, next to
//! keys de-duplicated on the client alone (int8, float8).
//!
//! ```sh
//! cargo run --release -p torque-query --features postgres --example batch_upsert_cost
//! ```
//! Needs PostgreSQL as the tests do (`DATABASE_URL`, or 127.0.0.1:5432 as
//! `postgres`) with the citext extension available; works in a throwaway
//! database of its own.

use std::time::{Duration, Instant};

use tokio_postgres::types::{ToSql, Type};
use torque_query::BatchInsert;

const ROWS: usize = 10_000;
const RUNS: usize = 5;

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let db = torque_testkit::pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS citext")
        .await?;
    let citext = client.prepare("SELECT $1::citext").await?.params()[0].clone();
    println!("key     method          into    median of {RUNS} (ms)   runs (ms)");
    for (name, ty) in [
        ("int8", Type::INT8),
        ("float8", Type::FLOAT8),
        ("citext", citext),
    ] {
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS u; CREATE TABLE u (k {name} PRIMARY KEY, v int8 NOT NULL)"
            ))
            .await?;
        let mut batch =
            BatchInsert::new("u", &[("k", ty), ("v", Type::INT8)]).upsert(&["k"], &["v"]);
        for i in 0..ROWS as i64 {
            let key: Box<dyn ToSql + Sync> = match name {
                "int8" => Box::new(i),
                "float8" => Box::new(i as f64 / 4.0),
                _ => Box::new(format!("user{i}@example.com")),
            };
            batch.push(&[&*key, &i])?;
        }
        for values in [false, true] {
            let method = if values { "execute_values" } else { "execute" };
            for into in ["empty", "full"] {
                let mut runs = Vec::with_capacity(RUNS);
                for _ in 0..RUNS {
                    if into == "empty" {
                        client.batch_execute("TRUNCATE u").await?;
                    } else if client
                        .query_one("SELECT count(*) FROM u", &[])
                        .await?
                        .get::<_, i64>(0)
                        == 0
                    {
                        batch.execute(&client).await?;
                    }
                    let start = Instant::now();
                    let n = if values {
                        batch.execute_values(&client).await?
                    } else {
                        batch.execute(&client).await?
                    };
                    runs.push(start.elapsed());
                    assert_eq!(n, ROWS as u64);
                }
                let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
                println!(
                    "{name:<7} {method:<15} {into:<7} {:>8}             {}",
                    ms(median(runs.clone())),
                    runs.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(" ")
                );
            }
        }
    }
    Ok(())
}
