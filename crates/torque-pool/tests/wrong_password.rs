//! A wrong password surfaces as PostgreSQL's authentication error, at once,
//! through `source()` — not as "timed out" (bb8 #141).
//!
//! The shared test server trusts everyone, so this file starts a throwaway
//! server of its own and requires a password for one role there. A database
//! that does not exist, on the shared server, is the second case.

use std::error::Error as _;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use torque_pool::{PgManager, Pool, PoolError};
use torque_testkit::{PgServer, assert_no_repeated_source_messages, display_chain, pg_database};

/// The backend error behind a pool error, as tokio-postgres's type.
fn pg_source(err: &PoolError<tokio_postgres::Error>) -> &tokio_postgres::Error {
    err.source()
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .unwrap_or_else(|| panic!("no tokio-postgres source in {err:?}"))
}

#[tokio::test]
async fn regression_bb8_141_wrong_password_is_the_auth_error_not_a_timeout() {
    let server = tokio::task::spawn_blocking(PgServer::throwaway)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("a throwaway PostgreSQL is needed for this test: {e}"));
    let throwaway = server.throwaway_server().expect("throwaway");
    let (admin, conn) = server
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'right'")
        .await
        .unwrap();
    // Require a password for `app` over TCP (first match wins in pg_hba.conf).
    let hba = throwaway.dir().join("data").join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all app 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();

    let mut config = server.config().clone();
    config.user("app").password("wrong").dbname("postgres");
    // Wait for the reload to take effect (a condition with a deadline).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => break,
            _ => assert!(Instant::now() < deadline, "pg_hba.conf reload not seen"),
        }
        tokio::task::yield_now().await;
    }

    let pool = Pool::builder(PgManager::new(config.clone()))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = pool.get().await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, PoolError::Backend(_)), "{err:?}");
    assert_eq!(pg_source(&err).code(), Some(&SqlState::INVALID_PASSWORD));
    assert!(
        took < pool.config().acquire_timeout,
        "failed at once, not after the timeout: {took:?}"
    );
    assert_no_repeated_source_messages(&err);
    println!("wrong password: {} ({took:?})", display_chain(&err));

    // The right password works with the same server.
    config.password("right");
    let pool = Pool::builder(PgManager::new(config)).build().unwrap();
    pool.get()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_database_is_the_server_error_not_a_timeout() {
    let db = pg_database().await;
    let mut config = db.config();
    config.dbname("torque_no_such_database");
    let pool = Pool::builder(PgManager::new(config)).build().unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, PoolError::Backend(_)), "{err:?}");
    assert_eq!(
        pg_source(&err).code(),
        Some(&SqlState::INVALID_CATALOG_NAME)
    );
    // The server's words are in the chain (tokio-postgres's own message is
    // only "db error"), once: `{err}` alone is the pool's own message.
    assert_no_repeated_source_messages(&err);
    let chain = display_chain(&err);
    assert!(chain.contains("torque_no_such_database"), "{chain}");
    assert_eq!(err.to_string(), "cannot connect");
}
