//! torque-query and torque-pool used together as an application would: a pool
//! of PostgreSQL connections, accounts and transfers, a loader under
//! concurrent requests, batch writes, N+1 detection and the pool's status —
//! written from the guides (docs/pool.md, docs/query.md) and the rustdoc only.

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::types::Type;
use torque_pool::{PgManager, PgPool, Pool, PoolError};
use torque_query::detect::{Detector, DetectorConfig, FindingKind, OnFinding};
use torque_query::{BatchError, BatchInsert, BatchUpdate, Instrumented, Loader};
use torque_testkit::{TestDatabase, pg_database};

const SCHEMA: &str = "
    CREATE TABLE accounts (
        id int8 PRIMARY KEY,
        owner text NOT NULL,
        email text UNIQUE,
        balance int8 NOT NULL DEFAULT 0
    );
    CREATE TABLE transfers (
        id int8 PRIMARY KEY,
        from_account int8 NOT NULL REFERENCES accounts (id),
        to_account int8 NOT NULL REFERENCES accounts (id),
        amount int8 NOT NULL CHECK (amount > 0),
        memo text
    );";

async fn service() -> (TestDatabase, PgPool) {
    let db = pg_database().await;
    let pool = Pool::builder(PgManager::new(db.config()))
        .max_size(4)
        .min_idle(0)
        .build()
        .expect("pool settings");
    pool.get()
        .await
        .expect("a connection")
        .batch_execute(SCHEMA)
        .await
        .expect("schema");
    (db, pool)
}

#[derive(Debug, Clone, PartialEq)]
struct Account {
    owner: String,
    email: Option<String>,
    balance: i64,
}

fn account(id: i64) -> Account {
    Account {
        owner: format!("owner {id} \u{1F4B0} Zoë 'quoted' \"x\""),
        email: (id % 3 != 0).then(|| format!("{id}@example.com")),
        balance: id * 100,
    }
}

async fn insert_accounts(pool: &PgPool, ids: impl Iterator<Item = i64>) -> u64 {
    let mut insert = BatchInsert::new(
        "accounts",
        &[
            ("id", Type::INT8),
            ("owner", Type::TEXT),
            ("email", Type::TEXT),
            ("balance", Type::INT8),
        ],
    );
    for id in ids {
        let a = account(id);
        insert.push(&[&id, &a.owner, &a.email, &a.balance]).unwrap();
    }
    let conn = pool.get().await.unwrap();
    insert.execute(&**conn).await.unwrap()
}

/// An error and its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out = format!("{out}: {s}");
        next = s.source();
    }
    out
}

