//! `Loader` against real PostgreSQL: batched results equal per-row results,
//! concurrent loads share a round trip, errors stay with their keys.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;
use torque_query::Loader;
use torque_testkit::pg_database;

async fn seeded() -> (torque_testkit::TestDatabase, Arc<Client>) {
    let db = pg_database().await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE users (id int8 PRIMARY KEY, name text NOT NULL, manager int8);
             INSERT INTO users SELECT g, 'user ' || g, NULLIF(g % 10, 0) FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    (db, Arc::new(client))
}

fn user_loader(client: Arc<Client>) -> Loader<i64, String, tokio_postgres::Error> {
    Loader::new(move |ids: Vec<i64>| {
        let client = Arc::clone(&client);
        async move {
            let rows = client
                .query("SELECT id, name FROM users WHERE id = ANY($1)", &[&ids])
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
                .collect::<HashMap<_, _>>())
        }
    })
}

#[tokio::test]
async fn batched_results_equal_per_row_results() {
    let (_db, client) = seeded().await;
    let loader = user_loader(Arc::clone(&client));
    let keys: Vec<i64> = vec![5, 999, 1, 5, 2000, -3, 500];
    let batched = loader.load_many(keys.clone()).await.unwrap();
    let mut per_row = Vec::new();
    for k in &keys {
        let row = client
            .query_opt("SELECT name FROM users WHERE id = $1", &[k])
            .await
            .unwrap();
        per_row.push(row.map(|r| r.get::<_, String>(0)));
    }
    assert_eq!(batched, per_row);
    assert_eq!(loader.stats().batches, 1);
    assert_eq!(loader.stats().keys, 6, "the duplicate 5 is sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_from_many_tasks_batch() {
    let (_db, client) = seeded().await;
    let loader = user_loader(client);
    let tasks: Vec<_> = (1..=200i64)
        .map(|id| {
            let loader = loader.clone();
            tokio::spawn(async move { (id, loader.load(id).await.unwrap()) })
        })
        .collect();
    for t in tasks {
        let (id, name) = t.await.unwrap();
        assert_eq!(name, Some(format!("user {id}")));
    }
    let stats = loader.stats();
    assert_eq!(stats.keys, 200);
    assert!(
        stats.batches < 50,
        "200 concurrent loads should share round trips, took {} batches",
        stats.batches
    );
}

#[tokio::test]
async fn errors_isolate_per_key() {
    let (_db, client) = seeded().await;
    // A batch whose keys can fail one by one returns a Result per key: here a
    // user without a manager is an error for that key alone.
    let managers: Loader<i64, Result<i64, String>, tokio_postgres::Error> = Loader::new({
        let client = Arc::clone(&client);
        move |ids: Vec<i64>| {
            let client = Arc::clone(&client);
            async move {
                let rows = client
                    .query("SELECT id, manager FROM users WHERE id = ANY($1)", &[&ids])
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        let id: i64 = r.get(0);
                        let manager: Option<i64> = r.get(1);
                        (
                            id,
                            manager.ok_or_else(|| format!("user {id} has no manager")),
                        )
                    })
                    .collect::<HashMap<_, _>>())
            }
        }
    });
    let (a, b, c) = tokio::join!(managers.load(11), managers.load(20), managers.load(4242));
    assert_eq!(a.unwrap(), Some(Ok(1)));
    assert_eq!(b.unwrap(), Some(Err("user 20 has no manager".into())));
    assert_eq!(c.unwrap(), None);
    assert_eq!(managers.stats().batches, 1);

    // A failing batch (bad SQL) fails the keys of that batch, and only them.
    let broken: Loader<i64, i64, tokio_postgres::Error> = Loader::new({
        let client = Arc::clone(&client);
        move |ids: Vec<i64>| {
            let client = Arc::clone(&client);
            async move {
                let rows = client
                    .query("SELECT id FROM no_such_table WHERE id = ANY($1)", &[&ids])
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.get(0), r.get(0)))
                    .collect::<HashMap<_, _>>())
            }
        }
    });
    let (x, y) = tokio::join!(broken.load(1), broken.load(2));
    let x = x.unwrap_err();
    assert_eq!(x.code().map(|c| c.code()), Some("42P01"));
    assert!(y.is_err());
    let ok = user_loader(client);
    assert_eq!(ok.load(1).await.unwrap().as_deref(), Some("user 1"));
}
