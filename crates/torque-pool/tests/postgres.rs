//! `PgManager` against real PostgreSQL: queries through the pool, the
//! statement cache, checks, and discarding connections that saw a fatal error
//! or a cancelled query.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use torque_pool::{PgManager, PgPool, Pool, Pooled};
use torque_testkit::{TestDatabase, pg_database};

fn pool(db: &TestDatabase) -> PgPool {
    Pool::builder(PgManager::new(db.config()))
        .max_size(4)
        .min_idle(1)
        .build()
        .unwrap()
}

/// The backend pid of a pooled connection.
async fn pid(conn: &torque_pool::PgConnection) -> i32 {
    conn.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn queries_run_through_the_pool_and_statements_are_cached() {
    let db = pg_database().await;
    let pool = pool(&db);
    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let before = conn.cached_statements();
    for i in 0..10i32 {
        let row = conn.query_one("SELECT $1::int + 1", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    assert_eq!(conn.cached_statements(), before, "prepared once");
    conn.prepare_cached("SELECT 2").await.unwrap();
    conn.prepare_cached("SELECT 2").await.unwrap();
    assert_eq!(conn.cached_statements(), before + 1);
    conn.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    assert_eq!(
        conn.execute("DELETE FROM t WHERE id = $1", &[&1i32])
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_connection_is_reused_and_a_failed_query_that_is_not_fatal_keeps_it() {
    let db = pg_database().await;
    let pool = pool(&db);
    let first = {
        let conn = pool.get().await.unwrap();
        let err = conn
            .query("SELECT * FROM no_such_table", &[])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
        pid(&conn).await
    };
    let conn = pool.get().await.unwrap();
    assert_eq!(
        pid(&conn).await,
        first,
        "a syntax-level error does not discard it"
    );
    assert_eq!(pool.status().closed.broken, 0);
}

#[tokio::test]
async fn a_terminated_backend_is_discarded_not_reused() {
    let db = pg_database().await;
    let pool = pool(&db);
    let victim = {
        let conn = pool.get().await.unwrap();
        pid(&conn).await
    };
    // Kill it from outside while it idles, then use it: the error (57P01 or
    // a closed connection) must mark it broken.
    let admin = db.connect().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&victim])
        .await
        .unwrap();
    let conn = pool.get().await.unwrap();
    match conn.query_one("SELECT pg_backend_pid()", &[]).await {
        // The driver saw the termination first and the pool skipped it.
        Ok(row) => assert_ne!(row.get::<_, i32>(0), victim),
        // Or this query is the first to see it: then it is not reused.
        Err(e) => {
            assert!(conn.is_broken(), "{e:?}");
            drop(conn);
            let conn = pool.get().await.unwrap();
            assert_ne!(pid(&conn).await, victim);
        }
    }
}

#[tokio::test]
async fn a_terminated_backend_in_use_is_closed_on_return() {
    let db = pg_database().await;
    let pool = pool(&db);
    let conn = pool.get().await.unwrap();
    let victim = pid(&conn).await;
    let admin = db.connect().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&victim])
        .await
        .unwrap();
    let err = conn.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.is_closed() || err.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "{err:?}"
    );
    assert!(conn.is_broken());
    drop(conn);
    assert_eq!(pool.status().closed.broken, 1);
}

#[tokio::test]
async fn a_query_cancelled_by_its_caller_discards_the_connection() {
    let db = pg_database().await;
    let pool = pool(&db);
    let conn = pool.get().await.unwrap();
    let slow = tokio::time::timeout(
        Duration::from_millis(50),
        conn.simple_query("SELECT pg_sleep(5)"),
    )
    .await;
    assert!(slow.is_err(), "the caller gave up");
    assert!(conn.is_broken(), "its reply would reach the next user");
    drop(conn);
    assert_eq!(pool.status().closed.broken, 1);
}

#[tokio::test]
async fn a_statement_timeout_discards_the_connection() {
    let db = pg_database().await;
    let pool = pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("SET statement_timeout = '20ms'")
        .await
        .unwrap();
    let err = conn.simple_query("SELECT pg_sleep(1)").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    assert!(conn.is_broken());
}

