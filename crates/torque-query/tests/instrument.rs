//! The instrumented client records every statement with its call site into
//! the task's scope, including from concurrently joined futures.

use torque_query::Instrumented;
use torque_query::detect::{Detector, DetectorConfig, FindingKind, OnFinding, Scope};
use torque_testkit::pg_database;

fn detector() -> Detector {
    Detector::new(DetectorConfig {
        on_finding: OnFinding::Return,
        ..DetectorConfig::default()
    })
}

#[tokio::test]
async fn records_a_loop_with_its_call_site() {
    let db = pg_database().await;
    let client = Instrumented::new(db.connect().await);
    client
        .batch_execute("CREATE TABLE posts (id int8 PRIMARY KEY); CREATE TABLE comments (post_id int8, body text)")
        .await
        .unwrap();
    let scope = detector().scope();
    scope
        .run(async {
            for id in 1..=6i64 {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                let rows = client.query("SELECT body FROM comments WHERE post_id = $1", &params);
                rows.await.unwrap();
            }
        })
        .await;
    let findings = scope.finish();
    assert_eq!(findings.len(), 1);
    let f = &findings[0];
    assert_eq!(f.kind, FindingKind::NPlusOne);
    assert_eq!(f.count, 6);
    assert_eq!(f.call_sites.len(), 1);
    assert!(
        f.call_sites[0].file.ends_with("instrument.rs"),
        "{:?}",
        f.call_sites
    );
    let source = include_str!("instrument.rs");
    let expected = source
        .lines()
        .position(|l| l.contains("let rows = client.query("))
        .unwrap()
        + 1;
    assert_eq!(f.call_sites[0].line as usize, expected);
}

#[tokio::test]
async fn concurrently_joined_futures_share_the_scope() {
    let db = pg_database().await;
    let client = Instrumented::new(db.connect().await);
    client
        .batch_execute("CREATE TABLE accounts (id int8 PRIMARY KEY, owner text)")
        .await
        .unwrap();
    let scope = detector().scope();
    scope
        .run(async {
            let lookups = (0..5i64).map(|id| {
                let client = &client;
                async move {
                    client
                        .query_opt("SELECT owner FROM accounts WHERE id = $1", &[&id])
                        .await
                        .unwrap()
                }
            });
            let mut futures: Vec<_> = lookups.map(Box::pin).collect();
            for f in &mut futures {
                f.as_mut().await;
            }
        })
        .await;
    assert_eq!(scope.len(), 5);
    assert_eq!(scope.finish()[0].kind, FindingKind::NPlusOne);
}