/// The loader of the guide, over the pool instead of one `Arc<Client>`.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn account_loader(pool: PgPool) -> Loader<i64, Account, BoxError> {
    Loader::new(move |ids: Vec<i64>| {
        let pool = pool.clone();
        async move {
            let conn = pool.get().await?;
            let rows = conn
                .query(
                    "SELECT id, owner, email, balance FROM accounts WHERE id = ANY($1)",
                    &[&ids],
                )
                .await?;
            Ok::<_, BoxError>(
                rows.into_iter()
                    .map(|r| {
                        (
                            r.get::<_, i64>(0),
                            Account {
                                owner: r.get(1),
                                email: r.get(2),
                                balance: r.get(3),
                            },
                        )
                    })
                    .collect::<HashMap<_, _>>(),
            )
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_over_the_pool_answers_concurrent_requests_with_their_own_rows() {
    let (_db, pool) = service().await;
    assert_eq!(insert_accounts(&pool, 1..=500).await, 500);
    let loader = account_loader(pool.clone());

    // 50 "requests", each asking for a few accounts (some missing, some repeated).
    let mut tasks = Vec::new();
    for req in 0..50i64 {
        let loader = loader.clone();
        tasks.push(tokio::spawn(async move {
            let ids = [req * 7 + 1, req * 7 + 1, 1000 + req, req * 3 + 2];
            let mut out = Vec::new();
            for id in ids {
                out.push((id, loader.load(id).await.unwrap()));
            }
            out
        }));
    }
    for task in tasks {
        for (id, got) in task.await.unwrap() {
            let want = (1..=500).contains(&id).then(|| account(id));
            assert_eq!(got, want, "account {id}");
        }
    }
    let stats = loader.stats();
    eprintln!("{stats:?}");
    assert!(stats.batches < 200, "{stats:?}: loads were not batched");

    let many = loader.load_many([3, 2, 1, 0, 3]).await.unwrap();
    assert_eq!(
        many,
        vec![
            Some(account(3)),
            Some(account(2)),
            Some(account(1)),
            None,
            Some(account(3))
        ]
    );

    let status = pool.status();
    assert!(status.size <= 4, "{status:?}");
    assert_eq!(status.in_use, 0, "{status:?}");
    assert!(status.acquired >= stats.batches, "{status:?} {stats:?}");
}

#[tokio::test]
async fn batch_writes_keep_every_row_nulls_unicode_and_long_strings_included() {
    let (_db, pool) = service().await;
    let long = "ü".repeat(1 << 20);
    let mut insert = BatchInsert::new(
        "accounts",
        &[
            ("id", Type::INT8),
            ("owner", Type::TEXT),
            ("email", Type::TEXT),
        ],
    );
    insert.push(&[&1i64, &long, &None::<String>]).unwrap();
    insert
        .push(&[&2i64, &"\u{0}".replace('\u{0}', ""), &Some("ß@x")])
        .unwrap();
    let conn = pool.get().await.unwrap();
    assert_eq!(insert.execute(&**conn).await.unwrap(), 2);
    let row = conn
        .query_one("SELECT owner, email FROM accounts WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), long);
    assert_eq!(row.get::<_, Option<String>>(1), None);

    // Empty batches: nothing to send, nothing fails.
    let empty = BatchInsert::new("accounts", &[("id", Type::INT8), ("owner", Type::TEXT)]);
    assert_eq!(empty.execute(&**conn).await.unwrap(), 0);
    assert_eq!(empty.execute_values(&**conn).await.unwrap(), 0);
    let empty_update = BatchUpdate::new(
        "accounts",
        &[("id", Type::INT8)],
        &[("balance", Type::INT8)],
    );
    assert_eq!(empty_update.execute(&**conn).await.unwrap(), 0);
    assert_eq!(empty_update.execute_values(&**conn).await.unwrap(), 0);
}

#[tokio::test]
async fn huge_batches_go_over_the_parameter_limit_in_chunks() {
    let (_db, pool) = service().await;
    let conn = pool.get().await.unwrap();
    // 4 columns × 40,000 rows = 160,000 parameters as VALUES.
    let mut insert = BatchInsert::new(
        "accounts",
        &[
            ("id", Type::INT8),
            ("owner", Type::TEXT),
            ("email", Type::TEXT),
            ("balance", Type::INT8),
        ],
    )
    .chunk_rows(1_000_000);
    for id in 0..40_000i64 {
        insert
            .push(&[&id, &format!("o{id}"), &None::<String>, &id])
            .unwrap();
    }
    assert_eq!(insert.execute_values(&**conn).await.unwrap(), 40_000);
    let mut update = BatchUpdate::new(
        "accounts",
        &[("id", Type::INT8)],
        &[("balance", Type::INT8)],
    )
    .chunk_rows(1_000_000);
    for id in 0..40_000i64 {
        update.push(&[&id, &(id + 1)]).unwrap();
    }
    assert_eq!(update.execute_values(&**conn).await.unwrap(), 40_000);
    assert_eq!(update.execute(&**conn).await.unwrap(), 40_000);
    let sum: i64 = conn
        .query_one("SELECT sum(balance)::int8 FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, (1..=40_000i64).sum::<i64>());
}

#[tokio::test]
async fn an_upsert_of_accounts_applies_rows_as_if_one_by_one() {
    let (_db, pool) = service().await;
    insert_accounts(&pool, 1..=10).await;
    let mut upsert = BatchInsert::new(
        "accounts",
        &[
            ("id", Type::INT8),
            ("owner", Type::TEXT),
            ("balance", Type::INT8),
        ],
    )
    .upsert(&["id"], &["owner", "balance"]);
    for (id, owner, balance) in [
        (1i64, "a", 1i64),
        (11, "new", 11),
        (1, "b", 2),
        (11, "newer", 12),
    ] {
        upsert.push(&[&id, &owner, &balance]).unwrap();
    }
    let conn = pool.get().await.unwrap();
    let affected = upsert.execute(&**conn).await.unwrap();
    let rows: Vec<(i64, String, i64)> = conn
        .query(
            "SELECT id, owner, balance FROM accounts WHERE id IN (1, 11) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows, vec![(1, "b".into(), 2), (11, "newer".into(), 12)]);
    assert_eq!(
        affected, 2,
        "rows written: a repeated key counts once (docs/query.md)"
    );
}

/// What a log line that prints the error's chain (anyhow's `{:#}`, or a loop
/// over `source()`, as `chain` does) shows: `{err}` alone is each error's own
/// message, and tokio-postgres's is just "db error".
#[tokio::test]
async fn errors_say_what_went_wrong() {
    let (db, pool) = service().await;
    insert_accounts(&pool, 1..=3).await;
    let conn = pool.get().await.unwrap();

    // Unique violation inside a batch write.
    let mut insert = BatchInsert::new("accounts", &[("id", Type::INT8), ("owner", Type::TEXT)]);
    insert.push(&[&4i64, &"four"]).unwrap();
    insert.push(&[&2i64, &"two again"]).unwrap();
    let err = insert.execute(&**conn).await.unwrap_err();
    eprintln!("unique violation: {}", chain(&err));
    assert!(chain(&err).contains("duplicate key"), "{}", chain(&err));
    assert!(matches!(err, BatchError::Postgres { .. }));

    // A value of the wrong type, before sending.
    let err = insert.push(&[&"five", &"five"]).unwrap_err();
    eprintln!("type mismatch at push: {}", chain(&err));
    assert!(err.to_string().contains("\"id\""), "{err}");

    // Bad SQL through the pooled connection.
    let err = conn.query("SELEC 1", &[]).await.unwrap_err();
    eprintln!("bad SQL: {}", chain(&err));
    drop(conn);

    // A wrong database name.
    let mut config = db.config();
    config.dbname("no_such_database_for_torque");
    let bad = Pool::builder(PgManager::new(config))
        .min_idle(0)
        .build()
        .unwrap();
    let err = bad.get().await.unwrap_err();
    eprintln!("wrong database: {}", chain(&err));
    assert!(
        chain(&err).contains("no_such_database_for_torque"),
        "{}",
        chain(&err)
    );

    // A wrong user.
    let mut config = db.config();
    config.user("no_such_role_for_torque");
    let bad = Pool::builder(PgManager::new(config))
        .min_idle(0)
        .build()
        .unwrap();
    let err = bad.get().await.unwrap_err();
    eprintln!("wrong user: {}", chain(&err));
    assert!(
        chain(&err).contains("no_such_role_for_torque"),
        "{}",
        chain(&err)
    );

    // A pool timeout: every connection held.
    let small = Pool::builder(PgManager::new(db.config()))
        .max_size(1)
        .min_idle(0)
        .acquire_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let held = small.get().await.unwrap();
    let err = small.get().await.unwrap_err();
    eprintln!("pool timeout: {}", chain(&err));
    assert!(matches!(err, PoolError::Timeout { .. }), "{err}");
    drop(held);
    assert_eq!(small.status().timeouts.acquire, 1);
}

#[tokio::test]
async fn a_loop_of_single_row_queries_through_a_pooled_connection_is_an_n_plus_one() {
    let (_db, pool) = service().await;
    insert_accounts(&pool, 1..=10).await;
    let detector = Detector::new(DetectorConfig {
        on_finding: OnFinding::Return,
        ..DetectorConfig::default()
    });
    let conn = pool.get().await.unwrap();
    let db = Instrumented::new(&**conn);

    // The loop: one query per account.
    let scope = detector.scope();
    scope
        .run(async {
            for id in 1..=10i64 {
                db.query_opt("SELECT owner FROM accounts WHERE id = $1", &[&id])
                    .await
                    .unwrap();
            }
        })
        .await;
    let findings = scope.finish();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, FindingKind::NPlusOne);
    assert_eq!(findings[0].count, 10);
    assert!(findings[0].suggestion.contains("ANY"), "{:?}", findings[0]);

    // The fix: the same lookups through a loader are one statement.
    let loader = account_loader(pool.clone());
    let scope = detector.scope();
    let found = scope
        .run(async { loader.load_many(1..=10).await.unwrap() })
        .await;
    assert_eq!(found.len(), 10);
    assert!(scope.finish().is_empty());
    assert_eq!(loader.stats().batches, 1);

    // Inside a transaction, too.
    drop(db);
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let scope = detector.scope();
    let db = Instrumented::with_scope(tx, scope.clone());
    for id in 1..=10i64 {
        db.execute(
            "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    }
    db.into_inner().commit().await.unwrap();
    let findings = scope.finish();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, FindingKind::NPlusOne);
}

#[tokio::test]
async fn a_cached_loader_cleared_after_a_transfer_serves_the_new_balances() {
    let (_db, pool) = service().await;
    insert_accounts(&pool, 1..=2).await;
    let loader = Loader::builder({
        let pool = pool.clone();
        move |ids: Vec<i64>| {
            let pool = pool.clone();
            async move {
                let conn = pool.get().await?;
                let rows = conn
                    .query(
                        "SELECT id, balance FROM accounts WHERE id = ANY($1)",
                        &[&ids],
                    )
                    .await?;
                Ok::<_, BoxError>(
                    rows.into_iter()
                        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                        .collect::<HashMap<_, _>>(),
                )
            }
        }
    })
    .cache(true)
    .build();
    assert_eq!(
        loader.load_many([1, 2]).await.unwrap(),
        vec![Some(100), Some(200)]
    );

    let mut conn = pool.get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance - 50 WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + 50 WHERE id = 2",
        &[],
    )
    .await
    .unwrap();
    let mut transfer = BatchInsert::new(
        "transfers",
        &[
            ("id", Type::INT8),
            ("from_account", Type::INT8),
            ("to_account", Type::INT8),
            ("amount", Type::INT8),
            ("memo", Type::TEXT),
        ],
    );
    transfer
        .push(&[&1i64, &1i64, &2i64, &50i64, &Some("rent \u{1F3E0}")])
        .unwrap();
    assert_eq!(transfer.execute(&tx).await.unwrap(), 1);
    tx.commit().await.unwrap();
    drop(conn);

    assert_eq!(
        loader.load(1).await.unwrap(),
        Some(100),
        "cached, as documented"
    );
    loader.clear_cache();
    assert_eq!(
        loader.load_many([1, 2]).await.unwrap(),
        vec![Some(50), Some(250)]
    );

    // A transfer to a missing account: the error names the constraint.
    let conn = pool.get().await.unwrap();
    let transfer_columns = [
        ("id", Type::INT8),
        ("from_account", Type::INT8),
        ("to_account", Type::INT8),
        ("amount", Type::INT8),
    ];
    let mut bad = BatchInsert::new("transfers", &transfer_columns);
    bad.push(&[&2i64, &1i64, &99i64, &1i64]).unwrap();
    let err = bad.execute(&**conn).await.unwrap_err();
    eprintln!("foreign key: {}", chain(&err));
    assert!(
        chain(&err).contains("transfers_to_account_fkey"),
        "{}",
        chain(&err)
    );
    let mut bad = BatchInsert::new("transfers", &transfer_columns);
    bad.push(&[&3i64, &1i64, &2i64, &-5i64]).unwrap();
    let err = bad.execute_values(&**conn).await.unwrap_err();
    eprintln!("check: {}", chain(&err));
    assert!(
        chain(&err).contains("transfers_amount_check"),
        "{}",
        chain(&err)
    );
    drop(conn);
    let status = pool.status();
    eprintln!("{status:?}");
    assert_eq!(status.closed.broken, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_conserve_money_with_failed_ones_rolled_back() {
    let (_db, pool) = service().await;
    {
        let conn = pool.get().await.unwrap();
        conn.batch_execute("ALTER TABLE accounts ADD CHECK (balance >= 0)")
            .await
            .unwrap();
    }
    let accounts = 50i64;
    insert_accounts(&pool, 1..=accounts).await; // balances 100, 200, ...
    let total_before: i64 = (1..=accounts).map(|id| id * 100).sum();

    let mut tasks = Vec::new();
    for worker in 0..16i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for n in 0..25i64 {
                let from = (worker * 7 + n * 3) % accounts + 1;
                let to = (worker * 5 + n * 11 + 1) % accounts + 1;
                if from == to {
                    continue;
                }
                // Some transfers overdraw and fail the CHECK: rolled back.
                let amount = (worker * 37 + n * 53) % 900 + 1;
                let id = worker * 1000 + n;
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                let result: Result<(), BoxError> = async {
                    let tx = conn.transaction().await?;
                    // Lock both rows in id order: no deadlock between workers.
                    tx.execute(
                        "SELECT 1 FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                        &[&vec![from, to]],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance - $2 WHERE id = $1",
                        &[&from, &amount],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE accounts SET balance = balance + $2 WHERE id = $1",
                        &[&to, &amount],
                    )
                    .await?;
                    let mut transfer = BatchInsert::new(
                        "transfers",
                        &[
                            ("id", Type::INT8),
                            ("from_account", Type::INT8),
                            ("to_account", Type::INT8),
                            ("amount", Type::INT8),
                        ],
                    );
                    transfer.push(&[&id, &from, &to, &amount])?;
                    transfer.execute(&tx).await?;
                    tx.commit().await?;
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => done.push((id, amount)),
                    // tokio-postgres displays a server error as "db error";
                    // the server's words are its source.
                    Err(e) => failed.push(chain(&*e)),
                }
            }
            Ok::<_, String>((done, failed))
        }));
    }
    let (mut committed, mut failed) = (Vec::new(), Vec::new());
    for task in tasks {
        let (done, errors) = task.await.unwrap().expect("a connection");
        committed.extend(done);
        failed.extend(errors);
    }
    assert!(
        failed.iter().all(|e| e.contains("accounts_balance_check")),
        "only overdrafts fail: {failed:?}"
    );
    let conn = pool.get().await.unwrap();
    let total_after: i64 = conn
        .query_one("SELECT sum(balance)::int8 FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total_after, total_before, "money is conserved");
    let (count, moved): (i64, i64) = {
        let row = conn
            .query_one(
                "SELECT count(*), coalesce(sum(amount), 0)::int8 FROM transfers",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        count as usize,
        committed.len(),
        "one transfer row per commit"
    );
    assert_eq!(moved, committed.iter().map(|(_, a)| a).sum::<i64>());
    assert!(
        committed.len() > 50,
        "{} transfers committed",
        committed.len()
    );
    assert!(
        committed.len() < 16 * 25,
        "some transfers should have failed"
    );
    drop(conn);
    let status = pool.status();
    assert!(status.size <= 4 && status.in_use == 0, "{status:?}");
    assert_eq!(status.timeouts.acquire, 0, "{status:?}");
    eprintln!(
        "{} transfers committed, {} rolled back; {status:?}",
        committed.len(),
        failed.len()
    );
}