#[tokio::test]
async fn the_check_is_a_real_round_trip() {
    let db = pg_database().await;
    let pool = Pool::builder(PgManager::new(db.config()))
        .min_idle(0)
        .check_bypass(Duration::from_millis(1))
        .build()
        .unwrap();
    let victim = {
        let conn = pool.get().await.unwrap();
        pid(&conn).await
    };
    let admin = db.connect().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&victim])
        .await
        .unwrap();
    // Wait for the termination to land on the socket (a condition, not a sleep).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&victim],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend did not exit"
        );
        tokio::task::yield_now().await;
    }
    // Idle past the (1 ms) bypass window: checked before it is handed out.
    let conn = pool.get().await.unwrap();
    assert_ne!(pid(&conn).await, victim);
    let s = pool.status();
    assert_eq!(s.closed.check_failed + s.closed.broken, 1, "{s:?}");
}

/// An error the client raises itself, before or after a complete round trip
/// (`query_one` finding no row, `query_opt` finding two, a parameter count
/// or type mismatch), says nothing about the connection: the guide lists
/// what discards one (class 08, 57P01–57P03, 57014, a query dropped
/// halfway), and these are not among them. Discarding a healthy connection
/// on every "no such row" churns the pool.
#[tokio::test]
async fn a_client_side_error_keeps_the_connection() {
    let db = pg_database().await;
    let pool = pool(&db);
    let conn = pool.get().await.unwrap();
    let err = conn
        .query_one("SELECT 1 WHERE false", &[])
        .await
        .unwrap_err();
    assert!(!conn.is_broken(), "no row: {err}");
    let err = conn
        .query_opt("SELECT generate_series(1, 2)", &[])
        .await
        .unwrap_err();
    assert!(!conn.is_broken(), "two rows: {err}");
    let err = conn.query("SELECT $1::int", &[]).await.unwrap_err();
    assert!(!conn.is_broken(), "parameter count: {err}");
    let err = conn.query("SELECT $1::int", &[&"one"]).await.unwrap_err();
    assert!(!conn.is_broken(), "parameter type: {err}");
    // The connection still answers, and goes back to the pool, not closed.
    assert_eq!(pid(&conn).await, pid(&conn).await);
    drop(conn);
    assert_eq!(pool.status().closed.broken, 0);
}

/// A cached statement the server no longer accepts (a table it reads was
/// altered: SQLSTATE 0A000, "cached plan must not change result type") is
/// dropped from the cache, so the next call prepares it again and works;
/// kept, it would fail on that connection until the connection retires
/// (30 min by default), for every caller that gets it, after any migration.
#[tokio::test]
async fn a_cached_statement_invalidated_by_a_schema_change_is_prepared_again() {
    let db = pg_database().await;
    let pool = pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE m (a int); INSERT INTO m VALUES (1)")
        .await
        .unwrap();
    assert_eq!(conn.query("SELECT * FROM m", &[]).await.unwrap().len(), 1);
    conn.batch_execute("ALTER TABLE m ADD COLUMN b int")
        .await
        .unwrap();
    // The server may refuse the stale statement once...
    if let Err(e) = conn.query("SELECT * FROM m", &[]).await {
        assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e}");
    }
    // ...but not for ever.
    let rows = conn.query("SELECT * FROM m", &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2, "both columns, as the table is now");
    assert!(!conn.is_broken());
}

fn one_connection_pool(db: &TestDatabase) -> PgPool {
    Pool::builder(PgManager::new(db.config()))
        .max_size(1)
        .min_idle(0)
        .build()
        .unwrap()
}

/// After `BEGIN`, `sql` fails with `code` without ending the block: the
/// connection knows it is still inside one, and the pool does not hand it
/// to the next caller (who gets a usable connection, not 25P02).
async fn a_failed_text_inside_a_block_leaves_it_open(sql: &str, code: &SqlState) {
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    let err = conn.batch_execute(sql).await.unwrap_err();
    assert_eq!(err.code(), Some(code), "{sql}");
    assert!(conn.in_transaction(), "{sql}");
    drop(conn);
    let conn = pool.get().await.unwrap();
    conn.simple_query("SELECT 1")
        .await
        .expect("the next caller gets a usable connection, not an aborted transaction");
}