#[tokio::test]
async fn spawned_tasks_join_a_scope_they_are_given_and_nothing_leaks_outside() {
    let db = pg_database().await;
    let client = std::sync::Arc::new(Instrumented::new(db.connect().await));
    client
        .batch_execute("CREATE TABLE t (id int8)")
        .await
        .unwrap();
    let scope = detector().scope();
    scope
        .run(async {
            let current = Scope::current().expect("inside run");
            let mut handles = Vec::new();
            for id in 0..5i64 {
                let client = std::sync::Arc::clone(&client);
                let current = current.clone();
                handles.push(tokio::spawn(current.run(async move {
                    client
                        .execute("DELETE FROM t WHERE id = $1", &[&id])
                        .await
                        .unwrap();
                })));
            }
            for h in handles {
                h.await.unwrap();
            }
        })
        .await;
    assert_eq!(scope.len(), 5);
    // Outside any scope the client only forwards.
    client
        .execute("DELETE FROM t WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(scope.len(), 5);
    assert!(Scope::current().is_none());
}

#[tokio::test]
async fn transactions_are_recorded_too() {
    let db = pg_database().await;
    let mut client = Instrumented::new(db.connect().await);
    client
        .batch_execute("CREATE TABLE ledger (id int8, amount int8)")
        .await
        .unwrap();
    let scope = detector().scope();
    let tx = client.transaction().await.unwrap();
    scope
        .run(async {
            for i in 0..5i64 {
                tx.execute(
                    "INSERT INTO ledger (id, amount) VALUES ($1, $2)",
                    &[&i, &(i * 10)],
                )
                .await
                .unwrap();
            }
        })
        .await;
    tx.into_inner().commit().await.unwrap();
    let f = scope.finish();
    assert_eq!(f.len(), 1);
    assert!(f[0].suggestion.contains("UNNEST"));
}

/// Batch writes take the driver's client, so through an `Instrumented` one
/// they run on `inner()` and are not recorded (documented in
/// `Instrumented`'s rustdoc and docs/query.md); recording the statement by
/// hand puts the batch in the trace as one statement, at that line.
#[tokio::test]
async fn batch_writes_run_on_the_inner_client_and_are_recorded_only_by_hand() {
    use tokio_postgres::types::Type;
    use torque_query::BatchInsert;

    let db = pg_database().await;
    let client = Instrumented::new(db.connect().await);
    client
        .batch_execute("CREATE TABLE ledger (id int8, amount int8)")
        .await
        .unwrap();
    let mut insert = BatchInsert::new("ledger", &[("id", Type::INT8), ("amount", Type::INT8)]);
    for i in 0..100i64 {
        insert.push(&[&i, &(i * 10)]).unwrap();
    }
    let scope = detector().scope();
    scope
        .run(async {
            assert_eq!(insert.execute(client.inner()).await.unwrap(), 100);
        })
        .await;
    assert_eq!(scope.len(), 0, "a batch run on inner() is not recorded");
    scope
        .run(async {
            torque_query::detect::record(&insert.unnest_sql());
            assert_eq!(insert.execute(client.inner()).await.unwrap(), 100);
        })
        .await;
    assert_eq!(scope.len(), 1, "recorded by hand: one statement a batch");
    assert!(scope.finish().is_empty());
}

/// Regression: the guide and `Instrumented`'s rustdoc say it wraps "a pooled
/// connection", but it took only a `GenericClient` by value, a sealed trait
/// that neither `&Client` nor any pool's connection implements: with a pool
/// it did not compile except inside a transaction.
#[tokio::test]
async fn a_pooled_connection_can_be_instrumented() {
    let db = pg_database().await;
    let pool = torque_pool::Pool::builder(torque_pool::PgManager::new(db.config()))
        .max_size(2)
        .min_idle(0)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE comments (post_id int8, body text)")
        .await
        .unwrap();
    let client = Instrumented::new(&**conn);
    let scope = detector().scope();
    scope
        .run(async {
            for id in 1..=6i64 {
                client
                    .query("SELECT body FROM comments WHERE post_id = $1", &[&id])
                    .await
                    .unwrap();
            }
        })
        .await;
    let findings = scope.finish();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, FindingKind::NPlusOne);
    assert_eq!(findings[0].count, 6);

    // An `Arc<Client>`, as the loader's batch function holds it, too.
    let shared = Instrumented::new(std::sync::Arc::new(db.connect().await));
    let one: i32 = shared.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// A newtype over a pooled connection that forwards to `PgConnection`'s own
/// methods keeps the pool's statement cache and error watching under
/// `Instrumented` (the recipe in docs/query.md).
#[tokio::test]
async fn a_newtype_over_a_pooled_connection_keeps_its_statement_cache() {
    use std::future::Future;
    use tokio_postgres::types::ToSql;
    use tokio_postgres::{Error, Row, SimpleQueryMessage};
    use torque_pool::{PgManager, Pooled};

    struct Db(Pooled<PgManager>);

    impl torque_query::QueryClient for Db {
        fn query<'a>(
            &'a self,
            sql: &'a str,
            params: &'a [&'a (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a {
            self.0.query(sql, params)
        }
        fn query_one<'a>(
            &'a self,
            sql: &'a str,
            params: &'a [&'a (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<Row, Error>> + Send + 'a {
            self.0.query_one(sql, params)
        }
        fn query_opt<'a>(
            &'a self,
            sql: &'a str,
            params: &'a [&'a (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a {
            self.0.query_opt(sql, params)
        }
        fn execute<'a>(
            &'a self,
            sql: &'a str,
            params: &'a [&'a (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<u64, Error>> + Send + 'a {
            self.0.execute(sql, params)
        }
        fn batch_execute<'a>(
            &'a self,
            sql: &'a str,
        ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
            self.0.batch_execute(sql)
        }
        fn simple_query<'a>(
            &'a self,
            sql: &'a str,
        ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'a {
            self.0.simple_query(sql)
        }
    }

    let db = pg_database().await;
    let pool = torque_pool::Pool::builder(PgManager::new(db.config()))
        .max_size(1)
        .min_idle(0)
        .build()
        .unwrap();
    let client = Instrumented::new(Db(pool.get().await.unwrap()));
    client
        .batch_execute("CREATE TABLE comments (post_id int8, body text)")
        .await
        .unwrap();
    let scope = detector().scope();
    scope
        .run(async {
            for id in 1..=6i64 {
                client
                    .query("SELECT body FROM comments WHERE post_id = $1", &[&id])
                    .await
                    .unwrap();
            }
        })
        .await;
    assert_eq!(scope.finish()[0].count, 6);
    assert_eq!(
        client.inner().0.cached_statements(),
        1,
        "prepared once, through PgConnection's statement cache"
    );
    // A BEGIN left open is seen by the pool: the connection is not reused.
    client.batch_execute("BEGIN").await.unwrap();
    drop(client);
    assert_eq!(pool.status().closed.broken, 1, "{:?}", pool.status());
}