/// The pool's next connection, checked to be in no transaction block: the
/// previous caller's block did not follow the connection back.
async fn next_caller_outside_any_transaction(pool: &PgPool) -> Pooled<PgManager> {
    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one("SELECT pg_current_xact_id_if_assigned()::text", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0),
        None,
        "the next caller is not inside the previous caller's transaction"
    );
    conn
}

/// A connection handed back inside a transaction block (a `?` returned
/// early between `BEGIN` and `COMMIT`) must not reach the next caller: in a
/// failed block every statement fails with 25P02 until a `ROLLBACK`, and in
/// a healthy one the next caller's writes would join someone else's
/// transaction. The pool discards it instead.
#[tokio::test]
async fn a_connection_returned_inside_a_failed_transaction_is_not_reused() {
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    let err = conn.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    drop(conn);
    let conn = pool.get().await.unwrap();
    conn.simple_query("SELECT 1")
        .await
        .expect("the next caller gets a usable connection, not an aborted transaction");
}

#[tokio::test]
async fn a_connection_returned_inside_an_open_transaction_is_not_reused() {
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE tx (a int)").await.unwrap();
    conn.execute("BEGIN", &[]).await.unwrap();
    conn.execute("INSERT INTO tx VALUES (1)", &[])
        .await
        .unwrap();
    drop(conn);
    let conn = next_caller_outside_any_transaction(&pool).await;
    assert_eq!(
        conn.query_one("SELECT count(*) FROM tx", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0,
        "the uncommitted insert was rolled back"
    );
}

#[tokio::test]
async fn a_connection_returned_after_a_failed_text_ending_in_commit_is_not_reused() {
    // BEGIN in one call, then a text whose last statement is COMMIT fails
    // before it: the COMMIT never ran, the block is open and failed.
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    let err = conn.batch_execute("SELECT 1/0; COMMIT").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    drop(conn);
    let conn = pool.get().await.unwrap();
    conn.simple_query("SELECT 1")
        .await
        .expect("the next caller gets a usable connection, not an aborted transaction");
}

#[tokio::test]
async fn a_begin_atomic_body_inside_a_transaction_does_not_end_it() {
    // The `END` of a SQL-standard function body (PostgreSQL 14+) follows a
    // `;` outside quotes, but ends the body, not the transaction block.
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    conn.batch_execute(
        "CREATE FUNCTION atomic_one() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\nEND",
    )
    .await
    .unwrap();
    drop(conn);
    next_caller_outside_any_transaction(&pool).await;
}

#[tokio::test]
async fn a_connection_whose_transactions_ended_is_reused() {
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let mut conn = pool.get().await.unwrap();
    let first = pid(&conn).await;
    conn.batch_execute("CREATE TABLE ty (a int)").await.unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    conn.execute("INSERT INTO ty VALUES (1)", &[])
        .await
        .unwrap();
    conn.batch_execute("COMMIT").await.unwrap();
    conn.batch_execute("BEGIN; INSERT INTO ty VALUES (2); COMMIT")
        .await
        .unwrap();
    conn.simple_query("start transaction").await.unwrap();
    conn.simple_query("SELECT 1/0").await.unwrap_err();
    conn.simple_query("rollback").await.unwrap();
    // tokio-postgres's own transactions roll back or commit themselves.
    let tx = conn.transaction().await.unwrap();
    tx.execute("INSERT INTO ty VALUES (3)", &[]).await.unwrap();
    drop(tx);
    drop(conn);
    let conn = pool.get().await.unwrap();
    assert_eq!(pid(&conn).await, first, "the same connection, reused");
    assert_eq!(pool.status().closed.broken, 0);
}

#[tokio::test]
async fn a_begin_after_an_escape_string_holding_a_quote_is_seen() {
    // In `E'it\'s'` the backslash escapes the quote: the string goes on to
    // the next one. Taken for the string's end, the next quote looked like
    // an opening one that ran to the end of the text, hiding the `BEGIN`:
    // the connection came back inside a transaction and was reused.
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE te (a text)")
        .await
        .unwrap();
    conn.batch_execute("SELECT E'it\\'s'; BEGIN; INSERT INTO te VALUES ('uncommitted')")
        .await
        .unwrap();
    drop(conn);
    let conn = next_caller_outside_any_transaction(&pool).await;
    assert_eq!(
        conn.query_one("SELECT count(*) FROM te", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0,
        "the uncommitted insert was rolled back"
    );
}

#[tokio::test]
async fn a_rollback_or_commit_with_a_comment_ends_the_transaction() {
    // A comment after `ROLLBACK` holding the word "to", or after `COMMIT`
    // holding "and chain", was read as `ROLLBACK TO` (the block goes on) or
    // `COMMIT AND CHAIN` (a new one opens): the connection, outside any
    // transaction, was closed instead of reused.
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    let first = pid(&conn).await;
    conn.batch_execute("BEGIN").await.unwrap();
    conn.batch_execute("ROLLBACK /* back to where we were */")
        .await
        .unwrap();
    conn.simple_query("BEGIN").await.unwrap();
    conn.simple_query("COMMIT -- and chain nothing")
        .await
        .unwrap();
    drop(conn);
    let conn = pool.get().await.unwrap();
    assert_eq!(pid(&conn).await, first, "the same connection, reused");
    assert_eq!(pool.status().closed.broken, 0);
}

#[tokio::test]
async fn a_commit_that_never_ran_does_not_end_the_transaction() {
    // A `COMMIT` through `execute` that fails before it runs (its cached
    // statement was deallocated, SQLSTATE 26000; or the client refused its
    // parameters) ends nothing: the block is still open (and, after the
    // 26000, failed). Taken for an end, the connection was reused, and the
    // next caller's statements failed with 25P02 or joined the open block.
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE tc (a int)").await.unwrap();
    // Outside a block `COMMIT` only warns; this caches its statement.
    conn.execute("COMMIT", &[]).await.unwrap();
    conn.execute("BEGIN", &[]).await.unwrap();
    conn.execute("INSERT INTO tc VALUES (1)", &[])
        .await
        .unwrap();
    conn.batch_execute("DEALLOCATE ALL").await.unwrap();
    let err = conn.execute("COMMIT", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
    drop(conn);
    let conn = pool.get().await.unwrap();
    conn.simple_query("SELECT 1")
        .await
        .expect("the next caller gets a usable connection, not an aborted transaction");

    conn.execute("BEGIN", &[]).await.unwrap();
    conn.execute("INSERT INTO tc VALUES (2)", &[])
        .await
        .unwrap();
    conn.execute("COMMIT", &[&1i32])
        .await
        .expect_err("COMMIT takes no parameters");
    drop(conn);
    next_caller_outside_any_transaction(&pool).await;
}

#[tokio::test]
async fn a_commit_prepared_inside_a_block_does_not_end_it() {
    // `COMMIT PREPARED 'x'` (two-phase commit's second phase) cannot run
    // inside a transaction block: it fails there and leaves the block open
    // and failed. Read as a `COMMIT`, it was taken to end the block, and the
    // connection went back for reuse: the next caller got 25P02.
    a_failed_text_inside_a_block_leaves_it_open(
        "COMMIT PREPARED 'torque_none'",
        &SqlState::ACTIVE_SQL_TRANSACTION,
    )
    .await;
}

#[tokio::test]
async fn a_do_body_in_a_dollar_quote_with_a_non_ascii_tag_is_not_read_for_an_end() {
    // `$é$` is a dollar quote, as in PostgreSQL (its tags are spelled as
    // identifiers). Not seen as one, the body's `END` read as the end of
    // the block opened before, and the connection went back inside it.
    let db = pg_database().await;
    let pool = one_connection_pool(&db);
    let conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN; CREATE TABLE td (a int); DO $é$ BEGIN PERFORM 1; END $é$")
        .await
        .unwrap();
    assert!(conn.in_transaction());
    drop(conn);
    next_caller_outside_any_transaction(&pool).await;
}

#[tokio::test]
async fn a_commit_the_server_could_not_parse_does_not_end_the_transaction() {
    // `COMMIT /* ...` with its comment unterminated (or any text the server
    // rejects as a syntax error, 42601) is refused before anything runs:
    // the block stays open, and failed. Read as a COMMIT that failed while
    // running, it was taken to end the block, and the next caller got 25P02.
    a_failed_text_inside_a_block_leaves_it_open(
        "COMMIT /* done, unterminated",
        &SqlState::SYNTAX_ERROR,
    )
    .await;
}
